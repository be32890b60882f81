// Native micro-benchmark of the fused pack / unpack attention kernels (no Node needed).
//
// 1. Validates: the fast float32 kernels against the float64 reference, with the project's
//    policy (error at most 2x forward / 3x backward the error of a plain float32 implementation
//    of the same math), over small odd shapes, masks and tied k/v. Outputs start as NaN.
// 2. Measures the machine's peaks in the same run (bench_common.h): sgemm GFLOP/s (OpenBLAS
//    through dlopen when present, else our own GEMM) and streaming-copy GB/s.
// 3. Times pack and unpack, forward and backward, at B=4, n=4096, h=4, dh=64, l in
//    {16, 64, 128, 256} (k === v as in Luna's tied projection), inputs rotated out of the cache;
//    prints GFLOP/s, GB/s and both peak fractions (these kernels are compute-bound: the flop
//    fraction is the one to chase).
// Flags: --validate-only, --reps N, --threads N, --json FILE. The last line is `RESULT_JSON {...}`
// (bench/run-ops.mjs reads it).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../native/kernels/attention.h"
#include "../native/reference/attention_reference.h"
#include "../native/runtime/cpu_features.h"
#include "../native/runtime/thread_pool.h"
#include "bench_common.h"

using namespace luna;
using namespace luna::bench;

namespace {

template <typename T>
std::vector<double> widen(const std::vector<T>& x) { return std::vector<double>(x.begin(), x.end()); }

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) if (std::isfinite(v)) m = std::max(m, std::fabs(v));
  return m;
}

// All buffers of one attention call in one precision.
template <typename T>
struct Buffers {
  std::vector<T> q, k, v, out, lse, dout, dq, dk, dv;
  std::vector<uint8_t> mask;
  AttentionParams<T> params(int64_t B, int64_t h, int64_t lq, int64_t lk, int64_t dh, double scale, bool tied) {
    AttentionParams<T> p;
    p.q = q.data(); p.k = k.data(); p.v = tied ? k.data() : v.data();
    p.mask = mask.empty() ? nullptr : mask.data();
    p.out = out.data(); p.lse = lse.data(); p.dout = dout.data();
    p.dq = dq.data(); p.dk = dk.data(); p.dv = tied ? dk.data() : dv.data();
    p.B = B; p.h = h; p.lq = lq; p.lk = lk; p.dh = dh; p.scale = scale;
    return p;
  }
};

template <typename T, typename S>
Buffers<T> convert(const Buffers<S>& s) {
  Buffers<T> t;
  auto c = [](const std::vector<S>& x) { return std::vector<T>(x.begin(), x.end()); };
  t.q = c(s.q); t.k = c(s.k); t.v = c(s.v); t.out = c(s.out); t.lse = c(s.lse); t.dout = c(s.dout);
  t.dq = c(s.dq); t.dk = c(s.dk); t.dv = c(s.dv); t.mask = s.mask;
  return t;
}

struct Case { const char* op; int64_t B, h, lq, lk, dh; bool mask, tied; float qscale; };

// Returns true when the fast kernel meets the error policy on this case.
bool validate_case(const Case& c, std::mt19937_64& rng) {
  const int64_t qn = c.B * c.h * c.lq * c.dh, kn = c.B * c.h * c.lk * c.dh;
  const double scale = 1.0 / std::sqrt(double(c.dh));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Buffers<float> f;
  f.q = randn(qn, rng, c.qscale); f.k = randn(kn, rng); f.v = randn(kn, rng); f.dout = randn(qn, rng);
  f.out.assign(qn, nan); f.lse.assign(c.B * c.h * c.lq, nan);
  f.dq.assign(qn, nan); f.dk.assign(kn, nan); f.dv.assign(kn, nan);
  if (c.mask) {
    f.mask.resize(c.B * c.lk);
    std::bernoulli_distribution pad(0.3);
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t j = 0; j < c.lk; ++j) f.mask[b * c.lk + j] = pad(rng);
      f.mask[b * c.lk + (b % c.lk)] = 0;  // never empty a row here; a separate test covers that
    }
  }
  Buffers<float> plain = f;
  Buffers<double> ref = convert<double>(f);
  const bool pack = std::strcmp(c.op, "pack") == 0;
  auto pf = f.params(c.B, c.h, c.lq, c.lk, c.dh, scale, c.tied);
  auto pp = plain.params(c.B, c.h, c.lq, c.lk, c.dh, scale, c.tied);
  auto pr = ref.params(c.B, c.h, c.lq, c.lk, c.dh, scale, c.tied);
  if (pack) { pack_forward(pf); pack_backward(pf); } else { unpack_forward(pf); unpack_backward(pf); }
  reference_forward(pp); reference_backward(pp);
  reference_forward(pr); reference_backward(pr);
  bool ok = true;
  // Besides the 2x / 3x policy, a floor of 4 float32 ulps of the largest true value.
  auto check = [&](const char* name, const std::vector<float>& fast, const std::vector<float>& pl,
                   const std::vector<double>& truth, double factor) {
    const double ef = max_abs_diff(fast, truth), ep = max_abs_diff(pl, truth);
    const double bound = factor * ep + 4 * std::ldexp(1.0, -23) * max_abs(truth);
    if (!(ef <= bound)) {
      std::printf("  FAIL %s %s B=%ld h=%ld lq=%ld lk=%ld dh=%ld mask=%d tied=%d: err %.3g > bound %.3g (plain %.3g)\n",
                  c.op, name, long(c.B), long(c.h), long(c.lq), long(c.lk), long(c.dh), c.mask, c.tied, ef, bound, ep);
      ok = false;
    }
  };
  check("out", f.out, plain.out, ref.out, 2);
  check("lse", f.lse, plain.lse, ref.lse, 2);
  check("dq", f.dq, plain.dq, ref.dq, 3);
  check("dk", f.dk, plain.dk, ref.dk, 3);
  if (!c.tied) check("dv", f.dv, plain.dv, ref.dv, 3);
  return ok;
}

bool validate_all() {
  const uint64_t seed = validation_seed();
  std::mt19937_64 rng(seed);
  std::vector<Case> cases;
  for (const char* op : {"pack", "unpack"}) {
    for (int64_t dh : {1, 5, 32, 48, 64, 80, 128}) {
      cases.push_back({op, 2, 3, 7, 33, dh, true, false, 1.0f});
      cases.push_back({op, 1, 2, 33, 7, dh, false, true, 1.0f});
    }
    for (int64_t l : {1, 3, 16, 17, 64, 256}) {
      cases.push_back({op, 2, 2, l, 1000, 64, true, true, 1.0f});
      cases.push_back({op, 1, 3, 1000, l, 32, true, false, 1.0f});
      // Larger logits, > 1 chunk. At least 8 query rows (heads x l): with sharp softmaxes a
      // row's error is set by one or two dominant keys, so over a single row both maxima are
      // single draws and their ratio is heavy-tailed (measured at l = 1: p99 3.5 with one head,
      // 0.96 with eight, while the kernel's median error is 0.4x the plain one either way).
      cases.push_back({op, 1, std::max<int64_t>(1, (8 + l - 1) / l), l, 2500, 64, false, false, 4.0f});
      cases.push_back({op, 1, 1, 2500, l, 64, false, true, 4.0f});
    }
  }
  int failed = 0;
  for (const Case& c : cases) failed += !validate_case(c, rng);
  std::printf("validation (isa %s, %d threads, seed %llu): %zu cases, %d failed\n", isa_name(active_isa()),
              num_threads(), static_cast<unsigned long long>(seed), cases.size(), failed);
  return failed == 0;
}

// Pack+unpack at one l: the l packed rows over the n-long sequence (pack) and the n positions
// over the l packed rows (unpack), k === v as in Luna's tied projection. Inputs rotate through
// copies larger than the LLC. max_err is over the first (batch, head): the float64 reference
// is plain loops, and every (batch, head) is computed alike.
std::string time_l(Report& report, int reps, int64_t l) {
  const int64_t B = 4, n = 4096, h = 4, dh = 64, d = h * dh;
  const double scale = 1.0 / std::sqrt(double(dh));
  std::mt19937_64 rng(7);
  // pack: q, out, dout, dq [B, h, l, dh]; k (= v), dk [B, h, n, dh]; lse [B, h, l]
  // unpack: q, out, dout, dq [B, h, n, dh]; k (= v), dk [B, h, l, dh]; lse [B, h, n]
  Buffers<float> pk, up;
  pk.q = randn(B * h * l * dh, rng); pk.k = randn(B * h * n * dh, rng); pk.dout = randn(B * h * l * dh, rng);
  pk.out.resize(pk.q.size()); pk.lse.resize(B * h * l); pk.dq.resize(pk.q.size()); pk.dk.resize(pk.k.size());
  up.q = randn(B * h * n * dh, rng); up.k = randn(B * h * l * dh, rng); up.dout = randn(B * h * n * dh, rng);
  up.out.resize(up.q.size()); up.lse.resize(B * h * n); up.dq.resize(up.q.size()); up.dk.resize(up.k.size());

  // The fewest bytes (luna-math.md section 6, float32, tied): a forward reads q and k once and
  // writes out and lse; a backward reads q, k, out, dout and lse and writes dq and dk.
  const double F = 4, pack_fwd_bytes = F * (2.0 * B * l * d + B * n * d + B * h * l),
               unpack_fwd_bytes = F * (2.0 * B * n * d + B * l * d + B * h * n),
               pack_bwd_bytes = F * (4.0 * B * l * d + 2.0 * B * n * d + B * h * l),
               unpack_bwd_bytes = F * (4.0 * B * n * d + 2.0 * B * l * d + B * h * n);
  // Enough sets that even the forward, which touches the least, finds its inputs out of cache.
  const int sp = rotation_sets(pack_fwd_bytes), su = rotation_sets(unpack_fwd_bytes);
  std::vector<Buffers<float>> pks(size_t(sp), pk), ups(size_t(su), up);
  std::vector<AttentionParams<float>> pp, pu;
  for (auto& b : pks) pp.push_back(b.params(B, h, l, n, dh, scale, true));
  for (auto& b : ups) pu.push_back(b.params(B, h, n, l, dh, scale, true));
  // The forwards run first: their pass over every set leaves the out and lse the backwards read.
  const Timing pack_fwd = time_rotated(reps, sp, [&](int s) { pack_forward(pp[s]); });
  const Timing unpack_fwd = time_rotated(reps, su, [&](int s) { unpack_forward(pu[s]); });
  const Timing pack_bwd = time_rotated(reps, sp, [&](int s) { pack_backward(pp[s]); });
  const Timing unpack_bwd = time_rotated(reps, su, [&](int s) { unpack_backward(pu[s]); });
  const Timing all = time_rotated(reps, std::max(sp, su), [&](int s) {
    pack_forward(pp[s % sp]); unpack_forward(pu[s % su]); pack_backward(pp[s % sp]); unpack_backward(pu[s % su]);
  });

  // Errors on (batch 0, head 0) of set 0: the first lq * dh elements of each [B, h, lq, dh] array.
  auto slice_err = [&](const Buffers<float>& f, int64_t lq, int64_t lk, double& fwd, double& bwd) {
    Buffers<double> r;
    auto first = [](const std::vector<float>& x, int64_t k) { return std::vector<double>(x.begin(), x.begin() + k); };
    r.q = first(f.q, lq * dh); r.k = first(f.k, lk * dh); r.dout = first(f.dout, lq * dh);
    r.out.resize(lq * dh); r.lse.resize(lq); r.dq.resize(lq * dh); r.dk.resize(lk * dh);
    auto p = r.params(1, 1, lq, lk, dh, scale, true);
    reference_forward(p);
    reference_backward(p);
    auto cut = [](const std::vector<float>& x, size_t k) { return std::vector<float>(x.begin(), x.begin() + k); };
    fwd = max_abs_diff(cut(f.out, r.out.size()), r.out);
    bwd = std::max(max_abs_diff(cut(f.dq, r.dq.size()), r.dq), max_abs_diff(cut(f.dk, r.dk.size()), r.dk));
  };
  double pack_fwd_err, pack_bwd_err, unpack_fwd_err, unpack_bwd_err;
  slice_err(pks[0], l, n, pack_fwd_err, pack_bwd_err);
  slice_err(ups[0], n, l, unpack_fwd_err, unpack_bwd_err);

  const double unit = double(B) * h * n * l * dh;  // one multiply-add pass over the n x l logits
  const std::string shape = "[4,4,4096,64]", params = "l=" + std::to_string(l) + " tied";
  auto add = [&](const char* kernel, const Timing& t, double flops, double bytes, double err) {
    Record r(kernel, shape, params);
    r.t = t; r.flops = flops; r.bytes = bytes; r.max_err = err;
    report.add(r);
  };
  // Forward: 2 products (QK^T, AV); backward: 5 (QK^T again, dV, dO V^T, dQ, dK).
  add("pack_fwd", pack_fwd, 4 * unit, pack_fwd_bytes, pack_fwd_err);
  add("unpack_fwd", unpack_fwd, 4 * unit, unpack_fwd_bytes, unpack_fwd_err);
  add("pack_bwd", pack_bwd, 10 * unit, pack_bwd_bytes, pack_bwd_err);
  add("unpack_bwd", unpack_bwd, 10 * unit, unpack_bwd_bytes, unpack_bwd_err);
  add("pack_unpack_fwd_bwd", all, 28 * unit, pack_fwd_bytes + unpack_fwd_bytes + pack_bwd_bytes + unpack_bwd_bytes,
      std::max({pack_fwd_err, pack_bwd_err, unpack_fwd_err, unpack_bwd_err}));

  // The summary bench/run-ops.mjs reads (RESULT_JSON), as before the shared recorder.
  const double fwd = pack_fwd.median + unpack_fwd.median, bwd = pack_bwd.median + unpack_bwd.median;
  const double all_gf = 28 * unit / all.median / 1e6;
  char item[400];
  std::snprintf(item, sizeof item,
                "{\"l\":%ld,\"fwd_ms\":%.3f,\"bwd_ms\":%.3f,\"fwdbwd_ms\":%.3f,\"fwd_gflops\":%.2f,"
                "\"fwdbwd_gflops\":%.2f,\"fraction_of_peak\":%.4f}",
                long(l), fwd, bwd, all.median, 8 * unit / fwd / 1e6, all_gf, all_gf / report.peaks().gflops);
  return item;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  if (!validate_all()) return 1;
  if (flags.validate_only) return 0;

  Report report("attention", flags, measure_peaks(flags.reps));
  report.header("pack / unpack attention, float32, k === v, q/k/v [B=4, h=4, n=4096, dh=64], l packed rows");
  std::string shapes;
  for (int64_t l : {16, 64, 128, 256}) shapes += (shapes.empty() ? "" : ",") + time_l(report, flags.reps, l);
  const Peaks& peaks = report.peaks();
  std::printf("RESULT_JSON {\"peak_gflops\":%.2f,\"peak_source\":%s,\"peak_gbs\":%.2f,\"isa\":\"%s\",\"threads\":%d,"
              "\"shapes\":[%s]}\n",
              peaks.gflops, json_str(peaks.flop_source).c_str(), peaks.gbs, isa_name(active_isa()), num_threads(),
              shapes.c_str());
  return report.write() ? 0 : 1;
}
