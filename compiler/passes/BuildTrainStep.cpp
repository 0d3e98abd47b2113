//===- BuildTrainStep.cpp - gradients to clipping and optimizer updates ---===//
//
// Turns the train.gradient ops of a training step into what the train
// configuration asks for, following SEMANTICS.md: the global gradient norm
// (output `grad_norm`), global-norm clipping as a scale folded into the
// optimizer, the step's learning rate (output `lr`), and one AdamW or SGD
// update per parameter whose state lives in named train.state tensors.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"

namespace loom {
#define GEN_PASS_DEF_BUILDTRAINSTEP
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

/// Reads a config entry with a default.
struct Config {
  DictionaryAttr dict;
  double f(StringRef k, double d) const {
    if (auto a = dict ? dict.getAs<FloatAttr>(k) : nullptr)
      return a.getValueAsDouble();
    return d;
  }
  int64_t i(StringRef k, int64_t d) const {
    if (auto a = dict ? dict.getAs<IntegerAttr>(k) : nullptr)
      return a.getInt();
    return d;
  }
  bool b(StringRef k, bool d) const {
    if (auto a = dict ? dict.getAs<BoolAttr>(k) : nullptr)
      return a.getValue();
    return d;
  }
  std::string s(StringRef k, StringRef d) const {
    if (auto a = dict ? dict.getAs<StringAttr>(k) : nullptr)
      return a.str();
    return d.str();
  }
};

LogicalResult build(train::StepOp step) {
  Config cfg{step.getConfigAttr()};
  Block &body = step.getBody().front();
  SmallVector<train::GradientOp> grads(body.getOps<train::GradientOp>());
  llvm::StringMap<train::ParamOp> params;
  for (auto p : body.getOps<train::ParamOp>())
    params[p.getName()] = p;

  std::string clip = cfg.s("clip", "none");

  OpBuilder b = OpBuilder::atBlockEnd(&body);
  TensorBuilder tb(b, step.getLoc());
  auto f32 = RankedTensorType::get({}, b.getF32Type());
  auto i64 = RankedTensorType::get({}, b.getI64Type());
  auto str = [&](StringRef s) { return b.getStringAttr(s); };
  auto output = [&](StringRef name, Value v) {
    tb.create("train.output", {v}, {}, {tb.attr("name", str(name))});
  };

  SmallVector<Value> gradValues;
  for (auto g : grads)
    gradValues.push_back(g.getValue());
  Value norm = tb.create1("train.global_norm", gradValues, f32);
  output("grad_norm", norm);
  Value scale;
  if (clip == "global_norm") {
    scale = tb.create1("train.clip_coef", {norm}, f32,
                       {tb.attr("max", b.getF64FloatAttr(cfg.f("clip_max", 1.0)))});
  } else if (clip == "adaptive") {
    // The norm history is model state: checkpointed with the moments.
    int64_t window = cfg.i("clip_window", 100);
    auto histType = RankedTensorType::get({window}, b.getF32Type());
    Value hist = tb.create1("train.state", {}, histType,
                            {tb.attr("name", str("clip.history"))});
    Value count = tb.create1("train.state", {}, i64,
                             {tb.attr("name", str("clip.count"))});
    Operation *ac = tb.create(
        "train.adaptive_clip", {norm, hist, count}, {f32, histType, i64},
        {tb.attr("window", b.getI64IntegerAttr(window)),
         tb.attr("sigmas", b.getF64FloatAttr(cfg.f("clip_sigmas", 3.0))),
         tb.attr("max", b.getF64FloatAttr(cfg.f("clip_max", 0.0)))});
    tb.create("train.update", {ac->getResult(1)}, {},
              {tb.attr("name", str("clip.history"))});
    tb.create("train.update", {ac->getResult(2)}, {},
              {tb.attr("name", str("clip.count"))});
    scale = ac->getResult(0);
  } else {
    scale = tb.scalar(1.0, b.getF32Type());
  }
  Value lr = tb.create1(
      "train.learning_rate", {}, f32,
      {tb.attr("lr", b.getF64FloatAttr(cfg.f("lr", 1e-3))),
       tb.attr("warmup", b.getI64IntegerAttr(cfg.i("warmup", 0))),
       tb.attr("decay", str(cfg.s("decay", "none"))),
       tb.attr("total", b.getI64IntegerAttr(cfg.i("decay_total", 0))),
       tb.attr("min", b.getF64FloatAttr(cfg.f("decay_min", 0.0)))});
  output("lr", lr);

  // Adam's bias-correction count (and SGD's first-step flag) advance only on
  // applied steps, so they are optimizer state, not the runtime's step.
  Value count = tb.create1("train.state", {}, i64,
                           {tb.attr("name", str("optimizer.step"))});
  Value next = tb.create1("train.increment", {count}, i64);
  tb.create("train.update", {next}, {},
            {tb.attr("name", str("optimizer.step"))});

  std::string opt = cfg.s("optimizer", "adamw");
  double wd = cfg.f("weight_decay", opt == "adamw" ? 0.01 : 0.0);
  for (auto g : grads) {
    train::ParamOp p = params.lookup(g.getName());
    if (!p)
      return g.emitOpError("gradient of unknown parameter '")
             << g.getName() << "'";
    Value pv = p.getResult();
    auto state = [&](StringRef suffix) {
      return tb.create1("train.state", {}, pv.getType(),
                        {tb.attr("name", str((g.getName() + suffix).str()))});
    };
    // Decoupled decay applies to matrices only (SEMANTICS.md).
    double decay = p.getDecay() ? wd : 0.0;
    if (opt == "adamw") {
      Value m = state(".exp_avg"), v = state(".exp_avg_sq");
      Operation *u = tb.create(
          "train.adamw", {pv, g.getValue(), m, v, next, lr, scale},
          {pv.getType(), pv.getType(), pv.getType()},
          {tb.attr("beta1", b.getF64FloatAttr(cfg.f("beta1", 0.9))),
           tb.attr("beta2", b.getF64FloatAttr(cfg.f("beta2", 0.999))),
           tb.attr("eps", b.getF64FloatAttr(cfg.f("eps", 1e-8))),
           tb.attr("weight_decay", b.getF64FloatAttr(decay))});
      tb.create("train.update", {u->getResult(0)}, {},
                {tb.attr("name", p.getNameAttr())});
      tb.create("train.update", {u->getResult(1)}, {},
                {tb.attr("name", str((g.getName() + ".exp_avg").str()))});
      tb.create("train.update", {u->getResult(2)}, {},
                {tb.attr("name", str((g.getName() + ".exp_avg_sq").str()))});
    } else {
      double momentum = cfg.f("momentum", 0.0);
      Value buf = momentum > 0 ? state(".momentum_buffer") : g.getValue();
      Operation *u = tb.create(
          "train.sgd", {pv, g.getValue(), buf, next, lr, scale},
          {pv.getType(), pv.getType()},
          {tb.attr("momentum", b.getF64FloatAttr(momentum)),
           tb.attr("nesterov", b.getBoolAttr(cfg.b("nesterov", false))),
           tb.attr("weight_decay", b.getF64FloatAttr(decay))});
      tb.create("train.update", {u->getResult(0)}, {},
                {tb.attr("name", p.getNameAttr())});
      if (momentum > 0)
        tb.create("train.update", {u->getResult(1)}, {},
                  {tb.attr("name",
                           str((g.getName() + ".momentum_buffer").str()))});
    }
  }
  for (auto g : grads)
    g.erase();
  return success();
}

struct BuildTrainStepPass : impl::BuildTrainStepBase<BuildTrainStepPass> {
  void runOnOperation() override {
    for (auto step : getOperation().getOps<train::StepOp>())
      if (step.getKind() == "train" && failed(build(step)))
        return signalPassFailure();
  }
};

} // namespace
} // namespace loom
