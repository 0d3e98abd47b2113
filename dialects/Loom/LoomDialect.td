//===- LoomDialect.td - the loom dialect and its type constraints -*- tablegen -*-===//
//
// The loom dialect is the compiler's model-level IR: one `loom.model` per
// training script, holding the forward computation written in the DSL as
// tensor ops whose meaning is pinned down in SEMANTICS.md. Later passes
// (autodiff, sharding, pipeline splitting, recomputation) read and rewrite it.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_LOOM_LOOMDIALECT_TD
#define LOOM_DIALECTS_LOOM_LOOMDIALECT_TD

include "mlir/IR/OpBase.td"

def Loom_Dialect : Dialect {
  let name = "loom";
  let cppNamespace = "::loom";
  let summary = "Model-level IR of the Loom training compiler";
  let description = [{
    Loom's model-level dialect. A `loom.model` holds the forward computation
    of one model: its inputs, parameters, layer instances and exactly one
    scalar loss. Every value is a ranked, statically shaped tensor; every
    op's shape rule is the one in `dialects/Loom/ShapeRules.h`, shared with
    the DSL front end so that both diagnose the same errors.
  }];
  // Folding a `loom.constant` (and CSE of constants) needs the dialect to
  // rebuild a constant op from an attribute.
  let hasConstantMaterializer = 1;
}

/// Base class of every loom op.
class Loom_Op<string mnemonic, list<Trait> traits = []>
    : Op<Loom_Dialect, mnemonic, traits>;

//===----------------------------------------------------------------------===//
// Type constraints
//===----------------------------------------------------------------------===//

/// The element types of ShapeRules' DType enum.
defvar Loom_ElementTypes = [F32, F16, BF16, F64, I1, I8, I32, I64];
defvar Loom_FloatTypes = [F32, F16, BF16, F64];

/// Every loom value: a ranked tensor with static dimensions. Scalars are
/// rank-0 tensors.
def Loom_Tensor : StaticShapeTensorOf<Loom_ElementTypes> {
  let summary =
      "statically shaped tensor of f32, f16, bf16, f64, i1, i8, i32 or i64";
}

/// Trainable values (parameters) are floating point.
def Loom_FloatTensor : StaticShapeTensorOf<Loom_FloatTypes> {
  let summary = "statically shaped tensor of f32, f16, bf16 or f64";
}

/// The model's loss: one f32 scalar.
def Loom_Scalar : 0DTensorOf<[F32]> {
  let summary = "f32 scalar (tensor<f32>)";
}

#endif // LOOM_DIALECTS_LOOM_LOOMDIALECT_TD
