// Native micro-benchmark of the fused causal Luna attention (native/kernels/causal_luna.h; no Node).
//
// 1. Validates: the fast float32 kernels (forward, backward, incremental decoding) against the
//    float64 reference with design.md's policy (error at most 2x forward / 3x backward that of the
//    plain float32 implementation of the same math, plus 4 ulp of the largest true value), on small
//    odd shapes, masks, tied and untied k/v, both activations and chunks that do not divide n;
//    outputs start as NaN. Decoding (causal_step, one token at a time and in mixed prefills) must
//    equal the parallel forward: to 1e-12 in float64, by the forward policy in float32. Fresh
//    random inputs each run (seed printed); a failure prints FAIL and exits 1 before any timing.
// 2. Measures the machine's peaks in the same run (sgemm GFLOP/s, copy GB/s).
// 3. Times forward and forward+backward at B=4, n=4096, h=4, dh=64, l=16 with k === v (tied, as
//    the PyTorch anchor does), for the default chunk and a sweep of chunk lengths; then decoding of
//    1000 tokens with causal_step against recomputing the parallel forward over the whole prefix
//    at every step, at B=1 and B=4 (h=4, dh=64, l=16), and prints the speed-up.
//
// FLOPs per (batch, head) and row, c the chunk length, counting the c x c products in full as
// luna-math.md section 6 does (the kernel computes only their lower triangle):
//   forward  10·l·dh + 4·c·(dh + l)   (tied: 8·l·dh, S^V is S^Kᵀ)
//   backward 24·l·dh + 10·c·dh + 12·c·l (tied: 20·l·dh): the second pass, which recomputes the
//            logits; the first pass (chunk-start states, 6·l·dh) is not counted.
// Flags: --validate-only, --reps N, --threads N, --json FILE.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../native/kernels/causal_luna.h"
#include "../native/reference/causal_reference.h"
#include "../native/runtime/cpu_features.h"
#include "../native/runtime/thread_pool.h"
#include "bench_common.h"

using namespace luna;
using namespace luna::bench;

namespace {

constexpr double kUlp32 = 1.0 / (1 << 23);

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}

// All buffers of one call in one precision.
template <typename T>
struct Buffers {
  std::vector<T> q, k, v, kc, pq, out, lse, dout, dq, dk, dv, dkc, dpq;
  std::vector<uint8_t> mask;

  CausalParams<T> params(int64_t B, int64_t h, int64_t n, int64_t l, int64_t dh, bool tied) {
    CausalParams<T> p;
    p.q = q.data(); p.k = k.data(); p.v = tied ? k.data() : v.data(); p.kc = kc.data(); p.pq = pq.data();
    p.mask = mask.empty() ? nullptr : mask.data();
    p.out = out.data(); p.lse = lse.empty() ? nullptr : lse.data(); p.dout = dout.data();
    p.dq = dq.data(); p.dk = dk.data(); p.dv = tied ? dk.data() : dv.data(); p.dkc = dkc.data(); p.dpq = dpq.data();
    p.B = B; p.h = h; p.n = n; p.l = l; p.dh = dh;
    p.scale = p.pack_scale = 1.0 / std::sqrt(double(dh));
    return p;
  }
};

template <typename T, typename S>
Buffers<T> convert(const Buffers<S>& s) {
  auto c = [](const std::vector<S>& x) { return std::vector<T>(x.begin(), x.end()); };
  Buffers<T> t;
  t.q = c(s.q); t.k = c(s.k); t.v = c(s.v); t.kc = c(s.kc); t.pq = c(s.pq); t.out = c(s.out); t.lse = c(s.lse);
  t.dout = c(s.dout); t.dq = c(s.dq); t.dk = c(s.dk); t.dv = c(s.dv); t.dkc = c(s.dkc); t.dpq = c(s.dpq);
  t.mask = s.mask;
  return t;
}

struct Case {
  int64_t B, h, n, l, dh;
  bool tied, masked;
  CausalActivation act;
  int64_t chunk;  // 0: the kernel's default
};

std::string describe(const Case& c) {
  char b[200];
  std::snprintf(b, sizeof b, "B=%ld h=%ld n=%ld l=%ld dh=%ld%s%s %s chunk=%ld", long(c.B), long(c.h), long(c.n),
                long(c.l), long(c.dh), c.tied ? " tied" : "", c.masked ? " masked" : "",
                c.act == CausalActivation::Softplus ? "softplus" : "elu", long(c.chunk));
  return b;
}

// Random float32 inputs for a case (P-slot masks never empty a row), outputs poisoned.
Buffers<float> make_inputs(const Case& c, std::mt19937_64& rng) {
  const int64_t X = c.B * c.h * c.n * c.dh, P = c.B * c.h * c.l * c.dh;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Buffers<float> f;
  f.q = randn(X, rng); f.k = randn(X, rng); f.v = randn(X, rng); f.kc = randn(X, rng); f.pq = randn(P, rng);
  f.dout = randn(X, rng);
  f.out.assign(X, nan); f.lse.assign(c.B * c.h * c.n, nan);
  f.dq.assign(X, nan); f.dk.assign(X, nan); f.dv.assign(X, nan); f.dkc.assign(X, nan); f.dpq.assign(P, nan);
  if (c.masked) {
    f.mask.resize(c.B * c.l);
    std::bernoulli_distribution pad(0.3);
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t r = 0; r < c.l; ++r) f.mask[b * c.l + r] = pad(rng);
      f.mask[b * c.l + (b % c.l)] = 0;
    }
  }
  return f;
}

// Returns true when the fast kernels meet the policy on this case (forward and backward).
bool validate_case(const Case& c, std::mt19937_64& rng) {
  Buffers<float> f = make_inputs(c, rng);
  Buffers<float> plain = f;
  Buffers<double> ref = convert<double>(f);
  auto pf = f.params(c.B, c.h, c.n, c.l, c.dh, c.tied);
  auto pp = plain.params(c.B, c.h, c.n, c.l, c.dh, c.tied);
  auto pr = ref.params(c.B, c.h, c.n, c.l, c.dh, c.tied);
  for (auto* p : {&pf, &pp}) p->activation = c.act, p->chunk = c.chunk;
  pr.activation = c.act;
  causal_forward(pf); causal_backward(pf);
  causal_reference_forward(pp); causal_reference_backward(pp);
  causal_reference_forward(pr); causal_reference_backward(pr);
  bool ok = true;
  auto check = [&](const char* name, const std::vector<float>& fast, const std::vector<float>& pl,
                   const std::vector<double>& truth, double factor) {
    const double ef = max_abs_diff(fast, truth), ep = max_abs_diff(pl, truth);
    const double bound = factor * ep + 4 * kUlp32 * max_abs(truth);
    if (!(ef <= bound)) {
      std::printf("  FAIL %s %s: err %.3g > bound %.3g (plain %.3g)\n", name, describe(c).c_str(), ef, bound, ep);
      ok = false;
    }
  };
  check("out", f.out, plain.out, ref.out, 2);
  check("lse", f.lse, plain.lse, ref.lse, 2);
  check("dq", f.dq, plain.dq, ref.dq, 3);
  check(c.tied ? "dk+dv" : "dk", f.dk, plain.dk, ref.dk, 3);
  if (!c.tied) check("dv", f.dv, plain.dv, ref.dv, 3);
  check("dkc", f.dkc, plain.dkc, ref.dkc, 3);
  check("dpq", f.dpq, plain.dpq, ref.dpq, 3);
  return ok;
}

// Runs causal_step over the sequence in pieces of the given sizes (from zero states) and returns
// the outputs, laid out as the forward's. The pack query is scaled first, as decoding caches it.
template <typename T>
std::vector<T> decode(const Buffers<T>& in, const Case& c, const std::vector<int64_t>& sizes) {
  const int64_t BH = c.B * c.h, dh = c.dh, l = c.l;
  const T scale = T(1.0 / std::sqrt(double(dh)));
  std::vector<T> pq(in.pq), sk(BH * dh * l, T(0)), sv(BH * l * dh, T(0)), out(in.q.size());
  for (T& x : pq) x *= scale;
  int64_t t0 = 0;
  for (int64_t s : sizes) {
    // The rows [t0, t0 + s) of every (batch, head), packed as [B, h, s, dh].
    auto piece = [&](const std::vector<T>& x) {
      std::vector<T> y(BH * s * dh);
      for (int64_t bh = 0; bh < BH; ++bh)
        std::copy_n(x.begin() + (bh * c.n + t0) * dh, s * dh, y.begin() + bh * s * dh);
      return y;
    };
    std::vector<T> q = piece(in.q), k = piece(in.k), v = c.tied ? k : piece(in.v), kc = piece(in.kc), o(BH * s * dh);
    CausalParams<T> p;
    p.q = q.data(); p.k = k.data(); p.v = c.tied ? k.data() : v.data(); p.kc = kc.data(); p.pq = pq.data();
    p.mask = in.mask.empty() ? nullptr : in.mask.data();
    p.out = o.data(); p.state_k = sk.data(); p.state_v = sv.data(); p.t0 = t0;
    p.B = c.B; p.h = c.h; p.n = s; p.l = l; p.dh = dh; p.scale = scale; p.pack_scale = 1; p.activation = c.act;
    p.chunk = c.chunk;
    causal_step(p);
    for (int64_t bh = 0; bh < BH; ++bh)
      std::copy_n(o.begin() + bh * s * dh, s * dh, out.begin() + (bh * c.n + t0) * dh);
    t0 += s;
  }
  return out;
}

// Decoding equals the parallel pass: float64 to 1e-12 of the values, float32 by the forward policy.
bool validate_decode(const Case& c, const std::vector<int64_t>& sizes, std::mt19937_64& rng) {
  Buffers<float> f = make_inputs(c, rng);
  Buffers<double> d = convert<double>(f);
  auto pd = d.params(c.B, c.h, c.n, c.l, c.dh, c.tied);
  pd.activation = c.act;
  causal_reference_forward(pd);
  const std::vector<double> dec64 = decode(d, c, sizes);
  double worst = 0;
  for (size_t i = 0; i < dec64.size(); ++i) worst = std::max(worst, std::fabs(dec64[i] - d.out[i]) / std::max(1.0, std::fabs(d.out[i])));
  bool ok = worst <= 1e-12;
  if (!ok) std::printf("  FAIL decode float64 %s: relative difference %.3g\n", describe(c).c_str(), worst);
  Buffers<float> plain = f;
  auto pp = plain.params(c.B, c.h, c.n, c.l, c.dh, c.tied);
  pp.activation = c.act;
  causal_reference_forward(pp);
  const std::vector<float> dec32 = decode(f, c, sizes);
  const double ef = max_abs_diff(dec32, d.out), ep = max_abs_diff(plain.out, d.out);
  const double bound = 2 * ep + 4 * kUlp32 * max_abs(d.out);
  if (!(ef <= bound)) {
    std::printf("  FAIL decode float32 %s: err %.3g > bound %.3g (plain %.3g)\n", describe(c).c_str(), ef, bound, ep);
    ok = false;
  }
  return ok;
}

// Case design: unscaled random inputs and B*h >= 8. The largest values and errors sit in the
// first positions of each head (the 1/t of the prefix means), so the number of heads decides how
// many rows the two maxima are taken over; with two heads a correct kernel fails about 1% of the
// time (test/causal-attention.test.ts says more).
bool validate_all() {
  const uint64_t seed = validation_seed();
  std::mt19937_64 rng(seed);
  const auto SP = CausalActivation::Softplus, ELU = CausalActivation::EluPlusOne;
  std::vector<Case> cases = {
      {4, 16, 1, 1, 5, false, false, SP, 0},   {2, 4, 7, 3, 5, true, true, ELU, 3},
      {2, 4, 33, 16, 12, false, true, SP, 5},  {2, 4, 33, 17, 64, true, false, SP, 0},
      {1, 8, 100, 16, 64, false, true, SP, 0}, {2, 4, 130, 16, 64, true, true, ELU, 0},
      {2, 4, 257, 3, 48, false, false, SP, 13}, {1, 8, 300, 16, 32, true, false, SP, 64},
      {2, 4, 200, 1, 80, false, true, ELU, 0},
  };
  int failed = 0;
  for (const Case& c : cases) failed += !validate_case(c, rng);
  const std::vector<std::pair<Case, std::vector<int64_t>>> decodes = {
      {{2, 4, 150, 5, 8, true, true, SP, 0}, std::vector<int64_t>(150, 1)},
      {{2, 4, 181, 16, 12, false, true, ELU, 0}, {1, 5, 64, 2, 70, 1, 1, 7, 30}},
      {{1, 8, 100, 16, 64, false, false, SP, 7}, {33, 1, 1, 65}},
  };
  for (const auto& [c, sizes] : decodes) failed += !validate_decode(c, sizes, rng);
  const size_t total = cases.size() + decodes.size();
  std::printf("validation (isa %s, %d threads, seed %llu): %zu cases, %d failed\n", isa_name(active_isa()), num_threads(),
              static_cast<unsigned long long>(seed), total, failed);
  return failed == 0;
}

double forward_flops(int64_t B, int64_t h, int64_t n, int64_t l, int64_t dh, int64_t c, bool tied) {
  return double(B * h * n) * ((tied ? 8.0 : 10.0) * l * dh + 4.0 * c * (dh + l));
}

double backward_flops(int64_t B, int64_t h, int64_t n, int64_t l, int64_t dh, int64_t c, bool tied) {
  return double(B * h * n) * ((tied ? 20.0 : 24.0) * l * dh + 10.0 * c * dh + 12.0 * c * l);
}

// Forward and forward+backward at the benchmark size, k === v, one chunk length.
void time_training(Report& report, int reps, int64_t chunk, bool sweep) {
  const int64_t B = 4, n = 4096, h = 4, dh = 64, l = 16;
  const int64_t X = B * h * n * dh, P = B * h * l * dh;
  std::mt19937_64 rng(7);
  Buffers<float> f;
  f.q = randn(X, rng); f.k = randn(X, rng); f.kc = randn(X, rng); f.pq = randn(P, rng); f.dout = randn(X, rng);
  f.out.resize(X); f.dq.resize(X); f.dk.resize(X); f.dkc.resize(X); f.dpq.resize(P);
  auto p = f.params(B, h, n, l, dh, true);
  p.chunk = chunk;
  const int64_t c = chunk > 0 ? chunk : kCausalChunk;
  // Read and written once: q, k (= v), kc, out (+ pq); backward adds dout in, dq, dk, dkc out.
  // No input rotation: one call's inputs and outputs (~110 MiB) already stream more than twice
  // the LLC past, so nothing is found in cache from the previous repetition.
  const double fwd_bytes = 4.0 * (4 * X + P), bwd_bytes = 4.0 * (7 * X + 2 * P);
  const std::string shape = "[4,4,4096,64] l=16 tied";
  const std::string params = sweep ? "c=" + std::to_string(c) : "";
  Record fwd{"causal_fwd", shape, params};
  fwd.t = time_ms(reps, [&] { causal_forward(p); });
  fwd.flops = forward_flops(B, h, n, l, dh, c, true);
  fwd.bytes = fwd_bytes;
  Record all{"causal_fwd+bwd", shape, params};
  all.t = time_ms(reps, [&] { causal_forward(p); causal_backward(p); });
  all.flops = fwd.flops + backward_flops(B, h, n, l, dh, c, true);
  all.bytes = fwd_bytes + bwd_bytes;
  // The error over the first (batch, head), against the float64 reference.
  Buffers<double> d;
  auto part = [](const std::vector<float>& x, int64_t len) { return std::vector<double>(x.begin(), x.begin() + len); };
  d.q = part(f.q, n * dh); d.k = part(f.k, n * dh); d.kc = part(f.kc, n * dh); d.pq = part(f.pq, l * dh);
  d.dout = part(f.dout, n * dh);
  d.out.resize(n * dh); d.dq.resize(n * dh); d.dk.resize(n * dh); d.dkc.resize(n * dh); d.dpq.resize(l * dh);
  auto pd = d.params(1, 1, n, l, dh, true);
  causal_reference_forward(pd);
  causal_reference_backward(pd);
  fwd.max_err = max_abs_diff(std::vector<float>(f.out.begin(), f.out.begin() + n * dh), d.out);
  all.max_err = std::max(fwd.max_err, max_abs_diff(std::vector<float>(f.dk.begin(), f.dk.begin() + n * dh), d.dk));
  report.add(fwd);
  report.add(all);
}

// Decoding `tokens` positions one at a time with causal_step, against recomputing the parallel
// forward over the whole prefix at every step (what a model without a decoding state does). The
// recompute's prefix copies are made outside the timed calls, so the baseline pays for the
// kernel alone. Returns the speed-up.
double time_decoding(Report& report, int64_t B, int64_t tokens, int reps) {
  const int64_t h = 4, dh = 64, l = 16, BH = B * h;
  std::mt19937_64 rng(11);
  const std::vector<float> q = randn(BH * tokens * dh, rng), k = randn(BH * tokens * dh, rng),
                           kc = randn(BH * tokens * dh, rng), pq = randn(BH * l * dh, rng);
  const float scale = 1.0f / 8.0f;
  std::vector<float> pq_scaled(pq);
  for (float& x : pq_scaled) x *= scale;
  // Per step t the token rows [B, h, 1, dh], laid out once.
  auto rows_at = [&](const std::vector<float>& x, int64_t t, float* dst) {
    for (int64_t bh = 0; bh < BH; ++bh) std::copy_n(x.begin() + (bh * tokens + t) * dh, dh, dst + bh * dh);
  };
  std::vector<float> qs(tokens * BH * dh), ks(tokens * BH * dh), kcs(tokens * BH * dh);
  for (int64_t t = 0; t < tokens; ++t) {
    rows_at(q, t, qs.data() + t * BH * dh);
    rows_at(k, t, ks.data() + t * BH * dh);
    rows_at(kc, t, kcs.data() + t * BH * dh);
  }
  std::vector<float> sk(BH * dh * l), sv(BH * l * dh), out(BH * dh), last_step(BH * dh);
  const Timing step = time_ms(reps, [&] {
    std::fill(sk.begin(), sk.end(), 0.0f);
    std::fill(sv.begin(), sv.end(), 0.0f);
    for (int64_t t = 0; t < tokens; ++t) {
      CausalParams<float> p;
      p.q = qs.data() + t * BH * dh; p.k = p.v = ks.data() + t * BH * dh; p.kc = kcs.data() + t * BH * dh;
      p.pq = pq_scaled.data(); p.out = out.data(); p.state_k = sk.data(); p.state_v = sv.data(); p.t0 = t;
      p.B = B; p.h = h; p.n = 1; p.l = l; p.dh = dh; p.scale = scale; p.pack_scale = 1;
      causal_step(p);
    }
  });
  last_step = out;

  // The baseline: the parallel forward over [B, h, t, dh] at every t (one rep: it is slow).
  double recompute_ms = 0;
  std::vector<float> pq_b(pq), qp, kp, kcp, op;
  double diff = 0;
  for (int64_t t = 1; t <= tokens; ++t) {
    qp.resize(BH * t * dh); kp.resize(BH * t * dh); kcp.resize(BH * t * dh); op.resize(BH * t * dh);
    for (int64_t bh = 0; bh < BH; ++bh) {
      std::copy_n(q.begin() + bh * tokens * dh, t * dh, qp.begin() + bh * t * dh);
      std::copy_n(k.begin() + bh * tokens * dh, t * dh, kp.begin() + bh * t * dh);
      std::copy_n(kc.begin() + bh * tokens * dh, t * dh, kcp.begin() + bh * t * dh);
    }
    CausalParams<float> p;
    p.q = qp.data(); p.k = p.v = kp.data(); p.kc = kcp.data(); p.pq = pq_b.data(); p.out = op.data();
    p.B = B; p.h = h; p.n = t; p.l = l; p.dh = dh; p.scale = p.pack_scale = scale;
    const double t0 = now_ms();
    causal_forward(p);
    recompute_ms += now_ms() - t0;
    if (t == tokens)
      for (int64_t bh = 0; bh < BH; ++bh)
        for (int64_t e = 0; e < dh; ++e)
          diff = std::max(diff, double(std::fabs(op[(bh * t + t - 1) * dh + e] - last_step[bh * dh + e])));
  }
  const double speedup = recompute_ms / step.median;
  const std::string shape = "[" + std::to_string(B) + ",4,1,64] l=16";
  Record r{"causal_decode_1000", shape, "tokens=" + std::to_string(tokens)};
  r.t = step;
  r.flops = double(tokens) * BH * 8.0 * l * dh;  // per token: T, O and the two state updates
  r.bytes = 4.0 * tokens * BH * 4 * dh;          // q, k, kc in, out out (the states stay in cache)
  r.max_err = diff;                              // last step against the parallel forward
  r.extra = {{"recompute_ms", recompute_ms}, {"speedup", speedup}, {"us_per_token", 1e3 * step.median / double(tokens)}};
  report.add(r);
  std::printf("  decoding %ld tokens at B=%ld: %.2f ms with causal_step (%.1f us/token) vs %.1f ms recomputing the prefix: %.0fx\n",
              long(tokens), long(B), step.median, 1e3 * step.median / double(tokens), recompute_ms, speedup);
  return speedup;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  if (!validate_all()) return 1;
  if (flags.validate_only) return 0;

  Report report("causal", flags, measure_peaks(flags.reps));
  report.header("causal Luna attention, float32, B=4 n=4096 h=4 dh=64 l=16, k === v, default chunk " +
                std::to_string(kCausalChunk));
  time_training(report, flags.reps, 0, false);
  report.header("chunk length sweep (the default was chosen from this)");
  for (int64_t c : {16, 32, 64, 128}) time_training(report, flags.reps, c, true);
  report.header("incremental decoding, float32, h=4 dh=64 l=16: causal_step vs recomputing the prefix");
  for (int64_t B : {1, 4}) time_decoding(report, B, 1000, flags.reps);
  return report.write() ? 0 : 1;
}
