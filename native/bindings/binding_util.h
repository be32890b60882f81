// Helpers that turn JS arguments into plain C++ values for the kernels. lib/ validates
// everything first and raises LunaError; these checks exist so that a caller who reaches the
// raw addon cannot crash the process with a wrong type, size or length (they throw instead).
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../runtime/cuda_api.h"

namespace luna {

// A device array as a binding sees it (native/bindings/cuda_binding.cc owns the JS class).
struct DeviceArrayView {
  void* ptr = nullptr;
  int64_t length = 0;
  napi_typedarray_type type = napi_float32_array;  // float32, uint8 or int32
};

// True when `v` is a DeviceArray (filling `out`); throws when it is one that was released.
bool unwrap_device_array(Napi::Env env, const Napi::Value& v, DeviceArrayView& out);

inline const char* typed_array_name(napi_typedarray_type type) {
  switch (type) {
    case napi_float64_array: return "Float64Array";
    case napi_float32_array: return "Float32Array";
    case napi_int32_array: return "Int32Array";
    default: return "Uint8Array";
  }
}

inline Napi::Object object_arg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsObject())
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": expected one options object");
  return info[0].As<Napi::Object>();
}

// The options object of a call, with every field the binding will use read exactly once, up
// front. Why: reading a field can run JS (a getter, a Proxy trap), and that JS could detach,
// transfer or shrink a typed array whose data pointer the binding already took, leaving the
// kernel to write through a dangling pointer. With every read done before the first pointer is
// taken, the pointers and lengths the kernel gets are those of arrays that are still attached
// (and kept alive by this object's handles) when it runs. Nested arrays (shape lists) are read
// before any data pointer is taken, for the same reason.
class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* fn, std::initializer_list<const char*> names)
      : env_(info.Env()) {
    read(info, fn, names.begin(), names.end());
  }
  Args(const Napi::CallbackInfo& info, const char* fn, const std::vector<const char*>& names) : env_(info.Env()) {
    read(info, fn, names.begin(), names.end());
  }

  // The value read for `name`; a name the constructor was not given is a bug in the binding.
  Napi::Value Get(const char* name) const {
    for (const auto& f : fields_)
      if (std::strcmp(f.first, name) == 0) return f.second;
    throw std::logic_error(std::string("internal: the binding reads the unlisted field ") + name);
  }

  Napi::Env Env() const { return env_; }

  // Where the call's arrays live: every array field read through array_field records it, and
  // mixing host arrays and device arrays in one call is refused.
  void note_array(bool on_device, const char* name) const {
    const Where w = on_device ? Where::Cuda : Where::Host;
    if (where_ != Where::Unknown && where_ != w)
      throw Napi::TypeError::New(env_, std::string(name) + (on_device ? " is a device array but the other arrays are host arrays"
                                                                      : " is a host array but the other arrays are device arrays"));
    where_ = w;
  }
  // True once a device array was read (then every array of the call is one).
  bool on_cuda() const { return where_ == Where::Cuda; }

 private:
  enum class Where { Unknown, Host, Cuda };
  mutable Where where_ = Where::Unknown;
  template <typename It>
  void read(const Napi::CallbackInfo& info, const char* fn, It first, It last) {
    Napi::Object o = object_arg(info, fn);
    fields_.reserve(size_t(last - first));
    for (It it = first; it != last; ++it) fields_.emplace_back(*it, o.Get(*it));
  }

  Napi::Env env_;
  std::vector<std::pair<const char*, Napi::Value>> fields_;
};

// Runs a binding body, turning any C++ exception that is not already a JS error (a failed
// allocation in a kernel's scratch space, a thread that could not start) into one, so that no
// call can end in std::terminate and take the process down.
template <typename F>
Napi::Value guard_call(Napi::Env env, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const cuda::CudaError& e) {
    // lib/ turns this into LunaError ERR_CUDA, keeping the runtime's error name.
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("code", Napi::String::New(env, "ERR_CUDA"));
    err.Set("cudaError", Napi::String::New(env, e.name()));
    throw err;
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(env, "out of memory: the native kernel could not allocate its scratch space");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("native error: ") + e.what());
  } catch (...) {
    throw Napi::Error::New(env, "native error: unknown exception");
  }
}

// An exported function wrapped by guard_call; register `guarded<entry>` instead of `entry`.
template <Napi::Value (*Entry)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  return guard_call(info.Env(), [&] { return Entry(info); });
}

// A positive integer dimension no larger than 2^31 - 1.
inline int64_t dim_field(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 1 && d <= 2147483647.0 && std::floor(d) == d))
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a positive integer below 2^31");
  return static_cast<int64_t>(d);
}

inline double finite_field(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d)) throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a finite number");
  return d;
}

// The element type of a typed array or device array field.
inline napi_typedarray_type array_type(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  DeviceArrayView d;
  if (unwrap_device_array(o.Env(), v, d)) return d.type;
  if (!v.IsTypedArray()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a typed array or a DeviceArray");
  return v.As<Napi::TypedArray>().TypedArrayType();
}

// The data pointer of an array field of the given element type and exact length: a typed array
// (host memory) or a DeviceArray (device memory; the call then runs on the GPU, see Args::on_cuda).
template <typename T>
T* array_field(const Args& o, const char* name, napi_typedarray_type type, int64_t length) {
  Napi::Value v = o.Get(name);
  DeviceArrayView d;
  if (unwrap_device_array(o.Env(), v, d)) {
    if (d.type != type)
      throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a " + typed_array_name(type) + " DeviceArray, got a " +
                                              typed_array_name(d.type) + " one");
    if (d.length != length)
      throw Napi::RangeError::New(o.Env(), std::string(name) + " must have " + std::to_string(length) + " elements, got " +
                                               std::to_string(d.length));
    o.note_array(true, name);
    return static_cast<T*>(d.ptr);
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a " + typed_array_name(type));
  Napi::TypedArray arr = v.As<Napi::TypedArray>();
  if (static_cast<int64_t>(arr.ElementLength()) != length)
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must have " + std::to_string(length) + " elements, got " +
                                             std::to_string(arr.ElementLength()));
  o.note_array(false, name);
  uint8_t* base = static_cast<uint8_t*>(arr.ArrayBuffer().Data());
  return reinterpret_cast<T*>(base + arr.ByteOffset());
}

// For entries that only run on the host (the float64 references): refuses device arrays.
inline void require_host(const Args& o, const char* fn) {
  if (o.on_cuda()) throw Napi::TypeError::New(o.Env(), std::string(fn) + " runs on the CPU only; it was given device arrays");
}

// Product of sizes, refusing anything at or over 2^31 elements.
inline int64_t checked_product(Napi::Env env, std::initializer_list<int64_t> sizes) {
  int64_t total = 1;
  for (int64_t s : sizes) {
    if (s != 0 && total > (int64_t(1) << 31) / s) throw Napi::RangeError::New(env, "tensor too large (2^31 elements or more)");
    total *= s;
  }
  if (total >= (int64_t(1) << 31)) throw Napi::RangeError::New(env, "tensor too large (2^31 elements or more)");
  return total;
}

}  // namespace luna
