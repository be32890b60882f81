#pragma once

#include <napi.h>

namespace luna {

void register_gemm(Napi::Env env, Napi::Object exports);

}  // namespace luna
