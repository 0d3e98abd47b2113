//===- GemmBench.cpp - Loom's bf16 GEMM path at one shape -----------------===//
//
//   GemmBench M N K transA transB reps [offA [offB [offC]]]
//
// Times loom::cuda::gemmBf16 (cuBLASLt, fp32 accumulation; the path a CUDA
// artifact's loom_gemm_bf16 calls take) for row-major C[M,N] = op(A) op(B),
// A stored [M,K] ([K,M] when transA), B stored [K,N] ([N,K] when transB),
// on random bf16 data (A, B, C offA/offB/offC bytes past a 256-byte
// boundary, default 0; offB and offC default to offA: 64 is how arena
// buffers may sit): five warm-up calls, then `reps` calls timed one by
// one with CUDA events. Prints `TFLOPS <2MNK / median seconds / 1e12>` and
// the median in microseconds. tests/bench/gpu/gpt2_small.py runs it at the
// model's shapes next to torch.matmul (--loom-gemm-bench). Not a test: it
// lands in <build>/gpu-bench/, which tests/gpu/run.sh does not run.
//
//===----------------------------------------------------------------------===//
#include "runtime/Support.h"
#include "runtime/kernels/HalfFloat.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/CudaKernels.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

namespace {

int64_t parse(const char *text, const char *what) {
  char *end = nullptr;
  long long v = std::strtoll(text, &end, 10);
  if (!end || *end || v < 0) {
    std::fprintf(stderr, "GemmBench: %s must be a non-negative integer, not '%s'\n",
                 what, text);
    std::exit(2);
  }
  return v;
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 7 || argc > 10) {
    std::fprintf(stderr,
                 "usage: GemmBench M N K transA transB reps [offA [offB [offC]]]\n");
    return 2;
  }
  int64_t M = parse(argv[1], "M"), N = parse(argv[2], "N"),
          K = parse(argv[3], "K");
  bool ta = parse(argv[4], "transA") != 0, tb = parse(argv[5], "transB") != 0;
  int64_t reps = std::max<int64_t>(1, parse(argv[6], "reps"));
  int64_t offA = argc > 7 ? parse(argv[7], "offA") : 0;
  int64_t offB = argc > 8 ? parse(argv[8], "offB") : offA;
  int64_t offC = argc > 9 ? parse(argv[9], "offC") : offA;
  for (int64_t o : {offA, offB, offC})
    if (o % 2 != 0 || o >= 256) {
      std::fprintf(stderr, "GemmBench: offsets must be even and below 256\n");
      return 2;
    }
  try {
    loom::cuda::CudaContext ctx(0, 0);
    auto upload = [&](int64_t n, int64_t offset) {
      std::vector<uint16_t> host(static_cast<size_t>(n));
      std::mt19937 gen(static_cast<uint32_t>(n));
      std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
      for (auto &v : host)
        v = loom::kernels::toBF16(dist(gen));
      uint16_t *base = nullptr;
      LOOM_CUDA_CHECK(ctx, cudaMalloc(reinterpret_cast<void **>(&base),
                                      size_t(n) * 2 + 256),
                      "GemmBench");
      uint16_t *d = base + offset / 2;
      LOOM_CUDA_CHECK(ctx, cudaMemcpy(d, host.data(), size_t(n) * 2,
                                      cudaMemcpyHostToDevice),
                      "GemmBench");
      return d;
    };
    uint16_t *A = upload(M * K, offA), *B = upload(K * N, offB),
             *C = upload(M * N, offC);
    cudaEvent_t start, stop;
    LOOM_CUDA_CHECK(ctx, cudaEventCreate(&start), "GemmBench");
    LOOM_CUDA_CHECK(ctx, cudaEventCreate(&stop), "GemmBench");
    auto once = [&] {
      loom::cuda::gemmBf16(ctx, 1, ta, tb, M, N, K, A, 0, B, 0, C, 0);
    };
    for (int i = 0; i < 5; ++i)
      once();
    std::vector<float> ms;
    for (int64_t i = 0; i < reps; ++i) {
      LOOM_CUDA_CHECK(ctx, cudaEventRecord(start, ctx.stream), "GemmBench");
      once();
      LOOM_CUDA_CHECK(ctx, cudaEventRecord(stop, ctx.stream), "GemmBench");
      LOOM_CUDA_CHECK(ctx, cudaEventSynchronize(stop), "GemmBench");
      float t = 0;
      LOOM_CUDA_CHECK(ctx, cudaEventElapsedTime(&t, start, stop), "GemmBench");
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    double median = ms[ms.size() / 2] * 1e-3;
    std::printf("TFLOPS %.2f\nmedian_us %.1f\n",
                2.0 * double(M) * double(N) * double(K) / median / 1e12,
                median * 1e6);
    cudaFree(A - offA / 2);
    cudaFree(B - offB / 2);
    cudaFree(C - offC / 2);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "GemmBench: %s\n", e.what());
    return 1;
  }
  return 0;
}
