// Pack attention: few queries (Luna's l packed rows), many keys (the sequence).
//
// Per (batch, head) the l queries stream over the long key axis in tiles with an online
// softmax. Tiles are kept transposed, S^T = K_tile Q^T of shape (keys x l), so that no key tile
// is ever copied: every product below reads K, V, Q and dO in their stored row-major layout, and
// only Q^T and dO^T (l x dh, small) are transposed once per task. The key axis is split into
// fixed chunks of kLongAxisChunk keys; each chunk is one task with its own partial state, and
// partials are merged in chunk order (deterministic for any thread count).
#include <cmath>
#include <limits>
#include <vector>

#include "../runtime/thread_pool.h"
#include "attention_common.h"
#include "counter_rng.h"
#include "tile_gemm.h"

namespace luna {

namespace {

// The transpose of one (l x dh) block: (dh x l).
template <typename T>
std::vector<T> transposed(const T* x, int64_t rows, int64_t cols) {
  std::vector<T> t(rows * cols);
  transpose_tile(rows, cols, x, cols, t.data(), rows);
  return t;
}

}  // namespace

// q is (B, h, l, dh), k and v are (B, h, m, dh), mask is (B, m), out is (B, h, l, dh),
// lse is (B, h, l). Partial results per key chunk: unnormalised output, running max, running sum.
template <typename T>
void pack_forward(const AttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t BH = p.B * p.h, L = p.lq, M = p.lk, dh = p.dh;
  const int64_t chunks = ceil_div(M, kLongAxisChunk);
  const int64_t block = inner_block(L);
  const T scale = T(p.scale);
  const DropoutMask<T> drop(p.dropout, p.seed);
  std::vector<T> part_out(BH * chunks * L * dh), part_max(BH * chunks * L);
  // The softmax normalisers are summed in double, as exp_shifted_row does (tile_gemm.cc says why).
  std::vector<double> part_sum(BH * chunks * L);

  parallel_for(BH * chunks, [&](int64_t task) {
    const int64_t bh = task / chunks, chunk = task % chunks, b = bh / p.h;
    const int64_t k_begin = chunk * kLongAxisChunk, k_end = std::min(M, k_begin + kLongAxisChunk);
    const T* k = p.k + bh * M * dh;
    const T* v = p.v + bh * M * dh;
    const uint8_t* mask = p.mask ? p.mask + b * M : nullptr;
    const std::vector<T> qt = transposed(p.q + bh * L * dh, L, dh);  // (dh x l)
    std::vector<T> st(block * L), neg_max(L), rescale(L);
    T* acc = part_out.data() + task * L * dh;  // (l x dh), unnormalised
    T* run_max = part_max.data() + task * L;
    double* run_sum = part_sum.data() + task * L;
    std::fill(acc, acc + L * dh, T(0));
    std::fill(run_max, run_max + L, neg_inf);
    std::fill(run_sum, run_sum + L, 0.0);

    for (int64_t k0 = k_begin; k0 < k_end; k0 += block) {
      const int64_t rows = std::min(block, k_end - k0);
      // S^T (rows x l) = K_tile (rows x dh) . Q^T (dh x l), unscaled.
      tile_gemm<T>(rows, L, dh, T(1), k + k0 * dh, dh, 1, qt.data(), L, st.data(), L, false);
      // New running max of every query column over this tile's kept keys.
      bool any_kept = false;
      std::copy(run_max, run_max + L, rescale.begin());  // holds the new max for now
      for (int64_t r = 0; r < rows; ++r) {
        if (mask && mask[k0 + r]) continue;
        any_kept = true;
        const T* sr = st.data() + r * L;
        for (int64_t i = 0; i < L; ++i) rescale[i] = std::max(rescale[i], scale * sr[i]);
      }
      if (!any_kept) continue;
      for (int64_t i = 0; i < L; ++i) {
        neg_max[i] = -rescale[i];
        const T old = run_max[i];
        run_max[i] = rescale[i];
        rescale[i] = old == neg_inf ? T(0) : std::exp(old - rescale[i]);
        run_sum[i] *= rescale[i];
      }
      // P^T = exp(scale S^T - max) in place, masked keys zero; column sums into run_sum.
      for (int64_t r = 0; r < rows; ++r) {
        T* sr = st.data() + r * L;
        if (mask && mask[k0 + r]) {
          std::fill(sr, sr + L, T(0));
          continue;
        }
        exp_shifted_row<T>(L, sr, neg_max.data(), scale, T(0), sr);
        for (int64_t i = 0; i < L; ++i) run_sum[i] += sr[i];
        // Dropout after the sum: the normaliser counts every key, the output only kept ones.
        if (drop.active) {
          const uint64_t key = uint64_t(k0 + r);
          for (int64_t i = 0; i < L; ++i) sr[i] *= drop.factor(uint64_t(bh * L + i) * M + key);
        }
      }
      for (int64_t i = 0; i < L; ++i) {
        T* ai = acc + i * dh;
        for (int64_t c = 0; c < dh; ++c) ai[c] *= rescale[i];
      }
      // acc (l x dh) += P (l x rows) . V_tile (rows x dh); P is read through S^T's strides.
      tile_gemm<T>(L, dh, rows, T(1), st.data(), 1, L, v + k0 * dh, dh, acc, dh, true);
    }
  });

  // Merge the chunks of each (batch, head) in chunk order.
  parallel_for(BH, [&](int64_t bh) {
    const bool masked = all_keys_masked(p.mask ? p.mask + (bh / p.h) * M : nullptr, M);
    for (int64_t i = 0; i < L; ++i) {
      T* out = p.out + (bh * L + i) * dh;
      T top = neg_inf;
      for (int64_t c = 0; c < chunks; ++c) top = std::max(top, part_max[(bh * chunks + c) * L + i]);
      std::fill(out, out + dh, T(0));
      if (masked) {  // every key masked: output 0 by convention
        p.lse[bh * L + i] = neg_inf;
        continue;
      }
      if (top == neg_inf) {  // every logit NaN or -inf (std::max skips NaN): softmax is NaN
        std::fill(out, out + dh, std::numeric_limits<T>::quiet_NaN());
        p.lse[bh * L + i] = std::numeric_limits<T>::quiet_NaN();
        continue;
      }
      double total = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t part = (bh * chunks + c) * L + i;
        if (part_max[part] == neg_inf) continue;
        const T w = std::exp(part_max[part] - top);
        total += w * part_sum[part];
        const T* po = part_out.data() + part * dh;
        for (int64_t x = 0; x < dh; ++x) out[x] += w * po[x];
      }
      const T inv = T(1.0 / total);
      for (int64_t x = 0; x < dh; ++x) out[x] *= inv;
      p.lse[bh * L + i] = top + std::log(total);
    }
  });
}

// Backward of pack_forward (luna-math.md 5.1), probabilities recomputed from lse:
//   P^T = exp(scale S^T - lse), dV = P^T dO, dP^T = V dO^T, dS^T = P^T * (dP^T - D),
//   dK = scale dS^T q, dq = scale dS K (summed over key chunks, in chunk order).
template <typename T>
void pack_backward(const AttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t BH = p.B * p.h, L = p.lq, M = p.lk, dh = p.dh;
  const int64_t chunks = ceil_div(M, kLongAxisChunk);
  const int64_t block = inner_block(L);
  const T scale = T(p.scale);
  const DropoutMask<T> drop(p.dropout, p.seed);
  const bool tied = p.tied();
  std::vector<T> part_dq(BH * chunks * L * dh);

  parallel_for(BH * chunks, [&](int64_t task) {
    const int64_t bh = task / chunks, chunk = task % chunks, b = bh / p.h;
    const int64_t k_begin = chunk * kLongAxisChunk, k_end = std::min(M, k_begin + kLongAxisChunk);
    const T* q = p.q + bh * L * dh;
    const T* dout = p.dout + bh * L * dh;
    const T* k = p.k + bh * M * dh;
    const T* v = p.v + bh * M * dh;
    T* dk = p.dk + bh * M * dh;
    T* dv = p.dv + bh * M * dh;
    const uint8_t* mask = p.mask ? p.mask + b * M : nullptr;
    const bool single_key = single_visible_key(mask, M);  // dS is exactly 0 (attention_common.h)
    const std::vector<T> qt = transposed(q, L, dh), doutt = transposed(dout, L, dh);  // (dh x l)
    std::vector<T> pt(block * L), dst(block * L), neg_lse(L), D(L), keep(drop.active ? block * L : 0);
    for (int64_t i = 0; i < L; ++i) {
      const T lse = p.lse[bh * L + i];
      // A fully masked row (lse = -inf) must give probability 0, not exp(+inf).
      neg_lse[i] = lse == neg_inf ? neg_inf : -lse;
      D[i] = dot_as_gemm<T>(dh, dout + i * dh, p.out + (bh * L + i) * dh);
    }
    T* dq = part_dq.data() + task * L * dh;
    std::fill(dq, dq + L * dh, T(0));

    for (int64_t k0 = k_begin; k0 < k_end; k0 += block) {
      const int64_t rows = std::min(block, k_end - k0);
      tile_gemm<T>(rows, L, dh, T(1), k + k0 * dh, dh, 1, qt.data(), L, pt.data(), L, false);
      for (int64_t r = 0; r < rows; ++r) {
        T* pr = pt.data() + r * L;
        if (mask && mask[k0 + r]) std::fill(pr, pr + L, T(0));
        else exp_shifted_row<T>(L, pr, neg_lse.data(), scale, T(0), pr);
      }
      // dP^T (rows x l) = V_tile (rows x dh) . dO^T (dh x l); then dS^T in place. With dropout,
      // dP^T first becomes the gradient of the undropped probabilities (times the mask factor).
      tile_gemm<T>(rows, L, dh, T(1), v + k0 * dh, dh, 1, doutt.data(), L, dst.data(), L, false);
      if (drop.active) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t i = 0; i < L; ++i) {
            const T f = drop.factor(uint64_t(bh * L + i) * M + uint64_t(k0 + r));
            keep[r * L + i] = f;
            dst[r * L + i] *= f;
          }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T* pr = pt.data() + r * L;
        T* dr = dst.data() + r * L;
        for (int64_t i = 0; i < L; ++i) dr[i] = single_key ? T(0) : pr[i] * (dr[i] - D[i]);
      }
      // dV_tile (rows x dh) = P^T (rows x l) . dO (l x dh), with the dropped probabilities.
      // When tied this lands in dk and the dK product below adds onto it.
      if (drop.active)
        for (int64_t x = 0; x < rows * L; ++x) pt[x] *= keep[x];
      tile_gemm<T>(rows, dh, L, T(1), pt.data(), L, 1, dout, dh, dv + k0 * dh, dh, false);
      tile_gemm<T>(rows, dh, L, scale, dst.data(), L, 1, q, dh, dk + k0 * dh, dh, tied);
      // dq (l x dh) += scale dS (l x rows) . K_tile (rows x dh), dS read through dS^T.
      tile_gemm<T>(L, dh, rows, scale, dst.data(), 1, L, k + k0 * dh, dh, dq, dh, true);
    }
  });

  parallel_for(BH, [&](int64_t bh) {
    T* dq = p.dq + bh * L * dh;
    std::copy(part_dq.data() + bh * chunks * L * dh, part_dq.data() + (bh * chunks + 1) * L * dh, dq);
    for (int64_t c = 1; c < chunks; ++c) {
      const T* part = part_dq.data() + (bh * chunks + c) * L * dh;
      for (int64_t x = 0; x < L * dh; ++x) dq[x] += part[x];
    }
  });
}

template void pack_forward<float>(const AttentionParams<float>&);
template void pack_forward<double>(const AttentionParams<double>&);
template void pack_backward<float>(const AttentionParams<float>&);
template void pack_backward<double>(const AttentionParams<double>&);

}  // namespace luna
