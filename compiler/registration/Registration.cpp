//===- Registration.cpp - one registration point for every tool -----------===//
#include "compiler/registration/Registration.h"
#include "compiler/passes/Passes.h"

#include "dialects/Dist/DistDialect.h"
#include "dialects/Exec/ExecDialect.h"
#include "dialects/Loom/LoomDialect.h"
#include "dialects/Train/TrainDialect.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

void loom::registerLoomDialects(mlir::DialectRegistry &registry) {
  registry.insert<loom::LoomDialect, loom::train::TrainDialect,
                  loom::dist::DistDialect, loom::exec::ExecDialect>();
  registry.insert<mlir::arith::ArithDialect, mlir::func::FuncDialect,
                  mlir::linalg::LinalgDialect, mlir::math::MathDialect,
                  mlir::memref::MemRefDialect, mlir::scf::SCFDialect,
                  mlir::tensor::TensorDialect, mlir::LLVM::LLVMDialect>();
  loom::registerShardingRules(registry);
}

void loom::registerLoomPasses() {
  // Upstream cleanups that Loom pipelines and tests use.
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  loom::registerLoomCompilerPasses();
  // The stages of loomc as named pipelines, for loom-opt.
  mlir::PassPipelineRegistration<>("loom-to-train",
                                   "loomc's loom → train stage",
                                   loom::buildLoomToTrainPipeline);
  mlir::PassPipelineRegistration<>("loom-train-to-dist",
                                   "loomc's train → dist stage",
                                   loom::buildTrainToDistPipeline);
  mlir::PassPipelineRegistration<>("loom-dist-to-exec",
                                   "loomc's dist → exec stage",
                                   loom::buildDistToExecPipeline);
  mlir::PassPipelineRegistration<>("loom-exec-to-llvm",
                                   "loomc's exec → LLVM dialect stage",
                                   loom::buildExecToLLVMPipeline);
}
