//===- Passes.h - Loom's passes ---------------------------------*- C++ -*-===//
#ifndef LOOM_COMPILER_PASSES_PASSES_H
#define LOOM_COMPILER_PASSES_PASSES_H

#include "dialects/Dist/DistDialect.h"
#include "dialects/Exec/ExecDialect.h"
#include "dialects/Train/TrainDialect.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Pass/Pass.h"

#include <memory>

namespace loom {

#define GEN_PASS_DECL
#include "compiler/passes/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "compiler/passes/Passes.h.inc"

/// Attaches the sharding rules of the loom and train ops
/// (ShardingRuleOpInterface external models, ShardingRules.cpp).
void registerShardingRules(mlir::DialectRegistry &registry);

/// Fuses the data-parallel gradient all-reduces of a partitioned program
/// into buckets of at most `bucketBytes` (the first 1 MiB), each started
/// asynchronously right after its last gradient and waited before the first
/// reader (Partition.cpp; loom-schedule-pipeline calls it per stage).
void bucketDataParallelGradients(mlir::Operation *program, int64_t bucketBytes);

/// The named pipelines loomc runs, stage by stage.

void buildLoomToTrainPipeline(mlir::OpPassManager &pm);
void buildTrainToDistPipeline(mlir::OpPassManager &pm);
void buildDistToExecPipeline(mlir::OpPassManager &pm);
void buildExecToLLVMPipeline(mlir::OpPassManager &pm);

} // namespace loom

#endif // LOOM_COMPILER_PASSES_PASSES_H
