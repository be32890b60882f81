// N-API bindings of the optimizer kernels (native/kernels/optim_kernels.h): the fused Adam/AdamW
// and SGD updates, the gradient-norm reductions and the in-place rescale of clipGradNorm. Host
// typed arrays (Float32Array or Float64Array) run the CPU kernels; float32 DeviceArrays run the
// CUDA ones (cuda/optim_cuda.h). lib/optim validates first; the checks here keep a caller who
// reaches the raw addon from crashing the process.
//
//   adamStep({param, grad, expAvg, expAvgSq, lr, beta1, beta2, eps, weightDecay, decoupled,
//             biasCorrection1, biasCorrection2})                     in place, returns undefined
//   sgdStep({param, grad, momentumBuffer, lr, momentum, dampening, weightDecay, nesterov,
//            firstStep})                                             in place, returns undefined
//   normReduce({xs, normType}) -> number   over the concatenation of the arrays xs:
//            normType 2: sum x^2; 1: sum |x|; Infinity: max |x| (NaN wins); other p > 0: sum |x|^p
//   sumOfSquares({x}) -> number            x one array or an array of arrays; normType 2
//   scaleInPlace({x, scale})               x[i] = x[i] * scale (float64 product, one rounding)
#include "optim_binding.h"

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "../../cuda/optim_cuda.h"
#include "../kernels/optim_kernels.h"
#include "binding_util.h"

namespace luna {

namespace {

// The element count of a typed array or DeviceArray field (its type is checked by array_field).
int64_t array_length(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  DeviceArrayView d;
  if (unwrap_device_array(o.Env(), v, d)) return d.length;
  if (!v.IsTypedArray()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a typed array or a DeviceArray");
  return static_cast<int64_t>(v.As<Napi::TypedArray>().ElementLength());
}

// The float element type of a call, from its leading array.
napi_typedarray_type float_type(const Args& o, const char* name) {
  const napi_typedarray_type t = array_type(o, name);
  if (t != napi_float32_array && t != napi_float64_array)
    throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a Float32Array, a Float64Array or a float32 DeviceArray");
  return t;
}

bool bool_field(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

// A finite number, or `fallback` when the field is undefined.
double optional_finite(const Args& o, const char* name, double fallback) {
  if (o.Get(name).IsUndefined()) return fallback;
  return finite_field(o, name);
}

double bias_correction_field(const Args& o, const char* name) {
  const double d = finite_field(o, name);
  if (!(d > 0 && d <= 1)) throw Napi::RangeError::New(o.Env(), std::string(name) + " must be in (0, 1] (1 - beta^step)");
  return d;
}

template <typename T>
void adam_entry(const Args& o, napi_typedarray_type type) {
  AdamParams<T> p;
  p.n = array_length(o, "param");
  p.param = array_field<T>(o, "param", type, p.n);
  p.grad = array_field<T>(o, "grad", type, p.n);
  p.exp_avg = array_field<T>(o, "expAvg", type, p.n);
  p.exp_avg_sq = array_field<T>(o, "expAvgSq", type, p.n);
  p.lr = finite_field(o, "lr");
  p.beta1 = finite_field(o, "beta1");
  p.beta2 = finite_field(o, "beta2");
  p.eps = finite_field(o, "eps");
  p.weight_decay = finite_field(o, "weightDecay");
  p.decoupled = bool_field(o, "decoupled");
  p.bias_correction1 = bias_correction_field(o, "biasCorrection1");
  p.bias_correction2 = bias_correction_field(o, "biasCorrection2");
  if constexpr (std::is_same_v<T, float>) {
    if (o.on_cuda()) return cuda::adam_step(p);
  }
  adam_step(p);
}

Napi::Value AdamStep(const Napi::CallbackInfo& info) {
  const Args o(info, "adamStep",
               {"param", "grad", "expAvg", "expAvgSq", "lr", "beta1", "beta2", "eps", "weightDecay", "decoupled",
                "biasCorrection1", "biasCorrection2"});
  if (float_type(o, "param") == napi_float32_array) adam_entry<float>(o, napi_float32_array);
  else adam_entry<double>(o, napi_float64_array);
  return info.Env().Undefined();
}

template <typename T>
void sgd_entry(const Args& o, napi_typedarray_type type) {
  SgdParams<T> p;
  p.n = array_length(o, "param");
  p.param = array_field<T>(o, "param", type, p.n);
  p.grad = array_field<T>(o, "grad", type, p.n);
  p.lr = finite_field(o, "lr");
  p.momentum = optional_finite(o, "momentum", 0);
  p.dampening = optional_finite(o, "dampening", 0);
  p.weight_decay = optional_finite(o, "weightDecay", 0);
  p.nesterov = o.Get("nesterov").IsUndefined() ? false : bool_field(o, "nesterov");
  p.first_step = bool_field(o, "firstStep");
  const Napi::Value buf = o.Get("momentumBuffer");
  if (p.momentum != 0) {
    p.momentum_buffer = array_field<T>(o, "momentumBuffer", type, p.n);
  } else if (!buf.IsNull() && !buf.IsUndefined()) {
    throw Napi::TypeError::New(o.Env(), "momentumBuffer must be null or undefined when momentum is 0");
  }
  if constexpr (std::is_same_v<T, float>) {
    if (o.on_cuda()) return cuda::sgd_step(p);
  }
  sgd_step(p);
}

Napi::Value SgdStep(const Napi::CallbackInfo& info) {
  const Args o(info, "sgdStep",
               {"param", "grad", "momentumBuffer", "lr", "momentum", "dampening", "weightDecay", "nesterov", "firstStep"});
  if (float_type(o, "param") == napi_float32_array) sgd_entry<float>(o, napi_float32_array);
  else sgd_entry<double>(o, napi_float64_array);
  return info.Env().Undefined();
}

// The arrays of a reduction: one array or a JS array of them. Every element of the list is read
// before any data pointer is taken (see Args for why).
struct ArrayList {
  std::vector<Napi::Value> items;
  std::string name;
};

ArrayList list_field(const Args& o, const char* name, bool single_allowed) {
  ArrayList out{{}, name};
  Napi::Value v = o.Get(name);
  if (v.IsArray()) {
    Napi::Array arr = v.As<Napi::Array>();
    const uint32_t n = arr.Length();
    out.items.reserve(n);
    for (uint32_t i = 0; i < n; ++i) out.items.push_back(arr.Get(i));
  } else if (single_allowed) {
    out.items.push_back(v);
  } else {
    throw Napi::TypeError::New(o.Env(), std::string(name) + " must be an array of typed arrays or DeviceArrays");
  }
  return out;
}

double reduce_list(const Args& o, const ArrayList& list, NormKind kind, double exponent) {
  Napi::Env env = o.Env();
  const size_t count = list.items.size();
  if (count > size_t(1) << 20) throw Napi::RangeError::New(env, list.name + " has too many arrays");
  // The type of the first array is the call's; all must share it and live on one side.
  napi_typedarray_type type = napi_float32_array;
  std::vector<void*> ptrs(count);
  std::vector<int64_t> lengths(count);
  for (size_t i = 0; i < count; ++i) {
    const std::string item = list.name + "[" + std::to_string(i) + "]";
    DeviceArrayView d;
    napi_typedarray_type t;
    if (unwrap_device_array(env, list.items[i], d)) {
      t = d.type, ptrs[i] = d.ptr, lengths[i] = d.length;
      o.note_array(true, item.c_str());
    } else if (list.items[i].IsTypedArray()) {
      Napi::TypedArray a = list.items[i].As<Napi::TypedArray>();
      t = a.TypedArrayType();
      ptrs[i] = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
      lengths[i] = static_cast<int64_t>(a.ElementLength());
      o.note_array(false, item.c_str());
    } else {
      throw Napi::TypeError::New(env, item + " must be a Float32Array, a Float64Array or a float32 DeviceArray");
    }
    if (t != napi_float32_array && t != napi_float64_array)
      throw Napi::TypeError::New(env, item + " must be a Float32Array, a Float64Array or a float32 DeviceArray");
    if (i == 0) type = t;
    else if (t != type) throw Napi::TypeError::New(env, item + " must have the element type of " + list.name + "[0]");
  }
  if (count == 0) return 0;
  if (type == napi_float32_array) {
    std::vector<const float*> xs(count);
    for (size_t i = 0; i < count; ++i) xs[i] = static_cast<const float*>(ptrs[i]);
    NormParams<float> p;
    p.count = int(count), p.xs = xs.data(), p.lengths = lengths.data(), p.kind = kind, p.p = exponent;
    return o.on_cuda() ? cuda::norm_reduce(p) : norm_reduce(p);
  }
  std::vector<const double*> xs(count);
  for (size_t i = 0; i < count; ++i) xs[i] = static_cast<const double*>(ptrs[i]);
  NormParams<double> p;
  p.count = int(count), p.xs = xs.data(), p.lengths = lengths.data(), p.kind = kind, p.p = exponent;
  return norm_reduce(p);
}

Napi::Value NormReduce(const Napi::CallbackInfo& info) {
  const Args o(info, "normReduce", {"xs", "normType"});
  Napi::Value nt = o.Get("normType");
  const double p = nt.IsNumber() ? nt.As<Napi::Number>().DoubleValue() : NAN;
  if (!(p > 0)) throw Napi::RangeError::New(info.Env(), "normType must be a number > 0 or Infinity");
  const NormKind kind = p == 2 ? NormKind::SumSquares : p == 1 ? NormKind::SumAbs : std::isinf(p) ? NormKind::MaxAbs : NormKind::SumPowAbs;
  const ArrayList list = list_field(o, "xs", false);
  return Napi::Number::New(info.Env(), reduce_list(o, list, kind, p));
}

Napi::Value SumOfSquares(const Napi::CallbackInfo& info) {
  const Args o(info, "sumOfSquares", {"x"});
  const ArrayList list = list_field(o, "x", true);
  return Napi::Number::New(info.Env(), reduce_list(o, list, NormKind::SumSquares, 2));
}

Napi::Value ScaleInPlace(const Napi::CallbackInfo& info) {
  const Args o(info, "scaleInPlace", {"x", "scale"});
  // Any number, NaN included: clipGradNorm spreads a NaN norm into the gradients, as torch does.
  Napi::Value s = o.Get("scale");
  if (!s.IsNumber()) throw Napi::TypeError::New(info.Env(), "scale must be a number");
  const double scale = s.As<Napi::Number>().DoubleValue();
  const int64_t n = array_length(o, "x");
  if (float_type(o, "x") == napi_float32_array) {
    float* x = array_field<float>(o, "x", napi_float32_array, n);
    if (o.on_cuda()) cuda::scale_in_place(x, n, scale);
    else scale_in_place(x, n, scale);
  } else {
    scale_in_place(array_field<double>(o, "x", napi_float64_array, n), n, scale);
  }
  return info.Env().Undefined();
}

}  // namespace

void register_optim(Napi::Env env, Napi::Object exports) {
  exports.Set("adamStep", Napi::Function::New(env, guarded<AdamStep>, "adamStep"));
  exports.Set("sgdStep", Napi::Function::New(env, guarded<SgdStep>, "sgdStep"));
  exports.Set("normReduce", Napi::Function::New(env, guarded<NormReduce>, "normReduce"));
  exports.Set("sumOfSquares", Napi::Function::New(env, guarded<SumOfSquares>, "sumOfSquares"));
  exports.Set("scaleInPlace", Napi::Function::New(env, guarded<ScaleInPlace>, "scaleInPlace"));
}

}  // namespace luna
