//===- Attention.cu - flash-style causal attention kernels ---------------===//
//
// See Attention.h for the contract and ATTENTION.md for the design. In short:
//
//  forward   one block per (head, query block); key blocks stream through
//            shared memory with an online softmax (running max m, running sum
//            l, output rescaled by exp(m_old - m_new)); out = O / l,
//            lse = m + log(l).
//  backward  prep: per query row delta = dout . out (the gradient flowing
//            into out), and lse (+inf for rows that get no gradient);
//            dkdv: one block per (head, key block), looping over the query
//            blocks that see it: P^T = exp(K Q^T * scale - lse),
//            dP^T = V dO^T, dS^T = P^T (dP^T - delta); dV += P^T dO,
//            dK += dS^T Q;
//            dq:   one block per (head, query block), looping over key
//            blocks: dQ += dS K.
//            No atomics: every output element is summed by one thread in a
//            fixed order, so results are bitwise repeatable.
//  gated     a gate kernel (sigmoid([q;k] . wg + bg)) before the forward;
//            gated backward scales dout by the gate in the prep kernel and
//            adds the gate's terms to dq/dk in the epilogues; dwg/dbg are
//            per-(head, time chunk) partial sums in double, added up in a
//            fixed order by a second kernel.
//
// fp32 kernels: 32x32 tiles in shared memory, 128 threads, 4 threads per
// row, scalar FMAs (fp32 throughout, exp2f). bf16 kernels: mma.sync
// m16n8k16 (bf16 in, fp32 accumulate), ldmatrix from padded shared tiles,
// cp.async double buffering, 16 rows per warp; P and dS are kept in
// registers between the two products (the C fragment of one mma is the A
// fragment of the next).
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

namespace loom::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
/// Time steps per block of the gate-gradient partial sums.
constexpr int kGateChunk = 64;

std::string failure(const char *what, cudaError_t status) {
  return std::string("loom::cuda attention: ") + what + ": " +
         cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
}

//===----------------------------------------------------------------------===//
// Shared device helpers
//===----------------------------------------------------------------------===//

__device__ __forceinline__ float toFloat(float x) { return x; }
__device__ __forceinline__ float toFloat(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void storeAs(float *p, float x) { *p = x; }
__device__ __forceinline__ void storeAs(bf16 *p, float x) {
  *p = __float2bfloat16_rn(x);
}

/// The keys query row i sees: [0, visibleKeys).
__device__ __forceinline__ int visibleKeys(int causal, int Tq, int Tk, int i) {
  if (!causal)
    return Tk;
  const int n = i + (Tk - Tq) + 1;
  return n < 0 ? 0 : (n > Tk ? Tk : n);
}

/// Everything a kernel reads and writes; one struct for all kernels.
template <class E> struct Params {
  const E *q = nullptr, *k = nullptr, *v = nullptr;
  // Forward outputs (out is attn when gated; gatedOut = gate * attn).
  E *out = nullptr;
  float *lse = nullptr;
  E *gatedOut = nullptr;
  // Gated: wg [H, 2D], bg [H]; gate [B,H,T] (read by both passes; gateOut
  // written by the gate kernel). threshold < 0: exact.
  const float *wg = nullptr, *bg = nullptr, *gate = nullptr;
  float *gateOut = nullptr;
  float threshold = -1.f;
  // Backward: dO (dout, or gate * dout when gated), lse (+inf where a row
  // gets no gradient), delta = dO . out, dz (gated), outputs.
  const E *dO = nullptr;
  const float *lseEff = nullptr, *delta = nullptr, *dz = nullptr;
  E *dq = nullptr, *dk = nullptr, *dv = nullptr;
  int H = 0, Tq = 0, Tk = 0, D = 0, Dv = 0, causal = 1;
  float scale = 1.f;
  // The layout of q, k, v, out, attn, dout, dq, dk, dv: [B,H,T,width]
  // dense, or [B,T,H,width] (AttentionDims::interleaved, bf16 only).
  int interleaved = 0;
  /// Offset of time step t of head bh (= b H + h) in a tensor of T steps
  /// and `width` columns per head.
  __device__ __forceinline__ int64_t off(int64_t bh, int64_t t, int T,
                                         int width) const {
    return interleaved ? ((bh / H) * T + t) * H * width + (bh % H) * width
                       : (bh * T + t) * width;
  }
  /// Elements between consecutive time steps of one head.
  __device__ __forceinline__ int64_t rowStride(int width) const {
    return interleaved ? int64_t(H) * width : width;
  }
};

/// Whether flat row `row` of [B*H*Tq] is computed (the gate's threshold).
template <class E>
__device__ __forceinline__ bool rowActive(const Params<E> &p, int64_t row) {
  return p.gate == nullptr || p.threshold < 0.f || p.gate[row] >= p.threshold;
}

//===----------------------------------------------------------------------===//
// Gate, backward prep and gate-gradient kernels (both element types)
//===----------------------------------------------------------------------===//

/// gate[row] = sigmoid(bg[h] + q[row] . wg[h,:D] + k[row] . wg[h,D:]); one
/// warp per row, the dot products in double.
template <class E>
__global__ void gateKernel(Params<E> p, int64_t rows) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows)
    return;
  const int lane = threadIdx.x & 31;
  const int h = int((row / p.Tq) % p.H);
  const int64_t at = p.off(row / p.Tq, row % p.Tq, p.Tq, p.D); // Tq == Tk
  const E *qr = p.q + at, *kr = p.k + at;
  const float *w = p.wg + int64_t(h) * 2 * p.D;
  double z = 0.0;
  for (int d = lane; d < p.D; d += 32)
    z += double(toFloat(qr[d])) * double(w[d]) +
         double(toFloat(kr[d])) * double(w[p.D + d]);
  for (int o = 16; o > 0; o >>= 1)
    z += __shfl_xor_sync(0xffffffffu, z, o);
  if (lane == 0)
    p.gateOut[row] = 1.f / (1.f + expf(-float(z + double(p.bg[h]))));
}

/// Row `row`'s backward-prep outputs from e = dout . out and the gate g:
/// the lse the backward kernels use (+inf where the row gets no gradient),
/// delta, and the gate logit's gradient dz (gated).
__device__ __forceinline__ void finishPrepRow(int64_t row, bool active,
                                              bool gated, double g, double e,
                                              const float *lse, float *lseEff,
                                              float *delta, float *dz) {
  const float l = lse[row];
  const bool on = active && l != -INFINITY;
  lseEff[row] = on ? l : INFINITY;
  delta[row] = on ? float(gated ? g * e : e) : 0.f;
  if (gated)
    dz[row] = active ? float(e * g * (1.0 - g)) : 0.f;
}

/// Per query row: e = dout . out (double); delta = dO . out for the gradient
/// dO flowing into out (dout, or g dout when gated); lseEff = lse, or +inf
/// for a row that gets no gradient (skipped by the gate, or seeing no key);
/// gated: dz = e g (1 - g), dattn = g dout (0 on skipped rows).
template <class E>
__global__ void backwardPrepKernel(Params<E> p, const E *dout, const E *out,
                                   const float *lse, float *lseEff,
                                   float *delta, float *dz, E *dattn,
                                   int64_t rows) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows)
    return;
  const int lane = threadIdx.x & 31;
  const int64_t at = p.off(row / p.Tq, row % p.Tq, p.Tq, p.Dv);
  const E *dr = dout + at, *orow = out + at;
  double e = 0.0;
  for (int c = lane; c < p.Dv; c += 32)
    e += double(toFloat(dr[c])) * double(toFloat(orow[c]));
  for (int o = 16; o > 0; o >>= 1)
    e += __shfl_xor_sync(0xffffffffu, e, o);
  const bool gated = p.gate != nullptr;
  const bool active = rowActive(p, row);
  const double g = gated && active ? double(p.gate[row]) : 1.0;
  if (gated) {
    const float gf = active ? float(g) : 0.f;
    E *ar = dattn + at;
    for (int c = lane; c < p.Dv; c += 32)
      storeAs(ar + c, gf * toFloat(dr[c]));
  }
  if (lane != 0)
    return;
  finishPrepRow(row, active, gated, g, e, lse, lseEff, delta, dz);
}

//--- bf16 row kernels with 16-byte accesses ---------------------------------
// The two kernels above with one warp per row move 2 bytes a lane per load
// (73 us each for B16 H12 T1024 D64 on an H200, a fifth of the bandwidth).
// Here L = D / 8 lanes share a row, each holding 8 consecutive elements in
// one 16-byte load; a row's lane sums are added by an L-lane butterfly. The
// bf16 path requires 16-byte aligned tensors and D in {32, 64, 128}.

/// The 8 bf16 of a 16-byte load, widened.
__device__ __forceinline__ void unpack8(const uint4 &u, float (&f)[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

/// Adds v over the L lanes of a row group (L a power of two <= 32).
template <int L> __device__ __forceinline__ double rowGroupSum(double v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// gateKernel for bf16, L = D / 8 lanes a row.
template <int L>
__global__ void gateVecKernel(Params<bf16> p, int64_t rows) {
  constexpr int D = 8 * L;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / L;
  const int sub = int(threadIdx.x % L);
  const bool live = row < rows; // Dead lanes still join the shuffles.
  double z = 0.0;
  int h = 0;
  if (live) {
    h = int((row / p.Tq) % p.H);
    const int64_t at = p.off(row / p.Tq, row % p.Tq, p.Tq, D) + 8 * sub;
    float q[8], k[8];
    unpack8(*reinterpret_cast<const uint4 *>(p.q + at), q);
    unpack8(*reinterpret_cast<const uint4 *>(p.k + at), k);
    const float *w = p.wg + int64_t(h) * 2 * D + 8 * sub;
#pragma unroll
    for (int e = 0; e < 8; ++e)
      z += double(q[e]) * double(w[e]) + double(k[e]) * double(w[D + e]);
  }
  z = rowGroupSum<L>(z);
  if (live && sub == 0)
    p.gateOut[row] = 1.f / (1.f + expf(-float(z + double(p.bg[h]))));
}

/// backwardPrepKernel for bf16, L = Dv / 8 lanes a row.
template <int L>
__global__ void backwardPrepVecKernel(Params<bf16> p, const bf16 *dout,
                                      const bf16 *out, const float *lse,
                                      float *lseEff, float *delta, float *dz,
                                      bf16 *dattn, int64_t rows) {
  constexpr int Dv = 8 * L;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / L;
  const int sub = int(threadIdx.x % L);
  const bool live = row < rows;
  double e = 0.0;
  float d[8];
  int64_t at = 0;
  if (live) {
    at = p.off(row / p.Tq, row % p.Tq, p.Tq, Dv) + 8 * sub;
    float o[8];
    unpack8(*reinterpret_cast<const uint4 *>(dout + at), d);
    unpack8(*reinterpret_cast<const uint4 *>(out + at), o);
#pragma unroll
    for (int c = 0; c < 8; ++c)
      e += double(d[c]) * double(o[c]);
  }
  e = rowGroupSum<L>(e);
  if (!live)
    return;
  const bool gated = p.gate != nullptr;
  const bool active = rowActive(p, row);
  const double g = gated && active ? double(p.gate[row]) : 1.0;
  if (gated) {
    const float gf = active ? float(g) : 0.f;
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bf16 lo = __float2bfloat16_rn(gf * d[2 * i]);
      const bf16 hi = __float2bfloat16_rn(gf * d[2 * i + 1]);
      w[i] = uint32_t(__bfloat16_as_ushort(lo)) |
             (uint32_t(__bfloat16_as_ushort(hi)) << 16);
    }
    *reinterpret_cast<uint4 *>(dattn + at) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  if (sub != 0)
    return;
  finishPrepRow(row, active, gated, g, e, lse, lseEff, delta, dz);
}

/// partial[(bh * chunks + chunk) * (2D+1) + j] = sum over the chunk's t of
/// dz[bh,t] * [q; k; 1][bh,t,j], in double, t in increasing order.
template <class E>
__global__ void gateGradPartialKernel(Params<E> p, double *partial,
                                      int chunks) {
  const int64_t bh = blockIdx.x;
  const int chunk = blockIdx.y;
  const int T = p.Tq, D = p.D, width = 2 * D + 1;
  const int t0 = chunk * kGateChunk, t1 = min(T, t0 + kGateChunk);
  const float *dz = p.dz + bh * T;
  const int64_t stride = p.rowStride(D);
  for (int j = threadIdx.x; j < width; j += blockDim.x) {
    double s = 0.0;
    if (j == 2 * D) {
      for (int t = t0; t < t1; ++t)
        s += double(dz[t]);
    } else {
      // Column j of q (j < D) or of k; the loads are independent of the
      // running sum, so the unrolled loop keeps 8 of them in flight (one at
      // a time took 104 us for B16 H12 T1024 D64).
      const E *x = (j < D ? p.q + j : p.k + (j - D)) + p.off(bh, 0, T, D);
#pragma unroll 8
      for (int t = t0; t < t1; ++t)
        s += double(dz[t]) * double(toFloat(x[int64_t(t) * stride]));
    }
    partial[(bh * chunks + chunk) * width + j] = s;
  }
}

/// dwg[h, j] / dbg[h]: the partial sums over b and chunks. One warp per
/// output: lane l adds the partials l, l + 32, ... of the (b, chunk) order,
/// then a fixed butterfly adds the lanes (a thread per output adding its 256
/// partials serially took 38 us).
__global__ void gateGradFinalKernel(const double *partial, int B, int H,
                                    int chunks, int D, float *dwg,
                                    float *dbg) {
  const int width = 2 * D + 1;
  const int idx = int((int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32);
  if (idx >= H * width)
    return;
  const int lane = threadIdx.x & 31;
  const int h = idx / width, j = idx % width;
  double s = 0.0;
  for (int i = lane; i < B * chunks; i += 32) {
    const int b = i / chunks, c = i % chunks;
    s += partial[((int64_t(b) * H + h) * chunks + c) * width + j];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane != 0)
    return;
  if (j < 2 * D)
    dwg[h * 2 * D + j] = float(s);
  else
    dbg[h] = float(s);
}

//===----------------------------------------------------------------------===//
// fp32 kernels (CUDA cores): 32x32 tiles, 128 threads, 4 threads per row
//===----------------------------------------------------------------------===//

constexpr int kF32Threads = 128;
constexpr int kF32Block = 32;

/// Rows [r0, r0 + 32) x columns [0, DM) of a [rows, cols] matrix into a
/// shared tile with leading dimension DM + 1, zero outside.
template <int DM>
__device__ __forceinline__ void loadTileF32(float *s, const float *g, int r0,
                                            int rows, int cols) {
  constexpr int LD = DM + 1;
  for (int x = threadIdx.x; x < kF32Block * DM; x += kF32Threads) {
    const int rr = x / DM, c = x % DM;
    s[rr * LD + c] =
        r0 + rr < rows && c < cols ? g[int64_t(r0 + rr) * cols + c] : 0.f;
  }
}

template <int DM> constexpr size_t forwardF32Smem() {
  return (3 * kF32Block * (DM + 1) + kF32Block * (kF32Block + 1)) *
         sizeof(float);
}

template <int DM>
__global__ void __launch_bounds__(kF32Threads)
    forwardF32Kernel(Params<float> p) {
  constexpr int BM = kF32Block, BN = kF32Block, LD = DM + 1, LP = BN + 1;
  constexpr int NC = DM / 4;
  extern __shared__ float smemF[];
  float *Qs = smemF, *Ks = Qs + BM * LD, *Vs = Ks + BN * LD,
        *Ps = Vs + BN * LD;
  __shared__ int blockKeys;
  const int tid = threadIdx.x, r = tid >> 2, sub = tid & 3;
  const int64_t bh = blockIdx.x;
  const int i0 = int(gridDim.y - 1 - blockIdx.y) * BM, i = i0 + r;
  const int64_t row = bh * p.Tq + i;
  const bool valid = i < p.Tq;
  const int nvis =
      valid && rowActive(p, row) ? visibleKeys(p.causal, p.Tq, p.Tk, i) : 0;
  if (tid == 0)
    blockKeys = 0;
  __syncthreads();
  if (sub == 0 && nvis > 0)
    atomicMax(&blockKeys, nvis);
  const float *q = p.q + bh * p.Tq * p.D, *k = p.k + bh * p.Tk * p.D,
              *v = p.v + bh * p.Tk * p.Dv;
  loadTileF32<DM>(Qs, q, i0, p.Tq, p.D);
  __syncthreads();
  const int nKeys = blockKeys;
  const float c = p.scale * kLog2e;
  float m = -INFINITY, l = 0.f, o[NC];
#pragma unroll
  for (int cc = 0; cc < NC; ++cc)
    o[cc] = 0.f;
  for (int j0 = 0; j0 < nKeys; j0 += BN) {
    __syncthreads(); // The previous tiles are consumed.
    loadTileF32<DM>(Ks, k, j0, p.Tk, p.D);
    loadTileF32<DM>(Vs, v, j0, p.Tk, p.Dv);
    __syncthreads();
    float s[BN / 4], mx = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < BN / 4; ++jj) {
      const int jl = sub + 4 * jj;
      float acc = 0.f;
#pragma unroll 16
      for (int d = 0; d < DM; ++d)
        acc = fmaf(Qs[r * LD + d], Ks[jl * LD + d], acc);
      s[jj] = j0 + jl < nvis ? acc * c : -INFINITY;
      mx = fmaxf(mx, s[jj]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mNew = fmaxf(m, mx), mUse = mNew == -INFINITY ? 0.f : mNew;
    const float alpha = exp2f(m - mUse);
    float rs = 0.f;
#pragma unroll
    for (int jj = 0; jj < BN / 4; ++jj) {
      const float e = exp2f(s[jj] - mUse);
      Ps[r * LP + sub + 4 * jj] = e;
      rs += e;
    }
    l = l * alpha + rs;
    m = mNew;
    __syncwarp();
#pragma unroll
    for (int cc = 0; cc < NC; ++cc)
      o[cc] *= alpha;
#pragma unroll 4
    for (int j = 0; j < BN; ++j) {
      const float pj = Ps[r * LP + j];
#pragma unroll
      for (int cc = 0; cc < NC; ++cc)
        o[cc] = fmaf(pj, Vs[j * LD + sub + 4 * cc], o[cc]);
    }
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (!valid)
    return;
  const bool any = l > 0.f;
  const float inv = any ? 1.f / l : 0.f;
  const float g = p.gatedOut ? p.gate[row] : 0.f;
#pragma unroll
  for (int cc = 0; cc < NC; ++cc) {
    const int col = sub + 4 * cc;
    if (col < p.Dv) {
      const float val = any ? o[cc] * inv : 0.f;
      p.out[row * p.Dv + col] = val;
      if (p.gatedOut)
        p.gatedOut[row * p.Dv + col] = g * val;
    }
  }
  if (sub == 0 && p.lse)
    p.lse[row] = any ? m * kLn2 + logf(l) : -INFINITY;
}

template <int DM> constexpr size_t dkdvF32Smem() {
  return (4 * kF32Block * (DM + 1) + 2 * kF32Block * (kF32Block + 1) +
          2 * kF32Block) *
         sizeof(float);
}

/// dk, dv of one key block: loops over the query blocks that see it.
template <int DM>
__global__ void __launch_bounds__(kF32Threads) dkdvF32Kernel(Params<float> p) {
  constexpr int BN = kF32Block, BQ = kF32Block, LD = DM + 1, LP = BQ + 1;
  constexpr int NC = DM / 4;
  extern __shared__ float smemF[];
  float *Ks = smemF, *Vs = Ks + BN * LD, *Qs = Vs + BN * LD,
        *Os = Qs + BQ * LD, *Pt = Os + BQ * LD, *St = Pt + BN * LP,
        *lseS = St + BN * LP, *delS = lseS + BQ;
  const int tid = threadIdx.x, jr = tid >> 2, sub = tid & 3;
  const int64_t bh = blockIdx.x;
  const int j0 = blockIdx.y * BN, j = j0 + jr, off = p.Tk - p.Tq;
  const float *q = p.q + bh * p.Tq * p.D, *k = p.k + bh * p.Tk * p.D,
              *v = p.v + bh * p.Tk * p.Dv, *dO = p.dO + bh * p.Tq * p.Dv;
  loadTileF32<DM>(Ks, k, j0, p.Tk, p.D);
  loadTileF32<DM>(Vs, v, j0, p.Tk, p.Dv);
  int iStart = p.causal ? max(0, j0 - off) : 0;
  iStart = iStart / BQ * BQ;
  const float c = p.scale * kLog2e;
  float dk[NC], dv[NC];
#pragma unroll
  for (int cc = 0; cc < NC; ++cc)
    dk[cc] = dv[cc] = 0.f;
  for (int i0 = iStart; i0 < p.Tq; i0 += BQ) {
    __syncthreads(); // The previous tiles are consumed.
    loadTileF32<DM>(Qs, q, i0, p.Tq, p.D);
    loadTileF32<DM>(Os, dO, i0, p.Tq, p.Dv);
    if (tid < BQ) {
      const bool in = i0 + tid < p.Tq;
      lseS[tid] = in ? p.lseEff[bh * p.Tq + i0 + tid] * kLog2e : INFINITY;
      delS[tid] = in ? p.delta[bh * p.Tq + i0 + tid] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int ii = 0; ii < BQ / 4; ++ii) {
      const int il = sub + 4 * ii, i = i0 + il;
      float s = 0.f, dp = 0.f;
#pragma unroll 16
      for (int d = 0; d < DM; ++d) {
        s = fmaf(Ks[jr * LD + d], Qs[il * LD + d], s);
        dp = fmaf(Vs[jr * LD + d], Os[il * LD + d], dp);
      }
      const bool vis =
          i < p.Tq && j < p.Tk && (!p.causal || j <= i + off);
      const float pr = vis ? exp2f(s * c - lseS[il]) : 0.f;
      Pt[jr * LP + il] = pr;
      St[jr * LP + il] = pr * (dp - delS[il]) * p.scale;
    }
    __syncwarp();
#pragma unroll 4
    for (int il = 0; il < BQ; ++il) {
      const float pv = Pt[jr * LP + il], sv = St[jr * LP + il];
#pragma unroll
      for (int cc = 0; cc < NC; ++cc) {
        dv[cc] = fmaf(pv, Os[il * LD + sub + 4 * cc], dv[cc]);
        dk[cc] = fmaf(sv, Qs[il * LD + sub + 4 * cc], dk[cc]);
      }
    }
  }
  if (j >= p.Tk)
    return;
  const int64_t krow = bh * p.Tk + j;
  const float z = p.dz ? p.dz[krow] : 0.f;
  const float *w = p.dz ? p.wg + int64_t(bh % p.H) * 2 * p.D + p.D : nullptr;
#pragma unroll
  for (int cc = 0; cc < NC; ++cc) {
    const int col = sub + 4 * cc;
    if (col < p.D)
      p.dk[krow * p.D + col] = p.dz ? dk[cc] + z * w[col] : dk[cc];
    if (col < p.Dv)
      p.dv[krow * p.Dv + col] = dv[cc];
  }
}

template <int DM> constexpr size_t dqF32Smem() {
  return (4 * kF32Block * (DM + 1) + kF32Block * (kF32Block + 1)) *
         sizeof(float);
}

/// dq of one query block: loops over the key blocks it sees.
template <int DM>
__global__ void __launch_bounds__(kF32Threads) dqF32Kernel(Params<float> p) {
  constexpr int BM = kF32Block, BN = kF32Block, LD = DM + 1, LP = BN + 1;
  constexpr int NC = DM / 4;
  extern __shared__ float smemF[];
  float *Qs = smemF, *Os = Qs + BM * LD, *Ks = Os + BM * LD,
        *Vs = Ks + BN * LD, *Ss = Vs + BN * LD;
  __shared__ int blockKeys;
  const int tid = threadIdx.x, r = tid >> 2, sub = tid & 3;
  const int64_t bh = blockIdx.x;
  const int i0 = int(gridDim.y - 1 - blockIdx.y) * BM, i = i0 + r;
  const int64_t row = bh * p.Tq + i;
  const bool valid = i < p.Tq;
  const float lseRow = valid ? p.lseEff[row] : INFINITY;
  const float lse2 = lseRow * kLog2e, del = valid ? p.delta[row] : 0.f;
  const int nvis =
      lseRow != INFINITY ? visibleKeys(p.causal, p.Tq, p.Tk, i) : 0;
  if (tid == 0)
    blockKeys = 0;
  __syncthreads();
  if (sub == 0 && nvis > 0)
    atomicMax(&blockKeys, nvis);
  const float *q = p.q + bh * p.Tq * p.D, *k = p.k + bh * p.Tk * p.D,
              *v = p.v + bh * p.Tk * p.Dv, *dO = p.dO + bh * p.Tq * p.Dv;
  loadTileF32<DM>(Qs, q, i0, p.Tq, p.D);
  loadTileF32<DM>(Os, dO, i0, p.Tq, p.Dv);
  __syncthreads();
  const int nKeys = blockKeys;
  const float c = p.scale * kLog2e;
  float dq[NC];
#pragma unroll
  for (int cc = 0; cc < NC; ++cc)
    dq[cc] = 0.f;
  for (int j0 = 0; j0 < nKeys; j0 += BN) {
    __syncthreads();
    loadTileF32<DM>(Ks, k, j0, p.Tk, p.D);
    loadTileF32<DM>(Vs, v, j0, p.Tk, p.Dv);
    __syncthreads();
#pragma unroll
    for (int jj = 0; jj < BN / 4; ++jj) {
      const int jl = sub + 4 * jj;
      float s = 0.f, dp = 0.f;
#pragma unroll 16
      for (int d = 0; d < DM; ++d) {
        s = fmaf(Qs[r * LD + d], Ks[jl * LD + d], s);
        dp = fmaf(Os[r * LD + d], Vs[jl * LD + d], dp);
      }
      const float pr = j0 + jl < nvis ? exp2f(s * c - lse2) : 0.f;
      Ss[r * LP + jl] = pr * (dp - del) * p.scale;
    }
    __syncwarp();
#pragma unroll 4
    for (int jl = 0; jl < BN; ++jl) {
      const float sv = Ss[r * LP + jl];
#pragma unroll
      for (int cc = 0; cc < NC; ++cc)
        dq[cc] = fmaf(sv, Ks[jl * LD + sub + 4 * cc], dq[cc]);
    }
  }
  if (!valid)
    return;
  const float z = p.dz ? p.dz[row] : 0.f;
  const float *w = p.dz ? p.wg + int64_t(bh % p.H) * 2 * p.D : nullptr;
#pragma unroll
  for (int cc = 0; cc < NC; ++cc) {
    const int col = sub + 4 * cc;
    if (col < p.D)
      p.dq[row * p.D + col] = p.dz ? dq[cc] + z * w[col] : dq[cc];
  }
}

//===----------------------------------------------------------------------===//
// bf16 kernels (tensor cores: mma.sync m16n8k16, fp32 accumulation)
//===----------------------------------------------------------------------===//
//
// Fragments (PTX ISA, mma.m16n8k16 .bf16): with g = lane / 4, t = lane % 4,
// A (16x16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..),
// a3 = (g+8, 2t+8..); B (16x8, col): b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..,
// n g); C (16x8): c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1). So the C
// fragments of n-tiles 2s and 2s+1 are, converted to bf16, the A fragment of
// k-step s: P and dS never leave the registers.
//
// Shared tiles are [rows][D + 8] bf16: the 16-byte pad puts the 8 rows an
// ldmatrix phase reads in distinct banks.

__device__ __forceinline__ uint32_t smemAddr(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cpAsync16(uint32_t dst, const void *src,
                                          bool valid) {
  // src-size 0 zero-fills the 16 bytes (rows past the end of the tensor).
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cpAsync4(uint32_t dst, const void *src,
                                         bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst),
               "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cpAsyncWaitAll() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldsm4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&c)[4],
                                         const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0),
                 "r"(b1));
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t *>(&v);
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

/// Shared address of the A-operand 16x16 block (or the transposed-B block,
/// same addressing) at (r0, c0) of a [rows][LD] tile.
template <int LD>
__device__ __forceinline__ uint32_t fragA(const bf16 *s, int r0, int c0,
                                          int lane) {
  return smemAddr(s + (r0 + (lane & 15)) * LD + c0 + (lane >> 4) * 8);
}
/// Shared address of the B operand (non-transposed: the tile's rows are the
/// n index) for the n-tiles (n0, n0+8) and k-step at c0.
template <int LD>
__device__ __forceinline__ uint32_t fragB(const bf16 *s, int n0, int c0,
                                          int lane) {
  return smemAddr(s + (n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + c0 +
                  ((lane >> 3) & 1) * 8);
}

/// Rows [r0, r0 + ROWS) of a [rows, D] bf16 matrix whose rows are `ld`
/// elements apart into a [ROWS][D + 8] tile (cp.async, zero-filled past
/// `rows`).
template <int ROWS, int D, int NT>
__device__ __forceinline__ void loadTileBf16(bf16 *s, const bf16 *g, int r0,
                                             int rows, int64_t ld) {
  constexpr int CH = D / 8, LD = D + 8;
#pragma unroll
  for (int x = threadIdx.x; x < ROWS * CH; x += NT) {
    const int rr = x / CH, ch = x % CH;
    const bool ok = r0 + rr < rows;
    const bf16 *src = g + (ok ? int64_t(r0 + rr) * ld + ch * 8 : 0);
    cpAsync16(smemAddr(s + rr * LD + ch * 8), src, ok);
  }
}

template <int D, int NW, int MT> constexpr size_t forwardBf16Smem() {
  return size_t(16 * NW * MT + 4 * 64) * (D + 8) * sizeof(bf16);
}

/// Forward of one block of 16 NW MT query rows: each warp owns MT m-tiles
/// of 16 rows, so that every K and V fragment read from shared memory feeds
/// MT products.
template <int D, int NW, int MT>
__global__ void __launch_bounds__(NW * 32)
    forwardBf16Kernel(Params<bf16> p) {
  constexpr int BM = 16 * NW * MT, BN = 64, LD = D + 8, NT = NW * 32;
  constexpr int KT = D / 16, NTD = D / 8, NTS = BN / 8;
  extern __shared__ __align__(16) unsigned char smemB[];
  bf16 *Qs = reinterpret_cast<bf16 *>(smemB), *Ks = Qs + BM * LD,
       *Vs = Ks + 2 * BN * LD;
  __shared__ int blockKeys;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.x;
  const int i0 = int(gridDim.y - 1 - blockIdx.y) * BM;
  const int w0 = warp * 16 * MT; // The warp's first row within the block.
  const int Tq = p.Tq, Tk = p.Tk;
  // Keys each of the thread's rows (m-tile mt, half h: row g or g + 8) sees.
  int nv[MT][2];
  int lo = INT32_MAX, hi = 0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = i0 + w0 + mt * 16 + g + 8 * h;
      nv[mt][h] = row < Tq && rowActive(p, bh * Tq + row)
                      ? visibleKeys(p.causal, Tq, Tk, row)
                      : 0;
      lo = min(lo, nv[mt][h]);
      hi = max(hi, nv[mt][h]);
    }
  const int warpMax = __reduce_max_sync(0xffffffffu, hi);
  const int warpMin = __reduce_min_sync(0xffffffffu, lo);
  if (tid == 0)
    blockKeys = 0;
  __syncthreads();
  if (lane == 0 && warpMax > 0)
    atomicMax(&blockKeys, warpMax);
  const int64_t ld = p.rowStride(D); // D == Dv
  const bf16 *q = p.q + p.off(bh, 0, Tq, D), *k = p.k + p.off(bh, 0, Tk, D),
             *v = p.v + p.off(bh, 0, Tk, D);
  loadTileBf16<BM, D, NT>(Qs, q, i0, Tq, ld);
  __syncthreads(); // blockKeys is final.
  const int nBlocks = (blockKeys + BN - 1) / BN;
  if (nBlocks > 0) {
    loadTileBf16<BN, D, NT>(Ks, k, 0, Tk, ld);
    loadTileBf16<BN, D, NT>(Vs, v, 0, Tk, ld);
  }
  cpAsyncCommit();
  const float c = p.scale * kLog2e;
  uint32_t qf[MT][KT][4];
  float o[MT][NTD][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int n = 0; n < NTD; ++n)
      o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  for (int jb = 0; jb < nBlocks; ++jb) {
    cpAsyncWaitAll();
    __syncthreads(); // Block jb landed; block jb-1's buffer is free.
    if (jb == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < KT; ++kk)
          ldsm4(fragA<LD>(Qs, w0 + mt * 16, kk * 16, lane), qf[mt][kk]);
    }
    if (jb + 1 < nBlocks) {
      const int nb = (jb + 1) & 1;
      loadTileBf16<BN, D, NT>(Ks + nb * BN * LD, k, (jb + 1) * BN, Tk, ld);
      loadTileBf16<BN, D, NT>(Vs + nb * BN * LD, v, (jb + 1) * BN, Tk, ld);
      cpAsyncCommit();
    }
    const int j0 = jb * BN;
    if (j0 >= warpMax)
      continue; // This warp's rows see none of these keys.
    const bf16 *Kc = Ks + (jb & 1) * BN * LD, *Vc = Vs + (jb & 1) * BN * LD;
    float s[MT][NTS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NTS; ++n)
        s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk)
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t b[4];
        ldsm4(fragB<LD>(Kc, np * 16, kk * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(s[mt][2 * np], qf[mt][kk], b[0], b[1]);
          mma16816(s[mt][2 * np + 1], qf[mt][kk], b[2], b[3]);
        }
      }
    const bool mask = j0 + BN > warpMin;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {m[mt][0], m[mt][1]};
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][n][e] * c;
          if (mask && j0 + n * 8 + 2 * t4 + (e & 1) >= nv[mt][e >> 1])
            x = -INFINITY;
          s[mt][n][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
      float u[2], rs[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        u[h] = mx[h] == -INFINITY ? 0.f : mx[h];
      }
      const float alpha[2] = {ex2(m[mt][0] - u[0]), ex2(m[mt][1] - u[1])};
      m[mt][0] = mx[0];
      m[mt][1] = mx[1];
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][n][e] = ex2(s[mt][n][e] - u[e >> 1]);
          rs[e >> 1] += s[mt][n][e];
        }
      l[mt][0] = l[mt][0] * alpha[0] + rs[0];
      l[mt][1] = l[mt][1] * alpha[1] + rs[1];
#pragma unroll
      for (int n = 0; n < NTD; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          o[mt][n][e] *= alpha[e >> 1];
    }
#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = packBf16(s[mt][2 * ks][0], s[mt][2 * ks][1]);
        a[mt][1] = packBf16(s[mt][2 * ks][2], s[mt][2 * ks][3]);
        a[mt][2] = packBf16(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
        a[mt][3] = packBf16(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm4t(fragA<LD>(Vc, ks * 16, np * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(o[mt][2 * np], a[mt], b[0], b[1]);
          mma16816(o[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cpAsyncWaitAll();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = i0 + w0 + mt * 16 + g + 8 * h;
      if (row >= Tq)
        continue;
      const bool any = sum > 0.f;
      const float inv = any ? 1.f / sum : 0.f;
      const int64_t flat = bh * Tq + row, at = p.off(bh, row, Tq, D);
      const float gv = p.gatedOut ? p.gate[flat] : 0.f;
#pragma unroll
      for (int n = 0; n < NTD; ++n) {
        const int col = n * 8 + 2 * t4;
        const float v0 = any ? o[mt][n][2 * h] * inv : 0.f;
        const float v1 = any ? o[mt][n][2 * h + 1] * inv : 0.f;
        *reinterpret_cast<uint32_t *>(p.out + at + col) = packBf16(v0, v1);
        if (p.gatedOut)
          *reinterpret_cast<uint32_t *>(p.gatedOut + at + col) =
              packBf16(gv * v0, gv * v1);
      }
      if (t4 == 0 && p.lse)
        p.lse[flat] = any ? m[mt][h] * kLn2 + logf(sum) : -INFINITY;
    }
}

template <int D, int NW, int MT, int BQ> constexpr size_t dkdvBf16Smem() {
  return size_t(2 * 16 * NW * MT + 4 * BQ) * (D + 8) * sizeof(bf16) +
         4 * BQ * sizeof(float);
}

/// dk, dv of one block of 16 NW MT keys (a warp per 16 MT keys), looping
/// over the query blocks of BQ rows that see it. KV_REGS keeps the warp's K
/// and V fragments in registers; else they are re-read from shared memory.
template <int D, int NW, int MT, int BQ, bool KV_REGS>
__global__ void __launch_bounds__(NW * 32) dkdvBf16Kernel(Params<bf16> p) {
  constexpr int BN = 16 * NW * MT, LD = D + 8, NT = NW * 32;
  constexpr int KT = D / 16, NTD = D / 8, NTQ = BQ / 8;
  constexpr int KR = KV_REGS ? KT : 1, MR = KV_REGS ? MT : 1;
  extern __shared__ __align__(16) unsigned char smemB[];
  bf16 *Ks = reinterpret_cast<bf16 *>(smemB), *Vs = Ks + BN * LD,
       *Qs = Vs + BN * LD, *Os = Qs + 2 * BQ * LD;
  float *lseS = reinterpret_cast<float *>(Os + 2 * BQ * LD),
        *delS = lseS + 2 * BQ;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.x;
  const int Tq = p.Tq, Tk = p.Tk, off = Tk - Tq;
  const int j0 = blockIdx.y * BN, wl = warp * 16 * MT, jw = j0 + wl;
  const int64_t ld = p.rowStride(D); // D == Dv
  const bf16 *q = p.q + p.off(bh, 0, Tq, D), *k = p.k + p.off(bh, 0, Tk, D),
             *v = p.v + p.off(bh, 0, Tk, D), *dO = p.dO + p.off(bh, 0, Tq, D);
  const float *lseG = p.lseEff + bh * Tq, *delG = p.delta + bh * Tq;
  int iStart = p.causal ? max(0, j0 - off) : 0;
  iStart = iStart / BQ * BQ;
  const int nQ = Tq > iStart ? (Tq - iStart + BQ - 1) / BQ : 0;
  loadTileBf16<BN, D, NT>(Ks, k, j0, Tk, ld);
  loadTileBf16<BN, D, NT>(Vs, v, j0, Tk, ld);
  auto loadQueries = [&](int i0, int buf) {
    loadTileBf16<BQ, D, NT>(Qs + buf * BQ * LD, q, i0, Tq, ld);
    loadTileBf16<BQ, D, NT>(Os + buf * BQ * LD, dO, i0, Tq, ld);
    // lse and delta by cp.async too (zeros past Tq, where the masked tile
    // path leaves the queries out): a plain load here stalled its warp for
    // a global round trip before the block's products.
    for (int x = tid; x < 2 * BQ; x += NT) {
      const bool isLse = x < BQ;
      const int xi = isLse ? x : x - BQ;
      const bool in = i0 + xi < Tq;
      const float *src = (isLse ? lseG : delG) + (in ? i0 + xi : 0);
      cpAsync4(smemAddr((isLse ? lseS : delS) + buf * BQ + xi), src, in);
    }
  };
  if (nQ > 0)
    loadQueries(iStart, 0);
  cpAsyncCommit();
  const float c = p.scale * kLog2e;
  uint32_t kf[MR][KR][4], vf[MR][KR][4];
  float dk[MT][NTD][4], dv[MT][NTD][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int n = 0; n < NTD; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dk[mt][n][e] = dv[mt][n][e] = 0.f;
  const bool warpLive = jw < Tk;
  for (int qb = 0; qb < nQ; ++qb) {
    const int i0 = iStart + qb * BQ, buf = qb & 1;
    cpAsyncWaitAll();
    __syncthreads(); // Block qb landed; block qb-1's buffers are free.
    if (KV_REGS && qb == 0) {
#pragma unroll
      for (int mt = 0; mt < MR; ++mt)
#pragma unroll
        for (int kk = 0; kk < KR; ++kk) {
          ldsm4(fragA<LD>(Ks, wl + mt * 16, kk * 16, lane), kf[mt][kk]);
          ldsm4(fragA<LD>(Vs, wl + mt * 16, kk * 16, lane), vf[mt][kk]);
        }
    }
    if (qb + 1 < nQ) {
      loadQueries(i0 + BQ, buf ^ 1);
      cpAsyncCommit();
    }
    // Causal: the warp's keys are seen only by queries >= jw - off.
    if (!warpLive || (p.causal && i0 + BQ - 1 < jw - off))
      continue;
    const bf16 *Qc = Qs + buf * BQ * LD, *Oc = Os + buf * BQ * LD;
    const float *lseC = lseS + buf * BQ, *delC = delS + buf * BQ;
    float st[MT][NTQ][4], dpt[MT][NTQ][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NTQ; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          st[mt][n][e] = dpt[mt][n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t ak[MT][4], av[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (KV_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            ak[mt][e] = kf[KV_REGS ? mt : 0][KV_REGS ? kk : 0][e];
            av[mt][e] = vf[KV_REGS ? mt : 0][KV_REGS ? kk : 0][e];
          }
        } else {
          ldsm4(fragA<LD>(Ks, wl + mt * 16, kk * 16, lane), ak[mt]);
          ldsm4(fragA<LD>(Vs, wl + mt * 16, kk * 16, lane), av[mt]);
        }
      }
#pragma unroll
      for (int np = 0; np < BQ / 16; ++np) {
        uint32_t b[4];
        ldsm4(fragB<LD>(Qc, np * 16, kk * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(st[mt][2 * np], ak[mt], b[0], b[1]);
          mma16816(st[mt][2 * np + 1], ak[mt], b[2], b[3]);
        }
        ldsm4(fragB<LD>(Oc, np * 16, kk * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(dpt[mt][2 * np], av[mt], b[0], b[1]);
          mma16816(dpt[mt][2 * np + 1], av[mt], b[2], b[3]);
        }
      }
    }
    // The thread's queries are n * 8 + 2 * t4 + {0, 1}: their lse and
    // delta as one 8-byte shared load per pair, shared by the m-tiles.
    float2 lseR[NTQ], delR[NTQ];
#pragma unroll
    for (int n = 0; n < NTQ; ++n) {
      lseR[n] = *reinterpret_cast<const float2 *>(lseC + n * 8 + 2 * t4);
      lseR[n].x *= kLog2e;
      lseR[n].y *= kLog2e;
      delR[n] = *reinterpret_cast<const float2 *>(delC + n * 8 + 2 * t4);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int jt = jw + mt * 16; // The m-tile's first key.
      // Warp-uniform: a tile wholly inside the sequence and the causal
      // mask takes no per-element test (all but the diagonal tiles).
      const bool full = i0 + BQ <= Tq && jt + 16 <= Tk &&
                        (!p.causal || jt + 15 <= i0 + off);
      if (full) {
#pragma unroll
        for (int n = 0; n < NTQ; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float l = (e & 1) ? lseR[n].y : lseR[n].x;
            const float dl = (e & 1) ? delR[n].y : delR[n].x;
            const float pr = ex2(st[mt][n][e] * c - l);
            st[mt][n][e] = pr;
            dpt[mt][n][e] = pr * (dpt[mt][n][e] - dl);
          }
      } else {
#pragma unroll
        for (int n = 0; n < NTQ; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int il = n * 8 + 2 * t4 + (e & 1), i = i0 + il;
            const int j = jt + g + 8 * (e >> 1);
            const bool vis = i < Tq && j < Tk && (!p.causal || j <= i + off);
            const float l = (e & 1) ? lseR[n].y : lseR[n].x;
            const float dl = (e & 1) ? delR[n].y : delR[n].x;
            const float pr = vis ? ex2(st[mt][n][e] * c - l) : 0.f;
            st[mt][n][e] = pr;
            dpt[mt][n][e] = pr * (dpt[mt][n][e] - dl);
          }
      }
    }
#pragma unroll
    for (int ks = 0; ks < BQ / 16; ++ks) {
      uint32_t ap[MT][4], as[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        ap[mt][0] = packBf16(st[mt][2 * ks][0], st[mt][2 * ks][1]);
        ap[mt][1] = packBf16(st[mt][2 * ks][2], st[mt][2 * ks][3]);
        ap[mt][2] = packBf16(st[mt][2 * ks + 1][0], st[mt][2 * ks + 1][1]);
        ap[mt][3] = packBf16(st[mt][2 * ks + 1][2], st[mt][2 * ks + 1][3]);
        as[mt][0] = packBf16(dpt[mt][2 * ks][0], dpt[mt][2 * ks][1]);
        as[mt][1] = packBf16(dpt[mt][2 * ks][2], dpt[mt][2 * ks][3]);
        as[mt][2] = packBf16(dpt[mt][2 * ks + 1][0], dpt[mt][2 * ks + 1][1]);
        as[mt][3] = packBf16(dpt[mt][2 * ks + 1][2], dpt[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm4t(fragA<LD>(Oc, ks * 16, np * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(dv[mt][2 * np], ap[mt], b[0], b[1]);
          mma16816(dv[mt][2 * np + 1], ap[mt], b[2], b[3]);
        }
        ldsm4t(fragA<LD>(Qc, ks * 16, np * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(dk[mt][2 * np], as[mt], b[0], b[1]);
          mma16816(dk[mt][2 * np + 1], as[mt], b[2], b[3]);
        }
      }
    }
  }
  cpAsyncWaitAll();
  const float *w = p.dz ? p.wg + int64_t(bh % p.H) * 2 * D + D : nullptr;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = jw + mt * 16 + g + 8 * h;
      if (j >= Tk)
        continue;
      const int64_t flat = bh * Tk + j, at = p.off(bh, j, Tk, D);
      const float z = p.dz ? p.dz[flat] : 0.f;
#pragma unroll
      for (int n = 0; n < NTD; ++n) {
        const int col = n * 8 + 2 * t4;
        float k0 = dk[mt][n][2 * h] * p.scale,
              k1 = dk[mt][n][2 * h + 1] * p.scale;
        if (w) {
          k0 += z * w[col];
          k1 += z * w[col + 1];
        }
        *reinterpret_cast<uint32_t *>(p.dk + at + col) = packBf16(k0, k1);
        *reinterpret_cast<uint32_t *>(p.dv + at + col) =
            packBf16(dv[mt][n][2 * h], dv[mt][n][2 * h + 1]);
      }
    }
}

template <int D, int NW, int MT, int BN> constexpr size_t dqBf16Smem() {
  return size_t(2 * 16 * NW * MT + 4 * BN) * (D + 8) * sizeof(bf16);
}

/// dq of one block of 16 NW MT query rows, looping over the key blocks of BN
/// keys it sees. QO_REGS keeps the warp's Q and dO fragments in registers.
template <int D, int NW, int MT, int BN, bool QO_REGS>
__global__ void __launch_bounds__(NW * 32) dqBf16Kernel(Params<bf16> p) {
  constexpr int BM = 16 * NW * MT, LD = D + 8, NT = NW * 32;
  constexpr int KT = D / 16, NTD = D / 8, NTS = BN / 8;
  constexpr int KR = QO_REGS ? KT : 1, MR = QO_REGS ? MT : 1;
  extern __shared__ __align__(16) unsigned char smemB[];
  bf16 *Qs = reinterpret_cast<bf16 *>(smemB), *Os = Qs + BM * LD,
       *Ks = Os + BM * LD, *Vs = Ks + 2 * BN * LD;
  __shared__ int blockKeys;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int64_t bh = blockIdx.x;
  const int Tq = p.Tq, Tk = p.Tk;
  const int i0 = int(gridDim.y - 1 - blockIdx.y) * BM, w0 = warp * 16 * MT;
  float l2[MT][2], del[MT][2];
  int nv[MT][2];
  int lo = INT32_MAX, hi = 0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = i0 + w0 + mt * 16 + g + 8 * h;
      const float lse = row < Tq ? p.lseEff[bh * Tq + row] : INFINITY;
      l2[mt][h] = lse * kLog2e;
      del[mt][h] = row < Tq ? p.delta[bh * Tq + row] : 0.f;
      nv[mt][h] = lse != INFINITY ? visibleKeys(p.causal, Tq, Tk, row) : 0;
      lo = min(lo, nv[mt][h]);
      hi = max(hi, nv[mt][h]);
    }
  const int warpMax = __reduce_max_sync(0xffffffffu, hi);
  const int warpMin = __reduce_min_sync(0xffffffffu, lo);
  if (tid == 0)
    blockKeys = 0;
  __syncthreads();
  if (lane == 0 && warpMax > 0)
    atomicMax(&blockKeys, warpMax);
  const int64_t ld = p.rowStride(D); // D == Dv
  const bf16 *q = p.q + p.off(bh, 0, Tq, D), *k = p.k + p.off(bh, 0, Tk, D),
             *v = p.v + p.off(bh, 0, Tk, D), *dO = p.dO + p.off(bh, 0, Tq, D);
  loadTileBf16<BM, D, NT>(Qs, q, i0, Tq, ld);
  loadTileBf16<BM, D, NT>(Os, dO, i0, Tq, ld);
  __syncthreads(); // blockKeys is final.
  const int nBlocks = (blockKeys + BN - 1) / BN;
  if (nBlocks > 0) {
    loadTileBf16<BN, D, NT>(Ks, k, 0, Tk, ld);
    loadTileBf16<BN, D, NT>(Vs, v, 0, Tk, ld);
  }
  cpAsyncCommit();
  const float c = p.scale * kLog2e;
  uint32_t qf[MR][KR][4], of[MR][KR][4];
  float dq[MT][NTD][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int n = 0; n < NTD; ++n)
      dq[mt][n][0] = dq[mt][n][1] = dq[mt][n][2] = dq[mt][n][3] = 0.f;
  for (int jb = 0; jb < nBlocks; ++jb) {
    cpAsyncWaitAll();
    __syncthreads();
    if (QO_REGS && jb == 0) {
#pragma unroll
      for (int mt = 0; mt < MR; ++mt)
#pragma unroll
        for (int kk = 0; kk < KR; ++kk) {
          ldsm4(fragA<LD>(Qs, w0 + mt * 16, kk * 16, lane), qf[mt][kk]);
          ldsm4(fragA<LD>(Os, w0 + mt * 16, kk * 16, lane), of[mt][kk]);
        }
    }
    if (jb + 1 < nBlocks) {
      const int nb = (jb + 1) & 1;
      loadTileBf16<BN, D, NT>(Ks + nb * BN * LD, k, (jb + 1) * BN, Tk, ld);
      loadTileBf16<BN, D, NT>(Vs + nb * BN * LD, v, (jb + 1) * BN, Tk, ld);
      cpAsyncCommit();
    }
    const int j0 = jb * BN;
    if (j0 >= warpMax)
      continue;
    const bf16 *Kc = Ks + (jb & 1) * BN * LD, *Vc = Vs + (jb & 1) * BN * LD;
    float s[MT][NTS][4], dp[MT][NTS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          s[mt][n][e] = dp[mt][n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t aq[MT][4], ao[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (QO_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            aq[mt][e] = qf[QO_REGS ? mt : 0][QO_REGS ? kk : 0][e];
            ao[mt][e] = of[QO_REGS ? mt : 0][QO_REGS ? kk : 0][e];
          }
        } else {
          ldsm4(fragA<LD>(Qs, w0 + mt * 16, kk * 16, lane), aq[mt]);
          ldsm4(fragA<LD>(Os, w0 + mt * 16, kk * 16, lane), ao[mt]);
        }
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t b[4];
        ldsm4(fragB<LD>(Kc, np * 16, kk * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(s[mt][2 * np], aq[mt], b[0], b[1]);
          mma16816(s[mt][2 * np + 1], aq[mt], b[2], b[3]);
        }
        ldsm4(fragB<LD>(Vc, np * 16, kk * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(dp[mt][2 * np], ao[mt], b[0], b[1]);
          mma16816(dp[mt][2 * np + 1], ao[mt], b[2], b[3]);
        }
      }
    }
    const bool mask = j0 + BN > warpMin;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = j0 + n * 8 + 2 * t4 + (e & 1), h = e >> 1;
          const bool vis = !mask || j < nv[mt][h];
          const float pr = vis ? ex2(s[mt][n][e] * c - l2[mt][h]) : 0.f;
          s[mt][n][e] = pr * (dp[mt][n][e] - del[mt][h]);
        }
#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = packBf16(s[mt][2 * ks][0], s[mt][2 * ks][1]);
        a[mt][1] = packBf16(s[mt][2 * ks][2], s[mt][2 * ks][3]);
        a[mt][2] = packBf16(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
        a[mt][3] = packBf16(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t b[4];
        ldsm4t(fragA<LD>(Kc, ks * 16, np * 16, lane), b);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(dq[mt][2 * np], a[mt], b[0], b[1]);
          mma16816(dq[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  cpAsyncWaitAll();
  const float *w = p.dz ? p.wg + int64_t(bh % p.H) * 2 * D : nullptr;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = i0 + w0 + mt * 16 + g + 8 * h;
      if (row >= Tq)
        continue;
      const int64_t flat = bh * Tq + row, at = p.off(bh, row, Tq, D);
      const float z = p.dz ? p.dz[flat] : 0.f;
#pragma unroll
      for (int n = 0; n < NTD; ++n) {
        const int col = n * 8 + 2 * t4;
        float v0 = dq[mt][n][2 * h] * p.scale,
              v1 = dq[mt][n][2 * h + 1] * p.scale;
        if (w) {
          v0 += z * w[col];
          v1 += z * w[col + 1];
        }
        *reinterpret_cast<uint32_t *>(p.dq + at + col) = packBf16(v0, v1);
      }
    }
}

//===----------------------------------------------------------------------===//
// Host side
//===----------------------------------------------------------------------===//

/// Launches `kernel` (raising its dynamic shared-memory limit when needed)
/// and checks the launch.
template <class... KernelArgs, class... Args>
std::string launch(const char *name, void (*kernel)(KernelArgs...), dim3 grid,
                   dim3 block, size_t smem, void *stream, Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0)
    return {};
  if (smem > 48 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (status != cudaSuccess)
      return failure((std::string("cudaFuncSetAttribute(") + name + ")").c_str(),
                     status);
  }
  kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(args...);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    return failure((std::string("launch of ") + name).c_str(), status);
  return {};
}

#define LOOM_ATTN_TRY(expr)                                                    \
  do {                                                                         \
    std::string error_ = (expr);                                               \
    if (!error_.empty())                                                       \
      return error_;                                                           \
  } while (0)

constexpr size_t alignUp(size_t n) { return (n + 255) / 256 * 256; }

std::string checkCommon(const AttentionDims &d, bool gated) {
  if (d.B < 0 || d.H < 0 || d.Tq < 0 || d.Tk < 0)
    return "loom::cuda attention: negative size";
  if (d.D < 1 || d.Dv < 1)
    return "loom::cuda attention: head dimensions must be positive";
  if (gated && d.Tq != d.Tk)
    return "loom::cuda attention: gated attention needs Tq == Tk";
  if (d.B * d.H > int64_t(INT32_MAX) || d.Tq > (int64_t(1) << 30) ||
      d.Tk > (int64_t(1) << 30))
    return "loom::cuda attention: sizes out of range";
  if ((d.Tq + 15) / 16 > 65535 || (d.Tk + 15) / 16 > 65535)
    return "loom::cuda attention: sequence too long for the grid";
  return {};
}

bool aligned16(const void *p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <class E>
Params<E> makeParams(const AttentionDims &d, const E *q, const E *k,
                     const E *v) {
  Params<E> p;
  p.q = q, p.k = k, p.v = v;
  p.H = int(d.H), p.Tq = int(d.Tq), p.Tk = int(d.Tk);
  p.D = int(d.D), p.Dv = int(d.Dv), p.causal = d.causal ? 1 : 0;
  p.scale = float(1.0 / std::sqrt(double(d.D)));
  p.interleaved = d.interleaved ? 1 : 0;
  return p;
}

dim3 rowGrid(const AttentionDims &d, int64_t rows, int64_t block) {
  return dim3(unsigned(d.B * d.H), unsigned((rows + block - 1) / block));
}

//--- fp32 dispatch -----------------------------------------------------------

template <int DM> std::string forwardF32(const AttentionDims &d,
                                         const Params<float> &p, void *s) {
  return launch("forwardF32Kernel", forwardF32Kernel<DM>,
                rowGrid(d, d.Tq, kF32Block), dim3(kF32Threads),
                forwardF32Smem<DM>(), s, p);
}
template <int DM> std::string backwardF32(const AttentionDims &d,
                                          const Params<float> &p, void *s) {
  LOOM_ATTN_TRY(launch("dkdvF32Kernel", dkdvF32Kernel<DM>,
                       rowGrid(d, d.Tk, kF32Block), dim3(kF32Threads),
                       dkdvF32Smem<DM>(), s, p));
  return launch("dqF32Kernel", dqF32Kernel<DM>, rowGrid(d, d.Tq, kF32Block),
                dim3(kF32Threads), dqF32Smem<DM>(), s, p);
}

std::string dispatchF32(const AttentionDims &d, const Params<float> &p,
                        void *s, bool forward) {
  const int64_t dm = std::max(d.D, d.Dv);
  if (dm <= 32)
    return forward ? forwardF32<32>(d, p, s) : backwardF32<32>(d, p, s);
  if (dm <= 64)
    return forward ? forwardF32<64>(d, p, s) : backwardF32<64>(d, p, s);
  return forward ? forwardF32<128>(d, p, s) : backwardF32<128>(d, p, s);
}

//--- bf16 dispatch -----------------------------------------------------------

/// Tile shapes per head dimension: warps per block and m-tiles (16 rows)
/// per warp of each kernel, the query block of dkdv and the key block of dq,
/// and whether K/V (dkdv) and Q/dO (dq) fragments stay in registers. Chosen
/// by timing four variants on an H200 (ATTENTION.md): two m-tiles per warp
/// halve the shared-memory reads per MMA in the forward pass (144 -> 192
/// TFLOP/s at D=64); the D=64 backward moved by under 2% across the
/// variants; at D=128 a 64-query dkdv block and a two-m-tile dq gave 124 ->
/// 145 TFLOP/s. Once dkdv's lse/delta stall was gone (2026-11-30), its D=64
/// variants at B16 H12 T1024 ([B,T,H,D], causal) measured: 4 warps 266 us,
/// 8 warps 286 (K/V in registers; 290 from shared memory), 32-query blocks
/// 308-327, 4 warps x 2 m-tiles 317 (spilling); dq's current shape 155 us
/// against 165-206 for the others (`.gpu-bench/attnvar.cu`, not kept).
template <int FW, int FM, int KW, int KM, int KB, bool KR, int QW, int QM,
          int QB, bool QR>
struct Bf16Shape {
  static constexpr int kFwdWarps = FW, kFwdMT = FM;
  static constexpr int kDkdvWarps = KW, kDkdvMT = KM, kDkdvBQ = KB;
  static constexpr bool kKvRegs = KR;
  static constexpr int kDqWarps = QW, kDqMT = QM, kDqBN = QB;
  static constexpr bool kQoRegs = QR;
};
template <int D> struct Bf16Config;
template <>
struct Bf16Config<32> : Bf16Shape<4, 2, 4, 1, 64, true, 4, 1, 64, true> {};
template <>
struct Bf16Config<64> : Bf16Shape<4, 2, 4, 1, 64, true, 4, 2, 64, false> {};
template <>
struct Bf16Config<128>
    : Bf16Shape<4, 1, 4, 1, 64, false, 4, 2, 32, false> {};

template <int D> std::string forwardBf16(const AttentionDims &d,
                                         const Params<bf16> &p, void *s) {
  using C = Bf16Config<D>;
  return launch("forwardBf16Kernel",
                forwardBf16Kernel<D, C::kFwdWarps, C::kFwdMT>,
                rowGrid(d, d.Tq, 16 * C::kFwdWarps * C::kFwdMT),
                dim3(32 * C::kFwdWarps),
                forwardBf16Smem<D, C::kFwdWarps, C::kFwdMT>(), s, p);
}
template <int D> std::string backwardBf16(const AttentionDims &d,
                                          const Params<bf16> &p, void *s) {
  using C = Bf16Config<D>;
  LOOM_ATTN_TRY(launch(
      "dkdvBf16Kernel",
      dkdvBf16Kernel<D, C::kDkdvWarps, C::kDkdvMT, C::kDkdvBQ, C::kKvRegs>,
      rowGrid(d, d.Tk, 16 * C::kDkdvWarps * C::kDkdvMT),
      dim3(32 * C::kDkdvWarps),
      dkdvBf16Smem<D, C::kDkdvWarps, C::kDkdvMT, C::kDkdvBQ>(), s, p));
  return launch(
      "dqBf16Kernel",
      dqBf16Kernel<D, C::kDqWarps, C::kDqMT, C::kDqBN, C::kQoRegs>,
      rowGrid(d, d.Tq, 16 * C::kDqWarps * C::kDqMT), dim3(32 * C::kDqWarps),
      dqBf16Smem<D, C::kDqWarps, C::kDqMT, C::kDqBN>(), s, p);
}

std::string dispatchBf16(const AttentionDims &d, const Params<bf16> &p,
                         void *s, bool forward) {
  switch (d.D) {
  case 32:
    return forward ? forwardBf16<32>(d, p, s) : backwardBf16<32>(d, p, s);
  case 64:
    return forward ? forwardBf16<64>(d, p, s) : backwardBf16<64>(d, p, s);
  default:
    return forward ? forwardBf16<128>(d, p, s) : backwardBf16<128>(d, p, s);
  }
}

//--- Shared drivers ----------------------------------------------------------

template <class E> std::string supported(const AttentionDims &d);
template <> std::string supported<float>(const AttentionDims &d) {
  LOOM_ATTN_TRY(checkCommon(d, false));
  if (d.interleaved)
    return "loom::cuda attention (fp32): the [B,T,H,D] layout is bf16 only";
  if (d.D > 128 || d.Dv > 128)
    return "loom::cuda attention (fp32): head dimensions above 128";
  return {};
}
template <> std::string supported<bf16>(const AttentionDims &d) {
  LOOM_ATTN_TRY(checkCommon(d, false));
  if (d.D != d.Dv || (d.D != 32 && d.D != 64 && d.D != 128))
    return "loom::cuda attention (bf16): needs D == Dv in {32, 64, 128}";
  return {};
}

template <class E>
std::string dispatch(const AttentionDims &d, const Params<E> &p, void *s,
                     bool forward) {
  if constexpr (std::is_same_v<E, float>)
    return dispatchF32(d, p, s, forward);
  else
    return dispatchBf16(d, p, s, forward);
}

template <class E>
std::string checkPointers(std::initializer_list<const void *> ptrs) {
  if constexpr (std::is_same_v<E, bf16>)
    for (const void *ptr : ptrs)
      if (ptr && !aligned16(ptr))
        return "loom::cuda attention (bf16): tensors must be 16-byte aligned";
  return {};
}

template <class E>
std::string forwardImpl(const AttentionDims &d, const E *q, const E *k,
                        const E *v, E *out, float *lse, void *stream) {
  LOOM_ATTN_TRY(supported<E>(d));
  LOOM_ATTN_TRY(checkPointers<E>({q, k, v, out}));
  if (d.B * d.H == 0 || d.Tq == 0)
    return {};
  Params<E> p = makeParams(d, q, k, v);
  p.out = out, p.lse = lse;
  return dispatch(d, p, stream, true);
}

struct BackwardWorkspace {
  float *lseEff, *delta, *dz;
  void *dattn;
  double *partial;
  int chunks;
};

BackwardWorkspace carve(const AttentionDims &d, void *workspace, bool gated) {
  const size_t rows = size_t(d.B * d.H * d.Tq);
  char *base = static_cast<char *>(workspace);
  BackwardWorkspace w{};
  w.lseEff = reinterpret_cast<float *>(base);
  base += alignUp(rows * sizeof(float));
  w.delta = reinterpret_cast<float *>(base);
  base += alignUp(rows * sizeof(float));
  if (!gated)
    return w;
  w.chunks = int((d.Tq + kGateChunk - 1) / kGateChunk);
  w.dz = reinterpret_cast<float *>(base);
  base += alignUp(rows * sizeof(float));
  w.dattn = base;
  base += alignUp(rows * size_t(d.Dv) * sizeof(float));
  w.partial = reinterpret_cast<double *>(base);
  return w;
}

size_t workspaceBytes(const AttentionDims &d, bool gated) {
  const size_t rows = size_t(std::max<int64_t>(0, d.B * d.H * d.Tq));
  size_t bytes = 2 * alignUp(rows * sizeof(float));
  if (gated) {
    const size_t chunks = size_t((std::max<int64_t>(0, d.Tq) + kGateChunk - 1) /
                                 kGateChunk);
    bytes += alignUp(rows * sizeof(float)) +
             alignUp(rows * size_t(std::max<int64_t>(0, d.Dv)) * sizeof(float)) +
             alignUp(size_t(std::max<int64_t>(0, d.B * d.H)) * chunks *
                     size_t(2 * std::max<int64_t>(0, d.D) + 1) *
                     sizeof(double));
  }
  return bytes;
}

constexpr int kRowWarps = 8; // Rows (warps) per block of the row kernels.

/// For a row width in {32, 64, 128}, f(std::integral_constant<int, width /
/// 8>()): the lanes a row of the 16-byte row kernels takes. False (f not
/// called) for other widths.
template <class F> bool withRowLanes(int64_t width, F f) {
  switch (width) {
  case 32:
    f(std::integral_constant<int, 4>());
    return true;
  case 64:
    f(std::integral_constant<int, 8>());
    return true;
  case 128:
    f(std::integral_constant<int, 16>());
    return true;
  default:
    return false;
  }
}

/// The grid of a 16-byte row kernel: `lanes` threads a row, 256 a block.
dim3 rowLanesGrid(int64_t rows, int64_t lanes) {
  return dim3(unsigned((rows * lanes + 255) / 256));
}

/// The gate kernel: 16-byte accesses for bf16 (D in {32, 64, 128}), else a
/// warp per row.
template <class E>
std::string launchGate(const AttentionDims &d, const Params<E> &p,
                       int64_t rows, void *stream) {
  if constexpr (std::is_same_v<E, bf16>) {
    std::string error;
    if (withRowLanes(d.D, [&](auto lanes) {
          error = launch("gateVecKernel", gateVecKernel<decltype(lanes)::value>,
                         rowLanesGrid(rows, lanes), dim3(256), 0, stream, p,
                         rows);
        }))
      return error;
  }
  return launch("gateKernel", gateKernel<E>,
                dim3(unsigned((rows + kRowWarps - 1) / kRowWarps)),
                dim3(32 * kRowWarps), 0, stream, p, rows);
}

/// The backward prep kernel, chosen like launchGate (by Dv).
template <class E>
std::string launchPrep(const AttentionDims &d, const Params<E> &p,
                       const E *dout, const E *out, const float *lse,
                       float *lseEff, float *delta, float *dz, E *dattn,
                       int64_t rows, void *stream) {
  if constexpr (std::is_same_v<E, bf16>) {
    std::string error;
    if (withRowLanes(d.Dv, [&](auto lanes) {
          error = launch("backwardPrepVecKernel",
                         backwardPrepVecKernel<decltype(lanes)::value>,
                         rowLanesGrid(rows, lanes), dim3(256), 0, stream, p,
                         dout, out, lse, lseEff, delta, dz, dattn, rows);
        }))
      return error;
  }
  return launch("backwardPrepKernel", backwardPrepKernel<E>,
                dim3(unsigned((rows + kRowWarps - 1) / kRowWarps)),
                dim3(32 * kRowWarps), 0, stream, p, dout, out, lse, lseEff,
                delta, dz, dattn, rows);
}

template <class E>
std::string backwardImpl(const AttentionDims &d, const E *q, const E *k,
                         const E *v, const E *out, const float *lse,
                         const E *dout, E *dq, E *dk, E *dv, void *workspace,
                         void *stream) {
  LOOM_ATTN_TRY(supported<E>(d));
  LOOM_ATTN_TRY(checkPointers<E>({q, k, v, out, dout, dq, dk, dv}));
  if (d.B * d.H == 0)
    return {};
  BackwardWorkspace w = carve(d, workspace, false);
  Params<E> p = makeParams(d, q, k, v);
  const int64_t rows = d.B * d.H * d.Tq;
  LOOM_ATTN_TRY(launchPrep<E>(d, p, dout, out, lse, w.lseEff, w.delta,
                              nullptr, nullptr, rows, stream));
  p.dO = dout, p.lseEff = w.lseEff, p.delta = w.delta;
  p.dq = dq, p.dk = dk, p.dv = dv;
  return dispatch(d, p, stream, false);
}

template <class E>
std::string gatedForwardImpl(const AttentionDims &d, float threshold,
                             const E *q, const E *k, const E *v,
                             const float *wg, const float *bg, E *out,
                             float *lse, float *gate, E *attn, void *stream) {
  LOOM_ATTN_TRY(supported<E>(d));
  LOOM_ATTN_TRY(checkCommon(d, true));
  LOOM_ATTN_TRY(checkPointers<E>({q, k, v, out, attn}));
  if (d.B * d.H == 0 || d.Tq == 0)
    return {};
  Params<E> p = makeParams(d, q, k, v);
  p.wg = wg, p.bg = bg, p.gateOut = gate;
  const int64_t rows = d.B * d.H * d.Tq;
  LOOM_ATTN_TRY(launchGate(d, p, rows, stream));
  p.gate = gate, p.threshold = threshold;
  p.out = attn, p.lse = lse, p.gatedOut = out;
  return dispatch(d, p, stream, true);
}

template <class E>
std::string gatedBackwardImpl(const AttentionDims &d, float threshold,
                              const E *q, const E *k, const E *v,
                              const float *wg, const float *lse,
                              const float *gate, const E *attn, const E *dout,
                              E *dq, E *dk, E *dv, float *dwg, float *dbg,
                              void *workspace, void *stream) {
  LOOM_ATTN_TRY(supported<E>(d));
  LOOM_ATTN_TRY(checkCommon(d, true));
  LOOM_ATTN_TRY(checkPointers<E>({q, k, v, attn, dout, dq, dk, dv}));
  const int64_t width = 2 * d.D + 1;
  if (d.B * d.H == 0 || d.Tq == 0) { // Nothing flows: zero parameter grads.
    if (d.H > 0) {
      cudaStream_t s = static_cast<cudaStream_t>(stream);
      cudaError_t st = cudaMemsetAsync(dwg, 0, size_t(d.H * 2 * d.D) * 4, s);
      if (st == cudaSuccess)
        st = cudaMemsetAsync(dbg, 0, size_t(d.H) * 4, s);
      if (st != cudaSuccess)
        return failure("cudaMemsetAsync(dwg/dbg)", st);
    }
    return {};
  }
  BackwardWorkspace w = carve(d, workspace, true);
  Params<E> p = makeParams(d, q, k, v);
  p.wg = wg, p.gate = gate, p.threshold = threshold;
  const int64_t rows = d.B * d.H * d.Tq;
  E *dattn = static_cast<E *>(w.dattn);
  LOOM_ATTN_TRY(launchPrep<E>(d, p, dout, attn, lse, w.lseEff, w.delta, w.dz,
                              dattn, rows, stream));
  p.dO = dattn, p.lseEff = w.lseEff, p.delta = w.delta, p.dz = w.dz;
  p.dq = dq, p.dk = dk, p.dv = dv;
  LOOM_ATTN_TRY(dispatch(d, p, stream, false));
  LOOM_ATTN_TRY(launch("gateGradPartialKernel", gateGradPartialKernel<E>,
                       dim3(unsigned(d.B * d.H), unsigned(w.chunks)),
                       dim3(width > 128 ? 256 : 128), 0, stream, p,
                       w.partial, w.chunks));
  const int64_t outputs = d.H * width; // A warp each.
  return launch("gateGradFinalKernel", gateGradFinalKernel,
                dim3(unsigned((outputs * 32 + 255) / 256)), dim3(256), 0, stream,
                static_cast<const double *>(w.partial), int(d.B), int(d.H),
                w.chunks, int(d.D), dwg, dbg);
}

const bf16 *asBf16(const uint16_t *p) {
  return reinterpret_cast<const bf16 *>(p);
}
bf16 *asBf16(uint16_t *p) { return reinterpret_cast<bf16 *>(p); }

} // namespace

//===----------------------------------------------------------------------===//
// Public entry points
//===----------------------------------------------------------------------===//

std::string attentionSupportedF32(const AttentionDims &dims) {
  return supported<float>(dims);
}
std::string attentionSupportedBF16(const AttentionDims &dims) {
  return supported<bf16>(dims);
}

std::string attentionForwardF32(const AttentionDims &dims, const float *q,
                                const float *k, const float *v, float *out,
                                float *lse, void *stream) {
  return forwardImpl<float>(dims, q, k, v, out, lse, stream);
}
std::string attentionForwardBF16(const AttentionDims &dims, const uint16_t *q,
                                 const uint16_t *k, const uint16_t *v,
                                 uint16_t *out, float *lse, void *stream) {
  return forwardImpl<bf16>(dims, asBf16(q), asBf16(k), asBf16(v), asBf16(out),
                           lse, stream);
}

size_t attentionBackwardWorkspaceBytes(const AttentionDims &dims) {
  return workspaceBytes(dims, false);
}
size_t gatedAttentionBackwardWorkspaceBytes(const AttentionDims &dims) {
  return workspaceBytes(dims, true);
}

std::string attentionBackwardF32(const AttentionDims &dims, const float *q,
                                 const float *k, const float *v,
                                 const float *out, const float *lse,
                                 const float *dout, float *dq, float *dk,
                                 float *dv, void *workspace, void *stream) {
  return backwardImpl<float>(dims, q, k, v, out, lse, dout, dq, dk, dv,
                             workspace, stream);
}
std::string attentionBackwardBF16(const AttentionDims &dims, const uint16_t *q,
                                  const uint16_t *k, const uint16_t *v,
                                  const uint16_t *out, const float *lse,
                                  const uint16_t *dout, uint16_t *dq,
                                  uint16_t *dk, uint16_t *dv, void *workspace,
                                  void *stream) {
  return backwardImpl<bf16>(dims, asBf16(q), asBf16(k), asBf16(v),
                            asBf16(out), lse, asBf16(dout), asBf16(dq),
                            asBf16(dk), asBf16(dv), workspace, stream);
}

std::string gatedAttentionForwardF32(const AttentionDims &dims, float threshold,
                                     const float *q, const float *k,
                                     const float *v, const float *wg,
                                     const float *bg, float *out, float *lse,
                                     float *gate, float *attn, void *stream) {
  return gatedForwardImpl<float>(dims, threshold, q, k, v, wg, bg, out, lse,
                                 gate, attn, stream);
}
std::string gatedAttentionForwardBF16(const AttentionDims &dims,
                                      float threshold, const uint16_t *q,
                                      const uint16_t *k, const uint16_t *v,
                                      const float *wg, const float *bg,
                                      uint16_t *out, float *lse, float *gate,
                                      uint16_t *attn, void *stream) {
  return gatedForwardImpl<bf16>(dims, threshold, asBf16(q), asBf16(k),
                                asBf16(v), wg, bg, asBf16(out), lse, gate,
                                asBf16(attn), stream);
}

std::string gatedAttentionBackwardF32(const AttentionDims &dims,
                                      float threshold, const float *q,
                                      const float *k, const float *v,
                                      const float *wg, const float *lse,
                                      const float *gate, const float *attn,
                                      const float *dout, float *dq, float *dk,
                                      float *dv, float *dwg, float *dbg,
                                      void *workspace, void *stream) {
  return gatedBackwardImpl<float>(dims, threshold, q, k, v, wg, lse, gate,
                                  attn, dout, dq, dk, dv, dwg, dbg, workspace,
                                  stream);
}
std::string gatedAttentionBackwardBF16(
    const AttentionDims &dims, float threshold, const uint16_t *q,
    const uint16_t *k, const uint16_t *v, const float *wg, const float *lse,
    const float *gate, const uint16_t *attn, const uint16_t *dout,
    uint16_t *dq, uint16_t *dk, uint16_t *dv, float *dwg, float *dbg,
    void *workspace, void *stream) {
  return gatedBackwardImpl<bf16>(dims, threshold, asBf16(q), asBf16(k),
                                 asBf16(v), wg, lse, gate, asBf16(attn),
                                 asBf16(dout), asBf16(dq), asBf16(dk),
                                 asBf16(dv), dwg, dbg, workspace, stream);
}

} // namespace loom::cuda
