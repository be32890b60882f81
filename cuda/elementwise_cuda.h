// The CUDA versions of the elementwise, reduction and layout kernels (native/kernels/elementwise.h):
// the same parameter structs, with device pointers, float32 only. Plain C++ (no CUDA headers), so
// the bindings and the native checks include it whether or not CUDA was compiled in; a CPU-only
// build links native/runtime/cuda_stubs/elementwise_stub.cc, whose definitions throw CudaError.
//
// Every launcher queues its work on luna::cuda::stream() and returns without waiting; errors are
// thrown as luna::cuda::CudaError. Results are the same bits for every run and every device: the
// work of the reductions is cut by problem size only and partial sums are added in a fixed order.
#pragma once

#include <cstdint>

#include "../native/kernels/elementwise.h"

namespace luna::cuda {

// out = a (op) b through broadcast strides (rank <= kMaxRank); exactly the CPU's float32 results.
// out may be a (or b) itself when that input is read at the output's own offsets (in place).
void binary_op(const BinaryParams<float>& p);
// out[i] = a * x[i] + b for i < n, two roundings (no fused multiply-add), as on the CPU; out may be x.
void scale_shift(const float* x, float* out, int64_t n, float a, float b);
// out = x read through strides (permute, transpose, broadcast); an exact copy.
void strided_copy(const StridedCopyParams<float>& p);
// out = x summed over the dims where out_shape is 1 and in_shape is not (float32 accumulators,
// fixed-order partial sums; see elementwise.cu for the order).
void reduce_to(const ReduceParams<float>& p);
// out[o, i] = sum_j x[o, j, i]; x is (outer, n, inner), out is (outer, inner); all sizes >= 1.
void sum_axis(const float* x, float* out, int64_t outer, int64_t n, int64_t inner);
// dst[dst_offset + r * dst_stride + c] = src[src_offset + r * src_stride + c]; an exact copy.
void copy_blocks(const BlockCopyParams<float>& p);

}  // namespace luna::cuda
