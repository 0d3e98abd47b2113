//===- TensorBuilder.h - building loom/train tensor ops ---------*- C++ -*-===//
//
// Passes that synthesise tensor code (autodiff, the optimizer step) build
// ops through this small layer: result types come from the shared shape
// rules, so a pass can never produce an op its verifier would reject.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_COMPILER_PASSES_TENSORBUILDER_H
#define LOOM_COMPILER_PASSES_TENSORBUILDER_H

#include "dialects/Loom/LoomOps.h"
#include "dialects/Loom/ShapeRules.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/Support/ErrorHandling.h"

namespace loom {

class TensorBuilder {
public:
  TensorBuilder(mlir::OpBuilder &b, mlir::Location loc) : b_(b), loc_(loc) {}

  mlir::OpBuilder &builder() { return b_; }
  mlir::Location loc() const { return loc_; }
  void setLoc(mlir::Location l) { loc_ = l; }

  static shape::TensorType st(mlir::Value v) {
    return *toShapeType(v.getType());
  }
  mlir::RankedTensorType type(const shape::TensorType &t) {
    return toMlirType(b_.getContext(), t);
  }

  /// Creates `name` with explicit result types.
  mlir::Operation *
  create(llvm::StringRef name, mlir::ValueRange operands,
         mlir::TypeRange results,
         llvm::ArrayRef<mlir::NamedAttribute> attrs = {}) {
    mlir::OperationState state(loc_, name);
    state.addOperands(operands);
    state.addTypes(results);
    state.addAttributes(attrs);
    mlir::Operation *op = b_.create(state);
    if (tag_)
      op->setAttr("loom.layer", tag_);
    return op;
  }
  mlir::Value create1(llvm::StringRef name, mlir::ValueRange operands,
                      mlir::Type result,
                      llvm::ArrayRef<mlir::NamedAttribute> attrs = {}) {
    return create(name, operands, result, attrs)->getResult(0);
  }
  mlir::NamedAttribute attr(llvm::StringRef name, mlir::Attribute a) {
    return b_.getNamedAttr(name, a);
  }

  /// The layer path stamped on every op created (nullptr: none).
  void setTag(mlir::StringAttr tag) { tag_ = tag; }

  // Elementwise (numpy broadcasting).
  mlir::Value binary(llvm::StringRef op, mlir::Value a, mlir::Value b) {
    std::string err;
    auto t = shape::broadcastBinary(st(a), st(b), err);
    if (!t) // A pass built mismatched operands: a compiler bug, not user error.
      llvm::report_fatal_error(llvm::Twine("loom: internal error building ") +
                               op + ": " + err);
    return create1(("loom." + op).str(), {a, b}, type(*t));
  }
  mlir::Value add(mlir::Value a, mlir::Value b) { return binary("add", a, b); }
  mlir::Value sub(mlir::Value a, mlir::Value b) { return binary("sub", a, b); }
  mlir::Value mul(mlir::Value a, mlir::Value b) { return binary("mul", a, b); }
  mlir::Value div(mlir::Value a, mlir::Value b) { return binary("div", a, b); }
  mlir::Value unary(llvm::StringRef op, mlir::Value a) {
    return create1(("loom." + op).str(), {a}, a.getType());
  }
  mlir::Value neg(mlir::Value a) { return unary("neg", a); }

  /// A rank-0 constant of `elementType`.
  mlir::Value scalar(double v, mlir::Type elementType) {
    auto t = mlir::RankedTensorType::get({}, elementType);
    mlir::Attribute value;
    if (auto ft = llvm::dyn_cast<mlir::FloatType>(elementType))
      value = mlir::DenseElementsAttr::get(t, mlir::FloatAttr::get(ft, v));
    else
      value = mlir::DenseElementsAttr::get(
          t, mlir::IntegerAttr::get(elementType, static_cast<int64_t>(v)));
    return create1("loom.constant", {}, t, {attr("value", value)});
  }
  mlir::Value scalarLike(double v, mlir::Value like) {
    return scalar(v, llvm::cast<mlir::ShapedType>(like.getType())
                         .getElementType());
  }
  /// A splat constant of `t`.
  mlir::Value splat(double v, mlir::RankedTensorType t) {
    mlir::Attribute value;
    if (auto ft = llvm::dyn_cast<mlir::FloatType>(t.getElementType()))
      value = mlir::DenseElementsAttr::get(t, mlir::FloatAttr::get(ft, v));
    else
      value = mlir::DenseElementsAttr::get(
          t, mlir::IntegerAttr::get(t.getElementType(), static_cast<int64_t>(v)));
    return create1("loom.constant", {}, t, {attr("value", value)});
  }

  // Shapes.
  mlir::Value reshape(mlir::Value x, mlir::Type t) {
    if (x.getType() == t)
      return x;
    return create1("loom.reshape", {x}, t);
  }
  mlir::Value reshapeDims(mlir::Value x, const shape::Dims &dims) {
    shape::TensorType t = st(x);
    t.dims = dims;
    return reshape(x, type(t));
  }
  mlir::Value broadcastTo(mlir::Value x, mlir::Type t) {
    if (x.getType() == t)
      return x;
    return create1("loom.broadcast_to", {x}, t);
  }
  mlir::Value transpose(mlir::Value x, llvm::ArrayRef<int64_t> perm) {
    std::string err;
    auto t = shape::transpose(st(x), perm, err);
    if (!t)
      llvm::report_fatal_error(llvm::Twine("loom: internal error: ") + err);
    return create1("loom.transpose", {x}, type(*t),
                   {attr("permutation", b_.getDenseI64ArrayAttr(perm))});
  }
  mlir::Value reduceSum(mlir::Value x, llvm::ArrayRef<int64_t> dims,
                        bool keepdim) {
    if (dims.empty())
      return x;
    std::string err;
    auto t = shape::reduce(st(x), dims, keepdim, err);
    if (!t)
      llvm::report_fatal_error(llvm::Twine("loom: internal error: ") + err);
    return create1("loom.reduce_sum", {x}, type(*t),
                   {attr("dims", b_.getDenseI64ArrayAttr(dims)),
                    attr("keepdim", b_.getBoolAttr(keepdim))});
  }

  /// Sums `grad` (the shape of a broadcast result) down to `target`'s shape:
  /// the adjoint of numpy broadcasting.
  mlir::Value unbroadcast(mlir::Value grad, mlir::Type target) {
    if (grad.getType() == target)
      return grad;
    shape::TensorType g = st(grad), t = *toShapeType(target);
    size_t lead = g.dims.size() - t.dims.size();
    llvm::SmallVector<int64_t> leading, ones;
    for (size_t i = 0; i < lead; ++i)
      leading.push_back(static_cast<int64_t>(i));
    mlir::Value r = reduceSum(grad, leading, /*keepdim=*/false);
    for (size_t i = 0; i < t.dims.size(); ++i)
      if (t.dims[i] == 1 && g.dims[i + lead] != 1)
        ones.push_back(static_cast<int64_t>(i));
    r = reduceSum(r, ones, /*keepdim=*/true);
    return reshape(r, target);
  }

  /// torch.matmul(op(a), op(b)) as train.gemm.
  mlir::Value gemm(mlir::Value a, mlir::Value b, bool ta, bool tb) {
    auto swap = [](shape::TensorType t, bool s) {
      if (s)
        std::swap(t.dims[t.dims.size() - 1], t.dims[t.dims.size() - 2]);
      return t;
    };
    std::string err;
    auto t = shape::matmul(swap(st(a), ta), swap(st(b), tb), err);
    if (!t)
      llvm::report_fatal_error(llvm::Twine("loom: internal error: ") + err);
    return create1("train.gemm", {a, b}, type(*t),
                   {attr("transpose_a", b_.getBoolAttr(ta)),
                    attr("transpose_b", b_.getBoolAttr(tb))});
  }

private:
  mlir::OpBuilder &b_;
  mlir::Location loc_;
  mlir::StringAttr tag_;
};

} // namespace loom

#endif // LOOM_COMPILER_PASSES_TENSORBUILDER_H
