// The probe of a CPU-only build: CUDA was not compiled in, so it is never available.
#include "cuda_probe.h"

namespace luna {

CudaProbe probe_cuda() {
  return CudaProbe{false, false, 0, "this binary was built without CUDA (the CPU-only node-gyp build, or a CMake build that found no nvcc); build with `npm run build:cmake` on a machine with nvcc"};
}

}  // namespace luna
