#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace luna {

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    // __builtin_cpu_supports also checks that the OS saves the ymm / zmm registers (XCR0).
    __builtin_cpu_init();
    f.fma = __builtin_cpu_supports("fma");
    f.avx2 = __builtin_cpu_supports("avx2") && f.fma;
    f.avx512f = __builtin_cpu_supports("avx512f") && f.avx2;
#endif
    return f;
  }();
  return features;
}

Isa active_isa() {
  static const Isa isa = [] {
    const CpuFeatures& f = cpu_features();
    Isa best = f.avx512f ? Isa::Avx512 : f.avx2 ? Isa::Avx2 : Isa::Generic;
    const char* forced = std::getenv("LUNA_ISA");
    if (forced) {
      Isa want = best;
      if (std::strcmp(forced, "generic") == 0) want = Isa::Generic;
      else if (std::strcmp(forced, "avx2") == 0) want = Isa::Avx2;
      else if (std::strcmp(forced, "avx512") == 0) want = Isa::Avx512;
      if (static_cast<int>(want) < static_cast<int>(best)) best = want;
    }
    return best;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace luna
