//===- SplitPipeline.cpp - pipeline stages and their schedules ------------===//
//
// loom-split-pipeline cuts each partitioned program into `pp` stage
// programs at layer boundaries:
//  - layers (the `loom.layer` tags, in forward order) are assigned to stages
//    as contiguous runs, pinned by `pipeline stages = [cuts]` or balanced by
//    a cost model: the GEMM and attention FLOPs of the layer's ops (forward
//    and backward, every micro-batch) plus its parameter and optimizer bytes
//    at one FLOP per byte; the ops before the first layer (the embedding)
//    count for stage 0 and those after the last (the head and the loss) for
//    the last stage;
//  - an untagged op follows its operands (the latest stage among them), or,
//    reading only sources, its first reader; parameters and their optimizer
//    state live on the one stage that uses them;
//  - ops every stage needs (the learning rate, the step counter, the loss
//    scale, outputs) are copied into every stage; a value used on another
//    stage than its own crosses with `dist.send`/`dist.recv` along pp, right
//    after it is computed and right before its first use (tag = micro-batch
//    · 65536 + slot); a global norm sums the squares of each stage's
//    gradients and all-reduces them over pp.
// loom-schedule-pipeline orders each stage program's micro-batches: GPipe
// (every forward, then every backward) or 1F1B (stage s runs pp − 1 − s
// forwards, then alternates one forward and one backward, then drains), so
// a stage holds at most pp − s micro-batches' activations under 1F1B.
//
//===----------------------------------------------------------------------===//
#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"

#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/MapVector.h"

namespace loom {
#define GEN_PASS_DEF_SPLITPIPELINE
#define GEN_PASS_DEF_SCHEDULEPIPELINE
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

constexpr int kEvery = -1; ///< an op copied into every stage

RankedTensorType ttype(Value v) { return cast<RankedTensorType>(v.getType()); }

bool isSource(Operation *op) {
  StringRef n = op->getName().getStringRef();
  return n == "train.param" || n == "train.state" || n == "train.input" ||
         n == "loom.constant" || n == "arith.constant" ||
         n == "train.learning_rate";
}

/// GEMM/attention FLOPs of one op (the report's count).
double flopsOf(Operation *op) {
  StringRef n = op->getName().getStringRef();
  auto shapeOf = [](Value v) { return ttype(v).getShape(); };
  if (n == "loom.matmul" || n == "train.gemm") {
    auto a = shapeOf(op->getOperand(0));
    auto ta = op->getAttrOfType<BoolAttr>("transpose_a");
    double k = double(ta && ta.getValue() ? a[a.size() - 2] : a.back());
    return 2.0 * double(ttype(op->getResult(0)).getNumElements()) * k;
  }
  if (n.contains("attention")) {
    auto q = shapeOf(op->getOperand(0)), k = shapeOf(op->getOperand(1));
    double f = double(q[0] * q[1] * q[2] * k[2] * q[3]);
    return n.ends_with("_grad") ? 8 * f : 4 * f;
  }
  return 0;
}

struct Split {
  int stages = 1;
  DenseMap<Operation *, int> stageOf;
  std::vector<std::string> layers; ///< in forward order
  std::vector<int> layerStage;
  std::vector<double> stageCost;
};

/// Contiguous runs of `cost` over `parts` parts minimising the largest sum
/// (plus `head` on the first, `tail` on the last).
std::vector<int> balance(const std::vector<double> &cost, int parts,
                         double head, double tail) {
  int n = static_cast<int>(cost.size());
  std::vector<double> prefix(n + 1, 0);
  for (int i = 0; i < n; ++i)
    prefix[i + 1] = prefix[i] + cost[i];
  const double inf = 1e300;
  // best[p][i]: the smallest max over the first i layers in p parts.
  std::vector<std::vector<double>> best(parts + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<int>> cut(parts + 1, std::vector<int>(n + 1, 0));
  best[0][0] = 0;
  for (int p = 1; p <= parts; ++p)
    for (int i = p; i <= n; ++i)
      for (int k = p - 1; k < i; ++k) {
        double part = prefix[i] - prefix[k];
        if (p == 1)
          part += head;
        if (p == parts && i == n)
          part += tail;
        double v = std::max(best[p - 1][k], part);
        if (v < best[p][i]) {
          best[p][i] = v;
          cut[p][i] = k;
        }
      }
  std::vector<int> stageOfLayer(n);
  for (int p = parts, i = n; p >= 1; --p) {
    int k = cut[p][i];
    for (int l = k; l < i; ++l)
      stageOfLayer[l] = p - 1;
    i = k;
  }
  return stageOfLayer;
}

FailureOr<Split> assignStages(Operation *program, int pp,
                              ArrayRef<int64_t> pinned) {
  Block &body = program->getRegion(0).front();
  Split split;
  split.stages = pp;
  // Layers in forward order, and their costs.
  llvm::MapVector<StringRef, double> layerCost;
  double before = 0, after = 0;
  bool seenLayer = false;
  for (Operation &op : body) {
    auto tag = op.getAttrOfType<StringAttr>("loom.layer");
    double c = flopsOf(&op);
    if (tag) {
      layerCost[tag.getValue()] += c;
      seenLayer = true;
    } else if (!seenLayer) {
      before += c;
    } else {
      after += c;
    }
  }
  for (Operation &op : body)
    if (auto tag = op.getAttrOfType<StringAttr>("loom.layer"))
      if (op.getName().getStringRef() == "train.param")
        layerCost[tag.getValue()] += 3.0 * 4.0 * ttype(op.getResult(0)).getNumElements();
  int layers = static_cast<int>(layerCost.size());
  if (layers < pp)
    return program->emitOpError("pp = ")
           << pp << " needs at least " << pp << " layers to cut at, the model has "
           << layers << " (pipeline stages are cut at layer boundaries)";
  std::vector<double> cost;
  for (auto &[name, c] : layerCost) {
    split.layers.push_back(name.str());
    cost.push_back(c);
  }
  if (!pinned.empty()) {
    split.layerStage.assign(layers, 0);
    int s = 0;
    for (int l = 0; l < layers; ++l) {
      while (s < static_cast<int>(pinned.size()) && l >= pinned[s])
        ++s;
      split.layerStage[l] = s;
    }
    for (int64_t c : pinned)
      if (c <= 0 || c >= layers)
        return program->emitOpError("pipeline stage cut ")
               << c << " is outside the layers 1.." << layers - 1;
    for (size_t i = 1; i < pinned.size(); ++i)
      if (pinned[i] <= pinned[i - 1])
        return program->emitOpError("pipeline stage cuts must increase");
  } else {
    split.layerStage = balance(cost, pp, before, after);
  }
  split.stageCost.assign(pp, 0);
  split.stageCost[0] += before;
  split.stageCost[pp - 1] += after;
  std::map<std::string, int> stageOfLayer;
  for (int l = 0; l < layers; ++l) {
    stageOfLayer[split.layers[l]] = split.layerStage[l];
    split.stageCost[split.layerStage[l]] += cost[l];
  }

  // Ops: tagged ones by their layer; others by their operands (the latest
  // stage, scalars aside), then what reads only sources by its readers.
  auto &stageOf = split.stageOf;
  auto isScalar = [](Value v) {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t && t.getRank() == 0;
  };
  for (Operation &op : body) {
    StringRef n = op.getName().getStringRef();
    if (auto tag = op.getAttrOfType<StringAttr>("loom.layer")) {
      stageOf[&op] = stageOfLayer[tag.getValue().str()];
      continue;
    }
    if (n == "train.output" || n == "train.global_norm") {
      stageOf[&op] = kEvery;
      continue;
    }
    if (isSource(&op))
      continue;
    int s = -2, scalarStage = -2;
    for (Value v : op.getOperands())
      if (Operation *d = v.getDefiningOp(); d && stageOf.count(d) && stageOf[d] != kEvery) {
        if (isScalar(v))
          scalarStage = std::max(scalarStage, stageOf[d]);
        else
          s = std::max(s, stageOf[d]);
      }
    if (s < 0)
      s = scalarStage;
    if (s >= 0)
      stageOf[&op] = s;
  }
  SmallVector<Operation *> ops;
  for (Operation &op : body)
    ops.push_back(&op);
  for (Operation *op : llvm::reverse(ops)) {
    if (stageOf.count(op))
      continue;
    SmallVector<int> readers;
    bool every = false;
    for (Operation *user : op->getUsers()) {
      auto it = stageOf.find(user);
      if (it == stageOf.end())
        continue;
      if (it->second == kEvery)
        every = true;
      else if (!llvm::is_contained(readers, it->second))
        readers.push_back(it->second);
    }
    StringRef n = op->getName().getStringRef();
    if (n == "train.param" || n == "train.state") {
      // A parameter lives on the one stage that uses it; state only
      // bookkeeping reads (the step counter, the loss scale) is everywhere.
      if (readers.size() > 1)
        return op->emitOpError(n == "train.param" ? "parameter '" : "state '")
               << cast<StringAttr>(op->getAttr("name")).getValue()
               << "' is used on pipeline stages " << readers[0] << " and "
               << readers[1]
               << "; it must live on one stage (tied weights across stages "
                  "are not supported)";
      stageOf[op] = readers.empty() ? kEvery : readers[0];
    } else if (every || readers.size() != 1) {
      // Inputs, constants and what reads only them: every stage that needs
      // them computes them (cheap, deterministic).
      stageOf[op] = kEvery;
    } else {
      stageOf[op] = readers[0];
    }
  }
  // Optimizer updates follow their parameter; its state and updates too.
  for (Operation &op : body) {
    StringRef n = op.getName().getStringRef();
    if (n == "train.adamw" || n == "train.sgd") {
      int s = stageOf[op.getOperand(1).getDefiningOp()];
      stageOf[&op] = s;
      for (Value v : op.getOperands())
        if (Operation *d = v.getDefiningOp();
            d && (d->getName().getStringRef() == "train.state" ||
                  d->getName().getStringRef() == "train.param" ||
                  d->getName().getStringRef() == "dist.shard"))
          stageOf[d] = s;
      for (Operation *user : op.getUsers())
        stageOf[user] = s; // updates, all-gathers of ZeRO
      for (Operation *user : op.getUsers())
        for (Operation *u2 : user->getUsers())
          stageOf[u2] = s;
    }
  }
  return split;
}

struct SplitPipelinePass : impl::SplitPipelineBase<SplitPipelinePass> {
  void runOnOperation() override;
};

void SplitPipelinePass::runOnOperation() {
  ModuleOp module = getOperation();
  int pp = 1;
  for (Operation &op : module.getBody()->getOperations())
    if (op.getName().getStringRef() == "dist.mesh")
      pp = static_cast<int>(cast<DenseI64ArrayAttr>(op.getAttr("shape"))[2]);
  if (pp <= 1)
    return;
  SmallVector<Operation *> programs;
  for (Operation &op : module.getBody()->getOperations())
    if (op.getName().getStringRef() == "dist.program")
      programs.push_back(&op);
  for (Operation *program : programs) {
    SmallVector<int64_t> pinned;
    if (auto cfg = program->getAttrOfType<DictionaryAttr>("config"))
      if (auto st = cfg.getAs<DenseI64ArrayAttr>("stages"))
        pinned.assign(st.asArrayRef().begin(), st.asArrayRef().end());
    auto split = assignStages(program, pp, pinned);
    if (failed(split))
      return signalPassFailure();
    Block &body = program->getRegion(0).front();
    OpBuilder b(program);
    // Phases, on the whole step: an op of a micro-batch is backward when it
    // depends on that micro-batch's seed.
    {
      DenseSet<Operation *> backward;
      for (Operation &op : body) {
        auto mb = op.getAttrOfType<IntegerAttr>("dist.microbatch");
        bool bwd = false;
        for (Value v : op.getOperands()) {
          Operation *d = v.getDefiningOp();
          if (!d)
            continue;
          if (mb && (d->hasAttr("loom.loss_seed") ||
                     d->getName().getStringRef() == "train.loss_scale_value"))
            bwd = true;
          if (backward.count(d))
            bwd = true;
        }
        if (bwd && mb)
          backward.insert(&op);
        if (mb)
          op.setAttr("dist.phase", b.getStringAttr(bwd ? "bwd" : "fwd"));
      }
    }
    // Cross-stage values: one slot each.
    std::map<std::pair<Operation *, unsigned>, int64_t> slotOf;
    int64_t slots = 0;
    auto stage = [&](Operation *op) {
      auto it = split->stageOf.find(op);
      return it == split->stageOf.end() ? 0 : it->second;
    };
    std::string base = cast<StringAttr>(program->getAttr("sym_name")).str();
    for (int s = 0; s < pp; ++s) {
      // Clone the program and keep stage s's ops.
      Operation *copy = b.clone(*program);
      copy->setAttr("sym_name", b.getStringAttr(base + "_stage" + std::to_string(s)));
      copy->setAttr("stage", b.getI64IntegerAttr(s));
      Block &cb = copy->getRegion(0).front();
      SmallVector<Operation *> orig, cloned;
      for (Operation &op : body)
        orig.push_back(&op);
      for (Operation &op : cb)
        cloned.push_back(&op);
      DenseMap<Operation *, Operation *> toOrig;
      for (auto [o, c] : llvm::zip(orig, cloned))
        toOrig[c] = o;
      // Ops made here (receives, the per-stage norm) belong to stage s.
      auto stageC = [&](Operation *c) {
        Operation *o = toOrig.lookup(c);
        return o ? stage(o) : s;
      };
      OpBuilder cbld(copy->getContext());
      auto f32Only = [&](Value v) {
        return isa<RankedTensorType>(v.getType()) && ttype(v).getElementType().isF32();
      };
      // Receives for operands computed on another stage; sends of values
      // another stage reads.
      DenseSet<Operation *> dead;
      std::map<std::pair<Operation *, unsigned>, Value> received;
      for (Operation *c : cloned) {
        int mine = stageC(c);
        if (mine != s && mine != kEvery)
          continue;
        StringRef n = c->getName().getStringRef();
        if (n == "train.global_norm") {
          // Squares of this stage's gradients, summed over pp.
          SmallVector<Value> keep;
          for (Value v : c->getOperands())
            if (Operation *d = v.getDefiningOp(); d && stageC(d) == s)
              keep.push_back(v);
          cbld.setInsertionPoint(c);
          TensorBuilder tb(cbld, c->getLoc());
          auto f32 = RankedTensorType::get({}, cbld.getF32Type());
          bool squared = c->hasAttr("squared");
          Operation *sq = tb.create("train.global_norm", keep, f32,
                                    {tb.attr("squared", cbld.getUnitAttr())});
          OperationState ar(c->getLoc(), "dist.all_reduce");
          ar.addOperands(sq->getResult(0));
          ar.addTypes(f32);
          ar.addAttribute("axis", cbld.getStringAttr("pp"));
          ar.addAttribute("reduction", cbld.getStringAttr("sum"));
          ar.addAttribute("dist.cause", cbld.getStringAttr(
                                            "the global norm: squares of each "
                                            "pipeline stage's gradients"));
          Value sum = cbld.create(ar)->getResult(0);
          Value norm = squared ? sum : tb.unary("sqrt", sum);
          c->getResult(0).replaceAllUsesWith(norm);
          dead.insert(c);
          continue;
        }
        for (OpOperand &use : c->getOpOperands()) {
          Operation *d = use.get().getDefiningOp();
          if (!d)
            continue;
          int from = stageC(d);
          if (from == kEvery || from == s)
            continue;
          Value v = use.get();
          if (!f32Only(v)) {
            c->emitOpError("reads a non-f32 value computed on pipeline stage ")
                << from << "; only f32 tensors cross stages";
            return signalPassFailure();
          }
          auto key = std::make_pair(toOrig.lookup(d),
                                    cast<OpResult>(v).getResultNumber());
          if (auto it = received.find(key); it != received.end()) {
            use.set(it->second); // one receive per value, before its first use
            continue;
          }
          if (!slotOf.count(key))
            slotOf[key] = slots++;
          int64_t mb = 0;
          if (auto a = d->getAttrOfType<IntegerAttr>("dist.microbatch"))
            mb = a.getInt();
          int64_t tag = mb * 65536 + slotOf[key];
          cbld.setInsertionPoint(c);
          OperationState st(c->getLoc(), "dist.recv");
          st.addAttribute("axis", cbld.getStringAttr("pp"));
          st.addAttribute("peer", cbld.getI64IntegerAttr(from - s));
          st.addAttribute("tag", cbld.getI64IntegerAttr(tag));
          st.addTypes(v.getType());
          Operation *recv = cbld.create(st);
          for (StringRef k : {"dist.microbatch", "dist.phase"})
            if (Attribute a = d->getAttr(k))
              recv->setAttr(k, a);
          use.set(recv->getResult(0));
          received[key] = recv->getResult(0);
        }
      }
      // Sends: for each value of this stage read on another stage.
      for (Operation *c : cloned) {
        if (stageC(c) != s || dead.count(c))
          continue;
        Operation *o = toOrig.lookup(c);
        for (OpResult r : o->getResults()) {
          SmallVector<int> readers;
          for (Operation *u : r.getUsers()) {
            int us = stage(u);
            if (u->getName().getStringRef() == "train.global_norm")
              continue;
            std::vector<int> targets;
            if (us == kEvery)
              for (int t = 0; t < pp; ++t)
                targets.push_back(t);
            else
              targets.push_back(us);
            for (int t : targets)
              if (t != s && !llvm::is_contained(readers, t))
                readers.push_back(t);
          }
          if (readers.empty())
            continue;
          auto key = std::make_pair(o, r.getResultNumber());
          if (!slotOf.count(key))
            slotOf[key] = slots++;
          int64_t mb = 0;
          if (auto a = o->getAttrOfType<IntegerAttr>("dist.microbatch"))
            mb = a.getInt();
          cbld.setInsertionPointAfter(c);
          for (int t : readers) {
            OperationState st(c->getLoc(), "dist.send");
            st.addOperands(c->getResult(r.getResultNumber()));
            st.addAttribute("axis", cbld.getStringAttr("pp"));
            st.addAttribute("peer", cbld.getI64IntegerAttr(t - s));
            st.addAttribute("tag", cbld.getI64IntegerAttr(mb * 65536 + slotOf[key]));
            Operation *send = cbld.create(st);
            for (StringRef k : {"dist.microbatch", "dist.phase"})
              if (Attribute a = c->getAttr(k))
                send->setAttr(k, a);
          }
        }
      }
      // Drop other stages' ops (users first).
      for (Operation *c : llvm::reverse(cloned)) {
        int st = stageC(c);
        if (dead.count(c)) {
          c->erase();
          continue;
        }
        if (st == s || st == kEvery)
          continue;
        if (!c->use_empty()) {
          c->emitOpError("loom-split-pipeline: stage ")
              << st << " value still read on stage " << s;
          return signalPassFailure();
        }
        c->erase();
      }
      // Every op left records its stage for the schedule and the report.
      for (Operation &op : cb)
        if (!op.hasAttr("dist.stage"))
          op.setAttr("dist.stage", b.getI64IntegerAttr(s));
    }
    // The split, for --report.
    SmallVector<Attribute> layerStage;
    for (size_t l = 0; l < split->layers.size(); ++l)
      layerStage.push_back(b.getDictionaryAttr(
          {b.getNamedAttr("layer", b.getStringAttr(split->layers[l])),
           b.getNamedAttr("stage", b.getI64IntegerAttr(split->layerStage[l]))}));
    module->setAttr("loom.pipeline_split", b.getArrayAttr(layerStage));
    SmallVector<double> costs(split->stageCost.begin(), split->stageCost.end());
    module->setAttr("loom.pipeline_stage_flops", b.getF64ArrayAttr(costs));
    program->erase();
  }
}

/// The micro-batch and phase of an op of a stage program: phase 0 forward,
/// 1 backward (it depends on the backward seed of its micro-batch).
struct ScheduleKey {
  int64_t microbatch = -1;
  int phase = 0;
};

struct SchedulePipelinePass
    : impl::SchedulePipelineBase<SchedulePipelinePass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    int pp = 1;
    for (Operation &op : module.getBody()->getOperations())
      if (op.getName().getStringRef() == "dist.mesh")
        pp = static_cast<int>(cast<DenseI64ArrayAttr>(op.getAttr("shape"))[2]);
    for (Operation &program : module.getBody()->getOperations()) {
      if (program.getName().getStringRef() != "dist.program" ||
          !program.hasAttr("stage"))
        continue;
      int s = static_cast<int>(cast<IntegerAttr>(program.getAttr("stage")).getInt());
      std::string schedule = "1f1b";
      int64_t m = 1;
      if (auto cfg = program.getAttrOfType<DictionaryAttr>("config")) {
        if (auto a = cfg.getAs<StringAttr>("schedule"))
          schedule = a.str();
        if (auto a = cfg.getAs<IntegerAttr>("microbatches"))
          m = a.getInt();
      }
      if (schedule != "gpipe" && schedule != "1f1b") {
        program.emitOpError("pipeline schedule '")
            << schedule << "' is not implemented yet (gpipe and 1f1b are)";
        return signalPassFailure();
      }
      Block &body = program.getRegion(0).front();
      DenseMap<Operation *, ScheduleKey> key;
      for (Operation &op : body) {
        ScheduleKey k;
        if (auto a = op.getAttrOfType<IntegerAttr>("dist.microbatch"))
          k.microbatch = a.getInt();
        if (auto a = op.getAttrOfType<StringAttr>("dist.phase"))
          k.phase = a.getValue() == "bwd" ? 1 : 0;
        key[&op] = k;
      }
      bool train = cast<StringAttr>(program.getAttr("kind")).getValue() == "train";
      // The order of (micro-batch, phase) groups.
      std::vector<std::pair<int64_t, int>> order;
      if (!train || m <= 1) {
        // No micro-batches: the order stays (forward, then backward).
      } else if (schedule == "gpipe") {
        for (int64_t j = 0; j < m; ++j)
          order.push_back({j, 0});
        for (int64_t j = 0; j < m; ++j)
          order.push_back({j, 1});
      } else {
        int64_t warm = std::min<int64_t>(pp - 1 - s, m);
        for (int64_t j = 0; j < warm; ++j)
          order.push_back({j, 0});
        for (int64_t j = 0; j < m; ++j) {
          if (warm + j < m)
            order.push_back({warm + j, 0});
          order.push_back({j, 1});
        }
      }
      // Prologue (ops outside the micro-batches that read nothing of
      // them), the groups in schedule order, the epilogue.
      if (order.empty())
        continue;
      SmallVector<Operation *> prologue, epilogue, comm;
      std::map<std::pair<int64_t, int>, SmallVector<Operation *>> groups;
      DenseSet<Operation *> afterGroups;
      for (Operation &op : body) {
        ScheduleKey k = key[&op];
        StringRef n = op.getName().getStringRef();
        if (n == "dist.send" || n == "dist.recv") {
          comm.push_back(&op); // placed by what they read and feed, below
          continue;
        }
        if (k.microbatch >= 0) {
          groups[{k.microbatch, k.phase}].push_back(&op);
          continue;
        }
        // Late: it reads a micro-batch's value, a late op's, or a value
        // received from another stage (bookkeeping computed after the
        // micro-batches there).
        bool late = false;
        for (Value v : op.getOperands())
          if (Operation *d = v.getDefiningOp();
              d && (key[d].microbatch >= 0 || afterGroups.count(d) ||
                    d->getName().getStringRef() == "dist.recv"))
            late = true;
        if (late) {
          afterGroups.insert(&op);
          epilogue.push_back(&op);
        } else {
          prologue.push_back(&op);
        }
      }
      SmallVector<Operation *> sequence(prologue.begin(), prologue.end());
      for (auto &g : order)
        for (Operation *op : groups[g])
          sequence.push_back(op);
      sequence.append(epilogue.begin(), epilogue.end());
      // A send right after the value it sends; a receive right before its
      // first reader, so no stage waits earlier than its schedule says.
      for (Operation *c : comm) {
        if (c->getName().getStringRef() == "dist.send") {
          Operation *d = c->getOperand(0).getDefiningOp();
          auto *at = llvm::find(sequence, d);
          sequence.insert(at == sequence.end() ? sequence.begin() : at + 1, c);
        }
      }
      for (Operation *c : comm) {
        if (c->getName().getStringRef() != "dist.recv")
          continue;
        auto *first = sequence.end();
        for (Operation *u : c->getUsers()) {
          auto *at = llvm::find(sequence, u);
          if (at < first)
            first = at;
        }
        sequence.insert(first, c);
      }
      for (Operation *op : sequence)
        op->moveBefore(&body, body.end());
      SmallVector<Attribute> orderAttr;
      for (auto &[j, phase] : order)
        orderAttr.push_back(StringAttr::get(&getContext(),
                                            (phase ? "B" : "F") + std::to_string(j)));
      program.setAttr("dist.schedule", ArrayAttr::get(&getContext(), orderAttr));
    }
  }
};

} // namespace
} // namespace loom
