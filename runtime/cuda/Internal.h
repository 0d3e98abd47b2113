//===- Internal.h - helpers shared by Gemm.cpp and Kernels.cu ---*- C++ -*-===//
#ifndef LOOM_RUNTIME_CUDA_INTERNAL_H
#define LOOM_RUNTIME_CUDA_INTERNAL_H

#include "runtime/cuda/CudaContext.h"

#include <cstdint>

namespace loom::cuda::detail {

/// For b in [0, batch): X_b[0..count) = beta * X_b (beta == 0: zeros, never
/// reading X), X_b = X + b * stride elements; elemKind 0 f32, 1 16-bit
/// (only beta == 0). A GEMM with K = 0.
void scaleMatrices(CudaContext &ctx, const char *kernel, int elemKind, void *X,
                   int64_t batch, int64_t count, int64_t stride, float beta);

/// A plain tiled GEMM (fp32 accumulation, one thread per output, k in
/// increasing order) for the shapes cuBLASLt offers no algorithm for (odd
/// leading dimensions of 16-bit operands, say): loom_gemm's contract with
/// strideC != 0 or batch == 1. elemKind 0 f32 (alpha, beta), 1 bf16, 2 f16
/// (alpha 1, beta 0, each output rounded once to nearest-even).
void fallbackGemm(CudaContext &ctx, const char *kernel, int elemKind,
                  int64_t batch, bool transA, bool transB, int64_t M, int64_t N,
                  int64_t K, const void *A, int64_t strideA, const void *B,
                  int64_t strideB, void *C, int64_t strideC, float alpha,
                  float beta);

/// The GELU epilogues on a bf16 GEMM's output C [rows, cols] where
/// cuBLASLt has no fused algorithm: forward, pre = bf16(C + bias[j]) and C
/// = bf16(gelu(C + bias[j])); backward (bias unused), C = bf16(gelu'(pre)
/// * C). f32 arithmetic, tanh-approximated GELU.
void geluEpilogue(CudaContext &ctx, const char *kernel, bool forward,
                  int64_t rows, int64_t cols, uint16_t *C, const uint16_t *bias,
                  uint16_t *pre);

} // namespace loom::cuda::detail

#endif // LOOM_RUNTIME_CUDA_INTERNAL_H
