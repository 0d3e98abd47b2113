//===- InsertFakeQuant.cpp - quantization-aware training of matmuls -------===//
//
// SEMANTICS.md (quantization): with `quantize qat(int8, ...)` every matmul of
// an activation by a 2-D f32 parameter — the products an INT8 inference
// artifact runs as `train.qmatmul` — trains on fake-quantized operands:
//
//   %s, %z = loom.observe %x for "w"        // "w.act_range", a moving average
//   %xq    = loom.fake_quant %x, %s, %z {qmin = 0, qmax = 255}
//   %ws    = loom.weight_scale %w            // max |w| / 127 per channel
//   %wq    = loom.fake_quant %w, %ws, %zeros {qmin = -127, qmax = 127, axis = 1}
//   %y     = loom.matmul %xq, %wq
//
// Gradients pass straight through inside the clamp range (fake_quant's VJP)
// and never reach the scales. With `start = N` (N > 0) both operands are
// blended with `loom.quant_enabled from N` (e·fq(v) + (1 − e)·v, exact at
// e = 0 and e = 1), so the observers see N − 1 steps of FP32 training before
// the values are quantized; `freeze = F` stops the observers after step F.
// Autodiff turns each observer into model state and its update.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"

#include "dialects/Loom/LoomOps.h"

#include "llvm/ADT/StringMap.h"

namespace loom {
#define GEN_PASS_DEF_INSERTFAKEQUANT
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

struct Options {
  int64_t start = 0, freeze = -1;
  bool perTensorWeights = false, symmetricActivations = false;
};

/// An op quantization-aware training quantizes: a matmul of an f32
/// activation (not itself a parameter) by a 2-D f32 parameter, or a conv2d
/// of an activation by a 4-D f32 parameter.
struct Site {
  Operation *op;
  ParamOp weight;
  bool conv;
};

SmallVector<Site> sites(ModelOp model) {
  SmallVector<Site> out;
  model.walk([&](Operation *op) {
    bool conv = isa<Conv2dOp>(op);
    if (!conv && !isa<MatmulOp>(op))
      return;
    Value x = op->getOperand(0), w = op->getOperand(1);
    auto param = w.getDefiningOp<ParamOp>();
    auto wt = cast<RankedTensorType>(w.getType());
    auto xt = cast<RankedTensorType>(x.getType());
    if (param && !x.getDefiningOp<ParamOp>() && xt.getRank() >= 2 &&
        wt.getRank() == (conv ? 4 : 2) && wt.getElementType().isF32() &&
        xt.getElementType().isF32())
      out.push_back({op, param, conv});
  });
  return out;
}

/// The batch norm a conv2d's result feeds alone, with a parameter gamma
/// of its block: the fold of SEMANTICS.md (torch's ConvBn2d).
BatchNormOp foldedBatchNorm(const Site &s) {
  if (!s.conv || !s.op->getResult(0).hasOneUse())
    return {};
  auto bn = dyn_cast<BatchNormOp>(*s.op->getResult(0).getUsers().begin());
  if (!bn || bn.getInput() != s.op->getResult(0))
    return {};
  auto gamma = bn.getGamma().getDefiningOp<ParamOp>();
  if (!gamma || gamma->getBlock() != s.op->getBlock())
    return {};
  return bn;
}

LogicalResult convert(ModelOp model, const Options &o) {
  OpBuilder b(model.getContext());
  // One switch per block (layer bodies are isolated from above), one fake
  // quantization per weight and per (activation, weight).
  DenseMap<Block *, std::pair<Value, Value>> enabled; // e, 1 - e
  DenseMap<Value, Value> weights;
  DenseMap<std::pair<Value, Value>, Value> activations;
  llvm::StringMap<Value> observed; // weight name -> its activation
  auto f32 = [&](ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, b.getF32Type());
  };
  auto tagged = [&](TensorBuilder &tb, Operation *user) {
    if (auto tag = user->getAttrOfType<StringAttr>("loom.layer"))
      tb.setTag(tag);
  };
  // e * fq + (1 - e) * v with the block's switch.
  auto blend = [&](TensorBuilder &tb, Block *block, Value v, Value fq) {
    if (o.start == 0)
      return fq;
    auto &[e, off] = enabled[block];
    if (!e) {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(block);
      TensorBuilder eb(b, v.getLoc());
      e = eb.create1("loom.quant_enabled", {}, f32({}),
                     {eb.attr("start", b.getI64IntegerAttr(o.start))});
      off = eb.sub(eb.scalar(1.0, b.getF32Type()), e);
    }
    Value on = tb.mul(fq, e);
    Value keep = tb.mul(v, off);
    return tb.add(on, keep);
  };
  // w fake-quantized per output channel (`axis`) or per tensor.
  auto weightQuant = [&](TensorBuilder &tb, Block *block, Value w,
                         int64_t axis) {
    auto wt = cast<RankedTensorType>(w.getType());
    SmallVector<int64_t> channels;
    if (!o.perTensorWeights)
      channels.push_back(wt.getDimSize(axis));
    Value scale = tb.create1(
        "loom.weight_scale", {w}, f32(channels),
        {tb.attr("per_tensor", b.getBoolAttr(o.perTensorWeights)),
         tb.attr("axis", b.getI64IntegerAttr(axis))});
    Value zero = tb.splat(0.0, f32(channels));
    SmallVector<NamedAttribute> attrs = {
        tb.attr("qmin", b.getI64IntegerAttr(-127)),
        tb.attr("qmax", b.getI64IntegerAttr(127))};
    if (!o.perTensorWeights)
      attrs.push_back(tb.attr("axis", b.getI64IntegerAttr(axis)));
    Value fq = tb.create1("loom.fake_quant", {w, scale, zero}, wt, attrs);
    return blend(tb, block, w, fq);
  };
  for (const Site &site : sites(model)) {
    Operation *op = site.op;
    ParamOp param = site.weight;
    Value x = op->getOperand(0), w = op->getOperand(1);
    Block *block = op->getBlock();
    StringRef name = param.getName();
    auto [it, fresh] = observed.try_emplace(name, x);
    if (!fresh && (it->second != x || site.conv))
      return op->emitOpError("quantization-aware training keeps one "
                             "activation range per weight, and '")
             << name << "' multiplies two different activations";
    BatchNormOp bn = foldedBatchNorm(site);
    // The activation, right before its first quantized use.
    Value &xq = activations[{x, w}];
    if (!xq) {
      b.setInsertionPoint(op);
      TensorBuilder tb(b, op->getLoc());
      tagged(tb, op);
      Operation *obs = tb.create(
          "loom.observe", {x}, {f32({}), f32({})},
          {tb.attr("name", param.getNameAttr()),
           tb.attr("momentum", b.getF64FloatAttr(0.01)),
           tb.attr("symmetric", b.getBoolAttr(o.symmetricActivations)),
           tb.attr("freeze", b.getI64IntegerAttr(o.freeze))});
      Value fq = tb.create1(
          "loom.fake_quant", {x, obs->getResult(0), obs->getResult(1)},
          x.getType(),
          {tb.attr("qmin", b.getI64IntegerAttr(o.symmetricActivations ? -127 : 0)),
           tb.attr("qmax", b.getI64IntegerAttr(o.symmetricActivations ? 127 : 255))});
      xq = blend(tb, block, x, fq);
    }
    if (bn) {
      // Batch-norm folding (torch's ConvBn2d): the weight scaled by
      // gamma / sqrt(running_var + eps) is fake-quantized, the conv's output
      // divided by that factor again, and the batch norm follows with its
      // batch statistics. Gradients reach gamma through the factor.
      b.setInsertionPoint(op);
      TensorBuilder tb(b, op->getLoc());
      tagged(tb, op);
      auto gt = cast<RankedTensorType>(bn.getGamma().getType());
      int64_t out = gt.getDimSize(0);
      Value rstd = tb.create1("loom.running_rstd", {bn.getGamma()}, gt,
                              {tb.attr("eps", bn.getEpsAttr())});
      Value factor = tb.mul(bn.getGamma(), rstd);
      Value scaled = tb.mul(w, tb.reshape(factor, f32({out, 1, 1, 1})));
      op->setOperands({xq, weightQuant(tb, block, scaled, 0)});
      b.setInsertionPointAfter(op);
      TensorBuilder ta(b, op->getLoc());
      tagged(ta, op);
      Value y = ta.div(op->getResult(0), ta.reshape(factor, f32({1, out, 1, 1})));
      bn->setOperand(0, y);
      continue;
    }
    // The weight, right after its parameter.
    Value &wq = weights[w];
    if (!wq) {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointAfter(param);
      TensorBuilder tb(b, param.getLoc());
      tagged(tb, op);
      wq = weightQuant(tb, block, w, site.conv ? 0 : 1);
    }
    op->setOperands({xq, wq});
  }
  return success();
}

struct InsertFakeQuantPass : impl::InsertFakeQuantBase<InsertFakeQuantPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    // Inference artifacts of a QAT model run the INT8 kernels instead.
    auto mode = module->getAttrOfType<StringAttr>("loom.mode");
    if (mode && mode.getValue() == "infer")
      return;
    for (auto model : module.getOps<ModelOp>()) {
      auto cfg = model.getConfigAttr();
      auto q = cfg ? cfg.getAs<StringAttr>("quantize") : StringAttr();
      if (!q || q.getValue() != "qat")
        continue;
      Options o;
      if (auto v = cfg.getAs<IntegerAttr>("quant_start"))
        o.start = v.getInt();
      if (auto v = cfg.getAs<IntegerAttr>("quant_freeze"))
        o.freeze = v.getInt();
      if (auto v = cfg.getAs<StringAttr>("quant_weights"))
        o.perTensorWeights = v.getValue() == "per_tensor_symmetric";
      if (auto v = cfg.getAs<StringAttr>("quant_activations"))
        o.symmetricActivations = v.getValue() == "per_tensor_symmetric";
      if (sites(model).empty()) {
        model.emitOpError("quantize qat: no matmul or conv2d of an "
                          "activation by an f32 parameter to quantize");
        return signalPassFailure();
      }
      if (failed(convert(model, o)))
        return signalPassFailure();
    }
  }
};

} // namespace
} // namespace loom
