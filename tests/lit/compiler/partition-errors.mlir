// RUN: loom-opt %s --loom-partition -verify-diagnostics

// expected-error @+1 {{'train.step' op mesh dp=2, tp=1, pp=1: this build partitions only the 1×1×1 mesh}}
train.step @train_step "train" attributes {config = {mesh = array<i64: 2, 1, 1>}} {
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}
