// Plain-loop GEMM and column sums: the truth the blocked kernels in kernels/gemm.cc are checked
// against. Instantiated for double (the reference) and for float (a plain float32
// implementation, whose error sets the fast kernel's tolerance). Slow and obvious on purpose.
#pragma once

#include <cstdint>

#include "../kernels/gemm.h"

namespace luna {

// Same contract as gemm(p): C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b] + bias, each element
// one sequential sum over K (in T), then scaled, blended and biased.
template <typename T>
void gemm_reference(const GemmParams<T>& p);

// out[j] = sum_i x[i, j] (x is rows x cols, row stride ldx), one sequential sum per column.
template <typename T>
void column_sum_reference(int64_t rows, int64_t cols, const T* x, int64_t ldx, T* out);

}  // namespace luna
