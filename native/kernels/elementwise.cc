// Elementwise, reduction and layout kernels (see elementwise.h for the parameter structs).
//
// Work is cut into tasks by problem size alone (fixed element counts per task), and every
// reduction adds its partial sums in a fixed order, so results are bitwise the same for any
// number of threads.
#include "elementwise.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "../runtime/thread_pool.h"

namespace luna {

namespace {

// Elements one streaming task writes: large enough that a task outweighs the pool's hand-off,
// small enough that a few million elements spread over every core.
constexpr int64_t kChunk = 1 << 14;
// Elements one reduction task reads.
constexpr int64_t kReduceChunk = 1 << 15;
// Columns handled together by a reduction over rows; wider rows are split into blocks of this
// many columns so that a reduction of a few very long rows still has parallel tasks.
constexpr int64_t kColBlock = 2048;
// Side of the square tiles of the transposing copy.
constexpr int64_t kTile = 32;

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs fn(u) for u < units, grouping units so that one task does about `budget` elements of
// work when each unit does `work` elements. The grouping depends on the sizes only.
template <typename Fn>
void for_units(int64_t units, int64_t work, int64_t budget, const Fn& fn) {
  const int64_t per_task = std::max<int64_t>(1, budget / std::max<int64_t>(1, work));
  parallel_for(div_up(units, per_task), [&](int64_t t) {
    const int64_t end = std::min(units, (t + 1) * per_task);
    for (int64_t u = t * per_task; u < end; ++u) fn(u);
  });
}

// A walk over a contiguous output with up to two strided inputs, simplified: dims of size 1
// dropped, and neighbouring dims fused wherever every input steps through them as through one
// dim (outer stride == inner stride * inner size). A same-shape add becomes one flat dim; a
// bias add over [B, n, d] becomes [B*n, d] with strides (d, 1) and (0, 1); splitting heads,
// [B, n, h, dh] -> [B, h, n, dh], stays rank 4 with contiguous runs of dh.
struct Walk {
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t stride[2][kMaxRank] = {};

  int64_t size() const {
    int64_t s = 1;
    for (int d = 0; d < rank; ++d) s *= shape[d];
    return s;
  }
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
      continue;
    }
    w.shape[w.rank] = shape[d];
    w.stride[0][w.rank] = t0;
    w.stride[1][w.rank] = t1;
    ++w.rank;
  }
  if (w.rank == 0) {  // a single element
    w.rank = 1;
    w.shape[0] = 1;
  }
  return w;
}

// Calls seg(off0, off1, pos, len) for each run of the output elements [start, end) that lies in
// one row of the innermost dim: output elements pos .. pos+len-1, whose inputs start at off0 and
// off1 and step by the innermost strides.
template <typename Segment>
void walk_range(const Walk& w, int64_t start, int64_t end, const Segment& seg) {
  const int r = w.rank;
  int64_t idx[kMaxRank];
  int64_t off0 = 0, off1 = 0, rest = start;
  for (int d = r - 1; d >= 0; --d) {
    idx[d] = rest % w.shape[d];
    rest /= w.shape[d];
    off0 += idx[d] * w.stride[0][d];
    off1 += idx[d] * w.stride[1][d];
  }
  const int64_t row = w.shape[r - 1];
  int64_t pos = start;
  for (;;) {
    const int64_t len = std::min(row - idx[r - 1], end - pos);
    seg(off0, off1, pos, len);
    pos += len;
    if (pos >= end) return;
    // The row is finished: back to its start, then carry into the outer dims (pos < end, so
    // some outer index still has room).
    off0 -= idx[r - 1] * w.stride[0][r - 1];
    off1 -= idx[r - 1] * w.stride[1][r - 1];
    idx[r - 1] = 0;
    for (int d = r - 2; d >= 0; --d) {
      ++idx[d];
      off0 += w.stride[0][d];
      off1 += w.stride[1][d];
      if (idx[d] < w.shape[d]) break;
      off0 -= idx[d] * w.stride[0][d];
      off1 -= idx[d] * w.stride[1][d];
      idx[d] = 0;
    }
  }
}

template <typename T, BinaryOp op>
inline T apply(T x, T y) {
  if (op == BinaryOp::Add) return x + y;
  if (op == BinaryOp::Sub) return x - y;
  return x * y;
}

// One run of n outputs. The stride pairs that matter get loops of their own, which the compiler
// vectorises: (1, 1) same shape, and also a row vector broadcast over rows once the walk has
// fused the rows; (1, 0) and (0, 1) one element broadcast along the run.
template <typename T, BinaryOp op>
void binary_run(const T* a, const T* b, T* out, int64_t n, int64_t sa, int64_t sb) {
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] = apply<T, op>(a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    const T y = b[0];
    for (int64_t i = 0; i < n; ++i) out[i] = apply<T, op>(a[i], y);
  } else if (sa == 0 && sb == 1) {
    const T x = a[0];
    for (int64_t i = 0; i < n; ++i) out[i] = apply<T, op>(x, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = apply<T, op>(a[i * sa], b[i * sb]);
  }
}

// out has shape p.shape; a and b are read through their broadcast strides.
template <typename T, BinaryOp op>
void binary_typed(const BinaryParams<T>& p) {
  const Walk w = simplify(p.rank, p.shape, p.a_stride, p.b_stride);
  const int64_t total = w.size();
  const int64_t sa = w.stride[0][w.rank - 1], sb = w.stride[1][w.rank - 1];
  parallel_for(div_up(total, kChunk), [&](int64_t t) {
    const int64_t start = t * kChunk, end = std::min(total, start + kChunk);
    walk_range(w, start, end, [&](int64_t oa, int64_t ob, int64_t pos, int64_t len) {
      binary_run<T, op>(p.a + oa, p.b + ob, p.out + pos, len, sa, sb);
    });
  });
}

// Sum of n contiguous values through eight interleaved partial sums: the lanes are independent,
// so the loop vectorises without reassociation, and it is more accurate than one running sum.
// The lanes are combined in a fixed tree.
template <typename T>
T lane_sum(const T* x, int64_t n) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k];
  }
  for (int k = 0; i < n; ++i, ++k) acc[k] += x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// x is (rows, inner) row-major; dst[i] = sum_j x[j, i] for i < cols (cols <= inner). Rows are
// added one after another so that the loop over columns vectorises.
template <typename T>
void column_sums(const T* x, T* dst, int64_t rows, int64_t cols, int64_t inner) {
  if (inner == 1) {
    dst[0] = lane_sum(x, rows);
    return;
  }
  for (int64_t i = 0; i < cols; ++i) dst[i] = x[i];
  for (int64_t j = 1; j < rows; ++j) {
    const T* row = x + j * inner;
    for (int64_t i = 0; i < cols; ++i) dst[i] += row[i];
  }
}

// A parallel memcpy of n elements.
template <typename T>
void copy_flat(const T* src, T* dst, int64_t n) {
  parallel_for(div_up(n, kChunk), [&](int64_t t) {
    const int64_t start = t * kChunk, len = std::min(kChunk, n - start);
    std::memcpy(dst + start, src + start, static_cast<size_t>(len) * sizeof(T));
  });
}

// The transposing case of strided_copy: the output's last dim (L) steps through the input with
// stride s != 1, while the input's contiguous dim is output dim `pd` (P). Copies (P x L) planes
// in kTile x kTile tiles, so both the reads and the writes touch few cache lines per tile.
template <typename T>
void transpose_copy(const T* x, T* out, const Walk& w, int pd) {
  const int r = w.rank;
  const int64_t P = w.shape[pd], L = w.shape[r - 1], s = w.stride[0][r - 1];
  int64_t out_stride[kMaxRank];
  out_stride[r - 1] = 1;
  for (int d = r - 2; d >= 0; --d) out_stride[d] = out_stride[d + 1] * w.shape[d + 1];
  const int64_t planes = w.size() / (P * L);
  const int64_t p_blocks = div_up(P, kTile);
  // One unit: kTile rows of P in one plane.
  for_units(planes * p_blocks, kTile * L, kChunk, [&](int64_t u) {
    int64_t plane = u / p_blocks;
    const int64_t p0 = (u % p_blocks) * kTile, p1 = std::min(P, p0 + kTile);
    // Offsets of the plane: the remaining dims in row-major order.
    int64_t in_off = 0, out_off = 0;
    for (int d = r - 2; d >= 0; --d) {
      if (d == pd) continue;
      const int64_t i = plane % w.shape[d];
      plane /= w.shape[d];
      in_off += i * w.stride[0][d];
      out_off += i * out_stride[d];
    }
    const int64_t op = out_stride[pd], np = p1 - p0;
    // Through a small buffer: each input row segment is read in one burst and each output row
    // segment written in one, so the strided side never needs a cache line to survive between
    // touches (with power-of-two strides all the lines of a tile fall into one cache set).
    T tile[kTile * kTile];
    for (int64_t l0 = 0; l0 < L; l0 += kTile) {
      const int64_t nl = std::min(kTile, L - l0);
      for (int64_t l = 0; l < nl; ++l) {
        const T* src = x + in_off + (l0 + l) * s + p0;
        for (int64_t i = 0; i < np; ++i) tile[l * kTile + i] = src[i];
      }
      for (int64_t i = 0; i < np; ++i) {
        T* dst = out + out_off + (p0 + i) * op + l0;
        for (int64_t l = 0; l < nl; ++l) dst[l] = tile[l * kTile + i];
      }
    }
  });
}

}  // namespace

template <typename T>
void binary_op(const BinaryParams<T>& p) {
  switch (p.op) {
    case BinaryOp::Add: binary_typed<T, BinaryOp::Add>(p); break;
    case BinaryOp::Sub: binary_typed<T, BinaryOp::Sub>(p); break;
    case BinaryOp::Mul: binary_typed<T, BinaryOp::Mul>(p); break;
  }
}

// x and out are (n).
template <typename T>
void scale_shift(const T* x, T* out, int64_t n, T a, T b) {
  parallel_for(div_up(n, kChunk), [&](int64_t t) {
    const int64_t start = t * kChunk, end = std::min(n, start + kChunk);
    for (int64_t i = start; i < end; ++i) out[i] = a * x[i] + b;
  });
}

// out is (shape), contiguous; x is read through p.stride (permuted and/or zero strides).
template <typename T>
void strided_copy(const StridedCopyParams<T>& p) {
  const Walk w = simplify(p.rank, p.shape, p.stride, nullptr);
  const int r = w.rank;
  const int64_t s = w.stride[0][r - 1];
  // When the output's rows do not run along the input's rows, find the output dim that does:
  // a tiled transpose then reads and writes whole cache lines. Short rows or planes gain
  // nothing from tiling and take the run-by-run path.
  int pd = -1;
  if (s != 1) {
    for (int d = 0; d < r - 1; ++d) {
      if (w.stride[0][d] == 1) pd = d;
    }
  }
  if (pd >= 0 && w.shape[pd] >= 4 && w.shape[r - 1] >= 4) {
    transpose_copy(p.x, p.out, w, pd);
    return;
  }
  const int64_t total = w.size();
  parallel_for(div_up(total, kChunk), [&](int64_t t) {
    const int64_t start = t * kChunk, end = std::min(total, start + kChunk);
    walk_range(w, start, end, [&](int64_t ox, int64_t, int64_t pos, int64_t len) {
      const T* src = p.x + ox;
      T* dst = p.out + pos;
      if (s == 1) {
        std::memcpy(dst, src, static_cast<size_t>(len) * sizeof(T));
      } else if (s == 0) {
        std::fill(dst, dst + len, src[0]);
      } else {
        for (int64_t i = 0; i < len; ++i) dst[i] = src[i * s];
      }
    });
  });
}

// x is (outer, n, inner), out is (outer, inner). The columns are cut into blocks of kColBlock
// and a long axis into chunks of rows; each (outer, column block, row chunk) is a task. With
// more than one chunk the partial sums are stored and then added in chunk order.
template <typename T>
void sum_axis(const T* x, T* out, int64_t outer, int64_t n, int64_t inner) {
  const int64_t col = std::min(inner, kColBlock);
  const int64_t col_blocks = div_up(inner, col);
  const int64_t rows_per_chunk = std::max<int64_t>(1, kReduceChunk / col);
  const int64_t chunks = div_up(n, rows_per_chunk);
  const int64_t units = outer * col_blocks;
  auto cols_of = [&](int64_t c) { return std::min(col, inner - c * col); };

  if (chunks == 1) {
    for_units(units, n * col, kReduceChunk, [&](int64_t u) {
      const int64_t o = u / col_blocks, c0 = (u % col_blocks) * col;
      column_sums(x + o * n * inner + c0, out + o * inner + c0, n, cols_of(u % col_blocks), inner);
    });
    return;
  }
  std::vector<T> partial(static_cast<size_t>(outer * chunks * inner));  // (outer, chunks, inner)
  parallel_for(units * chunks, [&](int64_t t) {
    const int64_t u = t / chunks, k = t % chunks;
    const int64_t o = u / col_blocks, c0 = (u % col_blocks) * col;
    const int64_t r0 = k * rows_per_chunk, rows = std::min(rows_per_chunk, n - r0);
    column_sums(x + (o * n + r0) * inner + c0, partial.data() + (o * chunks + k) * inner + c0, rows,
                cols_of(u % col_blocks), inner);
  });
  // The partials of one output row are themselves a (chunks, inner) block: sum its columns.
  for_units(units, chunks * col, kReduceChunk, [&](int64_t u) {
    const int64_t o = u / col_blocks, c0 = (u % col_blocks) * col;
    column_sums(partial.data() + o * chunks * inner + c0, out + o * inner + c0, chunks, cols_of(u % col_blocks),
                inner);
  });
}

// x is (in_shape), out is (out_shape), equal except where out_shape is 1. The dims are grouped
// into alternating kept and reduced groups (size-1 input dims dropped, neighbours of the same
// kind fused); the reduced groups are then summed away one at a time, innermost first, each
// pass a sum_axis over (outer, group, inner) whose result the next pass reads.
template <typename T>
void reduce_to(const ReduceParams<T>& p) {
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
  if (remaining == 0) {
    copy_flat(p.x, p.out, total);
    return;
  }
  std::vector<T> buffers[2];
  const T* src = p.x;
  for (int pass = 0;; ++pass) {
    int last = g - 1;
    while (!reduced[last]) --last;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < last; ++i) outer *= size[i];
    for (int i = last + 1; i < g; ++i) inner *= size[i];
    T* dst = p.out;
    if (remaining > 1) {
      buffers[pass & 1].resize(static_cast<size_t>(outer * inner));
      dst = buffers[pass & 1].data();
    }
    sum_axis(src, dst, outer, size[last], inner);
    if (--remaining == 0) return;
    src = dst;
    // Drop the group just summed; the kept groups on either side are now neighbours in memory
    // and fuse into one.
    for (int i = last; i + 1 < g; ++i) {
      size[i] = size[i + 1];
      reduced[i] = reduced[i + 1];
    }
    --g;
    if (last > 0 && last < g) {
      size[last - 1] *= size[last];
      for (int i = last; i + 1 < g; ++i) {
        size[i] = size[i + 1];
        reduced[i] = reduced[i + 1];
      }
      --g;
    }
  }
}

// Copies `cols` elements out of each of `rows` rows. Long rows are cut into segments so that a
// single huge row still spreads over the threads.
template <typename T>
void copy_blocks(const BlockCopyParams<T>& p) {
  const int64_t seg = std::min(p.cols, kChunk);
  const int64_t segs = div_up(p.cols, seg);
  for_units(p.rows * segs, seg, kChunk, [&](int64_t u) {
    const int64_t r = u / segs, c0 = (u % segs) * seg, len = std::min(seg, p.cols - c0);
    std::memcpy(p.dst + p.dst_offset + r * p.dst_stride + c0, p.src + p.src_offset + r * p.src_stride + c0,
                static_cast<size_t>(len) * sizeof(T));
  });
}

template void binary_op<float>(const BinaryParams<float>&);
template void binary_op<double>(const BinaryParams<double>&);
template void scale_shift<float>(const float*, float*, int64_t, float, float);
template void scale_shift<double>(const double*, double*, int64_t, double, double);
template void strided_copy<float>(const StridedCopyParams<float>&);
template void strided_copy<double>(const StridedCopyParams<double>&);
template void reduce_to<float>(const ReduceParams<float>&);
template void reduce_to<double>(const ReduceParams<double>&);
template void sum_axis<float>(const float*, float*, int64_t, int64_t, int64_t);
template void sum_axis<double>(const double*, double*, int64_t, int64_t, int64_t);
template void copy_blocks<float>(const BlockCopyParams<float>&);
template void copy_blocks<double>(const BlockCopyParams<double>&);

}  // namespace luna
