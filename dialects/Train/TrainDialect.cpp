//===- TrainDialect.cpp - the train dialect -------------------------------===//

#include "dialects/Train/TrainDialect.h"
#include "dialects/Loom/ShapeRules.h"
#include "dialects/Loom/LoomOps.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringSet.h"

using namespace mlir;
using namespace loom::train;

#include "dialects/Train/TrainDialect.cpp.inc"

void TrainDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "dialects/Train/TrainOps.cpp.inc"
      >();
}

/// A step reads each name once, writes each name at most once, and
/// publishes each output at most once; a train step has a loss.
LogicalResult StepOp::verify() {
  if (getKind() != "train" && getKind() != "eval")
    return emitOpError("kind must be \"train\" or \"eval\", got \"")
           << getKind() << "\"";
  llvm::StringSet<> reads, writes, outputs;
  for (Operation &op : getBody().front()) {
    StringRef name;
    if (auto p = dyn_cast<ParamOp>(op))
      name = p.getName();
    else if (auto s = dyn_cast<StateOp>(op))
      name = s.getName();
    if (!name.empty() && !reads.insert(name).second)
      return op.emitOpError("reads '") << name << "' twice";
    if (auto u = dyn_cast<UpdateOp>(op)) {
      if (!reads.contains(u.getName()))
        return op.emitOpError("updates '")
               << u.getName() << "', which the step never reads";
      if (!writes.insert(u.getName()).second)
        return op.emitOpError("updates '") << u.getName() << "' twice";
    }
    if (auto o = dyn_cast<OutputOp>(op))
      if (!outputs.insert(o.getName()).second)
        return op.emitOpError("publishes '") << o.getName() << "' twice";
  }
  const char *needed = getKind() == "train" ? "loss" : "eval_loss";
  // An evaluation-kind step that only writes state (post-training
  // quantization's prepare_step) publishes nothing.
  bool stateOnly = getKind() == "eval" && outputs.empty() && !writes.empty();
  if (!outputs.contains(needed) && !stateOnly)
    return emitOpError("a ") << getKind() << " step must output '" << needed
                             << "'";
  return success();
}

LogicalResult GemmOp::verify() {
  auto a = loom::toShapeType(getLhs().getType());
  auto b = loom::toShapeType(getRhs().getType());
  auto r = loom::toShapeType(getResult().getType());
  if (!a || !b || !r)
    return emitOpError("operands must be loom tensors");
  auto swap = [](loom::shape::TensorType t) {
    if (t.dims.size() >= 2)
      std::swap(t.dims[t.dims.size() - 1], t.dims[t.dims.size() - 2]);
    return t;
  };
  std::string err;
  auto want = loom::shape::matmul(getTransposeA() ? swap(*a) : *a,
                                  getTransposeB() ? swap(*b) : *b, err);
  if (!want)
    return emitOpError(err);
  if (*want != *r)
    return emitOpError("result must be ") << loom::shape::str(*want)
                                          << ", got " << loom::shape::str(*r);
  return success();
}

namespace {
/// The shared checks of the fused bf16 GEMMs: `w` 2-D, every tensor bf16,
/// `result` the product's shape; `vec` (the bias) [N] or (the saved input)
/// the product's shape.
LogicalResult verifyFusedGemm(Operation *op, Value lhs, Value rhs, Value vec,
                              bool vecIsBias, bool ta, bool tb,
                              ValueRange results) {
  auto a = loom::toShapeType(lhs.getType());
  auto b = loom::toShapeType(rhs.getType());
  auto v = loom::toShapeType(vec.getType());
  if (!a || !b || !v)
    return op->emitOpError("operands must be loom tensors");
  SmallVector<Value> all = {lhs, rhs, vec};
  llvm::append_range(all, results);
  for (Value x : all) {
    auto t = dyn_cast<RankedTensorType>(x.getType());
    if (!t || !t.getElementType().isBF16())
      return op->emitOpError("operands and results must be bf16 tensors");
  }
  if (b->dims.size() != 2)
    return op->emitOpError("the right operand must be 2-D");
  auto swap = [](loom::shape::TensorType t) {
    if (t.dims.size() >= 2)
      std::swap(t.dims[t.dims.size() - 1], t.dims[t.dims.size() - 2]);
    return t;
  };
  std::string err;
  auto want = loom::shape::matmul(ta ? swap(*a) : *a, tb ? swap(*b) : *b, err);
  if (!want)
    return op->emitOpError(err);
  for (Value r : results) {
    auto rt = loom::toShapeType(r.getType());
    if (!rt || *rt != *want)
      return op->emitOpError("results must be ") << loom::shape::str(*want);
  }
  if (vecIsBias ? v->dims != decltype(v->dims){want->dims.back()}
                : *v != *want)
    return op->emitOpError(vecIsBias ? "the bias must be [N] of the product"
                                     : "the saved input must have the "
                                       "product's shape");
  return success();
}
} // namespace

LogicalResult GemmBiasGeluOp::verify() {
  return verifyFusedGemm(*this, getLhs(), getRhs(), getBias(), true,
                         getTransposeA(), getTransposeB(), getResults());
}

LogicalResult GemmGeluGradOp::verify() {
  return verifyFusedGemm(*this, getLhs(), getRhs(), getPre(), false,
                         getTransposeA(), getTransposeB(),
                         ValueRange{getResult()});
}

#define GET_OP_CLASSES
#include "dialects/Train/TrainOps.cpp.inc"
