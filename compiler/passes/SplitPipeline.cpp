//===- SplitPipeline.cpp - pipeline stages and their schedules ------------===//
//
// loom-split-pipeline cuts each partitioned program into `pp` stage
// programs at layer boundaries:
//  - layers (the `loom.layer` tags, in forward order) are assigned to stages
//    as contiguous runs, pinned by `pipeline stages = [cuts]` or balanced by
//    a cost model: time first -- the GEMM and attention FLOPs of the layer's
//    ops (forward and backward, every micro-batch) plus its parameter and
//    optimizer bytes at one FLOP per byte; the ops before the first layer
//    (the embedding) count for stage 0 and those after the last (the head
//    and the loss) for the last stage -- then, among cuts within 5% of the
//    best time, memory: static bytes, the saved activations of the
//    micro-batches the schedule holds, the largest layer working set. The
//    training step decides; the evaluation step takes its cut;
//  - an untagged op follows its operands (the latest stage among them), or,
//    reading only sources, its first reader; parameters and their optimizer
//    state live on the one stage that uses them;
//  - ops every stage needs (the learning rate, the step counter, the loss
//    scale, outputs) are copied into every stage; a value used on another
//    stage than its own crosses with `dist.send`/`dist.recv` along pp, right
//    after it is computed and right before its first use (tag = micro-batch
//    · 65536 + slot); a global norm sums the squares of each stage's
//    gradients and all-reduces them over pp.
// With the interleaved schedule the cut is into pp × virtual chunks, chunk c
// on rank c % pp (activations wrap from the last rank to the first).
// loom-schedule-pipeline orders each stage program's micro-batches: GPipe
// (every forward, then every backward), 1F1B (stage s runs pp − 1 − s
// forwards, then alternates one forward and one backward, then drains), so
// a stage holds at most pp − s micro-batches' activations under 1F1B;
// zero-bubble (1F1B with each backward split into its input gradient and,
// after it, its weight gradients); interleaved 1F1B over the chunks.
// It then moves the gradient bookkeeping (accumulation over micro-batches,
// loss weighting, dp all-reduce) right after what it reads and fuses each
// stage's dp gradients into asynchronous buckets, so they are reduced while
// the last micro-batch's backward pass and the pipeline's drain still run.
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
  if (n == "loom.conv2d" || n == "train.conv2d_grad_input" ||
      n == "train.conv2d_grad_weight") {
    Value w = n == "train.conv2d_grad_weight" ? op->getResult(0) : op->getOperand(1);
    Value y = n == "loom.conv2d" ? op->getResult(0)
                                 : op->getOperand(n == "train.conv2d_grad_input" ? 0 : 1);
    return 2.0 * double(ttype(y).getNumElements()) *
           double(ttype(w).getNumElements() / ttype(w).getDimSize(0));
  }
  return 0;
}

/// The ops of each micro-batch's backward pass: those that depend on that
/// micro-batch's loss seed (or the loss scale seeding it).
DenseSet<Operation *> backwardOps(Block &body) {
  DenseSet<Operation *> backward;
  for (Operation &op : body) {
    if (!op.hasAttr("dist.microbatch"))
      continue;
    for (Value v : op.getOperands()) {
      Operation *d = v.getDefiningOp();
      if (d && (d->hasAttr("loom.loss_seed") ||
                d->getName().getStringRef() == "train.loss_scale_value" ||
                backward.count(d))) {
        backward.insert(&op);
        break;
      }
    }
  }
  return backward;
}

struct Split {
  int stages = 1;
  DenseMap<Operation *, int> stageOf;
  std::vector<std::string> layers; ///< in forward order
  std::vector<int> layerStage;
  std::vector<double> stageCost;
};

/// What one pipeline stage costs when it holds a contiguous run of layers.
struct StageCosts {
  std::vector<double> time;      ///< per layer: FLOPs + parameter bytes
  std::vector<double> staticMem; ///< per layer: params, grads, optimizer state
  std::vector<double> actMem;    ///< per layer: activations one micro-batch saves
  std::vector<double> workMem;   ///< per layer: other values of one micro-batch
  double headTime = 0, tailTime = 0; ///< before the first / after the last layer
  double headMem = 0, tailMem = 0; ///< static bytes
  double headAct = 0, tailAct = 0; ///< activations per micro-batch
  /// Micro-batches whose activations stage `s` holds at once under the
  /// schedule (1F1B: pp - s, GPipe: all of them).
  std::function<double(int)> held;
};

/// Layer runs for `parts` stages: the largest stage time as small as it can
/// be, then, among cuts within 5% of that time, the largest stage memory
/// (static bytes plus the activations the schedule holds) as small as it can
/// be -- a stage that runs out of memory is worse than one a little slower.
std::vector<int> balance(const StageCosts &c, int parts) {
  int n = static_cast<int>(c.time.size());
  auto prefixOf = [&](const std::vector<double> &v) {
    std::vector<double> pre(n + 1, 0);
    for (int i = 0; i < n; ++i)
      pre[i + 1] = pre[i] + v[i];
    return pre;
  };
  std::vector<double> t = prefixOf(c.time), sm = prefixOf(c.staticMem),
                      am = prefixOf(c.actMem);
  auto timeOf = [&](int p, int k, int i) {
    double v = t[i] - t[k];
    if (p == 1)
      v += c.headTime;
    if (p == parts && i == n)
      v += c.tailTime;
    return v;
  };
  // Static bytes, the saved activations of the micro-batches in flight, and
  // the working set of the layer whose backward pass needs the most.
  auto memOf = [&](int p, int k, int i) {
    double v = sm[i] - sm[k] + (am[i] - am[k]) * c.held(p - 1);
    double work = 0;
    for (int l = k; l < i; ++l)
      work = std::max(work, c.workMem[l]);
    v += work;
    if (p == 1)
      v += c.headMem + c.headAct * c.held(0);
    if (p == parts && i == n)
      v += c.tailMem + c.tailAct * c.held(parts - 1);
    return v;
  };
  const double inf = 1e300;
  // best[p][i]: the smallest max over the first i layers in p parts, of
  // `costOf` among the cuts whose every part's time stays within `cap`.
  auto solve = [&](auto costOf, double cap, std::vector<int> &stageOfLayer) {
    std::vector<std::vector<double>> best(parts + 1, std::vector<double>(n + 1, inf));
    std::vector<std::vector<int>> cut(parts + 1, std::vector<int>(n + 1, 0));
    best[0][0] = 0;
    for (int p = 1; p <= parts; ++p)
      for (int i = p; i <= n; ++i)
        for (int k = p - 1; k < i; ++k) {
          if (best[p - 1][k] >= inf || timeOf(p, k, i) > cap)
            continue;
          double v = std::max(best[p - 1][k], costOf(p, k, i));
          if (v < best[p][i]) {
            best[p][i] = v;
            cut[p][i] = k;
          }
        }
    stageOfLayer.assign(n, 0);
    for (int p = parts, i = n; p >= 1; --p) {
      int k = cut[p][i];
      for (int l = k; l < i; ++l)
        stageOfLayer[l] = p - 1;
      i = k;
    }
    return best[parts][n];
  };
  std::vector<int> byTime, byMemory;
  double fastest = solve(timeOf, inf, byTime);
  if (solve(memOf, fastest * 1.05, byMemory) >= inf)
    return byTime;
  return byMemory;
}

FailureOr<Split> assignStages(Operation *program, int pp, int ranks,
                              ArrayRef<int64_t> pinned) {
  Block &body = program->getRegion(0).front();
  Split split;
  split.stages = pp;
  // Layers in forward order, and their costs: time (FLOPs, plus parameter
  // bytes at one FLOP per byte) and memory.
  llvm::MapVector<StringRef, double> layerCost, layerStatic, layerAct, layerWork;
  double before = 0, after = 0, beforeMem = 0, afterMem = 0;
  double beforeAct = 0, afterAct = 0;
  bool seenLayer = false;
  Operation *firstLayerOp = nullptr;
  DenseSet<Operation *> backward = backwardOps(body);
  auto bytesOf = [](Value v) {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t ? double(t.getNumElements()) *
                   std::max<int64_t>(1, t.getElementTypeBitWidth() / 8)
             : 0.0;
  };
  for (Operation &op : body) {
    auto tag = op.getAttrOfType<StringAttr>("loom.layer");
    double c = flopsOf(&op);
    // Activations: forward values of the first micro-batch that its
    // backward pass reads.
    double saved = 0, work = 0;
    auto mb = op.getAttrOfType<IntegerAttr>("dist.microbatch");
    if (!mb || mb.getInt() == 0)
      for (Value r : op.getResults()) {
        if (!backward.count(&op) &&
            llvm::any_of(r.getUsers(), [&](Operation *u) { return backward.count(u); }))
          saved += bytesOf(r);
        else
          work += bytesOf(r);
      }
    if (tag) {
      layerCost[tag.getValue()] += c;
      layerAct[tag.getValue()] += saved;
      layerWork[tag.getValue()] += work;
      if (!firstLayerOp)
        firstLayerOp = &op;
      seenLayer = true;
    } else if (!seenLayer) {
      before += c;
      beforeAct += saved;
    } else {
      after += c;
      afterAct += saved;
    }
  }
  // Parameters: their gradient and optimizer state too. A parameter outside
  // the layers (embedding, head) counts where it is first used.
  std::map<std::string, std::string> layerOfParam;
  std::map<std::string, bool> headParam;
  for (Operation &op : body) {
    StringRef n = op.getName().getStringRef();
    if (n != "train.param")
      continue;
    std::string name = cast<StringAttr>(op.getAttr("name")).str();
    double bytes = bytesOf(op.getResult(0));
    // A layer's parameters are named by its path ("layers.3.attn.wq").
    StringRef layer;
    if (auto tag = op.getAttrOfType<StringAttr>("loom.layer"))
      layer = tag.getValue();
    for (auto &entry : layerCost)
      if (layer.empty() && StringRef(name).starts_with((entry.first + ".").str()))
        layer = entry.first;
    if (!layer.empty()) {
      layerCost[layer] += 3.0 * bytes;
      layerStatic[layer] += 2.0 * bytes;
      layerOfParam[name] = layer.str();
      continue;
    }
    Operation *first = nullptr;
    for (Operation *u : op.getUsers())
      if (!first || u->isBeforeInBlock(first))
        first = u;
    bool head = !firstLayerOp || (first && first->isBeforeInBlock(firstLayerOp));
    headParam[name] = head;
    (head ? beforeMem : afterMem) += 2.0 * bytes;
  }
  for (Operation &op : body) {
    if (op.getName().getStringRef() != "train.state")
      continue;
    StringRef name = cast<StringAttr>(op.getAttr("name")).getValue();
    std::string param = name.rsplit('.').first.str();
    double bytes = bytesOf(op.getResult(0));
    if (auto it = layerOfParam.find(param); it != layerOfParam.end())
      layerStatic[StringRef(it->second)] += bytes;
    else if (auto h = headParam.find(param); h != headParam.end())
      (h->second ? beforeMem : afterMem) += bytes;
  }
  int layers = static_cast<int>(layerCost.size());
  if (layers < pp)
    return program->emitOpError("pp = ")
           << pp << " needs at least " << pp << " layers to cut at, the model has "
           << layers << " (pipeline stages are cut at layer boundaries)";
  StageCosts costs;
  for (auto &[name, c] : layerCost) {
    split.layers.push_back(name.str());
    costs.time.push_back(c);
    costs.staticMem.push_back(layerStatic.lookup(name));
    costs.actMem.push_back(layerAct.lookup(name));
    costs.workMem.push_back(layerWork.lookup(name));
  }
  std::vector<double> &cost = costs.time;
  costs.headTime = before;
  costs.tailTime = after;
  costs.headMem = beforeMem;
  costs.tailMem = afterMem;
  costs.headAct = beforeAct;
  costs.tailAct = afterAct;
  int64_t m = 1;
  std::string schedule = "1f1b";
  if (auto cfg = program->getAttrOfType<DictionaryAttr>("config")) {
    if (auto a = cfg.getAs<IntegerAttr>("microbatches"))
      m = a.getInt();
    if (auto a = cfg.getAs<StringAttr>("schedule"))
      schedule = a.str();
  }
  // With virtual stages (pp here counts them) stage s runs on rank s % ranks.
  costs.held = [=](int stage) {
    return double(schedule == "gpipe"
                      ? m
                      : std::min<int64_t>(m, ranks - stage % ranks));
  };
  if (!pinned.empty()) {
    if (static_cast<int>(pinned.size()) != pp - 1)
      return program->emitOpError("pipeline stages = [...] gives ")
             << pinned.size() << " cut(s); " << pp << " stages need " << pp - 1;
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
    split.layerStage = balance(costs, pp);
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
  // The training step decides the cut; the other programs (evaluation)
  // follow it, so every layer and its parameters live on one stage.
  llvm::stable_sort(programs, [](Operation *a, Operation *b) {
    auto isTrain = [](Operation *p) {
      return cast<StringAttr>(p->getAttr("kind")).getValue() == "train";
    };
    return isTrain(a) && !isTrain(b);
  });
  std::optional<SmallVector<int64_t>> decided;
  for (Operation *program : programs) {
    SmallVector<int64_t> pinned;
    int virtualStages = 1;
    if (auto cfg = program->getAttrOfType<DictionaryAttr>("config")) {
      if (auto st = cfg.getAs<DenseI64ArrayAttr>("stages"))
        pinned.assign(st.asArrayRef().begin(), st.asArrayRef().end());
      if (auto v = cfg.getAs<IntegerAttr>("virtual_stages"))
        virtualStages = std::max<int>(1, static_cast<int>(v.getInt()));
    }
    if (decided)
      pinned = *decided;
    // Interleaved schedules cut pp * virtual stages ("chunks"); chunk c runs
    // on rank c % pp, so each rank holds `virtual` non-adjacent chunks.
    int chunks = pp * virtualStages;
    auto split = assignStages(program, chunks, pp, pinned);
    if (failed(split))
      return signalPassFailure();
    if (!decided) {
      decided.emplace();
      for (size_t l = 1; l < split->layerStage.size(); ++l)
        if (split->layerStage[l] != split->layerStage[l - 1])
          decided->push_back(static_cast<int64_t>(l));
    }
    Block &body = program->getRegion(0).front();
    OpBuilder b(program);
    // Phases, on the whole step: an op of a micro-batch is backward when it
    // depends on that micro-batch's seed.
    {
      DenseSet<Operation *> backward = backwardOps(body);
      for (Operation &op : body)
        if (op.hasAttr("dist.microbatch"))
          op.setAttr("dist.phase",
                     b.getStringAttr(backward.count(&op) ? "bwd" : "fwd"));
    }
    // Cross-stage values: one slot each.
    std::map<std::pair<Operation *, unsigned>, int64_t> slotOf;
    int64_t slots = 0;
    auto chunkOf = [&](Operation *op) {
      auto it = split->stageOf.find(op);
      return it == split->stageOf.end() ? 0 : it->second;
    };
    // The rank (pipeline stage) of an op: its chunk's, modulo pp.
    auto stage = [&](Operation *op) {
      int c = chunkOf(op);
      return c == kEvery ? kEvery : c % pp;
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
      // Every op left records its stage (and, interleaved, its chunk on this
      // rank) for the schedule and the report.
      for (Operation &op : cb) {
        if (!op.hasAttr("dist.stage"))
          op.setAttr("dist.stage", b.getI64IntegerAttr(s));
        if (Operation *o = toOrig.lookup(&op);
            o && virtualStages > 1 && chunkOf(o) != kEvery)
          op.setAttr("dist.chunk", b.getI64IntegerAttr(chunkOf(o) / pp));
      }
    }
    // The split, for --report.
    SmallVector<Attribute> layerStage;
    for (size_t l = 0; l < split->layers.size(); ++l) {
      SmallVector<NamedAttribute> entry = {
          b.getNamedAttr("layer", b.getStringAttr(split->layers[l])),
          b.getNamedAttr("stage", b.getI64IntegerAttr(split->layerStage[l] % pp))};
      if (virtualStages > 1)
        entry.push_back(b.getNamedAttr(
            "chunk", b.getI64IntegerAttr(split->layerStage[l] / pp)));
      layerStage.push_back(b.getDictionaryAttr(entry));
    }
    module->setAttr("loom.pipeline_split", b.getArrayAttr(layerStage));
    SmallVector<double> costs(pp, 0.0);
    for (auto [c, cost] : llvm::enumerate(split->stageCost))
      costs[c % pp] += cost;
    module->setAttr("loom.pipeline_stage_flops", b.getF64ArrayAttr(costs));
    program->erase();
  }
}

/// Marks the ops of each micro-batch's backward pass that the activation
/// gradient sent to the previous stage does not depend on -- the weight
/// gradients -- with phase "wgrad". On the first stage, which sends none,
/// the whole backward pass is weight gradients.
void splitWeightGradients(Block &body) {
  DenseSet<Operation *> inputGrad;
  SmallVector<Operation *> work;
  for (Operation &op : body)
    if (op.getName().getStringRef() == "dist.send")
      if (auto ph = op.getAttrOfType<StringAttr>("dist.phase");
          ph && ph.getValue() == "bwd")
        work.push_back(&op);
  while (!work.empty()) {
    Operation *op = work.pop_back_val();
    for (Value v : op->getOperands()) {
      Operation *d = v.getDefiningOp();
      if (!d || d->getBlock() != &body || inputGrad.count(d))
        continue;
      auto ph = d->getAttrOfType<StringAttr>("dist.phase");
      if (!ph || ph.getValue() != "bwd")
        continue;
      inputGrad.insert(d);
      work.push_back(d);
    }
  }
  Builder b(body.getParentOp()->getContext());
  for (Operation &op : body) {
    auto ph = op.getAttrOfType<StringAttr>("dist.phase");
    if (ph && ph.getValue() == "bwd" && !inputGrad.count(&op) &&
        op.getName().getStringRef() != "dist.send")
      op.setAttr("dist.phase", b.getStringAttr("wgrad"));
  }
}

/// The micro-batch and phase of an op of a stage program: phase 0 forward,
/// 1 backward (it depends on the backward seed of its micro-batch), 2 the
/// weight gradients of the zero-bubble schedule.
struct ScheduleKey {
  int64_t microbatch = -1;
  int phase = 0;
  int64_t chunk = 0; ///< interleaved: which of the rank's chunks
};

/// A group of a stage program's schedule: (micro-batch, phase, chunk).
using Unit = std::tuple<int64_t, int, int64_t>;

/// Interleaved 1F1B (Narayanan et al., SC'21) on rank `r` of `pp`, with `v`
/// chunks per rank and `m` micro-batches (a multiple of pp): forward units
/// take micro-batches in groups of pp, each group through chunk 0, then 1,
/// ...; backward units likewise with the chunks in reverse. Rank r warms up
/// with 2 (pp - r - 1) + (v - 1) pp forwards, then alternates one forward
/// and one backward, then drains.
std::vector<Unit> interleavedOrder(int64_t pp, int64_t r, int64_t v, int64_t m) {
  int64_t units = m * v;
  auto unit = [&](int64_t i, bool backward) {
    int64_t group = i / (pp * v), inGroup = i % (pp * v);
    int64_t chunk = inGroup / pp;
    return Unit{group * pp + inGroup % pp, backward ? 1 : 0,
                backward ? v - 1 - chunk : chunk};
  };
  int64_t warm = std::min(units, 2 * (pp - r - 1) + (v - 1) * pp);
  std::vector<Unit> order;
  for (int64_t i = 0; i < warm; ++i)
    order.push_back(unit(i, false));
  for (int64_t i = 0; i < units; ++i) {
    if (warm + i < units)
      order.push_back(unit(warm + i, false));
    order.push_back(unit(i, true));
  }
  return order;
}

/// Moves the gradient bookkeeping that follows the micro-batches -- the sum
/// of each micro-batch's gradient into the running total, its loss
/// weighting, the data-parallel all-reduce -- right after what it reads.
/// Each micro-batch's gradient is then folded into the total as soon as it
/// is computed (a stage holds two gradients per parameter, not one per
/// micro-batch), and the last micro-batch's gradients are final, ready to
/// be reduced, while the rest of its backward pass still runs. Only these
/// ops move: each is pure, and the dp all-reduces keep their relative order
/// on every member of the dp group, which runs the same program.
void hoistGradientBookkeeping(Block &body) {
  DenseSet<Operation *> chain;
  SmallVector<Operation *> candidates;
  for (Operation &op : body)
    candidates.push_back(&op);
  for (Operation *op : candidates) {
    if (op->hasAttr("dist.microbatch")) {
      chain.insert(op);
      continue;
    }
    StringRef n = op->getName().getStringRef();
    bool movable = n == "loom.add" || n == "loom.mul" || n == "loom.reshape" ||
                   n == "loom.concat" ||
                   (n == "dist.all_reduce" &&
                    cast<StringAttr>(op->getAttr("axis")).getValue() == "dp");
    if (!movable || op->getNumRegions() != 0)
      continue;
    Operation *latest = nullptr;
    bool readsChain = false;
    for (Value v : op->getOperands()) {
      Operation *d = v.getDefiningOp();
      if (!d || d->getBlock() != &body)
        continue;
      readsChain |= chain.count(d) != 0;
      if (!latest || latest->isBeforeInBlock(d))
        latest = d;
    }
    if (!readsChain || !latest)
      continue;
    chain.insert(op);
    if (latest->isBeforeInBlock(op) && latest->getNextNode() != op)
      op->moveAfter(latest);
  }
}

struct SchedulePipelinePass
    : impl::SchedulePipelineBase<SchedulePipelinePass> {
  void runOnOperation() override {
    if (failed(scheduleStages()))
      return signalPassFailure();
    for (Operation &program : getOperation().getBody()->getOperations()) {
      if (program.getName().getStringRef() != "dist.program" ||
          cast<StringAttr>(program.getAttr("kind")).getValue() != "train")
        continue;
      int64_t m = 1;
      if (auto cfg = program.getAttrOfType<DictionaryAttr>("config"))
        if (auto a = cfg.getAs<IntegerAttr>("microbatches"))
          m = a.getInt();
      if (m > 1)
        hoistGradientBookkeeping(program.getRegion(0).front());
      // Partition leaves the buckets of a pipelined program to this pass:
      // now each stage's gradients are in place.
      if (auto bytes = program.getAttrOfType<IntegerAttr>("dist.bucket_bytes")) {
        bucketDataParallelGradients(&program, bytes.getInt());
        program.removeAttr("dist.bucket_bytes");
      }
    }
  }

  LogicalResult scheduleStages() {
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
      int64_t virtualStages = 1;
      if (auto cfg = program.getAttrOfType<DictionaryAttr>("config"))
        if (auto v = cfg.getAs<IntegerAttr>("virtual_stages"))
          virtualStages = std::max<int64_t>(1, v.getInt());
      if (schedule != "gpipe" && schedule != "1f1b" &&
          schedule != "zero_bubble" && schedule != "interleaved") {
        program.emitOpError("pipeline schedule '") << schedule << "' is unknown";
        return failure();
      }
      if (schedule == "interleaved" && m > 1 && m % pp != 0) {
        program.emitOpError("the interleaved schedule needs the micro-batches (")
            << m << ") to be a multiple of pp (" << pp << ")";
        return failure();
      }
      bool train = cast<StringAttr>(program.getAttr("kind")).getValue() == "train";
      Block &body = program.getRegion(0).front();
      // Zero-bubble: each micro-batch's backward splits into the input
      // gradient (what the gradient sent to the previous stage depends on,
      // phase "bwd") and the weight gradients (the rest, phase "wgrad"),
      // which run after it; the previous stage gets its gradient one weight
      // gradient earlier at every hop, which shortens the drain.
      if (schedule == "zero_bubble" && train && m > 1)
        splitWeightGradients(body);
      DenseMap<Operation *, ScheduleKey> key;
      for (Operation &op : body) {
        ScheduleKey k;
        if (auto a = op.getAttrOfType<IntegerAttr>("dist.microbatch"))
          k.microbatch = a.getInt();
        if (auto a = op.getAttrOfType<StringAttr>("dist.phase"))
          k.phase = a.getValue() == "bwd" ? 1 : a.getValue() == "wgrad" ? 2 : 0;
        if (auto a = op.getAttrOfType<IntegerAttr>("dist.chunk"))
          k.chunk = a.getInt();
        key[&op] = k;
      }
      // The order of (micro-batch, phase) groups.
      std::vector<Unit> order;
      if (!train || m <= 1) {
        // No micro-batches: the order stays (forward, then backward).
      } else if (schedule == "gpipe") {
        for (int64_t j = 0; j < m; ++j)
          order.push_back({j, 0, 0});
        for (int64_t j = 0; j < m; ++j)
          order.push_back({j, 1, 0});
      } else if (schedule == "interleaved") {
        order = interleavedOrder(pp, s, virtualStages, m);
      } else {
        int64_t warm = std::min<int64_t>(pp - 1 - s, m);
        for (int64_t j = 0; j < warm; ++j)
          order.push_back({j, 0, 0});
        for (int64_t j = 0; j < m; ++j) {
          if (warm + j < m)
            order.push_back({warm + j, 0, 0});
          order.push_back({j, 1, 0});
          if (schedule == "zero_bubble")
            order.push_back({j, 2, 0});
        }
      }
      // Prologue (ops outside the micro-batches that read nothing of
      // them), the groups in schedule order, the epilogue.
      if (order.empty())
        continue;
      SmallVector<Operation *> prologue, epilogue, comm;
      std::map<Unit, SmallVector<Operation *>> groups;
      DenseSet<Operation *> afterGroups;
      for (Operation &op : body) {
        ScheduleKey k = key[&op];
        StringRef n = op.getName().getStringRef();
        if (n == "dist.send" || n == "dist.recv") {
          comm.push_back(&op); // placed by what they read and feed, below
          continue;
        }
        if (k.microbatch >= 0) {
          groups[{k.microbatch, k.phase, k.chunk}].push_back(&op);
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
      for (auto &[j, phase, chunk] : order)
        orderAttr.push_back(StringAttr::get(
            &getContext(), (phase == 2 ? "W" : phase == 1 ? "B" : "F") +
                               std::to_string(j) +
                               (virtualStages > 1 ? "c" + std::to_string(chunk)
                                                  : std::string())));
      program.setAttr("dist.schedule", ArrayAttr::get(&getContext(), orderAttr));
    }
    return success();
  }
};

} // namespace
} // namespace loom
