//===- TrainOps.td - ops of the train dialect ---------------*- tablegen -*-===//

#ifndef LOOM_DIALECTS_TRAIN_TRAINOPS_TD
#define LOOM_DIALECTS_TRAIN_TRAINOPS_TD

include "dialects/Train/TrainDialect.td"
include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// Structure and state
//===----------------------------------------------------------------------===//

def Train_StepOp : Train_Op<"step", [Symbol, IsolatedFromAbove, SingleBlock,
                                     NoTerminator]> {
  let summary = "One program: a training step or an evaluation step";
  let description = [{
    `kind` is "train" (forward, backward, optimizer update; outputs `loss`,
    `grad_norm`, `lr`) or "eval" (forward only; outputs `eval_loss`,
    `eval_count`, `eval_correct`). `config` is the model's train
    configuration. Ops inside may carry a `loom.layer` attribute naming the
    layer instance they came from (pipeline splitting and recomputation use
    it). PyTorch equivalent: the body of a training loop iteration.
  }];
  let arguments = (ins SymbolNameAttr:$sym_name, StrAttr:$kind,
                       OptionalAttr<DictionaryAttr>:$config);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = "$sym_name $kind attr-dict-with-keyword $body";
  let hasVerifier = 1;
}

def Train_ParamOp : Train_Op<"param"> {
  let summary = "Reads a trainable parameter";
  let description = [{
    The current value of the named parameter. `init`, `init_args` and `shard`
    are as on `loom.param`; `decay` says whether decoupled weight decay
    applies (rank >= 2, SEMANTICS.md).
  }];
  let arguments = (ins StrAttr:$name, StrAttr:$init,
                       OptionalAttr<DenseF64ArrayAttr>:$init_args,
                       OptionalAttr<StrArrayAttr>:$shard,
                       BoolAttr:$decay);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
}

def Train_StateOp : Train_Op<"state"> {
  let summary = "Reads named, zero-initialised optimizer state";
  let arguments = (ins StrAttr:$name);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
}

def Train_InputOp : Train_Op<"input"> {
  let summary = "Reads a model input of the current batch";
  let arguments = (ins StrAttr:$name);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "$name attr-dict `:` type($result)";
}

def Train_UpdateOp : Train_Op<"update"> {
  let summary = "Writes a parameter or state tensor";
  let description = [{
    Sets the named parameter or state to `value` for the next step. Every
    update comes after every read of the same name.
  }];
  let arguments = (ins StrAttr:$name, Train_AnyTensor:$value);
  let assemblyFormat = "$name `,` $value attr-dict `:` type($value)";
}

def Train_OutputOp : Train_Op<"output"> {
  let summary = "Publishes a scalar metric of the step";
  let arguments = (ins StrAttr:$name, Train_Scalar:$value);
  let assemblyFormat = "$name `,` $value attr-dict `:` type($value)";
}

def Train_GradientOp : Train_Op<"gradient"> {
  let summary = "The gradient of the loss with respect to a parameter";
  let description = [{
    Produced by `loom-autodiff`, consumed by `loom-build-train-step`, which
    turns the gradients into clipping and optimizer updates.
  }];
  let arguments = (ins StrAttr:$name, Train_AnyTensor:$value);
  let assemblyFormat = "$name `,` $value attr-dict `:` type($value)";
}

//===----------------------------------------------------------------------===//
// Forward ops that save values for the backward pass
//===----------------------------------------------------------------------===//

def Train_LayerNormOp : Train_Op<"layer_norm", [Pure]> {
  let summary = "layer_norm returning y, and the row mean and 1/std it used";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$gain,
                       Train_AnyTensor:$bias, F64Attr:$eps);
  let results = (outs Train_AnyTensor:$result, Train_AnyTensor:$mean,
                      Train_AnyTensor:$rstd);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_BatchNormOp : Train_Op<"batch_norm", [Pure]> {
  let summary = "Training batch_norm: y, the batch's mean and 1/std, and the "
                "updated running statistics";
  let description = [{
    Over every axis of x [N, C, ...] but the channels: mean, biased variance
    var, rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * gamma + beta;
    running_mean' = (1 - momentum) * running_mean + momentum * mean,
    running_var' = (1 - momentum) * running_var + momentum * var * m / (m -
    1) with m values per channel (torch's BatchNorm in training).
  }];
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$gamma,
                       Train_AnyTensor:$beta, Train_AnyTensor:$running_mean,
                       Train_AnyTensor:$running_var, F64Attr:$momentum,
                       F64Attr:$eps);
  let results = (outs Train_AnyTensor:$result, Train_AnyTensor:$mean,
                      Train_AnyTensor:$rstd, Train_AnyTensor:$new_mean,
                      Train_AnyTensor:$new_var);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_BatchNormEvalOp : Train_Op<"batch_norm_eval", [Pure]> {
  let summary = "Evaluation batch_norm: the running statistics normalise";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$gamma,
                       Train_AnyTensor:$beta, Train_AnyTensor:$running_mean,
                       Train_AnyTensor:$running_var, F64Attr:$eps);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_BatchNormGradOp : Train_Op<"batch_norm_grad", [Pure]> {
  let summary = "VJP of training batch_norm: (dx, dgamma, dbeta)";
  let arguments = (ins Train_AnyTensor:$grad, Train_AnyTensor:$input,
                       Train_AnyTensor:$gamma, Train_AnyTensor:$mean,
                       Train_AnyTensor:$rstd);
  let results = (outs Train_AnyTensor:$dinput, Train_AnyTensor:$dgamma,
                      Train_AnyTensor:$dbeta);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_Conv2dGradInputOp : Train_Op<"conv2d_grad_input", [Pure]> {
  let summary = "VJP of conv2d for its input (the result type is x's)";
  let arguments = (ins Train_AnyTensor:$grad, Train_AnyTensor:$weight,
                       I64Attr:$stride, I64Attr:$padding);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_Conv2dGradWeightOp : Train_Op<"conv2d_grad_weight", [Pure]> {
  let summary = "VJP of conv2d for its weight (the result type is w's)";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$grad,
                       I64Attr:$stride, I64Attr:$padding);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_RmsNormOp : Train_Op<"rms_norm", [Pure]> {
  let summary = "rms_norm returning y and the row 1/rms it used";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$gain,
                       F64Attr:$eps);
  let results = (outs Train_AnyTensor:$result, Train_AnyTensor:$rstd);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_AttentionOp : Train_Op<"attention", [Pure]> {
  let summary = "attention returning out and the rows' log-sum-exp";
  let arguments = (ins Train_AnyTensor:$query, Train_AnyTensor:$key,
                       Train_AnyTensor:$value, BoolAttr:$causal);
  let results = (outs Train_AnyTensor:$result, Train_AnyTensor:$lse);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_GatedAttentionOp : Train_Op<"gated_attention", [Pure]> {
  let summary = "gated_attention returning out, lse, the gates and the "
                "ungated attention";
  let arguments = (ins Train_AnyTensor:$query, Train_AnyTensor:$key,
                       Train_AnyTensor:$value, Train_AnyTensor:$gate_weight,
                       Train_AnyTensor:$gate_bias, BoolAttr:$causal,
                       OptionalAttr<F64Attr>:$gate_threshold);
  let results = (outs Train_AnyTensor:$result, Train_AnyTensor:$lse,
                      Train_AnyTensor:$gate, Train_AnyTensor:$attn);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_CrossEntropyOp : Train_Op<"cross_entropy", [Pure]> {
  let summary = "cross_entropy returning the loss, row lse and [count, correct]";
  let arguments = (ins Train_AnyTensor:$logits, Train_AnyTensor:$target,
                       I64Attr:$ignore_index);
  let results = (outs Train_Scalar:$loss, Train_AnyTensor:$lse,
                      Train_AnyTensor:$stats);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

//===----------------------------------------------------------------------===//
// Backward ops
//===----------------------------------------------------------------------===//

def Train_GemmOp : Train_Op<"gemm", [Pure]> {
  let summary = "Batched matmul with transposed operands";
  let description = [{
    torch.matmul(op(a), op(b)) where op transposes the last two dimensions
    when `transpose_a`/`transpose_b` is set; batch dimensions broadcast as in
    loom.matmul. The backward pass of matmul is two of these.
  }];
  let arguments = (ins Train_AnyTensor:$lhs, Train_AnyTensor:$rhs,
                       BoolAttr:$transpose_a, BoolAttr:$transpose_b);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Train_LayerNormGradOp : Train_Op<"layer_norm_grad", [Pure]> {
  let summary = "VJP of layer_norm: (dx, dgain, dbias)";
  let arguments = (ins Train_AnyTensor:$grad, Train_AnyTensor:$input,
                       Train_AnyTensor:$gain, Train_AnyTensor:$mean,
                       Train_AnyTensor:$rstd);
  let results = (outs Train_AnyTensor:$dinput, Train_AnyTensor:$dgain,
                      Train_AnyTensor:$dbias);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_RmsNormGradOp : Train_Op<"rms_norm_grad", [Pure]> {
  let summary = "VJP of rms_norm: (dx, dgain)";
  let arguments = (ins Train_AnyTensor:$grad, Train_AnyTensor:$input,
                       Train_AnyTensor:$gain, Train_AnyTensor:$rstd);
  let results = (outs Train_AnyTensor:$dinput, Train_AnyTensor:$dgain);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_SoftmaxGradOp : Train_Op<"softmax_grad", [Pure]> {
  let summary = "VJP of softmax from its output: y * (dy - sum(dy * y))";
  let arguments = (ins Train_AnyTensor:$output, Train_AnyTensor:$grad);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_LogSoftmaxGradOp : Train_Op<"log_softmax_grad", [Pure]> {
  let summary = "VJP of log_softmax from its output: dy - exp(y) * sum(dy)";
  let arguments = (ins Train_AnyTensor:$output, Train_AnyTensor:$grad);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_CrossEntropyGradOp : Train_Op<"cross_entropy_grad", [Pure]> {
  let summary = "VJP of cross_entropy with respect to the logits";
  let arguments = (ins Train_AnyTensor:$logits, Train_AnyTensor:$target,
                       Train_AnyTensor:$lse, Train_Scalar:$grad,
                       I64Attr:$ignore_index);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_EmbeddingGradOp : Train_Op<"embedding_grad", [Pure]> {
  let summary = "VJP of embedding with respect to the table (scatter-add)";
  let arguments = (ins Train_AnyTensor:$ids, Train_AnyTensor:$grad);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_AttentionGradOp : Train_Op<"attention_grad", [Pure]> {
  let summary = "VJP of attention: (dq, dk, dv)";
  let arguments = (ins Train_AnyTensor:$query, Train_AnyTensor:$key,
                       Train_AnyTensor:$value, Train_AnyTensor:$output,
                       Train_AnyTensor:$lse, Train_AnyTensor:$grad,
                       BoolAttr:$causal);
  let results = (outs Train_AnyTensor:$dquery, Train_AnyTensor:$dkey,
                      Train_AnyTensor:$dvalue);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_GatedAttentionGradOp : Train_Op<"gated_attention_grad", [Pure]> {
  let summary = "VJP of gated_attention: (dq, dk, dv, dgate_weight, dgate_bias)";
  let arguments = (ins Train_AnyTensor:$query, Train_AnyTensor:$key,
                       Train_AnyTensor:$value, Train_AnyTensor:$gate_weight,
                       Train_AnyTensor:$gate_bias, Train_AnyTensor:$lse,
                       Train_AnyTensor:$gate, Train_AnyTensor:$attn,
                       Train_AnyTensor:$grad, BoolAttr:$causal,
                       OptionalAttr<F64Attr>:$gate_threshold);
  let results = (outs Train_AnyTensor:$dquery, Train_AnyTensor:$dkey,
                      Train_AnyTensor:$dvalue, Train_AnyTensor:$dgate_weight,
                      Train_AnyTensor:$dgate_bias);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_ReluGradOp : Train_Op<"relu_grad", [Pure]> {
  let summary = "dy where x > 0, else 0";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$grad);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_ObserveRangeOp : Train_Op<"observe_range", [Pure]> {
  let summary = "Post-training quantization: widens a [min, max] range to x";
  let description = [{
    result = [min(range[0], min(x)), max(range[1], max(x))]: the min/max
    observer of an activation over the calibration batches (its state starts
    at [0, 0], so the range always includes 0).
  }];
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$range);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_ObservePercentileOp : Train_Op<"observe_percentile", [Pure]> {
  let summary = "Post-training quantization: a percentile range of x";
  let description = [{
    With b = [the (100 - percentile)-th, the percentile-th percentile of x]
    (linear interpolation between order statistics, as numpy's default):
    b at calibration batch 1, else the running mean range + (b - range) /
    batch (loom_observe_percentile).
  }];
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$range,
                       F64Attr:$percentile);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_ObserveEmaOp : Train_Op<"observe_ema", [Pure]> {
  let summary = "Quantization-aware training: a moving-average range of x";
  let description = [{
    With b = [min(x), max(x)]: b at optimizer step 1, else range + momentum
    * (b - range); the range unchanged after step `freeze` (freeze >= 0)
    (loom_observe_ema; torch's MovingAverageMinMaxObserver).
  }];
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$range,
                       F64Attr:$momentum, I64Attr:$freeze);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_RangeQParamsOp : Train_Op<"range_qparams", [Pure]> {
  let summary = "An activation's scale and zero point from its range";
  let description = [{
    SEMANTICS.md (quantization): the range widened to include 0; affine
    UINT8, or `symmetric` [-127, 127] with zero point 0 (loom_range_qparams).
  }];
  let arguments = (ins Train_AnyTensor:$range, BoolAttr:$symmetric);
  let results = (outs Train_AnyTensor:$scale, Train_AnyTensor:$zero_point);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_QuantizeWeightOp : Train_Op<"quantize_weight", [Pure]> {
  let summary = "Per-output-channel symmetric INT8 weights and their scales";
  let arguments = (ins Train_AnyTensor:$weight);
  let results = (outs Train_AnyTensor:$quantized, Train_AnyTensor:$scale);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_QMatmulOp : Train_Op<"qmatmul", [Pure, AttrSizedOperandSegments]> {
  let summary = "x @ w in INT8: x quantized from its calibrated range";
  let description = [{
    x [..., K] quantized per tensor to UINT8 from `range` (affine, or
    `symmetric`), times the INT8 weight [K, N] with INT32 accumulation,
    dequantized with the range's scale and the weight's per-channel `scale`
    (loom_qlinear). Fused neighbours (loom-autodiff's INT8 chains): with
    `quantized_input` x is already the UINT8 activation (i8 bits) that its
    producer quantized with `range`; an optional `bias` [N] is added and
    `relu` applied; with `range_out` the result is quantized to UINT8 (i8
    bits) for the next qmatmul (`symmetric_out`).
  }];
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$range,
                       Train_AnyTensor:$weight, Train_AnyTensor:$scale,
                       Optional<Train_AnyTensor>:$bias,
                       Optional<Train_AnyTensor>:$range_out,
                       DefaultValuedAttr<BoolAttr, "false">:$symmetric,
                       DefaultValuedAttr<BoolAttr, "false">:$quantized_input,
                       DefaultValuedAttr<BoolAttr, "false">:$relu,
                       DefaultValuedAttr<BoolAttr, "false">:$symmetric_out);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = [{
    $input `,` $range `,` $weight `,` $scale (`bias` $bias^)?
    (`requantize` $range_out^)? attr-dict `:` functional-type(operands, results)
  }];
}

def Train_QuantizeConvWeightOp : Train_Op<"quantize_conv_weight", [Pure]> {
  let summary = "A conv2d weight in INT8, with the following batch norm folded";
  let description = [{
    For w [O, C, kh, kw] and, optionally, the evaluation batch norm's gamma,
    beta, running mean and variance: f = gamma / sqrt(var + eps) (1 without
    them), w' = w * f per output channel, per-channel symmetric INT8 of w'
    laid out [C*kh*kw, O], its scales [O], and the bias beta - mean * f (0
    without the batch norm) (loom_quantize_conv_weight_s8).
  }];
  let arguments = (ins Variadic<Train_AnyTensor>:$operands,
                       OptionalAttr<F64Attr>:$eps);
  let results = (outs Train_AnyTensor:$quantized, Train_AnyTensor:$scale,
                      Train_AnyTensor:$bias);
  let assemblyFormat = "$operands attr-dict `:` functional-type($operands, results)";
}

def Train_QConvOp : Train_Op<"qconv", [Pure]> {
  let summary = "conv2d in INT8, bias and ReLU fused (loom_qconv2d)";
  let description = [{
    x [N, C, H, W] quantized per tensor from `range` (affine, or
    `symmetric`), its columns times the INT8 weight [C*kh*kw, O] with INT32
    accumulation, dequantized, + bias [O], ReLU with `relu`: y [N, O, Ho,
    Wo] in f32.
  }];
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$range,
                       Train_AnyTensor:$weight, Train_AnyTensor:$scale,
                       Train_AnyTensor:$bias, I64Attr:$kh, I64Attr:$kw,
                       I64Attr:$stride, I64Attr:$padding, BoolAttr:$relu,
                       BoolAttr:$symmetric);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_FakeQuantGradOp : Train_Op<"fake_quant_grad", [Pure]> {
  let summary = "dy where loom.fake_quant's q is inside [qmin, qmax], else 0";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$scale,
                       Train_AnyTensor:$zero_point, Train_AnyTensor:$grad,
                       I64Attr:$qmin, I64Attr:$qmax, I64Attr:$axis);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_GeluGradOp : Train_Op<"gelu_grad", [Pure]> {
  let summary = "dy times the derivative of tanh-approximated gelu at x";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$grad);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_GemmBiasGeluOp : Train_Op<"gemm_bias_gelu", [Pure]> {
  let summary = "bf16 GEMM with its bias and tanh-approximated gelu fused";
  let description = [{
    On CUDA bf16 programs, FuseElementwise's form of gelu(f32(a @ w) + c):
    pre = bf16(op(a) op(w) + bias) and result = bf16(gelu(op(a) op(w) +
    bias)), the product accumulated and the gelu computed in f32, once per
    point (cuBLASLt's GELU_AUX_BIAS epilogue). `w` is 2-D, `bias` bf16 [N].
  }];
  let arguments = (ins Train_AnyTensor:$lhs, Train_AnyTensor:$rhs,
                       Train_AnyTensor:$bias, BoolAttr:$transpose_a,
                       BoolAttr:$transpose_b);
  let results = (outs Train_AnyTensor:$result, Train_AnyTensor:$pre);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Train_GemmGeluGradOp : Train_Op<"gemm_gelu_grad", [Pure]> {
  let summary = "bf16 GEMM times the gelu derivative at a saved input";
  let description = [{
    On CUDA bf16 programs, FuseElementwise's form of bf16(gelu_grad(f32(pre),
    f32(a @ w))): result = bf16(gelu'(pre) * (op(a) op(w))), the product and
    the derivative in f32 (cuBLASLt's DGELU epilogue). `w` is 2-D, `pre`
    bf16 with the result's shape.
  }];
  let arguments = (ins Train_AnyTensor:$lhs, Train_AnyTensor:$rhs,
                       Train_AnyTensor:$pre, BoolAttr:$transpose_a,
                       BoolAttr:$transpose_b);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def Train_ReduceMaxGradOp : Train_Op<"reduce_max_grad", [Pure]> {
  let summary = "VJP of reduce_max: dy to the (first) maximal element";
  let arguments = (ins Train_AnyTensor:$input, Train_AnyTensor:$grad,
                       DenseI64ArrayAttr:$dims);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_SliceGradOp : Train_Op<"slice_grad", [Pure]> {
  let summary = "VJP of slice: dy placed at [start, end) of `dim`, zeros elsewhere";
  let arguments = (ins Train_AnyTensor:$grad, I64Attr:$dim, I64Attr:$start);
  let results = (outs Train_AnyTensor:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

//===----------------------------------------------------------------------===//
// Gradient post-processing and optimizers
//===----------------------------------------------------------------------===//

def Train_GlobalNormOp : Train_Op<"global_norm", [Pure]> {
  let summary = "sqrt of the sum of squares of every gradient";
  let description = [{
    With `squared`, the sum of squares itself (no square root): a sharded
    program sums the squares of its local shards, all-reduces the sum over
    the axes the shards are split on, then takes the root.
  }];
  let arguments = (ins Variadic<Train_AnyTensor>:$grads, UnitAttr:$squared);
  let results = (outs Train_Scalar:$result);
  let assemblyFormat = "$grads attr-dict `:` type($grads) `->` type($result)";
}

def Train_LossWeightOp : Train_Op<"loss_weight", [Pure]> {
  let summary = "count / max(total, 1): this rank's share of a global mean";
  let description = [{
    A loss that is a mean over the rows a data-parallel rank holds becomes
    the global mean when weighted by the rank's share of the counted rows
    (`count` of this rank, `total` summed over the group) and summed over
    the group; its gradient seed is weighted alike (SEMANTICS.md: the loss is
    the mean over the global batch). 0 when no row counts anywhere.
  }];
  let arguments = (ins Train_Scalar:$count, Train_Scalar:$total);
  let results = (outs Train_Scalar:$result);
  let assemblyFormat = "$count `,` $total attr-dict `:` type($count) `,` type($total) `->` type($result)";
}

def Train_ClipCoefOp : Train_Op<"clip_coef", [Pure]> {
  let summary = "min(1, max / (norm + 1e-6)) (torch clip_grad_norm_)";
  let arguments = (ins Train_Scalar:$norm, F64Attr:$max);
  let results = (outs Train_Scalar:$result);
  let assemblyFormat = "$norm attr-dict `:` type($norm) `->` type($result)";
}

def Train_LearningRateOp : Train_Op<"learning_rate", [Pure]> {
  let summary = "The learning rate of the current step s";
  let description = [{
    lr · min(1, s/warmup) during warm-up; then, with cosine decay,
    lr·(min + (1 − min)·½(1 + cos(π·(s − warmup)/(total − warmup)))), held at
    lr·min past `total` (SEMANTICS.md). s is the runtime's step counter.
  }];
  let arguments = (ins F64Attr:$lr, I64Attr:$warmup, StrAttr:$decay,
                       I64Attr:$total, F64Attr:$min);
  let results = (outs Train_Scalar:$result);
  let assemblyFormat = "attr-dict `:` type($result)";
}

def Train_IncrementOp : Train_Op<"increment", [Pure]> {
  let summary = "A counter plus one (Adam's bias-correction count)";
  let description = [{
    With `skip` (a 0/1 f32 flag, 1 on a step whose gradients overflowed) the
    counter is unchanged when the flag is set.
  }];
  let arguments = (ins Train_Counter:$counter, Optional<Train_Scalar>:$skip);
  let results = (outs Train_Counter:$result);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_AdamWOp : Train_Op<"adamw", [Pure]> {
  let summary = "One AdamW update (torch.optim.AdamW)";
  let arguments = (ins Train_AnyTensor:$param, Train_AnyTensor:$grad,
                       Train_AnyTensor:$exp_avg, Train_AnyTensor:$exp_avg_sq,
                       Train_Counter:$count, Train_Scalar:$lr,
                       Train_Scalar:$grad_scale, Optional<Train_Scalar>:$skip,
                       F64Attr:$beta1, F64Attr:$beta2, F64Attr:$eps,
                       F64Attr:$weight_decay);
  let results = (outs Train_AnyTensor:$new_param, Train_AnyTensor:$new_exp_avg,
                      Train_AnyTensor:$new_exp_avg_sq);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_NonFiniteOp : Train_Op<"nonfinite", [Pure]> {
  let summary = "1.0 if a scalar is inf or NaN, else 0.0";
  let description = [{
    Applied to the global gradient norm, this is the one fused overflow check
    of loss scaling: the sum of squares (accumulated in f64) is non-finite
    exactly when some gradient element is inf or NaN.
  }];
  let arguments = (ins Train_Scalar:$value);
  let results = (outs Train_Scalar:$result);
  let assemblyFormat = "$value attr-dict `:` type($value) `->` type($result)";
}

def Train_LossScaleValueOp : Train_Op<"loss_scale_value", [Pure]> {
  let summary = "The loss scale of this step from its stored state";
  let description = [{
    State starts zeroed, so a stored 0 means "not yet set": the scale is
    `init` then, the stored value afterwards.
  }];
  let arguments = (ins Train_Scalar:$stored, F64Attr:$init);
  let results = (outs Train_Scalar:$result);
  let assemblyFormat = "$stored attr-dict `:` type($stored) `->` type($result)";
}

def Train_LossScaleUpdateOp : Train_Op<"loss_scale_update", [Pure]> {
  let summary = "Megatron's DynamicGradScaler update (SEMANTICS.md)";
  let description = [{
    Operands: the scale this step used, the clean-step counter, the
    hysteresis used (0 = full), and the skip flag of this step. Results: the
    scale, counter and hysteresis for the next step, and 1.0 when a backoff
    went below `min` (the run must stop; the scale stays at `min`). On an overflow the counter resets and the
    hysteresis is spent; when it runs out the scale is multiplied by
    `backoff`. After `interval` clean steps the scale is multiplied by
    `growth`, the counter resets and the hysteresis refills. A static scale
    (`dynamic` false) never changes.
  }];
  let arguments = (ins Train_Scalar:$scale, Train_Counter:$good_steps,
                       Train_Counter:$hysteresis_used, Train_Scalar:$skip,
                       F64Attr:$init, F64Attr:$growth, F64Attr:$backoff,
                       I64Attr:$interval, I64Attr:$hysteresis, F64Attr:$min,
                       BoolAttr:$dynamic);
  let results = (outs Train_Scalar:$new_scale, Train_Counter:$new_good_steps,
                      Train_Counter:$new_hysteresis_used,
                      Train_Scalar:$underflow);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_AdaptiveClipOp : Train_Op<"adaptive_clip", [Pure]> {
  let summary = "Adaptive clipping coefficient and history update";
  let description = [{
    SEMANTICS.md: threshold = mean + sigmas · std (population) of the pre-clip
    global norms of the previous `window` applied steps; before `window`
    such steps exist, the fixed bound `max` (0: none). The coefficient is
    min(1, threshold / (norm + 1e-6)). The norm joins the history (a ring
    buffer, with its count) only when the step is applied (`skip` is 0).
  }];
  let arguments = (ins Train_Scalar:$norm, Train_AnyTensor:$history,
                       Train_Counter:$count, Optional<Train_Scalar>:$skip,
                       I64Attr:$window, F64Attr:$sigmas, F64Attr:$max);
  let results = (outs Train_Scalar:$coef, Train_AnyTensor:$new_history,
                      Train_Counter:$new_count);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def Train_SgdOp : Train_Op<"sgd", [Pure]> {
  let summary = "One SGD update (torch.optim.SGD, dampening 0)";
  let arguments = (ins Train_AnyTensor:$param, Train_AnyTensor:$grad,
                       Train_AnyTensor:$momentum_buffer, Train_Counter:$count,
                       Train_Scalar:$lr, Train_Scalar:$grad_scale,
                       Optional<Train_Scalar>:$skip,
                       F64Attr:$momentum, BoolAttr:$nesterov,
                       F64Attr:$weight_decay);
  let results = (outs Train_AnyTensor:$new_param,
                      Train_AnyTensor:$new_momentum_buffer);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

#endif // LOOM_DIALECTS_TRAIN_TRAINOPS_TD
