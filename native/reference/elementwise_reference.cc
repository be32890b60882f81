// Plain-loop references of the elementwise kernels (see elementwise_reference.h).
#include "elementwise_reference.h"

#include <cstddef>
#include <vector>

namespace luna {

namespace {

// The offset that output element `flat` of a contiguous array of `shape` reads through `stride`.
int64_t strided_offset(int rank, const int64_t* shape, const int64_t* stride, int64_t flat) {
  int64_t off = 0;
  for (int d = rank - 1; d >= 0; --d) {
    off += (flat % shape[d]) * stride[d];
    flat /= shape[d];
  }
  return off;
}

int64_t element_count(int rank, const int64_t* shape) {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) n *= shape[d];
  return n;
}

}  // namespace

// out is (shape); a and b are read through their broadcast strides.
template <typename T>
void reference_binary(const BinaryParams<T>& p) {
  const int64_t n = element_count(p.rank, p.shape);
  for (int64_t i = 0; i < n; ++i) {
    const T x = p.a[strided_offset(p.rank, p.shape, p.a_stride, i)];
    const T y = p.b[strided_offset(p.rank, p.shape, p.b_stride, i)];
    p.out[i] = p.op == BinaryOp::Add ? x + y : p.op == BinaryOp::Sub ? x - y : x * y;
  }
}

// out is (shape); x is read through p.stride.
template <typename T>
void reference_strided_copy(const StridedCopyParams<T>& p) {
  const int64_t n = element_count(p.rank, p.shape);
  for (int64_t i = 0; i < n; ++i) p.out[i] = p.x[strided_offset(p.rank, p.shape, p.stride, i)];
}

// x is (in_shape), out is (out_shape): each input element is added, in double, to the output
// element with the same multi-index where out_shape is 1 replaced by 0.
template <typename T>
void reference_reduce_to(const ReduceParams<T>& p) {
  const int64_t n_in = element_count(p.rank, p.in_shape);
  const int64_t n_out = element_count(p.rank, p.out_shape);
  std::vector<double> acc(static_cast<size_t>(n_out), 0.0);
  for (int64_t i = 0; i < n_in; ++i) {
    int64_t rest = i, o = 0, step = 1;
    for (int d = p.rank - 1; d >= 0; --d) {
      const int64_t idx = rest % p.in_shape[d];
      rest /= p.in_shape[d];
      if (p.out_shape[d] != 1) o += idx * step;
      step *= p.out_shape[d];
    }
    acc[static_cast<size_t>(o)] += static_cast<double>(p.x[i]);
  }
  for (int64_t o = 0; o < n_out; ++o) p.out[o] = static_cast<T>(acc[static_cast<size_t>(o)]);
}

template void reference_binary<float>(const BinaryParams<float>&);
template void reference_binary<double>(const BinaryParams<double>&);
template void reference_strided_copy<float>(const StridedCopyParams<float>&);
template void reference_strided_copy<double>(const StridedCopyParams<double>&);
template void reference_reduce_to<float>(const ReduceParams<float>&);
template void reference_reduce_to<double>(const ReduceParams<double>&);

}  // namespace luna
