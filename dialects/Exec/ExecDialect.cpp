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

/// Views are dense, inside the program's arena, and aligned to their
/// element size. (The memory plan places buffers at 64-byte multiples; the
/// regions of a gradient bucket, LowerToExec's placeInsideBuckets, are
/// where their elements fall inside it.)
LogicalResult ViewOp::verify() {
  auto type = cast<MemRefType>(getType());
  if (!type.getLayout().isIdentity())
    return emitOpError("views are dense row-major buffers");
  int64_t offset = getOffset();
  int64_t element = std::max<int64_t>(1, type.getElementTypeBitWidth() / 8);
  if (offset < 0 || offset % element != 0)
    return emitOpError("offset ")
           << offset << " is not aligned to its " << element << "-byte elements";
  int64_t bytes = type.getNumElements() * element;
  auto program = (*this)->getParentOfType<ProgramOp>();
  if (offset + bytes > program.getArenaBytes())
    return emitOpError("view [") << offset << ", " << offset + bytes
                                 << ") exceeds the arena of "
                                 << program.getArenaBytes() << " bytes";
  return success();
}

#define GET_OP_CLASSES
#include "dialects/Exec/ExecOps.cpp.inc"
