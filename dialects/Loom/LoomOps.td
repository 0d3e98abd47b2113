//===- LoomOps.td - ops of the loom dialect -----------------*- tablegen -*-===//
//
// Every op whose result type follows from its operands and attributes
// implements InferTypeOpInterface through `InferTypeOpAdaptor`, so the custom
// syntax prints no result type and MLIR checks a given one against the
// inferred one. The inference and the verifiers call the shape rules in
// ShapeRules.h, never a restatement of them: the front end uses the same
// rules, so the DSL and the IR reject exactly the same programs.
//
// Attribute and operand names are part of the contract with the front end,
// which builds ops generically through OperationState.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_LOOM_LOOMOPS_TD
#define LOOM_DIALECTS_LOOM_LOOMOPS_TD

include "dialects/Loom/LoomDialect.td"

include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/ControlFlowInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// Structure
//===----------------------------------------------------------------------===//

def Loom_ModelOp : Loom_Op<"model", [
    Symbol, IsolatedFromAbove, SingleBlock, NoTerminator]> {
  let summary = "A model: the forward computation of one training script";
  let description = [{
    Holds the forward computation of one model: its `loom.input`s,
    `loom.param`s, `loom.layer` instances and the ops between them, ending in
    exactly one `loom.loss`, the scalar that training minimises. The optional
    `config` dictionary carries the train configuration of the script
    (optimizer, schedule, precision, mesh, ...) verbatim for later passes; the
    dialect does not interpret it. There is no PyTorch op for this; it plays
    the part of an `nn.Module` together with its loss function.

    Example:

    ```mlir
    loom.model @Mlp attributes {config = {batch = 32 : i64}} {
      %x = loom.input "x" : tensor<32x784xf32>
      ...
      loom.loss %l : tensor<f32>
    }
    ```
  }];
  let arguments = (ins SymbolNameAttr:$sym_name,
                       OptionalAttr<DictionaryAttr>:$config);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = "$sym_name attr-dict-with-keyword $body";
  let hasVerifier = 1;
}

def Loom_InputOp : Loom_Op<"input", [HasParent<"ModelOp">]> {
  let summary = "A named model input (one global batch of data)";
  let description = [{
    A tensor the data loader feeds at every step, named as in the DSL. Its
    leading dimension is the global batch of one optimizer step
    (SEMANTICS.md); each data-parallel replica and micro-batch later sees a
    slice of it. It plays the part of a forward() argument in PyTorch.
  }];
  let arguments = (ins StrAttr:$name);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
}

def Loom_ParamOp : Loom_Op<"param", [ParentOneOf<["ModelOp", "LayerOp"]>]> {
  let summary = "A trainable parameter";
  let description = [{
    A trainable float tensor (an `nn.Parameter`), named by its DSL path
    (`layers.3.wq`), which is also its safetensors name. `init` selects the
    initialiser: `zeros`, `ones`, `normal(std)`, `glorot` or `uniform(a, b)`;
    values come from a counter-based generator (Philox 4x32) keyed by the run
    seed, the name and each element's global index, so any sharding
    initialises the same values. `shard` gives one entry per dimension: `"_"`
    (replicated) or the mesh axis (`"dp"`, `"tp"`) the dimension is split
    over; one axis shards at most one dimension.

    Example:

    ```mlir
    %w = loom.param "fc1.w" init normal(2.000000e-02) shard ["_", "tp"] : tensor<784x128xf32>
    ```
  }];
  let arguments = (ins StrAttr:$name,
                       StrAttr:$init,
                       OptionalAttr<DenseF64ArrayAttr>:$init_args,
                       OptionalAttr<StrArrayAttr>:$shard);
  let results = (outs Loom_FloatTensor:$result);
  let assemblyFormat = [{
    $name `init` custom<ParamInit>($init, $init_args) (`shard` $shard^)?
    attr-dict `:` type($result)
  }];
  let hasVerifier = 1;
}

def Loom_LayerOp : Loom_Op<"layer", [IsolatedFromAbove, SingleBlock]> {
  let summary = "One instance of a DSL layer";
  let description = [{
    One instance of a layer definition (`layer` names the definition, e.g.
    `Decoder`; `name` the instance path, e.g. `layers.3`). The body receives
    the operands as block arguments and returns its results with
    `loom.yield`; being isolated from above, it reads nothing else, so a
    layer is the unit that pipeline splitting assigns to stages and that
    recomputation re-runs. It plays the part of calling an `nn.Module`
    submodule.

    Example:

    ```mlir
    %y = loom.layer "layers.0" @Decoder(%x) : (tensor<2x8x16xf32>) -> tensor<2x8x16xf32> {
    ^bb0(%a: tensor<2x8x16xf32>):
      ...
      loom.yield %r : tensor<2x8x16xf32>
    }
    ```
  }];
  let arguments = (ins StrAttr:$name, StrAttr:$layer,
                       Variadic<Loom_Tensor>:$inputs);
  let results = (outs Variadic<Loom_Tensor>:$outputs);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    $name custom<LayerName>($layer) `(` $inputs `)` attr-dict `:`
    functional-type($inputs, $outputs) $body
  }];
  let hasVerifier = 1;
}

def Loom_YieldOp : Loom_Op<"yield", [
    Pure, ReturnLike, Terminator, HasParent<"LayerOp">]> {
  let summary = "Returns a layer's results";
  let description = [{
    Terminates a `loom.layer` body; its operands become the layer's results
    (the value a PyTorch `forward` returns).
  }];
  let arguments = (ins Variadic<Loom_Tensor>:$values);
  let assemblyFormat = "attr-dict ($values^ `:` type($values))?";
}

def Loom_LossOp : Loom_Op<"loss", [HasParent<"ModelOp">]> {
  let summary = "Marks the model's training loss";
  let description = [{
    Names the f32 scalar that training minimises: the mean over the global
    batch, so every mesh computes the same loss and gradients as one rank.
    Autodiff starts from it, as `loss.backward()` does in PyTorch.
  }];
  let arguments = (ins Loom_Scalar:$value);
  let assemblyFormat = "$value attr-dict `:` type($value)";
}

//===----------------------------------------------------------------------===//
// Op classes
//===----------------------------------------------------------------------===//

/// A pure op whose result type is inferred: it implements
/// InferTypeOpInterface through an Adaptor-taking `inferReturnTypes`.
class Loom_InferredOp<string mnemonic, list<Trait> traits = []>
    : Loom_Op<mnemonic, traits # [Pure, InferTypeOpAdaptor]>;

/// Elementwise unary op: the result has the operand's type. `floatOnly`
/// rejects integer operands (exp, log, ...).
class Loom_UnaryOp<string mnemonic, bit floatOnly>
    : Loom_InferredOp<mnemonic> {
  let arguments = (ins Loom_Tensor:$input);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let extraClassDefinition = [{
    ::llvm::LogicalResult $cppClass::inferReturnTypes(
        ::mlir::MLIRContext *context, std::optional<::mlir::Location> location,
        Adaptor adaptor, ::llvm::SmallVectorImpl<::mlir::Type> &inferred) {
      return inferWithShapeRule(context, location, getOperationName(),
          adaptor.getOperands(), inferred,
          [](::llvm::ArrayRef<shape::TensorType> t, std::string &error) {
            return shape::unary(t[0], /*floatOnly=*/}]
              # !if(floatOnly, "true", "false") # [{, error);
          });
    }
  }];
}

/// Elementwise binary op with numpy broadcasting; both operands must have
/// the same element type.
class Loom_BinaryOp<string mnemonic> : Loom_InferredOp<mnemonic> {
  let arguments = (ins Loom_Tensor:$lhs, Loom_Tensor:$rhs);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs)";
  let extraClassDefinition = [{
    ::llvm::LogicalResult $cppClass::inferReturnTypes(
        ::mlir::MLIRContext *context, std::optional<::mlir::Location> location,
        Adaptor adaptor, ::llvm::SmallVectorImpl<::mlir::Type> &inferred) {
      return inferWithShapeRule(context, location, getOperationName(),
          adaptor.getOperands(), inferred,
          [](::llvm::ArrayRef<shape::TensorType> t, std::string &error) {
            return shape::broadcastBinary(t[0], t[1], error);
          });
    }
  }];
}

/// Softmax-like op over the last dimension.
class Loom_SoftmaxLikeOp<string mnemonic> : Loom_InferredOp<mnemonic> {
  let arguments = (ins Loom_Tensor:$input);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
  let extraClassDefinition = [{
    ::llvm::LogicalResult $cppClass::inferReturnTypes(
        ::mlir::MLIRContext *context, std::optional<::mlir::Location> location,
        Adaptor adaptor, ::llvm::SmallVectorImpl<::mlir::Type> &inferred) {
      return inferWithShapeRule(context, location, getOperationName(),
          adaptor.getOperands(), inferred,
          [](::llvm::ArrayRef<shape::TensorType> t, std::string &error) {
            return shape::softmax(t[0], error);
          });
    }
  }];
}

/// Reduction over `dims` (negative values count from the end); `keepdim`
/// keeps the reduced dimensions with size 1.
class Loom_ReduceOp<string mnemonic> : Loom_InferredOp<mnemonic> {
  let arguments = (ins Loom_Tensor:$input, DenseI64ArrayAttr:$dims,
                       DefaultValuedAttr<BoolAttr, "false">:$keepdim);
  let results = (outs Loom_Tensor:$result);
  // `keepdim` is part of the syntax rather than the attribute dictionary:
  // it changes the result type, and the inference run by the parser only
  // sees attributes that the format itself parses.
  let assemblyFormat = [{
    $input `dims` custom<ReduceDims>($dims, $keepdim) attr-dict `:`
    type($input)
  }];
  let extraClassDefinition = [{
    ::llvm::LogicalResult $cppClass::inferReturnTypes(
        ::mlir::MLIRContext *context, std::optional<::mlir::Location> location,
        Adaptor adaptor, ::llvm::SmallVectorImpl<::mlir::Type> &inferred) {
      if (!adaptor.getDimsAttr())
        return missingAttribute(location, getOperationName(), "dims");
      std::vector<int64_t> dims(adaptor.getDims().begin(),
                                adaptor.getDims().end());
      // Only ops get default-valued attributes filled in, not adaptors.
      ::mlir::BoolAttr keepdimAttr = adaptor.getKeepdimAttr();
      bool keepdim = keepdimAttr && keepdimAttr.getValue();
      return inferWithShapeRule(context, location, getOperationName(),
          adaptor.getOperands(), inferred,
          [&](::llvm::ArrayRef<shape::TensorType> t, std::string &error) {
            return shape::reduce(t[0], dims, keepdim, error);
          });
    }
  }];
}

//===----------------------------------------------------------------------===//
// Elementwise
//===----------------------------------------------------------------------===//

def Loom_NegOp : Loom_UnaryOp<"neg", /*floatOnly=*/0> {
  let summary = "Elementwise negation";
  let description = [{
    `-x` elementwise, for any element type [`torch.neg`].
  }];
}

def Loom_ExpOp : Loom_UnaryOp<"exp", /*floatOnly=*/1> {
  let summary = "Elementwise exponential";
  let description = [{
    `e^x` elementwise on a float tensor [`torch.exp`].
  }];
}

def Loom_LogOp : Loom_UnaryOp<"log", /*floatOnly=*/1> {
  let summary = "Elementwise natural logarithm";
  let description = [{
    `ln(x)` elementwise on a float tensor [`torch.log`].
  }];
}

def Loom_SqrtOp : Loom_UnaryOp<"sqrt", /*floatOnly=*/1> {
  let summary = "Elementwise square root";
  let description = [{
    `sqrt(x)` elementwise on a float tensor [`torch.sqrt`].
  }];
}

def Loom_RsqrtOp : Loom_UnaryOp<"rsqrt", /*floatOnly=*/1> {
  let summary = "Elementwise reciprocal square root";
  let description = [{
    `1 / sqrt(x)` elementwise on a float tensor [`torch.rsqrt`].
  }];
}

def Loom_TanhOp : Loom_UnaryOp<"tanh", /*floatOnly=*/1> {
  let summary = "Elementwise hyperbolic tangent";
  let description = [{
    `tanh(x)` elementwise on a float tensor [`torch.tanh`].
  }];
}

def Loom_ReluOp : Loom_UnaryOp<"relu", /*floatOnly=*/1> {
  let summary = "Rectified linear unit";
  let description = [{
    `max(x, 0)` elementwise on a float tensor [`F.relu`].
  }];
}

def Loom_GeluOp : Loom_UnaryOp<"gelu", /*floatOnly=*/1> {
  let summary = "Gaussian error linear unit, tanh approximation";
  let description = [{
    `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))` elementwise
    on a float tensor [`F.gelu(x, approximate='tanh')`].
  }];
}

def Loom_SigmoidOp : Loom_UnaryOp<"sigmoid", /*floatOnly=*/1> {
  let summary = "Logistic sigmoid";
  let description = [{
    `1 / (1 + e^-x)` elementwise on a float tensor [`torch.sigmoid`].
  }];
}

def Loom_AddOp : Loom_BinaryOp<"add"> {
  let summary = "Elementwise addition with broadcasting";
  let description = [{
    `lhs + rhs` with numpy broadcasting; both operands have the same element
    type (no implicit promotion: insert a `loom.cast`) [`torch.add`].
  }];
}

def Loom_SubOp : Loom_BinaryOp<"sub"> {
  let summary = "Elementwise subtraction with broadcasting";
  let description = [{
    `lhs - rhs` with numpy broadcasting; both operands have the same element
    type [`torch.sub`].
  }];
}

def Loom_MulOp : Loom_BinaryOp<"mul"> {
  let summary = "Elementwise multiplication with broadcasting";
  let description = [{
    `lhs * rhs` with numpy broadcasting; both operands have the same element
    type [`torch.mul`].
  }];
}

def Loom_DivOp : Loom_BinaryOp<"div"> {
  let summary = "Elementwise division with broadcasting";
  let description = [{
    `lhs / rhs` with numpy broadcasting; both operands have the same element
    type. On floats it is true division [`torch.div`].
  }];
}

//===----------------------------------------------------------------------===//
// Linear algebra, normalisation, softmax
//===----------------------------------------------------------------------===//

def Loom_MatmulOp : Loom_InferredOp<"matmul"> {
  let summary = "Batched matrix product";
  let description = [{
    `[..., m, k] @ [..., k, n] -> [..., m, n]` for operands of rank >= 2 with
    the same element type, the batch dimensions broadcast [`torch.matmul`].
    Weights are stored `[in, out]`, so a linear layer is `x @ w + b`. Under
    mixed precision the operands are in the low type and the accumulation in
    f32.
  }];
  let arguments = (ins Loom_Tensor:$lhs, Loom_Tensor:$rhs);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs)";
}

def Loom_SoftmaxOp : Loom_SoftmaxLikeOp<"softmax"> {
  let summary = "Softmax over the last dimension";
  let description = [{
    `exp(x - max(x)) / sum(exp(x - max(x)))` over the last dimension of a
    float tensor of rank >= 1, computed max-subtracted [`F.softmax(x, -1)`].
  }];
}

def Loom_LogSoftmaxOp : Loom_SoftmaxLikeOp<"log_softmax"> {
  let summary = "Log-softmax over the last dimension";
  let description = [{
    `x - max(x) - log(sum(exp(x - max(x))))` over the last dimension of a
    float tensor of rank >= 1 [`F.log_softmax(x, -1)`].
  }];
}

def Loom_LayerNormOp : Loom_InferredOp<"layer_norm"> {
  let summary = "Layer normalisation over the last dimension";
  let description = [{
    `(x - mean(x)) / sqrt(var(x) + eps) * gain + bias` over the last
    dimension, with the biased variance; `gain` and `bias` are `[D]` for an
    input `[..., D]` of the same float type; `eps` (> 0) defaults to 1e-5
    [`F.layer_norm(x, (D,), gain, bias, eps)`].
  }];
  let arguments = (ins Loom_Tensor:$input, Loom_Tensor:$gain,
                       Loom_Tensor:$bias,
                       DefaultValuedAttr<F64Attr, "1e-5">:$eps);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = [{
    $input `,` $gain `,` $bias attr-dict `:` type($input) `,` type($gain)
    `,` type($bias)
  }];
  let hasVerifier = 1;
}

def Loom_RmsNormOp : Loom_InferredOp<"rms_norm"> {
  let summary = "RMS normalisation over the last dimension";
  let description = [{
    `x / sqrt(mean(x^2) + eps) * gain` over the last dimension; `gain` is
    `[D]` for an input `[..., D]` of the same float type; `eps` (> 0)
    defaults to 1e-6 [`torch.nn.functional.rms_norm(x, (D,), gain, eps)`].
  }];
  let arguments = (ins Loom_Tensor:$input, Loom_Tensor:$gain,
                       DefaultValuedAttr<F64Attr, "1e-6">:$eps);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$input `,` $gain attr-dict `:` type($input) `,` type($gain)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Indexing and layout
//===----------------------------------------------------------------------===//

def Loom_EmbeddingOp : Loom_InferredOp<"embedding"> {
  let summary = "Table lookup";
  let description = [{
    `table[ids]`: integer `ids : [...]` index the rows of a float
    `table : [V, D]`, giving `[..., D]` [`F.embedding(ids, table)`].
  }];
  let arguments = (ins Loom_Tensor:$ids, Loom_Tensor:$table);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$ids `,` $table attr-dict `:` type($ids) `,` type($table)";
}

def Loom_ReshapeOp : Loom_Op<"reshape", [Pure]> {
  let summary = "Reshape to an explicit shape";
  let description = [{
    Reinterprets the elements in row-major order under the result's shape,
    which has the same element count and element type [`torch.reshape`].
  }];
  let arguments = (ins Loom_Tensor:$input);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Loom_TransposeOp : Loom_InferredOp<"transpose"> {
  let summary = "Permutes the dimensions";
  let description = [{
    Result dimension `i` is input dimension `permutation[i]`; `permutation`
    is a permutation of `0 .. rank-1` [`torch.permute(x, permutation)`].
  }];
  let arguments = (ins Loom_Tensor:$input, DenseI64ArrayAttr:$permutation);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input $permutation attr-dict `:` type($input)";
}

def Loom_SplitHeadsOp : Loom_InferredOp<"split_heads"> {
  let summary = "[B, T, D] -> [B, H, T, D/H]";
  let description = [{
    Splits the channels of `[B, T, D]` into `heads` heads, head-major:
    channel `c = h * (D/H) + j` goes to head `h`, giving `[B, H, T, D/H]`;
    `heads` divides `D` [`x.view(B, T, H, D // H).transpose(1, 2)`]. So
    sharding the output columns of a projection over `tp` shards whole heads.
  }];
  let arguments = (ins Loom_Tensor:$input, I64Attr:$heads);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input `heads` $heads attr-dict `:` type($input)";
}

def Loom_MergeHeadsOp : Loom_InferredOp<"merge_heads"> {
  let summary = "[B, H, T, d] -> [B, T, H*d]";
  let description = [{
    The inverse of `loom.split_heads`: `[B, H, T, d] -> [B, T, H * d]`, head
    `h` filling channels `h * d .. h * d + d - 1`
    [`x.transpose(1, 2).reshape(B, T, H * d)`].
  }];
  let arguments = (ins Loom_Tensor:$input);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def Loom_BroadcastToOp : Loom_Op<"broadcast_to", [Pure]> {
  let summary = "Broadcast to an explicit shape";
  let description = [{
    Broadcasts the input to the result's shape by numpy rules (leading
    dimensions added, size-1 dimensions repeated), keeping the element type
    [`torch.broadcast_to`].
  }];
  let arguments = (ins Loom_Tensor:$input);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Loom_ReduceSumOp : Loom_ReduceOp<"reduce_sum"> {
  let summary = "Sum over dimensions";
  let description = [{
    Sums over `dims` (negative values count from the end, no duplicates),
    dropping them unless `keepdim` [`torch.sum(x, dims, keepdim)`].
  }];
}

def Loom_ReduceMeanOp : Loom_ReduceOp<"reduce_mean"> {
  let summary = "Mean over dimensions";
  let description = [{
    Averages over `dims` (negative values count from the end, no
    duplicates), dropping them unless `keepdim`
    [`torch.mean(x, dims, keepdim)`].
  }];
}

def Loom_ReduceMaxOp : Loom_ReduceOp<"reduce_max"> {
  let summary = "Maximum over dimensions";
  let description = [{
    The maximum over `dims` (negative values count from the end, no
    duplicates), dropping them unless `keepdim`
    [`torch.amax(x, dims, keepdim)`].
  }];
}

def Loom_ConcatOp : Loom_InferredOp<"concat"> {
  let summary = "Concatenation along one dimension";
  let description = [{
    Joins the operands along `dim` (negative counts from the end); they have
    the same element type, the same rank and equal sizes in every other
    dimension [`torch.cat(inputs, dim)`].
  }];
  let arguments = (ins Variadic<Loom_Tensor>:$inputs, I64Attr:$dim);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$inputs `dim` $dim attr-dict `:` type($inputs)";
}

def Loom_SliceOp : Loom_InferredOp<"slice"> {
  let summary = "A contiguous range of one dimension";
  let description = [{
    Keeps elements `[start, end)` of dimension `dim` (negative counts from
    the end), a non-empty range inside the dimension
    [`x.narrow(dim, start, end - start)`].
  }];
  let arguments = (ins Loom_Tensor:$input, I64Attr:$dim, I64Attr:$start,
                       I64Attr:$end);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = [{
    $input `dim` $dim `from` $start `to` $end attr-dict `:` type($input)
  }];
}

def Loom_CastOp : Loom_Op<"cast", [Pure]> {
  let summary = "Element type conversion";
  let description = [{
    Converts each element to the result's element type, keeping the shape;
    float to integer rounds toward zero [`x.to(dtype)`].
  }];
  let arguments = (ins Loom_Tensor:$input);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def Loom_ConstantOp : Loom_InferredOp<"constant", [ConstantLike]> {
  let summary = "A constant tensor";
  let description = [{
    The tensor held by `value`, whose type is the result type
    [`torch.tensor(value)`].

    Example:

    ```mlir
    %c = loom.constant dense<1.000000e+00> : tensor<4xf32>
    ```
  }];
  let arguments = (ins ElementsAttr:$value);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$value attr-dict";
  let hasFolder = 1;
}

//===----------------------------------------------------------------------===//
// Regularisation and attention
//===----------------------------------------------------------------------===//

def Loom_DropoutOp : Loom_InferredOp<"dropout"> {
  let summary = "Dropout with a counter-based mask";
  let description = [{
    In training, zeroes each element with probability `p` (0 <= p < 1) and
    scales the kept ones by `1 / (1 - p)`; identity in evaluation and
    inference [`F.dropout(x, p, training)`]. The keep-mask is a counter-based
    function of (run seed, step, `key`, global element index), where `key`
    (non-empty) is the op's DSL path including any `repeat` index: the mask is the same
    under any sharding and differs between layers. Being a function of those
    values, the op is pure within a step.
  }];
  let arguments = (ins Loom_Tensor:$input, F64Attr:$p, StrAttr:$key);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$input `p` $p `key` $key attr-dict `:` type($input)";
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Convolution and batch normalisation
//===----------------------------------------------------------------------===//

def Loom_Conv2dOp : Loom_InferredOp<"conv2d"> {
  let summary = "2-D convolution, NCHW, without bias";
  let description = [{
    y[n, o, i, j] = sum_{c, a, b} x[n, c, i*s + a - p, j*s + b - p] *
    w[o, c, a, b], zero outside x [`F.conv2d(x, w, stride=s, padding=p)`].
  }];
  let arguments = (ins Loom_Tensor:$input, Loom_Tensor:$weight,
                       DefaultValuedAttr<I64Attr, "1">:$stride,
                       DefaultValuedAttr<I64Attr, "0">:$padding);
  let results = (outs Loom_Tensor:$result);
  // stride and padding are part of the syntax, not the attribute
  // dictionary: they decide the result type, and the parser's inference
  // only sees what the format itself parses.
  let assemblyFormat =
      "$input `,` $weight `stride` $stride `padding` $padding attr-dict `:` "
      "type($input) `,` type($weight)";
}

def Loom_BatchNormOp : Loom_InferredOp<"batch_norm"> {
  let summary = "Batch normalisation over every axis but the channels (1)";
  let description = [{
    SEMANTICS.md [`F.batch_norm`]: in training, the batch's mean and biased
    variance normalise x, y = (x - mean) / sqrt(var + eps) * gamma + beta,
    and the running statistics (state "<gamma>.running_mean" and
    "<gamma>.running_var", gamma being a parameter) move by `momentum`
    towards the mean and the unbiased variance; in evaluation the running
    statistics normalise.
  }];
  let arguments = (ins Loom_Tensor:$input, Loom_Tensor:$gamma,
                       Loom_Tensor:$beta,
                       DefaultValuedAttr<F64Attr, "0.1">:$momentum,
                       DefaultValuedAttr<F64Attr, "1e-05">:$eps);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$input `,` $gamma `,` $beta attr-dict `:` type($input) `,` "
      "type($gamma) `,` type($beta)";
}

//===----------------------------------------------------------------------===//
// Quantization
//===----------------------------------------------------------------------===//

def Loom_FakeQuantOp : Loom_InferredOp<"fake_quant"> {
  let summary = "Quantize to integers in [qmin, qmax] and back";
  let description = [{
    SEMANTICS.md: with s = max(scale, 1.1920929e-7), q = round_half_even(x *
    (1 / s)) + zero_point in fp32, the result is (clamp(q, qmin, qmax) -
    zero_point) * s [`torch.fake_quantize_per_tensor_affine`, or
    `_per_channel_affine` along `axis` when scale and zero_point are vectors
    of one value per channel]. zero_point holds integers, as floats. The
    gradient reaches x where qmin <= q <= qmax (straight-through); scale and
    zero_point get none.
  }];
  let arguments = (ins Loom_Tensor:$input, Loom_Tensor:$scale,
                       Loom_Tensor:$zero_point, I64Attr:$qmin, I64Attr:$qmax,
                       DefaultValuedAttr<I64Attr, "0">:$axis);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat =
      "$input `,` $scale `,` $zero_point attr-dict `:` type($input) `,` "
      "type($scale) `,` type($zero_point)";
}

def Loom_ObserveOp : Loom_Op<"observe", [Pure]> {
  let summary = "An activation's quantization parameters from its observer";
  let description = [{
    Quantization-aware training (`loom-insert-fake-quant`): the per-tensor
    scale and zero point (rank-0 f32) of `input`, the activation multiplied
    by the weight `name`. Its range is model state, "<name>.act_range"
    ([min, max]), kept by a moving-average min/max observer (SEMANTICS.md:
    factor `momentum`, initialised from the first batch, frozen after step
    `freeze` when it is not negative); in training the step's batch updates
    the range before the parameters are computed from it (torch's
    FakeQuantize), in evaluation the range is only read. Affine [0, 255], or
    `symmetric` [-127, 127] with zero point 0. No gradient flows through it.
  }];
  let arguments = (ins Loom_Tensor:$input, StrAttr:$name,
                       DefaultValuedAttr<F64Attr, "0.01">:$momentum,
                       DefaultValuedAttr<BoolAttr, "false">:$symmetric,
                       DefaultValuedAttr<I64Attr, "-1">:$freeze);
  let results = (outs Loom_Tensor:$scale, Loom_Tensor:$zero_point);
  let assemblyFormat =
      "$input `for` $name attr-dict `:` type($input) `->` type($scale) `,` "
      "type($zero_point)";
  let hasVerifier = 1;
}

def Loom_WeightScaleOp : Loom_Op<"weight_scale", [Pure]> {
  let summary = "Symmetric INT8 scales of a matmul or conv2d weight";
  let description = [{
    max(max |w| / 127, 1.1920929e-7) over each output channel (`axis`: 1 of
    a [in, out] matmul weight, 0 of a [out, in, kh, kw] conv2d weight;
    result [out]), or over the whole weight (`per_tensor`, a rank-0
    result): the scale of its fake quantization, recomputed from the
    current weights every step. No gradient flows through it.
  }];
  let arguments = (ins Loom_Tensor:$weight,
                       DefaultValuedAttr<BoolAttr, "false">:$per_tensor,
                       DefaultValuedAttr<I64Attr, "1">:$axis);
  let results = (outs Loom_Tensor:$scale);
  let assemblyFormat = "$weight attr-dict `:` type($weight) `->` type($scale)";
  let hasVerifier = 1;
}

def Loom_RunningRstdOp : Loom_Op<"running_rstd", [Pure]> {
  let summary = "1 / sqrt(running_var + eps) of the batch norm of `gamma`";
  let description = [{
    Quantization-aware training's batch-norm folding (SEMANTICS.md, torch's
    ConvBn2d): the running variance of the batch norm whose gamma is the
    parameter `gamma` (state "<gamma>.running_var", read before this step's
    batch norm updates it), as 1 / sqrt(running_var + eps). Not
    differentiated.
  }];
  let arguments = (ins Loom_Tensor:$gamma, F64Attr:$eps);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "$gamma attr-dict `:` type($gamma) `->` type($result)";
}

def Loom_QuantEnabledOp : Loom_Op<"quant_enabled", [Pure]> {
  let summary = "1 from optimizer step `start` on, else 0 (rank-0 f32)";
  let description = [{
    Quantization-aware training's switch: before step `start` the observers
    run but values pass unquantized, as torch's `disable_fake_quant`.
    `loom-insert-fake-quant` blends x and its fake quantization with it.
  }];
  let arguments = (ins I64Attr:$start);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = "`from` $start attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Loom_AttentionOp : Loom_InferredOp<"attention"> {
  let summary = "Scaled dot-product attention";
  let description = [{
    `softmax(query @ key^T / sqrt(d) + mask) @ value` for `query : [B, H, Tq,
    d]`, `key : [B, H, Tk, d]`, `value : [B, H, Tk, dv]`, giving
    `[B, H, Tq, dv]`; the mask is -inf above the diagonal when `causal`
    [`F.scaled_dot_product_attention(q, k, v, is_causal=causal)`].
  }];
  let arguments = (ins Loom_Tensor:$query, Loom_Tensor:$key,
                       Loom_Tensor:$value,
                       DefaultValuedAttr<BoolAttr, "false">:$causal);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value attr-dict `:` type($query) `,` type($key) `,`
    type($value)
  }];
}

def Loom_GatedAttentionOp : Loom_InferredOp<"gated_attention"> {
  let summary = "Attention with a per-head sigmoid gate";
  let description = [{
    The source article's dynamic gated attention,
    `sigmoid(W_g [Q; K]) * softmax(Q K^T / sqrt(d_k)) V`. With `query`,
    `key`, `value : [B, H, T, d_k]`, `gate_weight : [H, 2 d_k]` and
    `gate_bias : [H]`, the gate of head `h` at position `t` is
    `g = sigmoid(sum_j [q[b,h,t,:]; k[b,h,t,:]]_j * gate_weight[h,j] +
    gate_bias[h])` and `out[b,h,t,:] = g * attention(q, k, v)[b,h,t,:]`
    (`causal` as in `loom.attention`). The gate is per head, so sharding
    heads over `tp` needs no communication. Without `gate_threshold` the
    formula is computed exactly; with it (0 <= threshold < 1) heads whose
    gate is below the threshold are skipped, the article's opt-in
    approximate mode. [`g = torch.sigmoid(torch.einsum('bhtj,hj->bht',
    torch.cat([q, k], -1), gate_weight) + gate_bias[:, None])`;
    `g[..., None] * F.scaled_dot_product_attention(q, k, v,
    is_causal=causal)`].
  }];
  let arguments = (ins Loom_Tensor:$query, Loom_Tensor:$key,
                       Loom_Tensor:$value, Loom_Tensor:$gate_weight,
                       Loom_Tensor:$gate_bias,
                       DefaultValuedAttr<BoolAttr, "false">:$causal,
                       OptionalAttr<F64Attr>:$gate_threshold);
  let results = (outs Loom_Tensor:$result);
  let assemblyFormat = [{
    $query `,` $key `,` $value `,` $gate_weight `,` $gate_bias attr-dict `:`
    type($query) `,` type($key) `,` type($value) `,` type($gate_weight) `,`
    type($gate_bias)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

def Loom_CrossEntropyOp : Loom_InferredOp<"cross_entropy"> {
  let summary = "Mean cross-entropy over class logits";
  let description = [{
    The mean, over the targets not equal to `ignore_index` (default -100), of
    `-log_softmax(logits)[target]`; `logits : [..., C]` float, `target :
    [...]` integer class ids; the result is an f32 scalar
    [`F.cross_entropy(logits.flatten(0, -2), target.flatten(),
    ignore_index=ignore_index)`].
  }];
  let arguments = (ins Loom_Tensor:$logits, Loom_Tensor:$target,
                       DefaultValuedAttr<I64Attr, "-100">:$ignore_index);
  let results = (outs Loom_Scalar:$result);
  let assemblyFormat = [{
    $logits `,` $target attr-dict `:` type($logits) `,` type($target)
  }];
}

def Loom_MseOp : Loom_InferredOp<"mse"> {
  let summary = "Mean squared error";
  let description = [{
    `mean((pred - target)^2)` over all elements of two float tensors of the
    same type; the result is an f32 scalar [`F.mse_loss(pred, target)`].
  }];
  let arguments = (ins Loom_Tensor:$pred, Loom_Tensor:$target);
  let results = (outs Loom_Scalar:$result);
  let assemblyFormat =
      "$pred `,` $target attr-dict `:` type($pred) `,` type($target)";
}

#endif // LOOM_DIALECTS_LOOM_LOOMOPS_TD
