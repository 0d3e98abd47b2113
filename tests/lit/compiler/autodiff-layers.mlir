// RUN: loom-opt %s --loom-autodiff | FileCheck %s

// Layers are inlined; their ops keep the instance path, a parameter used
// twice gets the sum of both adjoints, and a parameter the loss does not
// read gets a zero gradient.
loom.model @Layers {
  %x = loom.input "x" : tensor<2x4xf32>
  %t = loom.input "t" : tensor<2x4xf32>
  %u = loom.param "unused" init zeros : tensor<4xf32>
  %y = loom.layer "blocks.0" @Block(%x) : (tensor<2x4xf32>) -> tensor<2x4xf32> {
  ^bb0(%a: tensor<2x4xf32>):
    %g = loom.param "blocks.0.g" init ones : tensor<4xf32>
    %m = loom.mul %a, %g : tensor<2x4xf32>, tensor<4xf32>
    %n = loom.mul %m, %g : tensor<2x4xf32>, tensor<4xf32>
    loom.yield %n : tensor<2x4xf32>
  }
  %l = loom.mse %y, %t : tensor<2x4xf32>, tensor<2x4xf32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: train.step @train_step
// CHECK:         %[[G:.*]] = train.param "blocks.0.g"
// CHECK:         loom.mul %{{.*}}, %[[G]] {loom.layer = "blocks.0"}
// CHECK:         %[[D1:.*]] = loom.reduce_sum %{{.*}} dims [0] {loom.layer = "blocks.0"}
// CHECK:         %[[D2:.*]] = loom.reduce_sum %{{.*}} dims [0] {loom.layer = "blocks.0"}
// CHECK:         %[[SUM:.*]] = loom.add %[[D1]], %[[D2]] {loom.layer = "blocks.0"}
// CHECK:         %[[ZERO:.*]] = loom.constant dense<0.000000e+00> : tensor<4xf32>
// CHECK:         train.gradient "unused", %[[ZERO]]
// CHECK:         train.gradient "blocks.0.g", %[[SUM]]
