// RUN: loom-opt %s --loom-partition | FileCheck %s
// RUN: loom-opt %s --loom-partition=bucket-mb=0 | FileCheck %s --check-prefix=NOBUCKET
// RUN: sed 's/zero = 0/zero = 1/' %s | loom-opt --loom-partition | FileCheck %s --check-prefix=ZERO

// dp=2: the batch is split, the loss weighted by this rank's share of the
// counted rows, the gradients all-reduced in one bucket issued right after
// the last of them is computed; ZeRO-1 reduce-scatters the gradients,
// updates a slice of each parameter and all-gathers it.
train.step @train_step "train" attributes {config = {mesh = array<i64: 2, 1, 1>, zero = 0 : i64}} {
  %x = train.input "x" : tensor<4x8xf32>
  %t = train.input "t" : tensor<4xi32>
  %w = train.param "w" {decay = true, init = "zeros"} : tensor<8x10xf32>
  %b = train.param "b" {decay = false, init = "zeros"} : tensor<10xf32>
  %h = loom.matmul %x, %w : tensor<4x8xf32>, tensor<8x10xf32>
  %logits = loom.add %h, %b : tensor<4x10xf32>, tensor<10xf32>
  %loss, %lse, %stats = train.cross_entropy %logits, %t {ignore_index = -100 : i64} : (tensor<4x10xf32>, tensor<4xi32>) -> (tensor<f32>, tensor<4xf32>, tensor<2xf32>)
  train.output "loss", %loss : tensor<f32>
  %seed = loom.constant dense<1.0> : tensor<f32>
  %dl = train.cross_entropy_grad %logits, %t, %lse, %seed {ignore_index = -100 : i64} : (tensor<4x10xf32>, tensor<4xi32>, tensor<4xf32>, tensor<f32>) -> tensor<4x10xf32>
  %db = loom.reduce_sum %dl dims [0] : tensor<4x10xf32>
  %dw = train.gemm %x, %dl {transpose_a = true, transpose_b = false} : (tensor<4x8xf32>, tensor<4x10xf32>) -> tensor<8x10xf32>
  %n = train.global_norm %dw, %db : tensor<8x10xf32>, tensor<10xf32> -> tensor<f32>
  train.output "grad_norm", %n : tensor<f32>
  %lr = train.learning_rate {decay = "none", lr = 0.1 : f64, min = 0.0 : f64, total = 0 : i64, warmup = 0 : i64} : tensor<f32>
  %one = loom.constant dense<1.0> : tensor<f32>
  %s = train.state "optimizer.step" : tensor<i64>
  %s1 = train.increment %s : (tensor<i64>) -> tensor<i64>
  train.update "optimizer.step", %s1 : tensor<i64>
  %m = train.state "w.exp_avg" : tensor<8x10xf32>
  %v = train.state "w.exp_avg_sq" : tensor<8x10xf32>
  %p, %m1, %v1 = train.adamw %w, %dw, %m, %v, %s1, %lr, %one {beta1 = 0.9 : f64, beta2 = 0.999 : f64, eps = 1.0e-8 : f64, weight_decay = 0.0 : f64} : (tensor<8x10xf32>, tensor<8x10xf32>, tensor<8x10xf32>, tensor<8x10xf32>, tensor<i64>, tensor<f32>, tensor<f32>) -> (tensor<8x10xf32>, tensor<8x10xf32>, tensor<8x10xf32>)
  train.update "w", %p : tensor<8x10xf32>
  train.update "w.exp_avg", %m1 : tensor<8x10xf32>
  train.update "w.exp_avg_sq", %v1 : tensor<8x10xf32>
}
// CHECK: dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 1, 1]
// CHECK: train.input "x" {{.*}}dist.shard = ["dp", "_"]{{.*}} : tensor<2x8xf32>
// CHECK: %[[LOSS:.*]], %[[LSE:.*]], %[[STATS:.*]] = train.cross_entropy {{.*}} -> (tensor<f32>, tensor<2xf32>, tensor<2xf32>)
// CHECK: %[[C1:.*]] = loom.slice %[[STATS]] dim 0 from 0 to 1
// CHECK: %[[C:.*]] = loom.reshape %[[C1]]
// CHECK: %[[TOT:.*]] = dist.all_reduce %[[C]] over "dp" "sum" {dist.cause = "the global count of rows
// CHECK: %[[W:.*]] = train.loss_weight %[[C]], %[[TOT]]
// CHECK: %[[WL:.*]] = loom.mul %[[LOSS]], %[[W]]
// CHECK: %[[GL:.*]] = dist.all_reduce %[[WL]] over "dp" "sum"
// CHECK: train.output "loss", %[[GL]]
// CHECK: %[[SEED:.*]] = loom.mul %{{.*}}, %[[W]]
// CHECK: train.cross_entropy_grad %{{.*}}, %{{.*}}, %[[LSE]], %[[SEED]]
// CHECK: %[[DB:.*]] = loom.reduce_sum
// CHECK: %[[DW:.*]] = train.gemm
// CHECK: %[[F:.*]] = loom.reshape %[[DW]] : tensor<8x10xf32> -> tensor<80xf32>
// CHECK: %[[CAT:.*]] = loom.concat %[[DB]], %[[F]] dim 0
// CHECK: dist.all_reduce %[[CAT]] over "dp" "sum" {async, dist.cause = "gradient bucket 1 of 1: 2 data-parallel gradients fused (360 bytes)
// CHECK: train.global_norm
// CHECK-NOT: dist.all_reduce {{.*}} tensor<8x10xf32>

// NOBUCKET-NOT: loom.concat
// NOBUCKET: dist.all_reduce %{{.*}} over "dp" "sum" {{.*}} : tensor<8x10xf32>

// ZERO: %[[RS:.*]] = dist.reduce_scatter %{{.*}} over "dp" dim 0 {{.*}} : tensor<8x10xf32> -> tensor<4x10xf32>
// ZERO: %[[SQ:.*]] = train.global_norm %[[RS]] {squared}
// ZERO: dist.all_reduce %[[SQ]] over "dp" "sum"
// ZERO: train.state "w.exp_avg" {{.*}}dist.shard = ["dp", "_"]{{.*}} : tensor<4x10xf32>
// ZERO: %[[PS:.*]] = dist.shard %{{.*}} over "dp" dim 0 {{.*}} : tensor<8x10xf32> -> tensor<4x10xf32>
// ZERO: %[[NP:.*]], %{{.*}}, %{{.*}} = train.adamw %[[PS]], %[[RS]]
// ZERO: %[[G:.*]] = dist.all_gather %[[NP]] over "dp" dim 0 {{.*}} : tensor<4x10xf32> -> tensor<8x10xf32>
// ZERO: train.update "w", %[[G]]
