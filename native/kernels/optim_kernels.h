// The optimizers' fused updates (Adam/AdamW, SGD) and the gradient-norm reductions behind
// clipGradNorm: one parameter struct per kernel, templates over the storage type (float,
// double), instantiated in optim_kernels.cc. cuda/optim.cu runs the same per-element functions
// below on float device arrays.
//
// The arithmetic is float64 whatever the storage type, rounded to the storage type only where
// a value is stored. That is exactly what the optimizers did when they were JS loops over typed
// arrays (a JS number is a double; a Float32Array rounds on store), and the per-element
// functions below keep the former JS expressions' operations in their order, so the native
// update gives the same bits as the JS one did, which matched torch.optim step for step. Every
// product and sum is rounded on its own (no fused multiply-add): the CPU build has
// -ffp-contract=off and the device code spells each operation as a round-to-nearest intrinsic,
// which nvcc never contracts, so the CPU and the GPU agree bit for bit too.
#pragma once

#include <cmath>
#include <cstdint>

#if !defined(LUNA_HOST_DEVICE)
#if defined(__CUDACC__)
#define LUNA_HOST_DEVICE __host__ __device__
#else
#define LUNA_HOST_DEVICE
#endif
#endif

namespace luna {

// Adam (decoupled = false: weight decay as an L2 term in the gradient) or AdamW (decoupled =
// true: the weights shrink by 1 - lr * weight_decay first), amsgrad off, as torch.optim:
//   g = grad + l2 * p;  p *= shrink
//   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// The bias corrections bc1 = 1 - beta1^t and bc2 = 1 - beta2^t come from the caller: lib/optim
// computes them with JS's own power function, whose last bit differs from the C library's for
// some (beta, t), so that the update stays the one the JS code made.
template <typename T>
struct AdamParams {
  int64_t n = 0;              // element count (0 is allowed: nothing to do)
  T* param = nullptr;         // (n), updated in place
  const T* grad = nullptr;    // (n)
  T* exp_avg = nullptr;       // (n), the first moment, updated in place (zeros before step 1)
  T* exp_avg_sq = nullptr;    // (n), the second moment, likewise
  double lr = 0;
  double beta1 = 0, beta2 = 0;
  double eps = 0;
  double weight_decay = 0;
  bool decoupled = false;     // AdamW
  double bias_correction1 = 1;  // 1 - beta1^t, in (0, 1]
  double bias_correction2 = 1;  // 1 - beta2^t, in (0, 1]
};

// SGD with momentum, dampening, Nesterov and L2 weight decay, as torch.optim.SGD:
//   g = grad + weight_decay * p
//   momentum == 0:  p -= lr * g
//   otherwise:      buf = first_step ? g : momentum * buf + (1 - dampening) * g
//                   p -= lr * (nesterov ? g + momentum * buf : buf)
// (With dampening 0 the factor (1 - dampening) is exactly 1, so the product is exactly g.)
template <typename T>
struct SgdParams {
  int64_t n = 0;                   // element count
  T* param = nullptr;              // (n), updated in place
  const T* grad = nullptr;         // (n)
  T* momentum_buffer = nullptr;    // (n), updated in place; may be null when momentum == 0
  double lr = 0;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool first_step = false;         // the buffer is set to g instead of being read
};

// What a norm reduction accumulates, in float64: sum x^2 (the 2-norm squared), sum |x|,
// max |x| (a NaN anywhere gives NaN), or sum |x|^p.
enum class NormKind : int { SumSquares = 0, SumAbs = 1, MaxAbs = 2, SumPowAbs = 3 };

// One reduction over the concatenation of `count` arrays (a model's gradients), so that a
// gradient clip needs one call (on a GPU: one wait) however many parameters there are. The
// result does not depend on the thread count: the arrays are cut into fixed chunks whose partial
// results are combined in chunk order.
template <typename T>
struct NormParams {
  int count = 0;                   // number of arrays (0 gives 0)
  const T* const* xs = nullptr;    // (count) array pointers
  const int64_t* lengths = nullptr;  // (count) element counts, each >= 0
  NormKind kind = NormKind::SumSquares;
  double p = 2;                    // the exponent of SumPowAbs
};

template <typename T> void adam_step(const AdamParams<T>& p);
template <typename T> void sgd_step(const SgdParams<T>& p);
template <typename T> double norm_reduce(const NormParams<T>& p);
// x[i] = x[i] * scale, the product in float64 and rounded once (clipGradNorm's rescale).
template <typename T> void scale_in_place(T* x, int64_t n, double scale);

// ---- per-element arithmetic, shared with cuda/optim.cu ------------------------------------------
// Each operation is a separately rounded float64 operation. On the device they are the _rn
// intrinsics, which the compiler never fuses into a multiply-add; on the host they are the
// plain operators (built with -ffp-contract=off).
namespace optim_math {

LUNA_HOST_DEVICE inline double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
LUNA_HOST_DEVICE inline double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
LUNA_HOST_DEVICE inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
LUNA_HOST_DEVICE inline double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
LUNA_HOST_DEVICE inline double sqrt_rn(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// The per-step scalars of Adam, computed once per call from AdamParams, as the JS code
// computed them once per step.
struct AdamScalars {
  double l2;           // weight decay folded into the gradient (Adam), else 0
  double shrink;       // 1 - lr * weight_decay (AdamW), else 1
  double beta1, one_minus_beta1;
  double beta2, one_minus_beta2;
  double step_size;    // lr / bc1
  double bc2_sqrt;     // sqrt(bc2)
  double eps;
};

// Host code, run once per call by the CPU kernel and by the CUDA launcher alike.
template <typename T>
inline AdamScalars adam_scalars(const AdamParams<T>& p) {
  AdamScalars s;
  s.l2 = p.decoupled ? 0.0 : p.weight_decay;
  // The product goes through memory so that no compiler, whatever its flags (the CUDA build's
  // host side has no -ffp-contract=off), can fuse it into the subtraction.
  volatile double decay = p.lr * p.weight_decay;
  s.shrink = p.decoupled ? 1.0 - decay : 1.0;
  s.beta1 = p.beta1;
  s.one_minus_beta1 = 1.0 - p.beta1;
  s.beta2 = p.beta2;
  s.one_minus_beta2 = 1.0 - p.beta2;
  s.step_size = p.lr / p.bias_correction1;
  s.bc2_sqrt = std::sqrt(p.bias_correction2);
  s.eps = p.eps;
  return s;
}

// One element of Adam/AdamW. The order is the JS loop's:
//   gj = g + l2 * p;  if (shrink !== 1) p *= shrink;
//   m = beta1 * m + (1 - beta1) * gj;  v = beta2 * v + (1 - beta2) * gj * gj;
//   p -= (stepSize * m) / (Math.sqrt(v) / bc2Sqrt + eps)
// with p, m and v rounded to T when stored and read back rounded.
template <typename T>
LUNA_HOST_DEVICE inline void adam_element(const AdamScalars& s, T& param, T grad, T& exp_avg, T& exp_avg_sq) {
  T p = param;
  const double g = add_rn(double(grad), mul_rn(s.l2, double(p)));
  if (s.shrink != 1.0) p = T(mul_rn(double(p), s.shrink));
  const T m = T(add_rn(mul_rn(s.beta1, double(exp_avg)), mul_rn(s.one_minus_beta1, g)));
  const T v = T(add_rn(mul_rn(s.beta2, double(exp_avg_sq)), mul_rn(mul_rn(s.one_minus_beta2, g), g)));
  const double denom = add_rn(div_rn(sqrt_rn(double(v)), s.bc2_sqrt), s.eps);
  param = T(sub_rn(double(p), div_rn(mul_rn(s.step_size, double(m)), denom)));
  exp_avg = m;
  exp_avg_sq = v;
}

// One element of SGD without momentum: p -= lr * (g + wd * p).
template <typename T>
LUNA_HOST_DEVICE inline void sgd_plain_element(double lr, double wd, T& param, T grad) {
  const double p = double(param);
  param = T(sub_rn(p, mul_rn(lr, add_rn(double(grad), mul_rn(wd, p)))));
}

// One element of SGD with momentum (see SgdParams); `buf` is stored, then read back rounded.
template <typename T>
LUNA_HOST_DEVICE inline void sgd_momentum_element(double lr, double wd, double momentum, double one_minus_dampening,
                                                  bool nesterov, bool first, T& param, T grad, T& buf) {
  const double p = double(param);
  const double g = add_rn(double(grad), mul_rn(wd, p));
  const T b = first ? T(g) : T(add_rn(mul_rn(momentum, double(buf)), mul_rn(one_minus_dampening, g)));
  buf = b;
  const double d = nesterov ? add_rn(g, mul_rn(momentum, double(b))) : double(b);
  param = T(sub_rn(p, mul_rn(lr, d)));
}

// max |x| with NaN winning: once a NaN is seen the result stays NaN (as torch's max).
LUNA_HOST_DEVICE inline double nan_max(double acc, double a) {
  if (acc != acc) return acc;
  return (a != a || a > acc) ? a : acc;
}

}  // namespace optim_math

}  // namespace luna
