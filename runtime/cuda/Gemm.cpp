//===- Gemm.cpp - loom_gemm{,_bf16,_f16} through cuBLASLt -----------------===//
//
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt
// gets B's buffer as its first operand and A's as its second, each with the
// caller's transpose flag, and writes an N x M column-major D, which is C.
//
// A plan (matmul descriptor, the three layouts, the algorithm the heuristic
// picked) is built once per distinct (dtype, transposes, M, N, K, batch,
// strides, pointer alignment) and kept in the context, so a repeated call
// (every training step) neither rebuilds descriptors nor re-queries the
// heuristic, and always runs the same algorithm (bitwise repeatable).
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/CudaKernels.h"
#include "runtime/cuda/Internal.h"

#include <map>
#include <mutex>
#include <string>
#include <tuple>

namespace loom::cuda {

namespace {

enum class GemmType { kF32, kBF16, kF16 };

/// What the GEMM's epilogue does besides rounding: nothing; bias then GELU,
/// keeping GELU's input (CUBLASLT_EPILOGUE_GELU_AUX_BIAS); or times GELU's
/// derivative at a saved input (CUBLASLT_EPILOGUE_DGELU).
enum class Epilogue { kNone, kBiasGelu, kGeluGrad };

struct GemmKey {
  GemmType type;
  bool transA, transB;
  int64_t M, N, K, batch, strideA, strideB, strideC;
  uint32_t alignA, alignB, alignC;
  Epilogue epilogue = Epilogue::kNone;
  uint32_t alignBias = 0, alignAux = 0;
  auto tie() const {
    return std::tie(type, transA, transB, M, N, K, batch, strideA, strideB,
                    strideC, alignA, alignB, alignC, epilogue, alignBias,
                    alignAux);
  }
  bool operator<(const GemmKey &o) const { return tie() < o.tie(); }
};

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

void destroyPlan(GemmPlan &p) {
  if (p.a)
    cublasLtMatrixLayoutDestroy(p.a);
  if (p.b)
    cublasLtMatrixLayoutDestroy(p.b);
  if (p.c)
    cublasLtMatrixLayoutDestroy(p.c);
  if (p.op)
    cublasLtMatmulDescDestroy(p.op);
  p = GemmPlan{};
}

} // namespace

struct GemmPlans {
  std::mutex mutex;
  std::map<GemmKey, GemmPlan> plans;
};

void destroyGemmPlans(GemmPlans *plans) {
  if (!plans)
    return;
  for (auto &entry : plans->plans)
    destroyPlan(entry.second);
  delete plans;
}

size_t gemmPlanCount(const CudaContext &ctx) {
  if (!ctx.gemmPlans)
    return 0;
  std::lock_guard<std::mutex> lock(ctx.gemmPlans->mutex);
  return ctx.gemmPlans->plans.size();
}

size_t gemmFallbackCount(const CudaContext &ctx) {
  if (!ctx.gemmPlans)
    return 0;
  std::lock_guard<std::mutex> lock(ctx.gemmPlans->mutex);
  size_t n = 0;
  for (const auto &entry : ctx.gemmPlans->plans)
    n += entry.second.op == nullptr;
  return n;
}

namespace {

/// The largest power of two (<= 256) dividing the address and, for a batch,
/// the batch stride in bytes: what the algorithm may assume.
uint32_t alignmentOf(const void *p, int64_t strideBytes) {
  uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(p)) | 256u;
  if (strideBytes != 0)
    bits |= uint64_t(strideBytes);
  return uint32_t(bits & (~bits + 1));
}

cudaDataType_t dataType(GemmType t) {
  switch (t) {
  case GemmType::kF32:
    return CUDA_R_32F;
  case GemmType::kBF16:
    return CUDA_R_16BF;
  case GemmType::kF16:
    return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

const char *kernelName(GemmType t) {
  switch (t) {
  case GemmType::kF32:
    return "gemm";
  case GemmType::kBF16:
    return "gemm_bf16";
  case GemmType::kF16:
    return "gemm_f16";
  }
  return "gemm";
}

void makeLayout(CudaContext &ctx, const char *kernel,
                cublasLtMatrixLayout_t *layout, cudaDataType_t type,
                int64_t rows, int64_t cols, int64_t batch, int64_t stride) {
  LOOM_CUBLAS_CHECK(ctx,
                    cublasLtMatrixLayoutCreate(layout, type, uint64_t(rows),
                                               uint64_t(cols), rows),
                    kernel);
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    LOOM_CUBLAS_CHECK(
        ctx,
        cublasLtMatrixLayoutSetAttribute(
            *layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count),
        kernel);
    LOOM_CUBLAS_CHECK(ctx,
                      cublasLtMatrixLayoutSetAttribute(
                          *layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                          &stride, sizeof stride),
                      kernel);
  }
}

/// Points an epilogue's plan at this call's bias and auxiliary matrix (the
/// descriptor holds them; the heuristic reads their alignment).
void setEpiloguePointers(CudaContext &ctx, const char *kernel,
                         cublasLtMatmulDesc_t op, const GemmKey &key,
                         const void *bias, const void *aux) {
  if (key.epilogue == Epilogue::kNone)
    return;
  LOOM_CUBLAS_CHECK(
      ctx,
      cublasLtMatmulDescSetAttribute(
          op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux),
      kernel);
  if (key.epilogue == Epilogue::kBiasGelu)
    LOOM_CUBLAS_CHECK(
        ctx,
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                       &bias, sizeof bias),
        kernel);
}

/// Builds the plan of `key` with `compute`; false when the heuristic offers
/// no algorithm for it (the caller may try another compute type).
bool buildPlan(CudaContext &ctx, const GemmKey &key,
               cublasComputeType_t compute, const void *bias, const void *aux,
               GemmPlan &plan) {
  const char *kernel = kernelName(key.type);
  const cudaDataType_t type = dataType(key.type);
  GemmPlan p;
  try {
    LOOM_CUBLAS_CHECK(ctx, cublasLtMatmulDescCreate(&p.op, compute, CUDA_R_32F),
                      kernel);
    // cuBLASLt's first operand is B's buffer, its second A's (see the top).
    const int32_t opFirst = key.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int32_t opSecond = key.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    LOOM_CUBLAS_CHECK(
        ctx,
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA,
                                       &opFirst, sizeof opFirst),
        kernel);
    LOOM_CUBLAS_CHECK(
        ctx,
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB,
                                       &opSecond, sizeof opSecond),
        kernel);
    if (key.epilogue != Epilogue::kNone) {
      // The auxiliary matrix (GELU's input) is laid out as D: N x M
      // column-major. The bias is bf16 (cuBLASLt takes no f32 bias with a
      // bf16 D).
      const uint32_t epilogue = key.epilogue == Epilogue::kBiasGelu
                                    ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                    : CUBLASLT_EPILOGUE_DGELU;
      const int64_t ld = key.N;
      const int32_t biasType = CUDA_R_16BF;
      LOOM_CUBLAS_CHECK(
          ctx,
          cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                         &epilogue, sizeof epilogue),
          kernel);
      LOOM_CUBLAS_CHECK(
          ctx,
          cublasLtMatmulDescSetAttribute(
              p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld),
          kernel);
      if (key.epilogue == Epilogue::kBiasGelu)
        LOOM_CUBLAS_CHECK(ctx,
                          cublasLtMatmulDescSetAttribute(
                              p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                              &biasType, sizeof biasType),
                          kernel);
      setEpiloguePointers(ctx, kernel, p.op, key, bias, aux);
    }
    // B row-major [K, N] (or [N, K] transposed) read column-major.
    makeLayout(ctx, kernel, &p.a, type, key.transB ? key.K : key.N,
               key.transB ? key.N : key.K, key.batch, key.strideB);
    // A row-major [M, K] (or [K, M] transposed) read column-major.
    makeLayout(ctx, kernel, &p.b, type, key.transA ? key.M : key.K,
               key.transA ? key.K : key.M, key.batch, key.strideA);
    makeLayout(ctx, kernel, &p.c, type, key.N, key.M, key.batch, key.strideC);

    cublasLtMatmulPreference_t pref = nullptr;
    LOOM_CUBLAS_CHECK(ctx, cublasLtMatmulPreferenceCreate(&pref), kernel);
    cublasLtMatmulHeuristicResult_t results[4] = {};
    int returned = 0;
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    {
      const uint64_t workspace = CudaContext::kLtWorkspaceBytes;
      const uint32_t alignFirst = key.alignB, alignSecond = key.alignA,
                     alignC = key.alignC;
      struct Attr {
        cublasLtMatmulPreferenceAttributes_t attr;
        const void *value;
        size_t size;
      } attrs[] = {
          {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
           sizeof workspace},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alignFirst,
           sizeof alignFirst},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alignSecond,
           sizeof alignSecond},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alignC, sizeof alignC},
          {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alignC, sizeof alignC},
      };
      for (const Attr &a : attrs) {
        status =
            cublasLtMatmulPreferenceSetAttribute(pref, a.attr, a.value, a.size);
        if (status != CUBLAS_STATUS_SUCCESS)
          break;
      }
      if (status == CUBLAS_STATUS_SUCCESS)
        status = cublasLtMatmulAlgoGetHeuristic(
            ctx.lt, p.op, p.a, p.b, p.c, p.c, pref, 4, results, &returned);
      cublasLtMatmulPreferenceDestroy(pref);
    }
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || returned == 0) {
      destroyPlan(p);
      return false;
    }
    LOOM_CUBLAS_CHECK(ctx, status, kernel);
    p.algo = results[0].algo;
    plan = p;
    return true;
  } catch (...) {
    destroyPlan(p);
    throw;
  }
}

/// The plan of `key`, built on first use; null when cuBLASLt has no
/// algorithm for it (remembered too, so the heuristic is asked once).
const GemmPlan *planFor(CudaContext &ctx, const GemmKey &key,
                        const void *bias = nullptr, const void *aux = nullptr) {
  if (!ctx.gemmPlans)
    ctx.gemmPlans = new GemmPlans;
  std::lock_guard<std::mutex> lock(ctx.gemmPlans->mutex);
  auto it = ctx.gemmPlans->plans.find(key);
  if (it != ctx.gemmPlans->plans.end())
    return it->second.op ? &it->second : nullptr;
  GemmPlan plan;
  bool ok;
  if (key.type == GemmType::kF32)
    // Pedantic fp32 first (no TF32, no reduced-precision shortcuts); plain
    // CUBLAS_COMPUTE_32F (also no TF32) where no pedantic algorithm exists.
    ok = buildPlan(ctx, key, CUBLAS_COMPUTE_32F_PEDANTIC, bias, aux, plan) ||
         buildPlan(ctx, key, CUBLAS_COMPUTE_32F, bias, aux, plan);
  else
    ok = buildPlan(ctx, key, CUBLAS_COMPUTE_32F, bias, aux, plan);
  if (!ok)
    plan = GemmPlan{}; // op == nullptr: the fallback kernel
  const GemmPlan &stored =
      ctx.gemmPlans->plans.emplace(key, plan).first->second;
  return stored.op ? &stored : nullptr;
}

void checkShape(CudaContext &ctx, const char *kernel, int64_t batch, int64_t M,
                int64_t N, int64_t K) {
  const int64_t limit = int64_t(INT32_MAX);
  if (batch > limit || M > limit || N > limit || K > limit)
    throw runtime::Error(
        "rank " + std::to_string(ctx.rank) + ": cuda: " + kernel +
        ": a dimension exceeds 2^31 - 1 (batch " + std::to_string(batch) +
        ", M " + std::to_string(M) + ", N " + std::to_string(N) + ", K " +
        std::to_string(K) + ")");
}

/// One cuBLASLt call: C_b = alpha op(A_b) op(B_b) + beta C_b for the batch,
/// strideC != 0 or batch == 1, K >= 1; with an epilogue (bf16, batch 1,
/// alpha 1, beta 0), its bias (bf16 [N]) and auxiliary matrix ([M, N]).
void runGemm(CudaContext &ctx, GemmType type, int64_t batch, bool transA,
             bool transB, int64_t M, int64_t N, int64_t K, const void *A,
             int64_t strideA, const void *B, int64_t strideB, void *C,
             int64_t strideC, float alpha, float beta,
             Epilogue epilogue = Epilogue::kNone, const void *bias = nullptr,
             void *aux = nullptr) {
  const int64_t elem = type == GemmType::kF32 ? 4 : 2;
  if (batch == 1)
    strideA = strideB = strideC = 0;
  GemmKey key{type,
              transA,
              transB,
              M,
              N,
              K,
              batch,
              strideA,
              strideB,
              strideC,
              alignmentOf(A, strideA * elem),
              alignmentOf(B, strideB * elem),
              alignmentOf(C, strideC * elem),
              epilogue,
              bias ? alignmentOf(bias, 0) : 0,
              aux ? alignmentOf(aux, 0) : 0};
  const GemmPlan *plan = planFor(ctx, key, bias, aux);
  if (!plan && epilogue != Epilogue::kNone) {
    // No fused algorithm: the plain GEMM, then the epilogue's own kernel.
    runGemm(ctx, type, batch, transA, transB, M, N, K, A, strideA, B, strideB,
            C, strideC, alpha, beta);
    detail::geluEpilogue(ctx, kernelName(type), epilogue == Epilogue::kBiasGelu,
                         M, N, static_cast<uint16_t *>(C),
                         static_cast<const uint16_t *>(bias),
                         static_cast<uint16_t *>(aux));
    return;
  }
  if (!plan) {
    detail::fallbackGemm(ctx, kernelName(type),
                         type == GemmType::kF32    ? 0
                         : type == GemmType::kBF16 ? 1
                                                   : 2,
                         batch, transA, transB, M, N, K, A, strideA, B, strideB,
                         C, strideC, alpha, beta);
    return;
  }
  setEpiloguePointers(ctx, kernelName(type), plan->op, key, bias, aux);
  LOOM_CUBLAS_CHECK(ctx,
                    cublasLtMatmul(ctx.lt, plan->op, &alpha, B, plan->a, A,
                                   plan->b, &beta, C, plan->c, C, plan->c,
                                   &plan->algo, ctx.ltWorkspace,
                                   CudaContext::kLtWorkspaceBytes, ctx.stream),
                    kernelName(type));
}

void gemmAny(CudaContext &ctx, GemmType type, int64_t batch, bool transA,
             bool transB, int64_t M, int64_t N, int64_t K, const void *A,
             int64_t strideA, const void *B, int64_t strideB, void *C,
             int64_t strideC, float alpha, float beta) {
  const char *kernel = kernelName(type);
  if (batch <= 0 || M <= 0 || N <= 0)
    return;
  checkShape(ctx, kernel, batch, M, N, K);
  const int64_t elem = type == GemmType::kF32 ? 4 : 2;
  auto at = [&](const void *p, int64_t offset) {
    return static_cast<const char *>(p) + offset * elem;
  };
  if (strideC == 0 && batch > 1) {
    if (type != GemmType::kF32) {
      // The CPU kernel writes every batch's product to the one C in turn:
      // the last one stays.
      gemmAny(ctx, type, 1, transA, transB, M, N, K,
              at(A, (batch - 1) * strideA), 0, at(B, (batch - 1) * strideB), 0,
              C, 0, alpha, beta);
      return;
    }
    // fp32: the batches apply in order to the one C (beta each time).
    for (int64_t b = 0; b < batch; ++b)
      gemmAny(ctx, type, 1, transA, transB, M, N, K, at(A, b * strideA), 0,
              at(B, b * strideB), 0, C, 0, alpha, beta);
    return;
  }
  if (K <= 0) {
    // No products: C = beta C (16-bit: beta = 0, C = 0).
    detail::scaleMatrices(ctx, kernel, type == GemmType::kF32 ? 0 : 1, C, batch,
                          M * N, strideC, type == GemmType::kF32 ? beta : 0.0f);
    return;
  }
  runGemm(ctx, type, batch, transA, transB, M, N, K, A, strideA, B, strideB, C,
          strideC, alpha, beta);
}

} // namespace

void gemm(CudaContext &ctx, int64_t batch, bool transA, bool transB, int64_t M,
          int64_t N, int64_t K, const float *A, int64_t strideA, const float *B,
          int64_t strideB, float *C, int64_t strideC, float alpha, float beta) {
  gemmAny(ctx, GemmType::kF32, batch, transA, transB, M, N, K, A, strideA, B,
          strideB, C, strideC, alpha, beta);
}

void gemmBf16(CudaContext &ctx, int64_t batch, bool transA, bool transB,
              int64_t M, int64_t N, int64_t K, const uint16_t *A,
              int64_t strideA, const uint16_t *B, int64_t strideB, uint16_t *C,
              int64_t strideC) {
  gemmAny(ctx, GemmType::kBF16, batch, transA, transB, M, N, K, A, strideA, B,
          strideB, C, strideC, 1.0f, 0.0f);
}

void gemmF16(CudaContext &ctx, int64_t batch, bool transA, bool transB,
             int64_t M, int64_t N, int64_t K, const uint16_t *A,
             int64_t strideA, const uint16_t *B, int64_t strideB, uint16_t *C,
             int64_t strideC) {
  gemmAny(ctx, GemmType::kF16, batch, transA, transB, M, N, K, A, strideA, B,
          strideB, C, strideC, 1.0f, 0.0f);
}

namespace {
void gemmGeluAny(CudaContext &ctx, Epilogue epilogue, bool transA, bool transB,
                 int64_t M, int64_t N, int64_t K, const uint16_t *A,
                 const uint16_t *B, const uint16_t *bias, uint16_t *C,
                 uint16_t *aux) {
  const char *kernel = epilogue == Epilogue::kBiasGelu ? "gemm_bias_gelu_bf16"
                                                       : "gemm_gelu_grad_bf16";
  if (M <= 0 || N <= 0)
    return;
  checkShape(ctx, kernel, 1, M, N, K);
  if (K <= 0) {
    // A zero product, then the epilogue on it.
    detail::scaleMatrices(ctx, kernel, 1, C, 1, M * N, 0, 0.0f);
    detail::geluEpilogue(ctx, kernel, epilogue == Epilogue::kBiasGelu, M, N, C,
                         bias, aux);
    return;
  }
  runGemm(ctx, GemmType::kBF16, 1, transA, transB, M, N, K, A, 0, B, 0, C, 0,
          1.0f, 0.0f, epilogue, bias, aux);
}
} // namespace

void gemmBiasGeluBf16(CudaContext &ctx, bool transA, bool transB, int64_t M,
                      int64_t N, int64_t K, const uint16_t *A,
                      const uint16_t *B, const uint16_t *bias, uint16_t *Y,
                      uint16_t *pre) {
  gemmGeluAny(ctx, Epilogue::kBiasGelu, transA, transB, M, N, K, A, B, bias, Y,
              pre);
}

void gemmGeluGradBf16(CudaContext &ctx, bool transA, bool transB, int64_t M,
                      int64_t N, int64_t K, const uint16_t *A,
                      const uint16_t *B, const uint16_t *pre, uint16_t *D) {
  gemmGeluAny(ctx, Epilogue::kGeluGrad, transA, transB, M, N, K, A, B, nullptr,
              D, const_cast<uint16_t *>(pre));
}

} // namespace loom::cuda
