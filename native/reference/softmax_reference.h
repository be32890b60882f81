// Plain-loop softmax attention, forward and backward, with the fast kernels' parameters
// (padding mask, causal mask, dropout through the same counter_rng mask): the truth the
// kernels in native/kernels/softmax_attention.cc are checked against. Instantiated for double
// (the reference) and for float (a plain float32 implementation of the same math, whose error
// sets the tolerance of the fast kernel). Slow and obvious on purpose.
#pragma once

#include "../kernels/softmax_attention.h"

namespace luna {

template <typename T> void softmax_reference_forward(const SoftmaxAttentionParams<T>& p);
template <typename T> void softmax_reference_backward(const SoftmaxAttentionParams<T>& p);

}  // namespace luna
