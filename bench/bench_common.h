// What the native benchmarks share: timing (warm-up, median and minimum), random inputs, error
// maxima, the machine's two peaks measured in the same run (sgemm GFLOP/s through OpenBLAS,
// loaded at run time with dlopen, and streaming-copy GB/s), inputs rotated so they do not sit in
// cache, the printed table row, and the JSON recorder behind `--json FILE`.
// Header-only: each bench is one translation unit. bench/README.md says how to read the numbers.
#pragma once

#include <dlfcn.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../native/kernels/gemm.h"
#include "../native/runtime/cpu_features.h"
#include "../native/runtime/thread_pool.h"

namespace luna::bench {

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median and fastest of `reps` timed calls. The median is the number we report (robust to a
// neighbour's burst on a shared machine); the minimum says how much noise there was.
struct Timing {
  double median = 0, min = 0;
  int reps = 0;
};

// Times fn(i) for i = 0, 1, 2, ... cycling through [0, sets): one untimed pass over every set
// first (it pages the buffers in and warms the code), then `reps` timed calls.
inline Timing time_rotated(int reps, int sets, const std::function<void(int)>& fn) {
  sets = std::max(1, sets);
  for (int s = 0; s < sets; ++s) fn(s);
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_ms();
    fn(r % sets);
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front(), reps};
}

inline Timing time_ms(int reps, const std::function<void()>& fn) {
  return time_rotated(reps, 1, [&](int) { fn(); });
}

// Median of `reps` timed calls after one untimed warm-up call.
inline double median_ms(int reps, const std::function<void()>& fn) { return time_ms(reps, fn).median; }

// The validation seed: LUNA_BENCH_SEED when set (to replay a printed seed exactly), else fresh
// from the system, so that every run checks new random inputs.
inline uint64_t validation_seed() {
  const char* fixed = std::getenv("LUNA_BENCH_SEED");
  if (fixed && *fixed) return std::strtoull(fixed, nullptr, 10);
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
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

// ---- inputs rotated out of the cache ------------------------------------------------------------

// The last-level cache one core sees, in bytes. LUNA_BENCH_LLC_MB overrides. Linux's sysfs says
// it on bare metal; inside a VM it is often missing and cpuid (sysconf) may report the whole
// socket's L3 (500 MiB on the EPYC VMs we use, where one core really sees its chiplet's 32 MiB),
// so a value from sysconf is capped at 64 MiB: no x86 core today sees more than 96 MiB.
inline double llc_bytes() {
  if (const char* env = std::getenv("LUNA_BENCH_LLC_MB")) {
    if (std::atof(env) > 0) return std::atof(env) * (1 << 20);
  }
  if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
    long kib = 0;
    const bool ok = std::fscanf(f, "%ldK", &kib) == 1 && kib > 0;
    std::fclose(f);
    if (ok) return double(kib) * 1024;
  }
#ifdef _SC_LEVEL3_CACHE_SIZE
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return std::min(double(l3), 64.0 * (1 << 20));
#endif
  return 32.0 * (1 << 20);
}

// How many copies of a working set of `bytes` (inputs and outputs of one call) to cycle through
// so that, by the time a copy comes round again, twice the LLC has streamed past and evicted
// it. In a real layer other tensors flow between two uses of one, so a kernel whose inputs stay
// cache-resident from the previous repetition would be timed faster than it ever runs.
inline int rotation_sets(double bytes) {
  if (bytes <= 0) return 1;
  return int(std::clamp(std::ceil(2 * llc_bytes() / bytes), 1.0, 64.0));
}

// `sets` copies of x, one per rotation set.
template <typename T>
std::vector<std::vector<T>> replicate(const std::vector<T>& x, int sets) {
  return std::vector<std::vector<T>>(size_t(std::max(1, sets)), x);
}

// ---- the flop peak: OpenBLAS sgemm, else our own GEMM ------------------------------------------

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

// The flop peak: the best of `reps` sgemm calls at 2048^3, by OpenBLAS (the library PyTorch
// calls here) when it loads, else by our own GEMM, which makes every flop fraction relative to
// ourselves. Peaks are best-of (as STREAM reports) while kernels are medians: on a shared
// machine a neighbour's burst must not lower the peak and flatter every fraction.
inline double flop_peak(int reps, std::string& source) {
  const int n = 2048;
  std::mt19937_64 rng(1);
  std::vector<float> a = randn(size_t(n) * n, rng), b = randn(size_t(n) * n, rng), c(size_t(n) * n);
  std::string lib;
  Sgemm sgemm = load_openblas(lib);
  const Timing t = time_ms(reps, [&] {
    if (sgemm) sgemm(kRowMajor, kNoTrans, kNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    else gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  });
  if (sgemm) {
    source = "OpenBLAS cblas_sgemm 2048^3, best of " + std::to_string(reps) + " (" + lib + ")";
    // OpenBLAS reads this when it loads; OPENBLAS_CORETYPE=Haswell caps it at AVX2 on an
    // AVX-512 machine, so say so (bench/run-all.mjs runs the benches without it).
    if (const char* ct = std::getenv("OPENBLAS_CORETYPE")) source += std::string(", OPENBLAS_CORETYPE=") + ct + " set";
  } else {
    source = "OpenBLAS not found: our own GEMM 2048^3, best of " + std::to_string(reps) +
             ", so flop fractions are relative to ourselves";
  }
  return 2.0 * n * n * double(n) / t.min / 1e6;
}

// ---- the bandwidth peak: a streaming copy much larger than the LLC -------------------------------

// Regular vector loads and stores, as our kernels do them. Written with SSE2 intrinsics (every
// x86-64 has them) because compilers turn a plain copy loop into a call to memcpy.
inline void plain_copy(const float* src, float* dst, int64_t n) {
  int64_t i = 0;
#ifdef __SSE2__
  for (; i + 16 <= n; i += 16) {
    const __m128 a = _mm_loadu_ps(src + i), b = _mm_loadu_ps(src + i + 4), c = _mm_loadu_ps(src + i + 8),
                 d = _mm_loadu_ps(src + i + 12);
    _mm_storeu_ps(dst + i, a);
    _mm_storeu_ps(dst + i + 4, b);
    _mm_storeu_ps(dst + i + 8, c);
    _mm_storeu_ps(dst + i + 12, d);
  }
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// GB/s of copying a buffer of 4x the LLC (at least 256 MiB) into another, counting the bytes
// read plus the bytes written, every bench thread copying its own slice; the best of `reps`.
// Two ways, the better one kept: glibc's memcpy in 64 KiB pieces (the C library's best, which
// may avoid reading the destination before writing it) and a plain loop; `source` gives both.
inline double copy_bandwidth_peak(int reps, std::string& source) {
  const int64_t n = int64_t(std::max(4 * llc_bytes(), 256.0 * (1 << 20)) / sizeof(float));
  std::vector<float> src(size_t(n), 1.0f), dst(size_t(n), 0.0f);
  const int threads = num_threads();
  auto run = [&](bool use_memcpy) {
    parallel_for(threads, [&](int64_t t) {
      const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
      if (!use_memcpy) return plain_copy(src.data() + begin, dst.data() + begin, end - begin);
      for (int64_t i = begin; i < end; i += 16384)
        std::memcpy(dst.data() + i, src.data() + i, size_t(std::min<int64_t>(16384, end - i)) * sizeof(float));
    });
  };
  const double bytes = 2.0 * n * sizeof(float);
  const double by_memcpy = bytes / time_ms(reps, [&] { run(true); }).min / 1e6;
  const double by_loop = bytes / time_ms(reps, [&] { run(false); }).min / 1e6;
  char text[200];
  std::snprintf(text, sizeof text,
                "copy %.0f MiB -> %.0f MiB, read+write, %d threads, best of %d: memcpy %.1f, plain loop %.1f GB/s",
                n * 4.0 / (1 << 20), n * 4.0 / (1 << 20), threads, reps, by_memcpy, by_loop);
  source = text;
  return std::max(by_memcpy, by_loop);
}

struct Peaks {
  double gflops = 0;  // sgemm GFLOP/s
  std::string flop_source;
  double gbs = 0;     // streaming copy GB/s
  std::string bw_source;
};

inline Peaks measure_peaks(int reps) {
  Peaks p;
  // Both are cheap (well under a second), so take enough tries to catch a quiet moment.
  p.gflops = flop_peak(std::max(reps, 5), p.flop_source);
  p.gbs = copy_bandwidth_peak(std::max(2 * reps, 10), p.bw_source);
  std::printf("flop peak: %.1f GFLOP/s [%s]\n", p.gflops, p.flop_source.c_str());
  std::printf("bandwidth peak: %.1f GB/s [%s]\n", p.gbs, p.bw_source.c_str());
  return p;
}

// The 1-minute load average when the bench started (the first call; parse_flags makes it):
// these machines are shared, and a run made while a neighbour was busy reads slower, peaks too.
inline double start_load_average() {
  static const double load = [] {
    double l = -1;
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
      if (std::fscanf(f, "%lf", &l) != 1) l = -1;
      std::fclose(f);
    }
    return l;
  }();
  return load;
}

// ---- flags ----------------------------------------------------------------------------------------

// The flags every bench takes: --validate-only, --reps N, --threads N, --json FILE.
struct Flags {
  bool validate_only = false;
  int reps = 5;
  std::string json;  // where to write the records, or empty
};

inline Flags parse_flags(int argc, char** argv) {
  start_load_average();
  Flags f;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--validate-only")) f.validate_only = true;
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) f.reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) set_num_threads(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) f.json = argv[++i];
  }
  return f;
}

// ---- records, the printed table and the JSON file -------------------------------------------------

// One timed kernel call (or group of calls) at one shape.
struct Record {
  Record() = default;
  Record(std::string k, std::string s, std::string p = "") : kernel(std::move(k)), shape(std::move(s)), params(std::move(p)) {}

  std::string kernel;            // e.g. "layer_norm_fwd"
  std::string shape;             // e.g. "[16384,256]"
  std::string params;            // whatever else changes the work ("p=0.1", "l=64"), may be empty
  std::string dtype = "float32";
  Timing t;
  double flops = 0;              // floating-point operations of one call; 0: not meaningful
  double bytes = 0;              // the fewest bytes one call must read and write
  double max_err = std::numeric_limits<double>::quiet_NaN();  // max |fast - float64 ref|; NaN: not measured
  std::vector<std::pair<std::string, double>> extra;  // bench-specific numbers, written as given
};

inline std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += char(c);
    else if (c == '\n') out += "\\n";
    else if (c < 0x20) {
      char u[8];
      std::snprintf(u, sizeof u, "\\u%04x", c);
      out += u;
    } else out += char(c);
  }
  return out + "\"";
}

// JSON has no NaN or Infinity: those become null.
inline std::string json_num(double x) {
  if (!std::isfinite(x)) return "null";
  char b[32];
  std::snprintf(b, sizeof b, "%.8g", x);
  return b;
}

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t start = line.find_first_not_of(" \t", line.find(':') + 1);
      if (line.find(':') != std::string::npos && start != std::string::npos) return line.substr(start);
    }
  }
  return "unknown";
}


inline std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

// Collects the records of one bench run, prints each as a table row as it comes, and writes
// them with the machine's description to the --json file.
class Report {
 public:
  Report(std::string bench, Flags flags, Peaks peaks)
      : bench_(std::move(bench)), flags_(std::move(flags)), peaks_(std::move(peaks)) {}

  // A titled table header; rows follow through add().
  void header(const std::string& title) const {
    std::printf("\n%s\n%-24s %-24s %9s %9s %8s %7s %7s %9s\n", title.c_str(), "kernel", "shape", "ms", "GFLOP/s",
                "GB/s", "%flop", "%bw", "max err");
  }

  // Fills in the rates and fractions, prints the row and keeps the record.
  void add(Record r) {
    const double s = r.t.median / 1e3;
    const double gflops = r.flops > 0 ? r.flops / s / 1e9 : NAN, gbs = r.bytes > 0 ? r.bytes / s / 1e9 : NAN;
    auto cell = [](double x, const char* fmt) {
      char b[32];
      if (!std::isfinite(x)) return std::string("-");
      std::snprintf(b, sizeof b, fmt, x);
      return std::string(b);
    };
    const std::string shape = r.params.empty() ? r.shape : r.shape + " " + r.params;
    std::printf("%-24s %-24s %9.3f %9s %8s %7s %7s %9s\n", r.kernel.c_str(), shape.c_str(), r.t.median,
                cell(gflops, "%.1f").c_str(), cell(gbs, "%.1f").c_str(), cell(100 * gflops / peaks_.gflops, "%.1f%%").c_str(),
                cell(100 * gbs / peaks_.gbs, "%.1f%%").c_str(), cell(r.max_err, "%.2g").c_str());
    char row[1024];
    std::snprintf(row, sizeof row,
                  "{\"bench\":%s,\"kernel\":%s,\"shape\":%s,\"params\":%s,\"dtype\":%s,\"isa\":%s,\"threads\":%d,"
                  "\"ms_median\":%s,\"ms_min\":%s,\"reps\":%d,\"flops\":%s,\"bytes\":%s,\"gflops\":%s,\"gbs\":%s,"
                  "\"frac_flop_peak\":%s,\"frac_bw_peak\":%s,\"max_err\":%s",
                  json_str(bench_).c_str(), json_str(r.kernel).c_str(), json_str(r.shape).c_str(),
                  json_str(r.params).c_str(), json_str(r.dtype).c_str(), json_str(isa_name(active_isa())).c_str(),
                  num_threads(), json_num(r.t.median).c_str(), json_num(r.t.min).c_str(), r.t.reps,
                  json_num(r.flops > 0 ? r.flops : NAN).c_str(), json_num(r.bytes > 0 ? r.bytes : NAN).c_str(),
                  json_num(gflops).c_str(), json_num(gbs).c_str(), json_num(gflops / peaks_.gflops).c_str(),
                  json_num(gbs / peaks_.gbs).c_str(), json_num(r.max_err).c_str());
    std::string json = row;
    if (!r.extra.empty()) {
      json += ",\"extra\":{";
      for (size_t i = 0; i < r.extra.size(); ++i)
        json += (i ? "," : "") + json_str(r.extra[i].first) + ":" + json_num(r.extra[i].second);
      json += "}";
    }
    records_.push_back(json + "}");
  }

  // Writes the --json file, when one was asked for. False (and a message) if it cannot.
  bool write() const {
    if (flags_.json.empty()) return true;
    const char* commit = std::getenv("LUNA_BENCH_COMMIT");
    std::string out = "{\"bench\":" + json_str(bench_) + ",\"date\":" + json_str(utc_now()) +
                      ",\"commit\":" + (commit && *commit ? json_str(commit) : "null") + ",\"machine\":{\"cpu\":" +
                      json_str(cpu_model()) + ",\"cores\":" + std::to_string(std::thread::hardware_concurrency()) +
                      ",\"threads\":" + std::to_string(num_threads()) + ",\"isa\":" + json_str(isa_name(active_isa())) +
                      ",\"llc_mib\":" + json_num(llc_bytes() / (1 << 20)) + ",\"loadavg\":" + json_num(start_load_average()) +
                      "},\"peaks\":{\"gflops\":" +
                      json_num(peaks_.gflops) + ",\"flop_source\":" + json_str(peaks_.flop_source) +
                      ",\"gbs\":" + json_num(peaks_.gbs) + ",\"bw_source\":" + json_str(peaks_.bw_source) +
                      "},\"records\":[\n";
    for (size_t i = 0; i < records_.size(); ++i) out += records_[i] + (i + 1 < records_.size() ? ",\n" : "\n");
    out += "]}\n";
    std::ofstream f(flags_.json);
    f << out;
    if (!f.good()) {
      std::fprintf(stderr, "cannot write %s\n", flags_.json.c_str());
      return false;
    }
    return true;
  }

  const Peaks& peaks() const { return peaks_; }

 private:
  std::string bench_;
  Flags flags_;
  Peaks peaks_;
  std::vector<std::string> records_;
};

}  // namespace luna::bench
