// Pieces shared by the pack and unpack kernels: how work is split (by problem size only, so
// results never depend on the thread count), per-batch mask biases, and small row helpers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention.h"

namespace luna {

// Rows of the long axis handled by one task. Fixed, so the split, and with it every
// floating-point summation order, is the same whatever the number of threads.
constexpr int64_t kLongAxisChunk = 1024;

// Rows of the long axis per inner tile: the logit tile (rows x short) stays near 64 KB.
inline int64_t inner_block(int64_t short_len) {
  const int64_t rows = (16384 / std::max<int64_t>(short_len, 1)) / 16 * 16;
  return std::clamp<int64_t>(rows, 16, 256);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Additive logit bias of one batch element's keys: 0 for a kept key, -inf for padding.
template <typename T>
void mask_to_bias(const uint8_t* mask, int64_t len, std::vector<T>& bias) {
  bias.resize(len);
  for (int64_t j = 0; j < len; ++j) bias[j] = mask[j] ? -std::numeric_limits<T>::infinity() : T(0);
}

// True when every key of one batch element is padding (mask is that element's [len] row, or
// nullptr for no mask). Only such rows take the "output 0, lse -inf" convention. A row whose
// logits are all -inf or NaN for another reason (a NaN or infinite query, say) is not masked:
// its softmax is NaN, as in PyTorch, and must not be mistaken for padding.
inline bool all_keys_masked(const uint8_t* mask, int64_t len) {
  if (mask == nullptr) return false;
  for (int64_t j = 0; j < len; ++j)
    if (!mask[j]) return false;
  return true;
}

// True when a row over these keys sees exactly one of them (mask is one batch element's [len]
// row, or nullptr). Its softmax is then the constant 1, so its dS is exactly 0: the backward
// sets it so rather than leave dP - D, the rounding difference of two dot products that are
// equal in exact arithmetic (they differ by an ulp once a dropout factor scales one of them).
inline bool single_visible_key(const uint8_t* mask, int64_t len) {
  if (mask == nullptr) return len == 1;
  int64_t visible = 0;
  for (int64_t j = 0; j < len && visible < 2; ++j) visible += !mask[j];
  return visible == 1;
}

}  // namespace luna
