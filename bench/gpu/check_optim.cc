// The CUDA check of the optimizer family (cuda/optim.cu): the fused Adam/AdamW and SGD updates,
// the gradient-norm reductions and the rescale of clipGradNorm.
//
// The updates run the CPU kernels' float64 per-element arithmetic, so the GPU must give the CPU
// kernel's bits exactly, after every step of a several-step run (weight decay on and off, Adam
// and AdamW, momentum, Nesterov, dampening; sizes 1, odd, a multiple of 4, misaligned so the
// scalar path runs too). After the run, the float32 result is also held to the accuracy policy
// against the same run in float64 storage (the truth), with a plain float32 implementation
// (float32 arithmetic throughout) as the yardstick. The norms are float64 sums of n terms in an
// order of the GPU's own, checked against an extended-precision sum within the bound that any
// summation order obeys, (n - 1) units of roundoff of the sum of the terms' magnitudes.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/optim_cuda.h"
#include "../../native/kernels/optim_kernels.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

constexpr double kRoundoff = 1.0 / 9007199254740992.0;  // 2^-53, float64's unit roundoff

// A device copy of `host` that starts `offset` floats into its allocation: offset 1 gives a
// pointer that is not 16-byte aligned, which sends the Adam launcher down its scalar path.
struct OffsetArray {
  DeviceArray<float> storage;
  size_t offset;
  OffsetArray(const std::vector<float>& host, size_t off) : storage(host.size() + off), offset(off) { upload(host); }
  float* get() const { return storage.get() + offset; }
  void upload(const std::vector<float>& host) {
    if (!host.empty()) cuda::copy_to_device(get(), host.data(), host.size() * sizeof(float));
  }
  std::vector<float> download(size_t n) const {
    std::vector<float> out(n);
    if (n) cuda::copy_to_host(out.data(), get(), n * sizeof(float));
    return out;
  }
};

std::vector<double> widen(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

struct AdamCase {
  const char* name;
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
};

// Adam in float32 arithmetic (the yardstick of the policy): torch's formula, every value float.
void adam_plain(const AdamCase& c, int t, std::vector<float>& p, const std::vector<float>& g, std::vector<float>& m,
                std::vector<float>& v) {
  const float b1 = float(c.beta1), b2 = float(c.beta2), lr = float(c.lr), wd = float(c.weight_decay);
  const float step_size = lr / (1.0f - std::pow(b1, float(t)));
  const float bc2_sqrt = std::sqrt(1.0f - std::pow(b2, float(t)));
  for (size_t i = 0; i < p.size(); ++i) {
    const float gi = c.decoupled ? g[i] : g[i] + wd * p[i];
    if (c.decoupled) p[i] *= 1.0f - lr * wd;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + float(c.eps));
  }
}

void validate_adam(Context& ctx) {
  const AdamCase cases[] = {
      {"adam", 1e-3, 0.9, 0.999, 1e-8, 0.0, false},
      {"adam l2", 3e-3, 0.9, 0.999, 1e-8, 0.1, false},
      {"adamw", 1e-3, 0.9, 0.98, 1e-6, 0.01, true},
      {"adamw big eps", 5e-2, 0.8, 0.9, 1e-2, 0.3, true},
  };
  const int64_t sizes[] = {1, 3, 4, 5, 67, 1000, 4099};
  constexpr int kSteps = 5;
  for (const AdamCase& c : cases) {
    for (const int64_t n : sizes) {
      for (const size_t offset : {size_t(0), size_t(1)}) {
        const std::string what = std::string(c.name) + " n=" + std::to_string(n) + (offset ? " misaligned" : "");
        std::vector<float> p = ctx.randn(size_t(n)), m(size_t(n), 0.f), v(size_t(n), 0.f);
        std::vector<float> plain_p = p, plain_m = m, plain_v = v;
        std::vector<double> true_p = widen(p), true_m(size_t(n), 0.0), true_v(size_t(n), 0.0);
        OffsetArray dp(p, offset), dm(m, offset), dv(v, offset), dg(std::vector<float>(size_t(n)), offset);
        bool same = true;
        for (int t = 1; t <= kSteps && same; ++t) {
          const std::vector<float> g = ctx.randn(size_t(n), 0.5f);
          dg.upload(g);
          AdamParams<float> a;
          a.n = n, a.lr = c.lr, a.beta1 = c.beta1, a.beta2 = c.beta2, a.eps = c.eps, a.weight_decay = c.weight_decay;
          a.decoupled = c.decoupled;
          a.bias_correction1 = 1 - std::pow(c.beta1, t), a.bias_correction2 = 1 - std::pow(c.beta2, t);
          AdamParams<float> on_device = a;
          on_device.param = dp.get(), on_device.grad = dg.get(), on_device.exp_avg = dm.get(), on_device.exp_avg_sq = dv.get();
          cuda::adam_step(on_device);
          a.param = p.data(), a.grad = g.data(), a.exp_avg = m.data(), a.exp_avg_sq = v.data();
          adam_step(a);
          std::vector<double> gd = widen(g);
          AdamParams<double> d;
          d.n = n, d.lr = c.lr, d.beta1 = c.beta1, d.beta2 = c.beta2, d.eps = c.eps, d.weight_decay = c.weight_decay;
          d.decoupled = c.decoupled, d.bias_correction1 = a.bias_correction1, d.bias_correction2 = a.bias_correction2;
          d.param = true_p.data(), d.grad = gd.data(), d.exp_avg = true_m.data(), d.exp_avg_sq = true_v.data();
          adam_step(d);
          adam_plain(c, t, plain_p, g, plain_m, plain_v);
          const std::string at = what + " step " + std::to_string(t);
          same = expect_equal(ctx, at + " param", dp.download(size_t(n)), p) &&
                 expect_equal(ctx, at + " exp_avg", dm.download(size_t(n)), m) &&
                 expect_equal(ctx, at + " exp_avg_sq", dv.download(size_t(n)), v);
        }
        if (same) expect_policy(ctx, what + " param vs float64", dp.download(size_t(n)), plain_p, true_p, 2);
      }
    }
  }
}

struct SgdCase {
  const char* name;
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

void sgd_plain(const SgdCase& c, bool first, std::vector<float>& p, const std::vector<float>& g, std::vector<float>& buf) {
  const float lr = float(c.lr), mom = float(c.momentum), damp = float(c.dampening), wd = float(c.weight_decay);
  for (size_t i = 0; i < p.size(); ++i) {
    float gi = g[i] + wd * p[i];
    if (mom != 0) {
      buf[i] = first ? gi : mom * buf[i] + (1.0f - damp) * gi;
      gi = c.nesterov ? gi + mom * buf[i] : buf[i];
    }
    p[i] -= lr * gi;
  }
}

void validate_sgd(Context& ctx) {
  const SgdCase cases[] = {
      {"sgd", 0.1, 0.0, 0.0, 0.0, false},
      {"sgd l2", 0.05, 0.0, 0.0, 0.01, false},
      {"sgd momentum", 0.1, 0.9, 0.0, 0.0, false},
      {"sgd nesterov l2", 0.02, 0.9, 0.0, 1e-3, true},
      {"sgd dampening", 0.3, 0.5, 0.25, 0.1, false},
  };
  const int64_t sizes[] = {1, 5, 256, 1001};
  constexpr int kSteps = 4;
  for (const SgdCase& c : cases) {
    for (const int64_t n : sizes) {
      const std::string what = std::string(c.name) + " n=" + std::to_string(n);
      std::vector<float> p = ctx.randn(size_t(n)), buf(size_t(n), 0.f);
      std::vector<float> plain_p = p, plain_buf = buf;
      std::vector<double> true_p = widen(p), true_buf(size_t(n), 0.0);
      DeviceArray<float> dp(p), dbuf(static_cast<size_t>(n)), dg(static_cast<size_t>(n));
      dbuf.poison();  // the first step must write the buffer without reading it
      bool same = true;
      for (int t = 1; t <= kSteps && same; ++t) {
        const std::vector<float> g = ctx.randn(size_t(n));
        dg.upload(g);
        SgdParams<float> s;
        s.n = n, s.lr = c.lr, s.momentum = c.momentum, s.dampening = c.dampening, s.weight_decay = c.weight_decay;
        s.nesterov = c.nesterov, s.first_step = t == 1;
        SgdParams<float> on_device = s;
        on_device.param = dp.get(), on_device.grad = dg.get(), on_device.momentum_buffer = c.momentum ? dbuf.get() : nullptr;
        cuda::sgd_step(on_device);
        s.param = p.data(), s.grad = g.data(), s.momentum_buffer = c.momentum ? buf.data() : nullptr;
        sgd_step(s);
        std::vector<double> gd = widen(g);
        SgdParams<double> d;
        d.n = n, d.lr = c.lr, d.momentum = c.momentum, d.dampening = c.dampening, d.weight_decay = c.weight_decay;
        d.nesterov = c.nesterov, d.first_step = t == 1;
        d.param = true_p.data(), d.grad = gd.data(), d.momentum_buffer = c.momentum ? true_buf.data() : nullptr;
        sgd_step(d);
        sgd_plain(c, t == 1, plain_p, g, plain_buf);
        const std::string at = what + " step " + std::to_string(t);
        same = expect_equal(ctx, at + " param", dp.download(), p);
        if (same && c.momentum != 0) same = expect_equal(ctx, at + " momentum_buffer", dbuf.download(), buf);
      }
      if (same) expect_policy(ctx, what + " param vs float64", dp.download(), plain_p, true_p, 2);
    }
  }
}

const char* kind_name(NormKind k) {
  switch (k) {
    case NormKind::SumSquares: return "sum x^2";
    case NormKind::SumAbs: return "sum |x|";
    case NormKind::MaxAbs: return "max |x|";
    case NormKind::SumPowAbs: return "sum |x|^p";
  }
  return "?";
}

// One norm case over a list of arrays: the GPU's result against an extended-precision sum (any
// float64 summation order of n non-negative terms is within (n - 1) u of their sum; CUDA's pow
// adds at most 2 ulps per term) and against the CPU kernel (exactly, for the maximum).
void norm_case(Context& ctx, NormKind kind, double p, const std::vector<std::vector<float>>& arrays, const std::string& what) {
  std::vector<DeviceArray<float>> dev;
  std::vector<const float*> dptr, hptr;
  std::vector<int64_t> lengths;
  long double exact = 0, magnitude = 0;
  int64_t terms = 0;
  bool any_nan = false;
  for (const auto& a : arrays) {
    dev.emplace_back(a);
    dptr.push_back(dev.back().get());
    hptr.push_back(a.data());
    lengths.push_back(int64_t(a.size()));
    terms += int64_t(a.size());
    for (float x : a) {
      const long double ax = std::fabs((long double)x);
      any_nan = any_nan || std::isnan(x);
      const long double term = kind == NormKind::SumSquares ? ax * ax : kind == NormKind::SumPowAbs ? std::pow(ax, (long double)p) : ax;
      if (kind == NormKind::MaxAbs) exact = std::max(exact, term);
      else exact += term;
      magnitude += term;
    }
  }
  NormParams<float> np;
  np.count = int(arrays.size()), np.lengths = lengths.data(), np.kind = kind, np.p = p;
  np.xs = dptr.data();
  const double gpu = cuda::norm_reduce(np);
  np.xs = hptr.data();
  const double cpu = norm_reduce(np);
  const std::string name = std::string(kind_name(kind)) + (kind == NormKind::SumPowAbs ? " p=" + std::to_string(p) : "") + " " + what;
  ++ctx.cases;
  bool ok;
  if (any_nan) {
    ok = std::isnan(gpu) && std::isnan(cpu);
  } else if (kind == NormKind::MaxAbs) {
    ok = gpu == cpu && gpu == double(exact);
  } else {
    const double slack = kind == NormKind::SumPowAbs ? 4.0 : 0.0;  // 2 ulps of each term, as units of roundoff
    const double bound = (double(std::max<int64_t>(terms - 1, 0)) + slack) * kRoundoff * double(magnitude);
    ok = std::fabs(gpu - double(exact)) <= bound && std::fabs(cpu - double(exact)) <= bound;
  }
  if (!ok) {
    std::printf("  FAIL %s: gpu %.17g cpu %.17g exact %.17Lg\n", name.c_str(), gpu, cpu, exact);
    ++ctx.failures;
  }
}

void validate_norms(Context& ctx) {
  const std::vector<std::vector<float>> small = {ctx.randn(1), {}, ctx.randn(1000), ctx.randn(20000, 3.f), ctx.randn(7)};
  const std::vector<std::vector<float>> one = {ctx.randn(300001)};  // 19 blocks of 256 threads, ~62 elements each
  const std::vector<std::vector<float>> empty = {{}, {}};
  for (NormKind k : {NormKind::SumSquares, NormKind::SumAbs, NormKind::MaxAbs}) {
    norm_case(ctx, k, 0, small, "five arrays (one empty)");
    norm_case(ctx, k, 0, one, "n=300001");
    norm_case(ctx, k, 0, empty, "only empty arrays");
  }
  for (double p : {3.0, 0.5}) {
    norm_case(ctx, NormKind::SumPowAbs, p, small, "five arrays (one empty)");
    norm_case(ctx, NormKind::SumPowAbs, p, one, "n=300001");
  }
  // A NaN anywhere makes every kind NaN (the maximum included, as torch's); an infinity gives
  // infinity.
  std::vector<std::vector<float>> with_nan = small;
  with_nan[2][17] = std::numeric_limits<float>::quiet_NaN();
  for (NormKind k : {NormKind::SumSquares, NormKind::SumAbs, NormKind::MaxAbs}) norm_case(ctx, k, 0, with_nan, "with a NaN");
  std::vector<std::vector<float>> with_inf = small;
  with_inf[3][5] = -std::numeric_limits<float>::infinity();
  for (NormKind k : {NormKind::SumSquares, NormKind::MaxAbs}) {
    DeviceArray<float> d(with_inf[3]);
    const float* ptr = d.get();
    const int64_t len = int64_t(with_inf[3].size());
    NormParams<float> np;
    np.count = 1, np.xs = &ptr, np.lengths = &len, np.kind = k;
    ++ctx.cases;
    if (!(cuda::norm_reduce(np) == std::numeric_limits<double>::infinity())) {
      std::printf("  FAIL %s with an infinity: not infinite\n", kind_name(k));
      ++ctx.failures;
    }
  }
}

void validate_scale(Context& ctx) {
  for (const int64_t n : {int64_t(1), int64_t(5), int64_t(1000), int64_t(4097)}) {
    for (const double scale : {0.37, 1e-3, 0.999999}) {
      std::vector<float> x = ctx.randn(size_t(n));
      DeviceArray<float> dx(x);
      cuda::scale_in_place(dx.get(), n, scale);
      scale_in_place(x.data(), n, scale);
      expect_equal(ctx, "scale n=" + std::to_string(n) + " by " + std::to_string(scale), dx.download(), x);
    }
  }
}

}  // namespace

void validate_optim(Context& ctx) {
  validate_adam(ctx);
  validate_sgd(ctx);
  validate_norms(ctx);
  validate_scale(ctx);
}

// The update of a 16M-parameter tensor (a mid-size model's worth): Adam moves 28 bytes per element
// (param, grad, both moments read; param and moments written), SGD with momentum 20, the norm 4
// and the rescale 8.
void bench_optim(Context& ctx) {
  constexpr int64_t n = int64_t(1) << 24;
  const std::string shape = "n=16M";
  DeviceArray<float> p(ctx.randn(size_t(n))), g(ctx.randn(size_t(n))), m(static_cast<size_t>(n)), v(static_cast<size_t>(n));
  cuda::fill_zero(m.get(), size_t(n) * sizeof(float));
  cuda::fill_zero(v.get(), size_t(n) * sizeof(float));
  AdamParams<float> a;
  a.n = n, a.param = p.get(), a.grad = g.get(), a.exp_avg = m.get(), a.exp_avg_sq = v.get();
  a.lr = 1e-4, a.beta1 = 0.9, a.beta2 = 0.999, a.eps = 1e-8, a.weight_decay = 0.01, a.decoupled = true;
  a.bias_correction1 = 1 - std::pow(0.9, 10), a.bias_correction2 = 1 - std::pow(0.999, 10);
  time_row(ctx, {"optim", "adamw step", shape, 0, 0, double(n) * 28, "adam_16M"}, [&] { cuda::adam_step(a); });
  SgdParams<float> s;
  s.n = n, s.param = p.get(), s.grad = g.get(), s.momentum_buffer = m.get(), s.lr = 1e-3, s.momentum = 0.9;
  time_row(ctx, {"optim", "sgd momentum step", shape, 0, 0, double(n) * 20, ""}, [&] { cuda::sgd_step(s); });
  const float* gp = g.get();
  NormParams<float> np;
  np.count = 1, np.xs = &gp, np.lengths = &n, np.kind = NormKind::SumSquares;
  time_row(ctx, {"optim", "grad norm (sum x^2, waits)", shape, 0, double(n) * 2, double(n) * 4, ""},
           [&] { (void)cuda::norm_reduce(np); });
  time_row(ctx, {"optim", "clip rescale", shape, 0, double(n), double(n) * 8, ""},
           [&] { cuda::scale_in_place(g.get(), n, 0.999999); });
}

}  // namespace luna::gpu_check
