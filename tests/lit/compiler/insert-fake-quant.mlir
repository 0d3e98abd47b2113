// RUN: loom-opt %s --split-input-file --loom-insert-fake-quant --verify-diagnostics | FileCheck %s

// Quantization-aware training: each matmul of an activation by a 2-D
// parameter reads the weight fake-quantized per channel (scales from the
// weight) and the activation fake-quantized from its observer; x feeds two
// weights, so two observers (one range per weight); a product of two
// activations and an integer op are left alone. No start: no blending.
loom.model @Q attributes {config = {quantize = "qat", quant_start = 0 : i64, quant_freeze = 7 : i64, quant_weights = "per_channel_symmetric", quant_activations = "per_tensor_affine"}} {
  %x = loom.input "x" : tensor<4x8xf32>
  %w1 = loom.param "w1" init glorot : tensor<8x8xf32>
  %w2 = loom.param "w2" init glorot : tensor<8x3xf32>
  %h1 = loom.matmul %x, %w1 : tensor<4x8xf32>, tensor<8x8xf32>
  %h2 = loom.matmul %x, %w2 : tensor<4x8xf32>, tensor<8x3xf32>
  %a = loom.transpose %h1 [1, 0] : tensor<4x8xf32>
  %p = loom.matmul %h1, %a : tensor<4x8xf32>, tensor<8x4xf32>
  %l = loom.reduce_mean %p dims [0, 1] : tensor<4x4xf32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: loom.model @Q
// CHECK-NOT:     loom.quant_enabled
// CHECK:         %[[X:.*]] = loom.input "x"
// CHECK:         %[[W1:.*]] = loom.param "w1"
// CHECK-NEXT:    %[[S1:.*]] = loom.weight_scale %[[W1]] : tensor<8x8xf32> -> tensor<8xf32>
// CHECK-NEXT:    %[[Z1:.*]] = loom.constant dense<0.000000e+00> : tensor<8xf32>
// CHECK-NEXT:    %[[W1Q:.*]] = loom.fake_quant %[[W1]], %[[S1]], %[[Z1]] {axis = 1 : i64, qmax = 127 : i64, qmin = -127 : i64}
// CHECK:         %[[W2:.*]] = loom.param "w2"
// CHECK-NEXT:    %[[S2:.*]] = loom.weight_scale %[[W2]] : tensor<8x3xf32> -> tensor<3xf32>
// CHECK:         %[[W2Q:.*]] = loom.fake_quant %[[W2]]
// CHECK:         %[[SC:.*]], %[[ZP:.*]] = loom.observe %[[X]] for "w1" {freeze = 7 : i64} : tensor<4x8xf32> -> tensor<f32>, tensor<f32>
// CHECK-NEXT:    %[[XQ:.*]] = loom.fake_quant %[[X]], %[[SC]], %[[ZP]] {qmax = 255 : i64, qmin = 0 : i64}
// CHECK-NEXT:    %[[H1:.*]] = loom.matmul %[[XQ]], %[[W1Q]]
// CHECK:         loom.observe %[[X]] for "w2"
// CHECK:         loom.matmul %{{.*}}, %[[W2Q]]
// CHECK:         loom.matmul %[[H1]], %{{.*}} : tensor<4x8xf32>, tensor<8x4xf32>

// -----

// start = 3: both operands blend with the block's switch, e·fq + (1 − e)·v;
// per-tensor weights and symmetric activations; a layer gets its own switch.
loom.model @S attributes {config = {quantize = "qat", quant_start = 3 : i64, quant_freeze = -1 : i64, quant_weights = "per_tensor_symmetric", quant_activations = "per_tensor_symmetric"}} {
  %x = loom.input "x" : tensor<4x8xf32>
  %w = loom.param "w" init glorot : tensor<8x8xf32>
  %h = loom.matmul %x, %w : tensor<4x8xf32>, tensor<8x8xf32>
  %o = loom.layer "l" @L(%h) : (tensor<4x8xf32>) -> tensor<4x8xf32> {
  ^bb0(%arg0: tensor<4x8xf32>):
    %v = loom.param "l.v" init glorot : tensor<8x8xf32>
    %y = loom.matmul %arg0, %v : tensor<4x8xf32>, tensor<8x8xf32>
    loom.yield %y : tensor<4x8xf32>
  }
  %l = loom.reduce_mean %o dims [0, 1] : tensor<4x8xf32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: loom.model @S
// CHECK-NEXT:    %[[E:.*]] = loom.quant_enabled from 3 : tensor<f32>
// CHECK-NEXT:    %[[ONE:.*]] = loom.constant dense<1.000000e+00> : tensor<f32>
// CHECK-NEXT:    %[[OFF:.*]] = loom.sub %[[ONE]], %[[E]]
// CHECK:         %[[W:.*]] = loom.param "w"
// CHECK-NEXT:    %[[S:.*]] = loom.weight_scale %[[W]] {per_tensor = true} : tensor<8x8xf32> -> tensor<f32>
// CHECK:         %[[FQ:.*]] = loom.fake_quant %[[W]], %[[S]], %{{.*}} {qmax = 127 : i64, qmin = -127 : i64}
// CHECK-NEXT:    %[[ON:.*]] = loom.mul %[[FQ]], %[[E]]
// CHECK-NEXT:    %[[KEEP:.*]] = loom.mul %[[W]], %[[OFF]]
// CHECK-NEXT:    loom.add %[[ON]], %[[KEEP]]
// CHECK:         loom.observe %{{.*}} for "w" {symmetric = true}
// CHECK-NEXT:    loom.fake_quant %{{.*}} {qmax = 127 : i64, qmin = -127 : i64}
// CHECK:         loom.layer "l"
// CHECK-NEXT:    ^bb0
// CHECK-NEXT:    loom.quant_enabled from 3
// CHECK:         loom.observe %{{.*}} for "l.v"

// -----

// One range per weight: a weight multiplying two activations is refused.
loom.model @Two attributes {config = {quantize = "qat"}} {
  %x = loom.input "x" : tensor<4x8xf32>
  %w = loom.param "w" init glorot : tensor<8x8xf32>
  %h = loom.matmul %x, %w : tensor<4x8xf32>, tensor<8x8xf32>
  // expected-error @+1 {{quantization-aware training keeps one activation range per weight, and 'w' multiplies two different activations}}
  %g = loom.matmul %h, %w : tensor<4x8xf32>, tensor<8x8xf32>
  %l = loom.reduce_mean %g dims [0, 1] : tensor<4x8xf32>
  loom.loss %l : tensor<f32>
}

// -----

// expected-error @+1 {{quantize qat: no matmul or conv2d of an activation by an f32 parameter to quantize}}
loom.model @None attributes {config = {quantize = "qat"}} {
  %x = loom.input "x" : tensor<4x8xf32>
  %l = loom.reduce_mean %x dims [0, 1] : tensor<4x8xf32>
  loom.loss %l : tensor<f32>
}

// -----

// A conv2d feeding a batch norm alone is folded (torch's ConvBn2d): the
// weight scaled by gamma / sqrt(running_var + eps) is fake-quantized per
// output channel (axis 0), and the conv's output is divided by the factor
// before the batch norm. A conv without one quantizes its weight directly.
loom.model @Conv attributes {config = {quantize = "qat", quant_start = 0 : i64, quant_freeze = -1 : i64, quant_weights = "per_channel_symmetric", quant_activations = "per_tensor_affine"}} {
  %x = loom.input "x" : tensor<2x1x6x6xf32>
  %k = loom.param "k" init glorot : tensor<4x1x3x3xf32>
  %g = loom.param "g" init ones : tensor<4xf32>
  %b = loom.param "b" init zeros : tensor<4xf32>
  %k2 = loom.param "k2" init glorot : tensor<5x4x3x3xf32>
  %c = loom.conv2d %x, %k stride 1 padding 1 : tensor<2x1x6x6xf32>, tensor<4x1x3x3xf32>
  %n = loom.batch_norm %c, %g, %b {eps = 1.0e-3 : f64} : tensor<2x4x6x6xf32>, tensor<4xf32>, tensor<4xf32>
  %c2 = loom.conv2d %n, %k2 stride 1 padding 0 : tensor<2x4x6x6xf32>, tensor<5x4x3x3xf32>
  %l = loom.reduce_mean %c2 dims [0, 1, 2, 3] : tensor<2x5x4x4xf32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: loom.model @Conv
// CHECK:         %[[X:.*]] = loom.input "x"
// CHECK:         %[[K:.*]] = loom.param "k"
// CHECK:         %[[G:.*]] = loom.param "g"
// CHECK:         %[[K2:.*]] = loom.param "k2"
// CHECK-NEXT:    %[[S2:.*]] = loom.weight_scale %[[K2]] {axis = 0 : i64} : tensor<5x4x3x3xf32> -> tensor<5xf32>
// CHECK:         %[[K2Q:.*]] = loom.fake_quant %[[K2]], %[[S2]], %{{.*}} {qmax = 127 : i64, qmin = -127 : i64}
// CHECK:         loom.observe %[[X]] for "k"
// CHECK:         %[[XQ:.*]] = loom.fake_quant %[[X]]
// CHECK-NEXT:    %[[R:.*]] = loom.running_rstd %[[G]] {eps = 1.000000e-03 : f64} : tensor<4xf32> -> tensor<4xf32>
// CHECK-NEXT:    %[[F:.*]] = loom.mul %[[G]], %[[R]]
// CHECK-NEXT:    %[[FW:.*]] = loom.reshape %[[F]] : tensor<4xf32> -> tensor<4x1x1x1xf32>
// CHECK-NEXT:    %[[KS:.*]] = loom.mul %[[K]], %[[FW]]
// CHECK-NEXT:    %[[SS:.*]] = loom.weight_scale %[[KS]] {axis = 0 : i64}
// CHECK-NEXT:    %[[Z:.*]] = loom.constant
// CHECK-NEXT:    %[[KQ:.*]] = loom.fake_quant %[[KS]], %[[SS]], %[[Z]]
// CHECK-NEXT:    %[[C:.*]] = loom.conv2d %[[XQ]], %[[KQ]] stride 1 padding 1
// CHECK-NEXT:    %[[FO:.*]] = loom.reshape %[[F]] : tensor<4xf32> -> tensor<1x4x1x1xf32>
// CHECK-NEXT:    %[[CO:.*]] = loom.div %[[C]], %[[FO]]
// CHECK-NEXT:    %[[N:.*]] = loom.batch_norm %[[CO]], %[[G]]
// CHECK:         loom.observe %[[N]] for "k2"
// CHECK:         loom.conv2d %{{.*}}, %[[K2Q]]
