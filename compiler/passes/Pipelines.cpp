//===- Pipelines.cpp - the stages loomc runs ------------------------------===//

#include "compiler/passes/Passes.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void loom::buildLoomToTrainPipeline(OpPassManager &pm) {
  pm.addPass(createInsertFakeQuant());
  pm.addPass(createMixedPrecision());
  pm.addPass(createAutodiff());
  pm.addPass(createBuildTrainStep());
  pm.addPass(createLossScaling());
  pm.addPass(createCSEPass());
}

void loom::buildTrainToDistPipeline(OpPassManager &pm) {
  pm.addPass(createMicrobatch());
  pm.addPass(createPropagateSharding());
  pm.addPass(createPartition());
  pm.addPass(createSplitPipeline());
  pm.addPass(createSchedulePipeline());
  pm.addPass(createRecompute());
}

void loom::buildDistToExecPipeline(OpPassManager &pm) {
  pm.addPass(createFuseElementwise());
  pm.addPass(createLowerToExec());
  pm.addPass(createCSEPass());
}

void loom::buildExecToLLVMPipeline(OpPassManager &pm) {
  pm.addPass(createConvertExecToLLVM());
  pm.addPass(createConvertLinalgToLoopsPass());
  pm.addPass(createLowerAffinePass());
  pm.addPass(createConvertSCFToCFPass());
  pm.addPass(createConvertMathToLLVMPass());
  // bf16/f16 arithmetic is done in f32; bf16 conversions become integer ops
  // (no compiler-rt helpers needed in the artifact).
  arith::ArithEmulateUnsupportedFloatsOptions emulate;
  static const std::string lowTypes[] = {"bf16", "f16"};
  emulate.sourceTypeStrs = lowTypes;
  pm.addPass(arith::createArithEmulateUnsupportedFloats(emulate));
  arith::ArithExpandOpsPassOptions expand;
  expand.includeBf16 = true;
  pm.addPass(arith::createArithExpandOpsPass(expand));
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
}
