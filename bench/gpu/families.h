// The families the CUDA check runs, in order. Each is defined in bench/gpu/check_<name>.cc.
#pragma once

#include "gpu_check.h"

namespace luna::gpu_check {

void validate_runtime(Context&);    void bench_runtime(Context&);    // check_runtime.cc (allocator, copies)
void validate_gemm(Context&);       void bench_gemm(Context&);       // check_gemm.cc (GEMM, column sums, bias)
void validate_elementwise(Context&); void bench_elementwise(Context&); // check_elementwise.cc
void validate_nn(Context&);         void bench_nn(Context&);         // check_nn.cc (layerNorm, activations, dropout, embedding, loss)
void validate_optim(Context&);      void bench_optim(Context&);      // check_optim.cc (Adam/SGD steps, sums of squares)
void validate_attention(Context&);  void bench_attention(Context&);  // check_attention.cc (pack, unpack)
void validate_causal(Context&);     void bench_causal(Context&);     // check_causal.cc
void validate_softmax(Context&);    void bench_softmax(Context&);    // check_softmax.cc (softmax attention)

inline const Family kFamilies[] = {
    {"runtime", validate_runtime, bench_runtime},
    {"gemm", validate_gemm, bench_gemm},
    {"elementwise", validate_elementwise, bench_elementwise},
    {"nn", validate_nn, bench_nn},
    {"optim", validate_optim, bench_optim},
    {"attention", validate_attention, bench_attention},
    {"causal", validate_causal, bench_causal},
    {"softmax", validate_softmax, bench_softmax},
};

}  // namespace luna::gpu_check
