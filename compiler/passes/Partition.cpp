//===- Partition.cpp - train steps to per-rank dist programs --------------===//

#include "compiler/passes/Passes.h"

namespace loom {
#define GEN_PASS_DEF_PARTITION
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

struct PartitionPass : impl::PartitionBase<PartitionPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<train::StepOp> steps(module.getOps<train::StepOp>());
    if (steps.empty())
      return;
    // All steps of one module share the model's mesh.
    SmallVector<int64_t> shape = {1, 1, 1};
    if (auto cfg = steps.front().getConfigAttr())
      if (auto mesh = cfg.getAs<DenseI64ArrayAttr>("mesh"))
        shape.assign(mesh.asArrayRef().begin(), mesh.asArrayRef().end());
    int64_t world = 1;
    for (int64_t s : shape)
      world *= s;
    if (world != 1) {
      steps.front().emitOpError("mesh dp=")
          << shape[0] << ", tp=" << shape[1] << ", pp=" << shape[2]
          << ": this build partitions only the 1×1×1 mesh; data, tensor and "
             "pipeline parallelism are not implemented yet";
      return signalPassFailure();
    }
    OpBuilder b = OpBuilder::atBlockBegin(module.getBody());
    OperationState mesh(module.getLoc(), "dist.mesh");
    mesh.addAttribute("sym_name", b.getStringAttr("mesh"));
    mesh.addAttribute("axes", b.getStrArrayAttr({"dp", "tp", "pp"}));
    mesh.addAttribute("shape", b.getDenseI64ArrayAttr(shape));
    b.create(mesh);
    for (train::StepOp step : steps) {
      b.setInsertionPoint(step);
      OperationState state(step.getLoc(), "dist.program");
      state.addAttribute("sym_name", step.getSymNameAttr());
      state.addAttribute("kind", step.getKindAttr());
      state.addAttribute("mesh", FlatSymbolRefAttr::get(b.getContext(), "mesh"));
      if (step.getConfigAttr())
        state.addAttribute("config", step.getConfigAttr());
      if (Attribute model = step->getAttr("loom.model"))
        state.addAttribute("loom.model", model);
      Region *region = state.addRegion();
      region->takeBody(step.getBody());
      b.create(state);
      step.erase();
    }
  }
};

} // namespace
} // namespace loom
