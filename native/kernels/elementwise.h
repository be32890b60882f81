// Parameters and entry points of the elementwise, reduction and layout kernels.
//
// Every tensor is dense and row-major. Broadcasting and layout changes are described to the
// kernels by an output shape plus, for each input, one element stride per output dimension
// (0 where the input is broadcast along that dimension), so one strided walk serves add with
// broadcasting, broadcastTo, transpose and permute alike. All kernels split their work by
// problem size only and combine partial sums in a fixed order: the bits of every result are the
// same for any thread count.
#pragma once

#include <cstdint>

namespace luna {

// The largest rank the strided kernels accept.
constexpr int kMaxRank = 8;

enum class BinaryOp { Add, Sub, Mul };

// out = a (op) b, where a and b are read through broadcast strides.
template <typename T>
struct BinaryParams {
  const T* a = nullptr;          // read at sum_d idx[d] * a_stride[d]
  const T* b = nullptr;          // read at sum_d idx[d] * b_stride[d]
  T* out = nullptr;              // [shape], contiguous, every element written
  int rank = 0;                  // 0..kMaxRank; rank 0 is a single element
  int64_t shape[kMaxRank] = {};  // output dims, each >= 1
  int64_t a_stride[kMaxRank] = {};
  int64_t b_stride[kMaxRank] = {};
  BinaryOp op = BinaryOp::Add;
};

// out = x read through strides: a permute (permuted strides), a broadcast (zero strides), or both.
template <typename T>
struct StridedCopyParams {
  const T* x = nullptr;          // read at sum_d idx[d] * stride[d]
  T* out = nullptr;              // [shape], contiguous
  int rank = 0;
  int64_t shape[kMaxRank] = {};  // output dims, each >= 1
  int64_t stride[kMaxRank] = {};
};

// out = x summed over the dims where out_shape is 1 and in_shape is not: the backward of
// broadcasting, and (with a reshape after it) sum over any set of axes.
template <typename T>
struct ReduceParams {
  const T* x = nullptr;             // [in_shape]
  T* out = nullptr;                 // [out_shape]
  int rank = 0;
  int64_t in_shape[kMaxRank] = {};  // each >= 1
  int64_t out_shape[kMaxRank] = {}; // out_shape[d] is in_shape[d] or 1
};

// dst[dst_offset + r * dst_stride + c] = src[src_offset + r * src_stride + c] for r < rows,
// c < cols: the copy behind concat and slice (one block of columns out of every row).
template <typename T>
struct BlockCopyParams {
  const T* src = nullptr;
  T* dst = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t src_stride = 0, src_offset = 0;
  int64_t dst_stride = 0, dst_offset = 0;
};

template <typename T> void binary_op(const BinaryParams<T>& p);
// out[i] = a * x[i] + b for i < n (two roundings: no fused multiply-add).
template <typename T> void scale_shift(const T* x, T* out, int64_t n, T a, T b);
template <typename T> void strided_copy(const StridedCopyParams<T>& p);
template <typename T> void reduce_to(const ReduceParams<T>& p);
// out[o, i] = sum_j x[o, j, i], x is (outer, n, inner), out is (outer, inner); all sizes >= 1.
template <typename T> void sum_axis(const T* x, T* out, int64_t outer, int64_t n, int64_t inner);
template <typename T> void copy_blocks(const BlockCopyParams<T>& p);

}  // namespace luna
