//===- Philox.h - counter-based random numbers (Philox-4x32-10) -*- C++ -*-===//
//
// Philox-4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011), the generator behind every random stream in
// Loom. A counter-based generator is a pure function of (key, counter), so a
// value depends only on what it is for and where it is, never on how the work
// is split over threads, ranks or shards.
//
// ## The key/counter convention (part of runtime/README.md)
//
// Every random value in Loom is
//
//     philox4x32(counter, key), with
//     key     = { lo32(seed) ^ lo32(stream), hi32(seed) ^ hi32(stream) }
//     counter = { lo32(index), hi32(index), lo32(extra), hi32(extra) }
//
// where `seed` is the run seed (loom_ctx::seed), `stream` names what the
// numbers are for, `index` is the global (unsharded) row-major element index
// and `extra` separates repeated uses of one stream. One Philox block belongs
// to one element: the element's random words are the block's four outputs,
// used from word 0 upward.
//
//   - dropout:        stream = the kernel's `key` argument (the compiler's
//                     64-bit hash of the op's DSL path, `repeat` index
//                     included), extra = the optimizer step (loom_ctx::step),
//                     index = element index; element i is kept when
//                     uniform01(word 0) >= p.
//   - parameter init: stream = fnv1a64(parameter name), extra = 0,
//                     index = element index; uniform draws use word 0,
//                     a normal draw (Box-Muller) words 0 and 1.
//
// uniform01(w) = (w >> 8) * 2^-24, a float in [0, 1) with 24 random bits,
// exact in float32.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_KERNELS_PHILOX_H
#define LOOM_RUNTIME_KERNELS_PHILOX_H

#include <array>
#include <cstddef>
#include <cstdint>

// The generator and its key/counter helpers are plain integer arithmetic, so
// the CUDA kernels (runtime/cuda) compile the same functions for the device:
// one definition, bit-identical streams on both sides (std::array in device
// code needs nvcc's --expt-relaxed-constexpr). A host compiler sees an empty
// macro.
#include "runtime/kernels/HostDevice.h"

namespace loom::kernels {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;
using PhiloxBlock = std::array<uint32_t, 4>;

/// Philox-4x32 with 10 rounds; the key is bumped by the Weyl constants
/// between rounds, as in Random123's philox4x32_R.
LOOM_HOST_DEVICE inline PhiloxBlock philox4x32(PhiloxCounter counter,
                                               PhiloxKey key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kW0;
      key[1] += kW1;
    }
    const uint64_t p0 = uint64_t(kM0) * counter[0];
    const uint64_t p1 = uint64_t(kM1) * counter[2];
    counter = {uint32_t(p1 >> 32) ^ counter[1] ^ key[0], uint32_t(p1),
               uint32_t(p0 >> 32) ^ counter[3] ^ key[1], uint32_t(p0)};
  }
  return counter;
}

/// FNV-1a, 64-bit: names a random stream (a parameter) by its name.
inline uint64_t fnv1a64(const char *data, size_t size) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) {
    hash ^= uint8_t(data[i]);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

/// A uniform float in [0, 1) from the top 24 bits of a random word.
LOOM_HOST_DEVICE inline float uniform01(uint32_t word) {
  return float(word >> 8) * (1.0f / 16777216.0f);
}

/// The key of stream `stream` under run seed `seed` (see the convention).
LOOM_HOST_DEVICE inline PhiloxKey philoxKey(uint64_t seed, uint64_t stream) {
  return {uint32_t(seed) ^ uint32_t(stream),
          uint32_t(seed >> 32) ^ uint32_t(stream >> 32)};
}

/// The counter of element `index` in use `extra` of a stream.
LOOM_HOST_DEVICE inline PhiloxCounter philoxCounter(uint64_t index,
                                                    uint64_t extra) {
  return {uint32_t(index), uint32_t(index >> 32), uint32_t(extra),
          uint32_t(extra >> 32)};
}

/// The four random words of element `index` in use `extra` of stream
/// `stream` (argument order as runtime/Random.h's philoxAt).
LOOM_HOST_DEVICE inline PhiloxBlock philoxAt(uint64_t seed, uint64_t stream,
                                             uint64_t extra, uint64_t index) {
  return philox4x32(philoxCounter(index, extra), philoxKey(seed, stream));
}

} // namespace loom::kernels

#endif // LOOM_RUNTIME_KERNELS_PHILOX_H
