// The nn building blocks on the GPU (cuda/nn_cuda.h declares the launchers): layer norm,
// GELU/ReLU, dropout, embedding and softmax cross-entropy, forward and backward, float32.
//
// All of them are memory-bound: each kernel reads its inputs once and writes its outputs once
// where it can (layer norm keeps a row in registers; the parameter gradients are folded into the
// same pass). Accumulators are float32; sums are trees over lanes and warps in a fixed order, and
// cross-row sums go through per-block partials, so a run's bits never depend on scheduling.
// exp is expf (the accurate one, not __expf) everywhere: the loss and the GELU slope are compared
// with the float64 reference, and the kernels are limited by memory, not by the exp.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../native/kernels/counter_rng.h"
#include "common.cuh"
#include "nn_cuda.h"

namespace luna::cuda {

namespace {

// ---- layer norm --------------------------------------------------------------------------------

// One warp per row, kLnWarps rows of a block at a time.
constexpr int kLnWarps = 8;
constexpr int kLnThreads = kLnWarps * 32;
// The backward's parameter gradients go through one partial row per row block: about
// kLnBlockWork elements a block, at most kLnMaxBlocks blocks.
constexpr int64_t kLnBlockWork = 4096;
constexpr int64_t kLnMaxBlocks = 1024;

// Lane `lane` of a warp holds the row's columns lane, lane + 32, ..., kPer of them, in registers,
// so the row is read from memory once. kPer = 0: the row is too wide for registers (d > 1024) and
// each pass re-reads it (from L1/L2).
inline int ln_per_lane(int64_t d) { return d <= 128 ? 4 : d <= 256 ? 8 : d <= 512 ? 16 : d <= 1024 ? 32 : 0; }

// s + e = a + b exactly, s = fl(a + b) (Knuth's two-sum: adds only, so nothing can be fused).
__device__ inline void two_sum(float a, float b, float& s, float& e) {
  s = a + b;
  const float bb = s - a;
  e = (a - (s - bb)) + (b - bb);
}

// The warp's compensated sum: every lane's (hi, lo) added, every lane gets the same pair (the
// error term of a two-sum is exact, so both lanes of an exchange compute identical values).
__device__ inline void warp_sum2(float& hi, float& lo) {
  for (int o = 16; o > 0; o >>= 1) {
    const float h = __shfl_xor_sync(0xffffffffu, hi, o), l = __shfl_xor_sync(0xffffffffu, lo, o);
    float e;
    two_sum(hi, h, hi, e);
    lo = (lo + l) + e;
  }
}

// x, out: (rows, d); weight, bias: (d) or null; mean, rstd: (rows). Block: kLnWarps warps, one
// row each. Two passes over the registers (mean, then the centred variance): no cancellation
// when the mean is large against the spread, as on the CPU.
//
// The CPU accumulates the statistics in double; here the accumulators are float32, so the row sum
// is compensated (two-sum) and the mean kept as a pair mean + mean_lo: x - mean is then centred to
// about float precision squared. Why it matters: an error in the mean reaches every output
// multiplied by rstd, which is large for a row whose spread is small against its mean.
template <int kPer>
__global__ void __launch_bounds__(kLnThreads) layer_norm_forward_kernel(LayerNormParams<float> p, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kLnWarps + (threadIdx.x >> 5);
  if (r >= p.rows) return;  // the whole warp leaves: the shuffles below stay full-warp
  const int64_t d = p.d;
  const float* x = p.x + r * d;
  float v[kPer > 0 ? kPer : 1];
  float hi = 0.f, lo = 0.f, e;
  if constexpr (kPer > 0) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t j = lane + 32 * k;
      v[k] = j < d ? x[j] : 0.f;
      two_sum(hi, v[k], hi, e);
      lo += e;
    }
  } else {
    for (int64_t j = lane; j < d; j += 32) two_sum(hi, x[j], hi, e), lo += e;
  }
  warp_sum2(hi, lo);
  const float fd = float(d);
  const float mean = (hi + lo) / fd;
  const float mean_lo = (fmaf(-mean, fd, hi) + lo) / fd;  // the division's remainder, divided
  float sq = 0.f;
  if constexpr (kPer > 0) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      v[k] = (v[k] - mean) - mean_lo;  // from here on v holds the centred row
      if (lane + 32 * k < d) sq += v[k] * v[k];
    }
  } else {
    for (int64_t j = lane; j < d; j += 32) {
      const float c = (x[j] - mean) - mean_lo;
      sq += c * c;
    }
  }
  // 1 / sqrtf (both correctly rounded), not rsqrtf (an approximation): rstd is saved.
  const float rstd = 1.f / sqrtf(warp_sum(sq) / fd + eps);
  if (lane == 0) p.mean[r] = mean, p.rstd[r] = rstd;
  float* out = p.out + r * d;
  auto emit = [&](int64_t j, float centred) {
    float y = centred * rstd;
    if (p.weight != nullptr) y = y * p.weight[j];
    if (p.bias != nullptr) y = y + p.bias[j];
    out[j] = y;
  };
  if constexpr (kPer > 0) {
#pragma unroll
    for (int k = 0; k < kPer; ++k)
      if (lane + 32 * k < d) emit(lane + 32 * k, v[k]);
  } else {
    for (int64_t j = lane; j < d; j += 32) emit(j, (x[j] - mean) - mean_lo);
  }
}

// The backward of rows [blockIdx.x * rows_per_block, +rows_per_block), kPer > 0 (d <= 1024).
// x, dout, dx: (rows, d); mean, rstd: (rows); weight: (d) or null. Each warp takes every
// kLnWarps-th row of the block's range; with gw = dout * weight and xhat the normalised row,
//   dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)).
// Each lane also sums dout * xhat and dout of its columns over its rows; the warps' sums are added
// in warp order into the block's partial row of dw_part / db_part (gridDim.x, d), null when that
// gradient is not wanted. layer_norm_reduce_kernel adds the partial rows in block order.
template <int kPer>
__global__ void __launch_bounds__(kLnThreads)
    layer_norm_backward_kernel(LayerNormParams<float> p, int64_t rows_per_block, float* dw_part, float* db_part) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t d = p.d;
  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < p.rows ? r0 + rows_per_block : p.rows;
  float w[kPer], dw[kPer], db[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t j = lane + 32 * k;
    w[k] = p.weight != nullptr && j < d ? p.weight[j] : 1.f;
    dw[k] = 0.f, db[k] = 0.f;
  }
  for (int64_t r = r0 + warp; r < r1; r += kLnWarps) {
    const float* x = p.x + r * d;
    const float* g = p.dout + r * d;
    const float mean = p.mean[r], rstd = p.rstd[r];
    float xhat[kPer], gw[kPer];
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int64_t j = lane + 32 * k;
      const float gj = j < d ? g[j] : 0.f;
      xhat[k] = j < d ? (x[j] - mean) * rstd : 0.f;
      gw[k] = gj * w[k];
      sg += gw[k];
      sgx += gw[k] * xhat[k];
      dw[k] += gj * xhat[k];
      db[k] += gj;
    }
    if (p.dx == nullptr) continue;
    const float a = warp_sum(sg) / float(d), b = warp_sum(sgx) / float(d);
    float* dx = p.dx + r * d;
#pragma unroll
    for (int k = 0; k < kPer; ++k)
      if (lane + 32 * k < d) dx[lane + 32 * k] = rstd * ((gw[k] - a) - xhat[k] * b);
  }
  // Fold the warps' column sums, in warp order, through shared memory: one gradient at a time.
  __shared__ float fold[kLnWarps][kPer * 32];
  for (int pass = 0; pass < 2; ++pass) {
    float* part = pass == 0 ? dw_part : db_part;
    if (part == nullptr) continue;  // uniform across the block: the barriers stay matched
#pragma unroll
    for (int k = 0; k < kPer; ++k) fold[warp][lane + 32 * k] = pass == 0 ? dw[k] : db[k];
    __syncthreads();
    for (int64_t j = threadIdx.x; j < d; j += kLnThreads) {
      float s = 0.f;
      for (int u = 0; u < kLnWarps; ++u) s += fold[u][j];
      part[int64_t(blockIdx.x) * d + j] = s;
    }
    __syncthreads();
  }
}

// dx alone for rows too wide for registers (kPer = 0): one warp per row, three passes over it.
__global__ void __launch_bounds__(kLnThreads) layer_norm_backward_wide_kernel(LayerNormParams<float> p) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kLnWarps + (threadIdx.x >> 5);
  if (r >= p.rows) return;
  const int64_t d = p.d;
  const float* x = p.x + r * d;
  const float* g = p.dout + r * d;
  const float mean = p.mean[r], rstd = p.rstd[r];
  float sg = 0.f, sgx = 0.f;
  for (int64_t j = lane; j < d; j += 32) {
    const float gw = p.weight != nullptr ? g[j] * p.weight[j] : g[j];
    sg += gw;
    sgx += gw * ((x[j] - mean) * rstd);
  }
  const float a = warp_sum(sg) / float(d), b = warp_sum(sgx) / float(d);
  float* dx = p.dx + r * d;
  for (int64_t j = lane; j < d; j += 32) {
    const float gw = p.weight != nullptr ? g[j] * p.weight[j] : g[j];
    dx[j] = rstd * ((gw - a) - ((x[j] - mean) * rstd) * b);
  }
}

// The parameter gradients' partials for rows too wide for registers: one thread per column (reads
// coalesced across the warp), blockIdx.y the row block. Same partial layout as the fused kernel.
__global__ void __launch_bounds__(256)
    layer_norm_params_wide_kernel(LayerNormParams<float> p, int64_t rows_per_block, float* dw_part, float* db_part) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= p.d) return;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < p.rows ? r0 + rows_per_block : p.rows;
  float dw = 0.f, db = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const float gj = p.dout[r * p.d + j];
    dw += gj * ((p.x[r * p.d + j] - p.mean[r]) * p.rstd[r]);
    db += gj;
  }
  if (dw_part != nullptr) dw_part[int64_t(blockIdx.y) * p.d + j] = dw;
  if (db_part != nullptr) db_part[int64_t(blockIdx.y) * p.d + j] = db;
}

// out[j] = sum over b of part[b, j], b ascending. part: (blocks, d). Block (32, 32): threadIdx.x a
// column, threadIdx.y takes the partial rows y, y + 32, ...; the 32 sums are then added in y order.
// The grouping depends on `blocks` alone, so the result is the same on every run.
__global__ void __launch_bounds__(1024) layer_norm_reduce_kernel(const float* part, int64_t blocks, int64_t d, float* out) {
  __shared__ float sums[32][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (j < d)
    for (int64_t b = threadIdx.y; b < blocks; b += 32) s += part[b * d + j];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    float t = 0.f;
    for (int y = 0; y < 32; ++y) t += sums[y][threadIdx.x];
    out[j] = t;
  }
}

// Calls f(std::integral_constant<int, kPer>{}) with the register width of rows of d.
template <typename F>
void with_per_lane(int64_t d, const F& f) {
  switch (ln_per_lane(d)) {
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// ---- elementwise: activations and dropout ------------------------------------------------------

constexpr int kMapThreads = 256;

// out[i] = op(i, a[i], b[i]) over n elements (b null when op ignores it). With kVec4 the arrays
// are 16-byte aligned and each step moves four elements as a float4; the n % 4 tail is done by
// the first threads. A grid-stride loop: the grid is capped, the loop covers any n.
template <typename Op, bool kVec4>
__global__ void __launch_bounds__(kMapThreads) map_kernel(int64_t n, const float* a, const float* b, float* out, Op op) {
  const int64_t stride = int64_t(gridDim.x) * kMapThreads;
  const int64_t t = int64_t(blockIdx.x) * kMapThreads + threadIdx.x;
  int64_t done = 0;
  if constexpr (kVec4) {
    const int64_t n4 = n / 4;
    for (int64_t q = t; q < n4; q += stride) {
      const float4 va = reinterpret_cast<const float4*>(a)[q];
      const float4 vb = b != nullptr ? reinterpret_cast<const float4*>(b)[q] : make_float4(0.f, 0.f, 0.f, 0.f);
      const int64_t i = 4 * q;
      reinterpret_cast<float4*>(out)[q] =
          make_float4(op(i, va.x, vb.x), op(i + 1, va.y, vb.y), op(i + 2, va.z, vb.z), op(i + 3, va.w, vb.w));
    }
    done = 4 * n4;
  }
  for (int64_t i = done + t; i < n; i += stride) out[i] = op(i, a[i], b != nullptr ? b[i] : 0.f);
}

// Phi(x) = erfc(-x / sqrt 2) / 2: the erfc form keeps full relative accuracy in the negative tail,
// where 1 + erf(..) cancels (the CPU kernel's choice too).
__device__ inline float normal_cdf(float x) { return 0.5f * erfcf(-x * 0.70710678118654752440f); }

struct GeluForwardOp {
  __device__ float operator()(int64_t, float x, float) const { return x * normal_cdf(x); }
};
// dx = dout * (Phi(x) + x * phi(x)); a = x, b = dout.
struct GeluBackwardOp {
  __device__ float operator()(int64_t, float x, float g) const {
    const float pdf = 0.39894228040143267794f * expf(-0.5f * x * x);
    return g * (normal_cdf(x) + x * pdf);
  }
};
// NaN stays NaN: the comparison is false.
struct ReluForwardOp {
  __device__ float operator()(int64_t, float x, float) const { return x < 0.f ? 0.f : x; }
};
// The slope at exactly 0 is 0, as in PyTorch.
struct ReluBackwardOp {
  __device__ float operator()(int64_t, float x, float g) const { return x > 0.f ? g : 0.f; }
};
// in * factor(i), the factor from counter_rng.h as on the CPU, so the mask and the product (one
// float multiply) are bitwise the CPU's. p = 1 writes zeros (the 32-bit threshold would still keep
// one element in 2^32, with an infinite scale).
struct DropoutOp {
  DropoutMask<float> mask;
  bool drop_all;
  __device__ float operator()(int64_t i, float x, float) const {
    return drop_all ? 0.f : x * mask.factor(static_cast<uint64_t>(i));
  }
};

// Whether every pointer is on the 16-byte grid (float4 loads and stores); null counts as aligned.
bool aligned16(const void* a, const void* b, const void* c = nullptr) {
  return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) | reinterpret_cast<uintptr_t>(c)) & 15) == 0;
}

template <typename Op>
void launch_map(const char* name, int64_t n, const float* a, const float* b, float* out, Op op) {
  if (n <= 0) return;
  const bool vec4 = aligned16(a, b, out);
  // Enough blocks to fill every multiprocessor several times over; the loop does the rest.
  const int64_t cap = int64_t(multiprocessor_count()) * 16;
  const int64_t want = ceil_div(vec4 ? ceil_div(n, 4) : n, kMapThreads);
  const dim3 grid(unsigned(want < cap ? want : cap));
  if (vec4) LUNA_LAUNCH(grid, kMapThreads, 0, stream(), map_kernel<Op, true>)(n, a, b, out, op);
  else LUNA_LAUNCH(grid, kMapThreads, 0, stream(), map_kernel<Op, false>)(n, a, b, out, op);
  check_launch(name);
}

// ---- embedding ---------------------------------------------------------------------------------

constexpr int kRowWarps = 8;  // vocabulary / output rows per block, one warp each

// ids: (n); weight: (V, d); out: (n, d). One warp copies one row, coalesced. An id outside
// [0, V) (lib/ validates; nothing here reads outside weight) gives a row of NaN.
__global__ void __launch_bounds__(kRowWarps * 32) embedding_forward_kernel(EmbeddingParams<float> p) {
  const int lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (i >= p.n) return;
  const int64_t id = p.ids[i];
  float* out = p.out + i * p.d;
  if (id < 0 || id >= p.V) {
    for (int64_t j = lane; j < p.d; j += 32) out[j] = __int_as_float(0x7fc00000);
    return;
  }
  const float* w = p.weight + id * p.d;
  for (int64_t j = lane; j < p.d; j += 32) out[j] = w[j];
}

// The backward sorts positions by id with 64-bit keys (id << 32 | position): all keys differ, so
// any correct sort gives the same order, and within an id the positions ascend, as the CPU's
// stable counting sort has them. keys: (n2), n2 the power of two >= n; keys past n sort last.
__global__ void embedding_keys_kernel(const int32_t* ids, int64_t n, int64_t n2, uint64_t* keys) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n2) keys[i] = i < n ? (uint64_t(uint32_t(ids[i])) << 32) | uint64_t(i) : ~uint64_t(0);
}

// A bitonic sort: the network of compare-exchanges at stride j within runs of length k, for
// k = 2, 4, ..., n2 and j = k/2, ..., 1; a pair sorts ascending where (index & k) == 0. Strides
// below the tile run in shared memory (bitonic_tile_kernel), longer ones one launch each.
constexpr int64_t kSortTile = 2048;

__device__ inline void compare_exchange(uint64_t& a, uint64_t& b, bool ascending) {
  if ((a > b) == ascending) {
    const uint64_t t = a;
    a = b, b = t;
  }
}

// One stride j >= tile of run length k over all of keys: thread p owns the pair (i, i + j).
__global__ void bitonic_step_kernel(uint64_t* keys, int64_t n2, int64_t j, int64_t k) {
  const int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n2 / 2) return;
  const int64_t i = (q / j) * 2 * j + q % j;
  compare_exchange(keys[i], keys[i + j], (i & k) == 0);
}

// Each block sorts its tile of `tile` keys (blockDim.x = tile / 2) through shared memory: run
// lengths k = k_first .. k_last, and for each the strides from min(k, tile) / 2 down to 1.
__global__ void bitonic_tile_kernel(uint64_t* keys, int64_t tile, int64_t k_first, int64_t k_last) {
  __shared__ uint64_t s[kSortTile];
  const int64_t base = int64_t(blockIdx.x) * tile;
  for (int64_t i = threadIdx.x; i < tile; i += blockDim.x) s[i] = keys[base + i];
  for (int64_t k = k_first; k <= k_last; k <<= 1) {
    for (int64_t j = (k < tile ? k : tile) / 2; j > 0; j >>= 1) {
      __syncthreads();
      const int64_t q = threadIdx.x;
      const int64_t i = (q / j) * 2 * j + q % j;
      compare_exchange(s[i], s[i + j], ((base + i) & k) == 0);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < tile; i += blockDim.x) keys[base + i] = s[i];
}

// The first index in keys[0, n) whose key is >= target (keys ascending).
__device__ inline int64_t lower_bound(const uint64_t* keys, int64_t n, uint64_t target) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (keys[mid] < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// dweight: (V, d), every row written; dout: (n, d); keys: (n) sorted. One warp per vocabulary
// row v finds the start of v's run of keys (a binary search; the run's end is found by walking
// it, runs being short) and, column by column, adds dout's rows in ascending position: the CPU's
// order, so the bits are the CPU's. padding_idx's row is zero.
__global__ void __launch_bounds__(kRowWarps * 32) embedding_backward_kernel(EmbeddingParams<float> p, const uint64_t* keys) {
  const int lane = threadIdx.x & 31;
  const int64_t v = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (v >= p.V) return;
  const int64_t begin = v == p.padding_idx ? p.n : lower_bound(keys, p.n, uint64_t(v) << 32);
  float* row = p.dweight + v * p.d;
  for (int64_t j = lane; j < p.d; j += 32) {
    float s = 0.f;
    for (int64_t k = begin; k < p.n && (keys[k] >> 32) == uint64_t(v); ++k)
      s += p.dout[int64_t(keys[k] & 0xffffffffu) * p.d + j];
    row[j] = s;
  }
}

// ---- cross-entropy -----------------------------------------------------------------------------

constexpr int kCeThreads = 256;

// Calls f(c, value) for the columns c of a row this thread owns: c = t, t + threads, ... or, with
// kVec4 (C % 4 == 0 and an aligned base), float4 q = t, t + threads, ... and its four columns.
template <bool kVec4, typename F>
__device__ inline void for_row(const float* z, int64_t C, const F& f) {
  if constexpr (kVec4) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    for (int64_t q = threadIdx.x; q < C / 4; q += kCeThreads) {
      const float4 v = z4[q];
      f(4 * q, v.x), f(4 * q + 1, v.y), f(4 * q + 2, v.z), f(4 * q + 3, v.w);
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += kCeThreads) f(c, z[c]);
  }
}

// logits: (N, C); targets, loss, lse: (N). One block per row, which is read once: each thread
// keeps a running max m and sum of exp(z - m) (rescaled when the max grows), then the block
// combines them against the row max. s: label smoothing.
template <bool kVec4>
__global__ void __launch_bounds__(kCeThreads) cross_entropy_forward_kernel(CrossEntropyParams<float> p, float s) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x, C = p.C;
  const float* z = p.logits + i * C;
  float m = -INFINITY, e = 0.f, total = 0.f;
  for_row<kVec4>(z, C, [&](int64_t, float v) {
    if (v > m) {
      e = e * expf(m - v) + 1.f;  // exp(-inf) = 0 on the first element
      m = v;
    } else if (m != -INFINITY) {
      e += expf(v - m);  // (an element of -inf while m is still -inf adds nothing)
    }
    total += v;
  });
  const float row_max = block_max(m, scratch);
  const float sum = block_sum(m == -INFINITY ? 0.f : e * expf(m - row_max), scratch);
  total = block_sum(total, scratch);
  if (threadIdx.x != 0) return;
  const float lse = row_max + logf(sum);
  p.lse[i] = lse;
  const int64_t t = p.targets[i];
  if (t == p.ignore_index) {
    p.loss[i] = 0.f;
  } else if (t < 0 || t >= C) {
    p.loss[i] = __int_as_float(0x7fc00000);  // a bad target (lib/ validates): NaN, no stray read
  } else {
    float loss = lse - z[t];
    if (s != 0.f) loss = (1.f - s) * loss + s * (lse - total / float(C));  // s = 0: exactly lse - z_t
    p.loss[i] = loss;
  }
}

// dlogits[i, c] = dloss[i] * (exp(z - lse_i) - (1 - s) [c == t_i] - s / C); zeros for an ignored
// row, NaN for a bad target. One block per row.
template <bool kVec4>
__global__ void __launch_bounds__(kCeThreads) cross_entropy_backward_kernel(CrossEntropyParams<float> p, float s) {
  const int64_t i = blockIdx.x, C = p.C;
  const int64_t t = p.targets[i];
  const bool ignored = t == p.ignore_index, bad = !ignored && (t < 0 || t >= C);
  const float g = p.dloss[i], lse = p.lse[i], keep = 1.f - s, off = s / float(C);
  float* dz = p.dlogits + i * C;
  auto grad = [&](int64_t c, float v) {
    if (ignored) return 0.f;
    if (bad) return __int_as_float(0x7fc00000);
    float q = expf(v - lse);
    if (c == t) q -= keep;
    return g * (q - off);
  };
  if constexpr (kVec4) {
    const float4* z4 = reinterpret_cast<const float4*>(p.logits + i * C);
    float4* d4 = reinterpret_cast<float4*>(dz);
    for (int64_t q = threadIdx.x; q < C / 4; q += kCeThreads) {
      const float4 v = z4[q];
      d4[q] = make_float4(grad(4 * q, v.x), grad(4 * q + 1, v.y), grad(4 * q + 2, v.z), grad(4 * q + 3, v.w));
    }
  } else {
    const float* z = p.logits + i * C;
    for (int64_t c = threadIdx.x; c < C; c += kCeThreads) dz[c] = grad(c, z[c]);
  }
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------

void layer_norm_forward(const LayerNormParams<float>& p) {
  if (p.rows <= 0 || p.d <= 0) return;
  with_per_lane(p.d, [&](auto per) {
    LUNA_LAUNCH(dim3(unsigned(ceil_div(p.rows, kLnWarps))), kLnThreads, 0, stream(),
                layer_norm_forward_kernel<decltype(per)::value>)(p, float(p.eps));
  });
  check_launch("layer_norm_forward_kernel");
}

void layer_norm_backward(const LayerNormParams<float>& p) {
  if (p.rows <= 0 || p.d <= 0) return;
  const bool want_params = p.dweight != nullptr || p.dbias != nullptr;
  if (p.dx == nullptr && !want_params) return;
  // Row blocks of a multiple of kLnWarps rows, fixed by the sizes alone, so the partial sums (and
  // the result) are the same on every device and run. 16384 rows of 256: 1024 blocks of 16 rows
  // (a few waves of blocks, so the last one is not mostly idle; the partials add 8% traffic).
  const int64_t by_work = ceil_div(p.rows * p.d, kLnBlockWork);
  const int64_t blocks_wanted = by_work < kLnMaxBlocks ? by_work : kLnMaxBlocks;
  const int64_t rows_per_block = kLnWarps * ceil_div(p.rows, kLnWarps * blocks_wanted);
  const int64_t blocks = ceil_div(p.rows, rows_per_block);
  float* dw_part = p.dweight != nullptr ? static_cast<float*>(device_alloc(size_t(blocks * p.d) * sizeof(float))) : nullptr;
  float* db_part = p.dbias != nullptr ? static_cast<float*>(device_alloc(size_t(blocks * p.d) * sizeof(float))) : nullptr;
  if (ln_per_lane(p.d) > 0) {
    with_per_lane(p.d, [&](auto per) {
      if constexpr (decltype(per)::value > 0)
        LUNA_LAUNCH(dim3(unsigned(blocks)), kLnThreads, 0, stream(), layer_norm_backward_kernel<decltype(per)::value>)(
            p, rows_per_block, dw_part, db_part);
    });
    check_launch("layer_norm_backward_kernel");
  } else {
    if (p.dx != nullptr) {
      LUNA_LAUNCH(dim3(unsigned(ceil_div(p.rows, kLnWarps))), kLnThreads, 0, stream(), layer_norm_backward_wide_kernel)(p);
      check_launch("layer_norm_backward_wide_kernel");
    }
    if (want_params) {
      const dim3 grid(unsigned(ceil_div(p.d, 256)), unsigned(blocks));
      LUNA_LAUNCH(grid, 256, 0, stream(), layer_norm_params_wide_kernel)(p, rows_per_block, dw_part, db_part);
      check_launch("layer_norm_params_wide_kernel");
    }
  }
  for (int pass = 0; pass < 2; ++pass) {
    float* part = pass == 0 ? dw_part : db_part;
    if (part == nullptr) continue;
    LUNA_LAUNCH(dim3(unsigned(ceil_div(p.d, 32))), dim3(32, 32), 0, stream(), layer_norm_reduce_kernel)(
        part, blocks, p.d, pass == 0 ? p.dweight : p.dbias);
    check_launch("layer_norm_reduce_kernel");
    device_free(part);  // safe: one stream, the next user of the block queues behind
  }
}

void gelu_forward(const ActivationParams<float>& p) { launch_map("gelu_forward", p.n, p.x, nullptr, p.out, GeluForwardOp{}); }
void gelu_backward(const ActivationParams<float>& p) { launch_map("gelu_backward", p.n, p.x, p.dout, p.dx, GeluBackwardOp{}); }
void relu_forward(const ActivationParams<float>& p) { launch_map("relu_forward", p.n, p.x, nullptr, p.out, ReluForwardOp{}); }
void relu_backward(const ActivationParams<float>& p) { launch_map("relu_backward", p.n, p.x, p.dout, p.dx, ReluBackwardOp{}); }

void dropout_apply(const DropoutParams<float>& p) {
  const bool drop_all = p.p >= 1;
  launch_map("dropout_apply", p.n, p.in, nullptr, p.out, DropoutOp{DropoutMask<float>(drop_all ? 0 : p.p, p.seed), drop_all});
}

void embedding_forward(const EmbeddingParams<float>& p) {
  if (p.n <= 0 || p.d <= 0) return;
  LUNA_LAUNCH(dim3(unsigned(ceil_div(p.n, kRowWarps))), kRowWarps * 32, 0, stream(), embedding_forward_kernel)(p);
  check_launch("embedding_forward_kernel");
}

void embedding_backward(const EmbeddingParams<float>& p) {
  if (p.V <= 0 || p.d <= 0) return;
  int64_t n2 = 1;
  while (n2 < p.n) n2 <<= 1;
  uint64_t* keys = static_cast<uint64_t*>(device_alloc(size_t(n2) * sizeof(uint64_t)));
  if (p.n > 0) {
    LUNA_LAUNCH(dim3(unsigned(ceil_div(n2, 256))), 256, 0, stream(), embedding_keys_kernel)(p.ids, p.n, n2, keys);
    check_launch("embedding_keys_kernel");
  }
  if (n2 >= 2) {
    const int64_t tile = n2 < kSortTile ? n2 : kSortTile;
    const dim3 tiles(unsigned(n2 / tile));
    LUNA_LAUNCH(tiles, unsigned(tile / 2), 0, stream(), bitonic_tile_kernel)(keys, tile, 2, tile);
    check_launch("bitonic_tile_kernel");
    for (int64_t k = 2 * tile; k <= n2; k <<= 1) {
      for (int64_t j = k / 2; j >= tile; j >>= 1) {
        LUNA_LAUNCH(dim3(unsigned(ceil_div(n2 / 2, 256))), 256, 0, stream(), bitonic_step_kernel)(keys, n2, j, k);
        check_launch("bitonic_step_kernel");
      }
      LUNA_LAUNCH(tiles, unsigned(tile / 2), 0, stream(), bitonic_tile_kernel)(keys, tile, k, k);
      check_launch("bitonic_tile_kernel");
    }
  }
  LUNA_LAUNCH(dim3(unsigned(ceil_div(p.V, kRowWarps))), kRowWarps * 32, 0, stream(), embedding_backward_kernel)(p, keys);
  check_launch("embedding_backward_kernel");
  device_free(keys);
}

void cross_entropy_forward(const CrossEntropyParams<float>& p) {
  if (p.N <= 0 || p.C <= 0) return;
  const float s = float(p.label_smoothing);
  if (p.C % 4 == 0 && aligned16(p.logits, p.logits))
    LUNA_LAUNCH(dim3(unsigned(p.N)), kCeThreads, 0, stream(), cross_entropy_forward_kernel<true>)(p, s);
  else
    LUNA_LAUNCH(dim3(unsigned(p.N)), kCeThreads, 0, stream(), cross_entropy_forward_kernel<false>)(p, s);
  check_launch("cross_entropy_forward_kernel");
}

void cross_entropy_backward(const CrossEntropyParams<float>& p) {
  if (p.N <= 0 || p.C <= 0) return;
  const float s = float(p.label_smoothing);
  if (p.C % 4 == 0 && aligned16(p.logits, p.dlogits))
    LUNA_LAUNCH(dim3(unsigned(p.N)), kCeThreads, 0, stream(), cross_entropy_backward_kernel<true>)(p, s);
  else
    LUNA_LAUNCH(dim3(unsigned(p.N)), kCeThreads, 0, stream(), cross_entropy_backward_kernel<false>)(p, s);
  check_launch("cross_entropy_backward_kernel");
}

}  // namespace luna::cuda
