// The CPU-only build's softmax-attention launchers (cuda/softmax_cuda.h): every one throws, so a
// device array that reaches them (it cannot, without CUDA) gives a clear error instead of a link
// failure.
#include "../../../cuda/softmax_cuda.h"

#include "../cuda_api.h"

namespace luna::cuda {

void softmax_attention_forward(const SoftmaxAttentionParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "softmax_attention_forward: this binary was built without CUDA");
}

void softmax_attention_backward(const SoftmaxAttentionParams<float>&) {
  throw CudaError("cudaErrorNotCompiled", "softmax_attention_backward: this binary was built without CUDA");
}

}  // namespace luna::cuda
