// The building blocks of the CUDA softmax-attention kernels (cuda/softmax_attention.cu, whose
// opening comment describes the thread layout and the shared-memory tiles): the kernels'
// arguments, tile loads, the score-tile product, the row accumulators and the shared-memory
// layouts. Included by that file only; device code, so it needs common.cuh first.
#pragma once

#include <cstdint>
#include <limits>

#include "../native/kernels/counter_rng.h"
#include "common.cuh"

namespace luna::cuda::softmax_detail {

constexpr int kThreads = 128;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Everything a kernel reads about the call, by value (device pointers, int sizes: the API
// refuses tensors over 2^31 elements, so every index below fits; offsets are taken in int64).
struct SoftmaxArgs {
  const float* q = nullptr;     // [BH, n, dh]
  const float* k = nullptr;     // [BH, m, dh]
  const float* v = nullptr;     // [BH, m, dh]
  const uint8_t* mask = nullptr;  // [B, m], 1 = padding; null = none
  float* out = nullptr;         // [BH, n, dh] (written by the forward, read by the backward)
  float* lse = nullptr;         // [BH, n]
  const float* dout = nullptr;  // [BH, n, dh]
  float* dq = nullptr;          // [BH, n, dh]
  float* dk = nullptr;          // [BH, m, dh]
  float* dv = nullptr;          // [BH, m, dh]; == dk when tied
  float* D = nullptr;           // [BH, n] scratch: rowsum(dO * O), from the dq kernel to the dkv kernel
  int h = 0, n = 0, m = 0, dh = 0;
  int off = 0;                  // causal: query i sees key j iff j <= i + off (off = m - n)
  float scale = 1.f;
  bool causal = false, tied = false;
  bool vec4 = false;            // q, k, v, dout rows start on 16-byte boundaries (dh % 4 == 0, aligned bases)
  DropoutMask<float> drop{0.0, 0};
};

__host__ __device__ constexpr int round4(int x) { return (x + 3) & ~3; }

// RM consecutive floats of shared memory (16-byte aligned when RM is a multiple of 4).
template <int RM>
__device__ __forceinline__ void load_run(float (&a)[RM], const float* p) {
  if constexpr (RM % 4 == 0) {
#pragma unroll
    for (int i = 0; i < RM; i += 4) {
      const float4 t = *reinterpret_cast<const float4*>(p + i);
      a[i] = t.x, a[i + 1] = t.y, a[i + 2] = t.z, a[i + 3] = t.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < RM; ++i) a[i] = p[i];
  }
}
template <int RM>
__device__ __forceinline__ void store_run(float* p, const float (&a)[RM]) {
  if constexpr (RM % 4 == 0) {
#pragma unroll
    for (int i = 0; i < RM; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(a[i], a[i + 1], a[i + 2], a[i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < RM; ++i) p[i] = a[i];
  }
}

// Max and sum over the 16 lanes of a half warp (the lanes that share a row). Every lane of the
// warp takes part; xor offsets below 16 never leave the half.
__device__ __forceinline__ float half_warp_max(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Rows [0, R) of a tile whose first `rows` rows come from src (row stride dh) and the rest are
// zero, transposed: t[d * (R + 4) + r] for d in [0, dp), zero past dh. Loaded once per block.
template <int R>
__device__ void load_transposed(float* t, const float* src, int rows, int dh, int dp) {
  for (int x = threadIdx.x; x < R * dp; x += kThreads) {
    const int r = x / dp, d = x - r * dp;
    t[d * (R + 4) + r] = r < rows && d < dh ? src[int64_t(r) * dh + d] : 0.f;
  }
}

// The same tile row-major, t[r * (dp + 1) + d] (consecutive threads take consecutive d: the
// global reads are coalesced and the shared writes conflict-free). Loaded once per key or
// query tile.
template <int ROWS>
__device__ void load_rows(float* t, const float* src, int rows, int dh, int dp) {
  for (int x = threadIdx.x; x < ROWS * dp; x += kThreads) {
    const int r = x / dp, d = x - r * dp;
    t[r * (dp + 1) + d] = r < rows && d < dh ? src[int64_t(r) * dh + d] : 0.f;
  }
}

// A tile of ROWS rows on its way from global memory to a row-major shared tile (load_rows'
// layout): fetch() issues the global loads into registers, store() writes them to shared memory
// later, so that the loads' latency hides behind the work between the two. With vec4 (dh == DCAP
// and 16-byte aligned rows) each thread moves float4s. The generic head dim has no fixed
// register count: there store() does the whole load.
template <int ROWS, int DCAP>
struct TileFetch {
  static constexpr int kPer = ROWS * DCAP / kThreads;  // floats per thread
  static_assert(kPer % 4 == 0, "whole float4s per thread");
  float v[kPer];
  __device__ __forceinline__ void fetch(const float* src, int rows, int dh, bool vec4) {
    if (vec4) {
#pragma unroll
      for (int e = 0; e < kPer / 4; ++e) {
        const int x = threadIdx.x + e * kThreads, r = x / (DCAP / 4), d = (x % (DCAP / 4)) * 4;
        const float4 t = r < rows ? *reinterpret_cast<const float4*>(src + int64_t(r) * dh + d)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
        v[4 * e] = t.x, v[4 * e + 1] = t.y, v[4 * e + 2] = t.z, v[4 * e + 3] = t.w;
      }
    } else {
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const int x = threadIdx.x + e * kThreads, r = x / DCAP, d = x % DCAP;
        v[e] = r < rows && d < dh ? src[int64_t(r) * dh + d] : 0.f;
      }
    }
  }
  __device__ __forceinline__ void store(float* t, bool vec4) const {
    if (vec4) {
#pragma unroll
      for (int e = 0; e < kPer / 4; ++e) {
        const int x = threadIdx.x + e * kThreads, r = x / (DCAP / 4), d = (x % (DCAP / 4)) * 4;
#pragma unroll
        for (int u = 0; u < 4; ++u) t[r * (DCAP + 1) + d + u] = v[4 * e + u];
      }
    } else {
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const int x = threadIdx.x + e * kThreads;
        t[(x / DCAP) * (DCAP + 1) + x % DCAP] = v[e];
      }
    }
  }
};
template <int ROWS>
struct TileFetch<ROWS, 0> {
  const float* src = nullptr;
  int rows = 0, dh = 0;
  __device__ void fetch(const float* s, int r, int d, bool) { src = s, rows = r, dh = d; }
  __device__ void store(float* t, bool) const { load_rows<ROWS>(t, src, rows, dh, dh); }
};

// s[i][c] = sum_d A[row rg*RM + i][d] * B[col cg + 16 c][d]: A transposed (stride RS = 8 RM + 4),
// B row-major (stride dp + 1). One fmaf chain per element, d ascending from 0.
template <int RM, int CN>
__device__ __forceinline__ void score_tile(float (&s)[RM][CN], const float* at, const float* bs, int dp, int rg,
                                           int cg) {
  constexpr int RS = 8 * RM + 4;
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int c = 0; c < CN; ++c) s[i][c] = 0.f;
#pragma unroll 4
  for (int d = 0; d < dp; ++d) {
    float a[RM];
    load_run<RM>(a, at + d * RS + rg * RM);
    float b[CN];
#pragma unroll
    for (int c = 0; c < CN; ++c) b[c] = bs[(cg + 16 * c) * (dp + 1) + d];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int c = 0; c < CN; ++c) s[i][c] = fmaf(a[i], b[c], s[i][c]);
  }
}

// One thread's share of a [rows][d] accumulator: rows rg*RM + i, head-dim columns cg + 16 c.
// In registers for the fixed widths; in shared memory (a private slice per thread, so no
// barriers) for the generic one, whose width is only known at run time.
template <int RM, int DCAP>
struct RowAcc {
  static constexpr int kCols = DCAP / 16;
  float v[RM][kCols];
  __device__ void init(float*, int, int, int) {
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int c = 0; c < kCols; ++c) v[i][c] = 0.f;
  }
  __device__ __forceinline__ int cols() const { return kCols; }
  __device__ __forceinline__ float& at(int i, int c) { return v[i][c]; }
};
template <int RM>
struct RowAcc<RM, 0> {
  float* base = nullptr;
  int ld = 0, ncols = 0;
  __device__ void init(float* smem, int dh, int rg, int cg) {
    base = smem + rg * RM * dh + cg;
    ld = dh;
    ncols = cg < dh ? (dh - cg + 15) / 16 : 0;
    for (int i = 0; i < RM; ++i)
      for (int c = 0; c < ncols; ++c) at(i, c) = 0.f;
  }
  __device__ __forceinline__ int cols() const { return ncols; }
  __device__ __forceinline__ float& at(int i, int c) { return base[i * ld + 16 * c]; }
};

// acc[i][c] += sum_j W[j][row rg*RM + i] * X[j][cg + 16 c] over the C columns j of a tile:
// W transposed in shared memory (stride 8 RM + 4), X row-major (stride ldx).
template <int RM, int C, typename Acc>
__device__ __forceinline__ void accumulate(Acc& acc, const float* wt, const float* xs, int ldx, int rg, int cg) {
  constexpr int RS = 8 * RM + 4;
#pragma unroll 4
  for (int j = 0; j < C; ++j) {
    float w[RM];
    load_run<RM>(w, wt + j * RS + rg * RM);
#pragma unroll
    for (int c = 0; c < acc.cols(); ++c) {
      const float x = xs[j * ldx + cg + 16 * c];
#pragma unroll
      for (int i = 0; i < RM; ++i) acc.at(i, c) = fmaf(w[i], x, acc.at(i, c));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shared-memory layouts (offsets in floats, each region 16-byte aligned). dp is the padded head
// dim: DCAP, or dh itself for the generic instance.

template <int DCAP, int R, int C>
struct FwdLayout {
  int dp, qt, kv, pt, acc, total;
  __host__ __device__ explicit FwdLayout(int dh) {
    dp = DCAP ? DCAP : dh;
    qt = 0;                                   // Q^T       [dp][R + 4]
    kv = qt + dp * (R + 4);                   // K, then V [C][dp + 1]
    pt = kv + round4(C * (dp + 1));           // P^T       [C][R + 4]
    acc = pt + C * (R + 4);                   // generic: O [R][dh]
    total = acc + (DCAP ? 0 : round4(R * dh));
  }
};

template <int DCAP, int R, int C>
struct DqLayout {
  int dp, qt, dot, kv, st, dsum, acc, total;
  __host__ __device__ explicit DqLayout(int dh) {
    dp = DCAP ? DCAP : dh;
    qt = 0;                                   // Q^T       [dp][R + 4]
    dot = qt + dp * (R + 4);                  // dO^T      [dp][R + 4]
    kv = dot + dp * (R + 4);                  // V, then K [C][dp + 1]
    st = kv + round4(C * (dp + 1));           // dS^T      [C][R + 4]
    dsum = st + C * (R + 4);                  // D         [R]
    acc = dsum + round4(R);                   // generic: dq [R][dh]
    total = acc + (DCAP ? 0 : round4(R * dh));
  }
};

template <int DCAP, int R, int C>
struct DkvLayout {
  int dp, kt, vt, qs, dos, buf, lse, dsum, acc, total;
  __host__ __device__ explicit DkvLayout(int dh) {
    dp = DCAP ? DCAP : dh;
    kt = 0;                                   // K^T       [dp][R + 4]
    vt = kt + dp * (R + 4);                   // V^T       [dp][R + 4]
    qs = vt + dp * (R + 4);                   // Q         [C][dp + 1]
    dos = qs + round4(C * (dp + 1));          // dO        [C][dp + 1]
    buf = dos + round4(C * (dp + 1));         // P~^T, then dS^T [C][R + 4]
    lse = buf + C * (R + 4);                  // lse, D of the query tile [C] each
    dsum = lse + round4(C);
    acc = dsum + round4(C);                   // generic: dk, dv [R][dh] each
    total = acc + (DCAP ? 0 : 2 * round4(R * dh));
  }
};

}  // namespace luna::cuda::softmax_detail
