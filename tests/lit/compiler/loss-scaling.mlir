// RUN: loom-opt %s --loom-build-train-step --loom-loss-scaling | FileCheck %s

// Dynamic loss scaling: the backward seed becomes the scale, the reported
// norm is unscaled, one non-finite check predicates every update, 1/scale
// joins grad_scale, and the scale update writes its state.
train.step @train_step "train" attributes {config = {optimizer = "adamw", lr = 1.0e-3 : f64, weight_decay = 0.0 : f64, clip = "none", loss_scale = "dynamic", loss_scale_init = 1024.0 : f64, loss_scale_growth = 2.0 : f64, loss_scale_backoff = 0.5 : f64, loss_scale_interval = 10 : i64, loss_scale_hysteresis = 2 : i64, loss_scale_min = 1.0 : f64}} {
  %w = train.param "w" {decay = true, init = "glorot"} : tensor<2x2xf32>
  %l = loom.constant dense<2.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
  %seed = loom.constant dense<1.0> : tensor<f32> {loom.loss_seed}
  %g = loom.mul %w, %seed : tensor<2x2xf32>, tensor<f32>
  train.gradient "w", %g : tensor<2x2xf32>
}

// CHECK-LABEL: train.step @train_step
// CHECK:         %[[STORED:.*]] = train.state "loss_scale.scale" : tensor<f32>
// CHECK:         %[[GOOD:.*]] = train.state "loss_scale.good_steps" : tensor<i64>
// CHECK:         %[[HYST:.*]] = train.state "loss_scale.hysteresis_used" : tensor<i64>
// CHECK:         %[[SCALE:.*]] = train.loss_scale_value %[[STORED]] {init = 1.024000e+03 : f64}
// CHECK:         %[[G:.*]] = loom.mul %{{.*}}, %[[SCALE]]
// CHECK-NOT:     loom.loss_seed
// CHECK:         %[[NORM:.*]] = train.global_norm %[[G]]
// CHECK:         %[[INV:.*]] = loom.div %{{.*}}, %[[SCALE]]
// CHECK:         %[[UNSCALED:.*]] = loom.mul %[[NORM]], %[[INV]]
// CHECK:         %[[SKIP:.*]] = train.nonfinite %[[UNSCALED]]
// CHECK:         train.output "grad_norm", %[[UNSCALED]]
// CHECK:         train.increment %{{.*}}, %[[SKIP]]
// CHECK:         %[[GS:.*]] = loom.mul %{{.*}}, %[[INV]]
// CHECK:         train.adamw {{.*}}, %[[GS]], %[[SKIP]] {
// CHECK:         %[[NEW:.*]], %[[NGOOD:.*]], %[[NHYST:.*]], %[[UNDER:.*]] = train.loss_scale_update %[[SCALE]], %[[GOOD]], %[[HYST]], %[[SKIP]] {backoff = 5.000000e-01 : f64, dynamic = true, growth = 2.000000e+00 : f64, hysteresis = 2 : i64, init = 1.024000e+03 : f64, interval = 10 : i64, min = 1.000000e+00 : f64}
// CHECK:         train.update "loss_scale.scale", %[[NEW]]
// CHECK:         train.output "loss_scale", %[[SCALE]]
// CHECK:         train.output "skipped", %[[SKIP]]
// CHECK:         train.output "next_loss_scale", %[[NEW]]
// CHECK:         train.output "loss_scale_underflow", %[[UNDER]]
