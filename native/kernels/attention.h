// Parameters and entry points of the fused CPU attention kernels (pack and unpack).
//
// Both ops compute O = softmax(scale * Q K^T, key padding mask) V per (batch, head) and save the
// row log-sum-exp, so the backward can recompute the probabilities instead of storing them.
// "pack" is laid out for few queries and many keys (Luna's l queries over the sequence), "unpack"
// for many queries and few keys (every position over the l packed rows). Both are correct for
// any sizes; they differ in how the work is tiled and split across threads.
#pragma once

#include <cstdint>

namespace luna {

// One struct carries every tensor of a call. All tensors are dense, row-major, batch first.
template <typename T>
struct AttentionParams {
  const T* q = nullptr;          // [B, h, lq, dh] queries (unscaled)
  const T* k = nullptr;          // [B, h, lk, dh] keys
  const T* v = nullptr;          // [B, h, lk, dh] values; == k when key and value are tied
  const uint8_t* mask = nullptr; // [B, lk] key padding mask, 1 = padding; nullptr = no mask
  T* out = nullptr;              // [B, h, lq, dh] attention output
  T* lse = nullptr;              // [B, h, lq] row log-sum-exp of the scaled logits (-inf: all masked)
  // Backward only.
  const T* dout = nullptr;       // [B, h, lq, dh] gradient of the output
  T* dq = nullptr;               // [B, h, lq, dh]
  T* dk = nullptr;               // [B, h, lk, dh]; receives dk + dv when tied (then dv == dk)
  T* dv = nullptr;               // [B, h, lk, dh]
  int64_t B = 0, h = 0, lq = 0, lk = 0, dh = 0;
  double scale = 1.0;            // multiplies the logits
  // Dropout on the attention probabilities (0 = none). Element (row i, key j) of (batch, head)
  // bh is kept or dropped by counter_bits(seed, (bh * lq + i) * lk + j), so the backward, the
  // reference and every thread count see the same mask.
  double dropout = 0.0;
  uint64_t seed = 0;

  bool tied() const { return k == v; }
};

template <typename T> void pack_forward(const AttentionParams<T>& p);
template <typename T> void pack_backward(const AttentionParams<T>& p);
template <typename T> void unpack_forward(const AttentionParams<T>& p);
template <typename T> void unpack_backward(const AttentionParams<T>& p);

}  // namespace luna
