//===- Microbatch.cpp - the micro-batch loop with gradient accumulation ---===//
//
// With `pipeline microbatches = M` (M > 1), the train step's per-sample
// region — the ops that depend on an input and lead to a gradient or the
// loss, i.e. the forward and backward pass — is unrolled M times, one copy
// per micro-batch, in the order F0 B0 F1 B1 … (a pipeline schedule reorders
// them per stage later). Everything else (parameters, state, the norm and
// the optimizer) stays once.
//
// Micro-batch j of an input holds, on every data-parallel rank d, rows
// [j·b, (j+1)·b) of that rank's rows (b = batch / (dp·M); SEMANTICS.md):
// reshape to [dp, M, b, …], slice j of dimension 1, reshape back.
//
// Exactness (SEMANTICS.md: the loss is the mean over the global batch): a
// cross-entropy micro-batch is seeded with its count of counted rows, so its
// backward yields the gradient of the *sum* of its losses; the accumulated
// gradients and the loss are divided by the total count. Any other loss is a
// mean over equal micro-batches: seeds and the loss are scaled by 1/M.
//
//===----------------------------------------------------------------------===//
#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"
#include "dialects/Dist/Sharding.h"

#include "mlir/IR/IRMapping.h"

namespace loom {
#define GEN_PASS_DEF_MICROBATCH
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

RankedTensorType ttype(Value v) { return cast<RankedTensorType>(v.getType()); }

LogicalResult microbatch(Operation *step, int64_t m, int64_t dp) {
  Block &body = step->getRegion(0).front();
  // The loss, the seed and the gradients.
  Value loss, seed;
  SetVector<Value> grads;
  for (Operation &op : body) {
    StringRef n = op.getName().getStringRef();
    if (n == "train.output" &&
        cast<StringAttr>(op.getAttr("name")).getValue() == "loss")
      loss = op.getOperand(0);
    if (op.hasAttr("loom.loss_seed") || n == "train.loss_scale_value")
      seed = op.getResult(0);
    if (n == "train.adamw" || n == "train.sgd")
      grads.insert(op.getOperand(1));
    if (n == "train.global_norm")
      for (Value g : op.getOperands())
        grads.insert(g);
  }
  if (!loss || !seed)
    return step->emitOpError("loom-microbatch: the step has no loss or no "
                             "backward seed");

  // The per-sample region: depends on an input, and leads to a gradient or
  // the loss.
  DenseSet<Operation *> fromInput, toTargets;
  for (Operation &op : body) {
    bool dep = op.getName().getStringRef() == "train.input";
    for (Value v : op.getOperands())
      if (Operation *d = v.getDefiningOp(); d && fromInput.count(d))
        dep = true;
    if (dep)
      fromInput.insert(&op);
  }
  SmallVector<Value> work(grads.begin(), grads.end());
  work.push_back(loss);
  while (!work.empty()) {
    Operation *d = work.pop_back_val().getDefiningOp();
    if (!d || !fromInput.count(d) || !toTargets.insert(d).second)
      continue;
    for (Value v : d->getOperands())
      work.push_back(v);
  }
  SmallVector<Operation *> region;
  for (Operation &op : body)
    if (toTargets.count(&op) && op.getName().getStringRef() != "train.input")
      region.push_back(&op);
  if (region.empty())
    return success();

  // Per-micro-batch types: the batch split M ways, as a data-parallel split
  // of M ranks would give (the same sharding rules); values left as partial
  // sums are the gradients and the loss, which are summed across copies.
  sharding::Mesh split;
  split.size = {m, 1, 1};
  if (failed(sharding::propagateSharding(step, split)))
    return failure();
  DenseMap<Value, sharding::Sharding> of;
  for (Operation &op : body)
    if (auto res = op.getAttrOfType<ArrayAttr>(sharding::kResultsAttr))
      for (auto [r, a] : llvm::zip(op.getResults(), res))
        of[r] = *sharding::Sharding::parse(cast<StringAttr>(a).getValue());
  for (Operation *op : region) {
    auto req = op->getAttrOfType<ArrayAttr>(sharding::kOperandsAttr);
    for (auto [i, v] : llvm::enumerate(op->getOperands())) {
      if (!of.count(v) || !req || i >= req.size())
        continue;
      auto want = *sharding::Sharding::parse(cast<StringAttr>(req[i]).getValue());
      if (want.dims != of[v].dims || (of[v].partial & ~want.partial))
        return op->emitOpError("needs its operand #")
               << i << " over the whole batch (" << want.str() << ", has "
               << of[v].str() << "), so it cannot run per micro-batch; use "
                  "microbatches = 1";
    }
  }
  for (Operation &op : body) {
    op.removeAttr(sharding::kResultsAttr);
    op.removeAttr(sharding::kOperandsAttr);
    op.removeAttr(sharding::kReasonAttr);
  }

  Operation *lossOp = loss.getDefiningOp();
  bool crossEntropy = lossOp && lossOp->getName().getStringRef() ==
                                    "train.cross_entropy";
  // The copies go after the region's last op: everything they read from
  // outside the region (parameters, the seed) is defined by then.
  OpBuilder b(step->getContext());
  b.setInsertionPointAfter(region.back());
  TensorBuilder tb(b, step->getLoc());
  auto f32 = RankedTensorType::get({}, b.getF32Type());

  // Micro-batch views of the inputs.
  SmallVector<Operation *> inputs;
  for (Operation &op : body)
    if (op.getName().getStringRef() == "train.input" && toTargets.size())
      inputs.push_back(&op);
  auto sliceInput = [&](Value x, int64_t j) -> Value {
    auto t = ttype(x);
    int64_t batch = t.getDimSize(0), rows = batch / (dp * m);
    SmallVector<int64_t> split = {dp, m, rows};
    SmallVector<int64_t> one = {dp, 1, rows};
    for (int64_t i = 1; i < t.getRank(); ++i) {
      split.push_back(t.getDimSize(i));
      one.push_back(t.getDimSize(i));
    }
    Value r = tb.reshape(x, RankedTensorType::get(split, t.getElementType()));
    Value s = tb.create1("loom.slice", {r}, RankedTensorType::get(one, t.getElementType()),
                         {tb.attr("dim", b.getI64IntegerAttr(1)),
                          tb.attr("start", b.getI64IntegerAttr(j)),
                          tb.attr("end", b.getI64IntegerAttr(j + 1))});
    SmallVector<int64_t> back(t.getShape());
    back[0] = dp * rows;
    return tb.reshape(s, RankedTensorType::get(back, t.getElementType()));
  };

  SmallVector<Value> losses, counts;
  SmallVector<DenseMap<Value, Value>> gradParts(m);
  for (int64_t j = 0; j < m; ++j) {
    IRMapping map;
    auto tag = [&](Value v) {
      // The ops forming this micro-batch's view belong to its copy.
      for (Operation *o = v.getDefiningOp(); o && !o->hasAttr("dist.microbatch");
           o = o->getNumOperands() ? o->getOperand(0).getDefiningOp() : nullptr) {
        if (o->getName().getStringRef() == "train.input")
          break;
        o->setAttr("dist.microbatch", b.getI64IntegerAttr(j));
      }
      return v;
    };
    for (Operation *in : inputs)
      map.map(in->getResult(0), tag(sliceInput(in->getResult(0), j)));
    // The seed of this micro-batch: its count (cross-entropy) or 1/M. The
    // count is known after its forward pass, so the seed is formed there.
    Value count;
    for (Operation *op : region) {
      bool backward = false;
      for (Value v : op->getOperands())
        backward |= v == seed;
      if (backward && !map.contains(seed)) {
        Value s = crossEntropy
                      ? tb.mul(seed, count)
                      : tb.mul(seed, tb.scalar(1.0 / double(m), b.getF32Type()));
        s.getDefiningOp()->setAttr("dist.microbatch", b.getI64IntegerAttr(j));
        map.map(seed, s);
      }
      Operation *c = b.clone(*op, map);
      c->setAttr("dist.microbatch", b.getI64IntegerAttr(j));
      for (auto [orig, copy] : llvm::zip(op->getResults(), c->getResults()))
        if (auto t = dyn_cast<RankedTensorType>(orig.getType()); t && of.count(orig))
          copy.setType(sharding::localType(t, of[orig], split));
      if (op == lossOp && crossEntropy) {
        Value stats = c->getResult(2);
        Value first = tb.create1("loom.slice", {stats},
                                 RankedTensorType::get({1}, b.getF32Type()),
                                 {tb.attr("dim", b.getI64IntegerAttr(0)),
                                  tb.attr("start", b.getI64IntegerAttr(0)),
                                  tb.attr("end", b.getI64IntegerAttr(1))});
        count = tag(tb.reshape(first, f32));
        counts.push_back(count);
      }
    }
    losses.push_back(map.lookup(loss));
    for (Value g : grads)
      gradParts[j][g] = map.lookupOrDefault(g);
  }

  // Combine: sums over micro-batches, then the mean.
  Value scale; // multiplies the summed gradients and losses
  Value lossTotal;
  if (crossEntropy) {
    Value total = counts[0];
    for (int64_t j = 1; j < m; ++j)
      total = tb.add(total, counts[j]);
    scale = tb.create1("train.loss_weight",
                       {tb.scalar(1.0, b.getF32Type()), total}, f32);
    for (int64_t j = 0; j < m; ++j) {
      Value part = tb.mul(losses[j], counts[j]);
      lossTotal = lossTotal ? tb.add(lossTotal, part) : part;
    }
    lossTotal = tb.mul(lossTotal, scale);
  } else {
    for (int64_t j = 0; j < m; ++j)
      lossTotal = lossTotal ? tb.add(lossTotal, losses[j]) : losses[j];
    lossTotal = tb.mul(lossTotal, tb.scalar(1.0 / double(m), b.getF32Type()));
  }
  DenseMap<Value, Value> accumulated;
  for (Value g : grads) {
    Value sum = gradParts[0][g];
    for (int64_t j = 1; j < m; ++j)
      sum = tb.add(sum, gradParts[j][g]);
    if (crossEntropy)
      sum = tb.mul(sum, scale);
    accumulated[g] = sum;
  }
  // Uses outside the region now read the combined values.
  DenseSet<Operation *> inRegion(region.begin(), region.end());
  auto redirect = [&](Value from, Value to) {
    from.replaceUsesWithIf(to, [&](OpOperand &use) {
      return !inRegion.count(use.getOwner());
    });
  };
  redirect(loss, lossTotal);
  for (Value g : grads)
    redirect(g, accumulated[g]);
  // Readers that sat between the region's ops (the loss output) move after
  // the combination.
  Operation *end = &*std::prev(b.getInsertionPoint());
  SmallVector<Operation *> early;
  SmallVector<Value> combined = {lossTotal};
  for (auto &entry : accumulated)
    combined.push_back(entry.second);
  for (Value v : combined)
    for (Operation *user : v.getUsers())
      if (user->getBlock() == end->getBlock() && user->isBeforeInBlock(end) &&
          !llvm::is_contained(early, user))
        early.push_back(user);
  llvm::sort(early, [](Operation *x, Operation *y) { return x->isBeforeInBlock(y); });
  for (Operation *op : llvm::reverse(early))
    op->moveAfter(end);
  for (Operation *op : llvm::reverse(region)) {
    op->dropAllUses();
    op->erase();
  }
  return success();
}

struct MicrobatchPass : impl::MicrobatchBase<MicrobatchPass> {
  void runOnOperation() override {
    for (Operation &op : getOperation().getBody()->getOperations()) {
      if (op.getName().getStringRef() != "train.step" ||
          cast<StringAttr>(op.getAttr("kind")).getValue() != "train")
        continue;
      auto cfg = op.getAttrOfType<DictionaryAttr>("config");
      int64_t m = 1, dp = 1;
      if (cfg) {
        if (auto a = cfg.getAs<IntegerAttr>("microbatches"))
          m = a.getInt();
        if (auto mesh = cfg.getAs<DenseI64ArrayAttr>("mesh"))
          dp = mesh[0];
      }
      if (m <= 1)
        continue;
      for (Operation &in : op.getRegion(0).front())
        if (in.getName().getStringRef() == "train.input") {
          auto t = ttype(in.getResult(0));
          if (t.getRank() == 0 || t.getDimSize(0) % (dp * m) != 0) {
            in.emitOpError("the batch (dimension 0, size ")
                << (t.getRank() ? t.getDimSize(0) : 0)
                << ") is not divisible by dp × microbatches = " << dp * m;
            return signalPassFailure();
          }
        }
      if (failed(microbatch(&op, m, dp)))
        return signalPassFailure();
    }
  }
};

} // namespace
} // namespace loom
