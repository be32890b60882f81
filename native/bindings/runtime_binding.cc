// N-API bindings of the runtime: thread count, CPU features in use, and the CUDA probe.
#include "runtime_binding.h"

#include <cmath>

#include "../runtime/cpu_features.h"
#include "../runtime/cuda_probe.h"
#include "../runtime/thread_pool.h"
#include "binding_util.h"

namespace luna {

namespace {

Napi::Value set_threads(const Napi::CallbackInfo& info) {
  const double n = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : NAN;
  if (!(n >= 1 && n <= 256 && std::floor(n) == n))
    throw Napi::RangeError::New(info.Env(), "setNumThreads: expected an integer from 1 to 256");
  set_num_threads(static_cast<int>(n));
  return info.Env().Undefined();
}

Napi::Value get_threads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), num_threads()); }

Napi::Value cpu_info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  const CpuFeatures& f = cpu_features();
  o.Set("isa", isa_name(active_isa()));
  o.Set("avx2", f.avx2);
  o.Set("avx512f", f.avx512f);
  o.Set("fma", f.fma);
  return o;
}

Napi::Value cuda_info(const Napi::CallbackInfo& info) {
  const CudaProbe probe = probe_cuda();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("compiled", probe.compiled);
  o.Set("available", probe.available);
  o.Set("deviceCount", probe.deviceCount);
  o.Set("reason", probe.reason);
  return o;
}

}  // namespace

void register_runtime(Napi::Env env, Napi::Object exports) {
  exports.Set("setNumThreads", Napi::Function::New(env, guarded<set_threads>, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, guarded<get_threads>, "getNumThreads"));
  exports.Set("cpuInfo", Napi::Function::New(env, guarded<cpu_info>, "cpuInfo"));
  exports.Set("cudaInfo", Napi::Function::New(env, guarded<cuda_info>, "cudaInfo"));
}

}  // namespace luna
