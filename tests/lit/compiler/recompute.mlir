// RUN: loom-opt %s --loom-recompute | FileCheck %s

// Two layers, recompute every = 1: each layer's forward op is cloned right
// before the backward op that reads its output, and the backward reads the
// clone; the forward originals keep their forward uses only.
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 1]
dist.program @train_step "train" on @mesh attributes {config = {recompute = "every", recompute_every = 1 : i64}} {
  %x = train.input "x" : tensor<4x8xf32>
  %a = loom.tanh %x {loom.layer = "layers.0"} : tensor<4x8xf32>
  %b = loom.tanh %a {loom.layer = "layers.1"} : tensor<4x8xf32>
  %l = loom.reduce_sum %b dims [0, 1] : tensor<4x8xf32>
  train.output "loss", %l : tensor<f32>
  %g = loom.constant dense<1.0> : tensor<4x8xf32>
  %gb = loom.mul %g, %b {loom.layer = "layers.1"} : tensor<4x8xf32>, tensor<4x8xf32>
  %ga = loom.mul %gb, %a {loom.layer = "layers.0"} : tensor<4x8xf32>, tensor<4x8xf32>
  train.output "grad_norm", %l : tensor<f32>
}

// CHECK-LABEL: dist.program @train_step
// CHECK-SAME:    loom.recomputed_layers = ["layers.0", "layers.1"]
// CHECK:         %[[A:.*]] = loom.tanh %[[X:.*]] {loom.layer = "layers.0"}
// CHECK:         %[[B:.*]] = loom.tanh %[[A]] {loom.layer = "layers.1"}
// CHECK:         train.output "loss"
// CHECK:         %[[B2:.*]] = loom.tanh %[[A]] {loom.layer = "layers.1", loom.recomputed}
// CHECK:         %[[GB:.*]] = loom.mul %{{.*}}, %[[B2]]
// CHECK:         %[[A2:.*]] = loom.tanh %[[X]] {loom.layer = "layers.0", loom.recomputed}
// CHECK:         loom.mul %[[GB]], %[[A2]]
