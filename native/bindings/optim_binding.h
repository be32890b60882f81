#pragma once

#include <napi.h>

namespace luna {

// adamStep, sgdStep, normReduce, sumOfSquares, scaleInPlace (native/bindings/optim_binding.cc).
void register_optim(Napi::Env env, Napi::Object exports);

}  // namespace luna
