//===- Explain.h - sharding explanations and communication -----*- C++ -*-===//
//
// What `loomc --explain-sharding` prints and what `--report` counts of the
// per-rank programs after loom-partition: every op's sharding and why, every
// collective with its cause and payload, and the bytes a rank sends per step
// under the ring model (all-reduce 2(n-1)/n·S, all-gather and reduce-scatter
// (n-1)/n of the gathered size).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_COMPILER_TOOLS_LOOMC_EXPLAIN_H
#define LOOM_COMPILER_TOOLS_LOOMC_EXPLAIN_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

#include <array>
#include <string>
#include <vector>

namespace loom::loomc {

struct Collective {
  std::string kind;  ///< all_reduce, all_gather, reduce_scatter, shard, or
                     ///< "all_reduce (inside <op>)" for kernel-internal ones
  std::string axis;
  int64_t group = 1;
  int64_t payloadBytes = 0; ///< the per-rank buffer the collective moves
  double sentBytes = 0;     ///< ring model, per rank
  std::string where;        ///< DSL location of the op it serves
  int64_t stage = 0;        ///< the pipeline stage whose program runs it
  std::string cause;
};

struct Communication {
  std::array<int64_t, 3> mesh = {1, 1, 1};
  std::vector<Collective> collectives; ///< of the train program, in order
  double sentBytes = 0;
  int64_t payloadBytes = 0;
};

/// Bytes for people: "1.50 MiB", "2.0 KiB", "4 B".
std::string humanBytes(double bytes);

/// The collectives of the module's `train` dist.program.
Communication analyzeCommunication(mlir::ModuleOp module);

/// `--explain-sharding`: every op of each program with its sharding and the
/// rule's reason, then the collectives.
void explainSharding(mlir::ModuleOp module, const Communication &comm,
                     llvm::raw_ostream &os);

} // namespace loom::loomc

#endif // LOOM_COMPILER_TOOLS_LOOMC_EXPLAIN_H
