// Plain-loop versions of the strided and reducing elementwise kernels: the truth the fast
// kernels are checked against. Every output element is computed on its own from its full
// multi-index, with no fusing of dims, no tiling and no threads; sums accumulate in double.
#pragma once

#include "../kernels/elementwise.h"

namespace luna {

template <typename T> void reference_binary(const BinaryParams<T>& p);
template <typename T> void reference_strided_copy(const StridedCopyParams<T>& p);
template <typename T> void reference_reduce_to(const ReduceParams<T>& p);

}  // namespace luna
