// Native micro-benchmark of the blocked GEMM behind matmul / linear (no Node needed).
//
// 1. Validates: the fast float32 GEMM against the float64 reference with the project's policy
//    (error at most 2x the error of the plain float32 reference, plus 4 ulp of the rounding
//    scale, see rounding_scale), over every transpose combination, odd sizes, alpha / beta /
//    bias and batches; outputs start as NaN (beta = 0 must ignore them). Also the column sums
//    (3x, as a backward) and bitwise equality across thread counts.
// 2. Measures the machine's sgemm peak in the same run (OpenBLAS through dlopen when present,
//    else our own GEMM at 2048^3).
// 3. Times linear forward + backward (y = x W^T + b; dX = dY W, dW = dY^T X, db = colsum dY)
//    at x [16384, 256] with W [256, 256] and [1024, 256]; prints GFLOP/s, the fraction of the
//    sgemm peak, and OpenBLAS running the same three GEMMs (what PyTorch's linear calls here).
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

#include "../native/kernels/gemm.h"
#include "../native/reference/gemm_reference.h"
#include "../native/runtime/cpu_features.h"
#include "../native/runtime/thread_pool.h"
#include "bench_common.h"

using namespace luna;
using namespace luna::bench;

namespace {

// ---- validation ----
struct Case { bool ta, tb; int64_t batch, M, N, K; float alpha, beta; bool bias, shared_b; };

template <typename T>
struct Operands {
  std::vector<T> a, b, c, bias, c0;  // c0: C before the call
  GemmParams<T> params(const Case& k) {
    GemmParams<T> p;
    p.trans_a = k.ta; p.trans_b = k.tb; p.batch = k.batch; p.M = k.M; p.N = k.N; p.K = k.K;
    p.alpha = k.alpha; p.beta = k.beta;
    p.a = a.data(); p.lda = k.ta ? k.M : k.K; p.batch_stride_a = k.M * k.K;
    p.b = b.data(); p.ldb = k.tb ? k.K : k.N; p.batch_stride_b = k.shared_b ? 0 : k.K * k.N;
    p.c = c.data(); p.ldc = k.N; p.batch_stride_c = k.M * k.N;
    p.bias = k.bias ? bias.data() : nullptr;
    return p;
  }
};

// The floor of the tolerance: 4 ulp of the largest sqrt(sum_k (alpha a_ik b_kj)^2 + (beta c_ij)^2
// + bias_j^2), the size of the terms an element is summed from. (maxabs of the result, the
// floor the attention tests use, can be tiny by cancellation when C has one or two elements.)
double rounding_scale(Operands<double>& o, const Case& k) {
  GemmParams<double> p = o.params(k);
  double m = 0;
  for (int64_t bi = 0; bi < k.batch; ++bi)
    for (int64_t i = 0; i < k.M; ++i)
      for (int64_t j = 0; j < k.N; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k.K; ++q) {
          const double* a = p.a + bi * p.batch_stride_a;
          const double* b = p.b + bi * p.batch_stride_b;
          const double t = k.alpha * (k.ta ? a[q * p.lda + i] : a[i * p.lda + q]) * (k.tb ? b[j * p.ldb + q] : b[q * p.ldb + j]);
          s += t * t;
        }
        if (k.beta != 0) s += std::pow(k.beta * o.c0[bi * k.M * k.N + i * k.N + j], 2);
        if (k.bias) s += o.bias[j] * o.bias[j];
        m = std::max(m, std::sqrt(s));
      }
  return m;
}

template <typename T, typename S>
std::vector<T> cast(const std::vector<S>& x) { return std::vector<T>(x.begin(), x.end()); }

bool validate_case(const Case& k, std::mt19937_64& rng) {
  Operands<float> f;
  f.a = randn(k.batch * k.M * k.K, rng);
  f.b = randn((k.shared_b ? 1 : k.batch) * k.K * k.N, rng);
  f.bias = randn(k.N, rng);
  // beta = 0: C starts as NaN and must be ignored; otherwise it is data.
  f.c = k.beta == 0 ? std::vector<float>(k.batch * k.M * k.N, std::numeric_limits<float>::quiet_NaN())
                    : randn(k.batch * k.M * k.N, rng);
  Operands<float> plain = f;
  Operands<double> ref{cast<double>(f.a), cast<double>(f.b), cast<double>(f.c), cast<double>(f.bias), cast<double>(f.c)};
  gemm(f.params(k));
  gemm_reference(plain.params(k));
  gemm_reference(ref.params(k));
  const double ef = max_abs_diff(f.c, ref.c), ep = max_abs_diff(plain.c, ref.c);
  const double bound = 2 * ep + 4 * std::ldexp(1.0, -23) * rounding_scale(ref, k);
  const bool ok = ef <= bound;
  if (!ok)
    std::printf("  FAIL ta=%d tb=%d batch=%ld M=%ld N=%ld K=%ld alpha=%g beta=%g bias=%d: err %.3g > bound %.3g (plain %.3g)\n",
                k.ta, k.tb, long(k.batch), long(k.M), long(k.N), long(k.K), k.alpha, k.beta, k.bias, ef, bound, ep);
  return ok;
}

bool validate_all() {
  std::random_device rd;
  const uint64_t seed = (uint64_t(rd()) << 32) ^ rd();
  std::mt19937_64 rng(seed);
  std::vector<Case> cases;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      for (int64_t m : {1, 3, 7, 13, 14, 15, 33, 100})
        for (int64_t n : {1, 5, 16, 17, 31, 33, 65})
          for (int64_t kk : {1, 3, 37})
            cases.push_back({ta, tb, 1, m, n, kk, 1.0f, 0.0f, (m + n) % 2 == 0, false});
      cases.push_back({ta, tb, 1, 300, 130, 700, 1.0f, 0.0f, true, false});   // several K chunks
      cases.push_back({ta, tb, 1, 257, 97, 513, -0.5f, 0.75f, true, false});  // alpha, beta
      cases.push_back({ta, tb, 3, 29, 41, 300, 2.0f, 1.0f, false, false});    // batch
      cases.push_back({ta, tb, 4, 18, 35, 19, 1.0f, 0.0f, true, true});       // batch, shared B
      cases.push_back({ta, tb, 1, 1000, 64, 5000, 1.0f, 0.0f, false, false}); // long K
    }
  int failed = 0;
  for (const Case& c : cases) failed += !validate_case(c, rng);
  std::printf("validation (isa %s, %d threads, seed %llu): %zu cases, %d failed\n", isa_name(active_isa()),
              num_threads(), static_cast<unsigned long long>(seed), cases.size(), failed);
  return failed == 0;
}

// column_sum (the bias gradient) against the reference, with the backward factor 3.
bool validate_column_sum() {
  std::mt19937_64 rng(11);
  const int64_t rows = 16384, cols = 1000;
  std::vector<float> x = randn(rows * cols, rng), fast(cols, std::numeric_limits<float>::quiet_NaN()), plain(cols);
  std::vector<double> x64(x.begin(), x.end()), ref(cols);
  column_sum<float>(rows, cols, x.data(), cols, fast.data(), false);
  column_sum_reference<float>(rows, cols, x.data(), cols, plain.data());
  column_sum_reference<double>(rows, cols, x64.data(), cols, ref.data());
  const double ef = max_abs_diff(fast, ref), ep = max_abs_diff(plain, ref);
  const double bound = 3 * ep + 4 * std::ldexp(1.0, -23) * std::sqrt(double(rows)) * 4;
  std::printf("column sums %ldx%ld: error %.3g, plain float32 %.3g%s\n", long(rows), long(cols), ef, ep,
              ef <= bound ? "" : "  FAIL");
  return ef <= bound;
}

// Bitwise equality of the fast GEMM across thread counts on a large, long-K problem.
bool check_determinism() {
  std::mt19937_64 rng(3);
  const int64_t M = 700, N = 300, K = 3000;
  std::vector<float> a = randn(K * M, rng), b = randn(K * N, rng), bias = randn(N, rng);
  std::vector<std::vector<float>> outs;
  const int saved = num_threads();
  for (int t : {1, 2, 3, 5}) {
    set_num_threads(t);
    std::vector<float> c(M * N, std::numeric_limits<float>::quiet_NaN());
    GemmParams<float> p;
    p.trans_a = true; p.M = M; p.N = N; p.K = K; p.a = a.data(); p.lda = M; p.b = b.data(); p.ldb = N;
    p.c = c.data(); p.ldc = N; p.bias = bias.data();
    gemm(p);
    outs.push_back(c);
  }
  set_num_threads(saved);
  for (size_t i = 1; i < outs.size(); ++i)
    if (std::memcmp(outs[i].data(), outs[0].data(), outs[0].size() * sizeof(float)) != 0) {
      std::printf("  FAIL determinism: thread count changed the result\n");
      return false;
    }
  std::printf("determinism: 1/2/3/5 threads bitwise equal\n");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  const bool validate_only = flags.validate_only;
  const int reps = flags.reps;
  if (!validate_all() || !validate_column_sum() || !check_determinism()) return 1;
  if (validate_only) return 0;

  std::string blas_name;
  Sgemm sgemm = load_openblas(blas_name);
  std::mt19937_64 rng(7);
  double peak;
  std::string peak_source;
  if (sgemm) {
    peak_source = "OpenBLAS cblas_sgemm 2048^3 (" + blas_name + ")";
    peak = openblas_peak(sgemm, reps);
  } else {
    const int n = 2048;
    std::vector<float> a = randn(size_t(n) * n, rng), b = randn(size_t(n) * n, rng), c(size_t(n) * n);
    const double ms = median_ms(reps, [&] { gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); });
    peak_source = "own GEMM 2048^3 (OpenBLAS not found)";
    peak = 2.0 * n * n * double(n) / ms / 1e6;
  }
  std::printf("sgemm peak: %.1f GFLOP/s on %d threads [%s]\n", peak, num_threads(), peak_source.c_str());
  std::printf("%-22s %8s %8s %8s %8s %10s %11s %8s %10s %9s\n", "linear x[M,K] W[N,K]", "fwd ms", "dX ms", "dW ms",
              "db ms", "total ms", "GFLOP/s", "of peak", "BLAS ms", "vs BLAS");

  std::string json = "{\"peak_gflops\":" + std::to_string(peak) + ",\"peak_source\":\"" + peak_source +
                     "\",\"isa\":\"" + isa_name(active_isa()) + "\",\"threads\":" + std::to_string(num_threads()) +
                     ",\"shapes\":[";
  bool first = true;
  const int64_t M = 16384, K = 256;
  for (int64_t N : {256, 1024}) {
    std::vector<float> x = randn(M * K, rng), w = randn(N * K, rng, 0.06f), bias = randn(N, rng);
    std::vector<float> dy = randn(M * N, rng), y(M * N), dx(M * K), dw(N * K), db(N);
    auto fwd = [&] {
      GemmParams<float> p;
      p.trans_b = true; p.M = M; p.N = N; p.K = K; p.a = x.data(); p.lda = K; p.b = w.data(); p.ldb = K;
      p.c = y.data(); p.ldc = N; p.bias = bias.data();
      gemm(p);
    };
    auto bwd_dx = [&] { gemm<float>(false, false, M, K, N, 1.0f, dy.data(), N, w.data(), K, 0.0f, dx.data(), K); };
    auto bwd_dw = [&] { gemm<float>(true, false, N, K, M, 1.0f, dy.data(), N, x.data(), K, 0.0f, dw.data(), K); };
    auto bwd_db = [&] { column_sum<float>(M, N, dy.data(), N, db.data(), false); };
    const double t_fwd = median_ms(reps, fwd), t_dx = median_ms(reps, bwd_dx), t_dw = median_ms(reps, bwd_dw),
                 t_db = median_ms(reps, bwd_db);
    const double total = median_ms(reps, [&] { fwd(); bwd_dx(); bwd_dw(); bwd_db(); });
    const double flops = 3 * 2.0 * M * K * N;
    const double gf = flops / total / 1e6;
    double t_blas = 0;
    if (sgemm) {
      t_blas = median_ms(reps, [&] {
        sgemm(kRowMajor, kNoTrans, kTrans, M, N, K, 1.0f, x.data(), K, w.data(), K, 0.0f, y.data(), N);
        sgemm(kRowMajor, kNoTrans, kNoTrans, M, K, N, 1.0f, dy.data(), N, w.data(), K, 0.0f, dx.data(), K);
        sgemm(kRowMajor, kTrans, kNoTrans, N, K, M, 1.0f, dy.data(), N, x.data(), K, 0.0f, dw.data(), K);
      });
    }
    char label[64];
    std::snprintf(label, sizeof label, "[%ld,%ld] [%ld,%ld]", long(M), long(K), long(N), long(K));
    std::printf("%-22s %8.2f %8.2f %8.2f %8.2f %10.2f %11.1f %7.1f%% %10.2f %8.1f%%\n", label, t_fwd, t_dx, t_dw, t_db,
                total, gf, 100 * gf / peak, t_blas, t_blas > 0 ? 100 * t_blas / total : 0.0);
    char item[512];
    std::snprintf(item, sizeof item,
                  "%s{\"M\":%ld,\"K\":%ld,\"N\":%ld,\"fwd_ms\":%.3f,\"dx_ms\":%.3f,\"dw_ms\":%.3f,\"db_ms\":%.3f,"
                  "\"fwdbwd_ms\":%.3f,\"fwdbwd_gflops\":%.2f,\"fraction_of_peak\":%.4f,\"openblas_3gemm_ms\":%.3f,"
                  "\"fraction_of_openblas\":%.4f}",
                  first ? "" : ",", long(M), long(K), long(N), t_fwd, t_dx, t_dw, t_db, total, gf, gf / peak, t_blas,
                  t_blas > 0 ? t_blas / total : 0.0);
    json += item;
    first = false;
  }
  json += "]}";
  std::printf("RESULT_JSON %s\n", json.c_str());
  return 0;
}
