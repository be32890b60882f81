// Parameters and entry points of the fused causal Luna attention on the CPU (luna-math.md
// section 3 "Causal variant", 5.3, 5.4).
//
// Per (batch, head), with 1-based positions t and Φ = dropout(φ(Z)), Z = pack_scale · kc·pqᵀ:
//   S^K_t = Σ_{j≤t} K_jᵀ Φ_j  [dh x l]        S^V_t = Σ_{j≤t} Φ_jᵀ V_j  [l x dh]
//   T_t = scale · q_t·S^K_t / t  (−inf on masked P slots);  Bm_t = softmax(T_t);  B̃ = dropout(Bm)
//   O_t = B̃_t·S^V_t / t
// The kernels walk each (batch, head) in chunks of rows, carrying S^K and S^V; the [n, l, dh]
// prefix tensor is never formed. Forward, backward and incremental decoding share the chunk code,
// so a backward recomputes exactly the forward's probabilities.
#pragma once

#include <cstdint>

namespace luna {

// φ, the feature map applied to the pack logits Z.
enum class CausalActivation {
  // softplus with β = ln 2: φ(z) = log2(1 + 2^z), φ'(z) = sigmoid(βz); like PyTorch, φ(z) = z
  // (and φ' = 1) where βz > 20.
  Softplus = 0,
  // elu + 1: φ(z) = z + 1 for z > 0, e^z otherwise; φ'(z) = 1 for z > 0, e^z otherwise.
  EluPlusOne = 1,
};

// One struct carries every tensor of a call. All tensors are dense, row-major, batch first.
// The float type T is float or double; states and accumulators are kept in T.
template <typename T>
struct CausalParams {
  const T* q = nullptr;           // [B, h, n, dh] unpack queries (unscaled projection)
  const T* k = nullptr;           // [B, h, n, dh] keys
  const T* v = nullptr;           // [B, h, n, dh] values; == k when key and value are tied
  const T* kc = nullptr;          // [B, h, n, dh] pack keys (the pc_proj projection)
  const T* pq = nullptr;          // [B, h, l, dh] pack queries (unscaled; see pack_scale)
  const uint8_t* mask = nullptr;  // [B, l] P-slot padding mask, 1 = masked; nullptr = none.
                                  // It masks the unpack logits T only.
  // Forward and step outputs.
  T* out = nullptr;               // [B, h, n, dh]
  T* lse = nullptr;               // [B, h, n] log-sum-exp of the logits T (−inf: every slot
                                  // masked); nullptr = not wanted
  // Backward only. The backward recomputes the chunk-start states and the probabilities itself,
  // so it needs neither out nor lse.
  const T* dout = nullptr;        // [B, h, n, dh] gradient of out
  T* dq = nullptr;                // [B, h, n, dh]
  T* dk = nullptr;                // [B, h, n, dh]; receives dk + dv when tied (then dv == dk)
  T* dv = nullptr;                // [B, h, n, dh]
  T* dkc = nullptr;               // [B, h, n, dh]
  T* dpq = nullptr;               // [B, h, l, dh]
  // Incremental decoding only (causal_step): the states after `t0` earlier positions, read and
  // updated in place. The call's n rows are positions t0+1 .. t0+n.
  T* state_k = nullptr;           // [B, h, dh, l] S^K
  T* state_v = nullptr;           // [B, h, l, dh] S^V
  int64_t t0 = 0;

  int64_t B = 0, h = 0, n = 0, l = 0, dh = 0;
  double scale = 1.0;             // multiplies the unpack logits T
  double pack_scale = 1.0;        // multiplies the pack logits Z (the op passes scale for both;
                                  // decoding passes 1 with pq already scaled)
  CausalActivation activation = CausalActivation::Softplus;
  // Dropout (0 = none; forward and backward only). One mask on Φ, shared by both aggregations:
  // element (row j, slot r) of (batch, head) bh is kept by counter_bits(seed, (bh*n + j)*l + r).
  // One mask on Bm, from the second stream counter_bits(seed + kBmSeedOffset, same index).
  double dropout = 0.0;
  uint64_t seed = 0;
  // Rows per chunk; 0 picks kCausalChunk. Any value >= 1 gives the same result up to rounding
  // (tests use small odd chunks); it never depends on the thread count.
  int64_t chunk = 0;

  bool tied() const { return k == v; }
};

// The default chunk length, chosen by measurement (bench/bench_causal.cc, l = 16, dh = 64).
constexpr int64_t kCausalChunk = 64;

// Added to the seed for the Bm dropout stream. Callers pass seeds below 2^53, so the two
// streams never coincide.
constexpr uint64_t kBmSeedOffset = uint64_t(1) << 62;

// out, lse from q, k, v, kc, pq.
template <typename T> void causal_forward(const CausalParams<T>& p);
// dq, dk, dv, dkc, dpq from the forward's inputs and dout.
template <typename T> void causal_backward(const CausalParams<T>& p);
// Incremental decoding: out (and lse if given) for positions t0+1 .. t0+n, starting from and
// updating state_k / state_v. pq is used as given (pass the scaled pq and pack_scale = 1). No
// dropout. n > 1 is a chunked prefill.
template <typename T> void causal_step(const CausalParams<T>& p);

}  // namespace luna
