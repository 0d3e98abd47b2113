// RUN: loom-opt %s | loom-opt | FileCheck %s

// CHECK: dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 2]
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 2]

// CHECK-LABEL: dist.program @train_step "train" on @mesh
dist.program @train_step "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // CHECK: %[[A:.*]] = dist.all_reduce %{{.*}} over "dp" "sum" : tensor<8x16xf32>
  %a = dist.all_reduce %x over "dp" "sum" : tensor<8x16xf32>
  // CHECK: %[[G:.*]] = dist.all_gather %[[A]] over "tp" dim 1 : tensor<8x16xf32> -> tensor<8x64xf32>
  %g = dist.all_gather %a over "tp" dim 1 : tensor<8x16xf32> -> tensor<8x64xf32>
  // CHECK: dist.reduce_scatter %[[G]] over "tp" dim 1 : tensor<8x64xf32> -> tensor<8x16xf32>
  %r = dist.reduce_scatter %g over "tp" dim 1 : tensor<8x64xf32> -> tensor<8x16xf32>
  // CHECK: dist.shard %[[G]] over "tp" dim 1 : tensor<8x64xf32> -> tensor<8x16xf32>
  %s = dist.shard %g over "tp" dim 1 : tensor<8x64xf32> -> tensor<8x16xf32>
  // CHECK: dist.all_to_all %{{.*}} over "tp" split 0 concat 1 : tensor<8x16xf32> -> tensor<2x64xf32>
  %t = dist.all_to_all %r over "tp" split 0 concat 1 : tensor<8x16xf32> -> tensor<2x64xf32>
  // CHECK: dist.broadcast %{{.*}} over "dp" from 0 : tensor<8x16xf32>
  %b = dist.broadcast %r over "dp" from 0 : tensor<8x16xf32>
  // CHECK: dist.send %{{.*}} to 1 over "pp" tag 7 : tensor<8x16xf32>
  dist.send %b to 1 over "pp" tag 7 : tensor<8x16xf32>
  // CHECK: dist.recv from -1 over "pp" tag 7 : tensor<8x16xf32>
  %v = dist.recv from -1 over "pp" tag 7 : tensor<8x16xf32>
  %l = loom.constant dense<1.0> : tensor<f32>
  train.output "loss", %l : tensor<f32>
}
