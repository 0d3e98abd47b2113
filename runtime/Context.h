//===- Context.h - the runtime's per-rank context (loom_ctx) ----*- C++ -*-===//
//
// What every ABI function can see: the rank, the run seed, the step being
// run, the thread count, and the first error a kernel reported.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CONTEXT_H
#define LOOM_RUNTIME_CONTEXT_H

#include "runtime/abi/loom_abi.h"

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

struct loom_ctx {
  int rank = 0;
  int worldSize = 1;
  uint64_t seed = 0;
  /// The optimizer step s being run (1-based); 0 before training starts.
  int64_t step = 0;
  int threads = 1;
  /// Test hook (`loom-run --debug-poison-grads=STEP[-LAST][@RANK]`): on
  /// those steps and that rank the gradients' overflow check sees NaN, as if
  /// a gradient had overflowed. 0: off.
  int64_t poisonStep = 0, poisonLast = 0;
  int poisonRank = -1; ///< -1: every rank
  /// `loom-run --check-numerics`: every checked op's outputs are scanned and
  /// the first inf/NaN stops the step, naming the op (opNames) and its line.
  bool checkNumerics = false;
  const std::vector<std::string> *opNames = nullptr;
  /// The run's mesh and its communicators (loom::runtime::CommMesh,
  /// runtime/Collectives.h), owned by the runtime; the collectives use it.
  /// nullptr: a world of one rank.
  void *mesh = nullptr;
  /// `loom-run --trace`: the rank's recorder (loom::runtime::Tracer,
  /// runtime/Trace.h) behind loom_trace_begin / loom_trace_end. nullptr: not
  /// tracing (the markers return at once).
  void *tracer = nullptr;
  /// A CUDA artifact's GPU session (loom::cuda::GpuSession,
  /// runtime/cuda/GpuSession.h) behind the loom_cuda_* functions; nullptr
  /// for a CPU artifact.
  void *cuda = nullptr;
  /// The first error a kernel reported in the current program call.
  bool failed = false;
  std::string errorOp, errorMessage;
  /// Kernels may report from several threads at once; the first one wins.
  std::mutex errorMutex;

  /// Forgets a reported error (before the next program call).
  void clearError() {
    std::lock_guard<std::mutex> lock(errorMutex);
    failed = false;
    errorOp.clear();
    errorMessage.clear();
  }
};

#endif // LOOM_RUNTIME_CONTEXT_H
