//===- AttentionTest.cpp - GPU attention kernels vs the CPU reference ----===//
//
// Plain C++ executable (no GoogleTest on the GPU machine). For random inputs
// (never zeros), with every output and the workspace poisoned with NaN before
// each run, compares runtime/cuda/Attention's fp32 and bf16 variants with the
// CPU templates of runtime/kernels/Kernels.h instantiated for double:
// ||out - ref|| / ||ref|| <= 1e-5 (fp32) or 1e-2 (bf16) for every output
// (out, lse, gate, attn, dq, dk, dv, dwg, dbg); NaN never passes; -inf in lse
// must match exactly. The backward pass is run twice and must be bitwise
// repeatable. Then times the bf16 kernels at B=16, H=12, T=1024, D=64.
//
// Usage: AttentionTest [--small] [--no-timing | --quick-timing]
// (--small: only the cases with T <= 300, and no timing unless
// --quick-timing, which times the bf16 attention alone). Exit status 0 only
// if every check passed.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Attention.h"
#include "runtime/kernels/Kernels.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using loom::cuda::AttentionDims;

#define CUDA_OK(call)                                                          \
  do {                                                                         \
    cudaError_t status_ = (call);                                              \
    if (status_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, \
                   cudaGetErrorString(status_));                               \
      std::exit(2);                                                            \
    }                                                                          \
  } while (0)

#define KERNEL_OK(call)                                                        \
  do {                                                                         \
    std::string error_ = (call);                                               \
    if (!error_.empty()) {                                                     \
      std::fprintf(stderr, "FATAL %s:%d: %s\n", __FILE__, __LINE__,            \
                   error_.c_str());                                            \
      std::exit(2);                                                            \
    }                                                                          \
    CUDA_OK(cudaGetLastError());                                               \
  } while (0)

//--- bf16 on the host --------------------------------------------------------

uint16_t toBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u); // Round to nearest even.
  return uint16_t(u >> 16);
}
float fromBf16(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

//--- Device buffers ----------------------------------------------------------

struct DeviceBuffer {
  void *ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(std::max<size_t>(n, 16)) {
    CUDA_OK(cudaMalloc(&ptr, bytes));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;
  template <class T> T *as() const { return static_cast<T *>(ptr); }
  void poison() const { CUDA_OK(cudaMemset(ptr, 0xff, bytes)); } // NaN.
};

/// Device tensors hold either float or bf16 (uint16) elements.
template <class E> struct Elem;
template <> struct Elem<float> {
  static float from(double x) { return float(x); }
  static double to(float x) { return x; }
};
template <> struct Elem<uint16_t> {
  static uint16_t from(double x) { return toBf16(float(x)); }
  static double to(uint16_t x) { return fromBf16(x); }
};

template <class E>
void upload(const DeviceBuffer &buffer, const std::vector<double> &values) {
  std::vector<E> host(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    host[i] = Elem<E>::from(values[i]);
  CUDA_OK(cudaMemcpy(buffer.ptr, host.data(), host.size() * sizeof(E),
                     cudaMemcpyHostToDevice));
}
template <class E>
std::vector<double> download(const DeviceBuffer &buffer, size_t n) {
  std::vector<E> host(n);
  CUDA_OK(cudaMemcpy(host.data(), buffer.ptr, n * sizeof(E),
                     cudaMemcpyDeviceToHost));
  std::vector<double> values(n);
  for (size_t i = 0; i < n; ++i)
    values[i] = Elem<E>::to(host[i]);
  return values;
}
std::vector<unsigned char> bytesOf(const DeviceBuffer &buffer, size_t n) {
  std::vector<unsigned char> host(n);
  CUDA_OK(cudaMemcpy(host.data(), buffer.ptr, n, cudaMemcpyDeviceToHost));
  return host;
}

//--- Checks ------------------------------------------------------------------

int gChecks = 0, gFailures = 0;

/// ||got - ref|| / ||ref||; infinite when a value is NaN, or an infinity
/// does not match the reference's exactly (lse of rows that see no key).
double relativeError(const std::vector<double> &got,
                     const std::vector<double> &ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(got[i]))
      return std::numeric_limits<double>::infinity();
    if (std::isinf(ref[i]) || std::isinf(got[i])) {
      if (got[i] != ref[i])
        return std::numeric_limits<double>::infinity();
      continue;
    }
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  if (den == 0)
    return num == 0 ? 0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

void report(const std::string &what, const char *output, double err,
            double tol) {
  const bool ok = err <= tol; // NaN and inf fail.
  ++gChecks;
  gFailures += ok ? 0 : 1;
  std::printf("%-52s %-5s rel %-10.3e tol %.0e  %s\n", what.c_str(), output,
              err, tol, ok ? "PASS" : "FAIL");
  std::fflush(stdout);
}

void reportBitwise(const std::string &what, bool same) {
  ++gChecks;
  gFailures += same ? 0 : 1;
  std::printf("%-52s %-5s %-25s  %s\n", what.c_str(), "all",
              "bitwise repeat", same ? "PASS" : "FAIL");
  std::fflush(stdout);
}

//--- Cases -------------------------------------------------------------------

struct Case {
  const char *label;
  int64_t B, H, Tq, Tk, D, Dv;
  bool causal;
  bool gated;
  float threshold; // Gated only; < 0 exact.
};

std::string describe(const Case &c, bool bf16) {
  char buffer[160];
  std::snprintf(buffer, sizeof buffer,
                "%s %s B%lld H%lld Tq%lld Tk%lld D%lld%s%s", c.gated ? "gated" : "attn",
                bf16 ? "bf16" : "f32", (long long)c.B, (long long)c.H,
                (long long)c.Tq, (long long)c.Tk, (long long)c.D,
                c.causal ? "" : " full",
                c.gated && c.threshold >= 0 ? " approx" : "");
  return buffer;
}

/// Normal draws rounded to what the device holds (float or bf16), so that
/// the reference sees exactly the device's inputs.
std::vector<double> draw(std::mt19937_64 &rng, size_t n, double stddev,
                         bool bf16) {
  std::normal_distribution<double> normal(0.0, stddev);
  std::vector<double> values(n);
  for (auto &x : values) {
    double y = normal(rng);
    if (y == 0.0)
      y = 1e-3; // Never a zero.
    x = bf16 ? double(fromBf16(toBf16(float(y)))) : double(float(y));
  }
  return values;
}

/// [B,H,T,W] <-> [B,T,H,W] (toInterleaved false: the inverse).
std::vector<double> permuteHeads(const std::vector<double> &x, int64_t B,
                                 int64_t H, int64_t T, int64_t W,
                                 bool toInterleaved) {
  std::vector<double> y(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t w = 0; w < W; ++w) {
          const size_t bhtw = size_t(((b * H + h) * T + t) * W + w),
                       bthw = size_t(((b * T + t) * H + h) * W + w);
          if (toInterleaved)
            y[bthw] = x[bhtw];
          else
            y[bhtw] = x[bthw];
        }
  return y;
}

/// The bf16 kernels on the [B,T,H,D] layout (AttentionDims::interleaved,
/// what compiled bf16 programs use) against the same kernels on [B,H,T,D]:
/// every output the same bit for bit once permuted back.
/// `expected`: out, lse, gate, attn, dq, dk, dv, dwg, dbg of the [B,H,T,D]
/// run (gate, attn, dwg, dbg ignored when not gated).
void checkInterleaved(const Case &c, AttentionDims dims,
                      const std::vector<double> &q,
                      const std::vector<double> &k,
                      const std::vector<double> &v,
                      const std::vector<double> &dout,
                      const std::vector<double> &wg,
                      const std::vector<double> &bg,
                      const std::vector<std::vector<double>> &expected) {
  using E = uint16_t;
  dims.interleaved = true;
  const std::string name = describe(c, true) + " [B,T,H,D]";
  const std::string why = loom::cuda::attentionSupportedBF16(dims);
  if (!why.empty()) {
    std::printf("%-52s skipped: %s\n", name.c_str(), why.c_str());
    return;
  }
  const int64_t B = c.B, H = c.H, Tq = c.Tq, Tk = c.Tk, D = c.D;
  const size_t nq = size_t(B * H * Tq * D), nk = size_t(B * H * Tk * D),
               nl = size_t(B * H * Tq);
  DeviceBuffer dQ(nq * 2), dK(nk * 2), dV(nk * 2), dOut(nq * 2),
      dAttn(nq * 2), dDout(nq * 2), dLse(nl * 4), dGate(nl * 4),
      dWg(wg.size() * 4), dBg(bg.size() * 4), dDq(nq * 2), dDk(nk * 2),
      dDv(nk * 2), dDwg(wg.size() * 4), dDbg(bg.size() * 4),
      dWork(c.gated ? loom::cuda::gatedAttentionBackwardWorkspaceBytes(dims)
                    : loom::cuda::attentionBackwardWorkspaceBytes(dims));
  upload<E>(dQ, permuteHeads(q, B, H, Tq, D, true));
  upload<E>(dK, permuteHeads(k, B, H, Tk, D, true));
  upload<E>(dV, permuteHeads(v, B, H, Tk, D, true));
  upload<E>(dDout, permuteHeads(dout, B, H, Tq, D, true));
  upload<float>(dWg, wg);
  upload<float>(dBg, bg);
  for (const DeviceBuffer *b : {&dOut, &dAttn, &dLse, &dGate, &dDq, &dDk,
                                &dDv, &dDwg, &dDbg, &dWork})
    b->poison();
  if (c.gated) {
    KERNEL_OK(loom::cuda::gatedAttentionForwardBF16(
        dims, c.threshold, dQ.as<E>(), dK.as<E>(), dV.as<E>(),
        dWg.as<float>(), dBg.as<float>(), dOut.as<E>(), dLse.as<float>(),
        dGate.as<float>(), dAttn.as<E>(), nullptr));
    KERNEL_OK(loom::cuda::gatedAttentionBackwardBF16(
        dims, c.threshold, dQ.as<E>(), dK.as<E>(), dV.as<E>(),
        dWg.as<float>(), dLse.as<float>(), dGate.as<float>(), dAttn.as<E>(),
        dDout.as<E>(), dDq.as<E>(), dDk.as<E>(), dDv.as<E>(),
        dDwg.as<float>(), dDbg.as<float>(), dWork.ptr, nullptr));
  } else {
    KERNEL_OK(loom::cuda::attentionForwardBF16(
        dims, dQ.as<E>(), dK.as<E>(), dV.as<E>(), dOut.as<E>(),
        dLse.as<float>(), nullptr));
    KERNEL_OK(loom::cuda::attentionBackwardBF16(
        dims, dQ.as<E>(), dK.as<E>(), dV.as<E>(), dOut.as<E>(),
        dLse.as<float>(), dDout.as<E>(), dDq.as<E>(), dDk.as<E>(),
        dDv.as<E>(), dWork.ptr, nullptr));
  }
  CUDA_OK(cudaDeviceSynchronize());
  auto same = [](const std::vector<double> &a, const std::vector<double> &b) {
    if (a.size() != b.size())
      return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!(a[i] == b[i] || (std::isinf(a[i]) && a[i] == b[i])))
        return false;
    return true;
  };
  bool ok = same(permuteHeads(download<E>(dOut, nq), B, H, Tq, D, false),
                 expected[0]) &&
            same(download<float>(dLse, nl), expected[1]) &&
            same(permuteHeads(download<E>(dDq, nq), B, H, Tq, D, false),
                 expected[4]) &&
            same(permuteHeads(download<E>(dDk, nk), B, H, Tk, D, false),
                 expected[5]) &&
            same(permuteHeads(download<E>(dDv, nk), B, H, Tk, D, false),
                 expected[6]);
  if (c.gated)
    ok = ok && same(download<float>(dGate, nl), expected[2]) &&
         same(permuteHeads(download<E>(dAttn, nq), B, H, Tq, D, false),
              expected[3]) &&
         same(download<float>(dDwg, wg.size()), expected[7]) &&
         same(download<float>(dDbg, bg.size()), expected[8]);
  ++gChecks;
  gFailures += ok ? 0 : 1;
  std::printf("%-52s %-5s %-25s  %s\n", name.c_str(), "all",
              "bitwise = [B,H,T,D]", ok ? "PASS" : "FAIL");
  std::fflush(stdout);
}

template <class E> void runCase(const Case &c, uint64_t seed) {
  constexpr bool bf16 = std::is_same_v<E, uint16_t>;
  const double tol = bf16 ? 1e-2 : 1e-5;
  const std::string name = describe(c, bf16);
  AttentionDims dims;
  dims.B = c.B, dims.H = c.H, dims.Tq = c.Tq, dims.Tk = c.Tk, dims.D = c.D,
  dims.Dv = c.Dv, dims.causal = c.causal;
  const std::string why = bf16 ? loom::cuda::attentionSupportedBF16(dims)
                               : loom::cuda::attentionSupportedF32(dims);
  if (!why.empty()) {
    std::printf("%-52s skipped: %s\n", name.c_str(), why.c_str());
    return;
  }
  const size_t BH = size_t(c.B * c.H), nq = BH * c.Tq * c.D,
               nk = BH * c.Tk * c.D, nv = BH * c.Tk * c.Dv,
               no = BH * c.Tq * c.Dv, nl = BH * c.Tq;
  std::mt19937_64 rng(seed);
  // q, k of stddev 1.5: scores of stddev ~2.25, a peaked softmax.
  const auto q = draw(rng, nq, 1.5, bf16), k = draw(rng, nk, 1.5, bf16),
             v = draw(rng, nv, 1.0, bf16), dout = draw(rng, no, 1.0, bf16);
  // wg, bg are fp32 parameters in both variants; logits of stddev ~1.
  const auto wg = draw(rng, c.H * 2 * c.D,
                       1.0 / (1.5 * std::sqrt(2.0 * double(c.D))), false);
  const auto bg = draw(rng, c.H, 0.5, false);

  // Reference (double).
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> rOut(no), rLse(nl), rGate(nl), rAttn(no), rDq(nq),
      rDk(nk), rDv(nv), rDwg(c.H * 2 * c.D), rDbg(c.H);
  if (c.gated) {
    loom::kernels::gatedAttentionForward<double>(
        c.B, c.H, c.Tq, c.D, c.Dv, c.causal, c.threshold, q.data(), k.data(),
        v.data(), wg.data(), bg.data(), rOut.data(), rLse.data(),
        rGate.data(), rAttn.data());
    loom::kernels::gatedAttentionBackward<double>(
        c.B, c.H, c.Tq, c.D, c.Dv, c.causal, c.threshold, q.data(), k.data(),
        v.data(), wg.data(), rLse.data(), rGate.data(), rAttn.data(),
        dout.data(), rDq.data(), rDk.data(), rDv.data(), rDwg.data(),
        rDbg.data());
  } else {
    loom::kernels::attentionForward<double>(c.B, c.H, c.Tq, c.Tk, c.D, c.Dv,
                                            c.causal, q.data(), k.data(),
                                            v.data(), rOut.data(), rLse.data());
    loom::kernels::attentionBackward<double>(
        c.B, c.H, c.Tq, c.Tk, c.D, c.Dv, c.causal, q.data(), k.data(),
        v.data(), rOut.data(), rLse.data(), dout.data(), rDq.data(),
        rDk.data(), rDv.data());
  }
  const double refSeconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();

  // Device.
  DeviceBuffer dQ(nq * sizeof(E)), dK(nk * sizeof(E)), dV(nv * sizeof(E)),
      dOut(no * sizeof(E)), dAttn(no * sizeof(E)), dDout(no * sizeof(E)),
      dLse(nl * 4), dGate(nl * 4), dWg(wg.size() * 4), dBg(bg.size() * 4),
      dDq(nq * sizeof(E)), dDk(nk * sizeof(E)), dDv(nv * sizeof(E)),
      dDwg(wg.size() * 4), dDbg(bg.size() * 4),
      dWork(c.gated ? loom::cuda::gatedAttentionBackwardWorkspaceBytes(dims)
                    : loom::cuda::attentionBackwardWorkspaceBytes(dims));
  upload<E>(dQ, q);
  upload<E>(dK, k);
  upload<E>(dV, v);
  upload<E>(dDout, dout);
  upload<float>(dWg, wg);
  upload<float>(dBg, bg);
  for (const DeviceBuffer *b : {&dOut, &dAttn, &dLse, &dGate})
    b->poison();

  if (c.gated) {
    if constexpr (bf16)
      KERNEL_OK(loom::cuda::gatedAttentionForwardBF16(
          dims, c.threshold, dQ.as<E>(), dK.as<E>(), dV.as<E>(),
          dWg.as<float>(), dBg.as<float>(), dOut.as<E>(), dLse.as<float>(),
          dGate.as<float>(), dAttn.as<E>(), nullptr));
    else
      KERNEL_OK(loom::cuda::gatedAttentionForwardF32(
          dims, c.threshold, dQ.as<E>(), dK.as<E>(), dV.as<E>(),
          dWg.as<float>(), dBg.as<float>(), dOut.as<E>(), dLse.as<float>(),
          dGate.as<float>(), dAttn.as<E>(), nullptr));
  } else {
    if constexpr (bf16)
      KERNEL_OK(loom::cuda::attentionForwardBF16(dims, dQ.as<E>(), dK.as<E>(),
                                                 dV.as<E>(), dOut.as<E>(),
                                                 dLse.as<float>(), nullptr));
    else
      KERNEL_OK(loom::cuda::attentionForwardF32(dims, dQ.as<E>(), dK.as<E>(),
                                                dV.as<E>(), dOut.as<E>(),
                                                dLse.as<float>(), nullptr));
  }
  CUDA_OK(cudaDeviceSynchronize());
  report(name, "out", relativeError(download<E>(dOut, no), rOut), tol);
  // lse (and gate) are fp32 in both variants; bf16 inputs and products
  // still limit them to the bf16 tolerance.
  report(name, "lse", relativeError(download<float>(dLse, nl), rLse), tol);
  if (c.gated) {
    report(name, "gate", relativeError(download<float>(dGate, nl), rGate),
           tol);
    report(name, "attn", relativeError(download<E>(dAttn, no), rAttn), tol);
  }

  // Backward from the device's own forward outputs, twice.
  std::vector<unsigned char> first[5];
  for (int rep = 0; rep < 2; ++rep) {
    for (const DeviceBuffer *b : {&dDq, &dDk, &dDv, &dDwg, &dDbg, &dWork})
      b->poison();
    if (c.gated) {
      if constexpr (bf16)
        KERNEL_OK(loom::cuda::gatedAttentionBackwardBF16(
            dims, c.threshold, dQ.as<E>(), dK.as<E>(), dV.as<E>(),
            dWg.as<float>(), dLse.as<float>(), dGate.as<float>(),
            dAttn.as<E>(), dDout.as<E>(), dDq.as<E>(), dDk.as<E>(),
            dDv.as<E>(), dDwg.as<float>(), dDbg.as<float>(), dWork.ptr,
            nullptr));
      else
        KERNEL_OK(loom::cuda::gatedAttentionBackwardF32(
            dims, c.threshold, dQ.as<E>(), dK.as<E>(), dV.as<E>(),
            dWg.as<float>(), dLse.as<float>(), dGate.as<float>(),
            dAttn.as<E>(), dDout.as<E>(), dDq.as<E>(), dDk.as<E>(),
            dDv.as<E>(), dDwg.as<float>(), dDbg.as<float>(), dWork.ptr,
            nullptr));
    } else {
      if constexpr (bf16)
        KERNEL_OK(loom::cuda::attentionBackwardBF16(
            dims, dQ.as<E>(), dK.as<E>(), dV.as<E>(), dOut.as<E>(),
            dLse.as<float>(), dDout.as<E>(), dDq.as<E>(), dDk.as<E>(),
            dDv.as<E>(), dWork.ptr, nullptr));
      else
        KERNEL_OK(loom::cuda::attentionBackwardF32(
            dims, dQ.as<E>(), dK.as<E>(), dV.as<E>(), dOut.as<E>(),
            dLse.as<float>(), dDout.as<E>(), dDq.as<E>(), dDk.as<E>(),
            dDv.as<E>(), dWork.ptr, nullptr));
    }
    CUDA_OK(cudaDeviceSynchronize());
    const DeviceBuffer *grads[5] = {&dDq, &dDk, &dDv, &dDwg, &dDbg};
    const size_t sizes[5] = {nq * sizeof(E), nk * sizeof(E), nv * sizeof(E),
                             c.gated ? wg.size() * 4 : 0,
                             c.gated ? bg.size() * 4 : 0};
    if (rep == 0) {
      for (int i = 0; i < 5; ++i)
        first[i] = bytesOf(*grads[i], sizes[i]);
      report(name, "dq", relativeError(download<E>(dDq, nq), rDq), tol);
      report(name, "dk", relativeError(download<E>(dDk, nk), rDk), tol);
      report(name, "dv", relativeError(download<E>(dDv, nv), rDv), tol);
      if (c.gated) {
        report(name, "dwg",
               relativeError(download<float>(dDwg, wg.size()), rDwg), tol);
        report(name, "dbg",
               relativeError(download<float>(dDbg, bg.size()), rDbg), tol);
      }
    } else {
      bool same = true;
      for (int i = 0; i < 5; ++i)
        same = same && bytesOf(*grads[i], sizes[i]) == first[i];
      reportBitwise(name, same);
    }
  }
  if constexpr (bf16)
    checkInterleaved(c, dims, q, k, v, dout, wg, bg,
                     {download<E>(dOut, no), download<float>(dLse, nl),
                      download<float>(dGate, nl), download<E>(dAttn, no),
                      download<E>(dDq, nq), download<E>(dDk, nk),
                      download<E>(dDv, nv),
                      download<float>(dDwg, c.gated ? wg.size() : 0),
                      download<float>(dDbg, c.gated ? bg.size() : 0)});
  if (refSeconds > 5)
    std::printf("  (reference took %.1f s)\n", refSeconds);
}

//--- Timing ------------------------------------------------------------------

template <class F> double medianMs(F &&f, int warmup = 3, int reps = 20) {
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i)
    f();
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> times;
  for (int i = 0; i < reps; ++i) {
    CUDA_OK(cudaEventRecord(start));
    f();
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CUDA_OK(cudaEventDestroy(start));
  CUDA_OK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return 0.5 * (times[(reps - 1) / 2] + times[reps / 2]);
}

/// bf16 (or fp32) forward and backward of causal attention at B, H, T, D,
/// TFLOP/s with causal FLOPs: forward 4 B H T^2 D / 2, backward 2.5x that.
template <class E>
void timeAttention(int64_t B, int64_t H, int64_t T, int64_t D, bool gated) {
  constexpr bool bf16 = std::is_same_v<E, uint16_t>;
  AttentionDims dims;
  dims.B = B, dims.H = H, dims.Tq = T, dims.Tk = T, dims.D = D, dims.Dv = D;
  dims.causal = true;
  const size_t n = size_t(B * H * T * D), nl = size_t(B * H * T);
  std::mt19937_64 rng(1234);
  DeviceBuffer q(n * sizeof(E)), k(n * sizeof(E)), v(n * sizeof(E)),
      out(n * sizeof(E)), attn(n * sizeof(E)), dout(n * sizeof(E)),
      dq(n * sizeof(E)), dk(n * sizeof(E)), dv(n * sizeof(E)), lse(nl * 4),
      gate(nl * 4), wg(H * 2 * D * 4), bg(H * 4), dwg(H * 2 * D * 4),
      dbg(H * 4),
      work(gated ? loom::cuda::gatedAttentionBackwardWorkspaceBytes(dims)
                 : loom::cuda::attentionBackwardWorkspaceBytes(dims));
  upload<E>(q, draw(rng, n, 1.5, bf16));
  upload<E>(k, draw(rng, n, 1.5, bf16));
  upload<E>(v, draw(rng, n, 1.0, bf16));
  upload<E>(dout, draw(rng, n, 1.0, bf16));
  upload<float>(wg, draw(rng, H * 2 * D, 1.0 / (1.5 * std::sqrt(2.0 * D)),
                         false));
  upload<float>(bg, draw(rng, H, 0.5, false));
  auto forward = [&] {
    if (gated) {
      if constexpr (bf16)
        KERNEL_OK(loom::cuda::gatedAttentionForwardBF16(
            dims, -1.f, q.as<E>(), k.as<E>(), v.as<E>(), wg.as<float>(),
            bg.as<float>(), out.as<E>(), lse.as<float>(), gate.as<float>(),
            attn.as<E>(), nullptr));
      else
        KERNEL_OK(loom::cuda::gatedAttentionForwardF32(
            dims, -1.f, q.as<E>(), k.as<E>(), v.as<E>(), wg.as<float>(),
            bg.as<float>(), out.as<E>(), lse.as<float>(), gate.as<float>(),
            attn.as<E>(), nullptr));
    } else {
      if constexpr (bf16)
        KERNEL_OK(loom::cuda::attentionForwardBF16(
            dims, q.as<E>(), k.as<E>(), v.as<E>(), out.as<E>(),
            lse.as<float>(), nullptr));
      else
        KERNEL_OK(loom::cuda::attentionForwardF32(dims, q.as<E>(), k.as<E>(),
                                                  v.as<E>(), out.as<E>(),
                                                  lse.as<float>(), nullptr));
    }
  };
  auto backward = [&] {
    if (gated) {
      if constexpr (bf16)
        KERNEL_OK(loom::cuda::gatedAttentionBackwardBF16(
            dims, -1.f, q.as<E>(), k.as<E>(), v.as<E>(), wg.as<float>(),
            lse.as<float>(), gate.as<float>(), attn.as<E>(), dout.as<E>(),
            dq.as<E>(), dk.as<E>(), dv.as<E>(), dwg.as<float>(),
            dbg.as<float>(), work.ptr, nullptr));
      else
        KERNEL_OK(loom::cuda::gatedAttentionBackwardF32(
            dims, -1.f, q.as<E>(), k.as<E>(), v.as<E>(), wg.as<float>(),
            lse.as<float>(), gate.as<float>(), attn.as<E>(), dout.as<E>(),
            dq.as<E>(), dk.as<E>(), dv.as<E>(), dwg.as<float>(),
            dbg.as<float>(), work.ptr, nullptr));
    } else {
      if constexpr (bf16)
        KERNEL_OK(loom::cuda::attentionBackwardBF16(
            dims, q.as<E>(), k.as<E>(), v.as<E>(), out.as<E>(),
            lse.as<float>(), dout.as<E>(), dq.as<E>(), dk.as<E>(),
            dv.as<E>(), work.ptr, nullptr));
      else
        KERNEL_OK(loom::cuda::attentionBackwardF32(
            dims, q.as<E>(), k.as<E>(), v.as<E>(), out.as<E>(),
            lse.as<float>(), dout.as<E>(), dq.as<E>(), dk.as<E>(),
            dv.as<E>(), work.ptr, nullptr));
    }
  };
  forward();
  CUDA_OK(cudaDeviceSynchronize());
  const double fwdMs = medianMs(forward);
  const double bwdMs = medianMs(backward);
  const double fwdFlops = 4.0 * B * H * double(T) * T * D / 2;
  std::printf("timing %-5s %-5s B%lld H%lld T%lld D%lld  fwd %7.3f ms %6.1f "
              "TFLOP/s   bwd %7.3f ms %6.1f TFLOP/s\n",
              gated ? "gated" : "attn", bf16 ? "bf16" : "f32", (long long)B,
              (long long)H, (long long)T, (long long)D, fwdMs,
              fwdFlops / fwdMs * 1e-9, bwdMs, 2.5 * fwdFlops / bwdMs * 1e-9);
  std::fflush(stdout);
}

} // namespace

int main(int argc, char **argv) {
  bool small = false, noTiming = false, quickTiming = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    small = small || arg == "--small";
    noTiming = noTiming || arg == "--no-timing";
    quickTiming = quickTiming || arg == "--quick-timing";
  }
  const bool timing = !noTiming && (!small || quickTiming);
  int device = 0;
  CUDA_OK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, device));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount);

  const Case cases[] = {
      // label, B, H, Tq, Tk, D, Dv, causal, gated, threshold
      {"small odd", 2, 3, 77, 77, 32, 32, true, false, -1.f},
      {"small odd", 2, 3, 77, 77, 64, 64, true, false, -1.f},
      {"small odd", 1, 3, 130, 130, 128, 128, true, false, -1.f},
      {"Tq<Tk", 2, 2, 50, 130, 64, 64, true, false, -1.f},
      {"Tq>Tk", 2, 2, 100, 37, 64, 64, true, false, -1.f},
      {"Tq>Tk", 1, 2, 97, 61, 32, 32, true, false, -1.f},
      {"not causal", 2, 2, 77, 45, 64, 64, false, false, -1.f},
      {"D!=Dv (f32)", 2, 2, 70, 70, 48, 80, true, false, -1.f},
      {"gpt2-small", 8, 12, 1024, 1024, 64, 64, true, false, -1.f},
      {"gated exact", 2, 3, 77, 77, 32, 32, true, true, -1.f},
      {"gated exact", 2, 3, 200, 200, 64, 64, true, true, -1.f},
      {"gated exact", 1, 2, 150, 150, 128, 128, true, true, -1.f},
      {"gated approx", 2, 3, 77, 77, 32, 32, true, true, 0.5f},
      {"gated approx", 2, 3, 300, 300, 64, 64, true, true, 0.5f},
      {"gated gpt2", 2, 12, 1024, 1024, 64, 64, true, true, -1.f},
  };
  uint64_t seed = 20261129;
  for (const Case &c : cases) {
    if (small && std::max(c.Tq, c.Tk) > 300)
      continue;
    runCase<float>(c, seed++);
    runCase<uint16_t>(c, seed++);
  }
  std::printf("checks: %d, failures: %d\n", gChecks, gFailures);
  if (timing) {
    timeAttention<uint16_t>(16, 12, 1024, 64, false);
    timeAttention<uint16_t>(16, 12, 1024, 128, false);
    if (!quickTiming) {
      timeAttention<uint16_t>(16, 12, 1024, 64, true);
      timeAttention<float>(16, 12, 1024, 64, false);
    }
  }
  std::printf("%s: %d of %d checks passed\n",
              gFailures == 0 ? "PASSED" : "FAILED", gChecks - gFailures,
              gChecks);
  return gFailures == 0 ? 0 : 1;
}
