//===- FuseElementwise.cpp - loom elementwise ops to fused linalg ---------===//
//
// Elementwise math, broadcasts, layout changes and reductions become
// linalg.generic ops on tensors (numpy broadcasting as indexing maps, scalar
// constants folded into the loop body), and then upstream elementwise fusion
// merges producer/consumer chains, so `gelu(x @ w + b)`'s bias add and GELU
// run as one loop nest over the GEMM's output.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"

#include "compiler/passes/TensorBuilder.h"
#include "dialects/Loom/LoomOps.h"

#include "mlir/Dialect/Linalg/Transforms/Transforms.h"
#include "llvm/ADT/SetVector.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

#include <cmath>

namespace loom {
#define GEN_PASS_DEF_FUSEELEMENTWISE
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

using BodyFn =
    std::function<Value(OpBuilder &, Location, ArrayRef<Value> /*scalars*/)>;

/// A scalar constant an elementwise op can fold into its loop body.
std::optional<Attribute> scalarConstant(Value v) {
  auto c = v.getDefiningOp<ConstantOp>();
  if (!c)
    return std::nullopt;
  auto dense = dyn_cast<DenseElementsAttr>(c.getValue());
  if (!dense || !dense.isSplat() ||
      cast<RankedTensorType>(v.getType()).getRank() != 0)
    return std::nullopt;
  return dense.getSplatValue<Attribute>();
}

/// The indexing map of an operand broadcast (numpy rules) to `rank` loops.
AffineMap broadcastMap(MLIRContext *ctx, ArrayRef<int64_t> shape,
                       ArrayRef<int64_t> result) {
  SmallVector<AffineExpr> exprs;
  size_t lead = result.size() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i)
    exprs.push_back(shape[i] == 1 && result[i + lead] != 1
                        ? getAffineConstantExpr(0, ctx)
                        : getAffineDimExpr(static_cast<unsigned>(i + lead), ctx));
  return AffineMap::get(static_cast<unsigned>(result.size()), 0, exprs, ctx);
}

/// Builds a parallel linalg.generic producing `resultType` from `inputs`
/// broadcast to it; rank-0 constants become arith.constants in the body.
Value elementwise(OpBuilder &b, Location loc, RankedTensorType resultType,
                  ArrayRef<Value> inputs, const BodyFn &body) {
  MLIRContext *ctx = b.getContext();
  SmallVector<Value> ins;
  SmallVector<AffineMap> maps;
  SmallVector<int> slot; // -1: constant, else index into block args
  SmallVector<Attribute> constants;
  for (Value in : inputs) {
    if (auto c = scalarConstant(in)) {
      slot.push_back(-1 - static_cast<int>(constants.size()));
      constants.push_back(*c);
      continue;
    }
    slot.push_back(static_cast<int>(ins.size()));
    ins.push_back(in);
    maps.push_back(broadcastMap(ctx, cast<RankedTensorType>(in.getType()).getShape(),
                                resultType.getShape()));
  }
  maps.push_back(b.getMultiDimIdentityMap(resultType.getRank()));
  Value init = b.create<tensor::EmptyOp>(loc, resultType.getShape(),
                                         resultType.getElementType());
  SmallVector<utils::IteratorType> iters(resultType.getRank(),
                                         utils::IteratorType::parallel);
  auto generic = b.create<linalg::GenericOp>(
      loc, TypeRange{resultType}, ins, ValueRange{init}, maps, iters,
      [&](OpBuilder &nb, Location nl, ValueRange args) {
        SmallVector<Value> scalars;
        for (int s : slot) {
          if (s >= 0) {
            scalars.push_back(args[s]);
          } else {
            auto typed = cast<TypedAttr>(constants[-1 - s]);
            scalars.push_back(nb.create<arith::ConstantOp>(nl, typed));
          }
        }
        nb.create<linalg::YieldOp>(nl, body(nb, nl, scalars));
      });
  return generic.getResult(0);
}

/// Builds a linalg.generic with explicit maps (layout changes: transpose,
/// heads, slices) copying its input.
Value relayout(OpBuilder &b, Location loc, RankedTensorType resultType,
               Value input, AffineMap inputMap) {
  Value init = b.create<tensor::EmptyOp>(loc, resultType.getShape(),
                                         resultType.getElementType());
  SmallVector<utils::IteratorType> iters(resultType.getRank(),
                                         utils::IteratorType::parallel);
  return b
      .create<linalg::GenericOp>(
          loc, TypeRange{resultType}, ValueRange{input}, ValueRange{init},
          ArrayRef<AffineMap>{inputMap,
                              b.getMultiDimIdentityMap(resultType.getRank())},
          iters,
          [&](OpBuilder &nb, Location nl, ValueRange args) {
            nb.create<linalg::YieldOp>(nl, args[0]);
          })
      .getResult(0);
}

Value floatConst(OpBuilder &b, Location loc, Type t, double v) {
  return b.create<arith::ConstantOp>(loc, b.getFloatAttr(t, v));
}

/// tanh-approximated GELU and its derivative (SEMANTICS.md).
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluCoef = 0.044715;

Value gelu(OpBuilder &b, Location l, Value x) {
  Type t = x.getType();
  Value x3 = b.create<arith::MulFOp>(l, x, b.create<arith::MulFOp>(l, x, x));
  Value inner = b.create<arith::MulFOp>(
      l, floatConst(b, l, t, kSqrt2OverPi),
      b.create<arith::AddFOp>(
          l, x, b.create<arith::MulFOp>(l, floatConst(b, l, t, kGeluCoef), x3)));
  Value th = b.create<math::TanhOp>(l, inner);
  Value half = b.create<arith::MulFOp>(l, floatConst(b, l, t, 0.5), x);
  return b.create<arith::MulFOp>(
      l, half, b.create<arith::AddFOp>(l, floatConst(b, l, t, 1.0), th));
}

Value geluGrad(OpBuilder &b, Location l, Value x, Value dy) {
  Type t = x.getType();
  auto c = [&](double v) { return floatConst(b, l, t, v); };
  Value x2 = b.create<arith::MulFOp>(l, x, x);
  Value x3 = b.create<arith::MulFOp>(l, x2, x);
  Value u = b.create<arith::MulFOp>(
      l, c(kSqrt2OverPi),
      b.create<arith::AddFOp>(l, x, b.create<arith::MulFOp>(l, c(kGeluCoef), x3)));
  Value th = b.create<math::TanhOp>(l, u);
  // d/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 c x^2)
  Value left = b.create<arith::MulFOp>(l, c(0.5),
                                       b.create<arith::AddFOp>(l, c(1.0), th));
  Value sech2 = b.create<arith::SubFOp>(l, c(1.0),
                                        b.create<arith::MulFOp>(l, th, th));
  Value du = b.create<arith::MulFOp>(
      l, c(kSqrt2OverPi),
      b.create<arith::AddFOp>(
          l, c(1.0), b.create<arith::MulFOp>(l, c(3.0 * kGeluCoef), x2)));
  Value right = b.create<arith::MulFOp>(
      l, b.create<arith::MulFOp>(l, c(0.5), x),
      b.create<arith::MulFOp>(l, sech2, du));
  return b.create<arith::MulFOp>(l, dy,
                                 b.create<arith::AddFOp>(l, left, right));
}

/// Casts a scalar between element types.
Value castScalar(OpBuilder &b, Location l, Value v, Type to) {
  Type from = v.getType();
  if (from == to)
    return v;
  auto ff = dyn_cast<FloatType>(from), ft = dyn_cast<FloatType>(to);
  if (ff && ft)
    return ff.getWidth() < ft.getWidth()
               ? b.create<arith::ExtFOp>(l, to, v).getResult()
               : b.create<arith::TruncFOp>(l, to, v).getResult();
  if (ff)
    return b.create<arith::FPToSIOp>(l, to, v);
  if (ft)
    return b.create<arith::SIToFPOp>(l, to, v);
  unsigned wf = from.getIntOrFloatBitWidth(), wt = to.getIntOrFloatBitWidth();
  return wf < wt ? b.create<arith::ExtSIOp>(l, to, v).getResult()
                 : b.create<arith::TruncIOp>(l, to, v).getResult();
}

/// loom.fake_quant and its gradient as one loop: scale and zero point
/// indexed by the channel (`axis`) or broadcast (per tensor).
/// SEMANTICS.md: s = max(scale, fp32 epsilon), q = round_half_even(x * (1 /
/// s)) + zp, out = (clamp(q, qmin, qmax) - zp) * s; the gradient passes
/// where qmin <= q <= qmax.
Value fakeQuant(OpBuilder &b, Location loc, Operation *op,
                RankedTensorType resultType) {
  MLIRContext *ctx = b.getContext();
  bool grad = op->getName().getStringRef() == "train.fake_quant_grad";
  unsigned rank = static_cast<unsigned>(resultType.getRank());
  auto scaleType = cast<RankedTensorType>(op->getOperand(1).getType());
  int64_t axis = cast<IntegerAttr>(op->getAttr("axis")).getInt();
  AffineMap identity = b.getMultiDimIdentityMap(rank);
  AffineMap channel =
      scaleType.getRank() == 0
          ? AffineMap::get(rank, 0, {}, ctx)
          : AffineMap::get(rank, 0, {getAffineDimExpr(unsigned(axis), ctx)}, ctx);
  SmallVector<Value> ins = {op->getOperand(0), op->getOperand(1),
                            op->getOperand(2)};
  SmallVector<AffineMap> maps = {identity, channel, channel};
  if (grad) {
    ins.push_back(op->getOperand(3));
    maps.push_back(identity);
  }
  maps.push_back(identity);
  double qmin = double(cast<IntegerAttr>(op->getAttr("qmin")).getInt());
  double qmax = double(cast<IntegerAttr>(op->getAttr("qmax")).getInt());
  Type et = resultType.getElementType();
  Value init = b.create<tensor::EmptyOp>(loc, resultType.getShape(), et);
  SmallVector<utils::IteratorType> iters(rank, utils::IteratorType::parallel);
  auto generic = b.create<linalg::GenericOp>(
      loc, TypeRange{resultType}, ins, ValueRange{init}, maps, iters,
      [&](OpBuilder &nb, Location nl, ValueRange args) {
        Type f32 = nb.getF32Type();
        auto c = [&](double v) { return floatConst(nb, nl, f32, v); };
        Value x = castScalar(nb, nl, args[0], f32);
        Value scale = castScalar(nb, nl, args[1], f32);
        Value zp = castScalar(nb, nl, args[2], f32);
        Value s = nb.create<arith::MaximumFOp>(nl, scale, c(1.1920929e-7));
        Value inv = nb.create<arith::DivFOp>(nl, c(1.0), s);
        Value q = nb.create<arith::AddFOp>(
            nl, nb.create<math::RoundEvenOp>(nl, nb.create<arith::MulFOp>(nl, x, inv)),
            zp);
        Value result;
        if (grad) {
          Value above = nb.create<arith::CmpFOp>(nl, arith::CmpFPredicate::OGE,
                                                 q, c(qmin));
          Value below = nb.create<arith::CmpFOp>(nl, arith::CmpFPredicate::OLE,
                                                 q, c(qmax));
          Value inside = nb.create<arith::AndIOp>(nl, above, below);
          Value dy = castScalar(nb, nl, args[3], f32);
          result = nb.create<arith::SelectOp>(nl, inside, dy, c(0.0));
        } else {
          Value clamped = nb.create<arith::MinimumFOp>(
              nl, nb.create<arith::MaximumFOp>(nl, q, c(qmin)), c(qmax));
          result = nb.create<arith::MulFOp>(
              nl, nb.create<arith::SubFOp>(nl, clamped, zp), s);
        }
        nb.create<linalg::YieldOp>(nl, castScalar(nb, nl, result, et));
      });
  return generic.getResult(0);
}

/// Rewrites one op; returns null if it stays as it is.
Value convert(OpBuilder &b, Operation *op) {
  StringRef k = op->getName().getStringRef();
  Location l = op->getLoc();
  if (op->getNumResults() != 1)
    return nullptr;
  auto rt = dyn_cast<RankedTensorType>(op->getResult(0).getType());
  if (!rt)
    return nullptr;
  Type et = rt.getElementType();
  bool isFloat = isa<FloatType>(et);
  SmallVector<Value> in(op->getOperands());
  MLIRContext *ctx = b.getContext();

  auto ew = [&](BodyFn fn) { return elementwise(b, l, rt, in, fn); };
  if (k == "loom.add")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return isFloat ? nb.create<arith::AddFOp>(nl, s[0], s[1]).getResult()
                     : nb.create<arith::AddIOp>(nl, s[0], s[1]).getResult();
    });
  if (k == "loom.sub")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return isFloat ? nb.create<arith::SubFOp>(nl, s[0], s[1]).getResult()
                     : nb.create<arith::SubIOp>(nl, s[0], s[1]).getResult();
    });
  if (k == "loom.mul")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return isFloat ? nb.create<arith::MulFOp>(nl, s[0], s[1]).getResult()
                     : nb.create<arith::MulIOp>(nl, s[0], s[1]).getResult();
    });
  if (k == "loom.div")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return isFloat ? nb.create<arith::DivFOp>(nl, s[0], s[1]).getResult()
                     : nb.create<arith::DivSIOp>(nl, s[0], s[1]).getResult();
    });
  if (k == "loom.neg")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      if (isFloat)
        return nb.create<arith::NegFOp>(nl, s[0]);
      Value zero = nb.create<arith::ConstantOp>(nl, nb.getIntegerAttr(et, 0));
      return nb.create<arith::SubIOp>(nl, zero, s[0]);
    });
  if (!isFloat && k != "loom.cast" && k != "loom.broadcast_to" &&
      k != "loom.transpose" && k != "loom.split_heads" &&
      k != "loom.merge_heads")
    return nullptr;
  if (k == "loom.exp")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return nb.create<math::ExpOp>(nl, s[0]);
    });
  if (k == "loom.log")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return nb.create<math::LogOp>(nl, s[0]);
    });
  if (k == "loom.sqrt")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return nb.create<math::SqrtOp>(nl, s[0]);
    });
  if (k == "loom.rsqrt")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return nb.create<math::RsqrtOp>(nl, s[0]);
    });
  if (k == "loom.tanh")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return nb.create<math::TanhOp>(nl, s[0]);
    });
  if (k == "loom.relu")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return nb.create<arith::MaximumFOp>(nl, s[0], floatConst(nb, nl, et, 0));
    });
  if (k == "loom.gelu")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return gelu(nb, nl, s[0]);
    });
  if (k == "loom.sigmoid")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      Value e = nb.create<math::ExpOp>(nl, nb.create<arith::NegFOp>(nl, s[0]));
      Value one = floatConst(nb, nl, et, 1.0);
      return nb.create<arith::DivFOp>(nl, one,
                                      nb.create<arith::AddFOp>(nl, one, e));
    });
  if (k == "train.relu_grad")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      Value zero = floatConst(nb, nl, et, 0);
      Value pos = nb.create<arith::CmpFOp>(nl, arith::CmpFPredicate::OGT, s[0],
                                           zero);
      return nb.create<arith::SelectOp>(nl, pos, s[1], zero);
    });
  if (k == "train.gelu_grad")
    return ew([](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return geluGrad(nb, nl, s[0], s[1]);
    });
  if (k == "loom.cast")
    return ew([&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
      return castScalar(nb, nl, s[0], et);
    });
  if (k == "loom.fake_quant" || k == "train.fake_quant_grad")
    return fakeQuant(b, l, op, rt);
  if (k == "loom.broadcast_to")
    return ew([](OpBuilder &, Location, ArrayRef<Value> s) -> Value {
      return s[0];
    });

  // Layout changes: one input, an explicit map from output to input index.
  unsigned r = static_cast<unsigned>(rt.getRank());
  auto d = [&](unsigned i) { return getAffineDimExpr(i, ctx); };
  if (k == "loom.transpose") {
    auto perm = cast<DenseI64ArrayAttr>(op->getAttr("permutation")).asArrayRef();
    SmallVector<AffineExpr> exprs(r);
    for (unsigned i = 0; i < r; ++i)
      exprs[perm[i]] = d(i);
    return relayout(b, l, rt, in[0], AffineMap::get(r, 0, exprs, ctx));
  }
  if (k == "loom.split_heads") {
    // out[b, h, t, j] = in[b, t, h * dk + j]
    int64_t dk = rt.getDimSize(3);
    return relayout(b, l, rt, in[0],
                    AffineMap::get(4, 0, {d(0), d(2), d(1) * dk + d(3)}, ctx));
  }
  if (k == "loom.merge_heads") {
    // out[b, t, c] = in[b, c / dk, t, c % dk]
    int64_t dk = cast<RankedTensorType>(in[0].getType()).getDimSize(3);
    return relayout(
        b, l, rt, in[0],
        AffineMap::get(3, 0, {d(0), d(2).floorDiv(dk), d(1), d(2) % dk}, ctx));
  }
  // Reductions: loops over the input; reduced dimensions are reduction
  // iterators; keepdim is a reshape of the reduced result.
  if (k == "loom.reduce_sum" || k == "loom.reduce_mean" ||
      k == "loom.reduce_max") {
    auto inType = cast<RankedTensorType>(in[0].getType());
    auto dims = cast<DenseI64ArrayAttr>(op->getAttr("dims")).asArrayRef();
    unsigned ir = static_cast<unsigned>(inType.getRank());
    SmallVector<bool> reduced(ir, false);
    int64_t n = 1;
    for (int64_t dim : dims) {
      reduced[dim] = true;
      n *= inType.getDimSize(dim);
    }
    SmallVector<int64_t> outShape;
    SmallVector<AffineExpr> outExprs;
    SmallVector<utils::IteratorType> iters;
    for (unsigned i = 0; i < ir; ++i) {
      iters.push_back(reduced[i] ? utils::IteratorType::reduction
                                 : utils::IteratorType::parallel);
      if (!reduced[i]) {
        outShape.push_back(inType.getDimSize(i));
        outExprs.push_back(d(i));
      }
    }
    auto outType = RankedTensorType::get(outShape, et);
    bool isMax = k == "loom.reduce_max";
    Value init = b.create<tensor::EmptyOp>(l, outShape, et);
    Value identity = floatConst(b, l, et, isMax ? -INFINITY : 0.0);
    Value filled =
        b.create<linalg::FillOp>(l, identity, init).getResult(0);
    Value red =
        b.create<linalg::GenericOp>(
             l, TypeRange{outType}, ValueRange{in[0]}, ValueRange{filled},
             ArrayRef<AffineMap>{b.getMultiDimIdentityMap(ir),
                                 AffineMap::get(ir, 0, outExprs, ctx)},
             iters,
             [&](OpBuilder &nb, Location nl, ValueRange args) {
               Value v = isMax ? nb.create<arith::MaximumFOp>(nl, args[0],
                                                              args[1])
                                     .getResult()
                               : nb.create<arith::AddFOp>(nl, args[0], args[1])
                                     .getResult();
               nb.create<linalg::YieldOp>(nl, v);
             })
            .getResult(0);
    if (k == "loom.reduce_mean") {
      double inv = 1.0 / static_cast<double>(n);
      red = elementwise(b, l, outType, {red},
                        [&](OpBuilder &nb, Location nl, ArrayRef<Value> s) -> Value {
                          return nb.create<arith::MulFOp>(
                              nl, s[0], floatConst(nb, nl, et, inv));
                        });
    }
    if (outType != rt) {
      OperationState state(l, "loom.reshape");
      state.addOperands(red);
      state.addTypes(rt);
      red = b.create(state)->getResult(0);
    }
    return red;
  }
  return nullptr;
}

/// A bf16 program widens the logits to fp32 for its loss and rounds the
/// logits' gradient back to bf16 for the head's backward GEMMs: two passes
/// over a language model's largest tensors. When every user of the widened
/// logits is a (not vocabulary-parallel) cross-entropy or its gradient, and
/// every gradient's only users are roundings to bf16, the kernels read and
/// write bf16 themselves (loom_cross_entropy_{fwd,bwd}_bf16: the same values
/// bit for bit) and the casts go.
void foldCrossEntropyCasts(dist::ProgramOp program) {
  // Scalar casts (a loss, a gradient scale) are not tensors.
  auto elementType = [](Value v) -> Type {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t ? t.getElementType() : Type();
  };
  auto isCastTo = [&](Operation &op, auto pred) {
    if (op.getName().getStringRef() != "loom.cast")
      return false;
    Type to = elementType(op.getResult(0));
    return to && pred(to);
  };
  // Only the widenings are collected: the roundings this erases are casts
  // too, and must not be visited after they are gone.
  SmallVector<Operation *> widenings;
  for (Operation &op : program.getBody().front()) {
    Type from = op.getNumOperands() ? elementType(op.getOperand(0)) : Type();
    if (from && from.isBF16() &&
        isCastTo(op, [](Type t) { return t.isF32(); }))
      widenings.push_back(&op);
  }
  for (Operation *widen : widenings) {
    Value narrow = widen->getOperand(0), wide = widen->getResult(0);
    if (wide.use_empty())
      continue;
    SmallVector<Operation *> losses, grads, roundings;
    bool ok = true;
    for (OpOperand &use : wide.getUses()) {
      Operation *user = use.getOwner();
      StringRef n = user->getName().getStringRef();
      if ((n != "train.cross_entropy" && n != "train.cross_entropy_grad") ||
          use.getOperandNumber() != 0 || user->hasAttr("vocab_axis")) {
        ok = false;
        break;
      }
      (n == "train.cross_entropy" ? losses : grads).push_back(user);
    }
    for (Operation *grad : grads)
      for (Operation *user : grad->getResult(0).getUsers()) {
        ok &= isCastTo(*user, [](Type t) { return t.isBF16(); });
        roundings.push_back(user);
      }
    if (!ok)
      continue;
    for (Operation *loss : losses)
      loss->setOperand(0, narrow);
    for (Operation *grad : grads) {
      grad->setOperand(0, narrow);
      grad->getResult(0).setType(
          cast<RankedTensorType>(grad->getResult(0).getType())
              .clone(elementType(narrow)));
    }
    for (Operation *round : roundings) {
      round->getResult(0).replaceAllUsesWith(round->getOperand(0));
      round->erase();
    }
    widen->erase();
  }
}

/// On the GPU, the bf16 attention kernels read q, k, v and write out, attn
/// and the gradients as bf16. A bf16 program hands them q = split_heads(
/// widen(x @ wq)) and rounds merge_heads(out) back to bf16 for the next
/// GEMM: per layer, twenty-one passes over [B,T,d] tensors that only move
/// and widen bits. When all of a gated attention's q, k, v and its
/// gradients' dout are such splits of widened bf16 values, and its out and
/// its gradients' dq, dk, dv reach the rest of the program only through
/// merge_heads then a rounding to bf16, the op and its gradients take the
/// bf16 [B,T,H,D] tensors themselves (`layout = "bthd"`, reshapes of the
/// GEMMs' outputs: no copy) and the splits, merges and casts go. The
/// kernels compute exactly what they computed before (every rounding they
/// skip was exact), and the saved q, k, v and attn halve.
void foldAttentionLayouts(dist::ProgramOp program) {
  auto tensorType = [](Value v) { return dyn_cast<RankedTensorType>(v.getType()); };
  auto named = [](Operation *op, StringRef n) {
    return op && op->getName().getStringRef() == n;
  };
  // The bf16 [B,T,H*D] tensor a [B,H,T,D] operand was split from, if any.
  auto splitSource = [&](Value v) -> Value {
    Operation *split = v.getDefiningOp();
    if (!named(split, "loom.split_heads"))
      return {};
    Operation *widen = split->getOperand(0).getDefiningOp();
    if (!named(widen, "loom.cast"))
      return {};
    Value src = widen->getOperand(0);
    auto t = tensorType(src);
    return t && t.getRank() == 3 && t.getElementType().isBF16() ? src : Value();
  };
  // Whether every use of `v` is a merge_heads whose every use rounds to bf16.
  auto onlyRounded = [&](Value v) {
    for (Operation *merge : v.getUsers()) {
      if (!named(merge, "loom.merge_heads"))
        return false;
      for (Operation *cast : merge->getResult(0).getUsers()) {
        auto t = named(cast, "loom.cast") ? tensorType(cast->getResult(0))
                                          : RankedTensorType();
        if (!t || !t.getElementType().isBF16())
          return false;
      }
    }
    return true;
  };
  SmallVector<Operation *> forwards;
  for (Operation &op : program.getBody().front())
    if (named(&op, "train.gated_attention") && !op.hasAttr("layout"))
      forwards.push_back(&op);
  for (Operation *fwd : forwards) {
    auto q = tensorType(fwd->getOperand(0)), v = tensorType(fwd->getOperand(2));
    if (!q || !v || q.getRank() != 4 || v.getRank() != 4 ||
        !q.getElementType().isF32())
      continue;
    int64_t B = q.getDimSize(0), H = q.getDimSize(1), T = q.getDimSize(2),
            D = q.getDimSize(3);
    if (v.getDimSize(3) != D || (D != 32 && D != 64 && D != 128))
      continue;
    Value src[3];
    bool ok = true;
    for (int i = 0; i < 3; ++i)
      ok &= static_cast<bool>(src[i] = splitSource(fwd->getOperand(i)));
    ok = ok && onlyRounded(fwd->getResult(0));
    // The saved attn feeds gradients only; each must fold too.
    SmallVector<Operation *> grads;
    for (OpOperand &use : fwd->getResult(3).getUses()) {
      Operation *g = use.getOwner();
      if (!named(g, "train.gated_attention_grad") || use.getOperandNumber() != 7) {
        ok = false;
        break;
      }
      for (int i = 0; i < 3; ++i)
        ok &= g->getOperand(i) == fwd->getOperand(i) ||
              static_cast<bool>(splitSource(g->getOperand(i)));
      ok &= static_cast<bool>(splitSource(g->getOperand(8)));
      for (int i = 0; i < 3; ++i)
        ok &= onlyRounded(g->getResult(i));
      grads.push_back(g);
    }
    if (!ok)
      continue;
    MLIRContext *ctx = fwd->getContext();
    auto bthdType = RankedTensorType::get({B, T, H, D}, BFloat16Type::get(ctx));
    auto reshape = [&](OpBuilder &b, Value x, Type to) {
      OperationState state(x.getLoc(), "loom.reshape");
      state.addOperands(x);
      state.addTypes(to);
      return b.create(state)->getResult(0);
    };
    llvm::SetVector<Operation *> dead;
    // Replaces merge_heads(x) -> round with a reshape of the bf16 result.
    auto replaceRoundings = [&](OpBuilder &b, Value old, Value bf) {
      for (Operation *merge : llvm::make_early_inc_range(old.getUsers())) {
        for (Operation *cast :
             llvm::make_early_inc_range(merge->getResult(0).getUsers())) {
          b.setInsertionPoint(cast);
          cast->getResult(0).replaceAllUsesWith(
              reshape(b, bf, cast->getResult(0).getType()));
          cast->erase();
        }
        merge->erase();
      }
    };
    auto rebuild = [&](Operation *op, ArrayRef<Value> operands,
                       ArrayRef<Type> types) {
      OpBuilder b(op);
      OperationState state(op->getLoc(), op->getName());
      state.addOperands(operands);
      state.addTypes(types);
      state.addAttributes(op->getAttrs());
      state.addAttribute("layout", b.getStringAttr("bthd"));
      return b.create(state);
    };
    auto noteSplit = [&](Value v) {
      if (Operation *split = v.getDefiningOp())
        if (named(split, "loom.split_heads"))
          dead.insert(split);
    };
    OpBuilder b(fwd);
    Value qkv[3];
    for (int i = 0; i < 3; ++i) {
      qkv[i] = reshape(b, src[i], bthdType);
      noteSplit(fwd->getOperand(i));
    }
    Operation *nf = rebuild(
        fwd, {qkv[0], qkv[1], qkv[2], fwd->getOperand(3), fwd->getOperand(4)},
        {bthdType, fwd->getResult(1).getType(), fwd->getResult(2).getType(),
         bthdType});
    replaceRoundings(b, fwd->getResult(0), nf->getResult(0));
    fwd->getResult(1).replaceAllUsesWith(nf->getResult(1));
    fwd->getResult(2).replaceAllUsesWith(nf->getResult(2));
    for (Operation *g : grads) {
      OpBuilder gb(g);
      SmallVector<Value> operands;
      for (int i = 0; i < 3; ++i) {
        Value x = g->getOperand(i);
        operands.push_back(x == fwd->getOperand(i)
                               ? qkv[i]
                               : reshape(gb, splitSource(x), bthdType));
        noteSplit(x);
      }
      for (int i = 3; i < 7; ++i)
        operands.push_back(g->getOperand(i));
      operands.push_back(nf->getResult(3));
      operands.push_back(reshape(gb, splitSource(g->getOperand(8)), bthdType));
      noteSplit(g->getOperand(8));
      Operation *ng = rebuild(g, operands,
                              {bthdType, bthdType, bthdType,
                               g->getResult(3).getType(),
                               g->getResult(4).getType()});
      for (int i = 0; i < 3; ++i)
        replaceRoundings(gb, g->getResult(i), ng->getResult(i));
      g->getResult(3).replaceAllUsesWith(ng->getResult(3));
      g->getResult(4).replaceAllUsesWith(ng->getResult(4));
      g->erase();
    }
    fwd->erase();
    // The splits and widenings nothing reads any more.
    for (Operation *split : dead) {
      if (!split->use_empty())
        continue;
      Operation *widen = split->getOperand(0).getDefiningOp();
      split->erase();
      if (widen && widen->use_empty())
        widen->erase();
    }
  }
}

/// On the GPU, a bf16 program's layer norm writes its output as bf16 when
/// every user rounds it to bf16 (the GEMM after it), and its backward reads
/// a dy that was widened from bf16 (the GEMM's dX) as bf16: the kernels
/// round and widen exactly as the casts did (loom_layer_norm_{fwd,bwd}_bf16).
void foldNormCasts(dist::ProgramOp program) {
  auto elementType = [](Value v) -> Type {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t ? t.getElementType() : Type();
  };
  auto isCast = [](Operation *op) {
    return op && op->getName().getStringRef() == "loom.cast";
  };
  SmallVector<Operation *> norms, grads;
  for (Operation &op : program.getBody().front()) {
    StringRef n = op.getName().getStringRef();
    if (n == "train.layer_norm")
      norms.push_back(&op);
    else if (n == "train.layer_norm_grad")
      grads.push_back(&op);
  }
  for (Operation *norm : norms) {
    Value y = norm->getResult(0);
    if (y.use_empty() || !elementType(y) || !elementType(y).isF32())
      continue;
    bool ok = true;
    for (Operation *user : y.getUsers())
      ok &= isCast(user) && elementType(user->getResult(0)) &&
            elementType(user->getResult(0)).isBF16();
    if (!ok)
      continue;
    y.setType(cast<RankedTensorType>(y.getType())
                  .clone(BFloat16Type::get(norm->getContext())));
    for (Operation *round : llvm::make_early_inc_range(y.getUsers())) {
      round->getResult(0).replaceAllUsesWith(y);
      round->erase();
    }
  }
  for (Operation *grad : grads) {
    Operation *widen = grad->getOperand(0).getDefiningOp();
    if (!isCast(widen) || !elementType(widen->getOperand(0)) ||
        !elementType(widen->getOperand(0)).isBF16())
      continue;
    grad->setOperand(0, widen->getOperand(0));
    if (widen->use_empty())
      widen->erase();
  }
}

/// On the GPU, a bf16 program's MLP computes gelu(f32(x @ w1) + c1) and,
/// backward, gelu_grad(that sum, f32(dy @ w2^T)): each a GEMM whose bf16
/// output is read back by a loop over [tokens, 4d] that is bound by GELU's
/// arithmetic (GPT-2-small on an H200: 165 and 205 us a layer, beside 105
/// us GEMMs). cuBLASLt computes both in the GEMM's epilogue instead (+40 us
/// each): train.gemm_bias_gelu returns the GELU (bf16) and its input
/// (bf16, saved for the backward pass), and train.gemm_gelu_grad the
/// gradient at that input (bf16). The numerics change the way
/// torch.autocast's F.linear + gelu has them: the bias is rounded to bf16
/// and added to the f32 product before a single rounding, and the backward
/// pass reads the bf16 pre-activation; the bias gradient (still a column
/// sum in f32) sums the bf16 gradient. Only shapes cuBLASLt's auxiliary
/// matrix takes (the last dimension a multiple of 8) are folded.
void foldGeluGemms(dist::ProgramOp program) {
  auto named = [](Operation *op, StringRef n) {
    return op && op->getName().getStringRef() == n;
  };
  auto tensorOf = [](Value v) { return dyn_cast<RankedTensorType>(v.getType()); };
  auto isCastTo = [&](Operation *op, bool toBF16) {
    if (!named(op, "loom.cast"))
      return false;
    auto t = tensorOf(op->getResult(0));
    return t && (toBF16 ? t.getElementType().isBF16() : t.getElementType().isF32());
  };
  // A bf16 product the runtime runs as one GEMM over all rows: a 2-D right
  // operand, the left one not transposed unless 2-D. Its (a, w, ta, tb).
  struct Gemm {
    Value a, w;
    bool ta = false, tb = false;
  };
  auto gemmOf = [&](Value v) -> std::optional<Gemm> {
    Operation *m = v.getDefiningOp();
    if (!m || !v.hasOneUse() || !tensorOf(v) ||
        !tensorOf(v).getElementType().isBF16())
      return std::nullopt;
    Gemm g;
    if (named(m, "loom.matmul")) {
    } else if (named(m, "train.gemm")) {
      g.ta = m->getAttrOfType<BoolAttr>("transpose_a").getValue();
      g.tb = m->getAttrOfType<BoolAttr>("transpose_b").getValue();
    } else {
      return std::nullopt;
    }
    g.a = m->getOperand(0);
    g.w = m->getOperand(1);
    auto at = tensorOf(g.a), wt = tensorOf(g.w);
    if (!at || !wt || wt.getRank() != 2 || (g.ta && at.getRank() != 2) ||
        !at.hasStaticShape() || !wt.hasStaticShape())
      return std::nullopt;
    return g;
  };
  // The bf16 value `v` = cast(x) widens, if `v` is such a widening with one
  // use.
  auto widenedFrom = [&](Value v) -> Value {
    Operation *c = v.getDefiningOp();
    if (!isCastTo(c, /*toBF16=*/false) || !v.hasOneUse())
      return {};
    auto from = tensorOf(c->getOperand(0));
    return from && from.getElementType().isBF16() ? c->getOperand(0) : Value();
  };
  auto tag = [](Operation *from, Operation *to) {
    if (auto a = from->getAttr("loom.layer"))
      to->setAttr("loom.layer", a);
  };
  // loom.cast of v to `element`, at `like`'s location and layer.
  auto castOf = [](OpBuilder &b, Operation *like, Value v, Type element) {
    TensorBuilder tb(b, like->getLoc());
    tb.setTag(like->getAttrOfType<StringAttr>("loom.layer"));
    return tb.create1("loom.cast", {v},
                      cast<RankedTensorType>(v.getType()).clone(element));
  };
  MLIRContext *ctx = program.getContext();
  Type bf16 = BFloat16Type::get(ctx), f32 = Float32Type::get(ctx);

  SmallVector<Operation *> gelus, grads;
  for (Operation &op : program.getBody().front()) {
    if (named(&op, "loom.gelu"))
      gelus.push_back(&op);
    else if (named(&op, "train.gelu_grad"))
      grads.push_back(&op);
  }
  // Forward: round_bf16(gelu(widen(a @ w) + bias)).
  for (Operation *gelu : gelus) {
    Operation *add = gelu->getOperand(0).getDefiningOp();
    auto pt = tensorOf(gelu->getOperand(0));
    if (!named(add, "loom.add") || !pt || !pt.hasStaticShape() ||
        pt.getRank() < 2 || !pt.getElementType().isF32() ||
        pt.getShape().back() % 8 != 0)
      continue;
    int64_t n = pt.getShape().back();
    Value x, bias;
    for (unsigned i = 0; i < 2; ++i) {
      auto t = tensorOf(add->getOperand(i));
      if (t && t.getRank() == 1 && t.getShape()[0] == n &&
          t.getElementType().isF32()) {
        bias = add->getOperand(i);
        x = add->getOperand(1 - i);
      }
    }
    if (!bias || tensorOf(x) != pt)
      continue;
    Value m = widenedFrom(x);
    std::optional<Gemm> g = m ? gemmOf(m) : std::nullopt;
    if (!g)
      continue;
    // The sum feeds this GELU and GELU gradients (as their input) only;
    // the GELU only roundings to bf16.
    bool ok = true;
    for (OpOperand &use : add->getResult(0).getUses())
      ok &= use.getOwner() == gelu ||
            (named(use.getOwner(), "train.gelu_grad") &&
             use.getOperandNumber() == 0);
    for (Operation *user : gelu->getResult(0).getUsers())
      ok &= isCastTo(user, /*toBF16=*/true);
    if (!ok || gelu->getResult(0).use_empty())
      continue;
    OpBuilder b(add);
    Location loc = gelu->getLoc();
    Value biasLow = castOf(b, gelu, bias, bf16);
    auto fused = b.create<train::GemmBiasGeluOp>(
        loc, TypeRange{pt.clone(bf16), pt.clone(bf16)}, g->a, g->w, biasLow,
        g->ta, g->tb);
    tag(gelu, fused);
    for (Operation *round : llvm::make_early_inc_range(gelu->getResult(0).getUsers())) {
      round->getResult(0).replaceAllUsesWith(fused.getResult());
      round->erase();
    }
    for (OpOperand &use : llvm::make_early_inc_range(add->getResult(0).getUses())) {
      Operation *grad = use.getOwner();
      if (grad == gelu)
        continue;
      OpBuilder gb(grad);
      use.set(castOf(gb, grad, fused.getPre(), f32));
    }
    Operation *widen = x.getDefiningOp(), *gemm = m.getDefiningOp();
    gelu->erase();
    add->erase();
    widen->erase();
    gemm->erase();
  }
  // Backward: round_bf16(gelu_grad(widen(pre), widen(dy @ w))), pre a fused
  // forward's; other users of the gradient (the bias gradient's column sum)
  // read the widened bf16 gradient.
  for (Operation *grad : grads) {
    Operation *wide = grad->getOperand(0).getDefiningOp();
    if (!isCastTo(wide, /*toBF16=*/false))
      continue;
    Value pre = wide->getOperand(0);
    auto producer = pre.getDefiningOp<train::GemmBiasGeluOp>();
    if (!producer || pre != producer.getPre())
      continue;
    Value m = widenedFrom(grad->getOperand(1));
    std::optional<Gemm> g = m ? gemmOf(m) : std::nullopt;
    if (!g || tensorOf(m) != tensorOf(pre))
      continue;
    bool rounded = false;
    for (Operation *user : grad->getResult(0).getUsers())
      rounded |= isCastTo(user, /*toBF16=*/true);
    if (!rounded)
      continue;
    OpBuilder b(grad);
    Location loc = grad->getLoc();
    auto fused = b.create<train::GemmGeluGradOp>(loc, tensorOf(pre), g->a,
                                                 g->w, pre, g->ta, g->tb);
    tag(grad, fused);
    Value widened;
    for (OpOperand &use : llvm::make_early_inc_range(grad->getResult(0).getUses())) {
      Operation *user = use.getOwner();
      if (isCastTo(user, /*toBF16=*/true)) {
        user->getResult(0).replaceAllUsesWith(fused.getResult());
        user->erase();
        continue;
      }
      if (!widened)
        widened = castOf(b, grad, fused.getResult(), f32);
      use.set(widened);
    }
    Operation *widenDy = grad->getOperand(1).getDefiningOp(),
              *gemm = m.getDefiningOp();
    grad->erase();
    widenDy->erase();
    gemm->erase();
    if (wide->use_empty())
      wide->erase();
  }
}

/// Elementwise producers that are cheaper to recompute than to store and
/// read back get one copy per consumer, so that each copy fuses into its
/// consumer and the producer's tensor is never written. The case that
/// matters: a bf16 program's `f32(x @ w1) + c1` before GELU, read again by
/// GELU's backward pass. Stored, it is a 4-byte tensor written once and read
/// twice; recomputed, each consumer reads the 2-byte GEMM output (which the
/// backward pass then keeps alive instead). A producer qualifies when its
/// body is plain arithmetic (no transcendental functions), its full-size
/// inputs hold no more bytes per point than its output, and every use is an
/// operand the upstream elementwise fusion can take. The copies compute the
/// same operations on the same values: results are bitwise unchanged.
void duplicateCheapProducers(dist::ProgramOp program) {
  auto bytes = [](Type t) {
    return static_cast<int64_t>((t.getIntOrFloatBitWidth() + 7) / 8);
  };
  // Last to first: copying a producer gives its own producers more uses,
  // and they are visited after it (a widening before a bias add).
  SmallVector<linalg::GenericOp> candidates;
  for (Operation &op : program.getBody().front())
    if (auto g = dyn_cast<linalg::GenericOp>(op))
      candidates.push_back(g);
  for (linalg::GenericOp g : llvm::reverse(candidates)) {
    if (g->getNumResults() != 1 || g.getNumDpsInits() != 1 ||
        g.getNumReductionLoops() != 0 || g->getResult(0).hasOneUse() ||
        g->getResult(0).use_empty())
      continue;
    auto out = cast<RankedTensorType>(g->getResult(0).getType());
    if (!g.getMatchingIndexingMap(g.getDpsInitOperand(0)).isIdentity())
      continue;
    int64_t inBytes = 0;
    for (OpOperand *in : g.getDpsInputOperands()) {
      auto t = dyn_cast<RankedTensorType>(in->get().getType());
      if (t && t.getNumElements() == out.getNumElements())
        inBytes += bytes(t.getElementType());
    }
    if (inBytes > bytes(out.getElementType()))
      continue;
    bool cheap = true;
    g.getBody()->walk([&](Operation *inner) {
      StringRef d = inner->getDialect()->getNamespace();
      cheap &= d == "arith" || d == "linalg";
    });
    SmallVector<OpOperand *> uses;
    for (OpOperand &use : g->getResult(0).getUses()) {
      cheap &= isa<linalg::GenericOp>(use.getOwner()) &&
               linalg::areElementwiseOpsFusable(&use);
      uses.push_back(&use);
    }
    if (!cheap)
      continue;
    // The first use keeps the original; every other gets its own copy,
    // placed just before it.
    for (OpOperand *use : llvm::drop_begin(uses)) {
      OpBuilder b(use->getOwner());
      use->set(b.clone(*g)->getResult(0));
    }
  }
}

/// A fused elementwise loop whose result feeds several loops (GELU's
/// gradient: the bias gradient's column sum and the cast to bf16 for the
/// GEMMs) is merged with its first elementwise consumer into one loop with
/// both results: the value is computed once, and the consumer no longer
/// reads it back (GPT-2-small: 200 MB less traffic a layer). The consumer
/// moves up to just after the producer; it qualifies only when its other
/// operands are defined before the producer (its empty init moves along).
/// Runs after the upstream fusion, whose control function keeps single-
/// result producers only, so the two-result loop is not fused further.
void fuseWithFirstConsumer(dist::ProgramOp program) {
  IRRewriter rewriter(program.getContext());
  SmallVector<linalg::GenericOp> producers;
  for (Operation &op : program.getBody().front())
    if (auto g = dyn_cast<linalg::GenericOp>(op))
      producers.push_back(g);
  auto before = [](Value v, Operation *p) {
    Operation *def = v.getDefiningOp();
    return !def || def->getBlock() != p->getBlock() || def->isBeforeInBlock(p);
  };
  llvm::DenseSet<Operation *> erased;
  for (linalg::GenericOp p : producers) {
    if (erased.contains(p) || p->getNumResults() != 1 ||
        p.getNumReductionLoops() != 0 || p->getResult(0).hasOneUse() ||
        p->getResult(0).use_empty())
      continue;
    OpOperand *target = nullptr;
    for (OpOperand &use : p->getResult(0).getUses()) {
      auto c = dyn_cast<linalg::GenericOp>(use.getOwner());
      if (!c || c->getBlock() != p->getBlock() || c->getNumResults() != 1 ||
          c.getNumReductionLoops() != 0 || c.getNumLoops() != p.getNumLoops() ||
          !linalg::areElementwiseOpsFusable(&use))
        continue;
      bool ok = true;
      for (Value v : c->getOperands()) {
        if (v == p->getResult(0) || before(v, p))
          continue;
        auto empty = v.getDefiningOp<tensor::EmptyOp>();
        ok &= empty && empty->getNumOperands() == 0 && v.hasOneUse();
      }
      if (ok && (!target || c->isBeforeInBlock(target->getOwner())))
        target = &use;
    }
    if (!target)
      continue;
    Operation *c = target->getOwner();
    c->moveAfter(p);
    for (Value v : c->getOperands())
      if (auto empty = v.getDefiningOp<tensor::EmptyOp>();
          empty && !before(v, p))
        empty->moveBefore(c);
    rewriter.setInsertionPoint(c);
    FailureOr<linalg::ElementwiseOpFusionResult> fused =
        linalg::fuseElementwiseOps(rewriter, target);
    if (failed(fused))
      continue;
    if (auto tag = c->getAttr("loom.layer"))
      fused->fusedOp->setAttr("loom.layer", tag);
    for (auto [from, to] : fused->replacements)
      rewriter.replaceAllUsesWith(from, to);
    erased.insert(c);
    rewriter.eraseOp(c);
    rewriter.eraseOp(p);
  }
}

struct FuseElementwisePass : impl::FuseElementwiseBase<FuseElementwisePass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    module.walk([&](dist::ProgramOp p) { foldCrossEntropyCasts(p); });
    // The layouts the GPU's bf16 kernels read (loomc marks CUDA modules).
    if (auto target = module->getAttrOfType<StringAttr>("loom.target");
        target && target.getValue() == "cuda")
      module.walk([&](dist::ProgramOp p) {
        foldAttentionLayouts(p);
        foldNormCasts(p);
        foldGeluGemms(p);
      });
    SmallVector<Operation *> work;
    module.walk([&](dist::ProgramOp p) {
      for (Operation &op : p.getBody().front())
        work.push_back(&op);
    });
    for (Operation *op : work) {
      OpBuilder b(op);
      Value v = convert(b, op);
      if (!v)
        continue;
      if (auto tag = op->getAttr("loom.layer"))
        if (Operation *def = v.getDefiningOp())
          def->setAttr("loom.layer", tag);
      op->getResult(0).replaceAllUsesWith(v);
      op->erase();
    }
    module.walk([&](dist::ProgramOp p) { duplicateCheapProducers(p); });
    // Fuse producer/consumer chains whose intermediate has no other use
    // (after the copies above, cheap producers have one use per copy).
    RewritePatternSet patterns(&getContext());
    linalg::populateElementwiseOpsFusionPatterns(
        patterns, [](OpOperand *fused) {
          return fused->get().hasOneUse() &&
                 fused->get().getDefiningOp()->getNumResults() == 1;
        });
    if (failed(applyPatternsAndFoldGreedily(module, std::move(patterns))))
      return signalPassFailure();
    module.walk([&](dist::ProgramOp p) { fuseWithFirstConsumer(p); });
  }
};

} // namespace
} // namespace loom
