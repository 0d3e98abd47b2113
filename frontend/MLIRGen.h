//===- MLIRGen.h - the elaborated model as loom dialect IR ------*- C++ -*-===//
#ifndef LOOM_FRONTEND_MLIRGEN_H
#define LOOM_FRONTEND_MLIRGEN_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

namespace loom::frontend {

struct Graph;

/// Builds `module { loom.model @Name attributes {config = {...}} {...} }`
/// with a FileLineColLoc on every op pointing at its DSL source. Returns null
/// (after emitting diagnostics) if the result does not verify, which would be
/// a front-end bug: sema checks every rule the verifiers check.
mlir::OwningOpRef<mlir::ModuleOp> buildLoomModule(mlir::MLIRContext &context,
                                                  const Graph &graph);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_MLIRGEN_H
