// The runtime family of the CUDA check: the caching allocator, the copies and the errors of
// native/runtime/cuda_api.h (cuda/runtime.cu), before any kernel family relies on them.
//
// validate_runtime:
//   - the device: compute capability 7.5 or newer (nvcc 13 builds nothing older), SMs, memory;
//   - the allocator: aligned, non-overlapping blocks; a repeated alloc/free pattern is served
//     from the cache after its first round (memory_stats().device_mallocs stops growing), a
//     double free does not hand one block out twice, empty_cache gives every cached block back
//     (reserved == allocated afterwards), the peak follows allocations and reset_peak;
//   - copies host -> device -> device -> host are exact, at odd sizes and odd offsets; fill_zero
//     clears exactly its range; every zero-byte call (null pointers included: an empty tensor has
//     none) is a no-op;
//   - out of memory is a CudaError named cudaErrorMemoryAllocation (not an abort), after which
//     the device works as before; a request that fits only once the cache is emptied succeeds
//     (the allocator's retry). Under the emulator the device's memory is its budget,
//     LUNA_EMU_MEMORY_MB (cuda/emu/cuda_emu.cc), so the same requests work there.
// bench_runtime: device-to-device copy bandwidth (1 GiB, bytes read + written; the best of the
//   timed copies becomes ctx.copy_gbs, the bandwidth every memory-bound row is set against),
//   fill_zero, and the host copies from pageable memory (what data() and uploads cost).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "families.h"

namespace luna::gpu_check {

namespace {

constexpr size_t kMiB = size_t(1) << 20, kGiB = size_t(1) << 30;

bool check(Context& ctx, bool ok, const std::string& what) {
  ++ctx.cases;
  if (!ok) {
    std::printf("  FAIL runtime: %s\n", what.c_str());
    ++ctx.failures;
  }
  return ok;
}

std::vector<unsigned char> random_bytes(Context& ctx, size_t n) {
  std::vector<unsigned char> b(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t r = ctx.rng();
    std::memcpy(b.data() + i, &r, std::min<size_t>(8, n - i));
  }
  return b;
}

std::string mib(size_t bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f MiB", double(bytes) / kMiB);
  return s;
}

void check_device(Context& ctx, const cuda::DeviceInfo& dev) {
  check(ctx, cuda::compiled(), "compiled() is false in a CUDA build");
  check(ctx, !dev.name.empty(), "device_info(): empty device name");
  check(ctx, dev.major * 10 + dev.minor >= 75,
        "device_info(): compute capability " + std::to_string(dev.major) + "." + std::to_string(dev.minor) +
            " is below 7.5, which nothing here is built for");
  check(ctx, dev.multiprocessors > 0 && dev.total_memory > 0, "device_info(): no SMs or no memory reported");
  check(ctx, dev.shared_memory_per_block_optin >= 48 * 1024, "device_info(): under 48 KiB of shared memory per block");
}

// Blocks of a fixed pattern of sizes (odd ones, sizes on both sides of the allocator's rounding
// steps, two live blocks of one size), allocated and freed for `rounds` rounds.
void check_allocator(Context& ctx) {
  const std::vector<size_t> sizes = {1000, 4096, 4096, kMiB, kMiB + 1, 3 * kMiB + 17, 256, 1, 7 * kMiB};
  const size_t requested = std::accumulate(sizes.begin(), sizes.end(), size_t(0));
  const cuda::MemoryStats start = cuda::memory_stats();
  uint64_t mallocs_after_first = 0;
  for (int round = 0; round < 4; ++round) {
    std::vector<unsigned char*> blocks;
    for (size_t s : sizes) blocks.push_back(static_cast<unsigned char*>(cuda::device_alloc(s)));
    const cuda::MemoryStats held = cuda::memory_stats();
    bool aligned = true, disjoint = true;
    for (size_t i = 0; i < blocks.size(); ++i) {
      aligned &= blocks[i] != nullptr && reinterpret_cast<uintptr_t>(blocks[i]) % 256 == 0;
      for (size_t j = 0; j < i; ++j)
        disjoint &= blocks[i] + sizes[i] <= blocks[j] || blocks[j] + sizes[j] <= blocks[i];
    }
    check(ctx, aligned, "device_alloc: a block is null or not 256-byte aligned");
    check(ctx, disjoint, "device_alloc: two live blocks overlap");
    check(ctx, held.allocated_bytes >= start.allocated_bytes + requested,
          "memory_stats: allocated_bytes " + std::to_string(held.allocated_bytes) + " < " +
              std::to_string(start.allocated_bytes + requested) + " with the blocks live");
    check(ctx, held.reserved_bytes >= held.allocated_bytes, "memory_stats: reserved_bytes < allocated_bytes");
    // Each block holds its own byte value; a block handed out twice, or a copy into the wrong
    // place, shows when they are read back.
    for (size_t i = 0; i < blocks.size(); ++i) {
      std::vector<unsigned char> v(sizes[i], static_cast<unsigned char>(17 * i + round));
      cuda::copy_to_device(blocks[i], v.data(), v.size());
    }
    bool kept = true;
    for (size_t i = 0; i < blocks.size(); ++i) {
      std::vector<unsigned char> v(sizes[i]);
      cuda::copy_to_host(v.data(), blocks[i], v.size());
      kept &= std::all_of(v.begin(), v.end(), [&](unsigned char c) { return c == static_cast<unsigned char>(17 * i + round); });
    }
    check(ctx, kept, "device blocks do not keep what was written to them (round " + std::to_string(round) + ")");
    // Free in an order other than the allocation order.
    for (size_t i = 0; i < blocks.size(); ++i) cuda::device_free(blocks[(i * 5 + 3) % blocks.size()]);
    const cuda::MemoryStats freed = cuda::memory_stats();
    check(ctx, freed.allocated_bytes == start.allocated_bytes,
          "memory_stats: allocated_bytes " + std::to_string(freed.allocated_bytes) + " after freeing everything, was " +
              std::to_string(start.allocated_bytes));
    if (round == 0) {
      mallocs_after_first = freed.device_mallocs;
      check(ctx, freed.cached_blocks > 0, "the freed blocks were not cached");
    } else {
      check(ctx, freed.device_mallocs == mallocs_after_first,
            "the caching allocator called cudaMalloc again for a repeated pattern (round " + std::to_string(round) +
                ": " + std::to_string(freed.device_mallocs - mallocs_after_first) + " more)");
    }
  }

  // A double free must not put a block into the cache twice (two later requests would share it).
  void* p = cuda::device_alloc(12345);
  cuda::device_free(p);
  cuda::device_free(p);
  void* a = cuda::device_alloc(12345);
  void* b = cuda::device_alloc(12345);
  check(ctx, a != b && a && b, "after a double free, two live blocks are the same block");
  cuda::device_free(a);
  cuda::device_free(b);

  // empty_cache gives back every free block.
  const cuda::MemoryStats before = cuda::memory_stats();
  cuda::empty_cache();
  const cuda::MemoryStats after = cuda::memory_stats();
  check(ctx, after.cached_blocks == 0, "empty_cache: " + std::to_string(after.cached_blocks) + " blocks still cached");
  check(ctx, after.reserved_bytes == after.allocated_bytes,
        "empty_cache: reserved " + std::to_string(after.reserved_bytes) + " != allocated " +
            std::to_string(after.allocated_bytes));
  check(ctx, after.reserved_bytes < before.reserved_bytes && after.device_frees >= before.device_frees + before.cached_blocks,
        "empty_cache: nothing was given back (" + std::to_string(after.device_frees - before.device_frees) +
            " cudaFree calls for " + std::to_string(before.cached_blocks) + " cached blocks)");
  // ...so the same pattern now needs cudaMalloc again.
  {
    void* q = cuda::device_alloc(3 * kMiB + 17);
    check(ctx, cuda::memory_stats().device_mallocs > after.device_mallocs, "after empty_cache a request was served from a cache");
    cuda::device_free(q);
  }

  // The peak follows the allocations and reset_peak.
  cuda::reset_peak();
  const cuda::MemoryStats base = cuda::memory_stats();
  check(ctx, base.peak_allocated_bytes == base.allocated_bytes, "reset_peak: peak != allocated");
  const size_t big = 5 * kMiB + 3;
  void* x = cuda::device_alloc(big);
  void* y = cuda::device_alloc(1000);
  cuda::device_free(y);
  cuda::device_free(x);
  const cuda::MemoryStats peaked = cuda::memory_stats();
  check(ctx, peaked.peak_allocated_bytes >= base.allocated_bytes + big + 1000 &&
                 peaked.peak_allocated_bytes <= base.allocated_bytes + big + 1000 + 4 * kMiB,
        "peak_allocated_bytes " + std::to_string(peaked.peak_allocated_bytes) + " for " +
            std::to_string(base.allocated_bytes + big + 1000) + " held at once (rounding allowed)");
  cuda::reset_peak();
  check(ctx, cuda::memory_stats().peak_allocated_bytes == cuda::memory_stats().allocated_bytes,
        "reset_peak after freeing: peak != allocated");
}

void check_copies(Context& ctx) {
  // An odd size, odd offsets, and enough bytes to span several copy chunks of the driver.
  const size_t n = 9 * kMiB + 7;
  const std::vector<unsigned char> host = random_bytes(ctx, n);
  auto* a = static_cast<unsigned char*>(cuda::device_alloc(n));
  auto* b = static_cast<unsigned char*>(cuda::device_alloc(n + 64));
  cuda::copy_to_device(a, host.data(), n);
  cuda::copy_on_device(b, a, n);
  std::vector<unsigned char> back(n, 0);
  cuda::copy_to_host(back.data(), b, n);  // waits for the device-to-device copy queued before it
  check(ctx, back == host, "host -> device -> device -> host is not exact (" + mib(n) + ")");

  // Sub-ranges at unaligned offsets, device to device.
  const size_t from = 3, to = 61, len = 777777;
  cuda::copy_on_device(b + to, a + from, len);
  std::vector<unsigned char> part(len, 0);
  cuda::copy_to_host(part.data(), b + to, len);
  check(ctx, std::equal(part.begin(), part.end(), host.begin() + from),
        "copy_on_device at offsets 3 -> 61 is not exact");
  std::vector<unsigned char> head(to);
  cuda::copy_to_host(head.data(), b, to);
  check(ctx, std::equal(head.begin(), head.end(), host.begin()), "copy_on_device wrote before its destination range");

  // Host to device into an offset, device to host from an offset.
  cuda::copy_to_device(a + 5, host.data() + 1000, 4099);
  std::vector<unsigned char> odd(4099);
  cuda::copy_to_host(odd.data(), a + 5, 4099);
  check(ctx, std::equal(odd.begin(), odd.end(), host.begin() + 1000), "copy_to_device / copy_to_host at odd offsets");

  // fill_zero clears exactly its range.
  const std::vector<unsigned char> ones(n, 0xff);
  cuda::copy_to_device(a, ones.data(), n);
  const size_t z0 = 101, zn = 2 * kMiB + 13;
  cuda::fill_zero(a + z0, zn);
  cuda::copy_to_host(back.data(), a, n);
  bool zero_ok = true;
  for (size_t i = 0; i < n; ++i) zero_ok &= back[i] == ((i >= z0 && i < z0 + zn) ? 0 : 0xff);
  check(ctx, zero_ok, "fill_zero cleared other bytes than [101, 101 + 2 MiB + 13)");

  // Float arrays through DeviceArray: upload / download exact; poison shows as NaN.
  {
    const std::vector<float> v = ctx.randn(12345);
    DeviceArray<float> d(v);
    expect_equal(ctx, "runtime: DeviceArray<float> upload/download", d.download(), v);
    d.poison();
    const std::vector<float> p = d.download();
    check(ctx, std::all_of(p.begin(), p.end(), [](float f) { return std::isnan(f); }), "DeviceArray::poison left a non-NaN");
    DeviceArray<float> e(v.size());
    cuda::copy_on_device(e.get(), d.get(), 0);  // zero bytes: nothing happens
    cuda::fill_zero(e.get(), e.size() * sizeof(float));
    const std::vector<float> z = e.download();
    check(ctx, std::all_of(z.begin(), z.end(), [](float f) { return f == 0.f && !std::signbit(f); }),
          "fill_zero of a float array is not all +0");
  }

  // Zero-byte calls are no-ops, with null pointers too (an empty tensor owns none).
  const cuda::MemoryStats s0 = cuda::memory_stats();
  bool zero_calls = true;
  try {
    zero_calls &= cuda::device_alloc(0) == nullptr;
    cuda::device_free(nullptr);
    unsigned char h = 42;
    cuda::copy_to_device(nullptr, &h, 0);
    cuda::copy_to_device(a, nullptr, 0);
    cuda::copy_to_host(&h, nullptr, 0);
    cuda::copy_to_host(nullptr, a, 0);
    cuda::copy_on_device(nullptr, nullptr, 0);
    cuda::copy_on_device(b, a, 0);
    cuda::fill_zero(nullptr, 0);
    cuda::synchronize();
    zero_calls &= h == 42;
  } catch (const std::exception& e) {
    zero_calls = false;
    std::printf("  runtime: a zero-byte call threw: %s\n", e.what());
  }
  const cuda::MemoryStats s1 = cuda::memory_stats();
  check(ctx, zero_calls && s1.allocated_bytes == s0.allocated_bytes && s1.device_mallocs == s0.device_mallocs,
        "zero-byte allocations and copies are not no-ops");
  std::vector<unsigned char> still(n);
  cuda::copy_to_host(still.data(), a, n);
  check(ctx, still == back, "a zero-byte call changed device memory");
  cuda::device_free(a);
  cuda::device_free(b);
}

// `fn` must throw CudaError cudaErrorMemoryAllocation.
void expect_out_of_memory(Context& ctx, const std::string& what, const std::function<void()>& fn) {
  std::string got = "no error";
  try {
    fn();
  } catch (const cuda::CudaError& e) {
    got = e.name();
    if (got != "cudaErrorMemoryAllocation") got += " (" + std::string(e.what()) + ")";
  } catch (const std::exception& e) {
    got = std::string("a non-CUDA exception: ") + e.what();
  }
  check(ctx, got == "cudaErrorMemoryAllocation", what + ": expected CudaError cudaErrorMemoryAllocation, got " + got);
}

void check_out_of_memory(Context& ctx, const cuda::DeviceInfo& dev) {
  const cuda::MemoryStats s0 = cuda::memory_stats();
  expect_out_of_memory(ctx, "device_alloc(device memory + 1 GiB)", [&] {
    void* p = cuda::device_alloc(dev.total_memory + kGiB);
    cuda::device_free(p);
  });
  expect_out_of_memory(ctx, "DeviceArray<float> of 2^40 floats", [&] { DeviceArray<float> huge(size_t(1) << 40); });
  const cuda::MemoryStats s1 = cuda::memory_stats();
  check(ctx, s1.allocated_bytes == s0.allocated_bytes, "a failed allocation changed allocated_bytes");
  // The error is not sticky: the device works as before.
  try {
    const std::vector<float> v = ctx.randn(1000);
    DeviceArray<float> d(v);
    DeviceArray<float> e(v.size());
    cuda::copy_on_device(e.get(), d.get(), v.size() * sizeof(float));
    cuda::synchronize();
    expect_equal(ctx, "runtime: copies after an out-of-memory error", e.download(), v);
  } catch (const std::exception& e) {
    check(ctx, false, std::string("the device does not work after an out-of-memory error: ") + e.what());
  }

  // A request that fits only when the cache is given back: the allocator empties it and retries.
  // Needs 60% of the device free. Under the emulator the device memory is host memory that
  // cudaMalloc fills (slowly, page by page): only with a budget of 512 MiB or less
  // (bench/gpu-check.sh --emulator sets LUNA_EMU_MEMORY_MB=512).
  if (dev.emulated && dev.total_memory > 512 * kMiB) {
    std::printf("  runtime: emulator budget %.1f GiB: skipping the cache-retry allocation (LUNA_EMU_MEMORY_MB=512 runs it)\n",
                double(dev.total_memory) / kGiB);
    return;
  }
  const size_t first = dev.total_memory / 100 * 45, second = dev.total_memory / 100 * 60;
  try {
    void* p = cuda::device_alloc(first);
    cuda::device_free(p);  // cached, not given back
    const cuda::MemoryStats cached = cuda::memory_stats();
    void* q = cuda::device_alloc(second);  // does not fit beside the cached block
    const cuda::MemoryStats retried = cuda::memory_stats();
    cuda::device_free(q);
    check(ctx, retried.device_frees > cached.device_frees,
          "an allocation that fits only without the cached blocks succeeded without giving them back?");
  } catch (const std::exception& e) {
    check(ctx, false, "allocating " + mib(second) + " after freeing " + mib(first) +
                          " (the cache must be given back and the allocation retried): " + e.what());
  }
  cuda::empty_cache();
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void validate_runtime(Context& ctx) {
  const cuda::DeviceInfo dev = cuda::device_info();
  check_device(ctx, dev);
  check_allocator(ctx);
  check_copies(ctx);
  check_out_of_memory(ctx, dev);
  cuda::empty_cache();
  const cuda::MemoryStats s = cuda::memory_stats();
  std::printf("  runtime: after the checks %zu bytes allocated, %zu reserved, %llu cudaMalloc / %llu cudaFree calls\n",
              s.allocated_bytes, s.reserved_bytes, static_cast<unsigned long long>(s.device_mallocs),
              static_cast<unsigned long long>(s.device_frees));
}

void bench_runtime(Context& ctx) {
  {
    const size_t n = kGiB;
    DeviceArray<unsigned char> src(n), dst(n);
    cuda::fill_zero(src.get(), n);
    Row row{"runtime", "copy_on_device (D2D)", "1 GiB", 0, 0, 2.0 * n, "copy_1G"};
    time_row(ctx, row, [&] { cuda::copy_on_device(dst.get(), src.get(), n); });
    // The bandwidth the memory-bound rows are set against: the best of as many timed copies
    // (a peak is a best-of, as in bench_common.h; the rows themselves are medians).
    double best = ctx.rows.empty() ? 0 : ctx.rows.back().ms;
    for (int r = 0; r < ctx.reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      cuda::copy_on_device(dst.get(), src.get(), n);
      cuda::synchronize();
      best = std::min(best, ms_since(t0));
    }
    ctx.copy_gbs = 2.0 * n / best / 1e6;
    std::printf("  runtime: device-to-device copy bandwidth %.1f GB/s (best of %d; bytes read + written)\n", ctx.copy_gbs,
                ctx.reps);
    time_row(ctx, Row{"runtime", "fill_zero", "1 GiB", 0, 0, double(n), ""}, [&] { cuda::fill_zero(dst.get(), n); });
  }
  {
    // Host copies from pageable memory, as the library's uploads and downloads do.
    const size_t n = 256 * kMiB;
    std::vector<unsigned char> host(n, 1);
    DeviceArray<unsigned char> d(n);
    time_row(ctx, Row{"runtime", "copy_to_device (pageable)", "256 MiB", 0, 0, double(n), ""},
             [&] { cuda::copy_to_device(d.get(), host.data(), n); });
    time_row(ctx, Row{"runtime", "copy_to_host (pageable)", "256 MiB", 0, 0, double(n), ""},
             [&] { cuda::copy_to_host(host.data(), d.get(), n); });
  }
  cuda::empty_cache();  // leave the device as the next family finds it useful: nothing cached
}

}  // namespace luna::gpu_check
