// Embedding lookup (forward and scatter-add backward) and fused log-softmax cross-entropy.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../runtime/thread_pool.h"
#include "nn_kernels.h"

namespace luna {

namespace {

constexpr int64_t kGrain = 16384;

// Runs body(r0, r1) over [0, rows) in chunks of about kGrain elements (rows of `width`).
template <typename Body>
void for_rows(int64_t rows, int64_t width, const Body& body) {
  const int64_t per = items_per_task(width, kGrain);
  const int64_t tasks = (rows + per - 1) / per;
  parallel_for(tasks, [&](int64_t t) { body(t * per, std::min(rows, (t + 1) * per)); });
}

}  // namespace

template <typename T>
void embedding_forward(const EmbeddingParams<T>& p) {
  // ids is (n), weight (V, d), out (n, d). Every id is in [0, V): the binding checked.
  const int64_t d = p.d;
  for_rows(p.n, d, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::copy(p.weight + p.ids[i] * d, p.weight + (p.ids[i] + 1) * d, p.out + i * d);
  });
}

template <typename T>
void embedding_backward(const EmbeddingParams<T>& p) {
  // ids is (n), dout (n, d), dweight (V, d).
  //
  // Scatter-adding from many threads would need atomics and would sum in a thread-dependent
  // order. Instead the positions are bucketed by id with a stable counting sort; then each
  // vocabulary row is owned by one task and sums its positions in ascending order: the same
  // order as a plain loop over ids, for any thread count.
  const int64_t n = p.n, V = p.V, d = p.d;
  std::vector<int64_t> start(static_cast<size_t>(V + 1), 0);
  for (int64_t i = 0; i < n; ++i) ++start[static_cast<size_t>(p.ids[i]) + 1];
  for (int64_t v = 0; v < V; ++v) start[static_cast<size_t>(v + 1)] += start[static_cast<size_t>(v)];
  std::vector<int64_t> order(static_cast<size_t>(n));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(next[static_cast<size_t>(p.ids[i])]++)] = i;
  }
  for_rows(V, d, [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      T* row = p.dweight + v * d;
      std::fill(row, row + d, static_cast<T>(0));
      if (v == p.padding_idx) continue;  // the padding row never learns (PyTorch semantics)
      for (int64_t k = start[static_cast<size_t>(v)]; k < start[static_cast<size_t>(v + 1)]; ++k) {
        const T* g = p.dout + order[static_cast<size_t>(k)] * d;
        for (int64_t j = 0; j < d; ++j) row[j] += g[j];
      }
    }
  });
}

template <typename T>
void cross_entropy_forward(const CrossEntropyParams<T>& p) {
  // logits is (N, C); targets, loss, lse are (N).
  //
  // The log-sum-exp subtracts the row max so exp never overflows; the sum of exponentials and
  // the row mean (for label smoothing) are accumulated in double.
  const int64_t C = p.C;
  const double s = p.label_smoothing;
  for_rows(p.N, C, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* z = p.logits + i * C;
      T m = z[0];
      for (int64_t c = 1; c < C; ++c) m = z[c] > m ? z[c] : m;
      // Four interleaved partial sums (combined in a fixed order) keep the adds from forming one
      // long dependency chain.
      double sum[4] = {0, 0, 0, 0}, tot[4] = {0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 4 <= C; c += 4)
        for (int u = 0; u < 4; ++u) {
          sum[u] += static_cast<double>(std::exp(z[c + u] - m));
          tot[u] += static_cast<double>(z[c + u]);
        }
      for (; c < C; ++c) {
        sum[0] += static_cast<double>(std::exp(z[c] - m));
        tot[0] += static_cast<double>(z[c]);
      }
      const double total = (tot[0] + tot[1]) + (tot[2] + tot[3]);
      const double lse = static_cast<double>(m) + std::log((sum[0] + sum[1]) + (sum[2] + sum[3]));
      p.lse[i] = static_cast<T>(lse);
      const int64_t t = p.targets[i];
      if (t == p.ignore_index) {
        p.loss[i] = static_cast<T>(0);
        continue;
      }
      double loss = lse - static_cast<double>(z[t]);
      // Skipped when s = 0, so the plain loss is exactly lse - z_t.
      if (s != 0) loss = (1 - s) * loss + s * (lse - total / static_cast<double>(C));
      p.loss[i] = static_cast<T>(loss);
    }
  });
}

template <typename T>
void cross_entropy_backward(const CrossEntropyParams<T>& p) {
  // logits, dlogits are (N, C); targets, lse (from the forward), dloss are (N).
  //   dlogits[i, c] = dloss[i] * (softmax_c - (1 - s) [c == t_i] - s / C); 0 for ignored rows.
  const int64_t C = p.C;
  const double s = p.label_smoothing;
  const double off = s / static_cast<double>(C);
  for_rows(p.N, C, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      T* dz = p.dlogits + i * C;
      const int64_t t = p.targets[i];
      if (t == p.ignore_index) {
        std::fill(dz, dz + C, static_cast<T>(0));
        continue;
      }
      const T* z = p.logits + i * C;
      const T lse = p.lse[i];
      const double g = static_cast<double>(p.dloss[i]);
      for (int64_t c = 0; c < C; ++c) {
        const double prob = static_cast<double>(std::exp(z[c] - lse));
        dz[c] = static_cast<T>(g * (prob - off));
      }
      dz[t] = static_cast<T>(g * ((static_cast<double>(std::exp(z[t] - lse)) - (1 - s)) - off));
    }
  });
}

template void embedding_forward<float>(const EmbeddingParams<float>&);
template void embedding_forward<double>(const EmbeddingParams<double>&);
template void embedding_backward<float>(const EmbeddingParams<float>&);
template void embedding_backward<double>(const EmbeddingParams<double>&);
template void cross_entropy_forward<float>(const CrossEntropyParams<float>&);
template void cross_entropy_forward<double>(const CrossEntropyParams<double>&);
template void cross_entropy_backward<float>(const CrossEntropyParams<float>&);
template void cross_entropy_backward<double>(const CrossEntropyParams<double>&);

}  // namespace luna
