// RUN: loom-opt %s --loom-fuse-elementwise | FileCheck %s

// On CUDA, a bf16 MLP's gelu(f32(x @ w1) + c1) becomes one GEMM with the
// bias and GELU in its epilogue (the bias rounded to bf16 first), and the
// backward pass's bf16(gelu_grad(that sum, f32(dy @ w2^T))) one GEMM with
// GELU's derivative in its epilogue, reading the forward's saved bf16
// input. The bias gradient sums the widened bf16 gradient.
module attributes {loom.target = "cuda"} {
dist.mesh @mesh axes ["dp", "tp", "pp"] shape [1, 1, 1]
dist.program @train_step "train" on @mesh {
  %x = train.input "x" : tensor<2x4x16xbf16>
  %dy = train.input "dy" : tensor<2x4x16xbf16>
  %w1 = train.param "w1" {decay = true, init = "glorot"} : tensor<16x32xbf16>
  %c1 = train.param "c1" {decay = false, init = "zeros"} : tensor<32xf32>
  %w2 = train.param "w2" {decay = true, init = "glorot"} : tensor<32x16xbf16>
  %m = loom.matmul %x, %w1 : tensor<2x4x16xbf16>, tensor<16x32xbf16>
  %mf = loom.cast %m : tensor<2x4x32xbf16> -> tensor<2x4x32xf32>
  %p = loom.add %mf, %c1 : tensor<2x4x32xf32>, tensor<32xf32>
  %g = loom.gelu %p : tensor<2x4x32xf32>
  %h = loom.cast %g : tensor<2x4x32xf32> -> tensor<2x4x32xbf16>
  %dh = train.gemm %dy, %w2 {transpose_a = false, transpose_b = true} : (tensor<2x4x16xbf16>, tensor<32x16xbf16>) -> tensor<2x4x32xbf16>
  %dhf = loom.cast %dh : tensor<2x4x32xbf16> -> tensor<2x4x32xf32>
  %dp = train.gelu_grad %p, %dhf : (tensor<2x4x32xf32>, tensor<2x4x32xf32>) -> tensor<2x4x32xf32>
  %dc1 = loom.reduce_sum %dp dims [0, 1] : tensor<2x4x32xf32>
  %dpl = loom.cast %dp : tensor<2x4x32xf32> -> tensor<2x4x32xbf16>
  %hf = loom.cast %h : tensor<2x4x32xbf16> -> tensor<2x4x32xf32>
  %dplf = loom.cast %dpl : tensor<2x4x32xbf16> -> tensor<2x4x32xf32>
  %s1 = loom.reduce_sum %hf dims [0, 1, 2] : tensor<2x4x32xf32>
  %s2 = loom.reduce_sum %dplf dims [0, 1, 2] : tensor<2x4x32xf32>
  %s3 = loom.reduce_sum %dc1 dims [0] : tensor<32xf32>
  %l1 = loom.add %s1, %s2 : tensor<f32>, tensor<f32>
  %l = loom.add %l1, %s3 : tensor<f32>, tensor<f32>
  train.output "loss", %l : tensor<f32>
}
}

// CHECK-LABEL: dist.program @train_step
// CHECK:         %[[CB:.*]] = linalg.generic
// CHECK-SAME:      ins(%{{.*}} : tensor<32xf32>)
// CHECK:           arith.truncf
// CHECK:         %[[Y:.*]], %[[PRE:.*]] = train.gemm_bias_gelu %{{.*}}, %{{.*}}, %[[CB]] {transpose_a = false, transpose_b = false}
// CHECK-SAME:      -> (tensor<2x4x32xbf16>, tensor<2x4x32xbf16>)
// CHECK:         %[[D:.*]] = train.gemm_gelu_grad %{{.*}}, %{{.*}}, %[[PRE]] {transpose_a = false, transpose_b = true}
// CHECK-SAME:      -> tensor<2x4x32xbf16>
// The bias gradient: a column sum of the widened bf16 gradient.
// CHECK:         linalg.generic
// CHECK-SAME:      iterator_types = ["reduction", "reduction", "parallel"]
// CHECK-SAME:      ins(%[[D]] : tensor<2x4x32xbf16>)
// CHECK:           arith.extf
// CHECK-NOT:     loom.gelu
// CHECK-NOT:     train.gelu_grad
// CHECK-NOT:     math.tanh
// CHECK-NOT:     loom.matmul
// CHECK-NOT:     train.gemm %

// The CPU target keeps the GEMMs and the GELU loops.
// RUN: sed -e 's/loom.target = "cuda"/loom.target = "cpu"/' %s | loom-opt --loom-fuse-elementwise | FileCheck %s --check-prefix=CPU
// CPU-NOT: train.gemm_bias_gelu
// CPU-NOT: train.gemm_gelu_grad
// CPU: math.tanh
