// The CUDA runtime API of a CPU-only build (see cuda_api.h): nothing is compiled in, so every call
// that would touch a device throws, and the harmless queries answer "nothing here". lib/ checks
// backendInfo() first, so users see ERR_DEVICE_UNAVAILABLE with the reason before reaching these.
#include "cuda_api.h"

namespace luna::cuda {

namespace {
[[noreturn]] void not_compiled(const char* what) {
  throw CudaError("cudaErrorNotCompiled", std::string(what) + ": this binary was built without CUDA");
}
}  // namespace

bool compiled() { return false; }
void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  not_compiled("device_alloc");
}
void device_free(void*) {}
void copy_to_device(void*, const void*, size_t bytes) { if (bytes) not_compiled("copy_to_device"); }
void copy_to_host(void*, const void*, size_t bytes) { if (bytes) not_compiled("copy_to_host"); }
void copy_on_device(void*, const void*, size_t bytes) { if (bytes) not_compiled("copy_on_device"); }
void fill_zero(void*, size_t bytes) { if (bytes) not_compiled("fill_zero"); }
void synchronize() {}
MemoryStats memory_stats() { return MemoryStats{0, 0, 0, 0, 0, 0}; }
void empty_cache() {}
void reset_peak() {}
DeviceInfo device_info() { not_compiled("device_info"); }
PendingDownload* start_download(const void*, size_t) { not_compiled("start_download"); }
void finish_download(PendingDownload*, void*) { not_compiled("finish_download"); }
void cancel_download(PendingDownload*) {}

}  // namespace luna::cuda
