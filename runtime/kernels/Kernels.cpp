//===- Kernels.cpp - the C ABI's CPU kernels (float32) --------------------===//
//
// Each loom_* function of runtime/abi/loom_abi.h (but loom_error and
// loom_step, which Context.cpp owns) instantiates the float template of
// Kernels.h. The GEMM goes to oneDNN's sgemm when the build found it.
//
//===----------------------------------------------------------------------===//
#include "runtime/kernels/Kernels.h"

#include <limits>

#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if LOOM_HAVE_DNNL
#include <dnnl.h>
#include <dnnl.hpp>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace kn = loom::kernels;

#include "runtime/kernels/Threads.h"

namespace {

using namespace loom::kernels::threads;

/// Turns a template's complaint into the context's error.
void report(loom_ctx *ctx, const char *op, const std::string &problem) {
  if (!problem.empty())
    loom_error(ctx, op, problem.c_str());
}

//===----------------------------------------------------------------------===//
// Attention heads, compiled for the CPU's vector ISA
//===----------------------------------------------------------------------===//
//
// The per-head attention functions of Kernels.h, instantiated for float with
// the portable SIMD shape and, on x86-64, for AVX2+FMA and AVX-512; the CPU
// picks one at the first call (LOOM_ATTENTION_ISA=portable|avx2|avx512 asks
// for one the CPU supports, for benchmarks). The per-head templates' helpers
// are forced inline, so each wrapper below compiles them for its ISA; the
// GEMMs are compiled once per ISA (Avx2Gemm, Avx512Gemm). Results are the
// same for any thread count on one CPU; the portable build (no FMA
// contraction) differs from the AVX ones in the last bits.

using AttentionProblemF = kn::detail::AttentionProblem<float>;

struct AttentionHeadsF {
  kn::detail::AttentionForwardHead<float> forward;
  kn::detail::AttentionBackwardHead<float> backward;
};

#if defined(__GNUC__) && defined(__x86_64__)
#define LOOM_ATTENTION_X86 1
#define LOOM_AVX2 __attribute__((target("avx2,fma")))
#define LOOM_AVX512                                                            \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

/// SmallGemm's counterpart for one ISA: the same smallGemm, with the
/// shape that suits the ISA's registers, compiled for it.
#define LOOM_SMALL_GEMM(Name, Target, Simd)                                    \
  struct Name {                                                                \
    Target __attribute__((noinline)) static void                               \
    nn(int64_t M, int64_t N, int64_t kDim, const float *A, int64_t lda,        \
       const float *B, int64_t ldb, float *C, int64_t ldc, float alpha) {      \
      kn::detail::smallGemm<float, Simd, false, false>(M, N, kDim, A, lda, B,  \
                                                       ldb, C, ldc, alpha);    \
    }                                                                          \
    Target __attribute__((noinline)) static void                               \
    nnAdd(int64_t M, int64_t N, int64_t kDim, const float *A, int64_t lda,     \
          const float *B, int64_t ldb, float *C, int64_t ldc) {                \
      kn::detail::smallGemm<float, Simd, false, true>(M, N, kDim, A, lda, B,   \
                                                      ldb, C, ldc, 1.0f);      \
    }                                                                          \
    Target __attribute__((noinline)) static void                               \
    tn(int64_t M, int64_t N, int64_t kDim, const float *A, int64_t lda,        \
       const float *B, int64_t ldb, float *C, int64_t ldc, float alpha) {      \
      kn::detail::smallGemm<float, Simd, true, false>(M, N, kDim, A, lda, B,   \
                                                      ldb, C, ldc, alpha);     \
    }                                                                          \
  };

// Register tiles: 6 x 16 floats in 12 of AVX2's 16 registers, 8 x 32 in 16
// of AVX-512's 32 (measured best of the shapes tried on these sizes).
using Avx2Simd = kn::detail::SimdShape<32, 2, 6>;
using Avx512Simd = kn::detail::SimdShape<64, 2, 8>;
LOOM_SMALL_GEMM(Avx2Gemm, LOOM_AVX2, Avx2Simd)
LOOM_SMALL_GEMM(Avx512Gemm, LOOM_AVX512, Avx512Simd)

LOOM_AVX2 void forwardHeadAvx2(const AttentionProblemF &p, int64_t bh,
                               float *scratch) {
  kn::detail::attentionHeadForward<float, Avx2Gemm>(p, bh, scratch);
}
LOOM_AVX2 void backwardHeadAvx2(const AttentionProblemF &p, int64_t bh,
                                float *scratch, double *scratchDouble) {
  kn::detail::attentionHeadBackward<float, Avx2Gemm>(p, bh, scratch,
                                                     scratchDouble);
}
LOOM_AVX512 void forwardHeadAvx512(const AttentionProblemF &p, int64_t bh,
                                   float *scratch) {
  kn::detail::attentionHeadForward<float, Avx512Gemm>(p, bh, scratch);
}
LOOM_AVX512 void backwardHeadAvx512(const AttentionProblemF &p, int64_t bh,
                                    float *scratch, double *scratchDouble) {
  kn::detail::attentionHeadBackward<float, Avx512Gemm>(p, bh, scratch,
                                                       scratchDouble);
}
#endif

AttentionHeadsF pickAttentionHeads() {
  using Portable = kn::detail::AttentionHeads<
      float, kn::detail::SmallGemm<float, kn::detail::PortableSimd>>;
  const AttentionHeadsF portable = {&Portable::forward, &Portable::backward};
#ifdef LOOM_ATTENTION_X86
  __builtin_cpu_init();
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq");
  const AttentionHeadsF avx2Heads = {&forwardHeadAvx2, &backwardHeadAvx2};
  const AttentionHeadsF avx512Heads = {&forwardHeadAvx512, &backwardHeadAvx512};
  if (const char *wanted = std::getenv("LOOM_ATTENTION_ISA")) {
    if (std::strcmp(wanted, "portable") == 0)
      return portable;
    if (std::strcmp(wanted, "avx2") == 0 && avx2)
      return avx2Heads;
    if (std::strcmp(wanted, "avx512") == 0 && avx512)
      return avx512Heads;
  }
  if (avx512)
    return avx512Heads;
  if (avx2)
    return avx2Heads;
#endif
  return portable;
}

const AttentionHeadsF &attentionHeads() {
  static const AttentionHeadsF heads = pickAttentionHeads();
  return heads;
}

/// A dropout rate outside [0, 1] is an error.
bool checkDropoutRate(loom_ctx *ctx, float p) {
  if (p >= 0.0f && p <= 1.0f)
    return true;
  loom_error(ctx, "dropout",
             ("p = " + std::to_string(p) + " is outside [0, 1]").c_str());
  return false;
}

} // namespace

extern "C" {

//===----------------------------------------------------------------------===//
// GEMM
//===----------------------------------------------------------------------===//

void loom_gemm(loom_ctx *ctx, int64_t batch, int32_t transA, int32_t transB,
               int64_t M, int64_t N, int64_t K, const float *A, int64_t strideA,
               const float *B, int64_t strideB, float *C, int64_t strideC,
               float alpha, float beta) {
  useContextThreads(ctx);
#if LOOM_HAVE_DNNL
  // oneDNN wants K >= 1 (leading dimensions >= 1); K == 0 and empty shapes
  // take the reference path, which handles them.
  if (batch > 0 && M > 0 && N > 0 && K > 0) {
    const char ta = transA ? 'T' : 'N', tb = transB ? 'T' : 'N';
    const int64_t lda = transA ? M : K, ldb = transB ? K : N;
    auto one = [&](int64_t b) {
      return dnnl_sgemm(ta, tb, M, N, K, alpha, A + b * strideA, lda,
                        B + b * strideB, ldb, beta, C + b * strideC, N);
    };
    dnnl_status_t status = dnnl_success;
    const OneThreadIfSmall alone(batch * M * N * K);
    // Many small products (attention-sized): one whole product per thread.
    // Otherwise one product at a time, each parallel inside oneDNN.
    if (!alone.active && batch > 1 && strideC != 0 &&
        M * N * K <= (int64_t(1) << 18)) {
      int failures = 0;
#pragma omp parallel for schedule(static) reduction(+ : failures)
      for (int64_t b = 0; b < batch; ++b)
        failures += one(b) != dnnl_success;
      if (failures)
        status = dnnl_runtime_error;
    } else {
      for (int64_t b = 0; b < batch && status == dnnl_success; ++b)
        status = one(b);
    }
    if (status != dnnl_success)
      loom_error(
          ctx, "gemm",
          ("oneDNN sgemm failed with status " + std::to_string(int(status)))
              .c_str());
    return;
  }
#endif
  kn::gemm<float>(batch, transA != 0, transB != 0, M, N, K, A, strideA, B,
                  strideB, C, strideC, alpha, beta);
}

//===----------------------------------------------------------------------===//
// Normalisation and softmax
//===----------------------------------------------------------------------===//

void loom_layer_norm_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                         const float *x, const float *gain, const float *bias,
                         float eps, float *y, float *mean, float *rstd) {
  useContextThreads(ctx);
  kn::layerNormForward<float>(rows, cols, x, gain, bias, eps, y, mean, rstd);
}

void loom_layer_norm_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                         const float *dy, const float *x, const float *gain,
                         const float *mean, const float *rstd, float *dx,
                         float *dgain, float *dbias) {
  useContextThreads(ctx);
  kn::layerNormBackward<float>(rows, cols, dy, x, gain, mean, rstd, dx, dgain,
                               dbias);
}

void loom_rms_norm_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                       const float *x, const float *gain, float eps, float *y,
                       float *rstd) {
  useContextThreads(ctx);
  kn::rmsNormForward<float>(rows, cols, x, gain, eps, y, rstd);
}

void loom_rms_norm_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                       const float *dy, const float *x, const float *gain,
                       const float *rstd, float *dx, float *dgain) {
  useContextThreads(ctx);
  kn::rmsNormBackward<float>(rows, cols, dy, x, gain, rstd, dx, dgain);
}

void loom_softmax_fwd(loom_ctx *ctx, int64_t rows, int64_t cols, const float *x,
                      float *y) {
  useContextThreads(ctx);
  kn::softmaxForward<float>(rows, cols, x, y);
}

void loom_softmax_bwd(loom_ctx *ctx, int64_t rows, int64_t cols, const float *y,
                      const float *dy, float *dx) {
  useContextThreads(ctx);
  kn::softmaxBackward<float>(rows, cols, y, dy, dx);
}

void loom_log_softmax_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                          const float *x, float *y) {
  useContextThreads(ctx);
  kn::logSoftmaxForward<float>(rows, cols, x, y);
}

void loom_log_softmax_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                          const float *y, const float *dy, float *dx) {
  useContextThreads(ctx);
  kn::logSoftmaxBackward<float>(rows, cols, y, dy, dx);
}

//===----------------------------------------------------------------------===//
// Losses and embedding
//===----------------------------------------------------------------------===//

void loom_cross_entropy_fwd(loom_ctx *ctx, int64_t rows, int64_t classes,
                            const float *logits, const int32_t *target,
                            int64_t ignore_index, float *loss, float *lse,
                            float *stats) {
  useContextThreads(ctx);
  report(ctx, "cross_entropy",
         kn::crossEntropyForward<float>(rows, classes, logits, target,
                                        ignore_index, loss, lse, stats));
}

void loom_cross_entropy_bwd(loom_ctx *ctx, int64_t rows, int64_t classes,
                            const float *logits, const int32_t *target,
                            int64_t ignore_index, const float *lse,
                            const float *dloss, float *dlogits) {
  useContextThreads(ctx);
  report(ctx, "cross_entropy",
         kn::crossEntropyBackward<float>(rows, classes, logits, target,
                                         ignore_index, lse, dloss, dlogits));
}

void loom_cross_entropy_fwd_bf16(loom_ctx *ctx, int64_t rows, int64_t classes,
                                 const uint16_t *logits, const int32_t *target,
                                 int64_t ignore_index, float *loss, float *lse,
                                 float *stats) {
  useContextThreads(ctx);
  report(ctx, "cross_entropy",
         kn::crossEntropyForward<float, uint16_t>(rows, classes, logits, target,
                                                  ignore_index, loss, lse, stats));
}

void loom_cross_entropy_bwd_bf16(loom_ctx *ctx, int64_t rows, int64_t classes,
                                 const uint16_t *logits, const int32_t *target,
                                 int64_t ignore_index, const float *lse,
                                 const float *dloss, uint16_t *dlogits) {
  useContextThreads(ctx);
  report(ctx, "cross_entropy",
         kn::crossEntropyBackward<float, uint16_t, uint16_t>(
             rows, classes, logits, target, ignore_index, lse, dloss, dlogits));
}

void loom_embedding_fwd(loom_ctx *ctx, int64_t n, int64_t vocab, int64_t dim,
                        const int32_t *ids, const float *table, float *out) {
  useContextThreads(ctx);
  report(ctx, "embedding",
         kn::embeddingForward<float>(n, vocab, dim, ids, table, out));
}

void loom_embedding_bwd(loom_ctx *ctx, int64_t n, int64_t vocab, int64_t dim,
                        const int32_t *ids, const float *dout, float *dtable) {
  useContextThreads(ctx);
  report(ctx, "embedding",
         kn::embeddingBackward<float>(n, vocab, dim, ids, dout, dtable));
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

void loom_attention_fwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t Tq,
                        int64_t Tk, int64_t D, int64_t Dv, int32_t causal,
                        const float *q, const float *k, const float *v,
                        float *out, float *lse) {
  useContextThreads(ctx);
  auto p = kn::detail::attentionProblem<float>(B, H, Tq, Tk, D, Dv, causal != 0,
                                               q, k, v);
  p.out = out, p.lse = lse;
  kn::detail::attentionForwardWith(p, attentionHeads().forward);
}

void loom_attention_bwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t Tq,
                        int64_t Tk, int64_t D, int64_t Dv, int32_t causal,
                        const float *q, const float *k, const float *v,
                        const float *out, const float *lse, const float *dout,
                        float *dq, float *dk, float *dv) {
  useContextThreads(ctx);
  auto p = kn::detail::attentionProblem<float>(B, H, Tq, Tk, D, Dv, causal != 0,
                                               q, k, v);
  p.savedOut = out, p.savedLse = lse;
  p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv;
  kn::detail::attentionBackwardWith(p, attentionHeads().backward);
}

void loom_gated_attention_fwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t T,
                              int64_t D, int64_t Dv, int32_t causal,
                              float threshold, const float *q, const float *k,
                              const float *v, const float *wg, const float *bg,
                              float *out, float *lse, float *gate,
                              float *attn) {
  useContextThreads(ctx);
  auto p = kn::detail::gatedAttentionProblem<float>(B, H, T, D, Dv, causal != 0,
                                                    threshold, q, k, v, wg, bg);
  p.out = attn, p.lse = lse, p.gate = gate, p.gateOut = gate;
  p.gatedOut = out;
  kn::detail::attentionForwardWith(p, attentionHeads().forward);
}

void loom_gated_attention_bwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t T,
                              int64_t D, int64_t Dv, int32_t causal,
                              float threshold, const float *q, const float *k,
                              const float *v, const float *wg,
                              const float * /*bg: the saved gate has it*/,
                              const float *lse, const float *gate,
                              const float *attn, const float *dout, float *dq,
                              float *dk, float *dv, float *dwg, float *dbg) {
  useContextThreads(ctx);
  auto p = kn::detail::gatedAttentionProblem<float>(
      B, H, T, D, Dv, causal != 0, threshold, q, k, v, wg, nullptr);
  p.savedOut = attn, p.savedLse = lse, p.gate = gate;
  p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv;
  kn::detail::attentionBackwardWith(p, attentionHeads().backward, dwg, dbg);
}

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

void loom_dropout_fwd(loom_ctx *ctx, int64_t n, float p, uint64_t key,
                      const float *x, float *y) {
  useContextThreads(ctx);
  if (!checkDropoutRate(ctx, p))
    return;
  kn::dropoutForward<float>(n, p, ctx ? ctx->seed : 0, key,
                            ctx ? loom_step(ctx) : 0, x, y);
}

void loom_dropout_bwd(loom_ctx *ctx, int64_t n, float p, uint64_t key,
                      const float *dy, float *dx) {
  useContextThreads(ctx);
  if (!checkDropoutRate(ctx, p))
    return;
  kn::dropoutBackward<float>(n, p, ctx ? ctx->seed : 0, key,
                             ctx ? loom_step(ctx) : 0, dy, dx);
}

//===----------------------------------------------------------------------===//
// Optimizers
//===----------------------------------------------------------------------===//

void loom_adamw(loom_ctx *ctx, int64_t n, float *param, const float *grad,
                float *m, float *v, float lr, float beta1, float beta2,
                float eps, float weight_decay, float grad_scale, int64_t t) {
  useContextThreads(ctx);
  kn::adamwStep<float>(n, param, grad, m, v, lr, beta1, beta2, eps,
                       weight_decay, grad_scale, t);
}

void loom_sgd(loom_ctx *ctx, int64_t n, float *param, const float *grad,
              float *buf, float lr, float momentum, int32_t nesterov,
              float weight_decay, float grad_scale, int32_t first) {
  useContextThreads(ctx);
  kn::sgdStep<float>(n, param, grad, buf, lr, momentum, nesterov != 0,
                     weight_decay, grad_scale, first != 0);
}

double loom_sum_squares(loom_ctx *ctx, int64_t n, const float *x) {
  useContextThreads(ctx);
  // The documented poison hook: the sum of squares feeds the overflow check.
  if (ctx && ctx->poisonStep != 0 && ctx->step >= ctx->poisonStep &&
      ctx->step <= ctx->poisonLast &&
      (ctx->poisonRank < 0 || ctx->poisonRank == ctx->rank))
    return std::numeric_limits<double>::quiet_NaN();
  return kn::sumSquares<float>(n, x);
}

} // extern "C"

