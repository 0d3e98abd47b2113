//===- Pipelines.cpp - the stages loomc runs ------------------------------===//

#include "compiler/passes/Passes.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void loom::buildLoomToTrainPipeline(OpPassManager &pm) {
  pm.addPass(createAutodiff());
  pm.addPass(createBuildTrainStep());
  pm.addPass(createLossScaling());
  pm.addPass(createCSEPass());
}

void loom::buildTrainToDistPipeline(OpPassManager &pm) {
  pm.addPass(createPartition());
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
  pm.addPass(memref::createExpandStridedMetadataPass());
  pm.addPass(createLowerAffinePass());
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertIndexToLLVMPass());
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
}
