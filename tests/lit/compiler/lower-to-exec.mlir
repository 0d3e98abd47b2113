// RUN: loom-opt %s --loom-fuse-elementwise --loom-lower-to-exec --cse | FileCheck %s

// Persistent buffers (in order of first appearance, then output slots) come
// first; the
// transients share the rest by liveness; the optimizer updates in place.
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 1]
dist.program @train_step "train" on @mesh attributes {loom.model = "Tiny"} {
  %x = train.input "x" : tensor<4x16xf32>
  %w = train.param "w" {decay = true, init = "glorot"} : tensor<16x16xf32>
  %h = loom.matmul %x, %w : tensor<4x16xf32>, tensor<16x16xf32>
  %r = loom.relu %h : tensor<4x16xf32>
  %l = loom.reduce_sum %r dims [0, 1] : tensor<4x16xf32>
  train.output "loss", %l : tensor<f32>
  %g = train.gemm %x, %r {transpose_a = true, transpose_b = false} : (tensor<4x16xf32>, tensor<4x16xf32>) -> tensor<16x16xf32>
  %lr = train.learning_rate {decay = "none", lr = 0.1 : f64, min = 0.0 : f64, total = 0 : i64, warmup = 0 : i64} : tensor<f32>
  %one = loom.constant dense<1.0> : tensor<f32>
  %t = train.state "optimizer.step" : tensor<i64>
  %t1 = train.increment %t : (tensor<i64>) -> tensor<i64>
  train.update "optimizer.step", %t1 : tensor<i64>
  %buf = train.state "w.momentum_buffer" : tensor<16x16xf32>
  %p, %b2 = train.sgd %w, %g, %buf, %t1, %lr, %one {momentum = 0.9 : f64, nesterov = false, weight_decay = 0.0 : f64} : (tensor<16x16xf32>, tensor<16x16xf32>, tensor<16x16xf32>, tensor<i64>, tensor<f32>, tensor<f32>) -> (tensor<16x16xf32>, tensor<16x16xf32>)
  train.update "w", %p : tensor<16x16xf32>
  train.update "w.momentum_buffer", %b2 : tensor<16x16xf32>
}

// CHECK: module attributes {loom.manifest = {arena_bytes = [[ARENA:[0-9]+]] : i64
// CHECK-SAME: inputs = [{dtype = "f32", name = "x", offset = 0 : i64, shape = [4, 16]}]
// CHECK-SAME: outputs = {loss = [[LOSS:[0-9]+]] : i64}
// CHECK-SAME: params = [{dtype = "f32", init = "glorot", name = "w", offset = 256 : i64, shape = [16, 16]}]
// CHECK-SAME: state = [{dtype = "i64", name = "optimizer.step", offset = 1280 : i64, shape = []}, {dtype = "f32", name = "w.momentum_buffer", offset = 1344 : i64, shape = [16, 16]}]
// CHECK:       exec.program @loom_train_step "train" arena [[ARENA]]
// CHECK-DAG:     %[[W:.*]] = exec.view 256 : memref<16x16xf32>
// CHECK-DAG:     %[[BUF:.*]] = exec.view 1344 : memref<16x16xf32>
// CHECK-DAG:     %[[X:.*]] = exec.view 0 : memref<4x16xf32>
// CHECK:         exec.call @loom_gemm({{.*}}, %[[X]], {{.*}}, %[[W]],
// CHECK:         linalg.generic
// CHECK:         arith.maximumf
// CHECK:         memref.store %{{.*}}, %{{.*}}[] : memref<f32>
// CHECK:         exec.call @loom_step() : () -> i64
// CHECK:         exec.call @loom_sgd(%{{.*}}, %[[W]], %{{.*}}, %[[BUF]],
// CHECK-NOT:     memref.copy
