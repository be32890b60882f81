// Whether this build of the addon can run CUDA kernels, and why not when it cannot.
//
// Two implementations stand behind this one declaration: native/runtime/cuda_probe_stub.cc, linked
// when the addon is built without nvcc (node-gyp, or CMake on a machine without the toolkit), and
// cuda/cuda_probe.cu, linked when CMake finds nvcc. The bindings and lib/ never need to know which.
#pragma once

#include <string>

namespace luna {

struct CudaProbe {
  bool compiled;       // the CUDA kernels are part of this binary
  bool available;      // compiled, and at least one device answered
  int deviceCount;     // devices the CUDA runtime sees (0 when unavailable)
  std::string reason;  // why it is unavailable, in words; empty when available
};

// Cheap after the first call: the answer is computed once and cached (thread-safe).
CudaProbe probe_cuda();

}  // namespace luna
