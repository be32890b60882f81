// The GEMM family on CUDA (cuda/gemm_cuda.h), validated two ways on every case:
//   - the policy (design.md): error against the float64 reference <= 2x that of the plain float32
//     reference (the same loops in float32); 3x for the column sums, as bench/bench_ops.cc;
//   - bit for bit against the kernels' documented rounding order (gemm_cuda.h), recomputed here on
//     the host: this catches a wrong index or a missed element even where one element's error is
//     too small a sample for the policy to see it.
// The policy's ulp floor is the one bench/bench_ops.cc uses for GEMM: 4 ulp of the size of the
// terms an element is summed from (sqrt of their sum of squares), not of the result, which can be
// tiny by cancellation when C has one or two elements.
// Shapes: small and odd, every transpose combination, batches (own and shared B), alpha / beta /
// bias, K = 0, aligned and unaligned rows, strides, both block tiles and split-K; column sums and
// the bias add (exact). Then the linear shapes of the issue and a square 4096^3 product, whose rate
// is the table's "library matmul rate" stand-in (ctx.gemm_tflops).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../../cuda/gemm_cuda.h"
#include "../../native/kernels/gemm.h"
#include "../../native/reference/gemm_reference.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

constexpr double kUlp32 = 1.0 / (1 << 23);

template <typename T, typename S>
std::vector<T> cast(const std::vector<S>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// Printed after validation: the worst error as a fraction of the policy's bound, and as a multiple
// of the plain float32 error over results of at least 256 elements (fewer make the plain error a
// sample too small to compare with).
double g_worst_of_bound = 0, g_worst_ratio = 0;

// The policy with the floor described at the top: error <= factor * plain error + 4 ulp * scale,
// scale at least the largest result (expect_policy's floor).
bool policy(Context& ctx, const std::string& what, const std::vector<float>& got, const std::vector<float>& plain,
            const std::vector<double>& truth, double factor, double scale) {
  ++ctx.cases;
  const double ec = max_abs_diff(got, truth), ep = max_abs_diff(plain, truth);
  const double bound = factor * ep + 4 * kUlp32 * std::max(scale, max_abs(truth));
  if (bound > 0) g_worst_of_bound = std::max(g_worst_of_bound, ec / bound);
  if (ep > 0 && truth.size() >= 256) g_worst_ratio = std::max(g_worst_ratio, ec / ep);
  if (!(ec <= bound) || got.size() != truth.size()) {
    std::printf("  FAIL %s: err %.3g > bound %.3g (plain float32 err %.3g, factor %g)\n", what.c_str(), ec, bound, ep,
                factor);
    ++ctx.failures;
    return false;
  }
  return true;
}

// max over elements of sqrt(sum_k (alpha a_ik b_kj)^2 + (beta c_ij)^2 + bias_j^2); p.c holds C
// before the call.
double rounding_scale(const GemmParams<double>& p) {
  double m = 0;
  for (int64_t t = 0; t < p.batch; ++t) {
    const double *a = p.a + t * p.batch_stride_a, *b = p.b + t * p.batch_stride_b, *c = p.c + t * p.batch_stride_c;
    for (int64_t i = 0; i < p.M; ++i)
      for (int64_t j = 0; j < p.N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < p.K; ++k) {
          const double x = p.alpha * (p.trans_a ? a[k * p.lda + i] : a[i * p.lda + k]) *
                           (p.trans_b ? b[j * p.ldb + k] : b[k * p.ldb + j]);
          s += x * x;
        }
        if (p.beta != 0) s += std::pow(p.beta * c[i * p.ldc + j], 2);
        if (p.bias) s += p.bias[j] * p.bias[j];
        m = std::max(m, std::sqrt(s));
      }
  }
  return m;
}

// The CUDA GEMM's arithmetic, step for step (gemm_cuda.h), on the host: p.c (C before the call)
// is overwritten. `plan` is the one the device call followed (for a product of more rows than p
// has, when only its first rows are checked).
void exact_order(const GemmParams<float>& p, const cuda::GemmPlan& plan) {
  for (int64_t t = 0; t < p.batch; ++t) {
    const float *a = p.a + t * p.batch_stride_a, *b = p.b + t * p.batch_stride_b;
    float* c = p.c + t * p.batch_stride_c;
    for (int64_t i = 0; i < p.M; ++i)
      for (int64_t j = 0; j < p.N; ++j) {
        float sum = 0;
        for (int64_t k0 = 0, q = 0; q < plan.splits; ++q, k0 += plan.k_per_split) {
          float piece = 0;
          for (int64_t k = k0; k < std::min(p.K, k0 + plan.k_per_split); ++k)
            piece = std::fma(p.trans_a ? a[k * p.lda + i] : a[i * p.lda + k],
                             p.trans_b ? b[j * p.ldb + k] : b[k * p.ldb + j], piece);
          sum = q == 0 ? piece : sum + piece;
        }
        float x = p.alpha * sum;
        if (p.beta != 0) x = std::fma(p.beta, c[i * p.ldc + j], x);
        if (p.bias) x = x + p.bias[j];
        c[i * p.ldc + j] = x;
      }
  }
}

// One GEMM case. ld_pad adds columns past each stored row (strided operands, as gemm_device's
// callers pass), after rounding the row up to a multiple of 4 floats with ld_round4 (aligned
// rows whose last quad is partly outside the matrix); offset moves every operand one float off
// its 16-byte alignment. Padding holds NaN: the kernel must never let it into a result.
struct GemmCase {
  bool ta = false, tb = false;
  int64_t batch = 1, M = 1, N = 1, K = 1;
  float alpha = 1, beta = 0;
  bool bias = false, shared_b = false;
  int64_t ld_pad = 0;
  bool ld_round4 = false;
  bool offset = false;
  cuda::GemmTile tile = cuda::GemmTile::Auto;
  int splits = 0;
};

std::string describe(const GemmCase& k) {
  char s[256];
  std::snprintf(s, sizeof s,
                "gemm ta=%d tb=%d batch=%ld M=%ld N=%ld K=%ld alpha=%g beta=%g bias=%d shared_b=%d pad=%ld round4=%d "
                "off=%d tile=%d splits=%d",
                k.ta, k.tb, long(k.batch), long(k.M), long(k.N), long(k.K), k.alpha, k.beta, k.bias, k.shared_b,
                long(k.ld_pad), k.ld_round4, k.offset, int(k.tile), k.splits);
  return s;
}

// The operands of a case, stored as the GemmParams describe them (row strides with padding).
struct Layout {
  int64_t lda, ldb, ldc, sa, sb, sc, na, nb, nc;
  explicit Layout(const GemmCase& k) {
    auto ld = [&](int64_t cols) { return (k.ld_round4 ? (cols + 3) / 4 * 4 : cols) + k.ld_pad; };
    lda = ld(k.ta ? k.M : k.K);
    ldb = ld(k.tb ? k.K : k.N);
    ldc = ld(k.N);
    sa = (k.ta ? k.K : k.M) * lda;
    sb = k.shared_b ? 0 : (k.tb ? k.N : k.K) * ldb;
    sc = k.M * ldc;
    na = k.batch * sa, nb = k.shared_b ? (k.tb ? k.N : k.K) * ldb : k.batch * sb, nc = k.batch * sc;
  }
  template <typename T>
  GemmParams<T> params(const GemmCase& k, const T* a, const T* b, T* c, const T* bias) const {
    GemmParams<T> p;
    p.trans_a = k.ta, p.trans_b = k.tb, p.batch = k.batch, p.M = k.M, p.N = k.N, p.K = k.K;
    p.alpha = T(k.alpha), p.beta = T(k.beta);
    p.a = a, p.lda = lda, p.batch_stride_a = sa;
    p.b = b, p.ldb = ldb, p.batch_stride_b = sb;
    p.c = c, p.ldc = ldc, p.batch_stride_c = sc;
    p.bias = k.bias ? bias : nullptr;
    return p;
  }
};

// x uploaded into a device array one float longer, at element `off` (0 or 1).
struct Placed {
  DeviceArray<float> dev;
  float* ptr;
  Placed(const std::vector<float>& x, bool off) : dev(x.size() + 1), ptr(dev.get() + (off ? 1 : 0)) {
    std::vector<float> host(x.size() + 1, 0.f);
    std::copy(x.begin(), x.end(), host.begin() + (off ? 1 : 0));
    dev.upload(host);
  }
  std::vector<float> download(size_t n, bool off) const {
    const std::vector<float> all = dev.download();
    return std::vector<float>(all.begin() + (off ? 1 : 0), all.begin() + (off ? 1 : 0) + long(n));
  }
};

// NaN in the columns of a row-major matrix (rows of `ld`) past `cols`.
void poison_padding(std::vector<float>& x, int64_t ld, int64_t cols) {
  for (size_t i = 0; i < x.size(); ++i)
    if (int64_t(i) % ld >= cols) x[i] = std::numeric_limits<float>::quiet_NaN();
}

// The CUDA result `got` of the product p_f describes (host copies; p_f.c = C before the call)
// against the float64 truth (policy) and the documented rounding order (exact).
void check_product(Context& ctx, const std::string& what, const GemmParams<float>& pf, const std::vector<float>& got,
                   const cuda::GemmPlan& plan) {
  const size_t n = got.size();
  const int64_t extent_a = pf.trans_a ? pf.K * pf.lda : pf.M * pf.lda;  // of one item, rounded up below
  const int64_t extent_b = pf.trans_b ? pf.N * pf.ldb : pf.K * pf.ldb;
  const size_t na = size_t((pf.batch - 1) * pf.batch_stride_a + extent_a);
  const size_t nb = size_t((pf.batch - 1) * pf.batch_stride_b + extent_b);
  const std::vector<float> a(pf.a, pf.a + na), b(pf.b, pf.b + nb), c0(pf.c, pf.c + n);
  const std::vector<float> bias = pf.bias ? std::vector<float>(pf.bias, pf.bias + pf.N) : std::vector<float>();
  std::vector<float> plain = c0, exact = c0;
  const std::vector<double> a64 = cast<double>(a), b64 = cast<double>(b), bias64 = cast<double>(bias);
  std::vector<double> truth = cast<double>(c0);
  GemmParams<float> p = pf;
  p.a = a.data(), p.b = b.data(), p.bias = pf.bias ? bias.data() : nullptr;
  p.c = plain.data();
  gemm_reference(p);
  p.c = exact.data();
  exact_order(p, plan);
  GemmParams<double> pd;
  pd.trans_a = pf.trans_a, pd.trans_b = pf.trans_b, pd.batch = pf.batch, pd.M = pf.M, pd.N = pf.N, pd.K = pf.K;
  pd.alpha = pf.alpha, pd.beta = pf.beta;
  pd.a = a64.data(), pd.lda = pf.lda, pd.batch_stride_a = pf.batch_stride_a;
  pd.b = b64.data(), pd.ldb = pf.ldb, pd.batch_stride_b = pf.batch_stride_b;
  pd.c = truth.data(), pd.ldc = pf.ldc, pd.batch_stride_c = pf.batch_stride_c;
  pd.bias = pf.bias ? bias64.data() : nullptr;
  const double scale = rounding_scale(pd);
  gemm_reference(pd);
  policy(ctx, what, got, plain, truth, 2.0, scale);
  expect_equal(ctx, what + " (exact order)", got, exact);
}

void check_gemm_case(Context& ctx, const GemmCase& k) {
  const Layout L(k);
  std::vector<float> a = ctx.randn(size_t(L.na)), b = ctx.randn(size_t(L.nb));
  const std::vector<float> bias = ctx.randn(size_t(k.N));
  // beta == 0: C starts as NaN and must be ignored; otherwise it is data.
  std::vector<float> c0 = k.beta == 0 ? std::vector<float>(size_t(L.nc), std::numeric_limits<float>::quiet_NaN())
                                      : ctx.randn(size_t(L.nc));
  poison_padding(a, L.lda, k.ta ? k.M : k.K);
  poison_padding(b, L.ldb, k.tb ? k.K : k.N);
  poison_padding(c0, L.ldc, k.N);
  Placed da(a, k.offset), db(b, k.offset), dc(c0, k.offset), dbias(bias, k.offset);
  cuda::gemm_forced(L.params<float>(k, da.ptr, db.ptr, dc.ptr, dbias.ptr), k.tile, k.splits);
  // Padding columns of C are never written: they keep their NaN, which max_abs_diff accepts
  // where the truth has NaN too, as it does there.
  const GemmParams<float> host = L.params<float>(k, a.data(), b.data(), c0.data(), bias.data());
  check_product(ctx, describe(k), host, dc.download(size_t(L.nc), k.offset), cuda::plan_gemm(host, k.tile, k.splits));
}

void validate_gemms(Context& ctx) {
  // Small and odd shapes: every transpose combination, alpha / beta / bias varied across cases.
  const int64_t sizes[] = {1, 2, 7, 33, 64, 130};
  const float alphas[] = {1.0f, -0.75f, 2.5f}, betas[] = {0.0f, 1.0f, 0.5f};
  int n = 0;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t M : sizes)
        for (int64_t N : sizes)
          for (int64_t K : {1, 7, 33, 130}) {
            // A thinned cross product keeps the emulator quick: every (M, N) pair, K rotating.
            if ((M + N + K + ta + 2 * tb) % 2) continue;
            GemmCase k;
            k.ta = ta, k.tb = tb, k.M = M, k.N = N, k.K = K;
            k.alpha = alphas[n % 3], k.beta = betas[(n / 3) % 3], k.bias = n % 2 == 0;
            ++n;
            check_gemm_case(ctx, k);
          }
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      GemmCase k;
      k.ta = ta, k.tb = tb;
      // Batches, own and shared B.
      k.batch = 3, k.M = 33, k.N = 7, k.K = 64, k.alpha = 1.5f, k.beta = 0.5f, k.bias = true;
      check_gemm_case(ctx, k);
      k.shared_b = true, k.beta = 0, k.M = 2, k.N = 64, k.K = 33;
      check_gemm_case(ctx, k);
      k.shared_b = false;
      // K = 0: C = beta * C + bias (and beta = 0 with NaN in C gives bias alone).
      k.batch = 1, k.M = 7, k.N = 33, k.K = 0, k.beta = 0.5f;
      check_gemm_case(ctx, k);
      k.beta = 0;
      check_gemm_case(ctx, k);
      // Aligned rows (float4 paths) with ragged tiles; strided rows; misaligned pointers.
      k.M = 68, k.N = 132, k.K = 36, k.alpha = -1.25f, k.beta = 1.0f, k.bias = true;
      check_gemm_case(ctx, k);
      k.M = 33, k.N = 70, k.K = 20, k.ld_pad = 3, k.beta = 0;
      check_gemm_case(ctx, k);
      k.ld_pad = 4, k.offset = true, k.beta = 0.5f;
      check_gemm_case(ctx, k);
      k.ld_pad = 0, k.ld_round4 = true, k.offset = false, k.M = 21, k.N = 70, k.K = 19;
      check_gemm_case(ctx, k);
      k.tile = cuda::GemmTile::Large;
      check_gemm_case(ctx, k);
      k.ld_round4 = false;
      // The large tile at small sizes, and split-K (forced, then as chosen for a long K).
      k.M = 130, k.N = 33, k.K = 64, k.beta = 0.5f, k.bias = true;
      check_gemm_case(ctx, k);
      k.M = 129, k.N = 132, k.K = 72, k.beta = 0, k.bias = false;
      check_gemm_case(ctx, k);
      k.batch = 2, k.splits = 3, k.M = 33, k.N = 70, k.K = 300, k.alpha = 0.5f, k.beta = 0.5f, k.bias = true;
      check_gemm_case(ctx, k);
      k.splits = 5, k.batch = 1, k.M = 64, k.N = 36, k.K = 44, k.beta = 0;  // more pieces than sensible: clamped
      check_gemm_case(ctx, k);
      k.tile = cuda::GemmTile::Auto, k.splits = 0, k.M = 7, k.N = 33, k.K = 1100, k.beta = 1.0f;
      check_gemm_case(ctx, k);
      // More tile rows than a swizzle group (8), both tiles; a tail group of 1 and of 3.
      k.tile = cuda::GemmTile::Small, k.M = 64 * 9 + 5, k.N = 130, k.K = 3, k.beta = 0.5f;
      check_gemm_case(ctx, k);
      k.tile = cuda::GemmTile::Large, k.M = 128 * 10 + 1, k.N = 20;
      check_gemm_case(ctx, k);
      k.tile = cuda::GemmTile::Auto;
      // Empty products launch nothing (and C is left as it was).
      k.M = 0, k.K = 5;
      check_gemm_case(ctx, k);
      k.M = 3, k.N = 0;
      check_gemm_case(ctx, k);
    }
}

// gemm_device (the BLAS-style call other families use) on a strided sub-block, and the batched
// form with strides that are not the dense ones.
void validate_gemm_device(Context& ctx) {
  const int64_t M = 20, N = 13, K = 9, ld = 24;
  std::vector<float> a = ctx.randn(size_t(M * ld)), b = ctx.randn(size_t(K * ld)), c0 = ctx.randn(size_t(M * ld));
  poison_padding(a, ld, K), poison_padding(b, ld, N), poison_padding(c0, ld, N);
  DeviceArray<float> da(a), db(b), dc(c0);
  cuda::gemm_device(false, false, M, N, K, 0.5f, da.get(), ld, db.get(), ld, 2.0f, dc.get(), ld);
  GemmParams<float> p;
  p.M = M, p.N = N, p.K = K, p.alpha = 0.5f, p.beta = 2.0f;
  p.a = a.data(), p.lda = ld, p.b = b.data(), p.ldb = ld, p.c = c0.data(), p.ldc = ld;
  check_product(ctx, "gemm_device M=20 N=13 K=9 ld=24", p, dc.download(), cuda::plan_gemm(p));

  const int64_t batch = 3, sa = K * ld + 5, sb = N * ld + 2, sc = M * ld + 1;
  const std::vector<float> A = ctx.randn(size_t(batch * sa)), B = ctx.randn(size_t(batch * sb));
  const std::vector<float> C(size_t(batch * sc), std::numeric_limits<float>::quiet_NaN());
  DeviceArray<float> dA(A), dB(B), dC(C);
  cuda::gemm_device_batched(true, true, batch, M, N, K, -1.0f, dA.get(), ld, sa, dB.get(), ld, sb, 0.0f, dC.get(), ld, sc);
  p = GemmParams<float>{};
  p.trans_a = p.trans_b = true, p.batch = batch, p.M = M, p.N = N, p.K = K, p.alpha = -1.0f, p.beta = 0.0f;
  p.a = A.data(), p.lda = ld, p.batch_stride_a = sa, p.b = B.data(), p.ldb = ld, p.batch_stride_b = sb;
  p.c = const_cast<float*>(C.data()), p.ldc = ld, p.batch_stride_c = sc;
  check_product(ctx, "gemm_device_batched ta tb batch=3 strided", p, dC.download(), cuda::plan_gemm(p));
}

// column_sum's order (gemm.cu): per row block of kColumnSumRows, 8 partial sums over rows r, r+8,
// ... added in order, then the blocks in order, then out + total with accumulate.
std::vector<float> column_sum_exact(int64_t rows, int64_t cols, const std::vector<float>& x, int64_t ldx,
                                    const std::vector<float>& out0, bool accumulate) {
  const int64_t R = cuda::kColumnSumRows, blocks = std::max<int64_t>((rows + R - 1) / R, 1);
  std::vector<float> out(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    float total = 0;
    for (int64_t rb = 0; rb < blocks; ++rb) {
      float block = 0;
      for (int ty = 0; ty < 8; ++ty) {
        float s = 0;
        for (int64_t r = rb * R + ty; r < std::min(rows, (rb + 1) * R); r += 8) s += x[size_t(r * ldx + c)];
        block = ty == 0 ? s : block + s;
      }
      total = rb == 0 ? block : total + block;
    }
    out[size_t(c)] = accumulate ? out0[size_t(c)] + total : total;
  }
  return out;
}

void validate_column_sums(Context& ctx) {
  auto one = [&](int64_t rows, int64_t cols, bool accumulate) {
    const int64_t ldx = cols + (rows % 2);  // odd rows: a padded row stride too
    std::vector<float> x = ctx.randn(size_t(rows * ldx));
    poison_padding(x, ldx, cols);
    const std::vector<float> out0 = accumulate ? ctx.randn(size_t(cols))
                                               : std::vector<float>(size_t(cols), std::numeric_limits<float>::quiet_NaN());
    DeviceArray<float> dx(x.empty() ? std::vector<float>(1) : x), dout(out0);
    cuda::column_sum(rows, cols, dx.get(), ldx, dout.get(), accumulate);
    const std::vector<float> got = dout.download();
    std::vector<float> plain(static_cast<size_t>(cols));
    std::vector<double> truth(static_cast<size_t>(cols));
    const std::vector<double> x64 = cast<double>(x);
    column_sum_reference<float>(rows, cols, x.data(), ldx, plain.data());
    column_sum_reference<double>(rows, cols, x64.data(), ldx, truth.data());
    double scale = 0;  // the size of the terms: max over columns of sqrt(sum of squares)
    for (int64_t j = 0; j < cols; ++j) {
      double s = accumulate ? double(out0[j]) * out0[j] : 0;
      for (int64_t i = 0; i < rows; ++i) s += x64[size_t(i * ldx + j)] * x64[size_t(i * ldx + j)];
      scale = std::max(scale, std::sqrt(s));
      if (accumulate) plain[j] = out0[j] + plain[j], truth[j] = double(out0[j]) + truth[j];
    }
    char what[96];
    std::snprintf(what, sizeof what, "column_sum rows=%ld cols=%ld ldx=%ld accumulate=%d", long(rows), long(cols),
                  long(ldx), accumulate);
    policy(ctx, what, got, plain, truth, 3.0, scale);
    expect_equal(ctx, std::string(what) + " (exact order)", got, column_sum_exact(rows, cols, x, ldx, out0, accumulate));
  };
  for (int64_t rows : {0, 1, 7, 255, 256, 257, 1000, 3000})
    for (int64_t cols : {1, 33, 70})
      for (bool accumulate : {false, true}) one(rows, cols, accumulate);
  one(4100, 1000, false);  // many columns: the policy's statistics mean something
}

void validate_bias_add(Context& ctx) {
  for (int64_t rows : {1, 5, 300})
    for (int64_t cols : {1, 7, 65}) {
      const int64_t ldy = cols + (rows == 5 ? 2 : 0);
      const std::vector<float> y = ctx.randn(size_t(rows * ldy)), bias = ctx.randn(size_t(cols));
      DeviceArray<float> dy(y), dbias(bias);
      cuda::bias_add(rows, cols, dbias.get(), dy.get(), ldy);
      std::vector<float> cpu = y;
      bias_add<float>(rows, cols, bias.data(), cpu.data(), ldy);
      char what[64];
      std::snprintf(what, sizeof what, "bias_add rows=%ld cols=%ld ldy=%ld", long(rows), long(cols), long(ldy));
      expect_equal(ctx, what, dy.download(), cpu);
    }
}

}  // namespace

void validate_gemm(Context& ctx) {
  g_worst_of_bound = g_worst_ratio = 0;
  validate_gemms(ctx);
  validate_gemm_device(ctx);
  validate_column_sums(ctx);
  validate_bias_add(ctx);
  std::printf("  gemm, column sums: worst error %.2f of the policy's bound; %.2f x the plain float32 error (>= 256 outputs)\n",
              g_worst_of_bound, g_worst_ratio);
}

namespace {

// A product the bench timed (op(A) M x K, op(B) K x N, dense; C poisoned before the call), checked
// on the host on its first and last `rows` rows, and for NaN everywhere (an unwritten tile): the
// big shapes go down the float4 and split-K paths at full size.
void check_rows(Context& ctx, const std::string& what, bool ta, bool tb, int64_t M, int64_t rows, int64_t N, int64_t K,
                const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& got) {
  GemmParams<float> p;
  p.trans_a = ta, p.trans_b = tb, p.M = M, p.N = N, p.K = K;
  p.a = a.data(), p.lda = ta ? M : K, p.b = b.data(), p.ldb = tb ? K : N, p.ldc = N;
  const cuda::GemmPlan plan = cuda::plan_gemm(p);
  std::vector<float> c0(size_t(rows * N), 0.f);
  p.M = rows, p.c = c0.data();
  check_product(ctx, what + " (first rows)", p, std::vector<float>(got.begin(), got.begin() + long(rows * N)), plan);
  p.a = a.data() + (ta ? M - rows : (M - rows) * K);
  check_product(ctx, what + " (last rows)", p, std::vector<float>(got.end() - long(rows * N), got.end()), plan);
  ++ctx.cases;
  if (std::any_of(got.begin(), got.end(), [](float v) { return std::isnan(v); })) {
    std::printf("  FAIL %s: NaN in the result (an element left unwritten)\n", what.c_str());
    ++ctx.failures;
  }
}

// Linear forward and backward at x [M, K], W [N, K], as torch_bench.py's linear() times them (no
// bias there): y = x W^T, dX = dY W, dW = dY^T X. The row anchored to PyTorch is the three
// products together; each is also shown alone, and the bias gradient (column sums of dY).
void bench_linear(Context& ctx, int64_t M, int64_t K, int64_t N, const char* anchor) {
  const std::vector<float> x = ctx.randn(size_t(M * K)), w = ctx.randn(size_t(N * K), 0.06f), dy = ctx.randn(size_t(M * N));
  DeviceArray<float> dx_in(x), dw_in(w), ddy(dy), y(static_cast<size_t>(M * N)), dx(static_cast<size_t>(M * K)),
      dw(static_cast<size_t>(N * K)), db(static_cast<size_t>(N));
  auto fwd = [&] { cuda::gemm_device(false, true, M, N, K, 1.0f, dx_in.get(), K, dw_in.get(), K, 0.0f, y.get(), N); };
  auto bwd_dx = [&] { cuda::gemm_device(false, false, M, K, N, 1.0f, ddy.get(), N, dw_in.get(), K, 0.0f, dx.get(), K); };
  auto bwd_dw = [&] { cuda::gemm_device(true, false, N, K, M, 1.0f, ddy.get(), N, dx_in.get(), K, 0.0f, dw.get(), K); };
  const double F = 4, mnk2 = 2.0 * M * N * K;
  const double fwd_bytes = F * (M * K + N * K + M * N), dx_bytes = F * (M * N + N * K + M * K),
               dw_bytes = F * (M * N + M * K + N * K);
  const std::string shape = "[" + std::to_string(M) + "," + std::to_string(K) + "]x[" + std::to_string(K) + "," +
                            std::to_string(N) + "]";
  time_row(ctx, {"gemm", "linear fwd (x W^T)", shape, 0, mnk2, fwd_bytes, ""}, fwd);
  time_row(ctx, {"gemm", "linear dX (dY W)", shape, 0, mnk2, dx_bytes, ""}, bwd_dx);
  time_row(ctx, {"gemm", "linear dW (dY^T X)", shape, 0, mnk2, dw_bytes, ""}, bwd_dw);
  time_row(ctx, {"gemm", "linear fwd+bwd (3 GEMMs)", shape, 0, 3 * mnk2, fwd_bytes + dx_bytes + dw_bytes, anchor}, [&] {
    fwd();
    bwd_dx();
    bwd_dw();
  });
  time_row(ctx, {"gemm", "bias grad (column sums)", "[" + std::to_string(M) + "," + std::to_string(N) + "]", 0,
                 double(M) * N, F * (M * N + N), ""},
           [&] { cuda::column_sum(M, N, ddy.get(), N, db.get(), false); });
  // What was timed, checked: y and dX on their first and last 64 rows, dW (split-K) on 16.
  y.poison(), dx.poison(), dw.poison();
  fwd(), bwd_dx(), bwd_dw();
  const std::string at = "linear " + shape;
  check_rows(ctx, at + " y", false, true, M, 64, N, K, x, w, y.download());
  check_rows(ctx, at + " dX", false, false, M, 64, K, N, dy, w, dx.download());
  check_rows(ctx, at + " dW", true, false, N, 16, K, M, dy, x, dw.download());
}

}  // namespace

void bench_gemm(Context& ctx) {
  // The square product first: its rate is the peak the other families' rows are measured against.
  const int64_t S = 4096;
  const std::vector<float> a = ctx.randn(size_t(S * S)), b = ctx.randn(size_t(S * S));
  DeviceArray<float> da(a), db(b), dc(static_cast<size_t>(S * S));
  const Row row{"gemm", "sgemm (ours, float32 FMA)", "4096^3", 0, 2.0 * S * S * S, 3.0 * 4 * S * S, "mm_4096"};
  time_row(ctx, row, [&] { cuda::gemm_device(false, false, S, S, S, 1.0f, da.get(), S, db.get(), S, 0.0f, dc.get(), S); });
  if (!ctx.rows.empty() && ctx.rows.back().anchor == "mm_4096") ctx.gemm_tflops = row.flops / ctx.rows.back().ms / 1e9;
  dc.poison();
  cuda::gemm_device(false, false, S, S, S, 1.0f, da.get(), S, db.get(), S, 0.0f, dc.get(), S);
  check_rows(ctx, "sgemm 4096^3", false, false, S, 8, S, S, a, b, dc.download());

  bench_linear(ctx, 16384, 256, 256, "linear_256_fwdbwd");
  bench_linear(ctx, 16384, 256, 1024, "linear_1024_fwdbwd");
}

}  // namespace luna::gpu_check
