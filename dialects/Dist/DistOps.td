//===- DistOps.td - the dist dialect -------------------------*- tablegen -*-===//
//
// Per-rank programs over a device mesh. A `dist.mesh` names the axes (dp,
// tp, pp) and their sizes; a `dist.program` is the program every rank of the
// mesh runs (SPMD), with its data already the rank's shard. Collectives join
// this dialect with data and tensor parallelism.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_DIST_DISTOPS_TD
#define LOOM_DIALECTS_DIST_DISTOPS_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/SymbolInterfaces.td"

def Dist_Dialect : Dialect {
  let name = "dist";
  let cppNamespace = "::loom::dist";
  let summary = "Per-rank programs over a device mesh";
}

class Dist_Op<string mnemonic, list<Trait> traits = []>
    : Op<Dist_Dialect, mnemonic, traits>;

def Dist_MeshOp : Dist_Op<"mesh", [Symbol]> {
  let summary = "A device mesh: named axes and their sizes";
  let description = [{
    `axes` names the mesh dimensions (dp, tp, pp) and `shape` their sizes;
    the world size is their product, and rank r has mesh coordinates in
    row-major order (dp outermost). PyTorch equivalent: a DeviceMesh.
  }];
  let arguments = (ins SymbolNameAttr:$sym_name, StrArrayAttr:$axes,
                       DenseI64ArrayAttr:$shape);
  let assemblyFormat = "$sym_name `axes` $axes `shape` $shape attr-dict";
  let hasVerifier = 1;
}

def Dist_ProgramOp : Dist_Op<"program", [Symbol, IsolatedFromAbove,
                                         SingleBlock, NoTerminator]> {
  let summary = "The program each rank of a mesh runs";
  let description = [{
    The SPMD program of one `train.step`: `kind` is "train" or "eval",
    `mesh` refers to a `dist.mesh`. Its body is the step as one rank runs
    it: shapes are per-rank, state is the rank's shard.
  }];
  let arguments = (ins SymbolNameAttr:$sym_name, StrAttr:$kind,
                       FlatSymbolRefAttr:$mesh,
                       OptionalAttr<DictionaryAttr>:$config);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat =
      "$sym_name $kind `on` $mesh attr-dict-with-keyword $body";
  let hasVerifier = 1;
}

#endif // LOOM_DIALECTS_DIST_DISTOPS_TD
