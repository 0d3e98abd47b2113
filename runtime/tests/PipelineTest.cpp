//===- PipelineTest.cpp - loom_send / loom_recv between pipeline stages ---===//
//
// Run as `mpirun -np 2 loom-pipeline-tests` (mesh pp=2) and `mpirun -np 4`
// (dp=2 x pp=2): ctest runtime.pipeline.np2, runtime.pipeline.np4. Stage 0
// sends, stage 1 receives (and back): order by tag, many outstanding sends,
// large messages (MPI's rendezvous path), argument errors, a size mismatch,
// and the accounting. Assertions are EXPECT_*: a rank that left a test
// early would leave its peer waiting.
//
//===----------------------------------------------------------------------===//
#include "runtime/Collectives.h"
#include "runtime/Context.h"

#include <gtest/gtest.h>

#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

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

/// The world as dp = size / 2, tp = 1, pp = 2.
struct PipeCtx {
  PipeCtx() : mesh(worldSize() / 2, 1, 2, worldRank(), worldSize()) {
    ctx.rank = worldRank();
    ctx.worldSize = worldSize();
    ctx.mesh = &mesh;
    ctx.threads = 1;
    ctx.step = 1;
  }
  int stage() const { return mesh.coord(kAxisPP); }
  int dp() const { return mesh.coord(kAxisDP); }
  CommMesh mesh;
  loom_ctx ctx;
};

int64_t tagOf(int mb, int slot) { return int64_t(mb) * 65536 + slot; }

/// Element i of message `tag` from dp replica `d`.
float valueOf(int d, int64_t tag, int64_t i) {
  return float(d * 1000003 + tag % 9973) + float(i % 1024) * 0.25f;
}

std::vector<float> messageOf(int d, int64_t tag, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = valueOf(d, tag, i);
  return v;
}

TEST(Pipeline, ReceivesMatchByTagWhateverTheSendOrder) {
  PipeCtx p;
  const int64_t n = 37;
  // Stage 0 sends micro-batches 2, 0, 1 (slot 3) and reuses its buffer at
  // once; stage 1 receives them 0, 1, 2.
  if (p.stage() == 0) {
    std::vector<float> buf;
    for (int mb : {2, 0, 1}) {
      buf = messageOf(p.dp(), tagOf(mb, 3), n);
      loom_send(&p.ctx, buf.data(), n, kAxisPP, +1, tagOf(mb, 3));
      std::fill(buf.begin(), buf.end(), -1.0f);
    }
  } else {
    for (int mb : {0, 1, 2}) {
      std::vector<float> got(size_t(n), 0.0f);
      loom_recv(&p.ctx, got.data(), n, kAxisPP, -1, tagOf(mb, 3));
      EXPECT_EQ(got, messageOf(p.dp(), tagOf(mb, 3), n)) << "micro-batch " << mb;
    }
  }
  p.mesh.completeSends(&p.ctx);
  EXPECT_EQ(p.mesh.pendingSends(), 0);
  EXPECT_FALSE(p.ctx.failed) << p.ctx.errorMessage;
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Pipeline, ManyOutstandingSendsThenReceivesBackwards) {
  PipeCtx p;
  const int count = 1000;
  const int64_t n = 64;
  if (p.stage() == 0) {
    for (int mb = 0; mb < count; ++mb) {
      std::vector<float> v = messageOf(p.dp(), tagOf(mb, 1), n);
      loom_send(&p.ctx, v.data(), n, kAxisPP, +1, tagOf(mb, 1));
    }
    // Never blocked on the receiver: every send has returned.
    EXPECT_LE(p.mesh.pendingSends(), count);
  } else {
    // Received last first: MPI matches by tag, buffered sends wait.
    for (int mb = count - 1; mb >= 0; --mb) {
      std::vector<float> got(static_cast<size_t>(n));
      loom_recv(&p.ctx, got.data(), n, kAxisPP, -1, tagOf(mb, 1));
      EXPECT_EQ(got, messageOf(p.dp(), tagOf(mb, 1), n)) << mb;
    }
  }
  p.mesh.completeSends(&p.ctx);
  EXPECT_EQ(p.mesh.pendingSends(), 0);
  EXPECT_FALSE(p.ctx.failed) << p.ctx.errorMessage;
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Pipeline, LargeMessagesBothWays) {
  PipeCtx p;
  // 24 MiB each: past every eager limit, so the send completes only once
  // the receive is posted (at completeSends here).
  const int64_t n = int64_t(6) << 20;
  std::vector<float> buf;
  if (p.stage() == 0) {
    buf = messageOf(p.dp(), tagOf(0, 0), n);
    loom_send(&p.ctx, buf.data(), n, kAxisPP, +1, tagOf(0, 0));
    buf.assign(size_t(n), 0.0f);
    loom_recv(&p.ctx, buf.data(), n, kAxisPP, +1, tagOf(0, 1));
    EXPECT_EQ(buf, messageOf(p.dp(), tagOf(0, 1), n));
  } else {
    buf.assign(size_t(n), 0.0f);
    loom_recv(&p.ctx, buf.data(), n, kAxisPP, -1, tagOf(0, 0));
    EXPECT_EQ(buf, messageOf(p.dp(), tagOf(0, 0), n));
    buf = messageOf(p.dp(), tagOf(0, 1), n);
    loom_send(&p.ctx, buf.data(), n, kAxisPP, -1, tagOf(0, 1));
  }
  p.mesh.completeSends(&p.ctx);
  EXPECT_FALSE(p.ctx.failed) << p.ctx.errorMessage;
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Pipeline, AccountingCountsSendsAndReceives) {
  PipeCtx p;
  p.mesh.takeStats();
  std::vector<float> v(100, 1.0f);
  if (p.stage() == 0) {
    loom_send(&p.ctx, v.data(), 100, kAxisPP, +1, tagOf(0, 0));
    loom_send(&p.ctx, v.data(), 50, kAxisPP, +1, tagOf(1, 0));
  } else {
    loom_recv(&p.ctx, v.data(), 100, kAxisPP, -1, tagOf(0, 0));
    loom_recv(&p.ctx, v.data(), 50, kAxisPP, -1, tagOf(1, 0));
  }
  p.mesh.completeSends(&p.ctx);
  CommMesh::Stats s = p.mesh.takeStats();
  EXPECT_EQ(s.bytes, 600);
  EXPECT_EQ(s.calls, 2);
  EXPECT_GE(s.seconds, 0.0);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Pipeline, ArgumentErrorsAreReported) {
  PipeCtx p;
  float x = 0;
  // Stage 0 has no previous stage, stage 1 no next one.
  int outward = p.stage() == 0 ? -1 : +1;
  loom_send(&p.ctx, &x, 1, kAxisPP, outward, 0);
  EXPECT_TRUE(p.ctx.failed);
  EXPECT_EQ(p.ctx.errorOp, "loom_send");
  EXPECT_EQ(p.ctx.errorMessage,
            "axis pp: peer offset " + std::to_string(outward) +
                " from coordinate " + std::to_string(p.stage()) +
                " is outside the group's 2 ranks");
  p.ctx.clearError();
  loom_recv(&p.ctx, &x, 1, kAxisPP, 0, 0);
  EXPECT_EQ(p.ctx.errorMessage, "axis pp: peer offset 0 from coordinate " +
                                    std::to_string(p.stage()) +
                                    " is this rank itself");
  p.ctx.clearError();
  loom_recv(&p.ctx, &x, 1, kAxisPP, -outward, -5);
  EXPECT_NE(p.ctx.errorMessage.find("tag -5 outside [0, "), std::string::npos)
      << p.ctx.errorMessage;
  p.ctx.clearError();
  loom_send(&p.ctx, &x, 1, 7, 1, 0);
  EXPECT_EQ(p.ctx.errorMessage, "axis 7 (0 dp, 1 tp, 2 pp): no such mesh axis");
  p.ctx.clearError();
  EXPECT_EQ(p.mesh.pendingSends(), 0);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Pipeline, SizeMismatchNamesBothSizes) {
  PipeCtx p;
  // Stage 0 sends 10 floats of micro-batch 4, slot 2; stage 1 expects 12.
  std::vector<float> v(12, 2.0f);
  if (p.stage() == 0)
    loom_send(&p.ctx, v.data(), 10, kAxisPP, +1, tagOf(4, 2));
  else
    loom_recv(&p.ctx, v.data(), 12, kAxisPP, -1, tagOf(4, 2));
  p.mesh.completeSends(&p.ctx);
  if (p.stage() == 1) {
    EXPECT_TRUE(p.ctx.failed);
    EXPECT_EQ(p.ctx.errorOp, "loom_recv");
    EXPECT_EQ(p.ctx.errorMessage,
              "rank " + std::to_string(worldRank()) +
                  " (stage 1): recv from stage 0 (micro-batch 4, slot 2, 12 "
                  "floats): size mismatch: stage 0 sent 10 floats, this recv "
                  "expects 12");
    EXPECT_EQ(v, std::vector<float>(12, 2.0f)); // untouched
  } else {
    EXPECT_FALSE(p.ctx.failed) << p.ctx.errorMessage;
  }
  MPI_Barrier(MPI_COMM_WORLD);
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
