// A small CUDA emulator: enough of the CUDA C++ language and runtime to run this project's kernels
// on the CPU, one block at a time, every thread a fiber. It exists so that the kernels' logic
// (indexing, tiling, reductions, barriers, shuffles) is checked against the CPU kernels on every
// machine, including CI's, which has nvcc but no GPU. It says nothing about speed, and a data race
// that needs real concurrency can hide in it; bench/gpu-check.sh on a GPU is the final word.
//
// How it runs a kernel: the threads of a block are fibers (ucontext) on one OS thread. Each runs
// until it reaches a barrier (__syncthreads, a warp shuffle, __syncwarp) or returns; when every
// live thread of the block (or of the warp) waits at the barrier, they all go on. A thread that
// reads shared memory another thread writes without a barrier in between sees the old value, so a
// missing __syncthreads shows up as a wrong result instead of passing by luck. Blocks run one
// after another, which is why `__shared__` can be `static` here. Dynamic shared memory is filled
// with NaN bytes before each launch, so a read of an unwritten element shows too.
//
// Kernel files include this through cuda/common.cuh when LUNA_CUDA_EMU is defined; the rules in
// that header (LUNA_LAUNCH, LUNA_DYNAMIC_SMEM, full-warp shuffles) are what make a kernel run here.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

// ---- the language ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

namespace luna_emu {
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
void sync_block();
void sync_warp();
uint64_t exchange(uint64_t bits, int src_lane);  // a lane's 8 bytes, read by another lane
int lane_id();
int warp_lanes();  // lanes in the calling thread's warp (the last warp of a block may be short)
}  // namespace luna_emu

#define threadIdx (::luna_emu::thread_idx())
#define blockIdx (::luna_emu::block_idx())
#define blockDim (::luna_emu::block_dim())
#define gridDim (::luna_emu::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads() { ::luna_emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::luna_emu::sync_warp(); }

namespace luna_emu {
template <typename T>
T shuffle_from(T v, int src_lane) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = exchange(bits, src_lane);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace luna_emu

// Lane arithmetic as the hardware does it: a source outside the caller's width segment (or past
// the end of a short warp) gives the caller its own value.
template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = ::luna_emu::lane_id(), base = lane & ~(width - 1);
  return ::luna_emu::shuffle_from(v, base + (src & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = ::luna_emu::lane_id(), base = lane & ~(width - 1);
  const int src = lane ^ mask;
  return ::luna_emu::shuffle_from(v, (src & ~(width - 1)) == base ? src : lane);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::luna_emu::lane_id(), base = lane & ~(width - 1);
  const int src = lane + int(delta);
  return ::luna_emu::shuffle_from(v, src < base + width ? src : lane);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::luna_emu::lane_id(), base = lane & ~(width - 1);
  const int src = lane - int(delta);
  return ::luna_emu::shuffle_from(v, src >= base ? src : lane);
}
unsigned __ballot_sync(unsigned mask, int predicate);
inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0; }
inline int __all_sync(unsigned mask, int p) {
  const int n = ::luna_emu::warp_lanes();
  const unsigned full = n == 32 ? 0xffffffffu : ((1u << n) - 1);
  return __ballot_sync(mask, p) == full;
}

// ---- math and bit intrinsics --------------------------------------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---- atomics (blocks and threads run on one OS thread, so plain read-modify-write is atomic) ----
template <typename T>
inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <typename T>
inline T atomicMax(T* p, T v) { const T old = *p; *p = old > v ? old : v; return old; }
template <typename T>
inline T atomicMin(T* p, T v) { const T old = *p; *p = old < v ? old : v; return old; }
template <typename T>
inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
template <typename T>
inline T atomicCAS(T* p, T compare, T v) { const T old = *p; if (old == compare) *p = v; return old; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- the runtime --------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define cudaStreamNonBlocking 0x01
using cudaStream_t = struct luna_emu_stream*;
using cudaEvent_t = struct luna_emu_event*;
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int multiProcessorCount;
  int maxThreadsPerBlock;
  int warpSize;  // (a member: shadows the global constant, as in CUDA)
  int major, minor;
};

cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

namespace luna_emu {

// Runs `body` as every thread of every block of the grid; returns cudaSuccess or the error a GPU
// would give for the configuration (and records it for cudaGetLastError).
cudaError_t run_grid(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()>& body);
void* dynamic_smem_base();
template <typename T>
T* dynamic_smem() {
  return static_cast<T*>(dynamic_smem_base());
}

// What LUNA_LAUNCH(grid, block, smem, stream, kernel) becomes: Launcher(&kernel, ...)(args...).
// The arguments are converted to the kernel's parameter types first, as a launch does.
template <typename... P>
class Launcher {
 public:
  Launcher(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, const char* name)
      : kernel_(kernel), grid_(grid), block_(block), smem_(smem), name_(name) {}
  template <typename... A>
  void operator()(A&&... args) const {
    auto params = std::tuple<std::decay_t<P>...>(std::forward<A>(args)...);
    auto kernel = kernel_;
    run_grid(reinterpret_cast<const void*>(kernel_), name_, grid_, block_, smem_,
             [&] { std::apply([&](auto... p) { kernel(p...); }, params); });
  }

 private:
  void (*kernel_)(P...);
  dim3 grid_, block_;
  size_t smem_;
  const char* name_;
};

}  // namespace luna_emu
