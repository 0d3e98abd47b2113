//===- Passes.td - Loom's passes ----------------------------*- tablegen -*-===//

#ifndef LOOM_COMPILER_PASSES_TD
#define LOOM_COMPILER_PASSES_TD

include "mlir/Pass/PassBase.td"

def MixedPrecision : Pass<"loom-mixed-precision", "mlir::ModuleOp"> {
  let summary = "bf16/fp16 matmuls with fp32 accumulation and master weights";
  let description = [{
    With `precision bf16` or `fp16`: every fp32 matmul reads its operands
    cast to the low type (one cast per value) and its result is cast back to
    fp32; norms, softmax, attention, the loss and the optimizer stay fp32.
  }];
}

def InsertFakeQuant : Pass<"loom-insert-fake-quant", "mlir::ModuleOp"> {
  let summary = "Quantization-aware training: fake-quantized matmul operands";
  let description = [{
    With `quantize qat(int8, ...)`: every matmul of an f32 activation by a
    2-D f32 parameter reads the weight fake-quantized to INT8 (per channel
    or per tensor, symmetric, scales from the current weights) and the
    activation fake-quantized from a `loom.observe` moving-average observer
    (affine UINT8 or symmetric), both blended with `loom.quant_enabled`
    before step `start`. Nothing changes in inference mode.
  }];
}

def Autodiff : Pass<"loom-autodiff", "mlir::ModuleOp"> {
  let summary = "Lower each loom.model to its training and evaluation steps";
  let description = [{
    Replaces every `loom.model` with two `train.step`s: `@train_step`
    (forward, `loss` output, reverse-mode backward ending in one
    `train.gradient` per parameter) and `@eval_step` (forward only, with
    `eval_loss`, `eval_count`, `eval_correct` outputs). Layers are inlined;
    each op keeps its layer instance path in a `loom.layer` attribute.
  }];
  let dependentDialects = ["loom::train::TrainDialect"];
}

def BuildTrainStep : Pass<"loom-build-train-step", "mlir::ModuleOp"> {
  let summary = "Add gradient post-processing and the optimizer update";
  let description = [{
    Replaces the `train.gradient`s of each training step with the global
    gradient norm (`grad_norm` output), clipping as configured, the learning
    rate of the step (`lr` output, warm-up and cosine decay) and one
    optimizer update (AdamW or SGD) per parameter, whose optimizer state is
    read with `train.state` and written back with `train.update`.
  }];
}

def LossScaling : Pass<"loom-loss-scaling", "mlir::ModuleOp"> {
  let summary = "Compile static or dynamic loss scaling into the step";
  let description = [{
    Seeds the backward pass with the loss scale, reports the unscaled
    gradient norm, checks it for overflow (one fused check), unscales
    through the optimizers' grad_scale, predicates every update on the
    check, and updates the scale as Megatron's DynamicGradScaler does
    (SEMANTICS.md). Outputs `loss_scale`, `skipped`, `next_loss_scale`,
    `loss_scale_underflow`.
  }];
}

def Microbatch : Pass<"loom-microbatch", "mlir::ModuleOp"> {
  let summary = "Unroll the train step over micro-batches, accumulating gradients";
  let description = [{
    With `pipeline microbatches = M`, the forward and backward pass of the
    train step is copied once per micro-batch (inputs sliced per
    data-parallel rank), each copy tagged `dist.microbatch`; gradients are
    summed and the loss combined so the step computes the mean over the
    global batch exactly (cross-entropy micro-batches weighted by their
    counted rows). The parameters, the norm and the optimizer stay once.
  }];
  let dependentDialects = ["loom::LoomDialect", "loom::train::TrainDialect"];
}

def PropagateSharding : Pass<"loom-propagate-sharding", "mlir::ModuleOp"> {
  let summary = "Give every value of each train step a sharding on the mesh";
  let description = [{
    Sources take theirs from the mesh (inputs: the batch split over dp),
    from `shard(...)` annotations (parameters, split over tp) and from their
    parameter (optimizer state; ZeRO-1 splits it further over dp); every
    other op applies its sharding rule to its operands' shardings, one sweep
    in program order over the forward and backward pass. Each op gets
    `dist.sharding` (its results), `dist.operand_sharding` (what it needs of
    its operands: a difference is a collective loom-partition inserts) and
    `dist.reason`. A sharding reads `[dp, _, tp] partial(tp)`: dimension 0
    split over dp, 2 over tp, and the rank holding a partial sum over tp.
  }];
}

def Partition : Pass<"loom-partition", "mlir::ModuleOp"> {
  let summary = "Turn train steps into per-rank dist programs on the mesh";
  let description = [{
    Creates the `dist.mesh` of the configuration and rewrites each
    `train.step` into the SPMD `dist.program` every rank runs: per-rank
    types, the collectives each change of sharding needs (all_reduce,
    reduce_scatter, all_gather, or a local dist.shard; each with
    `dist.cause`), local head counts, vocabulary-parallel embedding and
    cross-entropy, the loss weighted to the global-batch mean, the global
    norm over shards, and data-parallel gradient all-reduces fused into
    buckets of `bucket-mb` (with pp > 1 the buckets are made per stage by
    loom-schedule-pipeline; the program carries `dist.bucket_bytes`).
  }];
  let options = [
    Option<"bucketMb", "bucket-mb", "int64_t", "25",
           "Largest data-parallel gradient bucket, in MiB">,
  ];
  let dependentDialects = ["loom::dist::DistDialect", "loom::LoomDialect",
                           "loom::train::TrainDialect"];
}

def SplitPipeline : Pass<"loom-split-pipeline", "mlir::ModuleOp"> {
  let summary = "Cut each program into pipeline stages at layer boundaries";
  let description = [{
    With pp > 1, each dist.program becomes one program per stage (`stage`,
    `<name>_stage<s>`): layers assigned to stages as contiguous runs, pinned
    by `pipeline stages = [...]` or balanced by a cost model: the largest
    stage time (FLOPs and parameter bytes; the embedding counted on stage 0,
    the head and loss on the last) as small as it can be, then among cuts
    within 5% of it the largest stage memory (params, grads and optimizer
    state, the saved activations of the micro-batches the schedule keeps in
    flight, the largest layer working set); every program (evaluation too)
    takes the training step's cut; with `interleaved`, pp × virtual chunks
    are cut and chunk c runs on rank c % pp (`dist.chunk`);
    parameters and their optimizer on their stage; bookkeeping copied to
    every stage; values crossing stages through dist.send/dist.recv along
    pp; the global norm summed over pp. The split is recorded as
    `loom.pipeline_split` for --report.
  }];
  let dependentDialects = ["loom::dist::DistDialect", "loom::LoomDialect",
                           "loom::train::TrainDialect"];
}

def SchedulePipeline : Pass<"loom-schedule-pipeline", "mlir::ModuleOp"> {
  let summary = "Order each stage's micro-batches: GPipe, 1F1B, zero-bubble, interleaved";
  let description = [{
    Reorders each stage program's forward and backward micro-batch groups:
    `gpipe` runs every forward then every backward; `1f1b` runs pp − 1 − s
    forwards on stage s, then one forward and one backward in turn, then the
    remaining backwards; `zero_bubble` is 1F1B with each backward split into
    B (what the gradient sent to the previous stage needs, phase "bwd") and
    W (the weight gradients, phase "wgrad") right after it, so each stage
    passes its gradient on one weight gradient earlier; `interleaved` is
    Megatron's interleaved 1F1B over the `virtual` chunks each rank holds
    (micro-batches in groups of pp through chunk 0, then 1, ...; warm-up
    2 (pp − s − 1) + (v − 1) pp forwards). The order is recorded as
    `dist.schedule` ("F0", "B0", "W0", "F0c1", …). Then each micro-batch's
    gradient is added into the running total as soon as it is computed, and
    (dp > 1) each stage's data-parallel gradients are fused into
    asynchronous buckets started inside the last micro-batch's backward
    pass, so the reduction overlaps the pipeline's drain.
  }];
}

def Recompute : Pass<"loom-recompute", "mlir::ModuleOp"> {
  let summary = "Recompute layer activations in the backward pass";
  let description = [{
    `recompute every = N` recomputes chunks of N consecutive layers from
    their saved inputs right before their backward ops; `recompute budget =
    SIZE` picks single layers, cheapest FLOPs per byte freed first, until
    the estimated peak fits. Gradients are bitwise unchanged (same ops, same
    inputs; dropout masks are keyed by op and step). The choice is recorded
    as `loom.recomputed_layers` on each program.
  }];
}

def FuseElementwise : Pass<"loom-fuse-elementwise", "mlir::ModuleOp"> {
  let summary = "Elementwise loom ops to linalg, chains fused into one loop nest";
  let description = [{
    Converts the elementwise, broadcast, reduction and data-movement loom ops
    inside `dist.program`s to `linalg.generic` on tensors, then fuses
    producer/consumer chains of elementwise generics (upstream elementwise
    fusion), so each chain becomes one loop nest.
  }];
  let dependentDialects = ["mlir::linalg::LinalgDialect",
                           "mlir::arith::ArithDialect",
                           "mlir::math::MathDialect",
                           "mlir::tensor::TensorDialect"];
}

def LowerToExec : Pass<"loom-lower-to-exec", "mlir::ModuleOp"> {
  let summary = "Bufferize onto a static memory plan and lower to exec";
  let description = [{
    Gives every tensor of each `dist.program` a buffer in one arena:
    parameters, optimizer state and inputs persistently, every other value by
    liveness (first-fit offsets, 64-byte aligned; reshapes alias their
    operand; optimizer updates run in place). Library ops become `exec.call`s
    of the runtime ABI, linalg generics run on `exec.view`s. The plan (every
    named buffer, outputs, bytes by category at the peak) is recorded in the
    module's `loom.manifest` attribute.
  }];
  let dependentDialects = ["loom::exec::ExecDialect",
                           "mlir::memref::MemRefDialect",
                           "mlir::scf::SCFDialect",
                           "mlir::LLVM::LLVMDialect"];
}

def ConvertExecToLLVM : Pass<"convert-exec-to-llvm", "mlir::ModuleOp"> {
  let summary = "Lower exec programs to the LLVM dialect";
  let description = [{
    Each `exec.program @P` becomes `void P(loom_ctx *, uint8_t *arena)`:
    views become memref.view of the arena, `exec.call`s become calls of the
    runtime ABI with data pointers, and linalg/memref/arith/math are lowered
    through loops to the LLVM dialect (math through polynomial
    approximations, so no libm is needed).
  }];
  let dependentDialects = ["mlir::LLVM::LLVMDialect", "mlir::func::FuncDialect",
                           "mlir::scf::SCFDialect"];
}

#endif // LOOM_COMPILER_PASSES_TD
