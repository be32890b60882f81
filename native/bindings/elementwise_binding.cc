// N-API bindings of the elementwise, reduction and layout kernels: one options object in, a
// filled parameter struct out, then the kernel. The arguments are documented in
// native/INTERFACE-elementwise.md. Every index the kernel will touch is bounds-checked here, so
// a caller that bypasses lib/ gets a TypeError or RangeError, never a stray memory access.
// When the arrays are DeviceArrays (float32 only) the CUDA kernels run instead
// (cuda/elementwise_cuda.h); the reference entries stay on the CPU and refuse them.
#include "elementwise_binding.h"

#include <string>
#include <type_traits>

#include "../../cuda/elementwise_cuda.h"
#include "../kernels/elementwise.h"
#include "../reference/elementwise_reference.h"
#include "binding_util.h"

namespace luna {

namespace {

constexpr int64_t kMaxIndex = 2147483647;  // 2^31 - 1

// A float array field of any length, of the given element type: a typed array (host memory) or
// a DeviceArray (device memory).
template <typename T>
struct Span {
  T* data = nullptr;
  int64_t length = 0;
};

const char* type_name(napi_typedarray_type type) {
  return type == napi_float64_array ? "Float64Array" : "Float32Array";
}

// The element type of a call: that of its leading array, which must be a float typed array or a
// float32 DeviceArray.
napi_typedarray_type float_type(const Args& o, const char* name) {
  Napi::Value v = o.Get(name);
  DeviceArrayView d;
  if (unwrap_device_array(o.Env(), v, d)) {
    if (d.type == napi_float32_array) return d.type;
  } else if (v.IsTypedArray()) {
    const napi_typedarray_type t = v.As<Napi::TypedArray>().TypedArrayType();
    if (t == napi_float32_array || t == napi_float64_array) return t;
  }
  throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a Float32Array or Float64Array (or a float32 DeviceArray)");
}

// Records on `o` where the array lives, so that a call mixing host and device arrays is refused
// and o.on_cuda() tells which kernels to run.
template <typename T>
Span<T> span_field(const Args& o, const char* name, napi_typedarray_type type) {
  Napi::Value v = o.Get(name);
  DeviceArrayView d;
  if (unwrap_device_array(o.Env(), v, d)) {
    o.note_array(true, name);  // first: a device array among host arrays is refused as such
    if (d.type != type)
      throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a " + type_name(type) + " DeviceArray (like the first array)");
    return {static_cast<T*>(d.ptr), d.length};
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(o.Env(), std::string(name) + " must be a " + type_name(type) + " (like the first array)");
  o.note_array(false, name);
  Napi::TypedArray arr = v.As<Napi::TypedArray>();
  uint8_t* base = static_cast<uint8_t*>(arr.ArrayBuffer().Data());
  return {reinterpret_cast<T*>(base + arr.ByteOffset()), static_cast<int64_t>(arr.ElementLength())};
}

// An integer in [min_value, 2^31 - 1].
int64_t int_value(Napi::Env env, Napi::Value v, const std::string& name, int64_t min_value) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= static_cast<double>(min_value) && d <= static_cast<double>(kMaxIndex) && std::floor(d) == d))
    throw Napi::RangeError::New(env, name + " must be an integer in [" + std::to_string(min_value) + ", 2^31 - 1]");
  return static_cast<int64_t>(d);
}

int64_t int_field(const Args& o, const char* name, int64_t min_value) {
  return int_value(o.Env(), o.Get(name), name, min_value);
}

// An array of at most kMaxRank integers >= min_value, copied into dst; with expected_rank >= 0
// its length must be exactly that. Returns the length.
int int_list_field(const Args& o, const char* name, int64_t* dst, int64_t min_value, int expected_rank = -1) {
  Napi::Env env = o.Env();
  Napi::Value v = o.Get(name);
  if (!v.IsArray()) throw Napi::TypeError::New(env, std::string(name) + " must be an array of integers");
  Napi::Array arr = v.As<Napi::Array>();
  const uint32_t n = arr.Length();
  if (n > static_cast<uint32_t>(kMaxRank))
    throw Napi::RangeError::New(env, std::string(name) + " may have at most " + std::to_string(kMaxRank) + " entries");
  if (expected_rank >= 0 && n != static_cast<uint32_t>(expected_rank))
    throw Napi::RangeError::New(env, std::string(name) + " must have " + std::to_string(expected_rank) + " entries (one per output dim)");
  for (uint32_t i = 0; i < n; ++i)
    dst[i] = int_value(env, arr.Get(i), std::string(name) + "[" + std::to_string(i) + "]", min_value);
  return static_cast<int>(n);
}

// The element count of a shape, refusing 2^31 elements or more.
int64_t shape_size(Napi::Env env, int rank, const int64_t* shape) {
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) {
    n *= shape[d];  // each dim < 2^31 and n < 2^31 before: no overflow
    if (n > kMaxIndex) throw Napi::RangeError::New(env, "tensor too large (2^31 elements or more)");
  }
  return n;
}

// Throws unless every element read through `stride` over `shape` lies inside an array of
// `length` elements.
void check_reach(Napi::Env env, const char* name, int rank, const int64_t* shape, const int64_t* stride,
                 int64_t length) {
  int64_t last = 0;
  for (int d = 0; d < rank; ++d) {
    last += (shape[d] - 1) * stride[d];  // < 2^62 per term and last < length < 2^31: no overflow
    if (last >= length) break;
  }
  if (last >= length)
    throw Napi::RangeError::New(env, std::string(name) + " is too short for the given shape and strides (" +
                                         std::to_string(length) + " elements)");
}

void check_length(Napi::Env env, const char* name, int64_t length, int64_t expected) {
  if (length != expected)
    throw Napi::RangeError::New(env, std::string(name) + " must have " + std::to_string(expected) + " elements, got " +
                                         std::to_string(length));
}

BinaryOp read_op(const Args& o) {
  Napi::Value v = o.Get("op");
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  if (s == "add") return BinaryOp::Add;
  if (s == "sub") return BinaryOp::Sub;
  if (s == "mul") return BinaryOp::Mul;
  throw Napi::TypeError::New(o.Env(), "op must be 'add', 'sub' or 'mul'");
}

// { op, a, b, out, shape, aStrides, bStrides }
template <typename T>
BinaryParams<T> binary_params(const Args& o, napi_typedarray_type type) {
  Napi::Env env = o.Env();
  BinaryParams<T> p;
  p.op = read_op(o);
  p.rank = int_list_field(o, "shape", p.shape, 1);
  int_list_field(o, "aStrides", p.a_stride, 0, p.rank);
  int_list_field(o, "bStrides", p.b_stride, 0, p.rank);
  const int64_t n = shape_size(env, p.rank, p.shape);
  const Span<T> a = span_field<T>(o, "a", type), b = span_field<T>(o, "b", type), out = span_field<T>(o, "out", type);
  check_reach(env, "a", p.rank, p.shape, p.a_stride, a.length);
  check_reach(env, "b", p.rank, p.shape, p.b_stride, b.length);
  check_length(env, "out", out.length, n);
  p.a = a.data;
  p.b = b.data;
  p.out = out.data;
  return p;
}

// { x, out, shape, strides }
template <typename T>
StridedCopyParams<T> copy_params(const Args& o, napi_typedarray_type type) {
  Napi::Env env = o.Env();
  StridedCopyParams<T> p;
  p.rank = int_list_field(o, "shape", p.shape, 1);
  int_list_field(o, "strides", p.stride, 0, p.rank);
  const int64_t n = shape_size(env, p.rank, p.shape);
  const Span<T> x = span_field<T>(o, "x", type), out = span_field<T>(o, "out", type);
  check_reach(env, "x", p.rank, p.shape, p.stride, x.length);
  check_length(env, "out", out.length, n);
  p.x = x.data;
  p.out = out.data;
  return p;
}

// { x, out, shape, outShape }
template <typename T>
ReduceParams<T> reduce_params(const Args& o, napi_typedarray_type type) {
  Napi::Env env = o.Env();
  ReduceParams<T> p;
  p.rank = int_list_field(o, "shape", p.in_shape, 1);
  int_list_field(o, "outShape", p.out_shape, 1, p.rank);
  for (int d = 0; d < p.rank; ++d) {
    if (p.out_shape[d] != 1 && p.out_shape[d] != p.in_shape[d])
      throw Napi::RangeError::New(env, "outShape[" + std::to_string(d) + "] must be 1 or shape[" + std::to_string(d) + "]");
  }
  const Span<T> x = span_field<T>(o, "x", type), out = span_field<T>(o, "out", type);
  check_length(env, "x", x.length, shape_size(env, p.rank, p.in_shape));
  check_length(env, "out", out.length, shape_size(env, p.rank, p.out_shape));
  p.x = x.data;
  p.out = out.data;
  return p;
}

template <typename T>
void scale_call(const Args& o, napi_typedarray_type type) {
  const Span<T> x = span_field<T>(o, "x", type), out = span_field<T>(o, "out", type);
  check_length(o.Env(), "out", out.length, x.length);
  const T a = static_cast<T>(finite_field(o, "scale"));
  const T b = static_cast<T>(finite_field(o, "offset"));
  if (x.length == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (o.on_cuda()) return cuda::scale_shift(x.data, out.data, x.length, a, b);
  }
  scale_shift(x.data, out.data, x.length, a, b);
}

// { src, dst, rows, cols, srcStride, srcOffset, dstStride, dstOffset }
template <typename T>
void blocks_call(const Args& o, napi_typedarray_type type) {
  Napi::Env env = o.Env();
  BlockCopyParams<T> p;
  p.rows = int_field(o, "rows", 1);
  p.cols = int_field(o, "cols", 1);
  p.src_stride = int_field(o, "srcStride", 0);
  p.src_offset = int_field(o, "srcOffset", 0);
  p.dst_stride = int_field(o, "dstStride", 0);
  p.dst_offset = int_field(o, "dstOffset", 0);
  if (p.rows > 1 && p.dst_stride < p.cols)
    throw Napi::RangeError::New(env, "dstStride must be at least cols when rows > 1 (rows must not overlap)");
  const Span<T> src = span_field<T>(o, "src", type), dst = span_field<T>(o, "dst", type);
  // offset + (rows - 1) * stride + cols < 2^31 + 2^62 + 2^31: no overflow.
  if (p.src_offset + (p.rows - 1) * p.src_stride + p.cols > src.length)
    throw Napi::RangeError::New(env, "src is too short for rows, cols, srcStride and srcOffset");
  if (p.dst_offset + (p.rows - 1) * p.dst_stride + p.cols > dst.length)
    throw Napi::RangeError::New(env, "dst is too short for rows, cols, dstStride and dstOffset");
  p.src = src.data;
  p.dst = dst.data;
  if constexpr (std::is_same_v<T, float>) {
    if (o.on_cuda()) return cuda::copy_blocks(p);
  }
  copy_blocks(p);
}

enum class Entry { Binary, RefBinary, Scale, Copy, RefCopy, Reduce, RefReduce, Blocks };

// The name of the array that sets the element type of each entry.
const char* leading_array(Entry e) {
  switch (e) {
    case Entry::Binary:
    case Entry::RefBinary: return "a";
    case Entry::Blocks: return "src";
    default: return "x";
  }
}

// Device arrays (float32 only): the CUDA kernels, queued on the library's stream (lib/ waits when
// it reads the result). The reference entries run on the CPU only.
void run_cuda(Entry e, const Args& o) {
  constexpr napi_typedarray_type f32 = napi_float32_array;
  switch (e) {
    case Entry::Binary: cuda::binary_op(binary_params<float>(o, f32)); break;
    case Entry::Copy: cuda::strided_copy(copy_params<float>(o, f32)); break;
    case Entry::Reduce: cuda::reduce_to(reduce_params<float>(o, f32)); break;
    case Entry::Scale: scale_call<float>(o, f32); break;
    case Entry::Blocks: blocks_call<float>(o, f32); break;
    // Read (so the arguments are checked as on the CPU, and o.on_cuda() is set), then refused.
    case Entry::RefBinary: binary_params<float>(o, f32); require_host(o, "referenceElementwiseBinary"); break;
    case Entry::RefCopy: copy_params<float>(o, f32); require_host(o, "referenceStridedCopy"); break;
    case Entry::RefReduce: reduce_params<float>(o, f32); require_host(o, "referenceReduceSum"); break;
  }
}

template <typename T>
void run(Entry e, const Args& o, napi_typedarray_type type) {
  switch (e) {
    case Entry::Binary: binary_op(binary_params<T>(o, type)); break;
    case Entry::RefBinary: reference_binary(binary_params<T>(o, type)); break;
    case Entry::Scale: scale_call<T>(o, type); break;
    case Entry::Copy: strided_copy(copy_params<T>(o, type)); break;
    case Entry::RefCopy: reference_strided_copy(copy_params<T>(o, type)); break;
    case Entry::Reduce: reduce_to(reduce_params<T>(o, type)); break;
    case Entry::RefReduce: reference_reduce_to(reduce_params<T>(o, type)); break;
    case Entry::Blocks: blocks_call<T>(o, type); break;
  }
}

// The fields each entry reads (see Args: all of them are read before any data pointer is taken).
Args read_args(Entry e, const Napi::CallbackInfo& info) {
  switch (e) {
    case Entry::Binary:
    case Entry::RefBinary: return Args(info, "elementwiseBinary", {"op", "a", "b", "out", "shape", "aStrides", "bStrides"});
    case Entry::Scale: return Args(info, "scaleShift", {"x", "out", "scale", "offset"});
    case Entry::Copy:
    case Entry::RefCopy: return Args(info, "stridedCopy", {"x", "out", "shape", "strides"});
    case Entry::Reduce:
    case Entry::RefReduce: return Args(info, "reduceSum", {"x", "out", "shape", "outShape"});
    case Entry::Blocks:
      return Args(info, "copyBlocks", {"src", "dst", "rows", "cols", "srcStride", "srcOffset", "dstStride", "dstOffset"});
  }
  throw std::logic_error("internal: unknown elementwise entry");
}

template <Entry e>
Napi::Value entry(const Napi::CallbackInfo& info) {
  const Args o = read_args(e, info);
  const napi_typedarray_type type = float_type(o, leading_array(e));
  // The leading array decides where the call runs; span_field refuses any other array that
  // lives on the other side.
  DeviceArrayView lead;
  if (unwrap_device_array(o.Env(), o.Get(leading_array(e)), lead)) run_cuda(e, o);
  else if (type == napi_float32_array) run<float>(e, o, type);
  else run<double>(e, o, type);
  return info.Env().Undefined();
}

}  // namespace

void register_elementwise(Napi::Env env, Napi::Object exports) {
  exports.Set("elementwiseBinary", Napi::Function::New(env, guarded<entry<Entry::Binary>>, "elementwiseBinary"));
  exports.Set("scaleShift", Napi::Function::New(env, guarded<entry<Entry::Scale>>, "scaleShift"));
  exports.Set("stridedCopy", Napi::Function::New(env, guarded<entry<Entry::Copy>>, "stridedCopy"));
  exports.Set("reduceSum", Napi::Function::New(env, guarded<entry<Entry::Reduce>>, "reduceSum"));
  exports.Set("copyBlocks", Napi::Function::New(env, guarded<entry<Entry::Blocks>>, "copyBlocks"));
  exports.Set("referenceElementwiseBinary",
              Napi::Function::New(env, guarded<entry<Entry::RefBinary>>, "referenceElementwiseBinary"));
  exports.Set("referenceStridedCopy", Napi::Function::New(env, guarded<entry<Entry::RefCopy>>, "referenceStridedCopy"));
  exports.Set("referenceReduceSum", Napi::Function::New(env, guarded<entry<Entry::RefReduce>>, "referenceReduceSum"));
}

}  // namespace luna
