// Elementwise, reduction and layout kernels on the GPU: the CUDA side of
// native/kernels/elementwise.cc, with the same parameter structs (cuda/elementwise_cuda.h).
//
// All of these are memory-bound, so the work is to touch every byte once, in coalesced
// transactions: the host first simplifies a strided walk exactly as the CPU does (size-1 dims
// dropped, dims the inputs step through contiguously fused), so that the common cases become
// a flat loop (float4 loads and stores where the pointers allow), a broadcast over rows, or a
// tiled transpose through shared memory. Element loops are grid-stride loops over 64-bit indices;
// the index arithmetic inside them is 32-bit whenever every offset fits (the addon's tensors are
// under 2^31 elements, so always there), because a 64-bit division costs several times more.
//
// The sums are in elementwise_sums.cuh (included at the end): float32 accumulators in a fixed
// order chosen by the problem size alone (never by the device), so every run and every GPU gives
// the same bits; no atomics.
#include "elementwise_cuda.h"

#include <algorithm>

#include "common.cuh"

namespace luna::cuda {

namespace {

// `#pragma unroll` for nvcc only (the emulator's host compiler warns about the unknown pragma).
// EW_UNROLL4 on the summing loops lets a thread have four loads in flight while it adds (the
// order of the additions stays that of the loop).
#if defined(__CUDACC__)
#define EW_UNROLL _Pragma("unroll")
#define EW_UNROLL4 _Pragma("unroll 4")
#else
#define EW_UNROLL
#define EW_UNROLL4
#endif

constexpr int kThreads = 256;
// Side of the transpose tile, and the rows of threads that cover it (each thread moves
// kTile / kTileRows elements of a tile).
constexpr int kTile = 32;
constexpr int kTileRows = 8;

// ---- host-side helpers ----------------------------------------------------------------------

// A strided walk over a contiguous output with up to two inputs, simplified as on the CPU:
// size-1 dims dropped, neighbouring dims fused where every input steps through them as through
// one dim (outer stride == inner stride * inner size). Passed to the kernels by value.
struct Walk {
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t stride[2][kMaxRank] = {};
};

Walk simplify(int rank, const int64_t* shape, const int64_t* s0, const int64_t* s1) {
  Walk w;
  for (int d = 0; d < rank; ++d) {
    if (shape[d] == 1) continue;
    const int64_t t0 = s0[d], t1 = s1 != nullptr ? s1[d] : 0;
    const int last = w.rank - 1;
    if (last >= 0 && w.stride[0][last] == t0 * shape[d] && w.stride[1][last] == t1 * shape[d]) {
      w.shape[last] *= shape[d];
      w.stride[0][last] = t0;
      w.stride[1][last] = t1;
    } else {
      w.shape[w.rank] = shape[d];
      w.stride[0][w.rank] = t0;
      w.stride[1][w.rank] = t1;
      ++w.rank;
    }
  }
  if (w.rank == 0) {  // a single element
    w.rank = 1;
    w.shape[0] = 1;
  }
  return w;
}

int64_t walk_size(const Walk& w) {
  int64_t n = 1;
  for (int d = 0; d < w.rank; ++d) n *= w.shape[d];
  return n;
}

// True when every index and offset of the walk fits in 32 bits, so the kernels may use 32-bit
// division (the largest offset an input reaches is sum_d (shape[d] - 1) * stride[d]).
bool fits_32(const Walk& w, int64_t total) {
  if (total >= (int64_t(1) << 32)) return false;
  for (int k = 0; k < 2; ++k) {
    int64_t last = 0;
    for (int d = 0; d < w.rank; ++d) last += (w.shape[d] - 1) * w.stride[k][d];
    if (last >= (int64_t(1) << 32)) return false;
  }
  return true;
}

// Calls launch(I{}) with I = uint32_t when `fits` (every index and offset below 2^32), else with
// I = int64_t: the kernels' index type.
template <typename F>
void with_index(bool fits, const F& launch) {
  if (fits) launch(uint32_t{});
  else launch(int64_t{});
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Whether input k of the walk can be read four outputs at a time (see the *_vec kernels): along
// the innermost dim it is either read contiguously, from 16-byte aligned groups of four (the
// pointer aligned, every outer stride a multiple of 4), or broadcast (one element per group).
bool input_vec_ok(const Walk& w, int k, const float* ptr) {
  const int r = w.rank;
  if (w.stride[k][r - 1] == 0) return true;
  if (w.stride[k][r - 1] != 1 || !aligned16(ptr)) return false;
  for (int d = 0; d < r - 1; ++d)
    if (w.stride[k][d] % 4 != 0) return false;
  return true;
}

// Blocks for a grid-stride loop over `items`: no more than fill the device (8 blocks of 256
// threads per multiprocessor); the loop takes the rest. The result never depends on the count.
unsigned grid_for(int64_t items, int threads = kThreads) {
  const int64_t cap = int64_t(multiprocessor_count()) * (2048 / threads);
  return unsigned(std::max<int64_t>(1, std::min(ceil_div(items, threads), cap)));
}

// Blocks for a loop over `units` independent block-sized units of work.
unsigned grid_blocks(int64_t units, int threads = kThreads) {
  const int64_t cap = int64_t(multiprocessor_count()) * (2048 / threads) * 4;
  return unsigned(std::max<int64_t>(1, std::min(units, cap)));
}

// ---- device-side helpers --------------------------------------------------------------------

template <BinaryOp op>
__device__ __forceinline__ float apply(float x, float y) {
  if (op == BinaryOp::Add) return x + y;
  if (op == BinaryOp::Sub) return x - y;
  return x * y;
}

// float4 loads and stores. A GPU faults on one off the 16-byte grid; the emulator's CPU would not,
// so there a misaligned one reads NaN and writes NaN, and the check fails instead of passing.
__device__ __forceinline__ float4 load4(const float* p) {
#if defined(LUNA_CUDA_EMU)
  if (reinterpret_cast<uintptr_t>(p) & 15) return make_float4(NAN, NAN, NAN, NAN);
#endif
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ void store4(float* p, float4 v) {
#if defined(LUNA_CUDA_EMU)
  if (reinterpret_cast<uintptr_t>(p) & 15) {
    p[0] = p[1] = p[2] = p[3] = NAN;
    return;
  }
#endif
  *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ float load_v(const float* p) { return *p; }
__device__ __forceinline__ float4 load_v(const float4* p) { return load4(reinterpret_cast<const float*>(p)); }
__device__ __forceinline__ void store_v(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_v(float4* p, float4 v) { store4(reinterpret_cast<float*>(p), v); }

__device__ __forceinline__ int64_t first_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return int64_t(gridDim.x) * blockDim.x; }

// The offsets at which output element i reads its (up to two) inputs: i split into the walk's
// multi-index, innermost dim first. I is uint32_t or int64_t (see fits_32). The loop runs over
// constant dims so that the walk stays in the kernel's parameter space.
template <typename I, int inputs>
__device__ __forceinline__ void walk_offsets(const Walk& w, int64_t i, I& o0, I& o1) {
  I rest = I(i);
  o0 = 0;
  o1 = 0;
EW_UNROLL
  for (int d = kMaxRank - 1; d >= 1; --d) {
    if (d < w.rank) {
      const I n = I(w.shape[d]);
      const I q = rest / n;
      const I idx = rest - q * n;
      o0 += idx * I(w.stride[0][d]);
      if (inputs == 2) o1 += idx * I(w.stride[1][d]);
      rest = q;
    }
  }
  o0 += rest * I(w.stride[0][0]);
  if (inputs == 2) o1 += rest * I(w.stride[1][0]);
}

// ---- binary ops -----------------------------------------------------------------------------
// No __restrict__ here: out may be a itself (the autograd adds gradients in place), and each
// output element is read and then written by one thread, which makes that safe.

// out is (n), contiguous; a is read along with it (A_RUN) or is one element broadcast, likewise
// b. With VEC, out (and each input read along) is 16-byte aligned and float4 loads move the
// first n/4*4 elements; the tail goes one by one.
template <BinaryOp op, bool A_RUN, bool B_RUN, bool VEC>
__global__ void binary_flat_kernel(const float* a, const float* b, float* out, int64_t n) {
  const float a0 = A_RUN ? 0.f : a[0], b0 = B_RUN ? 0.f : b[0];
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t v = first_index(); v < n4; v += grid_step()) {
      const float4 x = A_RUN ? load4(a + 4 * v) : make_float4(a0, a0, a0, a0);
      const float4 y = B_RUN ? load4(b + 4 * v) : make_float4(b0, b0, b0, b0);
      store4(out + 4 * v, make_float4(apply<op>(x.x, y.x), apply<op>(x.y, y.y), apply<op>(x.z, y.z), apply<op>(x.w, y.w)));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + first_index(); i < n; i += grid_step())
    out[i] = apply<op>(A_RUN ? a[i] : a0, B_RUN ? b[i] : b0);
}

// out is (w.shape), contiguous; a and b are read through w.stride[0] and w.stride[1] (0 where
// broadcast). One element per step: consecutive threads write consecutive outputs, so the writes
// and every input read along the innermost dim are coalesced.
template <BinaryOp op, typename I>
__global__ void binary_strided_kernel(const float* a, const float* b, float* out, Walk w, int64_t total) {
  for (int64_t i = first_index(); i < total; i += grid_step()) {
    I oa, ob;
    walk_offsets<I, 2>(w, i, oa, ob);
    out[i] = apply<op>(a[oa], b[ob]);
  }
}

// The same with four outputs of one innermost row per step (shape[r-1] % 4 == 0, each input
// accepted by input_vec_ok, out 16-byte aligned): float4 stores, and float4 loads for each input
// that runs along the row (a broadcast one gives one element to all four). The bias add
// [R, C] + [C] and the per-row scale [R, C] * [R, 1] take this path.
template <BinaryOp op, typename I>
__global__ void binary_strided_vec_kernel(const float* a, const float* b, float* out, Walk w, int64_t groups) {
  const bool a_run = w.stride[0][w.rank - 1] != 0, b_run = w.stride[1][w.rank - 1] != 0;
  for (int64_t g = first_index(); g < groups; g += grid_step()) {
    I oa, ob;
    walk_offsets<I, 2>(w, g * 4, oa, ob);
    float4 x, y;
    if (a_run) x = load4(a + oa);
    else x.x = x.y = x.z = x.w = a[oa];
    if (b_run) y = load4(b + ob);
    else y.x = y.y = y.z = y.w = b[ob];
    store4(out + 4 * g, make_float4(apply<op>(x.x, y.x), apply<op>(x.y, y.y), apply<op>(x.z, y.z), apply<op>(x.w, y.w)));
  }
}

template <BinaryOp op, bool A_RUN, bool B_RUN>
void launch_flat(const BinaryParams<float>& p, int64_t n) {
  const bool vec = aligned16(p.out) && (!A_RUN || aligned16(p.a)) && (!B_RUN || aligned16(p.b));
  if (vec)
    LUNA_LAUNCH(grid_for(ceil_div(n, 4)), kThreads, 0, stream(), binary_flat_kernel<op, A_RUN, B_RUN, true>)(p.a, p.b, p.out, n);
  else
    LUNA_LAUNCH(grid_for(n), kThreads, 0, stream(), binary_flat_kernel<op, A_RUN, B_RUN, false>)(p.a, p.b, p.out, n);
  check_launch("binary_flat_kernel");
}

template <BinaryOp op>
void binary_typed(const BinaryParams<float>& p) {
  const Walk w = simplify(p.rank, p.shape, p.a_stride, p.b_stride);
  const int64_t total = walk_size(w);
  if (w.rank == 1) {
    const int64_t sa = w.stride[0][0], sb = w.stride[1][0];
    if (sa == 1 && sb == 1) return launch_flat<op, true, true>(p, total);
    if (sa == 1 && sb == 0) return launch_flat<op, true, false>(p, total);
    if (sa == 0 && sb == 1) return launch_flat<op, false, true>(p, total);
  }
  const bool vec = w.shape[w.rank - 1] % 4 == 0 && aligned16(p.out) && input_vec_ok(w, 0, p.a) && input_vec_ok(w, 1, p.b);
  with_index(fits_32(w, total), [&](auto index) {
    using I = decltype(index);
    if (vec)
      LUNA_LAUNCH(grid_for(total / 4), kThreads, 0, stream(), binary_strided_vec_kernel<op, I>)(p.a, p.b, p.out, w, total / 4);
    else
      LUNA_LAUNCH(grid_for(total), kThreads, 0, stream(), binary_strided_kernel<op, I>)(p.a, p.b, p.out, w, total);
  });
  check_launch(vec ? "binary_strided_vec_kernel" : "binary_strided_kernel");
}

// ---- scale-shift and flat copies ------------------------------------------------------------

// x and out are (n). Two roundings as on the CPU: the explicit _rn intrinsics keep the compiler
// from contracting a * x + b into one fused multiply-add.
template <bool VEC>
__global__ void scale_shift_kernel(const float* x, float* out, int64_t n, float a, float b) {
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t v = first_index(); v < n4; v += grid_step()) {
      const float4 t = load4(x + 4 * v);
      store4(out + 4 * v, make_float4(__fadd_rn(__fmul_rn(a, t.x), b), __fadd_rn(__fmul_rn(a, t.y), b),
                                      __fadd_rn(__fmul_rn(a, t.z), b), __fadd_rn(__fmul_rn(a, t.w), b)));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + first_index(); i < n; i += grid_step()) out[i] = __fadd_rn(__fmul_rn(a, x[i]), b);
}

// src and dst are (n); float4 moves when both are 16-byte aligned.
template <bool VEC>
__global__ void copy_flat_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t n) {
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t v = first_index(); v < n4; v += grid_step())
      store4(dst + 4 * v, load4(src + 4 * v));
    done = n4 * 4;
  }
  for (int64_t i = done + first_index(); i < n; i += grid_step()) dst[i] = src[i];
}

void copy_flat(const float* src, float* dst, int64_t n) {
  if (aligned16(src) && aligned16(dst))
    LUNA_LAUNCH(grid_for(ceil_div(n, 4)), kThreads, 0, stream(), copy_flat_kernel<true>)(src, dst, n);
  else
    LUNA_LAUNCH(grid_for(n), kThreads, 0, stream(), copy_flat_kernel<false>)(src, dst, n);
  check_launch("copy_flat_kernel");
}

// ---- strided copies -------------------------------------------------------------------------

// out is (w.shape), contiguous; x is read through w.stride[0] (permuted and/or zero strides).
template <typename I>
__global__ void strided_copy_kernel(const float* __restrict__ x, float* __restrict__ out, Walk w, int64_t total) {
  for (int64_t i = first_index(); i < total; i += grid_step()) {
    I ox, unused;
    walk_offsets<I, 1>(w, i, ox, unused);
    out[i] = x[ox];
  }
}

// The same with four outputs of one innermost row per step (conditions as for
// binary_strided_vec_kernel): the head split and merge, whose rows are runs of dh, and a
// broadcast of a row over rows.
template <typename I>
__global__ void strided_copy_vec_kernel(const float* __restrict__ x, float* __restrict__ out, Walk w, int64_t groups) {
  const bool run = w.stride[0][w.rank - 1] != 0;
  for (int64_t g = first_index(); g < groups; g += grid_step()) {
    I ox, unused;
    walk_offsets<I, 1>(w, g * 4, ox, unused);
    float4 v;
    if (run) v = load4(x + ox);
    else v.x = v.y = v.z = v.w = x[ox];
    store4(out + 4 * g, v);
  }
}

// The transposing copy: the output's innermost dim (L) steps through x with stride s != 1, while
// x's contiguous dim is output dim pd (P). Every other output dim indexes a "plane".
struct Transpose {
  int plane_rank = 0;                 // the plane dims, outermost first
  int64_t plane_shape[kMaxRank] = {};
  int64_t plane_in[kMaxRank] = {};    // their strides in x
  int64_t plane_out[kMaxRank] = {};   // and in out
  int64_t P = 0, L = 0;
  int64_t s = 0;                      // x stride of L (the x stride of P is 1)
  int64_t op = 0;                     // out stride of P (the out stride of L is 1)
  int64_t p_tiles = 0, l_tiles = 0, units = 0;
};

// One 32 x 32 tile of one plane per step: (P-tile, L-tile) read along P (x's rows, coalesced)
// into shared memory, then written along L (out's rows, coalesced). The tile has a padding
// column so that reading it down a column hits 32 different banks. Threads are (32, 8).
__global__ void transpose_kernel(const float* __restrict__ x, float* __restrict__ out, Transpose t) {
  __shared__ float tile[kTile][kTile + 1];  // [l][p]
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t u = blockIdx.x; u < t.units; u += gridDim.x) {
    const int64_t l0 = (u % t.l_tiles) * kTile;
    int64_t rest = u / t.l_tiles;
    const int64_t p0 = (rest % t.p_tiles) * kTile;
    rest /= t.p_tiles;
    int64_t in_off = 0, out_off = 0;
    for (int d = t.plane_rank - 1; d >= 0; --d) {
      const int64_t i = rest % t.plane_shape[d];
      rest /= t.plane_shape[d];
      in_off += i * t.plane_in[d];
      out_off += i * t.plane_out[d];
    }
    const int64_t p = p0 + tx;
    for (int k = ty; k < kTile; k += kTileRows) {
      const int64_t l = l0 + k;
      if (l < t.L && p < t.P) tile[k][tx] = x[in_off + l * t.s + p];
    }
    __syncthreads();
    const int64_t l = l0 + tx;
    for (int k = ty; k < kTile; k += kTileRows) {
      const int64_t pp = p0 + k;
      if (pp < t.P && l < t.L) out[out_off + pp * t.op + l] = tile[tx][k];
    }
    __syncthreads();  // the tile is refilled by the next step
  }
}

void launch_transpose(const float* x, float* out, const Walk& w, int pd) {
  const int r = w.rank;
  int64_t out_stride[kMaxRank];
  out_stride[r - 1] = 1;
  for (int d = r - 2; d >= 0; --d) out_stride[d] = out_stride[d + 1] * w.shape[d + 1];
  Transpose t;
  for (int d = 0; d < r - 1; ++d) {
    if (d == pd) continue;
    t.plane_shape[t.plane_rank] = w.shape[d];
    t.plane_in[t.plane_rank] = w.stride[0][d];
    t.plane_out[t.plane_rank] = out_stride[d];
    ++t.plane_rank;
  }
  t.P = w.shape[pd];
  t.L = w.shape[r - 1];
  t.s = w.stride[0][r - 1];
  t.op = out_stride[pd];
  t.p_tiles = ceil_div(t.P, kTile);
  t.l_tiles = ceil_div(t.L, kTile);
  t.units = walk_size(w) / (t.P * t.L) * t.p_tiles * t.l_tiles;
  LUNA_LAUNCH(grid_blocks(t.units), dim3(kTile, kTileRows), 0, stream(), transpose_kernel)(x, out, t);
  check_launch("transpose_kernel");
}

// ---- block copies ---------------------------------------------------------------------------

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols (offsets already
// applied; with V = 4 every size, stride and pointer is counted in float4s). One element per
// step over the flat (rows, cols) index, so short rows keep every thread busy too.
template <typename V, typename I>
__global__ void copy_blocks_kernel(const V* __restrict__ src, V* __restrict__ dst, int64_t rows, int64_t cols,
                                   int64_t src_stride, int64_t dst_stride) {
  const int64_t total = rows * cols;
  for (int64_t i = first_index(); i < total; i += grid_step()) {
    const I r = I(i) / I(cols), c = I(i) - r * I(cols);
    store_v(dst + int64_t(r) * dst_stride + c, load_v(src + int64_t(r) * src_stride + c));
  }
}

template <typename V>
void launch_blocks(const float* src, float* dst, int64_t rows, int64_t cols, int64_t ss, int64_t ds, int per) {
  const V* s = reinterpret_cast<const V*>(src);
  V* d = reinterpret_cast<V*>(dst);
  cols /= per, ss /= per, ds /= per;
  const int64_t total = rows * cols;
  with_index(total < (int64_t(1) << 32), [&](auto index) {
    LUNA_LAUNCH(grid_for(total), kThreads, 0, stream(), copy_blocks_kernel<V, decltype(index)>)(s, d, rows, cols, ss, ds);
  });
  check_launch("copy_blocks_kernel");
}

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

void binary_op(const BinaryParams<float>& p) {
  switch (p.op) {
    case BinaryOp::Add: binary_typed<BinaryOp::Add>(p); break;
    case BinaryOp::Sub: binary_typed<BinaryOp::Sub>(p); break;
    case BinaryOp::Mul: binary_typed<BinaryOp::Mul>(p); break;
  }
}

void scale_shift(const float* x, float* out, int64_t n, float a, float b) {
  if (n <= 0) return;
  if (aligned16(x) && aligned16(out))
    LUNA_LAUNCH(grid_for(ceil_div(n, 4)), kThreads, 0, stream(), scale_shift_kernel<true>)(x, out, n, a, b);
  else
    LUNA_LAUNCH(grid_for(n), kThreads, 0, stream(), scale_shift_kernel<false>)(x, out, n, a, b);
  check_launch("scale_shift_kernel");
}

void strided_copy(const StridedCopyParams<float>& p) {
  const Walk w = simplify(p.rank, p.shape, p.stride, nullptr);
  const int r = w.rank;
  const int64_t total = walk_size(w), s = w.stride[0][r - 1];
  if (r == 1 && s == 1) return copy_flat(p.x, p.out, total);
  // As on the CPU: when the output's rows do not run along x's rows but some other output dim
  // does, a tiled transpose reads and writes whole lines; tiny planes gain nothing from it.
  int pd = -1;
  if (s != 1) {
    for (int d = 0; d < r - 1; ++d) {
      if (w.stride[0][d] == 1) pd = d;
    }
  }
  if (pd >= 0 && w.shape[pd] >= 4 && w.shape[r - 1] >= 4) return launch_transpose(p.x, p.out, w, pd);
  const bool vec = w.shape[r - 1] % 4 == 0 && aligned16(p.out) && input_vec_ok(w, 0, p.x);
  with_index(fits_32(w, total), [&](auto index) {
    using I = decltype(index);
    if (vec) LUNA_LAUNCH(grid_for(total / 4), kThreads, 0, stream(), strided_copy_vec_kernel<I>)(p.x, p.out, w, total / 4);
    else LUNA_LAUNCH(grid_for(total), kThreads, 0, stream(), strided_copy_kernel<I>)(p.x, p.out, w, total);
  });
  check_launch(vec ? "strided_copy_vec_kernel" : "strided_copy_kernel");
}

void copy_blocks(const BlockCopyParams<float>& p) {
  if (p.rows <= 0 || p.cols <= 0) return;
  const float* src = p.src + p.src_offset;
  float* dst = p.dst + p.dst_offset;
  // float4 moves when every row starts on a 16-byte boundary on both sides.
  const bool vec = p.cols % 4 == 0 && (p.rows == 1 || (p.src_stride % 4 == 0 && p.dst_stride % 4 == 0)) &&
                   aligned16(src) && aligned16(dst);
  if (vec) launch_blocks<float4>(src, dst, p.rows, p.cols, p.src_stride, p.dst_stride, 4);
  else launch_blocks<float>(src, dst, p.rows, p.cols, p.src_stride, p.dst_stride, 1);
}

}  // namespace luna::cuda

// The sums (reduce_to, sum_axis) live in their own file, which uses the helpers above.
#include "elementwise_sums.cuh"
