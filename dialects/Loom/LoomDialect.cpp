//===- LoomDialect.cpp - the loom dialect ---------------------------------===//

#include "dialects/Loom/LoomDialect.h"
#include "dialects/Loom/LoomOps.h"

#include "mlir/IR/Builders.h"

using namespace mlir;

#include "dialects/Loom/LoomDialect.cpp.inc"

void loom::LoomDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/Loom/LoomOps.cpp.inc"
      >();
}

/// Folding and CSE hand back constants as attributes; only dense elements
/// of a loom tensor type become a loom.constant again.
Operation *loom::LoomDialect::materializeConstant(OpBuilder &builder,
                                                  Attribute value, Type type,
                                                  Location loc) {
  auto elements = dyn_cast<ElementsAttr>(value);
  if (!elements || elements.getType() != type)
    return nullptr;
  return builder.create<ConstantOp>(loc, type, elements);
}
