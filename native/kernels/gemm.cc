// The blocked GEMM declared in gemm.h, plus the linear-layer bias helpers.
//
// Shape of the work. C is cut into tiles (a band of rows x a band of columns of one batch
// item); one parallel task owns one tile over the whole inner dimension, so no two threads
// write the same element and nothing needs merging. Inside a tile, for each K chunk:
//
//   for each micro-row (MR rows of A, kept in L1 while ...)
//     for each micro-column (... the NR-wide panels of B's chunk stream past it from L2)
//       micro-kernel: an MR x NR block of C held in registers over the whole chunk
//
// B is always read from NR-wide packed panels, in one of two ways: packed once per call and
// shared by every tile (when op(B) is a transpose, which must be rearranged anyway, or when
// many row tiles reuse B), or packed per tile and chunk (when few tiles read B once each,
// e.g. the long-K weight gradient dY^T X; the packing then reads B as one sequential stream,
// which the hardware prefetcher follows, where the micro-kernel's column strips would not).
// A is copied per micro-row into a compact row-major buffer (cheap, and it avoids L1 set
// conflicts when A's row stride is a multiple of 4 KB), or for op(A) = A^T packed per chunk
// into MR-tall panels (a row of the source holds a panel's MR values for one p).
//
// Each ISA supplies its micro-kernel (A as rows or as a panel), its MR x NR and vectorised
// packers; edges of C are handled by zero padding and masked stores, so every micro-kernel
// call runs the full register block.
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "../runtime/cpu_features.h"
#include "../runtime/thread_pool.h"

#if defined(__x86_64__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#define LUNA_X86 1
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace luna {

namespace {

// How a chunk's product meets C.
enum class Store {
  Set,    // first chunk, beta == 0:  C = alpha * acc (+ bias); C's old value is never read
  Blend,  // first chunk, beta != 0:  C = alpha * acc + beta * C (+ bias)
  Add,    // later chunks:            C = alpha * acc + C
};

template <typename T>
struct Epilogue {
  Store mode;
  T alpha;
  T beta;
  const T* bias;  // already offset to the block's first column; nullptr = none (always for Add)
};

// c[rows x cols] (row stride ldc) <- epilogue(sum_{p < kc} a(i, p) * b[p * NR + j]), where b is
// one packed kc x NR panel of B and
//   A as rows:   a(i, p) = a[i * lda + p]
//   A as panel:  a(i, p) = a[p * MR + i]
// All MR x NR products are computed (A has MR readable rows, zero past the real ones); only
// rows x cols (<= MR x NR) are stored.
// pf[0 .. n_pf) (n_pf <= kc / 2) are cache lines to prefetch into L2 along the way, for the
// caller's next chunk: spread over the k loop they cost nothing and hide memory latency.
template <typename T>
using MicroFn = void (*)(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, int64_t rows,
                         int64_t cols, const Epilogue<T>& e, const char* const* pf, int64_t n_pf);
// kc x cols of row-major B (row stride ldb) into NR-wide panels: panel q at dst + q * panel_stride,
// its row p at + p * NR; zero past column `cols`.
template <typename T>
using PackBFn = void (*)(int64_t kc, int64_t cols, const T* b, int64_t ldb, T* dst, int64_t panel_stride);
// kc x rows of A^T (a(i, p) = a[p * lda + i], rows <= MR) into one MR panel; zero past `rows`.
template <typename T>
using PackAtFn = void (*)(int64_t kc, int64_t rows, const T* a, int64_t lda, T* dst);

template <typename T>
struct Kernels {
  int mr, nr;
  MicroFn<T> a_rows;
  MicroFn<T> a_panel;
  PackBFn<T> pack_b;
  PackAtFn<T> pack_at;
};

// ---------------------------------------------------------------------------------------------
// Generic build (float64 always; float32 without AVX2). Plain loops over a small register
// block; the compiler vectorises the NR loop with the baseline SSE2.

constexpr int kMrGeneric = 4;
constexpr int kNrGeneric = 8;

template <typename T>
inline T finish(const Epilogue<T>& e, T acc, T old, int64_t j) {
  T x = e.alpha * acc;
  if (e.mode == Store::Blend) x = x + e.beta * old;
  else if (e.mode == Store::Add) x = x + old;
  if (e.bias) x = x + e.bias[j];
  return x;
}

template <typename T, bool kPanel>
void micro_generic(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, int64_t rows, int64_t cols,
                   const Epilogue<T>& e, const char* const* pf, int64_t n_pf) {
  for (int64_t i = 0; i < n_pf; ++i) __builtin_prefetch(pf[i], 0, 2);
  constexpr int MR = kMrGeneric, NR = kNrGeneric;
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const T* bp = b + p * NR;
    for (int i = 0; i < MR; ++i) {
      const T ai = kPanel ? a[p * MR + i] : a[i * lda + p];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * bp[j];
    }
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      T* cij = c + i * ldc + j;
      // Set never reads C (it may hold NaN); the others do.
      *cij = finish(e, acc[i][j], e.mode == Store::Set ? T(0) : *cij, j);
    }
}

template <typename T, int NR>
void pack_b_generic(int64_t kc, int64_t cols, const T* b, int64_t ldb, T* dst, int64_t panel_stride) {
  const int64_t panels = (cols + NR - 1) / NR;
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t q = 0; q < panels; ++q) {
      T* d = dst + q * panel_stride + p * NR;
      for (int64_t j = 0; j < NR; ++j) d[j] = q * NR + j < cols ? b[p * ldb + q * NR + j] : T(0);
    }
}

template <typename T, int MR>
void pack_at_generic(int64_t kc, int64_t rows, const T* a, int64_t lda, T* dst) {
  for (int64_t p = 0; p < kc; ++p)
    for (int64_t i = 0; i < MR; ++i) dst[p * MR + i] = i < rows ? a[p * lda + i] : T(0);
}

#ifdef LUNA_X86
// ---------------------------------------------------------------------------------------------
// AVX-512 build: 14 rows x 2 vectors of 16 floats. 28 accumulators + 2 B vectors + 1 broadcast
// use 31 of the 32 zmm registers; per k step 2 vector loads and 14 broadcasts feed 28 FMAs.

constexpr int kMr512 = 14;
constexpr int kNv512 = 2;
constexpr int kNr512 = 16 * kNv512;

inline __mmask16 lanes16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

template <bool kPanel>
TARGET_AVX512 void micro_avx512(int64_t kc, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                                int64_t rows, int64_t cols, const Epilogue<float>& e, const char* const* pf,
                                int64_t n_pf) {
  constexpr int MR = kMr512, NV = kNv512;
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    // One prefetch every other k step while the list lasts (a well-predicted branch).
    if ((p & 1) == 0 && (p >> 1) < n_pf) _mm_prefetch(pf[p >> 1], _MM_HINT_T1);
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + p * kNr512 + 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(kPanel ? a[p * MR + i] : a[i * lda + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
    }
  }
  __mmask16 mask[NV];
  __m512 bias[NV];
  for (int v = 0; v < NV; ++v) {
    mask[v] = lanes16(cols - 16 * v);
    bias[v] = e.bias ? _mm512_maskz_loadu_ps(mask[v], e.bias + 16 * v) : _mm512_setzero_ps();
  }
  const __m512 va = _mm512_set1_ps(e.alpha), vb = _mm512_set1_ps(e.beta);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) break;
    float* ci = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      // Separate multiply and add (no fusing), rounding as finish() does.
      __m512 x = _mm512_mul_ps(acc[i][v], va);
      if (e.mode == Store::Blend) x = _mm512_add_ps(x, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask[v], ci + 16 * v)));
      else if (e.mode == Store::Add) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], ci + 16 * v));
      if (e.bias) x = _mm512_add_ps(x, bias[v]);
      _mm512_mask_storeu_ps(ci + 16 * v, mask[v], x);
    }
  }
}

TARGET_AVX512 void pack_b_avx512(int64_t kc, int64_t cols, const float* b, int64_t ldb, float* dst,
                                 int64_t panel_stride) {
  const int64_t full = cols / kNr512, rest = cols - full * kNr512;
  const __mmask16 m0 = lanes16(rest), m1 = lanes16(rest - 16);
  for (int64_t p = 0; p < kc; ++p) {
    const float* src = b + p * ldb;
    for (int64_t q = 0; q < full; ++q) {
      float* d = dst + q * panel_stride + p * kNr512;
      _mm512_storeu_ps(d, _mm512_loadu_ps(src + q * kNr512));
      _mm512_storeu_ps(d + 16, _mm512_loadu_ps(src + q * kNr512 + 16));
    }
    if (rest > 0) {
      float* d = dst + full * panel_stride + p * kNr512;
      _mm512_storeu_ps(d, _mm512_maskz_loadu_ps(m0, src + full * kNr512));
      _mm512_storeu_ps(d + 16, _mm512_maskz_loadu_ps(m1, src + full * kNr512 + 16));
    }
  }
}

TARGET_AVX512 void pack_at_avx512(int64_t kc, int64_t rows, const float* a, int64_t lda, float* dst) {
  const __mmask16 load = lanes16(rows), store = lanes16(kMr512);
  for (int64_t p = 0; p < kc; ++p) _mm512_mask_storeu_ps(dst + p * kMr512, store, _mm512_maskz_loadu_ps(load, a + p * lda));
}

// ---------------------------------------------------------------------------------------------
// AVX2 build: 6 rows x 2 vectors of 8 floats (12 accumulators of the 16 ymm registers).

constexpr int kMr256 = 6;
constexpr int kNr256 = 16;

TARGET_AVX2 inline __m256i lanes8(int64_t n) {
  const int count = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(n, 8)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <bool kPanel>
TARGET_AVX2 void micro_avx2(int64_t kc, const float* a, int64_t lda, const float* b, float* c, int64_t ldc,
                            int64_t rows, int64_t cols, const Epilogue<float>& e, const char* const* pf,
                            int64_t n_pf) {
  for (int64_t i = 0; i < n_pf; ++i) _mm_prefetch(pf[i], _MM_HINT_T1);
  constexpr int MR = kMr256;
  __m256 acc[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_loadu_ps(b + p * kNr256), b1 = _mm256_loadu_ps(b + p * kNr256 + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(kPanel ? a + p * MR + i : a + i * lda + p);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  }
  const __m256i mask[2] = {lanes8(cols), lanes8(cols - 8)};
  const __m256 va = _mm256_set1_ps(e.alpha), vb = _mm256_set1_ps(e.beta);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) break;
    float* ci = c + i * ldc;
    for (int v = 0; v < 2; ++v) {
      __m256 x = _mm256_mul_ps(acc[i][v], va);
      if (e.mode == Store::Blend) x = _mm256_add_ps(x, _mm256_mul_ps(vb, _mm256_maskload_ps(ci + 8 * v, mask[v])));
      else if (e.mode == Store::Add) x = _mm256_add_ps(x, _mm256_maskload_ps(ci + 8 * v, mask[v]));
      if (e.bias) x = _mm256_add_ps(x, _mm256_maskload_ps(e.bias + 8 * v, mask[v]));
      _mm256_maskstore_ps(ci + 8 * v, mask[v], x);
    }
  }
}

TARGET_AVX2 void pack_b_avx2(int64_t kc, int64_t cols, const float* b, int64_t ldb, float* dst, int64_t panel_stride) {
  const int64_t full = cols / kNr256, rest = cols - full * kNr256;
  const __m256i m0 = lanes8(rest), m1 = lanes8(rest - 8);
  for (int64_t p = 0; p < kc; ++p) {
    const float* src = b + p * ldb;
    for (int64_t q = 0; q < full; ++q) {
      float* d = dst + q * panel_stride + p * kNr256;
      _mm256_storeu_ps(d, _mm256_loadu_ps(src + q * kNr256));
      _mm256_storeu_ps(d + 8, _mm256_loadu_ps(src + q * kNr256 + 8));
    }
    if (rest > 0) {
      float* d = dst + full * panel_stride + p * kNr256;
      _mm256_storeu_ps(d, _mm256_maskload_ps(src + full * kNr256, m0));
      _mm256_storeu_ps(d + 8, _mm256_maskload_ps(src + full * kNr256 + 8, m1));
    }
  }
}
#endif  // LUNA_X86

template <typename T>
const Kernels<T>& kernels();

template <>
const Kernels<double>& kernels<double>() {
  static const Kernels<double> k{kMrGeneric, kNrGeneric, micro_generic<double, false>, micro_generic<double, true>,
                                 pack_b_generic<double, kNrGeneric>, pack_at_generic<double, kMrGeneric>};
  return k;
}

template <>
const Kernels<float>& kernels<float>() {
  static const Kernels<float> table = [] {
#ifdef LUNA_X86
    switch (active_isa()) {
      case Isa::Avx512:
        return Kernels<float>{kMr512, kNr512, micro_avx512<false>, micro_avx512<true>, pack_b_avx512, pack_at_avx512};
      case Isa::Avx2:
        return Kernels<float>{kMr256, kNr256, micro_avx2<false>, micro_avx2<true>, pack_b_avx2,
                              pack_at_generic<float, kMr256>};
      default: break;
    }
#endif
    return Kernels<float>{kMrGeneric, kNrGeneric, micro_generic<float, false>, micro_generic<float, true>,
                          pack_b_generic<float, kNrGeneric>, pack_at_generic<float, kMrGeneric>};
  }();
  return table;
}

// ---------------------------------------------------------------------------------------------
// The driver.

// Per-thread scratch, 64-byte aligned, kept between calls so steady-state calls allocate
// nothing. Each pool worker (and each calling thread) has its own.
template <typename T>
T* scratch(std::vector<T>& buf, size_t n) {
  const size_t slack = 64 / sizeof(T);
  if (buf.size() < n + slack) buf.resize(n + slack);
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - at % 64) % 64) / sizeof(T);
}

// A row stride of kc + kRowPad for the compact copy of A's rows: never a multiple of 4 KB.
constexpr int64_t kRowPad = 16;

// A's micro-row (rows x kc, row stride lda) into dst with row stride kc + kRowPad; zero rows
// past `rows`.
template <typename T>
void copy_a_rows(int64_t rows, int64_t kc, int mr, const T* a, int64_t lda, T* dst) {
  for (int64_t i = 0; i < mr; ++i) {
    T* d = dst + i * (kc + kRowPad);
    if (i < rows) std::memcpy(d, a + i * lda, size_t(kc) * sizeof(T));
    else std::fill(d, d + kc, T(0));
  }
}

// Tile sizes. These change only speed, never results (see kGemmKChunk in gemm.h), so they may
// depend on the thread count.
struct Tiling {
  int64_t rows;  // rows of C per task, a multiple of MR
  int64_t cols;  // columns of C per task, a multiple of NR
};

Tiling choose_tiling(int64_t batch, int64_t M, int64_t N, int64_t K, int mr, int nr) {
  const int64_t threads = num_threads();
  // Columns: B's (chunk x cols) panels are re-read from L2 by every micro-row of the tile, so
  // they are kept near 256 KB of float32.
  const int64_t max_cols = std::max<int64_t>(nr, 65536 / std::min<int64_t>(K, kGemmKChunk) / nr * nr);
  const int64_t col_tiles = (N + max_cols - 1) / max_cols;
  const int64_t cols = ((N + col_tiles - 1) / col_tiles + nr - 1) / nr * nr;
  // Rows: a tile reads B's chunks once for all its rows, so tall tiles (up to ~256 rows) keep
  // a long-K product from being memory-bound. Split further while there are fewer tasks than
  // threads, or a few tasks that do not divide evenly (one thread would finish alone).
  const int64_t micro_rows = (M + mr - 1) / mr;
  const int64_t max_micro = std::max<int64_t>(1, 256 / mr);
  int64_t row_tiles = (micro_rows + max_micro - 1) / max_micro;
  auto tasks = [&](int64_t rt) { return batch * col_tiles * rt; };
  while (row_tiles < micro_rows &&
         (tasks(row_tiles) < threads || (tasks(row_tiles) < 8 * threads && tasks(row_tiles) % threads != 0)))
    ++row_tiles;
  const int64_t per_tile = (micro_rows + row_tiles - 1) / row_tiles;
  return Tiling{per_tile * mr, cols};
}

// Packs op(B) of `items` batch items whole: panels[item][q][p][NR] for all K.
template <typename T>
void pack_b_whole(const GemmParams<T>& p, const Kernels<T>& kn, int64_t items, T* dst) {
  const int nr = kn.nr;
  const int64_t K = p.K, N = p.N, n_panels = (N + nr - 1) / nr, per_item = n_panels * K * nr;
  if (p.trans_b) {
    // B is N x K: each column panel gathers NR rows of B. Read rows contiguously; the writes
    // stride through the panel (K x NR, in L2).
    parallel_for(items * n_panels, [&](int64_t t) {
      const int64_t item = t / n_panels, q = t % n_panels;
      const T* b = p.b + item * p.batch_stride_b;
      T* d = dst + item * per_item + q * K * nr;
      for (int64_t jj = 0; jj < nr; ++jj) {
        const int64_t j = q * nr + jj;
        if (j < N)
          for (int64_t k = 0; k < K; ++k) d[k * nr + jj] = b[j * p.ldb + k];
        else
          for (int64_t k = 0; k < K; ++k) d[k * nr + jj] = T(0);
      }
    });
  } else {
    const int64_t chunks = (K + kGemmKChunk - 1) / kGemmKChunk;
    parallel_for(items * chunks, [&](int64_t t) {
      const int64_t item = t / chunks, pc = t % chunks * kGemmKChunk;
      kn.pack_b(std::min(kGemmKChunk, K - pc), N, p.b + item * p.batch_stride_b + pc * p.ldb, p.ldb,
                dst + item * per_item + pc * nr, K * nr);
    });
  }
}

// Walks the cache lines of a strided block (rows x row_elems of T, row stride in elements).
struct LineCursor {
  const char* row = nullptr;
  int64_t stride = 0, lines_per_row = 1, rows_left = 0, col = 0;

  template <typename T>
  void set(const T* first, int64_t rows, int64_t row_stride, int64_t row_elems) {
    row = reinterpret_cast<const char*>(first);
    stride = row_stride * int64_t(sizeof(T));
    lines_per_row = std::max<int64_t>(1, (row_elems * int64_t(sizeof(T)) + 63) / 64);
    rows_left = std::max<int64_t>(0, rows);
    col = 0;
  }
  int64_t left() const { return rows_left * lines_per_row - col; }
  const char* next() {
    const char* line = row + col * 64;
    if (++col == lines_per_row) {
      col = 0;
      row += stride;
      --rows_left;
    }
    return line;
  }
};

// One task: rows [i0, i1) x columns [j0, j1) of C[bi], over the whole inner dimension.
// b_whole: this item's op(B) packed whole by pack_b_whole, or nullptr (packed here per chunk).
template <typename T>
void run_tile(const GemmParams<T>& p, const Kernels<T>& kn, int64_t bi, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
              const T* b_whole) {
  const int mr = kn.mr, nr = kn.nr;
  const int64_t K = p.K, chunk = kGemmKChunk;
  const T* a = p.a + bi * p.batch_stride_a;
  const T* b = p.b + bi * p.batch_stride_b;
  T* c = p.c + bi * p.batch_stride_c;
  const int64_t micro_rows = (i1 - i0 + mr - 1) / mr, micro_cols = (j1 - j0 + nr - 1) / nr;

  const int64_t kc_max = std::min(chunk, K);
  thread_local std::vector<T> a_store, b_store;
  T* a_buf = scratch(a_store, size_t(p.trans_a ? micro_rows * mr * kc_max : mr * (kc_max + kRowPad)));
  T* b_buf = b_whole ? nullptr : scratch(b_store, size_t(micro_cols * nr * kc_max));
  const MicroFn<T> micro = p.trans_a ? kn.a_panel : kn.a_rows;

  for (int64_t pc = 0; pc < K; pc += chunk) {
    const int64_t kc = std::min(chunk, K - pc);
    Epilogue<T> e{pc == 0 ? (p.beta == T(0) ? Store::Set : Store::Blend) : Store::Add, p.alpha, p.beta, nullptr};
    if (p.trans_a)
      for (int64_t q = 0; q < micro_rows; ++q)
        kn.pack_at(kc, std::min<int64_t>(mr, i1 - i0 - q * mr), a + pc * p.lda + i0 + q * mr, p.lda, a_buf + q * mr * kc);
    if (!b_whole) kn.pack_b(kc, j1 - j0, b + pc * p.ldb + j0, p.ldb, b_buf, kc * nr);

    // What this tile packs for the next chunk is read from memory; the micro-kernels prefetch
    // it into L2 meanwhile, a share of the lines per call.
    LineCursor next_b, next_a;
    if (pc + kc < K) {
      const int64_t pn = pc + kc, kn_next = std::min(chunk, K - pn);
      if (!b_whole) next_b.set(b + pn * p.ldb + j0, kn_next, p.ldb, j1 - j0);
      if (p.trans_a) next_a.set(a + pn * p.lda + i0, kn_next, p.lda, i1 - i0);
    }
    const int64_t calls = micro_rows * micro_cols;
    const int64_t early = std::max<int64_t>(1, calls * 3 / 4);  // done well before the pack needs it
    const int64_t per_call = std::min<int64_t>(kc / 2, (next_b.left() + next_a.left() + early - 1) / early);
    const char* pf[kGemmKChunk / 2];

    for (int64_t q = 0; q < micro_rows; ++q) {
      const int64_t ir = i0 + q * mr, rows = std::min<int64_t>(mr, i1 - ir);
      const T* a_src = a_buf + q * mr * kc;
      if (!p.trans_a) {
        copy_a_rows(rows, kc, mr, a + ir * p.lda + pc, p.lda, a_buf);
        a_src = a_buf;
      }
      for (int64_t qj = 0; qj < micro_cols; ++qj) {
        const int64_t jr = j0 + qj * nr;
        // The next micro-row of a row-major A comes from memory: fetch it into L1 now, a
        // row per call, so it is there when it is copied.
        if (!p.trans_a && q + 1 < micro_rows)
          for (int64_t r = qj; r < mr && ir + mr + r < i1; r += micro_cols)
            for (int64_t l = 0; l < kc; l += 64 / int64_t(sizeof(T)))
              __builtin_prefetch(a + (ir + mr + r) * p.lda + pc + l, 0, 3);
        int64_t n_pf = 0;
        while (n_pf < per_call && next_b.left() > 0) pf[n_pf++] = next_b.next();
        while (n_pf < per_call && next_a.left() > 0) pf[n_pf++] = next_a.next();
        e.bias = p.bias && pc == 0 ? p.bias + jr : nullptr;
        const T* b_panel = b_whole ? b_whole + (jr / nr * K + pc) * nr : b_buf + qj * kc * nr;
        micro(kc, a_src, kc + kRowPad, b_panel, c + ir * p.ldc + jr, p.ldc, rows, std::min<int64_t>(nr, j1 - jr), e,
              pf, n_pf);
      }
    }
  }
}

template <typename T>
void scale_rows(const GemmParams<T>& p) {
  // K == 0: the product is empty; C = beta * C + bias (beta == 0 never reads C).
  for (int64_t bi = 0; bi < p.batch; ++bi)
    for (int64_t i = 0; i < p.M; ++i) {
      T* ci = p.c + bi * p.batch_stride_c + i * p.ldc;
      for (int64_t j = 0; j < p.N; ++j) {
        T x = p.beta == T(0) ? T(0) : p.beta * ci[j];
        if (p.bias) x = x + p.bias[j];
        ci[j] = x;
      }
    }
}

template <typename T>
void gemm_impl(const GemmParams<T>& p) {
  if (p.batch <= 0 || p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0) {
    scale_rows(p);
    return;
  }
  const Kernels<T>& kn = kernels<T>();
  const int nr = kn.nr;
  const Tiling tiling = choose_tiling(p.batch, p.M, p.N, p.K, kn.mr, nr);
  const int64_t row_tiles = (p.M + tiling.rows - 1) / tiling.rows;
  const int64_t col_tiles = (p.N + tiling.cols - 1) / tiling.cols;

  // Pack op(B) once when it is a transpose (it must be rearranged anyway), or when several row
  // tiles read it and the copy is modest; otherwise every tile packs its own chunks.
  thread_local std::vector<T> whole_store;
  const T* b_whole = nullptr;
  const int64_t per_item = (p.N + nr - 1) / nr * p.K * nr;
  const int64_t items = p.batch_stride_b == 0 ? 1 : p.batch;
  if (p.trans_b || (row_tiles >= 4 && per_item * items <= (int64_t(1) << 22))) {
    T* dst = scratch(whole_store, size_t(per_item * items));
    pack_b_whole(p, kn, items, dst);
    b_whole = dst;
  }

  parallel_for(p.batch * row_tiles * col_tiles, [&](int64_t task) {
    const int64_t bi = task / (row_tiles * col_tiles);
    const int64_t i0 = (task / col_tiles) % row_tiles * tiling.rows;
    const int64_t j0 = task % col_tiles * tiling.cols;
    const T* bw = b_whole ? b_whole + (p.batch_stride_b == 0 ? 0 : bi) * per_item : nullptr;
    run_tile(p, kn, bi, i0, std::min(p.M, i0 + tiling.rows), j0, std::min(p.N, j0 + tiling.cols), bw);
  });
  // A very large packed B is not worth keeping for the next call.
  if (whole_store.size() > (size_t(1) << 24)) std::vector<T>().swap(whole_store);
}

}  // namespace

template <typename T>
void gemm(const GemmParams<T>& p) {
  gemm_impl(p);
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  GemmParams<T> p;
  p.trans_a = trans_a, p.trans_b = trans_b, p.M = M, p.N = N, p.K = K, p.alpha = alpha, p.beta = beta;
  p.a = A, p.lda = lda, p.b = B, p.ldb = ldb, p.c = C, p.ldc = ldc;
  gemm_impl(p);
}

template <typename T>
void bias_add(int64_t rows, int64_t cols, const T* bias, T* y, int64_t ldy) {
  // y is [rows, cols]; a task per block of 64 rows (pure streaming, no reduction).
  const int64_t block = 64;
  parallel_for((rows + block - 1) / block, [&](int64_t t) {
    const int64_t r1 = std::min(rows, (t + 1) * block);
    for (int64_t i = t * block; i < r1; ++i) {
      T* yi = y + i * ldy;
      for (int64_t j = 0; j < cols; ++j) yi[j] += bias[j];
    }
  });
}

template <typename T>
void column_sum(int64_t rows, int64_t cols, const T* x, int64_t ldx, T* out, bool accumulate) {
  // x is [rows, cols]. Rows are summed in blocks of 128 (sequentially within a block), one task
  // per block writing its own partial row; the partials are then added in block order. Blocks
  // are fixed by `rows` alone, so the sum is the same for any thread count, and the error grows
  // with 128 + rows / 128 additions rather than with `rows`.
  const int64_t block = 128;
  const int64_t n_blocks = (rows + block - 1) / block;
  std::vector<T> partial(size_t(std::max<int64_t>(n_blocks, 1) * cols), T(0));
  parallel_for(n_blocks, [&](int64_t t) {
    T* s = partial.data() + t * cols;
    const int64_t r1 = std::min(rows, (t + 1) * block);
    for (int64_t i = t * block; i < r1; ++i) {
      const T* xi = x + i * ldx;
      for (int64_t j = 0; j < cols; ++j) s[j] += xi[j];
    }
  });
  for (int64_t j = 0; j < cols; ++j) {
    T total = n_blocks > 0 ? partial[j] : T(0);
    for (int64_t t = 1; t < n_blocks; ++t) total += partial[t * cols + j];
    out[j] = accumulate ? out[j] + total : total;
  }
}

template void gemm<float>(const GemmParams<float>&);
template void gemm<double>(const GemmParams<double>&);
template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);
template void bias_add<float>(int64_t, int64_t, const float*, float*, int64_t);
template void bias_add<double>(int64_t, int64_t, const double*, double*, int64_t);
template void column_sum<float>(int64_t, int64_t, const float*, int64_t, float*, bool);
template void column_sum<double>(int64_t, int64_t, const double*, int64_t, double*, bool);

}  // namespace luna
