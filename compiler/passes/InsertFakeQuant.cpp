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

/// The matmuls quantization-aware training quantizes: an f32 activation
/// (not itself a parameter) times a 2-D f32 parameter.
SmallVector<std::pair<MatmulOp, ParamOp>> sites(ModelOp model) {
  SmallVector<std::pair<MatmulOp, ParamOp>> out;
  model.walk([&](MatmulOp m) {
    auto param = m.getRhs().getDefiningOp<ParamOp>();
    auto w = cast<RankedTensorType>(m.getRhs().getType());
    auto x = cast<RankedTensorType>(m.getLhs().getType());
    if (param && !m.getLhs().getDefiningOp<ParamOp>() && x.getRank() >= 2 &&
        w.getRank() == 2 &&
        w.getElementType().isF32() && x.getElementType().isF32())
      out.push_back({m, param});
  });
  return out;
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
  for (auto [mm, param] : sites(model)) {
    Value x = mm.getLhs(), w = mm.getRhs();
    Block *block = mm->getBlock();
    StringRef name = param.getName();
    auto [it, fresh] = observed.try_emplace(name, x);
    if (!fresh && it->second != x)
      return mm.emitOpError("quantization-aware training keeps one activation "
                            "range per weight, and '")
             << name << "' multiplies two different activations";
    // The weight, right after its parameter.
    Value &wq = weights[w];
    if (!wq) {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointAfter(param);
      TensorBuilder tb(b, param.getLoc());
      tagged(tb, mm);
      auto wt = cast<RankedTensorType>(w.getType());
      SmallVector<int64_t> channels;
      if (!o.perTensorWeights)
        channels.push_back(wt.getDimSize(1));
      Value scale = tb.create1(
          "loom.weight_scale", {w}, f32(channels),
          {tb.attr("per_tensor", b.getBoolAttr(o.perTensorWeights))});
      Value zero = tb.splat(0.0, f32(channels));
      SmallVector<NamedAttribute> attrs = {
          tb.attr("qmin", b.getI64IntegerAttr(-127)),
          tb.attr("qmax", b.getI64IntegerAttr(127))};
      if (!o.perTensorWeights)
        attrs.push_back(tb.attr("axis", b.getI64IntegerAttr(1)));
      Value fq = tb.create1("loom.fake_quant", {w, scale, zero}, wt, attrs);
      wq = blend(tb, block, w, fq);
    }
    // The activation, right before its first quantized matmul.
    Value &xq = activations[{x, w}];
    if (!xq) {
      b.setInsertionPoint(mm);
      TensorBuilder tb(b, mm.getLoc());
      tagged(tb, mm);
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
    mm->setOperands({xq, wq});
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
        model.emitOpError("quantize qat: no matmul of an activation by a 2-D "
                          "f32 parameter to quantize");
        return signalPassFailure();
      }
      if (failed(convert(model, o)))
        return signalPassFailure();
    }
  }
};

} // namespace
} // namespace loom
