// RUN: loom-opt %s --split-input-file --loom-partition --loom-split-pipeline -verify-diagnostics

// A pipeline needs layers to cut at.
// expected-error @+1 {{'dist.program' op pp = 2 needs at least 2 layers to cut at, the model has 0}}
train.step @train_step "train" attributes {config = {mesh = array<i64: 1, 1, 2>}} {
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @train_step "train" attributes {config = {mesh = array<i64: 1, 4, 1>}} {
  // expected-error @+1 {{'train.param' op dimension 0 (size 6) is not divisible by tp = 4; choose a mesh that divides it or drop the shard annotation}}
  %w = train.param "w" {decay = true, init = "zeros", shard = ["tp", "_"]} : tensor<6x8xf32>
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @train_step "train" attributes {config = {mesh = array<i64: 2, 1, 1>}} {
  // expected-error @+1 {{'train.param' op shard(...) names 'pp': parameters are split over tp or dp (pp splits the layers)}}
  %w = train.param "w" {decay = true, init = "zeros", shard = ["pp", "_"]} : tensor<6x8xf32>
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @train_step "train" attributes {config = {mesh = array<i64: 4, 1, 1>}} {
  // expected-error @+1 {{'train.input' op the batch (dimension 0 of input 'x', size 6) is not divisible by dp = 4}}
  %x = train.input "x" : tensor<6x8xf32>
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}
