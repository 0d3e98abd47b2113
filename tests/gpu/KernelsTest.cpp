//===- KernelsTest.cpp - runtime/cuda's kernels against the CPU kernels ---===//
//
// Runs on a GPU machine (tests/gpu/run.sh). For every kernel: random inputs
// (never zeros), outputs poisoned with NaN before the run, the GPU kernel,
// and the CPU reference templates of runtime/kernels/Kernels.h on the same
// inputs; the error is ||out - ref|| / ||ref|| (a non-finite output where
// the reference is finite never passes): fp32 within 1e-5, bf16/f16 within
// 1e-2. Dropout masks, the embedding backward and the optimizers are also
// compared bit for bit where the GPU kernel promises it; data errors must
// set the device error word; reductions must repeat bitwise. One row per
// check, a summary line, exit status 1 on any failure. Then the cuBLASLt
// bf16 GEMM rate (CUDA events, median of 20 after warm-up).
//
//===----------------------------------------------------------------------===//

#include "runtime/kernels/HalfFloat.h"
#include "runtime/kernels/Kernels.h"
#include "runtime/abi/loom_abi.h"
#include "runtime/cuda/CudaKernels.h"
#include "runtime/cuda/Internal.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace kn = loom::kernels;
namespace lc = loom::cuda;

namespace {

//===----------------------------------------------------------------------===//
// Reporting
//===----------------------------------------------------------------------===//

int checks = 0, failures = 0;

void row(const std::string &name, const std::string &shape, double err,
         double tol, bool pass, const std::string &note = "") {
  ++checks;
  failures += !pass;
  char errText[32];
  if (std::isnan(err))
    std::snprintf(errText, sizeof errText, "%s", "-");
  else
    std::snprintf(errText, sizeof errText, "%.3e", err);
  char tolText[32];
  if (tol > 0)
    std::snprintf(tolText, sizeof tolText, "%.0e", tol);
  else
    std::snprintf(tolText, sizeof tolText, "%s", "exact");
  std::printf("%-28s %-30s %10s %6s  %-4s %s\n", name.c_str(), shape.c_str(),
              errText, tolText, pass ? "PASS" : "FAIL", note.c_str());
  std::fflush(stdout);
}

/// Relative L2 error; +inf when out has a non-finite value where ref has a
/// finite one (a poisoned, unwritten element never passes).
double relErr(const std::vector<double> &out, const std::vector<double> &ref) {
  if (out.size() != ref.size())
    return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i]) && std::isfinite(ref[i]))
      return INFINITY;
    const double d = out[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (den == 0)
    return std::sqrt(num);
  return std::sqrt(num / den);
}

template <class T> std::vector<double> wide(const std::vector<T> &v) {
  return std::vector<double>(v.begin(), v.end());
}

double relErrF(const std::vector<float> &out, const std::vector<float> &ref) {
  return relErr(wide(out), wide(ref));
}

bool bitwiseEqual(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t v : d)
    s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

//===----------------------------------------------------------------------===//
// Device buffers and data
//===----------------------------------------------------------------------===//

void check(cudaError_t status, const char *what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " +
                             cudaGetErrorString(status));
}

template <class T> struct Dev {
  T *p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) {
    check(cudaMalloc(reinterpret_cast<void **>(&p),
                     std::max<size_t>(1, n) * sizeof(T)),
          "cudaMalloc");
  }
  explicit Dev(const std::vector<T> &v) : Dev(v.size()) { put(v); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev &) = delete;
  Dev &operator=(const Dev &) = delete;
  void put(const std::vector<T> &v) {
    check(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
          "upload");
  }
  std::vector<T> get() const {
    std::vector<T> v(n);
    check(cudaDeviceSynchronize(), "kernel");
    check(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost),
          "download");
    return v;
  }
  /// All bits set: NaN for f32, bf16 and f16.
  void poison() { check(cudaMemset(p, 0xff, n * sizeof(T)), "poison"); }
  operator T *() const { return p; }
};

std::mt19937_64 rng(20261129);

/// Uniform in [-scale, -0.1 scale] U [0.1 scale, scale]: never zero.
std::vector<float> randomVec(size_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  std::vector<float> v(n);
  for (float &x : v)
    x = (rng() & 1 ? 1.0f : -1.0f) * u(rng) * scale;
  return v;
}

std::vector<float> positiveVec(size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float &x : v)
    x = u(rng);
  return v;
}

using loom::kernels::fromBF16;
using loom::kernels::fromF16;
using loom::kernels::toBF16;
using loom::kernels::toF16;

/// The error word must be clear after kernels on valid data.
bool noDeviceError(lc::CudaContext &ctx, const std::string &what) {
  const lc::DeviceError e = ctx.readError();
  if (e.code == 0)
    return true;
  row(what + " error word", "-", NAN, 0, false,
      "unexpected: " + lc::describeDeviceError(e));
  ctx.clearError();
  return false;
}

//===----------------------------------------------------------------------===//
// GEMM
//===----------------------------------------------------------------------===//

struct GemmCase {
  int64_t batch;
  bool ta, tb;
  int64_t M, N, K, sa, sb, sc;
  float alpha, beta;
};

std::string gemmShape(const GemmCase &g) {
  return "b" + std::to_string(g.batch) + " " + dims({g.M, g.N, g.K}) + " " +
         (g.ta ? "T" : "N") + (g.tb ? "T" : "N") +
         (g.sa == 0 && g.batch > 1 ? " sA=0" : "") +
         (g.sb == 0 && g.batch > 1 ? " sB=0" : "") +
         (g.sc == 0 && g.batch > 1 ? " sC=0" : "");
}

size_t operandSize(int64_t batch, int64_t stride, int64_t one) {
  return size_t(stride == 0 ? one : (batch - 1) * stride + one);
}

void testGemmF32(lc::CudaContext &ctx, const GemmCase &g,
                 bool fallback = false) {
  const size_t na = operandSize(g.batch, g.sa, g.M * g.K),
               nb = operandSize(g.batch, g.sb, g.K * g.N),
               nc = operandSize(g.batch, g.sc, g.M * g.N);
  const std::vector<float> a = randomVec(na), b = randomVec(nb),
                           c0 = randomVec(nc);
  Dev<float> dA(a), dB(b), dC(nc);
  if (g.beta != 0)
    dC.put(c0);
  else
    dC.poison();
  if (fallback)
    lc::detail::fallbackGemm(ctx, "gemm", 0, g.batch, g.ta, g.tb, g.M, g.N, g.K,
                             dA, g.sa, dB, g.sb, dC, g.sc, g.alpha, g.beta);
  else
    lc::gemm(ctx, g.batch, g.ta, g.tb, g.M, g.N, g.K, dA, g.sa, dB, g.sb, dC,
             g.sc, g.alpha, g.beta);
  const std::vector<float> out = dC.get();
  std::vector<double> ad = wide(a), bd = wide(b), ref = wide(c0);
  kn::gemm<double>(g.batch, g.ta, g.tb, g.M, g.N, g.K, ad.data(), g.sa,
                   bd.data(), g.sb, ref.data(), g.sc, g.alpha, g.beta);
  const double err = relErr(wide(out), ref);
  row(fallback ? "gemm f32 (fallback kernel)" : "gemm f32", gemmShape(g), err,
      1e-5, err <= 1e-5,
      "alpha " + std::to_string(g.alpha).substr(0, 4) + " beta " +
          std::to_string(g.beta).substr(0, 4));
}

void testGemm16(lc::CudaContext &ctx, const GemmCase &g, bool bf16,
                bool fallback = false) {
  const size_t na = operandSize(g.batch, g.sa, g.M * g.K),
               nb = operandSize(g.batch, g.sb, g.K * g.N),
               nc = operandSize(g.batch, g.sc, g.M * g.N);
  auto narrow = [&](const std::vector<float> &v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      h[i] = bf16 ? toBF16(v[i]) : toF16(v[i]);
    return h;
  };
  auto widen16 = [&](const std::vector<uint16_t> &h) {
    std::vector<double> v(h.size());
    for (size_t i = 0; i < h.size(); ++i)
      v[i] = bf16 ? fromBF16(h[i]) : fromF16(h[i]);
    return v;
  };
  const std::vector<uint16_t> a = narrow(randomVec(na)),
                              b = narrow(randomVec(nb));
  Dev<uint16_t> dA(a), dB(b), dC(nc);
  dC.poison();
  if (fallback)
    lc::detail::fallbackGemm(ctx, "gemm16", bf16 ? 1 : 2, g.batch, g.ta, g.tb,
                             g.M, g.N, g.K, dA, g.sa, dB, g.sb, dC, g.sc, 1.0f,
                             0.0f);
  else if (bf16)
    lc::gemmBf16(ctx, g.batch, g.ta, g.tb, g.M, g.N, g.K, dA, g.sa, dB, g.sb,
                 dC, g.sc);
  else
    lc::gemmF16(ctx, g.batch, g.ta, g.tb, g.M, g.N, g.K, dA, g.sa, dB, g.sb, dC,
                g.sc);
  const std::vector<double> out = widen16(dC.get());
  std::vector<double> ad = widen16(a), bd = widen16(b), ref(nc, 0.0);
  if (g.sc == 0 && g.batch > 1) // the last batch's product stays
    kn::gemm<double>(
        1, g.ta, g.tb, g.M, g.N, g.K, ad.data() + (g.batch - 1) * g.sa, 0,
        bd.data() + (g.batch - 1) * g.sb, 0, ref.data(), 0, 1.0, 0.0);
  else
    kn::gemm<double>(g.batch, g.ta, g.tb, g.M, g.N, g.K, ad.data(), g.sa,
                     bd.data(), g.sb, ref.data(), g.sc, 1.0, 0.0);
  const double err = relErr(out, ref);
  row(std::string(bf16 ? "gemm bf16" : "gemm f16") +
          (fallback ? " (fallback kernel)" : ""),
      gemmShape(g), err, 1e-2, err <= 1e-2);
}

void testGemms(lc::CudaContext &ctx) {
  const std::vector<GemmCase> f32 = {
      {1, false, false, 257, 129, 77, 0, 0, 0, 1.0f, 0.0f},
      {1, false, true, 100, 300, 65, 0, 0, 0, 0.5f, 0.75f},
      {1, true, false, 33, 47, 129, 0, 0, 0, 1.0f, 1.0f},
      {1, true, true, 130, 31, 255, 0, 0, 0, -1.5f, 0.0f},
      {3, false, true, 100, 200, 50, 0, 200 * 50, 100 * 200, 1.0f, 0.0f},
      {4, true, false, 64, 33, 96, 96 * 64, 0, 64 * 33, 1.0f, 0.5f},
      {2, false, false, 40, 50, 60, 40 * 60, 60 * 50, 0, 1.0f, 1.0f},
      {2, false, false, 17, 19, 0, 0, 0, 17 * 19, 2.0f, 0.5f},
      {1, false, false, 1024, 3072, 768, 0, 0, 0, 1.0f, 0.0f},
  };
  for (const GemmCase &g : f32)
    testGemmF32(ctx, g);
  const std::vector<GemmCase> h = {
      {1, false, false, 1024, 3072, 768, 0, 0, 0, 1, 0},
      {1, true, true, 333, 257, 100, 0, 0, 0, 1, 0},
      {6, false, true, 128, 77, 64, 128 * 64, 77 * 64, 128 * 77, 1, 0},
      {3, true, false, 50, 70, 90, 90 * 50, 0, 50 * 70, 1, 0},
      {3, false, false, 20, 30, 40, 20 * 40, 40 * 30, 0, 1, 0},
  };
  for (const GemmCase &g : h)
    testGemm16(ctx, g, true);
  for (const GemmCase &g : h)
    testGemm16(ctx, g, false);

  // The kernel for shapes cuBLASLt declines, on its own.
  testGemmF32(ctx, f32[3], true);
  testGemmF32(ctx, f32[5], true);
  testGemm16(ctx, h[1], true, true);
  testGemm16(ctx, h[3], false, true);

  // Plans are cached: the same shape again adds none.
  const size_t before = lc::gemmPlanCount(ctx);
  testGemmF32(ctx, f32[0]);
  const size_t after = lc::gemmPlanCount(ctx);
  // Same shape, but new allocations may differ in alignment: allow that one.
  row("gemm plan cache", std::to_string(before) + " plans", NAN, 0,
      after <= before + 1 && before > 0,
      "after a repeated shape: " + std::to_string(after) + "; " +
          std::to_string(lc::gemmFallbackCount(ctx)) +
          " shapes on the fallback kernel");
  noDeviceError(ctx, "gemm");
}

/// loom_gemm_bias_gelu_bf16 and loom_gemm_gelu_grad_bf16 (one GEMM, GELU
/// or its derivative in the epilogue) against a double reference from the
/// same bf16 inputs. `fallback`: the plain GEMM and the epilogue kernel on
/// their own, as where cuBLASLt has no fused algorithm.
void testGemmGelu(lc::CudaContext &ctx, bool ta, bool tb, int64_t M, int64_t N,
                  int64_t K, bool fallback = false) {
  auto narrow = [](const std::vector<float> &v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      h[i] = toBF16(v[i]);
    return h;
  };
  auto widen = [](const std::vector<uint16_t> &h) {
    std::vector<double> v(h.size());
    for (size_t i = 0; i < h.size(); ++i)
      v[i] = fromBF16(h[i]);
    return v;
  };
  constexpr double kS = 0.7978845608028654, kC = 0.044715;
  auto gelu = [&](double x) {
    return 0.5 * x * (1 + std::tanh(kS * (x + kC * x * x * x)));
  };
  auto dgelu = [&](double x) {
    double t = std::tanh(kS * (x + kC * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * kS * (1 + 3 * kC * x * x);
  };
  const std::vector<uint16_t> a = narrow(randomVec(size_t(M * K))),
                              b = narrow(randomVec(size_t(K * N), 0.2f)),
                              bias = narrow(randomVec(size_t(N))),
                              pre0 = narrow(randomVec(size_t(M * N), 3.0f));
  std::vector<double> prod(size_t(M * N), 0.0), ad = widen(a), bd = widen(b);
  kn::gemm<double>(1, ta, tb, M, N, K, ad.data(), 0, bd.data(), 0,
                   prod.data(), 0, 1.0, 0.0);
  const std::string shape = dims({M, N, K}) + " " + (ta ? "T" : "N") +
                            (tb ? "T" : "N");
  const std::string how = fallback ? " (fallback kernels)" : "";
  // The fallback's plain GEMM into C, before its epilogue kernel.
  auto plainGemm = [&](const Dev<uint16_t> &dA, const Dev<uint16_t> &dB,
                       uint16_t *C) {
    lc::detail::fallbackGemm(ctx, "gemm16", 1, 1, ta, tb, M, N, K, dA, 0, dB,
                             0, C, 0, 1.0f, 0.0f);
  };
  // Forward.
  {
    Dev<uint16_t> dA(a), dB(b), dBias(bias), dY(size_t(M * N)),
        dPre(size_t(M * N));
    dY.poison();
    dPre.poison();
    if (fallback) {
      plainGemm(dA, dB, dY);
      lc::detail::geluEpilogue(ctx, "gelu", true, M, N, dY, dBias, dPre);
    } else {
      lc::gemmBiasGeluBf16(ctx, ta, tb, M, N, K, dA, dB, dBias, dY, dPre);
    }
    std::vector<double> refPre(prod.size()), refY(prod.size());
    for (size_t i = 0; i < prod.size(); ++i) {
      refPre[i] = prod[i] + fromBF16(bias[i % size_t(N)]);
      refY[i] = gelu(refPre[i]);
    }
    const double ePre = relErr(widen(dPre.get()), refPre),
                 eY = relErr(widen(dY.get()), refY);
    row("gemm bias gelu bf16" + how, shape, std::max(ePre, eY), 1e-2,
        ePre <= 1e-2 && eY <= 1e-2,
        "pre " + std::to_string(ePre).substr(0, 8) + ", gelu " +
            std::to_string(eY).substr(0, 8));
  }
  // Backward: D = gelu'(pre) * op(A) op(B).
  {
    Dev<uint16_t> dA(a), dB(b), dPre(pre0), dD(size_t(M * N));
    dD.poison();
    if (fallback) {
      plainGemm(dA, dB, dD);
      lc::detail::geluEpilogue(ctx, "gelu", false, M, N, dD, nullptr, dPre);
    } else {
      lc::gemmGeluGradBf16(ctx, ta, tb, M, N, K, dA, dB, dPre, dD);
    }
    std::vector<double> ref(prod.size());
    for (size_t i = 0; i < prod.size(); ++i)
      ref[i] = dgelu(fromBF16(pre0[i])) * prod[i];
    const double e = relErr(widen(dD.get()), ref);
    row("gemm gelu grad bf16" + how, shape, e, 1e-2, e <= 1e-2);
  }
  noDeviceError(ctx, "gemm gelu");
}

//===----------------------------------------------------------------------===//
// Norms and softmax
//===----------------------------------------------------------------------===//

void testLayerNorm(lc::CudaContext &ctx, int64_t rows, int64_t cols,
                   bool affine) {
  const size_t n = size_t(rows * cols);
  const auto x = randomVec(n, 2.0f), gain = randomVec(cols),
             bias = randomVec(cols), dy = randomVec(n);
  Dev<float> dX(x), dG(gain), dBias(bias), dY(n), dMean(rows), dRstd(rows);
  dY.poison(), dMean.poison(), dRstd.poison();
  const float *g = affine ? dG.p : nullptr, *b = affine ? dBias.p : nullptr;
  lc::layerNormFwd(ctx, rows, cols, dX, g, b, 1e-5f, dY, dMean, dRstd);
  std::vector<float> y(n), mean(rows), rstd(rows);
  kn::layerNormForward<float>(rows, cols, x.data(),
                              affine ? gain.data() : nullptr,
                              affine ? bias.data() : nullptr, 1e-5f, y.data(),
                              mean.data(), rstd.data());
  const double e = std::max({relErrF(dY.get(), y), relErrF(dMean.get(), mean),
                             relErrF(dRstd.get(), rstd)});
  const std::string shape = dims({rows, cols}) + (affine ? "" : " no affine");
  row("layer_norm_fwd", shape, e, 1e-5, e <= 1e-5);

  // Backward from the CPU's saved statistics.
  Dev<float> dDy(dy), dDx(n), dDg(cols), dDb(cols);
  dMean.put(mean), dRstd.put(rstd);
  dDx.poison(), dDg.poison(), dDb.poison();
  lc::layerNormBwd(ctx, rows, cols, dDy, dX, g, dMean, dRstd, dDx, dDg, dDb);
  std::vector<float> dx(n), dg(cols), db(cols);
  kn::layerNormBackward<float>(rows, cols, dy.data(), x.data(),
                               affine ? gain.data() : nullptr, mean.data(),
                               rstd.data(), dx.data(), dg.data(), db.data());
  const auto gpuDg = dDg.get(), gpuDb = dDb.get();
  const double eb = std::max(
      {relErrF(dDx.get(), dx), relErrF(gpuDg, dg), relErrF(gpuDb, db)});
  // Deterministic: again, bitwise.
  dDg.poison(), dDb.poison();
  lc::layerNormBwd(ctx, rows, cols, dDy, dX, g, dMean, dRstd, nullptr, dDg,
                   dDb);
  const bool repeat =
      bitwiseEqual(dDg.get(), gpuDg) && bitwiseEqual(dDb.get(), gpuDb);
  row("layer_norm_bwd", shape, eb, 1e-5, eb <= 1e-5 && repeat,
      repeat ? "dgain/dbias repeat bitwise" : "dgain/dbias NOT repeatable");

  // The bf16 variants (GPT-2's mixed precision) run the f32 kernels'
  // arithmetic: y is the f32 kernel's y rounded once, with the same
  // statistics; a bf16 dy gives the f32 kernel's dx, dgain, dbias on the
  // widened dy; all bit for bit.
  Dev<float> dYf(n), dM1(rows), dR1(rows), dM2(rows), dR2(rows);
  Dev<uint16_t> dY16(n);
  dYf.poison(), dM1.poison(), dR1.poison(), dM2.poison(), dR2.poison(),
      dY16.poison();
  lc::layerNormFwd(ctx, rows, cols, dX, g, b, 1e-5f, dYf, dM1, dR1);
  lc::layerNormFwdBf16Out(ctx, rows, cols, dX, g, b, 1e-5f, dY16, dM2, dR2);
  const auto yWide = dYf.get();
  const auto y16 = dY16.get();
  bool fwdExact =
      bitwiseEqual(dM1.get(), dM2.get()) && bitwiseEqual(dR1.get(), dR2.get());
  for (size_t i = 0; i < n && fwdExact; ++i)
    fwdExact = y16[i] == toBF16(yWide[i]);
  std::vector<uint16_t> dy16(n);
  std::vector<float> dyWide(n);
  for (size_t i = 0; i < n; ++i) {
    dy16[i] = toBF16(dy[i]);
    dyWide[i] = fromBF16(dy16[i]);
  }
  Dev<uint16_t> dDy16(dy16);
  Dev<float> dDyW(dyWide), dDx1(n), dDx2(n), dG1(cols), dG2(cols), dB1(cols),
      dB2(cols);
  dDx1.poison(), dDx2.poison(), dG1.poison(), dG2.poison(), dB1.poison(),
      dB2.poison();
  lc::layerNormBwd(ctx, rows, cols, dDyW, dX, g, dMean, dRstd, dDx1, dG1, dB1);
  lc::layerNormBwdBf16Dy(ctx, rows, cols, dDy16, dX, g, dMean, dRstd, dDx2, dG2,
                         dB2);
  const auto dx1 = dDx1.get();
  const bool bwdExact = bitwiseEqual(dx1, dDx2.get()) &&
                        bitwiseEqual(dG1.get(), dG2.get()) &&
                        bitwiseEqual(dB1.get(), dB2.get());
  // ... and the widened dy against the CPU.
  kn::layerNormBackward<float>(rows, cols, dyWide.data(), x.data(),
                               affine ? gain.data() : nullptr, mean.data(),
                               rstd.data(), dx.data(), dg.data(), db.data());
  const double e16 = relErrF(dx1, dx);
  row("layer_norm bf16 io", shape, e16, 1e-5,
      e16 <= 1e-5 && fwdExact && bwdExact,
      std::string(fwdExact ? "y = bf16(f32 y)" : "y NOT bf16(f32 y)") +
          (bwdExact ? ", bf16 dy bitwise" : ", bf16 dy NOT bitwise"));
}

/// Layer norm on views one element past 16-byte alignment (the scalar
/// kernels, where the vector ones would take the shape), against the CPU.
void testLayerNormMisaligned(lc::CudaContext &ctx, int64_t rows, int64_t cols) {
  const size_t n = size_t(rows * cols);
  const auto x = randomVec(n, 2.0f), gain = randomVec(cols),
             bias = randomVec(cols), dy = randomVec(n);
  auto shifted = [](const std::vector<float> &v) {
    std::vector<float> s(v.size() + 1, 1.0f);
    std::copy(v.begin(), v.end(), s.begin() + 1);
    return s;
  };
  Dev<float> dX(shifted(x)), dDy(shifted(dy)), dY(n + 1), dDx(n + 1), dG(gain),
      dB(bias), dMean(rows), dRstd(rows), dDg(cols), dDb(cols);
  dY.poison(), dDx.poison(), dMean.poison(), dRstd.poison(), dDg.poison(),
      dDb.poison();
  lc::layerNormFwd(ctx, rows, cols, dX.p + 1, dG, dB, 1e-5f, dY.p + 1, dMean,
                   dRstd);
  std::vector<float> y(n), mean(rows), rstd(rows), dx(n), dg(cols), db(cols);
  kn::layerNormForward<float>(rows, cols, x.data(), gain.data(), bias.data(),
                              1e-5f, y.data(), mean.data(), rstd.data());
  const auto gpuY = dY.get();
  double e = std::max(relErrF(dMean.get(), mean), relErrF(dRstd.get(), rstd));
  e = std::max(e, relErrF(std::vector<float>(gpuY.begin() + 1, gpuY.end()), y));
  dMean.put(mean), dRstd.put(rstd);
  lc::layerNormBwd(ctx, rows, cols, dDy.p + 1, dX.p + 1, dG, dMean, dRstd,
                   dDx.p + 1, dDg, dDb);
  kn::layerNormBackward<float>(rows, cols, dy.data(), x.data(), gain.data(),
                               mean.data(), rstd.data(), dx.data(), dg.data(),
                               db.data());
  const auto gpuDx = dDx.get();
  e = std::max({e,
                relErrF(std::vector<float>(gpuDx.begin() + 1, gpuDx.end()), dx),
                relErrF(dDg.get(), dg), relErrF(dDb.get(), db)});
  row("layer_norm misaligned", dims({rows, cols}), e, 1e-5, e <= 1e-5,
      "fwd + bwd on views 4 bytes past alignment");
}

void testRmsNorm(lc::CudaContext &ctx, int64_t rows, int64_t cols,
                 bool gained) {
  const size_t n = size_t(rows * cols);
  const auto x = randomVec(n, 2.0f), gain = randomVec(cols), dy = randomVec(n);
  Dev<float> dX(x), dG(gain), dY(n), dRstd(rows);
  dY.poison(), dRstd.poison();
  const float *g = gained ? dG.p : nullptr;
  lc::rmsNormFwd(ctx, rows, cols, dX, g, 1e-6f, dY, dRstd);
  std::vector<float> y(n), rstd(rows);
  kn::rmsNormForward<float>(rows, cols, x.data(),
                            gained ? gain.data() : nullptr, 1e-6f, y.data(),
                            rstd.data());
  const double e = std::max(relErrF(dY.get(), y), relErrF(dRstd.get(), rstd));
  const std::string shape = dims({rows, cols}) + (gained ? "" : " no gain");
  row("rms_norm_fwd", shape, e, 1e-5, e <= 1e-5);

  Dev<float> dDy(dy), dDx(n), dDg(cols);
  dRstd.put(rstd);
  dDx.poison(), dDg.poison();
  lc::rmsNormBwd(ctx, rows, cols, dDy, dX, g, dRstd, dDx, dDg);
  std::vector<float> dx(n), dg(cols);
  kn::rmsNormBackward<float>(rows, cols, dy.data(), x.data(),
                             gained ? gain.data() : nullptr, rstd.data(),
                             dx.data(), dg.data());
  const auto gpuDg = dDg.get();
  const double eb = std::max(relErrF(dDx.get(), dx), relErrF(gpuDg, dg));
  dDg.poison();
  lc::rmsNormBwd(ctx, rows, cols, dDy, dX, g, dRstd, nullptr, dDg);
  const bool repeat = bitwiseEqual(dDg.get(), gpuDg);
  row("rms_norm_bwd", shape, eb, 1e-5, eb <= 1e-5 && repeat,
      repeat ? "dgain repeats bitwise" : "dgain NOT repeatable");
}

void testSoftmax(lc::CudaContext &ctx, int64_t rows, int64_t cols, bool log) {
  const size_t n = size_t(rows * cols);
  const auto x = randomVec(n, 4.0f), dy = randomVec(n);
  Dev<float> dX(x), dY(n);
  dY.poison();
  std::vector<float> y(n);
  if (log) {
    lc::logSoftmaxFwd(ctx, rows, cols, dX, dY);
    kn::logSoftmaxForward<float>(rows, cols, x.data(), y.data());
  } else {
    lc::softmaxFwd(ctx, rows, cols, dX, dY);
    kn::softmaxForward<float>(rows, cols, x.data(), y.data());
  }
  const double e = relErrF(dY.get(), y);
  const std::string name = log ? "log_softmax" : "softmax";
  row(name + "_fwd", dims({rows, cols}), e, 1e-5, e <= 1e-5);

  Dev<float> dYsaved(y), dDy(dy), dDx(n);
  dDx.poison();
  std::vector<float> dx(n);
  if (log) {
    lc::logSoftmaxBwd(ctx, rows, cols, dYsaved, dDy, dDx);
    kn::logSoftmaxBackward<float>(rows, cols, y.data(), dy.data(), dx.data());
  } else {
    lc::softmaxBwd(ctx, rows, cols, dYsaved, dDy, dDx);
    kn::softmaxBackward<float>(rows, cols, y.data(), dy.data(), dx.data());
  }
  const double eb = relErrF(dDx.get(), dx);
  row(name + "_bwd", dims({rows, cols}), eb, 1e-5, eb <= 1e-5);
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

void testCrossEntropy(lc::CudaContext &ctx, int64_t rows, int64_t classes) {
  const int64_t ignore = -100;
  const size_t n = size_t(rows * classes);
  auto logits = randomVec(n, 3.0f);
  std::vector<int32_t> target(rows);
  for (int64_t r = 0; r < rows; ++r) {
    target[r] = r % 7 == 3 ? int32_t(ignore) : int32_t(rng() % classes);
    // Some rows predict their target (accuracy stats), one with a tie.
    if (r % 5 == 0 && target[r] != ignore)
      logits[r * classes + target[r]] = 10.0f;
  }
  if (rows > 2 && classes > 3 && target[0] != ignore) {
    // A tie for the maximum: the first index wins.
    logits[0 * classes + 1] = 10.0f;
    logits[0 * classes + target[0]] = 10.0f;
  }
  Dev<float> dL(logits), dLoss(1), dLse(rows), dStats(2);
  Dev<int32_t> dT(target);
  dLoss.poison(), dLse.poison(), dStats.poison();
  lc::crossEntropyFwd(ctx, rows, classes, dL, dT, ignore, dLoss, dLse, dStats,
                      4);
  float loss = 0, stats[2];
  std::vector<float> lse(rows);
  const std::string problem = kn::crossEntropyForward<float>(
      rows, classes, logits.data(), target.data(), ignore, &loss, lse.data(),
      stats);
  const auto gpuStats = dStats.get();
  const bool statsOk =
      problem.empty() && gpuStats[0] == stats[0] && gpuStats[1] == stats[1];
  const auto gpuLoss = dLoss.get();
  const double e = std::max(relErrF(gpuLoss, {loss}), relErrF(dLse.get(), lse));
  row("cross_entropy_fwd", dims({rows, classes}), e, 1e-5, e <= 1e-5 && statsOk,
      "stats " + std::to_string(int(gpuStats[0])) + "/" +
          std::to_string(int(gpuStats[1])) + " (cpu " +
          std::to_string(int(stats[0])) + "/" + std::to_string(int(stats[1])) +
          ")");
  // Deterministic loss.
  lc::crossEntropyFwd(ctx, rows, classes, dL, dT, ignore, dLoss, dLse, dStats,
                      4);
  const bool repeat = bitwiseEqual(dLoss.get(), gpuLoss);
  row("cross_entropy_fwd repeat", dims({rows, classes}), NAN, 0, repeat,
      "loss bitwise on a second run");

  const float dlossHost = 0.7f;
  Dev<float> dDloss(std::vector<float>{dlossHost}), dD(n);
  dLse.put(lse);
  dD.poison();
  lc::crossEntropyBwd(ctx, rows, classes, dL, dT, ignore, dLse, dDloss, dD, 4);
  std::vector<float> d(n);
  kn::crossEntropyBackward<float>(rows, classes, logits.data(), target.data(),
                                  ignore, lse.data(), &dlossHost, d.data());
  const double eb = relErrF(dD.get(), d);
  row("cross_entropy_bwd", dims({rows, classes}), eb, 1e-5, eb <= 1e-5);

  // bf16 logits (a bf16 program's casts folded in): the fp32 kernels on the
  // widened logits, except that exp runs in fp32 (Kernels.cu, expShifted):
  // loss and lse within the fp32 tolerance, the statistics (argmax) exact,
  // the gradient within the bf16 tolerance of the fp32 kernel's rounded.
  std::vector<uint16_t> low(n);
  std::vector<float> widened(n);
  for (size_t i = 0; i < n; ++i) {
    low[i] = loom::kernels::toBF16(logits[i]);
    widened[i] = loom::kernels::fromBF16(low[i]);
  }
  Dev<uint16_t> dLow(low), dGradLow(n);
  Dev<float> dWide(widened), dLoss2(1), dLse2(rows), dStats2(2), dD2(n);
  dLoss.poison(), dLse.poison(), dStats.poison(), dLoss2.poison(),
      dLse2.poison(), dStats2.poison(), dD2.poison(), dGradLow.poison();
  lc::crossEntropyFwdBf16(ctx, rows, classes, dLow, dT, ignore, dLoss, dLse,
                          dStats, 4);
  lc::crossEntropyFwd(ctx, rows, classes, dWide, dT, ignore, dLoss2, dLse2,
                      dStats2, 4);
  const double eLow = std::max(relErrF(dLoss.get(), dLoss2.get()),
                               relErrF(dLse.get(), dLse2.get()));
  row("cross_entropy_fwd bf16", dims({rows, classes}), eLow, 1e-5,
      eLow <= 1e-5 && bitwiseEqual(dStats.get(), dStats2.get()),
      "against the fp32 kernel on the widened logits; stats exact");
  lc::crossEntropyBwdBf16(ctx, rows, classes, dLow, dT, ignore, dLse, dDloss,
                          dGradLow, 4);
  lc::crossEntropyBwd(ctx, rows, classes, dWide, dT, ignore, dLse2, dDloss, dD2,
                      4);
  std::vector<float> gradLow(n), rounded(n);
  const auto wideGrad = dD2.get();
  const auto lowGrad = dGradLow.get();
  for (size_t i = 0; i < n; ++i) {
    rounded[i] = loom::kernels::fromBF16(loom::kernels::toBF16(wideGrad[i]));
    gradLow[i] = loom::kernels::fromBF16(lowGrad[i]);
  }
  const double eGrad = relErrF(gradLow, rounded);
  row("cross_entropy_bwd bf16", dims({rows, classes}), eGrad, 1e-2,
      eGrad <= 1e-2, "against the fp32 kernel's gradient rounded to bf16");
  noDeviceError(ctx, "cross_entropy");
}

/// Vocabulary-parallel cross-entropy and embedding over a group of `parts`
/// shards, each a thread with its own context on this GPU. The group's two
/// reductions run on the host between the threads, as NCCL runs them: the
/// keys' maximum, then the doubles' sum in rank order. Against the CPU
/// reference on the whole logits and table.
void testVocabParallel(lc::CudaContext &ctx, int64_t rows, int64_t classesLocal,
                       int parts) {
  const int64_t ignore = -100, classes = classesLocal * parts;
  auto logits = randomVec(size_t(rows * classes), 3.0f);
  std::vector<int32_t> target(rows);
  for (int64_t r = 0; r < rows; ++r) {
    target[r] = r % 7 == 3 ? int32_t(ignore) : int32_t(rng() % classes);
    if (r % 5 == 0 && target[r] != ignore)
      logits[r * classes + target[r]] = 10.0f;
  }
  // A tie for the maximum across two shards: the lower global index wins.
  logits[0 * classes + 1] = 10.0f;
  logits[0 * classes + classesLocal + 1] = 10.0f;
  target[0] = int32_t(classesLocal + 1);
  float loss = 0, stats[2];
  std::vector<float> lse(rows), grad(size_t(rows * classes));
  const float dloss = 0.7f;
  kn::crossEntropyForward<float>(rows, classes, logits.data(), target.data(),
                                 ignore, &loss, lse.data(), stats);
  kn::crossEntropyBackward<float>(rows, classes, logits.data(), target.data(),
                                  ignore, lse.data(), &dloss, grad.data());
  const int64_t n = 3000, dim = 40;
  const int64_t vocabLocal = classesLocal, vocab = classes;
  auto table = randomVec(size_t(vocab * dim));
  auto dout = randomVec(size_t(n * dim));
  std::vector<int32_t> ids(n);
  for (auto &id : ids)
    id = int32_t(rng() % uint64_t(vocab));
  std::vector<float> gathered(size_t(n * dim)), dtable(size_t(vocab * dim));
  kn::embeddingForward<float>(n, vocab, dim, ids.data(), table.data(),
                              gathered.data());
  kn::embeddingBackward<float>(n, vocab, dim, ids.data(), dout.data(),
                               dtable.data());

  // The host side of the group's all-reduces.
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0, generation = 0;
  auto barrier = [&] {
    std::unique_lock<std::mutex> lock(m);
    const int g = generation;
    if (++arrived == parts) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != g; });
    }
  };
  auto staged = std::vector<std::vector<char>>(size_t(parts));
  struct Result {
    std::vector<float> loss, lse, stats, grad, out, dtable;
    std::string error;
  };
  auto results = std::vector<Result>(size_t(parts));
  auto shard = [&](int p) {
    Result &res = results[size_t(p)];
    try {
      lc::CudaContext c(ctx.device, p);
      const int64_t start = p * classesLocal;
      std::vector<float> mine(size_t(rows * classesLocal));
      for (int64_t r = 0; r < rows; ++r)
        std::copy(logits.begin() + r * classes + start,
                  logits.begin() + r * classes + start + classesLocal,
                  mine.begin() + r * classesLocal);
      Dev<float> dL(mine), dLoss(1), dLse(rows), dStats(2),
          dD(size_t(rows * classesLocal)), dDloss(std::vector<float>{dloss});
      Dev<int32_t> dT(target);
      dLoss.poison(), dLse.poison(), dStats.poison(), dD.poison();
      auto reduce = [&](void *data, size_t count, bool max) {
        const size_t bytes = count * 8;
        check(cudaStreamSynchronize(c.stream), "stream");
        staged[size_t(p)].resize(bytes);
        check(cudaMemcpy(staged[size_t(p)].data(), data, bytes,
                         cudaMemcpyDeviceToHost),
              "download");
        barrier();
        std::vector<char> out(staged[0]);
        for (int q = 1; q < parts; ++q)
          for (size_t i = 0; i < count; ++i) {
            if (max) {
              int64_t a, b;
              std::memcpy(&a, out.data() + 8 * i, 8);
              std::memcpy(&b, staged[size_t(q)].data() + 8 * i, 8);
              a = std::max(a, b);
              std::memcpy(out.data() + 8 * i, &a, 8);
            } else {
              double a, b;
              std::memcpy(&a, out.data() + 8 * i, 8);
              std::memcpy(&b, staged[size_t(q)].data() + 8 * i, 8);
              a += b;
              std::memcpy(out.data() + 8 * i, &a, 8);
            }
          }
        barrier();
        check(cudaMemcpy(data, out.data(), bytes, cudaMemcpyHostToDevice),
              "upload");
      };
      lc::crossEntropyFwdSharded(c, rows, classesLocal, classes, start, dL, dT,
                                 ignore, dLoss, dLse, dStats, reduce, 6);
      lc::crossEntropyBwdSharded(c, rows, classesLocal, classes, start, dL, dT,
                                 ignore, dLse, dDloss, dD, 6);
      res.loss = dLoss.get(), res.lse = dLse.get(), res.stats = dStats.get(),
      res.grad = dD.get();
      Dev<float> dTable(std::vector<float>(
          table.begin() + start * dim, table.begin() + (start + vocabLocal) * dim));
      Dev<float> dOut(size_t(n * dim)), dDout(dout),
          dDtable(size_t(vocabLocal * dim));
      Dev<int32_t> dIds(ids);
      dOut.poison(), dDtable.poison();
      lc::embeddingFwdSharded(c, n, vocabLocal, vocab, start, dim, dIds, dTable,
                              dOut, 7);
      lc::embeddingBwdSharded(c, n, vocabLocal, vocab, start, dim, dIds, dDout,
                              dDtable, 7);
      res.out = dOut.get(), res.dtable = dDtable.get();
      if (!noDeviceError(c, "vocab-parallel shard " + std::to_string(p)))
        res.error = "device error";
    } catch (const std::exception &e) {
      res.error = e.what();
    }
  };
  std::vector<std::thread> threads;
  for (int p = 0; p < parts; ++p)
    threads.emplace_back(shard, p);
  for (auto &t : threads)
    t.join();

  std::string error;
  double eLoss = 0, eGrad = 0;
  bool same = true, statsOk = true, embOk = true;
  std::vector<float> summed(size_t(n * dim), 0.0f);
  for (int p = 0; p < parts; ++p) {
    const Result &res = results[size_t(p)];
    if (!res.error.empty()) {
      error = res.error;
      break;
    }
    same &= bitwiseEqual(res.loss, results[0].loss) &&
            bitwiseEqual(res.lse, results[0].lse);
    statsOk &= res.stats[0] == stats[0] && res.stats[1] == stats[1];
    eLoss = std::max({eLoss, relErrF(res.loss, {loss}), relErrF(res.lse, lse)});
    std::vector<float> cols(size_t(rows * classesLocal));
    for (int64_t r = 0; r < rows; ++r)
      std::copy(grad.begin() + r * classes + p * classesLocal,
                grad.begin() + r * classes + (p + 1) * classesLocal,
                cols.begin() + r * classesLocal);
    eGrad = std::max(eGrad, relErrF(res.grad, cols));
    for (size_t i = 0; i < summed.size(); ++i)
      summed[i] += res.out[i];
    embOk &= bitwiseEqual(
        res.dtable,
        std::vector<float>(dtable.begin() + p * vocabLocal * dim,
                           dtable.begin() + (p + 1) * vocabLocal * dim));
  }
  const std::string shape =
      dims({rows, classes}) + " over " + std::to_string(parts);
  if (!error.empty()) {
    row("vocab-parallel", shape, NAN, 0, false, error);
    return;
  }
  row("cross_entropy_fwd_sharded", shape, eLoss, 1e-5,
      eLoss <= 1e-5 && same && statsOk,
      std::string(same ? "members agree" : "members differ") +
          (statsOk ? ", stats exact" : ", stats differ"));
  row("cross_entropy_bwd_sharded", shape, eGrad, 1e-5, eGrad <= 1e-5);
  embOk &= bitwiseEqual(summed, gathered);
  row("embedding_{fwd,bwd}_sharded", dims({n, vocab, dim}), NAN, 0, embOk,
      "bitwise the unsharded rows");
}

void testCrossEntropyErrors(lc::CudaContext &ctx) {
  const int64_t rows = 40, classes = 10;
  const auto logits = randomVec(rows * classes);
  std::vector<int32_t> target(rows, 1);
  target[9] = -5;
  target[5] = 10; // the first bad row
  Dev<float> dL(logits), dLoss(1), dLse(rows), dStats(2), dD(rows * classes);
  Dev<int32_t> dT(target);
  ctx.clearError();
  lc::crossEntropyFwd(ctx, rows, classes, dL, dT, -100, dLoss, dLse, dStats,
                      11);
  lc::DeviceError e = ctx.readError();
  bool ok = e.code == lc::kTargetOutOfRange && e.op == 11 &&
            uint64_t(e.a) == ((uint64_t(5) << 32) | 10u) && e.b == classes;
  row("cross_entropy_fwd bad target", dims({rows, classes}), NAN, 0, ok,
      lc::describeDeviceError(e));
  ctx.clearError();
  Dev<float> dDloss(std::vector<float>{1.0f});
  lc::crossEntropyBwd(ctx, rows, classes, dL, dT, -100, dLse, dDloss, dD, 12);
  e = ctx.readError();
  ok = e.code == lc::kTargetOutOfRange && e.op == 12 &&
       uint64_t(e.a) == ((uint64_t(5) << 32) | 10u);
  row("cross_entropy_bwd bad target", dims({rows, classes}), NAN, 0, ok,
      lc::describeDeviceError(e));
  ctx.clearError();
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

void testEmbedding(lc::CudaContext &ctx, int64_t n, int64_t vocab,
                   int64_t dim) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i)
    // Skewed: a few hot ids (many repeats), most of the vocabulary unused.
    ids[i] = int32_t(i % 3 == 0 ? rng() % 8 : rng() % vocab);
  const auto table = randomVec(size_t(vocab * dim)),
             dout = randomVec(size_t(n * dim));
  Dev<int32_t> dIds(ids);
  Dev<float> dTable(table), dOut(size_t(n * dim)), dDout(dout),
      dDtable(size_t(vocab * dim));
  dOut.poison();
  lc::embeddingFwd(ctx, n, vocab, dim, dIds, dTable, dOut, 2);
  std::vector<float> out(size_t(n * dim)), dtable(size_t(vocab * dim));
  kn::embeddingForward<float>(n, vocab, dim, ids.data(), table.data(),
                              out.data());
  const auto gpuOut = dOut.get();
  row("embedding_fwd", dims({n, vocab, dim}), relErrF(gpuOut, out), 0,
      bitwiseEqual(gpuOut, out), "bitwise");
  dDtable.poison();
  lc::embeddingBwd(ctx, n, vocab, dim, dIds, dDout, dDtable, 3);
  kn::embeddingBackward<float>(n, vocab, dim, ids.data(), dout.data(),
                               dtable.data());
  const auto gpuD = dDtable.get();
  const double e = relErrF(gpuD, dtable);
  const bool bitwise = bitwiseEqual(gpuD, dtable);
  row("embedding_bwd", dims({n, vocab, dim}), e, 1e-5, e <= 1e-5,
      bitwise ? "bitwise the CPU's" : "not bitwise the CPU's");
  noDeviceError(ctx, "embedding");
}

void testEmbeddingErrors(lc::CudaContext &ctx) {
  const int64_t n = 64, vocab = 100, dim = 8;
  std::vector<int32_t> ids(n, 7);
  ids[7] = -1;
  ids[3] = 99999; // the first bad position
  ids[40] = 100;
  Dev<int32_t> dIds(ids);
  Dev<float> dTable(randomVec(vocab * dim)), dOut(n * dim),
      dDtable(vocab * dim);
  ctx.clearError();
  lc::embeddingFwd(ctx, n, vocab, dim, dIds, dTable, dOut, 21);
  lc::DeviceError e = ctx.readError();
  const uint64_t want = (uint64_t(3) << 32) | 99999u;
  row("embedding_fwd bad id", dims({n, vocab, dim}), NAN, 0,
      e.code == lc::kEmbeddingIdOutOfRange && e.op == 21 &&
          uint64_t(e.a) == want && e.b == vocab,
      lc::describeDeviceError(e));
  ctx.clearError();
  lc::embeddingBwd(ctx, n, vocab, dim, dIds, dOut, dDtable, 22);
  e = ctx.readError();
  row("embedding_bwd bad id", dims({n, vocab, dim}), NAN, 0,
      e.code == lc::kEmbeddingIdOutOfRange && e.op == 22 &&
          uint64_t(e.a) == want,
      lc::describeDeviceError(e));
  // First error wins: a later op's error does not replace it.
  lc::embeddingFwd(ctx, n, vocab, dim, dIds, dTable, dOut, 23);
  e = ctx.readError();
  row("error word first wins", "-", NAN, 0, e.op == 22,
      "op " + std::to_string(e.op));
  ctx.clearError();
}

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

void testDropout(lc::CudaContext &ctx, int64_t n, float p) {
  const uint64_t key = 0x9e3779b97f4a7c15ull;
  const int64_t step = 7;
  const auto x = randomVec(static_cast<size_t>(n));
  Dev<float> dX(x), dY(static_cast<size_t>(n)), dDx(static_cast<size_t>(n));
  Dev<int64_t> dStep(std::vector<int64_t>{step});
  dY.poison(), dDx.poison();
  lc::dropoutFwd(ctx, n, p, key, dStep, dX, dY);
  lc::dropoutBwd(ctx, n, p, key, dStep, dX, dDx);
  std::vector<float> y(static_cast<size_t>(n));
  kn::dropoutForward<float>(n, p, ctx.seed, key, step, x.data(), y.data());
  const auto gpuY = dY.get(), gpuDx = dDx.get();
  int64_t kept = 0;
  for (float v : y)
    kept += v != 0.0f;
  const bool exact = bitwiseEqual(gpuY, y) && bitwiseEqual(gpuDx, y);
  row("dropout_fwd/bwd", dims({n}) + " p=" + std::to_string(p).substr(0, 4),
      relErrF(gpuY, y), 0, exact,
      "mask+values bitwise; kept " + std::to_string(kept));
}

//===----------------------------------------------------------------------===//
// Optimizers
//===----------------------------------------------------------------------===//

struct AdamState {
  std::vector<float> p, g, m, v;
  explicit AdamState(size_t n)
      : p(randomVec(n)), g(randomVec(n, 0.1f)), m(randomVec(n, 0.01f)),
        v(positiveVec(n, 1e-6f, 1e-3f)) {}
};

void testAdamW(lc::CudaContext &ctx, int64_t n) {
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f,
              gs = 0.5f;
  const int64_t t = 3;
  AdamState s(static_cast<size_t>(n));
  Dev<float> dP(s.p), dG(s.g), dM(s.m), dV(s.v);
  Dev<float> dLr(std::vector<float>{lr}), dGs(std::vector<float>{gs});
  Dev<int64_t> dT(std::vector<int64_t>{t});
  lc::adamw(ctx, n, dP, dG, dM, dV, dLr, b1, b2, eps, wd, dGs, dT);
  kn::adamwStep<float>(n, s.p.data(), s.g.data(), s.m.data(), s.v.data(), lr,
                       b1, b2, eps, wd, gs, t);
  const auto p = dP.get(), m = dM.get(), v = dV.get();
  const double e =
      std::max({relErrF(p, s.p), relErrF(m, s.m), relErrF(v, s.v)});
  const bool bitwise =
      bitwiseEqual(p, s.p) && bitwiseEqual(m, s.m) && bitwiseEqual(v, s.v);
  row("adamw", dims({n}) + " t=3", e, 1e-5, e <= 1e-5,
      bitwise ? "bitwise the CPU's" : "not bitwise the CPU's");
}

void testAdamWMulti(lc::CudaContext &ctx) {
  const float lr = 2e-3f, b1 = 0.8f, b2 = 0.99f, eps = 1e-6f, gs = 1.0f;
  const int64_t t = 1;
  const std::vector<int64_t> sizes = {1000, 123457, 17, 4096 * 3 + 5, 1001};
  const std::vector<float> wds = {0.0f, 0.1f, 0.01f, 0.05f, 0.1f};
  // Elements before each tensor's start: 1 puts the last one's arrays off
  // 16-byte alignment (the kernel's element-wise path).
  const std::vector<int64_t> offsets = {0, 0, 0, 0, 1};
  std::vector<AdamState> states;
  std::vector<std::unique_ptr<Dev<float>>> bufs;
  std::vector<lc::AdamWTensor> list;
  for (size_t k = 0; k < sizes.size(); ++k) {
    states.emplace_back(size_t(sizes[k] + offsets[k]));
    AdamState &s = states.back();
    for (auto *v : {&s.p, &s.g, &s.m, &s.v})
      bufs.push_back(std::make_unique<Dev<float>>(*v));
    const size_t b = bufs.size() - 4;
    list.push_back({bufs[b]->p + offsets[k], bufs[b + 1]->p + offsets[k],
                    bufs[b + 2]->p + offsets[k], bufs[b + 3]->p + offsets[k],
                    sizes[k], wds[k]});
  }
  lc::AdamWTensorList tensors(ctx, list);
  Dev<float> dLr(std::vector<float>{lr}), dGs(std::vector<float>{gs});
  Dev<int64_t> dT(std::vector<int64_t>{t});
  lc::adamwMulti(ctx, tensors.device(), tensors.count(), tensors.maxN(), dLr,
                 b1, b2, eps, dGs, dT);
  double worst = 0;
  bool bitwise = true;
  for (size_t k = 0; k < sizes.size(); ++k) {
    AdamState &s = states[k];
    const int64_t o = offsets[k];
    kn::adamwStep<float>(sizes[k], s.p.data() + o, s.g.data() + o,
                         s.m.data() + o, s.v.data() + o, lr, b1, b2, eps,
                         wds[k], gs, t);
    const auto p = bufs[4 * k]->get(), m = bufs[4 * k + 2]->get(),
               v = bufs[4 * k + 3]->get();
    worst =
        std::max({worst, relErrF(p, s.p), relErrF(m, s.m), relErrF(v, s.v)});
    bitwise = bitwise && bitwiseEqual(p, s.p) && bitwiseEqual(m, s.m) &&
              bitwiseEqual(v, s.v);
  }
  row("adamw_multi", std::to_string(sizes.size()) + " tensors", worst, 1e-5,
      worst <= 1e-5, bitwise ? "bitwise the CPU's" : "not bitwise the CPU's");
}

void testSgd(lc::CudaContext &ctx, int64_t n, float momentum, bool nesterov,
             bool first) {
  const float lr = 0.05f, wd = 1e-4f, gs = 0.25f;
  auto p = randomVec(static_cast<size_t>(n)),
       g = randomVec(static_cast<size_t>(n)),
       buf = randomVec(static_cast<size_t>(n));
  Dev<float> dP(p), dG(g), dB(buf);
  Dev<float> dLr(std::vector<float>{lr}), dGs(std::vector<float>{gs});
  Dev<int32_t> dFirst(std::vector<int32_t>{first ? 1 : 0});
  lc::sgd(ctx, n, dP, dG, momentum != 0 ? dB.p : nullptr, dLr, momentum,
          nesterov, wd, dGs, dFirst);
  kn::sgdStep<float>(n, p.data(), g.data(), buf.data(), lr, momentum, nesterov,
                     wd, gs, first);
  const auto gp = dP.get(), gb = dB.get();
  const double e =
      std::max(relErrF(gp, p), momentum != 0 ? relErrF(gb, buf) : 0.0);
  row("sgd",
      dims({n}) + " mom " + std::to_string(momentum).substr(0, 3) +
          (nesterov ? " nesterov" : "") + (first ? " first" : ""),
      e, 1e-5, e <= 1e-5,
      bitwiseEqual(gp, p) ? "bitwise the CPU's" : "not bitwise the CPU's");
}

void testSumSquares(lc::CudaContext &ctx, int64_t n) {
  const auto x = randomVec(static_cast<size_t>(n));
  Dev<float> dX(x);
  Dev<double> dOut(1);
  dOut.poison();
  lc::sumSquares(ctx, n, dX, dOut);
  const double gpu = dOut.get()[0];
  const double ref = kn::sumSquares<float>(n, x.data());
  const double e = std::fabs(gpu - ref) / ref;
  lc::sumSquares(ctx, n, dX, dOut, /*accumulate=*/true);
  const double twice = dOut.get()[0];
  lc::sumSquares(ctx, n, dX, dOut);
  const bool repeat = dOut.get()[0] == gpu;
  row("sum_squares", dims({n}), e, 1e-12,
      e <= 1e-12 && repeat && std::fabs(twice - 2 * gpu) <= 1e-12 * twice,
      repeat ? "repeats bitwise; accumulate ok" : "NOT repeatable");
}

void testAdaptiveClip(lc::CudaContext &ctx) {
  const int64_t window = 4;
  const float sigmas = 2.0f, maxNorm = 5.0f;
  const std::vector<float> norms = {1.0f, 2.0f,  1.5f, 8.0f,
                                    1.2f, 30.0f, NAN,  2.0f};
  std::vector<float> history(window, 0.0f);
  int64_t count = 0;
  Dev<float> dHist(history), dNorm(1), dCoef(1);
  Dev<int64_t> dCount(std::vector<int64_t>{0});
  bool ok = true;
  double worst = 0;
  for (float norm : norms) {
    dNorm.put({norm});
    dCoef.poison();
    lc::adaptiveClip(ctx, dNorm, dHist, window, dCount, sigmas, maxNorm, true,
                     dCoef);
    const float ref = loom_adaptive_clip(nullptr, norm, history.data(), window,
                                         &count, sigmas, maxNorm, 1);
    const float gpu = dCoef.get()[0];
    worst = std::max(worst, double(std::fabs(gpu - ref)) / std::fabs(ref));
    ok = ok && gpu == ref && dCount.get()[0] == count &&
         bitwiseEqual(dHist.get(), history);
  }
  row("adaptive_clip", std::to_string(norms.size()) + " steps w=4", worst, 0,
      ok, "coefficients, history and count equal the CPU's");
}

void testCheckFinite(lc::CudaContext &ctx) {
  const int64_t n = 1 << 20;
  auto x = randomVec(static_cast<size_t>(n));
  Dev<float> dX(x);
  ctx.clearError();
  lc::checkFinite(ctx, dX, n, 0, 17);
  lc::DeviceError e = ctx.readError();
  row("check_finite clean f32", dims({n}), NAN, 0, e.code == 0);
  x[1000] = NAN;
  x[500] = INFINITY;
  x[n - 1] = NAN;
  dX.put(x);
  lc::checkFinite(ctx, dX, n, 0, 17);
  e = ctx.readError();
  row("check_finite f32", dims({n}), NAN, 0,
      e.code == lc::kNotFinite && e.op == 17 &&
          uint64_t(e.a) == ((uint64_t(500) << 1) | 1) && e.b == n,
      lc::describeDeviceError(e));
  // A later op's scan does not replace the first error.
  lc::checkFinite(ctx, dX, 400, 0, 18);
  x[3] = NAN;
  dX.put(x);
  lc::checkFinite(ctx, dX, n, 0, 19);
  e = ctx.readError();
  row("check_finite first wins", dims({n}), NAN, 0,
      e.op == 17 && uint64_t(e.a) == ((uint64_t(500) << 1) | 1));
  ctx.clearError();
  std::vector<uint16_t> h(4099, toBF16(1.5f));
  h[4000] = 0x7fc0; // bf16 NaN
  Dev<uint16_t> dH(h);
  lc::checkFinite(ctx, dH, int64_t(h.size()), 1, 5);
  e = ctx.readError();
  row("check_finite bf16", dims({int64_t(h.size())}), NAN, 0,
      e.code == lc::kNotFinite && e.op == 5 && uint64_t(e.a) == (4000u << 1),
      lc::describeDeviceError(e));
  ctx.clearError();
  std::vector<uint16_t> f(77, toF16(2.0f));
  f[70] = 0xfc00; // f16 -inf
  Dev<uint16_t> dF(f);
  lc::checkFinite(ctx, dF, int64_t(f.size()), 2, 6);
  e = ctx.readError();
  row("check_finite f16", dims({int64_t(f.size())}), NAN, 0,
      e.code == lc::kNotFinite && e.op == 6 &&
          uint64_t(e.a) == ((70u << 1) | 1),
      lc::describeDeviceError(e));
  ctx.clearError();
}

//===----------------------------------------------------------------------===//
// Glue
//===----------------------------------------------------------------------===//

void testGlue(lc::CudaContext &ctx) {
  const int64_t n = 100003;
  Dev<float> dA(static_cast<size_t>(n)), dB(static_cast<size_t>(n));
  dA.poison();
  lc::fill(ctx, dA, n, 3.25f);
  const auto a = dA.get();
  const bool filled =
      std::all_of(a.begin(), a.end(), [](float v) { return v == 3.25f; });
  dB.poison();
  lc::copy(ctx, dB, dA, sizeof(float) * n);
  row("fill + copy", dims({n}), NAN, 0, filled && bitwiseEqual(dB.get(), a));
  Dev<int64_t> dI(3);
  lc::fillI64(ctx, dI, 3, -42);
  Dev<uint16_t> dU(5);
  lc::fillU16(ctx, dU, 5, 0x3f80);
  Dev<int32_t> dI32(7);
  lc::fillI32(ctx, dI32, 7, 9);
  const auto i64 = dI.get();
  const auto u16 = dU.get();
  const auto i32 = dI32.get();
  row("fill i64/u16/i32", "3/5/7", NAN, 0,
      i64[2] == -42 && u16[4] == 0x3f80 && i32[6] == 9);

  Dev<double> dD(std::vector<double>{16.0});
  Dev<float> dF(1);
  Dev<int64_t> dStep(std::vector<int64_t>{123456789012ll});
  Dev<int64_t> dStep2(1);
  Dev<float> dStepF(1);
  lc::scalarCopy(ctx, dD, lc::kF64, dF, lc::kF32, /*sqrtOf=*/true);
  lc::scalarCopy(ctx, dStep, lc::kI64, dStep2, lc::kI64);
  lc::scalarCopy(ctx, dStep, lc::kI64, dStepF, lc::kF32);
  row("scalar_copy", "f64->f32 sqrt, i64->i64, i64->f32", NAN, 0,
      dF.get()[0] == 4.0f && dStep2.get()[0] == 123456789012ll &&
          dStepF.get()[0] == float(123456789012ll));

  // Casts, bit for bit: normal values, ties, subnormals, overflow, NaN, inf.
  std::vector<float> x = randomVec(4096, 100.0f);
  for (float v : {0.0f, -0.0f, 1e-8f, -3e-6f, 6.1e-5f, 65504.0f, 65519.0f,
                  65520.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN,
                  1.00390625f, 1.01171875f, 3.0e-39f})
    x.push_back(v);
  Dev<float> dx(x), back(x.size());
  Dev<uint16_t> bf(x.size()), hf(x.size());
  lc::castF32ToBf16(ctx, dx, bf, int64_t(x.size()));
  lc::castF32ToF16(ctx, dx, hf, int64_t(x.size()));
  const auto gb = bf.get(), gh = hf.get();
  bool ok = true;
  for (size_t i = 0; i < x.size(); ++i)
    ok = ok && gb[i] == toBF16(x[i]) && gh[i] == toF16(x[i]);
  lc::castBf16ToF32(ctx, bf, back, int64_t(x.size()));
  auto wb = back.get();
  for (size_t i = 0; i < x.size(); ++i) {
    const float r = fromBF16(gb[i]);
    ok = ok && (std::memcmp(&wb[i], &r, 4) == 0);
  }
  lc::castF16ToF32(ctx, hf, back, int64_t(x.size()));
  wb = back.get();
  for (size_t i = 0; i < x.size(); ++i) {
    const float r = fromF16(gh[i]);
    ok = ok && (std::memcmp(&wb[i], &r, 4) == 0);
  }
  row("casts f32<->bf16/f16", dims({int64_t(x.size())}), NAN, 0, ok,
      "bitwise LowPrecision.cpp's rounding");
  noDeviceError(ctx, "glue");
}

//===----------------------------------------------------------------------===//
// A step captured as a CUDA graph
//===----------------------------------------------------------------------===//

/// A training-step-like sequence (GEMM, norms, cross-entropy, embedding,
/// dropout, AdamW, the gradient norm, clipping) run eagerly, then captured
/// into a CUDA graph and replayed from the same initial state: the replay
/// must give bitwise the eager results (no host synchronisation, no
/// allocation, no host-read scalar inside any kernel call).
void testGraphCapture(lc::CudaContext &ctx) {
  const int64_t rows = 512, cols = 768, classes = 1000, vocab = 3000, n = rows;
  const auto x0 = randomVec(size_t(rows * cols)), gain = randomVec(cols),
             bias = randomVec(cols),
             w = randomVec(size_t(cols * classes), 0.05f);
  std::vector<uint16_t> w16(w.size()), x16(x0.size());
  for (size_t i = 0; i < w.size(); ++i)
    w16[i] = toBF16(w[i]);
  for (size_t i = 0; i < x0.size(); ++i)
    x16[i] = toBF16(x0[i]);
  std::vector<int32_t> target(rows), ids(n);
  for (int64_t r = 0; r < rows; ++r) {
    target[r] = int32_t(rng() % classes);
    ids[r] = int32_t(rng() % 50);
  }
  const auto p0 = randomVec(size_t(cols * classes)),
             m0 = randomVec(size_t(cols * classes), 0.01f),
             v0 = positiveVec(size_t(cols * classes), 1e-6f, 1e-3f);
  Dev<float> x(x0), g(gain), b(bias), wF(w), y(x0.size()), mean(rows),
      rstd(rows), logits(size_t(rows * classes)), loss(1), lse(rows), stats(2),
      dloss(std::vector<float>{1.0f}), dlogits(size_t(rows * classes)),
      dx(x0.size()), dg(cols), db(cols), dtable(size_t(vocab * cols)),
      drop(x0.size()), p(p0), m(m0), v(v0), lr(std::vector<float>{1e-3f}),
      gs(std::vector<float>{1.0f}), normF(1), coef(1), hist(4);
  Dev<uint16_t> x16d(x16), w16d(w16), logits16(size_t(rows * classes));
  Dev<int32_t> tgt(target), idsD(ids);
  Dev<int64_t> step(std::vector<int64_t>{5}), count(std::vector<int64_t>{0});
  Dev<double> norm2(1);
  auto runStep = [&] {
    lc::layerNormFwd(ctx, rows, cols, x, g, b, 1e-5f, y, mean, rstd);
    lc::gemm(ctx, 1, false, false, rows, classes, cols, y, 0, wF, 0, logits, 0);
    lc::gemmBf16(ctx, 1, false, false, rows, classes, cols, x16d, 0, w16d, 0,
                 logits16, 0);
    lc::crossEntropyFwd(ctx, rows, classes, logits, tgt, -100, loss, lse,
                        stats);
    lc::crossEntropyBwd(ctx, rows, classes, logits, tgt, -100, lse, dloss,
                        dlogits);
    lc::gemm(ctx, 1, false, true, rows, cols, classes, dlogits, 0, wF, 0, dx,
             0);
    lc::layerNormBwd(ctx, rows, cols, dx, x, g, mean, rstd, dx, dg, db);
    lc::embeddingBwd(ctx, n, vocab, cols, idsD, y, dtable);
    lc::dropoutFwd(ctx, rows * cols, 0.1f, 77, step, y, drop);
    lc::gemm(ctx, 1, true, false, cols, classes, rows, y, 0, dlogits, 0, m, 0,
             0.0f, 1.0f); // m += 0 * y^T dlogits: beta path, same values
    lc::adamw(ctx, cols * classes, p, dlogits, m, v, lr, 0.9f, 0.999f, 1e-8f,
              0.01f, gs, step);
    lc::sumSquares(ctx, cols * classes, p, norm2);
    lc::scalarCopy(ctx, norm2, lc::kF64, normF, lc::kF32, true);
    lc::adaptiveClip(ctx, normF, hist, 4, count, 3.0f, 1.0f, true, coef);
  };
  auto reset = [&] {
    p.put(p0), m.put(m0), v.put(v0);
    count.put({0});
    hist.put(std::vector<float>(4, 0.0f));
  };
  auto snapshot = [&] {
    std::vector<std::vector<float>> out = {
        y.get(),  logits.get(), loss.get(), stats.get(),  dlogits.get(),
        dx.get(), dg.get(),     db.get(),   dtable.get(), drop.get(),
        p.get(),  m.get(),      v.get(),    normF.get(),  coef.get()};
    const auto l16 = logits16.get();
    out.emplace_back(l16.size());
    for (size_t i = 0; i < l16.size(); ++i)
      out.back()[i] = fromBF16(l16[i]);
    return out;
  };
  reset();
  runStep(); // eager: scratch grows to the step's need, GEMM plans cached
  const auto eager = snapshot();
  reset();
  for (auto *buf : {&y, &logits, &dlogits, &dx, &dg, &db, &dtable, &drop})
    buf->poison();
  check(cudaDeviceSynchronize(), "sync");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  check(cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeGlobal),
        "cudaStreamBeginCapture");
  try {
    runStep();
  } catch (...) {
    cudaStreamEndCapture(ctx.stream, &graph);
    if (graph)
      cudaGraphDestroy(graph);
    throw;
  }
  check(cudaStreamEndCapture(ctx.stream, &graph), "cudaStreamEndCapture");
  check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  size_t nodes = 0;
  check(cudaGraphGetNodes(graph, nullptr, &nodes), "cudaGraphGetNodes");
  check(cudaGraphLaunch(exec, ctx.stream), "cudaGraphLaunch");
  check(cudaStreamSynchronize(ctx.stream), "sync");
  const auto replay = snapshot();
  bool same = eager.size() == replay.size();
  for (size_t i = 0; same && i < eager.size(); ++i)
    same = bitwiseEqual(eager[i], replay[i]);
  // Replayed again (step state advanced: adamw, clipping history): it runs.
  check(cudaGraphLaunch(exec, ctx.stream), "cudaGraphLaunch");
  check(cudaStreamSynchronize(ctx.stream), "sync");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  row("graph capture + replay", std::to_string(nodes) + " nodes", NAN, 0, same,
      same ? "replay bitwise the eager step" : "replay differs from eager");
  noDeviceError(ctx, "graph");
}

//===----------------------------------------------------------------------===//
// GEMM rate
//===----------------------------------------------------------------------===//

void timeGemm(lc::CudaContext &ctx, int64_t M, int64_t N, int64_t K) {
  std::vector<uint16_t> a(size_t(M * K)), b(size_t(K * N));
  for (auto &v : a)
    v = toBF16(float(int(rng() % 2001) - 1000) / 1000.0f);
  for (auto &v : b)
    v = toBF16(float(int(rng() % 2001) - 1000) / 1000.0f);
  Dev<uint16_t> dA(a), dB(b), dC(size_t(M * N));
  for (int i = 0; i < 5; ++i)
    lc::gemmBf16(ctx, 1, false, false, M, N, K, dA, 0, dB, 0, dC, 0);
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    check(cudaEventRecord(start, ctx.stream), "event");
    lc::gemmBf16(ctx, 1, false, false, M, N, K, dA, 0, dB, 0, dC, 0);
    check(cudaEventRecord(stop, ctx.stream), "event");
    check(cudaEventSynchronize(stop), "event");
    float t = 0;
    check(cudaEventElapsedTime(&t, start, stop), "event");
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  const double median = 0.5 * (ms[9] + ms[10]);
  const double tflops =
      2.0 * double(M) * double(N) * double(K) / (median * 1e-3) / 1e12;
  std::printf("GEMM bf16 cuBLASLt M=%lld N=%lld K=%lld: median %.4f ms over 20 "
              "(min %.4f, max %.4f) = %.1f TFLOP/s\n",
              (long long)M, (long long)N, (long long)K, median, ms.front(),
              ms.back(), tflops);
  std::fflush(stdout);
}

} // namespace

int main() {
  const auto started = std::chrono::steady_clock::now();
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    std::printf("KernelsTest: no CUDA device\nSUMMARY KernelsTest: 0 checks, "
                "FAILED (no device)\n");
    return 1;
  }
  std::printf("KernelsTest on %s (sm_%d%d, %d SMs)\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount);
  std::printf("%-28s %-30s %10s %6s  %-4s %s\n", "kernel", "shape", "rel err",
              "tol", "", "note");
  try {
    lc::CudaContext ctx(device, 0, /*seed=*/42);
    auto guarded = [&](const char *what, const std::function<void()> &f) {
      try {
        f();
      } catch (const std::exception &e) {
        row(what, "-", NAN, 0, false, std::string("threw: ") + e.what());
        cudaGetLastError();
        ctx.clearError();
      }
    };
    guarded("gemm", [&] { testGemms(ctx); });
    guarded("gemm gelu", [&] {
      testGemmGelu(ctx, false, false, 1024, 3072, 768);
      testGemmGelu(ctx, false, true, 1024, 3072, 768);
      testGemmGelu(ctx, true, false, 200, 64, 96);
      // A leading dimension cuBLASLt's auxiliary matrix does not take.
      testGemmGelu(ctx, false, false, 129, 100, 33);
      testGemmGelu(ctx, false, true, 129, 100, 33, true);
    });
    guarded("layer_norm", [&] {
      testLayerNorm(ctx, 4096, 768, true);
      testLayerNorm(ctx, 37, 1000, true);
      testLayerNorm(ctx, 5, 3001, true);
      testLayerNorm(ctx, 130, 77, false);
      testLayerNorm(ctx, 64, 2048, true);
      testLayerNormMisaligned(ctx, 37, 1000);
      noDeviceError(ctx, "layer_norm");
    });
    guarded("rms_norm", [&] {
      testRmsNorm(ctx, 4096, 768, true);
      testRmsNorm(ctx, 19, 2050, true);
      testRmsNorm(ctx, 65, 33, false);
    });
    guarded("softmax", [&] {
      for (bool log : {false, true}) {
        testSoftmax(ctx, 4096, 768, log);
        testSoftmax(ctx, 64, 50257, log);
        testSoftmax(ctx, 7, 33, log);
      }
    });
    guarded("cross_entropy", [&] {
      testCrossEntropy(ctx, 1024, 50257);
      testCrossEntropy(ctx, 300, 10);
      testCrossEntropy(ctx, 4099, 1000);
      testCrossEntropy(ctx, 512, 50304);
      testCrossEntropy(ctx, 64, 200000);
      testCrossEntropyErrors(ctx);
      testVocabParallel(ctx, 300, 40, 2);
      testVocabParallel(ctx, 1024, 12576, 4);
    });
    guarded("embedding", [&] {
      testEmbedding(ctx, 8192, 5000, 768);
      testEmbedding(ctx, 1000, 50257, 33);
      testEmbeddingErrors(ctx);
    });
    guarded("dropout", [&] {
      testDropout(ctx, (1 << 20) + 3, 0.1f);
      testDropout(ctx, 4097, 0.5f);
      testDropout(ctx, 1000, 0.0f);
      testDropout(ctx, 1000, 1.0f);
    });
    guarded("optimizers", [&] {
      testAdamW(ctx, (1 << 20) + 7);
      testAdamWMulti(ctx);
      testSgd(ctx, 100001, 0.9f, true, false);
      testSgd(ctx, 100001, 0.9f, false, true);
      testSgd(ctx, 4097, 0.0f, false, false);
      testSumSquares(ctx, 10'000'001);
      testSumSquares(ctx, 5);
      testAdaptiveClip(ctx);
      noDeviceError(ctx, "optimizers");
    });
    guarded("check_finite", [&] { testCheckFinite(ctx); });
    guarded("glue", [&] { testGlue(ctx); });
    guarded("graph capture", [&] { testGraphCapture(ctx); });
    guarded("gemm timing", [&] {
      timeGemm(ctx, 1024, 768, 3072);
      timeGemm(ctx, 8192, 8192, 8192);
    });
  } catch (const std::exception &e) {
    row("context", "-", NAN, 0, false, std::string("threw: ") + e.what());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started)
          .count();
  std::printf("SUMMARY KernelsTest: %d checks, %d failed, %.1f s: %s\n", checks,
              failures, seconds, failures ? "FAILED" : "PASSED");
  return failures ? 1 : 0;
}
