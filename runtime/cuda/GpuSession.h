//===- GpuSession.h - running a CUDA artifact's programs --------*- C++ -*-===//
//
// What loom-run needs to run an artifact compiled with --target=cuda on one
// GPU: the device arena, the kernels (the artifact's PTX, loaded through the
// driver and JIT-compiled for the GPU), and the loom_cuda_* functions the
// host program calls (GpuAbi.cpp, exported by loom-run).
//
// The device arena is authoritative once loom-run has pushed its
// initialised host copy: a program call uploads the inputs the loader
// wrote and downloads the output scalars, nothing else; checkpoints and
// --save pull the whole arena first. A program the compiler moved entirely
// onto the device (the manifest's `cuda_graph_programs`) is run eagerly
// once, captured as a CUDA graph on its second call and replayed after;
// the step it reads is written into the arena (`device_step_offset`)
// before each call. Other programs run eagerly, their scalar reads
// synchronous.
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
  std::string origin; ///< the DSL location, for the profile
};

/// A byte range of the arena.
struct ArenaRange {
  size_t offset = 0, bytes = 0;
};

/// What a program call moves between the host and the device arena.
struct ProgramCall {
  loom_program_fn fn = nullptr;
  /// Uploaded before the call (the loader's inputs).
  const std::vector<ArenaRange> *inputs = nullptr;
  /// Downloaded after it (the output scalars).
  const std::vector<ArenaRange> *outputs = nullptr;
  /// The compiler moved its scalar code onto the device: it may be
  /// captured as a graph.
  bool capturable = false;
};

class NcclMesh;

class GpuSession {
public:
  /// Selects `device`, loads `ptx` (every kernel of `kernels` must be in it)
  /// and allocates an arena of `arenaBytes` on the device. Throws Error
  /// naming the rank, the call and the cause.
  GpuSession(int device, int rank, uint64_t seed, const std::string &ptx,
             const std::vector<KernelLaunch> &kernels, size_t arenaBytes,
             int64_t stepOffset);
  ~GpuSession();
  GpuSession(const GpuSession &) = delete;
  GpuSession &operator=(const GpuSession &) = delete;

  /// Copies the whole host arena to the device (after initialisation or a
  /// load) / the device arena to the host (before a checkpoint or --save).
  void push(const uint8_t *hostArena);
  void pull(uint8_t *hostArena);

  /// Runs one program call on the device: the call's inputs are uploaded
  /// and ctx->step written where the program reads it, the program runs
  /// (eagerly, or as its captured graph), the stream drains, the device
  /// error word is checked (a data error is reported through loom_error on
  /// `ctx`), the outputs are downloaded. ctx->cuda must point to this
  /// session.
  void run(const ProgramCall &call, loom_ctx *ctx, uint8_t *hostArena);

  /// The programs' collectives: over `nccl` (every rank its own GPU; null:
  /// staged through host memory into the CPU runtime's MPI collectives on
  /// ctx->mesh, which needs no NCCL and works with ranks sharing a GPU);
  /// `timeoutSeconds` > 0 is the NCCL watchdog's limit.
  void setCollectives(NcclMesh *nccl, double timeoutSeconds);
  /// The CUDA device of this session.
  int device() const;
  /// The number of CUDA devices this process sees (0 without a driver).
  static int deviceCount();
  /// No graph capture (--debug-poison-grads, or LOOM_CUDA_GRAPHS=0).
  void disableGraphs();
  /// Waits for the stream, destroys the captured graphs and captures no
  /// more. A graph holding NCCL operations keeps its communicator alive:
  /// ncclCommDestroy waits until such graphs are gone, so this comes first.
  void releaseGraphs();
  /// precision bf16 (SEMANTICS.md: matmul operands in the low type): the
  /// attention calls round q, k, v (and, backward, the saved attention and
  /// dout) to bf16 and run the tensor-core kernels, softmax and lse in fp32,
  /// results widened back to the program's fp32 buffers. Off: the fp32
  /// kernels.
  void setBf16Attention(bool on);
  /// Programs replayed from a graph so far (for the run's summary).
  int capturedPrograms() const;

  /// LOOM_CUDA_PROFILE=1: every launch and library call is timed with CUDA
  /// events; in a captured program the events are nodes of its graph, so
  /// the replays measure GPU time alone (the eager calls before capture are
  /// not counted). profileReport() is the table of GPU time by kernel,
  /// largest first, or "" when not profiling.
  bool profiling() const;
  std::string profileReport() const;

  /// "NVIDIA H200, 139.8 GiB, sm_90".
  std::string describe() const;

  struct Impl;
  Impl &impl() { return *impl_; }

private:
  std::unique_ptr<Impl> impl_;
};

} // namespace loom::cuda

#endif // LOOM_RUNTIME_CUDA_GPUSESSION_H
