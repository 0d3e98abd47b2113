//===- KernelsTest.cpp - the CPU kernels against formulas and derivatives -===//
//
// Forward passes against direct formulas, backward passes against central
// finite differences in double (relative error < 1e-6), optimizers against
// hand-computed torch.optim steps, the float ABI against the double
// templates (~1e-5), and bitwise equality across thread counts.
//
//===----------------------------------------------------------------------===//
#include "runtime/kernels/Kernels.h"

#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace loom::kernels;

namespace {

using Vec = std::vector<double>;
using FVec = std::vector<float>;
constexpr double kInf = std::numeric_limits<double>::infinity();

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

/// Uniform values in [lo, hi), rounded to float so that the float ABI and the
/// double templates see the same inputs.
Vec randomVec(std::mt19937_64 &rng, size_t n, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (double &x : v)
    x = double(float(dist(rng)));
  return v;
}

int64_t randomInt(std::mt19937_64 &rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

FVec toFloat(const Vec &v) { return FVec(v.begin(), v.end()); }
Vec toDouble(const FVec &v) { return Vec(v.begin(), v.end()); }

double dotv(const Vec &a, const Vec &b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i)
    s += a[i] * b[i];
  return s;
}

double maxAbs(const Vec &v) {
  double m = 0;
  for (double x : v)
    m = std::max(m, std::abs(x));
  return m;
}

/// ||a - b|| / ||b|| (Euclidean), 0 when both vanish.
double relativeError(const Vec &a, const Vec &b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    ref += b[i] * b[i];
  }
  return ref == 0 ? std::sqrt(diff) : std::sqrt(diff / ref);
}

/// d loss / d x by central differences, one element of x at a time.
Vec numericGradient(Vec &x, const std::function<double()> &loss,
                    double h = 1e-6) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss(), xUp = x[i];
    x[i] = saved - h;
    const double down = loss(), xDown = x[i];
    x[i] = saved;
    g[i] = (up - down) / (xUp - xDown);
  }
  return g;
}

/// max |analytic - numeric| relative to max |numeric| below 1e-6.
void expectGradient(const Vec &analytic, const Vec &numeric,
                    const std::string &what) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  double err = 0;
  for (size_t i = 0; i < analytic.size(); ++i)
    err = std::max(err, std::abs(analytic[i] - numeric[i]));
  const double scale = maxAbs(numeric);
  EXPECT_GT(scale, 1e-8) << what << ": the check is vacuous";
  EXPECT_LT(err / scale, 1e-6)
      << what << ": max |analytic - numeric| = " << err << ", scale " << scale;
}

/// The float ABI result against the double template's, ~1e-5 relative.
void expectAgrees(const FVec &abi, const Vec &reference,
                  const std::string &what, double tolerance = 1e-5) {
  ASSERT_EQ(abi.size(), reference.size()) << what;
  EXPECT_LE(relativeError(toDouble(abi), reference), tolerance) << what;
}

/// A runtime context (not copyable: it holds a mutex) with a thread count.
struct TestContext : loom_ctx {
  explicit TestContext(int threadCount = 2) { threads = threadCount; }
};

//===----------------------------------------------------------------------===//
// Philox
//===----------------------------------------------------------------------===//

TEST(Philox, MatchesRandom123KnownAnswers) {
  // Random123's kat_vectors, philox4x32 10: counter, key -> output.
  EXPECT_EQ(philox4x32({0, 0, 0, 0}, {0, 0}),
            (PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                       {0xffffffff, 0xffffffff}),
            (PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                       {0xa4093822, 0x299f31d0}),
            (PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, Fnv1a64KnownAnswers) {
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ull);
}

TEST(Philox, Uniform01UsesTheTop24Bits) {
  EXPECT_EQ(uniform01(0), 0.0f);
  EXPECT_EQ(uniform01(0xff), 0.0f);
  EXPECT_EQ(uniform01(0x80000000u), 0.5f);
  EXPECT_EQ(uniform01(0xffffffffu), 1.0f - std::ldexp(1.0f, -24));
  EXPECT_LT(uniform01(0xffffffffu), 1.0f);
}

TEST(Philox, KeyAndCounterConvention) {
  const uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull;
  EXPECT_EQ(philoxKey(seed, stream),
            (PhiloxKey{0x89abcdefu ^ 0x76543210u, 0x01234567u ^ 0xfedcba98u}));
  EXPECT_EQ(
      philoxCounter(0x1122334455667788ull, 0x99aabbccddeeff00ull),
      (PhiloxCounter{0x55667788u, 0x11223344u, 0xddeeff00u, 0x99aabbccu}));
  EXPECT_EQ(philoxAt(seed, stream, /*extra=*/7, /*index=*/42),
            philox4x32({42, 0, 7, 0}, philoxKey(seed, stream)));
  // Seed 0 and stream 0 give Random123's all-zero key.
  EXPECT_EQ(philoxAt(0, 0, 0, 0), philox4x32({0, 0, 0, 0}, {0, 0}));
}

//===----------------------------------------------------------------------===//
// GEMM
//===----------------------------------------------------------------------===//

/// C_b = alpha op(A_b) op(B_b) + beta C_b by the definition.
void naiveGemm(int64_t batch, bool transA, bool transB, int64_t M, int64_t N,
               int64_t K, const Vec &A, int64_t strideA, const Vec &B,
               int64_t strideB, Vec &C, int64_t strideC, double alpha,
               double beta) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double a =
              transA ? A[b * strideA + k * M + i] : A[b * strideA + i * K + k];
          const double bb =
              transB ? B[b * strideB + j * K + k] : B[b * strideB + k * N + j];
          sum += a * bb;
        }
        double &c = C[b * strideC + i * N + j];
        c = alpha * sum + (beta == 0 ? 0.0 : beta * c);
      }
}

struct GemmCase {
  int64_t batch, M, N, K;
  bool broadcastA, broadcastB;
};

TEST(Gemm, MatchesNaiveLoopForEveryTransposeAndStride) {
  std::mt19937_64 rng(1);
  // Shapes crossing the 32x128x128 tiles; stride 0 broadcasts A or B.
  const GemmCase cases[] = {{1, 1, 1, 1, false, false},
                            {3, 37, 140, 150, false, false},
                            {2, 5, 7, 3, true, false},
                            {4, 33, 9, 129, false, true},
                            {3, 64, 1, 17, true, true}};
  for (const GemmCase &c : cases)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (double beta : {0.0, 0.3}) {
          SCOPED_TRACE(testing::Message()
                       << "batch " << c.batch << " M " << c.M << " N " << c.N
                       << " K " << c.K << " transA " << ta << " transB " << tb
                       << " beta " << beta);
          const int64_t sA = c.broadcastA ? 0 : c.M * c.K;
          const int64_t sB = c.broadcastB ? 0 : c.K * c.N;
          const int64_t sC = c.M * c.N;
          Vec A = randomVec(rng, c.broadcastA ? c.M * c.K : c.batch * sA);
          Vec B = randomVec(rng, c.broadcastB ? c.K * c.N : c.batch * sB);
          Vec C0 = randomVec(rng, c.batch * sC);
          Vec expected = C0;
          naiveGemm(c.batch, ta, tb, c.M, c.N, c.K, A, sA, B, sB, expected, sC,
                    0.7, beta);
          Vec C = C0;
          gemm<double>(c.batch, ta, tb, c.M, c.N, c.K, A.data(), sA, B.data(),
                       sB, C.data(), sC, 0.7, beta);
          EXPECT_LT(relativeError(C, expected), 1e-13);

          TestContext ctx;
          FVec Af = toFloat(A), Bf = toFloat(B), Cf = toFloat(C0);
          loom_gemm(&ctx, c.batch, ta, tb, c.M, c.N, c.K, Af.data(), sA,
                    Bf.data(), sB, Cf.data(), sC, 0.7f, float(beta));
          expectAgrees(Cf, expected, "loom_gemm");
          EXPECT_FALSE(ctx.failed) << ctx.errorMessage;
        }
}

TEST(Gemm, BetaZeroOverwritesWithoutReadingC) {
  std::mt19937_64 rng(2);
  const int64_t M = 9, N = 11, K = 13;
  Vec A = randomVec(rng, M * K), B = randomVec(rng, K * N);
  Vec expected(M * N, 0.0);
  naiveGemm(1, false, false, M, N, K, A, 0, B, 0, expected, 0, 1.0, 0.0);
  Vec C(M * N, std::nan(""));
  gemm<double>(1, false, false, M, N, K, A.data(), 0, B.data(), 0, C.data(), 0,
               1.0, 0.0);
  EXPECT_LT(relativeError(C, expected), 1e-13);
  TestContext ctx;
  FVec Af = toFloat(A), Bf = toFloat(B), Cf(M * N, std::nanf(""));
  loom_gemm(&ctx, 1, 0, 0, M, N, K, Af.data(), 0, Bf.data(), 0, Cf.data(), 0,
            1.0f, 0.0f);
  expectAgrees(Cf, expected, "loom_gemm");
}

// INT8 inference: per-channel symmetric weights, per-tensor affine UINT8
// activations, exact INT32 accumulation (SEMANTICS.md, quantization).
TEST(Int8, WeightQuantizationIsPerChannelSymmetric) {
  const int64_t K = 3, N = 4;
  // Column 0: max 1.27 -> scale 0.01; column 1: all zero (scale eps);
  // column 2: -2.54 largest; column 3: halves round to even.
  const FVec w = {1.27f, 0.0f, -2.54f, 0.025f,  //
                  -0.5f, 0.0f, 1.0f,   0.035f,  //
                  0.004f, 0.0f, 0.01f, 0.127f};
  std::vector<int8_t> wq(size_t(K * N));
  auto scale = FVec(size_t(N));
  TestContext ctx;
  loom_quantize_weight_s8(&ctx, K, N, w.data(), wq.data(), scale.data());
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  EXPECT_FLOAT_EQ(scale[0], 1.27f / 127.0f);
  EXPECT_EQ(scale[1], std::numeric_limits<float>::epsilon());
  EXPECT_FLOAT_EQ(scale[2], 2.54f / 127.0f);
  EXPECT_FLOAT_EQ(scale[3], 0.127f / 127.0f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const float q = std::nearbyint(w[size_t(k * N + n)] * (1.0f / scale[size_t(n)]));
      EXPECT_EQ(int(wq[size_t(k * N + n)]), int(std::clamp(q, -127.0f, 127.0f)))
          << "k " << k << " n " << n;
    }
  EXPECT_EQ(wq[0], 127);
  EXPECT_EQ(wq[2], -127);
  EXPECT_EQ(wq[1], 0);

  FVec bad = w;
  bad[5] = std::numeric_limits<float>::quiet_NaN();
  TestContext badCtx;
  loom_quantize_weight_s8(&badCtx, K, N, bad.data(), wq.data(), scale.data());
  EXPECT_TRUE(badCtx.failed);
  EXPECT_NE(badCtx.errorMessage.find("weight element 5 is not finite"),
            std::string::npos)
      << badCtx.errorMessage;
}

TEST(Int8, ProductIsTheFakeQuantizedProductExactly) {
  std::mt19937_64 rng(9);
  struct Case {
    int64_t M, N, K;
    float lo, hi;
  };
  // Ranges that include 0, that do not (widened), and a ReLU output's.
  for (const Case &c : {Case{1, 1, 1, -1.0f, 1.0f}, Case{37, 129, 64, -2.0f, 3.0f},
                        Case{256, 1024, 64, 0.5f, 4.0f},
                        Case{64, 10, 1024, -3.0f, -0.5f}}) {
    SCOPED_TRACE(testing::Message() << "M " << c.M << " N " << c.N << " K "
                                    << c.K << " range " << c.lo << " " << c.hi);
    FVec x = toFloat(randomVec(rng, size_t(c.M * c.K), c.lo - 0.2, c.hi + 0.2));
    FVec w = toFloat(randomVec(rng, size_t(c.K * c.N)));
    std::vector<int8_t> wq(size_t(c.K * c.N));
    auto wscale = FVec(size_t(c.N)), y = FVec(size_t(c.M * c.N));
    const FVec range = {c.lo, c.hi};
    TestContext ctx;
    loom_quantize_weight_s8(&ctx, c.K, c.N, w.data(), wq.data(), wscale.data());
    loom_qgemm_u8s8(&ctx, c.M, c.N, c.K, x.data(), range.data(), wq.data(),
                    wscale.data(), y.data());
    ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
    // The reference: quantize as SEMANTICS.md says, accumulate in int64.
    const float lo = std::min(c.lo, 0.0f), hi = std::max(c.hi, 0.0f);
    const float s = std::max((hi - lo) / 255.0f,
                             std::numeric_limits<float>::epsilon());
    const float z = std::clamp(std::nearbyint(-lo / s), 0.0f, 255.0f);
    double worst = 0, scaleOfY = 0;
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        int64_t acc = 0;
        double real = 0;
        for (int64_t k = 0; k < c.K; ++k) {
          const float q = std::clamp(
              std::nearbyint(x[size_t(m * c.K + k)] * (1.0f / s)) + z, 0.0f,
              255.0f);
          acc += (int64_t(q) - int64_t(z)) * int64_t(wq[size_t(k * c.N + n)]);
          real += double(x[size_t(m * c.K + k)]) * w[size_t(k * c.N + n)];
        }
        const float expected = float(acc) * (s * wscale[size_t(n)]);
        ASSERT_EQ(y[size_t(m * c.N + n)], expected) << "m " << m << " n " << n;
        worst = std::max(worst, std::fabs(double(expected) - real));
        scaleOfY = std::max(scaleOfY, std::fabs(real));
      }
    // And close to the FP32 product: a few quantization steps of K terms.
    EXPECT_LT(worst, 0.05 * std::max(1.0, scaleOfY)) << "worst " << worst;
  }
}

TEST(Int8, UncalibratedRangeIsAnError) {
  const FVec x = {1.0f}, range = {0.0f, std::numeric_limits<float>::infinity()};
  const std::vector<int8_t> wq = {1};
  const FVec wscale = {1.0f};
  FVec y(1);
  TestContext ctx;
  loom_qgemm_u8s8(&ctx, 1, 1, 1, x.data(), range.data(), wq.data(),
                  wscale.data(), y.data());
  EXPECT_TRUE(ctx.failed);
  EXPECT_NE(ctx.errorMessage.find("activation range is not finite"),
            std::string::npos)
      << ctx.errorMessage;
}

TEST(Int8, SymmetricActivationsMatchTheirFakeQuantization) {
  // Symmetric: s = max|range| / 127, q in [-127, 127] (held as u8 + 128).
  std::mt19937_64 rng(4);
  const int64_t M = 19, N = 7, K = 33;
  FVec x = toFloat(randomVec(rng, size_t(M * K), -3.0, 2.0));
  FVec w = toFloat(randomVec(rng, size_t(K * N)));
  std::vector<int8_t> wq(size_t(K * N));
  FVec wscale(static_cast<size_t>(N)), y(static_cast<size_t>(M * N));
  const FVec range = {-2.5f, 1.5f}; // x beyond it clamps at -127
  TestContext ctx;
  loom_quantize_weight_s8(&ctx, K, N, w.data(), wq.data(), wscale.data());
  loom_qlinear(&ctx, M, N, K, x.data(), LOOM_QLINEAR_SYMMETRIC_INPUT,
               range.data(), wq.data(), wscale.data(), nullptr, nullptr,
               y.data());
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  const float s = 2.5f / 127.0f;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += int64_t(std::clamp(std::nearbyint(x[size_t(m * K + k)] * (1.0f / s)),
                                  -127.0f, 127.0f)) *
               int64_t(wq[size_t(k * N + n)]);
      ASSERT_EQ(y[size_t(m * N + n)], float(acc) * (s * wscale[size_t(n)]))
          << "m " << m << " n " << n;
    }
}

TEST(Int8, FusedLayerIsWithinOneStepOfTheUnfusedOps) {
  // loom_qlinear with bias, ReLU and a quantized output for the next layer,
  // then that layer from UINT8 input with a bias and an f32 output, against
  // the unfused ops in the fake quantization's order: the UINT8 hand-off
  // within one quantization step (most exact), the f32 output close.
  std::mt19937_64 rng(6);
  const int64_t M = 33, K = 40, N = 70, N2 = 9;
  FVec x = toFloat(randomVec(rng, size_t(M * K), -1.0, 2.0));
  FVec w = toFloat(randomVec(rng, size_t(K * N))), w2 = toFloat(randomVec(rng, size_t(N * N2)));
  FVec b = toFloat(randomVec(rng, size_t(N))), b2 = toFloat(randomVec(rng, size_t(N2)));
  std::vector<int8_t> wq(size_t(K * N)), wq2(size_t(N * N2));
  FVec ws(static_cast<size_t>(N)), ws2(static_cast<size_t>(N2));
  TestContext ctx;
  loom_quantize_weight_s8(&ctx, K, N, w.data(), wq.data(), ws.data());
  loom_quantize_weight_s8(&ctx, N, N2, w2.data(), wq2.data(), ws2.data());
  const FVec range = {-1.0f, 2.0f}, range2 = {0.0f, 6.0f};
  std::vector<uint8_t> h(size_t(M * N));
  FVec y(static_cast<size_t>(M * N2));
  loom_qlinear(&ctx, M, N, K, x.data(),
               LOOM_QLINEAR_BIAS | LOOM_QLINEAR_RELU | LOOM_QLINEAR_QUANTIZED_OUTPUT,
               range.data(), wq.data(), ws.data(), b.data(), range2.data(),
               h.data());
  loom_qlinear(&ctx, M, N2, N, h.data(),
               LOOM_QLINEAR_QUANTIZED_INPUT | LOOM_QLINEAR_BIAS, range2.data(),
               wq2.data(), ws2.data(), b2.data(), range.data(), y.data());
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  // The unfused ops: qgemm, + bias, relu, quantize with range2.
  FVec ref(static_cast<size_t>(M * N));
  loom_qgemm_u8s8(&ctx, M, N, K, x.data(), range.data(), wq.data(), ws.data(),
                  ref.data());
  const float s2 = 6.0f / 255.0f;
  int64_t exact = 0;
  FVec hq(static_cast<size_t>(M * N)); // the hand-off, dequantized
  for (int64_t i = 0; i < M * N; ++i) {
    float v = std::max(ref[size_t(i)] + b[size_t(i % N)], 0.0f);
    float q = std::clamp(std::nearbyint(v * (1.0f / s2)), 0.0f, 255.0f);
    ASSERT_LE(std::fabs(q - float(h[size_t(i)])), 1.0f) << "element " << i;
    exact += q == float(h[size_t(i)]);
    hq[size_t(i)] = float(h[size_t(i)]) * s2;
  }
  EXPECT_GT(exact, M * N * 9 / 10);
  // The second layer from the same UINT8 input: products exact, then
  // scale and bias (one rounding each, in either order).
  FVec ref2(static_cast<size_t>(M * N2));
  loom_qgemm_u8s8(&ctx, M, N2, N, hq.data(), range2.data(), wq2.data(),
                  ws2.data(), ref2.data());
  for (int64_t i = 0; i < M * N2; ++i) {
    const float r = ref2[size_t(i)] + b2[size_t(i % N2)];
    EXPECT_NEAR(y[size_t(i)], r, 1e-5f * std::max(1.0f, std::fabs(r)))
        << "element " << i;
  }
}

TEST(Qat, WeightScalesAreTheInt8WeightsScales) {
  std::mt19937_64 rng(5);
  const int64_t K = 40, N = 9;
  FVec w = toFloat(randomVec(rng, size_t(K * N)));
  for (int64_t k = 0; k < K; ++k)
    w[size_t(k * N + 3)] = 0.0f; // an all-zero channel: scale eps
  std::vector<int8_t> wq(size_t(K * N));
  FVec a(static_cast<size_t>(N)), b(static_cast<size_t>(N)), whole(1);
  TestContext ctx;
  loom_quantize_weight_s8(&ctx, K, N, w.data(), wq.data(), a.data());
  loom_weight_scale_s8(&ctx, K, N, w.data(), b.data());
  loom_weight_scale_s8(&ctx, K * N, 1, w.data(), whole.data());
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  EXPECT_EQ(a, b);
  EXPECT_EQ(b[3], std::numeric_limits<float>::epsilon());
  EXPECT_EQ(whole[0], *std::max_element(b.begin(), b.end()));
  w[size_t(5)] = std::numeric_limits<float>::infinity();
  TestContext bad;
  loom_weight_scale_s8(&bad, K, N, w.data(), b.data());
  EXPECT_TRUE(bad.failed);
  EXPECT_NE(bad.errorMessage.find("weight element 5 is not finite"),
            std::string::npos)
      << bad.errorMessage;
}

TEST(Qat, MovingAverageObserverFollowsTorch) {
  // Step 1 takes the batch's range, later steps move 1% towards it, and
  // after `freeze` the range stays.
  const FVec b1 = {-1.0f, 2.0f, 0.5f}, b2 = {-3.0f, 1.0f, 4.0f};
  FVec r = {0.0f, 0.0f};
  TestContext ctx;
  ctx.step = 1;
  loom_observe_ema(&ctx, 3, b1.data(), r.data(), 0.01f, 5, r.data());
  EXPECT_EQ(r, (FVec{-1.0f, 2.0f}));
  ctx.step = 2;
  loom_observe_ema(&ctx, 3, b2.data(), r.data(), 0.01f, 5, r.data());
  EXPECT_EQ(r[0], -1.0f + 0.01f * (-3.0f - -1.0f));
  EXPECT_EQ(r[1], 2.0f + 0.01f * (4.0f - 2.0f));
  const FVec kept = r;
  ctx.step = 6;
  loom_observe_ema(&ctx, 3, b1.data(), r.data(), 0.01f, 5, r.data());
  EXPECT_EQ(r, kept);
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  const FVec nan = {0.0f, std::nanf("")};
  ctx.step = 3;
  loom_observe_ema(&ctx, 2, nan.data(), r.data(), 0.01f, -1, r.data());
  EXPECT_TRUE(ctx.failed);
  EXPECT_NE(ctx.errorMessage.find("activation element 1 is NaN at step 3"),
            std::string::npos)
      << ctx.errorMessage;
}

TEST(Ptq, PercentileObserverAveragesBatchPercentiles) {
  // 0..100 in steps of 1 (shuffled): the 90th percentile is 90, the 10th
  // 10 (positions land on order statistics); 0..10 in steps of 0.1 for
  // batch 2 gives 9 and 1; the range is their mean.
  FVec a, b;
  for (int i = 0; i <= 100; ++i) {
    a.push_back(float((i * 37) % 101));
    b.push_back(float((i * 37) % 101) / 10.0f);
  }
  FVec r = {0.0f, 0.0f};
  TestContext ctx;
  ctx.step = 1;
  loom_observe_percentile(&ctx, int64_t(a.size()), a.data(), r.data(), 90.0f,
                          r.data());
  EXPECT_EQ(r, (FVec{10.0f, 90.0f}));
  ctx.step = 2;
  loom_observe_percentile(&ctx, int64_t(b.size()), b.data(), r.data(), 90.0f,
                          r.data());
  EXPECT_FLOAT_EQ(r[0], (10.0f + 1.0f) / 2);
  EXPECT_FLOAT_EQ(r[1], (90.0f + 9.0f) / 2);
  // Between order statistics: linear interpolation (numpy's default).
  const FVec c = {4.0f, 1.0f, 3.0f, 2.0f};
  ctx.step = 1;
  loom_observe_percentile(&ctx, 4, c.data(), r.data(), 75.0f, r.data());
  EXPECT_FLOAT_EQ(r[1], 3.25f); // position 2.25
  EXPECT_FLOAT_EQ(r[0], 1.75f); // position 0.75
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
}

TEST(Qat, RangeParametersFollowSemantics) {
  TestContext ctx;
  float s = 0, z = 0;
  // Affine: widened to include 0, zero point rounded half to even.
  const FVec r = {-0.5f, 2.0f};
  loom_range_qparams(&ctx, r.data(), 0, &s, &z);
  EXPECT_EQ(s, 2.5f / 255.0f);
  EXPECT_EQ(z, std::nearbyint(0.5f / (2.5f / 255.0f)));
  const FVec pos = {0.5f, 4.0f};
  loom_range_qparams(&ctx, pos.data(), 0, &s, &z);
  EXPECT_EQ(s, 4.0f / 255.0f);
  EXPECT_EQ(z, 0.0f);
  // Symmetric: the larger magnitude over 127, zero point 0.
  loom_range_qparams(&ctx, r.data(), 1, &s, &z);
  EXPECT_EQ(s, 2.0f / 127.0f);
  EXPECT_EQ(z, 0.0f);
  const FVec zero = {0.0f, 0.0f};
  loom_range_qparams(&ctx, zero.data(), 0, &s, &z);
  EXPECT_EQ(s, std::numeric_limits<float>::epsilon());
  EXPECT_EQ(z, 0.0f);
}

TEST(Gemm, EmptyInnerDimensionScalesC) {
  Vec C = {1, 2, 3, 4, 5, 6};
  gemm<double>(2, false, true, 1, 3, 0, nullptr, 0, nullptr, 0, C.data(), 3,
               1.0, 0.5);
  EXPECT_EQ(C, (Vec{0.5, 1, 1.5, 2, 2.5, 3}));
  TestContext ctx;
  FVec Cf = {1, 2, 3, 4, 5, 6};
  loom_gemm(&ctx, 2, 0, 1, 1, 3, 0, nullptr, 0, nullptr, 0, Cf.data(), 3, 1.0f,
            0.0f);
  EXPECT_EQ(Cf, FVec(6, 0.0f));
}

TEST(Gemm, ZeroOutputStrideAppliesTheBatchesInOrder) {
  std::mt19937_64 rng(3);
  const int64_t batch = 3, M = 4, N = 5, K = 6;
  Vec A = randomVec(rng, batch * M * K), B = randomVec(rng, batch * K * N);
  Vec C0 = randomVec(rng, M * N);
  Vec expected = C0;
  for (int64_t b = 0; b < batch; ++b) {
    Vec Ab(A.begin() + b * M * K, A.begin() + (b + 1) * M * K);
    Vec Bb(B.begin() + b * K * N, B.begin() + (b + 1) * K * N);
    naiveGemm(1, false, false, M, N, K, Ab, 0, Bb, 0, expected, 0, 1.0, 1.0);
  }
  Vec C = C0;
  gemm<double>(batch, false, false, M, N, K, A.data(), M * K, B.data(), K * N,
               C.data(), 0, 1.0, 1.0);
  EXPECT_LT(relativeError(C, expected), 1e-13);
  TestContext ctx;
  FVec Af = toFloat(A), Bf = toFloat(B), Cf = toFloat(C0);
  loom_gemm(&ctx, batch, 0, 0, M, N, K, Af.data(), M * K, Bf.data(), K * N,
            Cf.data(), 0, 1.0f, 1.0f);
  expectAgrees(Cf, expected, "loom_gemm");
}

//===----------------------------------------------------------------------===//
// Layer norm and RMS norm
//===----------------------------------------------------------------------===//

TEST(LayerNorm, ForwardMatchesTheFormula) {
  std::mt19937_64 rng(4);
  const int64_t rows = 5, cols = 7;
  const double eps = 1e-5;
  Vec x = randomVec(rng, rows * cols, -2, 3), g = randomVec(rng, cols),
      b = randomVec(rng, cols);
  Vec y(rows * cols), mean(rows), rstd(rows);
  layerNormForward<double>(rows, cols, x.data(), g.data(), b.data(), eps,
                           y.data(), mean.data(), rstd.data());
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c)
      mu += x[r * cols + c] / cols;
    for (int64_t c = 0; c < cols; ++c)
      var += (x[r * cols + c] - mu) * (x[r * cols + c] - mu) / cols;
    EXPECT_NEAR(mean[r], mu, 1e-14);
    EXPECT_NEAR(rstd[r], 1 / std::sqrt(var + eps), 1e-12);
    for (int64_t c = 0; c < cols; ++c)
      EXPECT_NEAR(y[r * cols + c],
                  (x[r * cols + c] - mu) / std::sqrt(var + eps) * g[c] + b[c],
                  1e-12);
  }
  // No gain and no bias mean 1 and 0.
  Vec ones(cols, 1.0), zeros(cols, 0.0), yPlain(rows * cols),
      yUnit(rows * cols);
  layerNormForward<double>(rows, cols, x.data(), nullptr, nullptr, eps,
                           yPlain.data(), nullptr, nullptr);
  layerNormForward<double>(rows, cols, x.data(), ones.data(), zeros.data(), eps,
                           yUnit.data(), nullptr, nullptr);
  EXPECT_EQ(yPlain, yUnit);
}

TEST(LayerNorm, BackwardMatchesFiniteDifferences) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    const int64_t rows = randomInt(rng, 1, 6), cols = randomInt(rng, 3, 24);
    const double eps = 1e-5;
    Vec x = randomVec(rng, rows * cols, -2, 2), g = randomVec(rng, cols),
        b = randomVec(rng, cols), probe = randomVec(rng, rows * cols);
    auto loss = [&] {
      Vec y(rows * cols);
      layerNormForward<double>(rows, cols, x.data(), g.data(), b.data(), eps,
                               y.data(), nullptr, nullptr);
      return dotv(probe, y);
    };
    Vec y(rows * cols), mean(rows), rstd(rows);
    layerNormForward<double>(rows, cols, x.data(), g.data(), b.data(), eps,
                             y.data(), mean.data(), rstd.data());
    Vec dx(rows * cols), dg(cols), db(cols);
    layerNormBackward<double>(rows, cols, probe.data(), x.data(), g.data(),
                              mean.data(), rstd.data(), dx.data(), dg.data(),
                              db.data());
    expectGradient(dx, numericGradient(x, loss), "dx");
    expectGradient(dg, numericGradient(g, loss), "dgain");
    expectGradient(db, numericGradient(b, loss), "dbias");
  }
}

TEST(LayerNorm, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(5);
  const int64_t rows = 37, cols = 70;
  Vec x = randomVec(rng, rows * cols, -3, 3), g = randomVec(rng, cols),
      b = randomVec(rng, cols), dy = randomVec(rng, rows * cols);
  Vec y(rows * cols), mean(rows), rstd(rows), dx(rows * cols), dg(cols),
      db(cols);
  layerNormForward<double>(rows, cols, x.data(), g.data(), b.data(), 1e-5,
                           y.data(), mean.data(), rstd.data());
  layerNormBackward<double>(rows, cols, dy.data(), x.data(), g.data(),
                            mean.data(), rstd.data(), dx.data(), dg.data(),
                            db.data());
  TestContext ctx;
  FVec xf = toFloat(x), gf = toFloat(g), bf = toFloat(b), dyf = toFloat(dy);
  FVec yf(rows * cols), meanf(rows), rstdf(rows), dxf(rows * cols), dgf(cols),
      dbf(cols);
  loom_layer_norm_fwd(&ctx, rows, cols, xf.data(), gf.data(), bf.data(), 1e-5f,
                      yf.data(), meanf.data(), rstdf.data());
  loom_layer_norm_bwd(&ctx, rows, cols, dyf.data(), xf.data(), gf.data(),
                      meanf.data(), rstdf.data(), dxf.data(), dgf.data(),
                      dbf.data());
  expectAgrees(yf, y, "y");
  expectAgrees(meanf, mean, "mean");
  expectAgrees(rstdf, rstd, "rstd");
  expectAgrees(dxf, dx, "dx");
  expectAgrees(dgf, dg, "dgain");
  expectAgrees(dbf, db, "dbias");
}

TEST(RmsNorm, ForwardMatchesTheFormula) {
  std::mt19937_64 rng(6);
  const int64_t rows = 4, cols = 9;
  const double eps = 1e-6;
  Vec x = randomVec(rng, rows * cols, -2, 2), g = randomVec(rng, cols);
  Vec y(rows * cols), rstd(rows);
  rmsNormForward<double>(rows, cols, x.data(), g.data(), eps, y.data(),
                         rstd.data());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t c = 0; c < cols; ++c)
      ms += x[r * cols + c] * x[r * cols + c] / cols;
    EXPECT_NEAR(rstd[r], 1 / std::sqrt(ms + eps), 1e-12);
    for (int64_t c = 0; c < cols; ++c)
      EXPECT_NEAR(y[r * cols + c], x[r * cols + c] / std::sqrt(ms + eps) * g[c],
                  1e-12);
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    const int64_t rows = randomInt(rng, 1, 6), cols = randomInt(rng, 1, 24);
    const double eps = 1e-6;
    Vec x = randomVec(rng, rows * cols, -2, 2), g = randomVec(rng, cols),
        probe = randomVec(rng, rows * cols);
    auto loss = [&] {
      Vec y(rows * cols);
      rmsNormForward<double>(rows, cols, x.data(), g.data(), eps, y.data(),
                             nullptr);
      return dotv(probe, y);
    };
    Vec y(rows * cols), rstd(rows), dx(rows * cols), dg(cols);
    rmsNormForward<double>(rows, cols, x.data(), g.data(), eps, y.data(),
                           rstd.data());
    rmsNormBackward<double>(rows, cols, probe.data(), x.data(), g.data(),
                            rstd.data(), dx.data(), dg.data());
    expectGradient(dx, numericGradient(x, loss), "dx");
    expectGradient(dg, numericGradient(g, loss), "dgain");
  }
}

TEST(RmsNorm, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(7);
  const int64_t rows = 29, cols = 65;
  Vec x = randomVec(rng, rows * cols, -3, 3), g = randomVec(rng, cols),
      dy = randomVec(rng, rows * cols);
  Vec y(rows * cols), rstd(rows), dx(rows * cols), dg(cols);
  rmsNormForward<double>(rows, cols, x.data(), g.data(), 1e-6, y.data(),
                         rstd.data());
  rmsNormBackward<double>(rows, cols, dy.data(), x.data(), g.data(),
                          rstd.data(), dx.data(), dg.data());
  TestContext ctx;
  FVec xf = toFloat(x), gf = toFloat(g), dyf = toFloat(dy);
  FVec yf(rows * cols), rstdf(rows), dxf(rows * cols), dgf(cols);
  loom_rms_norm_fwd(&ctx, rows, cols, xf.data(), gf.data(), 1e-6f, yf.data(),
                    rstdf.data());
  loom_rms_norm_bwd(&ctx, rows, cols, dyf.data(), xf.data(), gf.data(),
                    rstdf.data(), dxf.data(), dgf.data());
  expectAgrees(yf, y, "y");
  expectAgrees(rstdf, rstd, "rstd");
  expectAgrees(dxf, dx, "dx");
  expectAgrees(dgf, dg, "dgain");
}

//===----------------------------------------------------------------------===//
// Softmax and log-softmax
//===----------------------------------------------------------------------===//

TEST(Softmax, ForwardMatchesTheFormulaAndIsStable) {
  std::mt19937_64 rng(8);
  const int64_t rows = 3, cols = 6;
  Vec x = randomVec(rng, rows * cols, -3, 3), y(rows * cols), logY(rows * cols);
  softmaxForward<double>(rows, cols, x.data(), y.data());
  logSoftmaxForward<double>(rows, cols, x.data(), logY.data());
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0;
    for (int64_t c = 0; c < cols; ++c)
      z += std::exp(x[r * cols + c]);
    for (int64_t c = 0; c < cols; ++c) {
      EXPECT_NEAR(y[r * cols + c], std::exp(x[r * cols + c]) / z, 1e-15);
      EXPECT_NEAR(logY[r * cols + c], x[r * cols + c] - std::log(z), 1e-14);
    }
  }
  // Shifting by 1000 overflows a naive exp; the max-subtracted form does not.
  Vec shifted = x, yShifted(rows * cols), logShifted(rows * cols);
  for (double &v : shifted)
    v += 1000;
  softmaxForward<double>(rows, cols, shifted.data(), yShifted.data());
  logSoftmaxForward<double>(rows, cols, shifted.data(), logShifted.data());
  EXPECT_LT(relativeError(yShifted, y), 1e-12);
  EXPECT_LT(relativeError(logShifted, logY), 1e-12);
  FVec big(4, 1e30f), out(4);
  TestContext ctx;
  loom_softmax_fwd(&ctx, 1, 4, big.data(), out.data());
  EXPECT_EQ(out, FVec(4, 0.25f));
}

TEST(Softmax, BackwardMatchesFiniteDifferences) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    const int64_t rows = randomInt(rng, 1, 5), cols = randomInt(rng, 1, 20);
    Vec x = randomVec(rng, rows * cols, -3, 3),
        probe = randomVec(rng, rows * cols);
    for (bool log : {false, true}) {
      SCOPED_TRACE(log ? "log_softmax" : "softmax");
      auto forward = [&](Vec &y) {
        if (log)
          logSoftmaxForward<double>(rows, cols, x.data(), y.data());
        else
          softmaxForward<double>(rows, cols, x.data(), y.data());
      };
      auto loss = [&] {
        Vec y(rows * cols);
        forward(y);
        return dotv(probe, y);
      };
      Vec y(rows * cols), dx(rows * cols);
      forward(y);
      if (log)
        logSoftmaxBackward<double>(rows, cols, y.data(), probe.data(),
                                   dx.data());
      else
        softmaxBackward<double>(rows, cols, y.data(), probe.data(), dx.data());
      Vec numeric = numericGradient(x, loss);
      if (cols == 1) { // A one-class softmax is constant.
        EXPECT_LT(maxAbs(dx), 1e-12);
        EXPECT_LT(maxAbs(numeric), 1e-9);
        continue;
      }
      expectGradient(dx, numeric, "dx");
    }
  }
}

TEST(Softmax, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(9);
  const int64_t rows = 31, cols = 50;
  Vec x = randomVec(rng, rows * cols, -5, 5), dy = randomVec(rng, rows * cols);
  Vec y(rows * cols), dx(rows * cols), ly(rows * cols), ldx(rows * cols);
  softmaxForward<double>(rows, cols, x.data(), y.data());
  softmaxBackward<double>(rows, cols, y.data(), dy.data(), dx.data());
  logSoftmaxForward<double>(rows, cols, x.data(), ly.data());
  logSoftmaxBackward<double>(rows, cols, ly.data(), dy.data(), ldx.data());
  TestContext ctx;
  FVec xf = toFloat(x), dyf = toFloat(dy), yf(rows * cols), dxf(rows * cols),
       lyf(rows * cols), ldxf(rows * cols);
  loom_softmax_fwd(&ctx, rows, cols, xf.data(), yf.data());
  loom_softmax_bwd(&ctx, rows, cols, yf.data(), dyf.data(), dxf.data());
  loom_log_softmax_fwd(&ctx, rows, cols, xf.data(), lyf.data());
  loom_log_softmax_bwd(&ctx, rows, cols, lyf.data(), dyf.data(), ldxf.data());
  expectAgrees(yf, y, "softmax y");
  expectAgrees(dxf, dx, "softmax dx");
  expectAgrees(lyf, ly, "log_softmax y");
  expectAgrees(ldxf, ldx, "log_softmax dx");
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

TEST(CrossEntropy, ForwardIsTheMeanOverCountedRows) {
  std::mt19937_64 rng(10);
  const int64_t rows = 6, classes = 5;
  Vec logits = randomVec(rng, rows * classes, -2, 2);
  const std::vector<int32_t> target = {2, -100, 0, 4, -100, 1};
  Vec loss(1), lse(rows), stats(2);
  ASSERT_EQ(crossEntropyForward<double>(rows, classes, logits.data(),
                                        target.data(), -100, loss.data(),
                                        lse.data(), stats.data()),
            "");
  double total = 0;
  int counted = 0, correct = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0;
    int best = 0;
    for (int c = 0; c < classes; ++c) {
      z += std::exp(logits[r * classes + c]);
      if (logits[r * classes + c] > logits[r * classes + best])
        best = c;
    }
    EXPECT_NEAR(lse[r], std::log(z), 1e-14);
    if (target[r] == -100)
      continue;
    ++counted;
    correct += best == target[r];
    total += std::log(z) - logits[r * classes + target[r]];
  }
  EXPECT_NEAR(loss[0], total / counted, 1e-14);
  EXPECT_EQ(stats[0], 4);
  EXPECT_EQ(stats[1], correct);

  // An ignore_index inside [0, classes) ignores that class's rows.
  ASSERT_EQ(crossEntropyForward<double>(rows, classes, logits.data(),
                                        target.data(), 0, loss.data(), nullptr,
                                        stats.data()),
            "target -100 at row 1 is outside the classes [0, 5) and is not "
            "ignore_index 0");
  const std::vector<int32_t> target2 = {2, 0, 0, 4, 3, 1};
  ASSERT_EQ(crossEntropyForward<double>(rows, classes, logits.data(),
                                        target2.data(), 0, loss.data(), nullptr,
                                        stats.data()),
            "");
  EXPECT_EQ(stats[0], 4);
}

TEST(CrossEntropy, ArgmaxCountsTheFirstMaximum) {
  const Vec logits = {1, 3, 3, 0, /**/ 2, 2, 1, 1};
  const std::vector<int32_t> target = {2, 0};
  Vec loss(1), stats(2);
  ASSERT_EQ(crossEntropyForward<double>(2, 4, logits.data(), target.data(),
                                        -100, loss.data(), nullptr,
                                        stats.data()),
            "");
  EXPECT_EQ(stats[1], 1); // Row 0's first maximum is class 1, row 1's is 0.
}

TEST(CrossEntropy, Bf16LogitsAreTheWidenedLogitsBitForBit) {
  // The ABI's bf16 forms (a bf16 program's casts folded in) against the
  // fp32 ones on the widened logits, the gradient rounded afterwards.
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int64_t rows = 37, classes = 53;
  std::vector<uint16_t> low(rows * classes);
  std::vector<float> wide(rows * classes);
  for (size_t i = 0; i < low.size(); ++i) {
    low[i] = loom::kernels::toBF16(normal(rng));
    wide[i] = loom::kernels::fromBF16(low[i]);
  }
  std::vector<int32_t> target(rows);
  for (int64_t r = 0; r < rows; ++r)
    target[r] = r % 6 == 1 ? -100 : int32_t(rng() % classes);
  loom_ctx ctx;
  float loss[2], stats[2][2];
  std::vector<float> lse(rows), lseWide(rows);
  loom_cross_entropy_fwd_bf16(&ctx, rows, classes, low.data(), target.data(),
                              -100, &loss[0], lse.data(), stats[0]);
  loom_cross_entropy_fwd(&ctx, rows, classes, wide.data(), target.data(), -100,
                         &loss[1], lseWide.data(), stats[1]);
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  EXPECT_EQ(std::memcmp(&loss[0], &loss[1], sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(lse.data(), lseWide.data(), rows * sizeof(float)), 0);
  EXPECT_EQ(stats[0][0], stats[1][0]);
  EXPECT_EQ(stats[0][1], stats[1][1]);
  const float dloss = 0.75f;
  std::vector<uint16_t> grad(rows * classes, 0xffff);
  std::vector<float> gradWide(rows * classes);
  loom_cross_entropy_bwd_bf16(&ctx, rows, classes, low.data(), target.data(),
                              -100, lse.data(), &dloss, grad.data());
  loom_cross_entropy_bwd(&ctx, rows, classes, wide.data(), target.data(), -100,
                         lse.data(), &dloss, gradWide.data());
  ASSERT_FALSE(ctx.failed) << ctx.errorMessage;
  for (size_t i = 0; i < grad.size(); ++i)
    ASSERT_EQ(grad[i], loom::kernels::toBF16(gradWide[i])) << "element " << i;
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    const int64_t rows = randomInt(rng, 2, 8), classes = randomInt(rng, 2, 12);
    Vec logits = randomVec(rng, rows * classes, -3, 3);
    std::vector<int32_t> target(rows);
    for (int64_t r = 0; r < rows; ++r)
      target[r] = int32_t(randomInt(rng, 0, classes - 1));
    target[randomInt(rng, 0, rows - 1)] = -100; // At least one ignored row.
    const Vec dloss = {0.7};
    auto loss = [&] {
      Vec l(1);
      crossEntropyForward<double>(rows, classes, logits.data(), target.data(),
                                  -100, l.data(), nullptr, nullptr);
      return dloss[0] * l[0];
    };
    Vec l(1), lse(rows), dlogits(rows * classes, 99.0);
    crossEntropyForward<double>(rows, classes, logits.data(), target.data(),
                                -100, l.data(), lse.data(), nullptr);
    ASSERT_EQ(crossEntropyBackward<double>(rows, classes, logits.data(),
                                           target.data(), -100, lse.data(),
                                           dloss.data(), dlogits.data()),
              "");
    expectGradient(dlogits, numericGradient(logits, loss), "dlogits");
    for (int64_t r = 0; r < rows; ++r)
      if (target[r] == -100) {
        for (int64_t c = 0; c < classes; ++c)
          EXPECT_EQ(dlogits[r * classes + c], 0.0);
      }
  }
}

TEST(CrossEntropy, AllRowsIgnoredGivesZero) {
  const Vec logits = {1, 2, 3, 4};
  const std::vector<int32_t> target = {-100, -100};
  Vec loss = {5}, lse(2), stats = {9, 9}, dlogits(4, 1.0);
  const Vec dloss = {1};
  ASSERT_EQ(crossEntropyForward<double>(2, 2, logits.data(), target.data(),
                                        -100, loss.data(), lse.data(),
                                        stats.data()),
            "");
  EXPECT_EQ(loss[0], 0.0);
  EXPECT_EQ(stats, (Vec{0, 0}));
  ASSERT_EQ(crossEntropyBackward<double>(2, 2, logits.data(), target.data(),
                                         -100, lse.data(), dloss.data(),
                                         dlogits.data()),
            "");
  EXPECT_EQ(dlogits, Vec(4, 0.0));
}

TEST(CrossEntropy, TargetOutOfRangeIsAnError) {
  const int64_t rows = 5, classes = 10;
  FVec logits(rows * classes, 0.0f), loss = {-1.0f}, lse(rows), stats(2),
                                     dloss = {1.0f}, dlogits(rows * classes);
  const std::vector<int32_t> target = {1, 2, -100, 12, 3};
  TestContext ctx;
  loom_cross_entropy_fwd(&ctx, rows, classes, logits.data(), target.data(),
                         -100, loss.data(), lse.data(), stats.data());
  ASSERT_TRUE(ctx.failed);
  EXPECT_EQ(ctx.errorOp, "cross_entropy");
  EXPECT_EQ(ctx.errorMessage, "target 12 at row 3 is outside the classes "
                              "[0, 10) and is not ignore_index -100");
  EXPECT_EQ(loss[0], -1.0f); // Nothing written.

  TestContext ctx2;
  loom_cross_entropy_bwd(&ctx2, rows, classes, logits.data(), target.data(),
                         -100, lse.data(), dloss.data(), dlogits.data());
  ASSERT_TRUE(ctx2.failed);
  EXPECT_EQ(ctx2.errorOp, "cross_entropy");
}

TEST(CrossEntropy, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(11);
  const int64_t rows = 64, classes = 33;
  Vec logits = randomVec(rng, rows * classes, -4, 4);
  std::vector<int32_t> target(rows);
  for (int64_t r = 0; r < rows; ++r)
    target[r] = r % 7 == 3 ? -1 : int32_t(randomInt(rng, 0, classes - 1));
  Vec loss(1), lse(rows), stats(2), dlogits(rows * classes);
  const Vec dloss = {1.3};
  crossEntropyForward<double>(rows, classes, logits.data(), target.data(), -1,
                              loss.data(), lse.data(), stats.data());
  crossEntropyBackward<double>(rows, classes, logits.data(), target.data(), -1,
                               lse.data(), dloss.data(), dlogits.data());
  TestContext ctx;
  FVec lf = toFloat(logits), lossf(1), lsef(rows), statsf(2),
       dlf(rows * classes), dlossf = {1.3f};
  loom_cross_entropy_fwd(&ctx, rows, classes, lf.data(), target.data(), -1,
                         lossf.data(), lsef.data(), statsf.data());
  loom_cross_entropy_bwd(&ctx, rows, classes, lf.data(), target.data(), -1,
                         lsef.data(), dlossf.data(), dlf.data());
  EXPECT_FALSE(ctx.failed) << ctx.errorMessage;
  expectAgrees(lossf, loss, "loss");
  expectAgrees(lsef, lse, "lse");
  expectAgrees(statsf, stats, "stats", 0);
  expectAgrees(dlf, dlogits, "dlogits");
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

TEST(Embedding, ForwardGathersRows) {
  const int64_t vocab = 4, dim = 3;
  Vec table(vocab * dim);
  for (size_t i = 0; i < table.size(); ++i)
    table[i] = double(i);
  const std::vector<int32_t> ids = {3, 0, 3, 1};
  Vec out(ids.size() * dim);
  ASSERT_EQ(embeddingForward<double>(int64_t(ids.size()), vocab, dim,
                                     ids.data(), table.data(), out.data()),
            "");
  EXPECT_EQ(out, (Vec{9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5}));
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    const int64_t vocab = randomInt(rng, 2, 9), dim = randomInt(rng, 1, 6),
                  n = randomInt(rng, 1, 20);
    std::vector<int32_t> ids(n);
    for (int32_t &id : ids)
      id = int32_t(randomInt(rng, 0, vocab - 2)); // The last id stays unused.
    Vec table = randomVec(rng, vocab * dim), probe = randomVec(rng, n * dim);
    auto loss = [&] {
      Vec out(n * dim);
      embeddingForward<double>(n, vocab, dim, ids.data(), table.data(),
                               out.data());
      return dotv(probe, out);
    };
    Vec dtable(vocab * dim, 42.0); // Overwritten, never accumulated into.
    ASSERT_EQ(embeddingBackward<double>(n, vocab, dim, ids.data(), probe.data(),
                                        dtable.data()),
              "");
    expectGradient(dtable, numericGradient(table, loss), "dtable");
    for (int64_t c = 0; c < dim; ++c)
      EXPECT_EQ(dtable[(vocab - 1) * dim + c], 0.0);
  }
}

TEST(Embedding, IdOutOfRangeIsAnError) {
  const int64_t n = 20, vocab = 256, dim = 4;
  std::vector<int32_t> ids(n, 7);
  ids[17] = 300;
  FVec table(vocab * dim, 1.0f), out(n * dim, -1.0f), dout(n * dim, 1.0f),
      dtable(vocab * dim);
  TestContext ctx;
  loom_embedding_fwd(&ctx, n, vocab, dim, ids.data(), table.data(), out.data());
  ASSERT_TRUE(ctx.failed);
  EXPECT_EQ(ctx.errorOp, "embedding");
  EXPECT_EQ(ctx.errorMessage,
            "id 300 at position 17 is outside the vocabulary [0, 256)");
  EXPECT_EQ(out, FVec(n * dim, -1.0f)); // Nothing written.

  ids[17] = 7;
  ids[2] = -1;
  TestContext ctx2;
  loom_embedding_bwd(&ctx2, n, vocab, dim, ids.data(), dout.data(),
                     dtable.data());
  ASSERT_TRUE(ctx2.failed);
  EXPECT_EQ(ctx2.errorMessage,
            "id -1 at position 2 is outside the vocabulary [0, 256)");
}

TEST(Embedding, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(12);
  const int64_t n = 300, vocab = 50, dim = 24;
  std::vector<int32_t> ids(n);
  for (int32_t &id : ids)
    id = int32_t(randomInt(rng, 0, vocab - 1));
  Vec table = randomVec(rng, vocab * dim), dout = randomVec(rng, n * dim);
  Vec out(n * dim), dtable(vocab * dim);
  embeddingForward<double>(n, vocab, dim, ids.data(), table.data(), out.data());
  embeddingBackward<double>(n, vocab, dim, ids.data(), dout.data(),
                            dtable.data());
  TestContext ctx;
  FVec tf = toFloat(table), doutf = toFloat(dout), outf(n * dim),
       dtf(vocab * dim);
  loom_embedding_fwd(&ctx, n, vocab, dim, ids.data(), tf.data(), outf.data());
  loom_embedding_bwd(&ctx, n, vocab, dim, ids.data(), doutf.data(), dtf.data());
  EXPECT_FALSE(ctx.failed) << ctx.errorMessage;
  expectAgrees(outf, out, "out", 0);
  expectAgrees(dtf, dtable, "dtable");
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

struct AttentionShape {
  int64_t B, H, Tq, Tk, D, Dv;
  bool causal;
};

std::string describe(const AttentionShape &s) {
  return "B " + std::to_string(s.B) + " H " + std::to_string(s.H) + " Tq " +
         std::to_string(s.Tq) + " Tk " + std::to_string(s.Tk) + " D " +
         std::to_string(s.D) + " Dv " + std::to_string(s.Dv) +
         (s.causal ? " causal" : "");
}

/// softmax(q k^T / sqrt(D) + mask) v with an explicit score matrix.
void naiveAttention(const AttentionShape &s, const Vec &q, const Vec &k,
                    const Vec &v, Vec &out, Vec &lse) {
  out.assign(s.B * s.H * s.Tq * s.Dv, 0.0);
  lse.assign(s.B * s.H * s.Tq, 0.0);
  for (int64_t bh = 0; bh < s.B * s.H; ++bh)
    for (int64_t i = 0; i < s.Tq; ++i) {
      Vec score(s.Tk);
      double m = -kInf;
      for (int64_t j = 0; j < s.Tk; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < s.D; ++c)
          dot += q[(bh * s.Tq + i) * s.D + c] * k[(bh * s.Tk + j) * s.D + c];
        score[j] = s.causal && j > i + (s.Tk - s.Tq)
                       ? -kInf
                       : dot / std::sqrt(double(s.D));
        m = std::max(m, score[j]);
      }
      if (m == -kInf) { // Every key masked.
        lse[bh * s.Tq + i] = -kInf;
        continue;
      }
      double z = 0;
      for (int64_t j = 0; j < s.Tk; ++j)
        z += std::exp(score[j] - m);
      lse[bh * s.Tq + i] = m + std::log(z);
      for (int64_t j = 0; j < s.Tk; ++j)
        for (int64_t c = 0; c < s.Dv; ++c)
          out[(bh * s.Tq + i) * s.Dv + c] +=
              std::exp(score[j] - m) / z * v[(bh * s.Tk + j) * s.Dv + c];
    }
}

const AttentionShape kAttentionShapes[] = {
    {2, 3, 5, 5, 4, 3, false}, {2, 3, 5, 5, 4, 3, true},
    {1, 2, 3, 6, 5, 2, false}, {1, 2, 3, 6, 5, 2, true},
    {2, 1, 6, 3, 3, 4, true},  {1, 1, 1, 1, 1, 1, false},
};

TEST(Attention, ForwardMatchesExplicitSoftmax) {
  std::mt19937_64 rng(13);
  for (const AttentionShape &s : kAttentionShapes) {
    SCOPED_TRACE(describe(s));
    Vec q = randomVec(rng, s.B * s.H * s.Tq * s.D, -2, 2),
        k = randomVec(rng, s.B * s.H * s.Tk * s.D, -2, 2),
        v = randomVec(rng, s.B * s.H * s.Tk * s.Dv);
    Vec expectedOut, expectedLse;
    naiveAttention(s, q, k, v, expectedOut, expectedLse);
    Vec out(expectedOut.size(), 7.0), lse(expectedLse.size());
    attentionForward<double>(s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                             q.data(), k.data(), v.data(), out.data(),
                             lse.data());
    EXPECT_LT(relativeError(out, expectedOut), 1e-14);
    for (size_t r = 0; r < lse.size(); ++r) {
      if (expectedLse[r] == -kInf)
        EXPECT_EQ(lse[r], -kInf);
      else
        EXPECT_NEAR(lse[r], expectedLse[r], 1e-13);
    }
  }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 0;
  for (const AttentionShape &s : kAttentionShapes)
    for (int repeat = 0; repeat < 2; ++repeat) {
      SCOPED_TRACE(describe(s) + " seed " + std::to_string(++seed));
      std::mt19937_64 rng(seed);
      Vec q = randomVec(rng, s.B * s.H * s.Tq * s.D, -2, 2),
          k = randomVec(rng, s.B * s.H * s.Tk * s.D, -2, 2),
          v = randomVec(rng, s.B * s.H * s.Tk * s.Dv),
          probe = randomVec(rng, s.B * s.H * s.Tq * s.Dv);
      auto loss = [&] {
        Vec out(probe.size()), lse(s.B * s.H * s.Tq);
        attentionForward<double>(s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                                 q.data(), k.data(), v.data(), out.data(),
                                 lse.data());
        return dotv(probe, out);
      };
      Vec out(probe.size()), lse(s.B * s.H * s.Tq);
      attentionForward<double>(s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                               q.data(), k.data(), v.data(), out.data(),
                               lse.data());
      Vec dq(q.size()), dk(k.size()), dv(v.size());
      attentionBackward<double>(s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                                q.data(), k.data(), v.data(), out.data(),
                                lse.data(), probe.data(), dq.data(), dk.data(),
                                dv.data());
      if (s.Tk > 1) // One key: the output is v whatever q and k are.
        expectGradient(dq, numericGradient(q, loss), "dq");
      if (s.Tk > 1)
        expectGradient(dk, numericGradient(k, loss), "dk");
      expectGradient(dv, numericGradient(v, loss), "dv");
    }
}

TEST(Attention, FullyMaskedRowsAreZeroWithNoGradient) {
  // Causal with Tq > Tk: query i sees keys <= i - 3, so rows 0..2 see none.
  std::mt19937_64 rng(14);
  Vec q = randomVec(rng, 12), k = randomVec(rng, 6), v = randomVec(rng, 6),
      dout = randomVec(rng, 12);
  Vec out(12, 5.0), lse(6), dq(12), dk(6), dv(6);
  attentionForward<double>(1, 1, 6, 3, 2, 2, true, q.data(), k.data(), v.data(),
                           out.data(), lse.data());
  attentionBackward<double>(1, 1, 6, 3, 2, 2, true, q.data(), k.data(),
                            v.data(), out.data(), lse.data(), dout.data(),
                            dq.data(), dk.data(), dv.data());
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(lse[i], -kInf);
    for (int64_t c = 0; c < 2; ++c) {
      EXPECT_EQ(out[i * 2 + c], 0.0);
      EXPECT_EQ(dq[i * 2 + c], 0.0);
    }
  }
  for (double g : dk)
    EXPECT_TRUE(std::isfinite(g));
  // Row 3 sees only key 0: its output is v[0].
  EXPECT_NEAR(out[6], v[0], 1e-15);
  EXPECT_NEAR(out[7], v[1], 1e-15);
}

TEST(Attention, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(15);
  for (const AttentionShape &s : {AttentionShape{2, 2, 17, 23, 8, 6, false},
                                  AttentionShape{2, 2, 19, 19, 8, 8, true},
                                  AttentionShape{1, 3, 12, 20, 4, 5, true}}) {
    SCOPED_TRACE(describe(s));
    Vec q = randomVec(rng, s.B * s.H * s.Tq * s.D, -2, 2),
        k = randomVec(rng, s.B * s.H * s.Tk * s.D, -2, 2),
        v = randomVec(rng, s.B * s.H * s.Tk * s.Dv),
        dout = randomVec(rng, s.B * s.H * s.Tq * s.Dv);
    Vec out(dout.size()), lse(s.B * s.H * s.Tq), dq(q.size()), dk(k.size()),
        dv(v.size());
    attentionForward<double>(s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                             q.data(), k.data(), v.data(), out.data(),
                             lse.data());
    attentionBackward<double>(
        s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal, q.data(), k.data(), v.data(),
        out.data(), lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
    TestContext ctx;
    FVec qf = toFloat(q), kf = toFloat(k), vf = toFloat(v),
         doutf = toFloat(dout), outf(out.size()), lsef(lse.size()),
         dqf(q.size()), dkf(k.size()), dvf(v.size());
    loom_attention_fwd(&ctx, s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                       qf.data(), kf.data(), vf.data(), outf.data(),
                       lsef.data());
    loom_attention_bwd(&ctx, s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                       qf.data(), kf.data(), vf.data(), outf.data(),
                       lsef.data(), doutf.data(), dqf.data(), dkf.data(),
                       dvf.data());
    expectAgrees(outf, out, "out");
    expectAgrees(lsef, lse, "lse");
    expectAgrees(dqf, dq, "dq");
    expectAgrees(dkf, dk, "dk");
    expectAgrees(dvf, dv, "dv");
  }
}

//===----------------------------------------------------------------------===//
// Gated attention
//===----------------------------------------------------------------------===//

struct GatedInputs {
  int64_t B, H, T, D, Dv;
  bool causal;
  Vec q, k, v, wg, bg;

  GatedInputs(std::mt19937_64 &rng, int64_t B, int64_t H, int64_t T, int64_t D,
              int64_t Dv, bool causal)
      : B(B), H(H), T(T), D(D), Dv(Dv), causal(causal),
        q(randomVec(rng, B * H * T * D, -2, 2)),
        k(randomVec(rng, B * H * T * D, -2, 2)),
        v(randomVec(rng, B * H * T * Dv)), wg(randomVec(rng, H * 2 * D)),
        bg(randomVec(rng, H, -0.5, 0.5)) {}

  int64_t rows() const { return B * H * T; }

  /// Runs the double template; returns out and fills the saved tensors.
  Vec forward(double threshold, Vec &lse, Vec &gate, Vec &attn) const {
    Vec out(rows() * Dv);
    lse.assign(rows(), 0.0);
    gate.assign(rows(), 0.0);
    attn.assign(rows() * Dv, 0.0);
    gatedAttentionForward<double>(
        B, H, T, D, Dv, causal, threshold, q.data(), k.data(), v.data(),
        wg.data(), bg.data(), out.data(), lse.data(), gate.data(), attn.data());
    return out;
  }
};

TEST(GatedAttention, ForwardMatchesTheFormula) {
  std::mt19937_64 rng(16);
  for (bool causal : {false, true}) {
    GatedInputs in(rng, 2, 3, 5, 4, 3, causal);
    Vec lse, gate, attn;
    Vec out = in.forward(-1, lse, gate, attn);
    const AttentionShape s = {in.B, in.H, in.T, in.T, in.D, in.Dv, causal};
    Vec expectedAttn, expectedLse;
    naiveAttention(s, in.q, in.k, in.v, expectedAttn, expectedLse);
    EXPECT_LT(relativeError(attn, expectedAttn), 1e-14);
    for (int64_t b = 0; b < in.B; ++b)
      for (int64_t h = 0; h < in.H; ++h)
        for (int64_t t = 0; t < in.T; ++t) {
          const int64_t row = (b * in.H + h) * in.T + t;
          double z = in.bg[h];
          for (int64_t j = 0; j < in.D; ++j)
            z += in.q[row * in.D + j] * in.wg[h * 2 * in.D + j] +
                 in.k[row * in.D + j] * in.wg[h * 2 * in.D + in.D + j];
          const double g = 1 / (1 + std::exp(-z));
          EXPECT_NEAR(gate[row], g, 1e-15);
          EXPECT_NEAR(lse[row], expectedLse[row], 1e-13);
          for (int64_t c = 0; c < in.Dv; ++c)
            EXPECT_NEAR(out[row * in.Dv + c], g * expectedAttn[row * in.Dv + c],
                        1e-14);
        }
  }
}

/// Checks dq, dk, dv, dwg, dbg of <probe, out> against finite differences.
void checkGatedGradients(GatedInputs &in, double threshold, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Vec probe = randomVec(rng, in.rows() * in.Dv);
  auto loss = [&] {
    Vec lse, gate, attn;
    return dotv(probe, in.forward(threshold, lse, gate, attn));
  };
  Vec lse, gate, attn;
  in.forward(threshold, lse, gate, attn);
  Vec dq(in.q.size()), dk(in.k.size()), dv(in.v.size()), dwg(in.wg.size()),
      dbg(in.bg.size());
  gatedAttentionBackward<double>(
      in.B, in.H, in.T, in.D, in.Dv, in.causal, threshold, in.q.data(),
      in.k.data(), in.v.data(), in.wg.data(), lse.data(), gate.data(),
      attn.data(), probe.data(), dq.data(), dk.data(), dv.data(), dwg.data(),
      dbg.data());
  expectGradient(dq, numericGradient(in.q, loss), "dq");
  expectGradient(dk, numericGradient(in.k, loss), "dk");
  expectGradient(dv, numericGradient(in.v, loss), "dv");
  expectGradient(dwg, numericGradient(in.wg, loss), "dwg");
  expectGradient(dbg, numericGradient(in.bg, loss), "dbg");
}

TEST(GatedAttention, BackwardMatchesFiniteDifferences) {
  for (uint64_t seed = 1; seed <= 4; ++seed)
    for (bool causal : {true, false}) {
      SCOPED_TRACE(testing::Message()
                   << "seed " << seed << (causal ? " causal" : ""));
      std::mt19937_64 rng(seed);
      GatedInputs in(rng, randomInt(rng, 1, 2), randomInt(rng, 1, 3),
                     randomInt(rng, 2, 6), randomInt(rng, 1, 5),
                     randomInt(rng, 1, 4), causal);
      checkGatedGradients(in, -1, seed + 100);
    }
}

TEST(GatedAttention, ThresholdSkipsWeaklyGatedRows) {
  std::mt19937_64 rng(17);
  GatedInputs in(rng, 2, 3, 6, 4, 3, true);
  Vec lse, gate, attn, lseExact, gateExact, attnExact;
  Vec exact = in.forward(-1, lseExact, gateExact, attnExact);
  Vec approx = in.forward(0.5, lse, gate, attn);
  int skipped = 0;
  for (int64_t row = 0; row < in.rows(); ++row) {
    ASSERT_GT(std::abs(gate[row] - 0.5), 1e-4) << "pick another seed";
    const bool skip = gate[row] < 0.5;
    skipped += skip;
    EXPECT_EQ(gate[row], gateExact[row]);
    if (skip) {
      EXPECT_EQ(lse[row], -kInf);
    }
    for (int64_t c = 0; c < in.Dv; ++c) {
      const int64_t i = row * in.Dv + c;
      EXPECT_EQ(approx[i], skip ? 0.0 : exact[i]);
      EXPECT_EQ(attn[i], skip ? 0.0 : attnExact[i]);
    }
  }
  EXPECT_GT(skipped, 0);
  EXPECT_LT(skipped, in.rows());
  // Away from the threshold the approximate function is smooth too.
  checkGatedGradients(in, 0.5, 117);
}

TEST(GatedAttention, FloatAbiMatchesDoubleTemplate) {
  std::mt19937_64 rng(18);
  for (bool causal : {true, false}) {
    GatedInputs in(rng, 2, 3, 21, 8, 6, causal);
    Vec dout = randomVec(rng, in.rows() * in.Dv);
    Vec lse, gate, attn;
    Vec out = in.forward(-1, lse, gate, attn);
    Vec dq(in.q.size()), dk(in.k.size()), dv(in.v.size()), dwg(in.wg.size()),
        dbg(in.bg.size());
    gatedAttentionBackward<double>(
        in.B, in.H, in.T, in.D, in.Dv, causal, -1, in.q.data(), in.k.data(),
        in.v.data(), in.wg.data(), lse.data(), gate.data(), attn.data(),
        dout.data(), dq.data(), dk.data(), dv.data(), dwg.data(), dbg.data());
    TestContext ctx;
    FVec qf = toFloat(in.q), kf = toFloat(in.k), vf = toFloat(in.v),
         wgf = toFloat(in.wg), bgf = toFloat(in.bg), doutf = toFloat(dout);
    FVec outf(out.size()), lsef(lse.size()), gatef(gate.size()),
        attnf(attn.size()), dqf(dq.size()), dkf(dk.size()), dvf(dv.size()),
        dwgf(dwg.size()), dbgf(dbg.size());
    loom_gated_attention_fwd(&ctx, in.B, in.H, in.T, in.D, in.Dv, causal, -1.0f,
                             qf.data(), kf.data(), vf.data(), wgf.data(),
                             bgf.data(), outf.data(), lsef.data(), gatef.data(),
                             attnf.data());
    loom_gated_attention_bwd(&ctx, in.B, in.H, in.T, in.D, in.Dv, causal, -1.0f,
                             qf.data(), kf.data(), vf.data(), wgf.data(),
                             bgf.data(), lsef.data(), gatef.data(),
                             attnf.data(), doutf.data(), dqf.data(), dkf.data(),
                             dvf.data(), dwgf.data(), dbgf.data());
    expectAgrees(outf, out, "out");
    expectAgrees(lsef, lse, "lse");
    expectAgrees(gatef, gate, "gate");
    expectAgrees(attnf, attn, "attn");
    expectAgrees(dqf, dq, "dq");
    expectAgrees(dkf, dk, "dk");
    expectAgrees(dvf, dv, "dv");
    expectAgrees(dwgf, dwg, "dwg");
    expectAgrees(dbgf, dbg, "dbg");
  }
}

TEST(Attention, FloatAbiMatchesDoubleTemplateOverSeveralRowBlocks) {
  // Shapes with several blocks of kAttentionRowBlock query rows, ragged
  // last blocks, more keys than queries and (causal) fully masked rows.
  std::mt19937_64 rng(24);
  for (const AttentionShape &s :
       {AttentionShape{2, 2, 70, 70, 16, 12, true},
        AttentionShape{1, 2, 45, 77, 9, 8, true},
        AttentionShape{1, 2, 77, 45, 8, 9, true},
        AttentionShape{2, 1, 65, 33, 32, 32, false}}) {
    SCOPED_TRACE(describe(s));
    Vec q = randomVec(rng, s.B * s.H * s.Tq * s.D, -2, 2),
        k = randomVec(rng, s.B * s.H * s.Tk * s.D, -2, 2),
        v = randomVec(rng, s.B * s.H * s.Tk * s.Dv),
        dout = randomVec(rng, s.B * s.H * s.Tq * s.Dv);
    Vec out(dout.size()), lse(s.B * s.H * s.Tq), dq(q.size()), dk(k.size()),
        dv(v.size());
    attentionForward<double>(s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                             q.data(), k.data(), v.data(), out.data(),
                             lse.data());
    attentionBackward<double>(
        s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal, q.data(), k.data(), v.data(),
        out.data(), lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
    Vec expectedOut, expectedLse;
    naiveAttention(s, q, k, v, expectedOut, expectedLse);
    EXPECT_LT(relativeError(out, expectedOut), 1e-14);
    TestContext ctx(3);
    FVec qf = toFloat(q), kf = toFloat(k), vf = toFloat(v),
         doutf = toFloat(dout), outf(out.size()), lsef(lse.size()),
         dqf(q.size()), dkf(k.size()), dvf(v.size());
    loom_attention_fwd(&ctx, s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                       qf.data(), kf.data(), vf.data(), outf.data(),
                       lsef.data());
    loom_attention_bwd(&ctx, s.B, s.H, s.Tq, s.Tk, s.D, s.Dv, s.causal,
                       qf.data(), kf.data(), vf.data(), outf.data(),
                       lsef.data(), doutf.data(), dqf.data(), dkf.data(),
                       dvf.data());
    for (size_t r = 0; r < lse.size(); ++r) { // Masked rows agree exactly.
      if (lse[r] == -kInf) {
        EXPECT_EQ(lsef[r], -std::numeric_limits<float>::infinity());
      }
    }
    for (double &l : lse) // -inf - -inf is NaN: compare the finite ones.
      l = l == -kInf ? 0.0 : l;
    for (float &l : lsef)
      l = l == -std::numeric_limits<float>::infinity() ? 0.0f : l;
    expectAgrees(outf, out, "out");
    expectAgrees(lsef, lse, "lse");
    expectAgrees(dqf, dq, "dq");
    expectAgrees(dkf, dk, "dk");
    expectAgrees(dvf, dv, "dv");
  }
}

TEST(GatedAttention, FloatAbiMatchesDoubleTemplateOverSeveralRowBlocks) {
  std::mt19937_64 rng(25);
  for (double threshold : {-1.0, 0.5}) {
    SCOPED_TRACE(testing::Message() << "threshold " << threshold);
    GatedInputs in(rng, 2, 2, 70, 16, 12, true);
    Vec dout = randomVec(rng, in.rows() * in.Dv);
    Vec lse, gate, attn;
    Vec out = in.forward(threshold, lse, gate, attn);
    for (double g : gate) // The float gates must fall on the same side.
      ASSERT_GT(std::abs(g - 0.5), 1e-4) << "pick another seed";
    Vec dq(in.q.size()), dk(in.k.size()), dv(in.v.size()), dwg(in.wg.size()),
        dbg(in.bg.size());
    gatedAttentionBackward<double>(
        in.B, in.H, in.T, in.D, in.Dv, true, threshold, in.q.data(),
        in.k.data(), in.v.data(), in.wg.data(), lse.data(), gate.data(),
        attn.data(), dout.data(), dq.data(), dk.data(), dv.data(), dwg.data(),
        dbg.data());
    TestContext ctx(2);
    FVec qf = toFloat(in.q), kf = toFloat(in.k), vf = toFloat(in.v),
         wgf = toFloat(in.wg), bgf = toFloat(in.bg), doutf = toFloat(dout);
    FVec outf(out.size()), lsef(lse.size()), gatef(gate.size()),
        attnf(attn.size()), dqf(dq.size()), dkf(dk.size()), dvf(dv.size()),
        dwgf(dwg.size()), dbgf(dbg.size());
    loom_gated_attention_fwd(&ctx, in.B, in.H, in.T, in.D, in.Dv, true,
                             float(threshold), qf.data(), kf.data(), vf.data(),
                             wgf.data(), bgf.data(), outf.data(), lsef.data(),
                             gatef.data(), attnf.data());
    loom_gated_attention_bwd(&ctx, in.B, in.H, in.T, in.D, in.Dv, true,
                             float(threshold), qf.data(), kf.data(), vf.data(),
                             wgf.data(), bgf.data(), lsef.data(), gatef.data(),
                             attnf.data(), doutf.data(), dqf.data(), dkf.data(),
                             dvf.data(), dwgf.data(), dbgf.data());
    int skipped = 0;
    for (size_t r = 0; r < lse.size(); ++r)
      if (lse[r] == -kInf) {
        ++skipped;
        EXPECT_EQ(lsef[r], -std::numeric_limits<float>::infinity());
        lse[r] = 0;
        lsef[r] = 0;
      }
    EXPECT_EQ(skipped > 0, threshold >= 0);
    expectAgrees(outf, out, "out");
    expectAgrees(lsef, lse, "lse");
    expectAgrees(gatef, gate, "gate");
    expectAgrees(attnf, attn, "attn");
    expectAgrees(dqf, dq, "dq");
    expectAgrees(dkf, dk, "dk");
    expectAgrees(dvf, dv, "dv");
    expectAgrees(dwgf, dwg, "dwg");
    expectAgrees(dbgf, dbg, "dbg");
  }
}

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

TEST(Dropout, ForwardAndBackwardUseTheSameMask) {
  const int64_t n = 10000;
  std::mt19937_64 rng(19);
  Vec x = randomVec(rng, n, 0.5, 1.5), dy = randomVec(rng, n, 0.5, 1.5);
  Vec y(n), dx(n);
  dropoutForward<double>(n, 0.4, 123, 77, 5, x.data(), y.data());
  dropoutBackward<double>(n, 0.4, 123, 77, 5, dy.data(), dx.data());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i] == 0, dx[i] == 0) << i;
    ASSERT_EQ(y[i] == 0, !dropoutKeeps(philoxKey(123, 77), 5, i, 0.4)) << i;
  }
  // The backward pass is the transpose of the forward one.
  EXPECT_NEAR(dotv(dy, y), dotv(dx, x), 1e-9 * std::abs(dotv(dy, y)));
}

TEST(Dropout, FollowsThePhiloxConvention) {
  // Element i of dropout `key` at step s under seed S is kept when
  // uniform01(word 0 of philoxAt(S, key, s, i)) >= p.
  const uint64_t seed = 0x5eed5eed12345678ull,
                 key = fnv1a64("layers.2.drop", 13);
  const int64_t step = (int64_t(1) << 33) + 5, n = 3000;
  const double p = 0.37;
  Vec x(n, 1.0), y(n);
  dropoutForward<double>(n, p, seed, key, step, x.data(), y.data());
  for (int64_t i = 0; i < n; ++i) {
    const bool kept = uniform01(philoxAt(seed, key, step, i)[0]) >= p;
    ASSERT_EQ(y[i] != 0, kept) << i;
  }
}

TEST(Dropout, KeepsAboutOneMinusPAndScalesKeptValues) {
  const int64_t n = 400000;
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    SCOPED_TRACE(p);
    Vec x(n, 1.0), y(n);
    dropoutForward<double>(n, p, 2024, 1, 1, x.data(), y.data());
    int64_t kept = 0;
    for (double v : y) {
      if (v == 0)
        continue;
      ++kept;
      ASSERT_EQ(v, 1.0 / (1.0 - p));
    }
    // Five standard deviations of a binomial keep count.
    const double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(double(kept) / n, 1 - p, 5 * sigma);
  }
}

TEST(Dropout, ZeroAndOneAreIdentityAndZero) {
  std::mt19937_64 rng(20);
  Vec x = randomVec(rng, 1000), y(1000);
  dropoutForward<double>(1000, 0.0, 1, 2, 3, x.data(), y.data());
  EXPECT_EQ(y, x);
  dropoutForward<double>(1000, 1.0, 1, 2, 3, x.data(), y.data());
  EXPECT_EQ(y, Vec(1000, 0.0));
}

/// The positions dropout drops for (seed, key, step).
std::vector<bool> dropMask(int64_t n, uint64_t seed, uint64_t key,
                           int64_t step) {
  Vec x(n, 1.0), y(n);
  dropoutForward<double>(n, 0.5, seed, key, step, x.data(), y.data());
  std::vector<bool> mask(n);
  for (int64_t i = 0; i < n; ++i)
    mask[i] = y[i] == 0;
  return mask;
}

double fractionDifferent(const std::vector<bool> &a,
                         const std::vector<bool> &b) {
  int64_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff += a[i] != b[i];
  return double(diff) / double(a.size());
}

TEST(Dropout, DeterministicPerSeedStepAndKey) {
  const int64_t n = 20000;
  const std::vector<bool> base =
      dropMask(n, 7, fnv1a64("layers.0.drop", 13), 3);
  EXPECT_EQ(dropMask(n, 7, fnv1a64("layers.0.drop", 13), 3), base);
  // Independent masks at p = 0.5 differ in about half the positions.
  for (const std::vector<bool> &other :
       {dropMask(n, 8, fnv1a64("layers.0.drop", 13), 3),
        dropMask(n, 7, fnv1a64("layers.1.drop", 13), 3),
        dropMask(n, 7, fnv1a64("layers.0.drop", 13), 4)})
    EXPECT_NEAR(fractionDifferent(base, other), 0.5, 0.02);
  // An element's fate depends on its global index only: a shard agrees.
  const std::vector<bool> shard =
      dropMask(n / 2, 7, fnv1a64("layers.0.drop", 13), 3);
  EXPECT_TRUE(std::equal(shard.begin(), shard.end(), base.begin()));
}

TEST(Dropout, AbiUsesTheContextSeedAndStep) {
  const int64_t n = 5000;
  std::mt19937_64 rng(21);
  Vec x = randomVec(rng, n), y(n), dx(n);
  dropoutForward<double>(n, 0.25, 99, 0xabcdef, 12, x.data(), y.data());
  dropoutBackward<double>(n, 0.25, 99, 0xabcdef, 12, x.data(), dx.data());
  TestContext ctx;
  ctx.seed = 99;
  ctx.step = 12;
  FVec xf = toFloat(x), yf(n), dxf(n);
  loom_dropout_fwd(&ctx, n, 0.25f, 0xabcdef, xf.data(), yf.data());
  loom_dropout_bwd(&ctx, n, 0.25f, 0xabcdef, xf.data(), dxf.data());
  EXPECT_FALSE(ctx.failed) << ctx.errorMessage;
  expectAgrees(yf, y, "y", 1e-7);
  expectAgrees(dxf, dx, "dx", 1e-7);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(yf[i] == 0, y[i] == 0) << i;

  TestContext bad;
  loom_dropout_fwd(&bad, n, 1.5f, 1, xf.data(), yf.data());
  ASSERT_TRUE(bad.failed);
  EXPECT_EQ(bad.errorOp, "dropout");
}

//===----------------------------------------------------------------------===//
// Optimizers
//===----------------------------------------------------------------------===//

TEST(AdamW, MatchesHandComputedTorchSteps) {
  // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8,
  // weight_decay=0.01) on one parameter starting at 1, gradients 0.5, -0.25,
  // 1.0 scaled by 0.5. Step 1 by hand: g = 0.25, p = 0.999, m = 0.025,
  // v = 6.25e-5, p -= (0.1 / 0.1) * 0.025 / (0.25 + 1e-8) = 0.899000004.
  const double expectedP[] = {0.8990000039999998, 0.8714673013777327,
                              0.8047846760402851};
  const double expectedM[] = {0.025, 0.01, 0.059};
  const double expectedV[] = {6.25e-5, 7.80625e-5, 3.279844375e-4};
  const double grads[] = {0.5, -0.25, 1.0};
  double p = 1, m = 0, v = 0;
  float pf = 1, mf = 0, vf = 0;
  TestContext ctx;
  for (int t = 1; t <= 3; ++t) {
    SCOPED_TRACE(t);
    adamwStep<double>(1, &p, &grads[t - 1], &m, &v, 0.1, 0.9, 0.999, 1e-8, 0.01,
                      0.5, t);
    EXPECT_NEAR(p, expectedP[t - 1], 1e-15);
    EXPECT_NEAR(m, expectedM[t - 1], 1e-15);
    EXPECT_NEAR(v, expectedV[t - 1], 1e-18);
    const float g = float(grads[t - 1]);
    loom_adamw(&ctx, 1, &pf, &g, &mf, &vf, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f,
               0.5f, t);
    EXPECT_NEAR(pf, expectedP[t - 1], 1e-6);
  }
}

TEST(AdamW, WithoutDecayAndFloatMatchesDouble) {
  std::mt19937_64 rng(22);
  const int64_t n = 1000;
  Vec p = randomVec(rng, n), m(n, 0.0), v(n, 0.0);
  FVec pf = toFloat(p), mf(n, 0.0f), vf(n, 0.0f);
  Vec p0 = p;
  TestContext ctx;
  for (int t = 1; t <= 3; ++t) {
    Vec g = randomVec(rng, n);
    FVec gf = toFloat(g);
    adamwStep<double>(n, p.data(), g.data(), m.data(), v.data(), 1e-3, 0.9,
                      0.95, 1e-8, 0.0, 1.0, t);
    loom_adamw(&ctx, n, pf.data(), gf.data(), mf.data(), vf.data(), 1e-3f, 0.9f,
               0.95f, 1e-8f, 0.0f, 1.0f, t);
    if (t == 1) { // Adam's first step moves each weight by lr * sign(g).
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(p[i], p0[i] - 1e-3 * (g[i] > 0 ? 1 : -1), 1e-6);
    }
  }
  expectAgrees(pf, p, "param");
  expectAgrees(mf, m, "m");
  expectAgrees(vf, v, "v");
}

TEST(Sgd, MatchesHandComputedTorchSteps) {
  // torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=...)
  // on one parameter starting at 1, gradients 0.5, -0.25, 1.0 scaled by 2.
  // Step 1 by hand: g = 1 + 0.01 = 1.01 = buf; p = 1 - 0.101 = 0.899, or
  // with Nesterov p = 1 - 0.1 * (1.01 + 0.909) = 0.8081.
  const double expectedP[2][3] = {{0.899, 0.857201, 0.6187246989999999},
                                  {0.8081, 0.81975461, 0.404413515241}};
  const double expectedBuf[2][3] = {{1.01, 0.41799, 2.38476301},
                                    {1.01, 0.417081, 2.3835704461}};
  const double grads[] = {0.5, -0.25, 1.0};
  for (int nesterov = 0; nesterov < 2; ++nesterov) {
    SCOPED_TRACE(nesterov ? "nesterov" : "momentum");
    double p = 1, buf = 123;
    float pf = 1, buff = 123;
    TestContext ctx;
    for (int t = 1; t <= 3; ++t) {
      sgdStep<double>(1, &p, &grads[t - 1], &buf, 0.1, 0.9, nesterov, 0.01, 2.0,
                      t == 1);
      EXPECT_NEAR(p, expectedP[nesterov][t - 1], 1e-15);
      EXPECT_NEAR(buf, expectedBuf[nesterov][t - 1], 1e-15);
      const float g = float(grads[t - 1]);
      loom_sgd(&ctx, 1, &pf, &g, &buff, 0.1f, 0.9f, nesterov, 0.01f, 2.0f,
               t == 1);
      EXPECT_NEAR(pf, expectedP[nesterov][t - 1], 1e-6);
    }
  }
}

TEST(Sgd, PlainStepNeedsNoBuffer) {
  double p = 2;
  const double g = 0.5;
  sgdStep<double>(1, &p, &g, nullptr, 0.1, 0.0, false, 0.1, 4.0, true);
  EXPECT_DOUBLE_EQ(p, 2 - 0.1 * (0.5 * 4 + 0.1 * 2));
  float pf = 2;
  const float gf = 0.5f;
  TestContext ctx;
  loom_sgd(&ctx, 1, &pf, &gf, nullptr, 0.1f, 0.0f, 0, 0.1f, 4.0f, 1);
  EXPECT_FLOAT_EQ(pf, 1.78f);
}

TEST(SumSquares, AccumulatesInDouble) {
  const int64_t n = 100000;
  FVec x(n);
  for (int64_t i = 0; i < n; ++i)
    x[i] = float(i + 1);
  TestContext ctx;
  // sum of i^2 for i = 1..n, exact in double (below 2^53).
  EXPECT_EQ(loom_sum_squares(&ctx, n, x.data()),
            double(n) * (n + 1) * (2 * n + 1) / 6);
  EXPECT_EQ(loom_sum_squares(&ctx, 0, x.data()), 0.0);
  const Vec small = {3, -4};
  EXPECT_EQ(sumSquares<double>(2, small.data()), 25.0);
}

//===----------------------------------------------------------------------===//
// Bitwise equality across thread counts
//===----------------------------------------------------------------------===//

/// Runs `kernel(ctx)` (which returns every output, concatenated) with 1, 2,
/// 3 and 5 threads and expects bitwise-identical results.
template <class Kernel> void expectSameForAnyThreadCount(Kernel kernel) {
  TestContext one(1);
  const FVec reference = kernel(one);
  ASSERT_FALSE(one.failed) << one.errorMessage;
  for (int threads : {2, 3, 5}) {
    TestContext ctx(threads);
    const FVec result = kernel(ctx);
    ASSERT_EQ(result.size(), reference.size());
    EXPECT_EQ(std::memcmp(result.data(), reference.data(),
                          reference.size() * sizeof(float)),
              0)
        << threads << " threads";
  }
}

FVec concat(std::initializer_list<const FVec *> parts) {
  FVec all;
  for (const FVec *p : parts)
    all.insert(all.end(), p->begin(), p->end());
  return all;
}

TEST(Determinism, ResultsDoNotDependOnTheThreadCount) {
  std::mt19937_64 rng(23);
  {
    SCOPED_TRACE("reference gemm");
    const int64_t M = 100, N = 300, K = 90;
    FVec A = toFloat(randomVec(rng, M * K)), B = toFloat(randomVec(rng, K * N));
    expectSameForAnyThreadCount([&](loom_ctx &ctx) {
#ifdef _OPENMP
      omp_set_num_threads(ctx.threads);
#else
      (void)ctx;
#endif
      FVec C(M * N);
      gemm<float>(1, false, true, M, N, K, A.data(), 0, B.data(), 0, C.data(),
                  0, 1.0f, 0.0f);
      return C;
    });
  }
  {
    SCOPED_TRACE("layer_norm and rms_norm");
    const int64_t rows = 300, cols = 200;
    FVec x = toFloat(randomVec(rng, rows * cols)),
         g = toFloat(randomVec(rng, cols)), b = toFloat(randomVec(rng, cols)),
         dy = toFloat(randomVec(rng, rows * cols));
    expectSameForAnyThreadCount([&](loom_ctx &ctx) {
      FVec y(rows * cols), mean(rows), rstd(rows), dx(rows * cols), dg(cols),
          db(cols), ry(rows * cols), rrstd(rows), rdx(rows * cols), rdg(cols);
      loom_layer_norm_fwd(&ctx, rows, cols, x.data(), g.data(), b.data(), 1e-5f,
                          y.data(), mean.data(), rstd.data());
      loom_layer_norm_bwd(&ctx, rows, cols, dy.data(), x.data(), g.data(),
                          mean.data(), rstd.data(), dx.data(), dg.data(),
                          db.data());
      loom_rms_norm_fwd(&ctx, rows, cols, x.data(), g.data(), 1e-6f, ry.data(),
                        rrstd.data());
      loom_rms_norm_bwd(&ctx, rows, cols, dy.data(), x.data(), g.data(),
                        rrstd.data(), rdx.data(), rdg.data());
      return concat({&y, &mean, &rstd, &dx, &dg, &db, &ry, &rrstd, &rdx, &rdg});
    });
  }
  {
    SCOPED_TRACE("softmax and cross_entropy");
    const int64_t rows = 512, classes = 100;
    FVec x = toFloat(randomVec(rng, rows * classes, -3, 3)),
         dy = toFloat(randomVec(rng, rows * classes));
    std::vector<int32_t> target(rows);
    for (int64_t r = 0; r < rows; ++r)
      target[r] = r % 5 == 0 ? -100 : int32_t(randomInt(rng, 0, classes - 1));
    expectSameForAnyThreadCount([&](loom_ctx &ctx) {
      FVec y(rows * classes), dx(rows * classes), ly(rows * classes),
          ldx(rows * classes), loss(1), lse(rows), stats(2), dl(rows * classes),
          dloss = {1.0f};
      loom_softmax_fwd(&ctx, rows, classes, x.data(), y.data());
      loom_softmax_bwd(&ctx, rows, classes, y.data(), dy.data(), dx.data());
      loom_log_softmax_fwd(&ctx, rows, classes, x.data(), ly.data());
      loom_log_softmax_bwd(&ctx, rows, classes, ly.data(), dy.data(),
                           ldx.data());
      loom_cross_entropy_fwd(&ctx, rows, classes, x.data(), target.data(), -100,
                             loss.data(), lse.data(), stats.data());
      loom_cross_entropy_bwd(&ctx, rows, classes, x.data(), target.data(), -100,
                             lse.data(), dloss.data(), dl.data());
      return concat({&y, &dx, &ly, &ldx, &loss, &lse, &stats, &dl});
    });
  }
  {
    SCOPED_TRACE("embedding");
    const int64_t n = 4096, vocab = 100, dim = 16;
    std::vector<int32_t> ids(n);
    for (int32_t &id : ids)
      id = int32_t(randomInt(rng, 0, vocab - 1));
    FVec table = toFloat(randomVec(rng, vocab * dim)),
         dout = toFloat(randomVec(rng, n * dim));
    expectSameForAnyThreadCount([&](loom_ctx &ctx) {
      FVec out(n * dim), dtable(vocab * dim);
      loom_embedding_fwd(&ctx, n, vocab, dim, ids.data(), table.data(),
                         out.data());
      loom_embedding_bwd(&ctx, n, vocab, dim, ids.data(), dout.data(),
                         dtable.data());
      return concat({&out, &dtable});
    });
  }
  {
    SCOPED_TRACE("attention and gated attention");
    const int64_t B = 2, H = 2, T = 64, D = 16, Dv = 16, rows = B * H * T;
    FVec q = toFloat(randomVec(rng, rows * D)),
         k = toFloat(randomVec(rng, rows * D)),
         v = toFloat(randomVec(rng, rows * Dv)),
         dout = toFloat(randomVec(rng, rows * Dv)),
         wg = toFloat(randomVec(rng, H * 2 * D)),
         bg = toFloat(randomVec(rng, H));
    expectSameForAnyThreadCount([&](loom_ctx &ctx) {
      FVec out(rows * Dv), lse(rows), dq(rows * D), dk(rows * D), dv(rows * Dv),
          gout(rows * Dv), glse(rows), gate(rows), attn(rows * Dv),
          gdq(rows * D), gdk(rows * D), gdv(rows * Dv), dwg(H * 2 * D), dbg(H);
      loom_attention_fwd(&ctx, B, H, T, T, D, Dv, 1, q.data(), k.data(),
                         v.data(), out.data(), lse.data());
      loom_attention_bwd(&ctx, B, H, T, T, D, Dv, 1, q.data(), k.data(),
                         v.data(), out.data(), lse.data(), dout.data(),
                         dq.data(), dk.data(), dv.data());
      loom_gated_attention_fwd(&ctx, B, H, T, D, Dv, 1, -1.0f, q.data(),
                               k.data(), v.data(), wg.data(), bg.data(),
                               gout.data(), glse.data(), gate.data(),
                               attn.data());
      loom_gated_attention_bwd(&ctx, B, H, T, D, Dv, 1, -1.0f, q.data(),
                               k.data(), v.data(), wg.data(), bg.data(),
                               glse.data(), gate.data(), attn.data(),
                               dout.data(), gdq.data(), gdk.data(), gdv.data(),
                               dwg.data(), dbg.data());
      return concat({&out, &lse, &dq, &dk, &dv, &gout, &glse, &gate, &attn,
                     &gdq, &gdk, &gdv, &dwg, &dbg});
    });
  }
  {
    SCOPED_TRACE("dropout, optimizers, sum_squares");
    const int64_t n = 100000;
    FVec x = toFloat(randomVec(rng, n)), g = toFloat(randomVec(rng, n));
    expectSameForAnyThreadCount([&](loom_ctx &ctx) {
      ctx.seed = 5;
      ctx.step = 9;
      FVec y(n), p = x, m(n), v(n), p2 = x, buf(n);
      loom_dropout_fwd(&ctx, n, 0.3f, 11, x.data(), y.data());
      loom_adamw(&ctx, n, p.data(), g.data(), m.data(), v.data(), 1e-3f, 0.9f,
                 0.999f, 1e-8f, 0.01f, 1.0f, 1);
      loom_sgd(&ctx, n, p2.data(), g.data(), buf.data(), 0.1f, 0.9f, 1, 0.0f,
               1.0f, 1);
      const double ss = loom_sum_squares(&ctx, n, x.data());
      FVec ssBits(2);
      std::memcpy(ssBits.data(), &ss, sizeof ss);
      return concat({&y, &p, &m, &v, &p2, &buf, &ssBits});
    });
  }
}

} // namespace
