//===- MLIRGen.cpp - the elaborated model as loom dialect IR --------------===//
//
// Each Graph node becomes the loom op of the same name, created generically
// from its attributes: sema already checked every shape rule with the same
// ShapeRules the op verifiers use, so this is a transcription.
//
//===----------------------------------------------------------------------===//

#include "frontend/MLIRGen.h"
#include "frontend/Graph.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Verifier.h"

#include <map>

using namespace mlir;

namespace loom::frontend {
namespace {

Type elementType(MLIRContext &ctx, shape::DType t) {
  switch (t) {
  case shape::DType::F32:
    return Float32Type::get(&ctx);
  case shape::DType::F16:
    return Float16Type::get(&ctx);
  case shape::DType::BF16:
    return BFloat16Type::get(&ctx);
  case shape::DType::F64:
    return Float64Type::get(&ctx);
  case shape::DType::I1:
    return IntegerType::get(&ctx, 1);
  case shape::DType::I8:
    return IntegerType::get(&ctx, 8);
  case shape::DType::I32:
    return IntegerType::get(&ctx, 32);
  case shape::DType::I64:
    return IntegerType::get(&ctx, 64);
  }
  return Float32Type::get(&ctx);
}

class Generator {
public:
  Generator(MLIRContext &ctx, const Graph &g) : ctx_(ctx), g_(g), b_(&ctx) {}

  OwningOpRef<ModuleOp> run() {
    Location loc = locOf(g_.loc);
    OwningOpRef<ModuleOp> module = ModuleOp::create(loc);
    b_.setInsertionPointToEnd(module->getBody());
    OperationState state(loc, "loom.model");
    state.addAttribute("sym_name", b_.getStringAttr(g_.modelName));
    state.addAttribute("config", config());
    state.addRegion()->push_back(new Block());
    Operation *model = b_.create(state);
    b_.setInsertionPointToEnd(&model->getRegion(0).front());
    if (!emitRegion(g_.body))
      return nullptr;
    if (failed(verify(*module)))
      return nullptr;
    return module;
  }

private:
  Location locOf(SourceLoc l) {
    if (!l.valid())
      return UnknownLoc::get(&ctx_);
    return FileLineColLoc::get(&ctx_, l.file->name(), l.line(), l.col());
  }

  RankedTensorType typeOf(int id) {
    const shape::TensorType &t = g_.values[id];
    return RankedTensorType::get(t.dims, elementType(ctx_, t.dtype));
  }

  Attribute attr(const AttrValue &v) {
    return std::visit(
        [&](const auto &x) -> Attribute {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, int64_t>)
            return b_.getI64IntegerAttr(x);
          else if constexpr (std::is_same_v<T, double>)
            return b_.getF64FloatAttr(x);
          else if constexpr (std::is_same_v<T, bool>)
            return b_.getBoolAttr(x);
          else if constexpr (std::is_same_v<T, std::string>)
            return b_.getStringAttr(x);
          else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
            return b_.getDenseI64ArrayAttr(x);
          else if constexpr (std::is_same_v<T, std::vector<double>>)
            return b_.getDenseF64ArrayAttr(x);
          else
            return b_.getStrArrayAttr(
                SmallVector<StringRef>(x.begin(), x.end()));
        },
        v);
  }

  bool emitRegion(const loom::frontend::Region &r) {
    for (const Node &n : r.nodes) {
      Location loc = locOf(n.loc);
      OperationState state(loc, "loom." + n.op);
      if (!state.name.isRegistered()) {
        emitError(loc) << "internal error: no op '" << state.name
                       << "' in the loom dialect";
        return false;
      }
      for (int id : n.operands)
        state.addOperands(values_.at(id));
      for (int id : n.results)
        state.addTypes(typeOf(id));
      if (n.op == "constant") {
        // A scalar constant takes the element type of its result.
        RankedTensorType t = typeOf(n.results[0]);
        double v = std::get<double>(n.attrs[0].second);
        Attribute value;
        if (auto ft = dyn_cast<FloatType>(t.getElementType()))
          value = DenseElementsAttr::get(t, FloatAttr::get(ft, v));
        else
          value = DenseElementsAttr::get(
              t, IntegerAttr::get(t.getElementType(), static_cast<int64_t>(v)));
        state.addAttribute("value", value);
      } else {
        for (const auto &[name, v] : n.attrs)
          state.addAttribute(name, attr(v));
      }
      if (n.region) {
        mlir::Region *region = state.addRegion();
        Block *block = new Block();
        region->push_back(block);
        for (int id : n.region->args)
          values_[id] = block->addArgument(typeOf(id), loc);
        OpBuilder::InsertionGuard guard(b_);
        b_.setInsertionPointToEnd(block);
        if (!emitRegion(*n.region))
          return false;
        OperationState yield(loc, "loom.yield");
        for (int id : n.region->yields)
          yield.addOperands(values_.at(id));
        b_.create(yield);
      }
      Operation *op = b_.create(state);
      for (size_t i = 0; i < n.results.size(); ++i)
        values_[n.results[i]] = op->getResult(i);
    }
    return true;
  }

  DictionaryAttr config() {
    const TrainConfig &c = g_.config;
    NamedAttrList a;
    auto i64 = [&](const char *n, int64_t v) {
      a.append(n, b_.getI64IntegerAttr(v));
    };
    auto f64 = [&](const char *n, double v) { a.append(n, b_.getF64FloatAttr(v)); };
    auto str = [&](const char *n, const std::string &v) {
      a.append(n, b_.getStringAttr(v));
    };
    i64("steps", c.steps);
    a.append("mesh", b_.getDenseI64ArrayAttr({c.dp, c.tp, c.pp}));
    i64("zero", c.zero);
    i64("microbatches", c.microbatches);
    str("schedule", c.schedule);
    i64("virtual_stages", c.virtualStages);
    if (!c.stages.empty())
      a.append("stages", b_.getDenseI64ArrayAttr(c.stages));
    str("recompute", c.recompute);
    if (c.recompute == "every")
      i64("recompute_every", c.recomputeEvery);
    if (c.recompute == "budget")
      i64("recompute_budget", c.recomputeBudget);
    str("precision", c.precision);
    str("loss_scale", c.lossScale);
    if (c.lossScale != "none")
      f64("loss_scale_init", c.lossScaleInit);
    if (c.lossScale == "dynamic") {
      f64("loss_scale_growth", c.lossScaleGrowth);
      f64("loss_scale_backoff", c.lossScaleBackoff);
      i64("loss_scale_interval", c.lossScaleInterval);
      i64("loss_scale_hysteresis", c.lossScaleHysteresis);
      f64("loss_scale_min", c.lossScaleMin);
    }
    str("clip", c.clip);
    if (c.clipMax > 0)
      f64("clip_max", c.clipMax);
    if (c.clip == "adaptive") {
      i64("clip_window", c.clipWindow);
      f64("clip_sigmas", c.clipSigmas);
    }
    str("quantize", c.quantize);
    if (c.quantize != "none") {
      str("quant_weights", c.quantWeights);
      str("quant_activations", c.quantActivations);
      i64("quant_start", c.quantStart);
      i64("quant_freeze", c.quantFreeze);
      if (c.quantize == "ptq") {
        str("quant_observer", c.quantObserver);
        f64("quant_percentile", c.quantPercentile);
      }
    }
    str("optimizer", c.optimizer);
    f64("lr", c.lr);
    if (c.optimizer == "adamw") {
      f64("beta1", c.beta1);
      f64("beta2", c.beta2);
      f64("eps", c.eps);
    } else {
      f64("momentum", c.momentum);
      a.append("nesterov", b_.getBoolAttr(c.nesterov));
    }
    f64("weight_decay", c.weightDecay);
    i64("warmup", c.warmup);
    str("decay", c.decay);
    if (c.decay == "cosine") {
      i64("decay_total", c.decayTotal);
      f64("decay_min", c.decayMin);
    }
    if (!c.data.empty())
      str("data", c.data);
    return a.getDictionary(&ctx_);
  }

  MLIRContext &ctx_;
  const Graph &g_;
  OpBuilder b_;
  std::map<int, Value> values_;
};

} // namespace

OwningOpRef<ModuleOp> buildLoomModule(MLIRContext &context,
                                      const Graph &graph) {
  return Generator(context, graph).run();
}

} // namespace loom::frontend
