// N-API bindings of the causal Luna kernels: one options object in, a filled CausalParams out,
// then the kernel. The argument shapes are documented in native/INTERFACE-causal.md. When the
// arrays are DeviceArrays (float32 only) the CUDA kernels run instead (cuda/causal_cuda.h); the
// float64 references stay CPU-only.
#include "causal_binding.h"

#include <string>
#include <utility>
#include <vector>

#include "../../cuda/causal_cuda.h"
#include "../kernels/causal_luna.h"
#include "../reference/causal_reference.h"
#include "binding_util.h"

namespace luna {

namespace {

enum class Op { Forward, Backward, ReferenceForward, ReferenceBackward, Step };

bool is_backward(Op op) { return op == Op::Backward || op == Op::ReferenceBackward; }

const char* op_name(Op op) {
  switch (op) {
    case Op::Forward: return "causalForward";
    case Op::Backward: return "causalBackward";
    case Op::ReferenceForward: return "causalReferenceForward";
    case Op::ReferenceBackward: return "causalReferenceBackward";
    default: return "causalStep";
  }
}

std::vector<const char*> field_names(Op op) {
  std::vector<const char*> f = {"q", "k", "v", "kc", "pq", "mask", "B", "h", "n", "l", "dh", "scale", "activation", "chunk"};
  if (is_backward(op)) {
    for (const char* x : {"dout", "dq", "dk", "dv", "dkc", "dpq"}) f.push_back(x);
  } else {
    f.push_back("out");
    f.push_back("lse");
  }
  if (op == Op::Step) {
    for (const char* x : {"stateK", "stateV", "steps"}) f.push_back(x);
  } else {
    f.push_back("dropout");
    f.push_back("seed");
  }
  return f;
}

bool present(const Napi::Value& v) { return !v.IsUndefined() && !v.IsNull(); }

// A non-negative safe integer (exact in a double): a seed or a step count.
int64_t count_field(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d))
    throw Napi::RangeError::New(o.Env(), std::string(name) + " must be a non-negative safe integer");
  return static_cast<int64_t>(d);
}

// The byte range of an array the kernel reads or writes, for the aliasing check.
struct Range {
  const char* name;
  const uint8_t* begin;
  const uint8_t* end;
};

template <typename T>
Range range_of(const char* name, const T* p, int64_t len) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(p);
  return {name, b, b + len * int64_t(sizeof(T))};
}

// Outputs must not overlap any input or another output: the kernels read inputs while they write
// outputs, so an overlap would give wrong numbers (the tied dk == dv is one output, listed once).
void check_no_overlap(Napi::Env env, const std::vector<Range>& outputs, const std::vector<Range>& inputs) {
  auto overlap = [](const Range& a, const Range& b) { return a.begin < b.end && b.begin < a.end; };
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = i + 1; j < outputs.size(); ++j)
      if (overlap(outputs[i], outputs[j]))
        throw Napi::RangeError::New(env, std::string(outputs[i].name) + " and " + outputs[j].name + " must not share memory");
    for (const Range& in : inputs)
      if (overlap(outputs[i], in))
        throw Napi::RangeError::New(env, std::string(outputs[i].name) + " must not share memory with " + in.name);
  }
}

// Reads every field of a call into params.
template <typename T>
CausalParams<T> read_params(Op op, const Args& o, napi_typedarray_type type) {
  Napi::Env env = o.Env();
  CausalParams<T> p;
  p.B = dim_field(o, "B");
  p.h = dim_field(o, "h");
  p.n = dim_field(o, "n");
  p.l = dim_field(o, "l");
  p.dh = dim_field(o, "dh");
  p.scale = finite_field(o, "scale");
  // The op scales both logits; decoding is given the pack query already scaled.
  p.pack_scale = op == Op::Step ? 1.0 : p.scale;
  Napi::Value act = o.Get("activation");
  if (present(act)) {
    const std::string a = act.IsString() ? act.As<Napi::String>().Utf8Value() : std::string();
    if (a == "softplus") p.activation = CausalActivation::Softplus;
    else if (a == "elu") p.activation = CausalActivation::EluPlusOne;
    else throw Napi::TypeError::New(env, "activation must be \"softplus\" or \"elu\"");
  }
  if (present(o.Get("chunk"))) p.chunk = dim_field(o, "chunk");
  if (op == Op::Step) {
    p.t0 = count_field(o, "steps");
  } else if (present(o.Get("dropout"))) {
    p.dropout = finite_field(o, "dropout");
    if (p.dropout < 0 || p.dropout >= 1) throw Napi::RangeError::New(env, "dropout must be in [0, 1)");
    p.seed = static_cast<uint64_t>(count_field(o, "seed"));
  }
  // Every size product is checked before any pointer is taken.
  const int64_t x_len = checked_product(env, {p.B, p.h, p.n, p.dh});
  const int64_t p_len = checked_product(env, {p.B, p.h, p.l, p.dh});
  const int64_t rows = checked_product(env, {p.B, p.h, p.n});
  const int64_t mask_len = checked_product(env, {p.B, p.l});
  checked_product(env, {p.B, p.h, p.n, p.l});  // dropout counters index (B, h, n, l)
  p.q = array_field<T>(o, "q", type, x_len);
  p.k = array_field<T>(o, "k", type, x_len);
  p.v = array_field<T>(o, "v", type, x_len);
  p.kc = array_field<T>(o, "kc", type, x_len);
  p.pq = array_field<T>(o, "pq", type, p_len);
  if (present(o.Get("mask"))) p.mask = array_field<uint8_t>(o, "mask", napi_uint8_array, mask_len);
  std::vector<Range> in = {range_of("q", p.q, x_len), range_of("k", p.k, x_len), range_of("v", p.v, x_len),
                           range_of("kc", p.kc, x_len), range_of("pq", p.pq, p_len)};
  if (p.mask) in.push_back(range_of("mask", p.mask, mask_len));
  std::vector<Range> out;
  if (is_backward(op)) {
    p.dout = array_field<T>(o, "dout", type, x_len);
    in.push_back(range_of("dout", p.dout, x_len));
    p.dq = array_field<T>(o, "dq", type, x_len);
    p.dk = array_field<T>(o, "dk", type, x_len);
    p.dv = array_field<T>(o, "dv", type, x_len);
    p.dkc = array_field<T>(o, "dkc", type, x_len);
    p.dpq = array_field<T>(o, "dpq", type, p_len);
    if (p.tied() != (p.dk == p.dv))
      throw Napi::TypeError::New(env, "dk and dv must be the same array exactly when k and v are (tied key/value)");
    out.push_back(range_of("dq", p.dq, x_len));
    out.push_back(range_of("dk", p.dk, x_len));
    out.push_back(range_of("dkc", p.dkc, x_len));
    out.push_back(range_of("dpq", p.dpq, p_len));
    if (!p.tied()) out.push_back(range_of("dv", p.dv, x_len));
  } else {
    p.out = array_field<T>(o, "out", type, x_len);
    out.push_back(range_of("out", p.out, x_len));
    if (present(o.Get("lse"))) {
      p.lse = array_field<T>(o, "lse", type, rows);
      out.push_back(range_of("lse", p.lse, rows));
    }
  }
  if (op == Op::Step) {
    p.state_k = array_field<T>(o, "stateK", type, p_len);
    p.state_v = array_field<T>(o, "stateV", type, p_len);
    out.push_back(range_of("stateK", p.state_k, p_len));
    out.push_back(range_of("stateV", p.state_v, p_len));
  }
  check_no_overlap(env, out, in);
  return p;
}

template <typename T>
void run(Op op, const CausalParams<T>& p) {
  switch (op) {
    case Op::Forward: causal_forward(p); break;
    case Op::Backward: causal_backward(p); break;
    case Op::ReferenceForward: causal_reference_forward(p); break;
    case Op::ReferenceBackward: causal_reference_backward(p); break;
    case Op::Step: causal_step(p); break;
  }
}

// Device arrays: the CUDA kernels (queued on the library's stream; lib/ waits when it reads).
void run_cuda(Op op, const CausalParams<float>& p, const Args& o) {
  switch (op) {
    case Op::Forward: cuda::causal_forward(p); break;
    case Op::Backward: cuda::causal_backward(p); break;
    case Op::Step: cuda::causal_step(p); break;
    case Op::ReferenceForward:
    case Op::ReferenceBackward: require_host(o, op_name(op)); break;
  }
}

template <Op op>
Napi::Value causal_entry(const Napi::CallbackInfo& info) {
  const Args o(info, op_name(op), field_names(op));
  const napi_typedarray_type type = array_type(o, "q");
  if (type == napi_float32_array) {
    const CausalParams<float> p = read_params<float>(op, o, type);
    if (o.on_cuda()) run_cuda(op, p, o);
    else run(op, p);
  } else if (type == napi_float64_array) {
    run(op, read_params<double>(op, o, type));  // a device array is never float64
  } else {
    throw Napi::TypeError::New(info.Env(), "q must be a Float32Array or Float64Array");
  }
  return info.Env().Undefined();
}

}  // namespace

void register_causal(Napi::Env env, Napi::Object exports) {
  exports.Set("causalForward", Napi::Function::New(env, guarded<causal_entry<Op::Forward>>, "causalForward"));
  exports.Set("causalBackward", Napi::Function::New(env, guarded<causal_entry<Op::Backward>>, "causalBackward"));
  exports.Set("causalReferenceForward",
              Napi::Function::New(env, guarded<causal_entry<Op::ReferenceForward>>, "causalReferenceForward"));
  exports.Set("causalReferenceBackward",
              Napi::Function::New(env, guarded<causal_entry<Op::ReferenceBackward>>, "causalReferenceBackward"));
  exports.Set("causalStep", Napi::Function::New(env, guarded<causal_entry<Op::Step>>, "causalStep"));
}

}  // namespace luna
