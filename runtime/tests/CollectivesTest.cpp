//===- CollectivesTest.cpp - the collective ABI on 4 MPI ranks ------------===//
//
// Run as `mpirun -np 4 loom-collectives-tests` (ctest runtime.collectives).
// Every rank runs every test; expected values are computed locally from rank
// numbers, with small integers so that sums are exact whatever the order.
// Assertions are EXPECT_*, never ASSERT_*: a rank that left a test early
// would leave the others waiting in a collective.
//
//===----------------------------------------------------------------------===//
#include "runtime/Collectives.h"
#include "runtime/Context.h"
#include "runtime/Support.h"

#include <gtest/gtest.h>

#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace loom::runtime;

namespace {

int worldRank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int worldSize() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

struct Shape {
  int dp, tp, pp;
};

/// A mesh of the 4-rank world and a context pointing at it.
struct MeshCtx {
  explicit MeshCtx(Shape s)
      : shape(s), mesh(s.dp, s.tp, s.pp, worldRank(), worldSize()) {
    ctx.rank = worldRank();
    ctx.worldSize = worldSize();
    ctx.mesh = &mesh;
  }
  Shape shape;
  CommMesh mesh;
  loom_ctx ctx;

  std::array<int, 3> sizes() const { return {shape.dp, shape.tp, shape.pp}; }
  /// World rank of the member at coordinate k of this rank's `axis` group.
  int member(int32_t axis, int k) const {
    std::array<int, 3> c{mesh.coord(0), mesh.coord(1), mesh.coord(2)};
    c[axis] = k;
    return int(CommMesh::rankAt(shape.tp, shape.pp, c[0], c[1], c[2]));
  }
};

/// Element i of world rank r's input: distinct small integers.
float value(int r, int64_t i) { return float(100 * r + i % 97 + 1); }

std::string describe(Shape s, int32_t axis) {
  return "mesh " + std::to_string(s.dp) + "x" + std::to_string(s.tp) + "x" +
         std::to_string(s.pp) + ", axis " + meshAxisName(axis) + ", rank " +
         std::to_string(worldRank());
}

bool bitwiseEqual(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class Collectives : public ::testing::TestWithParam<Shape> {
protected:
  void SetUp() override {
    if (worldSize() != 4)
      GTEST_SKIP() << "needs mpirun -np 4 (world size " << worldSize() << ")";
  }
};

TEST(CollectivesMesh, RowMajorRankMapping) {
  // rank = ((d * tp) + t) * pp + p, pp fastest.
  EXPECT_EQ(CommMesh::rankAt(/*tp=*/2, /*pp=*/2, 0, 0, 0), 0);
  EXPECT_EQ(CommMesh::rankAt(2, 2, 0, 0, 1), 1);
  EXPECT_EQ(CommMesh::rankAt(2, 2, 0, 1, 0), 2);
  EXPECT_EQ(CommMesh::rankAt(2, 2, 1, 0, 0), 4);
  EXPECT_EQ(CommMesh::rankAt(3, 4, 1, 2, 3), (1 * 3 + 2) * 4 + 3);
  // The constructor inverts it (a world of 1 needs no MPI).
  for (int r = 0; r < 24; ++r) {
    int d = r / 12, t = r / 4 % 3, p = r % 4;
    EXPECT_EQ(CommMesh::rankAt(3, 4, d, t, p), r);
  }
}

TEST(CollectivesMesh, BadShapesAreErrors) {
  EXPECT_THROW(CommMesh(2, 1, 1, 0, 1), Error);
  EXPECT_THROW(CommMesh(0, 1, 1, 0, 1), Error);
  EXPECT_THROW(CommMesh(1, 1, 1, 1, 1), Error);
}

TEST(CollectivesMesh, WorldOfOneCopies) {
  // Every rank alone: no communicator, each collective a copy.
  CommMesh mesh(1, 1, 1, 0, 1);
  loom_ctx ctx;
  ctx.mesh = &mesh;
  std::vector<float> a{1.5f, -2.0f, 3.25f}, out(3, 0.0f);
  for (int32_t axis = 0; axis < 3; ++axis) {
    loom_all_reduce(&ctx, a.data(), 3, axis, 0);
    loom_all_reduce(&ctx, a.data(), 3, axis, 1);
    loom_broadcast(&ctx, a.data(), 3, axis, 0);
    EXPECT_EQ(a, (std::vector<float>{1.5f, -2.0f, 3.25f}));
    std::fill(out.begin(), out.end(), 0.0f);
    loom_all_gather(&ctx, a.data(), 3, out.data(), axis);
    EXPECT_EQ(out, a);
    std::fill(out.begin(), out.end(), 0.0f);
    loom_reduce_scatter(&ctx, a.data(), 3, out.data(), axis);
    EXPECT_EQ(out, a);
  }
  EXPECT_FALSE(ctx.failed) << ctx.errorOp << ": " << ctx.errorMessage;
  // A bare context (no mesh) is a world of one as well.
  loom_ctx bare;
  loom_all_reduce(&bare, a.data(), 3, 1, 0);
  EXPECT_FALSE(bare.failed);
  bare.worldSize = 4;
  loom_all_reduce(&bare, a.data(), 3, 1, 0);
  EXPECT_TRUE(bare.failed);
  EXPECT_EQ(bare.errorOp, "loom_all_reduce");
  EXPECT_NE(bare.errorMessage.find("axis tp"), std::string::npos)
      << bare.errorMessage;
}

TEST_P(Collectives, GroupsFollowTheMapping) {
  MeshCtx m(GetParam());
  int r = worldRank();
  auto s = m.sizes();
  int d = m.mesh.coord(0), t = m.mesh.coord(1), p = m.mesh.coord(2);
  EXPECT_EQ(CommMesh::rankAt(s[1], s[2], d, t, p), r);
  for (int32_t axis = 0; axis < 3; ++axis) {
    EXPECT_EQ(m.mesh.size(axis), s[axis]);
    // Gather the members' world ranks: the group in coordinate order.
    float mine = float(r);
    std::vector<float> got(s[axis], -1.0f);
    loom_all_gather(&m.ctx, &mine, 1, got.data(), axis);
    for (int k = 0; k < s[axis]; ++k)
      EXPECT_EQ(got[k], float(m.member(axis, k))) << describe(GetParam(), axis);
  }
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, AllReduceSumAndMax) {
  MeshCtx m(GetParam());
  int r = worldRank();
  const int64_t n = 1000;
  for (int32_t axis = 0; axis < 3; ++axis) {
    int size = m.sizes()[axis];
    for (int32_t op = 0; op < 2; ++op) {
      std::vector<float> data(n), expect(n, op == 0 ? 0.0f : -INFINITY);
      for (int64_t i = 0; i < n; ++i) {
        // Max must not always come from the last member: flip the sign on
        // odd elements.
        float sign = i % 2 ? -1.0f : 1.0f;
        data[i] = sign * value(r, i);
        for (int k = 0; k < size; ++k) {
          float v = sign * value(m.member(axis, k), i);
          expect[i] = op == 0 ? expect[i] + v : std::max(expect[i], v);
        }
      }
      loom_all_reduce(&m.ctx, data.data(), n, axis, op);
      EXPECT_EQ(data, expect) << describe(GetParam(), axis) << ", op " << op;
    }
  }
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, AllGatherInAxisRankOrder) {
  MeshCtx m(GetParam());
  int r = worldRank();
  const int64_t n = 37;
  for (int32_t axis = 0; axis < 3; ++axis) {
    int size = m.sizes()[axis];
    std::vector<float> in(n), out(n * size, NAN), expect(n * size);
    for (int64_t i = 0; i < n; ++i)
      in[i] = value(r, i);
    for (int k = 0; k < size; ++k)
      for (int64_t i = 0; i < n; ++i)
        expect[k * n + i] = value(m.member(axis, k), i);
    loom_all_gather(&m.ctx, in.data(), n, out.data(), axis);
    EXPECT_EQ(out, expect) << describe(GetParam(), axis);
    // In place: the input already in this rank's slot.
    std::vector<float> inPlace(n * size, NAN);
    std::copy(in.begin(), in.end(), inPlace.begin() + m.mesh.coord(axis) * n);
    loom_all_gather(&m.ctx, inPlace.data() + m.mesh.coord(axis) * n, n,
                    inPlace.data(), axis);
    EXPECT_EQ(inPlace, expect) << describe(GetParam(), axis) << ", in place";
  }
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, ReduceScatterSums) {
  MeshCtx m(GetParam());
  int r = worldRank();
  const int64_t n = 53;
  for (int32_t axis = 0; axis < 3; ++axis) {
    int size = m.sizes()[axis];
    int me = m.mesh.coord(axis);
    std::vector<float> in(n * size), out(n, NAN), expect(n, 0.0f);
    for (int64_t i = 0; i < n * size; ++i)
      in[i] = value(r, i);
    for (int k = 0; k < size; ++k)
      for (int64_t i = 0; i < n; ++i)
        expect[i] += value(m.member(axis, k), me * n + i);
    loom_reduce_scatter(&m.ctx, in.data(), n, out.data(), axis);
    EXPECT_EQ(out, expect) << describe(GetParam(), axis);
    // In place: the result at the start of the input.
    loom_reduce_scatter(&m.ctx, in.data(), n, in.data(), axis);
    EXPECT_EQ(std::vector<float>(in.begin(), in.begin() + n), expect)
        << describe(GetParam(), axis) << ", in place";
  }
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, BroadcastFromEveryRoot) {
  MeshCtx m(GetParam());
  int r = worldRank();
  const int64_t n = 29;
  for (int32_t axis = 0; axis < 3; ++axis) {
    for (int root = 0; root < m.sizes()[axis]; ++root) {
      std::vector<float> data(n), expect(n);
      for (int64_t i = 0; i < n; ++i) {
        data[i] = value(r, i);
        expect[i] = value(m.member(axis, root), i);
      }
      loom_broadcast(&m.ctx, data.data(), n, axis, root);
      EXPECT_EQ(data, expect) << describe(GetParam(), axis) << ", root "
                              << root;
    }
  }
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, BitwiseDeterministic) {
  // Inexact values (sums round), large enough for the segmented/ring
  // algorithms: repeated calls, and every member, give the same bits.
  MeshCtx m(GetParam());
  int r = worldRank();
  const int64_t n = 1 << 16;
  std::vector<float> input(n * 4);
  for (int64_t i = 0; i < n * 4; ++i)
    input[i] = std::sin(0.37f * float(i) + float(r)) / float(1 + r % 3) * 1e3f;
  for (int32_t axis = 0; axis < 3; ++axis) {
    int size = m.sizes()[axis];
    std::vector<float> first, rs0;
    for (int rep = 0; rep < 5; ++rep) {
      std::vector<float> data(input.begin(), input.begin() + n);
      loom_all_reduce(&m.ctx, data.data(), n, axis, 0);
      if (rep == 0)
        first = data;
      EXPECT_TRUE(bitwiseEqual(data, first))
          << describe(GetParam(), axis) << ", repeat " << rep;
      std::vector<float> rs(n);
      loom_reduce_scatter(&m.ctx, input.data(), n, rs.data(), axis);
      if (rep == 0)
        rs0 = rs;
      EXPECT_TRUE(bitwiseEqual(rs, rs0))
          << describe(GetParam(), axis) << ", reduce_scatter repeat " << rep;
    }
    // Every member holds the same all_reduce result: compare with root 0's.
    std::vector<float> root0 = first;
    loom_broadcast(&m.ctx, root0.data(), n, axis, 0);
    EXPECT_TRUE(bitwiseEqual(first, root0))
        << describe(GetParam(), axis) << ": members disagree";
    (void)size;
  }
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, NonBlockingReductionsWithoutAProgressThread) {
  // This binary initialises MPI with FUNNELED: loom_all_reduce_start queues
  // and the wait runs the reductions, in start order, with the same bits
  // as loom_all_reduce.
  MeshCtx m(GetParam());
  int r = worldRank();
  const int64_t n = 1 << 15;
  for (int32_t axis = 0; axis < 3; ++axis) {
    std::vector<float> a(n), b(n), blocking(n);
    for (int64_t i = 0; i < n; ++i)
      a[i] = b[i] = blocking[i] = std::cos(0.11f * float(i) + float(r)) * 77.f;
    loom_all_reduce(&m.ctx, blocking.data(), n, axis, 0);
    m.mesh.takeStats();
    int64_t ha = loom_all_reduce_start(&m.ctx, a.data(), n, axis, 0);
    int64_t hb = loom_all_reduce_start(&m.ctx, b.data(), n, axis, 0);
    loom_all_reduce_wait(&m.ctx, hb);
    loom_all_reduce_wait(&m.ctx, ha);
    CommMesh::Stats st = m.mesh.takeStats();
    int size = m.sizes()[axis];
    EXPECT_EQ(st.calls, size > 1 ? 2 : 0);
    EXPECT_EQ(st.bytes, size > 1 ? 2 * n * 4 : 0);
    EXPECT_TRUE(bitwiseEqual(a, blocking)) << describe(GetParam(), axis);
    EXPECT_TRUE(bitwiseEqual(b, blocking)) << describe(GetParam(), axis);
  }
  EXPECT_EQ(m.mesh.pendingReductions(), 0);
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
}

TEST_P(Collectives, ArgumentErrorsNameTheCollectiveAndAxis) {
  // Errors every rank meets alike, so no rank waits in a collective.
  MeshCtx m(GetParam());
  float x[4] = {0, 0, 0, 0};
  auto expectError = [&](const char *op, const char *part) {
    EXPECT_TRUE(m.ctx.failed) << op;
    EXPECT_EQ(m.ctx.errorOp, op);
    EXPECT_NE(m.ctx.errorMessage.find(part), std::string::npos)
        << m.ctx.errorMessage;
    m.ctx.clearError();
  };
  loom_all_reduce(&m.ctx, x, 1, 3, 0);
  expectError("loom_all_reduce", "axis 3");
  loom_all_reduce(&m.ctx, x, 1, 1, 7);
  expectError("loom_all_reduce", "axis tp");
  loom_all_gather(&m.ctx, x, -1, x, 0);
  expectError("loom_all_gather", "axis dp");
  loom_reduce_scatter(&m.ctx, nullptr, 1, x, 2);
  expectError("loom_reduce_scatter", "axis pp");
  loom_broadcast(&m.ctx, x, 1, 1, m.sizes()[1]);
  expectError("loom_broadcast", "root");
}

INSTANTIATE_TEST_SUITE_P(Meshes, Collectives,
                         ::testing::Values(Shape{4, 1, 1}, Shape{2, 2, 1},
                                           Shape{1, 2, 2}),
                         [](const ::testing::TestParamInfo<Shape> &info) {
                           const Shape &s = info.param;
                           return std::to_string(s.dp) + "x" +
                                  std::to_string(s.tp) + "x" +
                                  std::to_string(s.pp);
                         });

} // namespace

int main(int argc, char **argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = RUN_ALL_TESTS();
  // Every rank's verdict decides: one failing rank fails the run.
  int anyFailed = 0;
  MPI_Allreduce(&failed, &anyFailed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return anyFailed ? 1 : 0;
}
