//===- LoomDialect.h - the loom dialect -------------------------*- C++ -*-===//
//
// Declares loom::LoomDialect, the model-level IR of the Loom compiler. Tools
// register it through loom::registerLoomDialects; the ops are in LoomOps.h.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_LOOM_LOOMDIALECT_H
#define LOOM_DIALECTS_LOOM_LOOMDIALECT_H

#include "mlir/IR/Dialect.h"

#include "dialects/Loom/LoomDialect.h.inc"

#endif // LOOM_DIALECTS_LOOM_LOOMDIALECT_H
