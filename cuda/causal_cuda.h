// Causal Luna attention on the GPU (cuda/causal.cu): the same entry points and parameter struct
// as the CPU kernels in native/kernels/causal_luna.h, float32 only, every pointer a device
// pointer (mask included). Plain C++: the bindings and the checks include it without CUDA.
//
// Each launcher queues its kernels on luna::cuda::stream() and returns without synchronising;
// errors are luna::cuda::CudaError. Semantics are the CPU's, with two differences of detail:
//   - `chunk` is a request: the kernels may use fewer rows per chunk when a chunk of that length
//     would not fit in the device's shared memory (results differ only by rounding, as between
//     any two chunk lengths on the CPU);
//   - the scratch memory (Φ, chunk-start states, ...) comes from the caching allocator.
#pragma once

#include "../native/kernels/causal_luna.h"

namespace luna::cuda {

// out, lse (optional) from q, k, v, kc, pq; dropout on Φ and Bm as on the CPU (same mask bits).
void causal_forward(const CausalParams<float>& p);
// dq, dk, dv (dk == dv when k == v: receives dk + dv), dkc, dpq from the forward's inputs and dout.
void causal_backward(const CausalParams<float>& p);
// Incremental decoding: out (and lse) for positions t0+1 .. t0+n from state_k [B,h,dh,l] and
// state_v [B,h,l,dh], which are updated in place. pq is the scaled pack query (pack_scale 1).
void causal_step(const CausalParams<float>& p);

}  // namespace luna::cuda
