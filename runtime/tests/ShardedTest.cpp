//===- ShardedTest.cpp - sharded kernels and non-blocking reductions ------===//
//
// Run as `mpirun -np 2 loom-sharded-tests` and `mpirun -np 4 ...` (ctest
// runtime.sharded.np2, runtime.sharded.np4). The vocabulary-parallel
// embedding and cross-entropy are checked against the unsharded kernels on
// the gathered data, on every mesh of the world with one split axis (and
// dp x tp on 4 ranks); loom_all_reduce_start/wait against loom_all_reduce,
// bitwise; the runtime's own world collectives. Assertions are EXPECT_*:
// a rank that left a test early would leave the others waiting.
//
//===----------------------------------------------------------------------===//
#include "runtime/Collectives.h"
#include "runtime/Context.h"
#include "runtime/Support.h"
#include "runtime/kernels/Kernels.h"

#include <gtest/gtest.h>

#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace loom::runtime;
namespace kn = loom::kernels;

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
  int dp, tp;
};

struct MeshCtx {
  explicit MeshCtx(Shape s) : mesh(s.dp, s.tp, 1, worldRank(), worldSize()) {
    ctx.rank = worldRank();
    ctx.worldSize = worldSize();
    ctx.mesh = &mesh;
    ctx.threads = 1;
  }
  CommMesh mesh;
  loom_ctx ctx;
};

/// The meshes of this world with the split axis: W x 1 (dp), 1 x W (tp),
/// and 2 x 2 on 4 ranks.
std::vector<std::pair<Shape, int32_t>> cases() {
  int w = worldSize();
  std::vector<std::pair<Shape, int32_t>> v = {{{w, 1}, 0}, {{1, w}, 1}};
  if (w == 4) {
    v.push_back({{2, 2}, 1});
    v.push_back({{2, 2}, 0});
  }
  return v;
}

std::string where(Shape s, int32_t axis) {
  return "mesh " + std::to_string(s.dp) + "x" + std::to_string(s.tp) +
         ", axis " + meshAxisName(axis) + ", rank " +
         std::to_string(worldRank());
}

/// A deterministic pseudo-random value in [-1, 1) (the same on every rank).
float noise(uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return float(double(x >> 11) / double(1ull << 53) * 2.0 - 1.0);
}

bool bitwiseEqual(const float *a, const float *b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

TEST(ShardedEmbedding, MatchesTheUnshardedKernelOnTheGatheredTable) {
  for (auto [shape, axis] : cases()) {
    MeshCtx m(shape);
    const int g = m.mesh.size(axis), me = m.mesh.coord(axis);
    const int64_t vl = 7, dim = 5, n = 41, vocab = vl * g;
    std::vector<float> table(static_cast<size_t>(vocab * dim));
    for (size_t i = 0; i < table.size(); ++i)
      table[i] = noise(i);
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i)
      ids[size_t(i)] = int32_t((i * 13 + 5) % vocab);
    // Forward: this rank's rows or zeros; summed over the group, the
    // unsharded lookup, bitwise.
    std::vector<float> out(static_cast<size_t>(n * dim), NAN), want(static_cast<size_t>(n * dim));
    loom_embedding_fwd_sharded(&m.ctx, n, vl, dim, axis, ids.data(),
                               table.data() + me * vl * dim, out.data());
    for (int64_t i = 0; i < n; ++i) {
      bool mine = ids[size_t(i)] / vl == me;
      for (int64_t c = 0; c < dim; ++c)
        EXPECT_EQ(out[size_t(i * dim + c)],
                  mine ? table[size_t(ids[size_t(i)] * dim + c)] : 0.0f)
            << where(shape, axis);
    }
    loom_all_reduce(&m.ctx, out.data(), n * dim, axis, 0);
    EXPECT_EQ(kn::embeddingForward<float>(n, vocab, dim, ids.data(),
                                          table.data(), want.data()),
              "");
    EXPECT_TRUE(bitwiseEqual(out.data(), want.data(), out.size()))
        << where(shape, axis);
    // Backward: this rank's rows of the unsharded gradient, bitwise.
    std::vector<float> dout(static_cast<size_t>(n * dim)), dl(static_cast<size_t>(vl * dim), NAN),
        dfull(static_cast<size_t>(vocab * dim));
    for (size_t i = 0; i < dout.size(); ++i)
      dout[i] = noise(1000 + i);
    loom_embedding_bwd_sharded(&m.ctx, n, vl, dim, axis, ids.data(),
                               dout.data(), dl.data());
    kn::embeddingBackward<float>(n, vocab, dim, ids.data(), dout.data(),
                                 dfull.data());
    EXPECT_TRUE(bitwiseEqual(dl.data(), dfull.data() + me * vl * dim,
                             dl.size()))
        << where(shape, axis);
    EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
    // An id outside the global vocabulary is every rank's error.
    ids[3] = int32_t(vocab);
    loom_embedding_fwd_sharded(&m.ctx, n, vl, dim, axis, ids.data(),
                               table.data(), out.data());
    EXPECT_TRUE(m.ctx.failed);
    EXPECT_EQ(m.ctx.errorOp, "loom_embedding_fwd_sharded");
    EXPECT_NE(m.ctx.errorMessage.find("id " + std::to_string(vocab) +
                                      " at position 3 is outside the "
                                      "vocabulary [0, " +
                                      std::to_string(vocab) + ")"),
              std::string::npos)
        << m.ctx.errorMessage;
    m.ctx.clearError();
  }
}

TEST(ShardedEmbedding, AxisMinusOneIsTheUnshardedKernel) {
  loom_ctx ctx;
  const int64_t vocab = 9, dim = 3, n = 6;
  std::vector<float> table(vocab * dim), a(n * dim), b(n * dim);
  for (size_t i = 0; i < table.size(); ++i)
    table[i] = noise(i);
  std::vector<int32_t> ids = {0, 8, 3, 3, 1, 7};
  loom_embedding_fwd_sharded(&ctx, n, vocab, dim, -1, ids.data(), table.data(),
                             a.data());
  kn::embeddingForward<float>(n, vocab, dim, ids.data(), table.data(),
                              b.data());
  EXPECT_EQ(a, b);
  EXPECT_FALSE(ctx.failed);
}

/// Logits with ties across ranks: row r's maximum appears at classes
/// (r % 3) and (r % 3) + classes_local, so on two ranks at once.
std::vector<float> tiedLogits(int64_t rows, int64_t classes, int64_t cl) {
  std::vector<float> x(static_cast<size_t>(rows * classes));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < classes; ++c)
      x[size_t(r * classes + c)] = 3.0f * noise(uint64_t(r * classes + c));
  for (int64_t r = 0; r < rows; r += 2) {
    int64_t a = r % 3, b = a + cl;
    if (b < classes)
      x[size_t(r * classes + a)] = x[size_t(r * classes + b)] = 5.0f;
  }
  return x;
}

TEST(ShardedCrossEntropy, MatchesTheUnshardedKernelOnTheGatheredLogits) {
  for (auto [shape, axis] : cases()) {
    MeshCtx m(shape);
    const int g = m.mesh.size(axis), me = m.mesh.coord(axis);
    const int64_t rows = 37, cl = 6, classes = cl * g;
    const int64_t ignore = -100;
    std::vector<float> full = tiedLogits(rows, classes, cl);
    std::vector<int32_t> target(rows);
    for (int64_t r = 0; r < rows; ++r)
      target[size_t(r)] =
          r % 7 == 3 ? int32_t(ignore) : int32_t((r * 5 + 1) % classes);
    // Make some argmaxes right: row 0's tie at class 0 (rank 0's) and at
    // class cl; the lowest global index counts.
    target[0] = 0;
    target[2] = int32_t(2 % 3 + cl < classes ? 2 % 3 + cl : 1);
    std::vector<float> local(static_cast<size_t>(rows * cl));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cl; ++c)
        local[size_t(r * cl + c)] = full[size_t(r * classes + me * cl + c)];
    float loss = NAN, stats[2] = {NAN, NAN}, wantLoss = NAN,
          wantStats[2] = {NAN, NAN};
    std::vector<float> lse(static_cast<size_t>(rows)), wantLse(static_cast<size_t>(rows));
    loom_cross_entropy_fwd_sharded(&m.ctx, rows, cl, axis, local.data(),
                                   target.data(), ignore, &loss, lse.data(),
                                   stats);
    EXPECT_EQ(kn::crossEntropyForward<float>(rows, classes, full.data(),
                                             target.data(), ignore, &wantLoss,
                                             wantLse.data(), wantStats),
              "");
    EXPECT_NEAR(loss, wantLoss, 1e-6 * std::fabs(wantLoss))
        << where(shape, axis);
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_NEAR(lse[size_t(r)], wantLse[size_t(r)],
                  1e-6 * std::fabs(wantLse[size_t(r)]))
          << where(shape, axis) << ", row " << r;
    EXPECT_EQ(stats[0], wantStats[0]) << where(shape, axis);
    EXPECT_EQ(stats[1], wantStats[1]) << where(shape, axis);
    EXPECT_GT(stats[1], 0.0f);
    // Every member of the group holds the same bits.
    std::vector<float> mine(lse);
    mine.push_back(loss);
    mine.push_back(stats[0]);
    mine.push_back(stats[1]);
    std::vector<float> root(mine);
    loom_broadcast(&m.ctx, root.data(), int64_t(root.size()), axis, 0);
    EXPECT_TRUE(bitwiseEqual(mine.data(), root.data(), mine.size()))
        << where(shape, axis) << ": members disagree";
    // Backward: this rank's columns of the unsharded gradient, bitwise,
    // given the same lse.
    float dloss = 0.75f;
    std::vector<float> dl(static_cast<size_t>(rows * cl), NAN),
        dfull(static_cast<size_t>(rows * classes));
    loom_cross_entropy_bwd_sharded(&m.ctx, rows, cl, axis, local.data(),
                                   target.data(), ignore, lse.data(), &dloss,
                                   dl.data());
    kn::crossEntropyBackward<float>(rows, classes, full.data(), target.data(),
                                    ignore, lse.data(), &dloss, dfull.data());
    for (int64_t r = 0; r < rows; ++r)
      EXPECT_TRUE(bitwiseEqual(dl.data() + r * cl,
                               dfull.data() + r * classes + me * cl, size_t(cl)))
          << where(shape, axis) << ", row " << r;
    EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
    // A target outside the global classes: every member reports it, and
    // none is left waiting in the collectives.
    target[5] = int32_t(classes);
    loom_cross_entropy_fwd_sharded(&m.ctx, rows, cl, axis, local.data(),
                                   target.data(), ignore, &loss, lse.data(),
                                   stats);
    EXPECT_TRUE(m.ctx.failed);
    EXPECT_EQ(m.ctx.errorOp, "loom_cross_entropy_fwd_sharded");
    EXPECT_NE(m.ctx.errorMessage.find("target " + std::to_string(classes) +
                                      " at row 5 is outside the classes [0, " +
                                      std::to_string(classes) + ")"),
              std::string::npos)
        << m.ctx.errorMessage;
    m.ctx.clearError();
  }
}

TEST(ShardedCrossEntropy, AGroupOfOneIsBitwiseTheUnshardedKernel) {
  // dp=W: the tp group has one member.
  MeshCtx m({worldSize(), 1});
  const int64_t rows = 9, classes = 11;
  std::vector<float> x = tiedLogits(rows, classes, 4);
  std::vector<int32_t> t = {0, 3, -1, 10, 2, 2, 7, 1, -1};
  float a = 0, b = 0, sa[2], sb[2];
  std::vector<float> la(rows), lb(rows);
  loom_cross_entropy_fwd_sharded(&m.ctx, rows, classes, 1, x.data(), t.data(),
                                 -1, &a, la.data(), sa);
  kn::crossEntropyForward<float>(rows, classes, x.data(), t.data(), -1, &b,
                                 lb.data(), sb);
  EXPECT_EQ(a, b);
  EXPECT_EQ(la, lb);
  EXPECT_EQ(sa[0], sb[0]);
  EXPECT_EQ(sa[1], sb[1]);
  float c = 0;
  loom_cross_entropy_fwd_sharded(&m.ctx, rows, classes, -1, x.data(),
                                 t.data(), -1, &c, la.data(), sa);
  EXPECT_EQ(c, b);
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorMessage;
}

TEST(AllReduceStart, BitwiseTheBlockingReduction) {
  for (auto [shape, axis] : cases()) {
    MeshCtx m(shape);
    const int r = worldRank();
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1) << 16,
                      int64_t(1) << 20}) {
      std::vector<float> input(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        input[size_t(i)] = noise(uint64_t(i) * 7 + uint64_t(r)) * 1e3f;
      for (int32_t op = 0; op < 2; ++op) {
        std::vector<float> blocking(input), a(input), b(input);
        loom_all_reduce(&m.ctx, blocking.data(), n, axis, op);
        // Two in flight at once, a blocking collective on the other axis in
        // between, waited out of order.
        int64_t ha = loom_all_reduce_start(&m.ctx, a.data(), n, axis, op);
        int64_t hb = loom_all_reduce_start(&m.ctx, b.data(), n, axis, op);
        EXPECT_GT(ha, 0);
        EXPECT_NE(ha, hb);
        EXPECT_EQ(m.mesh.pendingReductions(), 2);
        float other = float(r);
        loom_all_reduce(&m.ctx, &other, 1, 1 - axis, 0);
        loom_all_reduce_wait(&m.ctx, hb);
        loom_all_reduce_wait(&m.ctx, ha);
        EXPECT_EQ(m.mesh.pendingReductions(), 0);
        EXPECT_TRUE(bitwiseEqual(a.data(), blocking.data(), size_t(n)))
            << where(shape, axis) << ", n " << n << ", op " << op;
        EXPECT_TRUE(bitwiseEqual(b.data(), blocking.data(), size_t(n)))
            << where(shape, axis) << ", n " << n << ", op " << op;
      }
    }
    EXPECT_FALSE(m.ctx.failed) << m.ctx.errorOp << ": " << m.ctx.errorMessage;
  }
}

TEST(AllReduceStart, ErrorsAndAccounting) {
  MeshCtx m({worldSize(), 1});
  std::vector<float> x(100, 1.0f);
  m.mesh.takeStats();
  int64_t h = loom_all_reduce_start(&m.ctx, x.data(), 100, 0, 0);
  loom_all_reduce(&m.ctx, x.data() + 50, 10, 0, 1);
  loom_all_reduce_wait(&m.ctx, h);
  CommMesh::Stats s = m.mesh.takeStats();
  EXPECT_EQ(s.calls, 2);
  EXPECT_EQ(s.bytes, 110 * 4);
  EXPECT_GT(s.seconds, 0.0);
  EXPECT_EQ(m.mesh.takeStats().calls, 0);
  EXPECT_FALSE(m.ctx.failed) << m.ctx.errorMessage;
  // Waiting twice, or a handle never started.
  loom_all_reduce_wait(&m.ctx, h);
  EXPECT_TRUE(m.ctx.failed);
  EXPECT_EQ(m.ctx.errorOp, "loom_all_reduce_wait");
  EXPECT_NE(m.ctx.errorMessage.find("is not a pending reduction"),
            std::string::npos);
  m.ctx.clearError();
  EXPECT_EQ(loom_all_reduce_start(&m.ctx, x.data(), 10, 0, 5), 0);
  EXPECT_TRUE(m.ctx.failed);
  EXPECT_NE(m.ctx.errorMessage.find("unknown reduction 5"), std::string::npos);
  m.ctx.clearError();
  // A reduction left pending is finished by drainReductions.
  std::vector<float> y(10, float(worldRank()));
  loom_all_reduce_start(&m.ctx, y.data(), 10, 0, 0);
  EXPECT_EQ(m.mesh.pendingReductions(), 1);
  m.mesh.drainReductions(&m.ctx);
  EXPECT_EQ(m.mesh.pendingReductions(), 0);
  float sum = 0;
  for (int k = 0; k < worldSize(); ++k)
    sum += float(k);
  EXPECT_EQ(y[0], sum);
  // Without a mesh (one rank): a no-op handle.
  loom_ctx bare;
  int64_t hb = loom_all_reduce_start(&bare, y.data(), 10, 0, 0);
  loom_all_reduce_wait(&bare, hb);
  EXPECT_FALSE(bare.failed) << bare.errorMessage;
  EXPECT_EQ(y[0], sum);
}

TEST(WorldCollectives, GatherReduceAndSend) {
  MeshCtx m({worldSize(), 1});
  const int r = worldRank(), w = worldSize();
  std::vector<std::string> all =
      m.mesh.allGather(std::string(static_cast<size_t>(r), 'x') + std::to_string(r), "t");
  ASSERT_EQ(int(all.size()), w);
  for (int k = 0; k < w; ++k)
    EXPECT_EQ(all[size_t(k)], std::string(static_cast<size_t>(k), 'x') + std::to_string(k));
  double v[2] = {double(r), -double(r)};
  m.mesh.allReduceMax(v, 2, "t");
  EXPECT_EQ(v[0], double(w - 1));
  EXPECT_EQ(v[1], 0.0);
  std::vector<int> data(1000, r);
  for (int from = 1; from < w; ++from) {
    std::vector<int> got(1000, -1);
    if (r == 0)
      m.mesh.sendToRoot(from, got.data(), got.size() * sizeof(int), "t");
    else if (r == from)
      m.mesh.sendToRoot(from, data.data(), data.size() * sizeof(int), "t");
    if (r == 0)
      EXPECT_EQ(got, std::vector<int>(1000, from));
  }
  m.mesh.barrier("t");
}

} // namespace

int main(int argc, char **argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = RUN_ALL_TESTS();
  int anyFailed = 0;
  MPI_Allreduce(&failed, &anyFailed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return anyFailed ? 1 : 0;
}
