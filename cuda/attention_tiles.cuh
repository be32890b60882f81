// Pieces shared by the attention kernels (cuda/attention.cu and attention_backward.cuh): the
// call's description as the kernels receive it, shared-memory tile loads that zero-pad the head
// dim, and the rules for rows whose keys are all masked. Included by attention.cu only.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "../native/kernels/attention.h"
#include "../native/kernels/counter_rng.h"
#include "common.cuh"

namespace luna::cuda {

namespace {

// One call, by value in every kernel's arguments. Sizes fit in int: every tensor is refused at
// 2^31 elements by the bindings (and checked again in check_params).
struct Problem {
  const float* q;        // [BH, lq, dh]
  const float* k;        // [BH, lk, dh]
  const float* v;        // [BH, lk, dh]; == k when tied
  const uint8_t* mask;   // [B, lk], 1 = padding; null = none
  const float* out;      // [BH, lq, dh] (backward: the forward's output)
  const float* lse;      // [BH, lq]     (backward: the forward's log-sum-exp)
  const float* dout;     // [BH, lq, dh] (backward)
  int64_t h;
  int lq, lk, dh;
  float scale;
  DropoutMask<float> drop;
};

// attention_force_chunk_tiles' setting (0: the launchers choose).
inline int& forced_chunk_tiles() {
  static int tiles = 0;
  return tiles;
}

inline void check_params(const AttentionParams<float>& p, const char* who, bool backward) {
  auto fail = [&](const std::string& why) { throw CudaError("cudaErrorInvalidValue", std::string(who) + ": " + why); };
  if (p.B < 0 || p.h < 0 || p.lq < 0 || p.lk < 0 || p.dh < 0) fail("negative size");
  if (p.dh > 256) fail("head dim " + std::to_string(p.dh) + " is over the CUDA kernels' limit of 256");
  if (p.lq >= (int64_t(1) << 31) || p.lk >= (int64_t(1) << 31)) fail("sequence length over 2^31");
  if (backward && p.tied() != (p.dk == p.dv)) fail("dk and dv must be one array exactly when k and v are");
}

inline Problem make_problem(const AttentionParams<float>& p) {
  return Problem{p.q, p.k, p.v, p.mask, p.out, p.lse, p.dout, p.h, int(p.lq), int(p.lk), int(p.dh), float(p.scale),
                 DropoutMask<float>(p.dropout, p.seed)};
}

// Copies `rows` rows of a row-major [*, dh] array (src points at the first) into a shared tile
// of `tile_rows` rows with row stride STRIDE, zero-filling the dims dh..DH-1 and the rows past
// `rows`: padded dims then add exact zeros to every dot product, and padded rows are finite.
// Coalesced: consecutive threads read consecutive elements (float4 when the rows allow it).
template <int DH, int STRIDE>
__device__ inline void load_rows(float* dst, const float* src, int rows, int tile_rows, int dh) {
  if (dh == DH && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
    constexpr int V = DH / 4;
    for (int i = threadIdx.x; i < tile_rows * V; i += blockDim.x) {
      const int r = i / V, c = (i % V) * 4;
      const float4 x = r < rows ? __ldg(reinterpret_cast<const float4*>(src + int64_t(r) * DH + c))
                                : make_float4(0.f, 0.f, 0.f, 0.f);
      *reinterpret_cast<float4*>(dst + r * STRIDE + c) = x;
    }
  } else {
    for (int i = threadIdx.x; i < tile_rows * DH; i += blockDim.x) {
      const int r = i / DH, c = i % DH;
      dst[r * STRIDE + c] = (r < rows && c < dh) ? __ldg(src + int64_t(r) * dh + c) : 0.f;
    }
  }
}

// x[0..N) = p[0..N) from shared memory, in the widest loads the alignment allows (p is a
// multiple of N floats past a 16-byte boundary whenever N is 2 or a multiple of 4).
template <int N>
__device__ inline void lds(float (&x)[N], const float* p) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int c = 0; c < N; c += 4) {
      const float4 v = *reinterpret_cast<const float4*>(p + c);
      x[c] = v.x, x[c + 1] = v.y, x[c + 2] = v.z, x[c + 3] = v.w;
    }
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int c = 0; c < N; c += 2) {
      const float2 v = *reinterpret_cast<const float2*>(p + c);
      x[c] = v.x, x[c + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int c = 0; c < N; ++c) x[c] = p[c];
  }
}

// x[0] + ... + x[N-1] as a pairwise tree, ((x0 + x1) + (x2 + x3)) + ...: the order in which the
// forward's shuffles add the partial dots of a row's N threads.
template <int N>
__device__ inline float tree_sum(const float* x) {
  if constexpr (N == 1) return x[0];
  else return tree_sum<N / 2>(x) + tree_sum<N / 2>(x + N / 2);
}

// A finished row from its maximum logit `top`, its normaliser `total` (relative to top), whether
// it had any kept key, and an unnormalised output value x. No finite logit: every key masked
// gives output 0 and lse -inf (the project's convention); kept keys whose logits are all -inf
// or NaN give NaN, as the CPU kernels do, so that such a row is never mistaken for padding.
__device__ inline float row_output(float top, float total, bool kept, float x) {
  if (top == -INFINITY) return kept ? NAN : 0.f;
  return x * (1.f / total);
}
__device__ inline float row_lse(float top, float total, bool kept) {
  if (top == -INFINITY) return kept ? NAN : -INFINITY;
  return top + logf(total);
}

}  // namespace

}  // namespace luna::cuda
