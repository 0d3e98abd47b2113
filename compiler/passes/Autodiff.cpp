//===- Autodiff.cpp - loom.model to training and evaluation steps ---------===//
//
// Reverse-mode differentiation of a loom.model. The forward pass is cloned
// into a train.step with layers inlined; ops whose backward needs saved
// values (norms, attention, cross-entropy) become their train.* forms, which
// return those values. Then the ops are visited in reverse, each op's VJP
// rule adding to its operands' adjoints (SEMANTICS.md gives each op's
// meaning; tests/unit checks each rule against finite differences).
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"

#include "dialects/Loom/LoomOps.h"
#include "dialects/Train/TrainDialect.h"

#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "mlir/IR/IRMapping.h"

namespace loom {
#define GEN_PASS_DEF_AUTODIFF
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

/// One forward op of the step, with the loom op it came from.
struct ForwardOp {
  StringRef kind; ///< the loom op name ("loom.matmul")
  Operation *op;  ///< the op in the step
};

struct ForwardResult {
  Value loss;
  SmallVector<train::ParamOp> params;
  SmallVector<ForwardOp> ops;
};

/// Clones a model (or layer) body into the step, inlining layers.
class ForwardCloner {
public:
  /// `training`: the training step's forward (observers update their
  /// ranges); else an evaluation's (they only read them).
  ForwardCloner(OpBuilder &b, ForwardResult &out, bool training)
      : b_(b), out_(out), training_(training) {}

  /// Returns the values a layer body yields (empty for the model body).
  LogicalResult clone(Block &body, IRMapping &map, StringAttr tag,
                      SmallVectorImpl<Value> &yielded) {
    for (Operation &op : body) {
      TensorBuilder tb(b_, op.getLoc());
      tb.setTag(tag);
      StringRef name = op.getName().getStringRef();
      auto ranked = [](Value v) { return cast<RankedTensorType>(v.getType()); };
      if (auto in = dyn_cast<InputOp>(op)) {
        map.map(in.getResult(),
                tb.create1("train.input", {}, in.getType(),
                           {tb.attr("name", in.getNameAttr())}));
      } else if (auto p = dyn_cast<ParamOp>(op)) {
        SmallVector<NamedAttribute> attrs = {
            tb.attr("name", p.getNameAttr()), tb.attr("init", p.getInitAttr()),
            tb.attr("decay", b_.getBoolAttr(ranked(p.getResult()).getRank() >= 2))};
        if (p.getInitArgsAttr())
          attrs.push_back(tb.attr("init_args", p.getInitArgsAttr()));
        if (p.getShardAttr())
          attrs.push_back(tb.attr("shard", p.getShardAttr()));
        Operation *np = tb.create("train.param", {}, p.getType(), attrs);
        np->removeAttr("loom.layer");
        out_.params.push_back(cast<train::ParamOp>(np));
        map.map(p.getResult(), np->getResult(0));
      } else if (auto layer = dyn_cast<LayerOp>(op)) {
        Block &inner = layer.getBody().front();
        for (auto [arg, operand] :
             llvm::zip(inner.getArguments(), layer.getInputs()))
          map.map(arg, map.lookup(operand));
        SmallVector<Value> results;
        if (failed(clone(inner, map, layer.getNameAttr(), results)))
          return failure();
        for (auto [r, v] : llvm::zip(layer.getResults(), results))
          map.map(r, v);
      } else if (auto y = dyn_cast<YieldOp>(op)) {
        for (Value v : y.getValues())
          yielded.push_back(map.lookup(v));
      } else if (auto loss = dyn_cast<LossOp>(op)) {
        out_.loss = map.lookup(loss.getValue());
      } else if (name == "loom.layer_norm" || name == "loom.rms_norm") {
        Value x = map.lookup(op.getOperand(0));
        auto rows = ranked(x).getShape().drop_back();
        auto stat = RankedTensorType::get(rows, ranked(x).getElementType());
        SmallVector<Value> operands;
        for (Value v : op.getOperands())
          operands.push_back(map.lookup(v));
        SmallVector<Type> types = {x.getType()};
        types.push_back(stat);
        if (name == "loom.layer_norm")
          types.push_back(stat);
        Operation *f = tb.create(name == "loom.layer_norm" ? "train.layer_norm"
                                                           : "train.rms_norm",
                                 operands, types,
                                 {tb.attr("eps", op.getAttr("eps"))});
        record(name, f, op, map);
      } else if (name == "loom.attention" || name == "loom.gated_attention") {
        SmallVector<Value> operands;
        for (Value v : op.getOperands())
          operands.push_back(map.lookup(v));
        auto q = ranked(operands[0]);
        auto lse = RankedTensorType::get(q.getShape().drop_back(),
                                         q.getElementType());
        SmallVector<Type> types = {op.getResult(0).getType(), lse};
        SmallVector<NamedAttribute> attrs = {tb.attr(
            "causal", op.getAttr("causal") ? op.getAttr("causal")
                                           : b_.getBoolAttr(false))};
        if (name == "loom.gated_attention") {
          types.push_back(lse); // the gates, one per (b, h, t)
          types.push_back(op.getResult(0).getType()); // ungated attention
          if (Attribute th = op.getAttr("gate_threshold"))
            attrs.push_back(tb.attr("gate_threshold", th));
        }
        Operation *f = tb.create(name == "loom.attention"
                                     ? "train.attention"
                                     : "train.gated_attention",
                                 operands, types, attrs);
        record(name, f, op, map);
      } else if (auto bn = dyn_cast<BatchNormOp>(op)) {
        // Running statistics are state named after gamma, a parameter.
        Value x = map.lookup(bn.getInput());
        auto gamma = map.lookup(bn.getGamma()).getDefiningOp<train::ParamOp>();
        if (!gamma)
          return bn.emitOpError("needs gamma to be a parameter: its running "
                                "statistics are named after it");
        auto channels = cast<RankedTensorType>(bn.getGamma().getType());
        Value mean = state(tb, gamma.getName() + ".running_mean", channels,
                           false);
        Value var = state(tb, gamma.getName() + ".running_var", channels, true);
        SmallVector<Value> operands = {x, map.lookup(bn.getGamma()),
                                       map.lookup(bn.getBeta()), mean, var};
        if (training_) {
          Operation *f = tb.create(
              "train.batch_norm", operands,
              {x.getType(), channels, channels, channels, channels},
              {tb.attr("momentum", bn.getMomentumAttr()),
               tb.attr("eps", bn.getEpsAttr())});
          tb.create("train.update", {f->getResult(3)}, {},
                    {tb.attr("name", b_.getStringAttr(gamma.getName() +
                                                      ".running_mean"))});
          tb.create("train.update", {f->getResult(4)}, {},
                    {tb.attr("name", b_.getStringAttr(gamma.getName() +
                                                      ".running_var"))});
          record("loom.batch_norm", f, op, map);
        } else {
          Operation *f = tb.create("train.batch_norm_eval", operands,
                                   {x.getType()},
                                   {tb.attr("eps", bn.getEpsAttr())});
          record("loom.batch_norm_eval", f, op, map);
        }
      } else if (auto rr = dyn_cast<RunningRstdOp>(op)) {
        // Batch-norm folding reads the running variance before this step's
        // batch norm updates it; no gradient reaches the state.
        auto gamma = map.lookup(rr.getGamma()).getDefiningOp<train::ParamOp>();
        if (!gamma)
          return rr.emitOpError("needs gamma to be a parameter");
        auto channels = cast<RankedTensorType>(rr.getGamma().getType());
        Value var = state(tb, gamma.getName() + ".running_var", channels, true);
        Value eps = tb.scalar(rr.getEps().convertToDouble(), b_.getF32Type());
        Value sum = tb.add(var, eps);
        Value r = tb.unary("rsqrt", sum);
        sum.getDefiningOp()->setAttr("loom.no_grad", b_.getUnitAttr());
        r.getDefiningOp()->setAttr("loom.no_grad", b_.getUnitAttr());
        map.map(rr.getResult(), r);
      } else if (auto obs = dyn_cast<ObserveOp>(op)) {
        // Quantization-aware training's observer: its range is state.
        Value x = map.lookup(obs.getInput());
        auto range = RankedTensorType::get({2}, b_.getF32Type());
        auto scalar = RankedTensorType::get({}, b_.getF32Type());
        auto stateName = b_.getStringAttr(obs.getName() + ".act_range");
        Value r = state(tb, stateName.getValue(), range, false);
        if (training_) {
          r = tb.create1("train.observe_ema", {x, r}, range,
                         {tb.attr("momentum", obs.getMomentumAttr()),
                          tb.attr("freeze", obs.getFreezeAttr())});
          tb.create("train.update", {r}, {}, {tb.attr("name", stateName)});
        }
        Operation *q =
            tb.create("train.range_qparams", {r}, {scalar, scalar},
                      {tb.attr("symmetric", obs.getSymmetricAttr())});
        map.map(obs.getScale(), q->getResult(0));
        map.map(obs.getZeroPoint(), q->getResult(1));
      } else if (name == "loom.cross_entropy") {
        Value logits = map.lookup(op.getOperand(0));
        auto lt = ranked(logits);
        auto lse = RankedTensorType::get(lt.getShape().drop_back(),
                                         lt.getElementType());
        auto stats = RankedTensorType::get({2}, b_.getF32Type());
        Attribute ignore = op.getAttr("ignore_index")
                               ? op.getAttr("ignore_index")
                               : b_.getI64IntegerAttr(-100);
        Operation *f = tb.create(
            "train.cross_entropy", {logits, map.lookup(op.getOperand(1))},
            {op.getResult(0).getType(), lse, stats},
            {tb.attr("ignore_index", ignore)});
        record(name, f, op, map);
      } else {
        Operation *f = b_.clone(op, map);
        if (tag)
          f->setAttr("loom.layer", tag);
        out_.ops.push_back({op.getName().getStringRef(), f});
      }
    }
    return success();
  }

private:
  /// The step's one read of state `name` (zero- or one-initialised).
  Value state(TensorBuilder &tb, const Twine &name, Type type, bool ones) {
    std::string key = name.str();
    Value &v = states_[key];
    if (!v) {
      OpBuilder::InsertionGuard g(b_);
      // At the top of the step (in the order of first use), so that every
      // use is dominated.
      if (lastState_)
        b_.setInsertionPointAfter(lastState_);
      else
        b_.setInsertionPointToStart(b_.getInsertionBlock());
      TensorBuilder sb(b_, tb.loc());
      SmallVector<NamedAttribute> attrs = {
          sb.attr("name", b_.getStringAttr(key))};
      if (ones)
        attrs.push_back(sb.attr("init", b_.getStringAttr("ones")));
      v = sb.create1("train.state", {}, type, attrs);
      lastState_ = v.getDefiningOp();
    }
    return v;
  }

  void record(StringRef kind, Operation *f, Operation &orig, IRMapping &map) {
    map.map(orig.getResult(0), f->getResult(0));
    out_.ops.push_back({kind, f});
  }

  OpBuilder &b_;
  ForwardResult &out_;
  bool training_;
  llvm::StringMap<Value> states_;
  Operation *lastState_ = nullptr;
};

/// Accumulates adjoints and applies each op's VJP rule.
class Backward {
public:
  explicit Backward(OpBuilder &b) : b_(b) {}

  void seed(Value v, Value g) { adj_[v] = g; }
  Value adjoint(Value v) const { return adj_.lookup(v); }

  void accumulate(TensorBuilder &tb, Value v, Value g) {
    auto t = cast<RankedTensorType>(v.getType());
    if (!isa<FloatType>(t.getElementType()))
      return; // Integer values (ids, targets) have no gradient.
    // Quantization-aware training's switch and weight scales are not
    // differentiated (as torch's fake-quantization parameters).
    Operation *def = v.getDefiningOp();
    if (isa_and_nonnull<QuantEnabledOp, WeightScaleOp>(def) ||
        (def && def->hasAttr("loom.no_grad")))
      return;
    assert(g.getType() == v.getType() && "adjoint type mismatch");
    Value &slot = adj_[v];
    slot = slot ? tb.add(slot, g) : g;
  }

  LogicalResult vjp(const ForwardOp &f) {
    Operation *op = f.op;
    Value g = adj_.lookup(op->getResult(0));
    if (!g)
      return success();
    TensorBuilder tb(b_, op->getLoc());
    if (auto tag = op->getAttrOfType<StringAttr>("loom.layer"))
      tb.setTag(tag);
    StringRef k = f.kind;
    auto x = [&](unsigned i) { return op->getOperand(i); };
    Value y = op->getResult(0);
    auto acc = [&](Value v, Value grad) { accumulate(tb, v, grad); };
    auto unb = [&](Value grad, Value target) {
      return tb.unbroadcast(grad, target.getType());
    };
    auto c = [&](double v) { return tb.scalarLike(v, g); };
    auto attr = [&](StringRef n) { return op->getAttr(n); };

    if (k == "loom.add") {
      acc(x(0), unb(g, x(0)));
      acc(x(1), unb(g, x(1)));
    } else if (k == "loom.sub") {
      acc(x(0), unb(g, x(0)));
      acc(x(1), unb(tb.neg(g), x(1)));
    } else if (k == "loom.mul") {
      acc(x(0), unb(tb.mul(g, x(1)), x(0)));
      acc(x(1), unb(tb.mul(g, x(0)), x(1)));
    } else if (k == "loom.div") {
      acc(x(0), unb(tb.div(g, x(1)), x(0)));
      acc(x(1), unb(tb.neg(tb.div(tb.mul(g, y), x(1))), x(1)));
    } else if (k == "loom.neg") {
      acc(x(0), tb.neg(g));
    } else if (k == "loom.exp") {
      acc(x(0), tb.mul(g, y));
    } else if (k == "loom.log") {
      acc(x(0), tb.div(g, x(0)));
    } else if (k == "loom.sqrt") {
      acc(x(0), tb.div(tb.mul(g, c(0.5)), y));
    } else if (k == "loom.rsqrt") {
      acc(x(0), tb.mul(g, tb.mul(c(-0.5), tb.mul(y, tb.mul(y, y)))));
    } else if (k == "loom.tanh") {
      acc(x(0), tb.mul(g, tb.sub(c(1.0), tb.mul(y, y))));
    } else if (k == "loom.sigmoid") {
      acc(x(0), tb.mul(g, tb.mul(y, tb.sub(c(1.0), y))));
    } else if (k == "loom.relu" || k == "loom.gelu") {
      acc(x(0), tb.create1(k == "loom.relu" ? "train.relu_grad"
                                            : "train.gelu_grad",
                           {x(0), g}, x(0).getType()));
    } else if (k == "loom.matmul") {
      Value a = x(0), bm = x(1);
      acc(a, unb(tb.gemm(g, bm, false, true), a));
      auto at = TensorBuilder::st(a), bt = TensorBuilder::st(bm);
      if (bt.dims.size() == 2 && at.dims.size() > 2) {
        // The common Linear layer: fold the batch into the GEMM's M.
        int64_t rows = at.numElements() / at.dims.back();
        Value a2 = tb.reshapeDims(a, {rows, at.dims.back()});
        Value g2 = tb.reshapeDims(g, {rows, bt.dims[1]});
        acc(bm, tb.gemm(a2, g2, true, false));
      } else {
        acc(bm, unb(tb.gemm(a, g, true, false), bm));
      }
    } else if (k == "loom.softmax" || k == "loom.log_softmax") {
      acc(x(0), tb.create1(k == "loom.softmax" ? "train.softmax_grad"
                                               : "train.log_softmax_grad",
                           {y, g}, y.getType()));
    } else if (k == "loom.layer_norm") {
      Operation *d = tb.create(
          "train.layer_norm_grad",
          {g, x(0), x(1), op->getResult(1), op->getResult(2)},
          {x(0).getType(), x(1).getType(), x(2).getType()});
      acc(x(0), d->getResult(0));
      acc(x(1), d->getResult(1));
      acc(x(2), d->getResult(2));
    } else if (k == "loom.rms_norm") {
      Operation *d =
          tb.create("train.rms_norm_grad", {g, x(0), x(1), op->getResult(1)},
                    {x(0).getType(), x(1).getType()});
      acc(x(0), d->getResult(0));
      acc(x(1), d->getResult(1));
    } else if (k == "loom.embedding") {
      acc(x(1), tb.create1("train.embedding_grad", {x(0), g}, x(1).getType()));
    } else if (k == "loom.reshape") {
      acc(x(0), tb.reshape(g, x(0).getType()));
    } else if (k == "loom.transpose") {
      auto perm = cast<DenseI64ArrayAttr>(attr("permutation")).asArrayRef();
      SmallVector<int64_t> inv(perm.size());
      for (size_t i = 0; i < perm.size(); ++i)
        inv[perm[i]] = static_cast<int64_t>(i);
      acc(x(0), tb.transpose(g, inv));
    } else if (k == "loom.split_heads") {
      acc(x(0), tb.create1("loom.merge_heads", {g}, x(0).getType()));
    } else if (k == "loom.merge_heads") {
      int64_t heads = cast<RankedTensorType>(x(0).getType()).getDimSize(1);
      acc(x(0), tb.create1("loom.split_heads", {g}, x(0).getType(),
                           {tb.attr("heads", b_.getI64IntegerAttr(heads))}));
    } else if (k == "loom.broadcast_to") {
      acc(x(0), unb(g, x(0)));
    } else if (k == "loom.reduce_sum" || k == "loom.reduce_mean" ||
               k == "loom.reduce_max") {
      auto dims = cast<DenseI64ArrayAttr>(attr("dims")).asArrayRef();
      auto in = TensorBuilder::st(x(0));
      std::string err;
      auto kept = *shape::reduce(in, dims, /*keepdim=*/true, err);
      Value gk = tb.reshape(g, tb.type(kept));
      if (k == "loom.reduce_max") {
        acc(x(0), tb.create1("train.reduce_max_grad", {x(0), gk},
                             x(0).getType(), {tb.attr("dims", attr("dims"))}));
      } else {
        Value full = tb.broadcastTo(gk, x(0).getType());
        if (k == "loom.reduce_mean") {
          int64_t n = 1;
          for (int64_t d : dims)
            n *= in.dims[*shape::normalizeDim(d, in.dims.size())];
          full = tb.mul(full, c(1.0 / static_cast<double>(n)));
        }
        acc(x(0), full);
      }
    } else if (k == "loom.concat") {
      int64_t dim = cast<IntegerAttr>(attr("dim")).getInt();
      int64_t offset = 0;
      for (Value in : op->getOperands()) {
        auto t = cast<RankedTensorType>(in.getType());
        int64_t size = t.getDimSize(dim);
        acc(in, tb.create1("loom.slice", {g}, t,
                           {tb.attr("dim", b_.getI64IntegerAttr(dim)),
                            tb.attr("start", b_.getI64IntegerAttr(offset)),
                            tb.attr("end", b_.getI64IntegerAttr(offset + size))}));
        offset += size;
      }
    } else if (k == "loom.slice") {
      acc(x(0), tb.create1("train.slice_grad", {g}, x(0).getType(),
                           {tb.attr("dim", attr("dim")),
                            tb.attr("start", attr("start"))}));
    } else if (k == "loom.cast") {
      acc(x(0), tb.create1("loom.cast", {g}, x(0).getType()));
    } else if (k == "loom.constant") {
      // Constants have no inputs.
    } else if (k == "loom.conv2d") {
      SmallVector<NamedAttribute> attrs = {
          tb.attr("stride", b_.getI64IntegerAttr(
                                cast<Conv2dOp>(op).getStride())),
          tb.attr("padding", b_.getI64IntegerAttr(
                                 cast<Conv2dOp>(op).getPadding()))};
      acc(x(0), tb.create1("train.conv2d_grad_input", {g, x(1)},
                           x(0).getType(), attrs));
      acc(x(1), tb.create1("train.conv2d_grad_weight", {x(0), g},
                           x(1).getType(), attrs));
    } else if (k == "loom.batch_norm") {
      Operation *d = tb.create(
          "train.batch_norm_grad",
          {g, x(0), x(1), op->getResult(1), op->getResult(2)},
          {x(0).getType(), x(1).getType(), x(2).getType()});
      for (unsigned i = 0; i < 3; ++i)
        acc(x(i), d->getResult(i));
    } else if (k == "loom.fake_quant") {
      // Straight-through inside the clamp range; scale and zero point are
      // quantization state, not trained (as torch's fake_quantize ops).
      acc(x(0), tb.create1("train.fake_quant_grad", {x(0), x(1), x(2), g},
                           x(0).getType(),
                           {tb.attr("qmin", attr("qmin")),
                            tb.attr("qmax", attr("qmax")),
                            tb.attr("axis", attr("axis"))}));
    } else if (k == "loom.dropout") {
      // The mask is a function of (seed, key, step, index): applying the same
      // dropout to the gradient multiplies by the same mask and scale.
      acc(x(0), tb.create1("loom.dropout", {g}, g.getType(),
                           {tb.attr("p", attr("p")), tb.attr("key", attr("key"))}));
    } else if (k == "loom.attention") {
      Operation *d = tb.create(
          "train.attention_grad",
          {x(0), x(1), x(2), y, op->getResult(1), g},
          {x(0).getType(), x(1).getType(), x(2).getType()},
          {tb.attr("causal", attr("causal"))});
      for (unsigned i = 0; i < 3; ++i)
        acc(x(i), d->getResult(i));
    } else if (k == "loom.gated_attention") {
      SmallVector<NamedAttribute> attrs = {tb.attr("causal", attr("causal"))};
      if (Attribute th = attr("gate_threshold"))
        attrs.push_back(tb.attr("gate_threshold", th));
      Operation *d = tb.create(
          "train.gated_attention_grad",
          {x(0), x(1), x(2), x(3), x(4), op->getResult(1), op->getResult(2),
           op->getResult(3), g},
          {x(0).getType(), x(1).getType(), x(2).getType(), x(3).getType(),
           x(4).getType()},
          attrs);
      for (unsigned i = 0; i < 5; ++i)
        acc(x(i), d->getResult(i));
    } else if (k == "loom.cross_entropy") {
      acc(x(0), tb.create1("train.cross_entropy_grad",
                           {x(0), x(1), op->getResult(1), g}, x(0).getType(),
                           {tb.attr("ignore_index", attr("ignore_index"))}));
    } else if (k == "loom.mse") {
      int64_t n = TensorBuilder::st(x(0)).numElements();
      // The loss is f32; the operands may be bf16/f16/f64.
      // The scale 2/n is formed in f32 (the loss's type) and cast once, so
      // low-precision operands do not round the constant itself.
      Type et = cast<RankedTensorType>(x(0).getType()).getElementType();
      Value scale = tb.mul(g, tb.scalarLike(2.0 / static_cast<double>(n), g));
      if (et != cast<RankedTensorType>(g.getType()).getElementType())
        scale = tb.create1("loom.cast", {scale}, RankedTensorType::get({}, et));
      Value d = tb.mul(tb.sub(x(0), x(1)), scale);
      acc(x(0), d);
      acc(x(1), tb.neg(d));
    } else {
      return op->emitOpError("loom-autodiff has no VJP rule for this op");
    }
    return success();
  }

private:
  OpBuilder &b_;
  DenseMap<Value, Value> adj_;
};

/// Creates a `train.step` before `model` holding the model's forward pass;
/// returns its block.
FailureOr<Block *> forwardStep(OpBuilder &top, ModelOp model, StringRef name,
                               StringRef kind, ForwardResult &fwd) {
  OperationState state(model.getLoc(), "train.step");
  state.addAttribute("sym_name", top.getStringAttr(name));
  state.addAttribute("kind", top.getStringAttr(kind));
  if (model.getConfigAttr())
    state.addAttribute("config", model.getConfigAttr());
  state.addAttribute("loom.model", top.getStringAttr(model.getSymName()));
  state.addRegion()->push_back(new Block());
  Block *block = &top.create(state)->getRegion(0).front();
  OpBuilder b = OpBuilder::atBlockEnd(block);
  IRMapping map;
  SmallVector<Value> none;
  if (failed(ForwardCloner(b, fwd, kind == "train")
                 .clone(model.getBody().front(), map, {}, none)))
    return failure();
  if (!fwd.loss)
    return model.emitOpError("has no loom.loss to differentiate");
  return block;
}

LogicalResult buildTrainStep(OpBuilder &top, ModelOp model) {
  ForwardResult fwd;
  FailureOr<Block *> block = forwardStep(top, model, "train_step", "train", fwd);
  if (failed(block))
    return failure();
  OpBuilder b = OpBuilder::atBlockEnd(*block);
  TensorBuilder tb(b, model.getLoc());
  tb.create("train.output", {fwd.loss}, {},
            {tb.attr("name", b.getStringAttr("loss"))});

  Backward bwd(b);
  // d loss / d loss = 1; loss scaling replaces this seed by the scale.
  Value seed = tb.scalar(1.0, b.getF32Type());
  seed.getDefiningOp()->setAttr("loom.loss_seed", b.getUnitAttr());
  bwd.seed(fwd.loss, seed);
  for (const ForwardOp &f : llvm::reverse(fwd.ops))
    if (failed(bwd.vjp(f)))
      return failure();
  for (train::ParamOp p : fwd.params) {
    Value g = bwd.adjoint(p.getResult());
    if (!g) // A parameter the loss does not depend on: a zero gradient.
      g = tb.splat(0.0, cast<RankedTensorType>(p.getType()));
    tb.create("train.gradient", {g}, {}, {tb.attr("name", p.getNameAttr())});
  }
  return success();
}

LogicalResult buildEvalStep(OpBuilder &top, ModelOp model) {
  ForwardResult fwd;
  FailureOr<Block *> block = forwardStep(top, model, "eval_step", "eval", fwd);
  if (failed(block))
    return failure();
  OpBuilder b = OpBuilder::atBlockEnd(*block);
  TensorBuilder tb(b, model.getLoc());
  auto out = [&](StringRef name, Value v) {
    tb.create("train.output", {v}, {}, {tb.attr("name", b.getStringAttr(name))});
  };
  out("eval_loss", fwd.loss);
  // Accuracy statistics exist when the loss is a cross-entropy.
  if (auto ce = fwd.loss.getDefiningOp();
      ce && ce->getName().getStringRef() == "train.cross_entropy") {
    Value stats = ce->getResult(2);
    auto one = RankedTensorType::get({1}, b.getF32Type());
    auto scalar = RankedTensorType::get({}, b.getF32Type());
    const char *names[] = {"eval_count", "eval_correct"};
    for (int64_t at = 0; at < 2; ++at) {
      StringRef name = names[at];
      Value s = tb.create1("loom.slice", {stats}, one,
                           {tb.attr("dim", b.getI64IntegerAttr(0)),
                            tb.attr("start", b.getI64IntegerAttr(at)),
                            tb.attr("end", b.getI64IntegerAttr(at + 1))});
      out(name, tb.reshape(s, scalar));
    }
  }
  return success();
}

/// INT8 inference: the matmuls of an activation [..., K] by a parameter
/// [K, N] and the conv2ds of an activation by a parameter [O, C, kh, kw]
/// (all f32) in `block`, with their parameters -- the products
/// loom-insert-fake-quant quantizes in training.
struct QSite {
  Operation *op;
  train::ParamOp param;
  bool conv;
};
SmallVector<QSite> ptqSites(Block *block) {
  SmallVector<QSite> sites;
  for (Operation &op : *block) {
    StringRef n = op.getName().getStringRef();
    bool conv = n == "loom.conv2d";
    if (!conv && n != "loom.matmul")
      continue;
    auto x = dyn_cast<RankedTensorType>(op.getOperand(0).getType());
    auto w = dyn_cast<RankedTensorType>(op.getOperand(1).getType());
    auto param = op.getOperand(1).getDefiningOp<train::ParamOp>();
    if (x && w && param && x.getRank() >= 2 && w.getRank() == (conv ? 4 : 2) &&
        !op.getOperand(0).getDefiningOp<train::ParamOp>() &&
        x.getElementType().isF32() && w.getElementType().isF32())
      sites.push_back({&op, param, conv});
  }
  return sites;
}

/// The evaluation batch norm a conv2d feeds alone (folded into its INT8
/// weights and bias), or null.
Operation *foldedBatchNormEval(Operation *conv) {
  Value y = conv->getResult(0);
  if (!y.hasOneUse())
    return nullptr;
  Operation *bn = *y.getUsers().begin();
  if (bn->getName().getStringRef() != "train.batch_norm_eval" ||
      bn->getOperand(0) != y)
    return nullptr;
  return bn;
}

/// INT8 inference's chains (issue 9: quantize/dequantize placement
/// minimised): each train.qmatmul takes in the bias add and the ReLU that
/// alone use its result, and a result whose one user is another qmatmul
/// leaves quantized with that qmatmul's range (the next layer reads UINT8,
/// and no FP32 activation is written between them). The roundings are
/// those of the unfused ops (loom_qlinear), so results are unchanged.
void fuseInt8Chains(Block &block) {
  auto soleUser = [](Value v) -> Operation * {
    return v.hasOneUse() ? *v.getUsers().begin() : nullptr;
  };
  auto before = [&](Value v, Operation *op) {
    Operation *def = v.getDefiningOp();
    return !def || (def->getBlock() == op->getBlock() && def->isBeforeInBlock(op));
  };
  auto rebuild = [](train::QMatmulOp q, Value input, Value bias, Value rangeOut,
                    Type type, bool quantizedInput, bool relu,
                    bool symmetricOut) {
    OpBuilder b(q);
    return b.create<train::QMatmulOp>(
        q.getLoc(), type, input, q.getRange(), q.getWeight(), q.getScale(),
        bias, rangeOut, q.getSymmetric(), quantizedInput, relu, symmetricOut);
  };
  // The bias and the ReLU.
  for (auto q : llvm::to_vector(block.getOps<train::QMatmulOp>())) {
    auto type = cast<RankedTensorType>(q.getType());
    Value end = q.getResult(), bias;
    SmallVector<Operation *> dead;
    if (Operation *add = soleUser(end);
        add && add->getName().getStringRef() == "loom.add" &&
        add->getResult(0).getType() == type) {
      Value other = add->getOperand(add->getOperand(0) == end ? 1 : 0);
      auto bt = cast<RankedTensorType>(other.getType());
      if (bt.getRank() == 1 && bt.getElementType().isF32() &&
          bt.getDimSize(0) == type.getShape().back() && before(other, q)) {
        bias = other;
        end = add->getResult(0);
        dead.push_back(add);
      }
    }
    bool relu = false;
    if (Operation *r = soleUser(end);
        r && r->getName().getStringRef() == "loom.relu") {
      relu = true;
      end = r->getResult(0);
      dead.push_back(r);
    }
    if (dead.empty())
      continue;
    auto fused = rebuild(q, q.getInput(), bias, Value(), type,
                         q.getQuantizedInput(), relu, false);
    end.replaceAllUsesWith(fused.getResult());
    for (Operation *op : llvm::reverse(dead))
      op->erase();
    q.erase();
  }
  // Quantized hand-offs, one at a time (each rewrites two qmatmuls).
  auto handOff = [&](train::QMatmulOp q) {
    auto next = dyn_cast_or_null<train::QMatmulOp>(soleUser(q.getResult()));
    if (!next || next.getInput() != q.getResult() || q.getRangeOut())
      return false;
    // The next layer's range is read before this one.
    Value range = next.getRange();
    if (!before(range, q)) {
      Operation *def = range.getDefiningOp();
      if (!def || def->getNumOperands() != 0)
        return false;
      def->moveBefore(q);
    }
    auto t = cast<RankedTensorType>(q.getType());
    auto i8 = RankedTensorType::get(t.getShape(),
                                    IntegerType::get(q.getContext(), 8));
    auto producer = rebuild(q, q.getInput(), q.getBias(), range, i8,
                            q.getQuantizedInput(), q.getRelu(),
                            next.getSymmetric());
    auto consumer = rebuild(next, producer.getResult(), next.getBias(), Value(),
                            next.getType(), true, next.getRelu(), false);
    next.getResult().replaceAllUsesWith(consumer.getResult());
    next.erase();
    q.erase();
    return true;
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (auto q : block.getOps<train::QMatmulOp>())
      if ((changed = handOff(q)))
        break;
  }
}

/// loomc --mode=infer --quantize=ptq-int8 (SEMANTICS.md, quantization): the
/// matmuls of an activation by a weight run in INT8 (per-channel symmetric
/// weights, per-tensor affine UINT8 activations). Three programs:
/// - calibrate_step: the FP32 forward; a min/max observer (or, with
///   `observer = percentile`, the mean over the batches of each batch's
///   (100 - p)-th and p-th percentiles) on each such matmul's input
///   updates the state "<weight>.act_range" ([min, max], from [0, 0]);
///   loom-run --calibrate=N runs it and --save keeps the ranges with the
///   weights;
/// - prepare_step: quantizes each weight once into "<weight>.qweight" (i8)
///   and "<weight>.qscale" (loom-run --infer runs it before the first call);
/// - eval_step: the forward with train.qmatmul in place of those matmuls.
///
/// The INT8 artifact of a quantization-aware-trained model (`qat`) has no
/// calibration step: its ranges are the trained observers', saved with the
/// weights; `symmetric` quantizes its activations symmetrically as it
/// trained.
LogicalResult buildPtqSteps(OpBuilder &top, ModelOp model, bool calibrate,
                            bool symmetric, double percentile) {
  auto stepNamed = [&](StringRef name) -> Block * {
    for (auto step : model->getParentOfType<ModuleOp>().getOps<train::StepOp>())
      if (step.getSymName() == name)
        return &step.getBody().front();
    return nullptr;
  };
  auto state = [](TensorBuilder &tb, OpBuilder &b, StringRef name, Type t) {
    return tb.create1("train.state", {}, t, {tb.attr("name", b.getStringAttr(name))});
  };
  auto update = [](OpBuilder &b, Location loc, StringRef name, Value v) {
    OperationState st(loc, "train.update");
    st.addOperands(v);
    st.addAttribute("name", b.getStringAttr(name));
    b.create(st);
  };
  auto f32 = [&](ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, top.getF32Type());
  };

  // The INT8 evaluation step.
  if (failed(buildEvalStep(top, model)))
    return failure();
  Block *eval = stepNamed("eval_step");
  auto sites = ptqSites(eval);
  if (sites.empty())
    return model.emitOpError("--quantize=ptq-int8: no matmul or conv2d of an "
                             "activation by an f32 parameter to quantize");
  auto i8 = [&](ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, top.getIntegerType(8));
  };
  for (auto [op, param, conv] : sites) {
    OpBuilder b(op);
    TensorBuilder tb(b, op->getLoc());
    auto w = cast<RankedTensorType>(param.getType());
    std::string name = param.getName().str();
    Value range = state(tb, b, name + ".act_range", f32({2}));
    if (!conv) {
      int64_t n = w.getDimSize(1);
      Value wq = state(tb, b, name + ".qweight", i8(w.getShape()));
      Value ws = state(tb, b, name + ".qscale", f32({n}));
      Value y = b.create<train::QMatmulOp>(
          op->getLoc(), op->getResult(0).getType(), op->getOperand(0), range,
          wq, ws, Value(), Value(), symmetric);
      op->getResult(0).replaceAllUsesWith(y);
      op->erase();
      continue;
    }
    // conv2d [+ batch norm, folded] [+ ReLU]: the weights [K = C*kh*kw, O]
    // (the product's layout), their scales and the folded bias.
    int64_t o = w.getDimSize(0), k = w.getNumElements() / o;
    Value wq = state(tb, b, name + ".qweight", i8({k, o}));
    Value ws = state(tb, b, name + ".qscale", f32({o}));
    Value bias = state(tb, b, name + ".qbias", f32({o}));
    Operation *end = op;
    SmallVector<Operation *> dead = {op};
    if (Operation *bn = foldedBatchNormEval(op)) {
      end = bn;
      dead.push_back(bn);
    }
    bool relu = false;
    if (Value v = end->getResult(0); v.hasOneUse() &&
        (*v.getUsers().begin())->getName().getStringRef() == "loom.relu") {
      end = *v.getUsers().begin();
      dead.push_back(end);
      relu = true;
    }
    b.setInsertionPoint(end);
    Value y = tb.create1("train.qconv", {op->getOperand(0), range, wq, ws, bias},
                         end->getResult(0).getType(),
                         {tb.attr("kh", b.getI64IntegerAttr(w.getDimSize(2))),
                          tb.attr("kw", b.getI64IntegerAttr(w.getDimSize(3))),
                          tb.attr("stride", b.getI64IntegerAttr(
                                                cast<Conv2dOp>(op).getStride())),
                          tb.attr("padding", b.getI64IntegerAttr(
                                                 cast<Conv2dOp>(op).getPadding())),
                          tb.attr("relu", b.getBoolAttr(relu)),
                          tb.attr("symmetric", b.getBoolAttr(symmetric))});
    end->getResult(0).replaceAllUsesWith(y);
    for (Operation *d : llvm::reverse(dead))
      d->erase();
  }
  fuseInt8Chains(*eval);

  // Calibration: the FP32 forward with observers.
  if (calibrate) {
    ForwardResult fwd;
    FailureOr<Block *> cal =
        forwardStep(top, model, "calibrate_step", "eval", fwd);
    if (failed(cal))
      return failure();
    OpBuilder end = OpBuilder::atBlockEnd(*cal);
    TensorBuilder te(end, model.getLoc());
    te.create("train.output", {fwd.loss}, {},
              {te.attr("name", end.getStringAttr("eval_loss"))});
    for (auto [mm, param, conv] : ptqSites(*cal)) {
      OpBuilder b(mm);
      TensorBuilder tb(b, mm->getLoc());
      std::string name = param.getName().str() + ".act_range";
      Value range = state(tb, b, name, f32({2}));
      // min/max, or the mean over batches of the batch's percentiles.
      Value seen =
          percentile > 0
              ? tb.create1("train.observe_percentile",
                           {mm->getOperand(0), range}, f32({2}),
                           {tb.attr("percentile", b.getF64FloatAttr(percentile))})
              : tb.create1("train.observe_range", {mm->getOperand(0), range},
                           f32({2}));
      update(end, mm->getLoc(), name, seen);
    }
  }

  // Preparation: each weight quantized once (a forward clone whose other
  // ops are dropped).
  ForwardResult prep;
  FailureOr<Block *> pre = forwardStep(top, model, "prepare_step", "eval", prep);
  if (failed(pre))
    return failure();
  {
    OpBuilder end = OpBuilder::atBlockEnd(*pre);
    llvm::StringSet<> done;
    for (auto [mm, param, conv] : ptqSites(*pre)) {
      std::string name = param.getName().str();
      if (!done.insert(name).second)
        continue;
      TensorBuilder tb(end, mm->getLoc());
      auto w = cast<RankedTensorType>(param.getType());
      if (conv) {
        // The batch norm's running statistics fold into the weights and
        // the bias: w' = w * gamma / sqrt(var + eps), b' = beta - mean *
        // gamma / sqrt(var + eps).
        int64_t o = w.getDimSize(0), k = w.getNumElements() / o;
        SmallVector<Value> operands = {param.getResult()};
        SmallVector<NamedAttribute> attrs;
        if (Operation *bn = foldedBatchNormEval(mm)) {
          for (unsigned i = 1; i < 5; ++i)
            operands.push_back(bn->getOperand(i));
          attrs.push_back(tb.attr("eps", bn->getAttr("eps")));
        }
        state(tb, end, name + ".qweight", i8({k, o}));
        state(tb, end, name + ".qscale", f32({o}));
        state(tb, end, name + ".qbias", f32({o}));
        Operation *q = tb.create("train.quantize_conv_weight", operands,
                                 {i8({k, o}), f32({o}), f32({o})}, attrs);
        update(end, mm->getLoc(), name + ".qweight", q->getResult(0));
        update(end, mm->getLoc(), name + ".qscale", q->getResult(1));
        update(end, mm->getLoc(), name + ".qbias", q->getResult(2));
        continue;
      }
      // The step reads what it updates (train.step's verifier).
      state(tb, end, name + ".qweight", i8(w.getShape()));
      state(tb, end, name + ".qscale", f32({w.getDimSize(1)}));
      Operation *q = tb.create("train.quantize_weight", {param.getResult()},
                               {i8(w.getShape()), f32({w.getDimSize(1)})});
      update(end, mm->getLoc(), name + ".qweight", q->getResult(0));
      update(end, mm->getLoc(), name + ".qscale", q->getResult(1));
    }
    // Everything but the parameters and the quantization goes.
    SmallVector<Operation *> ops;
    for (Operation &op : **pre)
      ops.push_back(&op);
    for (Operation *op : llvm::reverse(ops)) {
      StringRef n = op->getName().getStringRef();
      if (n == "train.param" || n == "train.state" || n == "train.update" ||
          n == "train.quantize_weight" || n == "train.quantize_conv_weight")
        continue;
      if (op->use_empty())
        op->erase();
    }
  }
  return success();
}

struct AutodiffPass : impl::AutodiffBase<AutodiffPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<ModelOp> models(module.getOps<ModelOp>());
    // loomc --mode=infer: the evaluation step alone (with post-training
    // quantization, its calibration and preparation steps too).
    auto mode = module->getAttrOfType<StringAttr>("loom.mode");
    bool infer = mode && mode.getValue() == "infer";
    for (ModelOp model : models) {
      OpBuilder b(model);
      StringRef quantize = "none";
      if (auto cfg = model.getConfigAttr())
        if (auto q = cfg.getAs<StringAttr>("quantize"))
          quantize = q.getValue();
      if (infer && (quantize == "ptq" || quantize == "qat")) {
        auto acts = model.getConfigAttr().getAs<StringAttr>("quant_activations");
        bool symmetric = acts && acts.getValue() == "per_tensor_symmetric";
        auto observer = model.getConfigAttr().getAs<StringAttr>("quant_observer");
        auto p = model.getConfigAttr().getAs<FloatAttr>("quant_percentile");
        double percentile = observer && observer.getValue() == "percentile" && p
                                ? p.getValueAsDouble()
                                : 0.0;
        if (failed(buildPtqSteps(b, model, /*calibrate=*/quantize == "ptq",
                                 symmetric, percentile)))
          return signalPassFailure();
        model.erase();
        continue;
      }
      if ((!infer && failed(buildTrainStep(b, model))) ||
          failed(buildEvalStep(b, model)))
        return signalPassFailure();
      model.erase();
    }
  }
};

} // namespace
} // namespace loom
