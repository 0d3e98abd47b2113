// RUN: loom-opt %s | loom-opt | FileCheck %s
// RUN: loom-opt %s -mlir-print-op-generic | loom-opt | FileCheck %s

// Every loom op, printed and parsed back: once through the custom syntax and
// once through the generic form (which checks the inferred result types).

// CHECK-LABEL: loom.model @Mlp attributes {config = {batch = 4 : i64, optimizer = "adamw"}} {
// CHECK:         %[[X:.*]] = loom.input "x" : tensor<4x8xf32>
// CHECK:         %[[Y:.*]] = loom.input "y" : tensor<4x3xf32>
// CHECK:         %[[W1:.*]] = loom.param "fc1.w" init normal(2.000000e-02) shard ["_", "tp"] : tensor<8x16xf32>
// CHECK:         %[[B1:.*]] = loom.param "fc1.b" init zeros shard ["tp"] : tensor<16xf32>
// CHECK:         %[[W2:.*]] = loom.param "fc2.w" init uniform(-2.500000e-01, 2.500000e-01) : tensor<16x3xf32>
// CHECK:         %[[B2:.*]] = loom.param "fc2.b" init ones : tensor<3xf32>
// CHECK:         %[[H:.*]] = loom.matmul %[[X]], %[[W1]] : tensor<4x8xf32>, tensor<8x16xf32>
// CHECK:         %[[HB:.*]] = loom.add %[[H]], %[[B1]] : tensor<4x16xf32>, tensor<16xf32>
// CHECK:         %[[A:.*]] = loom.relu %[[HB]] : tensor<4x16xf32>
// CHECK:         %[[O:.*]] = loom.matmul %[[A]], %[[W2]] : tensor<4x16xf32>, tensor<16x3xf32>
// CHECK:         %[[OB:.*]] = loom.add %[[O]], %[[B2]] : tensor<4x3xf32>, tensor<3xf32>
// CHECK:         %[[L:.*]] = loom.mse %[[OB]], %[[Y]] : tensor<4x3xf32>, tensor<4x3xf32>
// CHECK:         loom.loss %[[L]] : tensor<f32>
// CHECK:       }
loom.model @Mlp attributes {config = {batch = 4 : i64, optimizer = "adamw"}} {
  %x = loom.input "x" : tensor<4x8xf32>
  %y = loom.input "y" : tensor<4x3xf32>
  %w1 = loom.param "fc1.w" init normal(0.02) shard ["_", "tp"] : tensor<8x16xf32>
  %b1 = loom.param "fc1.b" init zeros shard ["tp"] : tensor<16xf32>
  %w2 = loom.param "fc2.w" init uniform(-0.25, 0.25) : tensor<16x3xf32>
  %b2 = loom.param "fc2.b" init ones : tensor<3xf32>
  %h = loom.matmul %x, %w1 : tensor<4x8xf32>, tensor<8x16xf32>
  %hb = loom.add %h, %b1 : tensor<4x16xf32>, tensor<16xf32>
  %a = loom.relu %hb : tensor<4x16xf32>
  %o = loom.matmul %a, %w2 : tensor<4x16xf32>, tensor<16x3xf32>
  %ob = loom.add %o, %b2 : tensor<4x3xf32>, tensor<3xf32>
  %l = loom.mse %ob, %y : tensor<4x3xf32>, tensor<4x3xf32>
  loom.loss %l : tensor<f32>
}

// CHECK-LABEL: loom.model @Elementwise {
// CHECK:         %[[X:.*]] = loom.input "x" : tensor<4x8xf32>
// CHECK:         %[[I:.*]] = loom.input "i" : tensor<4x8xi32>
// CHECK:         %{{.*}} = loom.neg %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.neg %[[I]] : tensor<4x8xi32>
// CHECK:         %{{.*}} = loom.exp %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.log %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.sqrt %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.rsqrt %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.tanh %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.gelu %[[X]] : tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.sigmoid %[[X]] : tensor<4x8xf32>
// CHECK:         %[[C:.*]] = loom.constant dense<2.000000e+00> : tensor<f32>
// CHECK:         %[[ROW:.*]] = loom.constant dense<[1.000000e+00, 2.000000e+00, 3.000000e+00, 4.000000e+00, 5.000000e+00, 6.000000e+00, 7.000000e+00, 8.000000e+00]> : tensor<8xf32>
// CHECK:         %{{.*}} = loom.sub %[[X]], %[[ROW]] : tensor<4x8xf32>, tensor<8xf32>
// CHECK:         %{{.*}} = loom.mul %[[C]], %[[X]] : tensor<f32>, tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.div %[[X]], %[[C]] : tensor<4x8xf32>, tensor<f32>
// CHECK:         %[[F:.*]] = loom.cast %[[I]] : tensor<4x8xi32> -> tensor<4x8xf32>
// CHECK:         %{{.*}} = loom.cast %[[X]] : tensor<4x8xf32> -> tensor<4x8xbf16>
// CHECK:         %{{.*}} = loom.reduce_max %[[X]] dims [0] : tensor<4x8xf32>
// CHECK:         %[[M:.*]] = loom.reduce_mean %[[F]] dims [-1] keepdim : tensor<4x8xf32>
// CHECK:         %[[B:.*]] = loom.broadcast_to %[[M]] : tensor<4x1xf32> -> tensor<4x8xf32>
// CHECK:         %[[S:.*]] = loom.reduce_sum %[[B]] dims [0, 1] : tensor<4x8xf32>
// CHECK:         loom.loss %[[S]] : tensor<f32>
// CHECK:       }
loom.model @Elementwise {
  %x = loom.input "x" : tensor<4x8xf32>
  %i = loom.input "i" : tensor<4x8xi32>
  %0 = loom.neg %x : tensor<4x8xf32>
  %1 = loom.neg %i : tensor<4x8xi32>
  %2 = loom.exp %x : tensor<4x8xf32>
  %3 = loom.log %x : tensor<4x8xf32>
  %4 = loom.sqrt %x : tensor<4x8xf32>
  %5 = loom.rsqrt %x : tensor<4x8xf32>
  %6 = loom.tanh %x : tensor<4x8xf32>
  %7 = loom.gelu %x : tensor<4x8xf32>
  %8 = loom.sigmoid %x : tensor<4x8xf32>
  %c = loom.constant dense<2.0> : tensor<f32>
  %row = loom.constant dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]> : tensor<8xf32>
  %9 = loom.sub %x, %row : tensor<4x8xf32>, tensor<8xf32>
  %10 = loom.mul %c, %x : tensor<f32>, tensor<4x8xf32>
  %11 = loom.div %x, %c : tensor<4x8xf32>, tensor<f32>
  %f = loom.cast %i : tensor<4x8xi32> -> tensor<4x8xf32>
  %12 = loom.cast %x : tensor<4x8xf32> -> tensor<4x8xbf16>
  %13 = loom.reduce_max %x dims [0] : tensor<4x8xf32>
  %m = loom.reduce_mean %f dims [-1] keepdim : tensor<4x8xf32>
  %b = loom.broadcast_to %m : tensor<4x1xf32> -> tensor<4x8xf32>
  %s = loom.reduce_sum %b dims [0, 1] : tensor<4x8xf32>
  loom.loss %s : tensor<f32>
}

// A one-layer decoder: embedding, a loom.layer with attention, the losses.

// CHECK-LABEL: loom.model @Gpt attributes {config = {mesh = {dp = 1 : i64, tp = 2 : i64}}} {
// CHECK:         %[[TOK:.*]] = loom.input "tokens" : tensor<2x8xi32>
// CHECK:         %[[TGT:.*]] = loom.input "targets" : tensor<2x8xi64>
// CHECK:         %[[WTE:.*]] = loom.param "wte" init normal(2.000000e-02) shard ["_", "tp"] : tensor<32x16xf32>
// CHECK:         %[[WPE:.*]] = loom.param "wpe" init zeros : tensor<8x16xf32>
// CHECK:         %[[E:.*]] = loom.embedding %[[TOK]], %[[WTE]] : tensor<2x8xi32>, tensor<32x16xf32>
// CHECK:         %[[P:.*]] = loom.broadcast_to %[[WPE]] : tensor<8x16xf32> -> tensor<2x8x16xf32>
// CHECK:         %[[H:.*]] = loom.add %[[E]], %[[P]] : tensor<2x8x16xf32>, tensor<2x8x16xf32>
// CHECK:         %[[D:.*]]:2 = loom.layer "layers.0" @Decoder(%[[H]], %[[E]]) : (tensor<2x8x16xf32>, tensor<2x8x16xf32>) -> (tensor<2x8x16xf32>, tensor<2x4x8x4xf32>) {
// CHECK:         ^bb0(%[[ARG:.*]]: tensor<2x8x16xf32>, %[[SKIP:.*]]: tensor<2x8x16xf32>):
// CHECK:           %[[G1:.*]] = loom.param "layers.0.g1" init ones : tensor<16xf32>
// CHECK:           %[[BI1:.*]] = loom.param "layers.0.b1" init zeros : tensor<16xf32>
// CHECK:           %[[N:.*]] = loom.layer_norm %[[ARG]], %[[G1]], %[[BI1]] : tensor<2x8x16xf32>, tensor<16xf32>, tensor<16xf32>
// CHECK:           %[[WQ:.*]] = loom.param "layers.0.wq" init glorot shard ["_", "tp"] : tensor<16x16xf32>
// CHECK:           %[[Q:.*]] = loom.matmul %[[N]], %[[WQ]] : tensor<2x8x16xf32>, tensor<16x16xf32>
// CHECK:           %[[QH:.*]] = loom.split_heads %[[Q]] heads 4 : tensor<2x8x16xf32>
// CHECK:           %[[ATT:.*]] = loom.attention %[[QH]], %[[QH]], %[[QH]] {causal = true} : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>
// CHECK:           %[[WG:.*]] = loom.param "layers.0.wg" init zeros shard ["tp", "_"] : tensor<4x8xf32>
// CHECK:           %[[BG:.*]] = loom.param "layers.0.bg" init zeros shard ["tp"] : tensor<4xf32>
// CHECK:           %[[GA:.*]] = loom.gated_attention %[[QH]], %[[QH]], %[[QH]], %[[WG]], %[[BG]] {causal = true} : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<4x8xf32>, tensor<4xf32>
// CHECK:           %[[GT:.*]] = loom.gated_attention %[[QH]], %[[QH]], %[[QH]], %[[WG]], %[[BG]] {gate_threshold = 1.000000e-01 : f64} : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<4x8xf32>, tensor<4xf32>
// CHECK:           %[[SUM:.*]] = loom.add %[[ATT]], %[[GA]] : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>
// CHECK:           %[[MH:.*]] = loom.merge_heads %[[SUM]] : tensor<2x4x8x4xf32>
// CHECK:           %[[G2:.*]] = loom.param "layers.0.g2" init ones : tensor<16xf32>
// CHECK:           %[[R:.*]] = loom.rms_norm %[[MH]], %[[G2]] {eps = 1.000000e-05 : f64} : tensor<2x8x16xf32>, tensor<16xf32>
// CHECK:           %[[DR:.*]] = loom.dropout %[[R]] p 1.000000e-01 key "layers.0.drop" : tensor<2x8x16xf32>
// CHECK:           %[[RES:.*]] = loom.add %[[SKIP]], %[[DR]] : tensor<2x8x16xf32>, tensor<2x8x16xf32>
// CHECK:           loom.yield %[[RES]], %[[GT]] : tensor<2x8x16xf32>, tensor<2x4x8x4xf32>
// CHECK:         }
// CHECK:         %[[WOUT:.*]] = loom.param "wout" init normal(2.000000e-02) : tensor<16x32xf32>
// CHECK:         %[[LOG:.*]] = loom.matmul %[[D]]#0, %[[WOUT]] : tensor<2x8x16xf32>, tensor<16x32xf32>
// CHECK:         %{{.*}} = loom.softmax %[[LOG]] : tensor<2x8x32xf32>
// CHECK:         %{{.*}} = loom.log_softmax %[[LOG]] : tensor<2x8x32xf32>
// CHECK:         %[[FLAT:.*]] = loom.reshape %[[LOG]] : tensor<2x8x32xf32> -> tensor<16x32xf32>
// CHECK:         %{{.*}} = loom.transpose %[[FLAT]] [1, 0] : tensor<16x32xf32>
// CHECK:         %[[CAT:.*]] = loom.concat %[[LOG]], %[[LOG]] dim -1 : tensor<2x8x32xf32>, tensor<2x8x32xf32>
// CHECK:         %[[SL:.*]] = loom.slice %[[CAT]] dim 2 from 32 to 64 : tensor<2x8x64xf32>
// CHECK:         %[[CE:.*]] = loom.cross_entropy %[[SL]], %[[TGT]] {ignore_index = 0 : i64} : tensor<2x8x32xf32>, tensor<2x8xi64>
// CHECK:         loom.loss %[[CE]] : tensor<f32>
// CHECK:       }
loom.model @Gpt attributes {config = {mesh = {dp = 1 : i64, tp = 2 : i64}}} {
  %tok = loom.input "tokens" : tensor<2x8xi32>
  %tgt = loom.input "targets" : tensor<2x8xi64>
  %wte = loom.param "wte" init normal(0.02) shard ["_", "tp"] : tensor<32x16xf32>
  %wpe = loom.param "wpe" init zeros : tensor<8x16xf32>
  %e = loom.embedding %tok, %wte : tensor<2x8xi32>, tensor<32x16xf32>
  %p = loom.broadcast_to %wpe : tensor<8x16xf32> -> tensor<2x8x16xf32>
  %h = loom.add %e, %p : tensor<2x8x16xf32>, tensor<2x8x16xf32>
  %d:2 = loom.layer "layers.0" @Decoder(%h, %e) : (tensor<2x8x16xf32>, tensor<2x8x16xf32>) -> (tensor<2x8x16xf32>, tensor<2x4x8x4xf32>) {
  ^bb0(%x: tensor<2x8x16xf32>, %skip: tensor<2x8x16xf32>):
    %g1 = loom.param "layers.0.g1" init ones : tensor<16xf32>
    %b1 = loom.param "layers.0.b1" init zeros : tensor<16xf32>
    %n = loom.layer_norm %x, %g1, %b1 : tensor<2x8x16xf32>, tensor<16xf32>, tensor<16xf32>
    %wq = loom.param "layers.0.wq" init glorot shard ["_", "tp"] : tensor<16x16xf32>
    %q = loom.matmul %n, %wq : tensor<2x8x16xf32>, tensor<16x16xf32>
    %qh = loom.split_heads %q heads 4 : tensor<2x8x16xf32>
    %att = loom.attention %qh, %qh, %qh {causal = true} : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>
    %wg = loom.param "layers.0.wg" init zeros shard ["tp", "_"] : tensor<4x8xf32>
    %bg = loom.param "layers.0.bg" init zeros shard ["tp"] : tensor<4xf32>
    %ga = loom.gated_attention %qh, %qh, %qh, %wg, %bg {causal = true} : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<4x8xf32>, tensor<4xf32>
    %gt = loom.gated_attention %qh, %qh, %qh, %wg, %bg {causal = false, gate_threshold = 0.1} : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>, tensor<4x8xf32>, tensor<4xf32>
    %sum = loom.add %att, %ga : tensor<2x4x8x4xf32>, tensor<2x4x8x4xf32>
    %mh = loom.merge_heads %sum : tensor<2x4x8x4xf32>
    %g2 = loom.param "layers.0.g2" init ones : tensor<16xf32>
    %r = loom.rms_norm %mh, %g2 {eps = 1.0e-5} : tensor<2x8x16xf32>, tensor<16xf32>
    %dr = loom.dropout %r p 0.1 key "layers.0.drop" : tensor<2x8x16xf32>
    %res = loom.add %skip, %dr : tensor<2x8x16xf32>, tensor<2x8x16xf32>
    loom.yield %res, %gt : tensor<2x8x16xf32>, tensor<2x4x8x4xf32>
  }
  %wout = loom.param "wout" init normal(0.02) : tensor<16x32xf32>
  %logits = loom.matmul %d#0, %wout : tensor<2x8x16xf32>, tensor<16x32xf32>
  %sm = loom.softmax %logits : tensor<2x8x32xf32>
  %lsm = loom.log_softmax %logits : tensor<2x8x32xf32>
  %flat = loom.reshape %logits : tensor<2x8x32xf32> -> tensor<16x32xf32>
  %tr = loom.transpose %flat [1, 0] : tensor<16x32xf32>
  %cat = loom.concat %logits, %logits dim -1 : tensor<2x8x32xf32>, tensor<2x8x32xf32>
  %sl = loom.slice %cat dim 2 from 32 to 64 : tensor<2x8x64xf32>
  %ce = loom.cross_entropy %sl, %tgt {ignore_index = 0} : tensor<2x8x32xf32>, tensor<2x8xi64>
  loom.loss %ce : tensor<f32>
}
