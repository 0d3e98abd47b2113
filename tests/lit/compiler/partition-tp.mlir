// RUN: loom-opt %s --loom-propagate-sharding --loom-partition | FileCheck %s

// Megatron MLP block on tp=2: per-rank types, one all-reduce where the
// row-parallel partial sum meets the residual, none for the column-parallel
// half; the global norm sums squares of shards over tp.
train.step @train_step "train" attributes {config = {mesh = array<i64: 1, 2, 1>, zero = 0 : i64}} {
  %x = train.input "x" : tensor<4x8xf32>
  %w1 = train.param "w1" {decay = true, init = "zeros", shard = ["_", "tp"]} : tensor<8x16xf32>
  %w2 = train.param "w2" {decay = true, init = "zeros", shard = ["tp", "_"]} : tensor<16x8xf32>
  %h = loom.matmul %x, %w1 : tensor<4x8xf32>, tensor<8x16xf32>
  %a = loom.gelu %h : tensor<4x16xf32>
  %y = loom.matmul %a, %w2 : tensor<4x16xf32>, tensor<16x8xf32>
  %z = loom.add %x, %y : tensor<4x8xf32>, tensor<4x8xf32>
  %l = loom.reduce_sum %z dims [0, 1] : tensor<4x8xf32>
  train.output "loss", %l : tensor<f32>
  %n = train.global_norm %w1, %w2, %x : tensor<8x16xf32>, tensor<16x8xf32>, tensor<4x8xf32> -> tensor<f32>
  train.output "grad_norm", %n : tensor<f32>
}
// CHECK: dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 2, 1]
// CHECK-LABEL: dist.program @train_step "train" on @mesh
// CHECK: train.param "w1" {{.*}}dist.global_shape = array<i64: 8, 16>{{.*}}dist.shard = ["_", "tp"]{{.*}} : tensor<8x8xf32>
// CHECK: train.param "w2" {{.*}}dist.shard = ["tp", "_"]{{.*}} : tensor<8x8xf32>
// CHECK: %[[H:.*]] = loom.matmul {{.*}} : tensor<4x8xf32>, tensor<8x8xf32>
// CHECK-NOT: dist.all_reduce
// CHECK: %[[Y:.*]] = loom.matmul {{.*}} : tensor<4x8xf32>, tensor<8x8xf32>
// CHECK: %[[R:.*]] = dist.all_reduce %[[Y]] over "tp" "sum" {dist.cause = "operand #1 of loom.add {{.*}}needs [_, _], has [_, _] partial(tp)"
// CHECK: loom.add %{{.*}}, %[[R]]
// CHECK: %[[SQ1:.*]] = train.global_norm %{{.*}}, %{{.*}} {squared} : tensor<8x8xf32>, tensor<8x8xf32> -> tensor<f32>
// CHECK: %[[SUM:.*]] = dist.all_reduce %[[SQ1]] over "tp" "sum"
// CHECK: %[[SQ0:.*]] = train.global_norm %{{.*}} {squared} : tensor<4x8xf32> -> tensor<f32>
// CHECK: %[[T:.*]] = loom.add %[[SUM]], %[[SQ0]]
// CHECK: %[[N:.*]] = loom.sqrt %[[T]]
// CHECK: train.output "grad_norm", %[[N]]
