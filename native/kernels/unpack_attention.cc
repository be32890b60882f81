// Unpack attention: many queries (every sequence position), few keys (Luna's l packed rows).
//
// All l keys and values of one (batch, head) fit in cache, so each query row gets an exact
// one-pass softmax over its whole row; no online rescaling is needed. Work is split into fixed
// chunks of kLongAxisChunk query rows (one task each), walked in tiles of inner_block(l) rows.
// The backward's dK and dV are sums over every query: each chunk writes a partial sum and the
// partials are added in chunk order, so results do not depend on the thread count.
#include <cmath>
#include <limits>
#include <vector>

#include "../runtime/thread_pool.h"
#include "attention_common.h"
#include "counter_rng.h"
#include "tile_gemm.h"

namespace luna {

namespace {

// Keys per partial sum of the forward's P . V (see unpack_forward).
constexpr int64_t kKeySumBlock = 256;

// Per task: the transposed keys (dh x l) and, with a mask, the additive key bias (l).
template <typename T>
struct KeySide {
  std::vector<T> kt, bias;
  const T* bias_ptr = nullptr;
  bool all_masked = false;  // every key padding: rows take the "output 0" convention
  bool single_key = false;  // one visible key: dS is exactly 0 (attention_common.h)

  KeySide(const AttentionParams<T>& p, const T* k, int64_t b) : kt(p.dh * p.lk) {
    transpose_tile(p.lk, p.dh, k, p.dh, kt.data(), p.lk);
    single_key = single_visible_key(p.mask ? p.mask + b * p.lk : nullptr, p.lk);
    if (p.mask) {
      mask_to_bias(p.mask + b * p.lk, p.lk, bias);
      bias_ptr = bias.data();
      all_masked = all_keys_masked(p.mask + b * p.lk, p.lk);
    }
  }
};

}  // namespace

// q is (B, h, n, dh), k and v are (B, h, l, dh), mask is (B, l), out is (B, h, n, dh),
// lse is (B, h, n).
template <typename T>
void unpack_forward(const AttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t BH = p.B * p.h, N = p.lq, L = p.lk, dh = p.dh;
  const int64_t chunks = ceil_div(N, kLongAxisChunk);
  const int64_t block = inner_block(L);
  const T scale = T(p.scale);
  const DropoutMask<T> drop(p.dropout, p.seed);

  parallel_for(BH * chunks, [&](int64_t task) {
    const int64_t bh = task / chunks, chunk = task % chunks, b = bh / p.h;
    const int64_t q_begin = chunk * kLongAxisChunk, q_end = std::min(N, q_begin + kLongAxisChunk);
    const T* v = p.v + bh * L * dh;
    const KeySide<T> keys(p, p.k + bh * L * dh, b);
    std::vector<T> probs(block * L), inv_sum(block);
    std::vector<T> block_out(L > kKeySumBlock ? block * dh : 0);

    for (int64_t i0 = q_begin; i0 < q_end; i0 += block) {
      const int64_t rows = std::min(block, q_end - i0);
      const T* q = p.q + (bh * N + i0) * dh;
      T* out = p.out + (bh * N + i0) * dh;
      T* lse = p.lse + bh * N + i0;
      // S (rows x l) = Q_tile (rows x dh) . K^T (dh x l), then an exact softmax per row.
      tile_gemm<T>(rows, L, dh, T(1), q, dh, 1, keys.kt.data(), L, probs.data(), L, false);
      for (int64_t r = 0; r < rows; ++r) {
        T* pr = probs.data() + r * L;
        T top = max_scaled_row<T>(L, pr, keys.bias_ptr, scale);
        if (keys.all_masked) {  // every key masked: output 0, lse -inf
          std::fill(pr, pr + L, T(0));
          inv_sum[r] = 0;
          lse[r] = neg_inf;
          continue;
        }
        // Every logit NaN or -inf (the max may skip NaN): the softmax is NaN, as in PyTorch.
        if (top == neg_inf) top = std::numeric_limits<T>::quiet_NaN();
        const T sum = exp_shifted_row<T>(L, pr, keys.bias_ptr, scale, top, pr);
        inv_sum[r] = T(1) / sum;
        lse[r] = top + std::log(sum);
        // Dropout acts on the normalised probabilities; the normaliser (and lse) keeps every key.
        if (drop.active) {
          const uint64_t base = uint64_t(bh * N + i0 + r) * L;
          for (int64_t j = 0; j < L; ++j) pr[j] *= drop.factor(base + j);
        }
      }
      // O_tile (rows x dh) = P (rows x l) . V (l x dh), normalised per row afterwards. Summed
      // over blocks of kKeySumBlock keys, each block from zero: over thousands of keys one
      // running sum would add every small term to a dominant key's large one, and that rounding
      // reaches the backward through D = rowsum(dO * O). Luna's l (16 to 256) is one block.
      for (int64_t j0 = 0; j0 < L; j0 += kKeySumBlock) {
        const int64_t cols = std::min(kKeySumBlock, L - j0);
        T* dst = j0 == 0 ? out : block_out.data();
        tile_gemm<T>(rows, dh, cols, T(1), probs.data() + j0, L, 1, v + j0 * dh, dh, dst, dh, false);
        if (j0 > 0)
          for (int64_t x = 0; x < rows * dh; ++x) out[x] += block_out[x];
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < dh; ++c) out[r * dh + c] *= inv_sum[r];
    }
  });
}

// Backward of unpack_forward (luna-math.md 5.1): P = exp(scale S - lse), dP = dO V^T,
// dS = P * (dP - D) with D = rowsum(dO * O), dq = scale dS K, and the sums over all queries
// dK = scale dS^T q, dV = P^T dO (one buffer holding dK + dV when tied).
template <typename T>
void unpack_backward(const AttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t BH = p.B * p.h, N = p.lq, L = p.lk, dh = p.dh;
  const int64_t chunks = ceil_div(N, kLongAxisChunk);
  const int64_t block = inner_block(L);
  const T scale = T(p.scale);
  const DropoutMask<T> drop(p.dropout, p.seed);
  const bool tied = p.tied();
  const int64_t kv = L * dh;
  // Per task: partial dK then (untied) partial dV.
  const int64_t part_len = tied ? kv : 2 * kv;
  std::vector<T> parts(BH * chunks * part_len);

  parallel_for(BH * chunks, [&](int64_t task) {
    const int64_t bh = task / chunks, chunk = task % chunks, b = bh / p.h;
    const int64_t q_begin = chunk * kLongAxisChunk, q_end = std::min(N, q_begin + kLongAxisChunk);
    const T* k = p.k + bh * L * dh;
    const T* v = p.v + bh * L * dh;
    const KeySide<T> keys(p, k, b);
    std::vector<T> vt(dh * L);
    transpose_tile(L, dh, v, dh, vt.data(), L);
    T* part_dk = parts.data() + task * part_len;
    T* part_dv = tied ? part_dk : part_dk + kv;
    std::fill(parts.data() + task * part_len, parts.data() + (task + 1) * part_len, T(0));
    std::vector<T> probs(block * L), ds(block * L), keep(drop.active ? L : 0);

    for (int64_t i0 = q_begin; i0 < q_end; i0 += block) {
      const int64_t rows = std::min(block, q_end - i0);
      const int64_t row0 = bh * N + i0;
      const T* q = p.q + row0 * dh;
      const T* dout = p.dout + row0 * dh;
      T* dq = p.dq + row0 * dh;
      tile_gemm<T>(rows, L, dh, T(1), q, dh, 1, keys.kt.data(), L, probs.data(), L, false);
      // dP (rows x l) = dO_tile (rows x dh) . V^T (dh x l)
      tile_gemm<T>(rows, L, dh, T(1), dout, dh, 1, vt.data(), L, ds.data(), L, false);
      for (int64_t r = 0; r < rows; ++r) {
        T* pr = probs.data() + r * L;
        T* dr = ds.data() + r * L;
        const T lse = p.lse[row0 + r];
        if (lse == neg_inf) {  // fully masked row: no gradient from it anywhere
          std::fill(pr, pr + L, T(0));
          std::fill(dr, dr + L, T(0));
          continue;
        }
        exp_shifted_row<T>(L, pr, keys.bias_ptr, scale, lse, pr);
        // With dropout, dr holds the gradient of the dropped probabilities; the gradient of
        // the probabilities themselves is that times the mask factor.
        if (drop.active) {
          const uint64_t base = uint64_t(row0 + r) * L;
          for (int64_t j = 0; j < L; ++j) {
            keep[j] = drop.factor(base + j);
            dr[j] *= keep[j];
          }
        }
        // D = rowsum(dO * O), rounded as one GEMM lane, so that a row with a single key gives
        // dS = 0 exactly (O is that key's value row and dP equals D). The equal rowsum(P * dP)
        // would spare the read of O but is much less accurate: every P of the row carries the
        // rounding of the float32 lse (relative ~|lse| * 2^-24, about 16 ulp at lse = 20), and
        // through D that error lands in dP - D, where it is not small relative to the result.
        const T D = dot_as_gemm<T>(dh, dout + r * dh, p.out + (row0 + r) * dh);
        for (int64_t j = 0; j < L; ++j) dr[j] = keys.single_key ? T(0) : pr[j] * (dr[j] - D);
        // dV needs the dropped probabilities.
        if (drop.active)
          for (int64_t j = 0; j < L; ++j) pr[j] *= keep[j];
      }
      // dq_tile (rows x dh) = scale dS (rows x l) . K (l x dh)
      tile_gemm<T>(rows, dh, L, scale, ds.data(), L, 1, k, dh, dq, dh, false);
      // dK (l x dh) += scale dS^T . Q_tile and dV (l x dh) += P^T . dO_tile, read through strides.
      tile_gemm<T>(L, dh, rows, scale, ds.data(), 1, L, q, dh, part_dk, dh, true);
      tile_gemm<T>(L, dh, rows, T(1), probs.data(), 1, L, dout, dh, part_dv, dh, true);
    }
  });

  parallel_for(BH, [&](int64_t bh) {
    T* dk = p.dk + bh * kv;
    T* dv = p.dv + bh * kv;
    for (int64_t c = 0; c < chunks; ++c) {
      const T* part = parts.data() + (bh * chunks + c) * part_len;
      if (c == 0) {
        std::copy(part, part + kv, dk);
        if (!tied) std::copy(part + kv, part + 2 * kv, dv);
        continue;
      }
      for (int64_t x = 0; x < kv; ++x) dk[x] += part[x];
      if (!tied)
        for (int64_t x = 0; x < kv; ++x) dv[x] += part[kv + x];
    }
  });
}

template void unpack_forward<float>(const AttentionParams<float>&);
template void unpack_forward<double>(const AttentionParams<double>&);
template void unpack_backward<float>(const AttentionParams<float>&);
template void unpack_backward<double>(const AttentionParams<double>&);

}  // namespace luna
