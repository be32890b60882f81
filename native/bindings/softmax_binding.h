// Registers the softmax attention functions on the addon's exports.
#pragma once
#include <napi.h>

namespace luna {
void register_softmax(Napi::Env env, Napi::Object exports);
}  // namespace luna
