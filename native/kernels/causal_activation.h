// The feature map φ of causal Luna attention (softplus with β = ln 2, or elu + 1) and its slope,
// over a contiguous block of pack logits. The float32 kernels evaluate it in vectors: a scalar
// log1p/exp costs ~20 ns an element, and the forward maps n·l logits per head (65k x 16 at the
// benchmark size), which would cost more than all of the chunk GEMMs together.
//
// Softplus is evaluated in base 2, where β = ln 2 disappears: with u = 2^-|z| in (0, 1],
//   φ(z)  = log2(1 + 2^z) = max(z, 0) + log2(1 + u)
//   φ'(z) = sigmoid(z ln 2) = (z >= 0 ? 1 : u) / (1 + u)
// and log2(1 + u) = (2 / ln 2) atanh(w), w = u / (2 + u) in (0, 1/3], whose odd series
// w (1 + w²/3 + ... + w¹⁴/15) is truncated below 2e-9 relative: no cancellation for small u, so
// φ keeps its relative accuracy in the far negative tail. Like PyTorch, φ(z) = z and φ' = 1
// where z ln 2 > 20. NaN stays NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../runtime/cpu_features.h"
#include "causal_luna.h"
#include "simd_math.h"

// causal_phi_one below also runs in the CUDA kernels (cuda/causal.cu). Under nvcc it is
// __host__ __device__; under the CUDA emulator (LUNA_CUDA_EMU) and in an ordinary C++ build,
// device code is host code and the macro is empty (the same convention as counter_rng.h).
#ifndef LUNA_HOST_DEVICE
#if defined(__CUDACC__)
#define LUNA_HOST_DEVICE __host__ __device__
#else
#define LUNA_HOST_DEVICE
#endif
#endif

namespace luna {

// φ(z) and, when slope is not null, φ'(z) of one float32 logit, with the CUDA C math functions
// (exp2f, expf, log1pf: accurate to a few ulp, not the __expf intrinsics), for the GPU kernels.
// Softplus is taken in base 2 like the vector code above: with u = 2^-|z| no rounding of β z
// enters the exponential. Same threshold (z ln 2 > 20 in float: φ = z, φ' = 1); NaN stays NaN.
LUNA_HOST_DEVICE inline void causal_phi_one(CausalActivation a, float z, float* phi, float* slope) {
  if (a == CausalActivation::Softplus) {
    if (z * 0.693147180559945309417f > 20.0f) {
      *phi = z;
      if (slope) *slope = 1.0f;
      return;
    }
    const float u = exp2f(-fabsf(z));
    *phi = (z > 0.0f ? z : 0.0f) + log1pf(u) * 1.44269504088896340736f;  // 1 / ln 2
    if (slope) *slope = (z >= 0.0f ? 1.0f : u) / (1.0f + u);
    return;
  }
  const float e = expf(z > 0.0f ? 0.0f : z);  // NaN z: expf(NaN) = NaN
  *phi = z > 0.0f ? z + 1.0f : e;
  if (slope) *slope = z > 0.0f ? 1.0f : e;
}

namespace causal_detail {

constexpr double kLn2 = 0.693147180559945309417;

// Scalar φ and φ', the generic build (every float64 call, and float32 without AVX2).
template <typename T>
inline void phi_scalar(CausalActivation a, T z, T* phi, T* slope) {
  if (a == CausalActivation::Softplus) {
    const T beta = T(kLn2);
    if (z * beta > T(20)) {
      *phi = z;
      if (slope) *slope = T(1);
      return;
    }
    const T u = std::exp(-beta * std::fabs(z));
    *phi = std::max(z, T(0)) + std::log1p(u) / beta;
    if (slope) *slope = (z >= 0 ? T(1) : u) / (T(1) + u);
    return;
  }
  const T e = std::exp(std::min(z, T(0)));  // NaN stays NaN: std::min returns z then
  *phi = z > 0 ? z + T(1) : e;
  if (slope) *slope = z > 0 ? T(1) : e;
}

#ifdef LUNA_X86
// 2^r for r in [-1/2, 1/2]: the Taylor series of e^(r ln 2) to degree 7 (error below 6e-9).
#define LUNA_EXP2_COEFFS(F)                                                                     \
  F(1.525273380405984e-05f) F(1.5403530393381608e-04f) F(1.3333558146428443e-03f)               \
  F(9.618129107628477e-03f) F(5.550410866482158e-02f) F(2.402265069591007e-01f)                 \
  F(6.931471805599453e-01f) F(1.0f)
// atanh series of log2(1 + u) in w² (coefficients 1/(2k+1), k = 7 .. 0).
#define LUNA_ATANH_COEFFS(F)                                                                    \
  F(1.0f / 15) F(1.0f / 13) F(1.0f / 11) F(1.0f / 9) F(1.0f / 7) F(1.0f / 5) F(1.0f / 3) F(1.0f)

constexpr float kTwoOverLn2 = 2.88539008177792681472f;  // 2 / ln 2
constexpr float kLn2f = 0.693147180559945309417f;

TARGET_AVX512 inline void softplus16(__m512 z, __m512* phi, __m512* slope) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  // x = -|z| clamped to -150 (2^-150 rounds to 0 anyway); r = x - round(x) is exact.
  const __m512 x = _mm512_max_ps(_mm512_sub_ps(zero, _mm512_abs_ps(z)), _mm512_set1_ps(-150.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, n);
  __m512 p = zero;
#define LUNA_STEP(c) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  LUNA_EXP2_COEFFS(LUNA_STEP)
#undef LUNA_STEP
  const __m512 u = _mm512_scalef_ps(p, n);
  const __m512 w = _mm512_div_ps(u, _mm512_add_ps(_mm512_set1_ps(2.0f), u));
  const __m512 w2 = _mm512_mul_ps(w, w);
  __m512 s = zero;
#define LUNA_STEP(c) s = _mm512_fmadd_ps(s, w2, _mm512_set1_ps(c));
  LUNA_ATANH_COEFFS(LUNA_STEP)
#undef LUNA_STEP
  const __m512 log_term = _mm512_mul_ps(_mm512_mul_ps(w, _mm512_set1_ps(kTwoOverLn2)), s);
  __m512 f = _mm512_add_ps(_mm512_max_ps(z, zero), log_term);
  // Above PyTorch's threshold φ is z itself; a NaN z stays NaN (max_ps above would drop it).
  const __mmask16 linear = _mm512_cmp_ps_mask(_mm512_mul_ps(z, _mm512_set1_ps(kLn2f)), _mm512_set1_ps(20.0f), _CMP_GT_OQ);
  const __mmask16 nan = _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q);
  *phi = _mm512_mask_mov_ps(f, linear | nan, z);
  if (slope) {
    const __mmask16 nonneg = _mm512_cmp_ps_mask(z, zero, _CMP_GE_OQ);
    const __m512 num = _mm512_mask_mov_ps(u, nonneg, one);
    *slope = _mm512_mask_mov_ps(_mm512_div_ps(num, _mm512_add_ps(one, u)), linear, one);
  }
}

TARGET_AVX512 inline void elu1_16(__m512 z, __m512* phi, __m512* slope) {
  const __mmask16 pos = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GT_OQ);
  const __m512 e = exp_avx512(z);
  *phi = _mm512_mask_add_ps(e, pos, z, _mm512_set1_ps(1.0f));
  if (slope) *slope = _mm512_mask_mov_ps(e, pos, _mm512_set1_ps(1.0f));
}

TARGET_AVX512 inline void phi_avx512(CausalActivation a, int64_t m, const float* z, float* phi, float* slope) {
  for (int64_t i = 0; i < m; i += 16) {
    const __mmask16 t = static_cast<__mmask16>(m - i >= 16 ? 0xFFFF : (1u << (m - i)) - 1);
    const __m512 x = _mm512_maskz_loadu_ps(t, z + i);
    __m512 f, s;
    if (a == CausalActivation::Softplus) softplus16(x, &f, slope ? &s : nullptr);
    else elu1_16(x, &f, slope ? &s : nullptr);
    _mm512_mask_storeu_ps(phi + i, t, f);
    if (slope) _mm512_mask_storeu_ps(slope + i, t, s);
  }
}

TARGET_AVX2 inline void softplus8(__m256 z, __m256* phi, __m256* slope) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  // x = -|z| clamped to -126 so that 2^round(x) is a normal float; below it u is set to 0.
  const __m256 x0 = _mm256_sub_ps(zero, _mm256_and_ps(z, abs_mask));
  const __m256 tiny = _mm256_cmp_ps(x0, _mm256_set1_ps(-126.0f), _CMP_LT_OQ);
  const __m256 x = _mm256_max_ps(x0, _mm256_set1_ps(-126.0f));
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(x, n);
  __m256 p = zero;
#define LUNA_STEP(c) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  LUNA_EXP2_COEFFS(LUNA_STEP)
#undef LUNA_STEP
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 u = _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
  const __m256 w = _mm256_div_ps(u, _mm256_add_ps(_mm256_set1_ps(2.0f), u));
  const __m256 w2 = _mm256_mul_ps(w, w);
  __m256 s = zero;
#define LUNA_STEP(c) s = _mm256_fmadd_ps(s, w2, _mm256_set1_ps(c));
  LUNA_ATANH_COEFFS(LUNA_STEP)
#undef LUNA_STEP
  const __m256 log_term = _mm256_mul_ps(_mm256_mul_ps(w, _mm256_set1_ps(kTwoOverLn2)), s);
  const __m256 f = _mm256_add_ps(_mm256_max_ps(z, zero), log_term);
  const __m256 linear = _mm256_cmp_ps(_mm256_mul_ps(z, _mm256_set1_ps(kLn2f)), _mm256_set1_ps(20.0f), _CMP_GT_OQ);
  const __m256 keep_z = _mm256_or_ps(linear, _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
  *phi = _mm256_blendv_ps(f, z, keep_z);
  if (slope) {
    const __m256 num = _mm256_blendv_ps(u, one, _mm256_cmp_ps(z, zero, _CMP_GE_OQ));
    *slope = _mm256_blendv_ps(_mm256_div_ps(num, _mm256_add_ps(one, u)), one, linear);
  }
}

TARGET_AVX2 inline void elu1_8(__m256 z, __m256* phi, __m256* slope) {
  const __m256 pos = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ);
  const __m256 e = exp_avx2(z);
  *phi = _mm256_blendv_ps(e, _mm256_add_ps(z, _mm256_set1_ps(1.0f)), pos);
  if (slope) *slope = _mm256_blendv_ps(e, _mm256_set1_ps(1.0f), pos);
}

TARGET_AVX2 inline void phi_avx2(CausalActivation a, int64_t m, const float* z, float* phi, float* slope) {
  for (int64_t i = 0; i < m; i += 8) {
    const int count = static_cast<int>(std::min<int64_t>(m - i, 8));
    const __m256i t = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 x = _mm256_maskload_ps(z + i, t);
    __m256 f, s;
    if (a == CausalActivation::Softplus) softplus8(x, &f, slope ? &s : nullptr);
    else elu1_8(x, &f, slope ? &s : nullptr);
    _mm256_maskstore_ps(phi + i, t, f);
    if (slope) _mm256_maskstore_ps(slope + i, t, s);
  }
}
#undef LUNA_EXP2_COEFFS
#undef LUNA_ATANH_COEFFS
#endif  // LUNA_X86

}  // namespace causal_detail

// phi[i] = φ(z[i]) and, when slope is not null, slope[i] = φ'(z[i]), for i < m. phi may alias z.
template <typename T>
inline void causal_phi(CausalActivation a, int64_t m, const T* z, T* phi, T* slope) {
  for (int64_t i = 0; i < m; ++i) causal_detail::phi_scalar<T>(a, z[i], phi + i, slope ? slope + i : nullptr);
}

template <>
inline void causal_phi<float>(CausalActivation a, int64_t m, const float* z, float* phi, float* slope) {
#ifdef LUNA_X86
  static const Isa isa = active_isa();
  if (isa == Isa::Avx512) return causal_detail::phi_avx512(a, m, z, phi, slope);
  if (isa == Isa::Avx2) return causal_detail::phi_avx2(a, m, z, phi, slope);
#endif
  // Without vectors, evaluate in double: in float, the rounding of β z alone costs exp(-β|z|)
  // a relative error of |β z| 2^-24 (1e-6 at z = -80), which the base-2 vector code avoids.
  for (int64_t i = 0; i < m; ++i) {
    double f, s;
    causal_detail::phi_scalar<double>(a, double(z[i]), &f, slope ? &s : nullptr);
    phi[i] = float(f);
    if (slope) slope[i] = float(s);
  }
}

}  // namespace luna
