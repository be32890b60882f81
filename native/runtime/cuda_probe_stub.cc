// The probe of a CPU-only build: CUDA was not compiled in, so it is never available.
#include "cuda_probe.h"

namespace luna {

CudaProbe probe_cuda() {
  return CudaProbe{false, false, 0, "built without CUDA (nvcc was not found at build time)"};
}

}  // namespace luna
