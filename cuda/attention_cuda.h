// The CUDA attention family: pack and unpack attention, forward and backward, with the same
// contracts as the CPU kernels in native/kernels/attention.h (AttentionParams), float32 only,
// every pointer a device pointer. Plain C++ (no CUDA headers), so the bindings and the checks
// include it whether or not CUDA was compiled in; a CPU-only build links the stubs in
// native/runtime/cuda_stubs/attention_stub.cc, which throw CudaError "cudaErrorNotCompiled".
//
// Every launcher queues its kernels on luna::cuda::stream() and returns without waiting; a bad
// launch throws luna::cuda::CudaError. Results are deterministic: how the work is split depends
// on the problem's sizes only (never on the device), and every sum over blocks is a partial per
// block added in a fixed order afterwards (no float atomics).
//
// Conventions as on the CPU: masked keys (mask 1) get no probability; a row whose keys are all
// masked gives output 0, lse -inf and no gradient anywhere; dropout keeps element (row i, key j)
// of (batch, head) bh by counter_bits(seed, (bh * lq + i) * lk + j), so the device regenerates
// the CPU's mask bit for bit; k == v (tied) reads the tensor once and dk receives dk + dv.
// Head dims up to 256 are supported (a larger dh throws cudaErrorInvalidValue).
#pragma once

#include <cstdint>

#include "../native/kernels/attention.h"

namespace luna::cuda {

// Pack: few queries (l) over a long key axis (m). The key axis is split across blocks; each
// block runs an online softmax over its keys and the partial results are merged in split order.
void pack_forward(const AttentionParams<float>& p);
void pack_backward(const AttentionParams<float>& p);

// Unpack: many queries (n) over few keys (l). One block per tile of query rows holds the keys
// and values in shared memory (tiled when l is large) and finishes each row in one pass.
void unpack_forward(const AttentionParams<float>& p);
void unpack_backward(const AttentionParams<float>& p);

// The largest head dim the kernels take.
constexpr int64_t kAttentionMaxHeadDim = 256;

// ---- for the checks --------------------------------------------------------------------------
// The launchers cut the long axis into splits (forward) and both axes into chunks (backward)
// from the sizes. With tiles > 0 every split and chunk spans that many tiles instead (the last
// one fewer), so that small problems run the multi-tile, merge and partial-sum paths; 0 restores
// the default. A process-wide setting for the checks, not for concurrent use.
void attention_force_chunk_tiles(int tiles);

}  // namespace luna::cuda
