//===- Int8.cpp - INT8 inference and quantization-aware training kernels --===//
//
// The quantization kernels of runtime/abi/loom_abi.h: INT8 weights and
// their scales, the observers of post-training quantization (min/max) and
// of quantization-aware training (moving average), and the INT8 linear
// layer (loom_qlinear) with its quantize, product and epilogue.
//
// This file is compiled with -ffp-contract=off: quantizing rounds x * (1 /
// s) to float first, as the fake quantization of the training step does,
// never through a fused multiply-add, so that an INT8 artifact reproduces
// the fake-quantized model on every CPU and vector width.
//
//===----------------------------------------------------------------------===//
#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"
#include "runtime/kernels/Kernels.h"
#include "runtime/kernels/Threads.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__)
// GCC 12's AVX-512 headers start some intrinsics from _mm512_undefined_*,
// which -Wmaybe-uninitialized reports at every use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#if LOOM_HAVE_DNNL
#include <dnnl.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#endif

namespace kn = loom::kernels;
using namespace loom::kernels::threads;

#if LOOM_HAVE_DNNL
namespace {
/// The constants a fused INT8 layer's primitive is built with.
struct FusedLayer {
  std::vector<float> scales; ///< per output channel
  int32_t srcZeroPoint = 0, dstZeroPoint = 0;
  bool bias = false, relu = false, quantizedOutput = false;
  bool operator==(const FusedLayer &o) const {
    return scales == o.scales && srcZeroPoint == o.srcZeroPoint &&
           dstZeroPoint == o.dstZeroPoint && bias == o.bias && relu == o.relu &&
           quantizedOutput == o.quantizedOutput;
  }
};

/// INT8 layers as oneDNN matmul primitives (UINT8 x INT8 with INT32
/// accumulation, oneDNN's AMX or VNNI brgemm kernels) whose epilogue is
/// fused: y = relu?(scales[n] * (acc + bias'[n])) as f32, or quantized to
/// UINT8 with the next layer's zero point. Scales and zero points are
/// constants of the primitive (run-time ones send oneDNN 2.6 to a slower
/// gemm), so an entry is rebuilt when they change -- in an inference
/// artifact they are fixed once the weights are prepared. One entry per
/// (weights, M, N, K), the weights reordered once into the primitive's
/// layout; loom_quantize_weight_s8, the only writer of INT8 weights, drops
/// the entries of the weights it rewrites.
struct QMatmul {
  FusedLayer layer;
  dnnl::matmul primitive;
  dnnl::memory packed;
  /// The call's memory objects and arguments, made once; each call points
  /// them at its buffers (a batch-1 call is a few microseconds, so their
  /// construction would be a visible share of it).
  dnnl::memory src, dst, bias;
  std::unordered_map<int, dnnl::memory> args;
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

/// y = the fused layer of xq through its cached primitive; biasAcc is the
/// bias in the accumulator's units (bias[n] / scale of the product).
void fusedMatmul(int64_t M, int64_t N, int64_t K, const uint8_t *xq,
                 const int8_t *wq, const FusedLayer &layer,
                 const float *biasAcc, void *y) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  QMatmulCache &c = qmatmulCache();
  std::lock_guard<std::mutex> g(c.lock);
  auto &entry = c.entries[{wq, M, N, K}];
  dnnl::stream &stream = c.stream;
  const dt out = layer.quantizedOutput ? dt::u8 : dt::f32;
  if (!entry || !(entry->layer == layer)) {
    dnnl::primitive_attr attr;
    attr.set_output_scales(1 << 1, layer.scales);
    attr.set_zero_points(DNNL_ARG_SRC, 0, {layer.srcZeroPoint});
    if (layer.quantizedOutput)
      attr.set_zero_points(DNNL_ARG_DST, 0, {layer.dstZeroPoint});
    if (layer.relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(ops);
    }
    dnnl::memory::desc src({M, K}, dt::u8, tag::ab);
    dnnl::memory::desc weights({K, N}, dt::s8, tag::any);
    dnnl::memory::desc dst({M, N}, out, tag::ab);
    dnnl::matmul::desc desc =
        layer.bias ? dnnl::matmul::desc(src, weights,
                                        {{1, N}, dt::f32, tag::ab}, dst)
                   : dnnl::matmul::desc(src, weights, dst);
    dnnl::matmul::primitive_desc pd(desc, attr, c.engine);
    auto made = std::make_unique<QMatmul>();
    made->layer = layer;
    made->primitive = dnnl::matmul(pd);
    made->packed = dnnl::memory(pd.weights_desc(), c.engine);
    dnnl::memory user({{K, N}, dt::s8, tag::ab}, c.engine,
                      const_cast<int8_t *>(wq));
    dnnl::reorder(user, made->packed).execute(stream, user, made->packed);
    made->src = dnnl::memory({{M, K}, dt::u8, tag::ab}, c.engine,
                             const_cast<uint8_t *>(xq));
    made->dst = dnnl::memory({{M, N}, out, tag::ab}, c.engine, y);
    made->args = {{DNNL_ARG_SRC, made->src},
                  {DNNL_ARG_WEIGHTS, made->packed},
                  {DNNL_ARG_DST, made->dst}};
    if (layer.bias) {
      made->bias = dnnl::memory({{1, N}, dt::f32, tag::ab}, c.engine,
                                const_cast<float *>(biasAcc));
      made->args[DNNL_ARG_BIAS] = made->bias;
    }
    entry = std::move(made);
  }
  entry->src.set_data_handle(const_cast<uint8_t *>(xq));
  entry->dst.set_data_handle(y);
  if (layer.bias)
    entry->bias.set_data_handle(const_cast<float *>(biasAcc));
  entry->primitive.execute(stream, entry->args);
  stream.wait();
}
} // namespace
#endif

namespace {
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

/// scale[c] = max(max_k |w[c * channelStride + k * stride]| / 127, eps)
/// over `count` elements of each of `channels` channels (the columns of a
/// [K, N] matmul weight, the rows of a [O, C*kh*kw] conv weight); the index
/// of the first non-finite element, or -1.
int64_t channelScales(int64_t channels, int64_t count, int64_t channelStride,
                      int64_t stride, const float *w, float *scale) {
  const float eps = std::numeric_limits<float>::epsilon();
  int64_t bad = -1;
#pragma omp parallel for schedule(static) if (channels * count >= kn::kParallelWork)
  for (int64_t c = 0; c < channels; ++c) {
    float top = 0;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t at = c * channelStride + k * stride;
      const float v = w[at];
      if (!std::isfinite(v)) {
#pragma omp critical(loom_weight_scale_bad)
        if (bad < 0 || at < bad)
          bad = at;
      }
      top = std::max(top, std::fabs(v));
    }
    scale[c] = std::max(top / 127.0f, eps);
  }
  return bad;
}

/// The per-column scales of a [K, N] matmul weight.
int64_t weightScales(int64_t K, int64_t N, const float *w, float *scale) {
  return channelScales(N, K, 1, N, w, scale);
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

/// One INT8 linear layer (loom_qlinear's arguments).
struct QLinear {
  int64_t M, N, K;
  const void *x;    ///< f32 [M, K], or UINT8 when inQuantized
  bool inQuantized;
  const float *rangeIn;
  bool symIn;
  const int8_t *wq;
  const float *wscale;
  const float *bias; ///< [N] or null
  bool relu;
  const float *rangeOut; ///< null: f32 output; else UINT8, quantized
  bool symOut;
  void *y;
};
} // namespace

namespace {
/// The UINT8 form of an activation's quantization: a symmetric one's
/// integers [-127, 127] are stored with 128 added (zero point 128, bounds
/// [1, 255]), which leaves every product unchanged.
struct StoredQuant {
  float scale, inv, zeroPoint, qmin, qmax;
};
StoredQuant storedQuant(const float *range, bool symmetric) {
  const ActivationQuant aq = activationQuant(range[0], range[1], symmetric);
  const float shift = symmetric ? 128.0f : 0.0f;
  return {aq.scale, 1.0f / aq.scale, aq.zeroPoint + shift, aq.qmin + shift,
          aq.qmax + shift};
}

/// Quantization as the fake quantization rounds it: q = clamp(round_half_
/// even(v * inv) + z, qmin, qmax), with round_half_even(t) as (t + 1.5 *
/// 2^23) - 1.5 * 2^23 (exact for |t| < 2^22; larger values stay beyond the
/// clamp either way), the product rounded to float first.
inline float quantizeValue(float v, const StoredQuant &q) {
  const float magic = 12582912.0f;
  float t = ((v * q.inv + magic) - magic) + q.zeroPoint;
  t = t > q.qmin ? t : q.qmin;
  return t < q.qmax ? t : q.qmax;
}

#if defined(__x86_64__)
/// quantizeValue on the first n - n % 16 elements; returns that count.
__attribute__((target("avx512f"))) int64_t
quantizeU8Avx512(int64_t n, const float *x, const StoredQuant &q,
                 uint8_t *xq) {
  const __m512 magic = _mm512_set1_ps(12582912.0f), inv = _mm512_set1_ps(q.inv),
               z = _mm512_set1_ps(q.zeroPoint), lo = _mm512_set1_ps(q.qmin),
               hi = _mm512_set1_ps(q.qmax);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 t = _mm512_add_ps(
        _mm512_sub_ps(
            _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv), magic),
            magic),
        z);
    t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
    _mm512_mask_cvtepi32_storeu_epi8(xq + i, __mmask16(0xffff),
                                     _mm512_cvttps_epi32(t));
  }
  return i;
}
#endif

/// The layer's epilogue on one row: v = float(a[n] - zp * sums[n]) *
/// scales[n] (the exact integer product of (xq - zp) and wq, dequantized
/// once), + bias[n], ReLU as max(v, 0), then stored as f32 or quantized to
/// UINT8 -- the roundings of the unfused ops.
template <bool Bias, bool Relu, bool Quantized>
void epilogueRow(int64_t n0, int64_t N, const int32_t *a, int32_t zp,
                 const int32_t *sums, const float *scales, const float *bias,
                 float *yf, uint8_t *yq, const StoredQuant &out) {
  for (int64_t n = n0; n < N; ++n) {
    float v = float(a[n] - zp * sums[n]) * scales[n];
    if constexpr (Bias)
      v = v + bias[n];
    if constexpr (Relu)
      v = v < 0.0f ? 0.0f : v;
    if constexpr (Quantized)
      yq[n] = uint8_t(int32_t(quantizeValue(v, out)));
    else
      yf[n] = v;
  }
}


template <bool Bias, bool Relu, bool Quantized>
void epilogueRowsOf(int64_t rows, int64_t N, const int32_t *acc, int32_t zp,
                    const int32_t *sums, const float *scales, const float *bias,
                    float *yf, uint8_t *yq, const StoredQuant &out) {
  for (int64_t m = 0; m < rows; ++m)
    epilogueRow<Bias, Relu, Quantized>(0, N, acc + m * N, zp, sums, scales,
                                       bias, Quantized ? nullptr : yf + m * N,
                                       Quantized ? yq + m * N : nullptr, out);
}

void epilogueRows(int64_t rows, int64_t N, const int32_t *acc, int32_t zp,
                  const int32_t *sums, const float *scales, const float *bias,
                  bool relu, float *yf, uint8_t *yq, const StoredQuant &out) {
  const int variant = (bias ? 4 : 0) | (relu ? 2 : 0) | (yq ? 1 : 0);
  switch (variant) {
#define LOOM_EPILOGUE(V)                                                       \
  case V:                                                                      \
    return epilogueRowsOf<(V & 4) != 0, (V & 2) != 0, (V & 1) != 0>(           \
        rows, N, acc, zp, sums, scales, bias, yf, yq, out);
    LOOM_EPILOGUE(0)
    LOOM_EPILOGUE(1)
    LOOM_EPILOGUE(2)
    LOOM_EPILOGUE(3)
    LOOM_EPILOGUE(4)
    LOOM_EPILOGUE(5)
    LOOM_EPILOGUE(6)
    LOOM_EPILOGUE(7)
#undef LOOM_EPILOGUE
  }
}

/// xq = the activation x [n] quantized (quantizeValue), sixteen lanes at a
/// time where the CPU has AVX-512F.
void quantizeU8(int64_t n, const float *x, const StoredQuant &q, uint8_t *xq) {
  int64_t i = 0;
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512)
    i = quantizeU8Avx512(n, x, q, xq);
#endif
  for (; i < n; ++i)
    xq[i] = uint8_t(int32_t(quantizeValue(x[i], q)));
}

void qlinear(loom_ctx *ctx, const char *op, const QLinear &q) {
  useContextThreads(ctx);
  const int64_t M = q.M, N = q.N, K = q.K;
  if (M < 0 || N < 0 || K < 0) {
    loom_error(ctx, op, "negative size");
    return;
  }
  for (const float *r : {q.rangeIn, q.rangeOut})
    if (r && (!std::isfinite(r[0]) || !std::isfinite(r[1]))) {
      loom_error(ctx, op,
                 "the activation range is not finite (not calibrated?)");
      return;
    }
  // The input's quantization (SEMANTICS.md: per-tensor affine UINT8, or
  // symmetric), done here unless the producer did it.
  const StoredQuant in = storedQuant(q.rangeIn, q.symIn);
  // Scratch of the calling thread (its pointers go to the OpenMP workers).
  thread_local std::vector<uint8_t> xqBuffer;
  const uint8_t *xq = static_cast<const uint8_t *>(q.x);
  if (!q.inQuantized) {
    uint8_t *buffer = scratch(xqBuffer, M * K);
    const float *x = static_cast<const float *>(q.x);
    // Blocks of the activation, each quantized by the widest vector code
    // this CPU runs.
    const int64_t total = M * K, block = int64_t(1) << 14;
    const int64_t blocks = (total + block - 1) / block;
#pragma omp parallel for schedule(static) if (total >= 4 * kn::kParallelWork)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t at = b * block;
      quantizeU8(std::min(block, total - at), x + at, in, buffer + at);
    }
    xq = buffer;
  }
  const int32_t zp = int32_t(in.zeroPoint);
  const StoredQuant out =
      q.rangeOut ? storedQuant(q.rangeOut, q.symOut) : StoredQuant{};
  thread_local std::vector<float> scaleBuffer;
  float *scales = scratch(scaleBuffer, N);
  for (int64_t n = 0; n < N; ++n)
    scales[n] = in.scale * q.wscale[n];
  // INT8 products run about 8x faster than FP32 ones: they stay on one
  // thread up to 32x the FP32 threshold (waking a second thread costs more
  // than it saves below that).
  const OneThreadIfSmall alone(M * N * K / 32);
#if LOOM_HAVE_DNNL
  // Without VNNI, oneDNN's u8s8s32 kernels sum pairs of products in 16 bits
  // and may saturate: exact INT32 accumulation needs VNNI (or AMX's CPUs,
  // which have it), else the loop below.
  static const bool vnni = __builtin_cpu_supports("avx512vnni") ||
                           __builtin_cpu_supports("avxvnni");
  if (vnni && M > 0 && N > 0 && K > 0) {
    // oneDNN's epilogue is relu?(scale * (acc + bias')): a quantized output's
    // 1 / scale folds into the scale (ReLU commutes with it) and the bias
    // goes into the accumulator's units. Roundings differ from the fake
    // quantization's order by at most one quantization step.
    // Reused: a call compares its constants with the cached primitive's
    // without allocating.
    thread_local FusedLayer layer;
    layer.scales.assign(scales, scales + N);
    if (q.rangeOut)
      for (float &v : layer.scales)
        v *= out.inv;
    layer.srcZeroPoint = zp;
    layer.dstZeroPoint = int32_t(out.zeroPoint);
    layer.bias = q.bias != nullptr;
    layer.relu = q.relu;
    layer.quantizedOutput = q.rangeOut != nullptr;
    thread_local std::vector<float> biasBuffer;
    float *biasAcc = nullptr;
    if (q.bias) {
      biasAcc = scratch(biasBuffer, N);
      for (int64_t n = 0; n < N; ++n)
        biasAcc[n] = q.bias[n] / scales[n];
    }
    try {
      fusedMatmul(M, N, K, xq, q.wq, layer, biasAcc, q.y);
    } catch (const dnnl::error &e) {
      loom_error(ctx, op,
                 (std::string("oneDNN matmul failed: ") + e.what()).c_str());
    }
    return;
  }
#endif
  // Elsewhere: an exact INT32 loop, then the epilogue in the fake
  // quantization's order.
  thread_local std::vector<int32_t> accBuffer, sumBuffer;
  int32_t *acc = scratch(accBuffer, M * N);
  int32_t *sums = scratch(sumBuffer, N);
  std::fill(sums, sums + N, 0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n)
      sums[n] += q.wq[k * N + n];
  const int8_t *wq = q.wq;
#pragma omp parallel for schedule(static) if (M * N * K >= kn::kParallelWork)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int32_t a = 0;
      for (int64_t k = 0; k < K; ++k)
        a += int32_t(xq[m * K + k]) * int32_t(wq[k * N + n]);
      acc[m * N + n] = a;
    }
  float *yf = q.rangeOut ? nullptr : static_cast<float *>(q.y);
  uint8_t *yq = q.rangeOut ? static_cast<uint8_t *>(q.y) : nullptr;
  const int64_t block =
      std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(N, 1));
#pragma omp parallel for schedule(static) if (M * N >= 4 * kn::kParallelWork)
  for (int64_t m0 = 0; m0 < M; m0 += block)
    epilogueRows(std::min(block, M - m0), N, acc + m0 * N, zp, sums, scales,
                 q.bias, q.relu, yf ? yf + m0 * N : nullptr,
                 yq ? yq + m0 * N : nullptr, out);
}
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

void loom_weight_scale_rows_s8(loom_ctx *ctx, int64_t O, int64_t K,
                               const float *w, float *scale) {
  useContextThreads(ctx);
  if (O < 0 || K < 0) {
    loom_error(ctx, "weight_scale_rows_s8", "negative size");
    return;
  }
  const int64_t bad = channelScales(O, K, K, 1, w, scale);
  if (bad >= 0)
    loom_error(ctx, "weight_scale_rows_s8",
               ("weight element " + std::to_string(bad) + " is not finite")
                   .c_str());
}

void loom_quantize_conv_weight_s8(loom_ctx *ctx, int64_t O, int64_t K,
                                  const float *w, const float *gamma,
                                  const float *beta, const float *mean,
                                  const float *var, int32_t fold, float eps,
                                  int8_t *wq, float *scale, float *bias) {
  useContextThreads(ctx);
  if (O < 0 || K < 0) {
    loom_error(ctx, "quantize_conv_weight_s8", "negative size");
    return;
  }
#if LOOM_HAVE_DNNL
  forgetWeights(wq);
#endif
  const float tiny = std::numeric_limits<float>::epsilon();
  int64_t bad = -1;
  for (int64_t o = 0; o < O; ++o) {
    // f as the training step's fold computes it: gamma * rsqrt(var + eps).
    const float f = fold ? gamma[o] * (1.0f / std::sqrt(var[o] + eps)) : 1.0f;
    float top = 0;
    for (int64_t k = 0; k < K; ++k) {
      const float v = w[o * K + k] * f;
      if (!std::isfinite(v) && bad < 0)
        bad = o * K + k;
      top = std::max(top, std::fabs(v));
    }
    const float sc = std::max(top / 127.0f, tiny);
    scale[o] = sc;
    for (int64_t k = 0; k < K; ++k) {
      const float q = std::nearbyint((w[o * K + k] * f) * (1.0f / sc));
      wq[k * O + o] = int8_t(std::min(127.0f, std::max(-127.0f, q)));
    }
    bias[o] = fold ? beta[o] - mean[o] * f : 0.0f;
  }
  if (bad >= 0)
    loom_error(ctx, "quantize_conv_weight_s8",
               ("folded weight element " + std::to_string(bad) +
                " is not finite")
                   .c_str());
}

void loom_qconv2d(loom_ctx *ctx, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t O, int64_t KH, int64_t KW, int64_t stride,
                  int64_t pad, const float *x, int32_t flags,
                  const float *range, const int8_t *wq, const float *wscale,
                  const float *bias, float *y) {
  useContextThreads(ctx);
  if (N < 0 || C < 1 || H < 1 || W < 1 || O < 1 || KH < 1 || KW < 1 ||
      stride < 1 || pad < 0 || H + 2 * pad < KH || W + 2 * pad < KW) {
    loom_error(ctx, "qconv2d", "invalid convolution shape");
    return;
  }
  if (!std::isfinite(range[0]) || !std::isfinite(range[1])) {
    loom_error(ctx, "qconv2d",
               "the activation range is not finite (not calibrated?)");
    return;
  }
  const int64_t Ho = (H + 2 * pad - KH) / stride + 1,
                Wo = (W + 2 * pad - KW) / stride + 1;
  const int64_t M = N * Ho * Wo, K = C * KH * KW;
  const bool symmetric = (flags & LOOM_QLINEAR_SYMMETRIC_INPUT) != 0;
  const StoredQuant in = storedQuant(range, symmetric);
  // The activation quantized once, then its UINT8 columns [N*Ho*Wo,
  // C*kh*kw] (padding holds the zero point: the quantized 0.0).
  thread_local std::vector<uint8_t> xqBuffer, colBuffer;
  thread_local std::vector<float> outBuffer;
  uint8_t *xq = scratch(xqBuffer, N * C * H * W);
  quantizeU8(N * C * H * W, x, in, xq);
  uint8_t *cols = scratch(colBuffer, M * K);
  const uint8_t zp = uint8_t(in.zeroPoint);
#pragma omp parallel for schedule(static) if (M * K >= kn::kParallelWork)
  for (int64_t r = 0; r < M; ++r) {
    const int64_t n = r / (Ho * Wo), i = (r / Wo) % Ho, j = r % Wo;
    uint8_t *row = cols + r * K;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t a = 0; a < KH; ++a) {
        const int64_t h = i * stride + a - pad;
        for (int64_t b = 0; b < KW; ++b) {
          const int64_t w = j * stride + b - pad;
          row[(c * KH + a) * KW + b] =
              h >= 0 && h < H && w >= 0 && w < W
                  ? xq[((n * C + c) * H + h) * W + w]
                  : zp;
        }
      }
  }
  float *out = scratch(outBuffer, M * O);
  qlinear(ctx, "qconv2d",
          {M, O, K, cols, true, range, symmetric, wq, wscale,
           (flags & LOOM_QLINEAR_BIAS) ? bias : nullptr,
           (flags & LOOM_QLINEAR_RELU) != 0, nullptr, false, out});
  // [N, Ho*Wo, O] -> [N, O, Ho*Wo].
  const int64_t plane = Ho * Wo;
#pragma omp parallel for schedule(static) if (M * O >= kn::kParallelWork)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t p = 0; p < plane; ++p)
        y[(n * O + o) * plane + p] = out[(n * plane + p) * O + o];
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

void loom_observe_percentile(loom_ctx *ctx, int64_t n, const float *x,
                             const float *range, float percentile,
                             float *out) {
  const int64_t batch = std::max<int64_t>(1, loom_step(ctx));
  if (n == 0) {
    out[0] = range[0];
    out[1] = range[1];
    return;
  }
  thread_local std::vector<float> sorted;
  float *v = scratch(sorted, n);
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) {
      loom_error(ctx, "observe_percentile",
                 ("activation element " + std::to_string(i) + " is NaN")
                     .c_str());
      return;
    }
    v[i] = x[i];
  }
  // The q-th percentile with numpy's default (linear) interpolation
  // between the order statistics at floor and ceil of q / 100 * (n - 1).
  auto at = [&](double q) {
    const double pos = q / 100.0 * double(n - 1);
    const int64_t lo = int64_t(std::floor(pos));
    const int64_t hi = std::min<int64_t>(lo + 1, n - 1);
    std::nth_element(v, v + lo, v + n);
    const float a = v[lo];
    const float b = hi == lo ? a : *std::min_element(v + lo + 1, v + n);
    return float(double(a) + (pos - double(lo)) * (double(b) - double(a)));
  };
  const float top = at(percentile), bottom = at(100.0 - double(percentile));
  if (batch <= 1) {
    out[0] = bottom;
    out[1] = top;
  } else {
    out[0] = range[0] + (bottom - range[0]) / float(batch);
    out[1] = range[1] + (top - range[1]) / float(batch);
  }
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
  qlinear(ctx, "qgemm_u8s8",
          {M, N, K, x, false, range, false, wq, wscale, nullptr, false,
           nullptr, false, y});
}

void loom_qlinear(loom_ctx *ctx, int64_t M, int64_t N, int64_t K,
                  const void *x, int32_t flags, const float *rangeIn,
                  const int8_t *wq, const float *wscale, const float *bias,
                  const float *rangeOut, void *y) {
  qlinear(ctx, "qlinear",
          {M, N, K, x, (flags & LOOM_QLINEAR_QUANTIZED_INPUT) != 0, rangeIn,
           (flags & LOOM_QLINEAR_SYMMETRIC_INPUT) != 0, wq, wscale,
           (flags & LOOM_QLINEAR_BIAS) ? bias : nullptr,
           (flags & LOOM_QLINEAR_RELU) != 0,
           (flags & LOOM_QLINEAR_QUANTIZED_OUTPUT) ? rangeOut : nullptr,
           (flags & LOOM_QLINEAR_SYMMETRIC_OUTPUT) != 0, y});
}

} // extern "C"
