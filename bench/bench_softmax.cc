// Native micro-benchmark of the flash-style softmax-attention kernels (no Node needed): the
// full-attention baseline Luna is compared with.
//
// 1. Validates the fast float32 kernels against the float64 reference with the project's policy
//    (error at most 2x forward / 3x backward the error of a plain float32 implementation of the
//    same math, plus 4 ulp of the largest value), and the float64 kernels to 1e-11 relative,
//    over odd shapes, padding masks, causal masks with n != m, tied k/v, dropout and sharp
//    logits; and the vectorised dropout hash factor for factor against counter_rng.h. Outputs
//    start as NaN, so an unwritten element fails. Quick (about a second): CI runs
//    `--validate-only` under LUNA_ISA=avx512, avx2 and generic, and it exits 1 on a failure.
// 2. Measures the machine's peaks in the same run (bench_common.h: OpenBLAS sgemm, copy GB/s).
// 3. Times forward and forward+backward at B=4, h=4, dh=64, n = m in {1024, 4096}, causal and
//    not, and prints ms, GFLOP/s and the fraction of the sgemm peak. FLOPs per visible
//    (query, key) pair and head dim: 4 forward (Q K^T and P V), 10 backward (Q K^T again,
//    dO V^T, P^T dO, dS^T Q, dS K); a causal n = m problem has about half the pairs. One more
//    row times n = 1024 with attention dropout 0.1 (the counter hash is the extra work).
// Flags: --validate-only, --reps N, --threads N, --json FILE (bench_common.h).
//
// PyTorch anchor for the same shapes (torch 1.13 here has no scaled_dot_product_attention, so
// the eager softmax(q k^T * s) v; 2 threads; env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE):
//   s = q @ k.transpose(-1, -2) * dh ** -0.5
//   if causal: s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float('-inf'))
//   o = torch.softmax(s, -1) @ v;  o.backward(g)
// On the firecracker VMs we use a page fault costs tens of microseconds, and eager PyTorch
// allocates a fresh B*h*n*m tensor per intermediate: run it with and without
// GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for malloc) and say which.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../native/kernels/counter_rng.h"
#include "../native/kernels/softmax_attention.h"
#include "../native/kernels/softmax_tiles.h"
#include "../native/reference/softmax_reference.h"
#include "../native/runtime/cpu_features.h"
#include "../native/runtime/thread_pool.h"
#include "bench_common.h"

using namespace luna;
using namespace luna::bench;

namespace {

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x)
    if (std::isfinite(v)) m = std::max(m, std::fabs(v));
  return m;
}

template <typename T>
double max_abs_diff_any(const std::vector<T>& a, const std::vector<double>& ref) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    // -inf == -inf (a fully masked row's lse) is no error; anything else non-finite is.
    if (double(a[i]) == ref[i]) continue;
    const double d = std::fabs(double(a[i]) - ref[i]);
    m = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(m, d);
  }
  return m;
}

// All buffers of one call in one precision.
template <typename T>
struct Buffers {
  std::vector<T> q, k, v, out, lse, dout, dq, dk, dv;
  std::vector<uint8_t> mask;
  int64_t B = 0, h = 0, n = 0, m = 0, dh = 0;
  bool tied = false, causal = false;
  double dropout = 0;
  uint64_t seed = 0;

  SoftmaxAttentionParams<T> params() {
    SoftmaxAttentionParams<T> p;
    p.q = q.data(); p.k = k.data(); p.v = tied ? k.data() : v.data();
    p.mask = mask.empty() ? nullptr : mask.data();
    p.out = out.data(); p.lse = lse.data(); p.dout = dout.data();
    p.dq = dq.data(); p.dk = dk.data(); p.dv = tied ? dk.data() : dv.data();
    p.B = B; p.h = h; p.n = n; p.m = m; p.dh = dh;
    p.scale = 1.0 / std::sqrt(double(dh));
    p.causal = causal; p.dropout = dropout; p.seed = seed;
    return p;
  }
};

template <typename T, typename S>
Buffers<T> convert(const Buffers<S>& s) {
  Buffers<T> t;
  auto c = [](const std::vector<S>& x) { return std::vector<T>(x.begin(), x.end()); };
  t.q = c(s.q); t.k = c(s.k); t.v = c(s.v); t.out = c(s.out); t.lse = c(s.lse); t.dout = c(s.dout);
  t.dq = c(s.dq); t.dk = c(s.dk); t.dv = c(s.dv); t.mask = s.mask;
  t.B = s.B; t.h = s.h; t.n = s.n; t.m = s.m; t.dh = s.dh;
  t.tied = s.tied; t.causal = s.causal; t.dropout = s.dropout; t.seed = s.seed;
  return t;
}

// Random inputs of one case; outputs NaN. The mask never empties a batch row (the tests cover
// fully masked rows).
Buffers<float> make_problem(int64_t B, int64_t h, int64_t n, int64_t m, int64_t dh, bool masked, bool tied,
                            bool causal, double dropout, float qscale, std::mt19937_64& rng) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Buffers<float> f;
  f.B = B; f.h = h; f.n = n; f.m = m; f.dh = dh; f.tied = tied; f.causal = causal; f.dropout = dropout;
  f.seed = rng() >> 12;
  const size_t qn = size_t(B * h * n * dh), kn = size_t(B * h * m * dh);
  f.q = randn(qn, rng, qscale); f.k = randn(kn, rng); f.v = tied ? f.k : randn(kn, rng); f.dout = randn(qn, rng);
  f.out.assign(qn, nan); f.lse.assign(size_t(B * h * n), nan);
  f.dq.assign(qn, nan); f.dk.assign(kn, nan); f.dv.assign(kn, nan);
  if (masked) {
    f.mask.resize(size_t(B * m));
    std::bernoulli_distribution pad(0.3);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < m; ++j) f.mask[b * m + j] = pad(rng);
      f.mask[b * m + (b % m)] = 0;
    }
  }
  return f;
}

struct Case {
  int64_t B, h, n, m, dh;
  bool masked, tied, causal;
  double dropout;
  float qscale;
};

bool validate_case(const Case& c, std::mt19937_64& rng) {
  Buffers<float> fast = make_problem(c.B, c.h, c.n, c.m, c.dh, c.masked, c.tied, c.causal, c.dropout, c.qscale, rng);
  Buffers<float> plain = fast;
  Buffers<double> ref = convert<double>(fast), fast64 = convert<double>(fast);
  auto pf = fast.params(), pp = plain.params();
  auto pr = ref.params(), p64 = fast64.params();
  softmax_attention_forward(pf); softmax_attention_backward(pf);
  softmax_attention_forward(p64); softmax_attention_backward(p64);
  softmax_reference_forward(pp); softmax_reference_backward(pp);
  softmax_reference_forward(pr); softmax_reference_backward(pr);
  bool ok = true;
  auto fail = [&](const char* what, double err, double bound, double plain_err) {
    std::printf("  FAIL %s B=%ld h=%ld n=%ld m=%ld dh=%ld mask=%d tied=%d causal=%d p=%.2f q*%.0f:"
                " err %.3g > bound %.3g (plain %.3g)\n",
                what, long(c.B), long(c.h), long(c.n), long(c.m), long(c.dh), c.masked, c.tied, c.causal, c.dropout,
                double(c.qscale), err, bound, plain_err);
    ok = false;
  };
  auto check = [&](const char* name, const std::vector<float>& f32, const std::vector<double>& f64,
                   const std::vector<float>& pl, const std::vector<double>& truth, double factor) {
    const double ef = max_abs_diff_any(f32, truth), ep = max_abs_diff_any(pl, truth);
    const double bound = factor * ep + 4 * std::ldexp(1.0, -23) * max_abs(truth);
    if (!(ef <= bound)) fail(name, ef, bound, ep);
    const double e64 = max_abs_diff_any(f64, truth), b64 = 1e-11 * std::max(1.0, max_abs(truth));
    if (!(e64 <= b64)) fail((std::string(name) + " float64").c_str(), e64, b64, 0);
  };
  check("out", fast.out, fast64.out, plain.out, ref.out, 2);
  check("lse", fast.lse, fast64.lse, plain.lse, ref.lse, 2);
  check("dq", fast.dq, fast64.dq, plain.dq, ref.dq, 3);
  check(c.tied ? "dk+dv" : "dk", fast.dk, fast64.dk, plain.dk, ref.dk, 3);
  if (!c.tied) check("dv", fast.dv, fast64.dv, plain.dv, ref.dv, 3);
  return ok;
}

// The vectorised dropout hash (softmax_tiles.h) against counter_rng.h's scalar one, factor for
// factor: random seeds (also near 2^53), counters near 2^64 (wrapping), strides, p near 0 and 1.
bool validate_dropout_masks(std::mt19937_64& rng) {
  const SoftmaxTileOps<float>& ops = softmax_tile_ops<float>();
  int bad = 0;
  for (double p : {1e-9, 0.1, 0.5, 0.9, 0.999999}) {
    for (int trial = 0; trial < 20; ++trial) {
      const uint64_t seed = trial % 2 ? rng() >> 11 : rng() % 1000;
      const DropoutMask<float> drop(p, seed);
      const uint64_t index0 = trial % 3 ? rng() : ~uint64_t(0) - 20;
      const uint64_t stride = trial % 4 == 0 ? 1 : rng() % 100000 + 1;
      const int64_t lo = int64_t(rng() % 5), hi = lo + int64_t(rng() % 70);
      std::vector<float> x(size_t(hi) + 1, 2.0f), keep(x.size(), -1.0f);
      ops.dropout_run(drop, index0, stride, lo, hi, x.data(), keep.data());
      for (int64_t c = 0; c <= hi; ++c) {
        const bool inside = c >= lo && c < hi;
        const float f = inside ? drop.factor(index0 + uint64_t(c) * stride) : 0.0f;
        if (inside ? (keep[c] != f || x[c] != 2.0f * f) : (keep[c] != -1.0f || x[c] != 2.0f)) ++bad;
      }
    }
  }
  if (bad) std::printf("  FAIL dropout_run (isa %s): %d factors differ from counter_bits\n", isa_name(active_isa()),
                       bad);
  return bad == 0;
}

bool validate_all() {
  const uint64_t seed = validation_seed();
  std::mt19937_64 rng(seed);
  const bool masks_ok = validate_dropout_masks(rng);
  std::vector<Case> cases;
  for (bool causal : {false, true}) {
    for (int64_t dh : {1, 5, 32, 48, 64, 80, 128}) {
      cases.push_back({2, 3, 7, 33, dh, true, false, causal, 0, 1});
      cases.push_back({1, 2, 33, 7, dh, false, true, causal, 0, 1});
    }
    // n, m = 1, tile multiples and one off either way, n != m both ways (the causal diagonal
    // offset), one head with many key chunks (the dq partial sums), sharp logits, dropout.
    const int64_t sizes[][2] = {{1, 1}, {1, 200}, {200, 1}, {64, 64}, {65, 63}, {63, 129}, {130, 257}, {257, 130}};
    for (const auto& s : sizes) {
      cases.push_back({2, 2, s[0], s[1], 64, true, false, causal, 0, 1});
      cases.push_back({1, 3, s[0], s[1], 48, false, true, causal, 0, 1});
    }
    cases.push_back({1, 1, 100, 700, 64, true, false, causal, 0, 1});
    cases.push_back({1, 2, 300, 300, 64, false, false, causal, 0, 4});
    cases.push_back({2, 2, 150, 140, 32, true, true, causal, 0.2, 1});
    cases.push_back({1, 2, 90, 200, 24, false, false, causal, 0.5, 1});
  }
  int failed = 0;
  for (const Case& c : cases) failed += !validate_case(c, rng);
  std::printf("validation (isa %s, %d threads, seed %llu): %zu cases, %d failed; dropout hash %s\n",
              isa_name(active_isa()), num_threads(), static_cast<unsigned long long>(seed), cases.size(), failed,
              masks_ok ? "ok" : "WRONG");
  return failed == 0 && masks_ok;
}

// Visible (query, key) pairs of one head: the work unit of the FLOP count.
double visible_pairs(int64_t n, int64_t m, bool causal) {
  if (!causal) return double(n) * double(m);
  double pairs = 0;
  for (int64_t i = 0; i < n; ++i) pairs += double(std::clamp<int64_t>(i + (m - n) + 1, 0, m));
  return pairs;
}

void time_shape(Report& report, int reps, int64_t n, bool causal, double dropout = 0) {
  const int64_t B = 4, h = 4, dh = 64, m = n;
  std::mt19937_64 rng(7);
  Buffers<float> base = make_problem(B, h, n, m, dh, false, false, causal, dropout, 1, rng);
  const double qkv_bytes = 4.0 * B * h * dh * (2.0 * n + 2.0 * m);  // q, out; k, v
  const double fwd_bytes = qkv_bytes + 4.0 * B * h * n;              // + lse
  const double bwd_bytes = 2 * qkv_bytes + 4.0 * B * h * n;          // q k v out dout lse in; dq dk dv out
  const int sets = rotation_sets(fwd_bytes + bwd_bytes);
  std::vector<Buffers<float>> bufs(size_t(sets), base);
  std::vector<SoftmaxAttentionParams<float>> ps;
  for (auto& b : bufs) ps.push_back(b.params());
  const double pairs = visible_pairs(n, m, causal) * B * h;
  char shape[64];
  std::snprintf(shape, sizeof shape, "[%ld,%ld,%ld,%ld]", long(B), long(h), long(n), long(dh));
  std::string params = std::string("m=") + std::to_string(m) + (causal ? " causal" : "");
  if (dropout > 0) params += " p=" + std::to_string(dropout).substr(0, 3);

  Record fwd;
  fwd.kernel = "softmax_fwd";
  fwd.shape = shape;
  fwd.params = params;
  fwd.t = time_rotated(reps, sets, [&](int s) { softmax_attention_forward(ps[s]); });
  fwd.flops = 4 * pairs * dh;
  fwd.bytes = fwd_bytes;
  report.add(fwd);
  Record all;
  all.kernel = "softmax_fwd_bwd";
  all.shape = shape;
  all.params = params;
  all.t = time_rotated(reps, sets, [&](int s) {
    softmax_attention_forward(ps[s]);
    softmax_attention_backward(ps[s]);
  });
  all.flops = 14 * pairs * dh;
  all.bytes = fwd_bytes + bwd_bytes;
  all.extra.push_back({"bwd_ms_estimate", all.t.median - fwd.t.median});
  report.add(all);
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  if (!validate_all()) return 1;
  if (flags.validate_only) return 0;

  Report report("softmax", flags, measure_peaks(flags.reps));
  report.header("softmax attention, float32, B=4 h=4 dh=64 (GFLOP/s counts visible pairs: 4 fwd, 14 fwd+bwd)");
  for (int64_t n : {1024, 4096})
    for (bool causal : {false, true}) time_shape(report, flags.reps, n, causal);
  time_shape(report, flags.reps, 1024, false, 0.1);
  return report.write() ? 0 : 1;
}
