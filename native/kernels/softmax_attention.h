// Parameters and entry points of the fused CPU softmax-attention kernels: the full-attention
// baseline Luna is compared with, built with the same care (same thread pool, same tile GEMM,
// same exp, same error policy).
//
// Per (batch, head): O = softmax(scale * Q K^T + key padding mask [+ causal mask]) V, with the
// row log-sum-exp saved so that the backward recomputes the probabilities instead of storing
// the n x m matrix (FlashAttention-2's structure, on the CPU; luna-math.md 5.1 is the math).
#pragma once

#include <cstdint>

namespace luna {

// One struct carries every tensor of a call. All tensors are dense, row-major, batch first.
template <typename T>
struct SoftmaxAttentionParams {
  const T* q = nullptr;          // [B, h, n, dh] queries (unscaled)
  const T* k = nullptr;          // [B, h, m, dh] keys
  const T* v = nullptr;          // [B, h, m, dh] values; == k when key and value are tied
  const uint8_t* mask = nullptr; // [B, m] key padding mask, 1 = padding; nullptr = no mask
  T* out = nullptr;              // [B, h, n, dh] attention output
  T* lse = nullptr;              // [B, h, n] row log-sum-exp of the scaled logits (-inf: row sees no key)
  // Backward only.
  const T* dout = nullptr;       // [B, h, n, dh] gradient of the output
  T* dq = nullptr;               // [B, h, n, dh]
  T* dk = nullptr;               // [B, h, m, dh]; receives dk + dv when tied (then dv == dk)
  T* dv = nullptr;               // [B, h, m, dh]
  int64_t B = 0, h = 0, n = 0, m = 0, dh = 0;
  double scale = 1.0;            // multiplies the logits
  // Causal: query i sees keys j <= i + (m - n), the two sequences aligned at their ends (for
  // n == m this is torch's is_causal). With n > m the first n - m queries see no key at all and
  // take the fully masked convention (output 0, lse -inf, zero gradient).
  bool causal = false;
  // Dropout on the attention probabilities (0 = none). Element (row i, key j) of (batch, head)
  // bh is kept or dropped by counter_bits(seed, (bh * n + i) * m + j), as in the pack and unpack
  // kernels, so the backward, the reference and every thread count see the same mask.
  double dropout = 0.0;
  uint64_t seed = 0;

  bool tied() const { return k == v; }
  // Query i sees keys j <= i + causal_offset() (when causal).
  int64_t causal_offset() const { return m - n; }
};

// Writes out and lse. Every element of both is overwritten.
template <typename T> void softmax_attention_forward(const SoftmaxAttentionParams<T>& p);
// Needs out and lse from the forward; writes dq, dk, dv (overwritten, never accumulated into).
template <typename T> void softmax_attention_backward(const SoftmaxAttentionParams<T>& p);

}  // namespace luna
