// Device memory for JS: a DeviceArray is a JS object that owns one block of the caching
// allocator (cuda/runtime.cu). lib/ keeps it inside a tensor's Storage and releases it
// deterministically when the last reference goes (dispose, tidy); the finalizer is the safety
// net for a DeviceArray that is garbage collected unreleased. Kernels receive DeviceArrays
// wherever they accept typed arrays (binding_util.h's array_field), and run on the GPU then.
//
// In a CPU-only build the class and functions exist too; every allocation throws ERR_CUDA
// (cudaErrorNotCompiled), and lib/ refuses device 'cuda' before getting here.
#include "cuda_binding.h"

#include <cstring>
#include <string>

#include "../runtime/cuda_api.h"
#include "binding_util.h"

namespace luna {

namespace {

size_t element_bytes(napi_typedarray_type type) {
  return type == napi_float64_array ? 8 : type == napi_uint8_array ? 1 : 4;
}

napi_typedarray_type type_of_name(Napi::Env env, const std::string& name) {
  if (name == "float32") return napi_float32_array;
  if (name == "uint8") return napi_uint8_array;
  if (name == "int32") return napi_int32_array;
  throw Napi::TypeError::New(env, "type must be 'float32', 'uint8' or 'int32', got '" + name + "'");
}

const char* name_of_type(napi_typedarray_type type) {
  return type == napi_uint8_array ? "uint8" : type == napi_int32_array ? "int32" : "float32";
}

class DeviceArray : public Napi::ObjectWrap<DeviceArray> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "DeviceArray",
                       {InstanceAccessor<&DeviceArray::length>("length"),
                        InstanceAccessor<&DeviceArray::byte_length>("byteLength"),
                        InstanceAccessor<&DeviceArray::type_name>("type"),
                        InstanceAccessor<&DeviceArray::released>("released"),
                        InstanceMethod<&DeviceArray::release_method>("release")});
  }

  // new DeviceArray(type, length): only the functions below construct it (lib/ never calls new).
  explicit DeviceArray(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceArray>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "DeviceArray(type, length): expected a type name and a length");
    type_ = type_of_name(env, info[0].As<Napi::String>().Utf8Value());
    const double n = info[1].As<Napi::Number>().DoubleValue();
    if (!(n >= 0 && n < 2147483648.0 && n == double(int64_t(n))))
      throw Napi::RangeError::New(env, "DeviceArray: length must be an integer in [0, 2^31)");
    length_ = int64_t(n);
    guard_call(env, [&] {
      ptr_ = cuda::device_alloc(size_t(length_) * element_bytes(type_));
      return env.Undefined();
    });
    live_ = true;
  }

  ~DeviceArray() override { free_block(); }

  DeviceArrayView view(Napi::Env env) const {
    if (!live_) throw Napi::Error::New(env, "the DeviceArray was released; its memory cannot be used any more");
    return DeviceArrayView{ptr_, length_, type_};
  }
  size_t bytes() const { return size_t(length_) * element_bytes(type_); }

 private:
  void free_block() {
    if (live_) cuda::device_free(ptr_);
    live_ = false;
    ptr_ = nullptr;
  }
  Napi::Value length(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(length_)); }
  Napi::Value byte_length(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(bytes())); }
  Napi::Value type_name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_of_type(type_)); }
  Napi::Value released(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !live_); }
  // Gives the block back to the allocator now. A second call does nothing.
  Napi::Value release_method(const Napi::CallbackInfo& info) {
    free_block();
    return info.Env().Undefined();
  }

  void* ptr_ = nullptr;
  int64_t length_ = 0;
  napi_typedarray_type type_ = napi_float32_array;
  bool live_ = false;
};

struct CudaAddonData {
  Napi::FunctionReference device_array;
};

DeviceArray* as_device_array(Napi::Env env, const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  auto* data = env.GetInstanceData<CudaAddonData>();
  if (data == nullptr || !v.As<Napi::Object>().InstanceOf(data->device_array.Value())) return nullptr;
  return DeviceArray::Unwrap(v.As<Napi::Object>());
}

DeviceArray& device_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  DeviceArray* d = i < info.Length() ? as_device_array(info.Env(), info[i]) : nullptr;
  if (d == nullptr) throw Napi::TypeError::New(info.Env(), std::string(fn) + ": argument " + std::to_string(i + 1) + " must be a DeviceArray");
  return *d;
}

// The bytes of a typed array argument.
std::pair<uint8_t*, size_t> host_arg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (i >= info.Length() || !info[i].IsTypedArray())
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": argument " + std::to_string(i + 1) + " must be a typed array");
  Napi::TypedArray a = info[i].As<Napi::TypedArray>();
  return {static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), a.ByteLength()};
}

Napi::Object new_device_array(Napi::Env env, const char* type, double length) {
  auto* data = env.GetInstanceData<CudaAddonData>();
  return data->device_array.New({Napi::String::New(env, type), Napi::Number::New(env, length)});
}

// cudaUpload(typedArray) -> DeviceArray with a copy of it (Float32Array, Uint8Array, Int32Array).
Napi::Value upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(env, "cudaUpload: expected a typed array");
  Napi::TypedArray a = info[0].As<Napi::TypedArray>();
  const napi_typedarray_type t = a.TypedArrayType();
  if (t != napi_float32_array && t != napi_uint8_array && t != napi_int32_array)
    throw Napi::TypeError::New(env, "cudaUpload: expected a Float32Array, Uint8Array or Int32Array");
  Napi::Object out = new_device_array(env, name_of_type(t), double(a.ElementLength()));
  const DeviceArrayView d = DeviceArray::Unwrap(out)->view(env);
  cuda::copy_to_device(d.ptr, static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), a.ByteLength());
  return out;
}

// cudaDownload(deviceArray, typedArray): waits for the queued work and copies into the array.
Napi::Value download(const Napi::CallbackInfo& info) {
  DeviceArray& src = device_arg(info, 0, "cudaDownload");
  auto [dst, bytes] = host_arg(info, 1, "cudaDownload");
  if (bytes != src.bytes()) throw Napi::RangeError::New(info.Env(), "cudaDownload: the typed array's byte length differs");
  cuda::copy_to_host(dst, src.view(info.Env()).ptr, bytes);
  return info.Env().Undefined();
}

// The waiting half of cudaDownloadAsync, on a libuv worker thread.
class DownloadWorker : public Napi::AsyncWorker {
 public:
  DownloadWorker(Napi::Env env, cuda::PendingDownload* pending, Napi::TypedArray dst)
      : Napi::AsyncWorker(env), pending_(pending), deferred_(Napi::Promise::Deferred::New(env)) {
    dst_ref_ = Napi::Persistent(dst);  // keeps the destination alive until the copy is done
    dst_ = static_cast<uint8_t*>(dst.ArrayBuffer().Data()) + dst.ByteOffset();
  }
  ~DownloadWorker() override { cuda::cancel_download(pending_); }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      cuda::PendingDownload* p = pending_;
      pending_ = nullptr;
      cuda::finish_download(p, dst_);
    } catch (const cuda::CudaError& e) {
      error_name_ = e.name();
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    err.Set("code", Napi::String::New(Env(), "ERR_CUDA"));
    err.Set("cudaError", Napi::String::New(Env(), error_name_));
    deferred_.Reject(err.Value());
  }

 private:
  cuda::PendingDownload* pending_;
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::TypedArray> dst_ref_;
  uint8_t* dst_ = nullptr;
  std::string error_name_ = "cudaErrorUnknown";
};

// cudaDownloadAsync(deviceArray, typedArray) -> Promise<void>: the copy is queued now (in order
// with the work before it), the wait happens off the event loop.
Napi::Value download_async(const Napi::CallbackInfo& info) {
  DeviceArray& src = device_arg(info, 0, "cudaDownloadAsync");
  auto [dst, bytes] = host_arg(info, 1, "cudaDownloadAsync");
  (void)dst;
  if (bytes != src.bytes()) throw Napi::RangeError::New(info.Env(), "cudaDownloadAsync: the typed array's byte length differs");
  cuda::PendingDownload* pending = cuda::start_download(src.view(info.Env()).ptr, bytes);
  auto* worker = new DownloadWorker(info.Env(), pending, info[1].As<Napi::TypedArray>());
  Napi::Promise p = worker->promise();
  worker->Queue();
  return p;
}

// cudaCopy(dst, src): device to device, same byte length.
Napi::Value copy(const Napi::CallbackInfo& info) {
  DeviceArray& dst = device_arg(info, 0, "cudaCopy");
  DeviceArray& src = device_arg(info, 1, "cudaCopy");
  if (dst.bytes() != src.bytes()) throw Napi::RangeError::New(info.Env(), "cudaCopy: the arrays differ in byte length");
  cuda::copy_on_device(dst.view(info.Env()).ptr, src.view(info.Env()).ptr, src.bytes());
  return info.Env().Undefined();
}

// cudaZero(deviceArray): fills with zero bytes (queued).
Napi::Value zero(const Napi::CallbackInfo& info) {
  DeviceArray& d = device_arg(info, 0, "cudaZero");
  cuda::fill_zero(d.view(info.Env()).ptr, d.bytes());
  return info.Env().Undefined();
}

Napi::Value synchronize(const Napi::CallbackInfo& info) {
  cuda::synchronize();
  return info.Env().Undefined();
}

Napi::Value memory_stats(const Napi::CallbackInfo& info) {
  const cuda::MemoryStats s = cuda::memory_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("allocatedBytes", double(s.allocated_bytes));
  o.Set("reservedBytes", double(s.reserved_bytes));
  o.Set("peakAllocatedBytes", double(s.peak_allocated_bytes));
  o.Set("cachedBlocks", double(s.cached_blocks));
  o.Set("deviceMallocs", double(s.device_mallocs));
  o.Set("deviceFrees", double(s.device_frees));
  return o;
}

Napi::Value empty_cache(const Napi::CallbackInfo& info) {
  cuda::empty_cache();
  return info.Env().Undefined();
}

Napi::Value reset_peak(const Napi::CallbackInfo& info) {
  cuda::reset_peak();
  return info.Env().Undefined();
}

Napi::Value device_info(const Napi::CallbackInfo& info) {
  const cuda::DeviceInfo d = cuda::device_info();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("name", d.name);
  o.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
  o.Set("multiprocessors", d.multiprocessors);
  o.Set("totalMemory", double(d.total_memory));
  o.Set("emulated", d.emulated);
  return o;
}

}  // namespace

bool unwrap_device_array(Napi::Env env, const Napi::Value& v, DeviceArrayView& out) {
  DeviceArray* d = as_device_array(env, v);
  if (d == nullptr) return false;
  out = d->view(env);
  return true;
}

void register_cuda(Napi::Env env, Napi::Object exports) {
  auto* data = new CudaAddonData();
  Napi::Function ctor = DeviceArray::define(env);
  data->device_array = Napi::Persistent(ctor);
  env.SetInstanceData<CudaAddonData>(data);
  exports.Set("DeviceArray", ctor);
  exports.Set("cudaUpload", Napi::Function::New(env, guarded<upload>, "cudaUpload"));
  exports.Set("cudaDownload", Napi::Function::New(env, guarded<download>, "cudaDownload"));
  exports.Set("cudaDownloadAsync", Napi::Function::New(env, guarded<download_async>, "cudaDownloadAsync"));
  exports.Set("cudaCopy", Napi::Function::New(env, guarded<copy>, "cudaCopy"));
  exports.Set("cudaZero", Napi::Function::New(env, guarded<zero>, "cudaZero"));
  exports.Set("cudaSynchronize", Napi::Function::New(env, guarded<synchronize>, "cudaSynchronize"));
  exports.Set("cudaMemoryStats", Napi::Function::New(env, guarded<memory_stats>, "cudaMemoryStats"));
  exports.Set("cudaEmptyCache", Napi::Function::New(env, guarded<empty_cache>, "cudaEmptyCache"));
  exports.Set("cudaResetPeak", Napi::Function::New(env, guarded<reset_peak>, "cudaResetPeak"));
  exports.Set("cudaDeviceInfo", Napi::Function::New(env, guarded<device_info>, "cudaDeviceInfo"));
}

}  // namespace luna
