// The small dense building blocks of the fused attention kernels: a tile GEMM and the row-wise
// softmax pieces. Each float32 block exists in three builds (generic C++, AVX2+FMA, AVX-512),
// chosen once at run time; float64 (used for gradchecks) always takes the generic build.
//
// Tiles here are small (tens to a few hundred rows and columns) and live in L1/L2, so there is
// no cache blocking: the GEMM walks column panels of B and row blocks of A and keeps one
// register block of C in registers over the whole inner dimension.
#pragma once

#include <cstdint>

namespace luna {

// C[M x N] = alpha * A[M x K] * B[K x N]            (accumulate = false)
// C[M x N] += alpha * A[M x K] * B[K x N]           (accumulate = true)
// A's element (i, p) is a[i * a_row_stride + p * a_col_stride], so A or A^T can be passed
// without a copy. B is row-major with row stride ldb (unit stride along N); pass B^T by
// transposing into a scratch tile first. C is row-major with row stride ldc.
template <typename T>
void tile_gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t a_row_stride,
               int64_t a_col_stride, const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate);

// Row-wise softmax helpers over logits s[0..n) scaled by `scale`, with an optional additive
// key bias (0 for a kept key, -inf for a masked one; nullptr = no mask).
//   max_scaled_row: max_j (scale * s[j] + bias[j]); -inf when every key is masked.
//   exp_shifted_row: out[j] = exp(scale * s[j] + bias[j] - shift); returns sum_j out[j].
//     out may alias s. A masked key gives exactly 0.
template <typename T>
T max_scaled_row(int64_t n, const T* s, const T* bias, T scale);
template <typename T>
T exp_shifted_row(int64_t n, const T* s, const T* bias, T scale, T shift, T* out);

// sum_p a[p] * b[p], rounded exactly as one element of tile_gemm with alpha = 1 (the same
// order, fused or unfused multiply-adds as the active build uses). The attention backward
// computes D = rowsum(dO * O) with it, so that dS = P (dP - D) cancels exactly where it should
// (a row with a single key: O equals that key's value row, dP equals D, dS is exactly 0).
template <typename T>
T dot_as_gemm(int64_t n, const T* a, const T* b);

// dst[c x r] = src[r x c]^T, with row strides lds and ldd.
template <typename T>
void transpose_tile(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd);

}  // namespace luna
