// RUN: loom-opt %s --loom-build-train-step | FileCheck %s

// AdamW with clipping and a cosine schedule: the gradient norm, the clip
// coefficient and the rate are computed once; each parameter gets one
// in-place update of itself and its two moments.
train.step @train_step "train" attributes {config = {optimizer = "adamw", lr = 1.0e-3 : f64, weight_decay = 0.1 : f64, clip = "global_norm", clip_max = 1.0 : f64, warmup = 10 : i64, decay = "cosine", decay_total = 100 : i64, decay_min = 0.1 : f64}} {
  %w = train.param "w" {decay = true, init = "glorot"} : tensor<3x5xf32>
  %b = train.param "b" {decay = false, init = "zeros"} : tensor<5xf32>
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
  %gw = loom.constant dense<0.5> : tensor<3x5xf32>
  %gb = loom.constant dense<0.25> : tensor<5xf32>
  train.gradient "w", %gw : tensor<3x5xf32>
  train.gradient "b", %gb : tensor<5xf32>
}

// CHECK-LABEL: train.step @train_step
// CHECK:         %[[W:.*]] = train.param "w"
// CHECK:         %[[GW:.*]] = loom.constant dense<5.000000e-01>
// CHECK:         %[[GB:.*]] = loom.constant dense<2.500000e-01>
// CHECK-NOT:     train.gradient
// CHECK:         %[[NORM:.*]] = train.global_norm %[[GW]], %[[GB]]
// CHECK:         train.output "grad_norm", %[[NORM]]
// CHECK:         %[[COEF:.*]] = train.clip_coef %[[NORM]] {max = 1.000000e+00 : f64}
// CHECK:         %[[LR:.*]] = train.learning_rate {decay = "cosine", lr = 1.000000e-03 : f64, min = 1.000000e-01 : f64, total = 100 : i64, warmup = 10 : i64}
// CHECK:         train.output "lr", %[[LR]]
// CHECK:         %[[T:.*]] = train.state "optimizer.step" : tensor<i64>
// CHECK:         %[[T1:.*]] = train.increment %[[T]]
// CHECK:         train.update "optimizer.step", %[[T1]]
// CHECK:         %[[M:.*]] = train.state "w.exp_avg"
// CHECK:         %[[V:.*]] = train.state "w.exp_avg_sq"
// CHECK:         %[[P:.*]], %[[M2:.*]], %[[V2:.*]] = train.adamw %[[W]], %[[GW]], %[[M]], %[[V]], %[[T1]], %[[LR]], %[[COEF]] {beta1 = 9.000000e-01 : f64, beta2 = 0.99899999999999999 : f64, eps = 1.000000e-08 : f64, weight_decay = 1.000000e-01 : f64}
// CHECK:         train.update "w", %[[P]]
// CHECK:         train.update "w.exp_avg", %[[M2]]
// CHECK:         train.update "w.exp_avg_sq", %[[V2]]
// Biases are not decayed (SEMANTICS.md).
// CHECK:         train.adamw {{.*}}weight_decay = 0.000000e+00 : f64
