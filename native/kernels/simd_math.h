// Vector math shared by the float32 kernels: the target attributes of the SIMD builds and
// exp (and the normal CDF built on it) for AVX-512 and AVX2. Functions carry their own target
// attribute, so including this header never raises the baseline of the including file.
#pragma once

#if defined(__x86_64__)
// GCC 12 warns inside its own AVX-512 headers (the "undefined" pass-through operands).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#define LUNA_X86 1
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))

namespace luna {

// exp(x) for x <= 88: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 Taylor
// polynomial (relative error ~5e-9, below float rounding) and scalef for 2^n. Inputs below
// -87.3 (including -inf from masked keys) give exactly 0; NaN stays NaN.
TARGET_AVX512 inline __m512 exp_avx512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_set1_ps(88.3f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 poly = _mm512_set1_ps(1.0f / 5040);
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 720));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 120));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 24));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f / 6));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(0.5f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(poly, n));
}

// Same reduction and polynomial as exp_avx512; 2^n is built in the exponent bits (n stays in
// [-126, 127] after the clamp, so the result is a normal float).
TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_NLT_UQ);  // false only for x < -87.3
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), x);
  x = _mm256_max_ps(lo, x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.0f / 5040);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 720));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 120));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 24));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f / 6));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(0.5f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(keep, _mm256_mul_ps(poly, _mm256_castsi256_ps(bits)));
}

// erfc(z) for z >= 0 as t * exp(-z^2 + c(t)), t = 1 / (1 + z/2), with the degree-9 Chebyshev
// fit c(t) of Numerical Recipes' erfcc (fractional error below 1.2e-7 for every z >= 0).
// Returned as the pair exp(-z^2) and erfc(z), since the GELU backward needs both.
// The normal CDF follows: Phi(x) = erfc(-x / sqrt 2) / 2, with z = |x| / sqrt 2 and
// erfc(-z) = 2 - erfc(z) for x >= 0, so the negative tail keeps its relative accuracy.
#define LUNA_ERFC_COEFFS(F)                                                                   \
  F(0.17087277f) F(-0.82215223f) F(1.48851587f) F(-1.13520398f) F(0.27886807f) F(-0.18628806f) \
  F(0.09678418f) F(0.37409196f) F(1.00002368f) F(-1.26551223f)

TARGET_AVX512 inline __m512 erfc_tail_avx512(__m512 z, __m512 neg_z2) {
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
  __m512 c = _mm512_setzero_ps();
#define LUNA_STEP(k) c = _mm512_fmadd_ps(c, t, _mm512_set1_ps(k));
  // Horner from the highest coefficient: the first step multiplies zero by t.
  LUNA_ERFC_COEFFS(LUNA_STEP)
#undef LUNA_STEP
  return _mm512_mul_ps(t, exp_avx512(_mm512_add_ps(neg_z2, c)));
}

TARGET_AVX2 inline __m256 erfc_tail_avx2(__m256 z, __m256 neg_z2) {
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  __m256 c = _mm256_setzero_ps();
#define LUNA_STEP(k) c = _mm256_fmadd_ps(c, t, _mm256_set1_ps(k));
  LUNA_ERFC_COEFFS(LUNA_STEP)
#undef LUNA_STEP
  return _mm256_mul_ps(t, exp_avx2(_mm256_add_ps(neg_z2, c)));
}

}  // namespace luna

#endif  // __x86_64__
