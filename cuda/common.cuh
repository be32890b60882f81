// What every CUDA kernel file includes: the runtime (or, for the native checks on a machine
// without a GPU, the emulator in cuda/emu/), the launch and shared-memory macros that work under
// both, the library's stream, and small warp/block reductions.
//
// Rules that keep a kernel runnable under the emulator (cuda/emu/README.md says why):
//   - launch with LUNA_LAUNCH(grid, block, smem, stream, kernel)(args...), never <<<>>> directly;
//   - dynamic shared memory through LUNA_DYNAMIC_SMEM(type, name); static __shared__ arrays are fine;
//   - warp shuffles only where all lanes of the warp take part (full mask);
//   - the CUDA C math functions (expf, __expf, log1pf, fmaxf, rsqrtf, erff, ...), not std::;
//   - no inline PTX, wmma, cooperative groups or __constant__ memory.
#pragma once

#if defined(LUNA_CUDA_EMU)
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "../native/runtime/cuda_api.h"

#if defined(LUNA_CUDA_EMU)
#define LUNA_LAUNCH(grid, block, smem, stream, ...) ::luna_emu::Launcher(&__VA_ARGS__, grid, block, smem, #__VA_ARGS__)
#define LUNA_DYNAMIC_SMEM(type, name) type* name = ::luna_emu::dynamic_smem<type>()
#else
#define LUNA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define LUNA_DYNAMIC_SMEM(type, name)                          \
  extern __shared__ __align__(16) unsigned char luna_smem_[]; \
  type* name = reinterpret_cast<type*>(luna_smem_)
#endif

namespace luna::cuda {

// The library's one stream (created on first use).
cudaStream_t stream();
// Throws CudaError (with the runtime's error name) unless err is cudaSuccess; `what` names the call.
void check(cudaError_t err, const char* what);
// After a launch: a bad configuration (too many threads, too much shared memory) is reported
// at once by cudaGetLastError; `kernel` names the kernel in the error.
void check_launch(const char* kernel);
// Lets `kernel` use `bytes` of dynamic shared memory (needed above 48 KiB); cached per kernel.
void allow_dynamic_smem(const void* kernel, size_t bytes);
// The device's limit on dynamic shared memory per block, with the opt-in.
size_t max_dynamic_smem();
// The number of streaming multiprocessors (to size grids that split work across the device).
int multiprocessor_count();

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sum and maximum over the 32 lanes of a warp; every lane gets the result.
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` is 32 floats of shared memory; the call begins and ends with a barrier so it
// can be used repeatedly with the same scratch.
__device__ inline float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) total += scratch[w];  // fixed order: deterministic
  return total;
}
__device__ inline float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

}  // namespace luna::cuda
