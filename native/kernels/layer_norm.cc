// Fused layer norm over the last dimension, forward and backward.
//
// Statistics and row reductions are accumulated in double for both element types: a float32
// row of a few thousand elements summed in float loses several bits, and the cost of double
// accumulation is small next to reading the row. Each reduction keeps four interleaved partial
// sums (combined in a fixed order) so the adds do not form one long dependency chain.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../runtime/thread_pool.h"
#include "nn_kernels.h"

namespace luna {

namespace {

// About this many elements per parallel task: big enough to amortise the pool's hand-off.
constexpr int64_t kGrain = 16384;
// The backward's parameter gradients are summed into at most this many per-chunk partials.
constexpr int64_t kMaxChunks = 32;

struct RowStats {
  double mean;
  double rstd;
};

// x is (d): mean and 1/sqrt(var + eps) by two passes (the centred second pass avoids the
// cancellation of E[x^2] - E[x]^2 when the mean is large against the spread).
template <typename T>
RowStats row_stats(const T* x, int64_t d, double eps) {
  double s[4] = {0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int u = 0; u < 4; ++u) s[u] += static_cast<double>(x[j + u]);
  for (; j < d; ++j) s[0] += static_cast<double>(x[j]);
  const double mean = ((s[0] + s[1]) + (s[2] + s[3])) / static_cast<double>(d);
  double q[4] = {0, 0, 0, 0};
  j = 0;
  for (; j + 4 <= d; j += 4)
    for (int u = 0; u < 4; ++u) {
      const double c = static_cast<double>(x[j + u]) - mean;
      q[u] += c * c;
    }
  for (; j < d; ++j) {
    const double c = static_cast<double>(x[j]) - mean;
    q[0] += c * c;
  }
  const double var = ((q[0] + q[1]) + (q[2] + q[3])) / static_cast<double>(d);
  return {mean, 1.0 / std::sqrt(var + eps)};
}

// One row of the backward. x, dout, dx are (d); dw_acc, db_acc are (d) double partials of the
// current chunk, or null when that gradient is not wanted.
template <typename T>
void backward_row(const LayerNormParams<T>& p, int64_t r, double* dw_acc, double* db_acc) {
  const int64_t d = p.d;
  const T* x = p.x + r * d;
  const T* g = p.dout + r * d;
  const double mean = static_cast<double>(p.mean[r]);
  const double rstd = static_cast<double>(p.rstd[r]);
  if (dw_acc != nullptr)
    for (int64_t j = 0; j < d; ++j) dw_acc[j] += static_cast<double>(g[j]) * ((static_cast<double>(x[j]) - mean) * rstd);
  if (db_acc != nullptr)
    for (int64_t j = 0; j < d; ++j) db_acc[j] += static_cast<double>(g[j]);
  if (p.dx == nullptr) return;

  // With gw = dout * weight and xhat the normalized row:
  //   dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)).
  double sg[4] = {0, 0, 0, 0};
  double sgx[4] = {0, 0, 0, 0};
  auto gw_at = [&](int64_t j) {
    const double gj = static_cast<double>(g[j]);
    return p.weight != nullptr ? gj * static_cast<double>(p.weight[j]) : gj;
  };
  int64_t j = 0;
  for (; j + 4 <= d; j += 4)
    for (int u = 0; u < 4; ++u) {
      const double gw = gw_at(j + u);
      sg[u] += gw;
      sgx[u] += gw * ((static_cast<double>(x[j + u]) - mean) * rstd);
    }
  for (; j < d; ++j) {
    const double gw = gw_at(j);
    sg[0] += gw;
    sgx[0] += gw * ((static_cast<double>(x[j]) - mean) * rstd);
  }
  const double a = ((sg[0] + sg[1]) + (sg[2] + sg[3])) / static_cast<double>(d);
  const double b = ((sgx[0] + sgx[1]) + (sgx[2] + sgx[3])) / static_cast<double>(d);
  T* dx = p.dx + r * d;
  for (j = 0; j < d; ++j) {
    const double xhat = (static_cast<double>(x[j]) - mean) * rstd;
    dx[j] = static_cast<T>(rstd * ((gw_at(j) - a) - xhat * b));
  }
}

}  // namespace

template <typename T>
void layer_norm_forward(const LayerNormParams<T>& p) {
  // x, out are (rows, d); mean, rstd are (rows); weight, bias are (d) or null.
  const int64_t d = p.d;
  const int64_t per = items_per_task(d, kGrain);
  const int64_t tasks = (p.rows + per - 1) / per;
  parallel_for(tasks, [&](int64_t t) {
    const int64_t r1 = std::min(p.rows, (t + 1) * per);
    for (int64_t r = t * per; r < r1; ++r) {
      const T* x = p.x + r * d;
      T* out = p.out + r * d;
      const RowStats s = row_stats(x, d, p.eps);
      p.mean[r] = static_cast<T>(s.mean);
      p.rstd[r] = static_cast<T>(s.rstd);
      for (int64_t j = 0; j < d; ++j) {
        double y = (static_cast<double>(x[j]) - s.mean) * s.rstd;
        if (p.weight != nullptr) y *= static_cast<double>(p.weight[j]);
        if (p.bias != nullptr) y += static_cast<double>(p.bias[j]);
        out[j] = static_cast<T>(y);
      }
    }
  });
}

template <typename T>
void layer_norm_backward(const LayerNormParams<T>& p) {
  // x, dout, dx are (rows, d); mean, rstd are (rows) from the forward; dweight, dbias are (d).
  const int64_t d = p.d;
  if (p.rows <= 0 || d <= 0) return;
  const bool want_dw = p.dweight != nullptr;
  const bool want_db = p.dbias != nullptr;

  // The parameter gradients sum over rows. Rows are cut into chunks fixed by the sizes alone;
  // each chunk sums its rows in order into its own double partial, and the partials are added
  // in chunk order afterwards, so the result never depends on the thread count.
  const int64_t by_size = (p.rows * d + 4 * kGrain - 1) / (4 * kGrain);
  const int64_t chunks_wanted = std::max<int64_t>(1, std::min<int64_t>({kMaxChunks, by_size, p.rows}));
  const int64_t per = (p.rows + chunks_wanted - 1) / chunks_wanted;
  const int64_t chunks = (p.rows + per - 1) / per;
  std::vector<double> dw_part(want_dw ? static_cast<size_t>(chunks * d) : 0, 0.0);
  std::vector<double> db_part(want_db ? static_cast<size_t>(chunks * d) : 0, 0.0);

  parallel_for(chunks, [&](int64_t c) {
    double* dw_acc = want_dw ? dw_part.data() + c * d : nullptr;
    double* db_acc = want_db ? db_part.data() + c * d : nullptr;
    const int64_t r1 = std::min(p.rows, (c + 1) * per);
    for (int64_t r = c * per; r < r1; ++r) backward_row(p, r, dw_acc, db_acc);
  });

  for (int pass = 0; pass < 2; ++pass) {
    T* dst = pass == 0 ? p.dweight : p.dbias;
    if (dst == nullptr) continue;
    const std::vector<double>& part = pass == 0 ? dw_part : db_part;
    for (int64_t j = 0; j < d; ++j) {
      double s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += part[static_cast<size_t>(c * d + j)];
      dst[j] = static_cast<T>(s);
    }
  }
}

template void layer_norm_forward<float>(const LayerNormParams<float>&);
template void layer_norm_forward<double>(const LayerNormParams<double>&);
template void layer_norm_backward<float>(const LayerNormParams<float>&);
template void layer_norm_backward<double>(const LayerNormParams<double>&);

}  // namespace luna
