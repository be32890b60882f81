// N-API bindings of the softmax-attention kernels: one options object in, every field read
// once up front into a SoftmaxAttentionParams, then the kernel. native/INTERFACE-softmax.md
// documents the arguments. When the arrays are DeviceArrays (float32 only) the CUDA kernels run
// instead (cuda/softmax_cuda.h); the reference entries stay on the CPU.
#include "softmax_binding.h"

#include "../../cuda/softmax_cuda.h"
#include "../kernels/softmax_attention.h"
#include "../reference/softmax_reference.h"
#include "binding_util.h"

#include <string>

namespace luna {

namespace {

// One array of a call as a byte range, for the aliasing check.
struct Span {
  const char* name;
  const void* data;
  size_t bytes;
};

bool overlap(const Span& a, const Span& b) {
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return a.data && b.data && pa < pb + b.bytes && pb < pa + a.bytes;
}

// The kernels write their outputs while other tasks still read the inputs (the forward uses
// `out` as its accumulator), so an output that shares memory with an input or with another
// output would give garbage: refuse it. The one allowed alias is dk == dv for tied k/v.
template <typename T>
void check_disjoint(Napi::Env env, const SoftmaxAttentionParams<T>& p, bool backward) {
  const size_t q = size_t(p.B * p.h * p.n * p.dh) * sizeof(T), kv = size_t(p.B * p.h * p.m * p.dh) * sizeof(T);
  const size_t rows = size_t(p.B * p.h * p.n) * sizeof(T);
  const Span in[] = {{"q", p.q, q}, {"k", p.k, kv}, {"v", p.v, kv}, {"mask", p.mask, size_t(p.B * p.m)},
                     {"out", backward ? p.out : nullptr, q}, {"lse", backward ? p.lse : nullptr, rows},
                     {"dout", p.dout, q}};
  const Span fwd_out[] = {{"out", p.out, q}, {"lse", p.lse, rows}};
  const Span bwd_out[] = {{"dq", p.dq, q}, {"dk", p.dk, kv}, {"dv", p.tied() ? nullptr : p.dv, kv}};
  const Span* out = backward ? bwd_out : fwd_out;
  const size_t outs = backward ? 3 : 2;
  for (size_t i = 0; i < outs; ++i) {
    for (size_t j = i + 1; j < outs; ++j)
      if (overlap(out[i], out[j]))
        throw Napi::RangeError::New(env, std::string(out[i].name) + " and " + out[j].name + " must not share memory");
    for (const Span& s : in)
      if (overlap(out[i], s))
        throw Napi::RangeError::New(env, std::string(out[i].name) + " must not share memory with " + s.name);
  }
}

// Reads every field of a call into params; `backward` adds dout, dq, dk, dv.
template <typename T>
SoftmaxAttentionParams<T> read_params(const Args& o, napi_typedarray_type type, bool backward) {
  Napi::Env env = o.Env();
  SoftmaxAttentionParams<T> p;
  p.B = dim_field(o, "B");
  p.h = dim_field(o, "h");
  p.n = dim_field(o, "lq");
  p.m = dim_field(o, "lk");
  p.dh = dim_field(o, "dh");
  p.scale = finite_field(o, "scale");
  Napi::Value causal = o.Get("causal");
  if (!causal.IsUndefined()) {
    if (!causal.IsBoolean()) throw Napi::TypeError::New(env, "causal must be a boolean");
    p.causal = causal.As<Napi::Boolean>().Value();
  }
  Napi::Value dropout = o.Get("dropout");
  if (!dropout.IsUndefined()) {
    p.dropout = finite_field(o, "dropout");
    if (p.dropout < 0 || p.dropout >= 1) throw Napi::RangeError::New(env, "dropout must be in [0, 1)");
    const double seed = finite_field(o, "seed");
    if (seed < 0 || seed > 9007199254740991.0 || std::floor(seed) != seed)
      throw Napi::RangeError::New(env, "seed must be a non-negative safe integer");
    p.seed = static_cast<uint64_t>(seed);
  }
  const int64_t q_len = checked_product(env, {p.B, p.h, p.n, p.dh});
  const int64_t k_len = checked_product(env, {p.B, p.h, p.m, p.dh});
  const int64_t rows = checked_product(env, {p.B, p.h, p.n});
  p.q = array_field<T>(o, "q", type, q_len);
  p.k = array_field<T>(o, "k", type, k_len);
  p.v = array_field<T>(o, "v", type, k_len);
  p.out = array_field<T>(o, "out", type, q_len);
  p.lse = array_field<T>(o, "lse", type, rows);
  Napi::Value mask = o.Get("mask");
  if (!mask.IsNull() && !mask.IsUndefined())
    p.mask = array_field<uint8_t>(o, "mask", napi_uint8_array, checked_product(env, {p.B, p.m}));
  if (backward) {
    p.dout = array_field<T>(o, "dout", type, q_len);
    p.dq = array_field<T>(o, "dq", type, q_len);
    p.dk = array_field<T>(o, "dk", type, k_len);
    p.dv = array_field<T>(o, "dv", type, k_len);
    if (p.tied() != (p.dk == p.dv))
      throw Napi::TypeError::New(env, "dk and dv must be the same array exactly when k and v are (tied key/value)");
  }
  check_disjoint(env, p, backward);
  return p;
}

template <typename T>
void run(bool reference, bool backward, const SoftmaxAttentionParams<T>& p) {
  if (reference) backward ? softmax_reference_backward(p) : softmax_reference_forward(p);
  else backward ? softmax_attention_backward(p) : softmax_attention_forward(p);
}

// Device arrays: the CUDA kernels, queued on the library's stream (lib/ waits when it reads).
// The float64 references run on the CPU only.
void run_cuda(bool reference, bool backward, const SoftmaxAttentionParams<float>& p, const Args& o) {
  if (reference) require_host(o, backward ? "softmaxReferenceBackward" : "softmaxReferenceForward");
  else backward ? cuda::softmax_attention_backward(p) : cuda::softmax_attention_forward(p);
}

template <bool reference, bool backward>
Napi::Value softmax_entry(const Napi::CallbackInfo& info) {
  const Args o(info, "softmax attention",
               {"q", "k", "v", "mask", "out", "lse", "B", "h", "lq", "lk", "dh", "scale", "causal", "dropout", "seed",
                "dout", "dq", "dk", "dv"});
  Napi::Value q = o.Get("q");
  DeviceArrayView device_q;
  const bool q_on_device = unwrap_device_array(info.Env(), q, device_q);
  const napi_typedarray_type type = q_on_device ? device_q.type
                                    : q.IsTypedArray() ? q.As<Napi::TypedArray>().TypedArrayType()
                                                       : napi_uint8_clamped_array;
  if (type == napi_float32_array) {
    const SoftmaxAttentionParams<float> p = read_params<float>(o, type, backward);
    if (o.on_cuda()) run_cuda(reference, backward, p, o);
    else run(reference, backward, p);
  } else if (type == napi_float64_array) {
    run(reference, backward, read_params<double>(o, type, backward));  // a device array is never float64
  } else {
    throw Napi::TypeError::New(info.Env(), "q must be a Float32Array or Float64Array");
  }
  return info.Env().Undefined();
}

}  // namespace

void register_softmax(Napi::Env env, Napi::Object exports) {
  exports.Set("softmaxForward", Napi::Function::New(env, guarded<softmax_entry<false, false>>, "softmaxForward"));
  exports.Set("softmaxBackward", Napi::Function::New(env, guarded<softmax_entry<false, true>>, "softmaxBackward"));
  exports.Set("softmaxReferenceForward",
              Napi::Function::New(env, guarded<softmax_entry<true, false>>, "softmaxReferenceForward"));
  exports.Set("softmaxReferenceBackward",
              Napi::Function::New(env, guarded<softmax_entry<true, true>>, "softmaxReferenceBackward"));
}

}  // namespace luna
