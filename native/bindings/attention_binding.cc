// N-API bindings of the attention kernels: one options object in, a filled AttentionParams out,
// then the kernel. The argument shapes are documented in native/INTERFACE.md. When the arrays
// are DeviceArrays (float32 only) the CUDA kernels run instead (cuda/attention_cuda.h); the
// float64 reference entries stay on the CPU.
#include "attention_binding.h"

#include "../../cuda/attention_cuda.h"
#include "../kernels/attention.h"
#include "../reference/attention_reference.h"
#include "binding_util.h"

namespace luna {

namespace {

enum class Op { Pack, Unpack, Reference };

// Reads every field of a call into params; `backward` adds dout, dq, dk, dv.
template <typename T>
AttentionParams<T> read_params(const Args& o, napi_typedarray_type type, bool backward) {
  AttentionParams<T> p;
  p.B = dim_field(o, "B");
  p.h = dim_field(o, "h");
  p.lq = dim_field(o, "lq");
  p.lk = dim_field(o, "lk");
  p.dh = dim_field(o, "dh");
  p.scale = finite_field(o, "scale");
  Napi::Value dropout = o.Get("dropout");
  if (!dropout.IsUndefined()) {
    p.dropout = finite_field(o, "dropout");
    if (p.dropout < 0 || p.dropout >= 1) throw Napi::RangeError::New(o.Env(), "dropout must be in [0, 1)");
    const double seed = finite_field(o, "seed");
    if (seed < 0 || seed > 9007199254740991.0 || std::floor(seed) != seed)
      throw Napi::RangeError::New(o.Env(), "seed must be a non-negative safe integer");
    p.seed = static_cast<uint64_t>(seed);
  }
  Napi::Env env = o.Env();
  const int64_t q_len = checked_product(env, {p.B, p.h, p.lq, p.dh});
  const int64_t k_len = checked_product(env, {p.B, p.h, p.lk, p.dh});
  const int64_t rows = checked_product(env, {p.B, p.h, p.lq});
  p.q = array_field<T>(o, "q", type, q_len);
  p.k = array_field<T>(o, "k", type, k_len);
  p.v = array_field<T>(o, "v", type, k_len);
  p.out = array_field<T>(o, "out", type, q_len);
  p.lse = array_field<T>(o, "lse", type, rows);
  Napi::Value mask = o.Get("mask");
  if (!mask.IsNull() && !mask.IsUndefined())
    p.mask = array_field<uint8_t>(o, "mask", napi_uint8_array, checked_product(env, {p.B, p.lk}));
  if (backward) {
    p.dout = array_field<T>(o, "dout", type, q_len);
    p.dq = array_field<T>(o, "dq", type, q_len);
    p.dk = array_field<T>(o, "dk", type, k_len);
    p.dv = array_field<T>(o, "dv", type, k_len);
    if (p.tied() != (p.dk == p.dv))
      throw Napi::TypeError::New(env, "dk and dv must be the same array exactly when k and v are (tied key/value)");
  }
  return p;
}

template <typename T>
void run(Op op, bool backward, const AttentionParams<T>& p) {
  switch (op) {
    case Op::Pack: backward ? pack_backward(p) : pack_forward(p); break;
    case Op::Unpack: backward ? unpack_backward(p) : unpack_forward(p); break;
    case Op::Reference: backward ? reference_backward(p) : reference_forward(p); break;
  }
}

// Device arrays: the CUDA kernels (queued on the library's stream; lib/ waits when it reads).
void run_cuda(Op op, bool backward, const AttentionParams<float>& p, const Args& o) {
  switch (op) {
    case Op::Pack: backward ? cuda::pack_backward(p) : cuda::pack_forward(p); break;
    case Op::Unpack: backward ? cuda::unpack_backward(p) : cuda::unpack_forward(p); break;
    case Op::Reference: require_host(o, backward ? "referenceBackward" : "referenceForward"); break;
  }
}

template <Op op, bool backward>
Napi::Value attention_entry(const Napi::CallbackInfo& info) {
  const Args o(info, "attention",
               {"q", "k", "v", "mask", "out", "lse", "B", "h", "lq", "lk", "dh", "scale", "dropout", "seed", "dout",
                "dq", "dk", "dv"});
  const napi_typedarray_type type = array_type(o, "q");
  if (type == napi_float32_array) {
    const AttentionParams<float> p = read_params<float>(o, type, backward);
    if (o.on_cuda()) run_cuda(op, backward, p, o);
    else run(op, backward, p);
  } else if (type == napi_float64_array) {
    run(op, backward, read_params<double>(o, type, backward));  // a device array is never float64
  } else {
    throw Napi::TypeError::New(info.Env(), "q must be a Float32Array or Float64Array");
  }
  return info.Env().Undefined();
}

}  // namespace

void register_attention(Napi::Env env, Napi::Object exports) {
  exports.Set("packForward", Napi::Function::New(env, guarded<attention_entry<Op::Pack, false>>, "packForward"));
  exports.Set("packBackward", Napi::Function::New(env, guarded<attention_entry<Op::Pack, true>>, "packBackward"));
  exports.Set("unpackForward", Napi::Function::New(env, guarded<attention_entry<Op::Unpack, false>>, "unpackForward"));
  exports.Set("unpackBackward", Napi::Function::New(env, guarded<attention_entry<Op::Unpack, true>>, "unpackBackward"));
  exports.Set("referenceForward", Napi::Function::New(env, guarded<attention_entry<Op::Reference, false>>, "referenceForward"));
  exports.Set("referenceBackward", Napi::Function::New(env, guarded<attention_entry<Op::Reference, true>>, "referenceBackward"));
}

}  // namespace luna
