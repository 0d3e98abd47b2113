//===- RandomTest.cpp - Philox 4x32-10 and FNV-1a 64 ----------------------===//
#include "runtime/Random.h"
#include "runtime/Hash.h"

#include <gtest/gtest.h>

using namespace loom::runtime;

namespace {

// Known-answer vectors from Random123 (kat_vectors, philox4x32_10).
TEST(Random, PhiloxKnownAnswers) {
  EXPECT_EQ(philox4x32({0, 0, 0, 0}, {0, 0}),
            (PhiloxCounter{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                       {0xffffffff, 0xffffffff}),
            (PhiloxCounter{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                       {0xa4093822, 0x299f31d0}),
            (PhiloxCounter{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Random, ConventionMapsSeedStreamExtraIndex) {
  // key = seed ^ stream, counter = (index, extra), low words first.
  uint64_t seed = 0x0123456789abcdefull, stream = fnv1a64("w1");
  uint64_t key = seed ^ stream;
  EXPECT_EQ(philoxAt(seed, stream, 0x500000007ull, 0x300000002ull),
            philox4x32({2, 3, 7, 5}, {uint32_t(key), uint32_t(key >> 32)}));
}

TEST(Random, Fnv1a64KnownAnswers) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
  // The kernels' hash of a parameter name is the same function.
  EXPECT_EQ(fnv1a64("layers.3.wq"), loom::kernels::fnv1a64("layers.3.wq", 11));
  // Hashing in pieces equals hashing at once.
  EXPECT_EQ(fnv1a64("bar", 3, fnv1a64("foo")), fnv1a64("foobar"));
}

TEST(Random, Uniform01IsExactAndInRange) {
  EXPECT_EQ(uniform01(0), 0.0f);
  EXPECT_LT(uniform01(0xffffffffu), 1.0f);
  EXPECT_EQ(uniform01(0xffffffffu), 1.0f - 1.0f / 16777216.0f);
  EXPECT_EQ(uniform01(0x80000000u), 0.5f);
}

TEST(Random, UniformBelowCoversTheRange) {
  int seen[7] = {0};
  for (uint64_t i = 0; i < 7000; ++i) {
    PhiloxCounter w = philoxAt(1, 2, 0, i);
    uint64_t r = uniformBelow(w[0], w[1], 7);
    ASSERT_LT(r, 7u);
    ++seen[r];
  }
  for (int c : seen)
    EXPECT_NEAR(c, 1000, 150);
}

} // namespace
