// Placeholder: being written (issue 3).
#include "elementwise_binding.h"

namespace luna {

void register_elementwise(Napi::Env, Napi::Object) {}

}  // namespace luna
