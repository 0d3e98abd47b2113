//===- TrainDialect.h - the train dialect ------------------------*- C++ -*-===//
#ifndef LOOM_DIALECTS_TRAIN_TRAINDIALECT_H
#define LOOM_DIALECTS_TRAIN_TRAINDIALECT_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "dialects/Train/TrainDialect.h.inc"

#define GET_OP_CLASSES
#include "dialects/Train/TrainOps.h.inc"

#endif // LOOM_DIALECTS_TRAIN_TRAINDIALECT_H
