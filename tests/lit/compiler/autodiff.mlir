// RUN: loom-opt %s --loom-autodiff | FileCheck %s

// A linear layer with a bias, relu and cross-entropy: the backward pass is
// the adjoint of each op in reverse, ending in one train.gradient per param.
loom.model @Tiny attributes {config = {lr = 1.0e-3 : f64}} {
  %x = loom.input "x" : tensor<4x3xf32>
  %y = loom.input "y" : tensor<4xi32>
  %w = loom.param "w" init glorot : tensor<3x5xf32>
  %b = loom.param "b" init zeros : tensor<5xf32>
  %h = loom.matmul %x, %w : tensor<4x3xf32>, tensor<3x5xf32>
  %z = loom.add %h, %b : tensor<4x5xf32>, tensor<5xf32>
  %r = loom.relu %z : tensor<4x5xf32>
  %l = loom.cross_entropy %r, %y : tensor<4x5xf32>, tensor<4xi32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: train.step @train_step "train"
// CHECK-DAG:     %[[X:.*]] = train.input "x" : tensor<4x3xf32>
// CHECK-DAG:     %[[Y:.*]] = train.input "y" : tensor<4xi32>
// CHECK-DAG:     %[[W:.*]] = train.param "w" {decay = true, init = "glorot"} : tensor<3x5xf32>
// CHECK-DAG:     %[[B:.*]] = train.param "b" {decay = false, init = "zeros"} : tensor<5xf32>
// CHECK:         %[[H:.*]] = loom.matmul %[[X]], %[[W]]
// CHECK:         %[[Z:.*]] = loom.add %[[H]], %[[B]]
// CHECK:         %[[R:.*]] = loom.relu %[[Z]]
// CHECK:         %[[LOSS:.*]], %[[LSE:.*]], %{{.*}} = train.cross_entropy %[[R]], %[[Y]]
// CHECK:         train.output "loss", %[[LOSS]]
// CHECK:         %[[ONE:.*]] = loom.constant dense<1.000000e+00> : tensor<f32>
// CHECK:         %[[DR:.*]] = train.cross_entropy_grad %[[R]], %[[Y]], %[[LSE]], %[[ONE]]
// CHECK:         %[[DZ:.*]] = train.relu_grad %[[Z]], %[[DR]]
// CHECK:         %[[DB:.*]] = loom.reduce_sum %[[DZ]] dims [0]
// CHECK:         %[[DW:.*]] = train.gemm %[[X]], %[[DZ]] {transpose_a = true, transpose_b = false} : (tensor<4x3xf32>, tensor<4x5xf32>) -> tensor<3x5xf32>
// CHECK:         train.gradient "w", %[[DW]] : tensor<3x5xf32>
// CHECK:         train.gradient "b", %[[DB]] : tensor<5xf32>

// The evaluation step is the forward pass with accuracy statistics.
// CHECK-LABEL: train.step @eval_step "eval"
// CHECK:         %[[ELOSS:.*]], %{{.*}}, %[[STATS:.*]] = train.cross_entropy
// CHECK:         train.output "eval_loss", %[[ELOSS]]
// CHECK:         loom.slice %[[STATS]] dim 0 from 0 to 1
// CHECK:         train.output "eval_count"
// CHECK:         loom.slice %[[STATS]] dim 0 from 1 to 2
// CHECK:         train.output "eval_correct"
// CHECK-NOT:     train.gradient
