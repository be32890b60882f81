// The optimizer launchers of a CPU-only build (cuda/optim_cuda.h): each one refuses, so a device
// array that somehow reaches them gives an ERR_CUDA instead of a link error or a crash.
#include "../../../cuda/optim_cuda.h"

#include "../cuda_api.h"

namespace luna::cuda {

void adam_step(const AdamParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "adam_step: this binary was built without CUDA");
}
void sgd_step(const SgdParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "sgd_step: this binary was built without CUDA");
}
double norm_reduce(const NormParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "norm_reduce: this binary was built without CUDA");
}
void scale_in_place(float*, int64_t, double) {
  throw CudaError("cudaErrorNotCompiled", "scale_in_place: this binary was built without CUDA");
}

}  // namespace luna::cuda
