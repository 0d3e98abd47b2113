//===- Random.h - counter-based random numbers (Philox 4x32-10) -*- C++ -*-===//
//
// Every random number in a Loom run is a pure function of
// (run seed, stream, extra, index), so it is the same on any rank, under any
// sharding and after a resume. The convention (runtime/README.md, "Random
// streams"):
//
//   key     = seed XOR stream                 (two 32-bit words, low first)
//   counter = (index, extra)                  (four 32-bit words, low first)
//   words   = Philox4x32-10(counter, key)
//
// stream is fnv1a64 of a name ("w1" for a parameter, "loom.data.shuffle" for
// the data order), extra a second coordinate (0 for init, the epoch for the
// shuffle, the step for dropout), index the global element index.
//
// The generator itself is the kernel library's (runtime/kernels/Philox.h),
// so the runtime's draws (init, data order) and the kernels' (dropout) are
// one convention; tests/RandomTest.cpp pins it with Random123's known-answer
// vectors.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_RANDOM_H
#define LOOM_RUNTIME_RANDOM_H

#include "runtime/Hash.h"
#include "runtime/kernels/Philox.h"

#include <array>
#include <cstdint>

namespace loom::runtime {

using kernels::PhiloxCounter;
using kernels::PhiloxKey;
/// Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's philox4x32).
using kernels::philox4x32;
/// Four random 32-bit words for (seed, stream, extra, index), by the
/// convention above.
using kernels::philoxAt;
/// A uniform float in [0, 1) from the top 24 bits of a word: every value is a
/// multiple of 2^-24, so the conversion is exact.
using kernels::uniform01;

/// A uniform integer in [0, n) from two words (multiply-shift over 64 bits;
/// the bias is below n / 2^64).
inline uint64_t uniformBelow(uint32_t lo, uint32_t hi, uint64_t n) {
  uint64_t r = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<uint64_t>((static_cast<unsigned __int128>(r) * n) >> 64);
}

} // namespace loom::runtime

#endif // LOOM_RUNTIME_RANDOM_H
