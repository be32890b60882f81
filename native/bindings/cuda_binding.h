// N-API bindings of device memory: the DeviceArray class, copies, the allocator's report.
#pragma once

#include <napi.h>

namespace luna {

void register_cuda(Napi::Env env, Napi::Object exports);

}  // namespace luna
