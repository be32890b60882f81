// The optimizers on the GPU: fused Adam/AdamW and SGD updates (one pass over the parameter, its
// gradient and its state, everything updated in place) and the deterministic gradient-norm
// reductions of clipGradNorm, float32 storage.
//
// The per-element arithmetic is the CPU kernels' (optim_math in native/kernels/optim_kernels.h):
// float64, each operation rounded on its own through the _rn intrinsics (never fused into a
// multiply-add), rounded to float32 only where a value is stored. So a GPU update gives the
// CPU's bits, and the CPU's are those of the former JS loops (torch.optim's rules). The update
// is bound by memory on the GPUs this targets: Adam moves 28 bytes per element against some 60
// float64 operations, which an H100/H200 (FP64 at half the FP32 rate) covers; on a GPU with a
// 1/32 or 1/64 FP64 rate (most GeForce parts) the arithmetic, not the memory, sets the time.
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "optim_cuda.h"

namespace luna::cuda {

namespace {

constexpr int kThreads = 256;

// A grid for an elementwise pass over `units` work items (grid-stride loops): enough blocks to
// fill the device a few times over; the results do not depend on it.
unsigned elementwise_grid(int64_t units) {
  const int64_t cap = int64_t(multiprocessor_count()) * 8;
  return unsigned(std::max<int64_t>(1, std::min(ceil_div(units, kThreads), cap)));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// param, grad, exp_avg, exp_avg_sq are (n). With kVec every pointer is 16-byte aligned and the
// first n - n % 4 elements move as float4 (four elements per thread and iteration); the last
// n % 4 go one by one. Each element is independent, so the grid shape never changes a bit.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    adam_kernel(optim_math::AdamScalars s, float* param, const float* grad, float* exp_avg, float* exp_avg_sq, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (kVec) {
    const int64_t n4 = n / 4;
    for (int64_t i = t; i < n4; i += stride) {
      float4 p = reinterpret_cast<const float4*>(param)[i];
      const float4 g = reinterpret_cast<const float4*>(grad)[i];
      float4 m = reinterpret_cast<const float4*>(exp_avg)[i];
      float4 v = reinterpret_cast<const float4*>(exp_avg_sq)[i];
      optim_math::adam_element<float>(s, p.x, g.x, m.x, v.x);
      optim_math::adam_element<float>(s, p.y, g.y, m.y, v.y);
      optim_math::adam_element<float>(s, p.z, g.z, m.z, v.z);
      optim_math::adam_element<float>(s, p.w, g.w, m.w, v.w);
      reinterpret_cast<float4*>(param)[i] = p;
      reinterpret_cast<float4*>(exp_avg)[i] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[i] = v;
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + t; i < n; i += stride) optim_math::adam_element<float>(s, param[i], grad[i], exp_avg[i], exp_avg_sq[i]);
}

// param, grad are (n); momentum_buffer is (n), or null for plain SGD (momentum 0).
__global__ void __launch_bounds__(kThreads)
    sgd_kernel(float* param, const float* grad, float* momentum_buffer, int64_t n, double lr, double weight_decay,
               double momentum, double one_minus_dampening, bool nesterov, bool first_step) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (momentum_buffer == nullptr) {
    for (int64_t i = t; i < n; i += stride) optim_math::sgd_plain_element<float>(lr, weight_decay, param[i], grad[i]);
  } else {
    for (int64_t i = t; i < n; i += stride)
      optim_math::sgd_momentum_element<float>(lr, weight_decay, momentum, one_minus_dampening, nesterov, first_step,
                                              param[i], grad[i], momentum_buffer[i]);
  }
}

// x is (n), scaled in place; the product in float64, rounded once to float32.
__global__ void __launch_bounds__(kThreads) scale_kernel(float* x, int64_t n, double scale) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = float(optim_math::mul_rn(double(x[i]), scale));
}

// ---- the norm reductions ----------------------------------------------------------------------
// Blocks per array: one per 16 Ki elements (64 elements per thread), at most kMaxBlocks. Fixed by
// the array's length alone, never by the device, so the partials (and the result) are the same
// bits on every GPU.
constexpr int64_t kElementsPerBlock = int64_t(kThreads) * 64;
constexpr int64_t kMaxBlocks = 1024;

int64_t norm_blocks(int64_t n) { return std::min(kMaxBlocks, ceil_div(n, kElementsPerBlock)); }

template <NormKind K>
__device__ inline double norm_term(float x, double p) {
  const double a = fabs(double(x));
  if (K == NormKind::SumSquares) return double(x) * double(x);  // exact: a float's square fits a double
  if (K == NormKind::SumPowAbs) return pow(a, p);
  return a;  // SumAbs, MaxAbs
}

template <NormKind K>
__device__ inline double norm_combine(double acc, double v) {
  return K == NormKind::MaxAbs ? optim_math::nan_max(acc, v) : optim_math::add_rn(acc, v);
}

// The combination of `v` over the block (blockDim.x == kThreads): a butterfly within each warp,
// then the warps' results in warp order by thread 0; only thread 0's return value is meant.
// `scratch` holds kThreads / 32 doubles.
template <NormKind K>
__device__ inline double block_combine(double v, double* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = norm_combine<K>(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = scratch[0];
  if (threadIdx.x == 0)
    for (int w = 1; w < kThreads / 32; ++w) total = norm_combine<K>(total, scratch[w]);
  return total;
}

// x is (n); partials is (gridDim.x), one per block. Thread t of block b accumulates elements
// b * kThreads + t, then every gridDim.x * kThreads further on, in that order.
template <NormKind K>
__global__ void __launch_bounds__(kThreads) norm_partials_kernel(const float* x, int64_t n, double p, double* partials) {
  __shared__ double scratch[kThreads / 32];
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  double acc = 0;
  int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  // Four loads issued before their terms are added keep more bytes in flight; the terms are
  // still added in the plain loop's order.
  for (; i + 3 * stride < n; i += 4 * stride) {
    const float x0 = x[i], x1 = x[i + stride], x2 = x[i + 2 * stride], x3 = x[i + 3 * stride];
    acc = norm_combine<K>(acc, norm_term<K>(x0, p));
    acc = norm_combine<K>(acc, norm_term<K>(x1, p));
    acc = norm_combine<K>(acc, norm_term<K>(x2, p));
    acc = norm_combine<K>(acc, norm_term<K>(x3, p));
  }
  for (; i < n; i += stride) acc = norm_combine<K>(acc, norm_term<K>(x[i], p));
  const double total = block_combine<K>(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// partials is (count); one block combines them (thread t takes t, t + kThreads, ...) into out[0].
template <NormKind K>
__global__ void __launch_bounds__(kThreads) norm_final_kernel(const double* partials, int64_t count, double* out) {
  __shared__ double scratch[kThreads / 32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc = norm_combine<K>(acc, partials[i]);
  const double total = block_combine<K>(acc, scratch);
  if (threadIdx.x == 0) out[0] = total;
}

template <NormKind K>
double norm_reduce_kind(const NormParams<float>& p) {
  int64_t count = 0;
  for (int a = 0; a < p.count; ++a) count += norm_blocks(p.lengths[a]);
  if (count == 0) return 0;
  // One allocation: the partials, then the result.
  double* scratch = static_cast<double*>(device_alloc(size_t(count + 1) * sizeof(double)));
  double result = 0;
  try {
    int64_t offset = 0;
    for (int a = 0; a < p.count; ++a) {
      const int64_t blocks = norm_blocks(p.lengths[a]);
      if (blocks == 0) continue;
      LUNA_LAUNCH(dim3(unsigned(blocks)), dim3(kThreads), 0, stream(), norm_partials_kernel<K>)(p.xs[a], p.lengths[a], p.p, scratch + offset);
      check_launch("norm_partials_kernel");
      offset += blocks;
    }
    LUNA_LAUNCH(dim3(1), dim3(kThreads), 0, stream(), norm_final_kernel<K>)(scratch, count, scratch + count);
    check_launch("norm_final_kernel");
    copy_to_host(&result, scratch + count, sizeof(double));
  } catch (...) {
    device_free(scratch);
    throw;
  }
  device_free(scratch);
  return result;
}

}  // namespace

void adam_step(const AdamParams<float>& p) {
  if (p.n == 0) return;
  const optim_math::AdamScalars s = optim_math::adam_scalars(p);
  const bool vec = aligned16(p.param) && aligned16(p.grad) && aligned16(p.exp_avg) && aligned16(p.exp_avg_sq);
  if (vec) {
    LUNA_LAUNCH(dim3(elementwise_grid(ceil_div(p.n, 4))), dim3(kThreads), 0, stream(), adam_kernel<true>)(
        s, p.param, p.grad, p.exp_avg, p.exp_avg_sq, p.n);
  } else {
    LUNA_LAUNCH(dim3(elementwise_grid(p.n)), dim3(kThreads), 0, stream(), adam_kernel<false>)(
        s, p.param, p.grad, p.exp_avg, p.exp_avg_sq, p.n);
  }
  check_launch("adam_kernel");
}

void sgd_step(const SgdParams<float>& p) {
  if (p.n == 0) return;
  float* buf = p.momentum == 0 ? nullptr : p.momentum_buffer;
  LUNA_LAUNCH(dim3(elementwise_grid(p.n)), dim3(kThreads), 0, stream(), sgd_kernel)(
      p.param, p.grad, buf, p.n, p.lr, p.weight_decay, p.momentum, 1.0 - p.dampening, p.nesterov, p.first_step);
  check_launch("sgd_kernel");
}

double norm_reduce(const NormParams<float>& p) {
  switch (p.kind) {
    case NormKind::SumSquares: return norm_reduce_kind<NormKind::SumSquares>(p);
    case NormKind::SumAbs: return norm_reduce_kind<NormKind::SumAbs>(p);
    case NormKind::MaxAbs: return norm_reduce_kind<NormKind::MaxAbs>(p);
    case NormKind::SumPowAbs: return norm_reduce_kind<NormKind::SumPowAbs>(p);
  }
  throw CudaError("cudaErrorInvalidValue", "norm_reduce: unknown norm kind");
}

void scale_in_place(float* x, int64_t n, double scale) {
  if (n == 0) return;
  LUNA_LAUNCH(dim3(elementwise_grid(n)), dim3(kThreads), 0, stream(), scale_kernel)(x, n, scale);
  check_launch("scale_kernel");
}

}  // namespace luna::cuda
