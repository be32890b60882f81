// The CUDA check (bench/gpu/gpu_check.h says what it is): validates every CUDA kernel family
// against the float64 reference and the CPU kernels, then (unless --validate-only) times them.
//
//   gpu_check [--validate-only] [--family NAME] [--reps N] [--json FILE]
//
// LUNA_BENCH_SEED=N fixes the seed of the random inputs (it is printed, so a failure can be
// reproduced). Exits non-zero if any check failed.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "gpu/families.h"

namespace luna::gpu_check {

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& truth) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (double(a[i]) == truth[i]) continue;  // equal values, infinities included (an LSE of -inf)
    const double d = std::fabs(double(a[i]) - truth[i]);
    if (std::isnan(d)) {
      // NaN where the truth is NaN too is agreement (none of our kernels should produce it);
      // anywhere else it is infinitely wrong.
      if (!(std::isnan(double(a[i])) && std::isnan(truth[i]))) return std::numeric_limits<double>::infinity();
      continue;
    }
    m = std::max(m, d);
  }
  return m;
}

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double v : x)
    if (std::isfinite(v)) m = std::max(m, std::fabs(v));
  return m;
}

bool expect_policy(Context& ctx, const std::string& what, const std::vector<float>& cuda, const std::vector<float>& plain,
                   const std::vector<double>& truth, double factor) {
  ++ctx.cases;
  constexpr double kUlp32 = 1.0 / (1 << 23);
  if (cuda.size() != truth.size() || plain.size() != truth.size()) {
    std::printf("  FAIL %s: sizes differ (cuda %zu, plain %zu, truth %zu)\n", what.c_str(), cuda.size(), plain.size(),
                truth.size());
    ++ctx.failures;
    return false;
  }
  const double ec = max_abs_diff(cuda, truth), ep = max_abs_diff(plain, truth);
  const double bound = factor * ep + 4 * kUlp32 * max_abs(truth);
  if (!(ec <= bound)) {
    std::printf("  FAIL %s: err %.3g > bound %.3g (plain float32 err %.3g, factor %g)\n", what.c_str(), ec, bound, ep, factor);
    ++ctx.failures;
    return false;
  }
  return true;
}

bool expect_equal(Context& ctx, const std::string& what, const std::vector<float>& cuda, const std::vector<float>& cpu) {
  ++ctx.cases;
  bool same = cuda.size() == cpu.size();
  size_t at = 0;
  for (; same && at < cuda.size(); ++at)
    if (std::memcmp(&cuda[at], &cpu[at], sizeof(float)) != 0) same = false;
  if (!same) {
    if (cuda.size() != cpu.size()) std::printf("  FAIL %s: sizes differ (%zu vs %zu)\n", what.c_str(), cuda.size(), cpu.size());
    else std::printf("  FAIL %s: element %zu differs (cuda %.9g, cpu %.9g)\n", what.c_str(), at - 1, cuda[at - 1], cpu[at - 1]);
    ++ctx.failures;
  }
  return same;
}

bool expect_close(Context& ctx, const std::string& what, const std::vector<float>& cuda, const std::vector<float>& cpu, double tol) {
  ++ctx.cases;
  if (cuda.size() != cpu.size()) {
    std::printf("  FAIL %s: sizes differ (%zu vs %zu)\n", what.c_str(), cuda.size(), cpu.size());
    ++ctx.failures;
    return false;
  }
  for (size_t i = 0; i < cuda.size(); ++i) {
    const double d = std::fabs(double(cuda[i]) - cpu[i]);
    if (!(d <= tol * std::max(1.0, std::fabs(double(cpu[i]))))) {
      std::printf("  FAIL %s: element %zu: cuda %.9g vs cpu %.9g (tolerance %g)\n", what.c_str(), i, cuda[i], cpu[i], tol);
      ++ctx.failures;
      return false;
    }
  }
  return true;
}

void time_row(Context& ctx, Row row, const std::function<void()>& fn) {
  if (ctx.validate_only) return;
  fn();
  cuda::synchronize();
  std::vector<double> t;
  for (int r = 0; r < ctx.reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    cuda::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  row.ms = t[t.size() / 2];
  std::printf("  %-28s %-36s %9.3f ms", row.kernel.c_str(), row.shape.c_str(), row.ms);
  if (row.bytes > 0) std::printf("  %8.1f GB/s", row.bytes / row.ms / 1e6);
  if (row.flops > 0) std::printf("  %7.2f TFLOP/s", row.flops / row.ms / 1e9);
  std::printf("\n");
  ctx.rows.push_back(std::move(row));
}

namespace {

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

void write_json(const Context& ctx, const std::string& file, const cuda::DeviceInfo& dev) {
  std::ofstream f(file);
  f << "{\n  \"device\": \"" << json_escape(dev.name) << "\",\n  \"emulated\": " << (dev.emulated ? "true" : "false")
    << ",\n  \"seed\": " << ctx.seed << ",\n  \"cases\": " << ctx.cases << ",\n  \"failures\": " << ctx.failures
    << ",\n  \"copy_gbs\": " << ctx.copy_gbs << ",\n  \"gemm_tflops\": " << ctx.gemm_tflops << ",\n  \"rows\": [";
  for (size_t i = 0; i < ctx.rows.size(); ++i) {
    const Row& r = ctx.rows[i];
    f << (i ? ",\n" : "\n") << "    {\"family\": \"" << json_escape(r.family) << "\", \"kernel\": \"" << json_escape(r.kernel)
      << "\", \"shape\": \"" << json_escape(r.shape) << "\", \"ms\": " << r.ms << ", \"flops\": " << r.flops
      << ", \"bytes\": " << r.bytes << ", \"anchor\": \"" << json_escape(r.anchor) << "\"}";
  }
  f << "\n  ]\n}\n";
}

}  // namespace

}  // namespace luna::gpu_check

int main(int argc, char** argv) {
  using namespace luna::gpu_check;
  Context ctx;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--validate-only")) ctx.validate_only = true;
    else if (!std::strcmp(argv[i], "--family") && i + 1 < argc) ctx.only = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) ctx.reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--validate-only] [--family NAME] [--reps N] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  const char* fixed = std::getenv("LUNA_BENCH_SEED");
  std::random_device rd;
  ctx.seed = fixed && *fixed ? std::strtoull(fixed, nullptr, 10) : (uint64_t(rd()) << 32) ^ rd();
  ctx.rng.seed(ctx.seed);
  luna::cuda::DeviceInfo dev;
  try {
    dev = luna::cuda::device_info();
  } catch (const luna::cuda::CudaError& e) {
    std::printf("no usable CUDA device: %s\n", e.what());
    return 1;
  }
  std::printf("device: %s (sm_%d%d, %d SMs, %.1f GiB)%s; seed %llu (LUNA_BENCH_SEED reproduces it)\n", dev.name.c_str(),
              dev.major, dev.minor, dev.multiprocessors, dev.total_memory / 1073741824.0,
              dev.emulated ? " [emulator: timings are meaningless]" : "", static_cast<unsigned long long>(ctx.seed));
  bool known = ctx.only.empty();
  for (const Family& f : kFamilies) {
    if (!ctx.only.empty() && ctx.only != f.name) continue;
    known = true;
    const int before = ctx.failures, cases_before = ctx.cases;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      f.validate(ctx);
      if (!ctx.validate_only) f.bench(ctx);
    } catch (const std::exception& e) {
      std::printf("  FAIL %s: exception: %s\n", f.name, e.what());
      ++ctx.failures;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: %d checks, %d failed (%.1f s)\n", f.name, ctx.cases - cases_before, ctx.failures - before, s);
    std::fflush(stdout);
  }
  if (!known) {
    std::fprintf(stderr, "unknown family %s\n", ctx.only.c_str());
    return 2;
  }
  if (!json.empty()) write_json(ctx, json, dev);
  std::printf("gpu_check: %d checks, %d failed (seed %llu)\n", ctx.cases, ctx.failures,
              static_cast<unsigned long long>(ctx.seed));
  return ctx.failures == 0 ? 0 : 1;
}
