// Three builds of the tile primitives declared in tile_gemm.h: generic C++ (any CPU, and every
// float64 call), AVX2+FMA and AVX-512F. The SIMD builds use function target attributes instead
// of -mavx512f so the rest of the binary stays baseline x86-64; dispatch happens per call
// through a table chosen once from active_isa().
#include "tile_gemm.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../runtime/cpu_features.h"

#include "simd_math.h"

namespace luna {

namespace {

// ---------------------------------------------------------------------------------------------
// Generic build.

template <typename T>
void gemm_generic(int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t ars, int64_t acs,
                  const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < M; ++i) {
    T* ci = c + i * ldc;
    if (!accumulate) std::fill(ci, ci + N, T(0));
    for (int64_t p = 0; p < K; ++p) {
      const T aip = alpha * a[i * ars + p * acs];
      const T* bp = b + p * ldb;
      for (int64_t j = 0; j < N; ++j) ci[j] += aip * bp[j];
    }
  }
}

// One lane of gemm_generic: a sequential sum of separately rounded products.
template <typename T>
T dot_generic(int64_t n, const T* a, const T* b) {
  T s = 0;
  for (int64_t p = 0; p < n; ++p) s += a[p] * b[p];
  return s;
}

template <typename T>
T max_row_generic(int64_t n, const T* s, const T* bias, T scale) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, scale * s[j] + (bias ? bias[j] : T(0)));
  return m;
}

// The row sum (a softmax normaliser) is accumulated in double in every build and rounded once.
// Its error is common to the whole row, and it does not cancel in the backward: the output O is
// normalised by it, and D = rowsum(dO * O) then carries it into dS = P (dP - D), where dP - D
// is a small difference for a dominant key. A float sum over a long row (thousands of keys)
// made that the largest error of the unpack backward.
template <typename T>
T exp_row_generic(int64_t n, const T* s, const T* bias, T scale, T shift, T* out) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    out[j] = std::exp((scale * s[j] + (bias ? bias[j] : T(0))) - shift);
    sum += out[j];
  }
  return T(sum);
}

#ifdef LUNA_X86
// ---------------------------------------------------------------------------------------------
// AVX-512 build: 16 floats a vector; a register block of up to 8 rows x 2 vectors of C.

constexpr int kMr512 = 8;

// c[MR x (16 * NV)] (+)= alpha * a[MR x K] * b[K x 16*NV]; the last vector of each row is
// limited to the lanes in `tail` (all 16 when the panel is full).
template <int MR, int NV>
TARGET_AVX512 void micro_avx512(int64_t K, float alpha, const float* a, int64_t ars, int64_t acs,
                                const float* b, int64_t ldb, float* c, int64_t ldc,
                                __mmask16 tail, bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < K; ++p) {
    const float* bp = b + p * ldb;
    __m512 b0, b1;
    if (NV == 1) {
      b0 = _mm512_maskz_loadu_ps(tail, bp);
      b1 = b0;
    } else {
      b0 = _mm512_loadu_ps(bp);
      b1 = _mm512_maskz_loadu_ps(tail, bp + 16);
    }
    const float* ap = a + p * acs;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(ap[i * ars]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      if (NV == 2) acc[i][NV - 1] = _mm512_fmadd_ps(ai, b1, acc[i][NV - 1]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    if (NV == 2) {
      __m512 x = _mm512_mul_ps(acc[i][0], va);
      if (accumulate) x = _mm512_add_ps(x, _mm512_loadu_ps(ci));
      _mm512_storeu_ps(ci, x);
    }
    float* ct = ci + 16 * (NV - 1);
    __m512 y = _mm512_mul_ps(acc[i][NV - 1], va);
    if (accumulate) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(tail, ct));
    _mm512_mask_storeu_ps(ct, tail, y);
  }
}

template <int NV>
TARGET_AVX512 void rows_avx512(int64_t mr, int64_t K, float alpha, const float* a, int64_t ars,
                               int64_t acs, const float* b, int64_t ldb, float* c, int64_t ldc,
                               __mmask16 tail, bool accumulate) {
  switch (mr) {
    case 8: micro_avx512<8, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 7: micro_avx512<7, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 6: micro_avx512<6, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 5: micro_avx512<5, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 4: micro_avx512<4, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 3: micro_avx512<3, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 2: micro_avx512<2, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    default: micro_avx512<1, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
  }
}

TARGET_AVX512 void gemm_avx512(int64_t M, int64_t N, int64_t K, float alpha, const float* a,
                               int64_t ars, int64_t acs, const float* b, int64_t ldb, float* c,
                               int64_t ldc, bool accumulate) {
  // Column panels of 32 (two vectors), the last one narrower; B's panel stays in L1 while
  // the row blocks of A stream past it.
  for (int64_t j0 = 0; j0 < N; j0 += 32) {
    const int64_t width = std::min<int64_t>(32, N - j0);
    const int nv = width > 16 ? 2 : 1;
    const int64_t last = width - 16 * (nv - 1);
    const __mmask16 tail = static_cast<__mmask16>(last >= 16 ? 0xFFFF : (1u << last) - 1);
    for (int64_t i0 = 0; i0 < M; i0 += kMr512) {
      const int64_t mr = std::min<int64_t>(kMr512, M - i0);
      const float* ai = a + i0 * ars;
      float* ci = c + i0 * ldc + j0;
      if (nv == 2) rows_avx512<2>(mr, K, alpha, ai, ars, acs, b + j0, ldb, ci, ldc, tail, accumulate);
      else rows_avx512<1>(mr, K, alpha, ai, ars, acs, b + j0, ldb, ci, ldc, tail, accumulate);
    }
  }
}

inline __mmask16 tail_mask16(int64_t remaining) {
  return static_cast<__mmask16>(remaining >= 16 ? 0xFFFF : (1u << remaining) - 1);
}

TARGET_AVX512 float max_row_avx512(int64_t n, const float* s, const float* bias, float scale) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 m = ninf;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 t = tail_mask16(n - j);
    __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, s + j), vs);
    if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(t, bias + j));
    m = _mm512_mask_max_ps(m, t, m, x);
  }
  return _mm512_reduce_max_ps(m);
}

TARGET_AVX512 float exp_row_avx512(int64_t n, const float* s, const float* bias, float scale,
                                   float shift, float* out) {
  const __m512 vs = _mm512_set1_ps(scale), vshift = _mm512_set1_ps(shift);
  __m512d sum_lo = _mm512_setzero_pd(), sum_hi = _mm512_setzero_pd();  // see exp_row_generic
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 t = tail_mask16(n - j);
    // Multiply, add the bias, then subtract, each rounded as in max_row: the row's maximum
    // then gives exactly exp(0) = 1 (a fused multiply-subtract would leave its rounding error).
    __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, s + j), vs);
    if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(t, bias + j));
    x = _mm512_sub_ps(x, vshift);
    const __m512 e = _mm512_maskz_mov_ps(t, exp_avx512(x));
    _mm512_mask_storeu_ps(out + j, t, e);
    sum_lo = _mm512_add_pd(sum_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    sum_hi = _mm512_add_pd(sum_hi, _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(e), 1))));
  }
  return float(_mm512_reduce_add_pd(_mm512_add_pd(sum_lo, sum_hi)));
}

// One lane of the AVX2 / AVX-512 GEMMs: a sequential chain of fused multiply-adds from 0.
TARGET_AVX2 float dot_fma(int64_t n, const float* a, const float* b) {
  __m128 acc = _mm_setzero_ps();
  for (int64_t p = 0; p < n; ++p) acc = _mm_fmadd_ss(_mm_load_ss(a + p), _mm_load_ss(b + p), acc);
  return _mm_cvtss_f32(acc);
}

// ---------------------------------------------------------------------------------------------
// AVX2 build: 8 floats a vector; a register block of up to 6 rows x 2 vectors of C.

constexpr int kMr256 = 6;

TARGET_AVX2 inline __m256i lane_mask8(int64_t remaining) {
  const int count = static_cast<int>(std::min<int64_t>(remaining, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int MR, int NV>
TARGET_AVX2 void micro_avx2(int64_t K, float alpha, const float* a, int64_t ars, int64_t acs,
                            const float* b, int64_t ldb, float* c, int64_t ldc, __m256i tail,
                            bool accumulate) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  for (int64_t p = 0; p < K; ++p) {
    const float* bp = b + p * ldb;
    __m256 b0, b1;
    if (NV == 1) {
      b0 = _mm256_maskload_ps(bp, tail);
      b1 = b0;
    } else {
      b0 = _mm256_loadu_ps(bp);
      b1 = _mm256_maskload_ps(bp + 8, tail);
    }
    const float* ap = a + p * acs;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(ap + i * ars);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      if (NV == 2) acc[i][NV - 1] = _mm256_fmadd_ps(ai, b1, acc[i][NV - 1]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    if (NV == 2) {
      __m256 x = _mm256_mul_ps(acc[i][0], va);
      if (accumulate) x = _mm256_add_ps(x, _mm256_loadu_ps(ci));
      _mm256_storeu_ps(ci, x);
    }
    float* ct = ci + 8 * (NV - 1);
    __m256 y = _mm256_mul_ps(acc[i][NV - 1], va);
    if (accumulate) y = _mm256_add_ps(y, _mm256_maskload_ps(ct, tail));
    _mm256_maskstore_ps(ct, tail, y);
  }
}

template <int NV>
TARGET_AVX2 void rows_avx2(int64_t mr, int64_t K, float alpha, const float* a, int64_t ars,
                           int64_t acs, const float* b, int64_t ldb, float* c, int64_t ldc,
                           __m256i tail, bool accumulate) {
  switch (mr) {
    case 6: micro_avx2<6, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 5: micro_avx2<5, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 4: micro_avx2<4, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 3: micro_avx2<3, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    case 2: micro_avx2<2, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
    default: micro_avx2<1, NV>(K, alpha, a, ars, acs, b, ldb, c, ldc, tail, accumulate); break;
  }
}

TARGET_AVX2 void gemm_avx2(int64_t M, int64_t N, int64_t K, float alpha, const float* a,
                           int64_t ars, int64_t acs, const float* b, int64_t ldb, float* c,
                           int64_t ldc, bool accumulate) {
  for (int64_t j0 = 0; j0 < N; j0 += 16) {
    const int64_t width = std::min<int64_t>(16, N - j0);
    const int nv = width > 8 ? 2 : 1;
    const __m256i tail = lane_mask8(width - 8 * (nv - 1));
    for (int64_t i0 = 0; i0 < M; i0 += kMr256) {
      const int64_t mr = std::min<int64_t>(kMr256, M - i0);
      const float* ai = a + i0 * ars;
      float* ci = c + i0 * ldc + j0;
      if (nv == 2) rows_avx2<2>(mr, K, alpha, ai, ars, acs, b + j0, ldb, ci, ldc, tail, accumulate);
      else rows_avx2<1>(mr, K, alpha, ai, ars, acs, b + j0, ldb, ci, ldc, tail, accumulate);
    }
  }
}

TARGET_AVX2 float max_row_avx2(int64_t n, const float* s, const float* bias, float scale) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 m = ninf;
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i t = lane_mask8(n - j);
    __m256 x = _mm256_mul_ps(_mm256_maskload_ps(s + j, t), vs);
    if (bias) x = _mm256_add_ps(x, _mm256_maskload_ps(bias + j, t));
    x = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(t));
    m = _mm256_max_ps(m, x);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float r = lanes[0];
  for (int i = 1; i < 8; ++i) r = std::max(r, lanes[i]);
  return r;
}

TARGET_AVX2 float exp_row_avx2(int64_t n, const float* s, const float* bias, float scale,
                               float shift, float* out) {
  const __m256 vs = _mm256_set1_ps(scale), vshift = _mm256_set1_ps(shift);
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();  // see exp_row_generic
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i t = lane_mask8(n - j);
    __m256 x = _mm256_mul_ps(_mm256_maskload_ps(s + j, t), vs);  // unfused, as in exp_row_avx512
    if (bias) x = _mm256_add_ps(x, _mm256_maskload_ps(bias + j, t));
    x = _mm256_sub_ps(x, vshift);
    const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(t), exp_avx2(x));
    _mm256_maskstore_ps(out + j, t, e);
    sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(sum_lo, sum_hi));
  return float((lanes[0] + lanes[2]) + (lanes[1] + lanes[3]));
}
#endif  // LUNA_X86

// ---------------------------------------------------------------------------------------------
// Dispatch table for float32.

struct FloatKernels {
  void (*gemm)(int64_t, int64_t, int64_t, float, const float*, int64_t, int64_t, const float*,
               int64_t, float*, int64_t, bool);
  float (*max_row)(int64_t, const float*, const float*, float);
  float (*exp_row)(int64_t, const float*, const float*, float, float, float*);
  float (*dot)(int64_t, const float*, const float*);
};

const FloatKernels& float_kernels() {
  static const FloatKernels table = [] {
#ifdef LUNA_X86
    switch (active_isa()) {
      case Isa::Avx512: return FloatKernels{gemm_avx512, max_row_avx512, exp_row_avx512, dot_fma};
      case Isa::Avx2: return FloatKernels{gemm_avx2, max_row_avx2, exp_row_avx2, dot_fma};
      default: break;
    }
#endif
    return FloatKernels{gemm_generic<float>, max_row_generic<float>, exp_row_generic<float>, dot_generic<float>};
  }();
  return table;
}

}  // namespace

template <>
void tile_gemm<float>(int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t ars,
                      int64_t acs, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  float_kernels().gemm(M, N, K, alpha, a, ars, acs, b, ldb, c, ldc, accumulate);
}
template <>
void tile_gemm<double>(int64_t M, int64_t N, int64_t K, double alpha, const double* a, int64_t ars,
                       int64_t acs, const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  gemm_generic<double>(M, N, K, alpha, a, ars, acs, b, ldb, c, ldc, accumulate);
}

template <>
float max_scaled_row<float>(int64_t n, const float* s, const float* bias, float scale) {
  return float_kernels().max_row(n, s, bias, scale);
}
template <>
double max_scaled_row<double>(int64_t n, const double* s, const double* bias, double scale) {
  return max_row_generic<double>(n, s, bias, scale);
}

template <>
float exp_shifted_row<float>(int64_t n, const float* s, const float* bias, float scale, float shift, float* out) {
  return float_kernels().exp_row(n, s, bias, scale, shift, out);
}
template <>
double exp_shifted_row<double>(int64_t n, const double* s, const double* bias, double scale, double shift,
                               double* out) {
  return exp_row_generic<double>(n, s, bias, scale, shift, out);
}

template <>
float dot_as_gemm<float>(int64_t n, const float* a, const float* b) {
  return float_kernels().dot(n, a, b);
}
template <>
double dot_as_gemm<double>(int64_t n, const double* a, const double* b) {
  return dot_generic<double>(n, a, b);
}

template <typename T>
void transpose_tile(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}
template void transpose_tile<float>(int64_t, int64_t, const float*, int64_t, float*, int64_t);
template void transpose_tile<double>(int64_t, int64_t, const double*, int64_t, double*, int64_t);

}  // namespace luna
