//===- GpuSession.h - running a CUDA artifact's programs --------*- C++ -*-===//
//
// What loom-run needs to run an artifact compiled with --target=cuda on one
// GPU: the device arena, the kernels (the artifact's PTX, loaded through the
// driver and JIT-compiled for the GPU), and the loom_cuda_* functions the
// host program calls (GpuAbi.cpp, exported by loom-run).
//
// This first form keeps loom-run's host arena authoritative: before each
// program call the whole arena is copied to the device and after it back,
// and the host program's scalar reads and writes are synchronous copies.
// Correct and simple; the copies and syncs are what a later form removes
// (scalars kept on the device, the step captured as a CUDA graph).
//
// Plain C++ header.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CUDA_GPUSESSION_H
#define LOOM_RUNTIME_CUDA_GPUSESSION_H

#include "runtime/abi/loom_abi.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace loom::cuda {

struct KernelLaunch {
  std::string name;
  int64_t grid = 1, block = 1;
};

class GpuSession {
public:
  /// Selects `device`, loads `ptx` (every kernel of `kernels` must be in it)
  /// and allocates an arena of `arenaBytes` on the device. Throws Error
  /// naming the rank, the call and the cause.
  GpuSession(int device, int rank, uint64_t seed, const std::string &ptx,
             const std::vector<KernelLaunch> &kernels, size_t arenaBytes);
  ~GpuSession();
  GpuSession(const GpuSession &) = delete;
  GpuSession &operator=(const GpuSession &) = delete;

  /// Runs one program call on the device: the host arena is copied in, the
  /// program runs (its library calls and launches enqueue on the session's
  /// stream), the stream drains, the device error word is checked (a data
  /// error is reported through loom_error on `ctx`), the arena is copied
  /// back. ctx->cuda must point to this session.
  void run(loom_program_fn fn, loom_ctx *ctx, uint8_t *hostArena);

  /// "NVIDIA H200, 139.8 GiB, sm_90".
  std::string describe() const;

  struct Impl;
  Impl &impl() { return *impl_; }

private:
  std::unique_ptr<Impl> impl_;
};

} // namespace loom::cuda

#endif // LOOM_RUNTIME_CUDA_GPUSESSION_H
