// RUN: loom-opt %s --loom-mixed-precision | FileCheck %s

// bf16: each matmul operand is cast once (x feeds two matmuls, one cast),
// the matmul runs in bf16 and its result is cast back to f32; the norm and
// the loss stay f32; parameters stay f32 (master weights).
loom.model @Mp attributes {config = {precision = "bf16"}} {
  %x = loom.input "x" : tensor<4x8xf32>
  %w1 = loom.param "w1" init glorot : tensor<8x8xf32>
  %w2 = loom.param "w2" init glorot : tensor<8x8xf32>
  %g = loom.param "g" init ones : tensor<8xf32>
  %b = loom.param "b" init zeros : tensor<8xf32>
  %h1 = loom.matmul %x, %w1 : tensor<4x8xf32>, tensor<8x8xf32>
  %h2 = loom.matmul %x, %w2 : tensor<4x8xf32>, tensor<8x8xf32>
  %s = loom.add %h1, %h2 : tensor<4x8xf32>, tensor<4x8xf32>
  %n = loom.layer_norm %s, %g, %b : tensor<4x8xf32>, tensor<8xf32>, tensor<8xf32>
  %l = loom.reduce_mean %n dims [0, 1] : tensor<4x8xf32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: loom.model @Mp
// CHECK:         %[[X:.*]] = loom.input "x" : tensor<4x8xf32>
// CHECK:         %[[XL:.*]] = loom.cast %[[X]] : tensor<4x8xf32> -> tensor<4x8xbf16>
// CHECK:         %[[W1:.*]] = loom.param "w1" init glorot : tensor<8x8xf32>
// CHECK:         %[[W1L:.*]] = loom.cast %[[W1]] : tensor<8x8xf32> -> tensor<8x8xbf16>
// CHECK:         %[[W2:.*]] = loom.param "w2" init glorot : tensor<8x8xf32>
// CHECK:         %[[W2L:.*]] = loom.cast %[[W2]] : tensor<8x8xf32> -> tensor<8x8xbf16>
// CHECK:         %[[P1:.*]] = loom.matmul %[[XL]], %[[W1L]] : tensor<4x8xbf16>, tensor<8x8xbf16>
// CHECK:         %[[H1:.*]] = loom.cast %[[P1]] : tensor<4x8xbf16> -> tensor<4x8xf32>
// CHECK:         %[[P2:.*]] = loom.matmul %[[XL]], %[[W2L]] : tensor<4x8xbf16>, tensor<8x8xbf16>
// CHECK:         %[[H2:.*]] = loom.cast %[[P2]] : tensor<4x8xbf16> -> tensor<4x8xf32>
// CHECK:         loom.add %[[H1]], %[[H2]] : tensor<4x8xf32>, tensor<4x8xf32>
// CHECK:         loom.layer_norm %{{.*}} : tensor<4x8xf32>, tensor<8xf32>, tensor<8xf32>

// Exactly three casts to bf16: x, w1, w2.
// RUN: loom-opt %s --loom-mixed-precision | grep -c "loom.cast .*-> tensor<.*xbf16>$" | FileCheck %s --check-prefix=COUNT
// COUNT: 3
