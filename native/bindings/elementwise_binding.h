#pragma once

#include <napi.h>

namespace luna {

void register_elementwise(Napi::Env env, Napi::Object exports);

}  // namespace luna
