// Softmax attention on the GPU: FlashAttention-2's structure in plain float32 SIMT code (no tensor
// cores), the CUDA side of native/kernels/softmax_attention.cc. luna-math.md 5.1 is the math;
// softmax_attention.h is the contract (masks, causal offset, dropout indexing, fully masked rows).
//
// Forward, one block per (batch*head, query tile of 64): the query tile sits in shared memory;
// the block streams the key tiles through shared memory with an online softmax (running max and
// sum per row, the accumulator rescaled whenever the max grows), then writes O and the row
// log-sum-exp. Under the causal mask the key tiles above the diagonal are never visited.
//
// Backward, two kernels and no atomics:
//   dq:  one block per (batch*head, query tile); computes D = rowsum(dO * O) for its rows (and
//        stores it for the next kernel), then streams the key tiles: P = exp(scale S - lse),
//        dS = P * (dP - D), dq += dS K.
//   dkv: one block per (batch*head, key tile); streams the query tiles that can see its keys:
//        dV += P~^T dO, dK += dS^T Q (P~ the dropped probabilities). Each key row is owned by
//        one block, so the sums over queries have one fixed order: deterministic.
//
// Threads: 128 per block, seen as 8 row groups of 16 lanes (a half warp). A score tile of
// R rows x C columns gives each thread R/8 consecutive rows and the C/16 columns cg, cg + 16, ...;
// a row's max and sum are then reductions over its half warp (shuffles). The [rows][d]
// accumulators (O, dq, dk, dv) give each thread the same rows and the head-dim columns cg,
// cg + 16, ... . Operand tiles live in shared memory in two layouts: the row side transposed
// ([d][row], stride R + 4, read as float4 runs of a thread's rows) and the column side row-major
// ([col][d], stride dp + 1: the 16 lanes read 16 different rows without bank conflicts).
//
// Head dims: templates for dh <= 32, 64, 128 (a smaller dh pads the shared tiles with zeros up
// to the template's width, which changes no sum); above 128 a generic instance whose
// accumulators live in shared memory (DCAP = 0). Numbers: float32 accumulators, expf (CUDA's
// full-range expf, 2 ulp; not __expf, whose error grows with |x|), logits scaled with a
// separately rounded product (as the CPU does, so the row maximum gives exactly exp(0) = 1),
// every dot product one chain of fmaf in d order. D uses the same chain as dP, so a row that
// sees a single key (O is that key's value row) gets dP == D exactly and dS == 0, as on the CPU.
// The building blocks (tile loads, score tiles, accumulators, shared-memory layouts) are in
// softmax_attention_tiles.cuh.
#include "softmax_cuda.h"

#include "common.cuh"

#include <limits>
#include <string>

#include "softmax_attention_tiles.cuh"

namespace luna::cuda {

namespace {

using namespace softmax_detail;

// ---------------------------------------------------------------------------------------------
// Forward. q, out are (BH, n, dh), k, v are (BH, m, dh), lse is (BH, n), mask is (B, m).
// Grid: BH * ceil(n / R) blocks, heads fastest; under the causal mask the query tiles go out
// last first, so the longest tiles (those that see the most keys) start first.
template <int DCAP, int R, int C>
__global__ void __launch_bounds__(kThreads) softmax_forward_kernel(SoftmaxArgs a, int q_tiles, int bh_count) {
  constexpr int RM = R / 8, CN = C / 16, RS = R + 4;
  LUNA_DYNAMIC_SMEM(float, smem);
  const FwdLayout<DCAP, R, C> L(a.dh);
  const int dp = L.dp, dh = a.dh, n = a.n, m = a.m;
  float* qt = smem + L.qt;
  float* kv = smem + L.kv;
  float* pt = smem + L.pt;
  const int tid = threadIdx.x, rg = tid >> 4, cg = tid & 15;
  const int64_t bh = blockIdx.x % bh_count;
  const int tile = blockIdx.x / bh_count;
  const int i0 = (a.causal ? q_tiles - 1 - tile : tile) * R, rows = min(R, n - i0);
  const uint8_t* mask = a.mask ? a.mask + (bh / a.h) * m : nullptr;
  const float* k = a.k + bh * m * dh;
  const float* v = a.v + bh * m * dh;

  load_transposed<R>(qt, a.q + (bh * n + i0) * dh, rows, dh, dp);
  RowAcc<RM, DCAP> acc;
  acc.init(smem + L.acc, dh, rg, cg);
  float mx[RM], sum[RM];  // running max (over the whole row) and this thread's part of the sum
  int seen[RM];           // whether this thread met a visible key of the row
#pragma unroll
  for (int i = 0; i < RM; ++i) mx[i] = kNegInf, sum[i] = 0.f, seen[i] = 0;

  // Keys at or past k_end are after every query of the tile: never visited under the causal mask.
  const int k_end = a.causal ? max(0, min(m, i0 + rows + a.off)) : m;
  // One register tile in flight at a time: V while S = Q K^T is computed, the next K while
  // the softmax and P V are.
  const bool vec4 = a.vec4 && dh == DCAP;
  TileFetch<C, DCAP> next;
  if (k_end > 0) next.fetch(k, min(C, k_end), dh, vec4);
  for (int k0 = 0; k0 < k_end; k0 += C) {
    const int cols = min(C, k_end - k0);
    __syncthreads();  // the previous tile's readers of kv and pt are done
    next.store(kv, vec4);
    next.fetch(v + int64_t(k0) * dh, cols, dh, vec4);
    __syncthreads();
    float s[RM][CN];
    score_tile<RM, CN>(s, qt, kv, dp, rg, cg);
    __syncthreads();  // K is read: the buffer takes V (read after the next barrier)
    next.store(kv, vec4);
    if (k0 + C < k_end) next.fetch(k + int64_t(k0 + C) * dh, min(C, k_end - k0 - C), dh, vec4);

    bool key_ok[CN];
#pragma unroll
    for (int c = 0; c < CN; ++c) {
      const int col = cg + 16 * c;
      key_ok[c] = col < cols && !(mask && mask[k0 + col]);
    }
    float p_t[CN][RM];  // this thread's probabilities, column-major for the stores into P^T
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int row = i0 + rg * RM + i;  // past n for a short tile's padding rows: computed, never written
      float x[CN];
      float tile_max = kNegInf;
#pragma unroll
      for (int c = 0; c < CN; ++c) {
        const bool vis = key_ok[c] && (!a.causal || k0 + cg + 16 * c <= row + a.off);
        // The product rounded on its own, as on the CPU, so that x - max is exactly 0 at the max.
        x[c] = vis ? __fmul_rn(s[i][c], a.scale) : kNegInf;
        seen[i] |= vis;
        tile_max = fmaxf(tile_max, x[c]);
      }
      const float new_max = fmaxf(mx[i], half_warp_max(tile_max));
      // The online rescale: 0 while the row had no finite logit yet (the CPU's convention).
      const float alpha = mx[i] == kNegInf ? 0.f : expf(mx[i] - new_max);
      mx[i] = new_max;
      sum[i] *= alpha;
      if (alpha != 1.f)  // the same for the 16 lanes of the row: no divergence
#pragma unroll
        for (int c = 0; c < acc.cols(); ++c) acc.at(i, c) *= alpha;
#pragma unroll
      for (int c = 0; c < CN; ++c) {
        float p = x[c] != kNegInf && new_max != kNegInf ? expf(x[c] - new_max) : 0.f;
        sum[i] += p;  // the normaliser counts every visible key, dropped or not
        if (a.drop.active && p != 0.f)
          p *= a.drop.factor(uint64_t(bh * n + row) * uint64_t(m) + uint64_t(k0 + cg + 16 * c));
        p_t[c][i] = p;
      }
    }
#pragma unroll
    for (int c = 0; c < CN; ++c) store_run<RM>(pt + (cg + 16 * c) * RS + rg * RM, p_t[c]);
    __syncthreads();  // P^T and V are in shared memory
    accumulate<RM, C>(acc, pt, kv, dp + 1, rg, cg);
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    // A finite row max contributes exp(0) = 1, so the sum is >= 1 exactly when the max is
    // finite. Rows whose max is -inf (the same for the 16 lanes) sum their lanes' `seen` flags
    // instead: one reduction tells a row that sees no key from one whose logits are all -inf/NaN.
    const bool finite = mx[i] != kNegInf;
    const float total = half_warp_sum(finite ? sum[i] : float(seen[i]));
    const int r = rg * RM + i;
    if (r >= rows) continue;
    float scale_out, lse;
    if (finite) {
      scale_out = 1.f / total, lse = mx[i] + logf(total);
    } else if (total == 0.f) {  // the row sees no key: output 0, lse -inf
      scale_out = 0.f, lse = kNegInf;
    } else {  // visible keys, but every logit is -inf or NaN: NaN, as in PyTorch
      scale_out = lse = std::numeric_limits<float>::quiet_NaN();
    }
    float* o = a.out + (bh * n + i0 + r) * dh;
#pragma unroll
    for (int c = 0; c < acc.cols(); ++c) {
      const int col = cg + 16 * c;
      if (col < dh) o[col] = finite ? acc.at(i, c) * scale_out : scale_out;
    }
    if (cg == 0) a.lse[bh * n + i0 + r] = lse;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, first kernel: D and dq. q, dout, out, dq are (BH, n, dh), k, v (BH, m, dh), lse and
// D (BH, n). Grid as the forward's.
template <int DCAP, int R, int C>
__global__ void __launch_bounds__(kThreads) softmax_dq_kernel(SoftmaxArgs a, int q_tiles, int bh_count) {
  constexpr int RM = R / 8, CN = C / 16, RS = R + 4;
  LUNA_DYNAMIC_SMEM(float, smem);
  const DqLayout<DCAP, R, C> L(a.dh);
  const int dp = L.dp, dh = a.dh, n = a.n, m = a.m;
  float* qt = smem + L.qt;
  float* dot = smem + L.dot;
  float* kv = smem + L.kv;
  float* st = smem + L.st;
  float* dsum = smem + L.dsum;
  const int tid = threadIdx.x, rg = tid >> 4, cg = tid & 15;
  const int64_t bh = blockIdx.x % bh_count;
  const int tile = blockIdx.x / bh_count;
  const int i0 = (a.causal ? q_tiles - 1 - tile : tile) * R, rows = min(R, n - i0);
  const uint8_t* mask = a.mask ? a.mask + (bh / a.h) * m : nullptr;
  const float* k = a.k + bh * m * dh;
  const float* v = a.v + bh * m * dh;

  load_transposed<R>(qt, a.q + (bh * n + i0) * dh, rows, dh, dp);
  load_transposed<R>(dot, a.dout + (bh * n + i0) * dh, rows, dh, dp);
  float lse[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = rg * RM + i;
    lse[i] = r < rows ? a.lse[bh * n + i0 + r] : kNegInf;  // padding rows see nothing
  }
  __syncthreads();
  // D = rowsum(dO * O): one thread per row, the same fmaf chain (d ascending) as each dP
  // element of score_tile, so that dP == D exactly where O is a single key's value row.
  if (tid < R) {
    float d_row = 0.f;
    if (tid < rows) {
      const float* o = a.out + (bh * n + i0 + tid) * dh;
      for (int d = 0; d < dh; ++d) d_row = fmaf(dot[d * RS + tid], o[d], d_row);
      a.D[bh * n + i0 + tid] = d_row;
    }
    dsum[tid] = d_row;
  }
  __syncthreads();
  float D[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) D[i] = dsum[rg * RM + i];
  RowAcc<RM, DCAP> acc;
  acc.init(smem + L.acc, dh, rg, cg);

  const int k_end = a.causal ? max(0, min(m, i0 + rows + a.off)) : m;
  const bool vec4 = a.vec4 && dh == DCAP;
  TileFetch<C, DCAP> next;  // as in the forward: one tile in flight, V then K
  if (k_end > 0) next.fetch(v, min(C, k_end), dh, vec4);
  for (int k0 = 0; k0 < k_end; k0 += C) {
    const int cols = min(C, k_end - k0);
    // One buffer holds V (for dP) and then K (for S and for dq += dS K): it keeps the block
    // within 64 KiB of shared memory (sm_75) at dh = 64 and 128.
    __syncthreads();  // the previous tile's readers of kv and st are done
    next.store(kv, vec4);
    next.fetch(k + int64_t(k0) * dh, cols, dh, vec4);
    __syncthreads();
    float dpv[RM][CN];
    score_tile<RM, CN>(dpv, dot, kv, dp, rg, cg);
    __syncthreads();
    next.store(kv, vec4);
    if (k0 + C < k_end) next.fetch(v + int64_t(k0 + C) * dh, min(C, k_end - k0 - C), dh, vec4);
    __syncthreads();
    float s[RM][CN];
    score_tile<RM, CN>(s, qt, kv, dp, rg, cg);

    bool key_ok[CN];
#pragma unroll
    for (int c = 0; c < CN; ++c) {
      const int col = cg + 16 * c;
      key_ok[c] = col < cols && !(mask && mask[k0 + col]);
    }
    float ds_t[CN][RM];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int row = i0 + rg * RM + i;
#pragma unroll
      for (int c = 0; c < CN; ++c) {
        const int j = k0 + cg + 16 * c;
        const bool vis = key_ok[c] && lse[i] != kNegInf && (!a.causal || j <= row + a.off);
        float ds = 0.f;
        if (vis) {
          const float p = expf(__fmul_rn(s[i][c], a.scale) - lse[i]);
          float g = dpv[i][c];
          // With dropout dP is the gradient of the kept probabilities: times each factor.
          if (a.drop.active) g *= a.drop.factor(uint64_t(bh * n + row) * uint64_t(m) + uint64_t(j));
          ds = p * (g - D[i]);
        }
        ds_t[c][i] = ds;
      }
    }
#pragma unroll
    for (int c = 0; c < CN; ++c) store_run<RM>(st + (cg + 16 * c) * RS + rg * RM, ds_t[c]);
    __syncthreads();
    accumulate<RM, C>(acc, st, kv, dp + 1, rg, cg);  // dq += dS K
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = rg * RM + i;
    if (r >= rows) continue;
    float* dq = a.dq + (bh * n + i0 + r) * dh;
#pragma unroll
    for (int c = 0; c < acc.cols(); ++c) {
      const int col = cg + 16 * c;
      if (col < dh) dq[col] = a.scale * acc.at(i, c);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, second kernel: dk and dv. One block per (batch*head, key tile of R keys), heads
// fastest; it visits the query tiles that can see its keys (under the causal mask, from the
// first query at or after key - off). Needs D from softmax_dq_kernel.
template <int DCAP, int R, int C>
__global__ void __launch_bounds__(kThreads) softmax_dkv_kernel(SoftmaxArgs a, int bh_count) {
  constexpr int RM = R / 8, CN = C / 16, RS = R + 4;
  LUNA_DYNAMIC_SMEM(float, smem);
  const DkvLayout<DCAP, R, C> L(a.dh);
  const int dp = L.dp, dh = a.dh, n = a.n, m = a.m;
  float* kt = smem + L.kt;
  float* vt = smem + L.vt;
  float* qs = smem + L.qs;
  float* dos = smem + L.dos;
  float* buf = smem + L.buf;
  float* lse_s = smem + L.lse;
  float* dsum = smem + L.dsum;
  const int tid = threadIdx.x, rg = tid >> 4, cg = tid & 15;
  const int64_t bh = blockIdx.x % bh_count;
  const int j0 = int(blockIdx.x / bh_count) * R, keys = min(R, m - j0);
  const uint8_t* mask = a.mask ? a.mask + (bh / a.h) * m : nullptr;
  const float* q = a.q + bh * n * dh;
  const float* dout = a.dout + bh * n * dh;

  load_transposed<R>(kt, a.k + (bh * m + j0) * dh, keys, dh, dp);
  load_transposed<R>(vt, a.v + (bh * m + j0) * dh, keys, dh, dp);
  bool key_ok[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int r = rg * RM + i;
    key_ok[i] = r < keys && !(mask && mask[j0 + r]);
  }
  RowAcc<RM, DCAP> dk_acc, dv_acc;
  dk_acc.init(smem + L.acc, dh, rg, cg);
  dv_acc.init(smem + L.acc + round4(R * dh), dh, rg, cg);

  const int q_begin = a.causal ? max(0, j0 - a.off) / C * C : 0;
  const bool vec4 = a.vec4 && dh == DCAP;
  TileFetch<C, DCAP> next_q, next_do;  // the next query tile in flight while this one is worked
  if (q_begin < n) {
    next_q.fetch(q + int64_t(q_begin) * dh, min(C, n - q_begin), dh, vec4);
    next_do.fetch(dout + int64_t(q_begin) * dh, min(C, n - q_begin), dh, vec4);
  }
  for (int i0 = q_begin; i0 < n; i0 += C) {
    const int qrows = min(C, n - i0);
    __syncthreads();  // the previous tile's readers of qs, dos, buf, lse_s, dsum are done
    next_q.store(qs, vec4);
    next_do.store(dos, vec4);
    if (i0 + C < n) {
      next_q.fetch(q + int64_t(i0 + C) * dh, min(C, n - i0 - C), dh, vec4);
      next_do.fetch(dout + int64_t(i0 + C) * dh, min(C, n - i0 - C), dh, vec4);
    }
    if (tid < C) {
      lse_s[tid] = tid < qrows ? a.lse[bh * n + i0 + tid] : kNegInf;
      dsum[tid] = tid < qrows ? a.D[bh * n + i0 + tid] : 0.f;
    }
    __syncthreads();
    // Transposed scores: rows are keys, columns queries; the same fmaf chains as the dq kernel's.
    float s[RM][CN], dpv[RM][CN];
    score_tile<RM, CN>(s, kt, qs, dp, rg, cg);
    score_tile<RM, CN>(dpv, vt, dos, dp, rg, cg);
    float pd_t[CN][RM];  // P~ (dropped probabilities), column-major for the stores
#pragma unroll
    for (int c = 0; c < CN; ++c) {
      const int col = cg + 16 * c, i = i0 + col;
      const float lse = lse_s[col], D = dsum[col];
#pragma unroll
      for (int r = 0; r < RM; ++r) {
        const int j = j0 + rg * RM + r;
        const bool vis = key_ok[r] && lse != kNegInf && (!a.causal || j <= i + a.off);  // lse -inf past n
        float p = 0.f, ds = 0.f;
        if (vis) {
          p = expf(__fmul_rn(s[r][c], a.scale) - lse);
          float g = dpv[r][c];
          if (a.drop.active) {
            const float f = a.drop.factor(uint64_t(bh * n + i) * uint64_t(m) + uint64_t(j));
            g *= f;
            ds = p * (g - D);
            p *= f;
          } else {
            ds = p * (g - D);
          }
        }
        pd_t[c][r] = p;
        s[r][c] = ds;  // s is spent: it keeps dS until buf is free
      }
    }
#pragma unroll
    for (int c = 0; c < CN; ++c) store_run<RM>(buf + (cg + 16 * c) * RS + rg * RM, pd_t[c]);
    __syncthreads();
    accumulate<RM, C>(dv_acc, buf, dos, dp + 1, rg, cg);  // dV += P~^T dO
    __syncthreads();
#pragma unroll
    for (int c = 0; c < CN; ++c) {
      float ds_t[RM];
#pragma unroll
      for (int r = 0; r < RM; ++r) ds_t[r] = s[r][c];
      store_run<RM>(buf + (cg + 16 * c) * RS + rg * RM, ds_t);
    }
    __syncthreads();
    accumulate<RM, C>(dk_acc, buf, qs, dp + 1, rg, cg);  // dK += dS^T Q
  }

#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int row = rg * RM + r;
    if (row >= keys) continue;
    float* dk = a.dk + (bh * m + j0 + row) * dh;
    float* dv = a.dv + (bh * m + j0 + row) * dh;
#pragma unroll
    for (int c = 0; c < dk_acc.cols(); ++c) {
      const int col = cg + 16 * c;
      if (col >= dh) continue;
      const float gk = a.scale * dk_acc.at(r, c);
      if (a.tied) dk[col] = gk + dv_acc.at(r, c);  // one buffer receives dk + dv
      else dk[col] = gk, dv[col] = dv_acc.at(r, c);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers.

// Sets the kernel's dynamic shared memory (opting in above 48 KiB), after checking the device
// has that much.
void prepare_smem(const void* kernel, size_t bytes, const char* name, int dh) {
  if (bytes > max_dynamic_smem())
    throw CudaError("cudaErrorInvalidValue", std::string(name) + ": head dim " + std::to_string(dh) + " needs " +
                                                 std::to_string(bytes) + " bytes of shared memory per block; this device allows " +
                                                 std::to_string(max_dynamic_smem()));
  if (bytes > 48 * 1024) allow_dynamic_smem(kernel, bytes);
}

template <int DCAP, int R, int C>
void launch_forward(const SoftmaxArgs& a, int64_t bh) {
  const size_t bytes = size_t(FwdLayout<DCAP, R, C>(a.dh).total) * sizeof(float);
  auto* kernel = &softmax_forward_kernel<DCAP, R, C>;
  prepare_smem(reinterpret_cast<const void*>(kernel), bytes, "softmax_attention_forward", a.dh);
  const int64_t tiles = ceil_div(a.n, R);
  LUNA_LAUNCH(dim3(unsigned(bh * tiles)), dim3(kThreads), bytes, stream(), softmax_forward_kernel<DCAP, R, C>)(
      a, int(tiles), int(bh));
  check_launch("softmax_forward_kernel");
}

template <int DCAP, int R, int C>
void launch_dq(const SoftmaxArgs& a, int64_t bh) {
  const size_t bytes = size_t(DqLayout<DCAP, R, C>(a.dh).total) * sizeof(float);
  auto* kernel = &softmax_dq_kernel<DCAP, R, C>;
  prepare_smem(reinterpret_cast<const void*>(kernel), bytes, "softmax_attention_backward", a.dh);
  const int64_t tiles = ceil_div(a.n, R);
  LUNA_LAUNCH(dim3(unsigned(bh * tiles)), dim3(kThreads), bytes, stream(), softmax_dq_kernel<DCAP, R, C>)(
      a, int(tiles), int(bh));
  check_launch("softmax_dq_kernel");
}

template <int DCAP, int R, int C>
size_t dkv_bytes(int dh) {
  return size_t(DkvLayout<DCAP, R, C>(dh).total) * sizeof(float);
}

template <int DCAP, int R, int C>
void launch_dkv(const SoftmaxArgs& a, int64_t bh) {
  const size_t bytes = dkv_bytes<DCAP, R, C>(a.dh);
  auto* kernel = &softmax_dkv_kernel<DCAP, R, C>;
  prepare_smem(reinterpret_cast<const void*>(kernel), bytes, "softmax_attention_backward", a.dh);
  const int64_t tiles = ceil_div(a.m, R);
  LUNA_LAUNCH(dim3(unsigned(bh * tiles)), dim3(kThreads), bytes, stream(), softmax_dkv_kernel<DCAP, R, C>)(a, int(bh));
  check_launch("softmax_dkv_kernel");
}

SoftmaxArgs make_args(const SoftmaxAttentionParams<float>& p) {
  SoftmaxArgs a;
  a.q = p.q, a.k = p.k, a.v = p.v, a.mask = p.mask, a.out = p.out, a.lse = p.lse;
  a.dout = p.dout, a.dq = p.dq, a.dk = p.dk, a.dv = p.dv;
  a.h = int(p.h), a.n = int(p.n), a.m = int(p.m), a.dh = int(p.dh), a.off = int(p.m - p.n);
  a.scale = float(p.scale);
  a.causal = p.causal;
  a.tied = p.tied();
  // float4 tile loads need every row on a 16-byte boundary: dh % 4 == 0 and aligned bases.
  const auto aligned = [](const void* x) { return reinterpret_cast<uintptr_t>(x) % 16 == 0; };
  a.vec4 = p.dh % 4 == 0 && aligned(p.q) && aligned(p.k) && aligned(p.v) && aligned(p.dout);
  a.drop = DropoutMask<float>(p.dropout, p.seed);
  return a;
}

// Scratch from the caching allocator, returned when the launcher is done queuing (one stream:
// the next user of the block runs after these kernels), also when a launch throws.
struct Scratch {
  void* ptr;
  explicit Scratch(size_t bytes) : ptr(device_alloc(bytes)) {}
  ~Scratch() { device_free(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace

void softmax_attention_forward(const SoftmaxAttentionParams<float>& p) {
  const int64_t bh = p.B * p.h;
  if (bh == 0 || p.n == 0) return;
  const SoftmaxArgs a = make_args(p);
  // Query tiles of 64; key tiles of 64, or 32 where a wider head would not leave room.
  if (p.dh <= 32) launch_forward<32, 64, 64>(a, bh);
  else if (p.dh <= 64) launch_forward<64, 64, 64>(a, bh);
  else if (p.dh <= 128) launch_forward<128, 64, 32>(a, bh);
  else launch_forward<0, 32, 32>(a, bh);
}

void softmax_attention_backward(const SoftmaxAttentionParams<float>& p) {
  const int64_t bh = p.B * p.h;
  if (bh == 0 || (p.n == 0 && p.m == 0)) return;
  SoftmaxArgs a = make_args(p);
  if (p.m == 0) {  // no keys: every row is fully masked, dq = 0
    fill_zero(p.dq, size_t(bh * p.n * p.dh) * sizeof(float));
    return;
  }
  if (p.n == 0) {  // no queries: no gradient reaches the keys
    fill_zero(p.dk, size_t(bh * p.m * p.dh) * sizeof(float));
    if (!a.tied) fill_zero(p.dv, size_t(bh * p.m * p.dh) * sizeof(float));
    return;
  }
  Scratch D(size_t(bh * p.n) * sizeof(float));
  a.D = static_cast<float*>(D.ptr);
  // dq: query tiles of 64 (32 at dh > 64), key tiles of 32. dkv: key tiles of 64 (32 at dh > 64,
  // 16 where the device's shared memory is short, sm_75; 16 for the generic head dim), query
  // tiles of 32. Every fixed-width choice fits in 64 KiB of shared memory but dkv at dh = 128.
  if (p.dh <= 32) {
    launch_dq<32, 64, 32>(a, bh);
    launch_dkv<32, 64, 32>(a, bh);
  } else if (p.dh <= 64) {
    launch_dq<64, 64, 32>(a, bh);
    launch_dkv<64, 64, 32>(a, bh);
  } else if (p.dh <= 128) {
    launch_dq<128, 32, 32>(a, bh);
    if (dkv_bytes<128, 32, 32>(a.dh) <= max_dynamic_smem()) launch_dkv<128, 32, 32>(a, bh);
    else launch_dkv<128, 16, 32>(a, bh);
  } else {
    launch_dq<0, 32, 32>(a, bh);
    launch_dkv<0, 16, 32>(a, bh);
  }
}

}  // namespace luna::cuda
