// The general matrix multiply behind matmul and linear, and the two bias helpers that go with
// a linear layer. Unlike tile_gemm.h (small tiles that already sit in L1), these work on whole
// operands of any size: cache-blocked, parallel over tiles of C, and deterministic (the same
// bits for any thread count).
#pragma once

#include <cstdint>

namespace luna {

// One (possibly batched) product, row-major throughout:
//   C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] + bias        for b in [0, batch)
// op(A) is M x K: A[b] is M x K with row stride lda, or K x M (trans_a) read transposed.
// op(B) is K x N: B[b] is K x N with row stride ldb, or N x K (trans_b) read transposed.
// beta == 0 means C's old content is never read (NaN or garbage in C does not leak through).
// bias, when not null, is a row vector of N values added to every row of every C[b].
template <typename T>
struct GemmParams {
  bool trans_a = false;
  bool trans_b = false;
  int64_t batch = 1;
  int64_t M = 0, N = 0, K = 0;  // any may be 0; K == 0 gives C = beta * C + bias
  T alpha = 1;
  T beta = 0;
  const T* a = nullptr;
  int64_t lda = 0;
  int64_t batch_stride_a = 0;  // elements between A[b] and A[b + 1]
  const T* b = nullptr;
  int64_t ldb = 0;
  int64_t batch_stride_b = 0;  // 0 shares one B across the batch
  T* c = nullptr;
  int64_t ldc = 0;
  int64_t batch_stride_c = 0;
  const T* bias = nullptr;  // [N] or nullptr
};

// Rounding contract (what makes results independent of the thread count): the inner dimension
// is cut into fixed chunks of kGemmKChunk (a function of K alone); within a chunk each element
// of C is one sequential chain of multiply-adds from zero (fused on AVX2 / AVX-512, separate
// in the generic build), scaled by alpha and added to C chunk after chunk, in order. Which
// thread computes which tile never changes an element's arithmetic.
constexpr int64_t kGemmKChunk = 256;

template <typename T>
void gemm(const GemmParams<T>& p);

// The BLAS-style call: C[M x N] = alpha * op(A) * op(B) + beta * C.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// y[rows x cols] (row stride ldy) += bias[cols] on every row.
template <typename T>
void bias_add(int64_t rows, int64_t cols, const T* bias, T* y, int64_t ldy);

// out[j] = sum_i x[i, j] over rows (x has row stride ldx), or out[j] += that sum with
// accumulate. The bias gradient of a linear layer. Rows are summed in fixed blocks whose
// partial sums are added in block order, so the result does not depend on the thread count.
template <typename T>
void column_sum(int64_t rows, int64_t cols, const T* x, int64_t ldx, T* out, bool accumulate);

}  // namespace luna
