// RUN: loom-opt %s -split-input-file -verify-diagnostics

// One case per error the loom verifiers and result-type inference emit.
// Ops whose result type is inferred report shape errors while the custom
// syntax is parsed; op-level cases sit in func.func so that arguments can
// supply their operands.

// A model needs exactly one loss.
// expected-error @+1 {{model '@NoLoss' must have exactly one loom.loss, found 0}}
loom.model @NoLoss {
  %x = loom.input "x" : tensor<f32>
}

// -----

// expected-error @+1 {{model '@TwoLosses' must have exactly one loom.loss, found 2}}
loom.model @TwoLosses {
  %x = loom.input "x" : tensor<f32>
  loom.loss %x : tensor<f32>
  loom.loss %x : tensor<f32>
}

// -----

// Inputs live directly in a model.
func.func @f() {
  // expected-error @+1 {{'loom.input' op expects parent op 'loom.model'}}
  %x = loom.input "x" : tensor<f32>
  return
}

// -----

// Parameters live in a model or a layer.
func.func @f() {
  // expected-error @+1 {{'loom.param' op expects parent op to be one of 'loom.model, loom.layer'}}
  %w = loom.param "w" init zeros : tensor<2xf32>
  return
}

// -----

// The loss is a direct child of the model and an f32 scalar.
func.func @f(%x: tensor<f32>) {
  // expected-error @+1 {{'loom.loss' op expects parent op 'loom.model'}}
  loom.loss %x : tensor<f32>
  return
}

// -----

loom.model @M {
  %x = loom.input "x" : tensor<2xf32>
  // expected-error @+1 {{'loom.loss' op operand #0 must be f32 scalar (tensor<f32>), but got 'tensor<2xf32>'}}
  loom.loss %x : tensor<2xf32>
}

// -----

// loom.yield only terminates a layer.
loom.model @M {
  %x = loom.input "x" : tensor<f32>
  // expected-error @+1 {{'loom.yield' op expects parent op 'loom.layer'}}
  loom.yield %x : tensor<f32>
  loom.loss %x : tensor<f32>
}

// -----

// Parameter initialisers and their arguments.
loom.model @M {
  // expected-error @+1 {{unknown init 'kaiming'; expected zeros, ones, normal, glorot or uniform}}
  %w = loom.param "w" init kaiming : tensor<2xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{init 'normal' takes 1 argument (std), got 0}}
  %w = loom.param "w" init normal : tensor<2xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{init 'uniform' takes 2 arguments (a, b), got 1}}
  %w = loom.param "w" init uniform(1.0) : tensor<2xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{init 'glorot' takes 0 arguments, got 1}}
  %w = loom.param "w" init glorot(1.0) : tensor<2x2xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{normal init needs std > 0, got 0.000000e+00}}
  %w = loom.param "w" init normal(0.0) : tensor<2xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{uniform init needs a < b, got (1.000000e+00, -1.000000e+00)}}
  %w = loom.param "w" init uniform(1.0, -1.0) : tensor<2xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

// Sharding: one entry per dimension, "_" or a mesh axis, each axis once.
loom.model @M {
  // expected-error @+1 {{shard has 1 entries but the parameter has rank 2}}
  %w = loom.param "w" init zeros shard ["_"] : tensor<2x3xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{shard entry 0 is 'pp'; expected "_", "dp" or "tp"}}
  %w = loom.param "w" init zeros shard ["pp", "_"] : tensor<2x3xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

loom.model @M {
  // expected-error @+1 {{mesh axis 'tp' shards more than one dimension}}
  %w = loom.param "w" init zeros shard ["tp", "tp"] : tensor<2x3xf32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

// Parameters are float tensors.
loom.model @M {
  // expected-error @+1 {{'loom.param' op result #0 must be statically shaped tensor of f32, f16, bf16 or f64, but got 'tensor<2x3xi32>'}}
  %w = loom.param "w" init zeros : tensor<2x3xi32>
  %l = loom.input "l" : tensor<f32>
  loom.loss %l : tensor<f32>
}

// -----

// A layer's block arguments match its inputs, loom.yield its results.
func.func @f(%x: tensor<2xf32>) {
  // expected-error @+1 {{body has 2 arguments but the layer has 1 inputs}}
  %y = loom.layer "layers.0" @L(%x) : (tensor<2xf32>) -> tensor<2xf32> {
  ^bb0(%a: tensor<2xf32>, %b: tensor<2xf32>):
    loom.yield %a : tensor<2xf32>
  }
  return
}

// -----

func.func @f(%x: tensor<2xf32>) {
  // expected-error @+1 {{body argument #0 has type 'tensor<3xf32>' but input #0 has type 'tensor<2xf32>'}}
  %y = loom.layer "layers.0" @L(%x) : (tensor<2xf32>) -> tensor<2xf32> {
  ^bb0(%a: tensor<3xf32>):
    %z = loom.param "w" init zeros : tensor<2xf32>
    loom.yield %z : tensor<2xf32>
  }
  return
}

// -----

func.func @f(%x: tensor<2xf32>) {
  // expected-error @+1 {{loom.yield returns 2 values but the layer has 1 results}}
  %y = loom.layer "layers.0" @L(%x) : (tensor<2xf32>) -> tensor<2xf32> {
  ^bb0(%a: tensor<2xf32>):
    loom.yield %a, %a : tensor<2xf32>, tensor<2xf32>
  }
  return
}

// -----

func.func @f(%x: tensor<2xf32>) {
  // expected-error @+1 {{yielded value #0 has type 'tensor<2xf32>' but result #0 has type 'tensor<3xf32>'}}
  %y = loom.layer "layers.0" @L(%x) : (tensor<2xf32>) -> tensor<3xf32> {
  ^bb0(%a: tensor<2xf32>):
    loom.yield %a : tensor<2xf32>
  }
  return
}

// -----

func.func @f(%x: tensor<2xf32>) {
  // expected-error @+1 {{body must end with loom.yield}}
  %y = loom.layer "layers.0" @L(%x) : (tensor<2xf32>) -> tensor<2xf32> {
  ^bb0(%a: tensor<2xf32>):
    %z = loom.param "w" init zeros : tensor<2xf32>
  }
  return
}

// -----

// A layer is isolated from above: values enter as operands.
func.func @f(%x: tensor<2xf32>) {
  // expected-note @+1 {{required by region isolation constraints}}
  %y = loom.layer "layers.0" @L(%x) : (tensor<2xf32>) -> tensor<2xf32> {
  ^bb0(%a: tensor<2xf32>):
    // expected-error @+1 {{using value defined outside the region}}
    %z = loom.neg %x : tensor<2xf32>
    loom.yield %z : tensor<2xf32>
  }
  return
}

// -----

// Every value is a statically shaped loom tensor: checked by inference while
// parsing, and by the ODS constraints in the generic form.
func.func @f(%x: tensor<?xf32>) {
  // expected-error @+1 {{'loom.neg' op operand #0 must be statically shaped tensor of f32, f16, bf16, f64, i1, i8, i32 or i64, but got 'tensor<?xf32>'}}
  %0 = loom.neg %x : tensor<?xf32>
  return
}

// -----

func.func @f(%x: tensor<4xui8>) {
  // expected-error @+1 {{'loom.neg' op operand #0 must be statically shaped tensor of f32, f16, bf16, f64, i1, i8, i32 or i64, but got 'tensor<4xui8>'}}
  %0 = "loom.neg"(%x) : (tensor<4xui8>) -> tensor<4xui8>
  return
}

// -----

func.func @f() {
  // expected-error @+1 {{'loom.constant' op value must be statically shaped tensor of f32, f16, bf16, f64, i1, i8, i32 or i64, but got 'tensor<4xi16>'}}
  %0 = loom.constant dense<1> : tensor<4xi16>
  return
}

// -----

// A result type given in the generic form must equal the inferred one.
func.func @f(%x: tensor<4x8xf32>) {
  // expected-error @+2 {{'loom.neg' op failed to infer returned types}}
  // expected-error @+1 {{'loom.neg' op inferred type(s) 'tensor<4x8xf32>' are incompatible with return type(s) of operation 'tensor<8x4xf32>'}}
  %0 = "loom.neg"(%x) : (tensor<4x8xf32>) -> tensor<8x4xf32>
  return
}

// -----

// In the generic form a shape-rule error is followed by MLIR's "failed to infer
// returned types".
func.func @f(%x: tensor<4x8xf32>, %y: tensor<4xf32>) {
  // expected-error @+2 {{'loom.add' op failed to infer returned types}}
  // expected-error @+1 {{'loom.add' op shapes [4, 8] and [4] cannot be broadcast together (dimension 1: 8 vs 4)}}
  %0 = "loom.add"(%x, %y) : (tensor<4x8xf32>, tensor<4xf32>) -> tensor<4x8xf32>
  return
}

// -----

// Elementwise.
func.func @f(%i: tensor<4xi32>) {
  // expected-error @+1 {{'loom.exp' op operand must have a floating-point element type, got i32[4]}}
  %0 = loom.exp %i : tensor<4xi32>
  return
}

// -----

func.func @f(%x: tensor<4x8xf32>, %y: tensor<4xf32>) {
  // expected-error @+1 {{'loom.add' op shapes [4, 8] and [4] cannot be broadcast together (dimension 1: 8 vs 4)}}
  %0 = loom.add %x, %y : tensor<4x8xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%x: tensor<4xf32>, %y: tensor<4xf16>) {
  // expected-error @+1 {{'loom.mul' op element types differ: f32[4] and f16[4] (insert an explicit cast)}}
  %0 = loom.mul %x, %y : tensor<4xf32>, tensor<4xf16>
  return
}

// -----

// matmul.
func.func @f(%x: tensor<4x8xf32>, %y: tensor<4x8xf32>) {
  // expected-error @+1 {{'loom.matmul' op matmul contraction dimensions differ: f32[4, 8] @ f32[4, 8] (8 vs 4)}}
  %0 = loom.matmul %x, %y : tensor<4x8xf32>, tensor<4x8xf32>
  return
}

// -----

func.func @f(%x: tensor<8xf32>, %y: tensor<8x4xf32>) {
  // expected-error @+1 {{'loom.matmul' op matmul operands must have rank >= 2, got f32[8] @ f32[8, 4]}}
  %0 = loom.matmul %x, %y : tensor<8xf32>, tensor<8x4xf32>
  return
}

// -----

func.func @f(%x: tensor<2x4x8xf32>, %y: tensor<3x8x4xf32>) {
  // expected-error @+1 {{'loom.matmul' op matmul batch dimensions: shapes [2] and [3] cannot be broadcast together (dimension 0: 2 vs 3)}}
  %0 = loom.matmul %x, %y : tensor<2x4x8xf32>, tensor<3x8x4xf32>
  return
}

// -----

func.func @f(%x: tensor<4x8xf32>, %y: tensor<8x4xbf16>) {
  // expected-error @+1 {{'loom.matmul' op matmul operands have different element types: f32[4, 8] and bf16[8, 4]}}
  %0 = loom.matmul %x, %y : tensor<4x8xf32>, tensor<8x4xbf16>
  return
}

// -----

// softmax and log_softmax.
func.func @f(%x: tensor<f32>) {
  // expected-error @+1 {{'loom.softmax' op softmax needs rank >= 1, got a scalar}}
  %0 = loom.softmax %x : tensor<f32>
  return
}

// -----

func.func @f(%x: tensor<4xi32>) {
  // expected-error @+1 {{'loom.log_softmax' op operand must have a floating-point element type, got i32[4]}}
  %0 = loom.log_softmax %x : tensor<4xi32>
  return
}

// -----

// layer_norm and rms_norm.
func.func @f(%x: tensor<4x8xf32>, %g: tensor<4xf32>, %b: tensor<8xf32>) {
  // expected-error @+1 {{'loom.layer_norm' op gain must have shape [8], got f32[4]}}
  %0 = loom.layer_norm %x, %g, %b : tensor<4x8xf32>, tensor<4xf32>, tensor<8xf32>
  return
}

// -----

func.func @f(%x: tensor<4x8xf32>, %g: tensor<8xf32>, %b: tensor<4xf32>) {
  // expected-error @+1 {{'loom.layer_norm' op bias must have shape [8], got f32[4]}}
  %0 = loom.layer_norm %x, %g, %b : tensor<4x8xf32>, tensor<8xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%x: tensor<4x8xf32>, %g: tensor<8xf16>) {
  // expected-error @+1 {{'loom.rms_norm' op gain must have the input's element type f32}}
  %0 = loom.rms_norm %x, %g : tensor<4x8xf32>, tensor<8xf16>
  return
}

// -----

func.func @f(%x: tensor<4x8xi32>, %g: tensor<8xi32>) {
  // expected-error @+1 {{'loom.rms_norm' op input must have a floating-point element type, got i32[4, 8]}}
  %0 = loom.rms_norm %x, %g : tensor<4x8xi32>, tensor<8xi32>
  return
}

// -----

func.func @f(%x: tensor<f32>, %g: tensor<1xf32>) {
  // expected-error @+1 {{'loom.rms_norm' op normalisation needs rank >= 1, got a scalar}}
  %0 = loom.rms_norm %x, %g : tensor<f32>, tensor<1xf32>
  return
}

// -----

func.func @f(%x: tensor<4x8xf32>, %g: tensor<8xf32>, %b: tensor<8xf32>) {
  // expected-error @+1 {{'loom.layer_norm' op eps must be positive, got 0.000000e+00}}
  %0 = loom.layer_norm %x, %g, %b {eps = 0.0} : tensor<4x8xf32>, tensor<8xf32>, tensor<8xf32>
  return
}

// -----

func.func @f(%x: tensor<4x8xf32>, %g: tensor<8xf32>) {
  // expected-error @+1 {{'loom.rms_norm' op eps must be positive, got -1.000000e-06}}
  %0 = loom.rms_norm %x, %g {eps = -1.0e-6} : tensor<4x8xf32>, tensor<8xf32>
  return
}

// -----

// embedding.
func.func @f(%x: tensor<4xf32>, %t: tensor<10x8xf32>) {
  // expected-error @+1 {{'loom.embedding' op embedding ids must be integers, got f32[4]}}
  %0 = loom.embedding %x, %t : tensor<4xf32>, tensor<10x8xf32>
  return
}

// -----

func.func @f(%x: tensor<4xi32>, %t: tensor<10xf32>) {
  // expected-error @+1 {{'loom.embedding' op embedding table must have rank 2, got f32[10]}}
  %0 = loom.embedding %x, %t : tensor<4xi32>, tensor<10xf32>
  return
}

// -----

func.func @f(%x: tensor<4xi32>, %t: tensor<10x8xi32>) {
  // expected-error @+1 {{'loom.embedding' op embedding table must have a floating-point element type, got i32[10, 8]}}
  %0 = loom.embedding %x, %t : tensor<4xi32>, tensor<10x8xi32>
  return
}

// -----

// reshape keeps the element count and type.
func.func @f(%x: tensor<4x6xf32>) {
  // expected-error @+1 {{'loom.reshape' op cannot reshape f32[4, 6] (24 elements) to [5, 5] (25 elements)}}
  %0 = loom.reshape %x : tensor<4x6xf32> -> tensor<5x5xf32>
  return
}

// -----

func.func @f(%x: tensor<4x6xf32>) {
  // expected-error @+1 {{'loom.reshape' op result type f16[24] does not match f32[24], the type its shape rule gives}}
  %0 = loom.reshape %x : tensor<4x6xf32> -> tensor<24xf16>
  return
}

// -----

// transpose takes a permutation of all dimensions.
func.func @f(%x: tensor<2x3x4xf32>) {
  // expected-error @+1 {{'loom.transpose' op [0, 1, 1] is not a permutation of 0..2}}
  %0 = loom.transpose %x [0, 1, 1] : tensor<2x3x4xf32>
  return
}

// -----

func.func @f(%x: tensor<2x3x4xf32>) {
  // expected-error @+1 {{'loom.transpose' op permutation [1, 0] does not match rank 3 of f32[2, 3, 4]}}
  %0 = loom.transpose %x [1, 0] : tensor<2x3x4xf32>
  return
}

// -----

// split_heads and merge_heads.
func.func @f(%x: tensor<2x3x10xf32>) {
  // expected-error @+1 {{'loom.split_heads' op split_heads: 4 heads do not divide the channel dimension 10}}
  %0 = loom.split_heads %x heads 4 : tensor<2x3x10xf32>
  return
}

// -----

func.func @f(%x: tensor<3x10xf32>) {
  // expected-error @+1 {{'loom.split_heads' op split_heads input must have rank 3, got f32[3, 10]}}
  %0 = loom.split_heads %x heads 2 : tensor<3x10xf32>
  return
}

// -----

func.func @f(%x: tensor<3x10xf32>) {
  // expected-error @+1 {{'loom.merge_heads' op merge_heads input must have rank 4, got f32[3, 10]}}
  %0 = loom.merge_heads %x : tensor<3x10xf32>
  return
}

// -----

// broadcast_to follows numpy rules and keeps the element type.
func.func @f(%x: tensor<3x2xf32>) {
  // expected-error @+1 {{'loom.broadcast_to' op shapes [3, 2] and [3, 4] cannot be broadcast together (dimension 1: 2 vs 4)}}
  %0 = loom.broadcast_to %x : tensor<3x2xf32> -> tensor<3x4xf32>
  return
}

// -----

func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.broadcast_to' op cannot broadcast f32[3, 4] to [4]}}
  %0 = loom.broadcast_to %x : tensor<3x4xf32> -> tensor<4xf32>
  return
}

// -----

func.func @f(%x: tensor<3x1xf32>) {
  // expected-error @+1 {{'loom.broadcast_to' op result type i32[3, 4] does not match f32[3, 4], the type its shape rule gives}}
  %0 = loom.broadcast_to %x : tensor<3x1xf32> -> tensor<3x4xi32>
  return
}

// -----

// Reductions.
func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.reduce_sum' op reduction dimension 2 is out of range for f32[3, 4]}}
  %0 = loom.reduce_sum %x dims [2] : tensor<3x4xf32>
  return
}

// -----

func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.reduce_max' op reduction dimension -1 is listed twice}}
  %0 = loom.reduce_max %x dims [1, -1] keepdim : tensor<3x4xf32>
  return
}

// -----

// concat.
func.func @f(%x: tensor<3x4xf32>, %y: tensor<2x5xf32>) {
  // expected-error @+1 {{'loom.concat' op concat operand 1 f32[2, 5] does not match f32[3, 4] outside dimension 0}}
  %0 = loom.concat %x, %y dim 0 : tensor<3x4xf32>, tensor<2x5xf32>
  return
}

// -----

func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.concat' op concat dimension -3 is out of range for f32[3, 4]}}
  %0 = loom.concat %x dim -3 : tensor<3x4xf32>
  return
}

// -----

func.func @f() {
  // expected-error @+2 {{'loom.concat' op failed to infer returned types}}
  // expected-error @+1 {{'loom.concat' op concat needs at least one operand}}
  %0 = "loom.concat"() <{dim = 0 : i64}> : () -> tensor<f32>
  return
}

// -----

// slice.
func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.slice' op slice [2, 5) is empty or outside dimension 1 of size 4}}
  %0 = loom.slice %x dim 1 from 2 to 5 : tensor<3x4xf32>
  return
}

// -----

func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.slice' op slice dimension 2 is out of range for f32[3, 4]}}
  %0 = loom.slice %x dim 2 from 0 to 1 : tensor<3x4xf32>
  return
}

// -----

// cast keeps the shape.
func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.cast' op result type i32[4, 3] does not match i32[3, 4], the type its shape rule gives}}
  %0 = loom.cast %x : tensor<3x4xf32> -> tensor<4x3xi32>
  return
}

// -----

// dropout.
func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.dropout' op dropout probability must be in [0, 1), got 1.000000}}
  %0 = loom.dropout %x p 1.0 key "drop" : tensor<3x4xf32>
  return
}

// -----

func.func @f(%x: tensor<3x4xi32>) {
  // expected-error @+1 {{'loom.dropout' op dropout input must have a floating-point element type, got i32[3, 4]}}
  %0 = loom.dropout %x p 0.5 key "drop" : tensor<3x4xi32>
  return
}

// -----

func.func @f(%x: tensor<3x4xf32>) {
  // expected-error @+1 {{'loom.dropout' op needs a non-empty key (the op's DSL path) to seed its mask}}
  %0 = loom.dropout %x p 0.5 key "" : tensor<3x4xf32>
  return
}

// -----

// attention: q, k, v are [B, H, T, d] float tensors of one element type.
func.func @f(%q: tensor<2x4x8xf32>) {
  // expected-error @+1 {{'loom.attention' op q must have rank 4, got f32[2, 4, 8]}}
  %0 = loom.attention %q, %q, %q : tensor<2x4x8xf32>, tensor<2x4x8xf32>, tensor<2x4x8xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xi32>) {
  // expected-error @+1 {{'loom.attention' op q must have a floating-point element type, got i32[2, 4, 8, 16]}}
  %0 = loom.attention %q, %q, %q : tensor<2x4x8x16xi32>, tensor<2x4x8x16xi32>, tensor<2x4x8x16xi32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %k: tensor<2x4x8x16xbf16>) {
  // expected-error @+1 {{'loom.attention' op q, k and v must have the same element type}}
  %0 = loom.attention %q, %k, %k : tensor<2x4x8x16xf32>, tensor<2x4x8x16xbf16>, tensor<2x4x8x16xbf16>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %k: tensor<2x2x8x16xf32>) {
  // expected-error @+1 {{'loom.attention' op q [2, 4, 8, 16], k [2, 2, 8, 16] and v [2, 2, 8, 16] must agree in batch and heads ([B, H, T, d])}}
  %0 = loom.attention %q, %k, %k : tensor<2x4x8x16xf32>, tensor<2x2x8x16xf32>, tensor<2x2x8x16xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %k: tensor<2x4x8x8xf32>) {
  // expected-error @+1 {{'loom.attention' op q and k head dimensions differ: 16 vs 8}}
  %0 = loom.attention %q, %k, %q : tensor<2x4x8x16xf32>, tensor<2x4x8x8xf32>, tensor<2x4x8x16xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %v: tensor<2x4x6x16xf32>) {
  // expected-error @+1 {{'loom.attention' op k and v sequence lengths differ: 8 vs 6}}
  %0 = loom.attention %q, %q, %v : tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<2x4x6x16xf32>
  return
}

// -----

// gated_attention: gate weight [H, 2 d], gate bias [H], equal q and k lengths,
// 0 <= gate_threshold < 1.
func.func @f(%q: tensor<2x4x8x16xf32>, %wg: tensor<4x16xf32>, %bg: tensor<4xf32>) {
  // expected-error @+1 {{'loom.gated_attention' op gate weight must be f32[4, 32] ([heads, 2 * head_dim]), got f32[4, 16]}}
  %0 = loom.gated_attention %q, %q, %q, %wg, %bg : tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<4x16xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %wg: tensor<4x32xf32>, %bg: tensor<2xf32>) {
  // expected-error @+1 {{'loom.gated_attention' op gate bias must be f32[4] ([heads]), got f32[2]}}
  %0 = loom.gated_attention %q, %q, %q, %wg, %bg : tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<4x32xf32>, tensor<2xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %k: tensor<2x4x6x16xf32>, %wg: tensor<4x32xf32>, %bg: tensor<4xf32>) {
  // expected-error @+1 {{'loom.gated_attention' op gated_attention gates on [q; k] per position, so q and k need the same sequence length (8 vs 6)}}
  %0 = loom.gated_attention %q, %k, %k, %wg, %bg : tensor<2x4x8x16xf32>, tensor<2x4x6x16xf32>, tensor<2x4x6x16xf32>, tensor<4x32xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %k: tensor<2x4x8x8xf32>, %wg: tensor<4x32xf32>, %bg: tensor<4xf32>) {
  // expected-error @+1 {{'loom.gated_attention' op q and k head dimensions differ: 16 vs 8}}
  %0 = loom.gated_attention %q, %k, %q, %wg, %bg : tensor<2x4x8x16xf32>, tensor<2x4x8x8xf32>, tensor<2x4x8x16xf32>, tensor<4x32xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %wg: tensor<4x32xf32>, %bg: tensor<4xf32>) {
  // expected-error @+1 {{'loom.gated_attention' op gate_threshold must be in [0, 1), got 1.000000e+00}}
  %0 = loom.gated_attention %q, %q, %q, %wg, %bg {gate_threshold = 1.0} : tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<4x32xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%q: tensor<2x4x8x16xf32>, %wg: tensor<4x32xf32>, %bg: tensor<4xf32>) {
  // expected-error @+1 {{'loom.gated_attention' op gate_threshold must be in [0, 1), got -5.000000e-01}}
  %0 = loom.gated_attention %q, %q, %q, %wg, %bg {gate_threshold = -0.5} : tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<2x4x8x16xf32>, tensor<4x32xf32>, tensor<4xf32>
  return
}

// -----

// cross_entropy: float logits [..., C], integer targets [...].
func.func @f(%l: tensor<4x10xf32>, %t: tensor<5xi64>) {
  // expected-error @+1 {{'loom.cross_entropy' op cross_entropy: targets [5] must match the logits [4, 10] without the class dimension}}
  %0 = loom.cross_entropy %l, %t : tensor<4x10xf32>, tensor<5xi64>
  return
}

// -----

func.func @f(%l: tensor<4x10xf32>, %t: tensor<4xf32>) {
  // expected-error @+1 {{'loom.cross_entropy' op cross_entropy targets must be integer class ids, got f32[4]}}
  %0 = loom.cross_entropy %l, %t : tensor<4x10xf32>, tensor<4xf32>
  return
}

// -----

func.func @f(%l: tensor<4x10xi32>, %t: tensor<4xi32>) {
  // expected-error @+1 {{'loom.cross_entropy' op logits must have a floating-point element type, got i32[4, 10]}}
  %0 = loom.cross_entropy %l, %t : tensor<4x10xi32>, tensor<4xi32>
  return
}

// -----

// mse: two float tensors of one type.
func.func @f(%p: tensor<4x10xf32>, %t: tensor<4x9xf32>) {
  // expected-error @+1 {{'loom.mse' op mse operands must have the same type, got f32[4, 10] and f32[4, 9]}}
  %0 = loom.mse %p, %t : tensor<4x10xf32>, tensor<4x9xf32>
  return
}

// -----

func.func @f(%p: tensor<4xi32>) {
  // expected-error @+1 {{'loom.mse' op prediction must have a floating-point element type, got i32[4]}}
  %0 = loom.mse %p, %p : tensor<4xi32>, tensor<4xi32>
  return
}
