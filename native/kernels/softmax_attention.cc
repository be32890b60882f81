// Softmax attention, flash style (FlashAttention-2's structure on the CPU): the n x m
// probability matrix never exists. Tiles of kQueryTile queries x kKeyTile keys live in L1/L2.
//
// Forward: one task per (batch, head, query tile). The task streams over the key tiles with an
// online softmax (running max, running sum, accumulator rescaled whenever the max grows) and
// writes O and the row log-sum-exp. Tiles are key-major, S^T = K_tile . Q_tile^T, so the keys
// are read in place and only the query tile is transposed (softmax_tiles.h says why).
//
// Backward: FlashAttention-2's loop order, key tiles outer and query tiles inner, one task per
// (batch, head, key chunk). Probabilities are recomputed from the lse, with D = rowsum(dO * O).
// Each key tile's dK and dV accumulate over the query tiles in the task's own rows of dk/dv;
// dq accumulates over the chunk's key tiles. With B * h >= kBackwardTasks a chunk is every key
// and dq is summed in place; with fewer heads the keys are cut into chunks so that small
// batches still use every core: chunk 0 sums into dq, the others into partial buffers added
// afterwards in chunk order. The chunking depends on the problem size only and every sum has
// one order, so results are bitwise the same for any number of threads.
#include "softmax_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../runtime/thread_pool.h"
#include "attention_common.h"
#include "counter_rng.h"
#include "softmax_tiles.h"
#include "tile_gemm.h"

namespace luna {

namespace {

// Query rows x keys of one tile. 64 x 64 float32 logits are 16 KB: the logit tile, the query
// tile (transposed) and one key and value tile stay within L1 + L2 for dh up to a few hundred.
constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
// The backward splits the keys of each head into ceil(kBackwardTasks / (B * h)) chunks (at
// most one per key tile), so there are about this many tasks when B * h is small. A constant,
// never the thread count, so the chunking (and with it the order in which dq is summed) does
// not depend on the thread count. Each extra chunk costs a partial dq of n x dh per head.
constexpr int64_t kBackwardTasks = 16;

// Which queries of one (query tile, key tile) pair see each key: first[r] is the first column
// (query i0 + first[r]) that key k0 + r is visible to, cols when it is visible to none (a
// padding key, or a key after every query of the tile under the causal mask). Returns false
// when no key of the tile is visible to any query of the tile.
template <typename T>
bool visibility(const SoftmaxAttentionParams<T>& p, const uint8_t* mask, int64_t i0, int64_t cols, int64_t k0,
                int64_t rows, int32_t* first) {
  const int64_t off = p.causal_offset();
  bool any = false;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = k0 + r;
    int64_t f = 0;
    if (mask && mask[j]) f = cols;
    else if (p.causal) f = std::clamp<int64_t>(j - off - i0, 0, cols);  // query i sees j iff j <= i + off
    first[r] = static_cast<int32_t>(f);
    any |= f < cols;
  }
  return any;
}

// The keys [0, key_end) that some query of [i0, i0 + cols) can see.
template <typename T>
int64_t key_end(const SoftmaxAttentionParams<T>& p, int64_t i0, int64_t cols) {
  if (!p.causal) return p.m;
  return std::clamp<int64_t>(i0 + cols + p.causal_offset(), 0, p.m);
}

// Per batch element: the first key that is not padding (m when every key is). Query i of that
// element sees no key at all (the fully masked convention: output 0, lse -inf, no gradient)
// exactly when that key is past the last key it may see.
template <typename T>
std::vector<int64_t> first_kept_keys(const SoftmaxAttentionParams<T>& p) {
  std::vector<int64_t> first(p.B, 0);
  if (p.mask)
    for (int64_t b = 0; b < p.B; ++b) {
      const uint8_t* mb = p.mask + b * p.m;
      first[b] = std::find(mb, mb + p.m, uint8_t(0)) - mb;
    }
  return first;
}

template <typename T>
bool row_sees_nothing(const SoftmaxAttentionParams<T>& p, int64_t first_kept, int64_t i) {
  const int64_t last_visible = p.causal ? std::min(p.m - 1, i + p.causal_offset()) : p.m - 1;
  return first_kept > last_visible;
}

}  // namespace

// q is (B, h, n, dh), k and v are (B, h, m, dh), mask is (B, m), out is (B, h, n, dh),
// lse is (B, h, n). Each task owns kQueryTile rows of out and uses them as its accumulator.
template <typename T>
void softmax_attention_forward(const SoftmaxAttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const SoftmaxTileOps<T>& ops = softmax_tile_ops<T>();
  const int64_t BH = p.B * p.h, N = p.n, M = p.m, dh = p.dh, Br = kQueryTile, Bc = kKeyTile;
  const int64_t q_tiles = ceil_div(N, Br);
  const T scale = T(p.scale);
  const DropoutMask<T> drop(p.dropout, p.seed);
  const std::vector<int64_t> first_kept = first_kept_keys(p);

  parallel_for(BH * q_tiles, [&](int64_t task) {
    const int64_t bh = task / q_tiles, b = bh / p.h;
    // Causal: the last query tiles see the most keys; hand them out first so the pool does not
    // end on one long task. (Scheduling only: no task's arithmetic depends on it.)
    const int64_t qt = p.causal ? q_tiles - 1 - task % q_tiles : task % q_tiles;
    const int64_t i0 = qt * Br, cols = std::min(Br, N - i0);
    const T* k = p.k + bh * M * dh;
    const T* v = p.v + bh * M * dh;
    const uint8_t* mask = p.mask ? p.mask + b * M : nullptr;
    // Scratch left uninitialised: the products below only read what they or the transpose wrote.
    std::unique_ptr<T[]> q_t(new T[size_t(dh * Br)]), st(new T[size_t(Bc * Br)]);
    std::vector<T> run_max(Br, neg_inf), run_sum(Br, T(0)), new_max(Br), neg_max(Br), alpha(Br);
    std::vector<int32_t> first(Bc);
    ops.transpose(cols, dh, p.q + (bh * N + i0) * dh, dh, q_t.get(), Br);  // (dh x cols), ld Br
    T* acc = p.out + (bh * N + i0) * dh;  // (cols x dh), unnormalised until the end
    std::fill(acc, acc + cols * dh, T(0));

    const int64_t k_end = key_end(p, i0, cols);
    for (int64_t k0 = 0; k0 < k_end; k0 += Bc) {
      const int64_t rows = std::min(Bc, k_end - k0);
      if (!visibility(p, mask, i0, cols, k0, rows, first.data())) continue;
      // S^T (rows x cols) = K_tile (rows x dh) . Q_tile^T (dh x cols), unscaled.
      tile_gemm<T>(rows, cols, dh, T(1), k + k0 * dh, dh, 1, q_t.get(), Br, st.get(), Br, false);
      std::copy(run_max.begin(), run_max.begin() + cols, new_max.begin());
      ops.col_max(rows, cols, st.get(), Br, first.data(), scale, new_max.data());
      if (ops.online_rescale(cols, run_max.data(), new_max.data(), run_sum.data(), neg_max.data(), alpha.data()))
        ops.scale_rows(cols, dh, acc, dh, alpha.data());
      // P^T = exp(scale S^T - max) in place; its column sums go into the running sums before
      // dropout: the normaliser counts every key, the output only the kept ones.
      ops.exp_cols(rows, cols, st.get(), Br, first.data(), scale, neg_max.data(), run_sum.data());
      // The factor of (query i, key j) of head bh is drop.factor((bh * n + i) * m + j), the index
      // every implementation uses; along a row of S^T (one key) consecutive queries are m apart.
      if (drop.active)
        for (int64_t r = 0; r < rows; ++r)
          ops.dropout_run(drop, uint64_t(bh * N + i0) * uint64_t(M) + uint64_t(k0 + r), uint64_t(M), first[r], cols,
                          st.get() + r * Br, nullptr);
      // acc (cols x dh) += P (cols x rows) . V_tile (rows x dh); P read through S^T's strides.
      tile_gemm<T>(cols, dh, rows, T(1), st.get(), 1, Br, v + k0 * dh, dh, acc, dh, true);
    }

    for (int64_t c = 0; c < cols; ++c) {
      T* oc = acc + c * dh;
      T& lse = p.lse[bh * N + i0 + c];
      if (row_sees_nothing(p, first_kept[b], i0 + c)) {  // the fully masked convention
        std::fill(oc, oc + dh, T(0));
        lse = neg_inf;
      } else if (run_max[c] == neg_inf) {
        // Keys are visible but every logit is -inf or NaN (an infinite or NaN query, say):
        // the softmax is NaN, as in PyTorch, and must not pass for a masked row.
        std::fill(oc, oc + dh, std::numeric_limits<T>::quiet_NaN());
        lse = std::numeric_limits<T>::quiet_NaN();
      } else {
        const T inv = T(1) / run_sum[c];
        for (int64_t e = 0; e < dh; ++e) oc[e] *= inv;
        lse = run_max[c] + std::log(run_sum[c]);
      }
    }
  });
}

// Backward of softmax_attention_forward (luna-math.md 5.1). Tiles are query-major here,
// S = Q_tile K_tile^T: the loop over query tiles is the inner one, so the key tile is the one
// to transpose (once per key tile, into task-local scratch) and the query side is read in place.
// Per key tile and query tile:
//   P = exp(scale S - lse), dP = dO_tile V_tile^T (times the dropout factors),
//   dS = P * (dP - D), dV += P~^T dO, dK += scale dS^T q, dq += scale dS K.
template <typename T>
void softmax_attention_backward(const SoftmaxAttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const SoftmaxTileOps<T>& ops = softmax_tile_ops<T>();
  const int64_t BH = p.B * p.h, N = p.n, M = p.m, dh = p.dh, Br = kQueryTile, Bc = kKeyTile;
  const int64_t q_tiles = ceil_div(N, Br), k_tiles = ceil_div(M, Bc);
  const int64_t off = p.causal_offset();
  const T scale = T(p.scale);
  const DropoutMask<T> drop(p.dropout, p.seed);
  const bool tied = p.tied();

  // One task per (batch, head, key chunk). With B * h >= kBackwardTasks a chunk is every key
  // and dq is summed in place; otherwise chunks 1.. sum into partial buffers (left
  // uninitialised here: each task zeroes its own, so the pages are touched in parallel).
  const int64_t chunks = std::clamp<int64_t>(ceil_div(kBackwardTasks, BH), 1, k_tiles);
  const int64_t chunk_tiles = ceil_div(k_tiles, chunks);
  const int64_t used_chunks = ceil_div(k_tiles, chunk_tiles);
  std::unique_ptr<T[]> part_dq(used_chunks > 1 ? new T[size_t(BH * (used_chunks - 1) * N * dh)] : nullptr);

  parallel_for(BH * used_chunks, [&](int64_t task) {
    const int64_t bh = task / used_chunks, chunk = task % used_chunks, b = bh / p.h;
    const T* q = p.q + bh * N * dh;
    const T* dout = p.dout + bh * N * dh;
    const T* k = p.k + bh * M * dh;
    const T* v = p.v + bh * M * dh;
    const T* lse = p.lse + bh * N;
    T* dq = chunk == 0 ? p.dq + bh * N * dh : part_dq.get() + (bh * (used_chunks - 1) + chunk - 1) * N * dh;
    std::fill(dq, dq + N * dh, T(0));
    // Key padding as an additive logit bias (0 kept, -inf padding), the form exp_shifted_row takes.
    std::vector<T> bias;
    if (p.mask) mask_to_bias(p.mask + b * M, M, bias);
    // D = rowsum(dO * O) for every query row of the head, rounded as one lane of tile_gemm: with
    // a single visible key O is that key's value row and dP equals D exactly, so dS is exactly
    // 0 (see unpack_attention.cc for why not the cheaper rowsum(P * dP)).
    std::vector<T> D(N);
    for (int64_t i = 0; i < N; ++i) D[i] = dot_as_gemm<T>(dh, dout + i * dh, p.out + (bh * N + i) * dh);
    std::vector<T> k_t(dh * Bc), v_t(dh * Bc), s(Br * Bc), dp(Br * Bc), keep(drop.active ? Br * Bc : 0);

    const int64_t kt_end = std::min(k_tiles, (chunk + 1) * chunk_tiles);
    for (int64_t kt = chunk * chunk_tiles; kt < kt_end; ++kt) {
      const int64_t k0 = kt * Bc, cols = std::min(Bc, M - k0);
      T* dk = p.dk + (bh * M + k0) * dh;
      T* dv = p.dv + (bh * M + k0) * dh;  // == dk when tied: both products add into it
      std::fill(dk, dk + cols * dh, T(0));
      if (!tied) std::fill(dv, dv + cols * dh, T(0));
      const T* kb = bias.empty() ? nullptr : bias.data() + k0;
      if (kb && std::all_of(kb, kb + cols, [&](T x) { return x == neg_inf; })) continue;  // all padding
      ops.transpose(cols, dh, k + k0 * dh, dh, k_t.data(), Bc);  // (dh x cols), ld Bc
      ops.transpose(cols, dh, v + k0 * dh, dh, v_t.data(), Bc);
      // Causal: query i sees key k0 only from i = k0 - off on.
      const int64_t qt_begin = p.causal ? std::max<int64_t>(0, k0 - off) / Br : 0;
      for (int64_t qt = qt_begin; qt < q_tiles; ++qt) {
        const int64_t i0 = qt * Br, rows = std::min(Br, N - i0);
        // S (rows x cols) = Q_tile (rows x dh) . K_tile^T (dh x cols), then P in place.
        tile_gemm<T>(rows, cols, dh, T(1), q + i0 * dh, dh, 1, k_t.data(), Bc, s.data(), Bc, false);
        // dP (rows x cols) = dO_tile (rows x dh) . V_tile^T (dh x cols).
        tile_gemm<T>(rows, cols, dh, T(1), dout + i0 * dh, dh, 1, v_t.data(), Bc, dp.data(), Bc, false);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          T* sr = s.data() + r * Bc;
          // Under the causal mask row i sees the keys of this tile before `seen`.
          const int64_t seen = p.causal ? std::clamp<int64_t>(i + off - k0 + 1, 0, cols) : cols;
          if (lse[i] == neg_inf || seen == 0) {  // a fully masked row, or no key of this tile
            std::fill(sr, sr + cols, T(0));
            if (drop.active) std::fill(keep.data() + r * Bc, keep.data() + (r + 1) * Bc, T(0));
            continue;
          }
          exp_shifted_row<T>(seen, sr, kb, scale, lse[i], sr);
          std::fill(sr + seen, sr + cols, T(0));
          // With dropout dP becomes the gradient of the undropped probabilities (times each
          // element's factor), and dV needs the dropped ones, P~ = P * factor (below).
          if (drop.active) {
            T* kr = keep.data() + r * Bc;
            std::fill(kr + seen, kr + cols, T(0));
            const uint64_t index0 = uint64_t(bh * N + i) * uint64_t(M) + uint64_t(k0);
            ops.dropout_run(drop, index0, 1, 0, seen, dp.data() + r * Bc, kr);
          }
        }
        ops.ds_rows(rows, cols, s.data(), dp.data(), Bc, D.data() + i0);  // dp := dS
        if (drop.active)
          for (int64_t x = 0; x < rows * Bc; ++x) s[x] *= keep[x];
        // dV_tile (cols x dh) += P~^T (cols x rows) . dO_tile (rows x dh), P~ read transposed.
        tile_gemm<T>(cols, dh, rows, T(1), s.data(), 1, Bc, dout + i0 * dh, dh, dv, dh, true);
        // dK_tile (cols x dh) += scale dS^T (cols x rows) . q_tile (rows x dh)
        tile_gemm<T>(cols, dh, rows, scale, dp.data(), 1, Bc, q + i0 * dh, dh, dk, dh, true);
        // dq_tile (rows x dh) += scale dS (rows x cols) . K_tile (cols x dh)
        tile_gemm<T>(rows, dh, cols, scale, dp.data(), Bc, 1, k + k0 * dh, dh, dq + i0 * dh, dh, true);
      }
    }
  });

  // dq += the other chunks' partial sums, in chunk order.
  if (used_chunks > 1) {
    parallel_for(BH * q_tiles, [&](int64_t task) {
      const int64_t bh = task / q_tiles, i0 = (task % q_tiles) * Br, len = std::min(Br, N - i0) * dh;
      T* dq = p.dq + (bh * N + i0) * dh;
      for (int64_t c = 1; c < used_chunks; ++c) {
        const T* part = part_dq.get() + (bh * (used_chunks - 1) + c - 1) * N * dh + i0 * dh;
        for (int64_t x = 0; x < len; ++x) dq[x] += part[x];
      }
    });
  }
}

template void softmax_attention_forward<float>(const SoftmaxAttentionParams<float>&);
template void softmax_attention_forward<double>(const SoftmaxAttentionParams<double>&);
template void softmax_attention_backward<float>(const SoftmaxAttentionParams<float>&);
template void softmax_attention_backward<double>(const SoftmaxAttentionParams<double>&);

}  // namespace luna
