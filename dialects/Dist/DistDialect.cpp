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

/// The size of `axis` in the mesh of the program around `op`, or failure
/// (with an error on `op`).
static FailureOr<int64_t> axisSize(Operation *op, StringRef axis) {
  auto program = op->getParentOfType<ProgramOp>();
  auto mesh = program ? SymbolTable::lookupNearestSymbolFrom<MeshOp>(
                            program, program.getMeshAttr())
                      : MeshOp();
  if (!mesh)
    return op->emitOpError("needs a dist.program on a known mesh");
  for (auto [name, size] : llvm::zip(mesh.getAxes(), mesh.getShape()))
    if (cast<StringAttr>(name).getValue() == axis)
      return size;
  return op->emitOpError("axis '") << axis << "' is not an axis of mesh @"
                                   << mesh.getSymName();
}

static LogicalResult checkDim(Operation *op, int64_t dim, ShapedType t,
                              StringRef what) {
  if (dim < 0 || dim >= t.getRank())
    return op->emitOpError(what) << " " << dim << " is out of range for rank "
                                 << t.getRank();
  return success();
}

LogicalResult AllReduceOp::verify() {
  if (failed(axisSize(*this, getAxis())))
    return failure();
  StringRef r = getReduction();
  if (r != "sum" && r != "mean" && r != "max")
    return emitOpError("reduction must be sum, mean or max, got '") << r << "'";
  return success();
}

/// all_gather multiplies `dim` by the group size, reduce_scatter divides it.
static LogicalResult checkResized(Operation *op, StringRef axis, int64_t dim,
                                  bool gather) {
  auto size = axisSize(op, axis);
  if (failed(size))
    return failure();
  auto in = cast<ShapedType>(op->getOperand(0).getType());
  auto out = cast<ShapedType>(op->getResult(0).getType());
  if (failed(checkDim(op, dim, in, "dim")))
    return failure();
  if (!gather && in.getDimSize(dim) % *size != 0)
    return op->emitOpError("dimension ")
           << dim << " (size " << in.getDimSize(dim)
           << ") is not divisible by " << axis << " = " << *size;
  SmallVector<int64_t> want(in.getShape());
  want[dim] = gather ? want[dim] * *size : want[dim] / *size;
  if (out.getShape() != ArrayRef<int64_t>(want) ||
      out.getElementType() != in.getElementType())
    return op->emitOpError("result must be ")
           << RankedTensorType::get(want, in.getElementType()) << ", got "
           << out;
  return success();
}

LogicalResult AllGatherOp::verify() {
  return checkResized(*this, getAxis(), getDim(), /*gather=*/true);
}

LogicalResult ReduceScatterOp::verify() {
  return checkResized(*this, getAxis(), getDim(), /*gather=*/false);
}

LogicalResult ShardOp::verify() {
  return checkResized(*this, getAxis(), getDim(), /*gather=*/false);
}

LogicalResult AllToAllOp::verify() {
  auto size = axisSize(*this, getAxis());
  if (failed(size))
    return failure();
  auto in = cast<ShapedType>(getInput().getType());
  auto out = cast<ShapedType>(getResult().getType());
  if (failed(checkDim(*this, getSplitDim(), in, "split_dim")) ||
      failed(checkDim(*this, getConcatDim(), in, "concat_dim")))
    return failure();
  if (in.getDimSize(getSplitDim()) % *size != 0)
    return emitOpError("split dimension ")
           << getSplitDim() << " (size " << in.getDimSize(getSplitDim())
           << ") is not divisible by " << getAxis() << " = " << *size;
  SmallVector<int64_t> want(in.getShape());
  want[getSplitDim()] /= *size;
  want[getConcatDim()] *= *size;
  if (out.getShape() != ArrayRef<int64_t>(want))
    return emitOpError("result must be ")
           << RankedTensorType::get(want, in.getElementType()) << ", got "
           << out;
  return success();
}

LogicalResult BroadcastOp::verify() {
  auto size = axisSize(*this, getAxis());
  if (failed(size))
    return failure();
  if (getRoot() < 0 || getRoot() >= *size)
    return emitOpError("root ") << getRoot() << " is outside the group of "
                                << *size << " ranks";
  return success();
}

static LogicalResult checkPeer(Operation *op, StringRef axis, int64_t peer) {
  auto size = axisSize(op, axis);
  if (failed(size))
    return failure();
  if (peer == 0 || peer <= -*size || peer >= *size)
    return op->emitOpError("peer ")
           << peer << " must be a non-zero offset within the " << *size
           << " ranks of " << axis;
  return success();
}

LogicalResult SendOp::verify() { return checkPeer(*this, getAxis(), getPeer()); }
LogicalResult RecvOp::verify() { return checkPeer(*this, getAxis(), getPeer()); }

#define GET_OP_CLASSES
#include "dialects/Dist/DistOps.cpp.inc"
