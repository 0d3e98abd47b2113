// RUN: loom-opt %s --loom-propagate-sharding | FileCheck %s

// The sharding rules, one op each, on a dp=2 × tp=2 mesh: a Megatron MLP
// block (column-parallel w1, row-parallel w2), a normalisation, a reshape,
// reductions, a vocabulary-parallel embedding and cross-entropy, and the
// optimizer state that follows its parameter.
train.step @train_step "train" attributes {config = {mesh = array<i64: 2, 2, 1>, zero = 0 : i64}} {
  // CHECK: train.input "x" {{.*}}dist.reason = "input: the batch is split over dp", dist.sharding = ["[dp, _]"]
  %x = train.input "x" : tensor<4x8xf32>
  // CHECK: train.input "ids" {{.*}}dist.sharding = ["[dp, _]"]
  %ids = train.input "ids" : tensor<4x3xi32>
  // CHECK: train.param "w1" {{.*}}dist.sharding = ["[_, tp]"]
  %w1 = train.param "w1" {decay = true, init = "zeros", shard = ["_", "tp"]} : tensor<8x16xf32>
  // CHECK: train.param "c1" {{.*}}dist.sharding = ["[tp]"]
  %c1 = train.param "c1" {decay = true, init = "zeros", shard = ["tp"]} : tensor<16xf32>
  // CHECK: train.param "w2" {{.*}}dist.sharding = ["[tp, _]"]
  %w2 = train.param "w2" {decay = true, init = "zeros", shard = ["tp", "_"]} : tensor<16x8xf32>
  // CHECK: train.param "g" {{.*}}dist.reason = "parameter: replicated (no annotation)", dist.sharding = ["[_]"]
  %g = train.param "g" {decay = false, init = "ones"} : tensor<8xf32>
  // CHECK: train.param "wte" {{.*}}dist.sharding = ["[tp, _]"]
  %wte = train.param "wte" {decay = true, init = "zeros", shard = ["tp", "_"]} : tensor<6x8xf32>

  // Column-parallel: rows from x, columns from w1.
  // CHECK: loom.matmul %{{.*}} {dist.operand_sharding = ["[dp, _]", "[_, tp]"], {{.*}}dist.sharding = ["[dp, tp]"]}
  %h = loom.matmul %x, %w1 : tensor<4x8xf32>, tensor<8x16xf32>
  // CHECK: loom.add {{.*}}dist.operand_sharding = ["[dp, tp]", "[tp]"]{{.*}}dist.sharding = ["[dp, tp]"]
  %hb = loom.add %h, %c1 : tensor<4x16xf32>, tensor<16xf32>
  // CHECK: loom.gelu {{.*}}dist.sharding = ["[dp, tp]"]
  %a = loom.gelu %hb : tensor<4x16xf32>
  // Row-parallel: the contraction is split, the result a partial sum.
  // CHECK: loom.matmul {{.*}}dist.operand_sharding = ["[dp, tp]", "[tp, _]"]{{.*}}contraction split over tp gives a partial sum{{.*}}dist.sharding = ["[dp, _] partial(tp)"]
  %y = loom.matmul %a, %w2 : tensor<4x16xf32>, tensor<16x8xf32>
  // A partial sum added to a whole value is reduced first.
  // CHECK: loom.add {{.*}}dist.operand_sharding = ["[dp, _]", "[dp, _]"]{{.*}}partial operands reduced first{{.*}}dist.sharding = ["[dp, _]"]
  %z = loom.add %x, %y : tensor<4x8xf32>, tensor<4x8xf32>
  // Partial + partial stays partial (linear).
  // CHECK: loom.add {{.*}}partial sums pass through{{.*}}dist.sharding = ["[dp, _] partial(tp)"]
  %yy = loom.add %y, %y : tensor<4x8xf32>, tensor<4x8xf32>
  // CHECK: train.layer_norm {{.*}}dist.operand_sharding = ["[dp, _]", "[_]", "[_]"]{{.*}}dist.sharding = ["[dp, _]", "[dp]", "[dp]"]
  %n, %mean, %rstd = train.layer_norm %z, %g, %g {eps = 1.0e-05 : f64} : (tensor<4x8xf32>, tensor<8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<4xf32>, tensor<4xf32>)
  // A merged group keeps the split of its leading dimension.
  // CHECK: loom.reshape {{.*}}dist.sharding = ["[dp]"]
  %flat = loom.reshape %n : tensor<4x8xf32> -> tensor<32xf32>
  // Reducing the split batch leaves a partial sum over dp.
  // CHECK: loom.reduce_sum {{.*}}dist.sharding = ["[_] partial(dp)"]
  %colsum = loom.reduce_sum %n dims [0] : tensor<4x8xf32>
  // Vocabulary-parallel embedding: partial rows over tp.
  // CHECK: loom.embedding {{.*}}vocabulary-parallel{{.*}}dist.sharding = ["[dp, _, _] partial(tp)"]
  %e = loom.embedding %ids, %wte : tensor<4x3xi32>, tensor<6x8xf32>
  // Vocabulary-parallel cross-entropy: the loss is partial over dp.
  // CHECK: loom.matmul {{.*}}dist.sharding = ["[dp, _, tp]"]
  %logits = loom.matmul %e, %w1 : tensor<4x3x8xf32>, tensor<8x16xf32>
  %t = train.input "t" : tensor<4x3xi32>
  // CHECK: train.cross_entropy {{.*}}vocabulary-parallel over tp{{.*}}dist.sharding = ["[] partial(dp)", "[dp, _]", "[_] partial(dp)"]
  %loss, %lse, %stats = train.cross_entropy %logits, %t {ignore_index = -100 : i64} : (tensor<4x3x16xf32>, tensor<4x3xi32>) -> (tensor<f32>, tensor<4x3xf32>, tensor<2xf32>)
  // CHECK: train.output "loss"{{.*}}dist.operand_sharding = ["[]"]
  train.output "loss", %loss : tensor<f32>
  // CHECK: train.state "w1.exp_avg" {{.*}}follows its parameter{{.*}}dist.sharding = ["[_, tp]"]
  %m = train.state "w1.exp_avg" : tensor<8x16xf32>
  // Operands split on the same dimension over different axes: the cost
  // decides (equal here, so the first), the other operand is resharded.
  %p = train.param "p" {decay = true, init = "zeros", shard = ["tp", "_"]} : tensor<4x8xf32>
  // CHECK: loom.add {{.*}}dist.operand_sharding = ["[dp, _]", "[dp, _]"]{{.*}}dim 0: operands disagree, dp chosen by cost{{.*}}dist.sharding = ["[dp, _]"]
  %xp = loom.add %x, %p : tensor<4x8xf32>, tensor<4x8xf32>
  // A replicated operand is sliced for free rather than gathering the other.
  %wr = train.param "wr" {decay = true, init = "zeros"} : tensor<4x8xf32>
  // CHECK: loom.mul {{.*}}dist.operand_sharding = ["[dp, _]", "[dp, _]"]{{.*}}dist.sharding = ["[dp, _]"]
  %xg = loom.mul %x, %wr : tensor<4x8xf32>, tensor<4x8xf32>
  // An op without a rule computes on whole values.
  // CHECK: loom.concat {{.*}}dist.operand_sharding = ["[_, _]", "[_, _]"]{{.*}}no sharding rule
  %cat = loom.concat %x, %x dim 0 : tensor<4x8xf32>, tensor<4x8xf32>
}
