// Which vector instruction set the float32 kernels use on this CPU, decided once at run time so
// one binary runs on any x86-64 and still uses AVX2 / AVX-512 where the CPU and OS have them.
#pragma once

namespace luna {

enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false;     // AVX2 and FMA3 both present (our AVX2 kernels use FMA)
  bool fma = false;
  bool avx512f = false;  // AVX-512 Foundation, with OS support for the zmm state
};

// What the hardware offers.
const CpuFeatures& cpu_features();

// The ISA the kernels dispatch to: the best available, lowered (never raised) by the
// environment variable LUNA_ISA=generic|avx2|avx512, which tests and benchmarks use to
// exercise every code path on one machine.
Isa active_isa();
const char* isa_name(Isa isa);

}  // namespace luna
