//===- CudaScalars.cpp - a CUDA program's scalar code, on the device ------===//
//
// Besides its loops and library calls, a training step computes a few
// scalars: the learning rate from the step, the gradient norm from the
// per-tensor sums of squares, the clipping coefficient, the step counter,
// the loss copied into its output slot. Run on the host, each read of the
// arena is a synchronous copy that drains the stream, and a program that
// reads device memory cannot be captured as a CUDA graph. This moves that
// code onto the GPU:
//
//  - maximal runs of scalar ops between library calls and loops (islands)
//    become one-thread kernels; each takes the arena's base pointer and
//    addresses the views it touches at their offsets;
//  - library calls whose operands change from step to step (the optimizers'
//    lr, gradient scale and step; adaptive clipping's norm) call the
//    runtime's `_dev` variants, which take those operands as device
//    pointers: a scalar loaded from the arena just before the call is passed
//    as that buffer, any other is spilled to a slot;
//  - calls that return a scalar (sum_squares, adaptive_clip) write it into a
//    slot; the chain `total += sum_squares(g_i)` accumulates into one slot,
//    in double and in the same order as the CPU;
//  - loom_step() reads the step the runtime writes into the arena before
//    each program call.
//
// Slots live in a spill area after the last buffer of every program's
// arena. A program whose host code does anything else (control flow on
// device values, a host call fed by a computed value, math without a GPU
// expansion) keeps the synchronous path; only the programs transformed here
// are captured as graphs.
//
//===----------------------------------------------------------------------===//
#include "compiler/codegen/Codegen.h"

#include "dialects/Exec/ExecDialect.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/Matchers.h"

#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SetVector.h"

#include <functional>

using namespace mlir;

namespace loom::codegen {
namespace {

/// The spill area: the step, then one slot per spilled scalar, each at a
/// 64-byte boundary as exec.view offsets are.
constexpr int64_t kSpillBytes = 64 * 1024;
constexpr int64_t kSlotBytes = 64;

/// A library call with a device form: the runtime's `device` function takes
/// the operands at `pointers` as device pointers, and a scalar result as an
/// extra pointer operand (then, for sum_squares, an accumulate flag).
struct DeviceForm {
  StringRef callee, device;
  ArrayRef<unsigned> pointers;
};
const unsigned kAdamwPointers[] = {5, 10, 11}; // lr, grad_scale, t
const unsigned kSgdPointers[] = {4, 8, 9};     // lr, grad_scale, first
const unsigned kClipPointers[] = {0};          // norm
const DeviceForm kDeviceForms[] = {
    {"loom_adamw", "loom_cuda_adamw_dev", kAdamwPointers},
    {"loom_sgd", "loom_cuda_sgd_dev", kSgdPointers},
    {"loom_sum_squares", "loom_cuda_sum_squares_dev", {}},
    {"loom_adaptive_clip", "loom_cuda_adaptive_clip_dev", kClipPointers},
};

const DeviceForm *deviceForm(StringRef callee) {
  for (const DeviceForm &f : kDeviceForms)
    if (f.callee == callee)
      return &f;
  return nullptr;
}

bool isScalar(Type t) { return t.isIntOrIndexOrFloat(); }
bool isConstant(Value v) { return matchPattern(v, m_Constant()); }
bool isView(Operation *op) {
  return op && op->getName().getStringRef() == "exec.view";
}
/// Ops that stay where they are: views (of the arena, or slices of them)
/// and constants.
bool isFree(Operation &op) {
  return isView(&op) || isa<arith::ConstantOp, memref::SubViewOp>(op);
}

/// An arena view, or a slice of one.
bool isArenaBuffer(Value v) {
  Operation *def = v.getDefiningOp();
  if (isView(def))
    return true;
  if (auto sub = dyn_cast_or_null<memref::SubViewOp>(def))
    return isArenaBuffer(sub.getSource());
  return false;
}

/// An op an island kernel can run: scalar arithmetic, math the GPU path
/// expands without libdevice, or an access to a static arena view.
bool isScalarOp(Operation &op) {
  if (auto load = dyn_cast<memref::LoadOp>(op))
    return isArenaBuffer(load.getMemRef());
  if (auto store = dyn_cast<memref::StoreOp>(op))
    return isArenaBuffer(store.getMemRef());
  StringRef dialect = op.getDialect() ? op.getDialect()->getNamespace() : "";
  if (dialect != "arith" && dialect != "math")
    return false;
  if (dialect == "math" &&
      !isa<math::SqrtOp, math::CosOp, math::AbsFOp, math::FmaOp>(op))
    return false;
  if (op.getNumRegions() != 0)
    return false;
  for (Type t : op.getOperandTypes())
    if (!isScalar(t))
      return false;
  for (Type t : op.getResultTypes())
    if (!isScalar(t))
      return false;
  return true;
}

StringRef calleeOf(Operation &op) {
  if (auto c = dyn_cast<exec::CallOp>(op))
    return c.getCallee();
  return "";
}

/// Whether `program`'s host code can run on the device, as above.
bool qualifies(Operation *program) {
  for (Operation &op : program->getRegion(0).front()) {
    if (isFree(op) || isScalarOp(op) || isa<memref::CopyOp>(op))
      continue;
    if (isa<linalg::GenericOp, linalg::FillOp>(op))
      continue;
    auto call = dyn_cast<exec::CallOp>(op);
    if (!call)
      return false; // control flow and anything else stays on the host
    StringRef callee = call.getCallee();
    if (callee == "loom_step")
      continue;
    const DeviceForm *form = deviceForm(callee);
    for (auto [i, v] : llvm::enumerate(call.getArgs())) {
      if (!isScalar(v.getType()) || isConstant(v))
        continue;
      // A host call's result (a reduction's handle) stays on the host.
      if (auto def = v.getDefiningOp<exec::CallOp>();
          def && !deviceForm(def.getCallee()) && def.getCallee() != "loom_step")
        continue;
      if (!form || !llvm::is_contained(form->pointers, unsigned(i)))
        return false; // a computed value passed by value
    }
    // A host result may feed host calls only (loom_all_reduce_start's
    // handle, waited by loom_all_reduce_wait), not device code.
    if (!form)
      for (Value r : call.getResults())
        for (Operation *user : r.getUsers())
          if (!isa<exec::CallOp>(user))
            return false;
  }
  return true;
}

class ProgramScalars {
public:
  ProgramScalars(Operation *program, gpu::GPUModuleOp kernels,
                 CudaKernels &table, int64_t spillBase, int64_t arenaBytes)
      : program_(program), kernels_(kernels), table_(table),
        spillBase_(spillBase), arenaBytes_(arenaBytes),
        body_(program->getRegion(0).front()) {}

  /// The highest spill offset used, or failure.
  FailureOr<int64_t> run();

private:
  /// A new slot's view, defined at the program's start.
  Value slot(Type type);
  Value view(int64_t offset, Type type);
  void replaceStep();
  void sumSquareChains();
  LogicalResult deviceCalls();
  LogicalResult islands();
  LogicalResult buildIsland(ArrayRef<Operation *> ops, int index,
                            ArrayRef<std::pair<Value, Value>> inputs,
                            ArrayRef<std::pair<Value, Value>> outputs);

  Operation *program_;
  gpu::GPUModuleOp kernels_;
  CudaKernels &table_;
  int64_t spillBase_, arenaBytes_;
  Block &body_;
  /// The next free slot (the step sits at spillBase_).
  int64_t next_ = kSlotBytes;
  Value arena_;
};

Value ProgramScalars::view(int64_t offset, Type type) {
  OpBuilder b = OpBuilder::atBlockBegin(&body_);
  OperationState state(program_->getLoc(), "exec.view");
  state.addAttribute("offset", b.getI64IntegerAttr(offset));
  state.addTypes(type);
  return b.create(state)->getResult(0);
}

Value ProgramScalars::slot(Type type) {
  int64_t offset = spillBase_ + next_;
  next_ += kSlotBytes;
  return view(offset, MemRefType::get({}, type));
}

void ProgramScalars::replaceStep() {
  Value step;
  for (Operation &op : llvm::make_early_inc_range(body_)) {
    if (calleeOf(op) != "loom_step")
      continue;
    if (!step)
      step = view(spillBase_, MemRefType::get({}, IntegerType::get(op.getContext(), 64)));
    OpBuilder b(&op);
    Value v = b.create<memref::LoadOp>(op.getLoc(), step);
    op.getResult(0).replaceAllUsesWith(v);
    op.erase();
  }
}

/// `total = ((0 + sum_squares(a)) + sum_squares(b)) + ...` accumulates into
/// one slot: the first call writes it, the others add to it (in double, in
/// this order: the CPU's result bit for bit).
void ProgramScalars::sumSquareChains() {
  MLIRContext *ctx = program_->getContext();
  // The load standing for a running total, and its slot.
  llvm::DenseMap<Value, Value> totals;
  SmallVector<exec::CallOp> calls;
  for (Operation &op : body_)
    if (calleeOf(op) == "loom_sum_squares")
      calls.push_back(cast<exec::CallOp>(op));
  for (exec::CallOp call : calls) {
    if (!call.getResult(0).hasOneUse())
      continue;
    auto add = dyn_cast<arith::AddFOp>(*call.getResult(0).getUsers().begin());
    if (!add || add->getBlock() != &body_)
      continue;
    Value other = add.getLhs() == call.getResult(0) ? add.getRhs() : add.getLhs();
    Value total;
    bool accumulate;
    FloatAttr zero;
    if (matchPattern(other, m_Constant(&zero)) && zero.getValue().isPosZero()) {
      total = slot(Float64Type::get(ctx));
      accumulate = false;
    } else if (auto it = totals.find(other);
               it != totals.end() && other.hasOneUse()) {
      total = it->second;
      accumulate = true;
    } else {
      continue;
    }
    OpBuilder b(call);
    SmallVector<Value> operands(call.getArgs());
    operands.push_back(total);
    operands.push_back(b.create<arith::ConstantIntOp>(call.getLoc(), accumulate, 32));
    b.create<exec::CallOp>(call.getLoc(), TypeRange{},
                           FlatSymbolRefAttr::get(ctx, "loom_cuda_sum_squares_dev"),
                           operands);
    // The running total after this call, where the sum was.
    b.setInsertionPoint(add);
    Value now = b.create<memref::LoadOp>(add.getLoc(), total);
    add.getResult().replaceAllUsesWith(now);
    add.erase();
    call.erase();
    if (accumulate) {
      Operation *before = other.getDefiningOp();
      totals.erase(other);
      before->erase();
    }
    totals[now] = total;
  }
}

LogicalResult ProgramScalars::deviceCalls() {
  MLIRContext *ctx = program_->getContext();
  for (Operation &op : llvm::make_early_inc_range(body_)) {
    auto call = dyn_cast<exec::CallOp>(op);
    if (!call)
      continue;
    const DeviceForm *form = deviceForm(call.getCallee());
    if (!form)
      continue;
    OpBuilder b(call);
    SmallVector<Value> operands(call.getArgs());
    for (unsigned i : form->pointers) {
      Value v = operands[i];
      // A value loaded from the arena with nothing but loads, views and
      // constants since: the kernel reads that buffer itself, in stream
      // order, so it sees the same value.
      if (auto load = v.getDefiningOp<memref::LoadOp>();
          load && load.getMemRefType().getRank() == 0 &&
          load->getBlock() == &body_) {
        bool direct = true;
        for (Operation *o = load->getNextNode(); o != call; o = o->getNextNode())
          direct &= isa<memref::LoadOp>(o) || isFree(*o);
        if (direct) {
          operands[i] = load.getMemRef();
          continue;
        }
      }
      Value s = slot(v.getType());
      b.create<memref::StoreOp>(call.getLoc(), v, s);
      operands[i] = s;
    }
    Value result;
    if (call.getNumResults() == 1) {
      result = slot(call.getResult(0).getType());
      operands.push_back(result);
      if (call.getCallee() == "loom_sum_squares")
        operands.push_back(b.create<arith::ConstantIntOp>(call.getLoc(), 0, 32));
    }
    b.create<exec::CallOp>(call.getLoc(), TypeRange{},
                           FlatSymbolRefAttr::get(ctx, form->device), operands);
    if (result) {
      Value v = b.create<memref::LoadOp>(call.getLoc(), result);
      call.getResult(0).replaceAllUsesWith(v);
    }
    call.erase();
  }
  // Loads made dead by passing their buffer.
  for (Operation &op : llvm::make_early_inc_range(llvm::reverse(body_)))
    if (isa<memref::LoadOp>(op) && op.use_empty())
      op.erase();
  return success();
}

LogicalResult ProgramScalars::islands() {
  // Partition: maximal runs of scalar ops; views and constants are free.
  std::vector<SmallVector<Operation *>> runs(1);
  llvm::DenseMap<Operation *, unsigned> islandOf;
  for (Operation &op : body_) {
    if (isFree(op))
      continue;
    if (isScalarOp(op)) {
      islandOf[&op] = runs.size() - 1;
      runs.back().push_back(&op);
    } else if (!runs.back().empty()) {
      runs.emplace_back();
    }
  }
  if (runs.back().empty())
    runs.pop_back();
  // Values crossing from one island to another go through slots.
  std::vector<SmallVector<std::pair<Value, Value>>> inputs(runs.size()),
      outputs(runs.size());
  llvm::DenseMap<Value, Value> spilled;
  for (auto [j, run] : llvm::enumerate(runs))
    for (Operation *op : run)
      for (Value v : op->getOperands()) {
        Operation *def = v.getDefiningOp();
        if (!def || isFree(*def) || !isScalar(v.getType()))
          continue;
        auto it = islandOf.find(def);
        if (it == islandOf.end())
          return op->emitOpError("uses a value computed on the host");
        if (it->second == j)
          continue;
        auto [at, added] = spilled.try_emplace(v, Value());
        if (added) {
          at->second = slot(v.getType());
          outputs[it->second].push_back({v, at->second});
        }
        if (!llvm::is_contained(inputs[j], std::make_pair(v, at->second)))
          inputs[j].push_back({v, at->second});
      }
  // Every island's kernel is launched where its last op was.
  {
    OpBuilder b = OpBuilder::atBlockBegin(&body_);
    OperationState state(program_->getLoc(), "exec.view");
    state.addAttribute("offset", b.getI64IntegerAttr(0));
    state.addTypes(MemRefType::get({arenaBytes_}, b.getI8Type()));
    arena_ = b.create(state)->getResult(0);
  }
  for (auto [i, run] : llvm::enumerate(runs))
    if (failed(buildIsland(run, int(i), inputs[i], outputs[i])))
      return failure();
  return success();
}

LogicalResult ProgramScalars::buildIsland(
    ArrayRef<Operation *> ops, int index,
    ArrayRef<std::pair<Value, Value>> inputs,
    ArrayRef<std::pair<Value, Value>> outputs) {
  MLIRContext *ctx = program_->getContext();
  Location loc = ops.front()->getLoc();
  std::string programName =
      cast<StringAttr>(program_->getAttr("sym_name")).str();
  std::string name = programName + "_s" + std::to_string(index);
  auto arenaType = cast<MemRefType>(arena_.getType());

  OpBuilder b(kernels_.getBody()->getTerminator());
  auto func = b.create<gpu::GPUFuncOp>(loc, name, b.getFunctionType({arenaType}, {}));
  func->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), b.getUnitAttr());
  func->setAttr("loom.op", b.getStringAttr("scalars"));
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  Value base = entry.getArgument(0);
  IRMapping mapping;
  // An arena view inside the kernel: the base at the view's offset (a
  // slice: the same slice of its view).
  std::function<Value(Value)> mapView = [&](Value v) -> Value {
    if (Value m = mapping.lookupOrNull(v))
      return m;
    Operation *def = v.getDefiningOp();
    if (auto sub = dyn_cast<memref::SubViewOp>(def)) {
      mapView(sub.getSource());
      for (Value o : sub->getOperands())
        if (!mapping.contains(o) && o.getDefiningOp() &&
            isa<arith::ConstantOp>(o.getDefiningOp()))
          mapping.map(o, b.clone(*o.getDefiningOp())->getResult(0));
      Value m = b.clone(*def, mapping)->getResult(0);
      mapping.map(v, m);
      return m;
    }
    int64_t offset = cast<IntegerAttr>(def->getAttr("offset")).getInt();
    Value at = b.create<arith::ConstantIndexOp>(loc, offset);
    Value m = b.create<memref::ViewOp>(loc, v.getType(), base, at, ValueRange{});
    mapping.map(v, m);
    return m;
  };
  for (auto [v, s] : inputs)
    mapping.map(v, b.create<memref::LoadOp>(loc, mapView(s)));
  for (Operation *op : ops) {
    for (Value v : op->getOperands()) {
      if (mapping.contains(v))
        continue;
      Operation *def = v.getDefiningOp();
      if (isArenaBuffer(v))
        mapView(v);
      else if (def && isa<arith::ConstantOp>(def))
        mapping.map(v, b.clone(*def)->getResult(0));
    }
    b.clone(*op, mapping);
  }
  for (auto [v, s] : outputs)
    b.create<memref::StoreOp>(loc, mapping.lookup(v), mapView(s));
  b.create<gpu::ReturnOp>(loc);

  // The host side: one launch after the island's last op.
  OpBuilder h(ops.back()->getContext());
  h.setInsertionPointAfter(ops.back());
  Value kernel = h.create<arith::ConstantIntOp>(
      loc, static_cast<int64_t>(table_.kernels.size()), 64);
  h.create<exec::CallOp>(loc, TypeRange{},
                         FlatSymbolRefAttr::get(ctx, "loom_cuda_launch1"),
                         ValueRange{kernel, arena_});
  CudaKernel k;
  k.name = name;
  llvm::raw_string_ostream where(k.origin);
  loc.print(where);
  k.grid = 1;
  k.block = 1;
  k.args = {arena_};
  table_.kernels.push_back(std::move(k));
  // Values used after the island came back through slots; the island's ops
  // go (users first).
  for (Operation *op : llvm::reverse(ops)) {
    for (Value r : op->getResults())
      if (!r.use_empty()) {
        for (Operation *user : r.getUsers())
          if (!llvm::is_contained(ops, user))
            return user->emitOpError(
                "uses a scalar the CUDA target computes on the device");
      }
    op->erase();
  }
  return success();
}

FailureOr<int64_t> ProgramScalars::run() {
  replaceStep();
  sumSquareChains();
  if (failed(deviceCalls()) || failed(islands()))
    return failure();
  if (next_ > kSpillBytes)
    return program_->emitOpError("needs ")
           << next_ << " bytes of device scalars; the CUDA target has "
           << kSpillBytes;
  return next_;
}

} // namespace

FailureOr<DeviceScalars> keepScalarsOnDevice(ModuleOp module,
                                             CudaKernels &kernels) {
  MLIRContext *ctx = module.getContext();
  SmallVector<Operation *> programs;
  int64_t arena = 0;
  module.walk([&](Operation *op) {
    if (op->getName().getStringRef() != "exec.program")
      return;
    programs.push_back(op);
    arena = std::max(arena, cast<IntegerAttr>(op->getAttr("arena_bytes")).getInt());
  });
  DeviceScalars result;
  if (programs.empty())
    return result;
  // The spill area follows every program's last buffer; every arena grows
  // to hold it.
  int64_t base = (arena + 255) / 256 * 256;
  int64_t total = base + kSpillBytes;
  result.stepOffset = base;
  auto gpuModule = *kernels.module->getOps<gpu::GPUModuleOp>().begin();
  for (Operation *program : programs) {
    program->setAttr("arena_bytes", IntegerAttr::get(IntegerType::get(ctx, 64), total));
    if (!qualifies(program))
      continue;
    ProgramScalars scalars(program, gpuModule, kernels, base, total);
    if (failed(scalars.run()))
      return failure();
    result.programs.push_back(
        cast<StringAttr>(program->getAttr("sym_name")).str());
  }
  // The manifest's arena sizes.
  if (auto manifest = module->getAttrOfType<DictionaryAttr>("loom.manifest")) {
    SmallVector<NamedAttribute> entries(manifest.begin(), manifest.end());
    Builder b(ctx);
    for (NamedAttribute &na : entries) {
      if (na.getName() == "arena_bytes")
        na.setValue(b.getI64IntegerAttr(total));
      else if (na.getName() == "stage_arena_bytes") {
        SmallVector<int64_t> sizes(
            cast<ArrayAttr>(na.getValue()).size(), total);
        na.setValue(b.getI64ArrayAttr(sizes));
      }
    }
    module->setAttr("loom.manifest", DictionaryAttr::get(ctx, entries));
  }
  return result;
}

} // namespace loom::codegen
