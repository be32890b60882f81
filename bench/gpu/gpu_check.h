// The CUDA checks: every CUDA kernel against the float64 reference and the CPU kernel on the same
// inputs (validation), then timed on the device (benchmark). One executable, bench/gpu_check.cc,
// runs every family; each family lives in bench/gpu/check_<family>.cc and is listed in
// bench/gpu/families.h.
//
// Two builds: `gpu_check` links the real CUDA kernels (CMake with nvcc; bench/gpu-check.sh runs
// it on a GPU machine), `gpu_check_emu` links the same kernel sources compiled against the
// emulator in cuda/emu/ (CI runs its validation on every machine, so kernel logic is checked
// where there is no GPU; its timings mean nothing and it is run with --validate-only).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../native/runtime/cuda_api.h"

namespace luna::gpu_check {

// A device array of T: allocated from the library's caching allocator, freed on destruction.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : n_(n), ptr_(static_cast<T*>(cuda::device_alloc(n * sizeof(T)))) {}
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : n_(o.n_), ptr_(o.ptr_) { o.ptr_ = nullptr, o.n_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(n_, o.n_), std::swap(ptr_, o.ptr_);
    return *this;
  }
  ~DeviceArray() { cuda::device_free(ptr_); }

  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) { cuda::copy_to_device(ptr_, host.data(), n_ * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    cuda::copy_to_host(host.data(), ptr_, n_ * sizeof(T));
    return host;
  }
  // Fills with NaN (float) or 0xff bytes, so an element the kernel does not write shows.
  void poison() {
    std::vector<T> nan(n_, poison_value());
    upload(nan);
  }

 private:
  static T poison_value() {
    if constexpr (std::is_floating_point_v<T>) return std::numeric_limits<T>::quiet_NaN();
    else return T(~T(0));
  }
  size_t n_ = 0;
  T* ptr_ = nullptr;
};

// One timed device call at one shape: a row of the printed table.
struct Row {
  std::string family;  // "attention", "gemm", ...
  std::string kernel;  // "pack+unpack fwd"
  std::string shape;   // "B=4 n=4096 h=4 dh=64 l=16"
  double ms = 0;       // median of the timed calls
  double flops = 0;    // of one call (0: not meaningful)
  double bytes = 0;    // the fewest bytes one call must move (0: not meaningful)
  std::string anchor;  // the key of the PyTorch timing this row is compared with (may be empty)
};

struct Context {
  std::mt19937_64 rng;
  uint64_t seed = 0;
  bool validate_only = false;
  int reps = 20;
  int failures = 0;
  int cases = 0;
  std::vector<Row> rows;
  double copy_gbs = 0;    // measured device-to-device copy bandwidth
  double gemm_tflops = 0; // measured rate of our own sgemm at 4096^3 (there is no cuBLAS here)
  std::string only;       // run just this family (empty: all)

  std::vector<float> randn(size_t n, float sd = 1.0f) {
    std::normal_distribution<float> d(0.f, sd);
    std::vector<float> x(n);
    for (auto& v : x) v = d(rng);
    return x;
  }
  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> x(n);
    for (auto& v : x) v = d(rng);
    return x;
  }
  // A key-padding mask [B, len] with about `fraction` of the keys masked, never a whole row.
  std::vector<uint8_t> mask(int64_t B, int64_t len, double fraction) {
    std::bernoulli_distribution d(fraction);
    std::vector<uint8_t> m(size_t(B * len));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < len; ++j) m[b * len + j] = d(rng);
      m[b * len + std::uniform_int_distribution<int64_t>(0, len - 1)(rng)] = 0;
    }
    return m;
  }
};

// max |a - truth|, NaN counting as infinitely wrong.
double max_abs_diff(const std::vector<float>& a, const std::vector<double>& truth);
double max_abs(const std::vector<double>& x);

// The project's accuracy policy (design.md): the CUDA result's error against the float64 truth
// must be at most `factor` (2 forward, 3 backward) times the error of a plain float32
// implementation of the same math, plus 4 float32 ulps of the largest value (for outputs that are
// exact in float32). Prints and counts a failure; returns whether it passed.
bool expect_policy(Context& ctx, const std::string& what, const std::vector<float>& cuda,
                   const std::vector<float>& plain, const std::vector<double>& truth, double factor);

// Exact agreement (integer outputs, masks, copies): prints and counts a failure.
bool expect_equal(Context& ctx, const std::string& what, const std::vector<float>& cuda, const std::vector<float>& cpu);

// Agreement within `tol` (relative to max(1, |cpu|)), for results with no float64 reference.
bool expect_close(Context& ctx, const std::string& what, const std::vector<float>& cuda, const std::vector<float>& cpu, double tol);

// Times `fn` (which queues device work): one warm-up call, then the median of ctx.reps calls,
// each one synchronised, in milliseconds. Adds a row to the table unless validating only.
void time_row(Context& ctx, Row row, const std::function<void()>& fn);

// The families: each validates its kernels (small and odd shapes, masks, tied/untied, ...) and,
// unless validate_only, times them at the shapes of the performance goals.
struct Family {
  const char* name;
  void (*validate)(Context&);
  void (*bench)(Context&);
};

}  // namespace luna::gpu_check
