// The CPU-only build's elementwise launchers (cuda/elementwise_cuda.h): this binary has no CUDA
// kernels, so each one throws the error lib/ turns into ERR_CUDA. The bindings only reach them
// with device arrays, which a CPU-only build cannot create, so this is a guard, not a path.
#include "../../../cuda/elementwise_cuda.h"
#include "../cuda_api.h"

namespace luna::cuda {

namespace {
[[noreturn]] void not_compiled(const char* launcher) {
  throw CudaError("cudaErrorNotCompiled", std::string(launcher) + ": this binary was built without CUDA");
}
}  // namespace

void binary_op(const BinaryParams<float>&) { not_compiled("binary_op"); }
void scale_shift(const float*, float*, int64_t, float, float) { not_compiled("scale_shift"); }
void strided_copy(const StridedCopyParams<float>&) { not_compiled("strided_copy"); }
void reduce_to(const ReduceParams<float>&) { not_compiled("reduce_to"); }
void sum_axis(const float*, float*, int64_t, int64_t, int64_t) { not_compiled("sum_axis"); }
void copy_blocks(const BlockCopyParams<float>&) { not_compiled("copy_blocks"); }

}  // namespace luna::cuda
