//===- TestContext.cpp - loom_error and loom_step for the kernel tests ----===//
//
// The runtime's Context.cpp defines these; the kernel tests link this
// stand-in while LoomRuntime does not provide them (see CMakeLists.txt).
//
//===----------------------------------------------------------------------===//
#include "runtime/Context.h"

extern "C" void loom_error(loom_ctx *ctx, const char *op, const char *message) {
  if (!ctx)
    return;
  std::lock_guard<std::mutex> lock(ctx->errorMutex);
  if (ctx->failed)
    return; // The first error wins.
  ctx->failed = true;
  ctx->errorOp = op;
  ctx->errorMessage = message;
}

extern "C" int64_t loom_step(loom_ctx *ctx) { return ctx ? ctx->step : 0; }
