//===- Recompute.cpp - activation recomputation at layer boundaries -------===//
//
// Gradient checkpointing as a rewrite of the per-rank training program.
// Forward ops carry the layer instance they came from (`loom.layer`); layers
// are grouped into consecutive chunks. For each recomputed chunk, the
// backward pass gets, right before its first use of a value computed inside
// the chunk, a clone of the chunk's forward ops fed by the chunk's saved
// inputs (the activation entering it, parameters), and every backward use
// of a chunk-internal value is redirected to the clone. The originals are
// then dead after the forward pass, so the memory plan frees them there.
//
// The clones are the same ops on the same inputs (dropout masks are keyed by
// op path and step, not by a stream position), so gradients are bitwise
// those of the program without recomputation.
//
// With micro-batches (and pipeline stages) each micro-batch's copy of a
// layer is its own chunk, recomputed right before that micro-batch's
// backward pass reads it; an op is backward when it depends on its
// micro-batch's loss seed (or carries loom-split-pipeline's phase).
//
// `recompute every = N`: chunks of N consecutive layers, all recomputed.
// `recompute budget = SIZE`: chunks of one layer; layers are recomputed in
// order of forward FLOPs per byte of activation freed (cheapest first) until
// the estimated peak — persistent state, the activations still saved, the
// parameters' gradients and two backward temporaries — fits the budget. The
// choice is recorded on the program.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"

#include "mlir/IR/IRMapping.h"

#include <map>

namespace loom {
#define GEN_PASS_DEF_RECOMPUTE
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

int64_t bytesOf(Value v) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  if (!t)
    return 0;
  return t.getNumElements() *
         std::max<int64_t>(1, t.getElementTypeBitWidth() / 8);
}

/// Forward FLOPs of an op (GEMMs and attention dominate; others count one
/// per output element).
int64_t flopsOf(Operation *op) {
  StringRef n = op->getName().getStringRef();
  auto shape = [](Value v) { return cast<RankedTensorType>(v.getType()).getShape(); };
  if (n == "loom.matmul") {
    int64_t k = shape(op->getOperand(0)).back();
    return 2 * cast<RankedTensorType>(op->getResult(0).getType()).getNumElements() * k;
  }
  if (n == "train.attention" || n == "train.gated_attention") {
    auto q = shape(op->getOperand(0)), k = shape(op->getOperand(1));
    return 4 * q[0] * q[1] * q[2] * k[2] * q[3];
  }
  if (n == "loom.conv2d") {
    auto w = cast<RankedTensorType>(op->getOperand(1).getType());
    return 2 * cast<RankedTensorType>(op->getResult(0).getType()).getNumElements() *
           (w.getNumElements() / w.getDimSize(0));
  }
  int64_t out = 0;
  for (Value r : op->getResults())
    if (auto t = dyn_cast<RankedTensorType>(r.getType()))
      out += t.getNumElements();
  return out;
}

struct Chunk {
  std::vector<std::pair<int64_t, std::string>> layers; ///< (micro-batch, layer)
  std::vector<Operation *> ops; ///< forward ops, in program order
  int64_t savedBytes = 0;       ///< activations freed by recomputing it
  int64_t flops = 0;
};

LogicalResult recompute(dist::ProgramOp program) {
  auto cfg = program.getConfigAttr();
  auto mode = cfg ? cfg.getAs<StringAttr>("recompute") : StringAttr();
  if (!mode || mode.getValue() == "none" || program.getKind() != "train")
    return success();
  Block &body = program.getBody().front();

  DenseMap<Operation *, int> index;
  int i = 0;
  for (Operation &op : body)
    index[&op] = i++;
  // Forward and backward: with micro-batches (and pipeline stages) the two
  // interleave, so an op is backward when it depends on its micro-batch's
  // loss seed (loom-split-pipeline's `dist.phase` says so directly);
  // without, the forward pass ends at the loss output.
  bool microbatched = llvm::any_of(
      body, [](Operation &op) { return op.hasAttr("dist.microbatch"); });
  DenseSet<Operation *> backward;
  if (microbatched) {
    for (Operation &op : body) {
      if (auto phase = op.getAttrOfType<StringAttr>("dist.phase")) {
        if (phase.getValue() != "fwd")
          backward.insert(&op);
        continue;
      }
      bool mb = op.hasAttr("dist.microbatch");
      for (Value v : op.getOperands()) {
        Operation *d = v.getDefiningOp();
        if (d && (backward.count(d) ||
                  (mb && (d->hasAttr("loom.loss_seed") ||
                          d->getName().getStringRef() ==
                              "train.loss_scale_value")))) {
          backward.insert(&op);
          break;
        }
      }
    }
  } else {
    Operation *lossOut = nullptr;
    for (auto out : body.getOps<train::OutputOp>())
      if (out.getName() == "loss")
        lossOut = out;
    if (!lossOut)
      return program.emitOpError("has no loss output to split forward from "
                                 "backward");
    for (Operation *op = lossOut->getNextNode(); op; op = op->getNextNode())
      backward.insert(op);
  }
  auto isBackward = [&](Operation *op) { return backward.count(op) != 0; };

  // Layers in forward order and their ops, per micro-batch: each
  // micro-batch's copy of a layer is recomputed before its own backward.
  // A layer's copy in one micro-batch (-1: no micro-batches).
  using LayerCopy = std::pair<int64_t, std::string>;
  std::vector<LayerCopy> order;
  std::map<LayerCopy, std::vector<Operation *>> opsOf;
  for (Operation &op : body) {
    if (isBackward(&op))
      continue;
    auto tag = op.getAttrOfType<StringAttr>("loom.layer");
    if (!tag)
      continue;
    auto mb = op.getAttrOfType<IntegerAttr>("dist.microbatch");
    LayerCopy key{mb ? mb.getInt() : -1, tag.str()};
    auto &ops = opsOf[key];
    if (ops.empty())
      order.push_back(key);
    ops.push_back(&op);
  }
  if (order.empty())
    return success(); // No layers: nothing to checkpoint.

  bool budgetMode = mode.getValue() == "budget";
  int64_t every = 1;
  if (!budgetMode) {
    auto e = cfg.getAs<IntegerAttr>("recompute_every");
    every = e ? std::max<int64_t>(1, e.getInt()) : 1;
  }
  // Chunks of `every` consecutive layers of one micro-batch.
  std::vector<Chunk> chunks;
  size_t inChunk = 0;
  for (size_t l = 0; l < order.size(); ++l) {
    if (chunks.empty() || inChunk == static_cast<size_t>(every) ||
        order[l].first != order[l - 1].first) {
      chunks.emplace_back();
      inChunk = 0;
    }
    ++inChunk;
    Chunk &c = chunks.back();
    c.layers.push_back(order[l]);
    for (Operation *op : opsOf[order[l]])
      c.ops.push_back(op);
  }
  for (Chunk &c : chunks) {
    std::sort(c.ops.begin(), c.ops.end(),
              [&](Operation *a, Operation *b) { return index[a] < index[b]; });
    DenseSet<Operation *> inChunk(c.ops.begin(), c.ops.end());
    for (Operation *op : c.ops) {
      c.flops += flopsOf(op);
      for (Value r : op->getResults()) {
        bool usedBackward = false, usedOutside = false;
        for (Operation *user : r.getUsers()) {
          usedBackward |= isBackward(user);
          usedOutside |= !isBackward(user) && !inChunk.count(user);
        }
        // A value leaving the chunk stays saved (it is the next chunk's
        // input); only internal values are freed.
        if (usedBackward && !usedOutside)
          c.savedBytes += bytesOf(r);
      }
    }
  }

  // Which chunks to recompute.
  std::vector<bool> chosen(chunks.size(), !budgetMode);
  if (budgetMode) {
    int64_t budget = cfg.getAs<IntegerAttr>("recompute_budget").getInt();
    // Estimated peak: every tensor live at the loss (state, parameters,
    // inputs and all saved activations) plus the largest backward temporary.
    int64_t live = 0, largest = 0;
    for (Operation &op : body)
      for (Value r : op.getResults()) {
        if (!isBackward(&op)) {
          bool usedLater = false;
          for (Operation *user : r.getUsers())
            usedLater |= isBackward(user);
          StringRef n = op.getName().getStringRef();
          if (usedLater || n == "train.param" || n == "train.state" ||
              n == "train.input")
            live += bytesOf(r);
        } else {
          largest = std::max(largest, bytesOf(r));
        }
      }
    // Gradients of every parameter coexist with the saved activations until
    // the optimizer runs, and a backward op reads one temporary while
    // writing another.
    int64_t grads = 0;
    for (auto p : body.getOps<train::ParamOp>())
      grads += bytesOf(p.getResult());
    int64_t estimate = live + grads + 2 * largest;
    std::vector<size_t> byCost(chunks.size());
    for (size_t k = 0; k < chunks.size(); ++k)
      byCost[k] = k;
    std::stable_sort(byCost.begin(), byCost.end(), [&](size_t a, size_t b) {
      // FLOPs per byte freed, cheapest first (cross-multiplied).
      return static_cast<double>(chunks[a].flops) * chunks[b].savedBytes <
             static_cast<double>(chunks[b].flops) * chunks[a].savedBytes;
    });
    for (size_t k : byCost) {
      if (estimate <= budget)
        break;
      if (chunks[k].savedBytes == 0)
        continue;
      chosen[k] = true;
      estimate -= chunks[k].savedBytes;
    }
    program->setAttr("loom.recompute_estimate",
                     IntegerAttr::get(IntegerType::get(program.getContext(), 64),
                                      estimate));
    if (estimate > budget)
      program->setAttr("loom.recompute_over_budget",
                       UnitAttr::get(program.getContext()));
  }

  SmallVector<Attribute> recomputed;
  int64_t freed = 0, extraFlops = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    if (!chosen[k])
      continue;
    Chunk &c = chunks[k];
    DenseSet<Operation *> inChunk(c.ops.begin(), c.ops.end());
    // The first backward op that reads a chunk-internal value.
    Operation *first = nullptr;
    for (Operation *op : c.ops)
      for (Value r : op->getResults())
        for (Operation *user : r.getUsers())
          if (isBackward(user) && (!first || index[user] < index[first]))
            first = user;
    if (!first)
      continue;
    OpBuilder b(first);
    IRMapping map;
    for (Operation *op : c.ops) {
      Operation *clone = b.clone(*op, map);
      clone->setAttr("loom.recomputed", UnitAttr::get(b.getContext()));
      // Part of the backward pass it serves (schedules, trace spans).
      if (Attribute phase = first->getAttr("dist.phase"))
        clone->setAttr("dist.phase", phase);
    }
    // Redirect every backward use of the chunk's values to the clones.
    for (Operation *op : c.ops)
      for (Value r : op->getResults()) {
        Value nv = map.lookup(r);
        r.replaceUsesWithIf(nv, [&](OpOperand &use) {
          Operation *user = use.getOwner();
          return !user->hasAttr("loom.recomputed") &&
                 index.count(user) && isBackward(user);
        });
      }
    for (const auto &[mb, l] : c.layers) {
      auto name = StringAttr::get(program.getContext(), l);
      if (!llvm::is_contained(recomputed, name))
        recomputed.push_back(name);
    }
    freed += c.savedBytes;
    extraFlops += c.flops;
  }
  Builder bb(program.getContext());
  program->setAttr("loom.recomputed_layers", bb.getArrayAttr(recomputed));
  program->setAttr("loom.recompute_freed_bytes", bb.getI64IntegerAttr(freed));
  program->setAttr("loom.recompute_flops", bb.getI64IntegerAttr(extraFlops));
  return success();
}

struct RecomputePass : impl::RecomputeBase<RecomputePass> {
  void runOnOperation() override {
    for (auto program : getOperation().getOps<dist::ProgramOp>())
      if (failed(recompute(program)))
        return signalPassFailure();
  }
};

} // namespace
} // namespace loom
