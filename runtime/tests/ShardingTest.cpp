//===- ShardingTest.cpp - a rank's slice of a split tensor ----------------===//
#include "runtime/Sharding.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

using namespace loom::runtime;

namespace {

Buffer buffer(std::vector<int64_t> local, std::vector<int64_t> global,
              std::vector<int32_t> split) {
  Buffer b;
  b.name = "t";
  b.shape = std::move(local);
  b.globalShape = std::move(global);
  b.split = std::move(split);
  b.elements = 1;
  for (int64_t d : b.shape)
    b.elements *= d;
  b.bytes = b.elements * 4;
  return b;
}

TEST(Sharding, CoordinatesFollowTheRankMapping) {
  Mesh m{2, 3, 2};
  for (int64_t r = 0; r < 12; ++r) {
    MeshCoord c = meshCoordOf(m, r);
    EXPECT_EQ(((c[0] * 3) + c[1]) * 2 + c[2], r);
  }
  EXPECT_EQ(meshCoordOf(m, 7), (MeshCoord{1, 0, 1}));
}

TEST(Sharding, SliceStartAndOwners) {
  Buffer b = buffer({4, 5}, {8, 10}, {0, 1});
  EXPECT_EQ(sliceStart(b, {1, 1, 0}), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(sliceStart(b, {0, 1, 0}), (std::vector<int64_t>{0, 5}));
  EXPECT_TRUE(ownsSlice(b, {1, 1, 0}));
  // Split over tp only: the dp replicas hold copies; dp coordinate 0 owns.
  Buffer c = buffer({8, 5}, {8, 10}, {-1, 1});
  EXPECT_TRUE(ownsSlice(c, {0, 1, 0}));
  EXPECT_FALSE(ownsSlice(c, {1, 1, 0}));
  Buffer whole = buffer({3}, {3}, {-1});
  EXPECT_TRUE(ownsSlice(whole, {0, 0, 0}));
  EXPECT_FALSE(ownsSlice(whole, {0, 1, 0}));
  EXPECT_EQ(sliceStart(whole, {1, 1, 1}), (std::vector<int64_t>{0}));
}

TEST(Sharding, BlocksRoundTripInEveryLayout) {
  // A [4, 6, 5] tensor split in every way two axes can split it: the
  // blocks extracted from the full tensor tile it exactly.
  std::vector<int64_t> shape{4, 6, 5};
  std::vector<int> full(4 * 6 * 5);
  std::iota(full.begin(), full.end(), 0);
  for (int d0 = 0; d0 < 3; ++d0)
    for (int d1 = 0; d1 < 3; ++d1) {
      if (d0 == d1)
        continue;
      std::vector<int64_t> parts{1, 1, 1};
      parts[d0] = d0 == 2 ? 5 : 2;
      parts[d1] = d1 == 2 ? 5 : 2;
      std::vector<int> back(full.size(), -1);
      for (int64_t a = 0; a < parts[0]; ++a)
        for (int64_t b = 0; b < parts[1]; ++b)
          for (int64_t c = 0; c < parts[2]; ++c) {
            std::vector<int64_t> extent{4 / parts[0], 6 / parts[1],
                                        5 / parts[2]};
            std::vector<int64_t> start{a * extent[0], b * extent[1],
                                       c * extent[2]};
            std::vector<int> block(extent[0] * extent[1] * extent[2]);
            extractBlock(full.data(), shape, start, extent, sizeof(int),
                         block.data());
            // Row-major within the block.
            for (int64_t i = 0; i < extent[0]; ++i)
              for (int64_t j = 0; j < extent[1]; ++j)
                for (int64_t k = 0; k < extent[2]; ++k)
                  EXPECT_EQ(block[(i * extent[1] + j) * extent[2] + k],
                            full[((start[0] + i) * 6 + start[1] + j) * 5 +
                                 start[2] + k]);
            insertBlock(block.data(), shape, start, extent, sizeof(int),
                        back.data());
          }
      EXPECT_EQ(back, full) << d0 << " " << d1;
    }
  // A scalar and a whole tensor are one copy.
  int x = 7, y = 0;
  extractBlock(&x, {}, {}, {}, sizeof(int), &y);
  EXPECT_EQ(y, 7);
  std::vector<int> copy(full.size());
  extractBlock(full.data(), shape, {0, 0, 0}, shape, sizeof(int), copy.data());
  EXPECT_EQ(copy, full);
}

} // namespace
