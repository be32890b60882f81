// The probe of a CUDA build: asks the runtime once how many devices there are.
//
// The addon links the CUDA runtime statically, so it loads on a machine with no NVIDIA driver at
// all; there cudaGetDeviceCount fails (typically cudaErrorInsufficientDriver or
// cudaErrorNoDevice). Any error means "no device": the library then runs on the CPU and reports
// the runtime's own words as the reason, so a user can tell a missing driver from a missing card.
#include "common.cuh"

#include <string>

#include "../native/runtime/cuda_probe.h"

namespace luna {

namespace {

CudaProbe run_probe() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // Clear the runtime's sticky "last error" so that it does not surface in a later, unrelated
    // call; the failure is reported through the probe instead.
    (void)cudaGetLastError();
    std::string reason = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    return CudaProbe{true, false, 0, reason};
  }
  if (count <= 0) return CudaProbe{true, false, 0, "no CUDA device found"};
  return CudaProbe{true, true, count, ""};
}

}  // namespace

CudaProbe probe_cuda() {
  // A function-local static is initialised exactly once, even when several threads race to it
  // (C++11 "magic statics"), so the runtime is queried once per process.
  static const CudaProbe cached = run_probe();
  return cached;
}

}  // namespace luna
