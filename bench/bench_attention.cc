// Native micro-benchmark of the fused pack / unpack attention kernels (no Node needed).
//
// 1. Validates: the fast float32 kernels against the float64 reference, with the project's
//    policy (error at most 2x forward / 3x backward the error of a plain float32 implementation
//    of the same math), over small odd shapes, masks and tied k/v. Outputs start as NaN.
// 2. Measures the machine's sgemm peak in the same run (OpenBLAS through dlopen when present,
//    else our own tile GEMM on an L1-resident tile).
// 3. Times pack+unpack forward and backward at B=4, n=4096, h=4, dh=64, l in {16,64,128,256}
//    (k === v as in Luna's tied projection) and prints GFLOP/s and the fraction of the peak.
// Flags: --validate-only, --reps N, --threads N. The last line is `RESULT_JSON {...}`.
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
#include "../native/kernels/tile_gemm.h"
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
  std::random_device rd;
  const uint64_t seed = (uint64_t(rd()) << 32) ^ rd();
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
      cases.push_back({op, 1, 1, l, 2500, 64, false, false, 4.0f});  // larger logits, > 1 chunk
      cases.push_back({op, 1, 1, 2500, l, 64, false, true, 4.0f});
    }
  }
  int failed = 0;
  for (const Case& c : cases) failed += !validate_case(c, rng);
  std::printf("validation (isa %s, %d threads, seed %llu): %zu cases, %d failed\n", isa_name(active_isa()),
              num_threads(), static_cast<unsigned long long>(seed), cases.size(), failed);
  return failed == 0;
}

// sgemm peak: OpenBLAS when it can be loaded (the library PyTorch uses here), else our tile GEMM.
double measure_sgemm_peak(std::string& source) {
  std::string lib;
  if (Sgemm sgemm = load_openblas(lib)) {
    source = "OpenBLAS cblas_sgemm 2048^3 (" + lib + ")";
    return openblas_peak(sgemm, 5);
  }
  // Fallback: every thread runs our tile GEMM on its own L1-resident 64x64x64 tile.
  const int64_t t = 64, inner = 200;
  const int threads = num_threads();
  std::vector<std::vector<float>> bufs(threads * 3, std::vector<float>(t * t, 0.5f));
  const double ms = median_ms(5, [&] {
    parallel_for(threads, [&](int64_t w) {
      for (int it = 0; it < inner; ++it)
        tile_gemm<float>(t, t, t, 1.0f, bufs[w * 3].data(), t, 1, bufs[w * 3 + 1].data(), t, bufs[w * 3 + 2].data(), t, true);
    });
  });
  source = "own tile GEMM 64^3 in L1 (OpenBLAS not found)";
  return 2.0 * t * t * t * inner * threads / ms / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  const bool validate_only = flags.validate_only;
  const int reps = flags.reps;
  if (!validate_all()) return 1;
  if (validate_only) return 0;

  std::string peak_source;
  const double peak = measure_sgemm_peak(peak_source);
  std::printf("sgemm peak: %.1f GFLOP/s on %d threads [%s]\n", peak, num_threads(), peak_source.c_str());
  std::printf("%-5s %10s %10s %12s %12s %12s %9s\n", "l", "fwd ms", "bwd ms", "fwd+bwd ms", "fwd GFLOP/s", "all GFLOP/s", "of peak");

  const int64_t B = 4, n = 4096, h = 4, dh = 64;
  const double scale = 1.0 / std::sqrt(double(dh));
  std::mt19937_64 rng(7);
  std::string json = "{\"peak_gflops\":" + std::to_string(peak) + ",\"peak_source\":\"" + peak_source +
                     "\",\"isa\":\"" + isa_name(active_isa()) + "\",\"threads\":" + std::to_string(num_threads()) +
                     ",\"shapes\":[";
  bool first = true;
  for (int64_t l : {16, 64, 128, 256}) {
    // Pack: l queries over n keys (k === v). Unpack: n queries over l keys (k === v).
    Buffers<float> pk, up;
    pk.q = randn(B * h * l * dh, rng); pk.k = randn(B * h * n * dh, rng); pk.dout = randn(B * h * l * dh, rng);
    pk.out.resize(B * h * l * dh); pk.lse.resize(B * h * l); pk.dq.resize(pk.q.size()); pk.dk.resize(pk.k.size());
    up.q = randn(B * h * n * dh, rng); up.k = randn(B * h * l * dh, rng); up.dout = randn(B * h * n * dh, rng);
    up.out.resize(B * h * n * dh); up.lse.resize(B * h * n); up.dq.resize(up.q.size()); up.dk.resize(up.k.size());
    auto pp = pk.params(B, h, l, n, dh, scale, true);
    auto pu = up.params(B, h, n, l, dh, scale, true);
    const double fwd = median_ms(reps, [&] { pack_forward(pp); unpack_forward(pu); });
    const double bwd = median_ms(reps, [&] { pack_backward(pp); unpack_backward(pu); });
    const double unit = double(B) * h * n * l * dh;  // one multiply-add pass over the n x l logits
    const double fwd_gf = 8 * unit / fwd / 1e6, all_gf = 28 * unit / (fwd + bwd) / 1e6;
    std::printf("%-5ld %10.2f %10.2f %12.2f %12.1f %12.1f %8.1f%%\n", long(l), fwd, bwd, fwd + bwd, fwd_gf, all_gf,
                100 * all_gf / peak);
    char item[400];
    std::snprintf(item, sizeof item,
                  "%s{\"l\":%ld,\"fwd_ms\":%.3f,\"bwd_ms\":%.3f,\"fwdbwd_ms\":%.3f,\"fwd_gflops\":%.2f,"
                  "\"fwdbwd_gflops\":%.2f,\"fraction_of_peak\":%.4f}",
                  first ? "" : ",", long(l), fwd, bwd, fwd + bwd, fwd_gf, all_gf, all_gf / peak);
    json += item;
    first = false;
  }
  json += "]}";
  std::printf("RESULT_JSON %s\n", json.c_str());
  return 0;
}
