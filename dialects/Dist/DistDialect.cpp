//===- DistDialect.cpp - the dist dialect ---------------------------------===//

#include "dialects/Dist/DistDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

using namespace mlir;
using namespace loom::dist;

#include "dialects/Dist/DistDialect.cpp.inc"

void DistDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/Dist/DistOps.cpp.inc"
      >();
}

LogicalResult MeshOp::verify() {
  if (getAxes().size() != getShape().size())
    return emitOpError("has ") << getAxes().size() << " axes but "
                               << getShape().size() << " sizes";
  for (int64_t s : getShape())
    if (s < 1)
      return emitOpError("mesh sizes must be positive, got ") << s;
  return success();
}

LogicalResult ProgramOp::verify() {
  if (getKind() != "train" && getKind() != "eval")
    return emitOpError("kind must be \"train\" or \"eval\"");
  auto mesh = SymbolTable::lookupNearestSymbolFrom<MeshOp>(*this, getMeshAttr());
  if (!mesh)
    return emitOpError("refers to an unknown mesh ") << getMeshAttr();
  return success();
}

#define GET_OP_CLASSES
#include "dialects/Dist/DistOps.cpp.inc"
