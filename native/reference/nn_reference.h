// Plain-loop nn building blocks, forward and backward: the truth the fast kernels in
// native/kernels/ are checked against. Same parameter structs as the kernels (nn_kernels.h).
// Instantiated for double (the reference) and for float (a plain float32 implementation of the
// same math, whose error sets the tolerance of the fast kernels). Single-threaded, every
// accumulation in T, no tricks: slow and obvious on purpose.
#pragma once

#include "../kernels/nn_kernels.h"

namespace luna {

template <typename T> void reference_layer_norm_forward(const LayerNormParams<T>& p);
template <typename T> void reference_layer_norm_backward(const LayerNormParams<T>& p);
template <typename T> void reference_gelu_forward(const ActivationParams<T>& p);
template <typename T> void reference_gelu_backward(const ActivationParams<T>& p);
template <typename T> void reference_relu_forward(const ActivationParams<T>& p);
template <typename T> void reference_relu_backward(const ActivationParams<T>& p);
template <typename T> void reference_dropout_apply(const DropoutParams<T>& p);
template <typename T> void reference_embedding_forward(const EmbeddingParams<T>& p);
template <typename T> void reference_embedding_backward(const EmbeddingParams<T>& p);
template <typename T> void reference_cross_entropy_forward(const CrossEntropyParams<T>& p);
template <typename T> void reference_cross_entropy_backward(const CrossEntropyParams<T>& p);

}  // namespace luna
