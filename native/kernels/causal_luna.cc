// Fused causal Luna attention on the CPU: forward, backward and incremental decoding
// (causal_luna.h; luna-math.md 3 "Chunked forward" and 5.4 "Chunked causal backward").
//
// One task per (batch, head) walks its rows in chunks of c, carrying the prefix states
// S^K [dh x l] and S^V [l x dh] from chunk to chunk. A chunk's rows see the states at the chunk
// start plus the chunk's own rows, and the latter is a c x c lower-triangular product; so a chunk
// is a few small GEMMs (tile_gemm) and the [n, l, dh] prefix tensor never exists. The c x c
// products only compute and read their lower triangle, in blocks of kRowBlock rows.
//
// The backward walks the chunks in reverse with the suffix sums R^K, R^V (5.4). It needs the
// chunk-start states, which a first pass recomputes (Φ and the state updates per chunk). Measured
// at the benchmark size, that pass is 3.2 of the backward's 25 ms; saving the states in the
// forward instead would hold B·h·⌈n/c⌉·l·dh floats (twice that untied) from the forward to the
// backward and need them even for a forward without gradient, for a ninth of the backward. It
// recomputes the probabilities with exactly the forward's arithmetic,
// max and sum included, rather than from the saved lse: l is small, the whole row is at hand,
// and the lse's float32 rounding (relative ~|lse| 2^-24) would otherwise land in dT = Bm (dBm - D)
// (see unpack_backward); D = rowsum(Bm dBm) then needs no saved output either.
//
// Parallel over B·h only. With B·h at least the thread count (B = 4, h = 4 on 2 cores at the
// benchmark size) that keeps every core busy; splitting a head's sequence as well would need a
// prefix scan of per-chunk states, about half a forward of extra work, for no gain here. Every
// task's arithmetic depends on the problem alone, so results are the same for any thread count.
#include "causal_luna.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../runtime/cpu_features.h"
#include "../runtime/thread_pool.h"
#include "attention_common.h"
#include "causal_activation.h"
#include "counter_rng.h"
#include "tile_gemm.h"

namespace luna {

namespace {

// Rows per block of the triangular products (the AVX-512 GEMM's register block height).
constexpr int64_t kRowBlock = 8;

#ifdef LUNA_X86
// dst[c x r] = src[r x c]ᵀ in 8 x 8 blocks through AVX registers (unpack, shuffle, permute);
// the scalar transpose_tile spent a tenth of the kernels' time on K_cᵀ, Φᵀ and the state
// transposes. Edges that do not fill a block go element by element.
TARGET_AVX2 void transpose_avx2(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  int64_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      const float* s = src + r0 * lds + c0;
      __m256 x[8], y[8];
      for (int i = 0; i < 8; ++i) x[i] = _mm256_loadu_ps(s + i * lds);
      for (int i = 0; i < 8; i += 2) {
        y[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
        y[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        x[i] = _mm256_shuffle_ps(y[i], y[i + 2], 0x44);
        x[i + 1] = _mm256_shuffle_ps(y[i], y[i + 2], 0xEE);
        x[i + 2] = _mm256_shuffle_ps(y[i + 1], y[i + 3], 0x44);
        x[i + 3] = _mm256_shuffle_ps(y[i + 1], y[i + 3], 0xEE);
      }
      float* d = dst + c0 * ldd + r0;
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(d + i * ldd, _mm256_permute2f128_ps(x[i], x[i + 4], 0x20));
        _mm256_storeu_ps(d + (i + 4) * ldd, _mm256_permute2f128_ps(x[i], x[i + 4], 0x31));
      }
    }
    for (int64_t r = r0; r < r0 + 8; ++r)
      for (int64_t c = c0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}
#endif

// dst[c x r] = src[r x c]ᵀ with row strides lds and ldd (transpose_tile, vectorised for float).
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
#ifdef LUNA_X86
  if constexpr (std::is_same_v<T, float>) {
    static const bool vector = active_isa() != Isa::Generic;
    if (vector) return transpose_avx2(rows, cols, src, lds, dst, ldd);
  }
#endif
  transpose_tile(rows, cols, src, lds, dst, ldd);
}

// out (c x c) = alpha a (c x K) bt (K x c), lower triangle only (column j <= row i): row block
// [i0, i0 + 8) computes columns [0, i0 + 8) and zeroes those right of the diagonal. Columns
// further right stay unwritten; lower_times and upper_times never read them.
template <typename T>
void tri_product(int64_t c, int64_t K, T alpha, const T* a, int64_t lda, const T* bt, int64_t ldb, T* out) {
  for (int64_t i0 = 0; i0 < c; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, c - i0), cols = i0 + rows;
    tile_gemm<T>(rows, cols, K, alpha, a + i0 * lda, lda, 1, bt, ldb, out + i0 * c, c, false);
    for (int64_t i = i0; i < cols; ++i)
      for (int64_t j = i + 1; j < cols; ++j) out[i * c + j] = 0;
  }
}

// out (c x N) (+)= L b, L (c x c) lower-triangular from tri_product, b (c x N).
template <typename T>
void lower_times(int64_t c, int64_t N, const T* L, const T* b, int64_t ldb, T* out, int64_t ldo, bool accumulate) {
  for (int64_t i0 = 0; i0 < c; i0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, c - i0);
    tile_gemm<T>(rows, N, i0 + rows, T(1), L + i0 * c, c, 1, b, ldb, out + i0 * ldo, ldo, accumulate);
  }
}

// out (c x N) += Lᵀ b, L from tri_product (Lᵀ is read through strides), b (c x N).
// Row j of the result sums over i = c-1 down to j (negative strides): in the backward these are
// suffix sums whose terms carry 1/t and shrink with i, and adding the small far terms first keeps
// the rounding at the level of the plain position-by-position reference (largest at t ~ 1).
template <typename T>
void upper_times(int64_t c, int64_t N, const T* L, const T* b, int64_t ldb, T* out, int64_t ldo) {
  for (int64_t j0 = 0; j0 < c; j0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, c - j0);
    tile_gemm<T>(rows, N, c - j0, T(1), L + (c - 1) * c + j0, 1, -c, b + (c - 1) * ldb, -ldb, out + j0 * ldo,
                 ldo, true);
  }
}

// r (dh x l) += xᵀ g with x (rows x dh), g (rows x l), summed from the last row up, for the
// same reason as upper_times: the suffix sums R^K, R^V get their largest terms last.
template <typename T>
void add_suffix(int64_t rows, int64_t dh, int64_t l, const T* x, const T* g, T* r) {
  tile_gemm<T>(dh, l, rows, T(1), x + (rows - 1) * dh, 1, -dh, g + (rows - 1) * l, -l, r, l, true);
}

// A buffer of n elements left uninitialised: every scratch buffer here is written before it is
// read. Small ones (under 64 KiB) come from the heap; large ones from a per-thread arena that is
// kept between calls: a fresh 256 KiB block per task, zero-filled and page-faulted in anew on
// every call, cost a fifth of the backward. One arena slot per buffer kind (scratch, states, pqᵀ),
// since a task holds them all at once.
// An arena that has grown past 16 MiB (a very long sequence) is released after the call.
template <typename T>
class Uninit {
 public:
  Uninit(int64_t n, int slot) {
    const size_t len = size_t(std::max<int64_t>(n, 1));
    if (len * sizeof(T) < (64 << 10)) {
      own_.reset(new T[len]);
      data_ = own_.get();
      return;
    }
    thread_local std::vector<T> arena[3];
    arena_ = &arena[slot];
    if (arena_->size() < len) *arena_ = std::vector<T>(len);  // grown only: later calls reuse the pages
    data_ = arena_->data();
  }
  ~Uninit() {
    if (arena_ && arena_->size() * sizeof(T) > (size_t(16) << 20)) std::vector<T>().swap(*arena_);
  }
  Uninit(const Uninit&) = delete;
  Uninit& operator=(const Uninit&) = delete;
  T* data() const { return data_; }

 private:
  std::unique_ptr<T[]> own_;
  std::vector<T>* arena_ = nullptr;
  T* data_ = nullptr;
};

// One (batch, head) of a call: its slices of the inputs and what is fixed per head.
template <typename T>
struct Head {
  const CausalParams<T>& p;
  int64_t bh, n, l, dh;
  const T *q, *k, *v, *kc, *pq;
  Uninit<T> pqt;        // pqᵀ (dh x l): the B operand of Z = kc pqᵀ
  std::vector<T> bias;  // additive slot bias, 0 or -inf (empty without a mask)
  const T* bias_ptr = nullptr;
  bool all_masked = false;  // every P slot masked: output 0, lse -inf, zero gradients
  bool tied;
  DropoutMask<T> drop_phi, drop_bm;

  Head(const CausalParams<T>& params, int64_t index)
      : p(params), bh(index), n(params.n), l(params.l), dh(params.dh), pqt(params.n > 1 ? params.dh * params.l : 0, 2),
        tied(params.tied()), drop_phi(params.dropout, params.seed),
        drop_bm(params.dropout, params.seed + kBmSeedOffset) {
    q = p.q + bh * n * dh;
    k = p.k + bh * n * dh;
    v = p.v + bh * n * dh;
    kc = p.kc + bh * n * dh;
    pq = p.pq + bh * l * dh;
    if (n > 1) transpose(l, dh, pq, dh, pqt.data(), l);  // one-row calls never read it
    if (p.mask) {
      const uint8_t* m = p.mask + (bh / p.h) * l;
      mask_to_bias(m, l, bias);
      bias_ptr = bias.data();
      all_masked = all_keys_masked(m, l);
    }
  }
};

// Scratch of one task, sized for chunks of up to c rows, in one allocation.
template <typename T>
struct Scratch {
  Uninit<T> buf;
  // Forward: Φ and its transpose, K_cᵀ, the triangular A = q K_cᵀ and G = gB Φᵀ, the raw logits,
  // Bm and gB = B̃ / t. Backward adds φ'(Z), V_cᵀ, E = dO V_cᵀ, H = gT Φᵀ, dB, gT = dT scale / t,
  // dΦ and three l x dh transposes.
  T *phi, *phit, *kt, *a, *g, *logits, *bm, *gb;
  T *slope = nullptr, *vt = nullptr, *e = nullptr, *hh = nullptr, *db = nullptr, *gt = nullptr,
    *dphi = nullptr, *tr0 = nullptr, *tr1 = nullptr, *tr2 = nullptr;
  std::vector<double> dbm;  // one row of dBm (backward)

  Scratch(int64_t c, int64_t l, int64_t dh, bool backward)
      : buf(5 * c * l + c * dh + 2 * c * c + (backward ? 4 * c * l + c * dh + 2 * c * c + 3 * l * dh : 0), 0) {
    const int64_t cl = c * l, cc = c * c, cd = c * dh, ld = l * dh;
    T* x = buf.data();
    auto take = [&x](int64_t len) { T* r = x; x += len; return r; };
    phi = take(cl), phit = take(cl), logits = take(cl), bm = take(cl), gb = take(cl);
    kt = take(cd), a = take(cc), g = take(cc);
    if (backward) {
      slope = take(cl), db = take(cl), gt = take(cl), dphi = take(cl);
      vt = take(cd), e = take(cc), hh = take(cc), tr0 = take(ld), tr1 = take(ld), tr2 = take(ld);
      dbm.resize(l);
    }
  }
};

// Rows [r0, r0 + rows): Φ = φ(pack_scale kc pqᵀ) x its dropout factor (rows x l), Φᵀ, and with
// `with_slope` φ'(Z) x the same factor (what dΦ is multiplied by to give dZ).
template <typename T>
void chunk_phi(const Head<T>& hd, Scratch<T>& s, int64_t r0, int64_t rows, bool with_slope) {
  const int64_t l = hd.l, dh = hd.dh;
  if (rows == 1) {
    // One row (a decoding step): Zᵀ = pq kcᵀ, a matrix-vector product that needs no pqᵀ; the
    // same products summed in the same order as the general case.
    tile_gemm<T>(l, 1, dh, T(hd.p.pack_scale), hd.pq, dh, 1, hd.kc + r0 * dh, 1, s.phi, 1, false);
  } else {
    tile_gemm<T>(rows, l, dh, T(hd.p.pack_scale), hd.kc + r0 * dh, dh, 1, hd.pqt.data(), l, s.phi, l, false);
  }
  causal_phi<T>(hd.p.activation, rows * l, s.phi, s.phi, with_slope ? s.slope : nullptr);
  if (hd.drop_phi.active) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t r = 0; r < l; ++r) {
        const T f = hd.drop_phi.factor(uint64_t(hd.bh * hd.n + r0 + i) * l + r);
        s.phi[i * l + r] *= f;
        if (with_slope) s.slope[i * l + r] *= f;
      }
  }
  transpose(rows, l, s.phi, l, s.phit, rows);
}

// Unscaled logits of rows [r0, r0 + rows) from the chunk-start state S^K (dh x l):
//   raw = q_c S^K + (q_c K_cᵀ ⊙ M) Φ_c     (rows x l; T = raw scale / t)
// Leaves K_cᵀ and A = q_c K_cᵀ ⊙ M in the scratch.
template <typename T>
void chunk_logits(const Head<T>& hd, Scratch<T>& s, int64_t r0, int64_t rows, const T* sk) {
  const int64_t l = hd.l, dh = hd.dh;
  const T* q = hd.q + r0 * dh;
  transpose(rows, dh, hd.k + r0 * dh, dh, s.kt, rows);
  tri_product<T>(rows, dh, T(1), q, dh, s.kt, rows, s.a);
  tile_gemm<T>(rows, l, dh, T(1), q, dh, 1, sk, l, s.logits, l, false);
  lower_times<T>(rows, l, s.a, s.phi, l, s.logits, l, true);
}

// Softmax over the l slots of each row, logits scaled by scale / t with t = pos0 + i + 1 the
// row's absolute position: bm = Bm, gb = B̃ / t; lse, when not null, gets the log-sum-exp.
// Forward, backward and decoding all come through here, so they see the same probabilities.
template <typename T>
void chunk_probs(const Head<T>& hd, Scratch<T>& s, int64_t r0, int64_t rows, int64_t pos0, T* lse) {
  const int64_t l = hd.l;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < rows; ++i) {
    const T t = T(pos0 + i + 1);
    T* row = s.logits + i * l;
    T* bm = s.bm + i * l;
    T* gb = s.gb + i * l;
    if (hd.all_masked) {  // reached by decoding only; the others return early
      std::fill(bm, bm + l, T(0));
      std::fill(gb, gb + l, T(0));
      if (lse) lse[i] = neg_inf;
      continue;
    }
    const T st = T(hd.p.scale) / t;
    T top = max_scaled_row<T>(l, row, hd.bias_ptr, st);
    // Every logit NaN or -inf without a mask saying so (the max may skip NaN): NaN, as PyTorch.
    if (top == neg_inf) top = std::numeric_limits<T>::quiet_NaN();
    // Subtract the largest raw logit before scaling: st (raw_r - raw_top) is exact to a rounding
    // of the difference, where st raw_r - top carries the rounding of the (large) logits
    // themselves, an error every probability of the row would share.
    T shift = top;
    for (int64_t r = 0; r < l; ++r) {
      if (st * row[r] + (hd.bias_ptr ? hd.bias_ptr[r] : T(0)) == top) {
        const T raw_top = row[r];
        for (int64_t x = 0; x < l; ++x) row[x] -= raw_top;
        shift = 0;
        break;
      }
    }
    const T sum = exp_shifted_row<T>(l, row, hd.bias_ptr, st, shift, bm);
    if (lse) lse[i] = top + std::log(sum);
    const T inv_sum = T(1) / sum, inv_t = T(1) / t;
    const uint64_t base = uint64_t(hd.bh * hd.n + r0 + i) * l;
    for (int64_t r = 0; r < l; ++r) {
      bm[r] *= inv_sum;
      gb[r] = (hd.drop_bm.active ? bm[r] * hd.drop_bm.factor(base + r) : bm[r]) * inv_t;
    }
  }
}

// out rows = gB S^V + (gB Φ_cᵀ ⊙ M) V_c, from the chunk-start state S^V (l x dh).
template <typename T>
void chunk_output(const Head<T>& hd, Scratch<T>& s, int64_t r0, int64_t rows, const T* sv, T* out) {
  const int64_t l = hd.l, dh = hd.dh;
  tri_product<T>(rows, l, T(1), s.gb, l, s.phit, rows, s.g);
  tile_gemm<T>(rows, dh, l, T(1), s.gb, l, 1, sv, dh, out, dh, false);
  lower_times<T>(rows, dh, s.g, hd.v + r0 * dh, dh, out, dh, true);
}

// S^K (dh x l) += K_cᵀ Φ_c, with K_cᵀ already in s.kt.
template <typename T>
void advance_sk(const Head<T>& hd, const Scratch<T>& s, int64_t rows, T* sk) {
  tile_gemm<T>(hd.dh, hd.l, rows, T(1), s.kt, rows, 1, s.phi, hd.l, sk, hd.l, true);
}

int64_t chunk_of(int64_t chunk) { return chunk > 0 ? chunk : kCausalChunk; }

// Runs fn(bh) for every (batch, head): on the thread pool, or inline when the whole call is a
// few microseconds of work (a decoding step), where waking the pool would cost more than it saves.
template <typename T, typename Fn>
void for_each_head(const CausalParams<T>& p, const Fn& fn) {
  const int64_t BH = p.B * p.h;
  if (BH * p.n * p.l * p.dh < (int64_t(1) << 16)) {
    for (int64_t bh = 0; bh < BH; ++bh) fn(bh);
  } else {
    parallel_for(BH, fn);
  }
}

}  // namespace

// q, k, v, kc are (B, h, n, dh), pq is (B, h, l, dh), mask is (B, l); out is (B, h, n, dh) and
// lse (B, h, n). Per head: S^K = 0 (dh x l), S^V = 0 (l x dh); for each chunk: Φ_c, logits,
// softmax, output, then S^K += K_cᵀ Φ_c, S^V += Φ_cᵀ V_c. Tied k = v keeps S^K alone, as
// S^V = S^Kᵀ.
template <typename T>
void causal_forward(const CausalParams<T>& p) {
  const int64_t n = p.n, l = p.l, dh = p.dh, c = std::min(chunk_of(p.chunk), p.n);
  for_each_head(p, [&](int64_t bh) {
    const Head<T> hd(p, bh);
    T* out = p.out + bh * n * dh;
    T* lse = p.lse ? p.lse + bh * n : nullptr;
    if (hd.all_masked) {
      std::fill(out, out + n * dh, T(0));
      if (lse) std::fill(lse, lse + n, -std::numeric_limits<T>::infinity());
      return;
    }
    Scratch<T> s(c, l, dh, false);
    std::vector<T> sk(dh * l, T(0)), sv(l * dh, T(0));
    for (int64_t r0 = 0; r0 < n; r0 += c) {
      const int64_t rows = std::min(c, n - r0);
      chunk_phi(hd, s, r0, rows, false);
      chunk_logits(hd, s, r0, rows, sk.data());
      chunk_probs(hd, s, r0, rows, r0, lse ? lse + r0 : nullptr);
      if (hd.tied) transpose(dh, l, sk.data(), l, sv.data(), dh);
      chunk_output(hd, s, r0, rows, sv.data(), out + r0 * dh);
      advance_sk(hd, s, rows, sk.data());
      if (!hd.tied) tile_gemm<T>(l, dh, rows, T(1), s.phit, rows, 1, hd.v + r0 * dh, dh, sv.data(), dh, true);
    }
  });
}

// The forward's chunk loop from the states after t0 positions, updating them. Both states are
// kept even when k = v, so a state never depends on how earlier steps were called.
template <typename T>
void causal_step(const CausalParams<T>& p) {
  const int64_t n = p.n, l = p.l, dh = p.dh, c = std::min(chunk_of(p.chunk), p.n);
  for_each_head(p, [&](int64_t bh) {
    const Head<T> hd(p, bh);
    T* out = p.out + bh * n * dh;
    T* lse = p.lse ? p.lse + bh * n : nullptr;
    T* sk = p.state_k + bh * dh * l;
    T* sv = p.state_v + bh * l * dh;
    Scratch<T> s(c, l, dh, false);
    for (int64_t r0 = 0; r0 < n; r0 += c) {
      const int64_t rows = std::min(c, n - r0);
      chunk_phi(hd, s, r0, rows, false);
      chunk_logits(hd, s, r0, rows, sk);
      chunk_probs(hd, s, r0, rows, p.t0 + r0, lse ? lse + r0 : nullptr);
      chunk_output(hd, s, r0, rows, sv, out + r0 * dh);
      advance_sk(hd, s, rows, sk);
      tile_gemm<T>(l, dh, rows, T(1), s.phit, rows, 1, hd.v + r0 * dh, dh, sv, dh, true);
    }
  });
}

// Gradients (luna-math.md 5.4), per head in two passes:
//  1. forward over the chunks: the chunk-start states S^K and S^Vᵀ (both dh x l).
//  2. reverse over the chunks with R^K = Σ_{t >= chunk end} q_tᵀ gT_t and R^Vᵀ = Σ dO_tᵀ gB_t
//     (dh x l; tied: one sum R = R^K + R^Vᵀ), where gB = B̃ / t and gT = dT scale / t:
//       dB  = dO S^Vᵀ + E Φ_c,  E = dO V_cᵀ ⊙ M;   dBm = dB M_B / ((1-p) t);  D = rowsum(Bm dBm)
//       dT  = Bm (dBm - D);  gT = dT scale / t
//       dq  = gT S^Kᵀ + H K_c,  H = gT Φ_cᵀ ⊙ M
//       dK  = Φ_c R^Kᵀ + Hᵀ q_c;    dV = Φ_c R^V + Gᵀ dO,  G = gB Φ_cᵀ ⊙ M
//       dΦ  = K_c R^K + Aᵀ gT + V_c R^Vᵀ + Eᵀ gB;   dZ = dΦ M_Φ/(1-p) φ'(Z)
//       dkc = pack_scale dZ pq;  dpq += pack_scale dZᵀ kc_c
//     then R^K += q_cᵀ gT, R^Vᵀ += dO_cᵀ gB.
template <typename T>
void causal_backward(const CausalParams<T>& p) {
  const int64_t n = p.n, l = p.l, dh = p.dh, c = std::min(chunk_of(p.chunk), p.n);
  const int64_t chunks = ceil_div(n, c), S = dh * l;
  for_each_head(p, [&](int64_t bh) {
    const Head<T> hd(p, bh);
    const int64_t off = bh * n * dh;
    T* dq = p.dq + off;
    T* dk = p.dk + off;
    T* dv = p.dv + off;
    T* dkc = p.dkc + off;
    T* dpq = p.dpq + bh * l * dh;
    std::fill(dpq, dpq + l * dh, T(0));
    if (hd.all_masked) {  // no row has a probability: every gradient is 0
      for (T* g : {dq, dk, dv, dkc}) std::fill(g, g + n * dh, T(0));
      return;
    }
    const bool tied = hd.tied;
    Scratch<T> s(c, l, dh, true);

    // Pass 1: chunk-start states, S^K then (untied) S^Vᵀ per chunk.
    const int64_t stride = tied ? S : 2 * S;
    Uninit<T> starts(chunks * stride, 1);
    {
      std::vector<T> sk(S, T(0)), svt(tied ? 0 : S, T(0));
      for (int64_t ch = 0; ch < chunks; ++ch) {
        std::copy(sk.begin(), sk.end(), starts.data() + ch * stride);
        if (!tied) std::copy(svt.begin(), svt.end(), starts.data() + ch * stride + S);
        if (ch + 1 == chunks) break;
        const int64_t r0 = ch * c, rows = std::min(c, n - r0);
        chunk_phi(hd, s, r0, rows, false);
        transpose(rows, dh, hd.k + r0 * dh, dh, s.kt, rows);
        advance_sk(hd, s, rows, sk.data());
        if (!tied) {
          transpose(rows, dh, hd.v + r0 * dh, dh, s.vt, rows);
          tile_gemm<T>(dh, l, rows, T(1), s.vt, rows, 1, s.phi, l, svt.data(), l, true);
        }
      }
    }

    // Pass 2.
    std::vector<T> rk(S, T(0)), rvt(tied ? 0 : S, T(0));
    const T scale = T(p.scale), pack_scale = T(p.pack_scale);
    for (int64_t ch = chunks - 1; ch >= 0; --ch) {
      const int64_t r0 = ch * c, rows = std::min(c, n - r0);
      const T* sk = starts.data() + ch * stride;
      const T* svt = tied ? sk : sk + S;
      const T* q = hd.q + r0 * dh;
      const T* k = hd.k + r0 * dh;
      const T* dO = p.dout + off + r0 * dh;
      chunk_phi(hd, s, r0, rows, true);
      chunk_logits(hd, s, r0, rows, sk);
      chunk_probs(hd, s, r0, rows, r0, static_cast<T*>(nullptr));

      // dB (rows x l) = dO S^Vᵀ + E Φ_c.
      const T* vt = s.kt;
      if (!tied) {
        transpose(rows, dh, hd.v + r0 * dh, dh, s.vt, rows);
        vt = s.vt;
      }
      tri_product<T>(rows, dh, T(1), dO, dh, vt, rows, s.e);
      tile_gemm<T>(rows, l, dh, T(1), dO, dh, 1, svt, l, s.db, l, false);
      lower_times<T>(rows, l, s.e, s.phi, l, s.db, l, true);

      // gT = Bm (dBm - D) scale / t, row by row, in double: D is a sum of terms much larger
      // than dBm - D when the softmax is sharp, and l is small enough for this to cost nothing.
      for (int64_t i = 0; i < rows; ++i) {
        const double t = double(r0 + i + 1), st = double(scale) / t;
        const T* bm = s.bm + i * l;
        T* db = s.db + i * l;
        T* gt = s.gt + i * l;
        const uint64_t base = uint64_t(bh * n + r0 + i) * l;
        double D = 0;
        for (int64_t r = 0; r < l; ++r) {
          const double keep = hd.drop_bm.active ? double(hd.drop_bm.factor(base + r)) : 1.0;
          const double dbm = double(db[r]) * keep / t;
          D += double(bm[r]) * dbm;
          s.dbm[r] = dbm;
        }
        for (int64_t r = 0; r < l; ++r) gt[r] = T(double(bm[r]) * (s.dbm[r] - D) * st);
      }

      // dq = gT S^Kᵀ + H K_c.
      transpose(dh, l, sk, l, s.tr0, dh);
      tri_product<T>(rows, l, T(1), s.gt, l, s.phit, rows, s.hh);
      tile_gemm<T>(rows, dh, l, T(1), s.gt, l, 1, s.tr0, dh, dq + r0 * dh, dh, false);
      lower_times<T>(rows, dh, s.hh, k, dh, dq + r0 * dh, dh, true);

      // dK = Φ_c R^Kᵀ + Hᵀ q_c (+ Gᵀ dO when tied); dV = Φ_c R^V + Gᵀ dO.
      tri_product<T>(rows, l, T(1), s.gb, l, s.phit, rows, s.g);
      transpose(dh, l, rk.data(), l, s.tr1, dh);
      tile_gemm<T>(rows, dh, l, T(1), s.phi, l, 1, s.tr1, dh, dk + r0 * dh, dh, false);
      upper_times<T>(rows, dh, s.hh, q, dh, dk + r0 * dh, dh);
      if (tied) {
        upper_times<T>(rows, dh, s.g, dO, dh, dk + r0 * dh, dh);
      } else {
        transpose(dh, l, rvt.data(), l, s.tr2, dh);
        tile_gemm<T>(rows, dh, l, T(1), s.phi, l, 1, s.tr2, dh, dv + r0 * dh, dh, false);
        upper_times<T>(rows, dh, s.g, dO, dh, dv + r0 * dh, dh);
      }

      // dΦ = K_c R^K + Aᵀ gT + V_c R^Vᵀ + Eᵀ gB, then dZ = dΦ φ'(Z) (dropout factor included).
      tile_gemm<T>(rows, l, dh, T(1), k, dh, 1, rk.data(), l, s.dphi, l, false);
      upper_times<T>(rows, l, s.a, s.gt, l, s.dphi, l);
      if (!tied) tile_gemm<T>(rows, l, dh, T(1), hd.v + r0 * dh, dh, 1, rvt.data(), l, s.dphi, l, true);
      upper_times<T>(rows, l, s.e, s.gb, l, s.dphi, l);
      for (int64_t x = 0; x < rows * l; ++x) s.dphi[x] *= s.slope[x];

      // dkc = pack_scale dZ pq;  dpq += pack_scale dZᵀ kc_c (dZᵀ read through strides).
      tile_gemm<T>(rows, dh, l, pack_scale, s.dphi, l, 1, hd.pq, dh, dkc + r0 * dh, dh, false);
      tile_gemm<T>(l, dh, rows, pack_scale, s.dphi, 1, l, hd.kc + r0 * dh, dh, dpq, dh, true);

      // The suffix sums now include this chunk: R^K += q_cᵀ gT, R^Vᵀ += dO_cᵀ gB.
      add_suffix<T>(rows, dh, l, q, s.gt, rk.data());
      add_suffix<T>(rows, dh, l, dO, s.gb, tied ? rk.data() : rvt.data());
    }
  });
}

template void causal_forward<float>(const CausalParams<float>&);
template void causal_forward<double>(const CausalParams<double>&);
template void causal_backward<float>(const CausalParams<float>&);
template void causal_backward<double>(const CausalParams<double>&);
template void causal_step<float>(const CausalParams<float>&);
template void causal_step<double>(const CausalParams<double>&);

}  // namespace luna
