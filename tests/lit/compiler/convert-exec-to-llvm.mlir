// RUN: loom-opt %s --convert-exec-to-llvm | FileCheck %s

// A program becomes a body over a memref of the arena plus the exported
// entry `void P(loom_ctx *, uint8_t *)`; views become memref.views; ABI
// calls get the context first and `arena + offset` pointers.
exec.program @loom_train_step "train" arena 4096 {
  %a = exec.view 0 : memref<4x4xf32>
  %b = exec.view 64 : memref<4x4xf32>
  %n = arith.constant 16 : i64
  %s = exec.call @loom_sum_squares(%n, %b) : (i64, memref<4x4xf32>) -> f64
  %z = arith.constant 0.0 : f32
  linalg.fill ins(%z : f32) outs(%a : memref<4x4xf32>)
}

// CHECK-LABEL: func.func private @loom_train_step_body(
// CHECK-SAME:      %[[CTX:.*]]: !llvm.ptr, %[[ARENA:.*]]: memref<?xi8>)
// CHECK:         %[[BASEIDX:.*]] = memref.extract_aligned_pointer_as_index %[[ARENA]]
// CHECK:         %[[BASE:.*]] = llvm.inttoptr
// CHECK-DAG:     memref.view %[[ARENA]][%{{.*}}][] : memref<?xi8> to memref<4x4xf32>
// CHECK:         %[[PTR:.*]] = llvm.getelementptr %[[BASE]][64] : (!llvm.ptr) -> !llvm.ptr, i8
// CHECK:         call @loom_sum_squares(%[[CTX]], %{{.*}}, %[[PTR]]) : (!llvm.ptr, i64, !llvm.ptr) -> f64
// CHECK:         linalg.fill
// CHECK:         return
// CHECK-LABEL: func.func @loom_train_step(
// CHECK-SAME:      %[[C:.*]]: !llvm.ptr, %[[RAW:.*]]: !llvm.ptr)
// CHECK:         llvm.mlir.constant(4096 : i64)
// CHECK:         %[[M:.*]] = builtin.unrealized_conversion_cast %{{.*}} : !llvm.struct<(ptr, ptr, i64, array<1 x i64>, array<1 x i64>)> to memref<?xi8>
// CHECK:         call @loom_train_step_body(%[[C]], %[[M]])
// CHECK:         func.func private @loom_sum_squares(!llvm.ptr, i64, !llvm.ptr) -> f64
// CHECK-NOT:     exec.
