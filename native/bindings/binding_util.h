// Helpers that turn JS arguments into plain C++ values for the kernels. lib/ validates
// everything first and raises LunaError; these checks exist so that a caller who reaches the
// raw addon cannot crash the process with a wrong type, size or length (they throw instead).
#pragma once

#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace luna {

inline Napi::Object object_arg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsObject())
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": expected one options object");
  return info[0].As<Napi::Object>();
}

// A positive integer dimension no larger than 2^31 - 1.
inline int64_t dim_field(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 1 && d <= 2147483647.0 && std::floor(d) == d))
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a positive integer below 2^31");
  return static_cast<int64_t>(d);
}

inline double finite_field(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d)) throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a finite number");
  return d;
}

// The data pointer of a typed array field of the given element type and exact length.
template <typename T>
T* array_field(const Napi::Object& o, const char* name, napi_typedarray_type type, int64_t length) {
  Napi::Value v = o.Get(name);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a " +
                                            (type == napi_float64_array ? "Float64Array" : type == napi_float32_array ? "Float32Array" : "Uint8Array"));
  Napi::TypedArray arr = v.As<Napi::TypedArray>();
  if (static_cast<int64_t>(arr.ElementLength()) != length)
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must have " + std::to_string(length) + " elements, got " +
                                             std::to_string(arr.ElementLength()));
  uint8_t* base = static_cast<uint8_t*>(arr.ArrayBuffer().Data());
  return reinterpret_cast<T*>(base + arr.ByteOffset());
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
