// The CUDA check of the pack / unpack attention kernels (cuda/attention_cuda.h).
//
// Validation, on fresh random inputs with every output poisoned (NaN) first: forward then
// backward on the device, each result against the float64 reference (native/reference/
// attention_reference.cc) with design.md's policy (2x forward, 3x backward the error of the same
// reference run in float32, plus 4 ulp of the largest value): out, lse, dq, dk, dv (dk + dv when
// tied); and each against the CPU kernels on the same inputs. Shapes, for both ops: every l in
// {1, 3, 16, 17} against a long axis of {1, 7, 33, 130} and dh in {8, 13, 64} (padded to the
// 32- and 64-wide instances), masks, tied k/v and dropout cycling; then dh = 32, 100, 128, 200,
// 256 (the 128 and 256 instances: four and eight threads per query row in the forward),
// l = 130 (keys tiled in the unpack, queries tiled in the pack), sharp logits, a batch element
// whose keys are all padding (output 0, lse -inf, no gradient, exactly), and dropout. Dropout
// is checked twice: the policy against the reference (which fails unless the device drops the
// CPU's elements), and the kept pattern itself (q = 0, v = the identity) against the CPU
// kernel's, exactly. Finally a few cases with every split and chunk forced to two tiles
// (attention_force_chunk_tiles), so that the multi-tile paths (the merge of splits, dq
// read-modify-written across key tiles, both partial sums) run on small problems.
//
// Benchmark: B=4 h=4 n=m=4096 dh=64, l in {16, 64, 256}, k === v (Luna's tied projection), as
// bench/bench_attention.cc and the PyTorch anchor (../shared/anchors/torch_bench.py ops()):
// pack and unpack alone, forward and backward, and pack+unpack forward (anchor
// attention_l<l>_fwd) and forward+backward (attention_l<l>_fwdbwd). FLOPs: 4 per (query, key,
// dim) forward, 10 backward; bytes: the fewest, as bench_attention.cc counts them.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../../cuda/attention_cuda.h"
#include "../../native/kernels/attention.h"
#include "../../native/reference/attention_reference.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

using Vec = std::vector<float>;
using Vec64 = std::vector<double>;
constexpr double kNegInf64 = -std::numeric_limits<double>::infinity();

struct Case {
  bool pack;             // pack: lq = l queries over lk = the long axis; unpack: the reverse
  int64_t B, h, lq, lk, dh;
  bool masked, tied;
  double dropout;
  float qscale;             // spreads the logits (sharp softmax at 4)
  bool empty_row = false;   // batch element 0 has every key padded
  int tiles = 0;            // > 0: every split and chunk forced to this many tiles
};

std::string describe(const Case& c) {
  char s[180];
  std::snprintf(s, sizeof s, "%s B=%ld h=%ld lq=%ld lk=%ld dh=%ld%s%s p=%.2g q*%g%s%s", c.pack ? "pack" : "unpack",
                long(c.B), long(c.h), long(c.lq), long(c.lk), long(c.dh), c.masked ? " mask" : "",
                c.tied ? " tied" : "", c.dropout, double(c.qscale), c.empty_row ? " empty-row" : "",
                c.tiles ? (" tiles=" + std::to_string(c.tiles)).c_str() : "");
  return s;
}

// Every buffer of one call in one precision, on the host, outputs poisoned.
template <typename T>
struct HostCall {
  std::vector<T> q, k, v, dout, out, lse, dq, dk, dv;
  AttentionParams<T> params(const Case& c, const std::vector<uint8_t>& mask, uint64_t seed) {
    AttentionParams<T> p;
    p.q = q.data(), p.k = k.data(), p.v = c.tied ? k.data() : v.data();
    p.mask = mask.empty() ? nullptr : mask.data();
    p.out = out.data(), p.lse = lse.data(), p.dout = dout.data();
    p.dq = dq.data(), p.dk = dk.data(), p.dv = c.tied ? dk.data() : dv.data();
    p.B = c.B, p.h = c.h, p.lq = c.lq, p.lk = c.lk, p.dh = c.dh;
    p.scale = 1.0 / std::sqrt(double(c.dh));
    p.dropout = c.dropout, p.seed = seed;
    return p;
  }
};

template <typename T>
HostCall<T> host_call(const Vec& q, const Vec& k, const Vec& v, const Vec& dout, const Case& c) {
  HostCall<T> h;
  auto cv = [](const Vec& x) { return std::vector<T>(x.begin(), x.end()); };
  h.q = cv(q), h.k = cv(k), h.v = cv(v), h.dout = cv(dout);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  h.out.assign(q.size(), nan), h.dq.assign(q.size(), nan), h.lse.assign(size_t(c.B * c.h * c.lq), nan);
  h.dk.assign(k.size(), nan), h.dv.assign(k.size(), nan);
  return h;
}

struct DeviceResult {
  Vec out, lse, dq, dk, dv;
};

// The device run of one case: forward, then backward, every output poisoned first.
DeviceResult run_device(const Case& c, const Vec& q, const Vec& k, const Vec& v, const Vec& dout,
                        const std::vector<uint8_t>& mask, uint64_t seed) {
  DeviceArray<float> d_q(q), d_k(k), d_dout(dout);
  DeviceArray<float> d_v = c.tied ? DeviceArray<float>() : DeviceArray<float>(v);
  DeviceArray<uint8_t> d_mask = mask.empty() ? DeviceArray<uint8_t>() : DeviceArray<uint8_t>(mask);
  DeviceArray<float> out(q.size()), lse(size_t(c.B * c.h * c.lq)), dq(q.size()), dk(k.size()), dv(c.tied ? 0 : k.size());
  out.poison(), lse.poison(), dq.poison(), dk.poison();
  if (!c.tied) dv.poison();
  AttentionParams<float> p;
  p.q = d_q.get(), p.k = d_k.get(), p.v = c.tied ? d_k.get() : d_v.get();
  p.mask = mask.empty() ? nullptr : d_mask.get();
  p.out = out.get(), p.lse = lse.get(), p.dout = d_dout.get();
  p.dq = dq.get(), p.dk = dk.get(), p.dv = c.tied ? dk.get() : dv.get();
  p.B = c.B, p.h = c.h, p.lq = c.lq, p.lk = c.lk, p.dh = c.dh;
  p.scale = 1.0 / std::sqrt(double(c.dh));
  p.dropout = c.dropout, p.seed = seed;
  struct Forced {  // the chunking override lasts for this case only, even if a launcher throws
    explicit Forced(int tiles) { cuda::attention_force_chunk_tiles(tiles); }
    ~Forced() { cuda::attention_force_chunk_tiles(0); }
  } forced(c.tiles);
  if (c.pack) cuda::pack_forward(p), cuda::pack_backward(p);
  else cuda::unpack_forward(p), cuda::unpack_backward(p);
  DeviceResult r;
  r.out = out.download(), r.lse = lse.download(), r.dq = dq.download(), r.dk = dk.download();
  if (!c.tied) r.dv = dv.download();
  return r;
}

// lse: a fully masked row must give -inf exactly; the finite rest under the policy. The -inf
// positions are compared first, then zeroed in all three so that the policy's maximum
// difference runs over the finite rows only.
void expect_lse(Context& ctx, const std::string& what, Vec dev, Vec plain, Vec64 truth) {
  size_t wrong = 0, masked = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] != kNegInf64) continue;
    ++masked;
    if (dev[i] != -std::numeric_limits<float>::infinity()) ++wrong;
    dev[i] = plain[i] = 0.f, truth[i] = 0.0;
  }
  if (wrong) {
    ++ctx.cases, ++ctx.failures;
    std::printf("  FAIL %s: %zu of %zu fully masked rows do not have lse -inf\n", what.c_str(), wrong, masked);
    return;
  }
  expect_policy(ctx, what, dev, plain, truth, 2);
}

void validate_case(Context& ctx, const Case& c) {
  const size_t qn = size_t(c.B * c.h * c.lq * c.dh), kn = size_t(c.B * c.h * c.lk * c.dh);
  const Vec q = ctx.randn(qn, c.qscale), k = ctx.randn(kn), v = c.tied ? k : ctx.randn(kn), dout = ctx.randn(qn);
  std::vector<uint8_t> mask;
  if (c.masked) mask = ctx.mask(c.B, c.lk, 0.3);
  if (c.empty_row) {
    if (mask.empty()) mask.assign(size_t(c.B * c.lk), 0);
    std::fill(mask.begin(), mask.begin() + c.lk, uint8_t(1));
  }
  const uint64_t seed = ctx.rng() >> 12;

  HostCall<double> truth = host_call<double>(q, k, v, dout, c);
  HostCall<float> plain = host_call<float>(q, k, v, dout, c);
  const auto pt = truth.params(c, mask, seed);
  const auto pp = plain.params(c, mask, seed);
  reference_forward(pt), reference_backward(pt);
  reference_forward(pp), reference_backward(pp);
  HostCall<float> cpu = host_call<float>(q, k, v, dout, c);
  const auto pc = cpu.params(c, mask, seed);
  if (c.pack) pack_forward(pc), pack_backward(pc);
  else unpack_forward(pc), unpack_backward(pc);
  const DeviceResult d = run_device(c, q, k, v, dout, mask, seed);

  const std::string name = describe(c);
  expect_policy(ctx, name + " out", d.out, plain.out, truth.out, 2);
  expect_lse(ctx, name + " lse", d.lse, plain.lse, truth.lse);
  expect_policy(ctx, name + " dq", d.dq, plain.dq, truth.dq, 3);
  expect_policy(ctx, name + (c.tied ? " dk+dv" : " dk"), d.dk, plain.dk, truth.dk, 3);
  if (!c.tied) expect_policy(ctx, name + " dv", d.dv, plain.dv, truth.dv, 3);
  // Parity with the CPU kernels on the same inputs (same mask, same dropout seed): both are
  // float32 implementations within the policy of the truth, so they agree to a few ulp of the
  // values' scale; 1e-4 relative to max(1, |cpu|) is far above that and far below any bug.
  const auto finite = [](Vec x) {  // -inf lse rows were checked exactly above
    for (float& e : x)
      if (e == -std::numeric_limits<float>::infinity()) e = 0.f;
    return x;
  };
  expect_close(ctx, name + " out vs CPU", d.out, cpu.out, 1e-4);
  expect_close(ctx, name + " lse vs CPU", finite(d.lse), finite(cpu.lse), 1e-4);
  expect_close(ctx, name + " dq vs CPU", d.dq, cpu.dq, 1e-4);
  expect_close(ctx, name + " dk vs CPU", d.dk, cpu.dk, 1e-4);
  if (!c.tied) expect_close(ctx, name + " dv vs CPU", d.dv, cpu.dv, 1e-4);

  // Fully masked rows: output and dq exactly 0 (the policy allows 4 ulp anywhere); the masked
  // keys' dk and dv exactly 0 too.
  Vec dev, zero;
  for (int64_t row = 0; row < c.B * c.h * c.lq; ++row) {
    if (truth.lse[size_t(row)] != kNegInf64) continue;
    for (int64_t e = 0; e < c.dh; ++e) {
      const size_t x = size_t(row * c.dh + e);
      dev.push_back(d.out[x]), dev.push_back(d.dq[x]);
    }
  }
  if (!mask.empty())
    for (int64_t bh = 0; bh < c.B * c.h; ++bh)
      for (int64_t j = 0; j < c.lk; ++j) {
        if (!mask[size_t((bh / c.h) * c.lk + j)]) continue;
        for (int64_t e = 0; e < c.dh; ++e) {
          const size_t x = size_t((bh * c.lk + j) * c.dh + e);
          dev.push_back(d.dk[x]);
          if (!c.tied) dev.push_back(d.dv[x]);
        }
      }
  zero.assign(dev.size(), 0.f);
  if (!dev.empty()) expect_equal(ctx, name + " zeros of fully masked rows and masked keys", dev, zero);
}

// The dropout pattern itself: with q = 0 every kept key has the same probability, and with
// v = the identity (dh = lk) out[i][j] is that probability times element (i, j)'s factor, so
// the nonzero pattern of out is the kept set. It must be the CPU kernel's exactly.
void validate_dropout_pattern(Context& ctx, bool pack) {
  const Case c = pack ? Case{true, 2, 3, 5, 70, 70, true, false, 0.4, 1.f} : Case{false, 2, 3, 37, 21, 21, true, false, 0.4, 1.f};
  const size_t qn = size_t(c.B * c.h * c.lq * c.dh), kn = size_t(c.B * c.h * c.lk * c.dh);
  Vec q(qn, 0.f), k = ctx.randn(kn), v(kn, 0.f), dout = ctx.randn(qn);
  for (int64_t bh = 0; bh < c.B * c.h; ++bh)
    for (int64_t j = 0; j < c.lk; ++j) v[size_t((bh * c.lk + j) * c.dh + j)] = 1.f;
  const std::vector<uint8_t> mask = ctx.mask(c.B, c.lk, 0.2);
  const uint64_t seed = ctx.rng() >> 12;
  HostCall<float> cpu = host_call<float>(q, k, v, dout, c);
  const auto p = cpu.params(c, mask, seed);
  if (pack) pack_forward(p);
  else unpack_forward(p);
  const DeviceResult d = run_device(c, q, k, v, dout, mask, seed);
  Vec kept_cpu(qn), kept_dev(qn);
  for (size_t x = 0; x < qn; ++x) kept_cpu[x] = cpu.out[x] != 0.f, kept_dev[x] = d.out[x] != 0.f;
  expect_equal(ctx, describe(c) + " dropout pattern (kept elements) vs the CPU kernel", kept_dev, kept_cpu);
}

}  // namespace

void validate_attention(Context& ctx) {
  std::vector<Case> cases;
  // The grid: every l in {1, 3, 16, 17} x long axis in {1, 7, 33, 130} x dh in {8, 13, 64}, both
  // ops; masks and tied k/v cycle through their four combinations, and every fifth case has
  // dropout.
  const int64_t ls[] = {1, 3, 16, 17}, longs[] = {1, 7, 33, 130}, dhs[] = {8, 13, 64};
  int i = 0;
  for (bool pack : {true, false})
    for (int64_t l : ls)
      for (int64_t n : longs)
        for (int64_t dh : dhs) {
          const bool masked = i % 2 == 0, tied = (i / 2) % 2 == 1;
          const double p = i % 5 == 4 ? 0.25 : 0.0;
          ++i;
          cases.push_back(pack ? Case{true, 2, 2, l, n, dh, masked, tied, p, 1.f}
                               : Case{false, 2, 2, n, l, dh, masked, tied, p, 1.f});
        }
  for (bool pack : {true, false}) {
    auto add = [&](int64_t B, int64_t h, int64_t l, int64_t n, int64_t dh, bool masked, bool tied, double p, float qs,
                   bool empty = false) {
      cases.push_back(pack ? Case{true, B, h, l, n, dh, masked, tied, p, qs, empty}
                           : Case{false, B, h, n, l, dh, masked, tied, p, qs, empty});
    };
    // The other instances: 32, 128 (and 100 padded to it: four threads per row in the forward),
    // 256 (and 200: eight).
    add(2, 1, 16, 70, 32, true, true, 0.0, 1.f);
    add(1, 2, 17, 65, 100, true, false, 0.0, 1.f);
    add(1, 2, 3, 40, 128, false, true, 0.0, 1.f);
    add(1, 1, 5, 33, 200, true, false, 0.0, 1.f);
    add(1, 1, 16, 20, 256, false, false, 0.0, 1.f);
    // l = 130: the unpack's keys in several tiles, the pack's queries in several row tiles.
    add(1, 2, 130, 150, 13, true, false, 0.0, 1.f);
    // A batch element whose keys are all padding; sharp logits; dropout.
    add(2, 2, 3, 40, 13, true, false, 0.0, 1.f, true);
    add(2, 2, 17, 33, 8, false, true, 0.0, 1.f, true);
    add(1, 2, 16, 130, 64, false, false, 0.0, 4.f);
    add(1, 2, 16, 70, 128, true, false, 0.0, 4.f);
    add(1, 1, 17, 40, 256, false, true, 0.0, 4.f);
    add(2, 2, 17, 130, 13, true, false, 0.3, 1.f);
    add(1, 2, 16, 70, 64, true, true, 0.1, 1.f);
  }
  for (const Case& c : cases) validate_case(ctx, c);

  // Splits and chunks of two tiles each, so that small problems take the multi-tile paths: the
  // forward's online softmax across tiles and its split merge, the backward's dq read-modify-
  // write across key tiles, dK/dV accumulation across row tiles, and both partial sums at once.
  const Case two_tiles[] = {
      {true, 2, 2, 3, 330, 13, true, true, 0.0, 1.f, false, 2},    {true, 1, 2, 130, 300, 8, true, false, 0.0, 1.f, false, 2},
      {true, 1, 1, 17, 200, 100, false, false, 0.0, 4.f, false, 2}, {false, 2, 2, 330, 3, 13, true, true, 0.0, 1.f, false, 2},
      {false, 1, 2, 300, 130, 8, false, false, 0.0, 1.f, false, 2}, {false, 1, 1, 200, 40, 256, true, false, 0.0, 1.f, false, 2},
      {false, 2, 1, 260, 17, 64, true, false, 0.2, 1.f, false, 2},  {true, 2, 1, 17, 260, 64, true, true, 0.2, 1.f, false, 2},
  };
  for (const Case& c : two_tiles) validate_case(ctx, c);
  validate_dropout_pattern(ctx, true);
  validate_dropout_pattern(ctx, false);
}

void bench_attention(Context& ctx) {
  const int64_t B = 4, n = 4096, h = 4, dh = 64, d = h * dh;
  const double F = 4;
  for (int64_t l : {16, 64, 256}) {
    // pack: q, out, dout, dq [B, h, l, dh]; k (= v), dk [B, h, n, dh]; lse [B, h, l].
    // unpack: q, out, dout, dq [B, h, n, dh]; k (= v), dk [B, h, l, dh]; lse [B, h, n].
    const size_t pq = size_t(B * h * l * dh), uq = size_t(B * h * n * dh);
    DeviceArray<float> pk_q(ctx.randn(pq)), pk_k(ctx.randn(uq)), pk_dout(ctx.randn(pq));
    DeviceArray<float> pk_out(pq), pk_lse(size_t(B * h * l)), pk_dq(pq), pk_dk(uq);
    DeviceArray<float> up_q(ctx.randn(uq)), up_k(ctx.randn(pq)), up_dout(ctx.randn(uq));
    DeviceArray<float> up_out(uq), up_lse(size_t(B * h * n)), up_dq(uq), up_dk(pq);
    auto params = [&](int64_t lq, int64_t lk, DeviceArray<float>& q, DeviceArray<float>& k, DeviceArray<float>& dout,
                      DeviceArray<float>& out, DeviceArray<float>& lse, DeviceArray<float>& dq, DeviceArray<float>& dk) {
      AttentionParams<float> p;
      p.q = q.get(), p.k = p.v = k.get(), p.dout = dout.get(), p.out = out.get(), p.lse = lse.get();
      p.dq = dq.get(), p.dk = p.dv = dk.get();
      p.B = B, p.h = h, p.lq = lq, p.lk = lk, p.dh = dh, p.scale = 1.0 / std::sqrt(double(dh));
      return p;
    };
    const AttentionParams<float> pp = params(l, n, pk_q, pk_k, pk_dout, pk_out, pk_lse, pk_dq, pk_dk);
    const AttentionParams<float> pu = params(n, l, up_q, up_k, up_dout, up_out, up_lse, up_dq, up_dk);
    // The fewest bytes (luna-math.md section 6, float32, tied), as bench_attention.cc: a forward
    // reads q and k once and writes out and lse; a backward reads q, k, out, dout and lse and
    // writes dq and dk.
    const double pack_fwd = F * (2.0 * B * l * d + B * n * d + B * h * l), unpack_fwd = F * (2.0 * B * n * d + B * l * d + B * h * n),
                 pack_bwd = F * (4.0 * B * l * d + 2.0 * B * n * d + B * h * l),
                 unpack_bwd = F * (4.0 * B * n * d + 2.0 * B * l * d + B * h * n);
    const double unit = double(B) * h * n * l * dh;  // one multiply-add pass over the n x l logits
    const std::string shape = "B=4 n=4096 h=4 dh=64 l=" + std::to_string(l);
    const std::string key = "attention_l" + std::to_string(l);
    cuda::pack_forward(pp), cuda::unpack_forward(pu);  // the backwards read these outputs
    time_row(ctx, {"attention", "pack fwd", shape, 0, 4 * unit, pack_fwd, ""}, [&] { cuda::pack_forward(pp); });
    time_row(ctx, {"attention", "unpack fwd", shape, 0, 4 * unit, unpack_fwd, ""}, [&] { cuda::unpack_forward(pu); });
    time_row(ctx, {"attention", "pack bwd", shape, 0, 10 * unit, pack_bwd, ""}, [&] { cuda::pack_backward(pp); });
    time_row(ctx, {"attention", "unpack bwd", shape, 0, 10 * unit, unpack_bwd, ""}, [&] { cuda::unpack_backward(pu); });
    time_row(ctx, {"attention", "pack+unpack fwd", shape, 0, 8 * unit, pack_fwd + unpack_fwd, key + "_fwd"}, [&] {
      cuda::pack_forward(pp);
      cuda::unpack_forward(pu);
    });
    time_row(ctx,
             {"attention", "pack+unpack fwd+bwd", shape, 0, 28 * unit, pack_fwd + unpack_fwd + pack_bwd + unpack_bwd,
              key + "_fwdbwd"},
             [&] {
               cuda::pack_forward(pp);
               cuda::unpack_forward(pu);
               cuda::pack_backward(pp);
               cuda::unpack_backward(pu);
             });
  }
}

}  // namespace luna::gpu_check
