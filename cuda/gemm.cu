// The CUDA GEMM family declared in gemm_cuda.h: a tiled SGEMM of our own (the toolkit here has no
// cuBLAS), the split-K reduction that goes with it, the bias add and the column sums.
//
// Shape of the GEMM. One block of 256 threads owns a BM x BN tile of one C[b] (and, with split-K,
// one piece of the inner dimension). It walks K in steps of BK: each step the block copies a
// BM x BK slice of op(A) and a BK x BN slice of op(B) into shared memory, both stored k-major
// (As[k][m], Bs[k][n]) so that a thread's operands for one k are float4 reads; then every thread
// adds the BK outer products into its register tile (TM x TN accumulators, TM = BM / 16 rows and
// TN = BN / 16 columns, taken in groups of 4 spaced 64 apart so the float4 reads of a warp hit
// few distinct addresses and the stores of a row are coalesced). Two shared buffers: while the
// block computes on one, the next slice is already loaded into registers and is stored into the
// other, so one barrier per step suffices.
//
// Two block tiles, chosen from the shape alone (never from the device, so a product gives the same
// bits on every GPU): 128 x 128 x 8 (8 x 8 per thread: 16 shared reads per 64 FMAs) for products
// with many tiles, 64 x 64 x 16 (4 x 4 per thread) where the large tile would leave most of the
// GPU idle. Few output tiles over a long K (the weight gradient dY^T X) cut K into pieces instead:
// each piece writes its raw sums to a workspace and a second kernel adds the pieces in order.
//
// Rounding (gemm_cuda.h spells it out): each element of C is one chain of fmaf from zero over its
// piece of K, in k order; the pieces are added in order; then alpha * sum, + beta * C (fused),
// + bias, with nothing else fused, so the checks can reproduce every bit.
#include "gemm_cuda.h"

#include <algorithm>
#include <cstdint>

#include "common.cuh"

namespace luna::cuda {

namespace {

constexpr int kThreads = 256;  // every kernel here: 256 threads per block

// Everything one launch of the tiled kernel reads; passed by value.
struct TileArgs {
  int64_t M, N, K;
  float alpha, beta;
  const float* a;
  int64_t lda, stride_a;
  const float* b;
  int64_t ldb, stride_b;
  float* c;
  int64_t ldc, stride_c;
  const float* bias;        // [N] or nullptr
  bool vec_a, vec_b, vec_c;  // rows 16-byte aligned: float4 loads / stores where a quad is whole
  int64_t tiles_m, tiles_n;
  int splits;               // pieces of K; > 1 writes raw sums to ws instead of C
  int64_t k_per_split;      // a multiple of BK
  float* ws;                // [batch][splits][M][N] when splits > 1
  int64_t batch_base;       // first batch item of this launch (grid.z is at most 65535)
};

// Four consecutive elements of A or B at p, zero where outside the matrix: one float4 load when
// the quad is whole and aligned, else element by element. A quad runs along k (k .. k+3 at one
// row or column x) or across (x .. x+3 at one k); K and X are the matrix's extents.
template <bool kAlongK>
__device__ __forceinline__ float4 load_quad(const float* p, int64_t k, int64_t x, int64_t K, int64_t X, bool vec) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  const int64_t fixed = kAlongK ? x : k, fixed_end = kAlongK ? X : K;
  const int64_t first = kAlongK ? k : x, end = kAlongK ? K : X;
  if (fixed < fixed_end) {
    if (vec && first + 3 < end) {
      v = *reinterpret_cast<const float4*>(p);
    } else {
      if (first < end) v.x = p[0];
      if (first + 1 < end) v.y = p[1];
      if (first + 2 < end) v.z = p[2];
      if (first + 3 < end) v.w = p[3];
    }
  }
  return v;
}

// A quad that runs along k is stored down a column of the k-major tile; one that runs along m
// (or n) is stored as it is. kPad keeps the transposed stores of a warp in distinct banks and
// the rows 16-byte aligned.
constexpr int kPad = 4;

template <int BX>
__device__ __forceinline__ void store_quad(float (*tile)[BX + kPad], float4 v, int k, int x, bool along_k) {
  if (along_k) {
    tile[k][x] = v.x;
    tile[k + 1][x] = v.y;
    tile[k + 2][x] = v.z;
    tile[k + 3][x] = v.w;
  } else {
    *reinterpret_cast<float4*>(&tile[k][x]) = v;
  }
}

// One element's epilogue: alpha * sum, then + beta * old (fused; skipped when beta == 0, so old is
// never read), then + bias. Spelled with the _rn intrinsics, which the compiler never contracts,
// so that the rounding is exactly this on every build (the checks reproduce it bit for bit).
__device__ __forceinline__ float finish(float sum, float alpha, float beta, const float* old, const float* bias) {
  float x = __fmul_rn(alpha, sum);
  if (beta != 0.f) x = __fmaf_rn(beta, *old, x);
  if (bias) x = __fadd_rn(x, *bias);
  return x;
}

// C[b] tile (blockIdx.x -> (tm, tn), blockIdx.z -> batch item and piece of K) of
//   C = alpha * op(A) op(B) + beta * C + bias,  op(A) is M x K, op(B) is K x N (TileArgs).
// A is M x K (row stride lda), or K x M when kTransA; B is K x N, or N x K when kTransB.
template <int BM, int BN, int BK, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads, 2) gemm_tile_kernel(TileArgs t) {
  static_assert(BM * BK == 4 * kThreads && BN * BK == 4 * kThreads, "one float4 of A and of B per thread per step");
  constexpr int TM = BM / 16, TN = BN / 16;
  __align__(16) __shared__ float As[2][BK][BM + kPad];
  __align__(16) __shared__ float Bs[2][BK][BN + kPad];

  // Tiles in groups of 8 tile-rows, column-major within a group: blocks running together share
  // A's row panels and B's column panels in L2.
  const int64_t tile = blockIdx.x, group_tiles = 8 * t.tiles_n, first_m = tile / group_tiles * 8;
  const int64_t group_m = min(t.tiles_m - first_m, int64_t(8)), in_group = tile % group_tiles;
  const int64_t m0 = (first_m + in_group % group_m) * BM, n0 = in_group / group_m * BN;
  const int64_t item = t.batch_base + blockIdx.z / t.splits, piece = blockIdx.z % t.splits;
  const int64_t k_begin = piece * t.k_per_split, k_end = min(t.K, k_begin + t.k_per_split);
  const float* A = t.a + item * t.stride_a;
  const float* B = t.b + item * t.stride_b;

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  // This thread's quad of each slice. Along k (A as stored M x K, B as stored N x K): row
  // tid / (BK/4) of the tile, k offset 4 * (tid % (BK/4)). Along m or n: k row tid / (BX/4),
  // offset 4 * (tid % (BX/4)).
  const int a_k = kTransA ? tid / (BM / 4) : 4 * (tid % (BK / 4));
  const int a_x = kTransA ? 4 * (tid % (BM / 4)) : tid / (BK / 4);
  const int b_k = kTransB ? 4 * (tid % (BK / 4)) : tid / (BN / 4);
  const int b_x = kTransB ? tid / (BK / 4) : 4 * (tid % (BN / 4));
  // Cursors: the quad's k and the address of its first element, advanced by BK every step.
  int64_t ka = k_begin + a_k, kb = k_begin + b_k;
  const float* pa = kTransA ? A + ka * t.lda + m0 + a_x : A + (m0 + a_x) * t.lda + ka;
  const float* pb = kTransB ? B + (n0 + b_x) * t.ldb + kb : B + kb * t.ldb + n0 + b_x;
  const int64_t step_a = kTransA ? BK * t.lda : BK, step_b = kTransB ? BK : BK * t.ldb;
  auto load_a = [&] { return load_quad<!kTransA>(pa, ka, m0 + a_x, t.K, t.M, t.vec_a); };
  auto load_b = [&] { return load_quad<kTransB>(pb, kb, n0 + b_x, t.K, t.N, t.vec_b); };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  const int64_t steps = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
  if (steps > 0) {
    store_quad<BM>(As[0], load_a(), a_k, a_x, !kTransA);
    store_quad<BN>(Bs[0], load_b(), b_k, b_x, kTransB);
  }
  __syncthreads();
  for (int64_t s = 0; s < steps; ++s) {
    const int buf = int(s & 1);
    // The next slice travels from global memory while this one is multiplied.
    float4 next_a = make_float4(0.f, 0.f, 0.f, 0.f), next_b = next_a;
    const bool more = s + 1 < steps;
    if (more) {
      ka += BK, kb += BK, pa += step_a, pb += step_b;
      next_a = load_a();
      next_b = load_b();
    }
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float av[TM], bv[TN];
#pragma unroll
      for (int g = 0; g < TM / 4; ++g) {
        const float4 v = *reinterpret_cast<const float4*>(&As[buf][k][g * 64 + ty * 4]);
        av[4 * g] = v.x, av[4 * g + 1] = v.y, av[4 * g + 2] = v.z, av[4 * g + 3] = v.w;
      }
#pragma unroll
      for (int g = 0; g < TN / 4; ++g) {
        const float4 v = *reinterpret_cast<const float4*>(&Bs[buf][k][g * 64 + tx * 4]);
        bv[4 * g] = v.x, bv[4 * g + 1] = v.y, bv[4 * g + 2] = v.z, bv[4 * g + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    // The other buffer was last read in step s - 1, before that step's barrier: free to fill.
    if (more) {
      store_quad<BM>(As[buf ^ 1], next_a, a_k, a_x, !kTransA);
      store_quad<BN>(Bs[buf ^ 1], next_b, b_k, b_x, kTransB);
    }
    __syncthreads();
  }

  // Epilogue. Row i of the register tile is tile row (i / 4) * 64 + 4 * ty + i % 4; column group
  // g starts at tile column g * 64 + 4 * tx.
  if (t.splits > 1) {
    float* W = t.ws + (item * t.splits + piece) * t.M * t.N;
    const bool vec = t.N % 4 == 0;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t r = m0 + (i / 4) * 64 + 4 * ty + i % 4;
      if (r >= t.M) continue;
#pragma unroll
      for (int g = 0; g < TN / 4; ++g) {
        const int64_t c = n0 + g * 64 + 4 * tx;
        float* w = W + r * t.N + c;
        if (vec && c + 3 < t.N) {
          *reinterpret_cast<float4*>(w) = make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2], acc[i][4 * g + 3]);
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (c + j < t.N) w[j] = acc[i][4 * g + j];
        }
      }
    }
    return;
  }
  float* C = t.c + item * t.stride_c;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t r = m0 + (i / 4) * 64 + 4 * ty + i % 4;
    if (r >= t.M) continue;
#pragma unroll
    for (int g = 0; g < TN / 4; ++g) {
      const int64_t c = n0 + g * 64 + 4 * tx;
      float* out = C + r * t.ldc + c;
      if (t.vec_c && c + 3 < t.N) {
        // beta == 0 never reads C: NaN or garbage there must not reach the result.
        float4 old = make_float4(0.f, 0.f, 0.f, 0.f);
        if (t.beta != 0.f) old = *reinterpret_cast<const float4*>(out);
        const float* bias = t.bias ? t.bias + c : nullptr;
        float4 x;
        x.x = finish(acc[i][4 * g], t.alpha, t.beta, &old.x, bias);
        x.y = finish(acc[i][4 * g + 1], t.alpha, t.beta, &old.y, bias ? bias + 1 : nullptr);
        x.z = finish(acc[i][4 * g + 2], t.alpha, t.beta, &old.z, bias ? bias + 2 : nullptr);
        x.w = finish(acc[i][4 * g + 3], t.alpha, t.beta, &old.w, bias ? bias + 3 : nullptr);
        *reinterpret_cast<float4*>(out) = x;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (c + j < t.N) out[j] = finish(acc[i][4 * g + j], t.alpha, t.beta, out + j, t.bias ? t.bias + c + j : nullptr);
      }
    }
  }
}

// C[b] (batch x M x N, row stride ldc) = alpha * sum_p ws[b][p] + beta * C[b] + bias, the pieces p
// of a split K added in order. One thread per element of C, grid-stride.
__global__ void __launch_bounds__(kThreads) split_k_reduce_kernel(TileArgs t, int64_t batch) {
  const int64_t mn = t.M * t.N, total = batch * mn;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t item = e / mn, rest = e % mn, r = rest / t.N, c = rest % t.N;
    const float* w = t.ws + item * t.splits * mn + rest;
    float sum = 0.f;
    for (int p = 0; p < t.splits; ++p) sum += w[p * mn];
    float* out = t.c + item * t.stride_c + r * t.ldc + c;
    *out = finish(sum, t.alpha, t.beta, out, t.bias ? t.bias + c : nullptr);
  }
}

// A 1-D grid of 256-thread blocks covering n items (grid-stride loops cover the rest).
unsigned grid_for(int64_t n) { return unsigned(std::clamp<int64_t>(ceil_div(n, kThreads), 1, int64_t(1) << 20)); }

template <int BM, int BN, int BK, bool kTransA, bool kTransB>
void launch_tiles(const TileArgs& t, unsigned z) {
  const dim3 grid(unsigned(t.tiles_m * t.tiles_n), 1, z);
  LUNA_LAUNCH(grid, dim3(kThreads), 0, stream(), gemm_tile_kernel<BM, BN, BK, kTransA, kTransB>)(t);
  check_launch("gemm_tile_kernel");
}

template <int BM, int BN, int BK>
void run_tiles(const GemmParams<float>& p, TileArgs t, const GemmPlan& plan) {
  t.tiles_m = ceil_div(p.M, BM);
  t.tiles_n = ceil_div(p.N, BN);
  t.splits = plan.splits;
  t.k_per_split = plan.k_per_split;
  if (t.splits > 1) t.ws = static_cast<float*>(device_alloc(size_t(p.batch * t.splits * p.M * p.N) * sizeof(float)));
  // grid.z holds (batch item, piece) pairs, at most 65535 per launch.
  const int64_t per_launch = 65535 / t.splits;
  for (int64_t first = 0; first < p.batch; first += per_launch) {
    t.batch_base = first;
    const unsigned z = unsigned(std::min(per_launch, p.batch - first) * t.splits);
    if (p.trans_a && p.trans_b) launch_tiles<BM, BN, BK, true, true>(t, z);
    else if (p.trans_a) launch_tiles<BM, BN, BK, true, false>(t, z);
    else if (p.trans_b) launch_tiles<BM, BN, BK, false, true>(t, z);
    else launch_tiles<BM, BN, BK, false, false>(t, z);
  }
  if (t.splits > 1) {
    LUNA_LAUNCH(dim3(grid_for(p.batch * p.M * p.N)), dim3(kThreads), 0, stream(), split_k_reduce_kernel)(t, p.batch);
    check_launch("split_k_reduce_kernel");
    device_free(t.ws);  // safe: one stream, the reduction runs before any later user of the block
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Whether rows of a matrix (and of every batch item) start on 16 bytes.
bool rows_aligned(const float* m, int64_t ld, int64_t stride, int64_t batch) {
  return aligned16(m) && ld % 4 == 0 && (batch == 1 || stride % 4 == 0);
}

}  // namespace

GemmPlan plan_gemm(const GemmParams<float>& p, GemmTile tile, int splits) {
  if (tile == GemmTile::Auto) {
    // From the shape alone. Enough 128 x 128 tiles to fill an H100-class GPU: take them. Few tiles
    // but a long K: the large tile over pieces of K (about 256 blocks in all, each piece at least
    // 256 deep). Otherwise the small tile, four times as many blocks.
    const int64_t large_tiles = std::max<int64_t>(p.batch * ceil_div(p.M, 128) * ceil_div(p.N, 128), 1);
    if (large_tiles >= 128) {
      tile = GemmTile::Large, splits = 1;
    } else if (p.K >= 1024) {
      tile = GemmTile::Large;
      if (splits == 0) splits = int(std::min<int64_t>(ceil_div(256, large_tiles), p.K / 256));
    } else {
      tile = GemmTile::Small, splits = 1;
    }
  }
  if (tile == GemmTile::Small) splits = 1;
  // Whole BK steps per piece, no empty piece, at most kMaxSplits pieces.
  const int64_t bk = tile == GemmTile::Small ? 16 : 8, k_steps = ceil_div(p.K, bk);
  const int64_t wanted = std::clamp<int64_t>(splits, 1, std::min<int64_t>(std::max<int64_t>(k_steps, 1), kMaxSplits));
  const int64_t steps_per_split = std::max<int64_t>(ceil_div(k_steps, wanted), 1);
  GemmPlan plan;
  plan.tile = tile;
  plan.splits = int(std::max<int64_t>(ceil_div(k_steps, steps_per_split), 1));
  plan.k_per_split = steps_per_split * bk;
  return plan;
}

void gemm_forced(const GemmParams<float>& p, GemmTile tile, int splits) {
  if (p.batch <= 0 || p.M <= 0 || p.N <= 0) return;
  TileArgs t{};
  t.M = p.M, t.N = p.N, t.K = p.K;
  t.alpha = p.alpha, t.beta = p.beta;
  t.a = p.a, t.lda = p.lda, t.stride_a = p.batch_stride_a;
  t.b = p.b, t.ldb = p.ldb, t.stride_b = p.batch_stride_b;
  t.c = p.c, t.ldc = p.ldc, t.stride_c = p.batch_stride_c;
  t.bias = p.bias;
  t.vec_a = rows_aligned(p.a, p.lda, p.batch_stride_a, p.batch);
  t.vec_b = rows_aligned(p.b, p.ldb, p.batch_stride_b, p.batch);
  t.vec_c = rows_aligned(p.c, p.ldc, p.batch_stride_c, p.batch);
  const GemmPlan plan = plan_gemm(p, tile, splits);
  if (plan.tile == GemmTile::Small) run_tiles<64, 64, 16>(p, t, plan);
  else run_tiles<128, 128, 8>(p, t, plan);
}

void gemm(const GemmParams<float>& p) { gemm_forced(p, GemmTile::Auto, 0); }

void gemm_device_batched(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                         const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                         float beta, float* C, int64_t ldc, int64_t stride_c) {
  GemmParams<float> p;
  p.trans_a = trans_a, p.trans_b = trans_b, p.batch = batch, p.M = M, p.N = N, p.K = K;
  p.alpha = alpha, p.beta = beta;
  p.a = A, p.lda = lda, p.batch_stride_a = stride_a;
  p.b = B, p.ldb = ldb, p.batch_stride_b = stride_b;
  p.c = C, p.ldc = ldc, p.batch_stride_c = stride_c;
  gemm(p);
}

void gemm_device(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_device_batched(trans_a, trans_b, 1, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0);
}

// ---- bias add and column sums ----------------------------------------------------------------

namespace {

// y (rows x cols, row stride ldy) += bias (cols) on every row; one thread per element, grid-stride.
__global__ void __launch_bounds__(kThreads) bias_add_kernel(int64_t rows, int64_t cols, const float* bias, float* y,
                                                            int64_t ldy) {
  const int64_t total = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols, c = e % cols;
    y[r * ldy + c] += bias[c];
  }
}

// x is (rows, cols) with row stride ldx; block (32, 8); blockIdx.x = row block, blockIdx.y walks
// column blocks of 32. Writes the sum of row block rb's kColumnSumRows rows, column c, to
// dst[rb * cols + c] (or adds it to dst when accumulate: the one-block case writes out directly).
// Thread (tx, ty) sums rows ty, ty + 8, ... of the block for column tx; the 8 partial sums are then
// added in ty order. Fixed shape, fixed order: the same bits every run.
__global__ void __launch_bounds__(kThreads) column_sum_partial_kernel(int64_t rows, int64_t cols, const float* x,
                                                                      int64_t ldx, float* dst, bool accumulate) {
  __shared__ float part[8][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t rb = blockIdx.x, r_end = min(rows, (rb + 1) * kColumnSumRows);
  const int64_t col_blocks = ceil_div(cols, 32);
  for (int64_t cb = blockIdx.y; cb < col_blocks; cb += gridDim.y) {
    const int64_t c = cb * 32 + tx;
    float s = 0.f;
    if (c < cols)
      for (int64_t r = rb * kColumnSumRows + ty; r < r_end; r += 8) s += x[r * ldx + c];
    part[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < cols) {
      float total = part[0][tx];
      for (int k = 1; k < 8; ++k) total += part[k][tx];
      float* d = dst + rb * cols + c;
      *d = accumulate ? *d + total : total;
    }
    __syncthreads();  // part is reused by the next column block
  }
}

// out[c] = (accumulate ? out[c] : 0) + sum_rb partial[rb][c], row blocks in order; one thread per column.
__global__ void __launch_bounds__(kThreads) column_sum_finish_kernel(int64_t blocks, int64_t cols,
                                                                     const float* partial, float* out, bool accumulate) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x) {
    float total = partial[c];
    for (int64_t rb = 1; rb < blocks; ++rb) total += partial[rb * cols + c];
    out[c] = accumulate ? out[c] + total : total;
  }
}

}  // namespace

void bias_add(int64_t rows, int64_t cols, const float* bias, float* y, int64_t ldy) {
  if (rows <= 0 || cols <= 0) return;
  LUNA_LAUNCH(dim3(grid_for(rows * cols)), dim3(kThreads), 0, stream(), bias_add_kernel)(rows, cols, bias, y, ldy);
  check_launch("bias_add_kernel");
}

void column_sum(int64_t rows, int64_t cols, const float* x, int64_t ldx, float* out, bool accumulate) {
  if (cols <= 0) return;
  // rows == 0 still runs one row block: it writes the empty sums (0, or out unchanged).
  const int64_t blocks = std::max<int64_t>(ceil_div(rows, kColumnSumRows), 1);
  const dim3 grid(unsigned(blocks), unsigned(std::min<int64_t>(ceil_div(cols, 32), 65535)));
  if (blocks == 1) {
    LUNA_LAUNCH(grid, dim3(32, 8), 0, stream(), column_sum_partial_kernel)(rows, cols, x, ldx, out, accumulate);
    check_launch("column_sum_partial_kernel");
    return;
  }
  float* partial = static_cast<float*>(device_alloc(size_t(blocks * cols) * sizeof(float)));
  LUNA_LAUNCH(grid, dim3(32, 8), 0, stream(), column_sum_partial_kernel)(rows, cols, x, ldx, partial, false);
  check_launch("column_sum_partial_kernel");
  LUNA_LAUNCH(dim3(grid_for(cols)), dim3(kThreads), 0, stream(), column_sum_finish_kernel)(blocks, cols, partial, out,
                                                                                          accumulate);
  check_launch("column_sum_finish_kernel");
  device_free(partial);
}

}  // namespace luna::cuda
