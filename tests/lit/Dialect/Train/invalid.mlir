// RUN: loom-opt %s -split-input-file -verify-diagnostics

// expected-error @+1 {{'train.step' op kind must be "train" or "eval", got "infer"}}
train.step @s "infer" {
}

// -----

// expected-error @+1 {{'train.step' op a train step must output 'loss'}}
train.step @s "train" {
}

// -----

// expected-error @+1 {{'train.step' op a eval step must output 'eval_loss'}}
train.step @s "eval" {
  %l = loom.constant dense<1.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @s "train" {
  %w = train.param "w" {decay = true, init = "glorot"} : tensor<2x2xf32>
  // expected-error @+1 {{'train.param' op reads 'w' twice}}
  %v = train.param "w" {decay = true, init = "glorot"} : tensor<2x2xf32>
  %l = loom.constant dense<1.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @s "train" {
  %l = loom.constant dense<1.0> : tensor<f32>
  // expected-error @+1 {{'train.update' op updates 'w', which the step never reads}}
  train.update "w", %l : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @s "train" {
  %w = train.state "m" : tensor<f32>
  train.update "m", %w : tensor<f32>
  // expected-error @+1 {{'train.update' op updates 'm' twice}}
  train.update "m", %w : tensor<f32>
  %l = loom.constant dense<1.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}

// -----

train.step @s "train" {
  %l = loom.constant dense<1.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
  // expected-error @+1 {{'train.output' op publishes 'loss' twice}}
  train.output "loss", %l : tensor<f32>
}

// -----

func.func @gemm(%a: tensor<4x3xf32>, %b: tensor<4x5xf32>) -> tensor<3x5xf32> {
  // expected-error @+1 {{'train.gemm' op matmul contraction dimensions differ}}
  %c = train.gemm %a, %b {transpose_a = false, transpose_b = false} : (tensor<4x3xf32>, tensor<4x5xf32>) -> tensor<3x5xf32>
  return %c : tensor<3x5xf32>
}

// -----

func.func @gemm(%a: tensor<4x3xf32>, %b: tensor<4x5xf32>) -> tensor<3x4xf32> {
  // expected-error @+1 {{'train.gemm' op result must be f32[3, 5], got f32[3, 4]}}
  %c = train.gemm %a, %b {transpose_a = true, transpose_b = false} : (tensor<4x3xf32>, tensor<4x5xf32>) -> tensor<3x4xf32>
  return %c : tensor<3x4xf32>
}
