// Registers the causal attention functions on the addon's exports.
#pragma once
#include <napi.h>

namespace luna {
void register_causal(Napi::Env env, Napi::Object exports);
}  // namespace luna
