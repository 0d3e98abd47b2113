//===- LoomOps.h - ops of the loom dialect ----------------------*- C++ -*-===//
//
// Declares the loom ops (loom::ModelOp, loom::MatmulOp, ...) generated from
// LoomOps.td.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_LOOM_LOOMOPS_H
#define LOOM_DIALECTS_LOOM_LOOMOPS_H

#include "dialects/Loom/LoomDialect.h"
#include "dialects/Loom/ShapeRules.h"

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/ControlFlowInterfaces.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include <optional>

namespace loom {

/// The shape rules' view of a loom tensor type (ranked, static shape, one of
/// the DType element types); std::nullopt for any other type.
std::optional<shape::TensorType> toShapeType(mlir::Type type);
/// The MLIR tensor type of a shape-rule tensor type.
mlir::RankedTensorType toMlirType(mlir::MLIRContext *context,
                                 const shape::TensorType &type);

} // namespace loom

#define GET_OP_CLASSES
#include "dialects/Loom/LoomOps.h.inc"

#endif // LOOM_DIALECTS_LOOM_LOOMOPS_H
