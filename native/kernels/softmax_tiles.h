// The elementwise steps of the flash-style softmax-attention kernels (softmax_attention.cc).
//
// The forward's logit tile is key-major: S^T, rows = keys, columns = queries, row stride ld.
// Key-major because tile_gemm produces it as K_tile . Q_tile^T (K read in place, only the small
// query tile is transposed), and because then every per-query quantity (running max, running
// sum) is a vector along the row, so the online softmax vectorises without horizontal
// reductions. Visibility: row r (one key) is visible to the columns c >= first[r] only. That
// one number per row carries both masks: a padding key has first = cols (visible to nobody);
// under the causal mask key j is seen by queries i >= j - offset, a suffix of the query tile.
// The backward's tiles are query-major (S = Q_tile K_tile^T; see softmax_attention.cc): its
// row exponentials are tile_gemm.h's exp_shifted_row, its other steps ds_rows and dropout_run.
//
// Each step exists in three builds (generic C++ for float64 and old CPUs, AVX2+FMA, AVX-512),
// chosen once at run time from active_isa(), like tile_gemm.cc. Header-only because the
// source list (native/sources.json) names one .cc per kernel family; the SIMD functions carry
// their own target attributes, so including this never raises the including file's baseline.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../runtime/cpu_features.h"
#include "counter_rng.h"
#include "simd_math.h"
#include "tile_gemm.h"

namespace luna {

template <typename T>
struct SoftmaxTileOps {
  // mx[c] = max(mx[c], scale * s[r][c]) over every visible (r, c).
  void (*col_max)(int64_t rows, int64_t cols, const T* s, int64_t ld, const int32_t* first, T scale, T* mx);
  // The online-softmax update of the running state to the new maxima: alpha[c] = exp(max[c] -
  // new_max[c]) (0 while max[c] is still -inf), sum[c] *= alpha[c], max[c] = new_max[c] and
  // neg_max[c] = -new_max[c] (the shift exp_cols takes). Returns false when no maximum moved
  // (every alpha is exactly 1), so that the caller can skip rescaling its accumulator: after the
  // first few key tiles that is the common case.
  bool (*online_rescale)(int64_t cols, T* max, const T* new_max, T* sum, T* neg_max, T* alpha);
  // Row c of x (cols x width, row stride ldx) *= alpha[c]: the accumulator follows its maxima.
  // Rows whose alpha is exactly 1 (their maximum did not move) are left alone.
  void (*scale_rows)(int64_t cols, int64_t width, T* x, int64_t ldx, const T* alpha);
  // s[r][c] = exp(scale * s[r][c] + neg_shift[c]) where visible, exactly 0 elsewhere; with sum,
  // sum[c] += s[r][c] row after row (neg_shift = -running max). The product and the shift are
  // rounded separately (as the reference computes s - max), so the row's maximum gives exactly
  // exp(0) = 1.
  void (*exp_cols)(int64_t rows, int64_t cols, T* s, int64_t ld, const int32_t* first, T scale, const T* neg_shift,
                   T* sum);
  // On a query-major tile (the backward's): dp[r][c] = p[r][c] * (dp[r][c] - D[r]), dS from P
  // and dP (luna-math.md 5.1).
  void (*ds_rows)(int64_t rows, int64_t cols, const T* p, T* dp, int64_t ld, const T* D);
  // Dropout along one run of a tile: for c in [lo, hi), f = drop.factor(index0 + c * stride),
  // x[c] *= f and, with keep, keep[c] = f. Bitwise the same factors as counter_rng.h; the SIMD
  // builds hash 8 (AVX-512) or 4 (AVX2) 64-bit counters at once, several times faster than
  // the scalar hash, which would otherwise cost more than the attention itself.
  void (*dropout_run)(const DropoutMask<T>& drop, uint64_t index0, uint64_t stride, int64_t lo, int64_t hi, T* x,
                      T* keep);
  // dst[c x r] = src[r x c]^T with row strides lds and ldd (tile_gemm.h's transpose_tile; the
  // SIMD builds move 8 x 8 blocks with AVX2 shuffles, several times faster than element by
  // element, which matters for the short tasks of a causal forward).
  void (*transpose)(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd);
};

// Everything below has internal linkage (an unnamed namespace): each translation unit that
// includes this header gets its own copy, compiled with its own flags. The kernels rely on
// -ffp-contract=off (a fused scale * s + shift would move the row maximum off exp(0) = 1); with
// external linkage the linker could hand the kernel the copy of a file built without that flag.
namespace {
namespace softmax_tiles {

// ---------------------------------------------------------------------------------------------
// Generic build.

template <typename T>
void col_max_generic(int64_t rows, int64_t cols, const T* s, int64_t ld, const int32_t* first, T scale, T* mx) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = first[r]; c < cols; ++c) mx[c] = std::max(mx[c], scale * s[r * ld + c]);
}

template <typename T>
bool online_rescale_generic(int64_t cols, T* max, const T* new_max, T* sum, T* neg_max, T* alpha) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  bool moved = false;
  for (int64_t c = 0; c < cols; ++c) {
    // Bitwise "unchanged" (NaN compares unequal, so a NaN maximum counts as moved).
    moved |= !(max[c] == new_max[c]);
    alpha[c] = max[c] == neg_inf ? T(0) : std::exp(max[c] - new_max[c]);
    sum[c] *= alpha[c];
    max[c] = new_max[c];
    neg_max[c] = -new_max[c];
  }
  return moved;
}

template <typename T>
void scale_rows_generic(int64_t cols, int64_t width, T* x, int64_t ldx, const T* alpha) {
  for (int64_t c = 0; c < cols; ++c)
    if (alpha[c] != T(1))
      for (int64_t e = 0; e < width; ++e) x[c * ldx + e] *= alpha[c];
}

template <typename T>
void exp_cols_generic(int64_t rows, int64_t cols, T* s, int64_t ld, const int32_t* first, T scale, const T* neg_shift,
                      T* sum) {
  for (int64_t r = 0; r < rows; ++r) {
    T* sr = s + r * ld;
    const int64_t f = std::min<int64_t>(first[r], cols);
    std::fill(sr, sr + f, T(0));
    for (int64_t c = f; c < cols; ++c) sr[c] = std::exp(scale * sr[c] + neg_shift[c]);
    if (sum)
      for (int64_t c = f; c < cols; ++c) sum[c] += sr[c];
  }
}

template <typename T>
void ds_rows_generic(int64_t rows, int64_t cols, const T* p, T* dp, int64_t ld, const T* D) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dp[r * ld + c] = p[r * ld + c] * (dp[r * ld + c] - D[r]);
}

template <typename T>
void dropout_run_generic(const DropoutMask<T>& drop, uint64_t index0, uint64_t stride, int64_t lo, int64_t hi, T* x,
                         T* keep) {
  for (int64_t c = lo; c < hi; ++c) {
    const T f = drop.factor(index0 + uint64_t(c) * stride);
    x[c] *= f;
    if (keep) keep[c] = f;
  }
}

#ifdef LUNA_X86
// The constants of counter_bits (counter_rng.h), split for the 32 x 32 -> 64-bit multiplies
// that AVX-512F and AVX2 have (a full 64-bit multiply needs AVX-512DQ).
constexpr uint64_t kMix1 = 0x9e3779b97f4a7c15ull, kMix2 = 0xbf58476d1ce4e5b9ull, kMix3 = 0x94d049bb133111ebull,
                   kMix4 = 0xd6e8feb86659fd93ull;

// ---------------------------------------------------------------------------------------------
// AVX-512 build: 16 query columns a vector.

inline __mmask16 lanes_below(int64_t n) {  // lanes [0, n) of 16
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

TARGET_AVX512 inline void col_max_avx512(int64_t rows, int64_t cols, const float* s, int64_t ld,
                                         const int32_t* first, float scale, float* mx) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    const __mmask16 t = lanes_below(cols - c0);
    __m512 m = _mm512_maskz_loadu_ps(t, mx + c0);
    for (int64_t r = 0; r < rows; ++r) {
      const __mmask16 vis = t & static_cast<__mmask16>(~lanes_below(first[r] - c0));
      if (!vis) continue;
      const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(vis, s + r * ld + c0), vs);
      m = _mm512_mask_max_ps(m, vis, m, x);
    }
    _mm512_mask_storeu_ps(mx + c0, t, m);
  }
}

TARGET_AVX512 inline bool online_rescale_avx512(int64_t cols, float* max, const float* new_max, float* sum,
                                                float* neg_max, float* alpha) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 moved = 0;
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 t = lanes_below(cols - c);
    const __m512 old = _mm512_maskz_loadu_ps(t, max + c), now = _mm512_maskz_loadu_ps(t, new_max + c);
    moved |= _mm512_mask_cmp_ps_mask(t, old, now, _CMP_NEQ_UQ);
    // exp(-inf - x) is already 0, but -inf - (-inf) is NaN: a still-empty column must give 0.
    const __mmask16 empty = _mm512_cmp_ps_mask(old, neg_inf, _CMP_EQ_OQ);
    const __m512 a = _mm512_maskz_mov_ps(static_cast<__mmask16>(~empty), exp_avx512(_mm512_sub_ps(old, now)));
    _mm512_mask_storeu_ps(alpha + c, t, a);
    _mm512_mask_storeu_ps(sum + c, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, sum + c), a));
    _mm512_mask_storeu_ps(max + c, t, now);
    _mm512_mask_storeu_ps(neg_max + c, t, _mm512_sub_ps(_mm512_setzero_ps(), now));
  }
  return moved != 0;
}

TARGET_AVX512 inline void scale_rows_avx512(int64_t cols, int64_t width, float* x, int64_t ldx, const float* alpha) {
  for (int64_t c = 0; c < cols; ++c) {
    if (alpha[c] == 1.0f) continue;
    const __m512 a = _mm512_set1_ps(alpha[c]);
    float* xc = x + c * ldx;
    for (int64_t e = 0; e < width; e += 16) {
      const __mmask16 t = lanes_below(width - e);
      _mm512_mask_storeu_ps(xc + e, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, xc + e), a));
    }
  }
}

TARGET_AVX512 inline void exp_cols_avx512(int64_t rows, int64_t cols, float* s, int64_t ld, const int32_t* first,
                                          float scale, const float* neg_shift, float* sum) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    const __mmask16 t = lanes_below(cols - c0);
    const __m512 shift = _mm512_maskz_loadu_ps(t, neg_shift + c0);
    __m512 acc = sum ? _mm512_maskz_loadu_ps(t, sum + c0) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * ld + c0;
      const __mmask16 vis = t & static_cast<__mmask16>(~lanes_below(first[r] - c0));
      if (!vis) {
        _mm512_mask_storeu_ps(sr, t, _mm512_setzero_ps());
        continue;
      }
      const __m512 x = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(vis, sr), vs), shift);
      const __m512 e = _mm512_maskz_mov_ps(vis, exp_avx512(x));
      _mm512_mask_storeu_ps(sr, t, e);
      acc = _mm512_add_ps(acc, e);
    }
    if (sum) _mm512_mask_storeu_ps(sum + c0, t, acc);
  }
}

TARGET_AVX512 inline void ds_rows_avx512(int64_t rows, int64_t cols, const float* p, float* dp, int64_t ld,
                                         const float* D) {
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 d = _mm512_set1_ps(D[r]);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const __mmask16 t = lanes_below(cols - c0);
      float* x = dp + r * ld + c0;
      const __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, p + r * ld + c0),
                                     _mm512_sub_ps(_mm512_maskz_loadu_ps(t, x), d));
      _mm512_mask_storeu_ps(x, t, y);
    }
  }
}

// z * c mod 2^64 in every 64-bit lane: lo(z) lo(c) + (hi(z) lo(c) + lo(z) hi(c)) << 32.
TARGET_AVX512 inline __m512i mul64_avx512(__m512i z, uint64_t c) {
  const __m512i cl = _mm512_set1_epi64(static_cast<long long>(c));
  const __m512i ch = _mm512_set1_epi64(static_cast<long long>(c >> 32));
  const __m512i cross = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(z, 32), cl), _mm512_mul_epu32(z, ch));
  return _mm512_add_epi64(_mm512_mul_epu32(z, cl), _mm512_slli_epi64(cross, 32));
}

// counter_bits(seed, index) of 8 indices; base = kMix1 * (seed + 1), salt = seed * kMix4.
TARGET_AVX512 inline __m512i counter_bits_avx512(__m512i index, __m512i base, __m512i salt) {
  __m512i z = _mm512_add_epi64(index, base);
  z = mul64_avx512(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), kMix2);
  z = mul64_avx512(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), kMix3);
  z = _mm512_xor_si512(_mm512_xor_si512(z, _mm512_srli_epi64(z, 31)), salt);
  z = mul64_avx512(_mm512_xor_si512(z, _mm512_srli_epi64(z, 32)), kMix4);
  z = mul64_avx512(_mm512_xor_si512(z, _mm512_srli_epi64(z, 32)), kMix4);
  return _mm512_srli_epi64(z, 32);
}

TARGET_AVX512 inline void dropout_run_avx512(const DropoutMask<float>& drop, uint64_t index0, uint64_t stride,
                                             int64_t lo, int64_t hi, float* x, float* keep) {
  const __m512i base = _mm512_set1_epi64(static_cast<long long>(kMix1 * (drop.seed + 1)));
  const __m512i salt = _mm512_set1_epi64(static_cast<long long>(drop.seed * kMix4));
  const __m512i threshold = _mm512_set1_epi64(drop.threshold);
  const uint64_t s = stride;
  auto at = [s](uint64_t lane) { return static_cast<long long>(lane * s); };
  const __m512i lanes = _mm512_set_epi64(at(7), at(6), at(5), at(4), at(3), at(2), at(1), 0);
  const __m512 scale = _mm512_set1_ps(drop.keep_scale);
  for (int64_t c = lo; c < hi; c += 16) {
    const __mmask16 t = lanes_below(hi - c);
    const __m512i first = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(index0 + uint64_t(c) * s)), lanes);
    const __m512i second = _mm512_add_epi64(first, _mm512_set1_epi64(static_cast<long long>(8 * s)));
    const __mmask8 k0 = _mm512_cmp_epu64_mask(counter_bits_avx512(first, base, salt), threshold, _MM_CMPINT_NLT);
    const __mmask8 k1 = _mm512_cmp_epu64_mask(counter_bits_avx512(second, base, salt), threshold, _MM_CMPINT_NLT);
    const __m512 f = _mm512_maskz_mov_ps(static_cast<__mmask16>(k0 | (unsigned(k1) << 8)), scale);
    _mm512_mask_storeu_ps(x + c, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, x + c), f));
    if (keep) _mm512_mask_storeu_ps(keep + c, t, f);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 build: 8 query columns a vector; lane masks are integer vectors.

// Lanes l of columns c0 + l in [lo, hi).
TARGET_AVX2 inline __m256i lanes_between(int64_t c0, int64_t lo, int64_t hi) {
  const __m256i idx =
      _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_and_si256(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(static_cast<int>(lo) - 1)),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), idx));
}

TARGET_AVX2 inline void col_max_avx2(int64_t rows, int64_t cols, const float* s, int64_t ld, const int32_t* first,
                                     float scale, float* mx) {
  const __m256 vs = _mm256_set1_ps(scale);
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t c0 = 0; c0 < cols; c0 += 8) {
    const __m256i t = lanes_between(c0, c0, cols);
    __m256 m = _mm256_maskload_ps(mx + c0, t);
    for (int64_t r = 0; r < rows; ++r) {
      if (first[r] >= std::min<int64_t>(cols, c0 + 8)) continue;
      const __m256i vis = lanes_between(c0, first[r], cols);
      const __m256 x = _mm256_mul_ps(_mm256_maskload_ps(s + r * ld + c0, vis), vs);
      m = _mm256_max_ps(m, _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(vis)));
    }
    _mm256_maskstore_ps(mx + c0, t, m);
  }
}

TARGET_AVX2 inline bool online_rescale_avx2(int64_t cols, float* max, const float* new_max, float* sum,
                                            float* neg_max, float* alpha) {
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int moved = 0;
  for (int64_t c = 0; c < cols; c += 8) {
    const __m256i t = lanes_between(c, c, cols);
    const __m256 old = _mm256_maskload_ps(max + c, t), now = _mm256_maskload_ps(new_max + c, t);
    moved |= _mm256_movemask_ps(_mm256_and_ps(_mm256_castsi256_ps(t), _mm256_cmp_ps(old, now, _CMP_NEQ_UQ)));
    const __m256 filled = _mm256_cmp_ps(old, neg_inf, _CMP_NEQ_UQ);  // see online_rescale_avx512
    const __m256 a = _mm256_and_ps(filled, exp_avx2(_mm256_sub_ps(old, now)));
    _mm256_maskstore_ps(alpha + c, t, a);
    _mm256_maskstore_ps(sum + c, t, _mm256_mul_ps(_mm256_maskload_ps(sum + c, t), a));
    _mm256_maskstore_ps(max + c, t, now);
    _mm256_maskstore_ps(neg_max + c, t, _mm256_sub_ps(_mm256_setzero_ps(), now));
  }
  return moved != 0;
}

TARGET_AVX2 inline void scale_rows_avx2(int64_t cols, int64_t width, float* x, int64_t ldx, const float* alpha) {
  for (int64_t c = 0; c < cols; ++c) {
    if (alpha[c] == 1.0f) continue;
    const __m256 a = _mm256_set1_ps(alpha[c]);
    float* xc = x + c * ldx;
    for (int64_t e = 0; e < width; e += 8) {
      const __m256i t = lanes_between(e, e, width);
      _mm256_maskstore_ps(xc + e, t, _mm256_mul_ps(_mm256_maskload_ps(xc + e, t), a));
    }
  }
}

TARGET_AVX2 inline void exp_cols_avx2(int64_t rows, int64_t cols, float* s, int64_t ld, const int32_t* first,
                                      float scale, const float* neg_shift, float* sum) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t c0 = 0; c0 < cols; c0 += 8) {
    const __m256i t = lanes_between(c0, c0, cols);
    const __m256 shift = _mm256_maskload_ps(neg_shift + c0, t);
    __m256 acc = sum ? _mm256_maskload_ps(sum + c0, t) : _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * ld + c0;
      const __m256i vis = lanes_between(c0, first[r], cols);
      const __m256 x = _mm256_add_ps(_mm256_mul_ps(_mm256_maskload_ps(sr, vis), vs), shift);
      const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(vis), exp_avx2(x));
      _mm256_maskstore_ps(sr, t, e);
      acc = _mm256_add_ps(acc, e);
    }
    if (sum) _mm256_maskstore_ps(sum + c0, t, acc);
  }
}

TARGET_AVX2 inline void ds_rows_avx2(int64_t rows, int64_t cols, const float* p, float* dp, int64_t ld,
                                     const float* D) {
  for (int64_t r = 0; r < rows; ++r) {
    const __m256 d = _mm256_set1_ps(D[r]);
    for (int64_t c0 = 0; c0 < cols; c0 += 8) {
      const __m256i t = lanes_between(c0, c0, cols);
      float* x = dp + r * ld + c0;
      const __m256 y =
          _mm256_mul_ps(_mm256_maskload_ps(p + r * ld + c0, t), _mm256_sub_ps(_mm256_maskload_ps(x, t), d));
      _mm256_maskstore_ps(x, t, y);
    }
  }
}
TARGET_AVX2 inline __m256i mul64_avx2(__m256i z, uint64_t c) {  // as mul64_avx512
  const __m256i cl = _mm256_set1_epi64x(static_cast<long long>(c));
  const __m256i ch = _mm256_set1_epi64x(static_cast<long long>(c >> 32));
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(z, 32), cl), _mm256_mul_epu32(z, ch));
  return _mm256_add_epi64(_mm256_mul_epu32(z, cl), _mm256_slli_epi64(cross, 32));
}

TARGET_AVX2 inline __m256i counter_bits_avx2(__m256i index, __m256i base, __m256i salt) {  // as counter_bits_avx512
  __m256i z = _mm256_add_epi64(index, base);
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), kMix2);
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), kMix3);
  z = _mm256_xor_si256(_mm256_xor_si256(z, _mm256_srli_epi64(z, 31)), salt);
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 32)), kMix4);
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 32)), kMix4);
  return _mm256_srli_epi64(z, 32);
}

// 8 x 8 blocks by the classic unpack / shuffle / lane-permute sequence, the edges element-wise.
TARGET_AVX2 inline void transpose_avx2(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst,
                                       int64_t ldd) {
  int64_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      const float* s0 = src + r0 * lds + c0;
      __m256 t[8], u[8];
      for (int i = 0; i < 8; i += 2) {
        const __m256 a = _mm256_loadu_ps(s0 + i * lds), b = _mm256_loadu_ps(s0 + (i + 1) * lds);
        t[i] = _mm256_unpacklo_ps(a, b);
        t[i + 1] = _mm256_unpackhi_ps(a, b);
      }
      for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      float* d0 = dst + c0 * ldd + r0;
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(d0 + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(d0 + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
      }
    }
    for (; c0 < cols; ++c0)
      for (int64_t r = r0; r < r0 + 8; ++r) dst[c0 * ldd + r] = src[r * lds + c0];
  }
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r0] = src[r0 * lds + c];
}

TARGET_AVX2 inline void dropout_run_avx2(const DropoutMask<float>& drop, uint64_t index0, uint64_t stride, int64_t lo,
                                         int64_t hi, float* x, float* keep) {
  const __m256i base = _mm256_set1_epi64x(static_cast<long long>(kMix1 * (drop.seed + 1)));
  const __m256i salt = _mm256_set1_epi64x(static_cast<long long>(drop.seed * kMix4));
  // The bits are below 2^32, so a signed 64-bit compare with threshold - 1 is "bits >= threshold".
  const __m256i below = _mm256_set1_epi64x(static_cast<long long>(drop.threshold) - 1);
  const uint64_t s = stride;
  const __m256i lanes = _mm256_set_epi64x(static_cast<long long>(3 * s), static_cast<long long>(2 * s),
                                          static_cast<long long>(s), 0);
  // Gathers the low 32 bits of each 64-bit lane of two compare results into 8 float lanes.
  const __m256i pack = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m256 scale = _mm256_set1_ps(drop.keep_scale);
  for (int64_t c = lo; c < hi; c += 8) {
    const __m256i t = lanes_between(c, c, hi);
    const __m256i first = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(index0 + uint64_t(c) * s)), lanes);
    const __m256i second = _mm256_add_epi64(first, _mm256_set1_epi64x(static_cast<long long>(4 * s)));
    const __m256i k0 = _mm256_cmpgt_epi64(counter_bits_avx2(first, base, salt), below);
    const __m256i k1 = _mm256_cmpgt_epi64(counter_bits_avx2(second, base, salt), below);
    const __m256i k =
        _mm256_blend_epi32(_mm256_permutevar8x32_epi32(k0, pack), _mm256_permutevar8x32_epi32(k1, pack), 0xF0);
    const __m256 f = _mm256_and_ps(_mm256_castsi256_ps(k), scale);
    _mm256_maskstore_ps(x + c, t, _mm256_mul_ps(_mm256_maskload_ps(x + c, t), f));
    if (keep) _mm256_maskstore_ps(keep + c, t, f);
  }
}
#endif  // LUNA_X86

}  // namespace softmax_tiles

// The build of the tile steps for T: float32 follows active_isa(), float64 is always generic.
template <typename T>
const SoftmaxTileOps<T>& softmax_tile_ops() {
  using namespace softmax_tiles;
  static const SoftmaxTileOps<T> generic{col_max_generic<T>, online_rescale_generic<T>, scale_rows_generic<T>,
                                         exp_cols_generic<T>, ds_rows_generic<T>, dropout_run_generic<T>,
                                         transpose_tile<T>};
  return generic;
}

template <>
const SoftmaxTileOps<float>& softmax_tile_ops<float>() {
  using namespace softmax_tiles;
  static const SoftmaxTileOps<float> table = [] {
#ifdef LUNA_X86
    switch (active_isa()) {
      case Isa::Avx512:
        return SoftmaxTileOps<float>{col_max_avx512, online_rescale_avx512, scale_rows_avx512, exp_cols_avx512,
                                     ds_rows_avx512, dropout_run_avx512, transpose_avx2};
      case Isa::Avx2:
        return SoftmaxTileOps<float>{col_max_avx2, online_rescale_avx2, scale_rows_avx2, exp_cols_avx2, ds_rows_avx2,
                                     dropout_run_avx2, transpose_avx2};
      default: break;
    }
#endif
    return SoftmaxTileOps<float>{col_max_generic<float>, online_rescale_generic<float>, scale_rows_generic<float>,
                                 exp_cols_generic<float>, ds_rows_generic<float>, dropout_run_generic<float>,
                                 transpose_tile<float>};
  }();
  return table;
}

}  // namespace
}  // namespace luna
