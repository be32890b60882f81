// Plain-loop nn building blocks (see nn_reference.h): one row or element at a time, every
// intermediate in T, so the float instantiation is the "plain float32 implementation".
#include "nn_reference.h"

#include <cmath>

#include "../kernels/counter_rng.h"

namespace luna {

// ---- layer norm ----

// x, out are (rows, d); mean, rstd are (rows); weight, bias are (d) or null.
template <typename T>
void reference_layer_norm_forward(const LayerNormParams<T>& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.d;
    T sum = 0;
    for (int64_t j = 0; j < p.d; ++j) sum += x[j];
    const T mean = sum / T(p.d);
    T sq = 0;
    for (int64_t j = 0; j < p.d; ++j) sq += (x[j] - mean) * (x[j] - mean);
    const T rstd = T(1) / std::sqrt(sq / T(p.d) + T(p.eps));
    p.mean[r] = mean;
    p.rstd[r] = rstd;
    for (int64_t j = 0; j < p.d; ++j) {
      T y = (x[j] - mean) * rstd;
      if (p.weight) y = y * p.weight[j];
      if (p.bias) y = y + p.bias[j];
      p.out[r * p.d + j] = y;
    }
  }
}

// x, dout, dx are (rows, d); mean, rstd are (rows); dweight, dbias are (d); any output may be null.
template <typename T>
void reference_layer_norm_backward(const LayerNormParams<T>& p) {
  for (int64_t j = 0; j < p.d; ++j) {
    if (p.dweight) p.dweight[j] = 0;
    if (p.dbias) p.dbias[j] = 0;
  }
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* x = p.x + r * p.d;
    const T* g = p.dout + r * p.d;
    const T mean = p.mean[r], rstd = p.rstd[r];
    T sum_gw = 0, sum_gwx = 0;
    for (int64_t j = 0; j < p.d; ++j) {
      const T xhat = (x[j] - mean) * rstd;
      const T gw = p.weight ? g[j] * p.weight[j] : g[j];
      sum_gw += gw;
      sum_gwx += gw * xhat;
      if (p.dweight) p.dweight[j] += g[j] * xhat;
      if (p.dbias) p.dbias[j] += g[j];
    }
    if (!p.dx) continue;
    const T a = sum_gw / T(p.d), b = sum_gwx / T(p.d);
    for (int64_t j = 0; j < p.d; ++j) {
      const T xhat = (x[j] - mean) * rstd;
      const T gw = p.weight ? g[j] * p.weight[j] : g[j];
      p.dx[r * p.d + j] = rstd * (gw - a - xhat * b);
    }
  }
}

// ---- activations and dropout (x, out, dout, dx are (n)) ----

template <typename T>
void reference_gelu_forward(const ActivationParams<T>& p) {
  for (int64_t i = 0; i < p.n; ++i) {
    const T x = p.x[i];
    p.out[i] = T(0.5) * x * (T(1) + std::erf(x / std::sqrt(T(2))));
  }
}

template <typename T>
void reference_gelu_backward(const ActivationParams<T>& p) {
  const T pi = T(3.14159265358979323846);
  for (int64_t i = 0; i < p.n; ++i) {
    const T x = p.x[i];
    const T cdf = T(0.5) * (T(1) + std::erf(x / std::sqrt(T(2))));
    const T pdf = std::exp(-x * x / T(2)) / std::sqrt(T(2) * pi);
    p.dx[i] = p.dout[i] * (cdf + x * pdf);
  }
}

template <typename T>
void reference_relu_forward(const ActivationParams<T>& p) {
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = p.x[i] < T(0) ? T(0) : p.x[i];
}

template <typename T>
void reference_relu_backward(const ActivationParams<T>& p) {
  for (int64_t i = 0; i < p.n; ++i) p.dx[i] = p.x[i] > T(0) ? p.dout[i] : T(0);
}

template <typename T>
void reference_dropout_apply(const DropoutParams<T>& p) {
  // p = 1 drops everything (the mask itself is built for p < 1 only).
  const DropoutMask<T> mask(p.p < 1 ? p.p : 0, p.seed);
  for (int64_t i = 0; i < p.n; ++i) p.out[i] = p.p >= 1 ? T(0) : p.in[i] * mask.factor(static_cast<uint64_t>(i));
}

// ---- embedding: ids (n), weight and dweight (V, d), out and dout (n, d) ----

template <typename T>
void reference_embedding_forward(const EmbeddingParams<T>& p) {
  for (int64_t i = 0; i < p.n; ++i)
    for (int64_t j = 0; j < p.d; ++j) p.out[i * p.d + j] = p.weight[p.ids[i] * p.d + j];
}

template <typename T>
void reference_embedding_backward(const EmbeddingParams<T>& p) {
  for (int64_t k = 0; k < p.V * p.d; ++k) p.dweight[k] = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    if (p.ids[i] == p.padding_idx) continue;
    for (int64_t j = 0; j < p.d; ++j) p.dweight[p.ids[i] * p.d + j] += p.dout[i * p.d + j];
  }
}

// ---- cross-entropy: logits and dlogits (N, C); targets, loss, lse, dloss (N) ----

template <typename T>
void reference_cross_entropy_forward(const CrossEntropyParams<T>& p) {
  const T s = T(p.label_smoothing);
  for (int64_t i = 0; i < p.N; ++i) {
    const T* z = p.logits + i * p.C;
    T m = z[0];
    for (int64_t c = 1; c < p.C; ++c) m = std::fmax(m, z[c]);
    T sum = 0, total = 0;
    for (int64_t c = 0; c < p.C; ++c) {
      sum += std::exp(z[c] - m);
      total += z[c];
    }
    const T lse = m + std::log(sum);
    p.lse[i] = lse;
    const int64_t t = p.targets[i];
    p.loss[i] = t == p.ignore_index ? T(0) : (T(1) - s) * (lse - z[t]) + s * (lse - total / T(p.C));
  }
}

template <typename T>
void reference_cross_entropy_backward(const CrossEntropyParams<T>& p) {
  const T s = T(p.label_smoothing);
  for (int64_t i = 0; i < p.N; ++i) {
    const int64_t t = p.targets[i];
    for (int64_t c = 0; c < p.C; ++c) {
      T g = 0;
      if (t != p.ignore_index) {
        const T prob = std::exp(p.logits[i * p.C + c] - p.lse[i]);
        const T target = (c == t ? T(1) - s : T(0)) + s / T(p.C);
        g = p.dloss[i] * (prob - target);
      }
      p.dlogits[i * p.C + c] = g;
    }
  }
}

#define LUNA_INSTANTIATE(T)                                                       \
  template void reference_layer_norm_forward<T>(const LayerNormParams<T>&);       \
  template void reference_layer_norm_backward<T>(const LayerNormParams<T>&);      \
  template void reference_gelu_forward<T>(const ActivationParams<T>&);            \
  template void reference_gelu_backward<T>(const ActivationParams<T>&);           \
  template void reference_relu_forward<T>(const ActivationParams<T>&);            \
  template void reference_relu_backward<T>(const ActivationParams<T>&);           \
  template void reference_dropout_apply<T>(const DropoutParams<T>&);              \
  template void reference_embedding_forward<T>(const EmbeddingParams<T>&);        \
  template void reference_embedding_backward<T>(const EmbeddingParams<T>&);       \
  template void reference_cross_entropy_forward<T>(const CrossEntropyParams<T>&); \
  template void reference_cross_entropy_backward<T>(const CrossEntropyParams<T>&);
LUNA_INSTANTIATE(float)
LUNA_INSTANTIATE(double)
#undef LUNA_INSTANTIATE

}  // namespace luna
