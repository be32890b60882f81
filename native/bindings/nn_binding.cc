// Placeholder: being written (issue 3).
#include "nn_binding.h"

namespace luna {

void register_nn(Napi::Env, Napi::Object) {}

}  // namespace luna
