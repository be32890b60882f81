// Plain-loop causal Luna attention, forward and backward (luna-math.md 3 and 5.3): the truth the
// fused kernels are checked against. Instantiated for double (the reference) and for float (a
// plain float32 implementation of the same math, whose error sets the fast kernels' tolerance).
// The direct prefix form: the states S^K_t, S^V_t are accumulated one position at a time and the
// backward keeps all n of them. Slow and obvious on purpose.
#pragma once

#include "../kernels/causal_luna.h"

namespace luna {

// Same parameters as causal_forward / causal_backward (chunk, state_k, state_v, t0 unused).
template <typename T> void causal_reference_forward(const CausalParams<T>& p);
template <typename T> void causal_reference_backward(const CausalParams<T>& p);

}  // namespace luna
