// The CPU-only build's nn launchers (cuda/nn_cuda.h): this binary has no CUDA kernels, so each one
// throws the error lib/ turns into ERR_CUDA. The bindings only reach them with device arrays, which
// a CPU-only build cannot create, so this is a guard, not a path.
#include <string>

#include "../../../cuda/nn_cuda.h"
#include "../cuda_api.h"

namespace luna::cuda {

namespace {
[[noreturn]] void not_compiled(const char* launcher) {
  throw CudaError("cudaErrorNotCompiled", std::string(launcher) + ": this binary was built without CUDA");
}
}  // namespace

void layer_norm_forward(const LayerNormParams<float>&) { not_compiled("layer_norm_forward"); }
void layer_norm_backward(const LayerNormParams<float>&) { not_compiled("layer_norm_backward"); }
void gelu_forward(const ActivationParams<float>&) { not_compiled("gelu_forward"); }
void gelu_backward(const ActivationParams<float>&) { not_compiled("gelu_backward"); }
void relu_forward(const ActivationParams<float>&) { not_compiled("relu_forward"); }
void relu_backward(const ActivationParams<float>&) { not_compiled("relu_backward"); }
void dropout_apply(const DropoutParams<float>&) { not_compiled("dropout_apply"); }
void embedding_forward(const EmbeddingParams<float>&) { not_compiled("embedding_forward"); }
void embedding_backward(const EmbeddingParams<float>&) { not_compiled("embedding_backward"); }
void cross_entropy_forward(const CrossEntropyParams<float>&) { not_compiled("cross_entropy_forward"); }
void cross_entropy_backward(const CrossEntropyParams<float>&) { not_compiled("cross_entropy_backward"); }

}  // namespace luna::cuda
