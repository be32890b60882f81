// The CUDA check of the softmax-attention kernels (cuda/softmax_cuda.h).
//
// Validation, on fresh random inputs with every output poisoned (NaN) first: forward then
// backward on the device, each result against the float64 reference (native/reference/
// softmax_reference.cc) with design.md's policy (2x forward, 3x backward the error of the same
// reference run in float32, plus 4 ulp of the largest value): out, lse, dq, dk, dv (dk + dv when
// tied). Shapes: n = 1, 7, 65, 130 (tile multiples and one off), m != n both ways (under the
// causal mask n > m gives rows that see no key), dh = 8, 13 (padded up to the 32-wide
// instance), 64, 32, 100 and 128 (the 128 instance), 130 (the generic one), padding masks, a
// batch row whose keys are all padding, tied and untied k/v, sharp logits, dropout. lse -inf
// (a row that sees nothing) must be -inf exactly, and those rows' outputs and dq exactly 0.
// Dropout: the policy check fails unless the device drops the CPU's elements; one case makes
// the kept elements visible (q = 0, v = the identity) and compares the pattern with the CPU
// kernel's exactly.
//
// Benchmark: B=4 h=4 dh=64, n = m in {1024, 4096}, causal and not, forward and forward+backward.
// FLOPs per visible (query, key) pair and head dim: 4 forward, 14 forward+backward (as
// bench/bench_softmax.cc); bytes: q, k, v, out (+ lse) once each, and for the backward q, k, v,
// out, dout, lse read and dq, dk, dv written. Anchors: torch's scaled_dot_product_attention on
// the same card, non-causal (sdpa_1024_fwd, sdpa_4096_fwd, sdpa_4096_fwdbwd, ...).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/softmax_cuda.h"
#include "../../native/kernels/softmax_attention.h"
#include "../../native/reference/softmax_reference.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

using Vec = std::vector<float>;
using Vec64 = std::vector<double>;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Case {
  int64_t B, h, n, m, dh;
  bool masked, tied, causal;
  double dropout;
  float qscale;          // spreads the logits (sharp softmax at 4)
  bool empty_row = false;  // batch element 0 has every key padded
};

// The largest error / bound ratio seen per quantity (the policy's bound, as expect_policy
// computes it), printed at the end of the validation: how much room the kernels leave.
struct Headroom {
  const char* name;
  double worst = 0;
};
Headroom g_room[] = {{"out"}, {"lse"}, {"dq"}, {"dk"}, {"dv"}};

bool policy(Context& ctx, const std::string& what, int quantity, const Vec& cuda, const Vec& plain, const Vec64& truth,
            double factor) {
  const double bound = factor * max_abs_diff(plain, truth) + 4.0 / (1 << 23) * max_abs(truth);
  const double err = max_abs_diff(cuda, truth);
  if (bound > 0) g_room[quantity].worst = std::max(g_room[quantity].worst, err / bound);
  return expect_policy(ctx, what, cuda, plain, truth, factor);
}

std::string describe(const Case& c) {
  char s[160];
  std::snprintf(s, sizeof s, "softmax B=%ld h=%ld n=%ld m=%ld dh=%ld%s%s%s p=%.2g q*%g%s", long(c.B), long(c.h),
                long(c.n), long(c.m), long(c.dh), c.masked ? " mask" : "", c.tied ? " tied" : "",
                c.causal ? " causal" : "", c.dropout, double(c.qscale), c.empty_row ? " empty-row" : "");
  return s;
}

// Every buffer of one call in one precision, on the host.
template <typename T>
struct HostCall {
  std::vector<T> q, k, v, dout, out, lse, dq, dk, dv;
  SoftmaxAttentionParams<T> params(const Case& c, const std::vector<uint8_t>& mask, uint64_t seed) {
    SoftmaxAttentionParams<T> p;
    p.q = q.data(), p.k = k.data(), p.v = c.tied ? k.data() : v.data();
    p.mask = mask.empty() ? nullptr : mask.data();
    p.out = out.data(), p.lse = lse.data(), p.dout = dout.data();
    p.dq = dq.data(), p.dk = dk.data(), p.dv = c.tied ? dk.data() : dv.data();
    p.B = c.B, p.h = c.h, p.n = c.n, p.m = c.m, p.dh = c.dh;
    p.scale = 1.0 / std::sqrt(double(c.dh));
    p.causal = c.causal, p.dropout = c.dropout, p.seed = seed;
    return p;
  }
};

template <typename T>
HostCall<T> host_call(const Vec& q, const Vec& k, const Vec& v, const Vec& dout, const Case& c) {
  HostCall<T> h;
  auto cv = [](const Vec& x) { return std::vector<T>(x.begin(), x.end()); };
  h.q = cv(q), h.k = cv(k), h.v = cv(v), h.dout = cv(dout);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  h.out.assign(q.size(), nan), h.dq.assign(q.size(), nan), h.lse.assign(size_t(c.B * c.h * c.n), nan);
  h.dk.assign(k.size(), nan), h.dv.assign(k.size(), nan);
  return h;
}

// The device run of one case: forward, then backward, every output poisoned first.
struct DeviceResult {
  Vec out, lse, dq, dk, dv;
};

DeviceResult run_device(const Case& c, const Vec& q, const Vec& k, const Vec& v, const Vec& dout,
                        const std::vector<uint8_t>& mask, uint64_t seed) {
  DeviceArray<float> dq_in(q), dk_in(k), ddout(dout);
  DeviceArray<float> dv_in = c.tied ? DeviceArray<float>() : DeviceArray<float>(v);
  DeviceArray<uint8_t> dmask = mask.empty() ? DeviceArray<uint8_t>() : DeviceArray<uint8_t>(mask);
  DeviceArray<float> out(q.size()), lse(size_t(c.B * c.h * c.n)), dq(q.size()), dk(k.size()),
      dv(c.tied ? 0 : k.size());
  out.poison(), lse.poison(), dq.poison(), dk.poison();
  if (!c.tied) dv.poison();
  SoftmaxAttentionParams<float> p;
  p.q = dq_in.get(), p.k = dk_in.get(), p.v = c.tied ? dk_in.get() : dv_in.get();
  p.mask = mask.empty() ? nullptr : dmask.get();
  p.out = out.get(), p.lse = lse.get(), p.dout = ddout.get();
  p.dq = dq.get(), p.dk = dk.get(), p.dv = c.tied ? dk.get() : dv.get();
  p.B = c.B, p.h = c.h, p.n = c.n, p.m = c.m, p.dh = c.dh;
  p.scale = 1.0 / std::sqrt(double(c.dh));
  p.causal = c.causal, p.dropout = c.dropout, p.seed = seed;
  cuda::softmax_attention_forward(p);
  cuda::softmax_attention_backward(p);
  DeviceResult r;
  r.out = out.download(), r.lse = lse.download(), r.dq = dq.download(), r.dk = dk.download();
  if (!c.tied) r.dv = dv.download();
  return r;
}

// lse: a row that sees no key must give -inf exactly (the truth's -inf); the finite rest under
// the policy. The -inf positions are compared first, then zeroed in all three so that the
// policy's max |difference| is taken over the finite rows only.
void expect_lse(Context& ctx, const std::string& what, Vec cuda, Vec plain, Vec64 truth) {
  size_t wrong = 0, masked = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] != -std::numeric_limits<double>::infinity()) continue;
    ++masked;
    if (cuda[i] != kNegInf) ++wrong;
    cuda[i] = plain[i] = 0.f, truth[i] = 0.0;
  }
  if (wrong) {
    ++ctx.cases, ++ctx.failures;
    std::printf("  FAIL %s: %zu of %zu rows that see no key do not have lse -inf\n", what.c_str(), wrong, masked);
    return;
  }
  policy(ctx, what, 1, cuda, plain, truth, 2);
}

void validate_case(Context& ctx, const Case& c) {
  const size_t qn = size_t(c.B * c.h * c.n * c.dh), kn = size_t(c.B * c.h * c.m * c.dh);
  const Vec q = ctx.randn(qn, c.qscale), k = ctx.randn(kn), v = c.tied ? k : ctx.randn(kn), dout = ctx.randn(qn);
  std::vector<uint8_t> mask;
  if (c.masked) mask = ctx.mask(c.B, c.m, 0.3);
  if (c.empty_row) {
    if (mask.empty()) mask.assign(size_t(c.B * c.m), 0);
    std::fill(mask.begin(), mask.begin() + c.m, uint8_t(1));
  }
  const uint64_t seed = ctx.rng() >> 12;

  HostCall<double> truth = host_call<double>(q, k, v, dout, c);
  HostCall<float> plain = host_call<float>(q, k, v, dout, c);
  const auto pt = truth.params(c, mask, seed);
  const auto pp = plain.params(c, mask, seed);
  softmax_reference_forward(pt), softmax_reference_backward(pt);
  softmax_reference_forward(pp), softmax_reference_backward(pp);
  const DeviceResult d = run_device(c, q, k, v, dout, mask, seed);

  const std::string name = describe(c);
  policy(ctx, name + " out", 0, d.out, plain.out, truth.out, 2);
  expect_lse(ctx, name + " lse", d.lse, plain.lse, truth.lse);
  policy(ctx, name + " dq", 2, d.dq, plain.dq, truth.dq, 3);
  policy(ctx, name + (c.tied ? " dk+dv" : " dk"), 3, d.dk, plain.dk, truth.dk, 3);
  if (!c.tied) policy(ctx, name + " dv", 4, d.dv, plain.dv, truth.dv, 3);
  // Rows that see no key: output and dq exactly 0 (the policy allows 4 ulp anywhere).
  Vec zero_out, dev_out;
  for (int64_t row = 0; row < c.B * c.h * c.n; ++row) {
    if (truth.lse[size_t(row)] != -std::numeric_limits<double>::infinity()) continue;
    for (int64_t e = 0; e < c.dh; ++e) {
      const size_t x = size_t(row * c.dh + e);
      dev_out.push_back(d.out[x]), dev_out.push_back(d.dq[x]);
      zero_out.push_back(0.f), zero_out.push_back(0.f);
    }
  }
  if (!zero_out.empty()) expect_equal(ctx, name + " out, dq of rows that see no key", dev_out, zero_out);
}

// The dropout pattern itself: with q = 0 every visible key has the same probability, and with
// v = the identity (dh = m) out[i][j] is that probability times element (i, j)'s factor, so the
// nonzero pattern of out is the kept set. It must be the CPU kernel's exactly.
void validate_dropout_pattern(Context& ctx) {
  const Case c{2, 3, 37, 21, 21, true, false, true, 0.4, 1.f};
  const size_t qn = size_t(c.B * c.h * c.n * c.dh), kn = size_t(c.B * c.h * c.m * c.dh);
  Vec q(qn, 0.f), k = ctx.randn(kn), v(kn, 0.f), dout = ctx.randn(qn);
  for (int64_t bh = 0; bh < c.B * c.h; ++bh)
    for (int64_t j = 0; j < c.m; ++j) v[size_t((bh * c.m + j) * c.dh + j)] = 1.f;
  const std::vector<uint8_t> mask = ctx.mask(c.B, c.m, 0.2);
  const uint64_t seed = ctx.rng() >> 12;
  HostCall<float> cpu = host_call<float>(q, k, v, dout, c);
  const auto p = cpu.params(c, mask, seed);
  softmax_attention_forward(p);
  const DeviceResult d = run_device(c, q, k, v, dout, mask, seed);
  Vec kept_cpu(qn), kept_dev(qn);
  for (size_t x = 0; x < qn; ++x) kept_cpu[x] = cpu.out[x] != 0.f, kept_dev[x] = d.out[x] != 0.f;
  expect_equal(ctx, describe(c) + " dropout pattern (kept elements) vs the CPU kernel", kept_dev, kept_cpu);
}

// Visible (query, key) pairs of one head, as bench_softmax.cc counts them.
double visible_pairs(int64_t n, int64_t m, bool causal) {
  if (!causal) return double(n) * double(m);
  double pairs = 0;
  for (int64_t i = 0; i < n; ++i) pairs += double(std::clamp<int64_t>(i + (m - n) + 1, 0, m));
  return pairs;
}

}  // namespace

void validate_softmax(Context& ctx) {
  std::vector<Case> cases;
  // The brief's grid: n in {1, 7, 65, 130} x dh in {8, 13, 64}, causal and not; m alongside n
  // (equal, shorter, longer), masks and tied k/v alternating.
  const int64_t sizes[][2] = {{1, 1}, {7, 9}, {65, 63}, {130, 130}};
  for (bool causal : {false, true})
    for (int64_t dh : {8, 13, 64})
      for (int s = 0; s < 4; ++s) {
        const bool masked = (s + dh) % 2 == 0, tied = s % 2 == 1;
        cases.push_back({2, 2, sizes[s][0], sizes[s][1], dh, masked, tied, causal, 0.0, 1.f});
      }
  for (bool causal : {false, true}) {
    // Causal with n > m (the first n - m rows see nothing) and n < m (aligned at the ends).
    cases.push_back({2, 1, 7, 3, 13, false, false, causal, 0.0, 1.f});
    cases.push_back({1, 2, 65, 130, 64, true, false, causal, 0.0, 1.f});
    // The other instances: 32, 128 (and 100 padded to it), the generic one above 128.
    cases.push_back({2, 1, 70, 66, 32, true, true, causal, 0.0, 1.f});
    cases.push_back({1, 2, 65, 40, 128, true, false, causal, 0.0, 1.f});
    cases.push_back({1, 1, 33, 70, 100, false, true, causal, 0.0, 1.f});
    cases.push_back({1, 1, 40, 35, 130, true, false, causal, 0.0, 1.f});
    // A batch element whose keys are all padding; sharp logits; dropout.
    cases.push_back({2, 2, 9, 11, 8, true, false, causal, 0.0, 1.f, true});
    cases.push_back({1, 2, 130, 97, 64, false, false, causal, 0.0, 4.f});
    cases.push_back({2, 2, 65, 70, 13, true, false, causal, 0.3, 1.f});
    cases.push_back({1, 2, 130, 130, 64, true, true, causal, 0.1, 1.f});
  }
  for (Headroom& r : g_room) r.worst = 0;
  for (const Case& c : cases) validate_case(ctx, c);
  validate_dropout_pattern(ctx);
  std::printf("  softmax: %zu cases; largest error / policy bound:", cases.size());
  for (const Headroom& r : g_room) std::printf(" %s %.2f", r.name, r.worst);
  std::printf("\n");
}

void bench_softmax(Context& ctx) {
  const int64_t B = 4, h = 4, dh = 64;
  for (int64_t n : {1024, 4096})
    for (bool causal : {false, true}) {
      const int64_t m = n;
      const size_t qn = size_t(B * h * n * dh), rows = size_t(B * h * n);
      DeviceArray<float> q(ctx.randn(qn)), k(ctx.randn(qn)), v(ctx.randn(qn)), dout(ctx.randn(qn));
      DeviceArray<float> out(qn), lse(rows), dq(qn), dk(qn), dv(qn);
      SoftmaxAttentionParams<float> p;
      p.q = q.get(), p.k = k.get(), p.v = v.get(), p.out = out.get(), p.lse = lse.get(), p.dout = dout.get();
      p.dq = dq.get(), p.dk = dk.get(), p.dv = dv.get();
      p.B = B, p.h = h, p.n = n, p.m = m, p.dh = dh, p.scale = 1.0 / std::sqrt(double(dh)), p.causal = causal;
      const double pairs = visible_pairs(n, m, causal) * double(B * h);
      const double qkv = 4.0 * double(B * h * dh) * double(2 * n + 2 * m);  // q, out; k, v
      const double fwd_bytes = qkv + 4.0 * double(rows), bwd_bytes = 2 * qkv + 4.0 * double(rows);
      const std::string shape = "B=4 h=4 n=" + std::to_string(n) + " dh=64" + (causal ? " causal" : "");
      // torch's rows (bench/gpu/torch_anchors.py) are the non-causal ones.
      const std::string anchor = causal ? "" : "sdpa_" + std::to_string(n);
      Row fwd{"softmax", "softmax fwd", shape, 0, 4 * pairs * dh, fwd_bytes, causal ? "" : anchor + "_fwd"};
      time_row(ctx, fwd, [&] { cuda::softmax_attention_forward(p); });
      Row all{"softmax", "softmax fwd+bwd", shape, 0, 14 * pairs * dh, fwd_bytes + bwd_bytes,
              causal ? "" : anchor + "_fwdbwd"};
      time_row(ctx, all, [&] {
        cuda::softmax_attention_forward(p);
        cuda::softmax_attention_backward(p);
      });
    }
}

}  // namespace luna::gpu_check
