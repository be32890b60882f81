// The validation half of bench_nn: every elementwise and nn kernel in float32 against the float64
// reference (native/reference/), on small and odd shapes, outputs poisoned with NaN first.
//   - kernels whose float32 result is exactly defined (copies, add/mul, scale-shift, ReLU,
//     dropout, embedding) must equal the plain float32 implementation of the same math;
//   - the others (sums, layer norm, GELU, cross-entropy) meet design.md's policy: error at most
//     2x (forward) / 3x (backward) that of the plain float32 implementation, plus 4 ulp of the
//     size of the values summed.
// Included by bench_nn.cc only; fresh random inputs each run, the seed printed.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../native/kernels/elementwise.h"
#include "../native/kernels/nn_kernels.h"
#include "../native/reference/elementwise_reference.h"
#include "../native/reference/nn_reference.h"
#include "bench_common.h"

namespace luna::bench::nn {

using Vec = std::vector<float>;
using Vec64 = std::vector<double>;
constexpr double kUlp32 = 1.0 / (1 << 23);

inline Vec64 widen(const Vec& x) { return Vec64(x.begin(), x.end()); }
inline Vec poisoned(size_t n) { return Vec(n, std::numeric_limits<float>::quiet_NaN()); }
inline Vec64 poisoned64(size_t n) { return Vec64(n, std::numeric_limits<double>::quiet_NaN()); }

inline double max_abs(const Vec64& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}

// Contiguous element strides of a shape.
inline std::vector<int64_t> contiguous(const std::vector<int64_t>& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (int d = int(shape.size()) - 2; d >= 0; --d) s[d] = s[d + 1] * shape[d + 1];
  return s;
}

inline int64_t count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t v : shape) n *= v;
  return n;
}

// The strides that read an input of shape `in` broadcast to `out` (same rank, dims 1 or equal).
inline std::vector<int64_t> broadcast_strides(const std::vector<int64_t>& in, const std::vector<int64_t>& out) {
  std::vector<int64_t> s = contiguous(in);
  for (size_t d = 0; d < in.size(); ++d)
    if (in[d] == 1 && out[d] != 1) s[d] = 0;
  return s;
}

class Checks {
 public:
  // design.md's policy, with the floor 4 ulp of `scale` (the largest true value unless given).
  void policy(const std::string& what, const Vec& fast, const Vec& plain, const Vec64& ref, double factor,
              double scale = -1) {
    const double ef = max_abs_diff(fast, ref), ep = max_abs_diff(plain, ref);
    const double bound = factor * ep + 4 * kUlp32 * (scale >= 0 ? scale : max_abs(ref));
    note(what, ef <= bound, ef, bound, ep);
  }

  // Equal as numbers to what the plain float32 implementation gives (NaN where it gives NaN).
  void exact(const std::string& what, const Vec& fast, const Vec& expected) {
    size_t bad = 0;
    while (bad < fast.size() && bad < expected.size() &&
           (fast[bad] == expected[bad] || (std::isnan(fast[bad]) && std::isnan(expected[bad]))))
      ++bad;
    ++run_;
    if (bad == fast.size() && bad == expected.size()) return;
    ++failed_;
    std::printf("  FAIL %s: element %zu is %.9g, expected %.9g\n", what.c_str(), bad,
                bad < fast.size() ? fast[bad] : NAN, bad < expected.size() ? expected[bad] : NAN);
  }

  int run() const { return run_; }
  int failed() const { return failed_; }

 private:
  void note(const std::string& what, bool ok, double err, double bound, double plain) {
    ++run_;
    if (ok) return;
    ++failed_;
    std::printf("  FAIL %s: error %.3g > bound %.3g (plain float32 %.3g)\n", what.c_str(), err, bound, plain);
  }
  int run_ = 0, failed_ = 0;
};

// ---- elementwise, layout and reductions ----

inline void validate_binary(Checks& c, std::mt19937_64& rng) {
  struct Case { std::vector<int64_t> out, a, b; };
  const std::vector<Case> cases = {
      {{37, 129}, {37, 129}, {37, 129}}, {{37, 129}, {37, 129}, {1, 129}}, {{37, 129}, {37, 1}, {37, 129}},
      {{3, 4, 5, 17}, {3, 1, 5, 17}, {1, 4, 5, 1}}, {{100003}, {100003}, {1}}, {{1}, {1}, {1}},
      {{2, 3, 4, 5, 6}, {2, 1, 4, 1, 6}, {1, 3, 1, 5, 1}}, {{64, 1024}, {64, 1024}, {1, 1024}}};
  for (const Case& k : cases)
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul}) {
      const Vec a = randn(count(k.a), rng), b = randn(count(k.b), rng);
      Vec fast = poisoned(count(k.out)), plain = poisoned(count(k.out));
      BinaryParams<float> p;
      p.a = a.data(); p.b = b.data(); p.out = fast.data(); p.rank = int(k.out.size()); p.op = op;
      const auto sa = broadcast_strides(k.a, k.out), sb = broadcast_strides(k.b, k.out);
      for (int d = 0; d < p.rank; ++d) p.shape[d] = k.out[d], p.a_stride[d] = sa[d], p.b_stride[d] = sb[d];
      binary_op(p);
      p.out = plain.data();
      reference_binary(p);
      c.exact("binary op " + std::to_string(int(op)) + " out rank " + std::to_string(p.rank), fast, plain);
    }
}

inline void validate_strided_copy(Checks& c, std::mt19937_64& rng) {
  // An input of shape `in` permuted by `perm` (out dim d is in dim perm[d]), or broadcast.
  struct Case { std::vector<int64_t> in; std::vector<int> perm; };
  const std::vector<Case> cases = {{{33, 70}, {1, 0}},         {{64, 64}, {1, 0}},         {{2, 37, 3, 16}, {0, 2, 1, 3}},
                                   {{2, 3, 37, 16}, {0, 2, 1, 3}}, {{2, 3, 4, 5}, {3, 1, 0, 2}}, {{5, 1000}, {1, 0}},
                                   {{1, 7}, {1, 0}}};
  for (const Case& k : cases) {
    const Vec x = randn(count(k.in), rng);
    const auto in_stride = contiguous(k.in);
    StridedCopyParams<float> p;
    p.x = x.data(); p.rank = int(k.in.size());
    for (int d = 0; d < p.rank; ++d) p.shape[d] = k.in[k.perm[d]], p.stride[d] = in_stride[k.perm[d]];
    Vec fast = poisoned(x.size()), plain = poisoned(x.size());
    p.out = fast.data();
    strided_copy(p);
    p.out = plain.data();
    reference_strided_copy(p);
    c.exact("strided copy (permute) rank " + std::to_string(p.rank), fast, plain);
  }
  // Broadcast: a [5] row read with stride 0 into [4, 5].
  const Vec row = randn(5, rng);
  StridedCopyParams<float> p;
  p.x = row.data(); p.rank = 2; p.shape[0] = 4; p.shape[1] = 5; p.stride[0] = 0; p.stride[1] = 1;
  Vec fast = poisoned(20), plain = poisoned(20);
  p.out = fast.data();
  strided_copy(p);
  p.out = plain.data();
  reference_strided_copy(p);
  c.exact("strided copy (broadcast)", fast, plain);
}

// The plain float32 implementation of reduce_to: every element added, in index order, to its
// output in float. (reference_reduce_to<float> adds in double: it is not the plain float32 sum.)
inline void plain_reduce(const ReduceParams<float>& p, float* out) {
  int64_t n_out = 1, n_in = 1;
  for (int d = 0; d < p.rank; ++d) n_out *= p.out_shape[d], n_in *= p.in_shape[d];
  std::fill(out, out + n_out, 0.0f);
  for (int64_t i = 0; i < n_in; ++i) {
    int64_t rest = i, o = 0, step = 1;
    for (int d = p.rank - 1; d >= 0; --d) {
      const int64_t idx = rest % p.in_shape[d];
      rest /= p.in_shape[d];
      if (p.out_shape[d] != 1) o += idx * step;
      step *= p.out_shape[d];
    }
    out[o] += p.x[i];
  }
}

inline void validate_reduce(Checks& c, std::mt19937_64& rng) {
  struct Case { std::vector<int64_t> in, out; };
  const std::vector<Case> cases = {{{300, 77}, {1, 77}},       {{300, 77}, {300, 1}},     {{3, 50000}, {3, 1}},
                                   {{40000, 3}, {1, 3}},       {{4, 5, 6, 7}, {1, 5, 1, 7}}, {{6, 1, 9}, {1, 1, 9}},
                                   {{16384, 256}, {1, 256}},   {{2, 3}, {2, 3}}};
  for (const Case& k : cases) {
    const Vec x = randn(count(k.in), rng);
    Vec fast = poisoned(count(k.out)), plain = poisoned(count(k.out));
    ReduceParams<float> p;
    p.x = x.data(); p.out = fast.data(); p.rank = int(k.in.size());
    for (int d = 0; d < p.rank; ++d) p.in_shape[d] = k.in[d], p.out_shape[d] = k.out[d];
    reduce_to(p);
    plain_reduce(p, plain.data());
    // The truth, and the size of what each output sums (the reference over |x|): the floor.
    Vec64 x64 = widen(x), ref = poisoned64(fast.size()), scale = poisoned64(fast.size());
    ReduceParams<double> r;
    r.x = x64.data(); r.out = ref.data(); r.rank = p.rank;
    for (int d = 0; d < p.rank; ++d) r.in_shape[d] = k.in[d], r.out_shape[d] = k.out[d];
    reference_reduce_to(r);
    for (double& v : x64) v = std::fabs(v);
    r.out = scale.data();
    reference_reduce_to(r);
    c.policy("reduce_to " + std::to_string(count(k.in)) + " -> " + std::to_string(count(k.out)), fast, plain, ref, 3,
             max_abs(scale));
  }
}

inline void validate_scale_shift_and_blocks(Checks& c, std::mt19937_64& rng) {
  const int64_t n = 100003;
  const Vec x = randn(n, rng);
  Vec fast = poisoned(n), plain(n);
  scale_shift(x.data(), fast.data(), n, 0.7f, -1.3f);
  for (int64_t i = 0; i < n; ++i) plain[i] = 0.7f * x[i] + -1.3f;
  c.exact("scale_shift", fast, plain);

  // Columns [5, 45) of a [37, 50] block into columns [20, 60) of a [37, 80] one: the rest of the
  // destination must keep its old values.
  const int64_t rows = 37, cols = 40;
  const Vec src = randn(rows * 50, rng);
  Vec dst(rows * 80, 7.0f), expected(rows * 80, 7.0f);
  BlockCopyParams<float> p;
  p.src = src.data(); p.dst = dst.data(); p.rows = rows; p.cols = cols;
  p.src_stride = 50; p.src_offset = 5; p.dst_stride = 80; p.dst_offset = 20;
  copy_blocks(p);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) expected[20 + r * 80 + j] = src[5 + r * 50 + j];
  c.exact("copy_blocks", dst, expected);
}

// ---- nn kernels ----

inline void validate_layer_norm(Checks& c, std::mt19937_64& rng) {
  struct Case { int64_t rows, d; float shift; bool affine; };
  for (const Case& k : {Case{64, 5, 0, true}, Case{64, 64, 3, true}, Case{48, 768, 0, true}, Case{40, 1001, 10, true},
                        Case{33, 256, 0, true}, Case{17, 100, 1, false}}) {
    Vec x = randn(k.rows * k.d, rng), w = randn(k.d, rng), b = randn(k.d, rng), g = randn(k.rows * k.d, rng);
    for (float& v : x) v += k.shift;
    // One run of forward then backward into fresh (NaN) outputs, in T; ref: the reference kernels.
    auto run = [&](auto zero, bool ref) {
      using T = decltype(zero);
      struct Out { std::vector<T> out, mean, rstd, dx, dw, db; } o;
      const std::vector<T> xt(x.begin(), x.end()), wt(w.begin(), w.end()), bt(b.begin(), b.end()), gt(g.begin(), g.end());
      const T nan = std::numeric_limits<T>::quiet_NaN();
      o.out.assign(x.size(), nan); o.mean.assign(k.rows, nan); o.rstd.assign(k.rows, nan);
      o.dx.assign(x.size(), nan); o.dw.assign(k.d, nan); o.db.assign(k.d, nan);
      LayerNormParams<T> p;
      p.rows = k.rows; p.d = k.d; p.x = xt.data(); p.weight = k.affine ? wt.data() : nullptr;
      p.bias = k.affine ? bt.data() : nullptr; p.out = o.out.data(); p.mean = o.mean.data(); p.rstd = o.rstd.data();
      p.dout = gt.data(); p.dx = o.dx.data(); p.dweight = o.dw.data(); p.dbias = o.db.data();
      if (ref) { reference_layer_norm_forward(p); reference_layer_norm_backward(p); }
      else { layer_norm_forward(p); layer_norm_backward(p); }
      return o;
    };
    const auto fast = run(0.0f, false), plain = run(0.0f, true);
    const auto ref = run(0.0, true);
    const std::string at = " rows=" + std::to_string(k.rows) + " d=" + std::to_string(k.d);
    c.policy("layer_norm out" + at, fast.out, plain.out, ref.out, 2);
    c.policy("layer_norm mean" + at, fast.mean, plain.mean, ref.mean, 2);
    c.policy("layer_norm rstd" + at, fast.rstd, plain.rstd, ref.rstd, 2);
    c.policy("layer_norm dx" + at, fast.dx, plain.dx, ref.dx, 3);
    c.policy("layer_norm dweight" + at, fast.dw, plain.dw, ref.dw, 3);
    c.policy("layer_norm dbias" + at, fast.db, plain.db, ref.db, 3);
  }
}

inline void validate_activations(Checks& c, std::mt19937_64& rng) {
  const int64_t n = 20011;  // odd, so every vector loop has a scalar tail
  std::uniform_real_distribution<float> wide(-12, 12);
  // GELU on three input sets, so that the bulk's large values cannot hide an error in the small
  // ones or in the negative tail, where erfc underflows.
  for (const char* set : {"bulk", "small", "tail"}) {
    Vec x = randn(n, rng, 3), g = randn(n, rng);
    for (int64_t i = 0; i < n; ++i) {
      if (set[0] == 'b' && i % 4 == 0) x[i] = wide(rng);
      if (set[0] == 's') x[i] = std::fmod(x[i], 1.5f);
      if (set[0] == 't') x[i] = -3 - std::fabs(wide(rng));
    }
    const Vec64 x64 = widen(x), g64 = widen(g);
    Vec fo = poisoned(n), po = poisoned(n), fd = poisoned(n), pd = poisoned(n);
    Vec64 ro = poisoned64(n), rd = poisoned64(n);
    gelu_forward(ActivationParams<float>{n, x.data(), fo.data(), nullptr, nullptr});
    reference_gelu_forward(ActivationParams<float>{n, x.data(), po.data(), nullptr, nullptr});
    reference_gelu_forward(ActivationParams<double>{n, x64.data(), ro.data(), nullptr, nullptr});
    gelu_backward(ActivationParams<float>{n, x.data(), nullptr, g.data(), fd.data()});
    reference_gelu_backward(ActivationParams<float>{n, x.data(), nullptr, g.data(), pd.data()});
    reference_gelu_backward(ActivationParams<double>{n, x64.data(), nullptr, g64.data(), rd.data()});
    c.policy(std::string("gelu forward ") + set, fo, po, ro, 2);
    c.policy(std::string("gelu backward ") + set, fd, pd, rd, 3);
  }
  // ReLU, with a NaN, zeros of both signs and a run of negatives.
  Vec x = randn(n, rng), g = randn(n, rng);
  x[0] = NAN; x[1] = 0.0f; x[2] = -0.0f;
  Vec fo = poisoned(n), po = poisoned(n), fd = poisoned(n), pd = poisoned(n);
  relu_forward(ActivationParams<float>{n, x.data(), fo.data(), nullptr, nullptr});
  reference_relu_forward(ActivationParams<float>{n, x.data(), po.data(), nullptr, nullptr});
  relu_backward(ActivationParams<float>{n, x.data(), nullptr, g.data(), fd.data()});
  reference_relu_backward(ActivationParams<float>{n, x.data(), nullptr, g.data(), pd.data()});
  c.exact("relu forward", fo, po);
  c.exact("relu backward", fd, pd);
  // Dropout: the forward (on x) and the backward (the same map on dout) at several p.
  const uint64_t seed = rng() >> 11;
  for (double p : {0.0, 0.1, 0.5, 1.0})
    for (const Vec* in : {&x, &g}) {
      Vec fast = poisoned(n), plain = poisoned(n);
      dropout_apply(DropoutParams<float>{n, p, seed, in->data(), fast.data()});
      reference_dropout_apply(DropoutParams<float>{n, p, seed, in->data(), plain.data()});
      c.exact(std::string("dropout ") + (in == &x ? "forward" : "backward") + " p=" + std::to_string(p), fast, plain);
    }
}

inline void validate_embedding_and_loss(Checks& c, std::mt19937_64& rng) {
  // Embedding: the forward copies rows, the backward is documented bitwise equal to the plain loop.
  for (int64_t d : {900, 7, 64}) {
    const int64_t n = 300, V = 50, pad = d == 7 ? -1 : 3;
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = int32_t(rng() % V);
    const Vec w = randn(V * d, rng), g = randn(n * d, rng);
    Vec fo = poisoned(n * d), po = poisoned(n * d), fw = poisoned(V * d), pw = poisoned(V * d);
    EmbeddingParams<float> p;
    p.n = n; p.V = V; p.d = d; p.padding_idx = pad; p.ids = ids.data(); p.weight = w.data(); p.dout = g.data();
    p.out = fo.data(); p.dweight = fw.data();
    embedding_forward(p);
    embedding_backward(p);
    p.out = po.data(); p.dweight = pw.data();
    reference_embedding_forward(p);
    reference_embedding_backward(p);
    c.exact("embedding forward d=" + std::to_string(d), fo, po);
    c.exact("embedding backward d=" + std::to_string(d), fw, pw);
  }
  // Cross-entropy, with label smoothing and an ignored last row.
  struct Case { int64_t N, C; float scale; double s; };
  for (const Case& k : {Case{64, 3, 1, 0}, Case{64, 100, 4, 0.1}, Case{32, 1000, 3, 0}, Case{16, 4099, 2, 0.3}}) {
    const Vec z = randn(k.N * k.C, rng, k.scale), dloss = randn(k.N, rng);
    std::vector<int32_t> t(k.N);
    for (auto& v : t) v = int32_t(rng() % k.C);
    t[k.N - 1] = -100;
    auto run = [&](auto zero, bool ref) {
      using T = decltype(zero);
      const std::vector<T> zt(z.begin(), z.end()), gt(dloss.begin(), dloss.end());
      const T nan = std::numeric_limits<T>::quiet_NaN();
      struct Out { std::vector<T> loss, lse, dlogits; } o{std::vector<T>(k.N, nan), std::vector<T>(k.N, nan),
                                                         std::vector<T>(k.N * k.C, nan)};
      CrossEntropyParams<T> p;
      p.N = k.N; p.C = k.C; p.label_smoothing = k.s; p.logits = zt.data(); p.targets = t.data();
      p.loss = o.loss.data(); p.lse = o.lse.data(); p.dloss = gt.data(); p.dlogits = o.dlogits.data();
      if (ref) { reference_cross_entropy_forward(p); reference_cross_entropy_backward(p); }
      else { cross_entropy_forward(p); cross_entropy_backward(p); }
      return o;
    };
    const auto fast = run(0.0f, false), plain = run(0.0f, true);
    const auto ref = run(0.0, true);
    const std::string at = " N=" + std::to_string(k.N) + " C=" + std::to_string(k.C);
    c.policy("cross_entropy loss" + at, fast.loss, plain.loss, ref.loss, 2);
    c.policy("cross_entropy lse" + at, fast.lse, plain.lse, ref.lse, 2);
    c.policy("cross_entropy dlogits" + at, fast.dlogits, plain.dlogits, ref.dlogits, 3);
  }
}

// Every check above; true when all pass.
inline bool validate_all() {
  const uint64_t seed = validation_seed();
  std::mt19937_64 rng(seed);
  Checks c;
  validate_binary(c, rng);
  validate_strided_copy(c, rng);
  validate_reduce(c, rng);
  validate_scale_shift_and_blocks(c, rng);
  validate_layer_norm(c, rng);
  validate_activations(c, rng);
  validate_embedding_and_loss(c, rng);
  std::printf("validation (isa %s, %d threads, seed %llu): %d checks, %d failed\n", isa_name(active_isa()),
              num_threads(), static_cast<unsigned long long>(seed), c.run(), c.failed());
  return c.failed() == 0;
}

}  // namespace luna::bench::nn
