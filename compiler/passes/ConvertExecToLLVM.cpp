//===- ConvertExecToLLVM.cpp - exec programs to functions over the arena --===//
//
// Each `exec.program @P` becomes two functions:
//   func @P_body(%ctx: !llvm.ptr, %arena: memref<?xi8>)   the program, where
//       every exec.view is a memref.view of the arena and every exec.call a
//       call of the runtime ABI with data pointers;
//   func @P(%ctx: !llvm.ptr, %arena: !llvm.ptr)             the exported entry
//       (loom_program_fn), which wraps the raw arena pointer in a memref
//       descriptor.
// The upstream conversions that follow (buildExecToLLVMPipeline) lower
// linalg, memref, arith, math and func to the LLVM dialect.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"

#include "mlir/Dialect/Math/Transforms/Approximation.h"
#include "mlir/Dialect/Math/Transforms/Passes.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace loom {
#define GEN_PASS_DEF_CONVERTEXECTOLLVM
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

/// Declares (once) the ABI function `name` with the given signature.
func::FuncOp declare(ModuleOp module, StringRef name, FunctionType type) {
  if (auto f = module.lookupSymbol<func::FuncOp>(name))
    return f;
  OpBuilder b = OpBuilder::atBlockEnd(module.getBody());
  auto f = b.create<func::FuncOp>(module.getLoc(), name, type);
  f.setPrivate();
  return f;
}

LogicalResult convertProgram(ModuleOp module, exec::ProgramOp program) {
  MLIRContext *ctx = module.getContext();
  Location loc = program.getLoc();
  OpBuilder b(program);
  auto ptr = LLVM::LLVMPointerType::get(ctx);
  auto arenaType = MemRefType::get({ShapedType::kDynamic}, b.getI8Type());
  std::string name = program.getSymName().str();
  int64_t arenaBytes = program.getArenaBytes();

  auto body = b.create<func::FuncOp>(
      loc, name + "_body", b.getFunctionType({ptr, arenaType}, {}));
  body.setPrivate();
  Block *entry = body.addEntryBlock();
  Value ctxArg = entry->getArgument(0), arena = entry->getArgument(1);
  Block &old = program.getBody().front();
  entry->getOperations().splice(entry->end(), old.getOperations());
  OpBuilder eb = OpBuilder::atBlockEnd(entry);
  eb.create<func::ReturnOp>(loc);

  // Library calls receive data pointers: the arena's base plus the view's
  // byte offset (computed here, not read back from the view's descriptor).
  OpBuilder bb = OpBuilder::atBlockBegin(entry);
  Value baseIndex =
      bb.create<memref::ExtractAlignedPointerAsIndexOp>(loc, arena);
  Value base = bb.create<LLVM::IntToPtrOp>(
      loc, ptr, bb.create<arith::IndexCastOp>(loc, bb.getI64Type(), baseIndex));
  DenseMap<Value, int64_t> viewOffsets;

  // Calls may sit inside scf.if (predicated updates): walk the whole body.
  SmallVector<Operation *> ops;
  body.walk([&](Operation *op) {
    if (isa<exec::ViewOp, exec::CallOp, memref::SubViewOp>(op))
      ops.push_back(op);
  });
  for (Operation *op : ops) {
    if (auto view = dyn_cast<exec::ViewOp>(op)) {
      OpBuilder vb(view);
      Value offset = vb.create<arith::ConstantIndexOp>(view.getLoc(),
                                                       view.getOffset());
      Value m = vb.create<memref::ViewOp>(view.getLoc(), view.getType(), arena,
                                          offset, ValueRange{});
      viewOffsets[m] = view.getOffset();
      view.getResult().replaceAllUsesWith(m);
      view.erase();
    } else if (auto sub = dyn_cast<memref::SubViewOp>(op)) {
      // A statically placed slice of a view: a call gets its first element.
      auto it = viewOffsets.find(sub.getSource());
      int64_t offset;
      SmallVector<int64_t> strides;
      if (it != viewOffsets.end() &&
          succeeded(getStridesAndOffset(sub.getType(), strides, offset)) &&
          !ShapedType::isDynamic(offset))
        viewOffsets[sub.getResult()] =
            it->second + offset * std::max<int64_t>(
                                      1, sub.getType().getElementTypeBitWidth() / 8);
    } else if (auto call = dyn_cast<exec::CallOp>(op)) {
      OpBuilder cb(call);
      Location cl = call.getLoc();
      SmallVector<Value> args = {ctxArg};
      SmallVector<Type> types = {ptr};
      for (Value a : call.getArgs()) {
        if (isa<MemRefType>(a.getType())) {
          auto it = viewOffsets.find(a);
          if (it == viewOffsets.end())
            return call.emitOpError("passes a buffer that is not an "
                                    "exec.view of the arena");
          // A 64-bit index: arenas of large models exceed 2 GiB.
          Value offset = cb.create<LLVM::ConstantOp>(
              cl, cb.getI64Type(), cb.getI64IntegerAttr(it->second));
          args.push_back(cb.create<LLVM::GEPOp>(cl, ptr, cb.getI8Type(), base,
                                                ArrayRef<LLVM::GEPArg>{offset}));
          types.push_back(ptr);
        } else {
          args.push_back(a);
          types.push_back(a.getType());
        }
      }
      FunctionType fnType =
          cb.getFunctionType(types, call.getResultTypes());
      func::FuncOp callee = declare(module, call.getCallee(), fnType);
      if (callee.getFunctionType() != fnType)
        return call.emitOpError("calls '")
               << call.getCallee() << "' with two different signatures";
      auto nc = cb.create<func::CallOp>(cl, callee, args);
      call.replaceAllUsesWith(nc.getResults());
      call.erase();
    }
  }

  // The exported entry point: void P(loom_ctx *, uint8_t *arena).
  auto wrapper = b.create<func::FuncOp>(loc, name,
                                        b.getFunctionType({ptr, ptr}, {}));
  Block *w = wrapper.addEntryBlock();
  OpBuilder wb = OpBuilder::atBlockEnd(w);
  auto i64 = wb.getI64Type();
  auto descType = LLVM::LLVMStructType::getLiteral(
      ctx, {ptr, ptr, i64, LLVM::LLVMArrayType::get(i64, 1),
            LLVM::LLVMArrayType::get(i64, 1)});
  Value d = wb.create<LLVM::UndefOp>(loc, descType);
  Value raw = w->getArgument(1);
  auto cst = [&](int64_t v) {
    return wb.create<LLVM::ConstantOp>(loc, i64, wb.getI64IntegerAttr(v));
  };
  d = wb.create<LLVM::InsertValueOp>(loc, d, raw, ArrayRef<int64_t>{0});
  d = wb.create<LLVM::InsertValueOp>(loc, d, raw, ArrayRef<int64_t>{1});
  d = wb.create<LLVM::InsertValueOp>(loc, d, cst(0), ArrayRef<int64_t>{2});
  d = wb.create<LLVM::InsertValueOp>(loc, d, cst(arenaBytes),
                                     ArrayRef<int64_t>{3, 0});
  d = wb.create<LLVM::InsertValueOp>(loc, d, cst(1), ArrayRef<int64_t>{4, 0});
  Value m = wb.create<UnrealizedConversionCastOp>(loc, arenaType, d)
                .getResult(0);
  wb.create<func::CallOp>(loc, body, ValueRange{w->getArgument(0), m});
  wb.create<func::ReturnOp>(loc);
  program.erase();
  return success();
}

struct ConvertExecToLLVMPass
    : impl::ConvertExecToLLVMBase<ConvertExecToLLVMPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<exec::ProgramOp> programs(module.getOps<exec::ProgramOp>());
    for (auto p : programs)
      if (failed(convertProgram(module, p)))
        return signalPassFailure();
    // The mesh lives on in the manifest; the code has no use for it.
    for (auto mesh : llvm::make_early_inc_range(module.getOps<dist::MeshOp>()))
      mesh.erase();
    // tanh, exp, log, cos, ... as polynomials: the artifact needs no libm.
    RewritePatternSet patterns(&getContext());
    populateMathPolynomialApproximationPatterns(patterns);
    if (failed(applyPatternsAndFoldGreedily(module, std::move(patterns))))
      return signalPassFailure();
  }
};

} // namespace
} // namespace loom
