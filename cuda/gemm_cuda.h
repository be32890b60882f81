// The CUDA GEMM family: the same contracts as native/kernels/gemm.h (GemmParams, bias_add,
// column_sum), float32 only, with device pointers. Plain C++ (no CUDA headers), so the bindings
// and the checks include it whether or not CUDA was compiled in; a CPU-only build links the
// stubs in native/runtime/cuda_stubs/gemm_stub.cc, which throw CudaError "cudaErrorNotCompiled".
//
// Every launcher queues its kernels on luna::cuda::stream() and returns without waiting; a bad
// launch throws luna::cuda::CudaError. Results are deterministic: each element of C is one fixed
// chain of float32 fused multiply-adds (no atomics), so a call gives the same bits every time on
// a given device. No TF32: the products are full float32.
#pragma once

#include <cstdint>

#include "../native/kernels/gemm.h"

namespace luna::cuda {

// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] + bias for b in [0, batch), as gemm(p) on the
// CPU: row-major, any strides, batch_stride_b == 0 shares B, beta == 0 never reads C (NaN there
// does not leak), K == 0 gives beta * C + bias, M, N or batch == 0 launches nothing.
void gemm(const GemmParams<float>& p);

// The BLAS-style call for other families' kernels (the attention helpers): one row-major product
// C[M x N] = alpha * op(A) * op(B) + beta * C, A being M x K (K x M when trans_a) with row stride
// lda, B being K x N (N x K when trans_b) with row stride ldb.
void gemm_device(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The same over a batch: item b reads A + b * stride_a, B + b * stride_b (0: one shared B) and
// writes C + b * stride_c.
void gemm_device_batched(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                         const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                         float beta, float* C, int64_t ldc, int64_t stride_c);

// y[rows x cols] (row stride ldy) += bias[cols] on every row.
void bias_add(int64_t rows, int64_t cols, const float* bias, float* y, int64_t ldy);

// out[j] = sum_i x[i, j] (x is rows x cols with row stride ldx), or out[j] += that sum with
// accumulate: the bias gradient of a linear layer. Rows are summed in fixed blocks of
// kColumnSumRows whose partial sums are then added in block order (deterministic).
void column_sum(int64_t rows, int64_t cols, const float* x, int64_t ldx, float* out, bool accumulate);
constexpr int64_t kColumnSumRows = 256;

// ---- for the checks --------------------------------------------------------------------------
// gemm() picks its block tile and how many pieces to cut K into (split-K, for products with few
// output tiles and a long K) from the shape alone, never from the device: a product gives the
// same bits on every GPU. Each element of C[b] is
//   for each piece q of K (k_per_split deep, in order):  s_q = fmaf chain over the piece from 0
//   sum = s_0 (+ s_1 + ... in order, split-K only);  x = alpha * sum;  x = fmaf(beta, C, x) when
//   beta != 0;  x = x + bias[j] when there is a bias
// with every operation rounded to float32 (nothing else fused): the checks reproduce it exactly.
enum class GemmTile { Auto, Small, Large };  // Small: 64 x 64 x 16 block tile; Large: 128 x 128 x 8
constexpr int kMaxSplits = 64;
struct GemmPlan {
  GemmTile tile;        // Small or Large
  int splits;           // pieces of K (1: none)
  int64_t k_per_split;  // depth of each piece but the last (K is cut from 0 in these steps)
};
// The plan gemm() follows (tile Auto), or the one a forced tile and split count become (splits 0:
// chosen from the shape; the Small tile never splits; clamped to whole steps, no empty piece).
GemmPlan plan_gemm(const GemmParams<float>& p, GemmTile tile = GemmTile::Auto, int splits = 0);
// gemm() with a forced plan: the checks reach every path at small sizes with it.
void gemm_forced(const GemmParams<float>& p, GemmTile tile, int splits);

}  // namespace luna::cuda
