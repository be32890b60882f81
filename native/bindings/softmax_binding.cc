// SKELETON: to be filled in.
#include "softmax_binding.h"

namespace luna {
void register_softmax(Napi::Env, Napi::Object) {}
}  // namespace luna
