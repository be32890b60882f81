// The CUDA runtime side of the library: the device, its one stream, the caching allocator,
// copies and errors (native/runtime/cuda_api.h and cuda/common.cuh declare it).
//
// The allocator keeps freed blocks in per-size free lists instead of giving them back with
// cudaFree: cudaMalloc and cudaFree synchronise the device and cost tens of microseconds, and a
// training step allocates the same sizes every step, so after the first step every request is a
// free-list hit. Sizes are rounded (512 B below 1 MiB, 2 MiB above) so that near sizes share
// blocks. Because all work runs on one stream, a block freed right after kernels that use it were
// queued can be handed out at once: its next user's kernels are queued behind them.
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common.cuh"

namespace luna::cuda {

namespace {

[[noreturn]] void raise(cudaError_t err, const std::string& what) {
  (void)cudaGetLastError();  // clear a non-sticky error so that it does not resurface later
  throw CudaError(cudaGetErrorName(err), what + ": " + cudaGetErrorString(err));
}

struct Device {
  cudaStream_t stream = nullptr;
  cudaDeviceProp prop{};
};

// Set up on first use (thread-safe), so that a process that never touches CUDA never
// initialises the runtime.
Device& device() {
  static Device* d = [] {
    auto* dev = new Device();  // never destroyed: finalizers may free blocks during exit
    check(cudaSetDevice(0), "cudaSetDevice");
    check(cudaGetDeviceProperties(&dev->prop, 0), "cudaGetDeviceProperties");
    check(cudaStreamCreateWithFlags(&dev->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    return dev;
  }();
  return *d;
}

size_t round_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t(2) << 20, kSmallLimit = size_t(1) << 20;
  return bytes <= kSmallLimit ? (bytes + kSmall - 1) / kSmall * kSmall : (bytes + kLarge - 1) / kLarge * kLarge;
}

class CachingAllocator {
 public:
  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto hit = free_.find(size);
    void* ptr = nullptr;
    if (hit != free_.end()) {
      ptr = hit->second;
      free_.erase(hit);
    } else {
      ptr = device_malloc(size);
    }
    live_[ptr] = size;
    allocated_ += size;
    peak_ = std::max(peak_, allocated_);
    return ptr;
  }

  void release(void* ptr) {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) return;  // not ours (or freed twice): ignore rather than corrupt the lists
    allocated_ -= it->second;
    free_.emplace(it->second, ptr);
    live_.erase(it);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached();
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return MemoryStats{allocated_, reserved_, peak_, free_.size(), mallocs_, frees_};
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = allocated_;
  }

 private:
  // Called with the mutex held.
  void* device_malloc(size_t size) {
    device();
    void* ptr = nullptr;
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      // The cache may hold enough in blocks of other sizes: give them back and try once more.
      (void)cudaGetLastError();
      release_cached();
      err = cudaMalloc(&ptr, size);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      (void)cudaMemGetInfo(&free_bytes, &total);
      (void)cudaGetLastError();
      throw CudaError(cudaGetErrorName(err), "cannot allocate " + std::to_string(size) + " bytes on the device (" +
                                                 std::to_string(allocated_) + " in use, " + std::to_string(free_bytes) +
                                                 " free of " + std::to_string(total) + "): " + cudaGetErrorString(err));
    }
    ++mallocs_;
    reserved_ += size;
    return ptr;
  }

  void release_cached() {
    if (free_.empty()) return;
    // cudaFree waits for the device anyway; waiting first makes sure no queued kernel still
    // uses a block we give back.
    (void)cudaStreamSynchronize(device().stream);
    for (auto& [size, ptr] : free_) {
      (void)cudaFree(ptr);
      reserved_ -= size;
      ++frees_;
    }
    free_.clear();
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> live_;
  size_t allocated_ = 0, reserved_ = 0, peak_ = 0;
  uint64_t mallocs_ = 0, frees_ = 0;
};

CachingAllocator& allocator() {
  static auto* a = new CachingAllocator();  // never destroyed, as device()
  return *a;
}

std::mutex g_smem_mutex;
std::unordered_map<const void*, size_t> g_smem_allowed;

}  // namespace

bool compiled() { return true; }

cudaStream_t stream() { return device().stream; }

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) raise(err, what);
}

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) raise(err, std::string("launching ") + kernel);
}

void allow_dynamic_smem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  std::lock_guard<std::mutex> lock(g_smem_mutex);
  size_t& allowed = g_smem_allowed[kernel];
  if (allowed >= bytes) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  allowed = bytes;
}

size_t max_dynamic_smem() { return device().prop.sharedMemPerBlockOptin; }
int multiprocessor_count() { return device().prop.multiProcessorCount; }

void* device_alloc(size_t bytes) { return allocator().allocate(bytes); }
void device_free(void* ptr) { allocator().release(ptr); }

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  // From pageable memory the copy is staged by the driver; synchronising makes it complete
  // before the caller may reuse or free `src`.
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()), "cudaMemcpyAsync(host to device)");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync(device to host)");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "cudaMemcpyAsync(device to device)");
}

void fill_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  check(cudaMemsetAsync(dst, 0, bytes, stream()), "cudaMemsetAsync");
}

void synchronize() { check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize"); }

MemoryStats memory_stats() { return allocator().stats(); }
void empty_cache() { allocator().empty_cache(); }
void reset_peak() { allocator().reset_peak(); }

DeviceInfo device_info() {
  const cudaDeviceProp& p = device().prop;
  DeviceInfo info;
  info.name = p.name;
  info.major = p.major;
  info.minor = p.minor;
  info.multiprocessors = p.multiProcessorCount;
  info.total_memory = p.totalGlobalMem;
  info.shared_memory_per_block_optin = p.sharedMemPerBlockOptin;
#if defined(LUNA_CUDA_EMU)
  info.emulated = true;
#endif
  return info;
}

struct PendingDownload {
  void* staging = nullptr;
  size_t bytes = 0;
  cudaEvent_t done = nullptr;
};

PendingDownload* start_download(const void* src, size_t bytes) {
  auto* d = new PendingDownload();
  d->bytes = bytes;
  if (bytes == 0) return d;
  try {
    // Pinned memory: the copy is truly asynchronous, so waiting for it can be done elsewhere.
    check(cudaMallocHost(&d->staging, bytes), "cudaMallocHost");
    check(cudaEventCreate(&d->done), "cudaEventCreate");
    check(cudaMemcpyAsync(d->staging, src, bytes, cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync(device to host)");
    check(cudaEventRecord(d->done, stream()), "cudaEventRecord");
  } catch (...) {
    cancel_download(d);
    throw;
  }
  return d;
}

void finish_download(PendingDownload* d, void* dst) {
  struct Free {
    PendingDownload* d;
    ~Free() { cancel_download(d); }
  } free_on_exit{d};
  if (d->bytes == 0) return;
  check(cudaEventSynchronize(d->done), "cudaEventSynchronize");
  std::memcpy(dst, d->staging, d->bytes);
}

void cancel_download(PendingDownload* d) {
  if (d == nullptr) return;
  if (d->done != nullptr) {
    (void)cudaEventSynchronize(d->done);  // the copy may still be writing the staging buffer
    (void)cudaEventDestroy(d->done);
  }
  if (d->staging != nullptr) (void)cudaFreeHost(d->staging);
  (void)cudaGetLastError();
  delete d;
}

}  // namespace luna::cuda
