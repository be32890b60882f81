// Native micro-benchmark of the blocked GEMM behind matmul / linear (no Node needed).
//
// 1. Validates: the fast float32 GEMM against the float64 reference with the project's policy
//    (error at most 2x the error of the plain float32 reference, plus 4 ulp of the rounding
//    scale, see rounding_scale), over every transpose combination, odd sizes, alpha / beta /
//    bias and batches; outputs start as NaN (beta = 0 must ignore them). Also the column sums
//    (3x, as a backward) and bitwise equality across thread counts.
// 2. Measures the machine's peaks in the same run (bench_common.h): sgemm GFLOP/s (OpenBLAS
//    through dlopen when present, else our own GEMM) and streaming-copy GB/s.
// 3. Times linear forward + backward (y = x W^T + b; dX = dY W, dW = dY^T X, db = colsum dY)
//    at x [16384, 256] with W [256, 256] and [1024, 256], inputs rotated out of the cache;
//    prints GFLOP/s, GB/s, both peak fractions, and OpenBLAS running the same three GEMMs.
// Flags: --validate-only, --reps N, --threads N, --json FILE.
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
  const uint64_t seed = validation_seed();
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
      cases.push_back({ta, tb, 1, 200, 64, 5000, 1.0f, 0.0f, false, false});  // long K: 20 chunks of kGemmKChunk
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

// Linear forward and backward at x [M, K], W [N, K]: our GEMM and column sums, then OpenBLAS on
// the same three products (what PyTorch's linear calls here). Inputs rotate through copies
// larger than the LLC. max_err is over the first rows (16 of dW, 64 of y and dX): the float64
// reference is plain loops, and every row is computed alike.
void time_linear(Report& report, int reps, Sgemm sgemm, int64_t M, int64_t K, int64_t N) {
  std::mt19937_64 rng(7);
  // x, dx [M, K]; w, dw [N, K]; bias, db [N]; y, dy [M, N]
  struct Set { std::vector<float> x, w, bias, dy, y, dx, dw, db; };
  Set base{randn(M * K, rng), randn(N * K, rng, 0.06f), randn(N, rng), randn(M * N, rng),
           std::vector<float>(M * N), std::vector<float>(M * K), std::vector<float>(N * K), std::vector<float>(N)};
  const double F = 4, fwd_bytes = F * (M * K + N * K + N + M * N), dx_bytes = F * (M * N + N * K + M * K),
               dw_bytes = F * (M * N + M * K + N * K), db_bytes = F * (M * N + N);
  // Enough sets that even the column sums, which touch the least, find dY out of cache.
  const int sets = rotation_sets(db_bytes);
  std::vector<Set> S(size_t(sets), base);
  auto fwd = [&](Set& s) {
    GemmParams<float> p;
    p.trans_b = true; p.M = M; p.N = N; p.K = K; p.a = s.x.data(); p.lda = K; p.b = s.w.data(); p.ldb = K;
    p.c = s.y.data(); p.ldc = N; p.bias = s.bias.data();
    gemm(p);
  };
  auto bwd_dx = [&](Set& s) { gemm<float>(false, false, M, K, N, 1.0f, s.dy.data(), N, s.w.data(), K, 0.0f, s.dx.data(), K); };
  auto bwd_dw = [&](Set& s) { gemm<float>(true, false, N, K, M, 1.0f, s.dy.data(), N, s.x.data(), K, 0.0f, s.dw.data(), K); };
  auto bwd_db = [&](Set& s) { column_sum<float>(M, N, s.dy.data(), N, s.db.data(), false); };
  const Timing t_fwd = time_rotated(reps, sets, [&](int i) { fwd(S[i]); });
  const Timing t_dx = time_rotated(reps, sets, [&](int i) { bwd_dx(S[i]); });
  const Timing t_dw = time_rotated(reps, sets, [&](int i) { bwd_dw(S[i]); });
  const Timing t_db = time_rotated(reps, sets, [&](int i) { bwd_db(S[i]); });
  const Timing total = time_rotated(reps, sets, [&](int i) { fwd(S[i]); bwd_dx(S[i]); bwd_dw(S[i]); bwd_db(S[i]); });
  Timing t_blas;
  if (sgemm) {
    t_blas = time_rotated(reps, sets, [&](int i) {
      Set& s = S[i];
      sgemm(kRowMajor, kNoTrans, kTrans, M, N, K, 1.0f, s.x.data(), K, s.w.data(), K, 0.0f, s.y.data(), N);
      sgemm(kRowMajor, kNoTrans, kNoTrans, M, K, N, 1.0f, s.dy.data(), N, s.w.data(), K, 0.0f, s.dx.data(), K);
      sgemm(kRowMajor, kTrans, kNoTrans, N, K, M, 1.0f, s.dy.data(), N, s.x.data(), K, 0.0f, s.dw.data(), K);
    });
  }
  // Our results are in S[0] again: re-run it once, OpenBLAS having written over y, dx and dw.
  fwd(S[0]); bwd_dx(S[0]); bwd_dw(S[0]); bwd_db(S[0]);
  const Set& s = S[0];
  auto wide = [](const float* x, int64_t n) { return std::vector<double>(x, x + n); };
  auto head = [](const std::vector<float>& x, int64_t n) { return std::vector<float>(x.begin(), x.begin() + n); };
  const int64_t rows = 64, wrows = 16;
  const auto x64 = wide(s.x.data(), M * K), w64 = wide(s.w.data(), N * K), b64 = wide(s.bias.data(), N),
             dy64 = wide(s.dy.data(), M * N);
  std::vector<double> y64(rows * N), dx64(rows * K), dw64(wrows * K), db64(N);
  auto reference = [](bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                      int64_t ldb, double* c, int64_t ldc, const double* bias) {
    GemmParams<double> p;
    p.trans_a = ta; p.trans_b = tb; p.M = m; p.N = n; p.K = k; p.a = a; p.lda = lda; p.b = b; p.ldb = ldb;
    p.c = c; p.ldc = ldc; p.bias = bias;
    gemm_reference(p);
  };
  reference(false, true, rows, N, K, x64.data(), K, w64.data(), K, y64.data(), N, b64.data());
  reference(false, false, rows, K, N, dy64.data(), N, w64.data(), K, dx64.data(), K, nullptr);
  reference(true, false, wrows, K, M, dy64.data(), N, x64.data(), K, dw64.data(), K, nullptr);
  column_sum_reference<double>(M, N, dy64.data(), N, db64.data());
  const double e_fwd = max_abs_diff(head(s.y, rows * N), y64), e_dx = max_abs_diff(head(s.dx, rows * K), dx64),
               e_dw = max_abs_diff(head(s.dw, wrows * K), dw64), e_db = max_abs_diff(s.db, db64);

  const std::string shape = "[" + std::to_string(M) + "," + std::to_string(K) + "]x[" + std::to_string(N) + "," +
                            std::to_string(K) + "]";
  auto add = [&](const char* kernel, const Timing& t, double flops, double bytes, double err,
                 const std::string& at = "") {
    Record r(kernel, at.empty() ? shape : at);
    r.t = t; r.flops = flops; r.bytes = bytes; r.max_err = err;
    if (!std::strcmp(kernel, "linear_fwd_bwd") && sgemm) r.extra = {{"openblas_ms", t_blas.median}, {"vs_openblas", t_blas.median / t.median}};
    report.add(r);
  };
  const double mnk2 = 2.0 * M * N * K;
  add("linear_fwd", t_fwd, mnk2, fwd_bytes, e_fwd);        // y = x W^T + b
  add("linear_dx", t_dx, mnk2, dx_bytes, e_dx);            // dX = dY W
  add("linear_dw", t_dw, mnk2, dw_bytes, e_dw);            // dW = dY^T X
  add("bias_grad", t_db, double(M) * N, db_bytes, e_db,    // db = column sums of dY [M, N]
      "[" + std::to_string(M) + "," + std::to_string(N) + "]");
  // The three products only (3 x 2MNK), as torch_bench.py and earlier runs count it.
  add("linear_fwd_bwd", total, 3 * mnk2, fwd_bytes + dx_bytes + dw_bytes + db_bytes, std::max({e_fwd, e_dx, e_dw, e_db}));
  if (sgemm) add("openblas_3_gemms", t_blas, 3 * mnk2, fwd_bytes + dx_bytes + dw_bytes, NAN);
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  if (!validate_all() || !validate_column_sum() || !check_determinism()) return 1;
  if (flags.validate_only) return 0;

  Report report("ops", flags, measure_peaks(flags.reps));
  std::string blas_name;
  Sgemm sgemm = load_openblas(blas_name);
  report.header("linear y = x W^T + b and its backward, float32 (openblas_3_gemms: the same products by " +
                (sgemm ? blas_name : std::string("nobody: OpenBLAS not found")) + ")");
  for (int64_t N : {256, 1024}) time_linear(report, flags.reps, sgemm, 16384, 256, N);
  return report.write() ? 0 : 1;
}
