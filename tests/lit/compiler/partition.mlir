// RUN: loom-opt %s --loom-partition | FileCheck %s

// CHECK: dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 1]
// CHECK-LABEL: dist.program @train_step "train" on @mesh
// CHECK:         train.output "loss"
// CHECK-NOT:     train.step
train.step @train_step "train" attributes {config = {mesh = array<i64: 1, 1, 1>}} {
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}
