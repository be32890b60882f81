// N-API bindings of the nn building blocks: one options object per call, copied into the
// kernel's parameter struct (nn_kernels.h), then the fast kernel or, with `reference: true`,
// the plain-loop reference. The argument shapes are documented in native/INTERFACE-nn.md.
// When the arrays are DeviceArrays (float32, ids and targets int32) the CUDA kernels run instead
// (cuda/nn_cuda.h), queued on the library's stream; the reference entries stay on the CPU.
//
// lib/ops/nn-functional.ts validates everything first and raises LunaError; the checks here
// only make sure that a caller who reaches the raw addon gets a JS exception instead of a
// crash (wrong types, wrong lengths, ids or targets that would index out of bounds).
#include "nn_binding.h"

#include <string>
#include <type_traits>
#include <vector>

#include "../../cuda/nn_cuda.h"
#include "../kernels/nn_kernels.h"
#include "../reference/nn_reference.h"
#include "binding_util.h"

namespace luna {

namespace {

Napi::Error type_error(const Args& o, const std::string& msg) { return Napi::TypeError::New(o.Env(), msg); }
Napi::Error range_error(const Args& o, const std::string& msg) { return Napi::RangeError::New(o.Env(), msg); }

bool is_absent(const Napi::Value& v) { return v.IsNull() || v.IsUndefined(); }

// A float array field of the call's element type and exact length, or null when absent.
template <typename T>
T* optional_array(const Args& o, const char* name, napi_typedarray_type type, int64_t length) {
  if (is_absent(o.Get(name))) return nullptr;
  return array_field<T>(o, name, type, length);
}

// An Int32Array field of exact length, copied. The ids and targets are indices the kernels
// read memory at, so they are validated here and then must not change: a copy cannot alias an
// output (an Int32Array and a Float32Array may view the same ArrayBuffer, and the kernel would
// overwrite the checked ids while using them) nor be changed by another thread (a
// SharedArrayBuffer). n int32 values are cheap next to the n x d work of the kernels.
//
// An int32 DeviceArray is used in place: checking its values would mean reading them back, a
// stall of the stream on every call. The CUDA path trusts lib/'s validation, and its kernels
// never touch memory outside their arrays for a bad value (they write NaN; cuda/nn_cuda.h).
const int32_t* int32_field(const Args& o, const char* name, int64_t length, std::vector<int32_t>& copy) {
  Napi::Value v = o.Get(name);
  DeviceArrayView device;
  if (unwrap_device_array(o.Env(), v, device)) return array_field<int32_t>(o, name, napi_int32_array, length);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw type_error(o, std::string(name) + " must be an Int32Array");
  Napi::TypedArray arr = v.As<Napi::TypedArray>();
  if (static_cast<int64_t>(arr.ElementLength()) != length)
    throw range_error(o, std::string(name) + " must have " + std::to_string(length) + " elements, got " +
                             std::to_string(arr.ElementLength()));
  o.note_array(false, name);
  const uint8_t* base = static_cast<const uint8_t*>(arr.ArrayBuffer().Data());
  const int32_t* src = reinterpret_cast<const int32_t*>(base + arr.ByteOffset());
  copy.assign(src, src + length);
  return copy.data();
}

// A number field in [lo, hi] (an integer when `integer`).
double number_in(const Args& o, const char* name, double lo, double hi, bool integer) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= lo && d <= hi) || (integer && std::floor(d) != d))
    throw range_error(o, std::string(name) + " must be " + (integer ? "an integer" : "a number") + " in [" +
                             std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return d;
}

bool reference_flag(const Args& o) {
  Napi::Value v = o.Get("reference");
  if (is_absent(v)) return false;
  if (!v.IsBoolean()) throw type_error(o, "reference must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

// The element type of a call, read from its first float array (a typed array or a DeviceArray).
napi_typedarray_type float_type(const Args& o, const char* name) {
  const Napi::Value v = o.Get(name);
  DeviceArrayView device;
  if (v.IsTypedArray() || unwrap_device_array(o.Env(), v, device)) {
    const napi_typedarray_type t = array_type(o, name);
    if (t == napi_float32_array || t == napi_float64_array) return t;
  }
  throw type_error(o, std::string(name) + " must be a Float32Array or Float64Array");
}

// True when the call's arrays are device arrays, so the CUDA launcher runs (the caller wraps it
// in `if constexpr (kFloat<T>)`: a device array is never float64). The plain-loop references
// run on the CPU only and refuse device arrays.
bool on_gpu(const Args& o, bool ref) {
  if (!o.on_cuda()) return false;
  if (ref) require_host(o, "the plain-loop reference (reference: true)");
  return true;
}

template <typename T>
constexpr bool kFloat = std::is_same_v<T, float>;

// Calls body<float> or body<double> by the type of the float array `key`.
template <template <typename> class Body>
Napi::Value dispatch(const Napi::CallbackInfo& info, const char* fn, const char* key,
                     const std::vector<const char*>& fields) {
  const Args o(info, fn, fields);
  const napi_typedarray_type type = float_type(o, key);
  if (type == napi_float32_array) Body<float>::run(o, type, reference_flag(o));
  else Body<double>::run(o, type, reference_flag(o));
  return info.Env().Undefined();
}

// ---- layer norm ----

template <typename T>
LayerNormParams<T> layer_norm_params(const Args& o, napi_typedarray_type type) {
  LayerNormParams<T> p;
  p.rows = dim_field(o, "rows");
  p.d = dim_field(o, "d");
  const int64_t n = checked_product(o.Env(), {p.rows, p.d});
  p.x = array_field<T>(o, "x", type, n);
  p.weight = optional_array<T>(o, "weight", type, p.d);
  p.mean = array_field<T>(o, "mean", type, p.rows);
  p.rstd = array_field<T>(o, "rstd", type, p.rows);
  return p;
}

template <typename T>
struct LayerNormForward {
  static void run(const Args& o, napi_typedarray_type type, bool ref) {
    LayerNormParams<T> p = layer_norm_params<T>(o, type);
    p.eps = number_in(o, "eps", 0, 1e300, false);
    p.bias = optional_array<T>(o, "bias", type, p.d);
    p.out = array_field<T>(o, "out", type, p.rows * p.d);
    if (on_gpu(o, ref)) {
      if constexpr (kFloat<T>) cuda::layer_norm_forward(p);
    } else {
      ref ? reference_layer_norm_forward(p) : layer_norm_forward(p);
    }
  }
};

template <typename T>
struct LayerNormBackward {
  static void run(const Args& o, napi_typedarray_type type, bool ref) {
    LayerNormParams<T> p = layer_norm_params<T>(o, type);
    p.dout = array_field<T>(o, "dout", type, p.rows * p.d);
    p.dx = optional_array<T>(o, "dx", type, p.rows * p.d);
    p.dweight = optional_array<T>(o, "dweight", type, p.d);
    p.dbias = optional_array<T>(o, "dbias", type, p.d);
    if (on_gpu(o, ref)) {
      if constexpr (kFloat<T>) cuda::layer_norm_backward(p);
    } else {
      ref ? reference_layer_norm_backward(p) : layer_norm_backward(p);
    }
  }
};

// ---- activations ----

enum class Act { Gelu, Relu };

template <Act act>
struct ActivationEntry {
  template <typename T>
  struct Forward {
    static void run(const Args& o, napi_typedarray_type type, bool ref) {
      ActivationParams<T> p;
      p.n = dim_field(o, "n");
      p.x = array_field<T>(o, "x", type, p.n);
      p.out = array_field<T>(o, "out", type, p.n);
      if (on_gpu(o, ref)) {
        if constexpr (kFloat<T>) act == Act::Gelu ? cuda::gelu_forward(p) : cuda::relu_forward(p);
      } else if (act == Act::Gelu) {
        ref ? reference_gelu_forward(p) : gelu_forward(p);
      } else {
        ref ? reference_relu_forward(p) : relu_forward(p);
      }
    }
  };
  template <typename T>
  struct Backward {
    static void run(const Args& o, napi_typedarray_type type, bool ref) {
      ActivationParams<T> p;
      p.n = dim_field(o, "n");
      p.x = array_field<T>(o, "x", type, p.n);
      p.dout = array_field<T>(o, "dout", type, p.n);
      p.dx = array_field<T>(o, "dx", type, p.n);
      if (on_gpu(o, ref)) {
        if constexpr (kFloat<T>) act == Act::Gelu ? cuda::gelu_backward(p) : cuda::relu_backward(p);
      } else if (act == Act::Gelu) {
        ref ? reference_gelu_backward(p) : gelu_backward(p);
      } else {
        ref ? reference_relu_backward(p) : relu_backward(p);
      }
    }
  };
};

// ---- dropout: forward maps x -> out, backward the same mask maps dout -> dx ----

template <bool backward>
struct DropoutEntry {
  template <typename T>
  struct Body {
    static void run(const Args& o, napi_typedarray_type type, bool ref) {
      DropoutParams<T> p;
      p.n = dim_field(o, "n");
      p.p = number_in(o, "p", 0, 1, false);
      p.seed = static_cast<uint64_t>(number_in(o, "seed", 0, 9007199254740991.0, true));
      p.in = array_field<T>(o, backward ? "dout" : "x", type, p.n);
      p.out = array_field<T>(o, backward ? "dx" : "out", type, p.n);
      if (on_gpu(o, ref)) {
        if constexpr (kFloat<T>) cuda::dropout_apply(p);
      } else {
        ref ? reference_dropout_apply(p) : dropout_apply(p);
      }
    }
  };
};

// ---- embedding ----

template <typename T>
EmbeddingParams<T> embedding_params(const Args& o, std::vector<int32_t>& ids) {
  EmbeddingParams<T> p;
  p.n = dim_field(o, "n");
  p.V = dim_field(o, "V");
  p.d = dim_field(o, "d");
  checked_product(o.Env(), {p.n, p.d});
  checked_product(o.Env(), {p.V, p.d});
  p.ids = int32_field(o, "ids", p.n, ids);
  if (!o.on_cuda())  // device ids: see int32_field
    for (int64_t i = 0; i < p.n; ++i)
      if (p.ids[i] < 0 || p.ids[i] >= p.V)
        throw range_error(o, "ids[" + std::to_string(i) + "] = " + std::to_string(p.ids[i]) + " is out of range [0, " +
                                 std::to_string(p.V) + ")");
  return p;
}

template <typename T>
struct EmbeddingForward {
  static void run(const Args& o, napi_typedarray_type type, bool ref) {
    std::vector<int32_t> ids;
    EmbeddingParams<T> p = embedding_params<T>(o, ids);
    p.weight = array_field<T>(o, "weight", type, p.V * p.d);
    p.out = array_field<T>(o, "out", type, p.n * p.d);
    if (on_gpu(o, ref)) {
      if constexpr (kFloat<T>) cuda::embedding_forward(p);
    } else {
      ref ? reference_embedding_forward(p) : embedding_forward(p);
    }
  }
};

template <typename T>
struct EmbeddingBackward {
  static void run(const Args& o, napi_typedarray_type type, bool ref) {
    std::vector<int32_t> ids;
    EmbeddingParams<T> p = embedding_params<T>(o, ids);
    p.padding_idx = is_absent(o.Get("paddingIdx")) ? -1 : static_cast<int64_t>(number_in(o, "paddingIdx", -1, double(p.V - 1), true));
    p.dout = array_field<T>(o, "dout", type, p.n * p.d);
    p.dweight = array_field<T>(o, "dweight", type, p.V * p.d);
    if (on_gpu(o, ref)) {
      if constexpr (kFloat<T>) cuda::embedding_backward(p);
    } else {
      ref ? reference_embedding_backward(p) : embedding_backward(p);
    }
  }
};

// ---- cross-entropy ----

template <typename T>
CrossEntropyParams<T> cross_entropy_params(const Args& o, napi_typedarray_type type, std::vector<int32_t>& targets) {
  CrossEntropyParams<T> p;
  p.N = dim_field(o, "N");
  p.C = dim_field(o, "C");
  const int64_t n = checked_product(o.Env(), {p.N, p.C});
  p.label_smoothing = number_in(o, "labelSmoothing", 0, 1, false);
  p.ignore_index = static_cast<int64_t>(number_in(o, "ignoreIndex", -9007199254740991.0, 9007199254740991.0, true));
  p.logits = array_field<T>(o, "logits", type, n);
  p.targets = int32_field(o, "targets", p.N, targets);
  if (!o.on_cuda())  // device targets: see int32_field
    for (int64_t i = 0; i < p.N; ++i) {
      const int64_t t = p.targets[i];
      if (t != p.ignore_index && (t < 0 || t >= p.C))
        throw range_error(o, "targets[" + std::to_string(i) + "] = " + std::to_string(t) + " is out of range [0, " +
                                 std::to_string(p.C) + ") and is not ignoreIndex");
    }
  p.lse = array_field<T>(o, "lse", type, p.N);
  return p;
}

template <typename T>
struct CrossEntropyForward {
  static void run(const Args& o, napi_typedarray_type type, bool ref) {
    std::vector<int32_t> targets;
    CrossEntropyParams<T> p = cross_entropy_params<T>(o, type, targets);
    p.loss = array_field<T>(o, "loss", type, p.N);
    if (on_gpu(o, ref)) {
      if constexpr (kFloat<T>) cuda::cross_entropy_forward(p);
    } else {
      ref ? reference_cross_entropy_forward(p) : cross_entropy_forward(p);
    }
  }
};

template <typename T>
struct CrossEntropyBackward {
  static void run(const Args& o, napi_typedarray_type type, bool ref) {
    std::vector<int32_t> targets;
    CrossEntropyParams<T> p = cross_entropy_params<T>(o, type, targets);
    p.dloss = array_field<T>(o, "dloss", type, p.N);
    p.dlogits = array_field<T>(o, "dlogits", type, p.N * p.C);
    if (on_gpu(o, ref)) {
      if constexpr (kFloat<T>) cuda::cross_entropy_backward(p);
    } else {
      ref ? reference_cross_entropy_backward(p) : cross_entropy_backward(p);
    }
  }
};

// Registers `name`; `fields` lists every field of its options object (read once, up front).
template <template <typename> class Body>
void add(Napi::Env env, Napi::Object exports, const char* name, const char* key, std::vector<const char*> fields) {
  fields.push_back("reference");
  exports.Set(name, Napi::Function::New(
                        env,
                        [name, key, fields](const Napi::CallbackInfo& info) {
                          return guard_call(info.Env(), [&] { return dispatch<Body>(info, name, key, fields); });
                        },
                        name));
}

}  // namespace

void register_nn(Napi::Env env, Napi::Object exports) {
  add<LayerNormForward>(env, exports, "layerNormForward", "x", {"x", "weight", "bias", "out", "mean", "rstd", "rows", "d", "eps"});
  add<LayerNormBackward>(env, exports, "layerNormBackward", "x",
                         {"x", "weight", "mean", "rstd", "dout", "dx", "dweight", "dbias", "rows", "d"});
  add<ActivationEntry<Act::Gelu>::Forward>(env, exports, "geluForward", "x", {"x", "out", "n"});
  add<ActivationEntry<Act::Gelu>::Backward>(env, exports, "geluBackward", "x", {"x", "dout", "dx", "n"});
  add<ActivationEntry<Act::Relu>::Forward>(env, exports, "reluForward", "x", {"x", "out", "n"});
  add<ActivationEntry<Act::Relu>::Backward>(env, exports, "reluBackward", "x", {"x", "dout", "dx", "n"});
  add<DropoutEntry<false>::Body>(env, exports, "dropoutForward", "x", {"x", "out", "n", "p", "seed"});
  add<DropoutEntry<true>::Body>(env, exports, "dropoutBackward", "dout", {"dout", "dx", "n", "p", "seed"});
  add<EmbeddingForward>(env, exports, "embeddingForward", "weight", {"ids", "weight", "out", "n", "V", "d"});
  add<EmbeddingBackward>(env, exports, "embeddingBackward", "dout", {"ids", "dout", "dweight", "n", "V", "d", "paddingIdx"});
  add<CrossEntropyForward>(env, exports, "crossEntropyForward", "logits",
                           {"logits", "targets", "loss", "lse", "N", "C", "labelSmoothing", "ignoreIndex"});
  add<CrossEntropyBackward>(env, exports, "crossEntropyBackward", "logits",
                            {"logits", "targets", "lse", "dloss", "dlogits", "N", "C", "labelSmoothing", "ignoreIndex"});
}

}  // namespace luna
