// Launchers of the optimizer kernels on the GPU (cuda/optim.cu), float32 device arrays only.
// They take the CPU kernels' parameter structs (native/kernels/optim_kernels.h) with device
// pointers, queue their work on luna::cuda::stream() and throw luna::cuda::CudaError on failure.
// The updates give the CPU kernels' results bit for bit (same float64 per-element arithmetic).
// A CPU-only build defines them in native/runtime/cuda_stubs/optim_stub.cc, throwing.
#pragma once

#include "../native/kernels/optim_kernels.h"

namespace luna::cuda {

// One fused Adam/AdamW update of one parameter, in place. Never waits for the device.
void adam_step(const AdamParams<float>& p);
// One fused SGD update of one parameter (and its momentum buffer), in place. Never waits.
void sgd_step(const SgdParams<float>& p);
// The reduction over all p.count arrays (device pointers; p.xs and p.lengths are host arrays),
// returned to the host: the one launcher that waits, since its caller needs the number. Per-block
// partials combined in a fixed order: the same bits on every run and on every GPU model.
double norm_reduce(const NormParams<float>& p);
// x[i] = float(double(x[i]) * scale), in place. Never waits.
void scale_in_place(float* x, int64_t n, double scale);

}  // namespace luna::cuda
