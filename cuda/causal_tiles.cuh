// Small shared-memory matrix pieces of the causal kernels (cuda/causal.cu): a chunk's c x c
// lower-triangular products and the sums over them, one output element per thread. Shared
// arrays have odd row strides (padded), so threads walking a column hit distinct banks.
#pragma once

#include "common.cuh"

namespace luna::cuda::causal_tiles {

// The row stride of a shared array of x columns.
__host__ __device__ inline int padded(int x) { return x | 1; }

// A per-head matrix in global memory read through the cache, element (a, b) at p[a*ra + b*rb]:
// the states S^K, S^V, the suffix sums and pq, which every thread of a block reads.
struct Gmat {
  const float* p;
  int64_t ra, rb;
  __device__ float operator()(int a, int b) const { return p[a * ra + b * rb]; }
};

// Σ_kk x[kk] s(kk, j): a row of shared memory times a column of a global matrix.
__device__ inline float dot_state(const float* x, int K, const Gmat& s, int j) {
  float acc = 0.f;
  for (int kk = 0; kk < K; ++kk) acc += x[kk] * s(kk, j);
  return acc;
}

// Σ_{m <= i} L[i][m] y[m][j]: row i of a lower-triangular chunk product times y (shared memory).
__device__ inline float tri_lower(const float* L, int ldl, int i, const float* y, int ldy, int j) {
  float acc = 0.f;
  for (int m = 0; m <= i; ++m) acc += L[i * ldl + m] * y[m * ldy + j];
  return acc;
}

// Σ_{m >= i} L[m][i] y[m][j], from m = rows - 1 down: row i of Lᵀ times y, a suffix sum whose
// terms carry 1/t and shrink with m, so the small ones come first (the CPU's upper_times).
__device__ inline float tri_upper(const float* L, int ldl, int i, int rows, const float* y, int ldy, int j) {
  float acc = 0.f;
  for (int m = rows - 1; m >= i; --m) acc += L[m * ldl + i] * y[m * ldy + j];
  return acc;
}

// out[i][j] = Σ_kk a[i][kk] b[j][kk] for j <= i < rows (shared memory): the lower triangle of a
// chunk's A = q Kᵀ, E = dO Vᵀ, H = gT Φᵀ or G = gB Φᵀ. The upper triangle is never read.
__device__ inline void lower_abt(int rows, int K, const float* a, int lda, const float* b, int ldb, float* out, int ldo) {
  for (int x = threadIdx.x; x < rows * rows; x += blockDim.x) {
    const int i = x / rows, j = x % rows;
    if (j > i) continue;
    float acc = 0.f;
    for (int kk = 0; kk < K; ++kk) acc += a[i * lda + kk] * b[j * ldb + kk];
    out[i * ldo + j] = acc;
  }
}

// dst (rows x width, row stride ld, shared) = src (rows x width, dense, global).
__device__ inline void load_rows(float* dst, int ld, const float* src, int rows, int width) {
  for (int x = threadIdx.x; x < rows * width; x += blockDim.x) dst[(x / width) * ld + x % width] = src[x];
}

}  // namespace luna::cuda::causal_tiles
