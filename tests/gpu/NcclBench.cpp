//===- NcclBench.cpp - NCCL collectives through Loom's mesh ---------------===//
//
//   mpirun -np N build-gpu/gpu-tests/NcclBench [--max-bytes=4G] [--iters=20]
//
// One rank per GPU (local rank → device). First checks, on the dp axis of a
// dp = N mesh and on every axis of the meshes 1×2×1 and 1×1×2 (N = 2),
// 2×2×1 and 1×2×2 (N = 4), 2×2×2 (N = 8), that
// all_reduce, all_gather, reduce_scatter, broadcast and send/recv give the
// exact expected values (integer-valued floats, so every sum is exact and any
// lost or duplicated block shows). Then times all_reduce (f32, in place)
// from 1 MiB to --max-bytes, in powers of 4, with CUDA events (median of
// --iters after 5 warm-ups) and prints, on rank 0, the algorithm bandwidth
// S/t and the bus bandwidth S/t · 2(n−1)/n, the ring model's traffic per
// link; under the ring model the bus bandwidth of large messages is the
// link bandwidth, so its ratio to the largest measured one shows how close
// each size comes. Exit status non-zero on a failed check.
//
//===----------------------------------------------------------------------===//
#include "runtime/Support.h"
#include "runtime/cuda/Nccl.h"

#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using loom::cuda::NcclMesh;
using loom::cuda::NcclOp;
using loom::cuda::NcclType;

namespace {

int rank = 0, world = 1, failures = 0, checks = 0;

#define CUDA_OK(call)                                                          \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "rank %d: %s failed: %s\n", rank, #call,            \
                   cudaGetErrorString(e_));                                    \
      MPI_Abort(MPI_COMM_WORLD, 2);                                            \
    }                                                                          \
  } while (0)

/// Every rank's verdict, combined: a check passes when it passed everywhere.
void report(const std::string &name, bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  ++checks;
  if (!all)
    ++failures;
  if (rank == 0)
    std::printf("%-58s %s\n", name.c_str(), all ? "PASS" : "FAIL");
}

/// A value exact in f32 that names its owner and position.
float valueOf(int owner, size_t i) { return float((owner + 1) * 1000 + i % 997); }

std::vector<float> download(const float *d, size_t n) {
  std::vector<float> h(n);
  CUDA_OK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

void upload(float *d, const std::vector<float> &h) {
  CUDA_OK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
}

/// The members of this rank's group on `axis`, as world ranks, by coordinate.
std::vector<int> groupOf(const NcclMesh &m, int64_t tp, int64_t pp, int axis) {
  int c[3] = {m.coord(0), m.coord(1), m.coord(2)};
  std::vector<int> members;
  for (int k = 0; k < m.size(axis); ++k) {
    c[axis] = k;
    members.push_back(int((c[0] * tp + c[1]) * pp + c[2]));
  }
  return members;
}

void checkMesh(int64_t dp, int64_t tp, int64_t pp, int device, cudaStream_t s) {
  NcclMesh mesh(dp, tp, pp, rank, world, device);
  std::string meshName = "mesh " + std::to_string(dp) + "x" + std::to_string(tp) +
                         "x" + std::to_string(pp);
  for (int axis = 0; axis < 3; ++axis) {
    int n = mesh.size(axis);
    if (n == 1 && !(dp == world && axis == 0))
      continue;
    std::vector<int> members = groupOf(mesh, tp, pp, axis);
    const char *ax = axis == 0 ? "dp" : axis == 1 ? "tp" : "pp";
    for (size_t count : {size_t(1), size_t(1000), size_t((1 << 20) + 3)}) {
      std::string size = std::to_string(count);
      float *a = nullptr, *b = nullptr;
      CUDA_OK(cudaMalloc(reinterpret_cast<void **>(&a), count * n * sizeof(float)));
      CUDA_OK(cudaMalloc(reinterpret_cast<void **>(&b), count * n * sizeof(float)));
      // all_reduce (sum, in place) and max.
      std::vector<float> mine(count);
      for (size_t i = 0; i < count; ++i)
        mine[i] = valueOf(rank, i);
      upload(a, mine);
      mesh.allReduce(a, a, count, NcclType::F32, NcclOp::Sum, axis, s);
      mesh.synchronize(s, 60, "check");
      std::vector<float> got = download(a, count);
      bool ok = true;
      for (size_t i = 0; i < count && ok; ++i) {
        float want = 0;
        for (int r : members)
          want += valueOf(r, i);
        ok = got[i] == want;
      }
      report(meshName + " all_reduce sum over " + ax + ", " + size, ok);
      upload(a, mine);
      mesh.allReduce(a, b, count, NcclType::F32, NcclOp::Max, axis, s);
      mesh.synchronize(s, 60, "check");
      got = download(b, count);
      ok = true;
      for (size_t i = 0; i < count && ok; ++i)
        ok = got[i] == valueOf(members.back(), i);
      report(meshName + " all_reduce max over " + ax + ", " + size, ok);
      // all_gather: member k's block at k * count.
      upload(a, mine);
      mesh.allGather(a, b, count, NcclType::F32, axis, s);
      mesh.synchronize(s, 60, "check");
      got = download(b, count * n);
      ok = true;
      for (int k = 0; k < n && ok; ++k)
        for (size_t i = 0; i < count && ok; ++i)
          ok = got[k * count + i] == valueOf(members[k], i);
      report(meshName + " all_gather over " + ax + ", " + size, ok);
      // reduce_scatter: this member's block of the sum.
      std::vector<float> blocks(count * n);
      for (size_t i = 0; i < blocks.size(); ++i)
        blocks[i] = valueOf(rank, i);
      upload(a, blocks);
      mesh.reduceScatter(a, b, count, NcclType::F32, NcclOp::Sum, axis, s);
      mesh.synchronize(s, 60, "check");
      got = download(b, count);
      ok = true;
      size_t base = size_t(mesh.coord(axis)) * count;
      for (size_t i = 0; i < count && ok; ++i) {
        float want = 0;
        for (int r : members)
          want += valueOf(r, base + i);
        ok = got[i] == want;
      }
      report(meshName + " reduce_scatter over " + ax + ", " + size, ok);
      // broadcast from the last member.
      upload(a, mine);
      mesh.broadcast(a, count, NcclType::F32, n - 1, axis, s);
      mesh.synchronize(s, 60, "check");
      got = download(a, count);
      ok = true;
      for (size_t i = 0; i < count && ok; ++i)
        ok = got[i] == valueOf(members.back(), i);
      report(meshName + " broadcast over " + ax + ", " + size, ok);
      // send/recv along the axis: each member sends to the next, the
      // last to nobody; each receives from the previous.
      if (n > 1) {
        int c = mesh.coord(axis);
        upload(a, mine);
        if (c + 1 < n)
          mesh.send(a, count, NcclType::F32, +1, axis, s);
        if (c > 0)
          mesh.recv(b, count, NcclType::F32, -1, axis, s);
        mesh.synchronize(s, 60, "check");
        ok = true;
        if (c > 0) {
          got = download(b, count);
          for (size_t i = 0; i < count && ok; ++i)
            ok = got[i] == valueOf(members[c - 1], i);
        }
        report(meshName + " send/recv to the next over " + ax + ", " + size, ok);
      }
      CUDA_OK(cudaFree(a));
      CUDA_OK(cudaFree(b));
    }
  }
  // Errors name the rank, the collective and the cause.
  bool named = false;
  try {
    mesh.send(nullptr, 1, NcclType::F32, mesh.size(0), 0, s);
  } catch (const loom::runtime::Error &e) {
    named = std::string(e.what()).find("rank " + std::to_string(rank) +
                                       ": nccl: send over dp") == 0;
  }
  report(meshName + " a bad peer is an error naming rank and collective", named);
}

uint64_t parseBytes(const char *s) {
  char *end = nullptr;
  double v = std::strtod(s, &end);
  switch (end && *end ? *end : ' ') {
  case 'K': case 'k': v *= 1024; break;
  case 'M': case 'm': v *= 1024 * 1024; break;
  case 'G': case 'g': v *= 1024.0 * 1024 * 1024; break;
  default: break;
  }
  return uint64_t(v);
}

} // namespace

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  uint64_t maxBytes = uint64_t(4) << 30;
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    if (!std::strncmp(argv[i], "--max-bytes=", 12))
      maxBytes = parseBytes(argv[i] + 12);
    else if (!std::strncmp(argv[i], "--iters=", 8))
      iters = std::max(1, std::atoi(argv[i] + 8));
  }
  // The local rank picks the GPU.
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local);
  int localRank = 0, devices = 0;
  MPI_Comm_rank(local, &localRank);
  CUDA_OK(cudaGetDeviceCount(&devices));
  if (localRank >= devices) {
    std::fprintf(stderr, "rank %d: local rank %d but only %d GPU(s)\n", rank,
                 localRank, devices);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  CUDA_OK(cudaSetDevice(localRank));
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  if (rank == 0) {
    cudaDeviceProp p;
    CUDA_OK(cudaGetDeviceProperties(&p, localRank));
    std::printf("NCCL %s, %d rank(s), %s; NCCL_NVLS_ENABLE=%s\n",
                loom::cuda::ncclVersionString().c_str(), world, p.name,
                std::getenv("NCCL_NVLS_ENABLE") ? std::getenv("NCCL_NVLS_ENABLE") : "(unset)");
  }
  try {
    checkMesh(world, 1, 1, localRank, s);
    if (world == 2) {
      checkMesh(1, 2, 1, localRank, s);
      checkMesh(1, 1, 2, localRank, s);
    } else if (world == 4) {
      checkMesh(2, 2, 1, localRank, s);
      checkMesh(1, 2, 2, localRank, s);
    } else if (world == 8) {
      checkMesh(2, 2, 2, localRank, s);
    }

    if (world == 1) {
      // In place over one rank nothing moves: no bandwidth to measure.
      std::printf("one rank: all_reduce moves no data; timing skipped "
                  "(run under mpirun -np N, N >= 2)\n");
      std::printf("SUMMARY NcclBench: %d checks, %d failed: %s\n", checks,
                  failures, failures ? "FAILED" : "PASSED");
      MPI_Finalize();
      return failures ? 1 : 0;
    }
    NcclMesh mesh(world, 1, 1, rank, world, localRank);
    float *buf = nullptr;
    CUDA_OK(cudaMalloc(reinterpret_cast<void **>(&buf), maxBytes));
    CUDA_OK(cudaMemset(buf, 0, maxBytes));
    cudaEvent_t t0, t1;
    CUDA_OK(cudaEventCreate(&t0));
    CUDA_OK(cudaEventCreate(&t1));
    double factor = 2.0 * (world - 1) / world;
    if (rank == 0)
      std::printf("\nall_reduce f32 in place over dp=%d, median of %d\n%12s %10s %12s %12s\n",
                  world, iters, "bytes", "time us", "algbw GB/s", "busbw GB/s");
    std::vector<std::pair<uint64_t, double>> rows;
    for (uint64_t bytes = uint64_t(1) << 20; bytes <= maxBytes; bytes *= 4) {
      size_t count = bytes / sizeof(float);
      for (int w = 0; w < 5; ++w)
        mesh.allReduce(buf, buf, count, NcclType::F32, NcclOp::Sum, 0, s);
      mesh.synchronize(s, 120, "warm-up");
      std::vector<float> times;
      for (int it = 0; it < iters; ++it) {
        CUDA_OK(cudaEventRecord(t0, s));
        mesh.allReduce(buf, buf, count, NcclType::F32, NcclOp::Sum, 0, s);
        CUDA_OK(cudaEventRecord(t1, s));
        mesh.synchronize(s, 120, "timing");
        float ms = 0;
        CUDA_OK(cudaEventElapsedTime(&ms, t0, t1));
        times.push_back(ms);
      }
      std::sort(times.begin(), times.end());
      double sec = times[times.size() / 2] / 1e3;
      // The slowest rank's median is the collective's time.
      MPI_Allreduce(MPI_IN_PLACE, &sec, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      rows.push_back({bytes, sec});
    }
    double peak = 0;
    for (auto &[bytes, sec] : rows)
      peak = std::max(peak, bytes / sec * factor);
    if (rank == 0) {
      for (auto &[bytes, sec] : rows) {
        double alg = bytes / sec / 1e9, bus = alg * factor;
        std::printf("%12llu %10.1f %12.1f %12.1f  (%.2f of the largest busbw)\n",
                    (unsigned long long)bytes, sec * 1e6, alg, bus, bus * 1e9 / peak);
      }
    }
    CUDA_OK(cudaFree(buf));
  } catch (const loom::runtime::Error &e) {
    std::fprintf(stderr, "%s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (rank == 0)
    std::printf("SUMMARY NcclBench: %d checks, %d failed: %s\n", checks, failures,
                failures ? "FAILED" : "PASSED");
  MPI_Finalize();
  return failures ? 1 : 0;
}
