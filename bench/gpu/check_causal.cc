// CUDA check of the causal Luna kernels (cuda/causal.cu): forward, backward and incremental
// decoding against the float64 reference (native/reference/causal_reference.h) with the design.md
// policy, the plain float32 run of the same reference setting the bound: error <= 2x (forward) /
// 3x (backward) the plain error. Cases mirror bench/bench_causal.cc: n not a multiple of the
// chunk, l in {1, 3, 16, 17}, dh in {8, 13, 64}, tied and untied k/v, softplus and elu+1, P-slot
// masks, one batch element with every slot masked (out 0, lse -inf, zero gradients), logits past
// softplus's linear threshold, dropout on Φ and Bm (the reference draws the same counter bits, so
// a mask that differed by one bit would fail). B·h >= 8 in every case: the largest values and
// errors sit in the first rows of each head, and with fewer heads a correct kernel fails the
// policy now and then (bench_causal.cc says more). Decoding (causal_step, one token at a time
// and in prefills of several rows) must give the parallel pass's outputs, by the same policy, and
// states that agree with the CPU's causal_step.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/causal_cuda.h"
#include "../../native/kernels/causal_luna.h"
#include "../../native/reference/causal_reference.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

struct Case {
  int64_t B, h, n, l, dh;
  bool tied, masked;
  CausalActivation act;
  int64_t chunk;         // 0: the default
  double dropout = 0;
  bool empty = false;    // batch element B-1 has every P slot masked
  float kc_sd = 1.0f;    // spread of the pack keys (large: logits past softplus's threshold)
};

std::string describe(const Case& c) {
  char b[256];
  std::snprintf(b, sizeof b, "B=%ld h=%ld n=%ld l=%ld dh=%ld%s%s%s %s chunk=%ld%s", long(c.B), long(c.h), long(c.n),
                long(c.l), long(c.dh), c.tied ? " tied" : "", c.masked ? " masked" : "", c.empty ? " (one empty)" : "",
                c.act == CausalActivation::Softplus ? "softplus" : "elu", long(c.chunk),
                c.dropout > 0 ? (" dropout=" + std::to_string(c.dropout)).c_str() : "");
  return b;
}

// The float32 inputs of one case.
struct Inputs {
  std::vector<float> q, k, v, kc, pq, dout;
  std::vector<uint8_t> mask;
};

Inputs make_inputs(Context& ctx, const Case& c) {
  const size_t X = size_t(c.B * c.h * c.n * c.dh), P = size_t(c.B * c.h * c.l * c.dh);
  Inputs in;
  in.q = ctx.randn(X), in.k = ctx.randn(X), in.v = ctx.randn(X), in.kc = ctx.randn(X, c.kc_sd), in.pq = ctx.randn(P);
  in.dout = ctx.randn(X);
  if (c.masked) in.mask = ctx.mask(c.B, c.l, 0.3);
  if (c.empty)
    for (int64_t r = 0; r < c.l; ++r) in.mask[(c.B - 1) * c.l + r] = 1;
  return in;
}

// Outputs of one forward + backward in precision T.
template <typename T>
struct Outputs {
  std::vector<T> out, lse, dq, dk, dv, dkc, dpq;
};

template <typename T>
CausalParams<T> base_params(const Case& c) {
  CausalParams<T> p;
  p.B = c.B, p.h = c.h, p.n = c.n, p.l = c.l, p.dh = c.dh;
  p.scale = p.pack_scale = 1.0 / std::sqrt(double(c.dh));
  p.activation = c.act;
  p.dropout = c.dropout;
  p.seed = 12345;
  p.chunk = c.chunk;
  return p;
}

// The reference (plain loops) in precision T.
template <typename T>
Outputs<T> reference(const Inputs& f, const Case& c) {
  auto cv = [](const std::vector<float>& x) { return std::vector<T>(x.begin(), x.end()); };
  const std::vector<T> q = cv(f.q), k = cv(f.k), v = cv(f.v), kc = cv(f.kc), pq = cv(f.pq), dout = cv(f.dout);
  const size_t X = q.size(), P = pq.size(), R = size_t(c.B * c.h * c.n);
  Outputs<T> o{std::vector<T>(X), std::vector<T>(R), std::vector<T>(X), std::vector<T>(X),
               std::vector<T>(c.tied ? 0 : X), std::vector<T>(X), std::vector<T>(P)};
  CausalParams<T> p = base_params<T>(c);
  p.q = q.data(), p.k = k.data(), p.v = c.tied ? k.data() : v.data(), p.kc = kc.data(), p.pq = pq.data();
  p.mask = f.mask.empty() ? nullptr : f.mask.data();
  p.out = o.out.data(), p.lse = o.lse.data(), p.dout = dout.data();
  p.dq = o.dq.data(), p.dk = o.dk.data(), p.dv = c.tied ? o.dk.data() : o.dv.data(), p.dkc = o.dkc.data(), p.dpq = o.dpq.data();
  causal_reference_forward(p);
  causal_reference_backward(p);
  return o;
}

// The CUDA kernels on the same inputs, outputs poisoned first.
Outputs<float> on_device(const Inputs& f, const Case& c) {
  const size_t X = f.q.size(), P = f.pq.size(), R = size_t(c.B * c.h * c.n);
  DeviceArray<float> q(f.q), k(f.k), v(f.v), kc(f.kc), pq(f.pq), dout(f.dout);
  DeviceArray<uint8_t> mask;
  if (!f.mask.empty()) mask = DeviceArray<uint8_t>(f.mask);
  DeviceArray<float> out(X), lse(R), dq(X), dk(X), dv(c.tied ? 0 : X), dkc(X), dpq(P);
  for (auto* a : {&out, &lse, &dq, &dk, &dv, &dkc, &dpq}) a->poison();
  CausalParams<float> p = base_params<float>(c);
  p.q = q.get(), p.k = k.get(), p.v = c.tied ? k.get() : v.get(), p.kc = kc.get(), p.pq = pq.get();
  p.mask = f.mask.empty() ? nullptr : mask.get();
  p.out = out.get(), p.lse = lse.get(), p.dout = dout.get();
  p.dq = dq.get(), p.dk = dk.get(), p.dv = c.tied ? dk.get() : dv.get(), p.dkc = dkc.get(), p.dpq = dpq.get();
  cuda::causal_forward(p);
  cuda::causal_backward(p);
  return {out.download(), lse.download(), dq.download(), dk.download(), dv.download(), dkc.download(), dpq.download()};
}

// lse of a batch element with every slot masked is -inf: the CUDA value must be exactly that;
// those entries are then set to 0 everywhere so that the policy compares the finite rest.
void check_lse(Context& ctx, const std::string& what, std::vector<float> cuda, std::vector<float> plain,
               std::vector<double> truth) {
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] != -std::numeric_limits<double>::infinity()) continue;
    if (cuda[i] != -std::numeric_limits<float>::infinity()) {
      ++ctx.cases, ++ctx.failures;
      std::printf("  FAIL %s: lse[%zu] = %g where every slot is masked (want -inf)\n", what.c_str(), i, cuda[i]);
      return;
    }
    cuda[i] = plain[i] = 0.f, truth[i] = 0;
  }
  expect_policy(ctx, what, cuda, plain, truth, 2);
}

void validate_case(Context& ctx, const Case& c) {
  const Inputs in = make_inputs(ctx, c);
  const Outputs<double> truth = reference<double>(in, c);
  const Outputs<float> plain = reference<float>(in, c);
  const Outputs<float> dev = on_device(in, c);
  const std::string name = "causal " + describe(c);
  expect_policy(ctx, name + " out", dev.out, plain.out, truth.out, 2);
  check_lse(ctx, name + " lse", dev.lse, plain.lse, truth.lse);
  expect_policy(ctx, name + " dq", dev.dq, plain.dq, truth.dq, 3);
  expect_policy(ctx, name + (c.tied ? " dk+dv" : " dk"), dev.dk, plain.dk, truth.dk, 3);
  if (!c.tied) expect_policy(ctx, name + " dv", dev.dv, plain.dv, truth.dv, 3);
  expect_policy(ctx, name + " dkc", dev.dkc, plain.dkc, truth.dkc, 3);
  expect_policy(ctx, name + " dpq", dev.dpq, plain.dpq, truth.dpq, 3);
}

// The rows [t0, t0 + s) of every (batch, head) of x [B, h, n, dh], as [B, h, s, dh].
template <typename T>
std::vector<T> piece(const std::vector<T>& x, int64_t BH, int64_t n, int64_t dh, int64_t t0, int64_t s) {
  std::vector<T> y(size_t(BH * s * dh));
  for (int64_t bh = 0; bh < BH; ++bh)
    std::copy_n(x.begin() + (bh * n + t0) * dh, s * dh, y.begin() + bh * s * dh);
  return y;
}

// Decoding with the CPU's causal_step in precision T (the states after the last piece).
template <typename T>
void cpu_states(const Inputs& f, const Case& c, const std::vector<int64_t>& sizes, std::vector<T>& sk, std::vector<T>& sv) {
  const int64_t BH = c.B * c.h, dh = c.dh, l = c.l;
  auto cv = [](const std::vector<float>& x) { return std::vector<T>(x.begin(), x.end()); };
  const std::vector<T> q = cv(f.q), k = cv(f.k), v = cv(f.v), kc = cv(f.kc);
  std::vector<T> pq = cv(f.pq);
  const T scale = T(1.0 / std::sqrt(double(dh)));
  for (T& x : pq) x *= scale;
  sk.assign(size_t(BH * dh * l), T(0)), sv.assign(size_t(BH * l * dh), T(0));
  int64_t t0 = 0;
  for (int64_t s : sizes) {
    const std::vector<T> qs = piece(q, BH, c.n, dh, t0, s), ks = piece(k, BH, c.n, dh, t0, s),
                         vs = piece(v, BH, c.n, dh, t0, s), kcs = piece(kc, BH, c.n, dh, t0, s);
    std::vector<T> o(size_t(BH * s * dh));
    CausalParams<T> p = base_params<T>(c);
    p.q = qs.data(), p.k = ks.data(), p.v = c.tied ? ks.data() : vs.data(), p.kc = kcs.data(), p.pq = pq.data();
    p.mask = f.mask.empty() ? nullptr : f.mask.data();
    p.out = o.data(), p.state_k = sk.data(), p.state_v = sv.data(), p.t0 = t0, p.n = s;
    p.scale = double(scale), p.pack_scale = 1, p.dropout = 0;
    causal_step(p);
    t0 += s;
  }
}

// Decoding on the device in pieces of the given sizes from zero states: outputs and lse laid out
// as the forward's must match the parallel pass (reference, forward policy), the final states
// the CPU's causal_step (float64 as the truth, float32 as the plain bound).
void validate_decode(Context& ctx, const Case& c, const std::vector<int64_t>& sizes) {
  const Inputs in = make_inputs(ctx, c);
  const int64_t BH = c.B * c.h, dh = c.dh, l = c.l, n = c.n;
  const float scale = float(1.0 / std::sqrt(double(dh)));
  std::vector<float> pq_scaled(in.pq);
  for (float& x : pq_scaled) x *= scale;
  DeviceArray<float> pq(pq_scaled), sk(std::vector<float>(size_t(BH * dh * l), 0.f)),
      sv(std::vector<float>(size_t(BH * l * dh), 0.f));
  DeviceArray<uint8_t> mask;
  if (!in.mask.empty()) mask = DeviceArray<uint8_t>(in.mask);
  std::vector<float> out(in.q.size()), lse(size_t(BH * n));
  int64_t t0 = 0;
  for (int64_t s : sizes) {
    DeviceArray<float> q(piece(in.q, BH, n, dh, t0, s)), k(piece(in.k, BH, n, dh, t0, s)),
        v(piece(in.v, BH, n, dh, t0, s)), kc(piece(in.kc, BH, n, dh, t0, s)), o(size_t(BH * s * dh)), ls(size_t(BH * s));
    o.poison(), ls.poison();
    CausalParams<float> p = base_params<float>(c);
    p.q = q.get(), p.k = k.get(), p.v = c.tied ? k.get() : v.get(), p.kc = kc.get(), p.pq = pq.get();
    p.mask = in.mask.empty() ? nullptr : mask.get();
    p.out = o.get(), p.lse = ls.get(), p.state_k = sk.get(), p.state_v = sv.get(), p.t0 = t0, p.n = s;
    p.scale = scale, p.pack_scale = 1, p.dropout = 0;
    cuda::causal_step(p);
    const std::vector<float> oh = o.download(), lh = ls.download();
    for (int64_t bh = 0; bh < BH; ++bh) {
      std::copy_n(oh.begin() + bh * s * dh, s * dh, out.begin() + (bh * n + t0) * dh);
      std::copy_n(lh.begin() + bh * s, s, lse.begin() + bh * n + t0);
    }
    t0 += s;
  }
  Case fwd = c;
  fwd.chunk = 0;
  const Outputs<double> truth = reference<double>(in, fwd);
  const Outputs<float> plain = reference<float>(in, fwd);
  const std::string name = "causal decode " + describe(c) + " in " + std::to_string(sizes.size()) + " calls";
  expect_policy(ctx, name + " out", out, plain.out, truth.out, 2);
  check_lse(ctx, name + " lse", lse, plain.lse, truth.lse);
  std::vector<double> sk64, sv64;
  std::vector<float> sk32, sv32;
  cpu_states(in, c, sizes, sk64, sv64);
  cpu_states(in, c, sizes, sk32, sv32);
  expect_policy(ctx, name + " stateK", sk.download(), sk32, sk64, 2);
  expect_policy(ctx, name + " stateV", sv.download(), sv32, sv64, 2);
}

}  // namespace

void validate_causal(Context& ctx) {
  const auto SP = CausalActivation::Softplus, ELU = CausalActivation::EluPlusOne;
  //            B  h   n   l  dh   tied   masked act chunk
  const std::vector<Case> cases = {
      {2, 4, 1, 1, 8, false, false, SP, 0},
      {2, 4, 7, 3, 13, true, true, ELU, 3},
      {2, 4, 33, 16, 8, false, true, SP, 5},
      {2, 4, 70, 16, 64, true, false, SP, 0},
      {1, 8, 45, 3, 13, false, true, ELU, 0},
      {2, 4, 40, 1, 8, true, true, SP, 7},
      {2, 4, 130, 17, 64, false, true, SP, 0},
      {2, 4, 50, 16, 13, false, true, SP, 16, 0.2},
      {2, 4, 37, 3, 8, true, false, ELU, 0, 0.3},
      {2, 4, 20, 3, 8, false, true, SP, 6, 0, true},
      {2, 4, 24, 16, 13, false, false, SP, 0, 0, false, 20.0f},
  };
  for (const Case& c : cases) validate_case(ctx, c);
  const std::vector<std::pair<Case, std::vector<int64_t>>> decodes = {
      {{2, 4, 40, 5, 8, true, true, SP, 0}, std::vector<int64_t>(40, 1)},
      {{2, 4, 60, 16, 13, false, true, ELU, 0}, {1, 5, 16, 2, 30, 1, 1, 4}},
      {{1, 8, 70, 3, 64, false, false, SP, 7}, {33, 1, 1, 35}},
      {{2, 4, 12, 3, 8, false, true, SP, 0, 0, true}, {1, 4, 1, 6}},
  };
  for (const auto& [c, sizes] : decodes) validate_decode(ctx, c, sizes);
}

// The performance-goal shape, k === v as the PyTorch anchor: forward, forward + backward, and
// decoding 1000 tokens one step at a time. FLOPs and fewest bytes as bench_causal.cc counts
// them (chunk c = 64, the c x c products counted in full).
void bench_causal(Context& ctx) {
  const int64_t B = 4, n = 4096, h = 4, dh = 64, l = 16, c = kCausalChunk;
  const int64_t X = B * h * n * dh, P = B * h * l * dh;
  DeviceArray<float> q(ctx.randn(size_t(X))), k(ctx.randn(size_t(X))), kc(ctx.randn(size_t(X))), pq(ctx.randn(size_t(P))),
      dout(ctx.randn(size_t(X))), out{size_t(X)}, dq{size_t(X)}, dk{size_t(X)}, dkc{size_t(X)}, dpq{size_t(P)};
  CausalParams<float> p;
  p.q = q.get(), p.k = p.v = k.get(), p.kc = kc.get(), p.pq = pq.get(), p.dout = dout.get();
  p.out = out.get(), p.dq = dq.get(), p.dk = p.dv = dk.get(), p.dkc = dkc.get(), p.dpq = dpq.get();
  p.B = B, p.h = h, p.n = n, p.l = l, p.dh = dh;
  p.scale = p.pack_scale = 1.0 / std::sqrt(double(dh));
  const double fwd_flops = double(B * h * n) * (8.0 * l * dh + 4.0 * c * (dh + l));
  const double bwd_flops = double(B * h * n) * (20.0 * l * dh + 10.0 * c * dh + 12.0 * c * l);
  const double fwd_bytes = 4.0 * (4 * X + P), bwd_bytes = 4.0 * (7 * X + 2 * P);
  const std::string shape = "B=4 n=4096 h=4 dh=64 l=16 tied";
  time_row(ctx, {"causal", "causal fwd", shape, 0, fwd_flops, fwd_bytes, "causal_l16_fwd"}, [&] { cuda::causal_forward(p); });
  time_row(ctx, {"causal", "causal fwd+bwd", shape, 0, fwd_flops + bwd_flops, fwd_bytes + bwd_bytes, "causal_l16_fwdbwd"},
           [&] {
             cuda::causal_forward(p);
             cuda::causal_backward(p);
           });

  // Decoding: 1000 steps of one token at B = 4, the token rows [B, h, 1, dh] of step t at t·B·h·dh.
  const int64_t tokens = 1000, BH = B * h;
  DeviceArray<float> qt(ctx.randn(size_t(tokens * BH * dh))), kt(ctx.randn(size_t(tokens * BH * dh))),
      kct(ctx.randn(size_t(tokens * BH * dh))), ot{size_t(BH * dh)}, sk{size_t(BH * dh * l)}, sv{size_t(BH * l * dh)};
  time_row(ctx, {"causal", "causal decode 1000 steps", "B=4 h=4 dh=64 l=16 tied", 0, double(tokens * BH) * 8.0 * l * dh,
                 4.0 * double(tokens * BH) * 4 * dh, ""},
           [&] {
             cuda::fill_zero(sk.get(), sk.size() * sizeof(float));
             cuda::fill_zero(sv.get(), sv.size() * sizeof(float));
             for (int64_t t = 0; t < tokens; ++t) {
               CausalParams<float> s;
               s.q = qt.get() + t * BH * dh, s.k = s.v = kt.get() + t * BH * dh, s.kc = kct.get() + t * BH * dh;
               s.pq = pq.get(), s.out = ot.get(), s.state_k = sk.get(), s.state_v = sv.get(), s.t0 = t;
               s.B = B, s.h = h, s.n = 1, s.l = l, s.dh = dh, s.scale = 1.0 / std::sqrt(double(dh)), s.pack_scale = 1;
               cuda::causal_step(s);
             }
           });
}

}  // namespace luna::gpu_check
