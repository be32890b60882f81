// Plain loops behind gemm_reference.h: one sequential sum per element, nothing clever.
#include "gemm_reference.h"

namespace luna {

template <typename T>
void gemm_reference(const GemmParams<T>& p) {
  for (int64_t bi = 0; bi < p.batch; ++bi) {
    const T* a = p.a + bi * p.batch_stride_a;
    const T* b = p.b + bi * p.batch_stride_b;
    T* c = p.c + bi * p.batch_stride_c;
    for (int64_t i = 0; i < p.M; ++i) {
      for (int64_t j = 0; j < p.N; ++j) {
        T sum = 0;
        for (int64_t k = 0; k < p.K; ++k) {
          const T aik = p.trans_a ? a[k * p.lda + i] : a[i * p.lda + k];
          const T bkj = p.trans_b ? b[j * p.ldb + k] : b[k * p.ldb + j];
          sum += aik * bkj;
        }
        T x = p.alpha * sum;
        // beta == 0 never reads C, so NaN in an output buffer does not leak into the result.
        if (p.beta != T(0)) x += p.beta * c[i * p.ldc + j];
        if (p.bias) x += p.bias[j];
        c[i * p.ldc + j] = x;
      }
    }
  }
}

template <typename T>
void column_sum_reference(int64_t rows, int64_t cols, const T* x, int64_t ldx, T* out) {
  for (int64_t j = 0; j < cols; ++j) {
    T sum = 0;
    for (int64_t i = 0; i < rows; ++i) sum += x[i * ldx + j];
    out[j] = sum;
  }
}

template void gemm_reference<float>(const GemmParams<float>&);
template void gemm_reference<double>(const GemmParams<double>&);
template void column_sum_reference<float>(int64_t, int64_t, const float*, int64_t, float*);
template void column_sum_reference<double>(int64_t, int64_t, const double*, int64_t, double*);

}  // namespace luna
