// The CPU-only build's attention launchers (cuda/attention_cuda.h): this binary has no CUDA
// kernels, so every call throws CudaError "cudaErrorNotCompiled" (lib/ reports ERR_CUDA; the
// bindings never get here with host arrays).
#include "../../../cuda/attention_cuda.h"
#include "../cuda_api.h"

namespace luna::cuda {

namespace {
[[noreturn]] void not_compiled(const char* launcher) {
  throw CudaError("cudaErrorNotCompiled", std::string(launcher) + ": this binary was built without CUDA");
}
}  // namespace

void pack_forward(const AttentionParams<float>&) { not_compiled("pack_forward"); }
void pack_backward(const AttentionParams<float>&) { not_compiled("pack_backward"); }
void unpack_forward(const AttentionParams<float>&) { not_compiled("unpack_forward"); }
void unpack_backward(const AttentionParams<float>&) { not_compiled("unpack_backward"); }
void attention_force_chunk_tiles(int) { not_compiled("attention_force_chunk_tiles"); }

}  // namespace luna::cuda
