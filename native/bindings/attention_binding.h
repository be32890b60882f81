#pragma once
#include <napi.h>
namespace luna {
// Adds packForward/Backward, unpackForward/Backward and referenceForward/Backward.
void register_attention(Napi::Env env, Napi::Object exports);
}  // namespace luna
