// The CPU-only build's causal launchers (cuda/causal_cuda.h): the bindings link against them and
// only reach them with device arrays, which a build without CUDA cannot make.
#include "../../../cuda/causal_cuda.h"
#include "../cuda_api.h"

namespace luna::cuda {

void causal_forward(const CausalParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "causal_forward: this binary was built without CUDA");
}
void causal_backward(const CausalParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "causal_backward: this binary was built without CUDA");
}
void causal_step(const CausalParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "causal_step: this binary was built without CUDA");
}

}  // namespace luna::cuda
