// The CUDA check of the elementwise, reduction and layout kernels (cuda/elementwise_cuda.h).
//
// Validation, on fresh random inputs with every output poisoned first:
//   - binary ops, scale-shift, strided copies and block copies are exactly defined in float32, so
//     the CUDA result must equal the plain float32 reference (and the CPU kernel) bit for bit;
//   - sums meet design.md's policy against the float64 reference, with the plain float32
//     implementation being every element added in index order to its output (as bench_nn does).
// Shapes: odd sizes, broadcasting in every position, ranks 1..5, size-1 dims, transposes that do
// and do not take the tiled path, reductions over the first, middle, last and all axes, long
// rows and columns that are summed in chunks, and pointers off the 16-byte grid (which turns the
// float4 paths off).
//
// Benchmark: one bandwidth row per kernel at about 16M elements, counting the fewest bytes each
// must move (every input element read once, every output element written once).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "../../cuda/elementwise_cuda.h"
#include "../../native/kernels/elementwise.h"
#include "../../native/reference/elementwise_reference.h"
#include "families.h"

namespace luna::gpu_check {

namespace {

using Shape = std::vector<int64_t>;
using Vec = std::vector<float>;
using Vec64 = std::vector<double>;
constexpr double kF = sizeof(float);

int64_t count(const Shape& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}

std::string dims(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

Shape contiguous(const Shape& shape) {
  Shape s(shape.size(), 1);
  for (int d = int(shape.size()) - 2; d >= 0; --d) s[d] = s[d + 1] * shape[d + 1];
  return s;
}

// The strides that read an input of shape `in` broadcast to `out` (same rank, dims 1 or equal).
Shape broadcast_strides(const Shape& in, const Shape& out) {
  Shape s = contiguous(in);
  for (size_t d = 0; d < in.size(); ++d)
    if (in[d] == 1 && out[d] != 1) s[d] = 0;
  return s;
}

// A device copy of `host` that starts `shift` floats into its allocation: shift 1 puts the data
// off the 16-byte grid, so the kernels must take their unvectorised paths.
struct Placed {
  DeviceArray<float> mem;
  int shift;
  Placed(const Vec& host, int shift_) : mem(host.size() + size_t(shift_)), shift(shift_) {
    Vec padded(size_t(shift), 0.0f);
    padded.insert(padded.end(), host.begin(), host.end());
    mem.upload(padded);
  }
  float* get() const { return mem.get() + shift; }
  // Poisons the whole allocation (NaN).
  void poison() { mem.poison(); }
  Vec download() const {
    const Vec all = mem.download();
    return Vec(all.begin() + shift, all.end());
  }
};

// ---- binary ops -----------------------------------------------------------------------------

// `shifts` puts a, b and out (bits 0, 1, 2) one float off the 16-byte grid.
void check_binary(Context& ctx, const Shape& out, const Shape& sa, const Shape& sb, int shifts) {
  const int64_t n = count(out);
  const Vec a = ctx.randn(size_t(count(sa))), b = ctx.randn(size_t(count(sb)));
  const Shape ta = broadcast_strides(sa, out), tb = broadcast_strides(sb, out);
  for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul}) {
    BinaryParams<float> p;
    p.rank = int(out.size());
    p.op = op;
    for (int d = 0; d < p.rank; ++d) p.shape[d] = out[d], p.a_stride[d] = ta[d], p.b_stride[d] = tb[d];
    Vec plain(static_cast<size_t>(n)), cpu(static_cast<size_t>(n));
    p.a = a.data(), p.b = b.data(), p.out = plain.data();
    reference_binary(p);
    p.out = cpu.data();
    binary_op(p);
    Placed da(a, shifts & 1), db(b, (shifts >> 1) & 1), dout(Vec(size_t(n)), (shifts >> 2) & 1);
    dout.poison();
    p.a = da.get(), p.b = db.get(), p.out = dout.get();
    cuda::binary_op(p);
    const Vec got = dout.download();
    const char* name = op == BinaryOp::Add ? "add" : op == BinaryOp::Sub ? "sub" : "mul";
    const std::string what = std::string("binary ") + name + " " + dims(sa) + "," + dims(sb) + "->" + dims(out) +
                             (shifts ? " (unaligned " + std::to_string(shifts) + ")" : "");
    expect_equal(ctx, what, got, plain);
    expect_equal(ctx, what + " vs CPU", got, cpu);
  }
}

void validate_binary(Context& ctx) {
  struct Case { Shape out, a, b; };
  const std::vector<Case> cases = {
      {{1}, {1}, {1}},                                   // one element
      {{}, {}, {}},                                      // rank 0
      {{1001}, {1001}, {1001}},                          // flat, n % 4 != 0
      {{1001}, {1001}, {1}},                             // one element broadcast along a row
      {{1001}, {1}, {1001}},
      {{37, 129}, {37, 129}, {1, 129}},                  // a bias row
      {{37, 129}, {37, 1}, {37, 129}},                   // a per-row scale
      {{37, 129}, {1, 129}, {37, 1}},                    // an outer product
      {{5, 1, 33}, {5, 1, 33}, {1, 1, 33}},              // a size-1 dim in the output
      {{3, 4, 5, 17}, {3, 1, 5, 17}, {1, 4, 5, 1}},
      {{2, 3, 4, 5, 6}, {2, 1, 4, 1, 6}, {1, 3, 1, 5, 1}},
      {{2, 3, 4, 5, 6}, {1, 3, 4, 5, 6}, {2, 3, 4, 5, 1}},  // broadcast first / last
      {{7, 3, 1, 9, 2}, {7, 1, 1, 9, 1}, {1, 3, 1, 1, 2}},
      {{64, 96}, {64, 96}, {64, 96}},
      {{37, 132}, {37, 132}, {1, 132}},                  // rows of a multiple of 4: four per step
      {{37, 132}, {37, 1}, {37, 132}},
      {{6, 5, 8}, {6, 1, 8}, {1, 5, 1}},
      // more elements than the emulator's grid has threads: the grid-stride loops go round
      {{300, 401}, {300, 401}, {1, 401}},
      {{90001}, {90001}, {90001}}};
  for (const Case& k : cases)
    for (int shifts : {0, 1, 2, 4}) check_binary(ctx, k.out, k.a, k.b, shifts);
}

// In place, out = a, as the autograd accumulates gradients: same shape, and a bias row added
// into a matrix.
void validate_binary_in_place(Context& ctx) {
  struct Case { Shape out, b; };
  for (const Case& k : {Case{{10007}, {10007}}, Case{{37, 132}, {1, 132}}, Case{{37, 33}, {37, 1}}}) {
    const int64_t n = count(k.out);
    const Vec a = ctx.randn(size_t(n)), b = ctx.randn(size_t(count(k.b)));
    const Shape tb = broadcast_strides(k.b, k.out), ta = contiguous(k.out);
    BinaryParams<float> p;
    p.rank = int(k.out.size());
    for (int d = 0; d < p.rank; ++d) p.shape[d] = k.out[d], p.a_stride[d] = ta[d], p.b_stride[d] = tb[d];
    Vec plain(static_cast<size_t>(n));
    p.a = a.data(), p.b = b.data(), p.out = plain.data();
    reference_binary(p);
    DeviceArray<float> da(a), db(b);
    p.a = da.get(), p.b = db.get(), p.out = da.get();
    cuda::binary_op(p);
    expect_equal(ctx, "binary add in place " + dims(k.out) + "+" + dims(k.b), da.download(), plain);
  }
}

// ---- scale-shift ----------------------------------------------------------------------------

void validate_scale_shift(Context& ctx) {
  for (int64_t n : {int64_t(1), int64_t(3), int64_t(4), int64_t(10007)}) {
    for (int shift : {0, 1}) {
      const Vec x = ctx.randn(size_t(n));
      const float a = 0.7f, b = -1.3f;
      Vec plain(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const float t = a * x[i];
        plain[i] = t + b;
      }
      Placed dx(x, shift), dout(Vec(size_t(n)), shift);
      dout.poison();
      cuda::scale_shift(dx.get(), dout.get(), n, a, b);
      expect_equal(ctx, "scale_shift n=" + std::to_string(n) + (shift ? " (unaligned)" : ""), dout.download(), plain);
      // In place (out == x), as the binding allows.
      cuda::scale_shift(dx.get(), dx.get(), n, a, b);
      expect_equal(ctx, "scale_shift in place n=" + std::to_string(n), dx.download(), plain);
    }
  }
}

// ---- strided copies -------------------------------------------------------------------------

// `shifts` puts x and out (bits 0, 1) one float off the 16-byte grid.
void check_copy(Context& ctx, const std::string& what, const Vec& x, const Shape& shape, const Shape& strides,
                int shifts) {
  StridedCopyParams<float> p;
  p.rank = int(shape.size());
  for (int d = 0; d < p.rank; ++d) p.shape[d] = shape[d], p.stride[d] = strides[d];
  const int64_t n = count(shape);
  Vec plain(static_cast<size_t>(n)), cpu(static_cast<size_t>(n));
  p.x = x.data(), p.out = plain.data();
  reference_strided_copy(p);
  p.out = cpu.data();
  strided_copy(p);
  Placed dx(x, shifts & 1), dout(Vec(size_t(n)), (shifts >> 1) & 1);
  dout.poison();
  p.x = dx.get(), p.out = dout.get();
  cuda::strided_copy(p);
  const Vec got = dout.download();
  expect_equal(ctx, what + (shifts ? " (unaligned " + std::to_string(shifts) + ")" : ""), got, plain);
  expect_equal(ctx, what + " vs CPU", got, cpu);
}

void validate_strided_copy(Context& ctx) {
  // Permutes: out dim d is input dim perm[d].
  struct Perm { Shape in; std::vector<int> perm; };
  const std::vector<Perm> perms = {
      {{1000}, {0}},                        // flat
      {{33, 70}, {1, 0}},                   // 2-D transposes: odd, square, tall, a single row
      {{64, 64}, {1, 0}},
      {{5, 1000}, {1, 0}},
      {{1, 7}, {1, 0}},
      {{3, 7}, {1, 0}},                     // too small to tile
      {{2, 37, 3, 16}, {0, 2, 1, 3}},       // split / merge heads: contiguous runs
      {{2, 3, 37, 16}, {0, 2, 1, 3}},
      {{2, 3, 4, 5}, {3, 1, 0, 2}},
      {{3, 40, 45}, {0, 2, 1}},             // batched transposes
      {{40, 3, 45}, {2, 1, 0}},             // the contiguous dim is not next to the last
      {{6, 35, 1, 9}, {3, 2, 0, 1}},        // a size-1 dim
      {{2, 3, 5, 7, 11}, {4, 2, 0, 3, 1}},  // rank 5
      {{2, 3, 5, 7, 11}, {0, 1, 2, 4, 3}},
      {{4, 200, 190}, {0, 2, 1}},           // more tiles than blocks: the tile loop goes round
      {{8, 50, 4, 60}, {0, 2, 1, 3}}};      // more elements than threads
  for (const Perm& k : perms) {
    const Vec x = ctx.randn(size_t(count(k.in)));
    const Shape in_stride = contiguous(k.in);
    Shape shape, strides;
    for (int d : k.perm) shape.push_back(k.in[d]), strides.push_back(in_stride[d]);
    for (int shifts : {0, 1, 2}) check_copy(ctx, "permute " + dims(k.in) + "->" + dims(shape), x, shape, strides, shifts);
  }
  // Broadcasts (stride 0) in every position, and a broadcast of a permuted input.
  struct Cast { Shape in, out; };
  const std::vector<Cast> casts = {{{1}, {1000}},           {{5}, {4, 5}},          {{4, 1}, {4, 33}},
                                   {{1, 3, 1}, {7, 3, 5}},  {{2, 1, 3, 1, 5}, {2, 4, 3, 6, 5}},
                                   {{1, 1, 1}, {3, 1, 2}}};
  for (const Cast& k : casts) {
    const Vec x = ctx.randn(size_t(count(k.in)));
    for (int shifts : {0, 1, 2})
      check_copy(ctx, "broadcast " + dims(k.in) + "->" + dims(k.out), x, k.out, broadcast_strides(k.in, k.out), shifts);
  }
  {  // rows of 128 read out of rows of 130 (offsets off the float4 grid) and of 132 (on it)
    const Vec x = ctx.randn(5 * 132);
    check_copy(ctx, "rows [5,128] of stride 130", x, {5, 128}, {130, 1}, 0);
    for (int shifts : {0, 1, 2}) check_copy(ctx, "rows [5,128] of stride 132", x, {5, 128}, {132, 1}, shifts);
    check_copy(ctx, "rows [5,128] of stride 132, column 1 on", Vec(x.begin() + 1, x.end()), {5, 128}, {132, 1}, 0);
  }
  {  // x [9, 40] transposed to [40, 9] and broadcast along a new leading dim of 3
    const Vec x = ctx.randn(360);
    check_copy(ctx, "transpose+broadcast [9,40]->[3,40,9]", x, {3, 40, 9}, {0, 1, 40}, 3);
  }
}

// ---- sums -----------------------------------------------------------------------------------

// The plain float32 implementation of reduce_to: every element added, in index order, to its
// output in float. (reference_reduce_to<float> adds in double: it is not the plain float32 sum.)
Vec plain_reduce(const Vec& x, const Shape& in, const Shape& out) {
  Vec acc(size_t(count(out)), 0.0f);
  const int rank = int(in.size());
  for (int64_t i = 0; i < count(in); ++i) {
    int64_t rest = i, o = 0, step = 1;
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t idx = rest % in[d];
      rest /= in[d];
      if (out[d] != 1) o += idx * step;
      step *= out[d];
    }
    acc[size_t(o)] += x[size_t(i)];
  }
  return acc;
}

// design.md's policy for sums, as bench_nn applies it (nn_validate.h): error against float64 at
// most `factor` times the plain float32 error, plus 4 ulp of the size of the values summed (the
// largest sum of |x| over the outputs). The floor is that of the values summed, not of the result,
// because a sum that cancels to near zero is still rounded at the size of its partial sums: two
// summation orders then differ by a few ulp of those, whichever happens to be luckier.
// Also tracks the worst use of the bound, printed at the end of the validation.
double g_worst_use = 0;

bool expect_sum_policy(Context& ctx, const std::string& what, const Vec& got, const Vec& plain, const Vec64& truth,
                       const Vec64& abs_sums, double factor) {
  ++ctx.cases;
  const double ec = max_abs_diff(got, truth), ep = max_abs_diff(plain, truth);
  const double bound = factor * ep + 4.0 / (1 << 23) * max_abs(abs_sums);
  if (bound > 0) g_worst_use = std::max(g_worst_use, ec / bound);
  if (got.size() == truth.size() && ec <= bound) return true;
  std::printf("  FAIL %s: err %.3g > bound %.3g (plain float32 err %.3g, factor %g)\n", what.c_str(), ec, bound, ep,
              factor);
  ++ctx.failures;
  return false;
}

void check_reduce(Context& ctx, const Shape& in, const Shape& out, int shift) {
  const Vec x = ctx.randn(size_t(count(in)));
  ReduceParams<double> r;
  const Vec64 x64(x.begin(), x.end());
  Vec64 truth(size_t(count(out)));
  r.x = x64.data(), r.out = truth.data(), r.rank = int(in.size());
  for (int d = 0; d < r.rank; ++d) r.in_shape[d] = in[d], r.out_shape[d] = out[d];
  reference_reduce_to(r);
  Vec64 abs_x(x64.size()), abs_sums(truth.size());
  for (size_t i = 0; i < x64.size(); ++i) abs_x[i] = std::fabs(x64[i]);
  r.x = abs_x.data(), r.out = abs_sums.data();
  reference_reduce_to(r);
  const Vec plain = plain_reduce(x, in, out);
  Placed dx(x, shift), dout(Vec(size_t(count(out))), shift);
  dout.poison();
  ReduceParams<float> p;
  p.x = dx.get(), p.out = dout.get(), p.rank = r.rank;
  for (int d = 0; d < p.rank; ++d) p.in_shape[d] = in[d], p.out_shape[d] = out[d];
  cuda::reduce_to(p);
  expect_sum_policy(ctx, "reduce_to " + dims(in) + "->" + dims(out) + (shift ? " (unaligned)" : ""), dout.download(),
                    plain, truth, abs_sums, 2);
}

void validate_reduce(Context& ctx) {
  struct Case { Shape in, out; };
  const std::vector<Case> cases = {
      {{1}, {1}},                                 // nothing to sum: a copy
      {{2, 3}, {2, 3}},
      {{1000}, {1}},                              // all of a flat vector (one warp)
      {{70001}, {1}},                             // all, in 9 chunks, then the chunks
      {{300, 77}, {1, 77}},                       // first axis (columns)
      {{300, 77}, {300, 1}},                      // last axis (short rows)
      {{3, 1500}, {3, 1}},                        // rows longer than a warp's
      {{2, 20000}, {2, 1}},                       // rows summed in chunks
      {{1300, 5}, {1, 5}},                        // narrow columns, in 3 chunks of rows
      {{1100, 40}, {1, 1}},                       // all axes of a matrix
      {{4, 5, 6, 7}, {1, 5, 1, 7}},               // first and third
      {{4, 5, 6, 7}, {4, 1, 6, 1}},               // second and last
      {{4, 5, 6, 7}, {4, 1, 1, 7}},               // the middle two
      {{6, 1, 9}, {1, 1, 9}},                     // a size-1 dim
      {{3, 1, 700, 2}, {3, 1, 1, 2}},             // middle axis, long
      {{2, 3, 4, 5, 6}, {1, 3, 1, 5, 1}},         // rank 5, alternating
      {{2, 3, 4, 5, 6}, {1, 1, 1, 1, 1}},         // rank 5, all
      {{2, 3, 4, 5, 6}, {2, 3, 4, 5, 1}},         // rank 5, last
      {{600, 130}, {1, 130}},                     // columns in two chunks of rows
      // more units of work than the emulator's grid has blocks: the block loops go round
      {{200, 3, 40}, {200, 1, 40}},
      {{130, 1100}, {130, 1}},
      {{1100, 33}, {1100, 1}}};
  for (const Case& k : cases) check_reduce(ctx, k.in, k.out, 0);
  check_reduce(ctx, {37, 41}, {1, 41}, 1);
  check_reduce(ctx, {37, 41}, {37, 1}, 1);

  {  // sum_axis directly: (outer, n, inner) with chunked columns and several outers
    const int64_t outer = 3, n = 1100, inner = 9;
    const Vec x = ctx.randn(size_t(outer * n * inner));
    const Vec plain = plain_reduce(x, {outer, n, inner}, {outer, 1, inner});
    Vec64 truth(size_t(outer * inner), 0.0), abs_sums(truth.size(), 0.0);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < inner; ++i) {
          const double v = x[size_t((o * n + j) * inner + i)];
          truth[size_t(o * inner + i)] += v;
          abs_sums[size_t(o * inner + i)] += std::fabs(v);
        }
    DeviceArray<float> dx(x), dout(size_t(outer * inner));
    dout.poison();
    cuda::sum_axis(dx.get(), dout.get(), outer, n, inner);
    expect_sum_policy(ctx, "sum_axis (3, 1100, 9)", dout.download(), plain, truth, abs_sums, 2);
  }
  std::printf("  elementwise sums: worst error at %.0f%% of the policy bound\n", 100 * g_worst_use);
}

// ---- block copies ---------------------------------------------------------------------------

void validate_copy_blocks(Context& ctx) {
  struct Case { int64_t rows, cols, src_stride, src_offset, dst_stride, dst_offset; };
  const std::vector<Case> cases = {
      {37, 40, 50, 5, 80, 20},    // columns [5, 45) into [20, 60): vectorised
      {37, 40, 50, 5, 80, 21},    // the destination off the 16-byte grid
      {37, 13, 13, 0, 29, 16},    // odd columns
      {1, 1001, 0, 3, 0, 0},      // one row
      {1, 1001, 0, 4, 0, 8},      // one row, aligned, cols % 4 != 0
      {3, 6, 8, 0, 8, 0},         // aligned rows, cols % 4 != 0
      {4, 8, 12, 1, 16, 4},       // strides on the float4 grid, the source off it
      {4, 8, 12, 4, 16, 5},       // strides on the float4 grid, the destination off it
      {100, 1, 3, 2, 1, 0},       // one column
      {5, 64, 64, 0, 128, 64}};   // concat of [5, 64] into the right half of [5, 128]
  for (const Case& k : cases) {
    const int64_t src_len = k.src_offset + (k.rows - 1) * k.src_stride + k.cols;
    const int64_t dst_len = k.dst_offset + (k.rows - 1) * k.dst_stride + k.cols + 7;
    const Vec src = ctx.randn(size_t(src_len)), dst0 = ctx.randn(size_t(dst_len));
    BlockCopyParams<float> p;
    p.rows = k.rows, p.cols = k.cols;
    p.src_stride = k.src_stride, p.src_offset = k.src_offset, p.dst_stride = k.dst_stride, p.dst_offset = k.dst_offset;
    Vec cpu = dst0;
    p.src = src.data(), p.dst = cpu.data();
    copy_blocks(p);
    DeviceArray<float> dsrc(src), ddst(dst0);
    p.src = dsrc.get(), p.dst = ddst.get();
    cuda::copy_blocks(p);
    expect_equal(ctx,
                 "copy_blocks rows=" + std::to_string(k.rows) + " cols=" + std::to_string(k.cols) + " dst_offset=" +
                     std::to_string(k.dst_offset),
                 ddst.download(), cpu);
  }
}

}  // namespace

void validate_elementwise(Context& ctx) {
  validate_binary(ctx);
  validate_binary_in_place(ctx);
  validate_scale_shift(ctx);
  validate_strided_copy(ctx);
  validate_reduce(ctx);
  validate_copy_blocks(ctx);
}

// ---- benchmark: about 16M elements per kernel -----------------------------------------------

void bench_elementwise(Context& ctx) {
  constexpr int64_t R = 16384, D = 1024, N = R * D;  // 16M: B=4 x n=4096 tokens at the FFN width
  constexpr int64_t S = 4096;                        // the square transpose, also 16M
  DeviceArray<float> x(ctx.randn(size_t(N))), y(ctx.randn(size_t(N))), out(size_t(2 * N));
  auto row = [&](const std::string& kernel, const std::string& shape, double bytes, double flops,
                 const std::string& anchor) {
    Row r;
    r.family = "elementwise";
    r.kernel = kernel;
    r.shape = shape;
    r.bytes = bytes;
    r.flops = flops;
    r.anchor = anchor;
    return r;
  };
  auto binary = [&](const char* name, BinaryOp op, Shape out_shape, Shape sa, Shape sb, const char* anchor) {
    BinaryParams<float> p;
    p.rank = int(out_shape.size());
    p.op = op;
    const Shape ta = broadcast_strides(sa, out_shape), tb = broadcast_strides(sb, out_shape);
    for (int d = 0; d < p.rank; ++d) p.shape[d] = out_shape[d], p.a_stride[d] = ta[d], p.b_stride[d] = tb[d];
    p.a = x.get(), p.b = y.get(), p.out = out.get();
    const int64_t n = count(out_shape);
    time_row(ctx, row(name, dims(sa) + (op == BinaryOp::Mul ? "*" : "+") + dims(sb), kF * double(n + count(sa) + count(sb)),
                      double(n), anchor),
             [&] { cuda::binary_op(p); });
  };
  binary("add", BinaryOp::Add, {S, S}, {S, S}, {S, S}, "add_16M");
  binary("add_bias", BinaryOp::Add, {R, D}, {R, D}, {1, D}, "");
  binary("mul_row_scale", BinaryOp::Mul, {R, D}, {R, D}, {R, 1}, "");
  time_row(ctx, row("scale_shift", dims({N}), 2 * kF * double(N), 2.0 * double(N), ""),
           [&] { cuda::scale_shift(x.get(), out.get(), N, 0.7f, -1.3f); });

  auto permute = [&](const char* name, Shape in, std::vector<int> perm, const char* anchor) {
    StridedCopyParams<float> p;
    p.rank = int(in.size());
    const Shape st = contiguous(in);
    Shape shape;
    for (int d = 0; d < p.rank; ++d) p.shape[d] = in[perm[d]], p.stride[d] = st[perm[d]], shape.push_back(in[perm[d]]);
    p.x = x.get(), p.out = out.get();
    time_row(ctx, row(name, dims(in) + "->" + dims(shape), 2 * kF * double(count(in)), 0, anchor),
             [&] { cuda::strided_copy(p); });
  };
  permute("transpose_2d", {S, S}, {1, 0}, "transpose_4096");
  permute("transpose_heads", {4, 4096, 16, 64}, {0, 2, 1, 3}, "");
  {  // broadcastTo: a [D] row to [R, D]
    StridedCopyParams<float> p;
    p.rank = 2, p.shape[0] = R, p.shape[1] = D, p.stride[0] = 0, p.stride[1] = 1;
    p.x = x.get(), p.out = out.get();
    time_row(ctx, row("broadcast_rows", dims({D}) + "->" + dims({R, D}), kF * double(N + D), 0, ""),
             [&] { cuda::strided_copy(p); });
  }

  auto reduce = [&](const char* name, Shape in, Shape o, const char* anchor) {
    ReduceParams<float> p;
    p.rank = int(in.size());
    for (int d = 0; d < p.rank; ++d) p.in_shape[d] = in[d], p.out_shape[d] = o[d];
    p.x = x.get(), p.out = out.get();
    time_row(ctx, row(name, dims(in) + "->" + dims(o), kF * double(count(in) + count(o)), double(count(in)), anchor),
             [&] { cuda::reduce_to(p); });
  };
  reduce("sum_rows", {R, D}, {1, D}, "sum_rows_16M");  // the bias gradient: sum over the rows
  reduce("sum_last", {R, D}, {R, 1}, "");
  reduce("sum_all", {N}, {1}, "");

  {  // copy_blocks (concat): [R, D] into columns [D, 2D) of [R, 2D]
    BlockCopyParams<float> p;
    p.rows = R, p.cols = D, p.src_stride = D, p.dst_stride = 2 * D, p.dst_offset = D;
    p.src = x.get(), p.dst = out.get();
    time_row(ctx, row("copy_blocks", dims({R, D}) + "->" + dims({R, 2 * D}), 2 * kF * double(N), 0, ""),
             [&] { cuda::copy_blocks(p); });
  }
}

}  // namespace luna::gpu_check
