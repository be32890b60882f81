// N-API bindings of the GEMM family: one options object in, a filled GemmParams out, then the
// kernel. The argument shapes are documented in native/INTERFACE-gemm.md. Float32 DeviceArrays
// instead of typed arrays run the call on the GPU (cuda/gemm_cuda.h); the references stay on the
// CPU and refuse them.
#include "gemm_binding.h"

#include <cstdint>
#include <string>
#include <type_traits>

#include "../../cuda/gemm_cuda.h"
#include "../kernels/gemm.h"
#include "../reference/gemm_reference.h"
#include "binding_util.h"

namespace luna {

namespace {

// A non-negative integer below 2^31; `fallback` when the field is absent (undefined).
int64_t count_field(const Args& o, const char* name, int64_t fallback) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined()) return fallback;
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 0 && d <= 2147483647.0 && std::floor(d) == d))
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a non-negative integer below 2^31");
  return static_cast<int64_t>(d);
}

bool bool_field(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined()) return false;
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

double number_field(const Args& o, const char* name, double fallback) {
  if (o.Get(name).IsUndefined()) return fallback;
  return finite_field(o, name);
}

bool absent(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  return v.IsUndefined() || v.IsNull();
}

// The element type of a call, from its first array (`first`): a typed array or a DeviceArray
// (always float32; float64 never reaches the GPU).
napi_typedarray_type float_type(const Args& o, const char* first) {
  const napi_typedarray_type t = array_type(o, first);
  if (t == napi_float32_array || t == napi_float64_array) return t;
  throw Napi::TypeError::New(o.Env(), std::string(first) + " must be a Float32Array or Float64Array");
}

// The kernels read inputs while writing the output, so an output sharing memory with an input
// would give garbage; refuse it.
template <typename T>
void check_disjoint(Napi::Env env, const T* out, int64_t out_len, const T* in, int64_t in_len, const char* what) {
  const auto o0 = reinterpret_cast<uintptr_t>(out), i0 = reinterpret_cast<uintptr_t>(in);
  const uintptr_t o1 = o0 + uintptr_t(out_len) * sizeof(T), i1 = i0 + uintptr_t(in_len) * sizeof(T);
  if (out_len > 0 && in_len > 0 && o0 < i1 && i0 < o1) throw Napi::TypeError::New(env, what);
}

template <typename T>
GemmParams<T> read_gemm(const Args& o, napi_typedarray_type type) {
  Napi::Env env = o.Env();
  GemmParams<T> p;
  p.M = count_field(o, "M", -1);
  p.N = count_field(o, "N", -1);
  p.K = count_field(o, "K", -1);
  if (p.M < 0 || p.N < 0 || p.K < 0) throw Napi::RangeError::New(env, "M, N and K are required");
  p.batch = count_field(o, "batch", 1);
  p.trans_a = bool_field(o, "transA");
  p.trans_b = bool_field(o, "transB");
  p.alpha = static_cast<T>(number_field(o, "alpha", 1.0));
  p.beta = static_cast<T>(number_field(o, "beta", 0.0));
  const int64_t a_len = checked_product(env, {p.batch, p.M, p.K});
  const int64_t b_len = checked_product(env, {p.batch, p.K, p.N});
  const int64_t c_len = checked_product(env, {p.batch, p.M, p.N});
  p.a = array_field<T>(o, "a", type, a_len);
  p.b = array_field<T>(o, "b", type, b_len);
  p.c = array_field<T>(o, "c", type, c_len);
  if (!absent(o, "bias")) p.bias = array_field<T>(o, "bias", type, p.N);
  check_disjoint(env, p.c, c_len, p.a, a_len, "c must not share memory with a");
  check_disjoint(env, p.c, c_len, p.b, b_len, "c must not share memory with b");
  if (p.bias) check_disjoint(env, p.c, c_len, p.bias, p.N, "c must not share memory with bias");
  // Dense row-major operands: op(A) is M x K, stored K x M when transposed; likewise B.
  p.lda = p.trans_a ? p.M : p.K;
  p.ldb = p.trans_b ? p.K : p.N;
  p.ldc = p.N;
  p.batch_stride_a = p.M * p.K;
  p.batch_stride_b = p.K * p.N;
  p.batch_stride_c = p.M * p.N;
  return p;
}

template <bool reference>
Napi::Value gemm_entry(const Napi::CallbackInfo& info) {
  const Args o(info, reference ? "gemmReference" : "gemm",
               {"a", "b", "c", "M", "N", "K", "transA", "transB", "alpha", "beta", "batch", "bias"});
  const napi_typedarray_type type = float_type(o, "a");
  if (type == napi_float32_array) {
    const GemmParams<float> p = read_gemm<float>(o, type);
    if (reference) {
      require_host(o, "gemmReference");
      gemm_reference(p);
    } else if (o.on_cuda()) {
      cuda::gemm(p);
    } else {
      gemm(p);
    }
  } else {
    const GemmParams<double> p = read_gemm<double>(o, type);
    reference ? gemm_reference(p) : gemm(p);
  }
  return info.Env().Undefined();
}

// biasAdd({ y, bias, rows, cols }): y[rows x cols] += bias on every row.
template <typename T>
void bias_add_typed(const Args& o, napi_typedarray_type type) {
  const int64_t rows = count_field(o, "rows", -1), cols = count_field(o, "cols", -1);
  if (rows < 0 || cols < 0) throw Napi::RangeError::New(o.Env(), "rows and cols are required");
  const int64_t len = checked_product(o.Env(), {rows, cols});
  T* y = array_field<T>(o, "y", type, len);
  const T* bias = array_field<T>(o, "bias", type, cols);
  check_disjoint(o.Env(), y, len, bias, cols, "y must not share memory with bias");
  if constexpr (std::is_same_v<T, float>) {
    if (o.on_cuda()) return cuda::bias_add(rows, cols, bias, y, cols);
  }
  bias_add(rows, cols, bias, y, cols);
}

Napi::Value bias_add_entry(const Napi::CallbackInfo& info) {
  const Args o(info, "biasAdd", {"y", "bias", "rows", "cols"});
  const napi_typedarray_type type = float_type(o, "y");
  if (type == napi_float32_array) bias_add_typed<float>(o, type);
  else bias_add_typed<double>(o, type);
  return info.Env().Undefined();
}

// columnSum({ x, out, rows, cols, accumulate? }): out[j] (+)= sum_i x[i, j].
template <typename T, bool reference>
void column_sum_typed(const Args& o, napi_typedarray_type type) {
  const int64_t rows = count_field(o, "rows", -1), cols = count_field(o, "cols", -1);
  if (rows < 0 || cols < 0) throw Napi::RangeError::New(o.Env(), "rows and cols are required");
  const int64_t len = checked_product(o.Env(), {rows, cols});
  const T* x = array_field<T>(o, "x", type, len);
  T* out = array_field<T>(o, "out", type, cols);
  check_disjoint(o.Env(), out, cols, x, len, "out must not share memory with x");
  if (reference) {
    require_host(o, "columnSumReference");
    if (bool_field(o, "accumulate")) throw Napi::TypeError::New(o.Env(), "columnSumReference does not accumulate");
    column_sum_reference(rows, cols, x, cols, out);
  } else if constexpr (std::is_same_v<T, float>) {
    if (o.on_cuda()) cuda::column_sum(rows, cols, x, cols, out, bool_field(o, "accumulate"));
    else column_sum(rows, cols, x, cols, out, bool_field(o, "accumulate"));
  } else {
    column_sum(rows, cols, x, cols, out, bool_field(o, "accumulate"));
  }
}

template <bool reference>
Napi::Value column_sum_entry(const Napi::CallbackInfo& info) {
  const Args o(info, reference ? "columnSumReference" : "columnSum", {"x", "out", "rows", "cols", "accumulate"});
  const napi_typedarray_type type = float_type(o, "x");
  if (type == napi_float32_array) column_sum_typed<float, reference>(o, type);
  else column_sum_typed<double, reference>(o, type);
  return info.Env().Undefined();
}

}  // namespace

void register_gemm(Napi::Env env, Napi::Object exports) {
  exports.Set("gemm", Napi::Function::New(env, guarded<gemm_entry<false>>, "gemm"));
  exports.Set("gemmReference", Napi::Function::New(env, guarded<gemm_entry<true>>, "gemmReference"));
  exports.Set("biasAdd", Napi::Function::New(env, guarded<bias_add_entry>, "biasAdd"));
  exports.Set("columnSum", Napi::Function::New(env, guarded<column_sum_entry<false>>, "columnSum"));
  exports.Set("columnSumReference", Napi::Function::New(env, guarded<column_sum_entry<true>>, "columnSumReference"));
}

}  // namespace luna
