// Plain-loop attention, forward and backward: the truth the fast kernels are checked against.
// Instantiated for double (the reference) and for float (a plain float32 implementation of the
// same math, whose error sets the tolerance of the fast kernels). Slow and obvious on purpose.
#pragma once

#include "../kernels/attention.h"

namespace luna {

template <typename T> void reference_forward(const AttentionParams<T>& p);
template <typename T> void reference_backward(const AttentionParams<T>& p);

}  // namespace luna
