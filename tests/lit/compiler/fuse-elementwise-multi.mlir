// RUN: loom-opt %s --loom-fuse-elementwise | FileCheck %s

// A fused loop whose result has several users (here GELU's output: a column
// sum, as for a bias gradient, and a cast to bf16 for a GEMM) is merged with
// its first elementwise user: one loop with two results, the f32 value for
// the sum and the bf16 copy, so the value is computed once and not read
// back for the cast. The sum stays a loop of its own, after it.
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 1]
dist.program @train_step "train" on @mesh {
  %x = train.input "x" : tensor<4x3xf32>
  %w = train.param "w" {decay = true, init = "glorot"} : tensor<3x5xf32>
  %v = train.param "v" {decay = true, init = "glorot"} : tensor<5x2xbf16>
  %h = loom.matmul %x, %w : tensor<4x3xf32>, tensor<3x5xf32>
  %g = loom.gelu %h : tensor<4x5xf32>
  %s = loom.reduce_sum %g dims [0] : tensor<4x5xf32>
  %c = loom.cast %g : tensor<4x5xf32> -> tensor<4x5xbf16>
  %y = loom.matmul %c, %v : tensor<4x5xbf16>, tensor<5x2xbf16>
  %t = loom.reduce_sum %s dims [0] : tensor<5xf32>
  %yf = loom.cast %y : tensor<4x2xbf16> -> tensor<4x2xf32>
  %m = loom.reduce_mean %yf dims [0, 1] : tensor<4x2xf32>
  %l = loom.add %t, %m : tensor<f32>, tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// CHECK-LABEL: dist.program @train_step
// CHECK:         %[[H:.*]] = loom.matmul
// CHECK:         %[[G:.*]]:2 = linalg.generic
// CHECK-SAME:      ins(%[[H]] : tensor<4x5xf32>)
// CHECK-SAME:      outs(%{{.*}}, %{{.*}} : tensor<4x5xf32>, tensor<4x5xbf16>)
// CHECK:           math.tanh
// CHECK:           arith.truncf
// CHECK:           linalg.yield %{{.*}}, %{{.*}} : f32, bf16
// CHECK:         %[[S:.*]] = linalg.generic
// CHECK-SAME:      iterator_types = ["reduction", "parallel"]
// CHECK-SAME:      ins(%[[G]]#0 : tensor<4x5xf32>)
// CHECK-NOT:       math.tanh
// CHECK:         loom.matmul %[[G]]#1
// CHECK-NOT:     loom.gelu
// CHECK-NOT:     loom.cast
