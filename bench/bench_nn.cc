// Native micro-benchmark of the elementwise, layout, reduction and nn kernels (no Node needed):
// everything in native/kernels besides attention and GEMM.
//
// 1. Validates every kernel in float32 against the float64 reference (nn_validate.h).
// 2. Measures the machine's peaks in the same run: sgemm GFLOP/s and streaming-copy GB/s.
// 3. Times each kernel at Luna's sizes: activations [16384, 256] (B=4 x n=4096 tokens at d=256)
//    and [16384, 1024] (the FFN width); cross-entropy over 16384 tokens and a vocabulary of 8192.
//    Inputs rotate through copies larger than the LLC. These kernels are memory-bound, so the
//    fraction of the copy bandwidth is the number to chase; GFLOP/s is printed only where a flop
//    count means something (not for copies, compares, dropout's hash or transcendental functions).
// Flags: --validate-only, --reps N, --threads N, --json FILE.
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "../native/kernels/elementwise.h"
#include "../native/kernels/nn_kernels.h"
#include "../native/reference/elementwise_reference.h"
#include "../native/reference/nn_reference.h"
#include "../native/runtime/cpu_features.h"
#include "../native/runtime/thread_pool.h"
#include "bench_common.h"
#include "nn_validate.h"

using namespace luna;
using namespace luna::bench;
using namespace luna::bench::nn;

namespace {

constexpr int64_t kRows = 16384;   // tokens: B=4 x n=4096
constexpr int64_t kVocab = 8192;   // cross-entropy classes and embedding rows
constexpr double kF = sizeof(float);

// The arrays of one kernel call, one copy per rotation set: S(a, s) is array a in set s.
class Sets {
 public:
  // `bytes`: what one call reads and writes, which decides how many sets overflow the LLC.
  explicit Sets(double bytes) : sets_(rotation_sets(bytes)) {}
  int count() const { return sets_; }
  // A new array of n floats, every copy filled with `init` repeated (zeros if it is empty);
  // returns its index.
  int add(const Vec& init, int64_t n) {
    Vec a(static_cast<size_t>(n), 0.0f);
    for (size_t i = 0; i < a.size() && !init.empty(); i += init.size())
      std::copy_n(init.begin(), std::min(init.size(), a.size() - i), a.begin() + i);
    arrays_.push_back(replicate(a, sets_));
    return int(arrays_.size()) - 1;
  }
  float* operator()(int a, int s) { return arrays_[a][s].data(); }
  const Vec& first(int a) const { return arrays_[a][0]; }

 private:
  int sets_;
  std::vector<std::vector<Vec>> arrays_;
};

std::string dims(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (int64_t v : d) s += (s.size() > 1 ? "," : "") + std::to_string(v);
  return s + "]";
}

Vec64 prefix64(const Vec& x, int64_t n) { return Vec64(x.begin(), x.begin() + n); }

// The error on the timed sizes is measured over a leading part of each output (the float64
// reference is plain loops, slow at these sizes): the first eighth of the rows, or of dim 0.
int64_t check_part(int64_t n) { return std::max<int64_t>(1, n / 8); }

// max |fast - ref| over the ref.size() leading elements of fast.
double prefix_err(const Vec& fast, const Vec64& ref) {
  return max_abs_diff(Vec(fast.begin(), fast.begin() + int64_t(ref.size())), ref);
}

// Everything a timed case needs: where to record, how often to call, and the shared inputs
// (two large random arrays that each case's sets are filled from).
struct Bench {
  Report& report;
  int reps;
  Vec X, G;  // x-like and gradient-like values, kRows * 1024 each

  // Times call(set) over the rotation sets, then measures the error on set 0 and records.
  void run(Record r, Sets& S, const std::function<void(int)>& call, const std::function<double()>& error) {
    r.t = time_rotated(reps, S.count(), call);
    r.max_err = error();
    report.add(r);
  }

  // out = a (op) b with broadcasting; shapes of equal rank, dims 1 or equal to out's.
  void binary(const char* name, BinaryOp op, const std::vector<int64_t>& out, const std::vector<int64_t>& sa,
              const std::vector<int64_t>& sb) {
    const int64_t n = count(out), na = count(sa), nb = count(sb);
    Sets S(kF * (n + na + nb));
    const int a = S.add(X, na), b = S.add(G, nb), o = S.add({}, n);
    BinaryParams<float> p;
    p.rank = int(out.size()); p.op = op;
    const auto ta = broadcast_strides(sa, out), tb = broadcast_strides(sb, out);
    for (int d = 0; d < p.rank; ++d) p.shape[d] = out[d], p.a_stride[d] = ta[d], p.b_stride[d] = tb[d];
    Record r{name, dims(sa) + (op == BinaryOp::Mul ? "*" : "+") + dims(sb)};
    r.flops = double(n);
    r.bytes = kF * (n + na + nb);
    run(r, S, [&](int s) { p.a = S(a, s); p.b = S(b, s); p.out = S(o, s); binary_op(p); }, [&] {
      BinaryParams<double> q;
      q.rank = p.rank; q.op = op;
      std::copy(p.shape, p.shape + kMaxRank, q.shape);
      std::copy(p.a_stride, p.a_stride + kMaxRank, q.a_stride);
      std::copy(p.b_stride, p.b_stride + kMaxRank, q.b_stride);
      q.shape[0] = check_part(q.shape[0]);
      // Widen only what the first rows read: 1 + the largest offset.
      int64_t span_a = 1, span_b = 1;
      for (int d = 0; d < q.rank; ++d) span_a += (q.shape[d] - 1) * q.a_stride[d], span_b += (q.shape[d] - 1) * q.b_stride[d];
      const Vec64 a64 = prefix64(S.first(a), span_a), b64 = prefix64(S.first(b), span_b);
      q.a = a64.data(); q.b = b64.data();
      Vec64 ref(static_cast<size_t>(n / p.shape[0] * q.shape[0]));
      q.out = ref.data();
      reference_binary(q);
      return prefix_err(S.first(o), ref);
    });
  }

  // out = x permuted: out dim d is input dim perm[d].
  void permute(const char* name, const std::vector<int64_t>& in, const std::vector<int>& perm) {
    const int64_t n = count(in);
    Sets S(2 * kF * n);
    const int x = S.add(X, n), o = S.add({}, n);
    const auto stride = contiguous(in);
    StridedCopyParams<float> p;
    p.rank = int(in.size());
    for (int d = 0; d < p.rank; ++d) p.shape[d] = in[perm[d]], p.stride[d] = stride[perm[d]];
    Record r{name, dims(in)};
    std::string to = "->[";
    for (int d = 0; d < p.rank; ++d) to += std::to_string(p.shape[d]) + (d + 1 < p.rank ? "," : "]");
    r.params = to;
    r.bytes = 2 * kF * n;
    run(r, S, [&](int s) { p.x = S(x, s); p.out = S(o, s); strided_copy(p); }, [&] {
      StridedCopyParams<float> q = p;
      q.shape[0] = check_part(p.shape[0]);
      Vec expected(static_cast<size_t>(n / p.shape[0] * q.shape[0]));
      q.x = S.first(x).data(); q.out = expected.data();
      reference_strided_copy(q);
      return prefix_err(S.first(o), widen(expected));
    });
  }

  // out = x summed over the dims where `out` is 1.
  void reduce(const char* name, const std::vector<int64_t>& in, const std::vector<int64_t>& out) {
    const int64_t n = count(in), m = count(out);
    Sets S(kF * (n + m));
    const int x = S.add(X, n), o = S.add({}, m);
    ReduceParams<float> p;
    p.rank = int(in.size());
    for (int d = 0; d < p.rank; ++d) p.in_shape[d] = in[d], p.out_shape[d] = out[d];
    Record r{name, dims(in), "->" + dims(out)};
    r.flops = double(n);
    r.bytes = kF * (n + m);
    run(r, S, [&](int s) { p.x = S(x, s); p.out = S(o, s); reduce_to(p); }, [&] {
      const Vec64 x64 = widen(S.first(x));
      Vec64 ref(static_cast<size_t>(m));
      ReduceParams<double> q;
      q.x = x64.data(); q.out = ref.data(); q.rank = p.rank;
      std::copy(p.in_shape, p.in_shape + kMaxRank, q.in_shape);
      std::copy(p.out_shape, p.out_shape + kMaxRank, q.out_shape);
      reference_reduce_to(q);
      return max_abs_diff(S.first(o), ref);
    });
  }

  // An elementwise activation over [rows, d]: the forward reads x and writes out, the backward
  // reads x and dout and writes dx. `fast` and `ref` are the kernel and its float64 reference.
  using Fast = void (*)(const ActivationParams<float>&);
  using Ref = void (*)(const ActivationParams<double>&);
  void activation(const char* name, int64_t rows, int64_t d, bool backward, Fast fast, Ref ref_kernel) {
    const int64_t n = rows * d;
    Sets S(kF * n * (backward ? 3 : 2));
    const int x = S.add(X, n), g = S.add(G, n), o = S.add({}, n);
    Record r{name, dims({rows, d})};
    r.bytes = kF * n * (backward ? 3 : 2);
    auto params = [&](auto* xs, auto* gs, auto* os) {
      using T = std::remove_pointer_t<decltype(os)>;
      return backward ? ActivationParams<T>{n, xs, nullptr, gs, os} : ActivationParams<T>{n, xs, os, nullptr, nullptr};
    };
    run(r, S, [&](int s) {
      fast(params(S(x, s), S(g, s), S(o, s)));
    }, [&] {
      const int64_t m = check_part(n);
      const Vec64 x64 = prefix64(S.first(x), m), g64 = prefix64(S.first(g), m);
      Vec64 ref(static_cast<size_t>(m));
      auto p = params(x64.data(), g64.data(), ref.data());
      p.n = m;
      ref_kernel(p);
      return prefix_err(S.first(o), ref);
    });
  }
};

// ---- the simple elementwise and layout kernels at [kRows, d] ----
void time_elementwise(Bench& b, int64_t d) {
  const int64_t R = kRows, n = R * d;
  // add / mul, [R, d] with [R, d], a bias row [1, d], or a per-row scale [R, 1]
  b.binary("add", BinaryOp::Add, {R, d}, {R, d}, {R, d});
  b.binary("add_bias", BinaryOp::Add, {R, d}, {R, d}, {1, d});
  b.binary("mul", BinaryOp::Mul, {R, d}, {R, d}, {R, d});
  b.binary("mul_row_scale", BinaryOp::Mul, {R, d}, {R, d}, {R, 1});
  // split heads [B, n, h, dh=64] -> [B, h, n, dh], and a plain 2-D transpose [R, d] -> [d, R]
  b.permute("transpose_heads", {4, R / 4, d / 64, 64}, {0, 2, 1, 3});
  b.permute("transpose_2d", {R, d}, {1, 0});
  // the bias gradient (sum over rows) and a row sum (over the last dim)
  b.reduce("reduce_rows", {R, d}, {1, d});
  b.reduce("reduce_last", {R, d}, {R, 1});

  {  // scale_shift: x, out are [R * d]
    Sets S(2 * kF * n);
    const int x = S.add(b.X, n), o = S.add({}, n);
    Record r{"scale_shift", dims({R, d})};
    r.flops = 2.0 * n;
    r.bytes = 2 * kF * n;
    b.run(r, S, [&](int s) { scale_shift(S(x, s), S(o, s), n, 0.7f, -1.3f); }, [&] {
      Vec64 ref(static_cast<size_t>(check_part(n)));
      for (size_t i = 0; i < ref.size(); ++i) ref[i] = 0.7 * S.first(x)[i] - 1.3;
      return prefix_err(S.first(o), ref);
    });
  }
  {  // copy_blocks (concat): src [R, d] into columns [d, 2d) of dst [R, 2d]
    Sets S(3 * kF * n);  // by what it holds: src and all of dst
    const int x = S.add(b.X, n), o = S.add({}, 2 * n);
    BlockCopyParams<float> p;
    p.rows = R; p.cols = d; p.src_stride = d; p.dst_stride = 2 * d; p.dst_offset = d;
    Record r{"copy_blocks", dims({R, d}), "->[" + std::to_string(R) + "," + std::to_string(2 * d) + "]"};
    r.bytes = 2 * kF * n;
    b.run(r, S, [&](int s) { p.src = S(x, s); p.dst = S(o, s); copy_blocks(p); }, [&] {
      double m = 0;
      for (int64_t i = 0; i < n; ++i) m = std::max(m, double(std::fabs(S.first(o)[(i / d) * 2 * d + d + i % d] - S.first(x)[i])));
      return m;
    });
  }
}

// ---- layer norm, activations, dropout at [kRows, d] ----
void time_nn(Bench& b, int64_t d) {
  const int64_t R = kRows, n = R * d;
  std::mt19937_64 rng(static_cast<uint64_t>(d));
  const Vec w = randn(static_cast<size_t>(d), rng), bias(static_cast<size_t>(d), 0.1f);
  const Vec64 w64 = widen(w), b64 = widen(bias);
  // The parameters both directions share; each call sets its own outputs.
  auto ln = [&](int64_t rows, auto* x, auto* mean, auto* rstd, auto* weight, auto* shift) {
    LayerNormParams<std::remove_pointer_t<decltype(mean)>> p;
    p.rows = rows; p.d = d; p.x = x; p.mean = mean; p.rstd = rstd; p.weight = weight; p.bias = shift;
    return p;
  };
  {  // layer_norm_fwd: x, out [R, d]; weight, bias [d]; mean, rstd [R]
    Sets S(kF * (2 * n + 2 * R));
    const int x = S.add(b.X, n), o = S.add({}, n), mu = S.add({}, R), rs = S.add({}, R);
    Record r{"layer_norm_fwd", dims({R, d})};
    r.flops = 8.0 * n;  // mean 1, variance 3, normalise and scale-shift 4 per element
    r.bytes = kF * (2 * n + 2 * d + 2 * R);
    b.run(r, S, [&](int s) {
      auto p = ln(R, S(x, s), S(mu, s), S(rs, s), w.data(), bias.data());
      p.out = S(o, s);
      layer_norm_forward(p);
    }, [&] {
      const int64_t rows = check_part(R);
      const Vec64 x64 = prefix64(S.first(x), rows * d);
      Vec64 out(x64.size()), mean(static_cast<size_t>(rows)), rstd(static_cast<size_t>(rows));
      auto p = ln(rows, x64.data(), mean.data(), rstd.data(), w64.data(), b64.data());
      p.out = out.data();
      reference_layer_norm_forward(p);
      return prefix_err(S.first(o), out);
    });
  }
  {  // layer_norm_bwd: x, dout, dx [R, d]; mean, rstd [R] (from the forward); weight, dweight, dbias [d]
    Vec mean(static_cast<size_t>(R)), rstd(static_cast<size_t>(R)), out(static_cast<size_t>(n));
    const Vec x0(b.X.begin(), b.X.begin() + n);
    auto f = ln(R, x0.data(), mean.data(), rstd.data(), w.data(), bias.data());
    f.out = out.data();
    layer_norm_forward(f);
    Sets S(kF * (3 * n + 2 * R));
    const int x = S.add(x0, n), g = S.add(b.G, n), mu = S.add(mean, R), rs = S.add(rstd, R), dx = S.add({}, n),
              dw = S.add({}, d), db = S.add({}, d);
    Record r{"layer_norm_bwd", dims({R, d})};
    r.flops = 13.0 * n;  // x-hat 2, dout*w 1, two row sums 3, dweight/dbias 3, dx 4 per element
    r.bytes = kF * (3 * n + 2 * R + 3 * d);
    b.run(r, S, [&](int s) {
      auto p = ln(R, S(x, s), S(mu, s), S(rs, s), w.data(), (const float*)nullptr);
      p.dout = S(g, s); p.dx = S(dx, s); p.dweight = S(dw, s); p.dbias = S(db, s);
      layer_norm_backward(p);
    }, [&] {
      // The float64 chain (its own forward statistics, then the backward) over the first rows:
      // dx only, since dweight and dbias sum over all rows (the validation covers them).
      const int64_t rows = check_part(R);
      const Vec64 x64 = prefix64(S.first(x), rows * d), g64 = prefix64(S.first(g), rows * d);
      Vec64 o64(x64.size()), m64(static_cast<size_t>(rows)), r64(static_cast<size_t>(rows)), dx64(x64.size());
      auto p = ln(rows, x64.data(), m64.data(), r64.data(), w64.data(), b64.data());
      p.out = o64.data(); p.dout = g64.data(); p.dx = dx64.data();
      reference_layer_norm_forward(p);
      reference_layer_norm_backward(p);
      return prefix_err(S.first(dx), dx64);
    });
  }
  // gelu / relu: x, dout, out, dx are [R, d]
  b.activation("gelu_fwd", R, d, false, gelu_forward<float>, reference_gelu_forward<double>);
  b.activation("gelu_bwd", R, d, true, gelu_backward<float>, reference_gelu_backward<double>);
  b.activation("relu_fwd", R, d, false, relu_forward<float>, reference_relu_forward<double>);
  b.activation("relu_bwd", R, d, true, relu_backward<float>, reference_relu_backward<double>);
  {  // dropout p=0.1: in, out [R, d]; one kernel is both the forward (on x) and the backward (on dout)
    Sets S(2 * kF * n);
    const int x = S.add(b.X, n), o = S.add({}, n);
    Record r{"dropout_fwd_or_bwd", dims({R, d}), "p=0.1"};
    r.bytes = 2 * kF * n;
    b.run(r, S, [&](int s) { dropout_apply(DropoutParams<float>{n, 0.1, 1234, S(x, s), S(o, s)}); }, [&] {
      const int64_t m = check_part(n);
      const Vec64 x64 = prefix64(S.first(x), m);
      Vec64 ref(static_cast<size_t>(m));
      reference_dropout_apply(DropoutParams<double>{m, 0.1, 1234, x64.data(), ref.data()});
      return prefix_err(S.first(o), ref);
    });
  }
}

// ---- embedding at [kRows tokens, d] over kVocab rows ----
void time_embedding(Bench& b, int64_t d, std::mt19937_64& rng) {
  const int64_t n = kRows, V = kVocab;
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = int32_t(rng() % V);
  const double distinct = double(std::set<int32_t>(ids.begin(), ids.end()).size());
  EmbeddingParams<float> p;
  p.n = n; p.V = V; p.d = d; p.padding_idx = 1; p.ids = ids.data();
  {  // embedding_fwd: ids [n], weight [V, d], out [n, d]; reads only the rows the ids name
    Sets S(kF * (V * d + n * d));
    const int w = S.add(b.X, V * d), o = S.add({}, n * d);
    Record r{"embedding_fwd", dims({n, d}), "V=" + std::to_string(V)};
    r.bytes = 4.0 * n + kF * (distinct * d + n * d);
    b.run(r, S, [&](int s) { p.weight = S(w, s); p.out = S(o, s); embedding_forward(p); }, [&] {
      double m = 0;  // a copy: any difference is an error
      for (int64_t i = 0; i < n * d; ++i) m = std::max(m, double(std::fabs(S.first(o)[i] - S.first(w)[ids[i / d] * d + i % d])));
      return m;
    });
  }
  {  // embedding_bwd: ids [n], dout [n, d], dweight [V, d] (overwritten)
    Sets S(kF * (V * d + n * d));
    const int g = S.add(b.G, n * d), dw = S.add({}, V * d);
    Record r{"embedding_bwd", dims({n, d}), "V=" + std::to_string(V)};
    r.flops = double(n * d);
    r.bytes = 4.0 * n + kF * (n * d + V * d);
    b.run(r, S, [&](int s) { p.dout = S(g, s); p.dweight = S(dw, s); embedding_backward(p); }, [&] {
      const Vec64 g64 = widen(S.first(g));
      Vec64 ref(static_cast<size_t>(V * d));
      EmbeddingParams<double> q;
      q.n = n; q.V = V; q.d = d; q.padding_idx = 1; q.ids = ids.data(); q.dout = g64.data(); q.dweight = ref.data();
      reference_embedding_backward(q);
      return max_abs_diff(S.first(dw), ref);
    });
  }
}

// ---- cross-entropy: logits [kRows, kVocab] ----
void time_cross_entropy(Bench& b, std::mt19937_64& rng) {
  const int64_t N = kRows, C = kVocab, check_rows = 256;  // the float64 check covers the first rows
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (auto& v : t) v = int32_t(rng() % C);
  auto params = [&](auto* logits, auto* loss, auto* lse, auto* dloss, auto* dlogits, int64_t rows) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(logits)>>;
    CrossEntropyParams<T> p;
    p.N = rows; p.C = C; p.label_smoothing = 0.1; p.logits = logits; p.targets = t.data();
    p.loss = loss; p.lse = lse; p.dloss = dloss; p.dlogits = dlogits;
    return p;
  };
  const Vec dloss(static_cast<size_t>(N), 1.0f / N);  // the gradient of a mean over the rows
  {  // cross_entropy_fwd: logits [N, C], targets, loss, lse [N]
    Sets S(kF * N * C);
    const int z = S.add(b.X, N * C), l = S.add({}, N), e = S.add({}, N);
    Record r{"cross_entropy_fwd", dims({N, C}), "s=0.1"};
    r.bytes = kF * (N * C + 3 * N);
    b.run(r, S, [&](int s) { cross_entropy_forward(params(S(z, s), S(l, s), S(e, s), (float*)nullptr, (float*)nullptr, N)); },
          [&] {
            const Vec64 z64 = prefix64(S.first(z), check_rows * C);
            Vec64 loss(static_cast<size_t>(check_rows)), lse(static_cast<size_t>(check_rows));
            reference_cross_entropy_forward(params(z64.data(), loss.data(), lse.data(), (double*)nullptr, (double*)nullptr, check_rows));
            return prefix_err(S.first(l), loss);
          });
  }
  {  // cross_entropy_bwd: logits, dlogits [N, C]; targets, lse, dloss [N]
    Vec lse(static_cast<size_t>(N)), loss(static_cast<size_t>(N));
    Sets S(2 * kF * N * C);
    const int z = S.add(b.X, N * C), e = S.add({}, N), g = S.add(dloss, N), dz = S.add({}, N * C);
    for (int s = 0; s < S.count(); ++s) cross_entropy_forward(params(S(z, s), loss.data(), S(e, s), (float*)nullptr, (float*)nullptr, N));
    Record r{"cross_entropy_bwd", dims({N, C}), "s=0.1"};
    r.bytes = kF * (2 * N * C + 3 * N);
    b.run(r, S, [&](int s) { cross_entropy_backward(params(S(z, s), (float*)nullptr, S(e, s), S(g, s), S(dz, s), N)); },
          [&] {
            const Vec64 z64 = prefix64(S.first(z), check_rows * C), g64 = prefix64(S.first(g), check_rows);
            Vec64 l64(static_cast<size_t>(check_rows)), e64(static_cast<size_t>(check_rows)), dz64(static_cast<size_t>(check_rows * C));
            auto p = params(z64.data(), l64.data(), e64.data(), g64.data(), dz64.data(), check_rows);
            reference_cross_entropy_forward(p);
            reference_cross_entropy_backward(p);
            return prefix_err(S.first(dz), dz64);
          });
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  if (!validate_all()) return 1;
  if (flags.validate_only) return 0;
  // Every case allocates a few hundred MiB and frees it. glibc would map and unmap each large
  // buffer, and the page faults of the fresh pages (slow in a VM) would cost more than the
  // timing; kept on the heap instead, the next case reuses pages already touched.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());

  Report report("nn", flags, measure_peaks(flags.reps));
  std::mt19937_64 rng(7);
  Bench b{report, flags.reps, randn(static_cast<size_t>(kRows * 1024), rng), randn(static_cast<size_t>(kRows * 1024), rng)};
  for (int64_t d : {256, 1024}) {
    report.header("elementwise and layout, float32, rows of d=" + std::to_string(d));
    time_elementwise(b, d);
    report.header("layer norm, activations, dropout, embedding, float32, d=" + std::to_string(d));
    time_nn(b, d);
    time_embedding(b, d, rng);
  }
  report.header("cross-entropy, float32, label smoothing 0.1");
  time_cross_entropy(b, rng);
  return report.write() ? 0 : 1;
}
