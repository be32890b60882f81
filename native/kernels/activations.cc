// Elementwise activations (exact GELU, ReLU) and inverted dropout, forward and backward.
// Each splits its n elements into fixed-size blocks, one parallel task per block; an element's
// result depends only on that element, so any thread count gives the same bits.
#include <algorithm>
#include <cmath>

#include "../runtime/thread_pool.h"
#include "counter_rng.h"
#include "nn_kernels.h"

namespace luna {

namespace {

constexpr int64_t kBlock = 32768;

// Runs body(i0, i1) over [0, n) in blocks of kBlock elements.
template <typename Body>
void for_blocks(int64_t n, const Body& body) {
  const int64_t tasks = (n + kBlock - 1) / kBlock;
  parallel_for(tasks, [&](int64_t t) { body(t * kBlock, std::min(n, (t + 1) * kBlock)); });
}

// The exact GELU, PyTorch's default approximate='none':
//   gelu(x) = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2.
// The erfc form keeps full relative accuracy in the negative tail, where 1 + erf(..) cancels.
// Evaluated in the element type: float32 uses erfcf/expf, whose error is about an ulp.
template <typename T>
inline T normal_cdf(T x) {
  const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
  return static_cast<T>(0.5) * std::erfc(-x * inv_sqrt2);
}

template <typename T>
inline T gelu_value(T x) {
  return x * normal_cdf(x);
}

// d gelu / dx = Phi(x) + x * phi(x), phi the standard normal density.
template <typename T>
inline T gelu_slope(T x) {
  const T inv_sqrt_2pi = static_cast<T>(0.39894228040143267794);
  const T cdf = normal_cdf(x);
  const T pdf = inv_sqrt_2pi * std::exp(static_cast<T>(-0.5) * x * x);
  return cdf + x * pdf;
}

}  // namespace

template <typename T>
void gelu_forward(const ActivationParams<T>& p) {
  // x, out are (n).
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.out[i] = gelu_value(p.x[i]);
  });
}

template <typename T>
void gelu_backward(const ActivationParams<T>& p) {
  // x, dout, dx are (n).
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.dx[i] = p.dout[i] * gelu_slope(p.x[i]);
  });
}

template <typename T>
void relu_forward(const ActivationParams<T>& p) {
  // x, out are (n). NaN stays NaN (the comparison is false), as in PyTorch.
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T x = p.x[i];
      p.out[i] = x < static_cast<T>(0) ? static_cast<T>(0) : x;
    }
  });
}

template <typename T>
void relu_backward(const ActivationParams<T>& p) {
  // x, dout, dx are (n). The slope at exactly 0 is taken as 0 (PyTorch's convention).
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.dx[i] = p.x[i] > static_cast<T>(0) ? p.dout[i] : static_cast<T>(0);
  });
}

template <typename T>
void dropout_apply(const DropoutParams<T>& p) {
  // in, out are (n). p = 1 is handled apart: the mask's 32-bit threshold would still keep one
  // element in 2^32 and its scale would be infinite. Otherwise a dropped element is in * 0, so
  // an Inf or NaN input stays NaN, as in PyTorch.
  if (p.p >= 1) {
    for_blocks(p.n, [&](int64_t i0, int64_t i1) { std::fill(p.out + i0, p.out + i1, static_cast<T>(0)); });
    return;
  }
  const DropoutMask<T> mask(p.p, p.seed);
  for_blocks(p.n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) p.out[i] = p.in[i] * mask.factor(static_cast<uint64_t>(i));
  });
}

template void gelu_forward<float>(const ActivationParams<float>&);
template void gelu_forward<double>(const ActivationParams<double>&);
template void gelu_backward<float>(const ActivationParams<float>&);
template void gelu_backward<double>(const ActivationParams<double>&);
template void relu_forward<float>(const ActivationParams<float>&);
template void relu_forward<double>(const ActivationParams<double>&);
template void relu_backward<float>(const ActivationParams<float>&);
template void relu_backward<double>(const ActivationParams<double>&);
template void dropout_apply<float>(const DropoutParams<float>&);
template void dropout_apply<double>(const DropoutParams<double>&);

}  // namespace luna
