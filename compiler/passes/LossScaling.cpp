//===- LossScaling.cpp - loss scaling compiled into the training step -----===//
//
// SEMANTICS.md's loss scaling, as IR in the step rather than host logic:
//  - the backward pass starts from the scale instead of 1 (the autodiff seed
//    carries `loom.loss_seed`);
//  - the global norm of the scaled gradients, times 1/scale, is the reported
//    (unscaled) `grad_norm`, and its finiteness is the one overflow check —
//    the f64 sum of squares is non-finite exactly when a gradient is;
//  - 1/scale joins the clipping coefficient in every optimizer's
//    `grad_scale`, so unscaling costs no extra pass over the gradients;
//  - on overflow every update (parameters, moments, Adam's count, adaptive
//    clipping's history) is predicated off, and the scale follows Megatron's
//    DynamicGradScaler (`train.loss_scale_update`).
// Outputs: `loss_scale` (used this step), `skipped` (0/1), `next_loss_scale`
// and `loss_scale_underflow` (1: a backoff went below the minimum).
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"

namespace loom {
#define GEN_PASS_DEF_LOSSSCALING
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

double getF(DictionaryAttr d, StringRef k, double dflt) {
  auto a = d ? d.getAs<FloatAttr>(k) : nullptr;
  return a ? a.getValueAsDouble() : dflt;
}
int64_t getI(DictionaryAttr d, StringRef k, int64_t dflt) {
  auto a = d ? d.getAs<IntegerAttr>(k) : nullptr;
  return a ? a.getInt() : dflt;
}

LogicalResult scale(train::StepOp step) {
  DictionaryAttr cfg = step.getConfigAttr();
  auto mode = cfg ? cfg.getAs<StringAttr>("loss_scale") : StringAttr();
  if (!mode || mode.getValue() == "none" || step.getKind() != "train")
    return success();
  bool dynamic = mode.getValue() == "dynamic";
  Block &body = step.getBody().front();

  Operation *seed = nullptr;
  train::GlobalNormOp norm;
  for (Operation &op : body) {
    if (op.hasAttr("loom.loss_seed"))
      seed = &op;
    if (auto n = dyn_cast<train::GlobalNormOp>(op))
      norm = n;
  }
  if (!seed || !norm)
    return step.emitOpError("loom-loss-scaling needs the autodiff seed and "
                            "the gradient norm (run loom-autodiff and "
                            "loom-build-train-step first)");

  OpBuilder b = OpBuilder::atBlockBegin(&body);
  TensorBuilder tb(b, step.getLoc());
  auto f32 = RankedTensorType::get({}, b.getF32Type());
  auto i64 = RankedTensorType::get({}, b.getI64Type());
  auto str = [&](StringRef s) { return b.getStringAttr(s); };
  auto state = [&](StringRef name, Type t) {
    return tb.create1("train.state", {}, t, {tb.attr("name", str(name))});
  };
  double init = getF(cfg, "loss_scale_init", 32768.0);
  Value stored = state("loss_scale.scale", f32);
  Value good = state("loss_scale.good_steps", i64);
  Value hyst = state("loss_scale.hysteresis_used", i64);
  Value used = tb.create1("train.loss_scale_value", {stored}, f32,
                          {tb.attr("init", b.getF64FloatAttr(init))});

  // The backward pass starts from the scale.
  seed->getResult(0).replaceAllUsesWith(used);
  seed->erase();

  // Unscaled norm, overflow flag.
  b.setInsertionPointAfter(norm);
  Value inv = tb.div(tb.scalar(1.0, b.getF32Type()), used);
  Value unscaled = tb.mul(norm.getResult(), inv);
  norm.getResult().replaceAllUsesExcept(unscaled, unscaled.getDefiningOp());
  Value skip = tb.create1("train.nonfinite", {unscaled}, f32);

  // Predicate every update on the flag; unscale through grad_scale.
  for (Operation &op : llvm::make_early_inc_range(body)) {
    StringRef n = op.getName().getStringRef();
    if (n == "train.adamw" || n == "train.sgd") {
      unsigned gs = n == "train.adamw" ? 6 : 5;
      b.setInsertionPoint(&op);
      Value scaled = tb.mul(op.getOperand(gs), inv);
      op.setOperand(gs, scaled);
      op.insertOperands(gs + 1, {skip});
    } else if (n == "train.increment") {
      op.insertOperands(1, {skip});
    } else if (n == "train.adaptive_clip") {
      op.insertOperands(3, {skip});
    }
  }

  // The scale for the next step, and the step's outputs.
  b.setInsertionPointToEnd(&body);
  Operation *upd = tb.create(
      "train.loss_scale_update", {used, good, hyst, skip}, {f32, i64, i64, f32},
      {tb.attr("init", b.getF64FloatAttr(init)),
       tb.attr("growth", b.getF64FloatAttr(getF(cfg, "loss_scale_growth", 2.0))),
       tb.attr("backoff", b.getF64FloatAttr(getF(cfg, "loss_scale_backoff", 0.5))),
       tb.attr("interval", b.getI64IntegerAttr(getI(cfg, "loss_scale_interval", 1000))),
       tb.attr("hysteresis", b.getI64IntegerAttr(getI(cfg, "loss_scale_hysteresis", 2))),
       tb.attr("min", b.getF64FloatAttr(getF(cfg, "loss_scale_min", 1.0))),
       tb.attr("dynamic", b.getBoolAttr(dynamic))});
  auto update = [&](StringRef name, Value v) {
    tb.create("train.update", {v}, {}, {tb.attr("name", str(name))});
  };
  auto output = [&](StringRef name, Value v) {
    tb.create("train.output", {v}, {}, {tb.attr("name", str(name))});
  };
  update("loss_scale.scale", upd->getResult(0));
  update("loss_scale.good_steps", upd->getResult(1));
  update("loss_scale.hysteresis_used", upd->getResult(2));
  output("loss_scale", used);
  output("skipped", skip);
  output("next_loss_scale", upd->getResult(0));
  output("loss_scale_underflow", upd->getResult(3));
  return success();
}

struct LossScalingPass : impl::LossScalingBase<LossScalingPass> {
  void runOnOperation() override {
    for (auto step : getOperation().getOps<train::StepOp>())
      if (failed(scale(step)))
        return signalPassFailure();
  }
};

} // namespace
} // namespace loom
