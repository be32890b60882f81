#pragma once

#include <napi.h>

namespace luna {

void register_nn(Napi::Env env, Napi::Object exports);

}  // namespace luna
