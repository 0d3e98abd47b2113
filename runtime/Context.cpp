//===- Context.cpp - the ABI functions about the context ------------------===//
//
// loom_error and loom_step: what generated code and kernels ask of the
// runtime's per-rank context (runtime/abi/loom_abi.h).
//
//===----------------------------------------------------------------------===//
#include "runtime/Context.h"

#include <cstdio>

extern "C" void loom_error(loom_ctx *ctx, const char *op, const char *message) {
  if (!ctx) {
    // No context to record into: say so rather than lose the error.
    std::fprintf(stderr, "loom: error (no context): %s: %s\n",
                 op ? op : "(unknown op)", message ? message : "(no message)");
    return;
  }
  std::lock_guard<std::mutex> lock(ctx->errorMutex);
  if (ctx->failed)
    return; // the first error is the cause; later ones are consequences
  ctx->failed = true;
  ctx->errorOp = op ? op : "(unknown op)";
  ctx->errorMessage = message ? message : "(no message)";
}

extern "C" int64_t loom_step(loom_ctx *ctx) { return ctx ? ctx->step : 0; }
