// RUN: loom-opt %s -split-input-file -verify-diagnostics

// expected-error @+1 {{'dist.mesh' op has 3 axes but 2 sizes}}
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1]

// -----

// expected-error @+1 {{'dist.mesh' op mesh sizes must be positive, got 0}}
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 0, 1]

// -----

// expected-error @+1 {{'dist.program' op refers to an unknown mesh @nowhere}}
dist.program @p "train" on @nowhere {
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.all_reduce' op axis 'ep' is not an axis of mesh @mesh}}
  %a = dist.all_reduce %x over "ep" "sum" : tensor<8x16xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.all_reduce' op reduction must be sum, mean or max, got 'min'}}
  %a = dist.all_reduce %x over "dp" "min" : tensor<8x16xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.all_gather' op result must be 'tensor<8x64xf32>', got 'tensor<8x32xf32>'}}
  %g = dist.all_gather %x over "tp" dim 1 : tensor<8x16xf32> -> tensor<8x32xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 3, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.reduce_scatter' op dimension 1 (size 16) is not divisible by tp = 3}}
  %r = dist.reduce_scatter %x over "tp" dim 1 : tensor<8x16xf32> -> tensor<8x5xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.all_gather' op dim 2 is out of range for rank 2}}
  %g = dist.all_gather %x over "tp" dim 2 : tensor<8x16xf32> -> tensor<8x16xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 3, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.all_to_all' op split dimension 1 (size 16) is not divisible by tp = 3}}
  %t = dist.all_to_all %x over "tp" split 1 concat 0 : tensor<8x16xf32> -> tensor<24x5xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.broadcast' op root 2 is outside the group of 2 ranks}}
  %b = dist.broadcast %x over "dp" from 2 : tensor<8x16xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 4]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.send' op peer 0 must be a non-zero offset within the 4 ranks of pp}}
  dist.send %x to 0 over "pp" tag 1 : tensor<8x16xf32>
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 4]
dist.program @p "train" on @mesh {
  // expected-error @+1 {{'dist.recv' op peer -4 must be a non-zero offset within the 4 ranks of pp}}
  %v = dist.recv from -4 over "pp" tag 1 : tensor<8x16xf32>
}

// -----

func.func @outside(%x: tensor<4xf32>) {
  // expected-error @+1 {{'dist.all_reduce' op expects parent op 'dist.program'}}
  %a = dist.all_reduce %x over "dp" "sum" : tensor<4xf32>
  return
}

// -----

dist.mesh @mesh axes ["dp", "tp", "pp"] shape [2, 4, 1]
dist.program @p "train" on @mesh {
  %x = train.input "x" : tensor<8x16xf32>
  // expected-error @+1 {{'dist.shard' op result must be 'tensor<8x4xf32>', got 'tensor<8x8xf32>'}}
  %s = dist.shard %x over "tp" dim 1 : tensor<8x16xf32> -> tensor<8x8xf32>
}
