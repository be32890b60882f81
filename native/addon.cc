// The addon's entry point: it only registers exports. Each family lives in native/bindings/.
#include <napi.h>

#include "bindings/attention_binding.h"
#include "bindings/causal_binding.h"
#include "bindings/cuda_binding.h"
#include "bindings/elementwise_binding.h"
#include "bindings/gemm_binding.h"
#include "bindings/nn_binding.h"
#include "bindings/optim_binding.h"
#include "bindings/runtime_binding.h"
#include "bindings/softmax_binding.h"

namespace {

Napi::Object init(Napi::Env env, Napi::Object exports) {
  luna::register_attention(env, exports);
  luna::register_runtime(env, exports);
  luna::register_gemm(env, exports);
  luna::register_elementwise(env, exports);
  luna::register_nn(env, exports);
  luna::register_causal(env, exports);
  luna::register_softmax(env, exports);
  luna::register_cuda(env, exports);
  luna::register_optim(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(luna_attention, init)
