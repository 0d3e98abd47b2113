//===- Kernels.cu - the GPU kernels but the GEMMs ------------------------===//
//
// Conventions (runtime/cuda/README.md): device pointers for step-varying
// scalars; data errors into the device error word; deterministic reductions
// (a fixed thread-to-data mapping that depends on the shape only, partial
// sums combined in a fixed order, no float atomics); sums in double, as the
// CPU kernels of runtime/kernels/Kernels.h accumulate them.
//
// Row kernels (norms, softmax, cross-entropy) give each row a group of G
// threads: a warp (G = 32, eight rows per 256-thread block) for rows of up to
// 1024 columns, the whole 256-thread block otherwise. A group's reductions
// are butterfly shuffles (every lane ends with the same, order-fixed value)
// and, across warps, per-warp values summed in warp order.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/CudaKernels.h"
#include "runtime/cuda/Internal.h"
#include "runtime/kernels/HalfFloat.h"
#include "runtime/kernels/Philox.h"

#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <type_traits>

namespace loom::cuda {

namespace {

constexpr int kThreads = 256;
/// Rows of up to this many columns get a warp each, longer ones a block.
constexpr int64_t kWarpRowCols = 1024;
using ull = unsigned long long;

/// Blocks for a grid-stride loop over `work` items: enough to fill the GPU,
/// never more than the work needs. (Only elementwise kernels use it: their
/// results do not depend on the grid.)
unsigned elementwiseGrid(const CudaContext &ctx, int64_t work,
                         int threads = kThreads) {
  int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap =
      int64_t(ctx.multiprocessors > 0 ? ctx.multiprocessors : 132) * 16;
  if (blocks > cap)
    blocks = cap;
  return unsigned(blocks < 1 ? 1 : blocks);
}

std::string rankPrefix(const CudaContext &ctx, const char *kernel) {
  return "rank " + std::to_string(ctx.rank) + ": cuda: " + kernel + ": ";
}

//===----------------------------------------------------------------------===//
// Device helpers
//===----------------------------------------------------------------------===//

/// Records a data error: the first (code, op) to claim the word wins; every
/// report of that (code, op) keeps the lowest key in `a` (atomicMin), so the
/// recorded element is the first in index order.
__device__ void reportError(DeviceError *error, int32_t code, int32_t op,
                            ull key, int64_t context) {
  const ull mine = ull(uint32_t(code)) | (ull(uint32_t(op)) << 32);
  const ull old = atomicCAS(reinterpret_cast<ull *>(error), 0ull, mine);
  if (old == 0ull || old == mine) {
    atomicMin(reinterpret_cast<ull *>(&error->a), key);
    atomicExch(reinterpret_cast<ull *>(&error->b), ull(context));
  }
}

/// Whether another (code, op) already holds the error word.
__device__ bool claimedByOther(const DeviceError *error, int32_t code,
                               int32_t op) {
  const ull mine = ull(uint32_t(code)) | (ull(uint32_t(op)) << 32);
  const ull now = *reinterpret_cast<const volatile ull *>(error);
  return now != 0ull && now != mine;
}

template <class T> __device__ T warpSum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ float warpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

/// Sum over the G threads of a row group; the same value in every thread.
/// shm: 32 entries of block shared memory (used when G > 32).
template <int G> __device__ double groupSum(double v, double *shm) {
  v = warpSum(v);
  if constexpr (G > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); // shm free (an earlier reduction may still read it)
    if (lane == 0)
      shm[warp] = v;
    __syncthreads();
    v = 0;
    for (int w = 0; w < G / 32; ++w)
      v += shm[w];
  }
  return v;
}

template <int G> __device__ float groupMax(float v, float *shm) {
  v = warpMax(v);
  if constexpr (G > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0)
      shm[warp] = v;
    __syncthreads();
    v = shm[0];
    for (int w = 1; w < G / 32; ++w)
      v = fmaxf(v, shm[w]);
  }
  return v;
}

/// The larger value, the lower index on a tie (std::max_element's first
/// maximum); commutative and associative.
__device__ void argmaxCombine(float &v, int64_t &i, float ov, int64_t oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

template <int G>
__device__ void groupArgmax(float &v, int64_t &i, float *shmV, int64_t *shmI) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, offset);
    argmaxCombine(v, i, ov, oi);
  }
  if constexpr (G > 32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
      shmV[warp] = v;
      shmI[warp] = i;
    }
    __syncthreads();
    v = shmV[0];
    i = shmI[0];
    for (int w = 1; w < G / 32; ++w)
      argmaxCombine(v, i, shmV[w], shmI[w]);
  }
}

/// Block-wide sum (blockDim.x a multiple of 32, at most 1024), the same
/// value in every thread, in a fixed order.
template <class T> __device__ T blockSum(T v, T *shm) {
  v = warpSum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0)
    shm[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < int(blockDim.x >> 5); ++w)
    total += shm[w];
  return total;
}

__device__ ull blockMinU64(ull v, ull *shm) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const ull o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o < v ? o : v;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0)
    shm[warp] = v;
  __syncthreads();
  ull m = shm[0];
  for (int w = 1; w < int(blockDim.x >> 5); ++w)
    m = shm[w] < m ? shm[w] : m;
  return m;
}

/// The row of this thread's group and its lane within the group.
template <int G> __device__ int64_t groupRow() {
  return int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G;
}
template <int G> __device__ int groupLane() { return int(threadIdx.x % G); }

//===----------------------------------------------------------------------===//
// 16-bit formats: runtime/kernels/HalfFloat.h, shared with the CPU
//===----------------------------------------------------------------------===//

using loom::kernels::fromBF16;
using loom::kernels::fromF16;
using loom::kernels::toBF16;
using loom::kernels::toF16;

//===----------------------------------------------------------------------===//
// Row kernels: layer norm, RMS norm, softmax, log-softmax
//===----------------------------------------------------------------------===//

/// An element of a row kernel's input or output: f32, or bf16 bit patterns
/// (widened exactly; stored rounded once to nearest even from the f32 the
/// f32 kernel would have stored).
__device__ __forceinline__ float loadElem(const float *p) { return *p; }
__device__ __forceinline__ float loadElem(const uint16_t *p) {
  return fromBF16(*p);
}
__device__ __forceinline__ void storeElem(float *p, float v) { *p = v; }
__device__ __forceinline__ void storeElem(uint16_t *p, float v) {
  *p = toBF16(v);
}

//===----------------------------------------------------------------------===//
// 16-byte vector access
//===----------------------------------------------------------------------===//
//
// The vector kernels below move a "pack" of kVec = 8 consecutive elements at
// a time (4 in normColumnPartialsVec): two float4 of f32, or one uint4
// holding eight bf16 bit patterns. These kernels are memory-bound, and 2- or
// 4-byte loads kept too few bytes in flight per thread (a half to a third of
// the H200's bandwidth). The host takes a vector kernel only when the row
// length is a multiple of the pack and every row pointer is 16-byte aligned
// (aligned16); other shapes and views run the scalar kernels. Elementwise
// arithmetic is the scalar kernels' own, operation for operation; the row
// reductions add in another order, fixed by the shape alone.

constexpr int kVec = 8;

/// Host side: whether p (null allowed) may be read as 16-byte vectors.
bool aligned16(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

__device__ __forceinline__ float pick(const float4 &v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}
__device__ __forceinline__ uint32_t pick(const uint4 &v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

/// N consecutive elements as loaded (N = 4 or 8: 8 or 16 bytes of bf16, 16
/// or 32 of f32): f32, or bf16 bit patterns (widened on use). Index with
/// compile-time j only (unrolled loops), so that the pack stays in registers.
template <class T, int N> struct Pack;
template <> struct Pack<float, 8> {
  float4 lo, hi;
  __device__ __forceinline__ void load(const float *p) {
    lo = reinterpret_cast<const float4 *>(p)[0];
    hi = reinterpret_cast<const float4 *>(p)[1];
  }
  __device__ __forceinline__ float operator[](int j) const {
    return j < 4 ? pick(lo, j) : pick(hi, j - 4);
  }
  /// The element as stored (for logitValue / expShifted).
  __device__ __forceinline__ float raw(int j) const { return (*this)[j]; }
};
template <> struct Pack<float, 4> {
  float4 v;
  __device__ __forceinline__ void load(const float *p) {
    v = *reinterpret_cast<const float4 *>(p);
  }
  __device__ __forceinline__ float operator[](int j) const {
    return pick(v, j);
  }
};
template <> struct Pack<uint16_t, 8> {
  uint4 u;
  __device__ __forceinline__ void load(const uint16_t *p) {
    u = *reinterpret_cast<const uint4 *>(p);
  }
  /// Elements 2i and 2i + 1, as stored.
  __device__ __forceinline__ uint32_t pair(int i) const { return pick(u, i); }
  __device__ __forceinline__ uint16_t raw(int j) const {
    const uint32_t w = pair(j >> 1);
    return uint16_t((j & 1) ? w >> 16 : w & 0xffffu);
  }
  __device__ __forceinline__ float operator[](int j) const {
    return fromBF16(raw(j));
  }
};
template <> struct Pack<uint16_t, 4> {
  uint2 u;
  __device__ __forceinline__ void load(const uint16_t *p) {
    u = *reinterpret_cast<const uint2 *>(p);
  }
  __device__ __forceinline__ float operator[](int j) const {
    const uint32_t w = (j >> 1) ? u.y : u.x;
    return fromBF16(uint16_t((j & 1) ? w >> 16 : w & 0xffffu));
  }
};
template <class T> using Pack8 = Pack<T, kVec>;

/// Stores kVec values as storeElem / storeGrad store each.
__device__ __forceinline__ void storePack(float *p, const float (&v)[kVec]) {
  reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void storePack(uint16_t *p, const float (&v)[kVec]) {
  uint4 u;
  u.x = uint32_t(toBF16(v[0])) | (uint32_t(toBF16(v[1])) << 16);
  u.y = uint32_t(toBF16(v[2])) | (uint32_t(toBF16(v[3])) << 16);
  u.z = uint32_t(toBF16(v[4])) | (uint32_t(toBF16(v[5])) << 16);
  u.w = uint32_t(toBF16(v[6])) | (uint32_t(toBF16(v[7])) << 16);
  *reinterpret_cast<uint4 *>(p) = u;
}

/// The vector layer-norm kernels keep a thread's share of a row in
/// registers (x read once, dy once): the row's packs lane, lane + G, ...,
/// P of them. P is a template parameter, so that a row takes the registers
/// it needs (GPT-2's 768 columns are 3 packs a lane); P <= kRowPacks, so
/// rows of at most G * kVec * kRowPacks columns (1024 for a warp).
constexpr int kRowPacks = 4;

template <int G, class Y = float>
__global__ void __launch_bounds__(kThreads)
    layerNormFwdKernel(int64_t rows, int64_t cols, const float *x,
                       const float *gain, const float *bias, float eps,
                       Y *y, float *mean, float *rstd) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *xr = x + r * cols;
  Y *yr = y + r * cols;
  double sum = 0;
  for (int64_t c = lane; c < cols; c += G)
    sum += xr[c];
  const double mu = groupSum<G>(sum, shm) / double(cols);
  double squares = 0;
  for (int64_t c = lane; c < cols; c += G) {
    const double d = xr[c] - mu;
    squares += d * d;
  }
  squares = groupSum<G>(squares, shm);
  const double rs = 1.0 / sqrt(squares / double(cols) + double(eps));
  for (int64_t c = lane; c < cols; c += G) {
    double v = (xr[c] - mu) * rs;
    if (gain)
      v *= gain[c];
    if (bias)
      v += bias[c];
    storeElem(yr + c, float(v));
  }
  if (lane == 0) {
    if (mean)
      mean[r] = float(mu);
    if (rstd)
      rstd[r] = float(rs);
  }
}

template <int G, class DY = float>
__global__ void __launch_bounds__(kThreads)
    layerNormBwdKernel(int64_t rows, int64_t cols, const DY *dy,
                       const float *x, const float *gain, const float *mean,
                       const float *rstd, float *dx) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const DY *dyr = dy + r * cols;
  const float *xr = x + r * cols;
  const double mu = mean[r], rs = rstd[r];
  double sumG = 0, sumGX = 0;
  for (int64_t c = lane; c < cols; c += G) {
    const double d = loadElem(dyr + c);
    const double g = gain ? d * gain[c] : d;
    sumG += g;
    sumGX += g * (xr[c] - mu) * rs;
  }
  const double meanG = groupSum<G>(sumG, shm) / double(cols);
  const double meanGX = groupSum<G>(sumGX, shm) / double(cols);
  for (int64_t c = lane; c < cols; c += G) {
    const double d = loadElem(dyr + c);
    const double g = gain ? d * gain[c] : d;
    const double xhat = (xr[c] - mu) * rs;
    dx[r * cols + c] = float(rs * (g - meanG - xhat * meanGX));
  }
}

/// layerNormFwdKernel for rows of kVec | cols <= G * kVec * P with aligned
/// pointers: x is read once, as packs kept in registers (the scalar kernel
/// reads it three times). Each thread adds its packs' elements in column
/// order, then groupSum as there.
template <int G, int P, class Y = float>
__global__ void __launch_bounds__(kThreads)
    layerNormFwdVecKernel(int64_t rows, int64_t cols, const float *x,
                          const float *gain, const float *bias, float eps, Y *y,
                          float *mean, float *rstd) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const int packs = int(cols / kVec);
  const float *xr = x + r * cols;
  Pack8<float> xs[P];
#pragma unroll
  for (int k = 0; k < P; ++k)
    if (lane + k * G < packs)
      xs[k].load(xr + (lane + k * G) * kVec);
  double sum = 0;
#pragma unroll
  for (int k = 0; k < P; ++k)
    if (lane + k * G < packs)
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        sum += xs[k][j];
  const double mu = groupSum<G>(sum, shm) / double(cols);
  double squares = 0;
#pragma unroll
  for (int k = 0; k < P; ++k)
    if (lane + k * G < packs)
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const double d = xs[k][j] - mu;
        squares += d * d;
      }
  squares = groupSum<G>(squares, shm);
  const double rs = 1.0 / sqrt(squares / double(cols) + double(eps));
  Y *yr = y + r * cols;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (lane + k * G >= packs)
      continue;
    const int64_t c = int64_t(lane + k * G) * kVec;
    Pack8<float> gp{}, bp{};
    if (gain)
      gp.load(gain + c);
    if (bias)
      bp.load(bias + c);
    float out[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      double v = (xs[k][j] - mu) * rs;
      if (gain)
        v *= gp[j];
      if (bias)
        v += bp[j];
      out[j] = float(v);
    }
    storePack(yr + c, out);
  }
  if (lane == 0) {
    if (mean)
      mean[r] = float(mu);
    if (rstd)
      rstd[r] = float(rs);
  }
}

/// layerNormBwdKernel for the rows layerNormFwdVecKernel takes: dy and x
/// read once into registers (the scalar kernel reads both twice). dx may be
/// dy (in place): a thread reads all its packs before it writes them.
template <int G, int P, class DY = float>
__global__ void __launch_bounds__(kThreads)
    layerNormBwdVecKernel(int64_t rows, int64_t cols, const DY *dy,
                          const float *x, const float *gain, const float *mean,
                          const float *rstd, float *dx) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const int packs = int(cols / kVec);
  const DY *dyr = dy + r * cols;
  const float *xr = x + r * cols;
  Pack8<DY> ds[P];
  Pack8<float> xs[P];
#pragma unroll
  for (int k = 0; k < P; ++k)
    if (lane + k * G < packs) {
      ds[k].load(dyr + (lane + k * G) * kVec);
      xs[k].load(xr + (lane + k * G) * kVec);
    }
  const double mu = mean[r], rs = rstd[r];
  double sumG = 0, sumGX = 0;
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (lane + k * G >= packs)
      continue;
    Pack8<float> gp{};
    if (gain)
      gp.load(gain + int64_t(lane + k * G) * kVec);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const double d = ds[k][j];
      const double g = gain ? d * gp[j] : d;
      sumG += g;
      sumGX += g * (xs[k][j] - mu) * rs;
    }
  }
  const double meanG = groupSum<G>(sumG, shm) / double(cols);
  const double meanGX = groupSum<G>(sumGX, shm) / double(cols);
#pragma unroll
  for (int k = 0; k < P; ++k) {
    if (lane + k * G >= packs)
      continue;
    const int64_t c = int64_t(lane + k * G) * kVec;
    Pack8<float> gp{};
    if (gain)
      gp.load(gain + c);
    float out[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const double d = ds[k][j];
      const double g = gain ? d * gp[j] : d;
      const double xhat = (xs[k][j] - mu) * rs;
      out[j] = float(rs * (g - meanG - xhat * meanGX));
    }
    storePack(dx + r * cols + c, out);
  }
}

template <int G>
__global__ void __launch_bounds__(kThreads)
    rmsNormFwdKernel(int64_t rows, int64_t cols, const float *x,
                     const float *gain, float eps, float *y, float *rstd) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *xr = x + r * cols;
  double squares = 0;
  for (int64_t c = lane; c < cols; c += G)
    squares += double(xr[c]) * xr[c];
  squares = groupSum<G>(squares, shm);
  const double rs = 1.0 / sqrt(squares / double(cols) + double(eps));
  for (int64_t c = lane; c < cols; c += G)
    y[r * cols + c] = float(gain ? xr[c] * rs * gain[c] : xr[c] * rs);
  if (lane == 0 && rstd)
    rstd[r] = float(rs);
}

template <int G>
__global__ void __launch_bounds__(kThreads)
    rmsNormBwdKernel(int64_t rows, int64_t cols, const float *dy,
                     const float *x, const float *gain, const float *rstd,
                     float *dx) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *dyr = dy + r * cols, *xr = x + r * cols;
  const double rs = rstd[r];
  double sumGX = 0;
  for (int64_t c = lane; c < cols; c += G)
    sumGX += (gain ? double(dyr[c]) * gain[c] : double(dyr[c])) * xr[c];
  const double k = rs * rs * groupSum<G>(sumGX, shm) / double(cols);
  for (int64_t c = lane; c < cols; c += G) {
    const double g = gain ? double(dyr[c]) * gain[c] : double(dyr[c]);
    dx[r * cols + c] = float(rs * (g - xr[c] * k));
  }
}

/// Column sums of the norms' parameter gradients, pass 1: block (32 columns
/// x 8 row lanes) over one chunk of rows; partial[chunk][col] in double.
/// layer: dgain += dy * ((x - mean) * rstd), dbias += dy; RMS (mean null):
/// dgain += dy * x * rstd.
template <class DY>
__global__ void __launch_bounds__(kThreads)
    normColumnPartials(int64_t rows, int64_t cols, int64_t rowsPerChunk,
                       const DY *dy, const float *x, const float *mean,
                       const float *rstd, double *partialGain,
                       double *partialBias) {
  __shared__ double sGain[8][33], sBias[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t col = int64_t(blockIdx.x) * 32 + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rowsPerChunk;
  const int64_t r1 = r0 + rowsPerChunk < rows ? r0 + rowsPerChunk : rows;
  double accGain = 0, accBias = 0;
  if (col < cols) {
    for (int64_t r = r0 + ty; r < r1; r += 8) {
      const float d = loadElem(dy + r * cols + col), xv = x[r * cols + col];
      const double rs = rstd[r];
      if (mean) {
        accGain += double(d) * ((xv - double(mean[r])) * rs);
        accBias += d;
      } else {
        accGain += double(d) * xv * rs;
      }
    }
  }
  sGain[ty][tx] = accGain;
  sBias[ty][tx] = accBias;
  __syncthreads();
  if (ty == 0 && col < cols) {
    double g = 0, b = 0;
    for (int k = 0; k < 8; ++k) {
      g += sGain[k][tx];
      b += sBias[k][tx];
    }
    partialGain[chunk * cols + col] = g;
    if (partialBias)
      partialBias[chunk * cols + col] = b;
  }
}

/// normColumnPartials for C | cols with aligned dy and x: each thread owns
/// C consecutive columns (an 8- or 16-byte pack of each row), so a block
/// covers 32 * C columns, and takes S of its rows per step so that their
/// loads are in flight together (the scalar kernel had one 2-byte and one
/// 4-byte load in flight per thread). Row lane ty still adds the rows r0 +
/// ty, r0 + ty + 8, ... in order, and the 8 lanes are added in lane order:
/// the partials are the scalar kernel's, bit for bit.
template <class DY, int C, int S>
__global__ void __launch_bounds__(kThreads)
    normColumnPartialsVec(int64_t rows, int64_t cols, int64_t rowsPerChunk,
                          const DY *dy, const float *x, const float *mean,
                          const float *rstd, double *partialGain,
                          double *partialBias) {
  constexpr int kRowLanes = kThreads / 32, kBlockCols = 32 * C;
  static_assert(C <= kRowLanes, "the finish maps a column to a row lane");
  // [row lane][j][tx] for column tx * C + j: the stores below are
  // consecutive across a warp.
  __shared__ double sGain[kRowLanes][C][32], sBias[kRowLanes][C][32];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t col0 = int64_t(blockIdx.x) * kBlockCols + tx * C;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rowsPerChunk;
  const int64_t r1 = r0 + rowsPerChunk < rows ? r0 + rowsPerChunk : rows;
  double accGain[C], accBias[C];
#pragma unroll
  for (int j = 0; j < C; ++j)
    accGain[j] = accBias[j] = 0;
  // One row's pack into the accumulators, the scalar kernel's arithmetic.
  auto add = [&](const Pack<DY, C> &dp, const Pack<float, C> &xp, float mr,
                 float sr) {
    const double rs = sr;
#pragma unroll
    for (int j = 0; j < C; ++j) {
      const float d = dp[j], xv = xp[j];
      if (mean) {
        accGain[j] += double(d) * ((xv - double(mr)) * rs);
        accBias[j] += d;
      } else {
        accGain[j] += double(d) * xv * rs;
      }
    }
  };
  if (col0 < cols) {
    int64_t r = r0 + ty;
    for (; r + kRowLanes * (S - 1) < r1; r += kRowLanes * S) {
      Pack<DY, C> dp[S];
      Pack<float, C> xp[S];
      float mr[S], sr[S];
#pragma unroll
      for (int u = 0; u < S; ++u) {
        const int64_t ru = r + kRowLanes * u;
        dp[u].load(dy + ru * cols + col0);
        xp[u].load(x + ru * cols + col0);
        mr[u] = mean ? mean[ru] : 0.0f;
        sr[u] = rstd[ru];
      }
#pragma unroll
      for (int u = 0; u < S; ++u)
        add(dp[u], xp[u], mr[u], sr[u]);
    }
    for (; r < r1; r += kRowLanes) {
      Pack<DY, C> dp;
      Pack<float, C> xp;
      dp.load(dy + r * cols + col0);
      xp.load(x + r * cols + col0);
      add(dp, xp, mean ? mean[r] : 0.0f, rstd[r]);
    }
  }
#pragma unroll
  for (int j = 0; j < C; ++j) {
    sGain[ty][j][tx] = accGain[j];
    sBias[ty][j][tx] = accBias[j];
  }
  __syncthreads();
  // Thread (j = ty, tx) finishes column tx * C + j.
  const int64_t col = int64_t(blockIdx.x) * kBlockCols + tx * C + ty;
  if (ty < C && col < cols) {
    double g = 0, b = 0;
    for (int k = 0; k < kRowLanes; ++k) {
      g += sGain[k][ty][tx];
      b += sBias[k][ty][tx];
    }
    partialGain[chunk * cols + col] = g;
    if (partialBias)
      partialBias[chunk * cols + col] = b;
  }
}

/// Pass 2: one warp per column; lane l adds the chunks l, l + 32, ... in
/// order, then the 32 lane sums are added by a fixed butterfly (the same
/// order on every run; a thread per column summing 256 chunks serially was
/// 70 us for 768 columns, latency bound).
__global__ void __launch_bounds__(kThreads)
    normColumnFinish(int64_t cols, int64_t chunks, const double *partialGain,
                     const double *partialBias, float *dgain, float *dbias) {
  const int64_t col = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  if (col >= cols)
    return;
  const int lane = threadIdx.x & 31;
  double g = 0, b = 0;
  for (int64_t k = lane; k < chunks; k += 32) {
    g += partialGain[k * cols + col];
    if (partialBias)
      b += partialBias[k * cols + col];
  }
  g = warpSum(g);
  b = warpSum(b);
  if (lane != 0)
    return;
  if (dgain)
    dgain[col] = float(g);
  if (dbias)
    dbias[col] = float(b);
}

template <int G>
__global__ void __launch_bounds__(kThreads)
    softmaxFwdKernel(int64_t rows, int64_t cols, const float *x, float *y,
                     bool logarithm) {
  __shared__ double shm[32];
  __shared__ float shmMax[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *xr = x + r * cols;
  float *yr = y + r * cols;
  float mx = -INFINITY;
  for (int64_t c = lane; c < cols; c += G)
    mx = fmaxf(mx, xr[c]);
  const double m = groupMax<G>(mx, shmMax);
  double sum = 0;
  for (int64_t c = lane; c < cols; c += G)
    sum += exp(xr[c] - m);
  sum = groupSum<G>(sum, shm);
  if (logarithm) {
    const double shift = m + log(sum);
    for (int64_t c = lane; c < cols; c += G)
      yr[c] = float(xr[c] - shift);
  } else {
    const double inv = 1.0 / sum;
    for (int64_t c = lane; c < cols; c += G)
      yr[c] = float(exp(xr[c] - m) * inv);
  }
}

template <int G>
__global__ void __launch_bounds__(kThreads)
    softmaxBwdKernel(int64_t rows, int64_t cols, const float *y,
                     const float *dy, float *dx, bool logarithm) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *yr = y + r * cols, *dyr = dy + r * cols;
  double acc = 0;
  for (int64_t c = lane; c < cols; c += G)
    acc += logarithm ? double(dyr[c]) : double(dyr[c]) * yr[c];
  acc = groupSum<G>(acc, shm);
  for (int64_t c = lane; c < cols; c += G)
    dx[r * cols + c] = logarithm ? float(dyr[c] - exp(double(yr[c])) * acc)
                                 : float(yr[c] * (dyr[c] - acc));
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

/// Logits as float: fp32, or bf16 bit patterns widened exactly.
__device__ inline float logitValue(float v) { return v; }
__device__ inline float logitValue(uint16_t v) { return fromBF16(v); }
/// A gradient element stored as fp32, or rounded once to bf16 as the CPU
/// kernels (runtime/kernels/HalfFloat.h) round.
__device__ inline void storeGrad(float *p, float v) { *p = v; }
__device__ inline void storeGrad(uint16_t *p, float v) { *p = toBF16(v); }

/// A row's first maximum (lowest column among equal maxima) over the
/// group: each lane scans its columns in ascending order, then groupArgmax.
template <int G, class L>
__device__ void rowFirstMax(const L *xr, int64_t cols, int lane, float *shmV,
                            int64_t *shmI, float &best, int64_t &bestIndex) {
  best = -INFINITY;
  bestIndex = INT64_MAX;
  for (int64_t c = lane; c < cols; c += G) {
    const float v = logitValue(xr[c]);
    if (bestIndex == INT64_MAX || v > best) {
      best = v;
      bestIndex = c;
    }
  }
  groupArgmax<G>(best, bestIndex, shmV, shmI);
}

/// exp(x - m) for one logit: in double for fp32 logits (the CPU kernel's
/// arithmetic), in fp32 (expf, within 2 ulp) for bf16 logits, whose own
/// rounding is 2^16 times coarser: the double exponential made the bf16
/// loss kernels compute-bound (2.5 ms each way for GPT-2-small's 824M
/// logits on an H200).
__device__ inline double expShifted(float x, double m) { return exp(x - m); }
__device__ inline double expShifted(uint16_t x, double m) {
  return expf(fromBF16(x) - float(m));
}

/// A row's sum of exp(x - m), in double, over the group.
template <int G, class L>
__device__ double rowSumExp(const L *xr, int64_t cols, int lane, double m,
                            double *shm) {
  double sum = 0;
  for (int64_t c = lane; c < cols; c += G)
    sum += expShifted(xr[c], m);
  return groupSum<G>(sum, shm);
}

/// Row r's results, from its lse `l` and first maximum's column: lse[r]
/// (if wanted), its loss and flags (bit 0 counted, bit 1 argmax == target)
/// for the reduction kernel; a target out of range is reported and the row
/// not counted.
template <class L>
__device__ inline void
finishCrossEntropyRow(int64_t r, int64_t classes, const L *xr,
                      const int32_t *target, int64_t ignoreIndex, double l,
                      int64_t bestIndex, float *lse, double *rowLoss,
                      uint8_t *rowFlags, DeviceError *error, int32_t op) {
  if (lse)
    lse[r] = float(l);
  const int64_t t = target[r];
  uint8_t flags = 0;
  double loss = 0;
  if (t != ignoreIndex) {
    if (t < 0 || t >= classes) {
      reportError(error, kTargetOutOfRange, op,
                  (ull(r) << 32) | ull(uint32_t(int32_t(t))), classes);
    } else {
      loss = l - logitValue(xr[t]);
      flags = uint8_t(1 | (bestIndex == t ? 2 : 0));
    }
  }
  rowLoss[r] = loss;
  rowFlags[r] = flags;
}

/// Per row: lse, and the row's loss and flags (bit 0 counted, bit 1 argmax
/// == target) for the reduction kernel. L: float, or uint16_t for bf16
/// logits (each widened on load: the fp32 kernel's result on the widened
/// logits, bit for bit).
template <int G, class L = float>
__global__ void __launch_bounds__(kThreads)
    crossEntropyRowsKernel(int64_t rows, int64_t classes, const L *logits,
                           const int32_t *target, int64_t ignoreIndex,
                           float *lse, double *rowLoss, uint8_t *rowFlags,
                           DeviceError *error, int32_t op) {
  __shared__ double shm[32];
  __shared__ float shmV[32];
  __shared__ int64_t shmI[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const L *xr = logits + r * classes;
  float best;
  int64_t bestIndex;
  rowFirstMax<G>(xr, classes, lane, shmV, shmI, best, bestIndex);
  const double m = best;
  const double sum = rowSumExp<G>(xr, classes, lane, m, shm);
  const double l = m + log(sum);
  if (lane != 0)
    return;
  finishCrossEntropyRow(r, classes, xr, target, ignoreIndex, l, bestIndex, lse,
                        rowLoss, rowFlags, error, op);
}

/// The largest of a pack's values (fmaxf's: a NaN is passed over), for the
/// first-maximum search of crossEntropyRowsVecKernel. bf16 pairs go through
/// max.bf16x2 (exact, like fmaxf on the widened values): 6 operations a pack
/// instead of 15.
__device__ __forceinline__ float packMax(const Pack<float, kVec> &p) {
  return fmaxf(fmaxf(fmaxf(p[0], p[1]), fmaxf(p[2], p[3])),
               fmaxf(fmaxf(p[4], p[5]), fmaxf(p[6], p[7])));
}
__device__ __forceinline__ uint32_t maxBF16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("max.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}
__device__ __forceinline__ float packMax(const Pack<uint16_t, kVec> &p) {
  const uint32_t w = maxBF16x2(maxBF16x2(p.pair(0), p.pair(1)),
                               maxBF16x2(p.pair(2), p.pair(3)));
  return fmaxf(fromBF16(uint16_t(w & 0xffffu)), fromBF16(uint16_t(w >> 16)));
}

/// Packs of logits a thread of crossEntropyRowsVecKernel holds in registers
/// at once (a tile is kCeSlots * G packs): 64 registers of bf16 (32 of f32,
/// whose double exp needs more), which leaves room for two 256-thread blocks
/// a multiprocessor. (Measured on an H200 for GPT-2's rows: 8 packs and
/// three blocks, or one tile of 24 and one block, were slower; so were
/// issuing each slot's next load as soon as the slot was used, and adding
/// the exps pack by pack in a tree.)
template <class L> constexpr int kCeSlots = sizeof(L) == 2 ? 16 : 4;

/// crossEntropyRowsKernel for kVec | classes with aligned logits. The row
/// goes in tiles of K packs a thread: slot k of tile t is the pack t * tile
/// + k * G + lane. The maximum pass reads the row once; the exp sum adds the
/// last tile, still in registers, then reads the earlier ones again (L2
/// hits: two rows a multiprocessor are in flight). GPT-2's 50304 bf16
/// logits are two tiles; the scalar kernel read every logit twice from
/// memory, 2 bytes at a time.
///
/// The first maximum at about one operation a logit (rowFirstMax takes
/// five): each thread keeps its largest pack maximum and the first pack that
/// has it (packs in ascending column order, a strictly larger maximum
/// replacing); after groupMax, a thread holding the row's maximum reads that
/// pack again for its first column equal to it, and the lowest column wins
/// (groupArgmax): rowFirstMax's column. A NaN logit is passed over here
/// (rowFirstMax kept one that came first in its lane); its row's loss is
/// NaN either way.
template <int G, class L = float>
__global__ void __launch_bounds__(kThreads, 2)
    crossEntropyRowsVecKernel(int64_t rows, int64_t classes, const L *logits,
                              const int32_t *target, int64_t ignoreIndex,
                              float *lse, double *rowLoss, uint8_t *rowFlags,
                              DeviceError *error, int32_t op) {
  constexpr int K = kCeSlots<L>;
  __shared__ double shm[32];
  __shared__ float shmV[32];
  __shared__ int64_t shmI[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const L *xr = logits + r * classes;
  const int64_t packs = classes / kVec, tile = int64_t(K) * G;
  const int64_t tiles = (packs + tile - 1) / tile;
  // The pack in slot k of tile t (valid below packs).
  auto at = [&](int64_t t, int k) { return t * tile + k * G + lane; };
  Pack8<L> s[K];
  auto load = [&](int64_t t) {
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (at(t, k) < packs)
        s[k].load(xr + at(t, k) * kVec);
  };
  float localMax = -INFINITY;
  int64_t maxPack = lane; // the first pack: an all -inf row's maximum
  for (int64_t t = 0; t < tiles; ++t) {
    load(t);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t q = at(t, k);
      if (q < packs) {
        const float pm = packMax(s[k]);
        if (pm > localMax) {
          localMax = pm;
          maxPack = q;
        }
      }
    }
  }
  const float best = groupMax<G>(localMax, shmV);
  const double m = best;
  // A thread holding the maximum reads its pack again (scanned below, after
  // the exp sum has covered the load's latency).
  const bool holder = localMax == best && maxPack < packs;
  Pack8<L> held{};
  if (holder)
    held.load(xr + maxPack * kVec);
  // The exp sum: the tile in registers, then the earlier ones again.
  double sum = 0;
  auto fold = [&](int64_t t) {
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (at(t, k) < packs)
#pragma unroll
        for (int j = 0; j < kVec; ++j)
          sum += expShifted(s[k].raw(j), m);
  };
  fold(tiles - 1);
  for (int64_t t = 0; t + 1 < tiles; ++t) {
    load(t);
    fold(t);
  }
  int64_t bestIndex = INT64_MAX; // scanned down: the lowest match last
  if (holder) {
#pragma unroll
    for (int j = kVec - 1; j >= 0; --j)
      if (held[j] == best)
        bestIndex = maxPack * kVec + j;
  }
  float bestValue = best;
  groupArgmax<G>(bestValue, bestIndex, shmV, shmI);
  const double l = m + log(groupSum<G>(sum, shm));
  if (lane != 0)
    return;
  finishCrossEntropyRow(r, classes, xr, target, ignoreIndex, l, bestIndex, lse,
                        rowLoss, rowFlags, error, op);
}

/// One block: loss = mean of the counted rows' losses, stats.
__global__ void __launch_bounds__(1024)
    crossEntropyReduceKernel(int64_t rows, const double *rowLoss,
                             const uint8_t *rowFlags, float *loss,
                             float *stats) {
  __shared__ double shm[32];
  __shared__ long long shmCount[32];
  double total = 0;
  long long counted = 0, correct = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const uint8_t f = rowFlags[r];
    if (f & 1) {
      total += rowLoss[r];
      ++counted;
      correct += (f >> 1) & 1;
    }
  }
  total = blockSum(total, shm);
  counted = blockSum(counted, shmCount);
  correct = blockSum(correct, shmCount);
  if (threadIdx.x == 0) {
    *loss = float(counted ? total / double(counted) : 0.0);
    if (stats) {
      stats[0] = float(counted);
      stats[1] = float(correct);
    }
  }
}

/// One block: the number of rows whose target is not ignoreIndex.
__global__ void __launch_bounds__(1024)
    countTargetsKernel(int64_t rows, const int32_t *target, int64_t ignoreIndex,
                       long long *counted) {
  __shared__ long long shm[32];
  long long n = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x)
    n += int64_t(target[r]) != ignoreIndex;
  n = blockSum(n, shm);
  if (threadIdx.x == 0)
    *counted = n;
}

/// What a cross-entropy backward kernel needs of row r: the target among
/// this rank's columns [start, start + classes) of classesGlobal (or
/// ignoreIndex), and whether the row gets no gradient (ignored, or a target
/// out of range, which lane 0 reports); else the gradient's scale, dloss
/// over the counted rows.
struct CrossEntropyBwdRow {
  int64_t target;
  bool none;
  double scale;
};
__device__ inline CrossEntropyBwdRow
crossEntropyBwdRow(int64_t r, int lane, const int32_t *target,
                   int64_t ignoreIndex, int64_t start, int64_t classesGlobal,
                   const float *dloss, const long long *counted,
                   DeviceError *error, int32_t op) {
  const int64_t tg = target[r];
  const bool bad = tg != ignoreIndex && (tg < 0 || tg >= classesGlobal);
  if (bad && lane == 0)
    reportError(error, kTargetOutOfRange, op,
                (ull(r) << 32) | ull(uint32_t(int32_t(tg))), classesGlobal);
  CrossEntropyBwdRow row{tg == ignoreIndex ? tg : tg - start,
                         tg == ignoreIndex || bad, 0.0};
  if (!row.none) {
    const long long n = *counted;
    row.scale = n ? double(*dloss) / double(n) : 0.0;
  }
  return row;
}

template <int G, class L = float, class D = float>
__global__ void __launch_bounds__(kThreads)
    crossEntropyBwdKernel(int64_t rows, int64_t classes, const L *logits,
                          const int32_t *target, int64_t ignoreIndex,
                          const float *lse, const float *dloss,
                          const long long *counted, D *dlogits,
                          DeviceError *error, int32_t op, int64_t start = 0,
                          int64_t classesGlobal = -1) {
  // Vocabulary-parallel: this rank's columns are the global classes
  // [start, start + classes) of classesGlobal.
  if (classesGlobal < 0)
    classesGlobal = classes;
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  D *dr = dlogits + r * classes;
  const CrossEntropyBwdRow row =
      crossEntropyBwdRow(r, lane, target, ignoreIndex, start, classesGlobal,
                         dloss, counted, error, op);
  if (row.none) {
    for (int64_t c = lane; c < classes; c += G)
      storeGrad(dr + c, 0.0f);
    return;
  }
  const int64_t t = row.target;
  const double scale = row.scale;
  const L *xr = logits + r * classes;
  const double l = lse[r];
  for (int64_t c = lane; c < classes; c += G)
    storeGrad(dr + c,
              float(scale * (expShifted(xr[c], l) - (c == t ? 1.0 : 0.0))));
}

/// crossEntropyBwdKernel for kVec | classes with aligned logits and
/// dlogits: packs of logits in, packs of gradient out, kBwdPacks packs a
/// thread per step with their loads in flight together. dlogits may be
/// logits (in place): a thread reads a pack before it writes it, and no
/// other thread touches it.
constexpr int kBwdPacks = 4;

template <int G, class L = float, class D = float>
__global__ void __launch_bounds__(kThreads)
    crossEntropyBwdVecKernel(int64_t rows, int64_t classes, const L *logits,
                             const int32_t *target, int64_t ignoreIndex,
                             const float *lse, const float *dloss,
                             const long long *counted, D *dlogits,
                             DeviceError *error, int32_t op, int64_t start = 0,
                             int64_t classesGlobal = -1) {
  if (classesGlobal < 0)
    classesGlobal = classes;
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  D *dr = dlogits + r * classes;
  const CrossEntropyBwdRow row =
      crossEntropyBwdRow(r, lane, target, ignoreIndex, start, classesGlobal,
                         dloss, counted, error, op);
  const int64_t packs = classes / kVec;
  if (row.none) {
    const float zeros[kVec] = {};
    for (int64_t q = lane; q < packs; q += G)
      storePack(dr + q * kVec, zeros);
    return;
  }
  const int64_t t = row.target;
  const double scale = row.scale;
  const L *xr = logits + r * classes;
  const double l = lse[r];
  for (int64_t q0 = lane; q0 < packs; q0 += int64_t(kBwdPacks) * G) {
    Pack8<L> s[kBwdPacks];
#pragma unroll
    for (int u = 0; u < kBwdPacks; ++u)
      if (q0 + u * G < packs)
        s[u].load(xr + (q0 + u * G) * kVec);
#pragma unroll
    for (int u = 0; u < kBwdPacks; ++u) {
      if (q0 + u * G >= packs)
        continue;
      const int64_t c = (q0 + u * G) * kVec;
      // The target's place in this pack, or -1.
      const int tj = t >= c && t < c + kVec ? int(t - c) : -1;
      float out[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        out[j] =
            float(scale * (expShifted(s[u].raw(j), l) - (j == tj ? 1.0 : 0.0)));
      storePack(dr + c, out);
    }
  }
}

/// Vocabulary-parallel cross-entropy. A row's first maximum travels as an
/// int64 key whose signed order is (value, then the lower global index): an
/// all-reduce MAX over the group gives the global first maximum, as the CPU
/// kernel's MPI_MAXLOC does.
__device__ inline int64_t maxKey(float v, int64_t globalIndex) {
  const uint32_t bits = __float_as_uint(v);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  const uint64_t key = (uint64_t(ordered) << 32) |
                       uint64_t(0xFFFFFFFFu - uint32_t(globalIndex));
  return int64_t(key ^ (uint64_t(1) << 63));
}
__device__ inline float maxKeyValue(int64_t key) {
  const uint32_t ordered =
      uint32_t((uint64_t(key) ^ (uint64_t(1) << 63)) >> 32);
  return __uint_as_float((ordered & 0x80000000u) ? (ordered & 0x7FFFFFFFu)
                                                 : ~ordered);
}
__device__ inline int64_t maxKeyIndex(int64_t key) {
  return int64_t(0xFFFFFFFFu - uint32_t(uint64_t(key)));
}

/// Step 1: this rank's first maximum of each row, as a key.
template <int G>
__global__ void __launch_bounds__(kThreads)
    crossEntropyShardedMaxKernel(int64_t rows, int64_t classesLocal,
                                 int64_t start, const float *logits,
                                 int64_t *keys) {
  __shared__ float shmV[32];
  __shared__ int64_t shmI[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *xr = logits + r * classesLocal;
  float best;
  int64_t bestIndex;
  rowFirstMax<G>(xr, classesLocal, lane, shmV, shmI, best, bestIndex);
  if (lane == 0)
    keys[r] = maxKey(best, start + bestIndex);
}

/// Step 2 (after the keys' all-reduce): sums[2r] = this rank's sum of
/// exp(x - max) in double, sums[2r + 1] = the target's logit if this rank
/// holds it, else 0 (then summed over the group).
template <int G>
__global__ void __launch_bounds__(kThreads)
    crossEntropyShardedSumKernel(int64_t rows, int64_t classesLocal,
                                 int64_t start, int64_t classes,
                                 const float *logits, const int32_t *target,
                                 int64_t ignoreIndex, const int64_t *keys,
                                 double *sums) {
  __shared__ double shm[32];
  const int64_t r = groupRow<G>();
  if (r >= rows)
    return;
  const int lane = groupLane<G>();
  const float *xr = logits + r * classesLocal;
  const double sum =
      rowSumExp<G>(xr, classesLocal, lane, double(maxKeyValue(keys[r])), shm);
  if (lane != 0)
    return;
  sums[2 * r] = sum;
  const int64_t t = target[r];
  const int64_t local = t - start;
  const bool mine = t != ignoreIndex && t >= 0 && t < classes && local >= 0 &&
                    local < classesLocal;
  sums[2 * r + 1] = mine ? double(xr[local]) : 0.0;
}

/// Step 3 (after the sums' all-reduce): lse, and each row's loss and flags
/// for crossEntropyReduceKernel; a target outside [0, classes) is reported.
__global__ void crossEntropyShardedRowsKernel(
    int64_t rows, int64_t classes, const int32_t *target, int64_t ignoreIndex,
    const int64_t *keys, const double *sums, float *lse, double *rowLoss,
    uint8_t *rowFlags, DeviceError *error, int32_t op) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    const double l = double(maxKeyValue(keys[r])) + log(sums[2 * r]);
    if (lse)
      lse[r] = float(l);
    const int64_t t = target[r];
    uint8_t flags = 0;
    double loss = 0;
    if (t != ignoreIndex) {
      if (t < 0 || t >= classes) {
        reportError(error, kTargetOutOfRange, op,
                    (ull(r) << 32) | ull(uint32_t(int32_t(t))), classes);
      } else {
        loss = l - sums[2 * r + 1];
        flags = uint8_t(1 | (maxKeyIndex(keys[r]) == t ? 2 : 0));
      }
    }
    rowLoss[r] = loss;
    rowFlags[r] = flags;
  }
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

__global__ void embeddingFwdKernel(int64_t n, int64_t vocab, int64_t dim,
                                   const int32_t *ids, const float *table,
                                   float *out, DeviceError *error, int32_t op) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0)
      reportError(error, kEmbeddingIdOutOfRange, op,
                  (ull(i) << 32) | ull(uint32_t(id)), vocab);
    return;
  }
  const float *src = table + int64_t(id) * dim;
  float *dst = out + i * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
    dst[c] = src[c];
}

/// Vocabulary-parallel: this rank's rows are ids [start, start +
/// vocabLocal) of vocab; other ids give a zero row.
__global__ void embeddingFwdShardedKernel(int64_t n, int64_t vocabLocal,
                                          int64_t vocab, int64_t start,
                                          int64_t dim, const int32_t *ids,
                                          const float *table, float *out,
                                          DeviceError *error, int32_t op) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0)
      reportError(error, kEmbeddingIdOutOfRange, op,
                  (ull(i) << 32) | ull(uint32_t(id)), vocab);
    return;
  }
  const int64_t local = int64_t(id) - start;
  float *dst = out + i * dim;
  if (local >= 0 && local < vocabLocal) {
    const float *src = table + local * dim;
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
      dst[c] = src[c];
  } else {
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
      dst[c] = 0.0f;
  }
}

/// keys[i] = ids[i] - start for this rank's ids (vocabLocal for the others
/// and for a bad id, which sort last and are skipped), positions[i] = i.
__global__ void embeddingKeysKernel(int64_t n, int64_t vocabLocal,
                                    int64_t vocab, int64_t start,
                                    const int32_t *ids, uint32_t *keys,
                                    uint32_t *positions, DeviceError *error,
                                    int32_t op) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t id = ids[i];
    const bool bad = id < 0 || id >= vocab;
    if (bad)
      reportError(error, kEmbeddingIdOutOfRange, op,
                  (ull(i) << 32) | ull(uint32_t(id)), vocab);
    const int64_t local = int64_t(id) - start;
    const bool mine = !bad && local >= 0 && local < vocabLocal;
    keys[i] = mine ? uint32_t(local) : uint32_t(vocabLocal);
    positions[i] = uint32_t(i);
  }
}

/// Block s starts the run of equal sorted keys at s (or exits): the table row
/// of that id = the sum of its positions' dout rows in position order (the
/// sort is stable), in double.
__global__ void embeddingSegmentsKernel(int64_t n, int64_t vocab, int64_t dim,
                                        const uint32_t *keys,
                                        const uint32_t *positions,
                                        const float *dout, float *dtable) {
  const int64_t s = blockIdx.x;
  const uint32_t key = keys[s];
  if (key >= vocab || (s > 0 && keys[s - 1] == key))
    return;
  int64_t e = s + 1;
  while (e < n && keys[e] == key)
    ++e;
  float *row = dtable + int64_t(key) * dim;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    double acc = 0;
    for (int64_t j = s; j < e; ++j)
      acc += dout[int64_t(positions[j]) * dim + c];
    row[c] = float(acc);
  }
}

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

__global__ void dropoutKernel(int64_t n, float p, float scale,
                              kernels::PhiloxKey key, const int64_t *step,
                              const float *x, float *y) {
  const uint64_t extra = uint64_t(*step);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const kernels::PhiloxBlock words =
        kernels::philox4x32(kernels::philoxCounter(uint64_t(i), extra), key);
    const bool keep = kernels::uniform01(words[0]) >= p;
    y[i] = keep ? __fmul_rn(x[i], scale) : 0.0f;
  }
}

//===----------------------------------------------------------------------===//
// Optimizers
//===----------------------------------------------------------------------===//

/// The per-step constants of AdamW, from the device step and lr, computed as
/// the CPU kernel computes them (in double, rounded once).
struct AdamWConstants {
  float stepSize, decay, bc2Sqrt, lr;
};

__device__ AdamWConstants adamwConstants(float lr, float beta1, float beta2,
                                         float weightDecay, int64_t t) {
  const double bc1 = 1.0 - pow(double(beta1), double(t));
  const double bc2Sqrt = sqrt(1.0 - pow(double(beta2), double(t)));
  AdamWConstants k;
  k.stepSize = float(double(lr) / bc1);
  k.decay = float(1.0 - double(lr) * double(weightDecay));
  k.bc2Sqrt = float(bc2Sqrt);
  k.lr = lr;
  return k;
}

/// One element's update on values (p, m, v in, updated), the CPU's float
/// operations in its order (no FMA).
__device__ __forceinline__ void adamwUpdate(float grad, float &p, float &m,
                                            float &v, float beta1, float beta2,
                                            float eps, float weightDecay,
                                            float gradScale, float stepSize,
                                            float decay, float bc2Sqrt) {
  const float g = __fmul_rn(grad, gradScale);
  if (weightDecay != 0.0f)
    p = __fmul_rn(p, decay);
  const float mi =
      __fadd_rn(__fmul_rn(beta1, m), __fmul_rn(__fsub_rn(1.0f, beta1), g));
  const float vi = __fadd_rn(
      __fmul_rn(beta2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, beta2), g), g));
  m = mi;
  v = vi;
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2Sqrt), eps);
  p = __fsub_rn(p, __fmul_rn(stepSize, __fdiv_rn(mi, denom)));
}

/// One element in memory.
__device__ void adamwElement(int64_t i, float *param, const float *grad,
                             float *m, float *v, float beta1, float beta2,
                             float eps, float weightDecay, float gradScale,
                             float stepSize, float decay, float bc2Sqrt) {
  float p = param[i], mi = m[i], vi = v[i];
  adamwUpdate(grad[i], p, mi, vi, beta1, beta2, eps, weightDecay, gradScale,
              stepSize, decay, bc2Sqrt);
  m[i] = mi;
  v[i] = vi;
  param[i] = p;
}

/// Four consecutive elements of each array (16-byte aligned), loaded,
/// updated, stored: separate steps, so that a thread can have the loads of
/// two quads in flight before it stores either (the compiler cannot move a
/// load above a store to an array that might alias it).
struct AdamWQuad {
  float4 g, p, m, v;
};

__device__ __forceinline__ AdamWQuad adamwLoad(int64_t i, const float *param,
                                               const float *grad,
                                               const float *m, const float *v) {
  AdamWQuad q;
  q.g = reinterpret_cast<const float4 *>(grad)[i];
  q.p = reinterpret_cast<const float4 *>(param)[i];
  q.m = reinterpret_cast<const float4 *>(m)[i];
  q.v = reinterpret_cast<const float4 *>(v)[i];
  return q;
}

__device__ __forceinline__ void adamwUpdateQuad(AdamWQuad &q, float beta1,
                                                float beta2, float eps,
                                                float weightDecay,
                                                float gradScale, float stepSize,
                                                float decay, float bc2Sqrt) {
  adamwUpdate(q.g.x, q.p.x, q.m.x, q.v.x, beta1, beta2, eps, weightDecay,
              gradScale, stepSize, decay, bc2Sqrt);
  adamwUpdate(q.g.y, q.p.y, q.m.y, q.v.y, beta1, beta2, eps, weightDecay,
              gradScale, stepSize, decay, bc2Sqrt);
  adamwUpdate(q.g.z, q.p.z, q.m.z, q.v.z, beta1, beta2, eps, weightDecay,
              gradScale, stepSize, decay, bc2Sqrt);
  adamwUpdate(q.g.w, q.p.w, q.m.w, q.v.w, beta1, beta2, eps, weightDecay,
              gradScale, stepSize, decay, bc2Sqrt);
}

__device__ __forceinline__ void adamwStore(int64_t i, const AdamWQuad &q,
                                           float *param, float *m, float *v) {
  reinterpret_cast<float4 *>(m)[i] = q.m;
  reinterpret_cast<float4 *>(v)[i] = q.v;
  reinterpret_cast<float4 *>(param)[i] = q.p;
}

__global__ void adamwKernel(int64_t n, float *param, const float *grad,
                            float *m, float *v, const float *lr, float beta1,
                            float beta2, float eps, float weightDecay,
                            const float *gradScale, const int64_t *step) {
  __shared__ AdamWConstants k;
  __shared__ float gs;
  if (threadIdx.x == 0) {
    k = adamwConstants(*lr, beta1, beta2, weightDecay, *step);
    gs = *gradScale;
  }
  __syncthreads();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    adamwElement(i, param, grad, m, v, beta1, beta2, eps, weightDecay, gs,
                 k.stepSize, k.decay, k.bc2Sqrt);
}

/// blockIdx.y: the tensor; blockIdx.x strides over its elements. A tensor
/// whose four arrays are 16-byte aligned goes by float4 (two per thread per
/// step: eight 16-byte loads in flight), its last n % 4 elements one by one;
/// another by elements. The grid is sized for the largest tensor, so most
/// blocks of a small one have nothing to do: they leave before the
/// constants' pow.
__global__ void __launch_bounds__(kThreads)
    adamwMultiKernel(const AdamWTensor *tensors, const float *lr, float beta1,
                     float beta2, float eps, const float *gradScale,
                     const int64_t *step) {
  __shared__ AdamWTensor tensor;
  __shared__ AdamWConstants k;
  __shared__ float gs;
  if (int64_t(blockIdx.x) * blockDim.x >= tensors[blockIdx.y].n)
    return;
  if (threadIdx.x == 0) {
    tensor = tensors[blockIdx.y];
    k = adamwConstants(*lr, beta1, beta2, tensor.weightDecay, *step);
    gs = *gradScale;
  }
  __syncthreads();
  const AdamWTensor t = tensor;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool vec =
      ((reinterpret_cast<uintptr_t>(t.param) |
        reinterpret_cast<uintptr_t>(t.grad) | reinterpret_cast<uintptr_t>(t.m) |
        reinterpret_cast<uintptr_t>(t.v)) &
       15) == 0;
  if (!vec) {
    for (; i < t.n; i += stride)
      adamwElement(i, t.param, t.grad, t.m, t.v, beta1, beta2, eps,
                   t.weightDecay, gs, k.stepSize, k.decay, k.bc2Sqrt);
    return;
  }
  const int64_t quads = t.n / 4;
  for (; i + stride < quads; i += 2 * stride) {
    AdamWQuad a = adamwLoad(i, t.param, t.grad, t.m, t.v);
    AdamWQuad b = adamwLoad(i + stride, t.param, t.grad, t.m, t.v);
    adamwUpdateQuad(a, beta1, beta2, eps, t.weightDecay, gs, k.stepSize,
                    k.decay, k.bc2Sqrt);
    adamwUpdateQuad(b, beta1, beta2, eps, t.weightDecay, gs, k.stepSize,
                    k.decay, k.bc2Sqrt);
    adamwStore(i, a, t.param, t.m, t.v);
    adamwStore(i + stride, b, t.param, t.m, t.v);
  }
  if (i < quads) {
    AdamWQuad a = adamwLoad(i, t.param, t.grad, t.m, t.v);
    adamwUpdateQuad(a, beta1, beta2, eps, t.weightDecay, gs, k.stepSize,
                    k.decay, k.bc2Sqrt);
    adamwStore(i, a, t.param, t.m, t.v);
  }
  if (blockIdx.x == 0 && threadIdx.x < t.n - 4 * quads)
    adamwElement(4 * quads + threadIdx.x, t.param, t.grad, t.m, t.v, beta1,
                 beta2, eps, t.weightDecay, gs, k.stepSize, k.decay, k.bc2Sqrt);
}

__global__ void sgdKernel(int64_t n, float *param, const float *grad,
                          float *buf, const float *lr, float momentum,
                          bool nesterov, float weightDecay,
                          const float *gradScale, const int32_t *first) {
  const float rate = *lr, gs = *gradScale;
  const bool isFirst = first && *first != 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float g = __fmul_rn(grad[i], gs);
    if (weightDecay != 0.0f)
      g = __fadd_rn(g, __fmul_rn(weightDecay, param[i]));
    float update = g;
    if (momentum != 0.0f) {
      const float b = isFirst ? g : __fadd_rn(__fmul_rn(momentum, buf[i]), g);
      buf[i] = b;
      update = nesterov ? __fadd_rn(g, __fmul_rn(momentum, b)) : b;
    }
    param[i] = __fsub_rn(param[i], __fmul_rn(rate, update));
  }
}

/// Sum of squares, pass 1: block b sums elements b*256+t, strided by the
/// grid, in double; partial[b].
__global__ void sumSquaresPartials(int64_t n, const float *x, double *partial) {
  __shared__ double shm[32];
  double acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    acc += double(x[i]) * x[i];
  acc = blockSum(acc, shm);
  if (threadIdx.x == 0)
    partial[blockIdx.x] = acc;
}

/// Pass 2, one block: the partials in a fixed order.
__global__ void sumSquaresFinish(int64_t count, const double *partial,
                                 double *out, bool accumulate) {
  __shared__ double shm[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x)
    acc += partial[i];
  acc = blockSum(acc, shm);
  if (threadIdx.x == 0)
    *out = accumulate ? *out + acc : acc;
}

/// sumSquaresPartials for many tensors in one launch: block b belongs to
/// the tensor whose [first, first + blocks) holds it and computes exactly
/// the partial that block of a sumSquares call on that tensor computes.
__global__ void sumSquaresMultiPartials(const SumSquaresItem *items,
                                        int32_t count, double *partial) {
  __shared__ double shm[32];
  int32_t lo = 0, hi = count - 1;
  const int64_t b = blockIdx.x;
  while (lo < hi) { // The last item whose first block is <= b.
    const int32_t mid = (lo + hi + 1) / 2;
    if (items[mid].first <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  const SumSquaresItem it = items[lo];
  const int64_t local = b - it.first;
  double acc = 0;
  for (int64_t i = local * blockDim.x + threadIdx.x; i < it.n;
       i += it.blocks * blockDim.x)
    acc += double(it.x[i]) * it.x[i];
  acc = blockSum(acc, shm);
  if (threadIdx.x == 0)
    partial[b] = acc;
}

/// One block per tensor: its partials as sumSquaresFinish adds them.
__global__ void sumSquaresMultiFinish(const SumSquaresItem *items,
                                      const double *partial, double *sums) {
  __shared__ double shm[32];
  const SumSquaresItem it = items[blockIdx.x];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < it.blocks; i += blockDim.x)
    acc += partial[it.first + i];
  acc = blockSum(acc, shm);
  if (threadIdx.x == 0)
    sums[blockIdx.x] = acc;
}

/// One thread: the tensors' sums added into *out in call order, as the
/// sequence of sumSquares calls (the first one accumulating or not) does.
__global__ void sumSquaresMultiTotal(const double *sums, int32_t count,
                                     double *out, bool accumulate) {
  double acc = accumulate ? *out + sums[0] : sums[0];
  for (int32_t t = 1; t < count; ++t)
    acc = acc + sums[t];
  *out = acc;
}

__global__ void adaptiveClipKernel(const float *normPtr, float *history,
                                   int64_t window, int64_t *count, float sigmas,
                                   float maxNorm, bool record, float *coefOut) {
  const float norm = *normPtr;
  double threshold = maxNorm > 0 ? double(maxNorm) : double(INFINITY);
  if (window > 0 && *count >= window) {
    double mean = 0;
    for (int64_t i = 0; i < window; ++i)
      mean += history[i];
    mean /= double(window);
    double var = 0;
    for (int64_t i = 0; i < window; ++i)
      var += (history[i] - mean) * (history[i] - mean);
    var /= double(window);
    threshold = mean + sigmas * sqrt(var);
  }
  float coef = 1.0f;
  if (isfinite(threshold) && isfinite(norm))
    coef = float(fmin(1.0, threshold / (double(norm) + 1e-6)));
  if (record && window > 0 && isfinite(norm)) {
    history[*count % window] = norm;
    ++*count;
  }
  *coefOut = coef;
}

__global__ void checkFiniteKernel(const void *data, int64_t n, int32_t dtype,
                                  DeviceError *error, int32_t op) {
  __shared__ ull shm[32];
  __shared__ bool skip;
  if (threadIdx.x == 0)
    skip = claimedByOther(error, kNotFinite, op);
  __syncthreads();
  if (skip)
    return;
  ull first = ~0ull;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    bool bad, inf;
    if (dtype == 0) {
      const uint32_t u = static_cast<const uint32_t *>(data)[i];
      bad = (u & 0x7f800000u) == 0x7f800000u;
      inf = (u & 0x007fffffu) == 0;
    } else {
      const uint16_t h = static_cast<const uint16_t *>(data)[i];
      const uint16_t expMask = dtype == 1 ? 0x7f80u : 0x7c00u;
      const uint16_t mantMask = dtype == 1 ? 0x007fu : 0x03ffu;
      bad = (h & expMask) == expMask;
      inf = (h & mantMask) == 0;
    }
    if (bad) {
      const ull key = (ull(i) << 1) | (inf ? 1ull : 0ull);
      first = key < first ? key : first;
      break; // later elements of this thread have larger indices
    }
  }
  first = blockMinU64(first, shm);
  if (threadIdx.x == 0 && first != ~0ull)
    reportError(error, kNotFinite, op, first, n);
}

//===----------------------------------------------------------------------===//
// Glue
//===----------------------------------------------------------------------===//

template <class T> __global__ void fillKernel(T *x, int64_t n, T value) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = value;
}

__global__ void scaleKernel(int elemKind, void *X, int64_t batch, int64_t count,
                            int64_t stride, float beta) {
  const int64_t total = batch * count;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = (i / count) * stride + i % count;
    if (elemKind == 0) {
      float *x = static_cast<float *>(X);
      x[at] = beta == 0.0f ? 0.0f : beta * x[at];
    } else {
      static_cast<uint16_t *>(X)[at] = 0;
    }
  }
}

__global__ void scalarCopyKernel(const void *src, int32_t srcType, void *dst,
                                 int32_t dstType, bool sqrtOf) {
  const bool srcInt = srcType == kI32 || srcType == kI64;
  const bool dstInt = dstType == kI32 || dstType == kI64;
  if (srcInt && dstInt && !sqrtOf) {
    const int64_t v = srcType == kI32 ? *static_cast<const int32_t *>(src)
                                      : *static_cast<const int64_t *>(src);
    if (dstType == kI32)
      *static_cast<int32_t *>(dst) = int32_t(v);
    else
      *static_cast<int64_t *>(dst) = v;
    return;
  }
  double v = 0;
  switch (srcType) {
  case kF32:
    v = *static_cast<const float *>(src);
    break;
  case kF64:
    v = *static_cast<const double *>(src);
    break;
  case kI32:
    v = double(*static_cast<const int32_t *>(src));
    break;
  default:
    v = double(*static_cast<const int64_t *>(src));
    break;
  }
  if (sqrtOf)
    v = sqrt(v);
  switch (dstType) {
  case kF32:
    *static_cast<float *>(dst) = float(v);
    break;
  case kF64:
    *static_cast<double *>(dst) = v;
    break;
  case kI32:
    *static_cast<int32_t *>(dst) = int32_t(v);
    break;
  default:
    *static_cast<int64_t *>(dst) = int64_t(v);
    break;
  }
}

/// kind: 0 f32->bf16, 1 bf16->f32, 2 f32->f16, 3 f16->f32.
/// The GELU epilogues of loom_gemm_bias_gelu_bf16 / loom_gemm_gelu_grad_bf16
/// where cuBLASLt has no fused algorithm, after a plain bf16 GEMM into C
/// [rows, cols]: forward, pre = bf16(C + bias[j]), C = bf16(gelu(C +
/// bias[j])); backward, C = bf16(gelu'(pre) * C). The tanh-approximated
/// GELU and its derivative in f32 (SEMANTICS.md).
__global__ void geluEpilogueKernel(bool forward, int64_t rows, int64_t cols,
                                   uint16_t *c, const uint16_t *bias,
                                   uint16_t *pre) {
  constexpr float kS = 0.7978845608028654f, kC = 0.044715f;
  const int64_t n = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (forward) {
      const float x = fromBF16(c[i]) + fromBF16(bias[i % cols]);
      const float t = tanhf(kS * (x + kC * x * x * x));
      pre[i] = toBF16(x);
      c[i] = toBF16(0.5f * x * (1.0f + t));
    } else {
      const float x = fromBF16(pre[i]);
      const float t = tanhf(kS * (x + kC * x * x * x));
      const float d = 0.5f * (1.0f + t) +
                      0.5f * x * (1.0f - t * t) * kS * (1.0f + 3.0f * kC * x * x);
      c[i] = toBF16(d * fromBF16(c[i]));
    }
  }
}

__global__ void castKernel(int kind, const void *x, void *y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    switch (kind) {
    case 0:
      static_cast<uint16_t *>(y)[i] = toBF16(static_cast<const float *>(x)[i]);
      break;
    case 1:
      static_cast<float *>(y)[i] =
          fromBF16(static_cast<const uint16_t *>(x)[i]);
      break;
    case 2:
      static_cast<uint16_t *>(y)[i] = toF16(static_cast<const float *>(x)[i]);
      break;
    default:
      static_cast<float *>(y)[i] = fromF16(static_cast<const uint16_t *>(x)[i]);
      break;
    }
  }
}

//===----------------------------------------------------------------------===//
// Fallback GEMM
//===----------------------------------------------------------------------===//

template <int Kind> __device__ float loadAs(const void *p, int64_t i) {
  if constexpr (Kind == 0)
    return static_cast<const float *>(p)[i];
  else if constexpr (Kind == 1)
    return fromBF16(static_cast<const uint16_t *>(p)[i]);
  else
    return fromF16(static_cast<const uint16_t *>(p)[i]);
}

constexpr int kGemmTile = 16;

/// blockIdx.z: the batch (from zBase); 16 x 16 outputs per block, operand
/// tiles staged in shared memory, each output's sum over k in order.
template <int Kind>
__global__ void fallbackGemmKernel(int64_t zBase, bool transA, bool transB,
                                   int64_t M, int64_t N, int64_t K,
                                   const void *A, int64_t strideA,
                                   const void *B, int64_t strideB, void *C,
                                   int64_t strideC, float alpha, float beta) {
  __shared__ float tileA[kGemmTile][kGemmTile + 1];
  __shared__ float tileB[kGemmTile][kGemmTile + 1];
  const int64_t b = zBase + blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = int64_t(blockIdx.y) * kGemmTile + ty;
  const int64_t j = int64_t(blockIdx.x) * kGemmTile + tx;
  const int64_t offA = b * strideA, offB = b * strideB;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kGemmTile) {
    // tileA[ty][tx] = op(A)(i, k0 + tx); tileB[ty][tx] = op(B)(k0 + ty, j).
    const int64_t ka = k0 + tx, kb = k0 + ty;
    tileA[ty][tx] =
        i < M && ka < K
            ? loadAs<Kind>(A, offA + (transA ? ka * M + i : i * K + ka))
            : 0.0f;
    tileB[ty][tx] =
        kb < K && j < N
            ? loadAs<Kind>(B, offB + (transB ? j * K + kb : kb * N + j))
            : 0.0f;
    __syncthreads();
    const int kEnd = K - k0 < kGemmTile ? int(K - k0) : kGemmTile;
    for (int k = 0; k < kEnd; ++k)
      acc = __fadd_rn(acc, __fmul_rn(tileA[ty][k], tileB[k][tx]));
    __syncthreads();
  }
  if (i >= M || j >= N)
    return;
  const int64_t at = b * strideC + i * N + j;
  if constexpr (Kind == 0) {
    float *c = static_cast<float *>(C);
    c[at] = beta == 0.0f ? alpha * acc : alpha * acc + beta * c[at];
  } else if constexpr (Kind == 1) {
    static_cast<uint16_t *>(C)[at] = toBF16(acc);
  } else {
    static_cast<uint16_t *>(C)[at] = toF16(acc);
  }
}

//===----------------------------------------------------------------------===//
// Host side
//===----------------------------------------------------------------------===//

/// Launches a row kernel: a warp per row (8 rows a block) for short rows, a
/// block per row for long ones.
template <class... Params, class... Args>
void launchRows(CudaContext &ctx, const char *name, int64_t rows, int64_t cols,
                void (*warpKernel)(Params...), void (*blockKernel)(Params...),
                Args... args) {
  if (rows <= 0)
    return;
  if (cols <= kWarpRowCols) {
    const int64_t blocks = (rows + (kThreads / 32) - 1) / (kThreads / 32);
    warpKernel<<<unsigned(blocks), kThreads, 0, ctx.stream>>>(args...);
  } else {
    blockKernel<<<unsigned(rows), kThreads, 0, ctx.stream>>>(args...);
  }
  checkLaunch(ctx, name);
}

/// Byte offsets in the scratch buffer, each 256-aligned.
struct ScratchLayout {
  size_t bytes = 0;
  size_t add(size_t size) {
    const size_t at = bytes;
    bytes += (size + 255) / 256 * 256;
    return at;
  }
};

template <class T> T *at(void *base, size_t offset) {
  return reinterpret_cast<T *>(static_cast<char *>(base) + offset);
}

/// The chunking of the norms' column sums: depends on rows only.
void columnChunks(int64_t rows, int64_t &chunks, int64_t &rowsPerChunk) {
  chunks = (rows + 63) / 64;
  if (chunks > 256)
    chunks = 256;
  if (chunks < 1)
    chunks = 1;
  rowsPerChunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
}

template <class DY>
void normParamGrads(CudaContext &ctx, const char *name, int64_t rows,
                    int64_t cols, const DY *dy, const float *x,
                    const float *mean, const float *rstd, float *dgain,
                    float *dbias) {
  if (rows <= 0) {
    // Empty sums: zeros.
    if (dgain)
      fill(ctx, dgain, cols, 0.0f);
    if (dbias)
      fill(ctx, dbias, cols, 0.0f);
    return;
  }
  int64_t chunks, rowsPerChunk;
  columnChunks(rows, chunks, rowsPerChunk);
  ScratchLayout layout;
  const size_t gainAt = layout.add(sizeof(double) * chunks * cols);
  const size_t biasAt = mean ? layout.add(sizeof(double) * chunks * cols) : 0;
  void *scratch = ctx.scratch(layout.bytes, name);
  double *partialGain = at<double>(scratch, gainAt);
  double *partialBias = mean ? at<double>(scratch, biasAt) : nullptr;
  // Four columns a thread, four rows a step: GPT-2's dgain/dbias (16384 x
  // 768, bf16 dy; both passes) took 32 us against 41 with the scalar kernel
  // on an H200; 8 columns a thread or 8 rows a step were no faster and held
  // more registers.
  constexpr int kColsPerThread = 4, kRowsPerStep = 4;
  if (cols % kColsPerThread == 0 && aligned16(dy) && aligned16(x)) {
    constexpr int64_t kBlockCols = 32 * kColsPerThread;
    const dim3 grid(unsigned((cols + kBlockCols - 1) / kBlockCols),
                    unsigned(chunks));
    normColumnPartialsVec<DY, kColsPerThread, kRowsPerStep>
        <<<grid, kThreads, 0, ctx.stream>>>(rows, cols, rowsPerChunk, dy, x,
                                            mean, rstd, partialGain,
                                            partialBias);
  } else {
    const dim3 grid(unsigned((cols + 31) / 32), unsigned(chunks));
    normColumnPartials<<<grid, kThreads, 0, ctx.stream>>>(
        rows, cols, rowsPerChunk, dy, x, mean, rstd, partialGain, partialBias);
  }
  checkLaunch(ctx, name);
  constexpr int64_t kColsPerBlock = kThreads / 32;
  normColumnFinish<<<unsigned((cols + kColsPerBlock - 1) / kColsPerBlock),
                     kThreads, 0, ctx.stream>>>(cols, chunks, partialGain,
                                                partialBias, dgain, dbias);
  checkLaunch(ctx, name);
}

} // namespace

//===----------------------------------------------------------------------===//
// The API
//===----------------------------------------------------------------------===//

namespace {
/// The packs a thread of a layer-norm vector kernel holds for a row of
/// `cols` (the warp kernel up to kWarpRowCols, the block kernel beyond), or
/// 0 where the row does not fit them: not whole packs, more than kRowPacks
/// a thread, or a pointer off 16-byte alignment.
int layerNormVecPacks(int64_t cols, std::initializer_list<const void *> ptrs) {
  const int64_t group = cols <= kWarpRowCols ? 32 : kThreads;
  if (cols % kVec != 0 || cols > group * kVec * kRowPacks)
    return 0;
  for (const void *p : ptrs)
    if (!aligned16(p))
      return 0;
  return int((cols / kVec + group - 1) / group);
}

/// Calls launch(std::integral_constant<int, P>()) for P = packs in
/// [1, kRowPacks].
template <class F> void withPacks(int packs, F launch) {
  static_assert(kRowPacks == 4, "one case per P");
  switch (packs) {
  case 1:
    return launch(std::integral_constant<int, 1>());
  case 2:
    return launch(std::integral_constant<int, 2>());
  case 3:
    return launch(std::integral_constant<int, 3>());
  default:
    return launch(std::integral_constant<int, 4>());
  }
}

template <class Y>
void layerNormFwdImpl(CudaContext &ctx, int64_t rows, int64_t cols,
                      const float *x, const float *gain, const float *bias,
                      float eps, Y *y, float *mean, float *rstd) {
  if (cols <= 0)
    return;
  if (const int packs = layerNormVecPacks(cols, {x, gain, bias, y}))
    withPacks(packs, [&](auto p) {
      launchRows(ctx, "layer_norm_fwd", rows, cols,
                 layerNormFwdVecKernel<32, decltype(p)::value, Y>,
                 layerNormFwdVecKernel<256, decltype(p)::value, Y>, rows, cols,
                 x, gain, bias, eps, y, mean, rstd);
    });
  else
    launchRows(ctx, "layer_norm_fwd", rows, cols, layerNormFwdKernel<32, Y>,
               layerNormFwdKernel<256, Y>, rows, cols, x, gain, bias, eps, y,
               mean, rstd);
}
} // namespace

void layerNormFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                  const float *gain, const float *bias, float eps, float *y,
                  float *mean, float *rstd) {
  layerNormFwdImpl(ctx, rows, cols, x, gain, bias, eps, y, mean, rstd);
}

void layerNormFwdBf16Out(CudaContext &ctx, int64_t rows, int64_t cols,
                         const float *x, const float *gain, const float *bias,
                         float eps, uint16_t *y, float *mean, float *rstd) {
  layerNormFwdImpl(ctx, rows, cols, x, gain, bias, eps, y, mean, rstd);
}

namespace {
template <class DY>
void layerNormBwdImpl(CudaContext &ctx, int64_t rows, int64_t cols,
                      const DY *dy, const float *x, const float *gain,
                      const float *mean, const float *rstd, float *dx,
                      float *dgain, float *dbias) {
  if (cols <= 0)
    return;
  const int packs = dx ? layerNormVecPacks(cols, {dy, x, gain, dx}) : 0;
  if (packs)
    withPacks(packs, [&](auto p) {
      launchRows(ctx, "layer_norm_bwd", rows, cols,
                 layerNormBwdVecKernel<32, decltype(p)::value, DY>,
                 layerNormBwdVecKernel<256, decltype(p)::value, DY>, rows, cols,
                 dy, x, gain, mean, rstd, dx);
    });
  else if (dx)
    launchRows(ctx, "layer_norm_bwd", rows, cols, layerNormBwdKernel<32, DY>,
               layerNormBwdKernel<256, DY>, rows, cols, dy, x, gain, mean,
               rstd, dx);
  if (dgain || dbias)
    normParamGrads(ctx, "layer_norm_bwd", rows, cols, dy, x, mean, rstd, dgain,
                   dbias);
}
} // namespace

void layerNormBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *dy,
                  const float *x, const float *gain, const float *mean,
                  const float *rstd, float *dx, float *dgain, float *dbias) {
  layerNormBwdImpl(ctx, rows, cols, dy, x, gain, mean, rstd, dx, dgain, dbias);
}

void layerNormBwdBf16Dy(CudaContext &ctx, int64_t rows, int64_t cols,
                        const uint16_t *dy, const float *x, const float *gain,
                        const float *mean, const float *rstd, float *dx,
                        float *dgain, float *dbias) {
  layerNormBwdImpl(ctx, rows, cols, dy, x, gain, mean, rstd, dx, dgain, dbias);
}

void rmsNormFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                const float *gain, float eps, float *y, float *rstd) {
  if (cols <= 0)
    return;
  launchRows(ctx, "rms_norm_fwd", rows, cols, rmsNormFwdKernel<32>,
             rmsNormFwdKernel<256>, rows, cols, x, gain, eps, y, rstd);
}

void rmsNormBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *dy,
                const float *x, const float *gain, const float *rstd, float *dx,
                float *dgain) {
  if (cols <= 0)
    return;
  if (dx)
    launchRows(ctx, "rms_norm_bwd", rows, cols, rmsNormBwdKernel<32>,
               rmsNormBwdKernel<256>, rows, cols, dy, x, gain, rstd, dx);
  if (dgain)
    normParamGrads(ctx, "rms_norm_bwd", rows, cols, dy, x, nullptr, rstd, dgain,
                   nullptr);
}

void softmaxFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                float *y) {
  if (cols <= 0)
    return;
  launchRows(ctx, "softmax_fwd", rows, cols, softmaxFwdKernel<32>,
             softmaxFwdKernel<256>, rows, cols, x, y, false);
}

void softmaxBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *y,
                const float *dy, float *dx) {
  if (cols <= 0)
    return;
  launchRows(ctx, "softmax_bwd", rows, cols, softmaxBwdKernel<32>,
             softmaxBwdKernel<256>, rows, cols, y, dy, dx, false);
}

void logSoftmaxFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                   float *y) {
  if (cols <= 0)
    return;
  launchRows(ctx, "log_softmax_fwd", rows, cols, softmaxFwdKernel<32>,
             softmaxFwdKernel<256>, rows, cols, x, y, true);
}

void logSoftmaxBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *y,
                   const float *dy, float *dx) {
  if (cols <= 0)
    return;
  launchRows(ctx, "log_softmax_bwd", rows, cols, softmaxBwdKernel<32>,
             softmaxBwdKernel<256>, rows, cols, y, dy, dx, true);
}

namespace {
template <class L>
void crossEntropyFwdAny(CudaContext &ctx, const char *name, int64_t rows,
                        int64_t classes, const L *logits, const int32_t *target,
                        int64_t ignoreIndex, float *loss, float *lse,
                        float *stats, int32_t op) {
  if (classes <= 0)
    throw runtime::Error(rankPrefix(ctx, name) + "classes = " +
                         std::to_string(classes) + " must be positive");
  double *rowLoss = nullptr;
  uint8_t *rowFlags = nullptr;
  if (rows > 0) {
    ScratchLayout layout;
    const size_t lossAt = layout.add(sizeof(double) * rows);
    const size_t flagsAt = layout.add(rows);
    void *scratch = ctx.scratch(layout.bytes, name);
    rowLoss = at<double>(scratch, lossAt);
    rowFlags = at<uint8_t>(scratch, flagsAt);
    if (classes % kVec == 0 && aligned16(logits))
      launchRows(ctx, name, rows, classes, crossEntropyRowsVecKernel<32, L>,
                 crossEntropyRowsVecKernel<256, L>, rows, classes, logits,
                 target, ignoreIndex, lse, rowLoss, rowFlags, ctx.error, op);
    else
      launchRows(ctx, name, rows, classes, crossEntropyRowsKernel<32, L>,
                 crossEntropyRowsKernel<256, L>, rows, classes, logits, target,
                 ignoreIndex, lse, rowLoss, rowFlags, ctx.error, op);
  }
  crossEntropyReduceKernel<<<1, 1024, 0, ctx.stream>>>(rows, rowLoss, rowFlags,
                                                       loss, stats);
  checkLaunch(ctx, name);
}

template <class L, class D>
void crossEntropyBwdAny(CudaContext &ctx, const char *name, int64_t rows,
                        int64_t classes, const L *logits, const int32_t *target,
                        int64_t ignoreIndex, const float *lse,
                        const float *dloss, D *dlogits, int32_t op,
                        int64_t start = 0, int64_t classesGlobal = -1) {
  if (rows <= 0 || classes <= 0)
    return;
  long long *counted =
      static_cast<long long *>(ctx.scratch(sizeof(long long), name));
  countTargetsKernel<<<1, 1024, 0, ctx.stream>>>(rows, target, ignoreIndex,
                                                 counted);
  checkLaunch(ctx, name);
  if (classes % kVec == 0 && aligned16(logits) && aligned16(dlogits))
    launchRows(ctx, name, rows, classes, crossEntropyBwdVecKernel<32, L, D>,
               crossEntropyBwdVecKernel<256, L, D>, rows, classes, logits,
               target, ignoreIndex, lse, dloss,
               static_cast<const long long *>(counted), dlogits, ctx.error, op,
               start, classesGlobal < 0 ? classes : classesGlobal);
  else
    launchRows(ctx, name, rows, classes, crossEntropyBwdKernel<32, L, D>,
               crossEntropyBwdKernel<256, L, D>, rows, classes, logits, target,
               ignoreIndex, lse, dloss, static_cast<const long long *>(counted),
               dlogits, ctx.error, op, start,
               classesGlobal < 0 ? classes : classesGlobal);
}

void checkShard(CudaContext &ctx, const char *name, int64_t local,
                int64_t global, int64_t start) {
  if (local < 1 || global < local || start < 0 || start + local > global)
    throw runtime::Error(rankPrefix(ctx, name) + "shard [" +
                         std::to_string(start) + ", " +
                         std::to_string(start + local) + ") of " +
                         std::to_string(global) + " is not a valid split");
}
} // namespace

void crossEntropyFwd(CudaContext &ctx, int64_t rows, int64_t classes,
                     const float *logits, const int32_t *target,
                     int64_t ignoreIndex, float *loss, float *lse, float *stats,
                     int32_t op) {
  crossEntropyFwdAny(ctx, "cross_entropy_fwd", rows, classes, logits, target,
                     ignoreIndex, loss, lse, stats, op);
}
void crossEntropyBwd(CudaContext &ctx, int64_t rows, int64_t classes,
                     const float *logits, const int32_t *target,
                     int64_t ignoreIndex, const float *lse, const float *dloss,
                     float *dlogits, int32_t op) {
  crossEntropyBwdAny(ctx, "cross_entropy_bwd", rows, classes, logits, target,
                     ignoreIndex, lse, dloss, dlogits, op);
}
void crossEntropyFwdBf16(CudaContext &ctx, int64_t rows, int64_t classes,
                         const uint16_t *logits, const int32_t *target,
                         int64_t ignoreIndex, float *loss, float *lse,
                         float *stats, int32_t op) {
  crossEntropyFwdAny(ctx, "cross_entropy_fwd_bf16", rows, classes, logits,
                     target, ignoreIndex, loss, lse, stats, op);
}
void crossEntropyBwdBf16(CudaContext &ctx, int64_t rows, int64_t classes,
                         const uint16_t *logits, const int32_t *target,
                         int64_t ignoreIndex, const float *lse,
                         const float *dloss, uint16_t *dlogits, int32_t op) {
  crossEntropyBwdAny(ctx, "cross_entropy_bwd_bf16", rows, classes, logits,
                     target, ignoreIndex, lse, dloss, dlogits, op);
}

void crossEntropyFwdSharded(
    CudaContext &ctx, int64_t rows, int64_t classesLocal, int64_t classes,
    int64_t start, const float *logits, const int32_t *target,
    int64_t ignoreIndex, float *loss, float *lse, float *stats,
    const std::function<void(void *, size_t, bool)> &reduce, int32_t op) {
  const char *name = "cross_entropy_fwd_sharded";
  checkShard(ctx, name, classesLocal, classes, start);
  int64_t *keys = nullptr;
  double *sums = nullptr, *rowLoss = nullptr;
  uint8_t *rowFlags = nullptr;
  if (rows > 0) {
    ScratchLayout layout;
    const size_t keysAt = layout.add(sizeof(int64_t) * rows);
    const size_t sumsAt = layout.add(sizeof(double) * 2 * rows);
    const size_t lossAt = layout.add(sizeof(double) * rows);
    const size_t flagsAt = layout.add(rows);
    void *scratch = ctx.scratch(layout.bytes, name);
    keys = at<int64_t>(scratch, keysAt);
    sums = at<double>(scratch, sumsAt);
    rowLoss = at<double>(scratch, lossAt);
    rowFlags = at<uint8_t>(scratch, flagsAt);
    launchRows(ctx, name, rows, classesLocal, crossEntropyShardedMaxKernel<32>,
               crossEntropyShardedMaxKernel<256>, rows, classesLocal, start,
               logits, keys);
  }
  // Every member joins both collectives, rows or not.
  reduce(keys, size_t(rows), /*max=*/true);
  if (rows > 0)
    launchRows(ctx, name, rows, classesLocal, crossEntropyShardedSumKernel<32>,
               crossEntropyShardedSumKernel<256>, rows, classesLocal, start,
               classes, logits, target, ignoreIndex,
               static_cast<const int64_t *>(keys), sums);
  reduce(sums, size_t(2 * rows), /*max=*/false);
  if (rows > 0) {
    crossEntropyShardedRowsKernel<<<elementwiseGrid(ctx, rows), kThreads, 0,
                                    ctx.stream>>>(
        rows, classes, target, ignoreIndex, keys, sums, lse, rowLoss, rowFlags,
        ctx.error, op);
    checkLaunch(ctx, name);
  }
  crossEntropyReduceKernel<<<1, 1024, 0, ctx.stream>>>(rows, rowLoss, rowFlags,
                                                       loss, stats);
  checkLaunch(ctx, name);
}

void crossEntropyBwdSharded(CudaContext &ctx, int64_t rows,
                            int64_t classesLocal, int64_t classes,
                            int64_t start, const float *logits,
                            const int32_t *target, int64_t ignoreIndex,
                            const float *lse, const float *dloss,
                            float *dlogits, int32_t op) {
  const char *name = "cross_entropy_bwd_sharded";
  checkShard(ctx, name, classesLocal, classes, start);
  crossEntropyBwdAny(ctx, name, rows, classesLocal, logits, target,
                     ignoreIndex, lse, dloss, dlogits, op, start, classes);
}

void embeddingFwd(CudaContext &ctx, int64_t n, int64_t vocab, int64_t dim,
                  const int32_t *ids, const float *table, float *out,
                  int32_t op) {
  const char *name = "embedding_fwd";
  if (n <= 0 || dim <= 0)
    return;
  if (n > int64_t(INT32_MAX))
    throw runtime::Error(rankPrefix(ctx, name) + "n = " + std::to_string(n) +
                         " exceeds 2^31 - 1");
  const int threads = dim >= 256 ? 256 : dim >= 128 ? 128 : dim >= 64 ? 64 : 32;
  embeddingFwdKernel<<<unsigned(n), threads, 0, ctx.stream>>>(
      n, vocab, dim, ids, table, out, ctx.error, op);
  checkLaunch(ctx, name);
}

namespace {
/// dtable (this rank's vocabLocal rows from start) = 0, then the sums of
/// dout over each row's positions; vocabLocal == vocab, start 0: unsharded.
void embeddingBwdAny(CudaContext &ctx, const char *name, int64_t n,
                     int64_t vocabLocal, int64_t vocab, int64_t start,
                     int64_t dim, const int32_t *ids, const float *dout,
                     float *dtable, int32_t op) {
  if (vocabLocal <= 0 || dim <= 0)
    return;
  if (n > int64_t(INT32_MAX) || vocab >= int64_t(UINT32_MAX))
    throw runtime::Error(rankPrefix(ctx, name) + "n = " + std::to_string(n) +
                         ", vocab = " + std::to_string(vocab) +
                         ": too large (2^31 - 1 at most)");
  LOOM_CUDA_CHECK(ctx,
                  cudaMemsetAsync(dtable, 0, sizeof(float) * vocabLocal * dim,
                                  ctx.stream),
                  name);
  if (n <= 0)
    return;
  int endBit = 1;
  while (endBit < 32 && (uint64_t(1) << endBit) <= uint64_t(vocabLocal))
    ++endBit;
  size_t sortBytes = 0;
  LOOM_CUDA_CHECK(
      ctx,
      cub::DeviceRadixSort::SortPairs(
          nullptr, sortBytes, static_cast<const uint32_t *>(nullptr),
          static_cast<uint32_t *>(nullptr),
          static_cast<const uint32_t *>(nullptr),
          static_cast<uint32_t *>(nullptr), int(n), 0, endBit, ctx.stream),
      name);
  ScratchLayout layout;
  const size_t keysAt = layout.add(sizeof(uint32_t) * n);
  const size_t sortedKeysAt = layout.add(sizeof(uint32_t) * n);
  const size_t positionsAt = layout.add(sizeof(uint32_t) * n);
  const size_t sortedPositionsAt = layout.add(sizeof(uint32_t) * n);
  const size_t sortAt = layout.add(sortBytes);
  void *scratch = ctx.scratch(layout.bytes, name);
  uint32_t *keys = at<uint32_t>(scratch, keysAt);
  uint32_t *sortedKeys = at<uint32_t>(scratch, sortedKeysAt);
  uint32_t *positions = at<uint32_t>(scratch, positionsAt);
  uint32_t *sortedPositions = at<uint32_t>(scratch, sortedPositionsAt);
  embeddingKeysKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(
      n, vocabLocal, vocab, start, ids, keys, positions, ctx.error, op);
  checkLaunch(ctx, name);
  // Stable: equal ids keep their positions in increasing order.
  LOOM_CUDA_CHECK(ctx,
                  cub::DeviceRadixSort::SortPairs(
                      at<void>(scratch, sortAt), sortBytes,
                      static_cast<const uint32_t *>(keys), sortedKeys,
                      static_cast<const uint32_t *>(positions), sortedPositions,
                      int(n), 0, endBit, ctx.stream),
                  name);
  const int threads = dim >= 256 ? 256 : dim >= 128 ? 128 : dim >= 64 ? 64 : 32;
  embeddingSegmentsKernel<<<unsigned(n), threads, 0, ctx.stream>>>(
      n, vocabLocal, dim, sortedKeys, sortedPositions, dout, dtable);
  checkLaunch(ctx, name);
}
} // namespace

void embeddingBwd(CudaContext &ctx, int64_t n, int64_t vocab, int64_t dim,
                  const int32_t *ids, const float *dout, float *dtable,
                  int32_t op) {
  embeddingBwdAny(ctx, "embedding_bwd", n, vocab, vocab, 0, dim, ids, dout,
                  dtable, op);
}

void embeddingFwdSharded(CudaContext &ctx, int64_t n, int64_t vocabLocal,
                         int64_t vocab, int64_t start, int64_t dim,
                         const int32_t *ids, const float *table, float *out,
                         int32_t op) {
  const char *name = "embedding_fwd_sharded";
  checkShard(ctx, name, vocabLocal, vocab, start);
  if (n <= 0 || dim <= 0)
    return;
  if (n > int64_t(INT32_MAX))
    throw runtime::Error(rankPrefix(ctx, name) + "n = " + std::to_string(n) +
                         " exceeds 2^31 - 1");
  const int threads = dim >= 256 ? 256 : dim >= 128 ? 128 : dim >= 64 ? 64 : 32;
  embeddingFwdShardedKernel<<<unsigned(n), threads, 0, ctx.stream>>>(
      n, vocabLocal, vocab, start, dim, ids, table, out, ctx.error, op);
  checkLaunch(ctx, name);
}

void embeddingBwdSharded(CudaContext &ctx, int64_t n, int64_t vocabLocal,
                         int64_t vocab, int64_t start, int64_t dim,
                         const int32_t *ids, const float *dout, float *dtable,
                         int32_t op) {
  const char *name = "embedding_bwd_sharded";
  checkShard(ctx, name, vocabLocal, vocab, start);
  embeddingBwdAny(ctx, name, n, vocabLocal, vocab, start, dim, ids, dout,
                  dtable, op);
}

namespace {
void dropout(CudaContext &ctx, const char *name, int64_t n, float p,
             uint64_t key, const int64_t *step, const float *x, float *y) {
  if (!(p >= 0.0f && p <= 1.0f))
    throw runtime::Error(rankPrefix(ctx, name) + "p = " + std::to_string(p) +
                         " is outside [0, 1]");
  if (n <= 0)
    return;
  // The CPU kernel's scale, computed the same way (in float).
  const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  dropoutKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(
      n, p, scale, kernels::philoxKey(ctx.seed, key), step, x, y);
  checkLaunch(ctx, name);
}
} // namespace

void dropoutFwd(CudaContext &ctx, int64_t n, float p, uint64_t key,
                const int64_t *step, const float *x, float *y) {
  dropout(ctx, "dropout_fwd", n, p, key, step, x, y);
}

void dropoutBwd(CudaContext &ctx, int64_t n, float p, uint64_t key,
                const int64_t *step, const float *dy, float *dx) {
  dropout(ctx, "dropout_bwd", n, p, key, step, dy, dx);
}

void adamw(CudaContext &ctx, int64_t n, float *param, const float *grad,
           float *m, float *v, const float *lr, float beta1, float beta2,
           float eps, float weightDecay, const float *gradScale,
           const int64_t *step) {
  if (n <= 0)
    return;
  adamwKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(
      n, param, grad, m, v, lr, beta1, beta2, eps, weightDecay, gradScale,
      step);
  checkLaunch(ctx, "adamw");
}

void adamwMulti(CudaContext &ctx, const AdamWTensor *tensors, int32_t count,
                int64_t maxN, const float *lr, float beta1, float beta2,
                float eps, const float *gradScale, const int64_t *step) {
  const char *name = "adamw_multi";
  if (count <= 0 || maxN <= 0)
    return;
  if (count > 65535)
    throw runtime::Error(rankPrefix(ctx, name) + std::to_string(count) +
                         " tensors in one launch, 65535 at most");
  // Enough blocks per tensor that the largest fills the GPU on its own.
  int64_t perTensor = (maxN + kThreads - 1) / kThreads;
  const int64_t cap =
      int64_t(ctx.multiprocessors > 0 ? ctx.multiprocessors : 132) * 4;
  if (perTensor > cap)
    perTensor = cap;
  const dim3 grid = dim3(unsigned(perTensor), unsigned(count));
  adamwMultiKernel<<<grid, kThreads, 0, ctx.stream>>>(tensors, lr, beta1, beta2,
                                                      eps, gradScale, step);
  checkLaunch(ctx, name);
}

AdamWTensorList::AdamWTensorList(CudaContext &ctx,
                                 const std::vector<AdamWTensor> &tensors)
    : size(int32_t(tensors.size())) {
  for (const AdamWTensor &t : tensors)
    largest = t.n > largest ? t.n : largest;
  if (tensors.empty())
    return;
  const char *name = "adamw_multi";
  LOOM_CUDA_CHECK(ctx,
                  cudaMalloc(reinterpret_cast<void **>(&list),
                             sizeof(AdamWTensor) * tensors.size()),
                  name);
  try {
    LOOM_CUDA_CHECK(ctx,
                    cudaMemcpy(list, tensors.data(),
                               sizeof(AdamWTensor) * tensors.size(),
                               cudaMemcpyHostToDevice),
                    name);
  } catch (...) {
    cudaFree(list);
    list = nullptr;
    throw;
  }
}

AdamWTensorList::~AdamWTensorList() {
  if (list)
    cudaFree(list);
}

void sgd(CudaContext &ctx, int64_t n, float *param, const float *grad,
         float *buf, const float *lr, float momentum, bool nesterov,
         float weightDecay, const float *gradScale, const int32_t *first) {
  if (n <= 0)
    return;
  if (momentum != 0.0f && !buf)
    throw runtime::Error(rankPrefix(ctx, "sgd") +
                         "momentum needs a momentum buffer");
  sgdKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(
      n, param, grad, buf, lr, momentum, nesterov, weightDecay, gradScale,
      first);
  checkLaunch(ctx, "sgd");
}

namespace {
/// sumSquares' number of partials: a function of n alone, so the summation
/// order is the same on every GPU.
int64_t sumSquaresBlocks(int64_t n) {
  int64_t blocks = (n + kThreads * 16 - 1) / (kThreads * 16);
  if (blocks > 1024)
    blocks = 1024;
  if (blocks < 1)
    blocks = 1;
  return blocks;
}
} // namespace

SumSquaresList::SumSquaresList(CudaContext &ctx,
                               const std::vector<std::pair<const float *, int64_t>> &tensors)
    : size(int32_t(tensors.size())) {
  std::vector<SumSquaresItem> items;
  for (const auto &[x, n] : tensors) {
    const int64_t blocks = sumSquaresBlocks(n);
    items.push_back({x, n > 0 ? n : 0, totalBlocks, blocks});
    totalBlocks += blocks;
  }
  if (items.empty())
    return;
  const char *name = "sum_squares_multi";
  LOOM_CUDA_CHECK(ctx,
                  cudaMalloc(reinterpret_cast<void **>(&list),
                             sizeof(SumSquaresItem) * items.size()),
                  name);
  const cudaError_t copied =
      cudaMemcpy(list, items.data(), sizeof(SumSquaresItem) * items.size(),
                 cudaMemcpyHostToDevice);
  if (copied != cudaSuccess) {
    cudaFree(list);
    list = nullptr;
    LOOM_CUDA_CHECK(ctx, copied, name);
  }
}

SumSquaresList::~SumSquaresList() {
  if (list)
    cudaFree(list);
}

void sumSquaresMulti(CudaContext &ctx, const SumSquaresList &tensors,
                     double *out, bool accumulate) {
  if (tensors.count() == 0)
    return;
  const char *name = "sum_squares";
  double *partial = static_cast<double *>(ctx.scratch(
      sizeof(double) * (tensors.blocks() + tensors.count()), name));
  double *sums = partial + tensors.blocks();
  sumSquaresMultiPartials<<<unsigned(tensors.blocks()), kThreads, 0,
                            ctx.stream>>>(tensors.device(), tensors.count(),
                                          partial);
  checkLaunch(ctx, name);
  sumSquaresMultiFinish<<<unsigned(tensors.count()), kThreads, 0,
                          ctx.stream>>>(tensors.device(), partial, sums);
  checkLaunch(ctx, name);
  sumSquaresMultiTotal<<<1, 1, 0, ctx.stream>>>(sums, tensors.count(), out,
                                                accumulate);
  checkLaunch(ctx, name);
}

void sumSquares(CudaContext &ctx, int64_t n, const float *x, double *out,
                bool accumulate) {
  const char *name = "sum_squares";
  const int64_t blocks = sumSquaresBlocks(n);
  double *partial =
      static_cast<double *>(ctx.scratch(sizeof(double) * blocks, name));
  sumSquaresPartials<<<unsigned(blocks), kThreads, 0, ctx.stream>>>(
      n > 0 ? n : 0, x, partial);
  checkLaunch(ctx, name);
  sumSquaresFinish<<<1, kThreads, 0, ctx.stream>>>(blocks, partial, out,
                                                   accumulate);
  checkLaunch(ctx, name);
}

void adaptiveClip(CudaContext &ctx, const float *norm, float *history,
                  int64_t window, int64_t *count, float sigmas, float maxNorm,
                  bool record, float *coef) {
  adaptiveClipKernel<<<1, 1, 0, ctx.stream>>>(norm, history, window, count,
                                              sigmas, maxNorm, record, coef);
  checkLaunch(ctx, "adaptive_clip");
}

void checkFinite(CudaContext &ctx, const void *data, int64_t n, int32_t dtype,
                 int64_t op) {
  const char *name = "check_finite";
  if (dtype < 0 || dtype > 2)
    throw runtime::Error(rankPrefix(ctx, name) + "dtype " +
                         std::to_string(dtype) +
                         " is not 0 (f32), 1 (bf16) "
                         "or 2 (f16)");
  if (n <= 0)
    return;
  checkFiniteKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(
      data, n, dtype, ctx.error, int32_t(op));
  checkLaunch(ctx, name);
}

void fill(CudaContext &ctx, float *x, int64_t n, float value) {
  if (n <= 0)
    return;
  fillKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(x, n, value);
  checkLaunch(ctx, "fill");
}

void fillU16(CudaContext &ctx, uint16_t *x, int64_t n, uint16_t value) {
  if (n <= 0)
    return;
  fillKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(x, n, value);
  checkLaunch(ctx, "fill");
}

void fillI32(CudaContext &ctx, int32_t *x, int64_t n, int32_t value) {
  if (n <= 0)
    return;
  fillKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(x, n, value);
  checkLaunch(ctx, "fill");
}

void fillI64(CudaContext &ctx, int64_t *x, int64_t n, int64_t value) {
  if (n <= 0)
    return;
  fillKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(x, n, value);
  checkLaunch(ctx, "fill");
}

void copy(CudaContext &ctx, void *dst, const void *src, size_t bytes) {
  if (bytes == 0 || dst == src)
    return;
  LOOM_CUDA_CHECK(
      ctx,
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx.stream),
      "copy");
}

void scalarCopy(CudaContext &ctx, const void *src, ScalarType srcType,
                void *dst, ScalarType dstType, bool sqrtOf) {
  scalarCopyKernel<<<1, 1, 0, ctx.stream>>>(src, srcType, dst, dstType, sqrtOf);
  checkLaunch(ctx, "scalar_copy");
}

namespace {
void cast(CudaContext &ctx, int kind, const void *x, void *y, int64_t n) {
  if (n <= 0)
    return;
  castKernel<<<elementwiseGrid(ctx, n), kThreads, 0, ctx.stream>>>(kind, x, y,
                                                                   n);
  checkLaunch(ctx, "cast");
}
} // namespace

void castF32ToBf16(CudaContext &ctx, const float *x, uint16_t *y, int64_t n) {
  cast(ctx, 0, x, y, n);
}
void castBf16ToF32(CudaContext &ctx, const uint16_t *x, float *y, int64_t n) {
  cast(ctx, 1, x, y, n);
}
void castF32ToF16(CudaContext &ctx, const float *x, uint16_t *y, int64_t n) {
  cast(ctx, 2, x, y, n);
}
void castF16ToF32(CudaContext &ctx, const uint16_t *x, float *y, int64_t n) {
  cast(ctx, 3, x, y, n);
}

namespace detail {
void fallbackGemm(CudaContext &ctx, const char *kernel, int elemKind,
                  int64_t batch, bool transA, bool transB, int64_t M, int64_t N,
                  int64_t K, const void *A, int64_t strideA, const void *B,
                  int64_t strideB, void *C, int64_t strideC, float alpha,
                  float beta) {
  if (batch <= 0 || M <= 0 || N <= 0)
    return;
  const dim3 threads = dim3(kGemmTile, kGemmTile);
  for (int64_t z = 0; z < batch; z += 65535) {
    const int64_t zCount = batch - z < 65535 ? batch - z : 65535;
    const dim3 grid =
        dim3(unsigned((N + kGemmTile - 1) / kGemmTile),
             unsigned((M + kGemmTile - 1) / kGemmTile), unsigned(zCount));
    auto *k = elemKind == 0   ? fallbackGemmKernel<0>
              : elemKind == 1 ? fallbackGemmKernel<1>
                              : fallbackGemmKernel<2>;
    k<<<grid, threads, 0, ctx.stream>>>(z, transA, transB, M, N, K, A, strideA,
                                        B, strideB, C, strideC, alpha, beta);
    checkLaunch(ctx, kernel);
  }
}

void geluEpilogue(CudaContext &ctx, const char *kernel, bool forward,
                  int64_t rows, int64_t cols, uint16_t *C, const uint16_t *bias,
                  uint16_t *pre) {
  if (rows <= 0 || cols <= 0)
    return;
  geluEpilogueKernel<<<elementwiseGrid(ctx, rows * cols), kThreads, 0,
                       ctx.stream>>>(forward, rows, cols, C, bias, pre);
  checkLaunch(ctx, kernel);
}

void scaleMatrices(CudaContext &ctx, const char *kernel, int elemKind, void *X,
                   int64_t batch, int64_t count, int64_t stride, float beta) {
  if (batch <= 0 || count <= 0)
    return;
  scaleKernel<<<elementwiseGrid(ctx, batch * count), kThreads, 0, ctx.stream>>>(
      elemKind, X, batch, count, batch > 1 ? stride : 0, beta);
  checkLaunch(ctx, kernel);
}
} // namespace detail

} // namespace loom::cuda
