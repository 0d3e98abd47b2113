//===- ExecDialect.cpp - the exec dialect ---------------------------------===//

#include "dialects/Exec/ExecDialect.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace loom::exec;

#include "dialects/Exec/ExecDialect.cpp.inc"

void ExecDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/Exec/ExecOps.cpp.inc"
      >();
}

/// Views are 64-byte aligned, dense, and inside the program's arena.
LogicalResult ViewOp::verify() {
  auto type = cast<MemRefType>(getType());
  if (!type.getLayout().isIdentity())
    return emitOpError("views are dense row-major buffers");
  int64_t offset = getOffset();
  if (offset < 0 || offset % 64 != 0)
    return emitOpError("offset ") << offset << " is not 64-byte aligned";
  int64_t bytes = type.getNumElements() *
                  std::max<int64_t>(1, type.getElementTypeBitWidth() / 8);
  auto program = (*this)->getParentOfType<ProgramOp>();
  if (offset + bytes > program.getArenaBytes())
    return emitOpError("view [") << offset << ", " << offset + bytes
                                 << ") exceeds the arena of "
                                 << program.getArenaBytes() << " bytes";
  return success();
}

#define GET_OP_CLASSES
#include "dialects/Exec/ExecOps.cpp.inc"
