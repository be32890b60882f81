// The nn building blocks on the GPU: layer norm, GELU/ReLU, dropout, embedding and softmax
// cross-entropy, forward and backward. Plain C++ (no CUDA headers): the bindings and the native
// checks include it in every build. Each launcher takes the CPU kernel's parameter struct
// (native/kernels/nn_kernels.h) with device pointers, float32 only, queues its kernels on
// luna::cuda::stream(), never synchronises, and throws luna::cuda::CudaError on a failed launch.
// The kernels live in cuda/nn.cu; a CPU-only build links native/runtime/cuda_stubs/nn_stub.cc,
// whose launchers throw "cudaErrorNotCompiled".
//
// Same results as the CPU kernels, up to float32 rounding (the CPU accumulates layer norm and
// cross-entropy sums in double, these kernels in float32 with tree reductions), except where
// bitwise equality is promised below. Every reduction has a fixed order: the same inputs give the
// same bits on every run.
//
// Ids and targets: the CPU binding checks them on the host; here they are device arrays, and
// reading them back would stall the stream, so the CUDA path trusts lib/'s validation. A bad
// value never makes a kernel touch memory outside its arrays: an embedding id outside [0, V)
// gives a NaN output row in the forward and is skipped in the backward; a target outside [0, C)
// that is not ignore_index gives a NaN loss and a NaN gradient row.
#pragma once

#include "../native/kernels/nn_kernels.h"

namespace luna::cuda {

// x, out: (rows, d); weight, bias: (d) or null; writes mean and rstd (rows), like the CPU.
void layer_norm_forward(const LayerNormParams<float>& p);
// Reads x, dout (rows, d), weight (d) or null, and the forward's mean and rstd. Writes whichever of
// dx (rows, d), dweight (d), dbias (d) are not null. dweight/dbias: per-block partials over fixed
// row blocks, added in block order (no atomics).
void layer_norm_backward(const LayerNormParams<float>& p);

// Elementwise over n: exact GELU (erfc form, as the CPU) and ReLU; the backward reads x.
void gelu_forward(const ActivationParams<float>& p);
void gelu_backward(const ActivationParams<float>& p);
void relu_forward(const ActivationParams<float>& p);
void relu_backward(const ActivationParams<float>& p);

// Inverted dropout with the CPU's counter RNG (counter_rng.h): the mask is bitwise the CPU's for
// the same (seed, element index), and so is the output. Forward (x -> out) and backward
// (dout -> dx) are the same map.
void dropout_apply(const DropoutParams<float>& p);

// ids: (n) int32 on the device; weight (V, d); out (n, d).
void embedding_forward(const EmbeddingParams<float>& p);
// Overwrites dweight (V, d) with the scatter-add of dout (n, d) by id, the padding_idx row zero.
// Positions are sorted by (id, position) on the device; then each vocabulary row is summed by one
// warp in ascending position order: bitwise the CPU kernel's result. Scratch: 8 bytes a position.
void embedding_backward(const EmbeddingParams<float>& p);

// logits (N, C); targets (N) int32 on the device; writes loss and lse (N).
void cross_entropy_forward(const CrossEntropyParams<float>& p);
// Reads logits, targets, the forward's lse and dloss (N); writes dlogits (N, C).
void cross_entropy_backward(const CrossEntropyParams<float>& p);

}  // namespace luna::cuda
