// The CUDA check of the nn building blocks (cuda/nn_cuda.h): layer norm, GELU/ReLU, dropout,
// embedding and cross-entropy.
//
// Validation, on fresh random inputs with every output poisoned (NaN) first:
//   - layer norm, GELU and cross-entropy meet design.md's policy against the float64 reference
//     (native/reference/nn_reference.h), the plain float32 implementation being the same reference
//     run in float32. A backward is checked as a chain: each of float64, plain float32 and CUDA
//     uses its own forward's saved statistics (mean/rstd, lse), as a training step does;
//   - ReLU, dropout and the embedding are exact: equal bit for bit to the plain float32 reference
//     and to the CPU kernel (dropout: the same counter RNG mask; the embedding backward: the same
//     summation order as the CPU's stable bucketing).
// Shapes: sizes of 1, odd sizes, every register width of the layer norm (d up to 128, 256, 512,
// 1024 and wider), rows spread over many row blocks, weight/bias/dx/dweight/dbias present or
// absent, arrays off the 16-byte grid (float4 paths off), dropout p = 0 and p = 1, repeated ids,
// a padding row, an id count above the sort's shared-memory tile, ignored targets (the default
// -100 and a class value), label smoothing.
//
// Benchmark: the encoder-layer shapes (16384 tokens = B 4 x n 4096, d 256 and the FFN width 1024;
// cross-entropy over 16384 x 8192 and 4096 x 32000), GB/s against the fewest bytes each call must
// move (bench/bench_nn.cc counts them the same way) and the device copy bandwidth. The anchors
// (bench/gpu/torch_anchors.py): layer_norm_256_fwdbwd, gelu_1024_fwdbwd, cross_entropy_fwdbwd.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../cuda/nn_cuda.h"
#include "../../native/kernels/nn_kernels.h"
#include "../../native/reference/nn_reference.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

using Vec = std::vector<float>;
using Vec64 = std::vector<double>;
using Ids = std::vector<int32_t>;
constexpr double kF = sizeof(float);

// A size as size_t (a named function: `Vec v(size_t(n))` would declare a function).
inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

Vec64 widen(const Vec& v) { return Vec64(v.begin(), v.end()); }

std::string shape(std::initializer_list<int64_t> dims) {
  std::string s = "[";
  for (int64_t d : dims) s += (s.size() > 1 ? "," : "") + std::to_string(d);
  return s + "]";
}

// A device copy of `host` placed `shift` floats into its allocation (shift 1: off the 16-byte
// grid), or an output of n elements poisoned with NaN.
struct Placed {
  DeviceArray<float> mem;
  int shift;
  Placed(const Vec& host, int shift_) : mem(host.size() + sz(shift_)), shift(shift_) {
    Vec padded(sz(shift), 0.f);
    padded.insert(padded.end(), host.begin(), host.end());
    mem.upload(padded);
  }
  Placed(size_t n, int shift_) : mem(n + sz(shift_)), shift(shift_) { mem.poison(); }
  float* get() const { return mem.get() + shift; }
  Vec download() const {
    const Vec all = mem.download();
    return Vec(all.begin() + shift, all.end());
  }
};

// ---- layer norm ----

struct LnCase {
  int64_t rows, d;
  bool weight, bias, dx, dweight, dbias;
  int shift;
};

void check_layer_norm(Context& ctx, const LnCase& c) {
  const int64_t n = c.rows * c.d;
  const std::string tag = "layer_norm " + shape({c.rows, c.d}) + (c.weight ? "" : " no-weight") + (c.bias ? "" : " no-bias") +
                          (c.shift ? " unaligned" : "");
  // An offset mean (3) against a unit spread: the variance must be taken about the mean.
  Vec x = ctx.randn(sz(n));
  for (float& v : x) v += 3.f;
  const Vec w = ctx.randn(sz(c.d)), b = ctx.randn(sz(c.d)), g = ctx.randn(sz(n));
  const Vec64 x64 = widen(x), w64 = widen(w), b64 = widen(b), g64 = widen(g);

  auto params = [&](auto* X, auto* W, auto* B, auto* out, auto* mean, auto* rstd) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(X)>>;
    LayerNormParams<T> p;
    p.rows = c.rows, p.d = c.d, p.eps = 1e-5, p.x = X;
    p.weight = c.weight ? W : nullptr, p.bias = c.bias ? B : nullptr;
    p.out = out, p.mean = mean, p.rstd = rstd;
    return p;
  };
  // float64 truth and plain float32, forward then backward.
  Vec64 o64(sz(n)), m64(sz(c.rows)), r64(sz(c.rows)), dx64(sz(n)), dw64(sz(c.d)), db64(sz(c.d));
  Vec o32(sz(n)), m32(sz(c.rows)), r32(sz(c.rows)), dx32(sz(n)), dw32(sz(c.d)), db32(sz(c.d));
  auto p64 = params(x64.data(), w64.data(), b64.data(), o64.data(), m64.data(), r64.data());
  auto p32 = params(x.data(), w.data(), b.data(), o32.data(), m32.data(), r32.data());
  reference_layer_norm_forward(p64);
  reference_layer_norm_forward(p32);
  p64.dout = g64.data(), p32.dout = g.data();
  p64.dx = c.dx ? dx64.data() : nullptr, p32.dx = c.dx ? dx32.data() : nullptr;
  p64.dweight = c.dweight ? dw64.data() : nullptr, p32.dweight = c.dweight ? dw32.data() : nullptr;
  p64.dbias = c.dbias ? db64.data() : nullptr, p32.dbias = c.dbias ? db32.data() : nullptr;
  reference_layer_norm_backward(p64);
  reference_layer_norm_backward(p32);

  const int s = c.shift;
  Placed dX(x, s), dW(w, s), dB(b, s), dG(g, s), dO(sz(n), s), dM(sz(c.rows), s), dR(sz(c.rows), s);
  Placed ddx(sz(n), s), ddw(sz(c.d), s), ddb(sz(c.d), s);
  auto pc = params((const float*)dX.get(), (const float*)dW.get(), (const float*)dB.get(), dO.get(), dM.get(), dR.get());
  cuda::layer_norm_forward(pc);
  pc.dout = dG.get();
  pc.dx = c.dx ? ddx.get() : nullptr, pc.dweight = c.dweight ? ddw.get() : nullptr, pc.dbias = c.dbias ? ddb.get() : nullptr;
  cuda::layer_norm_backward(pc);

  expect_policy(ctx, tag + " out", dO.download(), o32, o64, 2);
  expect_policy(ctx, tag + " mean", dM.download(), m32, m64, 2);
  expect_policy(ctx, tag + " rstd", dR.download(), r32, r64, 2);
  if (c.dx) expect_policy(ctx, tag + " dx", ddx.download(), dx32, dx64, 3);
  if (c.dweight) expect_policy(ctx, tag + " dweight", ddw.download(), dw32, dw64, 3);
  if (c.dbias) expect_policy(ctx, tag + " dbias", ddb.download(), db32, db64, 3);
  // An output that was not asked for stays untouched (still the poison).
  if (!c.dx) {
    const Vec untouched = ddx.download();
    ++ctx.cases;
    if (!std::all_of(untouched.begin(), untouched.end(), [](float v) { return std::isnan(v); })) {
      std::printf("  FAIL %s: dx was not wanted, yet written\n", tag.c_str());
      ++ctx.failures;
    }
  }
}

// ---- activations and dropout ----

void check_activations(Context& ctx, int64_t n, int shift) {
  const std::string tag = " n=" + std::to_string(n) + (shift ? " unaligned" : "");
  // A wide spread (sd 3) reaches GELU's tails, where the erfc form matters.
  Vec x = ctx.randn(sz(n), 3.f);
  if (n > 2) x[0] = 0.f, x[1] = -0.f;  // ReLU's slope at exactly zero
  const Vec g = ctx.randn(sz(n));
  const Vec64 x64 = widen(x), g64 = widen(g);
  Placed dX(x, shift), dG(g, shift);

  for (int act = 0; act < 2; ++act) {
    const bool gelu = act == 0;
    Vec64 o64(sz(n)), dx64(sz(n));
    Vec o32(sz(n)), dx32(sz(n));
    ActivationParams<double> p64{n, x64.data(), o64.data(), g64.data(), dx64.data()};
    ActivationParams<float> p32{n, x.data(), o32.data(), g.data(), dx32.data()};
    Placed dO(sz(n), shift), dDx(sz(n), shift);
    ActivationParams<float> pc{n, dX.get(), dO.get(), dG.get(), dDx.get()};
    if (gelu) {
      reference_gelu_forward(p64), reference_gelu_forward(p32), cuda::gelu_forward(pc);
      reference_gelu_backward(p64), reference_gelu_backward(p32), cuda::gelu_backward(pc);
      expect_policy(ctx, "gelu fwd" + tag, dO.download(), o32, o64, 2);
      expect_policy(ctx, "gelu bwd" + tag, dDx.download(), dx32, dx64, 3);
    } else {
      reference_relu_forward(p32), cuda::relu_forward(pc);
      reference_relu_backward(p32), cuda::relu_backward(pc);
      expect_equal(ctx, "relu fwd" + tag, dO.download(), o32);
      expect_equal(ctx, "relu bwd" + tag, dDx.download(), dx32);
    }
  }
}

void check_dropout(Context& ctx, int64_t n, double prob, int shift) {
  const std::string tag = "dropout n=" + std::to_string(n) + " p=" + std::to_string(prob) + (shift ? " unaligned" : "");
  const Vec x = ctx.randn(sz(n));
  // Seeds anywhere in the binding's range [0, 2^53).
  const uint64_t seed = std::uniform_int_distribution<uint64_t>(0, (uint64_t(1) << 53) - 1)(ctx.rng);
  Vec ref(sz(n)), cpu(sz(n));
  DropoutParams<float> p{n, prob, seed, x.data(), ref.data()};
  reference_dropout_apply(p);
  p.out = cpu.data();
  dropout_apply(p);
  Placed dX(x, shift), dO(sz(n), shift);
  cuda::dropout_apply(DropoutParams<float>{n, prob, seed, dX.get(), dO.get()});
  const Vec got = dO.download();
  expect_equal(ctx, tag + " vs reference", got, ref);
  expect_equal(ctx, tag + " vs cpu kernel", got, cpu);
}

// ---- embedding ----

void check_embedding(Context& ctx, int64_t n, int64_t V, int64_t d, int64_t padding_idx) {
  const std::string tag = "embedding n=" + std::to_string(n) + " V=" + std::to_string(V) + " d=" + std::to_string(d) +
                          " pad=" + std::to_string(padding_idx);
  // Ids from a small part of the vocabulary, so rows repeat many times, and the padding id often.
  std::uniform_int_distribution<int32_t> pick(0, int32_t(std::max<int64_t>(1, V / 3)) - 1);
  Ids ids(sz(n));
  for (auto& id : ids) id = pick(ctx.rng);
  if (padding_idx >= 0)
    for (size_t i = 0; i < ids.size(); i += 3) ids[i] = int32_t(padding_idx);
  const Vec w = ctx.randn(sz(V * d)), g = ctx.randn(sz(n * d));
  const Vec64 w64 = widen(w), g64 = widen(g);

  Vec out_ref(sz(n * d)), dw_ref(sz(V * d)), dw_cpu(sz(V * d));
  Vec64 dw64(sz(V * d));
  EmbeddingParams<float> p{n, V, d, padding_idx, ids.data(), w.data(), out_ref.data(), g.data(), dw_ref.data()};
  reference_embedding_forward(p);
  reference_embedding_backward(p);
  p.dweight = dw_cpu.data();
  embedding_backward(p);
  EmbeddingParams<double> p64{n, V, d, padding_idx, ids.data(), w64.data(), nullptr, g64.data(), dw64.data()};
  reference_embedding_backward(p64);

  DeviceArray<int32_t> dIds(ids);
  Placed dW(w, 0), dG(g, 0), dO(sz(n * d), 0), dDw(sz(V * d), 0);
  EmbeddingParams<float> pc{n, V, d, padding_idx, dIds.get(), dW.get(), dO.get(), dG.get(), dDw.get()};
  cuda::embedding_forward(pc);
  cuda::embedding_backward(pc);
  expect_equal(ctx, tag + " fwd", dO.download(), out_ref);
  const Vec dw = dDw.download();
  expect_equal(ctx, tag + " bwd vs cpu kernel", dw, dw_cpu);
  expect_policy(ctx, tag + " bwd", dw, dw_ref, dw64, 3);
}

// ---- cross-entropy ----

void check_cross_entropy(Context& ctx, int64_t N, int64_t C, double smoothing, int64_t ignore_index, int shift) {
  const std::string tag = "cross_entropy " + shape({N, C}) + " s=" + std::to_string(smoothing) +
                          " ignore=" + std::to_string(ignore_index) + (shift ? " unaligned" : "");
  // Logits with a spread of 4: confident rows, where exp(z - lse) underflows for most classes.
  const Vec z = ctx.randn(sz(N * C), 4.f), dloss = ctx.randn(sz(N));
  std::uniform_int_distribution<int32_t> pick(0, int32_t(C) - 1);
  Ids t(sz(N));
  for (auto& v : t) v = pick(ctx.rng);
  for (size_t i = 1; i < t.size(); i += 4) t[i] = int32_t(ignore_index);  // (a class value when >= 0)
  const Vec64 z64 = widen(z), dl64 = widen(dloss);

  auto params = [&](auto* logits, auto* loss, auto* lse, auto* dl, auto* dlogits, const int32_t* targets) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(logits)>>;
    CrossEntropyParams<T> p;
    p.N = N, p.C = C, p.label_smoothing = smoothing, p.ignore_index = ignore_index;
    p.logits = logits, p.targets = targets, p.loss = loss, p.lse = lse, p.dloss = dl, p.dlogits = dlogits;
    return p;
  };
  Vec64 loss64(sz(N)), lse64(sz(N)), dz64(sz(N * C));
  Vec loss32(sz(N)), lse32(sz(N)), dz32(sz(N * C));
  auto p64 = params(z64.data(), loss64.data(), lse64.data(), dl64.data(), dz64.data(), t.data());
  auto p32 = params(z.data(), loss32.data(), lse32.data(), dloss.data(), dz32.data(), t.data());
  reference_cross_entropy_forward(p64), reference_cross_entropy_backward(p64);
  reference_cross_entropy_forward(p32), reference_cross_entropy_backward(p32);

  DeviceArray<int32_t> dT(t);
  Placed dZ(z, shift), dL(sz(N), shift), dE(sz(N), shift), dDl(dloss, shift), dDz(sz(N * C), shift);
  auto pc = params((const float*)dZ.get(), dL.get(), dE.get(), (const float*)dDl.get(), dDz.get(), dT.get());
  cuda::cross_entropy_forward(pc);
  cuda::cross_entropy_backward(pc);
  expect_policy(ctx, tag + " loss", dL.download(), loss32, loss64, 2);
  expect_policy(ctx, tag + " lse", dE.download(), lse32, lse64, 2);
  expect_policy(ctx, tag + " dlogits", dDz.download(), dz32, dz64, 3);
}

void report_copy_fraction(const Context& ctx) {
  if (ctx.validate_only || ctx.rows.empty() || ctx.copy_gbs <= 0 || ctx.rows.back().bytes <= 0) return;
  const Row& r = ctx.rows.back();
  std::printf("  %-28s %.0f%% of the device copy bandwidth (%.0f GB/s)\n", "", 100.0 * r.bytes / r.ms / 1e6 / ctx.copy_gbs,
              ctx.copy_gbs);
}

}  // namespace

void validate_nn(Context& ctx) {
  // rows, d, weight, bias, dx, dweight, dbias, shift. The widths walk through the register
  // buckets (4, 8, 16, 32 columns a lane) and the wide path. The backward's row blocks take about
  // 4096 elements: 600 x 33 makes 5 blocks of 120 rows, 1100 x 7 two of 552 (69 rows a warp),
  // 600 x 3 one block; 40 x 1030 gives the wide path 5 blocks.
  const LnCase ln_cases[] = {
      {1, 1, true, true, true, true, true, 0},         {3, 7, true, true, true, true, true, 0},
      {37, 64, true, true, true, true, true, 0},       {20, 100, false, false, true, false, true, 1},
      {19, 256, true, false, true, true, false, 0},    {13, 300, false, true, false, true, true, 0},
      {9, 1000, true, true, true, true, true, 1},      {9, 1024, true, true, true, true, true, 0},
      {5, 1500, true, true, true, true, true, 0},      {40, 1030, false, true, true, false, true, 1},
      {600, 33, true, true, true, true, true, 0},      {1100, 7, true, true, true, true, true, 0},
      {600, 3, true, false, true, true, true, 0},
  };
  for (const LnCase& c : ln_cases) check_layer_norm(ctx, c);

  for (int64_t n : {1, 5, 1023, 4099}) check_activations(ctx, n, 0);
  check_activations(ctx, 1027, 1);

  for (double prob : {0.0, 0.1, 0.5, 0.97, 1.0}) check_dropout(ctx, 4099, prob, 0);
  check_dropout(ctx, 1, 0.5, 0);
  check_dropout(ctx, 1003, 0.3, 1);

  // n, V, d, padding_idx. 2500 ids sort in 4096 keys: two shared-memory tiles and global strides.
  check_embedding(ctx, 1, 1, 1, -1);
  check_embedding(ctx, 7, 5, 3, 0);
  check_embedding(ctx, 300, 37, 64, 4);
  check_embedding(ctx, 2500, 50, 10, -1);
  check_embedding(ctx, 64, 1000, 33, 999);

  // N, C, label smoothing, ignore_index, shift.
  check_cross_entropy(ctx, 1, 1, 0, -100, 0);
  check_cross_entropy(ctx, 5, 3, 0.1, -100, 0);
  check_cross_entropy(ctx, 17, 10, 0, 2, 0);
  check_cross_entropy(ctx, 8, 1000, 0.1, -100, 0);
  check_cross_entropy(ctx, 6, 4099, 0.2, -100, 1);
  check_cross_entropy(ctx, 3, 32000, 0, -100, 0);
}

void bench_nn(Context& ctx) {
  constexpr int64_t R = 16384;  // tokens: B 4 x n 4096

  for (int64_t d : {256, 1024}) {  // layer norm at the model width and the FFN width
    const int64_t n = R * d;
    DeviceArray<float> x(ctx.randn(sz(n))), w(ctx.randn(sz(d))), b(ctx.randn(sz(d))), g(ctx.randn(sz(n)));
    DeviceArray<float> out(sz(n)), mean(sz(R)), rstd(sz(R)), dx(sz(n)), dw(sz(d)), db(sz(d));
    LayerNormParams<float> p;
    p.rows = R, p.d = d, p.x = x.get(), p.weight = w.get(), p.bias = b.get(), p.out = out.get();
    p.mean = mean.get(), p.rstd = rstd.get(), p.dout = g.get(), p.dx = dx.get(), p.dweight = dw.get(), p.dbias = db.get();
    const std::string sh = shape({R, d});
    const double fwd = kF * (2 * n + 2 * d + 2 * R), bwd = kF * (3 * n + 2 * R + 3 * d);
    time_row(ctx, {"nn", "layer_norm fwd", sh, 0, 8.0 * n, fwd, ""}, [&] { cuda::layer_norm_forward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "layer_norm bwd", sh, 0, 13.0 * n, bwd, ""}, [&] { cuda::layer_norm_backward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "layer_norm fwd+bwd", sh, 0, 21.0 * n, fwd + bwd, d == 256 ? "layer_norm_256_fwdbwd" : ""}, [&] {
      cuda::layer_norm_forward(p);
      cuda::layer_norm_backward(p);
    });
    report_copy_fraction(ctx);
  }

  {  // activations and dropout at the FFN width
    const int64_t n = R * 1024;
    DeviceArray<float> x(ctx.randn(sz(n))), g(ctx.randn(sz(n))), out(sz(n)), dx(sz(n));
    ActivationParams<float> p{n, x.get(), out.get(), g.get(), dx.get()};
    const std::string sh = shape({R, 1024});
    time_row(ctx, {"nn", "gelu fwd", sh, 0, 0, kF * 2 * n, ""}, [&] { cuda::gelu_forward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "gelu bwd", sh, 0, 0, kF * 3 * n, ""}, [&] { cuda::gelu_backward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "gelu fwd+bwd", sh, 0, 0, kF * 5 * n, "gelu_1024_fwdbwd"}, [&] {
      cuda::gelu_forward(p);
      cuda::gelu_backward(p);
    });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "relu fwd+bwd", sh, 0, 0, kF * 5 * n, ""}, [&] {
      cuda::relu_forward(p);
      cuda::relu_backward(p);
    });
    report_copy_fraction(ctx);
    const DropoutParams<float> dp{n, 0.1, 1234, x.get(), out.get()};
    time_row(ctx, {"nn", "dropout p=0.1", sh, 0, 0, kF * 2 * n, ""}, [&] { cuda::dropout_apply(dp); });
    report_copy_fraction(ctx);
  }

  {  // embedding of 16384 tokens from a 32000-word vocabulary at d 256
    const int64_t V = 32000, d = 256;
    Ids ids(sz(R));
    std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
    for (auto& id : ids) id = pick(ctx.rng);
    DeviceArray<int32_t> dIds(ids);
    DeviceArray<float> w(ctx.randn(sz(V * d))), g(ctx.randn(sz(R * d))), out(sz(R * d)), dw(sz(V * d));
    const EmbeddingParams<float> p{R, V, d, 0, dIds.get(), w.get(), out.get(), g.get(), dw.get()};
    const std::string sh = "n=16384 V=32000 d=256";
    time_row(ctx, {"nn", "embedding fwd", sh, 0, 0, 4.0 * R + kF * 2 * R * d, ""}, [&] { cuda::embedding_forward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "embedding bwd", sh, 0, double(R * d), 4.0 * R + kF * (R * d + V * d), ""},
             [&] { cuda::embedding_backward(p); });
    report_copy_fraction(ctx);
  }

  // Cross-entropy with label smoothing 0.1: over 16384 rows of 8192 classes (the shape of the
  // PyTorch anchor and of bench_nn), and over 4096 rows of a 32000-word vocabulary.
  for (const auto& [N, C] : {std::pair<int64_t, int64_t>{16384, 8192}, {4096, 32000}}) {
    Ids t(sz(N));
    std::uniform_int_distribution<int32_t> pick(0, int32_t(C) - 1);
    for (auto& v : t) v = pick(ctx.rng);
    DeviceArray<int32_t> dT(t);
    DeviceArray<float> z(ctx.randn(sz(N * C))), loss(sz(N)), lse(sz(N)), dz(sz(N * C));
    DeviceArray<float> dl(Vec(sz(N), 1.f / float(N)));  // the gradient of a mean over the rows
    CrossEntropyParams<float> p;
    p.N = N, p.C = C, p.label_smoothing = 0.1, p.logits = z.get(), p.targets = dT.get(), p.loss = loss.get();
    p.lse = lse.get(), p.dloss = dl.get(), p.dlogits = dz.get();
    const std::string sh = shape({N, C});
    const double fwd = kF * (N * C + 3 * N), bwd = kF * (2 * N * C + 3 * N);
    time_row(ctx, {"nn", "cross_entropy fwd", sh, 0, 0, fwd, ""}, [&] { cuda::cross_entropy_forward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "cross_entropy bwd", sh, 0, 0, bwd, ""}, [&] { cuda::cross_entropy_backward(p); });
    report_copy_fraction(ctx);
    time_row(ctx, {"nn", "cross_entropy fwd+bwd", sh, 0, 0, fwd + bwd, C == 8192 ? "cross_entropy_fwdbwd" : ""}, [&] {
      cuda::cross_entropy_forward(p);
      cuda::cross_entropy_backward(p);
    });
    report_copy_fraction(ctx);
  }
}

}  // namespace luna::gpu_check
