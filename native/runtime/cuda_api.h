// The host side of the CUDA backend, in plain C++ (no CUDA headers), so that the bindings and the
// native checks can use device memory without knowing whether CUDA was compiled in.
//
// Three implementations stand behind these declarations: cuda/runtime.cu (a CUDA build),
// native/runtime/cuda_stub.cc (a CPU-only build: every call throws CudaError "not compiled"), and
// cuda/runtime.cu compiled against the emulator in cuda/emu/ (the native checks on a machine
// without a GPU). All device work goes to one stream; the allocator is a caching one, so memory
// freed after a step is handed to the next step without a cudaMalloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace luna::cuda {

// A failed CUDA call. `name` is the runtime's error name (cudaErrorMemoryAllocation, ...), or
// "cudaErrorNotCompiled" from a CPU-only build; lib/ turns it into a LunaError ERR_CUDA.
class CudaError : public std::runtime_error {
 public:
  CudaError(std::string name, const std::string& message)
      : std::runtime_error(name + ": " + message), name_(std::move(name)) {}
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// True when this binary has the CUDA kernels (a real CUDA build or the emulator).
bool compiled();

// Device memory from the caching allocator, at least 256-byte aligned. Never returns null for
// bytes > 0 (bytes == 0 gives nullptr); out of memory is a CudaError after the cache was emptied
// and the allocation retried once.
void* device_alloc(size_t bytes);
// Returns a block from device_alloc to the cache. Safe right after kernels that use it were
// queued: everything runs on one stream, so the next user of the block runs after them.
void device_free(void* ptr);

// Copies. The host-side ones return when the copy is complete (the host buffer may be reused);
// to_host first waits for the work queued before it.
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* dst, size_t bytes);
// Waits for every queued kernel and copy; a kernel fault surfaces here as a CudaError.
void synchronize();

struct MemoryStats {
  size_t allocated_bytes;   // in blocks handed out
  size_t reserved_bytes;    // held from the driver: handed out plus cached
  size_t peak_allocated_bytes;
  size_t cached_blocks;
  uint64_t device_mallocs;  // cudaMalloc calls so far (a steady training loop stops adding)
  uint64_t device_frees;    // cudaFree calls so far (emptyCache, out-of-memory retries)
};
MemoryStats memory_stats();
// Gives every cached (free) block back to the driver.
void empty_cache();
void reset_peak();

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  size_t total_memory = 0;
  size_t shared_memory_per_block_optin = 0;
  bool emulated = false;     // the cuda/emu emulator, not a GPU
};
DeviceInfo device_info();

}  // namespace luna::cuda

namespace luna::cuda {

// A device-to-host copy in two halves, so that the waiting can happen off the JS thread:
// start_download queues the copy (into pinned staging memory) on the stream now, in order with
// the work queued before it; finish_download waits for it (blocking only the calling thread),
// copies into `dst` and frees the staging memory. Every started download must be finished or
// cancelled exactly once.
struct PendingDownload;
PendingDownload* start_download(const void* src, size_t bytes);
void finish_download(PendingDownload* d, void* dst);
void cancel_download(PendingDownload* d);

}  // namespace luna::cuda
