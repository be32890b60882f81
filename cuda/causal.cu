// Causal Luna attention on the GPU: forward, backward and incremental decoding (luna-math.md 3,
// 5.3, 5.4), the device side of native/kernels/causal_luna.{h,cc} with the same chunked math.
//
// The CPU walks each (batch, head) through its chunks in order, carrying the prefix states
// S^K [dh x l] and S^V [l x dh]. B·h heads are far too few blocks for a GPU, so here every chunk
// of every head is a block of its own, and the carried states become scans over chunks:
//   forward   1. phi_states: Φ_c = φ(pack_scale kc_c pqᵀ) with dropout (kept, [BH, n, l]) and the
//                chunk's increments K_cᵀΦ_c and Φ_cᵀV_c;
//             2. scan: exclusive prefix sums of the increments over the chunks, in chunk order,
//                give every chunk its start state;
//             3. forward_chunk: a chunk's logits, softmax and output from its start state plus
//                its own rows (c x c lower-triangular products in shared memory), and its lse.
//   backward  1, 2 as above (also φ'(Z));
//             3. backward_scores: Bm, dB, gT = dT scale / t, gB = B̃ / t (kept), dq, and the
//                chunk's increments of the suffix sums R^K (q_cᵀ gT) and R^Vᵀ (dO_cᵀ gB);
//             4. scan in reverse chunk order: every chunk's R = sum over the later chunks;
//             5. backward_keys: dk, dv, dΦ, dZ = dΦ φ'(Z), dkc and the chunk's part of dpq;
//             6. the dpq parts summed over the chunks in chunk order.
//   step      one row (a decoding step): one small block per head updates its states in place;
//             more rows (a prefill): the forward's three passes, the scan starting from (and
//             writing back) the given states.
// Every sum has a fixed order and no float atomics are used: results are deterministic. Logits,
// lse, states and accumulators are float32, exponentials expf (not __expf); the one float64
// step mirrors the CPU's: D and dBm - D of a row in the backward (D can be much larger than the
// difference when a softmax is sharp). The suffix sums over the rows of a chunk run from the
// last row up, as on the CPU, so the small late terms (1/t) are added first.
#include <algorithm>
#include <cstdint>
#include <string>

#include "../native/kernels/causal_activation.h"
#include "../native/kernels/counter_rng.h"
#include "causal_cuda.h"
#include "causal_tiles.cuh"
#include "common.cuh"

namespace luna::cuda {

namespace {

using namespace causal_tiles;

// Threads of a chunk kernel: 256 for the default chunk of 64 rows; a short chunk (requested, or
// a short sequence) has less to share out.
int chunk_threads(int c) { return c >= 32 ? 256 : c >= 8 ? 128 : 64; }
constexpr int kMaxThreads = 256;
constexpr int kStepThreads = 64;   // a decoding step: one small block per head

// Everything the kernels read, copied into each launch. Sizes are those of CausalParams;
// c is the chunk length the launcher settled on and chunks = ceil(n / c).
struct Dev {
  const float *q, *k, *v, *kc, *pq, *dout;
  const uint8_t* mask;  // [B, l] or null
  float *out, *lse, *dq, *dk, *dv, *dkc;
  int64_t n, pos0;      // pos0: positions before row 0 (decoding's t0; 0 otherwise)
  int h, l, dh, c, chunks;
  float scale, pack_scale;
  CausalActivation act;
  bool tied;            // k == v (then dk == dv receives both gradients)
  bool has_sv;          // S^V kept apart from S^K: untied, or decoding (which keeps both states)
  bool dropout;
  uint64_t seed;        // Φ uses seed, Bm seed + kBmSeedOffset (counter_rng.h, as on the CPU)
  uint32_t threshold;
  float keep_scale;
  // Scratch, all from the caching allocator.
  float *phi, *slope;   // [BH, n, l]: Φ and φ'(Z), both with the dropout factor
  float *sk, *sv;       // [BH, chunks, dh, l] and [BH, chunks, l, dh]: increments, then start states
  float *gt, *gb;       // [BH, n, l]: gT = dT scale / t and gB = B̃ / t (backward)
  float *rk, *rv;       // [BH, chunks, dh, l]: R^K and R^Vᵀ (tied: their sum in rk) increments, then suffix sums
  float* dpq_part;      // [BH, chunks, l, dh]
};

__device__ inline bool batch_all_masked(const Dev& d, int64_t b) {
  if (!d.mask) return false;
  for (int r = 0; r < d.l; ++r)
    if (!d.mask[b * d.l + r]) return false;
  return true;
}

__device__ inline float keep_factor(const Dev& d, uint64_t seed, uint64_t index) {
  return counter_bits(seed, index) >= d.threshold ? d.keep_scale : 0.f;
}

// One thread turns the raw logits of one row (q S^K_t, unscaled; head bh, row `row` of the head,
// 0-based position pos) into probabilities, as the CPU's chunk_probs: T = raw scale / t with
// masked slots -inf; the largest raw logit is subtracted before scaling (exact to one rounding
// of the difference); bm gets Bm and gb gets gB = B̃ / t (gb may be bm: bm then holds gB). A
// batch element with every slot masked gets Bm = 0 and lse -inf; a row whose logits are all NaN
// or -inf otherwise gets NaN, as on the CPU. A thread per row rather than a warp: l is small
// (16 at the benchmark size, where a warp per row would leave half its lanes idle), the sums
// run in the CPU's order, and there are no shuffles.
__device__ void softmax_row(const Dev& d, bool all_masked, const uint8_t* mask, int64_t bh, int64_t row, int64_t pos,
                            float* raw, float* bm, float* gb, float* lse) {
  const int l = d.l;
  if (all_masked) {
    for (int r = 0; r < l; ++r) bm[r] = gb[r] = 0.f;
    if (lse) *lse = -INFINITY;
    return;
  }
  const float st = d.scale / float(pos + 1), inv_t = 1.0f / float(pos + 1);
  float top = -INFINITY;  // the largest scaled logit, first reached at slot `where`
  int where = -1;
  for (int r = 0; r < l; ++r) {
    if (mask && mask[r]) continue;
    const float s = st * raw[r];
    if (s > top) top = s, where = r;
  }
  if (where < 0) {  // nothing finite to normalise by
    for (int r = 0; r < l; ++r) bm[r] = gb[r] = NAN;
    if (lse) *lse = NAN;
    return;
  }
  const float raw_top = raw[where];
  float sum = 0.f;
  for (int r = 0; r < l; ++r) {
    const float p = (mask && mask[r]) ? 0.f : expf(st * (raw[r] - raw_top));
    raw[r] = p;
    sum += p;
  }
  if (lse) *lse = top + logf(sum);
  const float inv_sum = 1.0f / sum;
  const uint64_t base = uint64_t(bh * d.n + row) * uint64_t(l);
  for (int r = 0; r < l; ++r) {
    const float b = raw[r] * inv_sum;
    bm[r] = b;
    gb[r] = (d.dropout ? b * keep_factor(d, d.seed + kBmSeedOffset, base + r) : b) * inv_t;
  }
}

struct Chunk {
  int64_t bh, b, r0, row0;  // head, batch element, first row in the head, first row in [BH, n]
  int ch, rows;
};

__device__ inline Chunk chunk_of_block(const Dev& d) {
  Chunk k;
  k.bh = blockIdx.x / d.chunks;
  k.ch = int(blockIdx.x % d.chunks);
  k.b = k.bh / d.h;
  k.r0 = int64_t(k.ch) * d.c;
  k.rows = int(min(int64_t(d.c), d.n - k.r0));
  k.row0 = k.bh * d.n + k.r0;
  return k;
}

// Pass 1. kc, k, v are (BH, n, dh), pq (BH, l, dh); grid BH x chunks, one chunk per block.
// Writes phi (BH, n, l) = Φ with its dropout factor, slope (when not null) = φ'(Z) with the same
// factor, sk (BH, chunks, dh, l) = K_cᵀ Φ_c and, when has_sv, sv (BH, chunks, l, dh) = Φ_cᵀ V_c.
// Shared: x (c x dh: kc, then k, then v), ph (c x l).
__global__ void __launch_bounds__(kMaxThreads) phi_states_kernel(Dev d) {
  LUNA_DYNAMIC_SMEM(float, smem);
  const Chunk k = chunk_of_block(d);
  const int l = d.l, dh = d.dh, dhp = padded(dh), lp = padded(l), rows = k.rows;
  float* xs = smem;
  float* ph = xs + d.c * dhp;
  load_rows(xs, dhp, d.kc + k.row0 * dh, rows, dh);
  __syncthreads();
  const Gmat pqt{d.pq + k.bh * l * dh, 1, dh};  // pqᵀ (dh x l)
  for (int x = threadIdx.x; x < rows * l; x += blockDim.x) {
    const int i = x / l, r = x % l;
    float f, s = 0.f;
    causal_phi_one(d.act, d.pack_scale * dot_state(xs + i * dhp, dh, pqt, r), &f, d.slope ? &s : nullptr);
    const int64_t at = (k.row0 + i) * l + r;
    if (d.dropout) {
      const float keep = keep_factor(d, d.seed, uint64_t(at));
      f *= keep;
      s *= keep;
    }
    ph[i * lp + r] = f;
    d.phi[at] = f;
    if (d.slope) d.slope[at] = s;
  }
  __syncthreads();
  load_rows(xs, dhp, d.k + k.row0 * dh, rows, dh);
  __syncthreads();
  float* dsk = d.sk + (k.bh * d.chunks + k.ch) * int64_t(dh) * l;
  for (int x = threadIdx.x; x < dh * l; x += blockDim.x) {
    const int e = x / l, r = x % l;
    float acc = 0.f;
    for (int i = 0; i < rows; ++i) acc += xs[i * dhp + e] * ph[i * lp + r];
    dsk[x] = acc;
  }
  if (!d.has_sv) return;
  if (!d.tied) {
    __syncthreads();
    load_rows(xs, dhp, d.v + k.row0 * dh, rows, dh);
    __syncthreads();
  }
  float* dsv = d.sv + (k.bh * d.chunks + k.ch) * int64_t(l) * dh;
  for (int x = threadIdx.x; x < l * dh; x += blockDim.x) {
    const int r = x / dh, e = x % dh;
    float acc = 0.f;
    for (int i = 0; i < rows; ++i) acc += ph[i * lp + r] * xs[i * dhp + e];
    dsv[x] = acc;
  }
}

// Pass 2 and its mirror. x is (BH, chunks, size): per (head, element), replaces the chunks'
// values by the sum of those before them (reverse: after them), in that order, starting from
// init (BH, size) or 0, and writes the sum of all of them plus init to total (BH, size) when not
// null. With prefix false x is only read (the dpq parts). init and total may be the same array.
__global__ void __launch_bounds__(kMaxThreads)
    scan_kernel(float* x, const float* init, float* total, int64_t BH, int chunks, int64_t size, bool reverse, bool prefix) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= BH * size) return;
  const int64_t bh = idx / size, e = idx % size;
  float run = init ? init[idx] : 0.f;
  for (int s = 0; s < chunks; ++s) {
    float* p = x + (bh * chunks + (reverse ? chunks - 1 - s : s)) * size + e;
    const float inc = *p;
    if (prefix) *p = run;
    run += inc;
  }
  if (total) total[idx] = run;
}

// Pass 3 of the forward. q, k, v are (BH, n, dh); phi and the start states from passes 1-2;
// grid BH x chunks. Per chunk (rows i, j < rows, t = pos0 + r0 + i + 1):
//   raw = q_c S^K + (q_c K_cᵀ ⊙ M) Φ_c;  softmax of raw scale / t → gB = B̃ / t (and lse)
//   out = gB S^V + (gB Φ_cᵀ ⊙ M) V_c
// Shared: q, k, v (c x dh; no v when tied), Φ (c x l), logits then gB (c x l), A then G (c x c).
__global__ void __launch_bounds__(kMaxThreads) forward_chunk_kernel(Dev d) {
  LUNA_DYNAMIC_SMEM(float, smem);
  const Chunk k = chunk_of_block(d);
  const int l = d.l, dh = d.dh, c = d.c, dhp = padded(dh), lp = padded(l), cp = padded(c), rows = k.rows;
  const bool all_masked = batch_all_masked(d, k.b);
  if (all_masked) {  // output 0, lse -inf (the whole block takes this branch)
    for (int x = threadIdx.x; x < rows * dh; x += blockDim.x) d.out[k.row0 * dh + x] = 0.f;
    if (d.lse)
      for (int x = threadIdx.x; x < rows; x += blockDim.x) d.lse[k.row0 + x] = -INFINITY;
    return;
  }
  float* qs = smem;
  float* ks = qs + c * dhp;
  float* vs = d.tied ? ks : ks + c * dhp;
  float* ph = (d.tied ? ks : vs) + c * dhp;
  float* pr = ph + c * lp;
  float* aa = pr + c * lp;
  load_rows(qs, dhp, d.q + k.row0 * dh, rows, dh);
  load_rows(ks, dhp, d.k + k.row0 * dh, rows, dh);
  if (!d.tied) load_rows(vs, dhp, d.v + k.row0 * dh, rows, dh);
  load_rows(ph, lp, d.phi + k.row0 * l, rows, l);
  __syncthreads();
  lower_abt(rows, dh, qs, dhp, ks, dhp, aa, cp);  // A = q_c K_cᵀ
  __syncthreads();
  const int64_t state = k.bh * d.chunks + k.ch;
  const float* sk = d.sk + state * dh * l;
  const Gmat skm{sk, l, 1};  // S^K (dh x l)
  for (int x = threadIdx.x; x < rows * l; x += blockDim.x) {
    const int i = x / l, r = x % l;
    pr[i * lp + r] = dot_state(qs + i * dhp, dh, skm, r) + tri_lower(aa, cp, i, ph, lp, r);
  }
  __syncthreads();
  const uint8_t* mask = d.mask ? d.mask + k.b * l : nullptr;
  for (int i = threadIdx.x; i < rows; i += blockDim.x) {
    float* row = pr + i * lp;
    softmax_row(d, false, mask, k.bh, k.r0 + i, d.pos0 + k.r0 + i, row, row, row, d.lse ? d.lse + k.row0 + i : nullptr);
  }
  __syncthreads();
  lower_abt(rows, l, pr, lp, ph, lp, aa, cp);  // G = gB Φ_cᵀ
  __syncthreads();
  // S^V (l x dh): its own array, or S^Kᵀ when tied.
  const Gmat svm = d.has_sv ? Gmat{d.sv + state * l * dh, dh, 1} : Gmat{sk, 1, l};
  for (int x = threadIdx.x; x < rows * dh; x += blockDim.x) {
    const int i = x / dh, e = x % dh;
    d.out[k.row0 * dh + x] = dot_state(pr + i * lp, l, svm, e) + tri_lower(aa, cp, i, vs, dhp, e);
  }
}

// Pass 3 of the backward. Inputs as the forward's plus dout; grid BH x chunks. Per chunk:
//   Bm, gB as in the forward;  dB = dO S^Vᵀ + E Φ_c,  E = dO V_cᵀ ⊙ M
//   dBm = dB M_B / ((1-p) t);  D = Σ Bm dBm;  gT = Bm (dBm - D) scale / t   (float64 per row)
//   dq = gT S^Kᵀ + H K_c,  H = gT Φ_cᵀ ⊙ M
//   rk += q_cᵀ gT, rv += dO_cᵀ gB (tied: both into rk), the chunk's own increments (dh x l)
// Keeps gT and gB ([BH, n, l]) for pass 5. Shared: q, k, v, dO (c x dh; no v when tied),
// Φ, Bm, gB, dB then gT (c x l), A then E then H (c x c).
__global__ void __launch_bounds__(kMaxThreads) backward_scores_kernel(Dev d) {
  LUNA_DYNAMIC_SMEM(float, smem);
  const Chunk k = chunk_of_block(d);
  const int l = d.l, dh = d.dh, c = d.c, dhp = padded(dh), lp = padded(l), cp = padded(c), rows = k.rows;
  float* qs = smem;
  float* ks = qs + c * dhp;
  float* vs = d.tied ? ks : ks + c * dhp;
  float* os = (d.tied ? ks : vs) + c * dhp;
  float* ph = os + c * dhp;
  float* bm = ph + c * lp;
  float* gbs = bm + c * lp;
  float* gts = gbs + c * lp;
  float* xx = gts + c * lp;
  load_rows(qs, dhp, d.q + k.row0 * dh, rows, dh);
  load_rows(ks, dhp, d.k + k.row0 * dh, rows, dh);
  if (!d.tied) load_rows(vs, dhp, d.v + k.row0 * dh, rows, dh);
  load_rows(os, dhp, d.dout + k.row0 * dh, rows, dh);
  load_rows(ph, lp, d.phi + k.row0 * l, rows, l);
  __syncthreads();
  lower_abt(rows, dh, qs, dhp, ks, dhp, xx, cp);  // A = q_c K_cᵀ
  __syncthreads();
  const int64_t state = k.bh * d.chunks + k.ch;
  const float* sk = d.sk + state * dh * l;
  for (int x = threadIdx.x; x < rows * l; x += blockDim.x) {
    const int i = x / l, r = x % l;
    bm[i * lp + r] = dot_state(qs + i * dhp, dh, Gmat{sk, l, 1}, r) + tri_lower(xx, cp, i, ph, lp, r);
  }
  __syncthreads();
  const bool all_masked = batch_all_masked(d, k.b);
  const uint8_t* mask = d.mask ? d.mask + k.b * l : nullptr;
  for (int i = threadIdx.x; i < rows; i += blockDim.x)
    softmax_row(d, all_masked, mask, k.bh, k.r0 + i, k.r0 + i, bm + i * lp, bm + i * lp, gbs + i * lp, nullptr);
  lower_abt(rows, dh, os, dhp, vs, dhp, xx, cp);  // E = dO V_cᵀ (A was last read before the barrier)
  __syncthreads();
  // dB = dO S^Vᵀ + E Φ_c, with S^Vᵀ (dh x l) = S^K when tied.
  const Gmat svt = d.has_sv ? Gmat{d.sv + state * l * dh, 1, dh} : Gmat{sk, l, 1};
  for (int x = threadIdx.x; x < rows * l; x += blockDim.x) {
    const int i = x / l, r = x % l;
    gts[i * lp + r] = dot_state(os + i * dhp, dh, svt, r) + tri_lower(xx, cp, i, ph, lp, r);
    d.gb[(k.row0 + i) * l + r] = gbs[i * lp + r];
  }
  __syncthreads();
  // gT, a thread per row.
  for (int i = threadIdx.x; i < rows; i += blockDim.x) {
    const double t = double(k.r0 + i + 1), st = double(d.scale) / t;
    const float* b = bm + i * lp;
    float* g = gts + i * lp;
    const uint64_t base = uint64_t(k.row0 + i) * uint64_t(l);
    double D = 0;
    for (int r = 0; r < l; ++r) {
      const double keep = d.dropout ? double(keep_factor(d, d.seed + kBmSeedOffset, base + r)) : 1.0;
      D += double(b[r]) * (double(g[r]) * keep / t);
    }
    for (int r = 0; r < l; ++r) {
      const double keep = d.dropout ? double(keep_factor(d, d.seed + kBmSeedOffset, base + r)) : 1.0;
      g[r] = float(double(b[r]) * (double(g[r]) * keep / t - D) * st);
    }
  }
  __syncthreads();
  lower_abt(rows, l, gts, lp, ph, lp, xx, cp);  // H = gT Φ_cᵀ
  for (int x = threadIdx.x; x < rows * l; x += blockDim.x) d.gt[k.row0 * l + x] = gts[(x / l) * lp + x % l];
  __syncthreads();
  for (int x = threadIdx.x; x < rows * dh; x += blockDim.x) {
    const int i = x / dh, e = x % dh;
    d.dq[k.row0 * dh + x] = dot_state(gts + i * lp, l, Gmat{sk, 1, l}, e) + tri_lower(xx, cp, i, ks, dhp, e);
  }
  // The chunk's increments of the suffix sums, rows from the last up.
  float* rk = d.rk + state * dh * l;
  float* rv = d.tied ? nullptr : d.rv + state * dh * l;
  for (int x = threadIdx.x; x < dh * l; x += blockDim.x) {
    const int e = x / l, r = x % l;
    float a = 0.f, b = 0.f;
    for (int i = rows - 1; i >= 0; --i) a += qs[i * dhp + e] * gts[i * lp + r];
    for (int i = rows - 1; i >= 0; --i) b += os[i * dhp + e] * gbs[i * lp + r];
    if (rv) {
      rk[x] = a;
      rv[x] = b;
    } else {
      rk[x] = a + b;
    }
  }
}

// Pass 5 of the backward. grid BH x chunks. With R^K, R^Vᵀ the sums over the later chunks:
//   dk = Φ_c R^Kᵀ + Hᵀ q_c (tied: + Gᵀ dO, with R = R^K + R^Vᵀ);  dv = Φ_c R^V + Gᵀ dO
//   dΦ = K_c R^K + Aᵀ gT + V_c R^Vᵀ + Eᵀ gB;  dZ = dΦ φ'(Z) (dropout factor included)
//   dkc = pack_scale dZ pq;  dpq part = pack_scale dZᵀ kc_c
// Shared: q then kc, k, v, dO (c x dh; no v when tied), Φ, gT, gB, dZ (c x l), two c x c
// products (H and G, then A and E).
__global__ void __launch_bounds__(kMaxThreads) backward_keys_kernel(Dev d) {
  LUNA_DYNAMIC_SMEM(float, smem);
  const Chunk k = chunk_of_block(d);
  const int l = d.l, dh = d.dh, c = d.c, dhp = padded(dh), lp = padded(l), cp = padded(c), rows = k.rows;
  float* qs = smem;
  float* ks = qs + c * dhp;
  float* vs = d.tied ? ks : ks + c * dhp;
  float* os = (d.tied ? ks : vs) + c * dhp;
  float* ph = os + c * dhp;
  float* gts = ph + c * lp;
  float* gbs = gts + c * lp;
  float* dz = gbs + c * lp;
  float* x1 = dz + c * lp;
  float* x2 = x1 + c * cp;
  load_rows(qs, dhp, d.q + k.row0 * dh, rows, dh);
  load_rows(ks, dhp, d.k + k.row0 * dh, rows, dh);
  if (!d.tied) load_rows(vs, dhp, d.v + k.row0 * dh, rows, dh);
  load_rows(os, dhp, d.dout + k.row0 * dh, rows, dh);
  load_rows(ph, lp, d.phi + k.row0 * l, rows, l);
  load_rows(gts, lp, d.gt + k.row0 * l, rows, l);
  load_rows(gbs, lp, d.gb + k.row0 * l, rows, l);
  __syncthreads();
  lower_abt(rows, l, gts, lp, ph, lp, x1, cp);  // H = gT Φ_cᵀ
  lower_abt(rows, l, gbs, lp, ph, lp, x2, cp);  // G = gB Φ_cᵀ
  __syncthreads();
  const int64_t state = k.bh * d.chunks + k.ch;
  const float* rk = d.rk + state * dh * l;
  const float* rv = d.tied ? nullptr : d.rv + state * dh * l;
  for (int x = threadIdx.x; x < rows * dh; x += blockDim.x) {
    const int j = x / dh, e = x % dh;
    float g = dot_state(ph + j * lp, l, Gmat{rk, 1, l}, e);  // Φ_c R^Kᵀ
    g += tri_upper(x1, cp, j, rows, qs, dhp, e);
    if (d.tied) {
      g += tri_upper(x2, cp, j, rows, os, dhp, e);
    } else {
      d.dv[k.row0 * dh + x] = dot_state(ph + j * lp, l, Gmat{rv, 1, l}, e) + tri_upper(x2, cp, j, rows, os, dhp, e);
    }
    d.dk[k.row0 * dh + x] = g;
  }
  __syncthreads();
  lower_abt(rows, dh, qs, dhp, ks, dhp, x1, cp);  // A = q_c K_cᵀ
  lower_abt(rows, dh, os, dhp, vs, dhp, x2, cp);  // E = dO V_cᵀ
  __syncthreads();
  for (int x = threadIdx.x; x < rows * l; x += blockDim.x) {
    const int j = x / l, r = x % l;
    float g = dot_state(ks + j * dhp, dh, Gmat{rk, l, 1}, r);  // K_c R^K
    g += tri_upper(x1, cp, j, rows, gts, lp, r);
    if (!d.tied) g += dot_state(vs + j * dhp, dh, Gmat{rv, l, 1}, r);  // V_c R^Vᵀ
    g += tri_upper(x2, cp, j, rows, gbs, lp, r);
    dz[j * lp + r] = g * d.slope[(k.row0 + j) * l + r];
  }
  __syncthreads();
  // q is no longer needed: its rows take kc for the dpq part.
  load_rows(qs, dhp, d.kc + k.row0 * dh, rows, dh);
  const Gmat pq{d.pq + k.bh * l * dh, dh, 1};
  for (int x = threadIdx.x; x < rows * dh; x += blockDim.x) {
    const int j = x / dh, e = x % dh;
    d.dkc[k.row0 * dh + x] = d.pack_scale * dot_state(dz + j * lp, l, pq, e);
  }
  __syncthreads();
  float* part = d.dpq_part + state * l * dh;
  for (int x = threadIdx.x; x < l * dh; x += blockDim.x) {
    const int r = x / dh, e = x % dh;
    float acc = 0.f;
    for (int j = 0; j < rows; ++j) acc += dz[j * lp + r] * qs[j * dhp + e];
    part[x] = d.pack_scale * acc;
  }
}

// One decoding step (n = 1) per head; grid BH, block kStepThreads. q, k, v, kc are (BH, 1, dh),
// pq (BH, l, dh) already scaled; state_k (BH, dh, l) and state_v (BH, l, dh) hold the states
// after pos0 positions. As the chunked forward with a chunk of one row:
//   raw = q S^K + (q·k) Φ;  softmax;  out = gB S^V + (gB·Φ) v;  then S^K += kᵀΦ, S^V += Φᵀv.
// The dot products q·k and gB·Φ are short: every thread computes them itself, in one order,
// which saves a block reduction each. Shared: Φ and the logits (l each).
__global__ void __launch_bounds__(kStepThreads) step_kernel(Dev d, float* state_k, float* state_v) {
  LUNA_DYNAMIC_SMEM(float, smem);
  const int64_t bh = blockIdx.x, b = bh / d.h;
  const int l = d.l, dh = d.dh;
  float* ph = smem;
  float* pr = ph + l;
  const float *q = d.q + bh * dh, *kk = d.k + bh * dh, *v = d.v + bh * dh, *kc = d.kc + bh * dh;
  float* sk = state_k + bh * dh * l;
  float* sv = state_v + bh * l * dh;
  const Gmat pqt{d.pq + bh * l * dh, 1, dh};
  for (int r = threadIdx.x; r < l; r += blockDim.x) {
    float f;
    causal_phi_one(d.act, d.pack_scale * dot_state(kc, dh, pqt, r), &f, nullptr);
    ph[r] = f;
  }
  float a = 0.f;  // A = q·k
  for (int e = 0; e < dh; ++e) a += q[e] * kk[e];
  __syncthreads();
  for (int r = threadIdx.x; r < l; r += blockDim.x) pr[r] = dot_state(q, dh, Gmat{sk, l, 1}, r) + a * ph[r];
  __syncthreads();
  if (threadIdx.x == 0)
    softmax_row(d, batch_all_masked(d, b), d.mask ? d.mask + b * l : nullptr, bh, 0, d.pos0, pr, pr, pr,
                d.lse ? d.lse + bh : nullptr);
  __syncthreads();
  float g = 0.f;  // G = gB·Φ
  for (int r = 0; r < l; ++r) g += pr[r] * ph[r];
  for (int e = threadIdx.x; e < dh; e += blockDim.x) d.out[bh * dh + e] = dot_state(pr, l, Gmat{sv, dh, 1}, e) + g * v[e];
  __syncthreads();  // every read of the old states is done
  for (int x = threadIdx.x; x < dh * l; x += blockDim.x) sk[x] += kk[x / l] * ph[x % l];
  for (int x = threadIdx.x; x < l * dh; x += blockDim.x) sv[x] += ph[x / dh] * v[x % dh];
}

// ---- launchers ----------------------------------------------------------------------------------

enum class Kind { Forward, Backward, Prefill };

// Shared-memory bytes of the chunk kernels a call runs, for chunk length c.
size_t smem_bytes(Kind kind, int c, int l, int dh, bool tied) {
  const size_t x = size_t(c) * padded(dh), y = size_t(c) * padded(l), z = size_t(c) * padded(c);
  const size_t pass1 = x + y;
  const size_t fwd = (tied ? 2 : 3) * x + 2 * y + z;
  const size_t scores = (tied ? 3 : 4) * x + 4 * y + z;
  const size_t keys = (tied ? 3 : 4) * x + 4 * y + 2 * z;
  const size_t most = kind == Kind::Backward ? std::max({pass1, scores, keys}) : std::max(pass1, fwd);
  return most * sizeof(float);
}

// The chunk length: the request (the CPU's default when none), at most n, halved until the
// call's kernels fit in the device's shared memory.
int choose_chunk(Kind kind, const CausalParams<float>& p) {
  int64_t c = std::min<int64_t>(p.chunk > 0 ? p.chunk : kCausalChunk, p.n);
  const size_t limit = max_dynamic_smem();
  while (c > 1 && smem_bytes(kind, int(c), int(p.l), int(p.dh), p.tied()) > limit) c = (c + 1) / 2;
  if (smem_bytes(kind, int(c), int(p.l), int(p.dh), p.tied()) > limit)
    throw CudaError("cudaErrorInvalidValue", "causal: l = " + std::to_string(p.l) + ", dh = " + std::to_string(p.dh) +
                                                 " needs more shared memory than the device has");
  return int(c);
}

Dev make_dev(const CausalParams<float>& p, int c) {
  Dev d{};
  d.q = p.q, d.k = p.k, d.v = p.v, d.kc = p.kc, d.pq = p.pq, d.dout = p.dout, d.mask = p.mask;
  d.out = p.out, d.lse = p.lse, d.dq = p.dq, d.dk = p.dk, d.dv = p.dv, d.dkc = p.dkc;
  d.n = p.n, d.pos0 = 0, d.h = int(p.h), d.l = int(p.l), d.dh = int(p.dh), d.c = c;
  d.chunks = int(ceil_div(p.n, c));
  d.scale = float(p.scale), d.pack_scale = float(p.pack_scale), d.act = p.activation;
  d.tied = p.tied();
  d.has_sv = !d.tied;
  const DropoutMask<float> drop(p.dropout, p.seed);
  d.dropout = drop.active, d.seed = p.seed, d.threshold = drop.threshold, d.keep_scale = drop.keep_scale;
  return d;
}

// Scratch of one call: one allocation, handed back when the call's kernels are queued.
class Scratch {
 public:
  explicit Scratch(size_t floats) : p_(static_cast<float*>(device_alloc(floats * sizeof(float)))), next_(p_) {}
  ~Scratch() { device_free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* take(size_t floats) {
    float* r = next_;
    next_ += (floats + 63) / 64 * 64;  // 256-byte aligned pieces
    return r;
  }

 private:
  float* p_;
  float* next_;
};

size_t rounded(size_t floats) { return (floats + 63) / 64 * 64; }

dim3 chunk_grid(const Dev& d, int64_t BH) { return dim3(unsigned(BH * d.chunks)); }

void launch_scan(float* x, const float* init, float* total, int64_t BH, int chunks, int64_t size, bool reverse, bool prefix) {
  const int64_t threads = BH * size;
  LUNA_LAUNCH(dim3(unsigned(ceil_div(threads, kMaxThreads))), dim3(kMaxThreads), 0, stream(), scan_kernel)(
      x, init, total, BH, chunks, size, reverse, prefix);
  check_launch("causal scan_kernel");
}

// Passes 1-3 of the forward; for a prefill (Kind::Prefill) the scans start from states_k /
// states_v, the states before the call, and write the states after it back into them.
void run_forward(const CausalParams<float>& p, Kind kind, float* states_k, float* states_v) {
  const int c = choose_chunk(kind, p);
  Dev d = make_dev(p, c);
  const int64_t BH = p.B * p.h, S = p.dh * p.l;
  if (kind == Kind::Prefill) d.has_sv = true, d.pos0 = p.t0, d.dropout = false;
  Scratch s(rounded(BH * p.n * p.l) + (d.has_sv ? 2 : 1) * rounded(BH * d.chunks * S));
  d.phi = s.take(BH * p.n * p.l);
  d.sk = s.take(BH * d.chunks * S);
  d.sv = d.has_sv ? s.take(BH * d.chunks * S) : nullptr;
  const size_t smem = smem_bytes(kind, c, d.l, d.dh, d.tied);
  allow_dynamic_smem((const void*)&phi_states_kernel, smem);
  LUNA_LAUNCH(chunk_grid(d, BH), dim3(chunk_threads(d.c)), smem, stream(), phi_states_kernel)(d);
  check_launch("causal phi_states_kernel");
  launch_scan(d.sk, states_k, states_k, BH, d.chunks, S, false, true);
  if (d.has_sv) launch_scan(d.sv, states_v, states_v, BH, d.chunks, S, false, true);
  allow_dynamic_smem((const void*)&forward_chunk_kernel, smem);
  LUNA_LAUNCH(chunk_grid(d, BH), dim3(chunk_threads(d.c)), smem, stream(), forward_chunk_kernel)(d);
  check_launch("causal forward_chunk_kernel");
}

}  // namespace

void causal_forward(const CausalParams<float>& p) { run_forward(p, Kind::Forward, nullptr, nullptr); }

void causal_step(const CausalParams<float>& p) {
  if (p.n > 1) return run_forward(p, Kind::Prefill, p.state_k, p.state_v);
  Dev d = make_dev(p, 1);
  d.has_sv = true, d.pos0 = p.t0, d.dropout = false;
  const size_t smem = 2 * size_t(p.l) * sizeof(float);
  allow_dynamic_smem((const void*)step_kernel, smem);
  LUNA_LAUNCH(dim3(unsigned(p.B * p.h)), dim3(kStepThreads), smem, stream(), step_kernel)(d, p.state_k, p.state_v);
  check_launch("causal step_kernel");
}

void causal_backward(const CausalParams<float>& p) {
  const int c = choose_chunk(Kind::Backward, p);
  Dev d = make_dev(p, c);
  const int64_t BH = p.B * p.h, S = p.dh * p.l, rows = BH * p.n * p.l, states = BH * d.chunks * S;
  Scratch s(4 * rounded(rows) + (d.tied ? 3 : 5) * rounded(states));
  d.phi = s.take(rows), d.slope = s.take(rows), d.gt = s.take(rows), d.gb = s.take(rows);
  d.sk = s.take(states), d.sv = d.tied ? nullptr : s.take(states);
  d.rk = s.take(states), d.rv = d.tied ? nullptr : s.take(states);
  d.dpq_part = s.take(states);
  const size_t smem = smem_bytes(Kind::Backward, c, d.l, d.dh, d.tied);
  allow_dynamic_smem((const void*)&phi_states_kernel, smem);
  LUNA_LAUNCH(chunk_grid(d, BH), dim3(chunk_threads(d.c)), smem, stream(), phi_states_kernel)(d);
  check_launch("causal phi_states_kernel");
  launch_scan(d.sk, nullptr, nullptr, BH, d.chunks, S, false, true);
  if (!d.tied) launch_scan(d.sv, nullptr, nullptr, BH, d.chunks, S, false, true);
  allow_dynamic_smem((const void*)&backward_scores_kernel, smem);
  LUNA_LAUNCH(chunk_grid(d, BH), dim3(chunk_threads(d.c)), smem, stream(), backward_scores_kernel)(d);
  check_launch("causal backward_scores_kernel");
  launch_scan(d.rk, nullptr, nullptr, BH, d.chunks, S, true, true);
  if (!d.tied) launch_scan(d.rv, nullptr, nullptr, BH, d.chunks, S, true, true);
  allow_dynamic_smem((const void*)&backward_keys_kernel, smem);
  LUNA_LAUNCH(chunk_grid(d, BH), dim3(chunk_threads(d.c)), smem, stream(), backward_keys_kernel)(d);
  check_launch("causal backward_keys_kernel");
  launch_scan(d.dpq_part, nullptr, p.dpq, BH, d.chunks, S, false, false);
}

}  // namespace luna::cuda
