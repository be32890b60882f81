// Placeholder: being written (issue 3).
#include "gemm_binding.h"

namespace luna {

void register_gemm(Napi::Env, Napi::Object) {}

}  // namespace luna
