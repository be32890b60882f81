// Plain-loop softmax attention (see softmax_reference.h). One query row at a time over every
// key it can see, no tiling, no vectorisation, accumulation in T.
#include "softmax_reference.h"

#include <cmath>
#include <limits>
#include <vector>

#include "../kernels/counter_rng.h"

namespace luna {

namespace {

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Whether query i of batch element b may attend to key j: not padding, and under the causal
// mask not after i + (m - n) (the sequences aligned at their ends).
template <typename T>
bool visible(const SoftmaxAttentionParams<T>& p, int64_t b, int64_t i, int64_t j) {
  if (p.mask && p.mask[b * p.m + j]) return false;
  return !p.causal || j <= i + p.causal_offset();
}

}  // namespace

// q is (B, h, n, dh), k and v are (B, h, m, dh), out is (B, h, n, dh), lse is (B, h, n).
// A row that sees no key gets output 0 and lse -inf.
template <typename T>
void softmax_reference_forward(const SoftmaxAttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const DropoutMask<T> drop(p.dropout, p.seed);
  std::vector<T> s(p.m);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t hh = 0; hh < p.h; ++hh) {
      const int64_t bh = b * p.h + hh;
      const T* k = p.k + bh * p.m * p.dh;
      const T* v = p.v + bh * p.m * p.dh;
      for (int64_t i = 0; i < p.n; ++i) {
        const int64_t row = bh * p.n + i;
        const T* qi = p.q + row * p.dh;
        T* oi = p.out + row * p.dh;
        for (int64_t c = 0; c < p.dh; ++c) oi[c] = 0;
        int64_t seen = 0;
        T mx = neg_inf;
        for (int64_t j = 0; j < p.m; ++j) {
          if (!visible(p, b, i, j)) continue;
          s[j] = T(p.scale) * dot(qi, k + j * p.dh, p.dh);
          mx = std::max(mx, s[j]);
          ++seen;
        }
        if (seen == 0) {  // fully masked row: output 0 by convention
          p.lse[row] = neg_inf;
          continue;
        }
        // A visible row whose logits are all -inf (or NaN) gets NaN from exp(-inf - -inf).
        T sum = 0;
        for (int64_t j = 0; j < p.m; ++j)
          if (visible(p, b, i, j)) sum += std::exp(s[j] - mx);
        for (int64_t j = 0; j < p.m; ++j) {
          if (!visible(p, b, i, j)) continue;
          const T f = drop.active ? drop.factor(uint64_t(row) * uint64_t(p.m) + uint64_t(j)) : T(1);
          const T pj = std::exp(s[j] - mx) / sum * f;
          for (int64_t c = 0; c < p.dh; ++c) oi[c] += pj * v[j * p.dh + c];
        }
        p.lse[row] = mx + std::log(sum);
      }
    }
}

// luna-math.md 5.1 with the probabilities recomputed from the saved lse:
// dS = P * (F * dO V^T - D), D = rowsum(dO * O), F the dropout factor; dq = scale dS K;
// dk = scale dS^T q; dv = (F P)^T dO. Tied (dk == dv): both land in the one buffer.
template <typename T>
void softmax_reference_backward(const SoftmaxAttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const DropoutMask<T> drop(p.dropout, p.seed);
  const int64_t kv_size = p.B * p.h * p.m * p.dh;
  for (int64_t x = 0; x < kv_size; ++x) p.dk[x] = 0;
  if (p.dv != p.dk)
    for (int64_t x = 0; x < kv_size; ++x) p.dv[x] = 0;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t hh = 0; hh < p.h; ++hh) {
      const int64_t bh = b * p.h + hh;
      const T* k = p.k + bh * p.m * p.dh;
      const T* v = p.v + bh * p.m * p.dh;
      T* dk = p.dk + bh * p.m * p.dh;
      T* dv = p.dv + bh * p.m * p.dh;
      for (int64_t i = 0; i < p.n; ++i) {
        const int64_t row = bh * p.n + i;
        const T* qi = p.q + row * p.dh;
        const T* doi = p.dout + row * p.dh;
        T* dqi = p.dq + row * p.dh;
        for (int64_t c = 0; c < p.dh; ++c) dqi[c] = 0;
        const T lse = p.lse[row];
        if (lse == neg_inf) continue;  // fully masked row: no gradient anywhere
        const T D = dot(doi, p.out + row * p.dh, p.dh);
        for (int64_t j = 0; j < p.m; ++j) {
          if (!visible(p, b, i, j)) continue;
          const T pj = std::exp(T(p.scale) * dot(qi, k + j * p.dh, p.dh) - lse);
          const T f = drop.active ? drop.factor(uint64_t(row) * uint64_t(p.m) + uint64_t(j)) : T(1);
          const T dsj = pj * (f * dot(doi, v + j * p.dh, p.dh) - D);
          for (int64_t c = 0; c < p.dh; ++c) {
            dqi[c] += T(p.scale) * dsj * k[j * p.dh + c];
            dk[j * p.dh + c] += T(p.scale) * dsj * qi[c];
            dv[j * p.dh + c] += pj * f * doi[c];
          }
        }
      }
    }
}

template void softmax_reference_forward<float>(const SoftmaxAttentionParams<float>&);
template void softmax_reference_forward<double>(const SoftmaxAttentionParams<double>&);
template void softmax_reference_backward<float>(const SoftmaxAttentionParams<float>&);
template void softmax_reference_backward<double>(const SoftmaxAttentionParams<double>&);

}  // namespace luna
