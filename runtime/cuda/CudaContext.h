//===- CudaContext.h - one rank's CUDA state for the kernels --*- C++ -*-===//
//-*-===//
//
// A CudaContext is what every kernel of runtime/cuda takes: the device and
// rank, the stream every launch goes to, the cuBLASLt handle and its
// workspace, the device error word and a scratch buffer for the multi-pass
// (deterministic) reductions. Plain C++: usable from files a host compiler
// builds (the CUDA runtime and cuBLASLt headers are C headers).
//
// Errors: every CUDA and cuBLASLt call is checked; a failure throws
// loom::runtime::Error ("rank 0: cuda: layer_norm_fwd: cudaMemsetAsync(...)
// failed: out of memory (cudaErrorMemoryAllocation)"). Data errors found by a
// kernel (an id out of range, ...) never throw: they are recorded in the
// device error word (DeviceError below) and read by the runtime after a step.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CUDA_CUDACONTEXT_H
#define LOOM_RUNTIME_CUDA_CUDACONTEXT_H

#include "runtime/Support.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace loom::cuda {

/// The device error word (runtime/cuda/README.md, "Conventions"). The first error of a
/// step wins: a kernel claims the word with a 64-bit atomicCAS of (code, op)
/// from (0, 0); reports of the same (code, op) then keep the lowest `a`
/// (atomicMin), so the recorded element is the first one in index order,
/// as the CPU kernels report it, whatever the thread schedule. `a` and `b`
/// per code are documented with DeviceErrorCode.
struct DeviceError {
  int32_t code; ///< DeviceErrorCode; 0: no error
  int32_t op;   ///< the op index the caller passed (the manifest's ops table)
  int64_t a;    ///< the offending element, packed (see DeviceErrorCode)
  int64_t b;    ///< context: the valid range's end, the element count
};

enum DeviceErrorCode : int32_t {
  kNoDeviceError = 0,
  /// embedding_fwd/bwd: a = position << 32 | uint32(id), b = vocab.
  kEmbeddingIdOutOfRange = 1,
  /// cross_entropy_fwd/bwd: a = row << 32 | uint32(target), b = classes.
  kTargetOutOfRange = 2,
  /// check_finite: a = index << 1 | (1 if inf, 0 if NaN), b = n.
  kNotFinite = 3,
};

/// One line, as the CPU kernels word the same error: "embedding: id 70 at
/// position 3 is outside the vocabulary [0, 64)". `opName` names the op
/// (empty: "op N").
std::string describeDeviceError(const DeviceError &error,
                                const std::string &opName = {});

struct GemmPlans; // Gemm.cpp: cuBLASLt descriptors and algorithms per shape

/// One rank's CUDA state. Not copyable; create one per device and rank.
struct CudaContext {
  /// Selects `device`, creates a non-blocking stream, the cuBLASLt handle,
  /// the 32 MiB cuBLASLt workspace and the (cleared) device error word.
  /// `seed` is the run seed (dropout's Philox key).
  CudaContext(int device, int rank, uint64_t seed = 0);
  ~CudaContext();
  CudaContext(const CudaContext &) = delete;
  CudaContext &operator=(const CudaContext &) = delete;

  int device = 0;
  int rank = 0;
  uint64_t seed = 0;
  int multiprocessors = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  static constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;
  void *ltWorkspace = nullptr;
  DeviceError *error = nullptr; ///< device memory
  GemmPlans *gemmPlans = nullptr;

  /// A device buffer of at least `bytes`, reused by every kernel that needs
  /// temporary space (stream-ordered: one kernel's scratch is dead when the
  /// next kernel on the stream starts). Growing it synchronises the device,
  /// so it is an error while the stream is being captured into a graph:
  /// call reserveScratch with the step's largest need before capturing.
  void *scratch(size_t bytes, const char *kernel);
  void reserveScratch(size_t bytes);
  size_t scratchBytes() const { return scratchSize; }

  /// Enqueues clearing the error word (code 0, a = max) on the stream.
  void clearError();
  /// Waits for the stream and returns the error word.
  DeviceError readError();
  /// Waits for the stream (errors checked).
  void synchronize();

private:
  void release();
  void *scratchBuffer = nullptr;
  size_t scratchSize = 0;
};

/// Throws loom::runtime::Error "rank R: cuda: KERNEL: CALL failed: TEXT
/// (NAME)" unless status is cudaSuccess.
void checkCuda(cudaError_t status, const char *call, const char *kernel,
               int rank);
/// The same for a cuBLASLt status.
void checkCublas(cublasStatus_t status, const char *call, const char *kernel,
                 int rank);
/// After a launch: cudaGetLastError, reported as "launch of KERNEL".
void checkLaunch(const CudaContext &ctx, const char *kernel);

} // namespace loom::cuda

/// Checks a CUDA runtime call made for `kernel` on `ctx`'s rank.
#define LOOM_CUDA_CHECK(ctx, call, kernel)                                     \
  ::loom::cuda::checkCuda((call), #call, (kernel), (ctx).rank)
/// Checks a cuBLASLt call.
#define LOOM_CUBLAS_CHECK(ctx, call, kernel)                                   \
  ::loom::cuda::checkCublas((call), #call, (kernel), (ctx).rank)

#endif // LOOM_RUNTIME_CUDA_CUDACONTEXT_H
