// The CPU side of the optimizer kernels (optim_kernels.h): the per-element functions of the
// header applied over chunks of the arrays on the thread pool, and the gradient-norm reductions.
//
// On a CPU with AVX2 the updates run four elements at a time in AVX registers (float64 lanes).
// Every vector operation used (convert, add, sub, mul, div, sqrt) is the correctly rounded IEEE
// operation its scalar counterpart is, in the same order and with no fused multiply-add, so the
// vector path gives the scalar path's bits; only the speed differs (the updates are bound by
// float64 divisions and square roots, which the compiler does not vectorise on its own because
// sqrt may set errno).
#include "optim_kernels.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "../runtime/cpu_features.h"
#include "../runtime/thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LUNA_OPTIM_AVX2 1
// AVX2 without FMA on purpose: no multiply-add can be formed, whatever the flags.
#define TARGET_AVX2 __attribute__((target("avx2")))
#endif

namespace luna {

namespace {

// Elements per task. An update touches 3 to 4 arrays per element, so a chunk is 256 KiB to
// 1 MiB of traffic: large enough that a task outweighs its scheduling, small enough that a
// model's big matrices spread over every thread.
constexpr int64_t kChunk = 1 << 15;

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs body(begin, end) over [0, n) in kChunk pieces; small arrays run on the calling thread.
template <typename F>
void for_chunks(int64_t n, const F& body) {
  if (n <= kChunk) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  parallel_for(div_up(n, kChunk), [&](int64_t t) {
    const int64_t begin = t * kChunk;
    body(begin, std::min(n, begin + kChunk));
  });
}

// The reduction of one chunk, accumulated in float64. Four running accumulators over
// interleaved elements (combined in a fixed order at the end) let the adds overlap; the order
// depends only on the chunk, never on the thread that runs it.
template <typename T>
double reduce_chunk(const T* x, int64_t n, NormKind kind, double p) {
  using namespace optim_math;
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  switch (kind) {
    case NormKind::SumSquares:
      for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; ++k) acc[k] += double(x[i + k]) * double(x[i + k]);
      for (; i < n; ++i) acc[0] += double(x[i]) * double(x[i]);
      break;
    case NormKind::SumAbs:
      for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; ++k) acc[k] += std::fabs(double(x[i + k]));
      for (; i < n; ++i) acc[0] += std::fabs(double(x[i]));
      break;
    case NormKind::SumPowAbs:
      for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; ++k) acc[k] += std::pow(std::fabs(double(x[i + k])), p);
      for (; i < n; ++i) acc[0] += std::pow(std::fabs(double(x[i])), p);
      break;
    case NormKind::MaxAbs: {
      double m = 0;
      for (; i < n; ++i) m = nan_max(m, std::fabs(double(x[i])));
      return m;
    }
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

#if defined(LUNA_OPTIM_AVX2)
// Four elements of T as float64 lanes, and back (rounded to T: the store of the JS loop).
TARGET_AVX2 inline __m256d load4(const float* x) { return _mm256_cvtps_pd(_mm_loadu_ps(x)); }
TARGET_AVX2 inline __m256d load4(const double* x) { return _mm256_loadu_pd(x); }
TARGET_AVX2 inline void store4(float* x, __m256d v) { _mm_storeu_ps(x, _mm256_cvtpd_ps(v)); }
TARGET_AVX2 inline void store4(double* x, __m256d v) { _mm256_storeu_pd(x, v); }
// v rounded to T and widened again: the value a later read of the stored element sees.
TARGET_AVX2 inline __m256d round_to(float*, __m256d v) { return _mm256_cvtps_pd(_mm256_cvtpd_ps(v)); }
TARGET_AVX2 inline __m256d round_to(double*, __m256d v) { return v; }

// adam_element over [begin, end) four at a time; the scalar function takes the tail.
template <typename T>
TARGET_AVX2 void adam_avx2(const optim_math::AdamScalars& s, const AdamParams<T>& p, int64_t begin, int64_t end) {
  const __m256d l2 = _mm256_set1_pd(s.l2), shrink = _mm256_set1_pd(s.shrink);
  const __m256d b1 = _mm256_set1_pd(s.beta1), omb1 = _mm256_set1_pd(s.one_minus_beta1);
  const __m256d b2 = _mm256_set1_pd(s.beta2), omb2 = _mm256_set1_pd(s.one_minus_beta2);
  const __m256d step = _mm256_set1_pd(s.step_size), bc2 = _mm256_set1_pd(s.bc2_sqrt), eps = _mm256_set1_pd(s.eps);
  const bool shrinks = s.shrink != 1.0;
  int64_t i = begin;
  for (; i + 4 <= end; i += 4) {
    __m256d x = load4(p.param + i);
    const __m256d g = _mm256_add_pd(load4(p.grad + i), _mm256_mul_pd(l2, x));
    if (shrinks) x = round_to(p.param, _mm256_mul_pd(x, shrink));
    const __m256d m = round_to(p.param, _mm256_add_pd(_mm256_mul_pd(b1, load4(p.exp_avg + i)), _mm256_mul_pd(omb1, g)));
    const __m256d v = round_to(p.param, _mm256_add_pd(_mm256_mul_pd(b2, load4(p.exp_avg_sq + i)),
                                                      _mm256_mul_pd(_mm256_mul_pd(omb2, g), g)));
    const __m256d denom = _mm256_add_pd(_mm256_div_pd(_mm256_sqrt_pd(v), bc2), eps);
    store4(p.param + i, _mm256_sub_pd(x, _mm256_div_pd(_mm256_mul_pd(step, m), denom)));
    store4(p.exp_avg + i, m);
    store4(p.exp_avg_sq + i, v);
  }
  for (; i < end; ++i) optim_math::adam_element<T>(s, p.param[i], p.grad[i], p.exp_avg[i], p.exp_avg_sq[i]);
}

// sgd_momentum_element over [begin, end) four at a time.
template <typename T>
TARGET_AVX2 void sgd_momentum_avx2(const SgdParams<T>& p, double one_minus_dampening, int64_t begin, int64_t end) {
  const __m256d lr = _mm256_set1_pd(p.lr), wd = _mm256_set1_pd(p.weight_decay), mom = _mm256_set1_pd(p.momentum);
  const __m256d omd = _mm256_set1_pd(one_minus_dampening);
  int64_t i = begin;
  for (; i + 4 <= end; i += 4) {
    const __m256d x = load4(p.param + i);
    const __m256d g = _mm256_add_pd(load4(p.grad + i), _mm256_mul_pd(wd, x));
    const __m256d b = round_to(p.param, p.first_step ? g
                                                     : _mm256_add_pd(_mm256_mul_pd(mom, load4(p.momentum_buffer + i)),
                                                                     _mm256_mul_pd(omd, g)));
    const __m256d d = p.nesterov ? _mm256_add_pd(g, _mm256_mul_pd(mom, b)) : b;
    store4(p.momentum_buffer + i, b);
    store4(p.param + i, _mm256_sub_pd(x, _mm256_mul_pd(lr, d)));
  }
  for (; i < end; ++i)
    optim_math::sgd_momentum_element<T>(p.lr, p.weight_decay, p.momentum, one_minus_dampening, p.nesterov, p.first_step,
                                        p.param[i], p.grad[i], p.momentum_buffer[i]);
}

bool use_avx2() { return active_isa() != Isa::Generic; }
#endif

}  // namespace

template <typename T>
void adam_step(const AdamParams<T>& p) {
  const optim_math::AdamScalars s = optim_math::adam_scalars(p);
#if defined(LUNA_OPTIM_AVX2)
  if (use_avx2()) {
    for_chunks(p.n, [&](int64_t begin, int64_t end) { adam_avx2<T>(s, p, begin, end); });
    return;
  }
#endif
  for_chunks(p.n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      optim_math::adam_element<T>(s, p.param[i], p.grad[i], p.exp_avg[i], p.exp_avg_sq[i]);
  });
}

template <typename T>
void sgd_step(const SgdParams<T>& p) {
  if (p.momentum == 0) {
    for_chunks(p.n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) optim_math::sgd_plain_element<T>(p.lr, p.weight_decay, p.param[i], p.grad[i]);
    });
    return;
  }
  const double one_minus_dampening = 1.0 - p.dampening;
#if defined(LUNA_OPTIM_AVX2)
  if (use_avx2()) {
    for_chunks(p.n, [&](int64_t begin, int64_t end) { sgd_momentum_avx2<T>(p, one_minus_dampening, begin, end); });
    return;
  }
#endif
  for_chunks(p.n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      optim_math::sgd_momentum_element<T>(p.lr, p.weight_decay, p.momentum, one_minus_dampening, p.nesterov,
                                          p.first_step, p.param[i], p.grad[i], p.momentum_buffer[i]);
  });
}

// The arrays are cut into kChunk pieces (each array on its own, so a chunk never spans two),
// every piece is reduced by one task, and the pieces' results are combined in piece order.
template <typename T>
double norm_reduce(const NormParams<T>& p) {
  struct Piece {
    const T* x;
    int64_t n;
  };
  std::vector<Piece> pieces;
  for (int a = 0; a < p.count; ++a)
    for (int64_t begin = 0; begin < p.lengths[a]; begin += kChunk)
      pieces.push_back({p.xs[a] + begin, std::min(kChunk, p.lengths[a] - begin)});
  std::vector<double> partial(pieces.size(), 0.0);
  const auto run = [&](int64_t t) { partial[size_t(t)] = reduce_chunk(pieces[size_t(t)].x, pieces[size_t(t)].n, p.kind, p.p); };
  if (pieces.size() == 1) run(0);
  else if (!pieces.empty()) parallel_for(int64_t(pieces.size()), run);
  double total = 0;
  for (double v : partial) total = p.kind == NormKind::MaxAbs ? optim_math::nan_max(total, v) : total + v;
  return total;
}

template <typename T>
void scale_in_place(T* x, int64_t n, double scale) {
  for_chunks(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) x[i] = T(double(x[i]) * scale);
  });
}

template void adam_step<float>(const AdamParams<float>&);
template void adam_step<double>(const AdamParams<double>&);
template void sgd_step<float>(const SgdParams<float>&);
template void sgd_step<double>(const SgdParams<double>&);
template double norm_reduce<float>(const NormParams<float>&);
template double norm_reduce<double>(const NormParams<double>&);
template void scale_in_place<float>(float*, int64_t, double);
template void scale_in_place<double>(double*, int64_t, double);

}  // namespace luna
