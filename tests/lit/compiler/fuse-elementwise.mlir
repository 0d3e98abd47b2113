// RUN: loom-opt %s --loom-fuse-elementwise | FileCheck %s

// mean(gelu(x @ w + b) * 2): the bias add, the GELU, the scaling and the
// mean's reduction become one loop nest over the GEMM's output, with the
// scalars folded into its body.
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 1]
dist.program @train_step "train" on @mesh {
  %x = train.input "x" : tensor<4x3xf32>
  %w = train.param "w" {decay = true, init = "glorot"} : tensor<3x5xf32>
  %b = train.param "b" {decay = false, init = "zeros"} : tensor<5xf32>
  %h = loom.matmul %x, %w : tensor<4x3xf32>, tensor<3x5xf32>
  %z = loom.add %h, %b : tensor<4x5xf32>, tensor<5xf32>
  %g = loom.gelu %z : tensor<4x5xf32>
  %two = loom.constant dense<2.0> : tensor<f32>
  %s = loom.mul %g, %two : tensor<4x5xf32>, tensor<f32>
  %l = loom.reduce_mean %s dims [0, 1] : tensor<4x5xf32>
  train.output "loss", %l : tensor<f32>
}

// CHECK-DAG:   #[[$ID:.*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG:   #[[$ROW:.*]] = affine_map<(d0, d1) -> (d1)>
// CHECK-DAG:   #[[$ALL:.*]] = affine_map<(d0, d1) -> ()>
// CHECK-LABEL: dist.program @train_step
// CHECK-DAG:     %[[HALF:.*]] = arith.constant 5.000000e-01 : f32
// CHECK-DAG:     %[[TWO:.*]] = arith.constant 2.000000e+00 : f32
// CHECK:         %[[H:.*]] = loom.matmul
// CHECK:         %[[INIT:.*]] = linalg.fill
// CHECK:         %[[SUM:.*]] = linalg.generic {indexing_maps = [#[[$ID]], #[[$ROW]], #[[$ALL]]], iterator_types = ["reduction", "reduction"]} ins(%[[H]], %{{.*}} : tensor<4x5xf32>, tensor<5xf32>) outs(%[[INIT]] : tensor<f32>)
// CHECK:           arith.addf
// CHECK:           math.tanh
// CHECK:           arith.mulf %{{.*}}, %[[TWO]]
// CHECK:           linalg.yield
// CHECK:         linalg.generic
// CHECK:           arith.mulf
// CHECK:         train.output "loss"
// CHECK-NOT:     loom.add
// CHECK-NOT:     loom.gelu
