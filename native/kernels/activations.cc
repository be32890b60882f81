// Elementwise activations (exact GELU, ReLU) and inverted dropout, forward and backward.
// Each splits its n elements into fixed-size blocks, one parallel task per block; an element's
// result depends only on that element, so any thread count gives the same bits.
#include <algorithm>
#include <cmath>

#include <type_traits>

#include "../runtime/cpu_features.h"
#include "../runtime/thread_pool.h"
#include "counter_rng.h"
#include "nn_kernels.h"
#include "simd_math.h"

namespace luna {

namespace {

constexpr int64_t kBlock = 32768;

// Runs body(i0, i1) over [0, n) in blocks of kBlock elements.
template <typename Body>
void for_blocks(int64_t n, const Body& body) {
  const int64_t tasks = (n + kBlock - 1) / kBlock;
  parallel_for(tasks, [&](int64_t t) { body(t * kBlock, std::min(n, (t + 1) * kBlock)); });
}

// The exact GELU, PyTorch's default approximate='none':
//   gelu(x) = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2.
// The erfc form keeps full relative accuracy in the negative tail, where 1 + erf(..) cancels.
// Evaluated in the element type: float32 uses erfcf/expf, whose error is about an ulp.
template <typename T>
inline T normal_cdf(T x) {
  const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
  return static_cast<T>(0.5) * std::erfc(-x * inv_sqrt2);
}

template <typename T>
inline T gelu_value(T x) {
  return x * normal_cdf(x);
}

// d gelu / dx = Phi(x) + x * phi(x), phi the standard normal density.
template <typename T>
inline T gelu_slope(T x) {
  const T inv_sqrt_2pi = static_cast<T>(0.39894228040143267794);
  const T cdf = normal_cdf(x);
  const T pdf = inv_sqrt_2pi * std::exp(static_cast<T>(-0.5) * x * x);
  return cdf + x * pdf;
}

#ifdef LUNA_X86
// Vector GELU for float32: the scalar erfcf/expf calls cost ~6 ns an element, more than
// everything else in an encoder layer's FFN but the GEMMs. The erfc here (simd_math.h) has a
// fractional error below 1.2e-7, about one float ulp, like erfcf. Full vectors only; the
// caller finishes the tail with the scalar code.
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

TARGET_AVX512 inline __m512 cdf_avx512(__m512 x, __m512 z, __m512 neg_z2) {
  // Phi(x) = erfc(z)/2 for x < 0 and 1 - erfc(z)/2 for x >= 0, z = |x|/sqrt 2.
  const __m512 half_erfc = _mm512_mul_ps(_mm512_set1_ps(0.5f), erfc_tail_avx512(z, neg_z2));
  const __mmask16 nonneg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
  return _mm512_mask_sub_ps(half_erfc, nonneg, _mm512_set1_ps(1.0f), half_erfc);
}

TARGET_AVX512 int64_t gelu_forward_avx512(int64_t n, const float* x, float* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(kInvSqrt2));
    const __m512 neg_z2 = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(v, cdf_avx512(v, z, neg_z2)));
  }
  return i;
}

TARGET_AVX512 int64_t gelu_backward_avx512(int64_t n, const float* x, const float* dout, float* dx) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(kInvSqrt2));
    const __m512 neg_z2 = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z));
    const __m512 pdf = _mm512_mul_ps(_mm512_set1_ps(kInvSqrt2Pi), exp_avx512(neg_z2));
    const __m512 slope = _mm512_add_ps(cdf_avx512(v, z, neg_z2), _mm512_mul_ps(v, pdf));
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(dout + i), slope));
  }
  return i;
}

TARGET_AVX2 inline __m256 cdf_avx2(__m256 x, __m256 z, __m256 neg_z2) {
  const __m256 half_erfc = _mm256_mul_ps(_mm256_set1_ps(0.5f), erfc_tail_avx2(z, neg_z2));
  const __m256 nonneg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
  return _mm256_blendv_ps(half_erfc, _mm256_sub_ps(_mm256_set1_ps(1.0f), half_erfc), nonneg);
}

TARGET_AVX2 inline __m256 abs_avx2(__m256 v) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

TARGET_AVX2 int64_t gelu_forward_avx2(int64_t n, const float* x, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 z = _mm256_mul_ps(abs_avx2(v), _mm256_set1_ps(kInvSqrt2));
    const __m256 neg_z2 = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, cdf_avx2(v, z, neg_z2)));
  }
  return i;
}

TARGET_AVX2 int64_t gelu_backward_avx2(int64_t n, const float* x, const float* dout, float* dx) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 z = _mm256_mul_ps(abs_avx2(v), _mm256_set1_ps(kInvSqrt2));
    const __m256 neg_z2 = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z));
    const __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(kInvSqrt2Pi), exp_avx2(neg_z2));
    const __m256 slope = _mm256_add_ps(cdf_avx2(v, z, neg_z2), _mm256_mul_ps(v, pdf));
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dout + i), slope));
  }
  return i;
}
#endif  // LUNA_X86

// How many leading elements of a float32 block the vector build handled (0: none).
inline int64_t gelu_forward_vector(int64_t n, const float* x, float* out) {
#ifdef LUNA_X86
  switch (active_isa()) {
    case Isa::Avx512: return gelu_forward_avx512(n, x, out);
    case Isa::Avx2: return gelu_forward_avx2(n, x, out);
    default: break;
  }
#endif
  (void)n, (void)x, (void)out;
  return 0;
}

inline int64_t gelu_backward_vector(int64_t n, const float* x, const float* dout, float* dx) {
#ifdef LUNA_X86
  switch (active_isa()) {
    case Isa::Avx512: return gelu_backward_avx512(n, x, dout, dx);
    case Isa::Avx2: return gelu_backward_avx2(n, x, dout, dx);
    default: break;
  }
#endif
  (void)n, (void)x, (void)dout, (void)dx;
  return 0;
}

}  // namespace

template <typename T>
void gelu_forward(const ActivationParams<T>& p) {
  // x, out are (n). float32 takes the vector build where the CPU has one.
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    if constexpr (std::is_same_v<T, float>) i += gelu_forward_vector(i1 - i0, p.x + i0, p.out + i0);
    for (; i < i1; ++i) p.out[i] = gelu_value(p.x[i]);
  });
}

template <typename T>
void gelu_backward(const ActivationParams<T>& p) {
  // x, dout, dx are (n).
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    if constexpr (std::is_same_v<T, float>) i += gelu_backward_vector(i1 - i0, p.x + i0, p.dout + i0, p.dx + i0);
    for (; i < i1; ++i) p.dx[i] = p.dout[i] * gelu_slope(p.x[i]);
  });
}

template <typename T>
void relu_forward(const ActivationParams<T>& p) {
  // x, out are (n). NaN stays NaN (the comparison is false), as in PyTorch.
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T x = p.x[i];
      p.out[i] = x < static_cast<T>(0) ? static_cast<T>(0) : x;
    }
  });
}

template <typename T>
void relu_backward(const ActivationParams<T>& p) {
  // x, dout, dx are (n). The slope at exactly 0 is taken as 0 (PyTorch's convention).
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.dx[i] = p.x[i] > static_cast<T>(0) ? p.dout[i] : static_cast<T>(0);
  });
}

template <typename T>
void dropout_apply(const DropoutParams<T>& p) {
  // in, out are (n). p = 1 is handled apart: the mask's 32-bit threshold would still keep one
  // element in 2^32 and its scale would be infinite. Otherwise a dropped element is in * 0, so
  // an Inf or NaN input stays NaN, as in PyTorch.
  if (p.p >= 1) {
    for_blocks(p.n, [&](int64_t i0, int64_t i1) { std::fill(p.out + i0, p.out + i1, static_cast<T>(0)); });
    return;
  }
  const DropoutMask<T> mask(p.p, p.seed);
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.out[i] = p.in[i] * mask.factor(static_cast<uint64_t>(i));
  });
}

template void gelu_forward<float>(const ActivationParams<float>&);
template void gelu_forward<double>(const ActivationParams<double>&);
template void gelu_backward<float>(const ActivationParams<float>&);
template void gelu_backward<double>(const ActivationParams<double>&);
template void relu_forward<float>(const ActivationParams<float>&);
template void relu_forward<double>(const ActivationParams<double>&);
template void relu_backward<float>(const ActivationParams<float>&);
template void relu_backward<double>(const ActivationParams<double>&);
template void dropout_apply<float>(const DropoutParams<float>&);
template void dropout_apply<double>(const DropoutParams<double>&);

}  // namespace luna
