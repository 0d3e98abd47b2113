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

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace kn = loom::kernels;

namespace {

/// Runs the kernels of this call on ctx->threads OpenMP threads (the rank's
/// thread budget); a context without one keeps the OpenMP default.
/// Multiply-adds below which a product runs on the calling thread alone:
/// waking the other OpenMP threads (futex waits under
/// OMP_WAIT_POLICY=passive) costs more than the product (the MLP's eval
/// step at batch 64: 0.2 ms on 2 threads, 0.02 ms on one).
constexpr int64_t kSmallGemmWork = int64_t(1) << 20;

/// While alive, oneDNN (and any OpenMP region) runs on one thread when
/// `work` is below kSmallGemmWork.
class OneThreadIfSmall {
public:
  explicit OneThreadIfSmall(int64_t work) {
#ifdef _OPENMP
    threads_ = omp_get_max_threads();
    active = work < kSmallGemmWork && threads_ > 1;
    if (active)
      omp_set_num_threads(1);
#else
    (void)work;
#endif
  }
  ~OneThreadIfSmall() {
#ifdef _OPENMP
    if (active)
      omp_set_num_threads(threads_);
#endif
  }
  OneThreadIfSmall(const OneThreadIfSmall &) = delete;
  OneThreadIfSmall &operator=(const OneThreadIfSmall &) = delete;
  bool active = false;

private:
  int threads_ = 1;
};

void useContextThreads(loom_ctx *ctx) {
#ifdef _OPENMP
  if (ctx && ctx->threads > 0 && omp_get_max_threads() != ctx->threads)
    omp_set_num_threads(ctx->threads);
#else
  (void)ctx;
#endif
}

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
// INT8 inference
//===----------------------------------------------------------------------===//

} // extern "C"

#if LOOM_HAVE_DNNL
namespace {
/// INT8 products as oneDNN matmul primitives with the weights reordered
/// once into the primitive's layout: one entry per (weights, M, N, K).
/// The primitive has no attributes (UINT8 x INT8 -> INT32), which lets
/// oneDNN pick its AMX or VNNI brgemm kernels (a run-time zero point or
/// run-time scales send it to a slower gemm); the zero point and the scales
/// are applied after it, with the weights' column sums.
/// loom_quantize_weight_s8, the only writer of INT8 weights, drops the
/// entries of the weights it rewrites.
struct QMatmul {
  dnnl::matmul primitive;
  dnnl::memory packed;
  std::vector<int32_t> columnSums; ///< sum_k wq[k, n]
};
struct QMatmulCache {
  std::mutex lock;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<std::tuple<const void *, int64_t, int64_t, int64_t>,
           std::unique_ptr<QMatmul>>
      entries;
};
QMatmulCache &qmatmulCache() {
  static QMatmulCache cache;
  return cache;
}
void forgetWeights(const void *wq) {
  QMatmulCache &c = qmatmulCache();
  std::lock_guard<std::mutex> g(c.lock);
  for (auto it = c.entries.begin(); it != c.entries.end();)
    it = std::get<0>(it->first) == wq ? c.entries.erase(it) : std::next(it);
}

/// y[m, n] = float(acc[m, n] - zp * sums[n]) * scales[n]: the exact
/// integer product of (xq - zp) and wq, dequantized once.
__attribute__((target_clones("avx512f", "avx2", "default"))) void
dequantizeRows(int64_t rows, int64_t N, const int32_t *acc, int32_t zp,
               const int32_t *sums, const float *scales, float *y) {
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t *a = acc + m * N;
    float *out = y + m * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n)
      out[n] = float(a[n] - zp * sums[n]) * scales[n];
  }
}

/// y = scales[n] * (xq - zp) @ wq through the cached primitive.
void qmatmulPrimitive(int64_t M, int64_t N, int64_t K, const uint8_t *xq,
                      int32_t zp, const int8_t *wq, const float *scales,
                      float *y) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  QMatmulCache &c = qmatmulCache();
  std::lock_guard<std::mutex> g(c.lock);
  auto &entry = c.entries[{wq, M, N, K}];
  dnnl::stream &stream = c.stream;
  if (!entry) {
    dnnl::memory::desc src({M, K}, dt::u8, tag::ab);
    dnnl::memory::desc weights({K, N}, dt::s8, tag::any);
    dnnl::memory::desc dst({M, N}, dt::s32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst),
                                    c.engine);
    auto made = std::make_unique<QMatmul>();
    made->primitive = dnnl::matmul(pd);
    made->packed = dnnl::memory(pd.weights_desc(), c.engine);
    dnnl::memory user({{K, N}, dt::s8, tag::ab}, c.engine,
                      const_cast<int8_t *>(wq));
    dnnl::reorder(user, made->packed).execute(stream, user, made->packed);
    made->columnSums.assign(size_t(N), 0);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n)
        made->columnSums[size_t(n)] += wq[k * N + n];
    entry = std::move(made);
  }
  thread_local std::vector<int32_t> accBuffer;
  accBuffer.resize(size_t(M * N));
  dnnl::memory src({{M, K}, dt::u8, tag::ab}, c.engine,
                   const_cast<uint8_t *>(xq));
  dnnl::memory dst({{M, N}, dt::s32, tag::ab}, c.engine, accBuffer.data());
  entry->primitive.execute(stream, {{DNNL_ARG_SRC, src},
                                    {DNNL_ARG_WEIGHTS, entry->packed},
                                    {DNNL_ARG_DST, dst}});
  stream.wait();
  // Pointers taken here: accBuffer is this thread's, not the workers'.
  const int32_t *acc = accBuffer.data(), *sums = entry->columnSums.data();
  const int64_t block =
      std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(N, 1));
#pragma omp parallel for schedule(static) if (M * N >= 4 * kn::kParallelWork)
  for (int64_t m0 = 0; m0 < M; m0 += block)
    dequantizeRows(std::min(block, M - m0), N, acc + m0 * N, zp, sums, scales,
                   y + m0 * N);
}
} // namespace
#endif

extern "C" {

} // extern "C"

namespace {
/// xq[i] = clamp(round_half_even(x[i] * inv) + z, 0, 255), with
/// round_half_even(v) as (v + 1.5 * 2^23) - 1.5 * 2^23 (exact for |v| <
/// 2^22; larger values stay beyond the clamp either way) and the clamp as
/// selects, so that it vectorizes; cloned for AVX-512 and AVX2 (the
/// baseline build is SSE2).
__attribute__((target_clones("avx512f", "avx2", "default"))) void
quantizeU8(int64_t n, const float *x, float inv, float z, float qmin,
           float qmax, uint8_t *xq) {
  const float magic = 12582912.0f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float q = ((x[i] * inv + magic) - magic) + z;
    q = q > qmin ? q : qmin;
    q = q < qmax ? q : qmax;
    xq[i] = uint8_t(int32_t(q));
  }
}

/// An activation's per-tensor quantization from its observed range
/// (SEMANTICS.md, quantization; torch's MinMaxObserver.calculate_qparams):
/// the range widened to include 0, then affine UINT8 [0, 255] or symmetric
/// [-127, 127] with zero point 0.
struct ActivationQuant {
  float scale, zeroPoint, qmin, qmax;
};
ActivationQuant activationQuant(float lo, float hi, bool symmetric) {
  const float eps = std::numeric_limits<float>::epsilon();
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  if (symmetric)
    return {std::max(std::max(-lo, hi) / 127.0f, eps), 0.0f, -127.0f, 127.0f};
  const float s = std::max((hi - lo) / 255.0f, eps);
  return {s, std::min(255.0f, std::max(0.0f, std::nearbyint(-lo / s))), 0.0f,
          255.0f};
}

/// scale[n] = max(max_k |w[k, n]| / 127, eps) for w [K, N]; the index of
/// the first non-finite element, or -1.
int64_t weightScales(int64_t K, int64_t N, const float *w, float *scale) {
  const float eps = std::numeric_limits<float>::epsilon();
  int64_t bad = -1;
#pragma omp parallel for schedule(static) if (K * N >= kn::kParallelWork)
  for (int64_t n = 0; n < N; ++n) {
    float top = 0;
    for (int64_t k = 0; k < K; ++k) {
      const float v = w[k * N + n];
      if (!std::isfinite(v)) {
#pragma omp critical(loom_weight_scale_bad)
        if (bad < 0 || k * N + n < bad)
          bad = k * N + n;
      }
      top = std::max(top, std::fabs(v));
    }
    scale[n] = std::max(top / 127.0f, eps);
  }
  return bad;
}

/// The batch's [min, max] into lo, hi; the index of a NaN, or -1.
int64_t batchRange(int64_t n, const float *x, float &lo, float &hi) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i]))
      return i;
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  return -1;
}

void qgemm(loom_ctx *ctx, int64_t M, int64_t N, int64_t K, const float *x,
           const float *range, bool symmetric, const int8_t *wq,
           const float *wscale, float *y);
} // namespace

extern "C" {

void loom_quantize_weight_s8(loom_ctx *ctx, int64_t K, int64_t N,
                             const float *w, int8_t *wq, float *scale) {
  useContextThreads(ctx);
  if (K < 0 || N < 0) {
    loom_error(ctx, "quantize_weight_s8", "negative size");
    return;
  }
#if LOOM_HAVE_DNNL
  forgetWeights(wq);
#endif
  const int64_t bad = weightScales(K, N, w, scale);
  if (bad >= 0) {
    loom_error(ctx, "quantize_weight_s8",
               ("weight element " + std::to_string(bad) + " is not finite")
                   .c_str());
    return;
  }
#pragma omp parallel for schedule(static) if (K * N >= kn::kParallelWork)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const float q = std::nearbyint(w[k * N + n] * (1.0f / scale[n]));
      wq[k * N + n] = int8_t(std::min(127.0f, std::max(-127.0f, q)));
    }
}

void loom_weight_scale_s8(loom_ctx *ctx, int64_t K, int64_t N, const float *w,
                          float *scale) {
  useContextThreads(ctx);
  if (K < 0 || N < 0) {
    loom_error(ctx, "weight_scale_s8", "negative size");
    return;
  }
  const int64_t bad = weightScales(K, N, w, scale);
  if (bad >= 0)
    loom_error(ctx, "weight_scale_s8",
               ("weight element " + std::to_string(bad) + " is not finite")
                   .c_str());
}

void loom_observe_range(loom_ctx *ctx, int64_t n, const float *x,
                        const float *range, float *out) {
  float lo = range[0], hi = range[1];
  if (int64_t nan = batchRange(n, x, lo, hi); nan >= 0) {
    loom_error(ctx, "observe_range",
               ("activation element " + std::to_string(nan) + " is NaN")
                   .c_str());
    return;
  }
  out[0] = lo;
  out[1] = hi;
}

void loom_observe_ema(loom_ctx *ctx, int64_t n, const float *x,
                      const float *range, float momentum, int64_t freeze,
                      float *out) {
  const int64_t step = loom_step(ctx);
  const float r0 = range[0], r1 = range[1];
  if (freeze >= 0 && step > freeze) {
    out[0] = r0;
    out[1] = r1;
    return;
  }
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  if (int64_t nan = batchRange(n, x, lo, hi); nan >= 0) {
    loom_error(ctx, "observe_ema",
               ("activation element " + std::to_string(nan) +
                " is NaN at step " + std::to_string(step))
                   .c_str());
    return;
  }
  if (n == 0) {
    out[0] = r0;
    out[1] = r1;
  } else if (step <= 1) {
    out[0] = lo;
    out[1] = hi;
  } else {
    out[0] = r0 + momentum * (lo - r0);
    out[1] = r1 + momentum * (hi - r1);
  }
}

void loom_range_qparams(loom_ctx *ctx, const float *range, int32_t symmetric,
                        float *scale, float *zeroPoint) {
  (void)ctx;
  const ActivationQuant q = activationQuant(range[0], range[1], symmetric != 0);
  *scale = q.scale;
  *zeroPoint = q.zeroPoint;
}

void loom_qgemm_u8s8(loom_ctx *ctx, int64_t M, int64_t N, int64_t K,
                     const float *x, const float *range, const int8_t *wq,
                     const float *wscale, float *y) {
  qgemm(ctx, M, N, K, x, range, /*symmetric=*/false, wq, wscale, y);
}

void loom_qgemm_u8s8_symmetric(loom_ctx *ctx, int64_t M, int64_t N, int64_t K,
                               const float *x, const float *range,
                               const int8_t *wq, const float *wscale,
                               float *y) {
  qgemm(ctx, M, N, K, x, range, /*symmetric=*/true, wq, wscale, y);
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

namespace {
/// loom_qgemm_u8s8 and its symmetric form: a symmetric activation's
/// integers [-127, 127] are stored as UINT8 with 128 added (zero point 128,
/// bounds [1, 255]), which leaves every product unchanged.
void qgemm(loom_ctx *ctx, int64_t M, int64_t N, int64_t K, const float *x,
           const float *range, bool symmetric, const int8_t *wq,
           const float *wscale, float *y) {
  useContextThreads(ctx);
  if (M < 0 || N < 0 || K < 0) {
    loom_error(ctx, "qgemm_u8s8", "negative size");
    return;
  }
  // The activation's quantization (SEMANTICS.md: per-tensor affine UINT8,
  // or symmetric).
  if (!std::isfinite(range[0]) || !std::isfinite(range[1])) {
    loom_error(ctx, "qgemm_u8s8",
               "the activation range is not finite (not calibrated?)");
    return;
  }
  const ActivationQuant aq = activationQuant(range[0], range[1], symmetric);
  const float shift = symmetric ? 128.0f : 0.0f;
  const float s = aq.scale, z = aq.zeroPoint + shift;
  const float qmin = aq.qmin + shift, qmax = aq.qmax + shift;
  const float inv = 1.0f / s;
  // Scratch of the calling thread (its pointers go to the OpenMP workers).
  thread_local std::vector<uint8_t> xqBuffer;
  xqBuffer.resize(size_t(M * K));
  uint8_t *xq = xqBuffer.data();
  // Blocks of the activation, each quantized by the widest vector code
  // this CPU runs (quantizeU8's clones).
  const int64_t total = M * K, block = int64_t(1) << 14;
  const int64_t blocks = (total + block - 1) / block;
#pragma omp parallel for schedule(static) if (total >= 4 * kn::kParallelWork)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t at = b * block;
    quantizeU8(std::min(block, total - at), x + at, inv, z, qmin, qmax,
               xq + at);
  }
  const uint8_t zp = uint8_t(z);
#if LOOM_HAVE_DNNL
  // Without VNNI, oneDNN's u8s8s32 kernels sum pairs of products in 16 bits
  // and may saturate: exact INT32 accumulation needs VNNI (or AMX's CPUs,
  // which have it), else the loop below.
  static const bool vnni = __builtin_cpu_supports("avx512vnni") ||
                           __builtin_cpu_supports("avxvnni");
  if (vnni && M > 0 && N > 0 && K > 0) {
    // A oneDNN matmul with the weights reordered once (qmatmulPrimitive),
    // the zero point and the per-channel output scales s * wscale[n] as
    // run-time arguments: it writes y itself.
    thread_local std::vector<float> scaleBuffer;
    scaleBuffer.resize(size_t(N));
    for (int64_t n = 0; n < N; ++n)
      scaleBuffer[size_t(n)] = s * wscale[n];
    const OneThreadIfSmall alone(M * N * K);
    try {
      qmatmulPrimitive(M, N, K, xq, int32_t(zp), wq, scaleBuffer.data(), y);
    } catch (const dnnl::error &e) {
      loom_error(ctx, "qgemm_u8s8",
                 (std::string("oneDNN matmul failed: ") + e.what()).c_str());
    }
    return;
  }
#endif
  // Elsewhere: an exact INT32 loop.
  thread_local std::vector<int32_t> accBuffer;
  accBuffer.resize(size_t(M * N));
  int32_t *acc = accBuffer.data();
  {
#pragma omp parallel for schedule(static) if (M * N * K >= kn::kParallelWork)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        int32_t a = 0;
        for (int64_t k = 0; k < K; ++k)
          a += (int32_t(xq[m * K + k]) - int32_t(zp)) *
               int32_t(wq[k * N + n]);
        acc[m * N + n] = a;
      }
  }
#pragma omp parallel for schedule(static) if (M * N >= kn::kParallelWork)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      y[m * N + n] = float(acc[m * N + n]) * (s * wscale[n]);
}
} // namespace
