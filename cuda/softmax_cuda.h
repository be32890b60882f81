// The CUDA softmax-attention family: the flash-style baseline of native/kernels/softmax_attention.h
// on the GPU, with the same parameter struct (SoftmaxAttentionParams<float>, device pointers) and
// the same contract: key padding mask, causal mask aligned at the sequence ends, scale, dropout
// through counter_rng.h (the same element indexing, so the kept elements match the CPU's bit for
// bit), fully masked rows giving output 0, lse -inf and zero gradients. Plain C++ (no CUDA
// headers), so the bindings and the checks include it whether or not CUDA was compiled in; a
// CPU-only build links native/runtime/cuda_stubs/softmax_stub.cc, which throws
// CudaError "cudaErrorNotCompiled".
//
// Each launcher queues its kernels on luna::cuda::stream() and returns without waiting; a bad
// launch (or a head dimension whose tiles do not fit in the device's shared memory) throws
// luna::cuda::CudaError. Results are deterministic: no atomics, every sum has one fixed order.
#pragma once

#include "../native/kernels/softmax_attention.h"

namespace luna::cuda {

// Writes p.out [B,h,n,dh] and p.lse [B,h,n]; every element of both is overwritten.
void softmax_attention_forward(const SoftmaxAttentionParams<float>& p);

// Needs p.out and p.lse from the forward; writes p.dq, p.dk, p.dv (overwritten, never
// accumulated into). Tied k == v: dk == dv receives dk + dv.
void softmax_attention_backward(const SoftmaxAttentionParams<float>& p);

}  // namespace luna::cuda
