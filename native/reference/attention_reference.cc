// Plain-loop attention (see attention_reference.h). One query row at a time, no tiling, no
// vectorisation, accumulation in T: the double instantiation is the truth, the float one is the
// "plain float32 implementation" whose error bounds the fast kernels' error.
#include "attention_reference.h"

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

// Scaled logits of one query row against every key; masked keys get -inf.
template <typename T>
void row_logits(const AttentionParams<T>& p, const T* qi, const T* k, const uint8_t* mask,
                std::vector<T>& s) {
  for (int64_t j = 0; j < p.lk; ++j) {
    s[j] = (mask && mask[j]) ? -std::numeric_limits<T>::infinity()
                             : T(p.scale) * dot(qi, k + j * p.dh, p.dh);
  }
}

}  // namespace

// q is (B, h, lq, dh), k and v are (B, h, lk, dh), out is (B, h, lq, dh), lse is (B, h, lq).
template <typename T>
void reference_forward(const AttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const DropoutMask<T> drop(p.dropout, p.seed);
  std::vector<T> s(p.lk);
  for (int64_t b = 0; b < p.B; ++b) {
    const uint8_t* mask = p.mask ? p.mask + b * p.lk : nullptr;
    for (int64_t hh = 0; hh < p.h; ++hh) {
      const int64_t bh = b * p.h + hh;
      const T* k = p.k + bh * p.lk * p.dh;
      const T* v = p.v + bh * p.lk * p.dh;
      for (int64_t i = 0; i < p.lq; ++i) {
        const T* qi = p.q + (bh * p.lq + i) * p.dh;
        T* oi = p.out + (bh * p.lq + i) * p.dh;
        row_logits(p, qi, k, mask, s);
        T mx = neg_inf;
        for (int64_t j = 0; j < p.lk; ++j) mx = std::max(mx, s[j]);
        for (int64_t c = 0; c < p.dh; ++c) oi[c] = 0;
        if (mx == neg_inf) {  // every key masked: output 0 by convention
          p.lse[bh * p.lq + i] = neg_inf;
          continue;
        }
        T sum = 0;
        for (int64_t j = 0; j < p.lk; ++j) sum += std::exp(s[j] - mx);
        for (int64_t j = 0; j < p.lk; ++j) {
          const T pj = std::exp(s[j] - mx) / sum * (drop.active ? drop.factor(uint64_t(bh * p.lq + i) * p.lk + j) : T(1));
          for (int64_t c = 0; c < p.dh; ++c) oi[c] += pj * v[j * p.dh + c];
        }
        p.lse[bh * p.lq + i] = mx + std::log(sum);
      }
    }
  }
}

// Gradients with the probabilities recomputed from the saved lse (luna-math.md 5.1):
// dS = P * (dO V^T - D), D = rowsum(dO * O); dq = scale dS K; dk = scale dS^T q; dv = P^T dO.
template <typename T>
void reference_backward(const AttentionParams<T>& p) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const DropoutMask<T> drop(p.dropout, p.seed);
  std::vector<T> s(p.lk);
  const int64_t kv_size = p.B * p.h * p.lk * p.dh;
  for (int64_t x = 0; x < kv_size; ++x) p.dk[x] = 0;
  if (p.dv != p.dk)
    for (int64_t x = 0; x < kv_size; ++x) p.dv[x] = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    const uint8_t* mask = p.mask ? p.mask + b * p.lk : nullptr;
    for (int64_t hh = 0; hh < p.h; ++hh) {
      const int64_t bh = b * p.h + hh;
      const T* k = p.k + bh * p.lk * p.dh;
      const T* v = p.v + bh * p.lk * p.dh;
      T* dk = p.dk + bh * p.lk * p.dh;
      T* dv = p.dv + bh * p.lk * p.dh;
      for (int64_t i = 0; i < p.lq; ++i) {
        const int64_t row = bh * p.lq + i;
        const T* qi = p.q + row * p.dh;
        const T* oi = p.out + row * p.dh;
        const T* doi = p.dout + row * p.dh;
        T* dqi = p.dq + row * p.dh;
        for (int64_t c = 0; c < p.dh; ++c) dqi[c] = 0;
        const T lse = p.lse[row];
        if (lse == neg_inf) continue;  // fully masked row: no gradient anywhere
        row_logits(p, qi, k, mask, s);
        const T D = dot(doi, oi, p.dh);
        for (int64_t j = 0; j < p.lk; ++j) {
          if (mask && mask[j]) continue;
          const T pj = std::exp(s[j] - lse);
          const T mj = drop.active ? drop.factor(uint64_t(row) * p.lk + j) : T(1);
          const T dsj = pj * (mj * dot(doi, v + j * p.dh, p.dh) - D);
          for (int64_t c = 0; c < p.dh; ++c) {
            dqi[c] += T(p.scale) * dsj * k[j * p.dh + c];
            dk[j * p.dh + c] += T(p.scale) * dsj * qi[c];
            dv[j * p.dh + c] += pj * mj * doi[c];
          }
        }
      }
    }
  }
}

template void reference_forward<float>(const AttentionParams<float>&);
template void reference_forward<double>(const AttentionParams<double>&);
template void reference_backward<float>(const AttentionParams<float>&);
template void reference_backward<double>(const AttentionParams<double>&);

}  // namespace luna
