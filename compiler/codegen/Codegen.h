//===- Codegen.h - object code and the .loomx artifact ----------*- C++ -*-===//
#ifndef LOOM_COMPILER_CODEGEN_CODEGEN_H
#define LOOM_COMPILER_CODEGEN_CODEGEN_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Support/LogicalResult.h"

#include <string>
#include <vector>

namespace loom::codegen {

struct CpuOptions {
  /// Generate for this machine's CPU instead of the x86-64-v3 baseline.
  bool native = false;
};

/// The CPU features an artifact built with `options` requires, in the
/// names runtime/ARTIFACT.md lists.
std::vector<std::string> requiredCpuFeatures(const CpuOptions &options);

/// Translates a module in the LLVM dialect to LLVM IR text (after -O3).
mlir::LogicalResult emitLLVMIR(mlir::ModuleOp module, const CpuOptions &options,
                               std::string &ir);

/// Compiles a module in the LLVM dialect to an x86-64 ELF object (-O3).
mlir::LogicalResult emitObject(mlir::ModuleOp module, const CpuOptions &options,
                               std::string &object);

/// Links an object into a shared object with the system's `cc`.
mlir::LogicalResult linkSharedObject(mlir::Location loc,
                                     const std::string &object,
                                     std::string &sharedObject);

struct ArtifactInfo {
  std::string source;
  std::string target = "cpu";
  std::vector<std::string> cpuFeatures;
  /// target "cuda": the kernels' PTX and launch table (runtime/ARTIFACT.md).
  std::string ptx;
  struct Kernel {
    std::string name;
    int64_t grid = 1, block = 1;
    /// Where it comes from: the DSL location (`gpt.loom:30:16`).
    std::string origin;
  };
  std::vector<Kernel> kernels;
  /// The programs the runtime may capture as CUDA graphs, and the arena
  /// offset of the step it writes (keepScalarsOnDevice).
  std::vector<std::string> graphPrograms;
  int64_t stepOffset = -1;
};

/// The manifest JSON from the module's `loom.manifest` attribute.
std::string manifestJson(mlir::ModuleOp module, const ArtifactInfo &info);

/// Writes ELF + manifest + trailer to `path` (via a temporary file renamed
/// into place, so a failure never leaves a partial artifact).
mlir::LogicalResult writeArtifact(mlir::Location loc, const std::string &path,
                                  const std::string &sharedObject,
                                  const std::string &manifest);

/// The runtime exports loom_cuda_launch1 .. loom_cuda_launch16
/// (runtime/cuda/GpuAbi.cpp); a kernel over more buffers takes the arena's
/// base pointer instead and views it at the buffers' offsets.
constexpr size_t kMaxCudaKernelArgs = 16;

/// One generated GPU kernel (CudaCodegen.cpp): the exec program's loop op it
/// replaces, its launch shape (1-D: grid x block threads) and its arguments
/// (the op's buffers, then scalars), values of the exec program.
struct CudaKernel {
  std::string name;
  /// The loop op (null once lowerHostProgramForCuda replaced it) and its
  /// location as printed (the DSL line).
  mlir::Operation *op = nullptr;
  std::string origin;
  int64_t grid = 1, block = 1;
  std::vector<mlir::Value> args;
};
struct CudaKernels {
  /// A module holding `gpu.module @loom_kernels`.
  mlir::OwningOpRef<mlir::ModuleOp> module;
  std::vector<CudaKernel> kernels;
};
/// Outlines every linalg.generic / linalg.fill of the module's exec
/// programs into a kernel (one thread per parallel point, reductions as a
/// sequential loop in the thread).
mlir::FailureOr<CudaKernels> outlineCudaKernels(mlir::ModuleOp module);
/// What keepScalarsOnDevice did: the programs whose host code now reads no
/// device memory (they can be captured as CUDA graphs), and where in the
/// arena the runtime writes the step before each program call.
struct DeviceScalars {
  std::vector<std::string> programs;
  int64_t stepOffset = -1;
};
/// After outlineCudaKernels: moves the programs' scalar code (learning
/// rate, norms, clipping, counters) into one-thread kernels, passes the
/// optimizers' changing operands as device pointers and keeps scalar
/// results in a spill area after the arena's buffers, which every arena
/// grows to hold (CudaScalars.cpp). A program it cannot transform keeps the
/// synchronous path.
mlir::FailureOr<DeviceScalars> keepScalarsOnDevice(mlir::ModuleOp module,
                                                   CudaKernels &kernels);
/// Lowers the kernels to PTX for sm_90 (gpu -> NVVM -> NVPTX), no CUDA
/// toolkit needed.
mlir::LogicalResult emitPtx(CudaKernels &kernels, std::string &ptx);
/// The host side of a CUDA artifact's programs (after outlineCudaKernels):
/// each outlined loop becomes `exec.call @loom_cuda_launchN(kernel index,
/// its N buffers)`; the host program's scalar reads and writes of the arena
/// (memref.load/store of rank 0) and its copies become runtime calls
/// (`loom_cuda_load_<t>`, `loom_cuda_store_<t>`, `loom_cuda_copy`), as the
/// arena is device memory; library calls go to `loom_cuda_<name>`, the GPU
/// kernels behind the CPU signature (runtime/cuda/GpuAbi.cpp), the
/// collectives among them.
mlir::LogicalResult lowerHostProgramForCuda(mlir::ModuleOp module,
                                            CudaKernels &kernels);

} // namespace loom::codegen

#endif // LOOM_COMPILER_CODEGEN_CODEGEN_H
