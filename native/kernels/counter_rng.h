// Counter-based random bits for dropout. The keep decision of element `index` under `seed` is a
// pure function of the two: the backward regenerates the forward's mask instead of storing it,
// and the mask does not depend on how the work is split across threads.
#pragma once

#include <cstdint>

// The same functions run in CUDA kernels (cuda/*.cu), so the device regenerates exactly the CPU's
// masks. Under nvcc they are __host__ __device__; under the CUDA emulator (LUNA_CUDA_EMU) device
// code is host code, so nothing is needed there (and __host__ may not be defined yet when this
// header comes first); an ordinary C++ build sees plain inline functions.
#if defined(__CUDACC__)
#define LUNA_HOST_DEVICE __host__ __device__
#else
#define LUNA_HOST_DEVICE
#endif

namespace luna {

// 32 well-mixed bits of (seed, index): two rounds of a 64-bit finaliser (the splitmix64 mixing
// constants), with the seed folded in between so that neighbouring seeds give unrelated masks.
LUNA_HOST_DEVICE inline uint32_t counter_bits(uint64_t seed, uint64_t index) {
  uint64_t z = index + 0x9e3779b97f4a7c15ull * (seed + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  z ^= seed * 0xd6e8feb86659fd93ull;
  z = (z ^ (z >> 32)) * 0xd6e8feb86659fd93ull;
  z = (z ^ (z >> 32)) * 0xd6e8feb86659fd93ull;
  return static_cast<uint32_t>(z >> 32);
}

// Inverted dropout with probability p: an element is kept when its bits are at or above
// p * 2^32, and a kept element is scaled by 1 / (1 - p). Inactive (p = 0) keeps everything.
template <typename T>
struct DropoutMask {
  uint64_t seed = 0;
  uint32_t threshold = 0;
  T keep_scale = T(1);
  bool active = false;

  LUNA_HOST_DEVICE DropoutMask(double p, uint64_t s) : seed(s) {
    if (p > 0) {
      active = true;
      const double t = p * 4294967296.0;
      threshold = t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
      keep_scale = T(1 / (1 - p));
    }
  }

  // The factor element `index` is multiplied by: 1/(1-p) when kept, 0 when dropped.
  LUNA_HOST_DEVICE T factor(uint64_t index) const {
    return counter_bits(seed, index) >= threshold ? keep_scale : T(0);
  }
};

}  // namespace luna
