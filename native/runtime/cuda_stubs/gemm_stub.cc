// The GEMM family's launchers (cuda/gemm_cuda.h) in a CPU-only build: there is no device code, so
// each one throws CudaError "cudaErrorNotCompiled". lib/ checks backendInfo() first, so users
// see ERR_DEVICE_UNAVAILABLE before a call could reach these.
#include "../../../cuda/gemm_cuda.h"
#include "../cuda_api.h"

namespace luna::cuda {

namespace {
[[noreturn]] void not_compiled(const char* launcher) {
  throw CudaError("cudaErrorNotCompiled", std::string(launcher) + ": this binary was built without CUDA");
}
}  // namespace

void gemm(const GemmParams<float>&) { not_compiled("gemm"); }
GemmPlan plan_gemm(const GemmParams<float>&, GemmTile, int) { not_compiled("plan_gemm"); }
void gemm_forced(const GemmParams<float>&, GemmTile, int) { not_compiled("gemm_forced"); }
void gemm_device(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float,
                 float*, int64_t) {
  not_compiled("gemm_device");
}
void gemm_device_batched(bool, bool, int64_t, int64_t, int64_t, int64_t, float, const float*, int64_t, int64_t,
                         const float*, int64_t, int64_t, float, float*, int64_t, int64_t) {
  not_compiled("gemm_device_batched");
}
void bias_add(int64_t, int64_t, const float*, float*, int64_t) { not_compiled("bias_add"); }
void column_sum(int64_t, int64_t, const float*, int64_t, float*, bool) { not_compiled("column_sum"); }

}  // namespace luna::cuda
