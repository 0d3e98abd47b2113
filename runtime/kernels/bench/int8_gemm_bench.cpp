//===- int8_gemm_bench.cpp - INT8 against FP32 products on the CPU --------===//
//
// Not a test: times loom_qgemm_u8s8 (activation quantization, INT8 product,
// dequantization) against loom_gemm (FP32) for the linear layers of the
// GEMM-bound inference configuration of issue 9 (the MLP at hidden 1024,
// batch 256: 256x64 @ 64x1024 and 256x1024 @ 1024x10) and for square
// products, on one thread and on all of them. Each figure is the fastest
// call of those made in about half a second (at least 5 calls). Build it
// with `ninja loom-int8-gemm-bench` (not part of `all`).
//
//===----------------------------------------------------------------------===//
#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

double fastest(const std::function<void()> &call) {
  using clock = std::chrono::steady_clock;
  double best = 1e30, spent = 0;
  for (int n = 0; n < 5 || spent < 0.5; ++n) {
    auto t0 = clock::now();
    call();
    double t = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::min(best, t);
    spent += t;
  }
  return best;
}

void row(int threads, int64_t M, int64_t N, int64_t K) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(M * K)),
      w(static_cast<size_t>(K * N)), y(static_cast<size_t>(M * N)),
      wscale(static_cast<size_t>(N));
  for (float &v : x)
    v = dist(rng);
  for (float &v : w)
    v = dist(rng);
  std::vector<int8_t> wq(static_cast<size_t>(K * N));
  const float range[2] = {-1.0f, 1.0f};
  loom_ctx ctx;
  ctx.threads = threads;
  loom_quantize_weight_s8(&ctx, K, N, w.data(), wq.data(), wscale.data());
  const double fp32 = fastest([&] {
    loom_gemm(&ctx, 1, 0, 0, M, N, K, x.data(), 0, w.data(), 0, y.data(), 0,
              1.0f, 0.0f);
  });
  const double int8 = fastest([&] {
    loom_qgemm_u8s8(&ctx, M, N, K, x.data(), range, wq.data(), wscale.data(),
                    y.data());
  });
  const double flops = 2.0 * double(M) * double(N) * double(K);
  std::printf("| %d | %lldx%lldx%lld | %.1f | %.1f | %.3f | %.3f | %.2f |%s\n",
              threads, static_cast<long long>(M), static_cast<long long>(N),
              static_cast<long long>(K), flops / fp32 / 1e9,
              flops / int8 / 1e9, fp32 * 1e3, int8 * 1e3, fp32 / int8,
              ctx.failed ? " (failed)" : "");
}

} // namespace

int main() {
  int all = 1;
#ifdef _OPENMP
  all = omp_get_max_threads();
#endif
  const bool vnni = __builtin_cpu_supports("avx512vnni") ||
                    __builtin_cpu_supports("avxvnni");
  std::printf("INT8 (loom_qgemm_u8s8: quantize x, u8s8s32 product, dequantize) "
              "vs FP32 (loom_gemm); VNNI %s; fastest call of >= 0.5 s\n\n",
              vnni ? "yes (oneDNN)" : "no (plain loop)");
  std::printf("| threads | MxNxK | FP32 GFLOP/s | INT8 GOP/s | FP32 ms | "
              "INT8 ms | INT8 speed-up |\n| --- | --- | --- | --- | --- | --- "
              "| --- |\n");
  for (int threads : {1, all}) {
    row(threads, 256, 1024, 64);
    row(threads, 256, 10, 1024);
    row(threads, 256, 1024, 1024);
    row(threads, 1024, 1024, 1024);
    if (all == 1)
      break;
  }
  return 0;
}
