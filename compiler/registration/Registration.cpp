//===- Registration.cpp - one registration point for every tool -----------===//
#include "compiler/registration/Registration.h"

#include "dialects/Loom/LoomDialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Transforms/Passes.h"

void loom::registerLoomDialects(mlir::DialectRegistry &registry) {
  registry.insert<loom::LoomDialect, mlir::func::FuncDialect>();
}

void loom::registerLoomPasses() {
  // Upstream cleanups that Loom pipelines and tests use.
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
}
