#pragma once
#include <napi.h>
namespace luna {
// Adds setNumThreads, getNumThreads, cpuInfo and cudaInfo.
void register_runtime(Napi::Env env, Napi::Object exports);
}  // namespace luna
