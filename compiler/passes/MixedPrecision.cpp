//===- MixedPrecision.cpp - bf16/fp16 matmuls over fp32 master weights ---===//
//
// SEMANTICS.md: with `precision bf16|fp16`, matmul operands are in the low
// type with fp32 accumulation; everything else — reductions, softmax,
// norms, attention, the loss, the optimizer — stays fp32, and parameters are
// fp32 master weights. The pass casts each matmul operand to the low type
// (once per value, however many matmuls read it), runs the matmul in the low
// type (the kernels accumulate in fp32 and round the result once) and casts
// the result back to fp32. Autodiff then differentiates through the casts,
// so the saved matmul inputs — the bulk of a transformer's activations —
// are stored in the low type.
//
//===----------------------------------------------------------------------===//

#include "compiler/passes/Passes.h"
#include "compiler/passes/TensorBuilder.h"

#include "dialects/Loom/LoomOps.h"

namespace loom {
#define GEN_PASS_DEF_MIXEDPRECISION
#include "compiler/passes/Passes.h.inc"
} // namespace loom

using namespace mlir;

namespace loom {
namespace {

void convert(ModelOp model) {
  auto cfg = model.getConfigAttr();
  auto precision = cfg ? cfg.getAs<StringAttr>("precision") : StringAttr();
  if (!precision || precision.getValue() == "fp32")
    return;
  OpBuilder b(model.getContext());
  Type low = precision.getValue() == "bf16" ? Type(b.getBF16Type())
                                            : Type(b.getF16Type());
  // One cast per value (per block: layers are isolated regions).
  DenseMap<Value, Value> casts;
  auto lowOf = [&](Value v, Operation *user) -> Value {
    auto t = cast<RankedTensorType>(v.getType());
    if (t.getElementType() == low)
      return v;
    auto it = casts.find(v);
    if (it != casts.end())
      return it->second;
    // Right after the definition (or at the block start for arguments), so
    // the one cast dominates every user.
    if (Operation *def = v.getDefiningOp())
      b.setInsertionPointAfter(def);
    else
      b.setInsertionPointToStart(cast<BlockArgument>(v).getOwner());
    TensorBuilder tb(b, v.getLoc());
    if (auto tag = user->getAttrOfType<StringAttr>("loom.layer"))
      tb.setTag(tag);
    Value c = tb.create1("loom.cast", {v},
                         RankedTensorType::get(t.getShape(), low));
    casts[v] = c;
    return c;
  };
  SmallVector<MatmulOp> matmuls;
  model.walk([&](MatmulOp m) {
    auto t = cast<RankedTensorType>(m.getType());
    if (t.getElementType().isF32())
      matmuls.push_back(m);
  });
  for (MatmulOp m : matmuls) {
    Value a = lowOf(m.getLhs(), m), c = lowOf(m.getRhs(), m);
    b.setInsertionPoint(m);
    TensorBuilder tb(b, m.getLoc());
    auto rt = cast<RankedTensorType>(m.getType());
    Value prod = tb.create1("loom.matmul", {a, c},
                            RankedTensorType::get(rt.getShape(), low));
    Value back = tb.create1("loom.cast", {prod}, rt);
    m.getResult().replaceAllUsesWith(back);
    m.erase();
  }
}

struct MixedPrecisionPass : impl::MixedPrecisionBase<MixedPrecisionPass> {
  void runOnOperation() override {
    for (auto model : getOperation().getOps<ModelOp>())
      convert(model);
  }
};

} // namespace
} // namespace loom
