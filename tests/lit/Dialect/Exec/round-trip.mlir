// RUN: loom-opt %s | loom-opt | FileCheck %s

// CHECK-LABEL: exec.program @loom_train_step "train" arena 4096
// CHECK:         %[[A:.*]] = exec.view 0 : memref<4x4xf32>
// CHECK:         %[[B:.*]] = exec.view 64 : memref<4x4xf32>
// CHECK:         %[[N:.*]] = exec.call @loom_sum_squares(%{{.*}}, %[[A]]) : (i64, memref<4x4xf32>) -> f64
// CHECK:         exec.call @loom_gemm(
exec.program @loom_train_step "train" arena 4096 {
  %a = exec.view 0 : memref<4x4xf32>
  %b = exec.view 64 : memref<4x4xf32>
  %n16 = arith.constant 16 : i64
  %s = exec.call @loom_sum_squares(%n16, %a) : (i64, memref<4x4xf32>) -> f64
  %one = arith.constant 1 : i64
  %z = arith.constant 0 : i32
  %four = arith.constant 4 : i64
  %f1 = arith.constant 1.0 : f32
  %f0 = arith.constant 0.0 : f32
  exec.call @loom_gemm(%one, %z, %z, %four, %four, %four, %a, %n16, %a, %n16, %b, %n16, %f1, %f0) : (i64, i32, i32, i64, i64, i64, memref<4x4xf32>, i64, memref<4x4xf32>, i64, memref<4x4xf32>, i64, f32, f32) -> ()
}
