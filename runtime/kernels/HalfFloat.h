//===- HalfFloat.h - bf16 and IEEE f16 conversions, bit for bit -*- C++ -*-===//
//
// The one definition of Loom's 16-bit formats, compiled for the CPU kernels,
// the CUDA kernels and their tests alike: widening is exact, narrowing rounds
// to nearest-even; a NaN stays a (quiet) NaN, f16 overflows to infinity and
// underflows through its subnormals.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_KERNELS_HALFFLOAT_H
#define LOOM_RUNTIME_KERNELS_HALFFLOAT_H

#include <cmath>
#include <cstdint>
#include <cstring>

#include "runtime/kernels/HostDevice.h"

namespace loom::kernels {

LOOM_HOST_DEVICE inline uint32_t bitsOfFloat(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

LOOM_HOST_DEVICE inline float floatOfBits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

LOOM_HOST_DEVICE inline float fromBF16(uint16_t h) {
  return floatOfBits(static_cast<uint32_t>(h) << 16);
}

LOOM_HOST_DEVICE inline uint16_t toBF16(float f) {
  uint32_t u = bitsOfFloat(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40); // a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

LOOM_HOST_DEVICE inline float fromF16(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu,
           mant = h & 0x3ffu, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else { // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      u = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return floatOfBits(u);
}

LOOM_HOST_DEVICE inline uint16_t toF16(float f) {
  uint32_t u = bitsOfFloat(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu >= 0x7f800000u) // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0));
  if (absu >= 0x477ff000u) // rounds to >= 65520: overflow to inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  if (absu < 0x38800000u) { // below the smallest normal: subnormal or zero
    // Scale so the subnormal step (2^-24) is one unit, round to even.
    float scaled = floatOfBits(absu) * 16777216.0f;
#if defined(__CUDA_ARCH__)
    uint32_t m = static_cast<uint32_t>(rintf(scaled));
#else
    uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
#endif
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t exp = ((absu >> 23) - 127 + 15) << 10;
  uint32_t mant = absu & 0x7fffffu;
  uint32_t h = exp | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
    ++h; // carries into the exponent correctly
  return static_cast<uint16_t>(sign | h);
}

} // namespace loom::kernels

#endif // LOOM_RUNTIME_KERNELS_HALFFLOAT_H
