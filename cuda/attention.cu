// Pack and unpack attention on the GPU (cuda/attention_cuda.h), forward and backward, float32.
//
// Both ops are O = softmax(scale * Q K^T, key padding mask) V per (batch, head) with the row
// log-sum-exp saved; they differ only in shape (pack: l queries over m keys; unpack: n queries
// over l keys), so one forward kernel and one backward kernel serve both, tiled from the sizes:
//
// Forward (attention_forward_kernel): a block owns a tile of query rows and a range of keys.
//   Each thread keeps 32 dims of one query row in registers (dh / 32 neighbouring threads share
//   a row) and streams keys out of shared memory with an online softmax, 4 keys at a time. When
//   the queries are few (pack), the threads of a row split the keys between them ("groups")
//   and the key axis is split across blocks ("splits"); groups merge inside the block, and the
//   last block of a row tile to finish merges the splits; both in a fixed order. When the queries are many (unpack), one
//   block per row tile sees every key (the l keys and values sit in shared memory, in one or a
//   few tiles) and writes the final rows directly: no partials, no merge.
// Backward (attention_backward_kernel): a block owns a chunk of key tiles and a chunk of rows,
//   recomputes P = exp(scale S - lse) tile by tile, and forms dS = P (dP - D) with
//   D = rowsum(dO O) computed in the block as one multiply-add chain per row in the same order
//   as dP's chain (so a row with a single key gets dS = 0 exactly, as on the CPU). dK and dV of a
//   key tile accumulate in registers over the block's rows; dq of a row accumulates over the
//   block's key tiles (read-modify-write of rows only this block touches). Row chunks (unpack)
//   give per-chunk dK/dV partials, key chunks (pack) per-chunk dq partials; attention_sum_kernel
//   adds them in chunk order. Every choice depends on the sizes (and on the device's shared
//   memory only where the large backward tiles do not fit), so a call repeats bit for bit.
//
// Head dims are padded to 32, 64, 128 or 256 in shared memory with zeros, which add exact
// zeros to every dot product; exp and log are the accurate expf / logf.
#include <cmath>
#include <mutex>

#include "../native/kernels/counter_rng.h"
#include "attention_cuda.h"
#include "attention_tiles.cuh"
#include "attention_backward.cuh"
#include "common.cuh"

namespace luna::cuda {

namespace {

// ---- forward -------------------------------------------------------------------------------------

constexpr int kFwdThreads = 128;
constexpr int kChunk = 4;  // keys a thread scores before one online-softmax rescale

// A query row is held by TPR adjacent threads, 32 dims each (few registers: five blocks fit on
// an SM). Thread `part` of a row holds the float4 chunks part, part + TPR, part + 2 TPR, ... so
// that the row's threads read neighbouring 16-byte pieces of every row they load.
template <int DH>
struct FwdShape {
  static constexpr int TPR = DH / 32;                   // threads per query row
  static constexpr int DT = 32;                         // dims each of them holds
  static constexpr int KT = DH <= 64 ? 64 : 4096 / DH;  // keys per shared-memory tile
  static constexpr int STRIDE = DH + 4;                 // shared row stride (staggers banks)
  static constexpr int SLOTS = kFwdThreads / TPR;       // (row, group) pairs per block
  // Where dim chunk i (of 4 floats) of thread `part` sits in a row.
  static __device__ int dim(int part, int i) { return 4 * (part + TPR * i); }
};

struct FwdArgs {
  Problem pr;
  float* out;       // [BH, lq, dh]  (splits == 1)
  float* lse;       // [BH, lq]      (splits == 1)
  float* part_acc;  // [BH, splits, lq, dh] unnormalised outputs (splits > 1)
  float* part_ml;   // [BH, splits, lq, 2] (max, sum) of each partial
  int* counters;    // [BH, row_tiles] blocks done per row tile (splits > 1); 0 between calls
  int R, G;         // query rows per block, key groups per row (R * G = SLOTS)
  int row_tiles, splits, keys_per_split;
};

// What a partial with no finite logit records as its sum: whether it kept a key (1) or not (0),
// so that the merge can still tell "all masked" (output 0) from "all -inf or NaN" (NaN).
__device__ inline float partial_sum(float top, float total, bool kept) {
  return top == -INFINITY && total == 0.f ? (kept ? 1.f : 0.f) : total;
}

// One row's final output (splits == 1) or partial, from a single group's state: the thread's
// 32 dims, and lse (or max and sum) from the row's first thread.
template <int DH>
__device__ void write_row(const FwdArgs& a, int64_t bh, int split, int row, int part, float m, float sum, bool kept,
                          const float (&acc)[32], bool vec) {
  using S = FwdShape<DH>;
  const int dh = a.pr.dh;
  const int64_t at = a.splits == 1 ? bh * a.pr.lq + row : (bh * a.splits + split) * int64_t(a.pr.lq) + row;
  float* dst = (a.splits == 1 ? a.out : a.part_acc) + at * dh;
#pragma unroll
  for (int i = 0; i < S::DT / 4; ++i) {
    const int c = S::dim(part, i);
    float x[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) x[e] = a.splits == 1 ? row_output(m, sum, kept, acc[4 * i + e]) : acc[4 * i + e];
    if (vec) {
      *reinterpret_cast<float4*>(dst + c) = make_float4(x[0], x[1], x[2], x[3]);
    } else {
      for (int e = 0; e < 4; ++e)
        if (c + e < dh) dst[c + e] = x[e];
    }
  }
  if (part == 0) {
    if (a.splits == 1) a.lse[at] = row_lse(m, sum, kept);
    else a.part_ml[at * 2] = m, a.part_ml[at * 2 + 1] = partial_sum(m, sum, kept);
  }
}

// Several groups per row: their states merged per row in group order through shared memory
// (which the key tiles no longer need), then the block's rows written, final or partial.
// Slot (g, r) holds a group's state; its max is then replaced by its weight exp(m_g - M_r).
template <int DH>
__device__ void merge_groups(const FwdArgs& a, float* smem, int64_t bh, int split, int row0, int rows, int r, int g,
                             int part, float m, float sum, bool kept, const float (&acc)[32]) {
  using S = FwdShape<DH>;
  const int t = threadIdx.x, dh = a.pr.dh;
  __syncthreads();  // everyone is done with the last key tile
  float* slot_acc = smem;                           // [SLOTS][STRIDE]
  float* slot_m = slot_acc + S::SLOTS * S::STRIDE;  // [SLOTS] max, then weight
  float* slot_s = slot_m + S::SLOTS;                // [SLOTS] sum
  float* slot_k = slot_s + S::SLOTS;                // [SLOTS] kept (0 / 1)
  float* row_max = slot_k + S::SLOTS;               // [R]
  float* row_total = row_max + S::SLOTS;            // [R]
  float* row_kept = row_total + S::SLOTS;           // [R]
  const int own = g * a.R + r;
  for (int i = 0; i < S::DT / 4; ++i)
    *reinterpret_cast<float4*>(slot_acc + own * S::STRIDE + S::dim(part, i)) =
        make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]);
  if (part == 0) slot_m[own] = m, slot_s[own] = sum, slot_k[own] = kept ? 1.f : 0.f;
  __syncthreads();
  if (t < a.R) {
    float top = -INFINITY, any = 0.f;
    for (int gg = 0; gg < a.G; ++gg) top = fmaxf(top, slot_m[gg * a.R + t]), any += slot_k[gg * a.R + t];
    float total = 0.f;
    for (int gg = 0; gg < a.G; ++gg) {
      const float mg = slot_m[gg * a.R + t];
      const float w = mg == -INFINITY ? 0.f : expf(mg - top);
      total += w * slot_s[gg * a.R + t];  // 0 * NaN stays NaN: a NaN row stays NaN
      slot_m[gg * a.R + t] = w;
    }
    row_max[t] = top, row_total[t] = total, row_kept[t] = any;
  }
  __syncthreads();
  const int64_t first = a.splits == 1 ? bh * a.pr.lq + row0 : (bh * a.splits + split) * int64_t(a.pr.lq) + row0;
  for (int e = t; e < rows * dh; e += kFwdThreads) {
    const int rr = e / dh, c = e % dh;
    float x = 0.f;
    for (int gg = 0; gg < a.G; ++gg) x += slot_m[gg * a.R + rr] * slot_acc[(gg * a.R + rr) * S::STRIDE + c];
    if (a.splits == 1) a.out[first * dh + e] = row_output(row_max[rr], row_total[rr], row_kept[rr] != 0.f, x);
    else a.part_acc[first * dh + e] = x;
  }
  if (t < rows) {
    const float top = row_max[t], total = row_total[t];
    const bool any = row_kept[t] != 0.f;
    if (a.splits == 1) {
      a.lse[first + t] = row_lse(top, total, any);
    } else {
      a.part_ml[(first + t) * 2] = top;
      a.part_ml[(first + t) * 2 + 1] = partial_sum(top, total, any);
    }
  }
}

// part_acc is (BH, splits, lq, dh), part_ml (BH, splits, lq, 2); out (BH, lq, dh), lse (BH, lq).
// The rows [row0, row0 + rows) of one bh from every split's partial, in split order: one warp
// per row, lanes over dims (and over splits for the weights, passed around by shuffles). The
// partials were written by other blocks: read through volatile, past this SM's L1.
template <int DH>
__device__ void merge_splits(const FwdArgs& a, int64_t bh, int row0, int rows) {
  constexpr int DL = DH / 32;  // dims per lane
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, dh = a.pr.dh, lq = a.pr.lq, splits = a.splits;
  const volatile float* ml = a.part_ml;
  const volatile float* part = a.part_acc;
  for (int rr = warp; rr < rows; rr += kFwdThreads / 32) {  // a whole warp per row: shuffles meet
    const int64_t first = bh * splits * int64_t(lq) + row0 + rr;  // split s at first + s * lq
    float top = -INFINITY;
    bool kept = false;
    for (int s = lane; s < splits; s += 32) {
      const float ms = ml[(first + s * int64_t(lq)) * 2];
      top = fmaxf(top, ms);
      kept = kept || ms != -INFINITY || ml[(first + s * int64_t(lq)) * 2 + 1] != 0.f;
    }
    top = warp_max(top);
    kept = __any_sync(0xffffffffu, kept);
    float total = 0.f, x[DL];
    for (int c = 0; c < DL; ++c) x[c] = 0.f;
    for (int s0 = 0; s0 < splits; s0 += 32) {
      float w = 0.f;
      if (s0 + lane < splits) {
        const int64_t at = first + (s0 + lane) * int64_t(lq);
        const float ms = ml[at * 2];
        w = ms == -INFINITY ? 0.f : expf(ms - top);
        total += w * ml[at * 2 + 1];  // 0 * NaN stays NaN: a NaN row stays NaN
      }
      const int n = min(32, splits - s0);
      for (int j = 0; j < n; ++j) {
        const float wj = __shfl_sync(0xffffffffu, w, j);
        const volatile float* src = part + (first + (s0 + j) * int64_t(lq)) * dh;
#pragma unroll
        for (int c = 0; c < DL; ++c)
          if (lane + 32 * c < dh) x[c] = fmaf(wj, src[lane + 32 * c], x[c]);
      }
    }
    total = warp_sum(total);
    const int64_t row = bh * lq + row0 + rr;
#pragma unroll
    for (int c = 0; c < DL; ++c)
      if (lane + 32 * c < dh) a.out[row * dh + lane + 32 * c] = row_output(top, total, kept, x[c]);
    if (lane == 0) a.lse[row] = row_lse(top, total, kept);
  }
}

// The per-row-tile counters of the split merge: zeroed once, left at zero by every call (the
// last block resets its counter), grown when a call needs more. Plain device memory outside the
// caching allocator: a few KiB for the life of the process.
int* split_counters(size_t n) {
  static std::mutex mutex;
  static int* counters = nullptr;
  static size_t capacity = 0;
  std::lock_guard<std::mutex> lock(mutex);
  if (n > capacity) {
    if (counters) {
      check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");  // no queued kernel uses it
      check(cudaFree(counters), "cudaFree");
      counters = nullptr, capacity = 0;
    }
    const size_t grown = std::max<size_t>(n, 4096);
    void* ptr = nullptr;
    check(cudaMalloc(&ptr, grown * sizeof(int)), "cudaMalloc (attention split counters)");
    counters = static_cast<int*>(ptr);
    fill_zero(counters, grown * sizeof(int));
    capacity = grown;
  }
  return counters;
}

// q is (BH, lq, dh), k and v are (BH, lk, dh), mask is (B, lk). Block = (bh, split, row tile);
// thread = (part of a row, row r, group g). Writes out/lse rows, or one partial per split.
// Five blocks per SM (96 registers, about 35 KiB of shared memory each): the unpack streams
// whole rows in and out, and more blocks in flight hide more of the memory latency.
template <int DH>
__global__ void __launch_bounds__(kFwdThreads, 5) attention_forward_kernel(FwdArgs a) {
  using S = FwdShape<DH>;
  LUNA_DYNAMIC_SMEM(float, smem);
  const Problem& pr = a.pr;
  int64_t blk = blockIdx.x;
  const int rt = int(blk % a.row_tiles);
  blk /= a.row_tiles;
  const int split = int(blk % a.splits);
  const int64_t bh = blk / a.splits;
  const int64_t b = bh / pr.h;
  const int t = threadIdx.x, part = t % S::TPR, slot = t / S::TPR;
  const int r = slot % a.R, g = slot / a.R;
  const int row0 = rt * a.R, rows = min(a.R, pr.lq - row0), row = row0 + r;
  const bool tied = pr.k == pr.v;
  const int dh = pr.dh;
  // Whole rows move as float4 when dh is the instance's width and the arrays are aligned.
  const bool vec = dh == DH && ((reinterpret_cast<uintptr_t>(pr.q) | reinterpret_cast<uintptr_t>(a.out) |
                                 reinterpret_cast<uintptr_t>(a.part_acc)) & 15) == 0;

  // This thread's slice of its query row, straight from global memory (rows past the end and
  // dims past dh are 0, so they add nothing).
  float q[S::DT];
  {
    const float* qrow = pr.q + (bh * pr.lq + row) * dh;
#pragma unroll
    for (int i = 0; i < S::DT / 4; ++i) {
      const int c = S::dim(part, i);
      if (vec) {
        const float4 x = r < rows ? __ldg(reinterpret_cast<const float4*>(qrow + c)) : make_float4(0.f, 0.f, 0.f, 0.f);
        q[4 * i] = x.x, q[4 * i + 1] = x.y, q[4 * i + 2] = x.z, q[4 * i + 3] = x.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) q[4 * i + e] = r < rows && c + e < dh ? __ldg(qrow + c + e) : 0.f;
      }
    }
  }

  float* ks = smem;
  float* vs = tied ? ks : ks + S::KT * S::STRIDE;
  float* kvalid = vs + S::KT * S::STRIDE;  // 1 kept key, 0 masked or past the end
  float m = -INFINITY, sum = 0.f, acc[S::DT];
  for (int c = 0; c < S::DT; ++c) acc[c] = 0.f;
  bool kept = false;  // any kept key seen (tells "all masked" from "all logits -inf or NaN")
  const int key_begin = split * a.keys_per_split, key_end = min(pr.lk, key_begin + a.keys_per_split);
  const int per_thread = S::KT / a.G;  // keys of a tile each thread scores (G divides KT)
  const uint64_t drop_row = uint64_t(bh * pr.lq + row) * uint64_t(pr.lk);

  for (int k0 = key_begin; k0 < key_end; k0 += S::KT) {
    const int nk = min(S::KT, key_end - k0);
    if (k0 != key_begin) __syncthreads();  // everyone is done with the previous tile
    load_rows<DH, S::STRIDE>(ks, pr.k + (bh * pr.lk + k0) * dh, nk, S::KT, dh);
    if (!tied) load_rows<DH, S::STRIDE>(vs, pr.v + (bh * pr.lk + k0) * dh, nk, S::KT, dh);
    for (int j = t; j < S::KT; j += kFwdThreads)
      kvalid[j] = (j < nk && !(pr.mask && pr.mask[b * pr.lk + k0 + j])) ? 1.f : 0.f;
    __syncthreads();
    // Keys g, g + G, g + 2G, ... of the tile, a chunk at a time: score the chunk, rescale the
    // running state once if its maximum grew, then accumulate. The loop bounds are the same in
    // every thread, so the shuffles of a row's threads always meet.
    for (int c0 = 0; c0 < per_thread; c0 += kChunk) {
      float s[kChunk];
      float cmax = -INFINITY;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        s[u] = -INFINITY;
        if (c0 + u < per_thread) {
          const int j = g + (c0 + u) * a.G;
          const float* kr = ks + j * S::STRIDE;
          // One multiply-add chain over this thread's dims, then the row's threads added as a
          // pairwise tree; the backward recomputes S in this very order (attention_backward.cuh).
          float d = 0.f;
#pragma unroll
          for (int i = 0; i < S::DT / 4; ++i) {
            const float4 x = *reinterpret_cast<const float4*>(kr + S::dim(part, i));
            d = fmaf(q[4 * i], x.x, d);
            d = fmaf(q[4 * i + 1], x.y, d);
            d = fmaf(q[4 * i + 2], x.z, d);
            d = fmaf(q[4 * i + 3], x.w, d);
          }
#pragma unroll
          for (int o = 1; o < S::TPR; o <<= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
          if (kvalid[j] != 0.f) s[u] = pr.scale * d;
          cmax = fmaxf(cmax, s[u]);
        }
      }
      if (cmax > m) {  // a NaN score never raises the max (fmaxf skips it), as on the CPU
        const float f = m == -INFINITY ? 0.f : expf(m - cmax);
        sum *= f;
        for (int c = 0; c < S::DT; ++c) acc[c] *= f;
        m = cmax;
      }
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        if (c0 + u >= per_thread) continue;
        const int j = g + (c0 + u) * a.G;
        if (kvalid[j] == 0.f) continue;
        kept = true;
        float p = s[u] == -INFINITY ? 0.f : expf(s[u] - m);
        sum += p;  // the normaliser counts every kept key; the output only undropped ones
        if (pr.drop.active) p *= pr.drop.factor(drop_row + uint64_t(k0 + j));
        const float* vr = vs + j * S::STRIDE;
#pragma unroll
        for (int i = 0; i < S::DT / 4; ++i) {
          const float4 x = *reinterpret_cast<const float4*>(vr + S::dim(part, i));
          acc[4 * i] = fmaf(p, x.x, acc[4 * i]);
          acc[4 * i + 1] = fmaf(p, x.y, acc[4 * i + 1]);
          acc[4 * i + 2] = fmaf(p, x.z, acc[4 * i + 2]);
          acc[4 * i + 3] = fmaf(p, x.w, acc[4 * i + 3]);
        }
      }
    }
  }

  if (a.G == 1) {
    // One group: this thread's state is its row's, written straight out (final or partial).
    if (r < rows) write_row<DH>(a, bh, split, row, part, m, sum, kept, acc, vec);
  } else {
    merge_groups<DH>(a, smem, bh, split, row0, rows, r, g, part, m, sum, kept, acc);
  }
  if (a.splits == 1) return;

  // The last block of this (bh, row tile) to finish merges every split's partial, in split
  // order: a block publishes its partial (fence), then counts itself in; the one that brings the
  // count to `splits` sees all of them and resets the count for the next call.
  __shared__ int is_last;
  __threadfence();
  __syncthreads();
  if (t == 0) is_last = atomicAdd(a.counters + bh * a.row_tiles + rt, 1) == a.splits - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  merge_splits<DH>(a, bh, row0, rows);
  if (t == 0) a.counters[bh * a.row_tiles + rt] = 0;
}
template <int DH>
void launch_forward(const AttentionParams<float>& p) {
  using S = FwdShape<DH>;
  const Problem pr = make_problem(p);
  const int64_t BH = p.B * p.h;
  // Rows per block: the queries rounded up to a power of two, at most a block's worth, and at
  // least enough that a row's groups do not outnumber a tile's keys or a warp's lanes.
  int R = 1;
  while (R < p.lq && R < S::SLOTS) R *= 2;
  R = std::max(R, S::SLOTS / std::min(32, S::KT));
  const int G = S::SLOTS / R;
  const int64_t row_tiles = ceil_div(p.lq, R), key_tiles = std::max<int64_t>(1, ceil_div(p.lk, S::KT));
  // Split the keys only when the row tiles alone leave the device idle (about 512 blocks are
  // wanted); from the sizes alone, so the summation order never depends on the device.
  const int64_t want = std::min<int64_t>(key_tiles, ceil_div(512, BH * row_tiles));
  const int64_t tiles_per_split =
      forced_chunk_tiles() > 0 ? forced_chunk_tiles() : ceil_div(key_tiles, std::max<int64_t>(want, 1));
  const int64_t splits = ceil_div(key_tiles, tiles_per_split);
  FwdArgs a{pr, p.out, p.lse, nullptr, nullptr, nullptr, R, G, int(row_tiles), int(splits), int(tiles_per_split * S::KT)};
  if (splits > 1) {
    a.counters = split_counters(size_t(BH * row_tiles));
    a.part_acc = static_cast<float*>(device_alloc(size_t(BH * splits * p.lq * p.dh) * sizeof(float)));
    a.part_ml = static_cast<float*>(device_alloc(size_t(BH * splits * p.lq * 2) * sizeof(float)));
  }
  const size_t floats = std::max<size_t>(2 * S::KT * S::STRIDE + S::KT, S::SLOTS * (S::STRIDE + 6));
  const size_t smem = floats * sizeof(float);
  allow_dynamic_smem(reinterpret_cast<const void*>(&attention_forward_kernel<DH>), smem);
  LUNA_LAUNCH(dim3(unsigned(BH * splits * row_tiles)), dim3(kFwdThreads), smem, stream(),
              attention_forward_kernel<DH>)(a);
  check_launch("attention_forward_kernel");
  if (splits > 1) {
    device_free(a.part_acc);  // safe: one stream, the next user runs after this kernel
    device_free(a.part_ml);
  }
}

void forward(const AttentionParams<float>& p, const char* who) {
  check_params(p, who, false);
  if (p.B * p.h * p.lq == 0) return;
  if (p.dh <= 32) launch_forward<32>(p);
  else if (p.dh <= 64) launch_forward<64>(p);
  else if (p.dh <= 128) launch_forward<128>(p);
  else launch_forward<256>(p);
}

}  // namespace

void pack_forward(const AttentionParams<float>& p) { forward(p, "pack_forward"); }
void unpack_forward(const AttentionParams<float>& p) { forward(p, "unpack_forward"); }

void pack_backward(const AttentionParams<float>& p) { attention_backward(p, "pack_backward"); }
void attention_force_chunk_tiles(int tiles) { forced_chunk_tiles() = std::max(tiles, 0); }
void unpack_backward(const AttentionParams<float>& p) { attention_backward(p, "unpack_backward"); }

}  // namespace luna::cuda
