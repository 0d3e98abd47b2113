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
include "mlir/Interfaces/InferTypeOpInterface.td"

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

//===----------------------------------------------------------------------===//
// Collectives. `axis` names a mesh axis of the enclosing program's mesh; the
// group is the ranks that share the other coordinates. Shapes are per rank.
//===----------------------------------------------------------------------===//

class Dist_CollectiveOp<string mnemonic, list<Trait> traits = []>
    : Dist_Op<mnemonic, traits # [HasParent<"ProgramOp">]> {
  let hasVerifier = 1;
}

def Dist_AllReduceOp : Dist_CollectiveOp<"all_reduce", [SameOperandsAndResultType]> {
  let summary = "Reduce a tensor over a mesh axis; every rank gets the result";
  let description = [{
    `reduction` is "sum", "mean" or "max". Data parallelism sums gradients
    over `dp`; a row-parallel matmul sums partial products over `tp`.
    PyTorch: `dist.all_reduce`.
  }];
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis, StrAttr:$reduction);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input `over` $axis $reduction attr-dict `:` type($input)";
}

def Dist_AllGatherOp : Dist_CollectiveOp<"all_gather"> {
  let summary = "Concatenate every rank's shard along `dim`, in axis order";
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis, I64Attr:$dim);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input `over` $axis `dim` $dim attr-dict `:` type($input) `->` type($result)";
}

def Dist_ReduceScatterOp : Dist_CollectiveOp<"reduce_scatter"> {
  let summary = "Sum over a mesh axis, each rank keeping its slice of `dim`";
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis, I64Attr:$dim);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input `over` $axis `dim` $dim attr-dict `:` type($input) `->` type($result)";
}

def Dist_AllToAllOp : Dist_CollectiveOp<"all_to_all"> {
  let summary = "Split `split_dim` across the group, concatenate along `concat_dim`";
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis,
                       I64Attr:$split_dim, I64Attr:$concat_dim);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input `over` $axis `split` $split_dim `concat` $concat_dim attr-dict `:` type($input) `->` type($result)";
}

def Dist_BroadcastOp : Dist_CollectiveOp<"broadcast", [SameOperandsAndResultType]> {
  let summary = "Every rank of the group gets `root`'s tensor";
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis, I64Attr:$root);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input `over` $axis `from` $root attr-dict `:` type($input)";
}

def Dist_SendOp : Dist_CollectiveOp<"send"> {
  let summary = "Send a tensor to the rank `peer` steps along a mesh axis";
  let description = [{
    Pipeline stages pass activations forward (peer = +1) and gradients
    backward (peer = -1) along `pp`. Pairs with a `dist.recv` of the same
    type and `tag` on the peer.
  }];
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis, I64Attr:$peer,
                       I64Attr:$tag);
  let assemblyFormat = "$input `to` $peer `over` $axis `tag` $tag attr-dict `:` type($input)";
}

def Dist_RecvOp : Dist_CollectiveOp<"recv"> {
  let summary = "Receive a tensor from the rank `peer` steps along a mesh axis";
  let arguments = (ins StrAttr:$axis, I64Attr:$peer, I64Attr:$tag);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "`from` $peer `over` $axis `tag` $tag attr-dict `:` type($result)";
}

def Dist_ShardOp : Dist_CollectiveOp<"shard"> {
  let summary = "Keep this rank's slice of `dim` over a mesh axis (no communication)";
  let description = [{
    The inverse of `all_gather`: a tensor every member of the `axis` group
    holds whole becomes the slice [c·n, (c+1)·n) of `dim`, c the rank's
    coordinate on `axis` and n = size / group size. Inserted where a
    replicated value meets an op that computes on a split one (a replicated
    parameter updated by its ZeRO-1 optimizer shard, say). PyTorch:
    `torch.chunk(x, n, dim)[rank]`.
  }];
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$axis, I64Attr:$dim);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input `over` $axis `dim` $dim attr-dict `:` type($input) `->` type($result)";
}

#endif // LOOM_DIALECTS_DIST_DISTOPS_TD
