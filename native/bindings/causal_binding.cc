// SKELETON: to be filled in.
#include "causal_binding.h"

namespace luna {
void register_causal(Napi::Env, Napi::Object) {}
}  // namespace luna
