//===- ContextTest.cpp - loom_error and loom_step -------------------------===//
#include "runtime/Context.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace {

TEST(Context, FirstErrorWins) {
  loom_ctx ctx;
  EXPECT_FALSE(ctx.failed);
  loom_error(&ctx, "loom_embedding_fwd", "id 300 outside [0, 256)");
  loom_error(&ctx, "loom_gemm", "a later consequence");
  EXPECT_TRUE(ctx.failed);
  EXPECT_EQ(ctx.errorOp, "loom_embedding_fwd");
  EXPECT_EQ(ctx.errorMessage, "id 300 outside [0, 256)");
  ctx.clearError();
  EXPECT_FALSE(ctx.failed);
  loom_error(&ctx, nullptr, nullptr);
  EXPECT_TRUE(ctx.failed);
  EXPECT_EQ(ctx.errorOp, "(unknown op)");
}

TEST(Context, ConcurrentReportsKeepOneWholeError) {
  loom_ctx ctx;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&ctx, t] {
      std::string op = "op" + std::to_string(t);
      for (int i = 0; i < 100; ++i)
        loom_error(&ctx, op.c_str(), op.c_str());
    });
  for (auto &t : threads)
    t.join();
  EXPECT_TRUE(ctx.failed);
  EXPECT_EQ(ctx.errorOp, ctx.errorMessage); // from the same report
}

TEST(Context, StepIsTheRuntimesCounter) {
  loom_ctx ctx;
  EXPECT_EQ(loom_step(&ctx), 0);
  ctx.step = 42;
  EXPECT_EQ(loom_step(&ctx), 42);
  EXPECT_EQ(loom_step(nullptr), 0);
}

} // namespace
