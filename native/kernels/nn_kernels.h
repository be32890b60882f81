// The nn building blocks: layer norm, GELU/ReLU, dropout, embedding and cross-entropy, forward
// and backward. One parameter struct per family, with every array's shape beside it; the
// kernels are templates over float and double, instantiated in their .cc files.
//
// Determinism: every kernel splits its work by problem size only (never by thread count), and
// parameter gradients are built from per-chunk partials added in chunk order, so any number of
// threads gives bitwise the same result.
#pragma once

#include <cstdint>

namespace luna {

// Layer norm over the last dimension: out = (x - mean) * rstd * weight + bias.
template <typename T>
struct LayerNormParams {
  int64_t rows = 0;           // product of the leading dimensions of x
  int64_t d = 0;              // the normalized (last) dimension
  double eps = 1e-5;          // added to the variance
  const T* x = nullptr;       // (rows, d)
  const T* weight = nullptr;  // (d), or null: no scale
  const T* bias = nullptr;    // (d), or null: no shift
  T* out = nullptr;           // (rows, d), forward output
  T* mean = nullptr;          // (rows), written by the forward, read by the backward
  T* rstd = nullptr;          // (rows), 1 / sqrt(var + eps), likewise
  const T* dout = nullptr;    // (rows, d), backward input
  T* dx = nullptr;            // (rows, d), or null when x needs no gradient
  T* dweight = nullptr;       // (d), or null when not wanted
  T* dbias = nullptr;         // (d), or null when not wanted
};

template <typename T> void layer_norm_forward(const LayerNormParams<T>& p);
template <typename T> void layer_norm_backward(const LayerNormParams<T>& p);

// Elementwise activations. Backward reads the forward's input x, not its output.
template <typename T>
struct ActivationParams {
  int64_t n = 0;             // element count
  const T* x = nullptr;      // (n)
  T* out = nullptr;          // (n), forward output
  const T* dout = nullptr;   // (n), backward input
  T* dx = nullptr;           // (n), backward output
};

template <typename T> void gelu_forward(const ActivationParams<T>& p);
template <typename T> void gelu_backward(const ActivationParams<T>& p);
template <typename T> void relu_forward(const ActivationParams<T>& p);
template <typename T> void relu_backward(const ActivationParams<T>& p);

// Inverted dropout: out[i] = keep(i) ? in[i] / (1 - p) : 0, the keep decision a pure function
// of (seed, i) (counter_rng.h, shared with the attention kernels' dropout). The backward is the
// same map applied to dout, so one kernel serves both.
template <typename T>
struct DropoutParams {
  int64_t n = 0;            // element count
  double p = 0;             // drop probability in [0, 1]
  uint64_t seed = 0;        // the mask is a pure function of (seed, element index)
  const T* in = nullptr;    // (n): x forward, dout backward
  T* out = nullptr;         // (n): out forward, dx backward
};

template <typename T> void dropout_apply(const DropoutParams<T>& p);

// Embedding lookup: out[i, :] = weight[ids[i], :].
template <typename T>
struct EmbeddingParams {
  int64_t n = 0;               // number of ids
  int64_t V = 0;               // vocabulary size (rows of weight)
  int64_t d = 0;               // embedding width
  int64_t padding_idx = -1;    // a row in [0, V) that gets no gradient, or -1 for none
  const int32_t* ids = nullptr;  // (n), each in [0, V) (checked by the binding)
  const T* weight = nullptr;   // (V, d)
  T* out = nullptr;            // (n, d), forward output
  const T* dout = nullptr;     // (n, d), backward input
  T* dweight = nullptr;        // (V, d), backward output (overwritten, not accumulated)
};

template <typename T> void embedding_forward(const EmbeddingParams<T>& p);
template <typename T> void embedding_backward(const EmbeddingParams<T>& p);

// Cross-entropy over the classes of each row, with label smoothing and an ignored target value:
//   loss[i] = (1 - s) * (lse_i - logits[i, t_i]) + s * (lse_i - mean_c logits[i, c])
// and 0 for a row whose target is ignore_index.
template <typename T>
struct CrossEntropyParams {
  int64_t N = 0;                  // rows
  int64_t C = 0;                  // classes
  double label_smoothing = 0;     // s in [0, 1]
  int64_t ignore_index = -100;    // a target equal to this is skipped
  const T* logits = nullptr;      // (N, C)
  const int32_t* targets = nullptr;  // (N), each in [0, C) or equal to ignore_index
  T* loss = nullptr;              // (N), forward output per row
  T* lse = nullptr;               // (N), row log-sum-exp, written by the forward
  const T* dloss = nullptr;       // (N), gradient of each row's loss (backward input)
  T* dlogits = nullptr;           // (N, C), backward output
};

template <typename T> void cross_entropy_forward(const CrossEntropyParams<T>& p);
template <typename T> void cross_entropy_backward(const CrossEntropyParams<T>& p);

// How many consecutive items each parallel task takes so that a task holds about `grain`
// elements of work (items of `width` elements each). Depends on the sizes only.
inline int64_t items_per_task(int64_t width, int64_t grain) {
  const int64_t w = width > 0 ? width : 1;
  const int64_t k = grain / w;
  return k > 0 ? k : 1;
}

}  // namespace luna
