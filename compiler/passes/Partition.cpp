//===- Partition.cpp - train steps to per-rank dist programs --------------===//
//
// Creates the `dist.mesh` and rewrites each `train.step` into the SPMD
// `dist.program` every rank runs. With the shardings loom-propagate-sharding
// wrote on every op:
//  - where an op needs an operand in another sharding than it has, the
//    collective that converts it is inserted before the op (partial sum ->
//    all_reduce, or reduce_scatter when the target is split on that axis;
//    split -> whole: all_gather; whole -> split: dist.shard, a local slice),
//    each carrying `dist.cause`, once per value and target;
//  - every value takes its per-rank type;
//  - ops whose meaning depends on the split are adjusted: split_heads counts
//    local heads, vocabulary-parallel embedding and cross-entropy learn the
//    axis their classes are split on, a mean over split rows is weighted by
//    the rank's share (the loss is the mean over the global batch), the
//    global norm sums the squares of shards over the axes they split;
//  - data-parallel gradient all-reduces are fused into buckets, each issued
//    right after the last gradient it holds is computed.
// On a 1×1×1 mesh nothing but the program op changes.
//
//===----------------------------------------------------------------------===//
#include "compiler/passes/Passes.h"
#include "dialects/Dist/Sharding.h"
#include "compiler/passes/TensorBuilder.h"

#include "llvm/ADT/MapVector.h"

namespace loom {
#define GEN_PASS_DEF_PARTITION
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;
using namespace loom::sharding;

namespace loom {

namespace {

RankedTensorType ttype(Value v) { return cast<RankedTensorType>(v.getType()); }

class ProgramPartitioner {
public:
  ProgramPartitioner(Operation *program, const Mesh &mesh, int64_t bucketBytes)
      : program_(program), mesh_(mesh), bucketBytes_(bucketBytes),
        b_(program->getContext()) {}

  LogicalResult run();

private:
  Sharding shardingOf(Value v) {
    auto it = of_.find(v);
    if (it != of_.end())
      return it->second;
    return Sharding::replicated(globalType(v).getRank());
  }
  RankedTensorType globalType(Value v) {
    auto it = global_.find(v);
    return it != global_.end() ? it->second : ttype(v);
  }
  void record(Value v, RankedTensorType global, const Sharding &s) {
    global_[v] = global;
    of_[v] = s;
    v.setType(localType(global, s, mesh_));
  }
  std::string where(Operation *op) {
    std::string s;
    llvm::raw_string_ostream os(s);
    os << op->getName();
    if (auto loc = dyn_cast<FileLineColLoc>(op->getLoc()))
      os << " at " << loc.getFilename() << ":" << loc.getLine() << ":"
         << loc.getColumn();
    return s;
  }
  Operation *collective(StringRef name, Value in, RankedTensorType localResult,
                        ArrayRef<NamedAttribute> attrs, const std::string &cause) {
    OperationState st(in.getLoc(), name);
    st.addOperands(in);
    st.addTypes(localResult);
    st.addAttributes(attrs);
    Operation *op = b_.create(st);
    op->setAttr("dist.cause", b_.getStringAttr(cause));
    return op;
  }
  Value transpose(Value x, ArrayRef<int64_t> perm) {
    TensorBuilder tb(b_, x.getLoc());
    return tb.transpose(x, perm);
  }
  /// Converts `v` (held as `from`) to `to`, before the current insertion
  /// point.
  FailureOr<Value> reshard(Value v, const Sharding &from, const Sharding &to,
                           const std::string &cause);
  LogicalResult rewrite(Operation *op);
  LogicalResult rewriteGlobalNorm(Operation *op, ArrayRef<Sharding> req);
  void weightLoss(Operation *ce, unsigned rowAxes);

  Operation *program_;
  Mesh mesh_;
  int64_t bucketBytes_;
  OpBuilder b_;
  DenseMap<Value, Sharding> of_;
  DenseMap<Value, RankedTensorType> global_;
  std::map<std::pair<void *, std::string>, Value> resharded_;
  DenseMap<Operation *, Value> lossWeight_; ///< forward CE -> its weight
};

FailureOr<Value> ProgramPartitioner::reshard(Value v, const Sharding &from,
                                             const Sharding &to,
                                             const std::string &cause) {
  auto key = std::make_pair(v.getAsOpaquePointer(), to.str());
  if (auto it = resharded_.find(key); it != resharded_.end())
    return it->second;
  RankedTensorType gt = globalType(v);
  Sharding s = from;
  Value cur = v;
  int64_t rank = gt.getRank();
  auto emit = [&](StringRef name, Value in, const Sharding &next,
                  ArrayRef<NamedAttribute> attrs) {
    Operation *op = collective(name, in, localType(gt, next, mesh_), attrs, cause);
    op->setAttr(kResultsAttr, b_.getArrayAttr({b_.getStringAttr(next.str())}));
    record(op->getResult(0), gt, next);
    return op->getResult(0);
  };
  // Gathers and scatters work on dimension 0 of the flat buffer; another
  // dimension is moved to the front and back.
  auto alongDim = [&](int64_t d, auto body) -> Value {
    auto lt = ttype(cur);
    bool leadingOnes = true;
    for (int64_t i = 0; i < d; ++i)
      leadingOnes &= lt.getDimSize(i) == 1;
    if (d == 0 || leadingOnes)
      return body(cur, d);
    SmallVector<int64_t> perm = {d};
    for (int64_t i = 0; i < rank; ++i)
      if (i != d)
        perm.push_back(i);
    SmallVector<int64_t> inv(rank);
    for (int64_t i = 0; i < rank; ++i)
      inv[perm[i]] = i;
    Value t = transpose(cur, perm);
    Value r = body(t, 0);
    // `r` was recorded with the permuted global type; restore the layout.
    Value back = transpose(r, inv);
    return back;
  };
  for (int a = 0; a < kNumAxes; ++a) {
    unsigned bit = 1u << a;
    if (!(s.partial & bit) || (to.partial & bit))
      continue;
    int target = -1;
    for (int64_t d = 0; d < rank; ++d)
      if (to.dims[d] == a && s.dims[d] == kNone)
        target = static_cast<int>(d);
    Sharding next = s;
    next.partial &= ~bit;
    if (target >= 0) {
      next.dims[target] = a;
      auto attrs = [&](int64_t dim) {
        return SmallVector<NamedAttribute>{
            b_.getNamedAttr("axis", b_.getStringAttr(axisName(a))),
            b_.getNamedAttr("dim", b_.getI64IntegerAttr(dim))};
      };
      Value out = alongDim(target, [&](Value in, int64_t dim) {
        if (in == cur)
          return emit("dist.reduce_scatter", in, next, attrs(dim));
        // Permuted: record types by hand.
        auto lt = ttype(in);
        SmallVector<int64_t> shape(lt.getShape());
        shape[0] /= mesh_.group(a);
        Operation *op = collective("dist.reduce_scatter", in,
                                   RankedTensorType::get(shape, lt.getElementType()),
                                   attrs(dim), cause);
        return op->getResult(0);
      });
      if (out.getDefiningOp()->getName().getStringRef() == "loom.transpose")
        record(out, gt, next);
      cur = out;
    } else {
      cur = emit("dist.all_reduce", cur, next,
                 {b_.getNamedAttr("axis", b_.getStringAttr(axisName(a))),
                  b_.getNamedAttr("reduction", b_.getStringAttr("sum"))});
    }
    s = next;
  }
  for (int64_t d = 0; d < rank; ++d) {
    int a = s.dims[d];
    if (a == kNone || a == to.dims[d])
      continue;
    Sharding next = s;
    next.dims[d] = kNone;
    auto attrs = [&](int64_t dim) {
      return SmallVector<NamedAttribute>{
          b_.getNamedAttr("axis", b_.getStringAttr(axisName(a))),
          b_.getNamedAttr("dim", b_.getI64IntegerAttr(dim))};
    };
    Value out = alongDim(d, [&](Value in, int64_t dim) {
      if (in == cur)
        return emit("dist.all_gather", in, next, attrs(dim));
      auto lt = ttype(in);
      SmallVector<int64_t> shape(lt.getShape());
      shape[0] *= mesh_.group(a);
      return collective("dist.all_gather", in,
                        RankedTensorType::get(shape, lt.getElementType()),
                        attrs(dim), cause)
          ->getResult(0);
    });
    if (out.getDefiningOp()->getName().getStringRef() == "loom.transpose")
      record(out, gt, next);
    cur = out;
    s = next;
  }
  for (int64_t d = 0; d < rank; ++d) {
    int a = to.dims[d];
    if (a == kNone || s.dims[d] == a)
      continue;
    Sharding next = s;
    next.dims[d] = a;
    cur = emit("dist.shard", cur, next,
               {b_.getNamedAttr("axis", b_.getStringAttr(axisName(a))),
                b_.getNamedAttr("dim", b_.getI64IntegerAttr(d))});
    s = next;
  }
  if (s != to)
    return emitError(v.getLoc(), "loom-partition: cannot turn ")
           << from.str() << " into " << to.str() << " (" << cause << ")";
  resharded_[key] = cur;
  return cur;
}

void ProgramPartitioner::weightLoss(Operation *ce, unsigned rowAxes) {
  // w = count / sum(count) over the row axes; loss' = loss · w, summed over
  // the axes where it is consumed whole (the output, the eval metrics).
  b_.setInsertionPointAfter(ce);
  TensorBuilder tb(b_, ce->getLoc());
  Value stats = ce->getResult(2);
  auto f32 = b_.getF32Type();
  auto one = RankedTensorType::get({1}, f32);
  auto scalar = RankedTensorType::get({}, f32);
  Value count = tb.create1("loom.slice", {stats}, one,
                           {tb.attr("dim", b_.getI64IntegerAttr(0)),
                            tb.attr("start", b_.getI64IntegerAttr(0)),
                            tb.attr("end", b_.getI64IntegerAttr(1))});
  count = tb.reshape(count, scalar);
  of_[count] = Sharding::replicated(0);
  Value total = count;
  for (int a = 0; a < kNumAxes; ++a)
    if (rowAxes & (1u << a)) {
      Operation *op = collective(
          "dist.all_reduce", total, scalar,
          {b_.getNamedAttr("axis", b_.getStringAttr(axisName(a))),
           b_.getNamedAttr("reduction", b_.getStringAttr("sum"))},
          std::string("the global count of rows of ") + where(ce) +
              " (the loss is the mean over the global batch)");
      total = op->getResult(0);
      of_[total] = Sharding::replicated(0);
    }
  Value w = tb.create1("train.loss_weight", {count, total}, scalar);
  of_[w] = Sharding::replicated(0);
  lossWeight_[ce] = w;
  Value loss = ce->getResult(0);
  Value weighted = tb.mul(loss, w);
  loss.replaceAllUsesExcept(weighted, weighted.getDefiningOp());
  Sharding partial = Sharding::replicated(0);
  partial.partial = rowAxes;
  of_[weighted] = partial;
  of_[loss] = Sharding::replicated(0); // the local mean itself
  global_[weighted] = scalar;
}

LogicalResult ProgramPartitioner::rewriteGlobalNorm(Operation *op,
                                                    ArrayRef<Sharding> req) {
  llvm::MapVector<unsigned, SmallVector<Value>> groups;
  for (auto [v, s] : llvm::zip(op->getOperands(), req))
    groups[s.splitAxes()].push_back(v);
  if (groups.size() == 1 && groups.begin()->first == 0)
    return success();
  b_.setInsertionPoint(op);
  TensorBuilder tb(b_, op->getLoc());
  auto scalar = RankedTensorType::get({}, b_.getF32Type());
  Value total;
  for (auto &[axes, values] : groups) {
    Operation *sq = tb.create("train.global_norm", values, scalar,
                              {tb.attr("squared", b_.getUnitAttr())});
    Value part = sq->getResult(0);
    for (int a = 0; a < kNumAxes; ++a)
      if (axes & (1u << a))
        part = collective("dist.all_reduce", part, scalar,
                          {b_.getNamedAttr("axis", b_.getStringAttr(axisName(a))),
                           b_.getNamedAttr("reduction", b_.getStringAttr("sum"))},
                          "the global norm: squares of gradients split over " +
                              std::string(axisName(a)))
                   ->getResult(0);
    total = total ? tb.add(total, part) : part;
  }
  Value norm = tb.unary("sqrt", total);
  op->getResult(0).replaceAllUsesWith(norm);
  op->erase();
  return success();
}

LogicalResult ProgramPartitioner::rewrite(Operation *op) {
  StringRef n = op->getName().getStringRef();
  auto reqAttr = op->getAttrOfType<ArrayAttr>(kOperandsAttr);
  auto resAttr = op->getAttrOfType<ArrayAttr>(kResultsAttr);
  if (!reqAttr || !resAttr)
    return success(); // created by this pass
  SmallVector<Sharding> req, res;
  for (Attribute a : reqAttr)
    req.push_back(*Sharding::parse(cast<StringAttr>(a).getValue()));
  for (Attribute a : resAttr)
    res.push_back(*Sharding::parse(cast<StringAttr>(a).getValue()));

  // Operands: convert where the op needs another sharding.
  b_.setInsertionPoint(op);
  for (unsigned i = 0; i < op->getNumOperands() && i < req.size(); ++i) {
    Value v = op->getOperand(i);
    if (!isa<RankedTensorType>(v.getType()))
      continue;
    Sharding have = shardingOf(v);
    if (have == req[i])
      continue;
    std::string cause = "operand #" + std::to_string(i) + " of " + where(op) +
                        " needs " + req[i].str() + ", has " + have.str();
    auto nv = reshard(v, have, req[i], cause);
    if (failed(nv))
      return failure();
    op->setOperand(i, *nv);
  }

  // Adjustments that depend on the split.
  auto i64 = [&](int64_t v) { return b_.getI64IntegerAttr(v); };
  if (n == "loom.split_heads" && req[0].dims[2] != kNone) {
    int64_t heads = cast<IntegerAttr>(op->getAttr("heads")).getInt();
    op->setAttr("heads", i64(heads / mesh_.group(req[0].dims[2])));
  }
  if (n == "loom.embedding" && req[1].dims[0] != kNone)
    op->setAttr("vocab_axis", i64(req[1].dims[0]));
  if (n == "train.embedding_grad" && res[0].dims[0] != kNone)
    op->setAttr("vocab_axis", i64(res[0].dims[0]));
  if ((n == "train.cross_entropy" || n == "loom.cross_entropy" ||
       n == "train.cross_entropy_grad") &&
      req[0].dims.back() != kNone)
    op->setAttr("vocab_axis", i64(req[0].dims.back()));
  if (n == "train.cross_entropy_grad") {
    Sharding rows = req[1];
    if (rows.splitAxes()) {
      Operation *fwd = op->getOperand(2).getDefiningOp();
      // The forward op's lse, possibly through a recorded reshard.
      Value w = fwd ? lossWeight_.lookup(fwd) : Value();
      if (!w)
        return op->emitOpError("loom-partition: the forward cross_entropy of "
                               "this gradient was not found");
      b_.setInsertionPoint(op);
      TensorBuilder tb(b_, op->getLoc());
      Value seed = tb.mul(op->getOperand(3), w);
      of_[seed] = Sharding::replicated(0);
      op->setOperand(3, seed);
    }
  }
  if (n == "train.global_norm")
    return rewriteGlobalNorm(op, req);

  // Results: per-rank types.
  for (auto [r, s] : llvm::zip(op->getResults(), res))
    if (isa<RankedTensorType>(r.getType()))
      record(r, ttype(r), s);

  if ((n == "train.cross_entropy" || n == "loom.cross_entropy") &&
      op->getNumResults() == 3 && req[1].splitAxes())
    weightLoss(op, req[1].splitAxes());
  // A mean over split elements: the local mean scaled by 1/group is the
  // rank's share of the global mean.
  if (n == "loom.reduce_mean" || n == "loom.mse") {
    unsigned added = res[0].partial & ~req[0].partial;
    int64_t groups = 1;
    for (int a = 0; a < kNumAxes; ++a)
      if (added & (1u << a))
        groups *= mesh_.group(a);
    if (groups > 1) {
      b_.setInsertionPointAfter(op);
      TensorBuilder tb(b_, op->getLoc());
      Value r = op->getResult(0);
      Value scaled = tb.mul(r, tb.scalarLike(1.0 / double(groups), r));
      r.replaceAllUsesExcept(scaled, scaled.getDefiningOp());
      of_[scaled] = res[0];
      global_[scaled] = global_.lookup(r);
      of_[r] = res[0];
    }
  }
  if (n == "train.param" || n == "train.state" || n == "train.input") {
    SmallVector<Attribute> shard;
    for (int d : res[0].dims)
      shard.push_back(b_.getStringAttr(axisName(d)));
    op->setAttr("dist.shard", b_.getArrayAttr(shard));
    op->setAttr("dist.global_shape",
                b_.getDenseI64ArrayAttr(global_[op->getResult(0)].getShape()));
  }
  return success();
}

LogicalResult ProgramPartitioner::run() {
  Block &body = program_->getRegion(0).front();
  for (Operation &op : llvm::make_early_inc_range(body))
    if (failed(rewrite(&op)))
      return failure();
  // Ops made here (collectives, loss weights) belong to the micro-batch of
  // what they read, so pipeline schedules move them with it.
  for (Operation &op : body) {
    if (op.hasAttr(kOperandsAttr) || op.hasAttr("dist.microbatch"))
      continue;
    std::optional<int64_t> mb;
    bool mixed = false;
    for (Value v : op.getOperands())
      if (Operation *d = v.getDefiningOp())
        if (auto a = d->getAttrOfType<IntegerAttr>("dist.microbatch")) {
          mixed |= mb && *mb != a.getInt();
          mb = a.getInt();
        }
    if (mb && !mixed)
      op.setAttr("dist.microbatch", b_.getI64IntegerAttr(*mb));
  }
  // Buckets mix the gradients of every layer; with pipeline stages they are
  // made per stage by loom-schedule-pipeline, after the schedule has placed
  // each gradient.
  if (mesh_.group(kDp) > 1 && mesh_.size[2] == 1)
    bucketDataParallelGradients(program_, bucketBytes_);
  else if (mesh_.group(kDp) > 1)
    program_->setAttr("dist.bucket_bytes", b_.getI64IntegerAttr(bucketBytes_));
  return success();
}

} // namespace

/// The first bucket holds the gradients computed first in the backward pass;
/// kept small (as PyTorch DDP does) so its reduction starts early.
constexpr int64_t kFirstBucketBytes = int64_t(1) << 20;

void bucketDataParallelGradients(Operation *program, int64_t bucketBytes) {
  // The data-parallel gradient all-reduces, in the order their gradients
  // are computed; fused up to bucketBytes each.
  Block &body = program->getRegion(0).front();
  OpBuilder b_(program->getContext());
  SmallVector<Operation *> reduces;
  for (Operation &op : body)
    if (op.getName().getStringRef() == "dist.all_reduce" &&
        cast<StringAttr>(op.getAttr("axis")).getValue() == "dp" &&
        ttype(op.getOperand(0)).getRank() > 0 &&
        ttype(op.getOperand(0)).getElementType().isF32())
      reduces.push_back(&op);
  if (reduces.size() < 2)
    return;
  DenseMap<Operation *, int> order;
  int i = 0;
  for (Operation &op : body)
    order[&op] = i++;
  auto defIndex = [&](Operation *r) {
    Operation *d = r->getOperand(0).getDefiningOp();
    return d ? order.lookup(d) : -1;
  };
  llvm::stable_sort(reduces, [&](Operation *a, Operation *b) {
    return defIndex(a) < defIndex(b);
  });
  SmallVector<SmallVector<Operation *>> buckets(1);
  int64_t bytes = 0;
  for (Operation *r : reduces) {
    int64_t n = ttype(r->getOperand(0)).getNumElements() * 4;
    int64_t cap = buckets.size() == 1 ? std::min(bucketBytes, kFirstBucketBytes)
                                      : bucketBytes;
    if (!buckets.back().empty() && bytes + n > cap) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().push_back(r);
    bytes += n;
  }
  int index = 0;
  for (auto &bucket : buckets) {
    ++index;
    if (bucket.size() < 2)
      continue;
    // Issue the bucket right after its last gradient is computed.
    Operation *last = bucket.back()->getOperand(0).getDefiningOp();
    if (last)
      b_.setInsertionPointAfter(last);
    else
      b_.setInsertionPoint(bucket.front());
    TensorBuilder tb(b_, bucket.front()->getLoc());
    SmallVector<Value> flats;
    int64_t total = 0;
    for (Operation *r : bucket) {
      auto t = ttype(r->getOperand(0));
      flats.push_back(tb.reshape(
          r->getOperand(0), RankedTensorType::get({t.getNumElements()}, t.getElementType())));
      total += t.getNumElements();
    }
    auto flat = RankedTensorType::get({total}, b_.getF32Type());
    Value cat = tb.create1("loom.concat", flats, flat,
                           {tb.attr("dim", b_.getI64IntegerAttr(0))});
    OperationState st(cat.getLoc(), "dist.all_reduce");
    st.addOperands(cat);
    st.addTypes(flat);
    st.addAttribute("axis", b_.getStringAttr("dp"));
    st.addAttribute("reduction", b_.getStringAttr("sum"));
    Operation *red = b_.create(st);
    // Tagged with the stage of its gradients, if the program has stages.
    if (Attribute stage = bucket.back()->getAttr("dist.stage"))
      red->setAttr("dist.stage", stage);
    red->setAttr("dist.cause", b_.getStringAttr(
        "gradient bucket " + std::to_string(index) + " of " +
            std::to_string(buckets.size()) + ": " + std::to_string(bucket.size()) +
            " data-parallel gradients fused (" + std::to_string(total * 4) +
            " bytes), issued after the last is computed"));
    red->setAttr("async", b_.getUnitAttr());
    // Unpacked right before the first op that reads a reduced gradient, so
    // the reduction overlaps the backward ops in between.
    Operation *firstUser = nullptr;
    for (Operation *r : bucket)
      for (Operation *u : r->getResult(0).getUsers())
        if (!firstUser || u->isBeforeInBlock(firstUser))
          firstUser = u;
    if (firstUser)
      b_.setInsertionPoint(firstUser);
    int64_t offset = 0;
    for (Operation *r : bucket) {
      auto t = ttype(r->getOperand(0));
      int64_t n = t.getNumElements();
      Value part = tb.create1(
          "loom.slice", {red->getResult(0)},
          RankedTensorType::get({n}, t.getElementType()),
          {tb.attr("dim", b_.getI64IntegerAttr(0)),
           tb.attr("start", b_.getI64IntegerAttr(offset)),
           tb.attr("end", b_.getI64IntegerAttr(offset + n))});
      offset += n;
      Value back = tb.reshape(part, t);
      r->getResult(0).replaceAllUsesWith(back);
    }
    // Erased last: the builder may be positioned right before one of them.
    for (Operation *r : bucket)
      r->erase();
  }
}

namespace {

struct PartitionPass : impl::PartitionBase<PartitionPass> {
  using PartitionBase::PartitionBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<Operation *> steps;
    for (Operation &op : module.getBody()->getOperations())
      if (op.getName().getStringRef() == "train.step")
        steps.push_back(&op);
    if (steps.empty())
      return;
    // All steps of one module share the model's mesh.
    Mesh mesh = meshOfStep(steps.front());
    // Shardings come from loom-propagate-sharding; run it here when the
    // pipeline did not.
    for (Operation *step : steps) {
      bool annotated = true;
      for (Operation &op : step->getRegion(0).front())
        annotated &= static_cast<bool>(op.getAttr(kResultsAttr));
      if (!annotated && failed(propagateSharding(step)))
        return signalPassFailure();
    }
    OpBuilder b = OpBuilder::atBlockBegin(module.getBody());
    OperationState meshState(module.getLoc(), "dist.mesh");
    meshState.addAttribute("sym_name", b.getStringAttr("mesh"));
    meshState.addAttribute("axes", b.getStrArrayAttr({"dp", "tp", "pp"}));
    meshState.addAttribute(
        "shape", b.getDenseI64ArrayAttr({mesh.size[0], mesh.size[1], mesh.size[2]}));
    b.create(meshState);
    for (Operation *step : steps) {
      b.setInsertionPoint(step);
      OperationState state(step->getLoc(), "dist.program");
      state.addAttribute("sym_name", step->getAttr("sym_name"));
      state.addAttribute("kind", step->getAttr("kind"));
      state.addAttribute("mesh", FlatSymbolRefAttr::get(b.getContext(), "mesh"));
      if (Attribute cfg = step->getAttr("config"))
        state.addAttribute("config", cfg);
      if (Attribute model = step->getAttr("loom.model"))
        state.addAttribute("loom.model", model);
      Region *region = state.addRegion();
      region->takeBody(step->getRegion(0));
      Operation *program = b.create(state);
      step->erase();
      ProgramPartitioner p(program, mesh, bucketMb * (int64_t(1) << 20));
      if (failed(p.run()))
        return signalPassFailure();
    }
  }
};

} // namespace
} // namespace loom
