//===- PropagateSharding.cpp - a sharding for every value of the step -----===//
//
// One sweep in program order over each train.step: sources get theirs from
// the mesh (inputs split over dp on the batch), the `shard(...)` annotations
// (parameters) and their parameter (optimizer state, split further over dp
// by ZeRO-1); every other op applies its rule (Sharding.cpp) to the
// shardings its operands already have. The step holds the forward and the
// backward pass, so the sweep covers both; a rule may also look at an op's
// consumers (the embedding gradient takes its vocabulary split from its
// parameter's update). Where an op needs an operand in another sharding the
// rule says which, and loom-partition inserts the collective.
//
// Written on each op: `dist.sharding` (one string per result),
// `dist.operand_sharding` (what the op needs of each operand) and
// `dist.reason`.
//
//===----------------------------------------------------------------------===//
#include "compiler/passes/Passes.h"
#include "dialects/Dist/Sharding.h"

namespace loom {
#define GEN_PASS_DEF_PROPAGATESHARDING
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;
using namespace loom::sharding;

namespace loom {
namespace sharding {

Mesh meshOfStep(Operation *step) {
  Mesh mesh;
  if (auto cfg = step->getAttrOfType<DictionaryAttr>("config")) {
    if (auto m = cfg.getAs<DenseI64ArrayAttr>("mesh"))
      for (size_t i = 0; i < 3 && i < m.size(); ++i)
        mesh.size[i] = m[i];
    if (auto z = cfg.getAs<IntegerAttr>("zero"))
      mesh.zero = z.getInt();
  }
  return mesh;
}

LogicalResult propagateSharding(Operation *step) {
  return propagateSharding(step, meshOfStep(step));
}

LogicalResult propagateSharding(Operation *step, const Mesh &mesh) {
  Block &body = step->getRegion(0).front();
  MLIRContext *ctx = step->getContext();
  Builder b(ctx);

  // Stored shardings: parameters from their annotations, optimizer state from
  // its parameter (`<param>.<slot>` of the same shape).
  std::map<std::string, Sharding> stored;
  std::map<std::string, RankedTensorType> paramTypes;
  for (Operation &op : body)
    if (op.getName().getStringRef() == "train.param") {
      auto s = annotated(&op, mesh);
      if (failed(s))
        return failure();
      auto name = cast<StringAttr>(op.getAttr("name")).str();
      stored[name] = *s;
      paramTypes[name] = cast<RankedTensorType>(op.getResult(0).getType());
    }
  for (Operation &op : body)
    if (op.getName().getStringRef() == "train.state") {
      auto name = cast<StringAttr>(op.getAttr("name")).str();
      auto t = cast<RankedTensorType>(op.getResult(0).getType());
      auto dot = name.rfind('.');
      Sharding s = Sharding::replicated(t.getRank());
      if (dot != std::string::npos) {
        auto p = name.substr(0, dot);
        auto it = stored.find(p);
        if (it != stored.end() && paramTypes[p] == t) {
          s = it->second;
          if (auto z = zeroDim(t, s, mesh))
            s.dims[*z] = kDp;
        }
      }
      stored[name] = s;
    }

  DenseMap<Value, Sharding> of;
  RuleContext rc;
  rc.mesh = mesh;
  rc.stored = [&](StringRef name) -> std::optional<Sharding> {
    auto it = stored.find(name.str());
    if (it == stored.end())
      return std::nullopt;
    return it->second;
  };
  rc.of = [&](Value v) {
    auto it = of.find(v);
    if (it != of.end())
      return it->second;
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return Sharding::replicated(t ? t.getRank() : 0);
  };
  auto strings = [&](ArrayRef<Sharding> ss) {
    SmallVector<Attribute> a;
    for (const Sharding &s : ss)
      a.push_back(b.getStringAttr(s.str()));
    return b.getArrayAttr(a);
  };
  for (Operation &op : body) {
    SmallVector<Sharding> in;
    for (Value v : op.getOperands())
      in.push_back(rc.of(v));
    auto rule = ruleFor(&op, in, rc);
    if (failed(rule))
      return failure();
    for (auto [r, s] : llvm::zip(op.getResults(), rule->results))
      of[r] = s;
    op.setAttr(kResultsAttr, strings(rule->results));
    op.setAttr(kOperandsAttr, strings(rule->operands));
    op.setAttr(kReasonAttr, b.getStringAttr(rule->reason));
  }
  return success();
}

} // namespace sharding

namespace {
struct PropagateShardingPass
    : impl::PropagateShardingBase<PropagateShardingPass> {
  void runOnOperation() override {
    for (Operation &op : getOperation().getBody()->getOperations())
      if (op.getName().getStringRef() == "train.step")
        if (failed(propagateSharding(&op)))
          return signalPassFailure();
  }
};
} // namespace

} // namespace loom
