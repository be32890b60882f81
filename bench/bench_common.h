// What the native benchmarks share: timing (warm-up, median), random inputs, error maxima, and
// OpenBLAS loaded at run time through dlopen, to measure the machine's sgemm peak and to run the
// same products PyTorch runs here. Header-only: each bench is one translation unit.
#pragma once

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../native/runtime/thread_pool.h"

namespace luna::bench {

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median of `reps` timed calls after one untimed warm-up call.
inline double median_ms(int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_ms();
    fn();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

inline std::vector<float> randn(size_t n, std::mt19937_64& rng, float sd = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// max |a - ref|; a NaN anywhere counts as infinitely wrong.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<double>& ref) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - ref[i]);
    m = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(m, d);
  }
  return m;
}

// cblas_sgemm, row-major constants.
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// OpenBLAS's cblas_sgemm set to our thread count, or nullptr when no OpenBLAS can be loaded.
inline Sgemm load_openblas(std::string& name) {
  using SetThreads = void (*)(int);
  for (const char* lib : {"libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.3.21.so"}) {
    void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    auto sgemm = reinterpret_cast<Sgemm>(dlsym(h, "cblas_sgemm"));
    auto set_threads = reinterpret_cast<SetThreads>(dlsym(h, "openblas_set_num_threads"));
    if (!sgemm) continue;
    if (set_threads) set_threads(num_threads());
    name = lib;
    return sgemm;
  }
  return nullptr;
}

// GFLOP/s of OpenBLAS on a 2048^3 product: the peak the benches report fractions of.
inline double openblas_peak(Sgemm sgemm, int reps) {
  const int n = 2048;
  std::mt19937_64 rng(1);
  std::vector<float> a = randn(size_t(n) * n, rng), b = randn(size_t(n) * n, rng), c(size_t(n) * n);
  const double ms = median_ms(reps, [&] {
    sgemm(kRowMajor, kNoTrans, kNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  return 2.0 * n * n * double(n) / ms / 1e6;
}

// The flags every bench takes: --validate-only, --reps N, --threads N.
struct Flags {
  bool validate_only = false;
  int reps = 5;
};

inline Flags parse_flags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--validate-only")) f.validate_only = true;
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) f.reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) set_num_threads(std::atoi(argv[++i]));
  }
  return f;
}

}  // namespace luna::bench
