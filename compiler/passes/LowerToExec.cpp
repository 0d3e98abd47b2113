//===- LowerToExec.cpp - static memory plan and lowering to exec ----------===//
//
// Bufferization for straight-line programs with static shapes, done as a
// memory plan rather than as allocations:
//  1. Every tensor value gets a buffer. Values that must share storage are
//     one buffer: a reshape and its operand; a linalg op's result and its
//     destination (tensor.empty / fill); an optimizer's outputs and the
//     parameter and moments they update in place.
//  2. Parameters, optimizer state, inputs and output slots are persistent,
//     laid out once for all programs of the module (they share the arena).
//  3. Every other buffer lives from its first definition to its last use;
//     offsets are assigned largest-first, each at the lowest 64-byte aligned
//     offset that overlaps no buffer alive at the same time.
// Then each op becomes exec: library ops an `exec.call` of the runtime ABI,
// linalg ops the same op on `exec.view`s, scalar bookkeeping arith.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "llvm/ADT/MapVector.h"
#include <set>

#include "dialects/Loom/LoomOps.h"
#include "dialects/Train/TrainDialect.h"

#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/IRMapping.h"

#include <map>

namespace loom {
#define GEN_PASS_DEF_LOWERTOEXEC
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

constexpr int64_t kAlign = 64;
int64_t alignUp(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

int64_t bytesOf(Type t) {
  auto st = cast<ShapedType>(t);
  int64_t bits = st.getElementTypeBitWidth();
  return st.getNumElements() * std::max<int64_t>(1, bits / 8);
}

std::string dtypeName(Type t) {
  if (t.isF32())
    return "f32";
  if (t.isF16())
    return "f16";
  if (t.isBF16())
    return "bf16";
  if (t.isF64())
    return "f64";
  if (t.isInteger(32))
    return "i32";
  if (t.isInteger(64))
    return "i64";
  if (t.isInteger(8))
    return "i8";
  return "i1";
}

/// FNV-1a 64: the dropout key of an op path (runtime/kernels/Philox.h).
uint64_t fnv1a64(StringRef s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

struct Buffer {
  int64_t size = 0;
  int64_t offset = -1;
  int first = 0, last = 0;
  bool persistent = false;
  std::string category; ///< params, optimizer, inputs, outputs, grads,
                        ///< activations, workspace
  /// A region of another buffer (its offset is the parent's plus
  /// `subOffset`; it takes no space of its own): the operands of a gradient
  /// bucket's concat and the slices the reduced bucket is read back through.
  int parent = -1;
  int64_t subOffset = 0;
};

/// The persistent part of the plan, shared by every program.
struct PersistentPlan {
  struct Named {
    std::string name;
    Operation *decl; ///< the first train.param/state/input op seen
    int64_t offset;
  };
  std::vector<Named> params, state, inputs;
  std::map<std::string, int64_t> offsets; ///< every persistent name
  std::map<std::string, int64_t> outputs; ///< output slots
  int64_t end = 0;
  int64_t bytes[4] = {0, 0, 0, 0}; ///< params, optimizer, inputs, outputs
};

/// Plans and lowers one dist.program.
class ProgramLowering {
public:
  ProgramLowering(dist::ProgramOp program, PersistentPlan &persistent,
                  std::vector<std::string> &opTable,
                  std::vector<std::string> &spanTable)
      : program_(program), persistent_(persistent), opTable_(opTable),
        spanTable_(spanTable) {}

  LogicalResult plan();
  LogicalResult emit(OpBuilder &moduleBuilder, int64_t arenaBytes);
  int64_t transientEnd() const { return transientEnd_; }
  /// Bytes by category at the program's peak of live transient memory.
  std::map<std::string, int64_t> peakBreakdown() const { return peak_; }

private:
  int newBuffer(Value v, int at, const std::string &category) {
    buffers_.push_back({alignUp(bytesOf(v.getType())), -1, at, at, false,
                        category});
    int id = static_cast<int>(buffers_.size() - 1);
    bufOf_[v] = id;
    return id;
  }
  void alias(Value result, Value source) { bufOf_[result] = bufOf_.at(source); }
  int persistentBuffer(Value v, const std::string &name,
                       const std::string &category) {
    buffers_.push_back({alignUp(bytesOf(v.getType())),
                        persistent_.offsets.at(name), 0, 0, true, category});
    int id = static_cast<int>(buffers_.size() - 1);
    bufOf_[v] = id;
    return id;
  }

  // Emission helpers.
  Value view(OpBuilder &b, Value v);
  Value viewAt(OpBuilder &b, int64_t offset, Type tensorType);
  Value i64(OpBuilder &b, int64_t v) {
    return b.create<arith::ConstantOp>(program_.getLoc(),
                                       b.getI64IntegerAttr(v));
  }
  Value i32(OpBuilder &b, int64_t v) {
    return b.create<arith::ConstantOp>(program_.getLoc(),
                                       b.getI32IntegerAttr(static_cast<int32_t>(v)));
  }
  Value f32(OpBuilder &b, double v) {
    return b.create<arith::ConstantOp>(program_.getLoc(),
                                       b.getF32FloatAttr(static_cast<float>(v)));
  }
  Value loadScalar(OpBuilder &b, Value tensor) {
    return b.create<memref::LoadOp>(program_.getLoc(), view(b, tensor),
                                    ValueRange{});
  }
  void call(OpBuilder &b, Location loc, StringRef callee,
            ArrayRef<Value> args, TypeRange results = {}) {
    OperationState state(loc, "exec.call");
    state.addAttribute("callee", FlatSymbolRefAttr::get(b.getContext(), callee));
    state.addOperands(args);
    state.addTypes(results);
    b.create(state);
  }
  LogicalResult lowerOp(OpBuilder &b, Operation *op);
  LogicalResult lowerGemm(OpBuilder &b, Operation *op, bool ta, bool tb);
  void placeInsideBuckets();

  /// After an op, a --check-numerics probe of each floating-point result.
  void checkResults(OpBuilder &b, Operation *op);

  dist::ProgramOp program_;
  PersistentPlan &persistent_;
  std::vector<std::string> &opTable_;
  std::vector<std::string> &spanTable_; ///< manifest "trace_spans"
  std::vector<Buffer> buffers_;
  DenseMap<Value, int> bufOf_;
  DenseMap<Value, Value> views_;
  IRMapping scalars_; ///< arith constants used by fills and bodies
  /// Started non-blocking all-reduces not yet waited, by result.
  llvm::MapVector<Value, Value> pending_;
  int64_t transientEnd_ = 0;
  std::map<std::string, int64_t> peak_;
};

bool isOneOf(Operation *op, std::initializer_list<StringRef> names) {
  StringRef n = op->getName().getStringRef();
  for (StringRef x : names)
    if (n == x)
      return true;
  return false;
}

LogicalResult ProgramLowering::plan() {
  Block &body = program_.getBody().front();
  bool evalProgram = program_.getKind() == "eval";
  int index = 0;
  int lossIndex = std::numeric_limits<int>::max();
  // Gradients: the `grad` operands of optimizer updates.
  DenseSet<Value> grads;
  for (Operation &op : body)
    if (isOneOf(&op, {"train.adamw", "train.sgd"}))
      grads.insert(op.getOperand(1));
  // And the per-rank partial gradients they are reduced from (through the
  // data-parallel buckets: reshape, concat, all-reduce, slice).
  SmallVector<Value> work(grads.begin(), grads.end());
  while (!work.empty()) {
    Operation *def = work.pop_back_val().getDefiningOp();
    if (!def || !isOneOf(def, {"loom.reshape", "loom.slice", "loom.concat",
                               "dist.all_reduce", "dist.reduce_scatter"}))
      continue;
    for (Value in : def->getOperands())
      if (isa<RankedTensorType>(in.getType()) && grads.insert(in).second)
        work.push_back(in);
  }

  for (Operation &op : body) {
    ++index;
    auto use = [&](Value v) {
      auto it = bufOf_.find(v);
      if (it != bufOf_.end())
        buffers_[it->second].last = std::max(buffers_[it->second].last, index);
    };
    for (Value v : op.getOperands())
      use(v);
    // Values used inside linalg bodies from outside (none expected) and
    // scalar arith constants need no buffers.
    StringRef n = op.getName().getStringRef();
    auto name = [&]() {
      return cast<StringAttr>(op.getAttr("name")).str();
    };
    std::string category = index < lossIndex ? "activations" : "workspace";
    if (n == "train.param") {
      persistentBuffer(op.getResult(0), name(), "params");
    } else if (n == "train.state") {
      persistentBuffer(op.getResult(0), name(), "optimizer");
    } else if (n == "train.input") {
      persistentBuffer(op.getResult(0), name(), "inputs");
    } else if (n == "train.output") {
      if (name() == "loss")
        lossIndex = index;
    } else if (n == "loom.reshape" ||
               (evalProgram && n == "loom.dropout")) {
      alias(op.getResult(0), op.getOperand(0));
    } else if (n == "linalg.fill") {
      alias(op.getResult(0), op.getOperand(1));
    } else if (auto g = dyn_cast<linalg::GenericOp>(op)) {
      for (unsigned i = 0; i < g->getNumResults(); ++i) {
        Value init = g.getDpsInitOperand(i)->get();
        if (init.hasOneUse() && bufOf_.count(init))
          alias(op.getResult(i), init);
        else
          newBuffer(op.getResult(i), index, category);
      }
    } else if (n == "train.adamw") {
      alias(op.getResult(0), op.getOperand(0));
      alias(op.getResult(1), op.getOperand(2));
      alias(op.getResult(2), op.getOperand(3));
    } else if (n == "train.sgd") {
      alias(op.getResult(0), op.getOperand(0));
      alias(op.getResult(1), op.getOperand(2));
    } else if (n == "train.increment") {
      alias(op.getResult(0), op.getOperand(0));
    } else if (n == "train.adaptive_clip") {
      newBuffer(op.getResult(0), index, category);
      alias(op.getResult(1), op.getOperand(1));
      alias(op.getResult(2), op.getOperand(2));
    } else if (n == "dist.all_reduce") {
      // In place when nothing else reads the operand's buffer.
      Value in = op.getOperand(0);
      auto it = bufOf_.find(in);
      bool alone = in.hasOneUse() && it != bufOf_.end() &&
                   !buffers_[it->second].persistent;
      if (alone)
        for (auto &[v, id] : bufOf_)
          alone &= id != it->second || v == in;
      if (alone)
        alias(op.getResult(0), in);
      else
        newBuffer(op.getResult(0), index, category);
    } else if (n == "arith.constant") {
      // Scalars for fills; no buffer.
    } else {
      for (Value r : op.getResults())
        if (isa<RankedTensorType>(r.getType()))
          newBuffer(r, index, grads.count(r) ? "grads" : category);
    }
  }
  // Gradients keep their category through aliases (fills, generics).
  for (Value g : grads)
    if (bufOf_.count(g) && !buffers_[bufOf_[g]].persistent)
      buffers_[bufOf_[g]].category = "grads";
  placeInsideBuckets();

  // Offsets: largest first, lowest non-overlapping offset.
  std::vector<int> order;
  for (size_t i = 0; i < buffers_.size(); ++i)
    if (!buffers_[i].persistent && buffers_[i].parent < 0)
      order.push_back(static_cast<int>(i));
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return buffers_[a].size > buffers_[b].size;
  });
  std::vector<int> placed;
  int64_t base = persistent_.end;
  for (int id : order) {
    Buffer &buf = buffers_[id];
    std::vector<std::pair<int64_t, int64_t>> busy;
    for (int other : placed) {
      const Buffer &o = buffers_[other];
      if (o.first <= buf.last && buf.first <= o.last)
        busy.push_back({o.offset, o.offset + o.size});
    }
    std::sort(busy.begin(), busy.end());
    int64_t at = base;
    for (auto [lo, hi] : busy) {
      if (at + buf.size <= lo)
        break;
      at = std::max(at, hi);
    }
    buf.offset = at;
    transientEnd_ = std::max(transientEnd_, at + buf.size);
    placed.push_back(id);
  }
  transientEnd_ = std::max(transientEnd_, base);
  // Regions of other buffers (a parent precedes its children: a slice's
  // source is a concat's result, never a concat operand).
  for (Buffer &buf : buffers_)
    if (buf.parent >= 0)
      buf.offset = buffers_[buf.parent].offset + buf.subOffset;

  // The peak of live transient bytes, by category.
  int64_t best = -1;
  for (int i = 1; i <= index; ++i) {
    std::map<std::string, int64_t> live;
    int64_t total = 0;
    for (const Buffer &buf : buffers_)
      if (!buf.persistent && buf.parent < 0 && buf.first <= i && i <= buf.last) {
        live[buf.category] += buf.size;
        total += buf.size;
      }
    if (total > best) {
      best = total;
      peak_ = live;
    }
  }
  return success();
}

/// Data-parallel gradient buckets without copies. A bucket is
/// `all_reduce(concat(g_0, ..., g_k))` read back through `slice`s (flat f32
/// tensors, dim 0). Each g_i whose buffer is last used by the concat is
/// planned as the region of the concat's buffer it would be copied to, so
/// its producer writes there; each slice whose reads are all read-only
/// (reshapes, optimizer gradients, norms, loop inputs) and whose source is
/// not written after it is planned as the region of the reduced bucket it
/// would be copied from. GPT-2-small's 652 MB of fp32 gradients were
/// otherwise copied twice per step. The bucket's buffer lives from its
/// first gradient's producer to its last slice's reader.
void ProgramLowering::placeInsideBuckets() {
  Block &body = program_.getBody().front();
  DenseMap<Operation *, int> indexOf;
  int position = 0;
  for (Operation &op : body)
    indexOf[&op] = ++position;
  auto flat = [](Value v) {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t && t.getRank() == 1 && t.getElementType().isF32();
  };
  // Every value planned in buffer `id`.
  auto valuesOf = [&](int id) {
    SmallVector<Value> vs;
    for (auto &[v, b] : bufOf_)
      if (b == id)
        vs.push_back(v);
    return vs;
  };
  for (Operation &op : body) {
    StringRef n = op.getName().getStringRef();
    if (n == "loom.concat" && flat(op.getResult(0)) &&
        cast<IntegerAttr>(op.getAttr("dim")).getInt() == 0) {
      int whole = bufOf_.at(op.getResult(0));
      Buffer &c = buffers_[whole];
      if (c.persistent || c.parent >= 0)
        continue;
      DenseSet<int> seen;
      int64_t offset = 0;
      SmallVector<std::pair<int, int64_t>> parts;
      bool ok = true;
      for (Value in : op.getOperands()) {
        auto it = bufOf_.find(in);
        if (!flat(in) || it == bufOf_.end()) {
          ok = false;
          break;
        }
        const Buffer &part = buffers_[it->second];
        if (!part.persistent && part.parent < 0 && it->second != whole &&
            part.last == indexOf[&op] && seen.insert(it->second).second)
          parts.push_back({it->second, offset});
        offset += bytesOf(in.getType());
      }
      if (!ok)
        continue;
      for (auto [id, at] : parts) {
        buffers_[id].parent = whole;
        buffers_[id].subOffset = at;
        c.first = std::min(c.first, buffers_[id].first);
      }
      continue;
    }
    if (n != "loom.slice" || !flat(op.getResult(0)) || !flat(op.getOperand(0)) ||
        cast<IntegerAttr>(op.getAttr("dim")).getInt() != 0)
      continue;
    int source = bufOf_.at(op.getOperand(0)), result = bufOf_.at(op.getResult(0));
    if (source == result || buffers_[source].persistent ||
        buffers_[result].persistent || buffers_[result].parent >= 0)
      continue;
    // The source is only read from here on; the slice is only read.
    bool ok = true;
    for (Value v : valuesOf(source))
      for (OpOperand &use : v.getUses())
        ok &= use.getOwner()->getName().getStringRef() == "loom.slice" ||
              indexOf[use.getOwner()] <= indexOf[&op];
    for (Value v : valuesOf(result))
      for (OpOperand &use : v.getUses()) {
        Operation *user = use.getOwner();
        StringRef u = user->getName().getStringRef();
        auto generic = dyn_cast<linalg::GenericOp>(user);
        ok &= u == "loom.reshape" || u == "train.global_norm" ||
              ((u == "train.adamw" || u == "train.sgd") &&
               use.getOperandNumber() == 1) ||
              (generic && generic.isDpsInput(&use));
      }
    if (!ok)
      continue;
    Buffer &src = buffers_[source];
    buffers_[result].parent = source;
    buffers_[result].subOffset =
        cast<IntegerAttr>(op.getAttr("start")).getInt() * 4;
    src.last = std::max(src.last, buffers_[result].last);
  }
}

Value ProgramLowering::viewAt(OpBuilder &b, int64_t offset, Type tensorType) {
  auto t = cast<RankedTensorType>(tensorType);
  auto mt = MemRefType::get(t.getShape(), t.getElementType());
  OperationState state(program_.getLoc(), "exec.view");
  state.addAttribute("offset", b.getI64IntegerAttr(offset));
  state.addTypes(mt);
  return b.create(state)->getResult(0);
}

Value ProgramLowering::view(OpBuilder &b, Value v) {
  auto it = views_.find(v);
  if (it != views_.end())
    return it->second;
  const Buffer &buf = buffers_.at(bufOf_.at(v));
  // Views are created at the top of the program, so they dominate all uses.
  OpBuilder::InsertionGuard guard(b);
  b.setInsertionPointToStart(b.getInsertionBlock());
  Value m = viewAt(b, buf.offset, v.getType());
  views_[v] = m;
  return m;
}

LogicalResult ProgramLowering::lowerGemm(OpBuilder &b, Operation *op, bool ta,
                                         bool tb) {
  Location loc = op->getLoc();
  auto at = cast<RankedTensorType>(op->getOperand(0).getType());
  auto bt = cast<RankedTensorType>(op->getOperand(1).getType());
  auto ct = cast<RankedTensorType>(op->getResult(0).getType());
  auto batchOf = [](RankedTensorType t) {
    int64_t n = 1;
    for (int64_t i = 0; i + 2 < t.getRank(); ++i)
      n *= t.getDimSize(i);
    return n;
  };
  int64_t r = ct.getRank();
  int64_t M = ct.getDimSize(r - 2), N = ct.getDimSize(r - 1);
  int64_t K = ta ? at.getDimSize(at.getRank() - 2) : at.getDimSize(at.getRank() - 1);
  int64_t Ba = batchOf(at), Bb = batchOf(bt), Bc = batchOf(ct);
  int64_t batch = Bc, sa = M * K, sb = K * N, sc = M * N;
  if (Bb == 1 && !ta && Ba == Bc) {
    M *= Bc; // [B.., m, k] @ [k, n]: one GEMM over all rows.
    batch = 1;
    sc = M * N;
    sa = M * K;
    sb = 0;
  } else if (Ba == Bc && Bb == Bc) {
  } else if (Ba == 1 && Bb == Bc) {
    sa = 0;
  } else if (Bb == 1 && Ba == Bc) {
    sb = 0;
  } else {
    return op->emitOpError("matmul with batch dimensions broadcast on both "
                           "operands is not supported yet; broadcast_to one "
                           "operand first");
  }
  Type et = ct.getElementType();
  SmallVector<Value> args = {i64(b, batch), i32(b, ta), i32(b, tb), i64(b, M),
                             i64(b, N), i64(b, K), view(b, op->getOperand(0)),
                             i64(b, sa), view(b, op->getOperand(1)),
                             i64(b, sb), view(b, op->getResult(0)),
                             i64(b, sc)};
  if (et.isF32()) {
    args.append({f32(b, 1.0), f32(b, 0.0)});
    call(b, loc, "loom_gemm", args);
  } else if (et.isBF16() || et.isF16()) {
    call(b, loc, et.isBF16() ? "loom_gemm_bf16" : "loom_gemm_f16", args);
  } else {
    return op->emitOpError("matmul on ")
           << et << " has no kernel (f32, bf16 and f16 do)";
  }
  return success();
}

LogicalResult ProgramLowering::lowerOp(OpBuilder &b, Operation *op) {
  Location loc = op->getLoc();
  StringRef n = op->getName().getStringRef();
  auto shapeOf = [](Value v) {
    return cast<RankedTensorType>(v.getType()).getShape();
  };
  auto elementOf = [](Value v) {
    return cast<RankedTensorType>(v.getType()).getElementType();
  };
  auto rowsCols = [&](Value v) {
    auto s = shapeOf(v);
    int64_t cols = s.empty() ? 1 : s.back();
    int64_t rows = cols ? cast<RankedTensorType>(v.getType()).getNumElements() / cols : 0;
    return std::pair<int64_t, int64_t>{rows, cols};
  };
  auto fattr = [&](StringRef name, double d = 0) {
    if (auto a = op->getAttrOfType<FloatAttr>(name))
      return a.getValueAsDouble();
    return d;
  };
  auto battr = [&](StringRef name) {
    auto a = op->getAttrOfType<BoolAttr>(name);
    return a && a.getValue();
  };
  auto V = [&](unsigned i) { return view(b, op->getOperand(i)); };
  auto R = [&](unsigned i) { return view(b, op->getResult(i)); };
  auto numel = [&](Value v) {
    return cast<RankedTensorType>(v.getType()).getNumElements();
  };

  if (isOneOf(op, {"train.param", "train.state", "train.input", "tensor.empty",
                   "loom.reshape"}))
    return success();
  if (n == "arith.constant") {
    Operation *c = b.clone(*op);
    scalars_.map(op->getResult(0), c->getResult(0));
    return success();
  }
  if (n == "loom.constant") {
    auto dense = dyn_cast<DenseElementsAttr>(op->getAttr("value"));
    if (!dense || !dense.isSplat())
      return op->emitOpError("only splat constants are supported by the "
                             "memory plan");
    auto value = cast<TypedAttr>(dense.getSplatValue<Attribute>());
    Value c = b.create<arith::ConstantOp>(loc, value);
    b.create<linalg::FillOp>(loc, ValueRange{c}, ValueRange{R(0)});
    return success();
  }
  if (n == "train.output") {
    auto name = cast<StringAttr>(op->getAttr("name")).str();
    Value slot = viewAt(b, persistent_.outputs.at(name), op->getOperand(0).getType());
    b.create<memref::StoreOp>(loc, loadScalar(b, op->getOperand(0)), slot,
                              ValueRange{});
    return success();
  }
  if (n == "train.update") {
    auto name = cast<StringAttr>(op->getAttr("name")).str();
    int64_t target = persistent_.offsets.at(name);
    const Buffer &src = buffers_.at(bufOf_.at(op->getOperand(0)));
    if (src.offset != target)
      b.create<memref::CopyOp>(loc, V(0),
                               viewAt(b, target, op->getOperand(0).getType()));
    return success();
  }
  if (n == "linalg.fill") {
    Value value = scalars_.lookupOrDefault(op->getOperand(0));
    b.create<linalg::FillOp>(loc, ValueRange{value}, ValueRange{R(0)});
    return success();
  }
  if (auto g = dyn_cast<linalg::GenericOp>(op)) {
    SmallVector<Value> ins;
    for (Value v : g.getDpsInputs())
      ins.push_back(view(b, v));
    SmallVector<Value> outs;
    for (unsigned i = 0; i < g->getNumResults(); ++i)
      outs.push_back(R(i));
    auto ng = b.create<linalg::GenericOp>(
        loc, TypeRange{}, ins, outs, g.getIndexingMapsArray(),
        g.getIteratorTypesArray());
    // Folding hoisted the body's constants into the program; they were
    // cloned into the exec program already (scalars_).
    g.getRegion().cloneInto(&ng.getRegion(), scalars_);
    return success();
  }
  // The window of `whole` that a part of shape `part` occupies when it
  // starts at `offset` along `dim` (concat, slice and its gradient).
  auto window = [&](Value whole, ArrayRef<int64_t> part, int64_t dim,
                    int64_t offset) -> Value {
    SmallVector<OpFoldResult> offs, sizes, strides;
    for (int64_t i = 0; i < static_cast<int64_t>(part.size()); ++i) {
      offs.push_back(b.getIndexAttr(i == dim ? offset : 0));
      sizes.push_back(b.getIndexAttr(part[i]));
      strides.push_back(b.getIndexAttr(1));
    }
    return b.create<memref::SubViewOp>(loc, whole, offs, sizes, strides);
  };
  auto iattr = [&](StringRef k) {
    return cast<IntegerAttr>(op->getAttr(k)).getInt();
  };
  if (n == "loom.concat") {
    int64_t dim = iattr("dim"), offset = 0;
    int whole = bufOf_.at(op->getResult(0));
    int64_t bytes = 0;
    for (Value in : op->getOperands()) {
      // Operands planned inside the result (placeInsideBuckets) are there.
      const Buffer &part = buffers_[bufOf_.at(in)];
      if (part.parent != whole || part.subOffset != bytes)
        b.create<memref::CopyOp>(loc, view(b, in),
                                 window(R(0), shapeOf(in), dim, offset));
      offset += shapeOf(in)[dim];
      bytes += bytesOf(in.getType());
    }
    return success();
  }
  if (n == "loom.slice") {
    if (buffers_[bufOf_.at(op->getResult(0))].parent ==
        bufOf_.at(op->getOperand(0)))
      return success(); // A region of its source (placeInsideBuckets).
    b.create<memref::CopyOp>(
        loc, window(V(0), shapeOf(op->getResult(0)), iattr("dim"), iattr("start")),
        R(0));
    return success();
  }
  if (n == "train.slice_grad") {
    auto et = cast<RankedTensorType>(op->getResult(0).getType()).getElementType();
    Value zero = b.create<arith::ConstantOp>(loc, b.getFloatAttr(et, 0.0));
    b.create<linalg::FillOp>(loc, ValueRange{zero}, ValueRange{R(0)});
    b.create<memref::CopyOp>(
        loc, V(0),
        window(R(0), shapeOf(op->getOperand(0)), iattr("dim"), iattr("start")));
    return success();
  }
  if (n == "loom.matmul")
    return lowerGemm(b, op, false, false);
  if (n == "train.gemm")
    return lowerGemm(b, op, battr("transpose_a"), battr("transpose_b"));
  if (n == "train.gemm_bias_gelu" || n == "train.gemm_gelu_grad") {
    // FuseElementwise's CUDA folds: one GEMM over all rows (the right
    // operand 2-D, the left one transposed only when 2-D), its epilogue
    // the bias and GELU or GELU's derivative.
    bool ta = battr("transpose_a"), tb = battr("transpose_b");
    auto at = cast<RankedTensorType>(op->getOperand(0).getType());
    auto [M, N] = rowsCols(op->getResult(0));
    int64_t K = ta ? at.getDimSize(at.getRank() - 2) : at.getDimSize(at.getRank() - 1);
    SmallVector<Value> args = {i32(b, ta), i32(b, tb), i64(b, M), i64(b, N),
                               i64(b, K), V(0), V(1), V(2), R(0)};
    if (n == "train.gemm_bias_gelu") {
      args.push_back(R(1));
      call(b, loc, "loom_gemm_bias_gelu_bf16", args);
    } else {
      call(b, loc, "loom_gemm_gelu_grad_bf16", args);
    }
    return success();
  }
  if (n == "train.layer_norm") {
    auto [rows, cols] = rowsCols(op->getOperand(0));
    // A bf16 output: FuseElementwise folded the rounding in (CUDA only).
    bool low = cast<ShapedType>(op->getResult(0).getType()).getElementType().isBF16();
    call(b, loc, low ? "loom_layer_norm_fwd_bf16" : "loom_layer_norm_fwd",
         {i64(b, rows), i64(b, cols), V(0), V(1), V(2), f32(b, fattr("eps", 1e-5)),
          R(0), R(1), R(2)});
    return success();
  }
  if (n == "train.layer_norm_grad") {
    auto [rows, cols] = rowsCols(op->getOperand(1));
    bool low = cast<ShapedType>(op->getOperand(0).getType()).getElementType().isBF16();
    call(b, loc, low ? "loom_layer_norm_bwd_bf16" : "loom_layer_norm_bwd",
         {i64(b, rows), i64(b, cols), V(0), V(1), V(2), V(3), V(4), R(0), R(1),
          R(2)});
    return success();
  }
  if (n == "train.rms_norm") {
    auto [rows, cols] = rowsCols(op->getOperand(0));
    call(b, loc, "loom_rms_norm_fwd",
         {i64(b, rows), i64(b, cols), V(0), V(1), f32(b, fattr("eps", 1e-6)),
          R(0), R(1)});
    return success();
  }
  if (n == "train.rms_norm_grad") {
    auto [rows, cols] = rowsCols(op->getOperand(1));
    call(b, loc, "loom_rms_norm_bwd",
         {i64(b, rows), i64(b, cols), V(0), V(1), V(2), V(3), R(0), R(1)});
    return success();
  }
  if (n == "loom.softmax" || n == "loom.log_softmax") {
    auto [rows, cols] = rowsCols(op->getOperand(0));
    call(b, loc, n == "loom.softmax" ? "loom_softmax_fwd" : "loom_log_softmax_fwd",
         {i64(b, rows), i64(b, cols), V(0), R(0)});
    return success();
  }
  if (n == "train.softmax_grad" || n == "train.log_softmax_grad") {
    auto [rows, cols] = rowsCols(op->getOperand(0));
    call(b, loc,
         n == "train.softmax_grad" ? "loom_softmax_bwd" : "loom_log_softmax_bwd",
         {i64(b, rows), i64(b, cols), V(0), V(1), R(0)});
    return success();
  }
  auto ignoreIndex = [&]() {
    return cast<IntegerAttr>(op->getAttr("ignore_index")).getInt();
  };
  auto requireI32 = [&](Value v, StringRef what) -> LogicalResult {
    if (!cast<RankedTensorType>(v.getType()).getElementType().isInteger(32))
      return op->emitOpError(what) << " must be i32 tensors in this build";
    return success();
  };
  // Vocabulary-parallel forms (loom-partition's `vocab_axis`): the classes
  // or table rows of this rank are a slice of the mesh axis's group.
  auto vocabAxis = [&]() -> std::optional<int64_t> {
    if (auto a = op->getAttrOfType<IntegerAttr>("vocab_axis"))
      return a.getInt();
    return std::nullopt;
  };
  // Post-training quantization (loom_abi.h, INT8 inference).
  if (n == "train.observe_range") {
    call(b, loc, "loom_observe_range",
         {i64(b, cast<RankedTensorType>(op->getOperand(0).getType())
                     .getNumElements()),
          V(0), V(1), R(0)});
    return success();
  }
  if (n == "train.quantize_weight") {
    auto [k, nOut] = rowsCols(op->getOperand(0));
    call(b, loc, "loom_quantize_weight_s8",
         {i64(b, k), i64(b, nOut), V(0), R(0), R(1)});
    return success();
  }
  if (n == "train.qmatmul") {
    // loom_qlinear, with the neighbours loom-autodiff fused into it.
    auto q = cast<train::QMatmulOp>(op);
    auto [m, k] = rowsCols(q.getInput());
    int64_t nOut = cast<RankedTensorType>(q.getWeight().getType()).getDimSize(1);
    int32_t flags = (q.getQuantizedInput() ? 1 : 0) | (q.getSymmetric() ? 2 : 0) |
                    (q.getBias() ? 4 : 0) | (q.getRelu() ? 8 : 0) |
                    (q.getRangeOut() ? 16 : 0) | (q.getSymmetricOut() ? 32 : 0);
    // Unused pointers (flags not set) repeat the range's.
    auto at = [&](Value v) {
      return V(static_cast<unsigned>(
          llvm::find(op->getOperands(), v) - op->operand_begin()));
    };
    call(b, loc, "loom_qlinear",
         {i64(b, m), i64(b, nOut), i64(b, k), V(0), i32(b, flags), V(1), V(2),
          V(3), q.getBias() ? at(q.getBias()) : V(1),
          q.getRangeOut() ? at(q.getRangeOut()) : V(1), R(0)});
    return success();
  }
  // Convolution and batch normalisation (NCHW).
  if (n == "loom.conv2d" || n == "train.conv2d_grad_input" ||
      n == "train.conv2d_grad_weight") {
    // x [N, C, H, W] and w [O, C, KH, KW], wherever the op has them.
    ArrayRef<int64_t> x, w;
    if (n == "loom.conv2d") {
      x = shapeOf(op->getOperand(0));
      w = shapeOf(op->getOperand(1));
    } else if (n == "train.conv2d_grad_input") {
      x = shapeOf(op->getResult(0));
      w = shapeOf(op->getOperand(1));
    } else {
      x = shapeOf(op->getOperand(0));
      w = shapeOf(op->getResult(0));
    }
    int64_t stride = 1, padding = 0;
    if (auto conv = dyn_cast<Conv2dOp>(op)) {
      stride = conv.getStride();
      padding = conv.getPadding();
    } else {
      stride = cast<IntegerAttr>(op->getAttr("stride")).getInt();
      padding = cast<IntegerAttr>(op->getAttr("padding")).getInt();
    }
    SmallVector<Value> args = {
        i64(b, x[0]), i64(b, x[1]), i64(b, x[2]), i64(b, x[3]), i64(b, w[0]),
        i64(b, w[2]), i64(b, w[3]), i64(b, stride), i64(b, padding), V(0), V(1),
        R(0)};
    call(b, loc,
         n == "loom.conv2d"                    ? "loom_conv2d_fwd"
         : n == "train.conv2d_grad_input" ? "loom_conv2d_bwd_data"
                                               : "loom_conv2d_bwd_weight",
         args);
    return success();
  }
  if (n == "train.batch_norm" || n == "train.batch_norm_eval" ||
      n == "train.batch_norm_grad") {
    // x [N, C, ...] as [N, C, S].
    auto x = shapeOf(op->getOperand(n == "train.batch_norm_grad" ? 1 : 0));
    int64_t S = 1;
    for (int64_t d : x.drop_front(2))
      S *= d;
    SmallVector<Value> args = {i64(b, x[0]), i64(b, x[1]), i64(b, S)};
    for (unsigned i = 0; i < op->getNumOperands(); ++i)
      args.push_back(V(i));
    if (n == "train.batch_norm")
      args.push_back(f32(b, fattr("momentum")));
    if (n != "train.batch_norm_grad")
      args.push_back(f32(b, fattr("eps")));
    for (unsigned i = 0; i < op->getNumResults(); ++i)
      args.push_back(R(i));
    call(b, loc,
         n == "train.batch_norm"        ? "loom_batch_norm_fwd"
         : n == "train.batch_norm_eval" ? "loom_batch_norm_eval"
                                        : "loom_batch_norm_bwd",
         args);
    return success();
  }
  // INT8 convolution (an inference artifact's conv2d, batch norm folded).
  if (n == "train.quantize_conv_weight") {
    auto w = shapeOf(op->getOperand(0));
    int64_t o = w[0], k = numel(op->getOperand(0)) / o;
    bool fold = op->getNumOperands() == 5;
    // Without a batch norm the statistics' pointers repeat the weight's.
    call(b, loc, "loom_quantize_conv_weight_s8",
         {i64(b, o), i64(b, k), V(0), fold ? V(1) : V(0), fold ? V(2) : V(0),
          fold ? V(3) : V(0), fold ? V(4) : V(0), i32(b, fold ? 1 : 0),
          f32(b, fold ? fattr("eps") : 0.0), R(0), R(1), R(2)});
    return success();
  }
  if (n == "train.qconv") {
    auto x = shapeOf(op->getOperand(0));
    auto y = shapeOf(op->getResult(0));
    int64_t stride = cast<IntegerAttr>(op->getAttr("stride")).getInt();
    int64_t padding = cast<IntegerAttr>(op->getAttr("padding")).getInt();
    int64_t kh = cast<IntegerAttr>(op->getAttr("kh")).getInt();
    int64_t kw = cast<IntegerAttr>(op->getAttr("kw")).getInt();
    int32_t flags = (cast<BoolAttr>(op->getAttr("symmetric")).getValue() ? 2 : 0) |
                    4 | (cast<BoolAttr>(op->getAttr("relu")).getValue() ? 8 : 0);
    call(b, loc, "loom_qconv2d",
         {i64(b, x[0]), i64(b, x[1]), i64(b, x[2]), i64(b, x[3]), i64(b, y[1]),
          i64(b, kh), i64(b, kw), i64(b, stride), i64(b, padding), V(0),
          i32(b, flags), V(1), V(2), V(3), V(4), R(0)});
    return success();
  }
  // Quantization-aware training (loom-insert-fake-quant).
  if (n == "loom.weight_scale") {
    auto [k, nOut] = rowsCols(op->getOperand(0));
    if (cast<BoolAttr>(op->getAttr("per_tensor")).getValue()) {
      call(b, loc, "loom_weight_scale_s8",
           {i64(b, k * nOut), i64(b, 1), V(0), R(0)});
    } else if (cast<IntegerAttr>(op->getAttr("axis")).getInt() == 0) {
      // A conv2d weight [O, C, kh, kw]: one scale per row of [O, C*kh*kw].
      int64_t o = shapeOf(op->getOperand(0))[0];
      call(b, loc, "loom_weight_scale_rows_s8",
           {i64(b, o), i64(b, numel(op->getOperand(0)) / o), V(0), R(0)});
    } else {
      call(b, loc, "loom_weight_scale_s8", {i64(b, k), i64(b, nOut), V(0), R(0)});
    }
    return success();
  }
  if (n == "loom.quant_enabled") {
    // 1 from optimizer step `start` on (loom_step), else 0.
    OperationState state(loc, "exec.call");
    state.addAttribute("callee",
                       FlatSymbolRefAttr::get(b.getContext(), "loom_step"));
    state.addTypes(b.getI64Type());
    Value on = b.create<arith::CmpIOp>(
        loc, arith::CmpIPredicate::sge, b.create(state)->getResult(0),
        i64(b, cast<IntegerAttr>(op->getAttr("start")).getInt()));
    b.create<memref::StoreOp>(
        loc, b.create<arith::SelectOp>(loc, on, f32(b, 1.0), f32(b, 0.0)),
        R(0), ValueRange{});
    return success();
  }
  if (n == "train.observe_percentile") {
    call(b, loc, "loom_observe_percentile",
         {i64(b, numel(op->getOperand(0))), V(0), V(1),
          f32(b, fattr("percentile")), R(0)});
    return success();
  }
  if (n == "train.observe_ema") {
    call(b, loc, "loom_observe_ema",
         {i64(b, numel(op->getOperand(0))), V(0), V(1),
          f32(b, fattr("momentum")),
          i64(b, cast<IntegerAttr>(op->getAttr("freeze")).getInt()), R(0)});
    return success();
  }
  if (n == "train.range_qparams") {
    call(b, loc, "loom_range_qparams",
         {V(0),
          i32(b, cast<BoolAttr>(op->getAttr("symmetric")).getValue() ? 1 : 0),
          R(0), R(1)});
    return success();
  }
  if (n == "train.cross_entropy") {
    if (failed(requireI32(op->getOperand(1), "targets")))
      return failure();
    auto [rows, classes] = rowsCols(op->getOperand(0));
    if (auto axis = vocabAxis())
      call(b, loc, "loom_cross_entropy_fwd_sharded",
           {i64(b, rows), i64(b, classes), i32(b, *axis), V(0), V(1),
            i64(b, ignoreIndex()), R(0), R(1), R(2)});
    else
      // bf16 logits: FuseElementwise folded the widening into the kernel.
      call(b, loc,
           elementOf(op->getOperand(0)).isBF16() ? "loom_cross_entropy_fwd_bf16"
                                                 : "loom_cross_entropy_fwd",
           {i64(b, rows), i64(b, classes), V(0), V(1), i64(b, ignoreIndex()),
            R(0), R(1), R(2)});
    return success();
  }
  if (n == "train.cross_entropy_grad") {
    auto [rows, classes] = rowsCols(op->getOperand(0));
    if (auto axis = vocabAxis())
      call(b, loc, "loom_cross_entropy_bwd_sharded",
           {i64(b, rows), i64(b, classes), i32(b, *axis), V(0), V(1),
            i64(b, ignoreIndex()), V(2), V(3), R(0)});
    else
      call(b, loc,
           elementOf(op->getOperand(0)).isBF16() ? "loom_cross_entropy_bwd_bf16"
                                                 : "loom_cross_entropy_bwd",
           {i64(b, rows), i64(b, classes), V(0), V(1), i64(b, ignoreIndex()),
            V(2), V(3), R(0)});
    return success();
  }
  if (n == "loom.embedding" || n == "train.embedding_grad") {
    if (failed(requireI32(op->getOperand(0), "embedding ids")))
      return failure();
    auto table = shapeOf(n == "loom.embedding" ? op->getOperand(1)
                                                : op->getResult(0));
    int64_t count = numel(op->getOperand(0));
    bool fwd = n == "loom.embedding";
    if (auto axis = vocabAxis())
      call(b, loc, fwd ? "loom_embedding_fwd_sharded" : "loom_embedding_bwd_sharded",
           {i64(b, count), i64(b, table[0]), i64(b, table[1]), i32(b, *axis),
            V(0), V(1), R(0)});
    else
      call(b, loc, fwd ? "loom_embedding_fwd" : "loom_embedding_bwd",
           {i64(b, count), i64(b, table[0]), i64(b, table[1]), V(0), V(1), R(0)});
    return success();
  }
  if (n.starts_with("dist.")) {
    auto axisOf = [&]() -> int64_t {
      StringRef a = cast<StringAttr>(op->getAttr("axis")).getValue();
      return a == "dp" ? 0 : a == "tp" ? 1 : 2;
    };
    if (n == "dist.send" || n == "dist.recv") {
      bool send = n == "dist.send";
      Value v = send ? op->getOperand(0) : op->getResult(0);
      // The runtime moves 4-byte words: f32, or i32 (class targets).
      if (cast<RankedTensorType>(v.getType()).getElementType().getIntOrFloatBitWidth() != 32)
        return op->emitOpError("moves 32-bit tensors (f32, i32); this one is ")
               << cast<RankedTensorType>(v.getType()).getElementType();
      Value tag = b.create<arith::ConstantOp>(
          loc, b.getI64IntegerAttr(cast<IntegerAttr>(op->getAttr("tag")).getInt()));
      call(b, loc, send ? "loom_send" : "loom_recv",
           {send ? V(0) : R(0), i64(b, numel(v)), i32(b, axisOf()),
            i32(b, cast<IntegerAttr>(op->getAttr("peer")).getInt()), tag});
      return success();
    }
    // Reductions add f32 values; gathers move 4-byte words (f32 or i32);
    // a shard is a local copy of any type.
    auto in = cast<RankedTensorType>(op->getOperand(0).getType());
    bool reduces = n == "dist.all_reduce" || n == "dist.reduce_scatter";
    if (reduces && !in.getElementType().isF32())
      return op->emitOpError("reductions add f32 tensors; this one is ")
             << in.getElementType();
    if (n == "dist.all_gather" && in.getElementType().getIntOrFloatBitWidth() != 32)
      return op->emitOpError("gathers move 32-bit tensors (f32, i32); this "
                             "one is ")
             << in.getElementType();
    if (n == "dist.all_reduce") {
      StringRef red = cast<StringAttr>(op->getAttr("reduction")).getValue();
      if (red != "sum" && red != "max")
        return op->emitOpError("reduction '") << red << "' has no kernel";
      if (bufOf_.at(op->getResult(0)) != bufOf_.at(op->getOperand(0)))
        b.create<memref::CopyOp>(loc, V(0), R(0));
      SmallVector<Value> args = {R(0), i64(b, numel(op->getOperand(0))),
                                 i32(b, axisOf()), i32(b, red == "max" ? 1 : 0)};
      if (op->hasAttr("async")) {
        // Overlapped with the ops up to the first reader of the result,
        // which waits for it (emit()).
        OperationState st(loc, "exec.call");
        st.addAttribute("callee",
                        FlatSymbolRefAttr::get(b.getContext(), "loom_all_reduce_start"));
        st.addOperands(args);
        st.addTypes(b.getI64Type());
        pending_[op->getResult(0)] = b.create(st)->getResult(0);
        return success();
      }
      call(b, loc, "loom_all_reduce", args);
      return success();
    }
    if (n == "dist.all_gather") {
      call(b, loc, "loom_all_gather",
           {V(0), i64(b, numel(op->getOperand(0))), R(0), i32(b, axisOf())});
      return success();
    }
    if (n == "dist.reduce_scatter") {
      call(b, loc, "loom_reduce_scatter",
           {V(0), i64(b, numel(op->getResult(0))), R(0), i32(b, axisOf())});
      return success();
    }
    if (n == "dist.shard") {
      // out = in[..., c·n : (c+1)·n, ...] along `dim`, c the mesh coordinate.
      int64_t dim = cast<IntegerAttr>(op->getAttr("dim")).getInt();
      auto out = shapeOf(op->getResult(0));
      OperationState st(loc, "exec.call");
      st.addAttribute("callee", FlatSymbolRefAttr::get(b.getContext(), "loom_mesh_coord"));
      st.addOperands({i32(b, axisOf())});
      st.addTypes(b.getI64Type());
      Value coord = b.create(st)->getResult(0);
      Value start = b.create<arith::IndexCastOp>(
          loc, b.getIndexType(), b.create<arith::MulIOp>(loc, coord, i64(b, out[dim])));
      SmallVector<OpFoldResult> offs, sizes, strides;
      for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
        offs.push_back(i == dim ? OpFoldResult(start) : b.getIndexAttr(0));
        sizes.push_back(b.getIndexAttr(out[i]));
        strides.push_back(b.getIndexAttr(1));
      }
      Value window = b.create<memref::SubViewOp>(loc, V(0), offs, sizes, strides);
      b.create<linalg::CopyOp>(loc, ValueRange{window}, ValueRange{R(0)});
      return success();
    }
    return op->emitOpError("has no lowering to the runtime yet");
  }
  if (n == "train.loss_weight") {
    // count / max(total, 1)
    Value count = loadScalar(b, op->getOperand(0));
    Value total = b.create<arith::MaximumFOp>(loc, loadScalar(b, op->getOperand(1)),
                                              f32(b, 1.0));
    b.create<memref::StoreOp>(loc, b.create<arith::DivFOp>(loc, count, total),
                              R(0), ValueRange{});
    return success();
  }
  if (n == "train.attention" || n == "train.attention_grad") {
    auto q = shapeOf(op->getOperand(0)), k = shapeOf(op->getOperand(1)),
         v = shapeOf(op->getOperand(2));
    SmallVector<Value> args = {i64(b, q[0]), i64(b, q[1]), i64(b, q[2]),
                               i64(b, k[2]), i64(b, q[3]), i64(b, v[3]),
                               i32(b, battr("causal"))};
    for (unsigned i = 0; i < op->getNumOperands(); ++i)
      args.push_back(V(i));
    for (unsigned i = 0; i < op->getNumResults(); ++i)
      args.push_back(R(i));
    call(b, loc, n == "train.attention" ? "loom_attention_fwd" : "loom_attention_bwd",
         args);
    return success();
  }
  if (n == "train.gated_attention" || n == "train.gated_attention_grad") {
    auto q = shapeOf(op->getOperand(0)), v = shapeOf(op->getOperand(2));
    // layout = "bthd" (FuseElementwise, CUDA only): bf16 [B,T,H,D] tensors.
    bool bthd = op->hasAttr("layout");
    int64_t H = bthd ? q[2] : q[1], T = bthd ? q[1] : q[2];
    SmallVector<Value> args = {i64(b, q[0]), i64(b, H), i64(b, T),
                               i64(b, q[3]), i64(b, v[3]), i32(b, battr("causal")),
                               f32(b, fattr("gate_threshold", -1.0))};
    for (unsigned i = 0; i < op->getNumOperands(); ++i)
      args.push_back(V(i));
    for (unsigned i = 0; i < op->getNumResults(); ++i)
      args.push_back(R(i));
    std::string callee = n == "train.gated_attention"
                             ? (bthd ? "loom_gated_attention_bthd_fwd"
                                     : "loom_gated_attention_fwd")
                             : (bthd ? "loom_gated_attention_bthd_bwd"
                                     : "loom_gated_attention_bwd");
    call(b, loc, callee, args);
    return success();
  }
  if (n == "loom.dropout") {
    if (program_.getKind() == "eval")
      return success(); // Identity in evaluation (aliased in the plan).
    uint64_t key = fnv1a64(cast<StringAttr>(op->getAttr("key")).getValue());
    Value keyValue = b.create<arith::ConstantOp>(
        loc, b.getI64IntegerAttr(static_cast<int64_t>(key)));
    call(b, loc, "loom_dropout_fwd",
         {i64(b, numel(op->getOperand(0))), f32(b, fattr("p")), keyValue, V(0),
          R(0)});
    return success();
  }
  if (n == "train.global_norm") {
    Value sum = b.create<arith::ConstantOp>(loc, b.getF64FloatAttr(0.0));
    for (unsigned i = 0; i < op->getNumOperands(); ++i) {
      OperationState state(loc, "exec.call");
      state.addAttribute("callee",
                         FlatSymbolRefAttr::get(b.getContext(), "loom_sum_squares"));
      state.addOperands({i64(b, numel(op->getOperand(i))), V(i)});
      state.addTypes(b.getF64Type());
      Value part = b.create(state)->getResult(0);
      sum = b.create<arith::AddFOp>(loc, sum, part);
    }
    // `squared`: the sum of squares itself (a sharded program's share).
    Value norm = b.create<arith::TruncFOp>(
        loc, b.getF32Type(),
        op->hasAttr("squared") ? sum : b.create<math::SqrtOp>(loc, sum).getResult());
    b.create<memref::StoreOp>(loc, norm, R(0), ValueRange{});
    return success();
  }
  if (n == "train.clip_coef") {
    // min(1, max / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.
    Value norm = loadScalar(b, op->getOperand(0));
    Value coef = b.create<arith::DivFOp>(
        loc, f32(b, fattr("max")),
        b.create<arith::AddFOp>(loc, norm, f32(b, 1e-6)));
    Value clipped = b.create<arith::MinimumFOp>(loc, coef, f32(b, 1.0));
    b.create<memref::StoreOp>(loc, clipped, R(0), ValueRange{});
    return success();
  }
  if (n == "train.learning_rate") {
    // SEMANTICS.md: warm-up then cosine decay, computed in f64 from s.
    OperationState state(loc, "exec.call");
    state.addAttribute("callee", FlatSymbolRefAttr::get(b.getContext(), "loom_step"));
    state.addTypes(b.getI64Type());
    Value s = b.create<arith::SIToFPOp>(loc, b.getF64Type(),
                                        b.create(state)->getResult(0));
    auto c = [&](double v) {
      return b.create<arith::ConstantOp>(loc, b.getF64FloatAttr(v)).getResult();
    };
    double lr = fattr("lr");
    double warmup = static_cast<double>(cast<IntegerAttr>(op->getAttr("warmup")).getInt());
    double total = static_cast<double>(cast<IntegerAttr>(op->getAttr("total")).getInt());
    double minFrac = fattr("min");
    bool cosine = cast<StringAttr>(op->getAttr("decay")).getValue() == "cosine";
    Value rate = c(lr);
    if (warmup > 0)
      rate = b.create<arith::MulFOp>(
          loc, rate,
          b.create<arith::MinimumFOp>(loc, c(1.0),
                                      b.create<arith::DivFOp>(loc, s, c(warmup))));
    if (cosine) {
      // progress = clamp((s - W) / (N - W), 0, 1)
      Value p = b.create<arith::DivFOp>(
          loc, b.create<arith::SubFOp>(loc, s, c(warmup)), c(total - warmup));
      p = b.create<arith::MaximumFOp>(loc, c(0.0),
                                      b.create<arith::MinimumFOp>(loc, c(1.0), p));
      Value cosv = b.create<math::CosOp>(loc, b.create<arith::MulFOp>(loc, c(M_PI), p));
      Value factor = b.create<arith::AddFOp>(
          loc, c(minFrac),
          b.create<arith::MulFOp>(
              loc, c(1.0 - minFrac),
              b.create<arith::MulFOp>(loc, c(0.5),
                                      b.create<arith::AddFOp>(loc, c(1.0), cosv))));
      // During warm-up the schedule is the warm-up ramp alone.
      Value inWarmup = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OLE, s,
                                               c(warmup));
      factor = b.create<arith::SelectOp>(loc, inWarmup, c(1.0), factor);
      rate = b.create<arith::MulFOp>(loc, rate, factor);
    }
    b.create<memref::StoreOp>(loc,
                              b.create<arith::TruncFOp>(loc, b.getF32Type(), rate),
                              R(0), ValueRange{});
    return success();
  }
  if (n == "train.increment") {
    Value v = loadScalar(b, op->getOperand(0));
    Value next = b.create<arith::AddIOp>(loc, v, i64(b, 1));
    if (op->getNumOperands() > 1) {
      Value skip = loadScalar(b, op->getOperand(1));
      Value clean = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OEQ,
                                            skip, f32(b, 0.0));
      next = b.create<arith::SelectOp>(loc, clean, next, v);
    }
    b.create<memref::StoreOp>(loc, next, R(0), ValueRange{});
    return success();
  }
  // With a skip flag (loss scaling), an update runs only on clean steps.
  auto applied = [&](unsigned skipIndex, auto body) {
    if (op->getNumOperands() <= skipIndex) {
      body(b);
      return;
    }
    Value skip = loadScalar(b, op->getOperand(skipIndex));
    Value clean = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OEQ, skip,
                                          f32(b, 0.0));
    auto ifOp = b.create<scf::IfOp>(loc, clean, /*withElseRegion=*/false);
    OpBuilder ib = ifOp.getThenBodyBuilder();
    body(ib);
  };
  if (n == "train.nonfinite") {
    // x - x is 0 for finite x and NaN for inf or NaN.
    Value x = loadScalar(b, op->getOperand(0));
    Value d = b.create<arith::SubFOp>(loc, x, x);
    Value bad = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::UNE, d,
                                        f32(b, 0.0));
    b.create<memref::StoreOp>(
        loc, b.create<arith::SelectOp>(loc, bad, f32(b, 1.0), f32(b, 0.0)),
        R(0), ValueRange{});
    return success();
  }
  if (n == "train.loss_scale_value") {
    Value s = loadScalar(b, op->getOperand(0));
    Value unset = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OEQ, s,
                                          f32(b, 0.0));
    b.create<memref::StoreOp>(
        loc, b.create<arith::SelectOp>(loc, unset, f32(b, fattr("init")), s),
        R(0), ValueRange{});
    return success();
  }
  if (n == "train.loss_scale_update") {
    Value s = loadScalar(b, op->getOperand(0));
    Value good = loadScalar(b, op->getOperand(1));
    Value used = loadScalar(b, op->getOperand(2));
    Value skip = loadScalar(b, op->getOperand(3));
    Value newS = s, newGood = good, newUsed = used, under = f32(b, 0.0);
    if (battr("dynamic")) {
      Value overflow = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::ONE,
                                               skip, f32(b, 0.0));
      // Overflow: clean count resets, hysteresis is spent; when none is
      // left, back off (below `min`: stop the run, scale held at min).
      Value spent = b.create<arith::MinSIOp>(
          loc, b.create<arith::AddIOp>(loc, used, i64(b, 1)),
          i64(b, iattr("hysteresis")));
      Value backOff = b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::sge,
                                              spent, i64(b, iattr("hysteresis")));
      Value backed = b.create<arith::MulFOp>(loc, s, f32(b, fattr("backoff")));
      Value tooLow = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OLT,
                                             backed, f32(b, fattr("min")));
      Value floored = b.create<arith::SelectOp>(loc, tooLow, f32(b, fattr("min")),
                                                backed);
      Value sOverflow = b.create<arith::SelectOp>(loc, backOff, floored, s);
      Value underOverflow = b.create<arith::SelectOp>(
          loc, b.create<arith::AndIOp>(loc, backOff, tooLow), f32(b, 1.0),
          f32(b, 0.0));
      // Clean: count up; at `interval`, grow, reset, refill hysteresis.
      Value next = b.create<arith::AddIOp>(loc, good, i64(b, 1));
      Value grow = b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::sge, next,
                                           i64(b, iattr("interval")));
      Value sClean = b.create<arith::SelectOp>(
          loc, grow, b.create<arith::MulFOp>(loc, s, f32(b, fattr("growth"))), s);
      Value goodClean = b.create<arith::SelectOp>(loc, grow, i64(b, 0), next);
      Value usedClean = b.create<arith::SelectOp>(loc, grow, i64(b, 0), used);
      newS = b.create<arith::SelectOp>(loc, overflow, sOverflow, sClean);
      newGood = b.create<arith::SelectOp>(loc, overflow, i64(b, 0), goodClean);
      newUsed = b.create<arith::SelectOp>(loc, overflow, spent, usedClean);
      under = b.create<arith::SelectOp>(loc, overflow, underOverflow, f32(b, 0.0));
    }
    b.create<memref::StoreOp>(loc, newS, R(0), ValueRange{});
    b.create<memref::StoreOp>(loc, newGood, R(1), ValueRange{});
    b.create<memref::StoreOp>(loc, newUsed, R(2), ValueRange{});
    b.create<memref::StoreOp>(loc, under, R(3), ValueRange{});
    return success();
  }
  if (n == "train.adaptive_clip") {
    Value record = i32(b, 1);
    if (op->getNumOperands() > 3) {
      Value skip = loadScalar(b, op->getOperand(3));
      record = b.create<arith::ExtUIOp>(
          loc, b.getI32Type(),
          b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OEQ, skip,
                                  f32(b, 0.0)));
    }
    OperationState state(loc, "exec.call");
    state.addAttribute("callee",
                       FlatSymbolRefAttr::get(b.getContext(), "loom_adaptive_clip"));
    state.addOperands({loadScalar(b, op->getOperand(0)), V(1),
                       i64(b, cast<IntegerAttr>(op->getAttr("window")).getInt()),
                       V(2), f32(b, fattr("sigmas")), f32(b, fattr("max")),
                       record});
    state.addTypes(b.getF32Type());
    Value coef = b.create(state)->getResult(0);
    b.create<memref::StoreOp>(loc, coef, R(0), ValueRange{});
    return success();
  }
  if (n == "train.adamw") {
    applied(7, [&](OpBuilder &b) {
    call(b, loc, "loom_adamw",
         {i64(b, numel(op->getOperand(0))), V(0), V(1), V(2), V(3),
          loadScalar(b, op->getOperand(5)), f32(b, fattr("beta1")),
          f32(b, fattr("beta2")), f32(b, fattr("eps")),
          f32(b, fattr("weight_decay")), loadScalar(b, op->getOperand(6)),
          loadScalar(b, op->getOperand(4))});
    });
    return success();
  }
  if (n == "train.sgd") {
    applied(6, [&](OpBuilder &b) {
    Value t = loadScalar(b, op->getOperand(3));
    Value first = b.create<arith::ExtUIOp>(
        loc, b.getI32Type(),
        b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::eq, t, i64(b, 1)));
    call(b, loc, "loom_sgd",
         {i64(b, numel(op->getOperand(0))), V(0), V(1), V(2),
          loadScalar(b, op->getOperand(4)), f32(b, fattr("momentum")),
          i32(b, battr("nesterov")), f32(b, fattr("weight_decay")),
          loadScalar(b, op->getOperand(5)), first});
    });
    return success();
  }
  return op->emitOpError("has no lowering to exec in this build");
}

/// "file:line:col" of the first file location inside `loc`.
std::string where(Location loc) {
  std::string out;
  loc->walk([&](Location l) {
    if (auto f = dyn_cast<FileLineColLoc>(l)) {
      out = (f.getFilename().getValue() + ":" + Twine(f.getLine()) + ":" +
             Twine(f.getColumn()))
                .str();
      return WalkResult::interrupt();
    }
    return WalkResult::advance();
  });
  return out;
}

void ProgramLowering::checkResults(OpBuilder &b, Operation *op) {
  StringRef n = op->getName().getStringRef();
  if (isOneOf(op, {"train.param", "train.state", "train.input", "tensor.empty",
                   "loom.reshape", "linalg.fill", "loom.constant",
                   "arith.constant", "train.output", "train.update"}) ||
      (n == "loom.dropout" && program_.getKind() == "eval"))
    return;
  for (Value r : op->getResults()) {
    auto t = dyn_cast<RankedTensorType>(r.getType());
    if (!t || !isa<FloatType>(t.getElementType()) || !bufOf_.count(r))
      continue;
    Type et = t.getElementType();
    int dtype = et.isF32() ? 0 : et.isBF16() ? 1 : et.isF16() ? 2 : -1;
    if (dtype < 0)
      continue;
    std::string what = isa<linalg::GenericOp>(op) ? "fused elementwise loop"
                                                  : n.str();
    std::string at = where(op->getLoc());
    if (!at.empty())
      what += " at " + at;
    if (auto tag = op->getAttrOfType<StringAttr>("loom.layer"))
      what += " (" + tag.str() + ")";
    if (op->getNumResults() > 1)
      what += ", result " + std::to_string(cast<OpResult>(r).getResultNumber());
    what += " in " + program_.getSymName().str();
    int64_t id = static_cast<int64_t>(opTable_.size());
    opTable_.push_back(what);
    call(b, op->getLoc(), "loom_check_finite",
         {view(b, r), i64(b, t.getNumElements()), i32(b, dtype), i64(b, id)});
  }
}

LogicalResult ProgramLowering::emit(OpBuilder &mb, int64_t arenaBytes) {
  OperationState state(program_.getLoc(), "exec.program");
  std::string sym = ("loom_" + program_.getSymName()).str();
  state.addAttribute("sym_name", mb.getStringAttr(sym));
  state.addAttribute("kind", program_.getKindAttr());
  state.addAttribute("arena_bytes", mb.getI64IntegerAttr(arenaBytes));
  state.addRegion()->push_back(new Block());
  Operation *exec = mb.create(state);
  OpBuilder b = OpBuilder::atBlockEnd(&exec->getRegion(0).front());
  auto wait = [&](Value handle) {
    call(b, program_.getLoc(), "loom_all_reduce_wait", {handle});
  };
  // Pipeline schedule spans (loom-run --trace): each run of ops of one
  // micro-batch and phase is bracketed by loom_trace_begin/end. Fused loops
  // carry no phase and continue the current span; any other op without one
  // (the optimizer, bookkeeping) closes it.
  int64_t openSpan = -1;
  auto closeSpan = [&]() {
    if (openSpan >= 0)
      call(b, program_.getLoc(), "loom_trace_end", {i64(b, openSpan)});
    openSpan = -1;
  };
  for (Operation &op : program_.getBody().front()) {
    auto phase = op.getAttrOfType<StringAttr>("dist.phase");
    auto mb = op.getAttrOfType<IntegerAttr>("dist.microbatch");
    if (phase && mb) {
      std::string name = (phase.getValue() == "bwd"     ? "B"
                          : phase.getValue() == "wgrad" ? "W"
                                                        : "F") +
                         std::to_string(mb.getInt());
      if (auto chunk = op.getAttrOfType<IntegerAttr>("dist.chunk"))
        name += "c" + std::to_string(chunk.getInt());
      auto it = llvm::find(spanTable_, name);
      int64_t id = it - spanTable_.begin();
      if (it == spanTable_.end())
        spanTable_.push_back(name);
      if (id != openSpan) {
        closeSpan();
        call(b, op.getLoc(), "loom_trace_begin", {i64(b, id)});
        openSpan = id;
      }
    } else if (!isa<linalg::GenericOp, linalg::FillOp, arith::ConstantOp>(op) &&
               op.getName().getStringRef() != "tensor.empty") {
      closeSpan();
    }
    for (Value v : op.getOperands())
      if (auto it = pending_.find(v); it != pending_.end()) {
        wait(it->second);
        pending_.erase(it);
      }
    if (failed(lowerOp(b, &op)))
      return failure();
    if (!op.hasAttr("async"))
      checkResults(b, &op);
  }
  closeSpan();
  // A reduction nothing reads still completes within the step.
  for (auto &[v, handle] : pending_)
    wait(handle);
  pending_.clear();
  return success();
}

struct LowerToExecPass : impl::LowerToExecBase<LowerToExecPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<dist::ProgramOp> programs(module.getOps<dist::ProgramOp>());
    if (programs.empty())
      return;
    Builder b(&getContext());

    // Pipeline stages: one persistent layout and arena per stage; inputs and
    // output slots sit at the same offsets in every stage's arena.
    auto stageOf = [](dist::ProgramOp p) -> int {
      auto a = p->getAttrOfType<IntegerAttr>("stage");
      return a ? static_cast<int>(a.getInt()) : 0;
    };
    int stages = 1;
    for (auto p : programs)
      stages = std::max(stages, stageOf(p) + 1);
    std::vector<PersistentPlan> plans(stages);
    PersistentPlan commonPlan; ///< what every stage holds (pp > 1)
    std::vector<std::map<std::string, int>> stageOfName(1);
    auto place = [&](PersistentPlan &plan, const std::string &name,
                     Operation *decl, Type type,
                     std::vector<PersistentPlan::Named> &list, int cat) {
      if (plan.offsets.count(name))
        return;
      int64_t size = alignUp(bytesOf(type));
      plan.offsets[name] = plan.end;
      list.push_back({name, decl, plan.end});
      plan.end += size;
      plan.bytes[cat] += size;
    };
    auto placeOutputs = [&](PersistentPlan &plan) {
      for (auto p : programs)
        for (auto out : p.getBody().front().getOps<train::OutputOp>()) {
          std::string name = out.getName().str();
          if (!plan.outputs.count(name)) {
            plan.outputs[name] = plan.end;
            plan.end += kAlign;
            plan.bytes[3] += kAlign;
          }
        }
    };
    if (stages == 1) {
      // Params, optimizer state and inputs in order of first appearance,
      // then the output slots.
      for (auto p : programs)
        for (Operation &op : p.getBody().front()) {
          StringRef n = op.getName().getStringRef();
          auto name = [&]() { return cast<StringAttr>(op.getAttr("name")).str(); };
          if (n == "train.param")
            place(plans[0], name(), &op, op.getResult(0).getType(), plans[0].params, 0);
          else if (n == "train.state")
            place(plans[0], name(), &op, op.getResult(0).getType(), plans[0].state, 1);
          else if (n == "train.input")
            place(plans[0], name(), &op, op.getResult(0).getType(), plans[0].inputs, 2);
        }
      placeOutputs(plans[0]);
    } else {
      // Persistent tensors every stage holds (the step counter, the loss
      // scale: bookkeeping each stage keeps in step) join the inputs and
      // outputs at common offsets; the rest live on their stage only.
      std::map<std::string, std::set<int>> holders;
      for (auto p : programs)
        for (Operation &op : p.getBody().front())
          if (isOneOf(&op, {"train.param", "train.state"}))
            holders[cast<StringAttr>(op.getAttr("name")).str()].insert(stageOf(p));
      auto everywhere = [&](Operation &op) {
        return holders[cast<StringAttr>(op.getAttr("name")).str()].size() ==
               static_cast<size_t>(stages);
      };
      PersistentPlan common;
      placeOutputs(common);
      for (auto p : programs)
        for (Operation &op : p.getBody().front()) {
          StringRef n = op.getName().getStringRef();
          if (n == "train.input")
            place(common, cast<StringAttr>(op.getAttr("name")).str(), &op,
                  op.getResult(0).getType(), common.inputs, 2);
          else if ((n == "train.param" || n == "train.state") && everywhere(op))
            place(common, cast<StringAttr>(op.getAttr("name")).str(), &op,
                  op.getResult(0).getType(),
                  n == "train.param" ? common.params : common.state,
                  n == "train.param" ? 0 : 1);
        }
      commonPlan = common;
      for (int st = 0; st < stages; ++st) {
        plans[st] = common;
        plans[st].params.clear();
        plans[st].state.clear();
      }
      for (auto p : programs)
        for (Operation &op : p.getBody().front()) {
          StringRef n = op.getName().getStringRef();
          PersistentPlan &plan = plans[stageOf(p)];
          auto name = [&]() { return cast<StringAttr>(op.getAttr("name")).str(); };
          if (n == "train.param")
            place(plan, name(), &op, op.getResult(0).getType(), plan.params, 0);
          else if (n == "train.state")
            place(plan, name(), &op, op.getResult(0).getType(), plan.state, 1);
        }
    }

    std::vector<std::unique_ptr<ProgramLowering>> lowerings;
    std::vector<std::string> opTable, spanTable;
    std::vector<int64_t> stageArena(stages, 0);
    for (int st = 0; st < stages; ++st)
      stageArena[st] = plans[st].end;
    for (auto p : programs) {
      lowerings.push_back(
          std::make_unique<ProgramLowering>(p, plans[stageOf(p)], opTable,
                                            spanTable));
      if (failed(lowerings.back()->plan()))
        return signalPassFailure();
      int64_t &a = stageArena[stageOf(p)];
      a = std::max(a, lowerings.back()->transientEnd());
    }
    int64_t arena = 0;
    for (int64_t &a : stageArena) {
      a = alignUp(std::max<int64_t>(a, kAlign));
      arena = std::max(arena, a);
    }
    OpBuilder mb(module.getContext());
    for (size_t i = 0; i < programs.size(); ++i) {
      mb.setInsertionPoint(programs[i]);
      if (failed(lowerings[i]->emit(mb, stageArena[stageOf(programs[i])])))
        return signalPassFailure();
    }
    PersistentPlan &plan = plans[0];

    // The manifest's compiler-side facts: buffers, outputs, memory.
    auto shapeAttr = [&](Type t) {
      return b.getI64ArrayAttr(cast<ShapedType>(t).getShape());
    };
    auto entry = [&](const PersistentPlan::Named &n, bool param) {
      NamedAttrList a;
      a.append("name", b.getStringAttr(n.name));
      Type t = n.decl->getResult(0).getType();
      a.append("dtype", b.getStringAttr(
                            dtypeName(cast<ShapedType>(t).getElementType())));
      a.append("shape", shapeAttr(t));
      a.append("offset", b.getI64IntegerAttr(n.offset));
      // The per-rank buffer's place in the global tensor (loom-partition).
      if (auto g = n.decl->getAttrOfType<DenseI64ArrayAttr>("dist.global_shape"))
        a.append("global_shape", b.getI64ArrayAttr(g.asArrayRef()));
      if (Attribute shard = n.decl->getAttr("dist.shard"))
        a.append("shard", shard);
      // State starts at zero, or at one ("init": "ones", a batch norm's
      // running variance).
      if (!param)
        if (Attribute init = n.decl->getAttr("init"))
          a.append("init", init);
      if (param) {
        a.append("init", n.decl->getAttr("init"));
        if (Attribute args = n.decl->getAttr("init_args"))
          a.append("init_args", args);
        if (Attribute shard = n.decl->getAttr("shard"))
          a.append("annotation", shard);
      }
      return a.getDictionary(&getContext());
    };
    SmallVector<Attribute> params, state, inputs;
    auto staged = [&](Attribute a, int st) -> Attribute {
      if (stages == 1)
        return a;
      NamedAttrList l(cast<DictionaryAttr>(a));
      l.append("stage", b.getI64IntegerAttr(st));
      return l.getDictionary(&getContext());
    };
    for (auto &n : commonPlan.params)
      params.push_back(entry(n, true));
    for (auto &n : commonPlan.state)
      state.push_back(entry(n, false));
    for (int st = 0; st < stages; ++st) {
      for (auto &n : plans[st].params)
        params.push_back(staged(entry(n, true), st));
      for (auto &n : plans[st].state)
        state.push_back(staged(entry(n, false), st));
    }
    for (auto &n : plan.inputs)
      inputs.push_back(entry(n, false));
    NamedAttrList outputs;
    for (auto &[name, offset] : plan.outputs)
      outputs.append(name, b.getI64IntegerAttr(offset));
    NamedAttrList programsAttr;
    if (stages == 1) {
      for (auto p : programs)
        programsAttr.append(p.getSymName(),
                            b.getStringAttr(("loom_" + p.getSymName()).str()));
    } else {
      // kind name -> the symbol of each stage, by stage.
      std::map<std::string, std::vector<std::string>> byName;
      for (auto p : programs) {
        std::string name = p.getSymName().str();
        std::string suffix = "_stage" + std::to_string(stageOf(p));
        if (StringRef(name).ends_with(suffix))
          name.resize(name.size() - suffix.size());
        auto &v = byName[name];
        v.resize(stages);
        v[stageOf(p)] = ("loom_" + p.getSymName()).str();
      }
      for (auto &[name, syms] : byName) {
        SmallVector<Attribute> list;
        for (auto &sym : syms)
          list.push_back(b.getStringAttr(sym));
        programsAttr.append(name, b.getArrayAttr(list));
      }
    }
    auto memoryOf = [&](int st) {
      std::map<std::string, int64_t> peak;
      for (size_t i = 0; i < programs.size(); ++i)
        if (programs[i].getKind() == "train" && stageOf(programs[i]) == st)
          peak = lowerings[i]->peakBreakdown();
      const PersistentPlan &pl = plans[st];
      NamedAttrList memory;
      memory.append("params", b.getI64IntegerAttr(pl.bytes[0]));
      memory.append("optimizer", b.getI64IntegerAttr(pl.bytes[1]));
      memory.append("inputs", b.getI64IntegerAttr(pl.bytes[2]));
      memory.append("grads", b.getI64IntegerAttr(peak["grads"]));
      memory.append("activations", b.getI64IntegerAttr(peak["activations"]));
      memory.append("workspace",
                    b.getI64IntegerAttr(peak["workspace"] + pl.bytes[3]));
      memory.append("peak", b.getI64IntegerAttr(stageArena[st]));
      return memory.getDictionary(&getContext());
    };
    // The largest stage's plan is "the" per-rank memory; every stage's too.
    int biggest = 0;
    for (int st = 0; st < stages; ++st)
      if (stageArena[st] > stageArena[biggest])
        biggest = st;
    DictionaryAttr memory = memoryOf(biggest);
    NamedAttrList manifest;
    manifest.append("model", programs.front()->getAttr("loom.model")
                                 ? programs.front()->getAttr("loom.model")
                                 : b.getStringAttr("model"));
    manifest.append("arena_bytes", b.getI64IntegerAttr(arena));
    manifest.append("params", b.getArrayAttr(params));
    manifest.append("state", b.getArrayAttr(state));
    manifest.append("inputs", b.getArrayAttr(inputs));
    manifest.append("outputs", outputs.getDictionary(&getContext()));
    manifest.append("programs", programsAttr.getDictionary(&getContext()));
    manifest.append("memory", memory);
    if (stages > 1) {
      SmallVector<Attribute> perStage;
      SmallVector<int64_t> arenas(stageArena.begin(), stageArena.end());
      for (int st = 0; st < stages; ++st)
        perStage.push_back(memoryOf(st));
      manifest.append("stages", b.getI64IntegerAttr(stages));
      manifest.append("stage_arena_bytes", b.getI64ArrayAttr(arenas));
      manifest.append("stage_memory", b.getArrayAttr(perStage));
    }
    SmallVector<Attribute> ops;
    for (const std::string &o : opTable)
      ops.push_back(b.getStringAttr(o));
    manifest.append("ops", b.getArrayAttr(ops));
    if (!spanTable.empty()) {
      SmallVector<Attribute> spans;
      for (const std::string &n : spanTable)
        spans.push_back(b.getStringAttr(n));
      manifest.append("trace_spans", b.getArrayAttr(spans));
    }
    if (auto cfg = programs.front().getConfigAttr())
      manifest.append("train", cfg);
    // Recomputation: one entry; with pipeline stages, the stages' choices
    // together (layers of every stage, bytes and FLOPs summed).
    {
      SmallVector<Attribute> layers;
      int64_t freed = 0, flops = 0;
      bool any = false;
      for (auto p : programs)
        if (auto l = p->getAttrOfType<ArrayAttr>("loom.recomputed_layers")) {
          any = true;
          layers.append(l.begin(), l.end());
          if (auto a = p->getAttrOfType<IntegerAttr>("loom.recompute_freed_bytes"))
            freed += a.getInt();
          if (auto a = p->getAttrOfType<IntegerAttr>("loom.recompute_flops"))
            flops += a.getInt();
        }
      if (any) {
        NamedAttrList rc;
        rc.append("layers", b.getArrayAttr(layers));
        rc.append("freed_bytes", b.getI64IntegerAttr(freed));
        rc.append("extra_flops", b.getI64IntegerAttr(flops));
        manifest.append("recompute", rc.getDictionary(&getContext()));
      }
    }
    if (auto mesh = module.lookupSymbol<dist::MeshOp>("mesh"))
      manifest.append("mesh", mesh.getShapeAttr());
    int64_t zero = 0;
    if (auto cfg = programs.front().getConfigAttr())
      if (auto z = cfg.getAs<IntegerAttr>("zero"))
        zero = z.getInt();
    manifest.append("zero", b.getI64IntegerAttr(zero));
    module->setAttr("loom.manifest", manifest.getDictionary(&getContext()));

    for (auto p : programs)
      p.erase();
  }
};

} // namespace
} // namespace loom
