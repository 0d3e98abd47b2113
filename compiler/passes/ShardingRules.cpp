//===- ShardingRules.cpp - the sharding rules of the loom and train ops ---===//
//
// Each family of ops (elementwise, matmul, reshape, normalisation,
// attention, embedding, cross-entropy, optimizer, ...) has one rule
// function; registerShardingRules attaches it to the family's ops as their
// ShardingRuleOpInterface (an external model), so a new op states its rule
// by attaching one.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "dialects/Dist/Sharding.h"
#include "dialects/Loom/LoomOps.h"
#include "dialects/Train/TrainDialect.h"

#include "mlir/IR/DialectRegistry.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Diagnostics.h"
#include "llvm/ADT/StringSwitch.h"

#include <sstream>

using namespace mlir;

namespace loom::sharding {

namespace {

RankedTensorType ttype(Value v) { return cast<RankedTensorType>(v.getType()); }

bool divisible(int64_t size, int axis, const Mesh &mesh) {
  return axis == kNone || size % mesh.group(axis) == 0;
}

/// Drops axes used twice and axes that do not divide their dimension.
void sanitize(Sharding &s, RankedTensorType t, const Mesh &mesh) {
  unsigned used = 0;
  for (size_t i = 0; i < s.dims.size(); ++i) {
    int a = s.dims[i];
    if (a == kNone)
      continue;
    if ((used & (1u << a)) || !divisible(t.getDimSize(i), a, mesh) ||
        mesh.group(a) == 1)
      s.dims[i] = kNone;
    else
      used |= 1u << a;
  }
  for (int a = 0; a < kNumAxes; ++a)
    if (mesh.group(a) == 1)
      s.partial &= ~(1u << a);
}

/// The sharding of the leading `n` dimensions of `s`.
SmallVector<int, 4> lead(const Sharding &s, size_t n) {
  return SmallVector<int, 4>(s.dims.begin(), s.dims.begin() + std::min(n, s.dims.size()));
}

unsigned axesOf(ArrayRef<int> dims) {
  unsigned m = 0;
  for (int d : dims)
    if (d != kNone)
      m |= 1u << d;
  return m;
}

Sharding make(ArrayRef<int> dims, unsigned partial = 0) {
  Sharding s;
  s.dims.assign(dims.begin(), dims.end());
  s.partial = partial;
  return s;
}

Sharding full(const Sharding &s) { return make(s.dims); }

std::string axesText(unsigned mask) {
  std::string s;
  for (int a = 0; a < kNumAxes; ++a)
    if (mask & (1u << a)) {
      s += s.empty() ? "" : ", ";
      s += axisName(a);
    }
  return s;
}

/// Replicated operands and results: always correct.
Rule replicatedRule(Operation *op, std::string reason) {
  Rule r;
  for (Value v : op->getOperands())
    r.operands.push_back(
        Sharding::replicated(isa<RankedTensorType>(v.getType()) ? ttype(v).getRank() : 0));
  for (Value v : op->getResults())
    r.results.push_back(
        Sharding::replicated(isa<RankedTensorType>(v.getType()) ? ttype(v).getRank() : 0));
  r.reason = std::move(reason);
  return r;
}

bool oneOf(StringRef n, std::initializer_list<StringRef> names) {
  for (StringRef x : names)
    if (n == x)
      return true;
  return false;
}

/// Elementwise ops with numpy broadcasting (trailing dimensions aligned).
/// A dimension's axis comes from the operands; where they disagree the
/// cheaper resharding wins (a replicated operand is sliced for free).
Rule elementwise(Operation *op, ArrayRef<Sharding> in, const Mesh &mesh) {
  StringRef n = op->getName().getStringRef();
  auto rt = ttype(op->getResult(0));
  int64_t rank = rt.getRank();
  Sharding res = Sharding::replicated(rank);
  std::string why;
  unsigned used = 0;
  for (int64_t j = 0; j < rank; ++j) {
    // Candidate axes for result dim j, with the cost of each.
    SmallVector<int> cands;
    for (size_t i = 0; i < in.size(); ++i) {
      auto t = ttype(op->getOperand(i));
      int64_t k = j - (rank - t.getRank());
      if (k < 0 || t.getDimSize(k) != rt.getDimSize(j))
        continue;
      int a = in[i].dims[k];
      if (a != kNone && !(used & (1u << a)) && !llvm::is_contained(cands, a))
        cands.push_back(a);
    }
    if (cands.empty())
      continue;
    int best = cands.front();
    if (cands.size() > 1) {
      double bestCost = -1;
      for (int c : cands) {
        double cost = 0;
        for (size_t i = 0; i < in.size(); ++i) {
          auto t = ttype(op->getOperand(i));
          int64_t k = j - (rank - t.getRank());
          if (k < 0 || t.getDimSize(k) != rt.getDimSize(j))
            continue;
          Sharding to = in[i];
          to.dims[k] = c;
          cost += reshardBytes(t, in[i], to, mesh);
        }
        if (bestCost < 0 || cost < bestCost) {
          bestCost = cost;
          best = c;
        }
      }
      why += "; dim " + std::to_string(j) + ": operands disagree, " +
             axisName(best) + " chosen by cost";
    }
    res.dims[j] = best;
    used |= 1u << best;
  }
  // Partial sums pass through linear ops.
  unsigned p0 = in.empty() ? 0 : in[0].partial;
  bool samePartial = true, onePartial = 0;
  int partialCount = 0;
  for (const Sharding &s : in) {
    samePartial &= s.partial == p0;
    partialCount += s.partial != 0;
  }
  onePartial = partialCount == 1;
  unsigned keep = 0;
  if (oneOf(n, {"loom.add", "loom.sub"}) && samePartial)
    keep = p0;
  else if (oneOf(n, {"loom.neg", "loom.cast"}))
    keep = p0;
  else if (n == "loom.mul" && onePartial)
    for (const Sharding &s : in)
      keep |= s.partial;
  else if (n == "loom.div" && onePartial && in[0].partial)
    keep = in[0].partial;
  sanitize(res, rt, mesh);
  keep &= ~res.splitAxes(); // an axis cannot both split and be summed
  res.partial = keep;

  Rule r;
  for (size_t i = 0; i < in.size(); ++i) {
    auto t = ttype(op->getOperand(i));
    Sharding want = Sharding::replicated(t.getRank());
    for (int64_t k = 0; k < t.getRank(); ++k) {
      int64_t j = k + (rank - t.getRank());
      if (t.getDimSize(k) == rt.getDimSize(j))
        want.dims[k] = res.dims[j];
    }
    want.partial = in[i].partial & keep;
    if (n == "loom.mul" || n == "loom.div")
      want.partial = in[i].partial & keep;
    r.operands.push_back(want);
  }
  for (unsigned i = 0; i < op->getNumResults(); ++i)
    r.results.push_back(res);
  r.reason = "elementwise: dimensions follow the operands";
  if (keep)
    r.reason += ", partial sums pass through";
  else if (partialCount)
    r.reason += ", partial operands reduced first (not linear here)";
  r.reason += why;
  return r;
}

/// loom.matmul and train.gemm: batch dims and rows from a, columns from b;
/// a contraction split over an axis leaves a partial sum over it.
Rule matmul(Operation *op, ArrayRef<Sharding> in, const Mesh &mesh, bool ta,
            bool tb) {
  auto at = ttype(op->getOperand(0)), bt = ttype(op->getOperand(1));
  auto rt = ttype(op->getResult(0));
  int64_t ra = at.getRank(), rb = bt.getRank(), rr = rt.getRank();
  int64_t am = ta ? ra - 1 : ra - 2, ak = ta ? ra - 2 : ra - 1;
  int64_t bk = tb ? rb - 1 : rb - 2, bn = tb ? rb - 2 : rb - 1;
  Sharding res = Sharding::replicated(rr);
  // Batch dimensions.
  for (int64_t j = 0; j < rr - 2; ++j) {
    int64_t ka = j - (rr - ra), kb = j - (rr - rb);
    int a = kNone;
    if (ka >= 0 && at.getDimSize(ka) == rt.getDimSize(j))
      a = in[0].dims[ka];
    if (a == kNone && kb >= 0 && bt.getDimSize(kb) == rt.getDimSize(j))
      a = in[1].dims[kb];
    res.dims[j] = a;
  }
  res.dims[rr - 2] = in[0].dims[am];
  res.dims[rr - 1] = in[1].dims[bn];
  sanitize(res, rt, mesh);
  unsigned used = res.splitAxes();
  int ka = in[0].dims[ak], kb = in[1].dims[bk];
  int k = kNone;
  std::string why;
  if (ka == kb) {
    k = ka;
  } else if (ka == kNone || kb == kNone) {
    k = ka == kNone ? kb : ka;
    why = "; the whole operand is sliced along the contraction";
  } else {
    // Both split, on different axes: keep the split of the larger operand.
    k = at.getNumElements() >= bt.getNumElements() ? ka : kb;
    why = "; contraction splits disagree, the larger operand's kept (cost)";
  }
  if (k != kNone && ((used & (1u << k)) ||
                     !divisible(at.getDimSize(ak), k, mesh)))
    k = kNone;
  // A partial sum over an axis that also splits the result is reduced first.
  unsigned splitOut = used | (k == kNone ? 0u : 1u << k);
  unsigned pa = in[0].partial & ~splitOut, pb = in[1].partial & ~splitOut;
  if (pa && pb)
    pb = 0; // one side must be whole
  res.partial = pa | pb | (k == kNone ? 0u : 1u << k);
  sanitize(res, rt, mesh);

  Rule r;
  Sharding wa = Sharding::replicated(ra), wb = Sharding::replicated(rb);
  for (int64_t j = 0; j < rr - 2; ++j) {
    int64_t xa = j - (rr - ra), xb = j - (rr - rb);
    if (xa >= 0 && at.getDimSize(xa) == rt.getDimSize(j))
      wa.dims[xa] = res.dims[j];
    if (xb >= 0 && bt.getDimSize(xb) == rt.getDimSize(j))
      wb.dims[xb] = res.dims[j];
  }
  wa.dims[am] = res.dims[rr - 2];
  wb.dims[bn] = res.dims[rr - 1];
  wa.dims[ak] = k;
  wb.dims[bk] = k;
  wa.partial = pa;
  wb.partial = pb;
  r.operands = {wa, wb};
  r.results = {res};
  r.reason = "matmul: rows from the left operand, columns from the right";
  if (k != kNone)
    r.reason += std::string(", contraction split over ") + axisName(k) +
                " gives a partial sum";
  r.reason += why;
  return r;
}

/// Contiguous dimension groups of a reshape: (input range, output range).
struct Group {
  int64_t i0, i1, o0, o1;
};
SmallVector<Group> reshapeGroups(ArrayRef<int64_t> in, ArrayRef<int64_t> out) {
  SmallVector<Group> groups;
  int64_t i = 0, o = 0, ni = in.size(), no = out.size();
  while (i < ni || o < no) {
    Group g{i, i, o, o};
    int64_t pi = 1, po = 1;
    if (i < ni)
      pi *= in[i], ++g.i1, ++i;
    if (o < no)
      po *= out[o], ++g.o1, ++o;
    while (pi != po) {
      if (pi < po && i < ni)
        pi *= in[i], ++g.i1, ++i;
      else if (o < no)
        po *= out[o], ++g.o1, ++o;
      else
        break;
    }
    groups.push_back(g);
  }
  return groups;
}

Rule reshape(Operation *op, ArrayRef<Sharding> in, const Mesh &mesh) {
  auto it = ttype(op->getOperand(0)), rt = ttype(op->getResult(0));
  Sharding want = in[0], res = Sharding::replicated(rt.getRank());
  res.partial = in[0].partial;
  for (const Group &g : reshapeGroups(it.getShape(), rt.getShape())) {
    // Only the first non-unit input dimension of a group may stay split:
    // its blocks are then contiguous in the output's first dimension.
    int64_t first = g.i0;
    while (first < g.i1 && it.getDimSize(first) == 1)
      ++first;
    int64_t ofirst = g.o0;
    while (ofirst < g.o1 && rt.getDimSize(ofirst) == 1)
      ++ofirst;
    for (int64_t d = g.i0; d < g.i1; ++d) {
      int a = in[0].dims[d];
      if (a == kNone)
        continue;
      if (d == first && ofirst < g.o1 &&
          divisible(rt.getDimSize(ofirst), a, mesh))
        res.dims[ofirst] = a;
      else
        want.dims[d] = kNone;
    }
  }
  Rule r;
  r.operands = {want};
  r.results = {res};
  r.reason = "reshape: a split leading dimension of a merged or split group "
             "stays split";
  return r;
}

} // namespace

std::optional<int> zeroDim(RankedTensorType t, const Sharding &s,
                           const Mesh &mesh) {
  if (mesh.zero < 1 || mesh.group(kDp) == 1)
    return std::nullopt;
  for (int64_t d = 0; d < t.getRank(); ++d) {
    int64_t local = t.getDimSize(d) / mesh.group(s.dims[d]);
    if (s.dims[d] == kNone && local % mesh.group(kDp) == 0 &&
        local >= mesh.group(kDp))
      return static_cast<int>(d);
  }
  return std::nullopt;
}

FailureOr<Sharding> annotated(Operation *param, const Mesh &mesh) {
  auto t = ttype(param->getResult(0));
  Sharding s = Sharding::replicated(t.getRank());
  auto shard = param->getAttrOfType<ArrayAttr>("shard");
  if (!shard)
    return s;
  if (static_cast<int64_t>(shard.size()) != t.getRank())
    return param->emitOpError("shard annotation has ")
           << shard.size() << " entries for a rank-" << t.getRank() << " tensor";
  for (int64_t d = 0; d < t.getRank(); ++d) {
    StringRef name = cast<StringAttr>(shard[d]).getValue();
    if (name == "_")
      continue;
    auto axis = axisNamed(name);
    if (!axis || *axis == kNone)
      return param->emitOpError("shard(...) names '")
             << name << "': parameters are split over tp or dp (pp splits "
                        "the layers)";
    if (t.getDimSize(d) % mesh.group(*axis) != 0)
      return param->emitOpError("dimension ")
             << d << " (size " << t.getDimSize(d) << ") is not divisible by "
             << name << " = " << mesh.group(*axis)
             << "; choose a mesh that divides it or drop the shard annotation";
    // A dp split stores the parameter sharded over the data-parallel ranks
    // (FSDP style): each use all-gathers it, its gradient is
    // reduce-scattered.
    if (mesh.group(*axis) > 1)
      s.dims[d] = *axis;
  }
  return s;
}

namespace {

int64_t rankOf(Value v) {
  return isa<RankedTensorType>(v.getType()) ? ttype(v).getRank() : 0;
}

FailureOr<Rule> inputRule(Operation *op, ArrayRef<Sharding> in,
                          const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  Rule r;
  auto t = ttype(op->getResult(0));
  Sharding s = Sharding::replicated(t.getRank());
  if (mesh.group(kDp) > 1) {
    if (t.getRank() == 0 || t.getDimSize(0) % mesh.group(kDp) != 0)
      return op->emitOpError("the batch (dimension 0 of input '")
             << cast<StringAttr>(op->getAttr("name")).getValue() << "', size "
             << (t.getRank() ? t.getDimSize(0) : 0)
             << ") is not divisible by dp = " << mesh.group(kDp)
             << " (SEMANTICS.md: each replica sees batch / dp rows)";
    s.dims[0] = kDp;
  }
  r.results = {s};
  r.reason = mesh.group(kDp) > 1 ? "input: the batch is split over dp"
                                 : "input: whole";
  return r;
}

FailureOr<Rule> storedRule(Operation *op, ArrayRef<Sharding> in,
                           const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  StringRef n = op->getName().getStringRef();
  Rule r;
  auto name = cast<StringAttr>(op->getAttr("name")).getValue();
  auto s = ctx.stored(name);
  r.results = {s ? *s : Sharding::replicated(rankOf(op->getResult(0)))};
  if (n == "train.param")
    r.reason = op->getAttr("shard") ? "parameter: its shard(...) annotation"
                                    : "parameter: replicated (no annotation)";
  else
    r.reason = s && !s->isReplicated()
                   ? "optimizer state: follows its parameter" +
                         std::string(mesh.zero ? ", ZeRO-1 split over dp" : "")
                   : "state: replicated";
  return r;
}

FailureOr<Rule> constantRule(Operation *op, ArrayRef<Sharding> in,
                             const RuleContext &ctx) {
  return replicatedRule(op, "constant: replicated");
}

FailureOr<Rule> elementwiseRule(Operation *op, ArrayRef<Sharding> in,
                                const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  return elementwise(op, in, mesh);
}

/// fake_quant and its gradient: elementwise over the input (and the
/// gradient); a per-channel scale and zero point follow the channel
/// dimension's axis, per-tensor ones are replicated. Not linear: partial
/// operands are reduced first.
FailureOr<Rule> fakeQuantRule(Operation *op, ArrayRef<Sharding> in,
                              const RuleContext &ctx) {
  auto rt = ttype(op->getResult(0));
  Sharding res = in[0];
  res.partial = 0;
  // The gradient (operand 3) may carry the split where the input does not.
  if (in.size() > 3)
    for (size_t d = 0; d < res.dims.size(); ++d)
      if (res.dims[d] == kNone)
        res.dims[d] = in[3].dims[d];
  sanitize(res, rt, ctx.mesh);
  res.partial = 0;
  int64_t axis = cast<IntegerAttr>(op->getAttr("axis")).getInt();
  Rule r;
  r.operands.push_back(res);
  for (unsigned i = 1; i < 3; ++i) {
    auto t = ttype(op->getOperand(i));
    Sharding s = Sharding::replicated(t.getRank());
    if (t.getRank() == 1)
      s.dims[0] = res.dims[axis];
    r.operands.push_back(s);
  }
  if (in.size() > 3)
    r.operands.push_back(res);
  r.results.push_back(res);
  r.reason = "fake_quant: elementwise, per-channel scales follow their channel";
  return r;
}

FailureOr<Rule> matmulRule(Operation *op, ArrayRef<Sharding> in,
                           const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  return matmul(op, in, mesh, false, false);
}

FailureOr<Rule> gemmRule(Operation *op, ArrayRef<Sharding> in,
                         const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  auto flag = [&](StringRef k) {
    auto a = op->getAttrOfType<BoolAttr>(k);
    return a && a.getValue();
  };
  return matmul(op, in, mesh, flag("transpose_a"), flag("transpose_b"));
}

FailureOr<Rule> reshapeRule(Operation *op, ArrayRef<Sharding> in,
                            const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  return reshape(op, in, mesh);
}

FailureOr<Rule> transposeRule(Operation *op, ArrayRef<Sharding> in,
                              const RuleContext &ctx) {
  Rule r;
  auto perm = cast<DenseI64ArrayAttr>(op->getAttr("permutation")).asArrayRef();
  Sharding res = Sharding::replicated(perm.size());
  for (size_t i = 0; i < perm.size(); ++i)
    res.dims[i] = in[0].dims[perm[i]];
  res.partial = in[0].partial;
  r.operands = {in[0]};
  r.results = {res};
  r.reason = "transpose: dimensions permuted";
  return r;
}

FailureOr<Rule> headsRule(Operation *op, ArrayRef<Sharding> in,
                          const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  StringRef n = op->getName().getStringRef();
  Rule r;
  bool split = n == "loom.split_heads";
  auto it = ttype(op->getOperand(0));
  Sharding want = in[0];
  // split: [B,T,D] -> [B,H,T,D/H]; merge: the inverse.
  int64_t b = in[0].dims[0], t = in[0].dims[split ? 1 : 2];
  int64_t h = split ? in[0].dims[2] : in[0].dims[1];
  int64_t heads = split ? cast<IntegerAttr>(op->getAttr("heads")).getInt()
                        : it.getDimSize(1);
  if (h != kNone && heads % mesh.group(h) != 0)
    h = kNone;
  if (!split && in[0].dims[3] != kNone)
    want.dims[3] = kNone;
  if (split)
    want.dims[2] = h;
  else
    want.dims[1] = h;
  Sharding res = split ? make({int(b), int(h), int(t), kNone})
                       : make({int(b), int(t), int(h)});
  res.partial = in[0].partial;
  r.operands = {want};
  r.results = {res};
  r.reason = split ? "split_heads: split channels are whole heads"
                   : "merge_heads: split heads are split channels";
  return r;
}

FailureOr<Rule> broadcastRule(Operation *op, ArrayRef<Sharding> in,
                              const RuleContext &ctx) {
  Rule r;
  auto it = ttype(op->getOperand(0)), rt = ttype(op->getResult(0));
  Sharding res = Sharding::replicated(rt.getRank());
  for (int64_t k = 0; k < it.getRank(); ++k) {
    int64_t j = k + rt.getRank() - it.getRank();
    if (it.getDimSize(k) == rt.getDimSize(j))
      res.dims[j] = in[0].dims[k];
  }
  res.partial = in[0].partial;
  Sharding want = in[0];
  for (int64_t k = 0; k < it.getRank(); ++k)
    if (it.getDimSize(k) != rt.getDimSize(k + rt.getRank() - it.getRank()))
      want.dims[k] = kNone;
  r.operands = {want};
  r.results = {res};
  r.reason = "broadcast_to: kept dimensions keep their split";
  return r;
}

FailureOr<Rule> reduceRule(Operation *op, ArrayRef<Sharding> in,
                           const RuleContext &ctx) {
  StringRef n = op->getName().getStringRef();
  Rule r;
  auto it = ttype(op->getOperand(0));
  auto dims = cast<DenseI64ArrayAttr>(op->getAttr("dims")).asArrayRef();
  auto keep = op->getAttrOfType<BoolAttr>("keepdim");
  bool keepdim = keep && keep.getValue();
  SmallVector<bool> reduced(it.getRank(), false);
  for (int64_t d : dims)
    reduced[d < 0 ? d + it.getRank() : d] = true;
  Sharding res;
  res.partial = in[0].partial;
  for (int64_t d = 0; d < it.getRank(); ++d) {
    if (!reduced[d])
      res.dims.push_back(in[0].dims[d]);
    else {
      if (in[0].dims[d] != kNone)
        res.partial |= 1u << in[0].dims[d];
      if (keepdim)
        res.dims.push_back(kNone);
    }
  }
  r.operands = {in[0]};
  r.results = {res};
  r.reason = "reduction: reducing a split dimension leaves a partial sum";
  if (n == "loom.reduce_mean" && (res.partial & ~in[0].partial))
    r.reason += " (the local mean is scaled by 1/group)";
  return r;
}

FailureOr<Rule> normRule(Operation *op, ArrayRef<Sharding> in,
                         const RuleContext &ctx) {
  Rule r;
  Sharding x = full(in[0]);
  x.dims.back() = kNone;
  r.operands.push_back(x);
  for (unsigned i = 1; i < op->getNumOperands(); ++i)
    r.operands.push_back(Sharding::replicated(rankOf(op->getOperand(i))));
  r.results.push_back(x);
  for (unsigned i = 1; i < op->getNumResults(); ++i)
    r.results.push_back(make(lead(x, x.dims.size() - 1)));
  r.reason = "normalisation: rows follow the input, the normalised "
             "dimension whole";
  return r;
}

FailureOr<Rule> softmaxGradRule(Operation *op, ArrayRef<Sharding> in,
                                const RuleContext &ctx) {
  Rule r;
  Sharding x = full(in[0]);
  x.dims.back() = kNone;
  r.operands = {x, x};
  r.results = {x};
  r.reason = "softmax gradient: rows follow the output";
  return r;
}

FailureOr<Rule> normGradRule(Operation *op, ArrayRef<Sharding> in,
                             const RuleContext &ctx) {
  Rule r;
  // (dy, x, g, [mean,] rstd) -> (dx, dg[, db])
  Sharding x = full(in[1]);
  x.dims.back() = kNone;
  Sharding row = make(lead(x, x.dims.size() - 1));
  r.operands = {x, x, Sharding::replicated(1)};
  for (unsigned i = 3; i < op->getNumOperands(); ++i)
    r.operands.push_back(row);
  unsigned rows = axesOf(row.dims);
  r.results.push_back(x);
  for (unsigned i = 1; i < op->getNumResults(); ++i)
    r.results.push_back(make({kNone}, rows));
  r.reason = "normalisation gradient: gain/bias gradients are partial over "
             "the axes the rows are split on";
  return r;
}

FailureOr<Rule> attentionRule(Operation *op, ArrayRef<Sharding> in,
                              const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  StringRef n = op->getName().getStringRef();
  Rule r;
  int b = in[0].dims[0], h = in[0].dims[1];
  auto qt = ttype(op->getOperand(0));
  if (h != kNone && qt.getDimSize(1) % mesh.group(h) != 0)
    h = kNone;
  Sharding q = make({b, h, kNone, kNone}), row = make({b, h, kNone});
  Sharding wg = make({h, kNone}), bg = make({h});
  bool gated = n.contains("gated");
  bool grad = n.ends_with("_grad");
  unsigned batch = b == kNone ? 0 : 1u << b;
  if (!grad) {
    r.operands = {q, q, q};
    if (gated)
      r.operands.append({wg, bg});
    r.results = {q, row};
    if (gated)
      r.results.append({row, q});
  } else if (!gated) {
    // (q, k, v, out, lse, dout) -> (dq, dk, dv)
    r.operands = {q, q, q, q, row, q};
    r.results = {q, q, q};
  } else {
    // (q, k, v, wg, bg, lse, gate, attn, dout) -> (dq, dk, dv, dwg, dbg)
    r.operands = {q, q, q, wg, bg, row, row, q, q};
    r.results = {q, q, q, make({h, kNone}, batch), make({h}, batch)};
  }
  r.reason = "attention: batch and heads split, each head computed whole";
  if (gated)
    r.reason += "; gates are per head, so split heads need no communication";
  return r;
}

FailureOr<Rule> embeddingRule(Operation *op, ArrayRef<Sharding> in,
                              const RuleContext &ctx) {
  Rule r;
  // (ids, table[V, D]): a vocabulary split gives partial rows.
  Sharding ids = full(in[0]);
  int v = in[1].dims[0];
  Sharding table = make({v, kNone});
  Sharding res = make(ids.dims);
  res.dims.push_back(kNone);
  res.partial = v == kNone ? 0 : 1u << v;
  r.operands = {ids, table};
  r.results = {res};
  r.reason = v == kNone ? "embedding: rows follow the ids"
                        : "embedding: vocabulary-parallel, each rank looks up "
                          "its rows; partial over " +
                              std::string(axisName(v));
  return r;
}

FailureOr<Rule> embeddingGradRule(Operation *op, ArrayRef<Sharding> in,
                                  const RuleContext &ctx) {
  Rule r;
  // (ids, dy) -> dtable: its vocabulary split is the one its parameter's
  // optimizer update needs (propagated backwards from that consumer).
  Sharding ids = full(in[0]);
  Sharding dy = make(ids.dims);
  dy.dims.push_back(kNone);
  int v = kNone;
  std::string from;
  for (Operation *user : op->getResult(0).getUsers()) {
    StringRef un = user->getName().getStringRef();
    if ((un == "train.adamw" || un == "train.sgd") &&
        user->getOperand(1) == op->getResult(0)) {
      Sharding p = ctx.of(user->getOperand(0));
      v = p.dims.empty() ? kNone : p.dims[0];
      from = "the update of its parameter";
    }
  }
  r.operands = {ids, dy};
  r.results = {make({v, kNone}, axesOf(ids.dims))};
  r.reason = "embedding gradient: partial over the axes the ids are split on";
  if (v != kNone)
    r.reason += "; vocabulary split over " + std::string(axisName(v)) +
                " as " + from + " needs (propagated backwards)";
  return r;
}

FailureOr<Rule> crossEntropyRule(Operation *op, ArrayRef<Sharding> in,
                                 const RuleContext &ctx) {
  StringRef n = op->getName().getStringRef();
  Rule r;
  Sharding logits = full(in[0]);
  int c = logits.dims.back();
  Sharding rows = make(lead(logits, logits.dims.size() - 1));
  unsigned rowAxes = axesOf(rows.dims);
  if (n == "train.cross_entropy_grad") {
    r.operands = {logits, rows, rows, Sharding::replicated(0)};
    r.results = {logits};
  } else {
    r.operands = {logits, rows};
    r.results = {make({}, rowAxes)};
    if (op->getNumResults() > 1)
      r.results.append({rows, make({kNone}, rowAxes)});
  }
  r.reason = "cross_entropy: rows follow the logits";
  if (c != kNone)
    r.reason += std::string("; vocabulary-parallel over ") + axisName(c) +
                " (max, sum of exp and target logit all-reduced inside)";
  if (rowAxes && n != "train.cross_entropy_grad")
    r.reason += "; the mean is weighted by this rank's share of the counted "
                "rows and summed over " +
                axesText(rowAxes);
  return r;
}

FailureOr<Rule> mseRule(Operation *op, ArrayRef<Sharding> in,
                        const RuleContext &ctx) {
  const Mesh &mesh = ctx.mesh;
  Rule e = elementwise(op, in, mesh);
  Sharding s = e.operands[0];
  for (Sharding &o : e.operands)
    o.partial = 0;
  e.results = {make({}, axesOf(s.dims))};
  e.reason = "mse: mean over split elements is a partial sum of scaled local "
             "means";
  return e;
}

FailureOr<Rule> globalNormRule(Operation *op, ArrayRef<Sharding> in,
                               const RuleContext &ctx) {
  Rule r;
  // A gradient is needed as its optimizer update needs it (ZeRO-1: split
  // over dp, so its all-reduce becomes a reduce-scatter).
  for (auto [v, s] : llvm::zip(op->getOperands(), in)) {
    Sharding want = full(s);
    for (Operation *user : v.getUsers()) {
      StringRef un = user->getName().getStringRef();
      if ((un == "train.adamw" || un == "train.sgd") && user->getOperand(1) == v)
        if (Operation *st = user->getOperand(2).getDefiningOp())
          if (auto name = st->getAttrOfType<StringAttr>("name"))
            if (auto stored = ctx.stored(name.getValue()))
              want = full(*stored);
    }
    r.operands.push_back(want);
  }
  r.results = {Sharding::replicated(0)};
  r.reason = "global norm: squares of each rank's shards, summed over the "
             "axes they are split on";
  return r;
}

FailureOr<Rule> optimizerRule(Operation *op, ArrayRef<Sharding> in,
                              const RuleContext &ctx) {
  StringRef n = op->getName().getStringRef();
  Rule r;
  // The update runs where the optimizer state lives. SGD without momentum
  // has none (its buffer operand is the gradient itself): where the
  // parameter lives, the gradient reduced to it first.
  Value state = op->getOperand(2);
  if (n == "train.sgd" && state == op->getOperand(1))
    state = op->getOperand(0);
  Sharding st = ctx.of(state);
  st.partial = 0;
  for (unsigned i = 0; i < op->getNumOperands(); ++i)
    r.operands.push_back(i < 4 && i != 3
                             ? st
                             : (n == "train.sgd" && i == 3
                                    ? Sharding::replicated(0)
                                    : Sharding::replicated(rankOf(op->getOperand(i)))));
  if (n == "train.adamw")
    r.operands[3] = st;
  for (unsigned i = 0; i < op->getNumResults(); ++i)
    r.results.push_back(st);
  r.reason = "optimizer: runs on the shard its state holds";
  if (st.splitAxes() & (1u << kDp))
    r.reason += " (ZeRO-1: gradients reduce-scattered, parameters sliced)";
  return r;
}

FailureOr<Rule> updateRule(Operation *op, ArrayRef<Sharding> in,
                           const RuleContext &ctx) {
  Rule r;
  auto name = cast<StringAttr>(op->getAttr("name")).getValue();
  auto s = ctx.stored(name);
  r.operands = {s ? full(*s) : Sharding::replicated(rankOf(op->getOperand(0)))};
  r.reason = "update: the stored sharding of '" + name.str() + "'";
  return r;
}

FailureOr<Rule> scalarRule(Operation *op, ArrayRef<Sharding> in,
                           const RuleContext &ctx) {
  return replicatedRule(op, "scalar: replicated");
}

/// A slice keeps every dimension's split but the sliced one's, which must be
/// whole (a partial sum stays partial: slicing is linear).
FailureOr<Rule> sliceRule(Operation *op, ArrayRef<Sharding> in,
                          const RuleContext &ctx) {
  Rule r;
  Sharding want = in[0];
  int64_t rank = ttype(op->getOperand(0)).getRank();
  int64_t dim = cast<IntegerAttr>(op->getAttr("dim")).getInt();
  if (dim < 0)
    dim += rank;
  want.dims[dim] = kNone;
  r.operands = {want};
  r.results = {want};
  r.reason = "slice: other dimensions keep their split, the sliced one whole";
  return r;
}

using RuleFn = FailureOr<Rule> (*)(Operation *, ArrayRef<Sharding>,
                                   const RuleContext &);

/// One family's rule as an op's ShardingRuleOpInterface.
template <typename ConcreteOp, RuleFn Fn>
struct RuleModel
    : public ::loom::dist::ShardingRuleOpInterface::ExternalModel<
          RuleModel<ConcreteOp, Fn>, ConcreteOp> {
  FailureOr<Rule> getShardingRule(Operation *op, ArrayRef<Sharding> operands,
                                  const RuleContext &ctx) const {
    return Fn(op, operands, ctx);
  }
};

template <RuleFn Fn, typename... Ops>
void attach(MLIRContext *ctx) {
  (Ops::template attachInterface<RuleModel<Ops, Fn>>(*ctx), ...);
}

} // namespace

FailureOr<Rule> ruleFor(Operation *op, ArrayRef<Sharding> in,
                        const RuleContext &ctx) {
  if (auto rule = dyn_cast<::loom::dist::ShardingRuleOpInterface>(op))
    return rule.getShardingRule(in, ctx);
  if (isa<arith::ConstantOp>(op))
    return replicatedRule(op, "constant: replicated");
  return replicatedRule(op, "no sharding rule for this op: computed on whole "
                            "values (always correct, may gather)");
}

} // namespace loom::sharding

void loom::registerShardingRules(DialectRegistry &registry) {
  using namespace loom::sharding;
  registry.addExtension(+[](MLIRContext *ctx, loom::LoomDialect *) {
    attach<constantRule, loom::ConstantOp>(ctx);
    attach<elementwiseRule, loom::AddOp, loom::SubOp, loom::MulOp, loom::DivOp,
           loom::NegOp, loom::ExpOp, loom::LogOp, loom::SqrtOp, loom::RsqrtOp,
           loom::TanhOp, loom::ReluOp, loom::GeluOp, loom::SigmoidOp,
           loom::CastOp>(ctx);
    attach<matmulRule, loom::MatmulOp>(ctx);
    attach<reshapeRule, loom::ReshapeOp>(ctx);
    attach<sliceRule, loom::SliceOp>(ctx);
    attach<transposeRule, loom::TransposeOp>(ctx);
    attach<headsRule, loom::SplitHeadsOp, loom::MergeHeadsOp>(ctx);
    attach<broadcastRule, loom::BroadcastToOp>(ctx);
    attach<reduceRule, loom::ReduceSumOp, loom::ReduceMeanOp>(ctx);
    attach<normRule, loom::LayerNormOp, loom::RmsNormOp, loom::SoftmaxOp,
           loom::LogSoftmaxOp>(ctx);
    attach<attentionRule, loom::AttentionOp, loom::GatedAttentionOp>(ctx);
    attach<embeddingRule, loom::EmbeddingOp>(ctx);
    attach<crossEntropyRule, loom::CrossEntropyOp>(ctx);
    attach<mseRule, loom::MseOp>(ctx);
    attach<fakeQuantRule, loom::FakeQuantOp>(ctx);
  });
  registry.addExtension(+[](MLIRContext *ctx, loom::train::TrainDialect *) {
    namespace t = loom::train;
    attach<inputRule, t::InputOp>(ctx);
    attach<storedRule, t::ParamOp, t::StateOp>(ctx);
    attach<constantRule, t::LearningRateOp>(ctx);
    attach<elementwiseRule, t::ReluGradOp, t::GeluGradOp>(ctx);
    attach<fakeQuantRule, t::FakeQuantGradOp>(ctx);
    attach<gemmRule, t::GemmOp>(ctx);
    attach<normRule, t::LayerNormOp, t::RmsNormOp>(ctx);
    attach<softmaxGradRule, t::SoftmaxGradOp, t::LogSoftmaxGradOp>(ctx);
    attach<normGradRule, t::LayerNormGradOp, t::RmsNormGradOp>(ctx);
    attach<attentionRule, t::AttentionOp, t::GatedAttentionOp,
           t::AttentionGradOp, t::GatedAttentionGradOp>(ctx);
    attach<embeddingGradRule, t::EmbeddingGradOp>(ctx);
    attach<crossEntropyRule, t::CrossEntropyOp, t::CrossEntropyGradOp>(ctx);
    attach<globalNormRule, t::GlobalNormOp>(ctx);
    attach<optimizerRule, t::AdamWOp, t::SgdOp>(ctx);
    attach<updateRule, t::UpdateOp, t::GradientOp>(ctx);
    attach<scalarRule, t::OutputOp, t::ClipCoefOp, t::IncrementOp,
           t::NonFiniteOp, t::LossScaleValueOp, t::LossScaleUpdateOp,
           t::AdaptiveClipOp, t::LossWeightOp>(ctx);
    // Post-training quantization (one rank: loomc refuses a mesh).
    attach<scalarRule, t::ObserveRangeOp, t::QuantizeWeightOp, t::QMatmulOp>(
        ctx);
  });
}
