// The attention backward (luna-math.md 5.1) for cuda/attention.cu, which includes it once:
//   P = exp(scale S - lse), dP = dO V^T (times the dropout factor), D = rowsum(dO O),
//   dS = P (dP - D), dq = scale dS K, dK = scale dS^T q, dV = P~^T dO (P~ the dropped P).
// See attention.cu's opening comment for how the work is split.
#pragma once

#include <algorithm>

#include "attention_tiles.cuh"

namespace luna::cuda {

namespace {

constexpr int kBwdThreads = 256;  // a 16 x 16 grid of threads over every tile below

// A block's sub-tile is RT rows x KT keys. Thread (tx, ty) owns, in S and dP, rows ty + 16 i and
// keys tx + 16 k (strided, so the key rows a warp reads fall in different banks); in dq, rows
// ty * TR + i and dims tx * DD + c; in dK and dV, keys ty * TK + k and dims tx * DD + c.
template <int DH, int RT, int KT>
struct BwdShape {
  static constexpr int STRIDE = DH + 4;   // shared row stride of q, dO, O, K, V tiles
  static constexpr int PSTRIDE = KT + 4;  // shared row stride of the P~ and dS tiles
  static constexpr int TR = RT / 16, TK = KT / 16, DD = DH / 16;
  static constexpr int FTPR = DH / 32;    // the forward's threads per row (its dot's chains)
  static constexpr int PREGION = 2 * RT * PSTRIDE > RT * STRIDE ? 2 * RT * PSTRIDE : RT * STRIDE;
  static constexpr size_t smem_bytes(bool tied) {
    return sizeof(float) * ((tied ? 1 : 2) * KT * STRIDE + 2 * RT * STRIDE + PREGION + 2 * RT + KT);
  }
};

struct BwdArgs {
  Problem pr;
  float* dq;  // key chunk kc writes dq + kc * dq_stride (the final dq when there is one chunk)
  float* dk;  // row chunk rc writes dk + rc * dkv_stride (dk + dv when tied)
  float* dv;  // row chunk rc writes dv + rc * dkv_stride (unused when tied)
  int64_t dq_stride, dkv_stride;
  int rows_per_chunk, keys_per_chunk, row_chunks, key_chunks;
};

// q, dout, out are (BH, lq, dh), k and v (BH, lk, dh), lse (BH, lq), mask (B, lk).
// Block = (bh, key chunk, row chunk). For each key tile of its chunk: for each row tile of its
// chunk: S, dP (registers) -> P~, scale dS (shared) -> dq rows (global, accumulated over the
// chunk's key tiles) and dK, dV (registers, accumulated over the chunk's rows) -> written.
// Registers capped at 128 (two blocks per SM): uncapped, the 64 x 64 tile takes 180 and runs
// one block per SM; capped, ptxas spills a few words at most (sm_90, nvcc 13).
template <int DH, int RT, int KT>
__global__ void __launch_bounds__(kBwdThreads, 2) attention_backward_kernel(BwdArgs a) {
  using S = BwdShape<DH, RT, KT>;
  LUNA_DYNAMIC_SMEM(float, smem);
  const Problem& pr = a.pr;
  int64_t blk = blockIdx.x;
  const int rc = int(blk % a.row_chunks);
  blk /= a.row_chunks;
  const int kc = int(blk % a.key_chunks);
  const int64_t bh = blk / a.key_chunks, b = bh / pr.h;
  const bool tied = pr.k == pr.v;
  const int t = threadIdx.x, tx = t % 16, ty = t / 16;
  const int dh = pr.dh;

  float* ks = smem;                                // [KT][STRIDE]
  float* vs = tied ? ks : ks + KT * S::STRIDE;     // [KT][STRIDE]
  float* qs = vs + KT * S::STRIDE;                 // [RT][STRIDE]
  float* dos = qs + RT * S::STRIDE;                // [RT][STRIDE]
  float* ps = dos + RT * S::STRIDE;                // [RT][PSTRIDE] P~; first O's staging [RT][STRIDE]
  float* dss = ps + RT * S::PSTRIDE;               // [RT][PSTRIDE] scale * dS
  float* row_lse = ps + S::PREGION;                // [RT]
  float* row_D = row_lse + RT;                     // [RT]
  float* kvalid = row_D + RT;                      // [KT] 1 kept key, 0 masked or past the end

  const int row_begin = rc * a.rows_per_chunk, row_end = min(pr.lq, row_begin + a.rows_per_chunk);
  const int key_begin = kc * a.keys_per_chunk, key_end = min(pr.lk, key_begin + a.keys_per_chunk);
  float* dq = a.dq + kc * a.dq_stride + bh * pr.lq * dh;
  float* dk = a.dk + rc * a.dkv_stride + bh * pr.lk * dh;
  float* dv = tied ? dk : a.dv + rc * a.dkv_stride + bh * pr.lk * dh;

  // A row with one visible key (over the whole key axis, not just this block's chunk) has the
  // constant softmax 1, so its dS is exactly 0, as on the CPU (attention_common.h).
  bool single_key = pr.lk == 1;
  if (pr.mask) {
    float visible = 0.f;
    for (int64_t j = t; j < pr.lk; j += kBwdThreads) visible += pr.mask[b * pr.lk + j] ? 0.f : 1.f;
    single_key = block_sum(visible, kvalid) == 1.f;  // scratch: one float a warp; kvalid is free here
  }

  for (int k0 = key_begin; k0 < key_end; k0 += KT) {
    const int nk = min(KT, key_end - k0);
    __syncthreads();  // the previous key tile's readers are done with ks, vs
    load_rows<DH, S::STRIDE>(ks, pr.k + (bh * pr.lk + k0) * dh, nk, KT, dh);
    if (!tied) load_rows<DH, S::STRIDE>(vs, pr.v + (bh * pr.lk + k0) * dh, nk, KT, dh);
    for (int j = t; j < KT; j += kBwdThreads)
      kvalid[j] = (j < nk && !(pr.mask && pr.mask[b * pr.lk + k0 + j])) ? 1.f : 0.f;
    float dk_acc[S::TK][S::DD], dv_acc[S::TK][S::DD];
    for (int k = 0; k < S::TK; ++k)
      for (int c = 0; c < S::DD; ++c) dk_acc[k][c] = 0.f, dv_acc[k][c] = 0.f;

    for (int r0 = row_begin; r0 < row_end; r0 += RT) {
      const int nr = min(RT, row_end - r0);
      const int64_t row0 = bh * pr.lq + r0;
      __syncthreads();  // the previous row tile's readers are done with qs, dos, ps, dss
      load_rows<DH, S::STRIDE>(qs, pr.q + row0 * dh, nr, RT, dh);
      load_rows<DH, S::STRIDE>(dos, pr.dout + row0 * dh, nr, RT, dh);
      load_rows<DH, S::STRIDE>(ps, pr.out + row0 * dh, nr, RT, dh);
      for (int i = t; i < RT; i += kBwdThreads) row_lse[i] = i < nr ? pr.lse[row0 + i] : -INFINITY;
      __syncthreads();
      // D = rowsum(dO * O): one chain in dim order, as every dP below is.
      for (int i = t; i < RT; i += kBwdThreads) {
        float d = 0.f;
        for (int c = 0; c < DH; ++c) d = fmaf(dos[i * S::STRIDE + c], ps[i * S::STRIDE + c], d);
        row_D[i] = d;
      }
      __syncthreads();  // O's staging is overwritten by P~ below

      // S = q K^T and dP = dO V^T for this thread's rows and keys. S is summed in exactly the
      // forward's order (FTPR interleaved chains of float4 chunks, then a pairwise tree), so the
      // recomputed logits equal the forward's bit for bit and a dominant key's P = exp(s - lse)
      // keeps the cancellation between s and lse; dP is one chain in dim order, like D.
      float sv[S::FTPR][S::TR][S::TK], dp[S::TR][S::TK];
      for (int i = 0; i < S::TR; ++i)
        for (int k = 0; k < S::TK; ++k) {
          dp[i][k] = 0.f;
          for (int f = 0; f < S::FTPR; ++f) sv[f][i][k] = 0.f;
        }
      // (Two passes over the dims, so that only one pair of operand tiles is live at a time.)
#pragma unroll
      for (int c4 = 0; c4 < DH / 4; ++c4) {
        const int c = 4 * c4, f = c4 % S::FTPR;
        float4 qv[S::TR], kv[S::TK];
#pragma unroll
        for (int i = 0; i < S::TR; ++i) qv[i] = *reinterpret_cast<const float4*>(qs + (ty + 16 * i) * S::STRIDE + c);
#pragma unroll
        for (int k = 0; k < S::TK; ++k) kv[k] = *reinterpret_cast<const float4*>(ks + (tx + 16 * k) * S::STRIDE + c);
#pragma unroll
        for (int i = 0; i < S::TR; ++i)
#pragma unroll
          for (int k = 0; k < S::TK; ++k) {
            float& a = sv[f][i][k];
            a = fmaf(qv[i].x, kv[k].x, a);
            a = fmaf(qv[i].y, kv[k].y, a);
            a = fmaf(qv[i].z, kv[k].z, a);
            a = fmaf(qv[i].w, kv[k].w, a);
          }
      }
#pragma unroll 4
      for (int c = 0; c < DH; c += 4) {
        float4 dov[S::TR], vv[S::TK];
#pragma unroll
        for (int i = 0; i < S::TR; ++i) dov[i] = *reinterpret_cast<const float4*>(dos + (ty + 16 * i) * S::STRIDE + c);
#pragma unroll
        for (int k = 0; k < S::TK; ++k) vv[k] = *reinterpret_cast<const float4*>(vs + (tx + 16 * k) * S::STRIDE + c);
#pragma unroll
        for (int i = 0; i < S::TR; ++i)
#pragma unroll
          for (int k = 0; k < S::TK; ++k) {
            dp[i][k] = fmaf(dov[i].x, vv[k].x, dp[i][k]);
            dp[i][k] = fmaf(dov[i].y, vv[k].y, dp[i][k]);
            dp[i][k] = fmaf(dov[i].z, vv[k].z, dp[i][k]);
            dp[i][k] = fmaf(dov[i].w, vv[k].w, dp[i][k]);
          }
      }
      // P from the saved lse; masked keys, rows past the end and fully masked rows (lse -inf)
      // get P = 0 and dS = 0, so they add nothing anywhere.
#pragma unroll
      for (int i = 0; i < S::TR; ++i)
#pragma unroll
        for (int k = 0; k < S::TK; ++k) {
          const int row = ty + 16 * i, key = tx + 16 * k;
          const float l = row_lse[row];
          float pv = 0.f, dsv = 0.f;
          if (kvalid[key] != 0.f && l != -INFINITY) {
            float parts[S::FTPR];
            for (int f = 0; f < S::FTPR; ++f) parts[f] = sv[f][i][k];
            const float prob = expf(pr.scale * tree_sum<S::FTPR>(parts) - l);
            const float f = pr.drop.active ? pr.drop.factor(uint64_t(row0 + row) * uint64_t(pr.lk) + uint64_t(k0 + key))
                                           : 1.f;
            dsv = single_key ? 0.f : pr.scale * (prob * (dp[i][k] * f - row_D[row]));
            pv = prob * f;
          }
          ps[row * S::PSTRIDE + key] = pv;
          dss[row * S::PSTRIDE + key] = dsv;
        }
      __syncthreads();

      // dq rows += scale dS K over this key tile (the chunk's first tile writes, later ones add).
      {
        float acc[S::TR][S::DD];
        for (int i = 0; i < S::TR; ++i)
          for (int c = 0; c < S::DD; ++c) acc[i][c] = 0.f;
        for (int j = 0; j < KT; ++j) {
          float kr[S::DD];
          lds<S::DD>(kr, ks + j * S::STRIDE + tx * S::DD);
#pragma unroll
          for (int i = 0; i < S::TR; ++i) {
            const float s = dss[(ty * S::TR + i) * S::PSTRIDE + j];
#pragma unroll
            for (int c = 0; c < S::DD; ++c) acc[i][c] = fmaf(s, kr[c], acc[i][c]);
          }
        }
        for (int i = 0; i < S::TR; ++i) {
          const int row = ty * S::TR + i;
          if (row >= nr) continue;
          float* dst = dq + int64_t(r0 + row) * dh;
          for (int c = 0; c < S::DD; ++c) {
            const int col = tx * S::DD + c;
            if (col < dh) dst[col] = k0 == key_begin ? acc[i][c] : dst[col] + acc[i][c];
          }
        }
      }

      // dK += scale dS^T q and dV += P~^T dO over this row tile.
      for (int rr = 0; rr < RT; ++rr) {
        float dsr[S::TK], pr_[S::TK], qr[S::DD], dor[S::DD];
        lds<S::TK>(dsr, dss + rr * S::PSTRIDE + ty * S::TK);
        lds<S::TK>(pr_, ps + rr * S::PSTRIDE + ty * S::TK);
        lds<S::DD>(qr, qs + rr * S::STRIDE + tx * S::DD);
        lds<S::DD>(dor, dos + rr * S::STRIDE + tx * S::DD);
#pragma unroll
        for (int k = 0; k < S::TK; ++k)
#pragma unroll
          for (int c = 0; c < S::DD; ++c) {
            dk_acc[k][c] = fmaf(dsr[k], qr[c], dk_acc[k][c]);
            dv_acc[k][c] = fmaf(pr_[k], dor[c], dv_acc[k][c]);
          }
      }
    }

    // This key tile's dK and dV over the chunk's rows (tied: their sum in dk).
    for (int k = 0; k < S::TK; ++k) {
      const int key = ty * S::TK + k;
      if (key >= nk) continue;
      for (int c = 0; c < S::DD; ++c) {
        const int col = tx * S::DD + c;
        if (col >= dh) continue;
        const int64_t at = int64_t(k0 + key) * dh + col;
        if (tied) {
          dk[at] = dk_acc[k][c] + dv_acc[k][c];
        } else {
          dk[at] = dk_acc[k][c];
          dv[at] = dv_acc[k][c];
        }
      }
    }
  }
}

// dst[x] = sum over p of src[p * count + x], in part order (the fixed-order reduction of the
// backward's partials). src is (parts, count), dst (count).
__global__ void attention_sum_kernel(const float* src, float* dst, int64_t count, int parts) {
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < count; x += int64_t(gridDim.x) * blockDim.x) {
    float s = src[x];
    for (int p = 1; p < parts; ++p) s += src[p * count + x];
    dst[x] = s;
  }
}

void sum_parts(const float* src, float* dst, int64_t count, int parts) {
  const int64_t blocks = std::min<int64_t>(ceil_div(count, 256), 8192);
  LUNA_LAUNCH(dim3(unsigned(blocks)), dim3(256), 0, stream(), attention_sum_kernel)(src, dst, count, parts);
  check_launch("attention_sum_kernel");
}

template <int DH, int RT, int KT>
void launch_backward(const AttentionParams<float>& p) {
  using S = BwdShape<DH, RT, KT>;
  const int64_t BH = p.B * p.h, lq = p.lq, lk = p.lk;
  const bool tied = p.tied();
  // Chunks from the sizes alone. The long axis is cut into chunks, the short one stays whole up
  // to 8 tiles. At least about 256 blocks; more while the partials (chunks x the short side's
  // gradient) stay under a quarter of the long side's gradient, since every block then loads
  // fewer tiles one after another.
  const int64_t row_tiles = ceil_div(lq, RT), key_tiles = ceil_div(lk, KT);
  int64_t nrc, nkc;
  if (lq >= lk) {
    nkc = ceil_div(key_tiles, 8);
    nrc = std::clamp<int64_t>(std::max(ceil_div(256, BH * nkc), lq / (4 * lk)), 1, row_tiles);
  } else {
    nrc = ceil_div(row_tiles, 8);
    nkc = std::clamp<int64_t>(std::max(ceil_div(256, BH * nrc), lk / (4 * lq)), 1, key_tiles);
  }
  if (forced_chunk_tiles() > 0) {
    nrc = ceil_div(row_tiles, forced_chunk_tiles());
    nkc = ceil_div(key_tiles, forced_chunk_tiles());
  }
  const int64_t rows_per_chunk = RT * ceil_div(row_tiles, nrc), keys_per_chunk = KT * ceil_div(key_tiles, nkc);
  nrc = ceil_div(lq, rows_per_chunk);
  nkc = ceil_div(lk, keys_per_chunk);

  const int64_t q_size = BH * lq * p.dh, kv_size = BH * lk * p.dh;
  BwdArgs a{make_problem(p), p.dq, p.dk, p.dv, 0, 0, int(rows_per_chunk), int(keys_per_chunk), int(nrc), int(nkc)};
  float* dq_parts = nullptr;
  float* dkv_parts = nullptr;
  if (nkc > 1) {
    dq_parts = static_cast<float*>(device_alloc(size_t(nkc * q_size) * sizeof(float)));
    a.dq = dq_parts, a.dq_stride = q_size;
  }
  if (nrc > 1) {
    dkv_parts = static_cast<float*>(device_alloc(size_t((tied ? 1 : 2) * nrc * kv_size) * sizeof(float)));
    a.dk = dkv_parts, a.dv = tied ? dkv_parts : dkv_parts + nrc * kv_size, a.dkv_stride = kv_size;
  }
  const size_t smem = S::smem_bytes(tied);
  allow_dynamic_smem(reinterpret_cast<const void*>(&attention_backward_kernel<DH, RT, KT>), smem);
  LUNA_LAUNCH(dim3(unsigned(BH * nkc * nrc)), dim3(kBwdThreads), smem, stream(),
              attention_backward_kernel<DH, RT, KT>)(a);
  check_launch("attention_backward_kernel");
  if (dq_parts) sum_parts(dq_parts, p.dq, q_size, int(nkc));
  if (dkv_parts) {
    sum_parts(a.dk, p.dk, kv_size, int(nrc));
    if (!tied) sum_parts(a.dv, p.dv, kv_size, int(nrc));
  }
  device_free(dq_parts);  // safe: one stream, the next user runs after the sums
  device_free(dkv_parts);
}

// Picks the tile for one head-dim size: 16 rows (keys) when there are at most 16, else the big
// tile; a big tile that does not fit in the device's shared memory (sm_75: 64 KiB) falls back to
// 16 rows.
template <int DH, int BIG>
void backward_for_dh(const AttentionParams<float>& p, const char* who) {
  const bool tied = p.tied();
  const bool small_rows = p.lq <= 16 || BwdShape<DH, BIG, BIG>::smem_bytes(tied) > max_dynamic_smem();
  const bool small_keys = p.lk <= 16 || BwdShape<DH, 16, BIG>::smem_bytes(tied) > max_dynamic_smem();
  if constexpr (BIG == 16) {
    if (BwdShape<DH, 16, 16>::smem_bytes(tied) > max_dynamic_smem())
      throw CudaError("cudaErrorInvalidValue", std::string(who) + ": this device has too little shared memory for dh " +
                                                   std::to_string(p.dh));
    launch_backward<DH, 16, 16>(p);
  } else if (small_rows && small_keys) {
    launch_backward<DH, 16, 16>(p);
  } else if (small_rows) {
    launch_backward<DH, 16, BIG>(p);
  } else if (small_keys) {
    launch_backward<DH, BIG, 16>(p);
  } else {
    launch_backward<DH, BIG, BIG>(p);
  }
}

void attention_backward(const AttentionParams<float>& p, const char* who) {
  check_params(p, who, true);
  const int64_t BH = p.B * p.h;
  if (BH == 0 || p.dh == 0) return;
  if (p.lk == 0) {  // no keys: no gradient reaches q
    fill_zero(p.dq, size_t(BH * p.lq * p.dh) * sizeof(float));
    return;
  }
  if (p.lq == 0) {  // no queries: no gradient reaches k or v
    fill_zero(p.dk, size_t(BH * p.lk * p.dh) * sizeof(float));
    if (!p.tied()) fill_zero(p.dv, size_t(BH * p.lk * p.dh) * sizeof(float));
    return;
  }
  if (p.dh <= 32) backward_for_dh<32, 64>(p, who);
  else if (p.dh <= 64) backward_for_dh<64, 64>(p, who);
  else if (p.dh <= 128) backward_for_dh<128, 32>(p, who);
  else backward_for_dh<256, 16>(p, who);
}

}  // namespace

}  // namespace luna::cuda
