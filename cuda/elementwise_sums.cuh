// The summing kernels of cuda/elementwise.cu (reduce_to, sum_axis), in a file of their own to keep
// each file short. Included once, at the end of elementwise.cu, whose helpers (grid_blocks,
// copy_flat, kTile, ...) it uses; not a header for anyone else.
//
// Order of the additions, fixed by the problem size alone (every run and every device gives the
// same bits), all in float32:
//   - a row of n <= 1024 elements (inner == 1): lane j of one warp adds elements j, j + 32, ... in
//     order, then the 32 lanes meet in a shuffle tree;
//   - a longer row: chunks of 8192 elements; in a chunk, thread t of 256 adds t, t + 256, ... in
//     order, the threads meet in block_sum's fixed tree, and the chunk sums are then added as a
//     row of their own;
//   - columns (inner > 1): chunks of 512 rows; in a chunk, 8 threads per column add every 8th
//     row in order, their 8 sums are added in row order, and the chunk sums are then added as
//     columns of their own.
// Every value thus goes through at most a few dozen sequential additions plus short trees: as
// accurate as the CPU's eight-lane sums or better.
#pragma once

#include <memory>

namespace luna::cuda {

namespace {

// Row sums: elements one block adds for one output (256 threads x 32 elements each); a longer
// row is cut into chunks of this many, whose partial sums are then added by the same kernel.
constexpr int64_t kRowChunk = 8192;
// Rows up to this long are summed by one warp each instead of a whole block.
constexpr int64_t kWarpRow = 1024;
// Column sums: rows one block adds for its 32 columns (8 rows of threads x 64 rows each).
constexpr int64_t kColChunk = 512;

// Short rows: x is (rows, n) with n <= kWarpRow, out is (rows). One warp per row: lane j adds
// x[r, j], x[r, j + 32], ... in order, then the lanes meet in a shuffle tree. Rows are handed
// out per warp, so all 32 lanes of a warp always take part in the shuffles.
__global__ void row_sum_warp_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = blockDim.x / 32;
  for (int64_t r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < rows; r += gridDim.x * warps_per_block) {
    const float* row = x + r * n;
    float acc = 0.f;
    EW_UNROLL4
    for (int64_t j = lane; j < n; j += 32) acc += row[j];
    acc = warp_sum(acc);
    if (lane == 0) out[r] = acc;
  }
}

// Long rows: x is (rows, n), out is (rows, chunks) with chunks = ceil(n / kRowChunk): out[r, c]
// is the sum of the c-th kRowChunk elements of row r. Thread t adds elements t, t + 256, ... of
// its chunk in order (32 at most), then block_sum adds the threads in a fixed tree.
__global__ void row_sum_block_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t n,
                                     int64_t chunks) {
  __shared__ float scratch[32];
  for (int64_t u = blockIdx.x; u < rows * chunks; u += gridDim.x) {
    const int64_t r = u / chunks, c = u % chunks;
    const int64_t begin = c * kRowChunk, end = begin + kRowChunk < n ? begin + kRowChunk : n;
    const float* row = x + r * n;
    float acc = 0.f;
    EW_UNROLL4
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) acc += row[j];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[u] = acc;
  }
}

// Column sums: x is (outer, n, inner), out is (outer, chunks, inner) with chunks =
// ceil(n / kColChunk): out[o, c, i] is the sum over the c-th kColChunk rows of column i. A block
// is (32 columns) x (8 rows of threads); thread (tx, ty) adds rows ty, ty + 8, ... of its chunk
// in order (64 at most), and the 8 partial sums of a column are then added in row order.
// A warp reads 32 neighbouring columns of one row: coalesced.
__global__ void col_sum_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t outer, int64_t n,
                               int64_t inner, int64_t chunks) {
  __shared__ float part[kTileRows][kTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col_tiles = (inner + kTile - 1) / kTile;
  const int64_t units = outer * col_tiles * chunks;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const int64_t ct = u % col_tiles;
    const int64_t c = (u / col_tiles) % chunks;
    const int64_t o = u / (col_tiles * chunks);
    const int64_t col = ct * kTile + tx;
    const int64_t begin = c * kColChunk, end = begin + kColChunk < n ? begin + kColChunk : n;
    float acc = 0.f;
    if (col < inner) {
      const float* base = x + o * n * inner + col;
      EW_UNROLL4
      for (int64_t j = begin + ty; j < end; j += kTileRows) acc += base[j * inner];
    }
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && col < inner) {
      float s = part[0][tx];
      for (int k = 1; k < kTileRows; ++k) s += part[k][tx];
      out[(o * chunks + c) * inner + col] = s;
    }
    __syncthreads();  // part is rewritten by the next step
  }
}

// The scratch of one summing pass, returned to the allocator when the pass has been queued.
struct Scratch {
  float* ptr = nullptr;
  explicit Scratch(int64_t n) : ptr(static_cast<float*>(device_alloc(size_t(n) * sizeof(float)))) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { device_free(ptr); }
};

// x is (outer, n, inner), out is (outer, inner). Rows longer than one chunk are summed in chunks
// whose partial sums are stored and then summed by this same function, in chunk order.
void sum_axis_impl(const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  if (inner == 1) {
    if (n <= kWarpRow) {
      LUNA_LAUNCH(grid_blocks(ceil_div(outer, kThreads / 32)), kThreads, 0, stream(), row_sum_warp_kernel)(x, out, outer, n);
      check_launch("row_sum_warp_kernel");
      return;
    }
    const int64_t chunks = ceil_div(n, kRowChunk);
    if (chunks == 1) {
      LUNA_LAUNCH(grid_blocks(outer), kThreads, 0, stream(), row_sum_block_kernel)(x, out, outer, n, chunks);
      check_launch("row_sum_block_kernel");
      return;
    }
    Scratch partial(outer * chunks);  // (outer, chunks)
    LUNA_LAUNCH(grid_blocks(outer * chunks), kThreads, 0, stream(), row_sum_block_kernel)(x, partial.ptr, outer, n, chunks);
    check_launch("row_sum_block_kernel");
    sum_axis_impl(partial.ptr, out, outer, chunks, 1);
    return;
  }
  const int64_t chunks = ceil_div(n, kColChunk);
  const int64_t units = outer * ceil_div(inner, kTile) * chunks;
  float* dst = out;
  Scratch partial(chunks > 1 ? outer * chunks * inner : 0);  // (outer, chunks, inner)
  if (chunks > 1) dst = partial.ptr;
  LUNA_LAUNCH(grid_blocks(units), dim3(kTile, kTileRows), 0, stream(), col_sum_kernel)(x, dst, outer, n, inner, chunks);
  check_launch("col_sum_kernel");
  if (chunks > 1) sum_axis_impl(partial.ptr, out, outer, chunks, inner);
}

}  // namespace

void sum_axis(const float* x, float* out, int64_t outer, int64_t n, int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (n == 1) return copy_flat(x, out, outer * inner);
  sum_axis_impl(x, out, outer, n, inner);
}

// As on the CPU: the dims are grouped into alternating kept and reduced groups (size-1 input dims
// dropped, neighbours of one kind fused), and the reduced groups are summed away one pass at a
// time, innermost first, each pass a sum_axis over (outer, group, inner) that the next reads.
void reduce_to(const ReduceParams<float>& p) {
  int64_t size[kMaxRank];
  bool reduced[kMaxRank];
  int g = 0;
  int64_t total = 1;
  for (int d = 0; d < p.rank; ++d) {
    total *= p.in_shape[d];
    if (p.in_shape[d] == 1) continue;
    const bool r = p.out_shape[d] == 1;
    if (g > 0 && reduced[g - 1] == r) {
      size[g - 1] *= p.in_shape[d];
    } else {
      size[g] = p.in_shape[d];
      reduced[g] = r;
      ++g;
    }
  }
  int remaining = 0;
  for (int i = 0; i < g; ++i) remaining += reduced[i] ? 1 : 0;
  if (remaining == 0) return copy_flat(p.x, p.out, total);
  const float* src = p.x;
  std::unique_ptr<Scratch> held;  // the previous pass's result, freed once the next pass is queued
  for (;;) {
    int last = g - 1;
    while (!reduced[last]) --last;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < last; ++i) outer *= size[i];
    for (int i = last + 1; i < g; ++i) inner *= size[i];
    std::unique_ptr<Scratch> next = remaining > 1 ? std::make_unique<Scratch>(outer * inner) : nullptr;
    sum_axis_impl(src, next != nullptr ? next->ptr : p.out, outer, size[last], inner);
    held = std::move(next);
    if (--remaining == 0) return;
    src = held->ptr;
    // Drop the group just summed; the kept groups on either side now lie next to each other
    // and fuse into one.
    for (int i = last; i + 1 < g; ++i) size[i] = size[i + 1], reduced[i] = reduced[i + 1];
    --g;
    if (last > 0 && last < g) {
      size[last - 1] *= size[last];
      for (int i = last; i + 1 < g; ++i) size[i] = size[i + 1], reduced[i] = reduced[i + 1];
      --g;
    }
  }
}

}  // namespace luna::cuda
