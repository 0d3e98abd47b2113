//===- CudaCodegen.cpp - GPU kernels of the exec programs, as PTX ---------===//
//
// The CUDA target's generated code: every fused elementwise or reduction
// loop of an exec program (a `linalg.generic` or `linalg.fill` on arena
// views) becomes one kernel of a `gpu.module`, lowered through MLIR's GPU
// path (gpu -> NVVM -> PTX for sm_90) with no CUDA toolkit involved:
//
//  - one thread per point of the loop's parallel iteration space, flattened
//    row-major and launched in blocks of 256 (a pure elementwise loop
//    without transcendental math: one thread per 16 bytes of its narrowest
//    operand, its points a fixed stride apart, all loads before any
//    store); the reduction
//    dimensions are a sequential loop inside the thread, in index order, so
//    a result does not depend on the launch shape;
//  - kernel parameters are the loop's buffers as bare pointers (the arena
//    views' static shapes are compiled into the index arithmetic), then its
//    scalar operands; constants the body captures are cloned in;
//  - transcendental math is expanded to polynomials first (as on the CPU),
//    so the PTX calls no libdevice function and the driver JIT-loads it
//    alone; bf16/f16 arithmetic is done in f32.
//
// The library calls of the program (GEMMs, norms, attention, optimizers)
// are runtime/cuda's kernels, not generated here.
//
//===----------------------------------------------------------------------===//
#include "compiler/codegen/Codegen.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Affine/IR/AffineOps.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Math/Transforms/Approximation.h"
#include "mlir/Dialect/Math/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/MemRef/Utils/MemRefUtils.h"
#include "dialects/Exec/ExecDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Target/LLVM/NVVM/Target.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/GPU/GPUToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/NVVM/NVVMToLLVMIRTranslation.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "mlir/Transforms/Passes.h"
#include "mlir/Transforms/RegionUtils.h"
#include "llvm/Support/TargetSelect.h"

using namespace mlir;

namespace loom::codegen {
namespace {

constexpr int64_t kBlock = 256;

/// Builds the kernel of one loop op into `kernels`.
class KernelBuilder {
public:
  KernelBuilder(gpu::GPUModuleOp kernels) : kernels_(kernels) {}

  FailureOr<CudaKernel> build(Operation *op, StringRef program, int index);

private:
  gpu::GPUModuleOp kernels_;
};

FailureOr<CudaKernel> KernelBuilder::build(Operation *op, StringRef program,
                                           int index) {
  MLIRContext *ctx = op->getContext();
  Location loc = op->getLoc();
  auto generic = dyn_cast<linalg::GenericOp>(op);
  auto fill = dyn_cast<linalg::FillOp>(op);
  if (!generic && !fill)
    return op->emitOpError("has no CUDA kernel form");

  // The iteration space, its maps, and the operands.
  SmallVector<int64_t> ranges;
  SmallVector<utils::IteratorType> iterators;
  SmallVector<AffineMap> maps;
  SmallVector<Value> operands;
  unsigned numInputs;
  if (generic) {
    ranges = generic.getStaticLoopRanges();
    iterators = generic.getIteratorTypesArray();
    maps = generic.getIndexingMapsArray();
    operands.append(generic.getOperands().begin(), generic.getOperands().end());
    numInputs = generic.getNumDpsInputs();
  } else {
    auto out = cast<MemRefType>(fill.getOutputs()[0].getType());
    ranges.assign(out.getShape().begin(), out.getShape().end());
    iterators.assign(ranges.size(), utils::IteratorType::parallel);
    maps.push_back(AffineMap::get(ranges.size(), 0, ctx));
    maps.push_back(AffineMap::getMultiDimIdentityMap(ranges.size(), ctx));
    operands = {fill.getInputs()[0], fill.getOutputs()[0]};
    numInputs = 1;
  }
  for (int64_t r : ranges)
    if (ShapedType::isDynamic(r))
      return op->emitOpError("has a dynamic loop range; CUDA kernels need "
                             "static shapes");
  SmallVector<unsigned> parallel, reduction;
  for (auto [d, it] : llvm::enumerate(iterators))
    (it == utils::IteratorType::parallel ? parallel : reduction).push_back(d);
  int64_t total = 1;
  for (unsigned d : parallel)
    total *= ranges[d];

  // Parameters: buffers as bare pointers (their static memref types), then
  // scalars. Values the body captures from the program are constants
  // (cloned in) or more scalar parameters.
  SmallVector<Type> params;
  SmallVector<Value> args;
  // Scalar operands that are constants (a fill's value) are compiled in.
  auto isConstantScalar = [](Value v) {
    return !isa<MemRefType>(v.getType()) && matchPattern(v, m_Constant());
  };
  for (Value v : operands) {
    if (isConstantScalar(v))
      continue;
    params.push_back(v.getType());
    args.push_back(v);
  }
  llvm::SetVector<Value> captured;
  if (generic)
    getUsedValuesDefinedAbove(generic.getRegion(), captured);
  SmallVector<Value> capturedParams;
  for (Value v : captured) {
    if (matchPattern(v, m_Constant()))
      continue;
    if (!v.getType().isIntOrIndexOrFloat())
      return op->emitOpError("reads a non-scalar value from outside its body");
    params.push_back(v.getType());
    args.push_back(v);
    capturedParams.push_back(v);
  }

  // Over kMaxCudaKernelArgs buffers, all of them views of the arena: the
  // kernel takes the arena and views it at their offsets.
  DenseMap<Value, int64_t> arenaOffset;
  if (args.size() > kMaxCudaKernelArgs) {
    auto programOp = op->getParentOfType<exec::ProgramOp>();
    auto bytes = programOp ? programOp->getAttrOfType<IntegerAttr>("arena_bytes")
                           : IntegerAttr();
    bool allViews = true;
    for (Value v : args) {
      auto view = v.getDefiningOp<exec::ViewOp>();
      auto type = dyn_cast<MemRefType>(v.getType());
      allViews &= view && type && type.getLayout().isIdentity();
      if (view)
        arenaOffset[v] = static_cast<int64_t>(view.getOffset());
    }
    if (!bytes || !allViews)
      return op->emitOpError("GPU kernel takes ")
             << args.size() << " buffers, over the "
             << kMaxCudaKernelArgs
             << " the runtime launches, and not all are arena buffers";
    OpBuilder h(op);
    Value arena = h.create<exec::ViewOp>(
        loc, MemRefType::get({bytes.getInt()}, h.getI8Type()), int64_t(0));
    params = {arena.getType()};
    args = {arena};
  }

  std::string name = (program + "_k" + Twine(index)).str();
  OpBuilder b(kernels_.getBody()->getTerminator());
  auto func = b.create<gpu::GPUFuncOp>(loc, name, b.getFunctionType(params, {}));
  func->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), b.getUnitAttr());
  func->setAttr("loom.op", b.getStringAttr(op->getName().getStringRef()));
  Block &entry = func.getBody().front();
  b.setInsertionPointToStart(&entry);
  IRMapping mapping;
  // Each operand's value inside the kernel: its parameter, or the constant.
  SmallVector<Value> operandValue;
  unsigned nextParam = 0;
  for (Value v : operands) {
    if (isConstantScalar(v))
      operandValue.push_back(b.clone(*v.getDefiningOp())->getResult(0));
    else if (!arenaOffset.empty())
      operandValue.push_back(b.create<memref::ViewOp>(
          loc, v.getType(), entry.getArgument(0),
          b.create<arith::ConstantIndexOp>(loc, arenaOffset.lookup(v)),
          ValueRange{}));
    else
      operandValue.push_back(entry.getArgument(nextParam++));
  }
  for (auto [i, v] : llvm::enumerate(capturedParams))
    mapping.map(v, entry.getArgument(nextParam + i));
  for (Value v : captured)
    if (!mapping.contains(v))
      mapping.map(v, b.clone(*v.getDefiningOp())->getResult(0));

  auto idx = [&](int64_t c) { return b.create<arith::ConstantIndexOp>(loc, c); };
  // Ends the kernel body and describes its launch.
  auto finish = [&](int64_t grid, int64_t block) {
    b.setInsertionPointToEnd(&entry);
    b.create<gpu::ReturnOp>(loc);
    CudaKernel k;
    k.name = name;
    k.op = op;
    llvm::raw_string_ostream where(k.origin);
    op->getLoc().print(where);
    k.grid = grid;
    k.block = block;
    k.args.assign(args.begin(), args.end());
    return k;
  };
  SmallVector<Value> dims(ranges.size());
  auto indices = [&](AffineMap map, ArrayRef<Value> at) {
    SmallVector<Value> out;
    for (unsigned r = 0; r < map.getNumResults(); ++r)
      out.push_back(b.create<affine::AffineApplyOp>(loc, map.getSubMap({r}), at));
    return out;
  };
  auto load = [&](unsigned operand, ArrayRef<Value> at) -> Value {
    Value arg = operandValue[operand];
    if (!isa<MemRefType>(arg.getType()))
      return arg;
    return b.create<memref::LoadOp>(loc, arg, indices(maps[operand], at));
  };
  unsigned numOutputs = operands.size() - numInputs;
  // The body at full index `at`, given the outputs' current values.
  auto body = [&](ArrayRef<Value> at, ArrayRef<Value> current) {
    if (fill)
      return SmallVector<Value>{load(0, at)};
    Block &region = generic.getRegion().front();
    IRMapping local = mapping;
    for (unsigned i = 0; i < numInputs; ++i)
      local.map(region.getArgument(i), load(i, at));
    for (unsigned o = 0; o < numOutputs; ++o)
      local.map(region.getArgument(numInputs + o), current[o]);
    for (Operation &inner : region.without_terminator())
      b.clone(inner, local);
    SmallVector<Value> results;
    for (Value y : region.getTerminator()->getOperands())
      results.push_back(local.lookupOrDefault(y));
    return results;
  };
  // The parallel indices, row-major from a flat point index. While the
  // iteration space fits in 32 bits the divisions are 32-bit ones (a
  // multiply-high each; 64-bit division by a constant is several times the
  // work on the GPU), widened to index after.
  auto parallelDims = [&](Value point) {
    bool narrow = total <= int64_t(INT32_MAX);
    Type i32 = b.getI32Type();
    Value rest = narrow ? b.create<arith::IndexCastUIOp>(loc, i32, point).getResult()
                        : point;
    auto constant = [&](int64_t c) -> Value {
      return narrow ? b.create<arith::ConstantIntOp>(loc, c, 32).getResult()
                    : idx(c).getResult();
    };
    for (unsigned d : llvm::reverse(parallel)) {
      Value at = b.create<arith::RemUIOp>(loc, rest, constant(ranges[d]));
      dims[d] = narrow ? b.create<arith::IndexCastUIOp>(loc, b.getIndexType(), at)
                             .getResult()
                       : at;
      rest = b.create<arith::DivUIOp>(loc, rest, constant(ranges[d]));
    }
  };
  int64_t reductionPoints = 1;
  for (unsigned d : reduction)
    reductionPoints *= ranges[d];

  // A long sum into few outputs (a bias gradient: 768 columns over 16384
  // rows) would leave the GPU nearly idle with one thread per output. Then
  // each output gets kSlices threads of one block, each summing a
  // contiguous slice of the reduction range in order; the slices' sums are
  // added in slice order through shared memory (the first slice starts from
  // the output's value). Deterministic, in another order than the CPU's
  // single in-order sum (within the GPU-vs-CPU tolerance of SEMANTICS.md).
  // A block takes `lanes` outputs, so that a warp's loads at one slice
  // cover one 32-byte sector of the narrowest input (8 f32 or 16 bf16
  // columns), and 1024 / lanes slices: a bias gradient over 768 columns
  // then runs 96 blocks, not 24 (with 32 outputs a block, 18% of an H200's
  // multiprocessors summed GPT-2-small's [16384, 768] gradients at 40 us
  // each).
  int64_t lanes = 32;
  for (unsigned i = 0; i < numInputs; ++i)
    if (auto t = dyn_cast<MemRefType>(operands[i].getType()))
      lanes = std::min<int64_t>(
          lanes, std::max<int64_t>(8, 32 / ((t.getElementTypeBitWidth() + 7) / 8)));
  const int64_t kLanes = lanes;
  constexpr int64_t kSliceUnroll = 8;
  Value summed;
  if (generic && numOutputs == 1 && !reduction.empty() && total <= 32768 &&
      reductionPoints >= 2048) {
    Block &region = generic.getRegion().front();
    Value acc = region.getArgument(numInputs);
    Value y = region.getTerminator()->getOperand(0);
    auto add = y.getDefiningOp<arith::AddFOp>();
    if (add && acc.hasOneUse() && (add.getLhs() == acc || add.getRhs() == acc) &&
        isa<FloatType>(acc.getType()))
      summed = acc;
  }
  if (summed) {
    // At least 64 points a slice (8 unrolled steps).
    int64_t slices = 1024 / kLanes;
    while (slices > 8 && reductionPoints < slices * 64)
      slices /= 2;
    int64_t chunk = (reductionPoints + slices - 1) / slices;
    Type elem = summed.getType();
    auto shared = MemRefType::get(
        {slices * kLanes}, elem, AffineMap(),
        gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup));
    Value partials = func.addWorkgroupAttribution(shared, loc);
    Value thread = b.create<gpu::ThreadIdOp>(loc, gpu::Dimension::x);
    Value lane = b.create<arith::RemUIOp>(loc, thread, idx(kLanes));
    Value slice = b.create<arith::DivUIOp>(loc, thread, idx(kLanes));
    Value point = b.create<arith::AddIOp>(
        loc,
        b.create<arith::MulIOp>(
            loc, b.create<gpu::BlockIdOp>(loc, gpu::Dimension::x), idx(kLanes)),
        lane);
    Value inRange = b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::ult,
                                            point, idx(total));
    Value zero = b.create<arith::ConstantOp>(loc, b.getFloatAttr(elem, 0.0));
    Value first = b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::eq, slice,
                                          idx(0));
    // This thread's partial sum (0 outside the iteration space).
    auto partialIf = b.create<scf::IfOp>(loc, TypeRange{elem}, inRange,
                                         /*withElseRegion=*/true);
    {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(&partialIf.getThenRegion().front());
      parallelDims(point);
      for (unsigned d : reduction)
        dims[d] = idx(0);
      Value init = b.create<arith::SelectOp>(
          loc, first, load(numInputs, dims), zero);
      Value begin = b.create<arith::MulIOp>(loc, slice, idx(chunk));
      Value end = b.create<arith::MinUIOp>(
          loc, b.create<arith::AddIOp>(loc, begin, idx(chunk)),
          idx(reductionPoints));
      // The slice's points in order, kSliceUnroll of them an iteration:
      // their loads do not depend on the running sum, so they are all in
      // flight at once (one at a time left the sum of a [16384, 3072] f32
      // gradient at 0.7 TB/s). The additions keep their order.
      auto sumPoints = [&](Value from, Value to, int64_t step, Value acc) {
        auto forOp = b.create<scf::ForOp>(loc, from, to, idx(step),
                                          ValueRange{acc});
        OpBuilder::InsertionGuard g2(b);
        b.setInsertionPointToStart(forOp.getBody());
        Value sum = forOp.getRegionIterArgs()[0];
        for (int64_t u = 0; u < step; ++u) {
          // The flat reduction index, row-major over the reduction
          // dimensions.
          Value rest = forOp.getInductionVar();
          if (u != 0)
            rest = b.create<arith::AddIOp>(loc, rest, idx(u));
          for (unsigned d : llvm::reverse(reduction)) {
            dims[d] = b.create<arith::RemUIOp>(loc, rest, idx(ranges[d]));
            rest = b.create<arith::DivUIOp>(loc, rest, idx(ranges[d]));
          }
          sum = body(dims, SmallVector<Value>{sum})[0];
        }
        b.create<scf::YieldOp>(loc, sum);
        return forOp.getResult(0);
      };
      Value whole = b.create<arith::AddIOp>(
          loc, begin,
          b.create<arith::MulIOp>(
              loc,
              b.create<arith::DivUIOp>(
                  loc, b.create<arith::SubIOp>(loc, end, begin),
                  idx(kSliceUnroll)),
              idx(kSliceUnroll)));
      Value sum = sumPoints(begin, whole, kSliceUnroll, init);
      b.create<scf::YieldOp>(loc, sumPoints(whole, end, 1, sum));
      b.setInsertionPointToStart(&partialIf.getElseRegion().front());
      b.create<scf::YieldOp>(loc, zero);
    }
    Value at = b.create<arith::AddIOp>(
        loc, b.create<arith::MulIOp>(loc, slice, idx(kLanes)), lane);
    b.create<memref::StoreOp>(loc, partialIf.getResult(0), partials, at);
    b.create<gpu::BarrierOp>(loc);
    // Slice 0 adds the partials in slice order and stores the output.
    Value combine = b.create<arith::AndIOp>(loc, first, inRange);
    auto combineIf = b.create<scf::IfOp>(loc, combine, /*withElseRegion=*/false);
    {
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(&combineIf.getThenRegion().front());
      Value sum = b.create<memref::LoadOp>(loc, partials, lane);
      for (int64_t sl = 1; sl < slices; ++sl)
        sum = b.create<arith::AddFOp>(
            loc, sum,
            b.create<memref::LoadOp>(
                loc, partials,
                ValueRange{b.create<arith::AddIOp>(loc, lane, idx(sl * kLanes))}));
      parallelDims(point);
      for (unsigned d : reduction)
        dims[d] = idx(0);
      b.create<memref::StoreOp>(loc, sum, operandValue[numInputs],
                                indices(maps[numInputs], dims));
    }
    return finish((total + kLanes - 1) / kLanes, slices * kLanes);
  }

  // Pure elementwise loops take `vec` points per thread, `total / vec`
  // apart (each of the warp's loads stays coalesced): all their loads
  // first, then their bodies, then their stores (stores could alias the
  // inputs, so a load after a store could not be moved up). A thread then
  // has 16 bytes of its narrowest operand in flight instead of 2 or 4.
  // GPT-2-small on an H200: 307k -> 315k tokens/s, the bf16 casts and
  // residual adds 20-50% faster. (Consecutive points per thread were slower
  // than one point: each load instruction then touched 16-byte strides.)
  // Each point's arithmetic is unchanged.
  int64_t vec = 1;
  if (generic && reduction.empty() && !parallel.empty()) {
    int64_t narrowest = 8;
    for (Value v : operands)
      if (auto t = dyn_cast<MemRefType>(v.getType()))
        narrowest = std::min<int64_t>(
            narrowest, (t.getElementTypeBitWidth() + 7) / 8);
    vec = std::max<int64_t>(1, 16 / narrowest);
    // Bodies with transcendental math (GELU's tanh polynomial) ran slower
    // with eight points a thread (GPT-2-small's GELU and its gradient: 179
    // -> 216 us on an H200, where the other loops gained 10-50%): they
    // keep one.
    generic.getRegion().walk([&](Operation *inner) {
      if (inner->getDialect() &&
          inner->getDialect()->getNamespace() == "math")
        vec = 1;
    });
    while (vec > 1 && (total % vec != 0 || total / vec < 4 * kBlock))
      vec /= 2;
  }
  Value block = b.create<gpu::BlockIdOp>(loc, gpu::Dimension::x);
  Value thread = b.create<gpu::ThreadIdOp>(loc, gpu::Dimension::x);
  Value linear = b.create<arith::AddIOp>(
      loc, b.create<arith::MulIOp>(loc, block, idx(kBlock)), thread);
  if (vec > 1) {
    // The thread's points are `linear + j * stride`: at each j the warp's
    // loads are consecutive (coalesced), and the thread has `vec`
    // independent loads in flight.
    const int64_t stride = total / vec;
    Value inRange = b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::ult,
                                            linear, idx(stride));
    auto guard = b.create<scf::IfOp>(loc, inRange, /*withElseRegion=*/false);
    b.setInsertionPointToStart(&guard.getThenRegion().front());
    SmallVector<SmallVector<Value>> at(vec), inputs(vec);
    for (int64_t j = 0; j < vec; ++j) {
      parallelDims(j == 0 ? linear
                          : b.create<arith::AddIOp>(loc, linear, idx(j * stride))
                                .getResult());
      at[j] = dims;
      for (unsigned i = 0; i < numInputs; ++i)
        inputs[j].push_back(load(i, at[j]));
    }
    SmallVector<SmallVector<Value>> values(vec);
    Block &region = generic.getRegion().front();
    for (int64_t j = 0; j < vec; ++j) {
      IRMapping local = mapping;
      for (unsigned i = 0; i < numInputs; ++i)
        local.map(region.getArgument(i), inputs[j][i]);
      for (unsigned o = 0; o < numOutputs; ++o)
        if (!region.getArgument(numInputs + o).use_empty())
          local.map(region.getArgument(numInputs + o),
                    load(numInputs + o, at[j]));
      for (Operation &inner : region.without_terminator())
        b.clone(inner, local);
      for (Value y : region.getTerminator()->getOperands())
        values[j].push_back(local.lookupOrDefault(y));
    }
    for (int64_t j = 0; j < vec; ++j)
      for (unsigned o = 0; o < numOutputs; ++o)
        b.create<memref::StoreOp>(loc, values[j][o], operandValue[numInputs + o],
                                  indices(maps[numInputs + o], at[j]));
    return finish((total / vec + kBlock - 1) / kBlock, kBlock);
  }
  Value inRange = b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::ult,
                                          linear, idx(total));
  auto guard = b.create<scf::IfOp>(loc, inRange, /*withElseRegion=*/false);
  b.setInsertionPointToStart(&guard.getThenRegion().front());
  parallelDims(linear);

  // The outputs' maps do not read the reduction dimensions; until their
  // loops bind them they are 0.
  for (unsigned d : reduction)
    dims[d] = idx(0);
  // The outputs' values at this point: the accumulators of the reduction.
  SmallVector<Value> acc;
  for (unsigned o = 0; o < numOutputs; ++o)
    acc.push_back(generic ? load(numInputs + o, dims) : Value());

  SmallVector<Value> results;
  if (reduction.empty()) {
    results = body(dims, acc);
  } else {
    // Nested loops over the reduction dimensions, outermost first, the
    // outputs carried through.
    std::function<SmallVector<Value>(size_t, ValueRange)> loop =
        [&](size_t level, ValueRange carried) -> SmallVector<Value> {
      unsigned d = reduction[level];
      auto forOp = b.create<scf::ForOp>(loc, idx(0), idx(ranges[d]), idx(1), carried);
      OpBuilder::InsertionGuard g(b);
      b.setInsertionPointToStart(forOp.getBody());
      dims[d] = forOp.getInductionVar();
      SmallVector<Value> inner =
          level + 1 == reduction.size()
              ? body(dims, SmallVector<Value>(forOp.getRegionIterArgs()))
              : loop(level + 1, forOp.getRegionIterArgs());
      b.create<scf::YieldOp>(loc, inner);
      return SmallVector<Value>(forOp.getResults());
    };
    results = loop(0, acc);
    // The outputs' maps read no reduction dimension; the loops' induction
    // variables are out of scope here.
    for (unsigned d : reduction)
      dims[d] = idx(0);
  }
  for (unsigned o = 0; o < numOutputs; ++o) {
    Value out = operandValue[numInputs + o];
    b.create<memref::StoreOp>(loc, results[o], out,
                              indices(maps[numInputs + o], dims));
  }
  return finish((total + kBlock - 1) / kBlock, kBlock);
}

/// |x| as a bit operation: exact, and no libdevice call.
struct AbsFAsBits : OpRewritePattern<math::AbsFOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(math::AbsFOp op,
                                PatternRewriter &rewriter) const override {
    auto type = dyn_cast<FloatType>(op.getType());
    if (!type)
      return failure();
    Location loc = op.getLoc();
    auto bits = rewriter.getIntegerType(type.getWidth());
    Value x = rewriter.create<arith::BitcastOp>(loc, bits, op.getOperand());
    Value mask = rewriter.create<arith::ConstantOp>(
        loc, rewriter.getIntegerAttr(bits, APInt::getSignedMaxValue(type.getWidth())));
    Value y = rewriter.create<arith::AndIOp>(loc, x, mask);
    rewriter.replaceOpWithNewOp<arith::BitcastOp>(op, type, y);
    return success();
  }
};

/// A float op as one PTX instruction (inline assembly, f32 or f64), not the
/// libdevice call the NVVM conversion would make of its LLVM intrinsic
/// (libdevice links only where a CUDA toolkit is found). `insn` is the
/// instruction with {T} for the type (f32 or f64).
template <class Op>
struct FloatOpAsPtx : OpRewritePattern<Op> {
  FloatOpAsPtx(MLIRContext *ctx, StringRef insn)
      : OpRewritePattern<Op>(ctx), insn(insn.str()) {}
  LogicalResult matchAndRewrite(Op op, PatternRewriter &rewriter) const override {
    Type t = op.getType();
    if (!t.isF32() && !t.isF64())
      return failure();
    std::string suffix = t.isF32() ? "f32" : "f64";
    std::string text = insn;
    for (size_t at; (at = text.find("{T}")) != std::string::npos;)
      text.replace(at, 3, suffix);
    rewriter.replaceOpWithNewOp<LLVM::InlineAsmOp>(
        op, t, ValueRange{op.getOperand()}, text + " $0, $1;",
        t.isF32() ? "=f,f" : "=d,d", /*has_side_effects=*/false,
        /*is_align_stack=*/false, LLVM::AsmDialectAttr(), ArrayAttr());
    return success();
  }
  std::string insn;
};

/// Double-precision cos (the cosine learning-rate schedule) without
/// libdevice: x reduced by the nearest multiple k of pi/2 with two fused
/// multiply-adds (pi/2 in two parts, exact for the small k a schedule
/// reaches), then the Taylor series of cos or sin on |r| <= pi/4 to the
/// term below half an ulp, chosen and signed by k mod 4.
struct CosF64AsPolynomial : OpRewritePattern<math::CosOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(math::CosOp op,
                                PatternRewriter &rewriter) const override {
    if (!op.getType().isF64())
      return failure();
    Location loc = op.getLoc();
    OpBuilder &b = rewriter;
    auto c = [&](double v) {
      return b.create<arith::ConstantOp>(loc, b.getF64FloatAttr(v)).getResult();
    };
    auto fma = [&](Value x, Value y, Value z) {
      return b.create<LLVM::FMAOp>(loc, x, y, z).getResult();
    };
    constexpr double kHalfPiHi = 1.5707963267948966;    // pi/2 rounded
    constexpr double kHalfPiLo = 6.123233995736766e-17; // pi/2 - kHalfPiHi
    Value x = b.create<math::AbsFOp>(loc, op.getOperand());
    // k = floor(x * 2/pi + 1/2): x >= 0, so truncation is the floor.
    Value q = b.create<arith::FPToSIOp>(loc, b.getI64Type(),
                                        fma(x, c(2.0 / M_PI), c(0.5)));
    Value k = b.create<arith::SIToFPOp>(loc, b.getF64Type(), q);
    Value r = fma(b.create<arith::NegFOp>(loc, k), c(kHalfPiHi), x);
    r = fma(b.create<arith::NegFOp>(loc, k), c(kHalfPiLo), r);
    Value r2 = b.create<arith::MulFOp>(loc, r, r);
    // cos r = sum (-1)^n r^2n / (2n)!, sin r = r sum (-1)^n r^2n / (2n+1)!,
    // by Horner from n = 10.
    auto series = [&](int first) {
      auto term = [&](int n) {
        double f = 1;
        for (int i = 2; i <= 2 * n + first; ++i)
          f *= i;
        return (n % 2 ? -1.0 : 1.0) / f;
      };
      Value acc = c(term(10));
      for (int n = 9; n >= 0; --n)
        acc = fma(acc, r2, c(term(n)));
      return acc;
    };
    Value cosR = series(0);
    Value sinR = b.create<arith::MulFOp>(loc, r, series(1));
    q = b.create<arith::AndIOp>(loc, q,
                                b.create<arith::ConstantIntOp>(loc, 3, 64));
    auto is = [&](int64_t v) {
      return b.create<arith::CmpIOp>(loc, arith::CmpIPredicate::eq, q,
                                     b.create<arith::ConstantIntOp>(loc, v, 64));
    };
    Value negSin = b.create<arith::NegFOp>(loc, sinR);
    Value negCos = b.create<arith::NegFOp>(loc, cosR);
    Value y = b.create<arith::SelectOp>(loc, is(3), sinR, negCos);
    y = b.create<arith::SelectOp>(loc, is(1), negSin, y);
    y = b.create<arith::SelectOp>(loc, is(0), cosR, y);
    rewriter.replaceOp(op, y);
    return success();
  }
};

/// fma as the LLVM intrinsic, which NVPTX lowers to fma.rn.
struct FmaAsIntrinsic : OpRewritePattern<math::FmaOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(math::FmaOp op,
                                PatternRewriter &rewriter) const override {
    rewriter.replaceOpWithNewOp<LLVM::FMAOp>(op, op.getA(), op.getB(), op.getC());
    return success();
  }
};

/// Polynomial expansions of transcendental math, then the few math ops left
/// as arithmetic or intrinsics: the PTX calls no libdevice function.
struct ApproximateMath
    : PassWrapper<ApproximateMath, OperationPass<gpu::GPUModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(ApproximateMath)
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMathPolynomialApproximationPatterns(patterns);
    if (failed(applyPatternsAndFoldGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
    RewritePatternSet direct(&getContext());
    direct.add<AbsFAsBits, FmaAsIntrinsic, CosF64AsPolynomial>(&getContext());
    // Correctly rounded sqrt as on the CPU; round half to even (fake_quant).
    direct.add<FloatOpAsPtx<math::SqrtOp>>(&getContext(), "sqrt.rn.{T}");
    direct.add<FloatOpAsPtx<math::RoundEvenOp>>(&getContext(),
                                                "cvt.rni.{T}.{T}");
    if (failed(applyPatternsAndFoldGreedily(getOperation(), std::move(direct))))
      signalPassFailure();
  }
};

} // namespace

/// The suffix of a scalar type in the runtime's GPU helpers' names.
std::string scalarSuffix(Type t) {
  if (t.isF32())
    return "f32";
  if (t.isF64())
    return "f64";
  if (t.isInteger(64))
    return "i64";
  if (t.isInteger(32))
    return "i32";
  return "";
}

void registerCudaTranslations(DialectRegistry &registry) {
  registry.insert<gpu::GPUDialect, NVVM::NVVMDialect, affine::AffineDialect>();
  NVVM::registerNVVMTargetInterfaceExternalModels(registry);
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  registerGPUDialectTranslation(registry);
  registerNVVMDialectTranslation(registry);
}

FailureOr<CudaKernels> outlineCudaKernels(ModuleOp module) {
  MLIRContext *ctx = module.getContext();
  ctx->loadDialect<gpu::GPUDialect, affine::AffineDialect, scf::SCFDialect,
                   NVVM::NVVMDialect>();
  CudaKernels result;
  result.module = ModuleOp::create(module.getLoc());
  (*result.module)->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                         UnitAttr::get(ctx));
  OpBuilder b = OpBuilder::atBlockEnd(result.module->getBody());
  auto kernels = b.create<gpu::GPUModuleOp>(module.getLoc(), "loom_kernels");
  KernelBuilder builder(kernels);
  bool failed = false;
  module.walk([&](Operation *program) {
    if (program->getName().getStringRef() != "exec.program")
      return;
    std::string name = cast<StringAttr>(program->getAttr("sym_name")).str();
    int index = 0;
    for (Operation &op : program->getRegion(0).front()) {
      if (!isa<linalg::GenericOp, linalg::FillOp>(op))
        continue;
      auto k = builder.build(&op, name, index++);
      if (mlir::failed(k)) {
        failed = true;
        return;
      }
      result.kernels.push_back(*k);
    }
  });
  if (failed)
    return failure();
  return result;
}

LogicalResult emitPtx(CudaKernels &kernels, std::string &ptx) {
  ModuleOp module = *kernels.module;
  MLIRContext *ctx = module.getContext();
  DialectRegistry registry;
  registerCudaTranslations(registry);
  ctx->appendDialectRegistry(registry);
  LLVMInitializeNVPTXTarget();
  LLVMInitializeNVPTXTargetInfo();
  LLVMInitializeNVPTXTargetMC();
  LLVMInitializeNVPTXAsmPrinter();

  PassManager pm(ctx);
  pm.addPass(createLowerAffinePass());
  OpPassManager &inner = pm.nest<gpu::GPUModuleOp>();
  inner.addPass(std::make_unique<ApproximateMath>());
  arith::ArithEmulateUnsupportedFloatsOptions emulate;
  static const std::string lowTypes[] = {"bf16", "f16"};
  emulate.sourceTypeStrs = lowTypes;
  emulate.targetTypeStr = "f32";
  inner.addPass(arith::createArithEmulateUnsupportedFloats(emulate));
  arith::ArithExpandOpsPassOptions expand;
  expand.includeBf16 = true;
  inner.addPass(arith::createArithExpandOpsPass(expand));
  inner.addPass(createConvertSCFToCFPass());
  GpuNVVMAttachTargetOptions target;
  target.chip = "sm_90";
  target.features = "+ptx80";
  target.optLevel = 3;
  pm.addPass(createGpuNVVMAttachTarget(target));
  ConvertGpuOpsToNVVMOpsOptions nvvm;
  nvvm.useBarePtrCallConv = true;
  nvvm.indexBitwidth = 64;
  pm.addNestedPass<gpu::GPUModuleOp>(createConvertGpuOpsToNVVMOps(nvvm));
  pm.addPass(createReconcileUnrealizedCastsPass());
  GpuModuleToBinaryPassOptions binary;
  binary.compilationTarget = "isa";
  pm.addPass(createGpuModuleToBinaryPass(binary));
  if (failed(pm.run(module)))
    return failure();
  ptx.clear();
  module.walk([&](gpu::BinaryOp bin) {
    for (Attribute obj : bin.getObjects())
      if (auto o = dyn_cast<gpu::ObjectAttr>(obj))
        // The object is a C string for cuModuleLoadData: its terminating
        // NUL is not part of the text.
        ptx += o.getObject().getValue().rtrim(StringRef("\0", 1)).str();
  });
  if (ptx.empty())
    return module.emitError("CUDA code generation produced no PTX");
  // A math function without an expansion here would be a libdevice call
  // the driver cannot resolve: refuse at compile time, naming it.
  if (size_t at = ptx.find(".extern .func"); at != std::string::npos) {
    // ".extern .func (.param .b32 func_retval0) __nv_expf(": the name is
    // the last word before the parameter list.
    StringRef decl = StringRef(ptx).substr(at);
    decl = decl.take_until([](char c) { return c == '\n'; });
    StringRef name = decl.rtrim().rtrim('(').rtrim();
    name = name.substr(name.find_last_of(" \t)") + 1);
    return module.emitError("CUDA code generation: a kernel calls an external "
                            "function (")
           << name << "); this math operation has no GPU expansion yet";
  }
  return success();
}

LogicalResult lowerHostProgramForCuda(ModuleOp module, CudaKernels &kernels) {
  MLIRContext *ctx = module.getContext();
  auto call = [&](OpBuilder &b, Location loc, StringRef callee,
                  ValueRange operands, TypeRange results = {}) {
    return b.create<exec::CallOp>(loc, results, FlatSymbolRefAttr::get(ctx, callee),
                                  operands);
  };
  // Each loop becomes a launch of its kernel: loom_cuda_launchN(kernel,
  // N buffers); the grid and block are the manifest's, per kernel.
  for (auto [index, k] : llvm::enumerate(kernels.kernels)) {
    if (!k.op)
      continue; // launched already (keepScalarsOnDevice's islands)
    OpBuilder b(k.op);
    for (Value a : k.args) {
      if (!isa<MemRefType>(a.getType()))
        return k.op->emitOpError("passes a scalar that is not a constant to "
                                 "its GPU kernel; the CUDA target does not "
                                 "support that yet");
      // Kernels take the buffer's base pointer and add the static offset of
      // its type themselves: only whole arena views qualify.
      Operation *def = a.getDefiningOp();
      if (!def || def->getName().getStringRef() != "exec.view")
        return k.op->emitOpError("passes a slice of a buffer to its GPU "
                                 "kernel; the CUDA target does not support "
                                 "that yet");
    }
    if (k.args.size() > kMaxCudaKernelArgs)
      return k.op->emitOpError("GPU kernel takes ")
             << k.args.size() << " buffers; the CUDA runtime launches at most "
             << kMaxCudaKernelArgs;
    SmallVector<Value> operands = {b.create<arith::ConstantIntOp>(
        k.op->getLoc(), static_cast<int64_t>(index), 64)};
    operands.append(k.args.begin(), k.args.end());
    call(b, k.op->getLoc(), "loom_cuda_launch" + std::to_string(k.args.size()),
         operands);
    k.op->erase();
    k.op = nullptr;
  }
  // Library calls go to the runtime's GPU implementations, loom_cuda_<name>
  // with the CPU function's signature (collectives included: over NCCL, or
  // staged through the host, runtime/cuda/GpuAbi.cpp); the runtime's own
  // services (step, errors, trace markers, mesh coordinates) stay as they
  // are.
  module.walk([&](exec::CallOp c) {
    StringRef callee = c.getCallee();
    if (!callee.starts_with("loom_") || callee.starts_with("loom_cuda_") ||
        llvm::is_contained({"loom_step", "loom_error", "loom_trace_begin",
                            "loom_trace_end", "loom_mesh_coord"},
                           callee))
      return;
    c.setCalleeAttr(FlatSymbolRefAttr::get(
        ctx, ("loom_cuda_" + callee.drop_front(5)).str()));
  });
  // What host code is left reads and writes device memory (in programs
  // keepScalarsOnDevice could not move, also inside their control flow):
  // each access is a synchronous copy. The loops are kernels by now.
  SmallVector<Operation *> scalarOps;
  module.walk([&](Operation *op) {
    if (isa<memref::LoadOp, memref::StoreOp, memref::CopyOp>(op) &&
        op->getParentWithTrait<OpTrait::IsIsolatedFromAbove>()
                ->getName()
                .getStringRef() == "exec.program")
      scalarOps.push_back(op);
  });
  for (Operation *op : scalarOps) {
    OpBuilder b(op);
    Location loc = op->getLoc();
    if (auto load = dyn_cast<memref::LoadOp>(op)) {
      std::string t = scalarSuffix(load.getType());
      if (load.getMemRefType().getRank() != 0 || t.empty())
        return op->emitOpError("reads device memory from the host in a form the "
                               "CUDA target does not support yet");
      Value v = call(b, loc, "loom_cuda_load_" + t, {load.getMemRef()},
                     {load.getType()})
                    .getResult(0);
      load.getResult().replaceAllUsesWith(v);
    } else if (auto store = dyn_cast<memref::StoreOp>(op)) {
      std::string t = scalarSuffix(store.getValueToStore().getType());
      if (store.getMemRefType().getRank() != 0 || t.empty())
        return op->emitOpError("writes device memory from the host in a form "
                               "the CUDA target does not support yet");
      call(b, loc, "loom_cuda_store_" + t,
           {store.getMemRef(), store.getValueToStore()});
    } else {
      auto copy = cast<memref::CopyOp>(op);
      auto from = cast<MemRefType>(copy.getSource().getType());
      auto to = cast<MemRefType>(copy.getTarget().getType());
      bool contiguous = [](MemRefType t) {
        return memref::isStaticShapeAndContiguousRowMajor(t) ||
               (t.hasStaticShape() && t.getNumElements() == 1);
      }(from) && (memref::isStaticShapeAndContiguousRowMajor(to) ||
                   (to.hasStaticShape() && to.getNumElements() == 1));
      if (!contiguous)
        return op->emitOpError("copies a strided buffer; the CUDA target does "
                               "not support that yet");
      int64_t bytes = from.getNumElements() *
                      std::max<int64_t>(1, from.getElementTypeBitWidth() / 8);
      call(b, loc, "loom_cuda_copy",
           {copy.getTarget(), copy.getSource(),
            b.create<arith::ConstantIntOp>(loc, bytes, 64)});
    }
    op->erase();
  }
  return success();
}

} // namespace loom::codegen
