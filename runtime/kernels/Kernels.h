//===- Kernels.h - the CPU kernels as element-type templates ---*- C++ -*-===//
//
// Every kernel behind runtime/abi/loom_abi.h as a plain template: the ABI
// functions (Kernels.cpp) instantiate them for float, the tests for double so
// that finite differences can check the backward passes tightly.
//
// Rules every kernel follows:
//  - Semantics exactly as loom_abi.h's comments and /work/shared/SEMANTICS.md.
//  - Sums are accumulated in double, except in the GEMMs (gemm, and the
//    attention kernels' per-head products) and the attention softmax, which
//    accumulate in T as BLAS does.
//  - Results do not depend on the thread count: loops are parallelised over
//    outputs, each output is computed by one thread in a fixed order, and
//    reductions to a scalar combine fixed-size chunks in index order.
//  - Kernels that validate their data return an empty string on success and
//    the cause otherwise (the ABI layer turns it into loom_error).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_KERNELS_KERNELS_H
#define LOOM_RUNTIME_KERNELS_KERNELS_H

#include "runtime/kernels/HalfFloat.h"
#include "runtime/kernels/Philox.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace loom::kernels {

/// Loops with less work than this (roughly, in multiply-adds) run on the
/// calling thread: a parallel region costs microseconds.
constexpr int64_t kParallelWork = int64_t(1) << 15;

//===----------------------------------------------------------------------===//
// GEMM
//===----------------------------------------------------------------------===//

/// Reference batched GEMM (loom_gemm's contract): for b in [0, batch),
/// C_b = alpha * op(A_b) op(B_b) + beta * C_b, op(A_b) MxK, op(B_b) KxN, all
/// row-major and dense; X_b = X + b * strideX (0 broadcasts). beta == 0
/// overwrites C without reading it. strideC == 0 with batch > 1 applies the
/// batches in order to the one C.
///
/// Blocked for the cache: C is cut into tiles, each tile owned by one thread
/// that packs panels of op(A) and op(B) and sums over k in increasing order,
/// so every element's summation order is fixed. Accumulates in T, like BLAS.
template <class T>
void gemm(int64_t batch, bool transA, bool transB, int64_t M, int64_t N,
          int64_t K, const T *A, int64_t strideA, const T *B, int64_t strideB,
          T *C, int64_t strideC, T alpha, T beta) {
  if (batch <= 0 || M <= 0 || N <= 0)
    return;
  if (strideC == 0 && batch > 1) {
    for (int64_t b = 0; b < batch; ++b)
      gemm<T>(1, transA, transB, M, N, K, A + b * strideA, 0, B + b * strideB,
              0, C, 0, alpha, beta);
    return;
  }
  constexpr int64_t kMB = 32, kNB = 128, kKB = 128;
  const int64_t tilesM = (M + kMB - 1) / kMB, tilesN = (N + kNB - 1) / kNB;
  const int64_t tiles = batch * tilesM * tilesN;
  [[maybe_unused]] const bool parallel =
      tiles > 1 && batch * M * N * K >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<T> packedA(kMB * kKB), packedB(kKB * kNB), acc(kMB * kNB);
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t b = tile / (tilesM * tilesN);
      const int64_t i0 = (tile / tilesN) % tilesM * kMB;
      const int64_t j0 = tile % tilesN * kNB;
      const int64_t mb = std::min(kMB, M - i0), nb = std::min(kNB, N - j0);
      const T *Ab = A + b * strideA, *Bb = B + b * strideB;
      T *Cb = C + b * strideC;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t k0 = 0; k0 < K; k0 += kKB) {
        const int64_t kb = std::min(kKB, K - k0);
        // packedA[i][k] = op(A)(i0 + i, k0 + k), packedB[k][j] =
        // op(B)(k0 + k, j0 + j); each read along the source's rows.
        if (transA) {
          for (int64_t k = 0; k < kb; ++k)
            for (int64_t i = 0; i < mb; ++i)
              packedA[i * kKB + k] = Ab[(k0 + k) * M + i0 + i];
        } else {
          for (int64_t i = 0; i < mb; ++i)
            for (int64_t k = 0; k < kb; ++k)
              packedA[i * kKB + k] = Ab[(i0 + i) * K + k0 + k];
        }
        if (transB) {
          for (int64_t j = 0; j < nb; ++j)
            for (int64_t k = 0; k < kb; ++k)
              packedB[k * kNB + j] = Bb[(j0 + j) * K + k0 + k];
        } else {
          for (int64_t k = 0; k < kb; ++k)
            for (int64_t j = 0; j < nb; ++j)
              packedB[k * kNB + j] = Bb[(k0 + k) * N + j0 + j];
        }
        for (int64_t i = 0; i < mb; ++i) {
          T *accRow = acc.data() + i * kNB;
          for (int64_t k = 0; k < kb; ++k) {
            const T a = packedA[i * kKB + k];
            const T *bRow = packedB.data() + k * kNB;
            for (int64_t j = 0; j < nb; ++j)
              accRow[j] += a * bRow[j];
          }
        }
      }
      for (int64_t i = 0; i < mb; ++i) {
        T *cRow = Cb + (i0 + i) * N + j0;
        const T *accRow = acc.data() + i * kNB;
        for (int64_t j = 0; j < nb; ++j)
          cRow[j] = beta == T(0) ? alpha * accRow[j]
                                 : alpha * accRow[j] + beta * cRow[j];
      }
    }
  }
}

//===----------------------------------------------------------------------===//
// Normalisation and softmax, over the last dimension
//===----------------------------------------------------------------------===//

/// y = (x - mean) * rstd * gain + bias per row, biased variance,
/// rstd = 1 / sqrt(var + eps). gain/bias may be null (1 and 0); mean/rstd
/// (saved for the backward pass) may be null.
template <class T>
void layerNormForward(int64_t rows, int64_t cols, const T *x, const T *gain,
                      const T *bias, T eps, T *y, T *mean, T *rstd) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * cols;
    T *yr = y + r * cols;
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c)
      sum += xr[c];
    const double mu = sum / double(cols);
    double squares = 0;
    for (int64_t c = 0; c < cols; ++c)
      squares += (xr[c] - mu) * (xr[c] - mu);
    const double rs = 1.0 / std::sqrt(squares / double(cols) + double(eps));
    for (int64_t c = 0; c < cols; ++c) {
      double v = (xr[c] - mu) * rs;
      if (gain)
        v *= gain[c];
      if (bias)
        v += bias[c];
      yr[c] = T(v);
    }
    if (mean)
      mean[r] = T(mu);
    if (rstd)
      rstd[r] = T(rs);
  }
}

/// With xhat = (x - mean) * rstd and g = dy * gain:
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
/// dgain = sum over rows of dy * xhat, dbias = sum over rows of dy.
/// gain may be null (1); dgain/dbias may be null (not wanted).
template <class T>
void layerNormBackward(int64_t rows, int64_t cols, const T *dy, const T *x,
                       const T *gain, const T *mean, const T *rstd, T *dx,
                       T *dgain, T *dbias) {
  [[maybe_unused]] const bool parallel = rows * cols >= kParallelWork;
  if (dx) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < rows; ++r) {
      const T *dyr = dy + r * cols, *xr = x + r * cols;
      const double mu = mean[r], rs = rstd[r];
      double sumG = 0, sumGX = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double g = gain ? double(dyr[c]) * gain[c] : double(dyr[c]);
        sumG += g;
        sumGX += g * (xr[c] - mu) * rs;
      }
      const double meanG = sumG / double(cols), meanGX = sumGX / double(cols);
      for (int64_t c = 0; c < cols; ++c) {
        const double g = gain ? double(dyr[c]) * gain[c] : double(dyr[c]);
        const double xhat = (xr[c] - mu) * rs;
        dx[r * cols + c] = T(rs * (g - meanG - xhat * meanGX));
      }
    }
  }
  if (!dgain && !dbias)
    return;
  // Each thread owns a block of columns and walks the rows in order.
  constexpr int64_t kBlock = 32;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kBlock, width = std::min(kBlock, cols - c0);
    double accGain[kBlock] = {}, accBias[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T *dyr = dy + r * cols + c0, *xr = x + r * cols + c0;
      const double mu = mean[r], rs = rstd[r];
      for (int64_t c = 0; c < width; ++c) {
        accGain[c] += double(dyr[c]) * ((xr[c] - mu) * rs);
        accBias[c] += dyr[c];
      }
    }
    for (int64_t c = 0; c < width; ++c) {
      if (dgain)
        dgain[c0 + c] = T(accGain[c]);
      if (dbias)
        dbias[c0 + c] = T(accBias[c]);
    }
  }
}

/// y = x * rstd * gain, rstd = 1 / sqrt(mean(x^2) + eps). gain may be null;
/// rstd may be null.
template <class T>
void rmsNormForward(int64_t rows, int64_t cols, const T *x, const T *gain,
                    T eps, T *y, T *rstd) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * cols;
    double squares = 0;
    for (int64_t c = 0; c < cols; ++c)
      squares += double(xr[c]) * xr[c];
    const double rs = 1.0 / std::sqrt(squares / double(cols) + double(eps));
    for (int64_t c = 0; c < cols; ++c)
      y[r * cols + c] = T(gain ? xr[c] * rs * gain[c] : xr[c] * rs);
    if (rstd)
      rstd[r] = T(rs);
  }
}

/// With g = dy * gain: dx = rstd * (g - x * rstd^2 * mean(g * x)),
/// dgain = sum over rows of dy * x * rstd. gain may be null; dgain may be null.
template <class T>
void rmsNormBackward(int64_t rows, int64_t cols, const T *dy, const T *x,
                     const T *gain, const T *rstd, T *dx, T *dgain) {
  [[maybe_unused]] const bool parallel = rows * cols >= kParallelWork;
  if (dx) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < rows; ++r) {
      const T *dyr = dy + r * cols, *xr = x + r * cols;
      const double rs = rstd[r];
      double sumGX = 0;
      for (int64_t c = 0; c < cols; ++c)
        sumGX += (gain ? double(dyr[c]) * gain[c] : double(dyr[c])) * xr[c];
      const double k = rs * rs * sumGX / double(cols);
      for (int64_t c = 0; c < cols; ++c) {
        const double g = gain ? double(dyr[c]) * gain[c] : double(dyr[c]);
        dx[r * cols + c] = T(rs * (g - xr[c] * k));
      }
    }
  }
  if (!dgain)
    return;
  constexpr int64_t kBlock = 32;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kBlock, width = std::min(kBlock, cols - c0);
    double acc[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const double rs = rstd[r];
      for (int64_t c = 0; c < width; ++c)
        acc[c] += double(dy[r * cols + c0 + c]) * x[r * cols + c0 + c] * rs;
    }
    for (int64_t c = 0; c < width; ++c)
      dgain[c0 + c] = T(acc[c]);
  }
}

/// y = exp(x - max) / sum(exp(x - max)) per row.
template <class T>
void softmaxForward(int64_t rows, int64_t cols, const T *x, T *y) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * cols;
    T *yr = y + r * cols;
    const double m = *std::max_element(xr, xr + cols);
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c)
      sum += std::exp(xr[c] - m);
    const double inv = 1.0 / sum;
    for (int64_t c = 0; c < cols; ++c)
      yr[c] = T(std::exp(xr[c] - m) * inv);
  }
}

/// dx = y * (dy - sum(dy * y)).
template <class T>
void softmaxBackward(int64_t rows, int64_t cols, const T *y, const T *dy,
                     T *dx) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * cols, *dyr = dy + r * cols;
    double dot = 0;
    for (int64_t c = 0; c < cols; ++c)
      dot += double(dyr[c]) * yr[c];
    for (int64_t c = 0; c < cols; ++c)
      dx[r * cols + c] = T(yr[c] * (dyr[c] - dot));
  }
}

/// y = x - max - log(sum(exp(x - max))) per row.
template <class T>
void logSoftmaxForward(int64_t rows, int64_t cols, const T *x, T *y) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * cols;
    const double m = *std::max_element(xr, xr + cols);
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c)
      sum += std::exp(xr[c] - m);
    const double shift = m + std::log(sum);
    for (int64_t c = 0; c < cols; ++c)
      y[r * cols + c] = T(xr[c] - shift);
  }
}

/// dx = dy - exp(y) * sum(dy).
template <class T>
void logSoftmaxBackward(int64_t rows, int64_t cols, const T *y, const T *dy,
                        T *dx) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *yr = y + r * cols, *dyr = dy + r * cols;
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c)
      sum += dyr[c];
    for (int64_t c = 0; c < cols; ++c)
      dx[r * cols + c] = T(dyr[c] - std::exp(double(yr[c])) * sum);
  }
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

/// The first target that is neither ignoreIndex nor in [0, classes), or "".
inline std::string checkTargets(int64_t rows, int64_t classes,
                                const int32_t *target, int64_t ignoreIndex) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = target[r];
    if (t != ignoreIndex && (t < 0 || t >= classes))
      return "target " + std::to_string(t) + " at row " + std::to_string(r) +
             " is outside the classes [0, " + std::to_string(classes) +
             ") and is not ignore_index " + std::to_string(ignoreIndex);
  }
  return {};
}

/// A logit as the loss's type T: itself, or a bf16 bit pattern widened
/// (exactly) to float.
template <class T> T logitAs(T v) { return v; }
template <class T> T logitAs(uint16_t bf16) { return T(fromBF16(bf16)); }
/// A logit gradient stored as T, or rounded once to bf16.
template <class T> void storeGradient(T *p, T v) { *p = v; }
template <class T> void storeGradient(uint16_t *p, T v) { *p = toBF16(float(v)); }

/// loss[0] = mean over counted rows (target != ignoreIndex) of
/// lse(row) - row[target], 0 when none counts; lse[r] for every row;
/// stats = {counted rows, counted rows whose first argmax is the target}.
/// lse and stats may be null. L = T, or uint16_t for bf16 logits (each
/// widened on load: the result is T's on the widened logits, bit for bit).
template <class T, class L = T>
std::string crossEntropyForward(int64_t rows, int64_t classes, const L *logits,
                                const int32_t *target, int64_t ignoreIndex,
                                T *loss, T *lse, T *stats) {
  if (std::string problem = checkTargets(rows, classes, target, ignoreIndex);
      !problem.empty())
    return problem;
  std::vector<double> rowLoss(rows, 0.0);
  std::vector<unsigned char> rowCorrect(rows, 0);
#pragma omp parallel for schedule(static) if (rows * classes >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const L *xr = logits + r * classes;
    auto x = [&](int64_t c) { return logitAs<T>(xr[c]); };
    // The first maximum (as std::max_element).
    int64_t best = 0;
    for (int64_t c = 1; c < classes; ++c)
      if (x(best) < x(c))
        best = c;
    const double m = x(best);
    double sum = 0;
    for (int64_t c = 0; c < classes; ++c)
      sum += std::exp(x(c) - m);
    const double l = m + std::log(sum);
    if (lse)
      lse[r] = T(l);
    if (target[r] != ignoreIndex) {
      rowLoss[r] = l - x(target[r]);
      rowCorrect[r] = best == target[r];
    }
  }
  int64_t counted = 0, correct = 0;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (target[r] == ignoreIndex)
      continue;
    ++counted;
    correct += rowCorrect[r];
    total += rowLoss[r];
  }
  loss[0] = T(counted ? total / double(counted) : 0.0);
  if (stats) {
    stats[0] = T(counted);
    stats[1] = T(correct);
  }
  return {};
}

/// dlogits = dloss[0] / counted * (softmax(row) - onehot(target)) on counted
/// rows, 0 on ignored rows; softmax(row) = exp(row - lse[r]). L as in
/// crossEntropyForward; D = T, or uint16_t for bf16 dlogits (each rounded
/// once from T).
template <class T, class L = T, class D = T>
std::string crossEntropyBackward(int64_t rows, int64_t classes, const L *logits,
                                 const int32_t *target, int64_t ignoreIndex,
                                 const T *lse, const T *dloss, D *dlogits) {
  if (std::string problem = checkTargets(rows, classes, target, ignoreIndex);
      !problem.empty())
    return problem;
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r)
    counted += target[r] != ignoreIndex;
  const double scale = counted ? double(dloss[0]) / double(counted) : 0.0;
#pragma omp parallel for schedule(static) if (rows * classes >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const L *xr = logits + r * classes;
    D *dr = dlogits + r * classes;
    if (target[r] == ignoreIndex) {
      for (int64_t c = 0; c < classes; ++c)
        storeGradient(dr + c, T(0));
      continue;
    }
    const double l = lse[r];
    for (int64_t c = 0; c < classes; ++c)
      storeGradient(dr + c, T(scale * (std::exp(logitAs<T>(xr[c]) - l) -
                                       (c == target[r] ? 1.0 : 0.0))));
  }
  return {};
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

/// The first id outside [0, vocab), or "".
inline std::string checkIds(int64_t n, int64_t vocab, const int32_t *ids) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      return "id " + std::to_string(ids[i]) + " at position " +
             std::to_string(i) + " is outside the vocabulary [0, " +
             std::to_string(vocab) + ")";
  return {};
}

/// out[i, :] = table[ids[i], :].
template <class T>
std::string embeddingForward(int64_t n, int64_t vocab, int64_t dim,
                             const int32_t *ids, const T *table, T *out) {
  if (std::string problem = checkIds(n, vocab, ids); !problem.empty())
    return problem;
#pragma omp parallel for schedule(static) if (n * dim >= kParallelWork)
  for (int64_t i = 0; i < n; ++i)
    std::copy(table + int64_t(ids[i]) * dim,
              table + (int64_t(ids[i]) + 1) * dim, out + i * dim);
  return {};
}

/// dtable = 0, then dtable[ids[i], :] += dout[i, :]. Positions are grouped by
/// id with a stable counting sort, so each table row is summed by one thread
/// in position order.
template <class T>
std::string embeddingBackward(int64_t n, int64_t vocab, int64_t dim,
                              const int32_t *ids, const T *dout, T *dtable) {
  if (std::string problem = checkIds(n, vocab, ids); !problem.empty())
    return problem;
  std::vector<int64_t> start(vocab + 1, 0), order(n);
  for (int64_t i = 0; i < n; ++i)
    ++start[ids[i] + 1];
  for (int64_t v = 0; v < vocab; ++v)
    start[v + 1] += start[v];
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i)
      order[next[ids[i]]++] = i;
  }
#pragma omp parallel if ((n + vocab) * dim >= kParallelWork)
  {
    std::vector<double> acc(dim);
#pragma omp for schedule(static)
    for (int64_t v = 0; v < vocab; ++v) {
      T *row = dtable + v * dim;
      if (start[v] == start[v + 1]) {
        std::fill(row, row + dim, T(0));
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t s = start[v]; s < start[v + 1]; ++s) {
        const T *src = dout + order[s] * dim;
        for (int64_t c = 0; c < dim; ++c)
          acc[c] += src[c];
      }
      for (int64_t c = 0; c < dim; ++c)
        row[c] = T(acc[c]);
    }
  }
  return {};
}

//===----------------------------------------------------------------------===//
// Attention (q: [B,H,Tq,D], k: [B,H,Tk,D], v: [B,H,Tk,Dv])
//===----------------------------------------------------------------------===//
//
// One (b, h) head at a time, each on one thread with its own scratch, the
// heads spread over the threads: every output element has one owner and a
// fixed summation order, so results do not depend on the thread count.
// Within a head the query rows go in blocks of kAttentionRowBlock. A block's
// scores are one small GEMM over the keys its last row sees, computed
// transposed (S^T = K Q_block^T / sqrt(D), one vector lane per query row) so
// that the softmax's max and sum run down the keys with plain vector
// operations; the causal mask and the rows the gate skips are a per-lane key
// count. P V (forward), and in the backward pass (which recomputes P from q,
// k and lse: no T x T state between the calls) dout V^T, dS K, P^T dout and
// dS^T q, are small GEMMs again; dk and dv add up the blocks in order.
//
// Precision: the GEMMs accumulate in T (like BLAS and gemm above), the
// softmax runs in T with fastExp/fastLog (vectorisable; libm for double);
// the row dot products (delta, the gate's logits) and the gate's parameter
// gradients are summed in double.
//
// The per-head functions are templates over a SIMD shape so that the float
// ABI (Kernels.cpp) can compile them for AVX2 and AVX-512 as well and pick
// one by the CPU; the templates below use the portable 16-byte shape. The
// small GEMM (smallGemm) beat oneDNN's sgemm on these per-head sizes (single
// thread, in cache: 160-190 against 130-155 GFLOP/s with AVX-512), and it
// is deterministic by construction, whatever oneDNN does with its threads.

/// The keys query row i sees are [0, visibleKeys(i)): all of them, or with a
/// causal mask those <= i + (Tk - Tq). A causal row that sees no key (Tq > Tk)
/// outputs zeros, has lse = -inf and gets no gradient.
inline int64_t visibleKeys(bool causal, int64_t Tq, int64_t Tk, int64_t i) {
  return causal ? std::clamp<int64_t>(i + (Tk - Tq) + 1, 0, Tk) : Tk;
}

#if defined(__GNUC__)
/// Forced inlining lets a caller compiled for a wider ISA (Kernels.cpp's
/// target attributes) compile these helpers for that ISA too.
#define LOOM_KERNEL_INLINE [[gnu::always_inline]] inline
#else
#define LOOM_KERNEL_INLINE inline
#endif

/// Query rows per block within a head, the vector lanes of the softmax.
constexpr int64_t kAttentionRowBlock = 32;

namespace detail {

//--- A small single-threaded GEMM for the per-head products ---------------//

/// The register tiling of smallGemm: vectors of VectorBytes bytes, tiles of
/// Rows x (Vectors vectors).
template <int VectorBytes, int Vectors, int Rows> struct SimdShape {
  static constexpr int kBytes = VectorBytes, kVectors = Vectors, kRows = Rows;
};
/// What every x86-64 (SSE2) and AArch64 (NEON) CPU runs well.
using PortableSimd = SimdShape<16, 2, 4>;

/// A GNU vector of T, loadable from and storable to any T-aligned address.
template <class T, int Bytes> struct SimdVector {
  typedef T type
      __attribute__((vector_size(Bytes), aligned(alignof(T)), may_alias));
};

/// One Rows x (Vectors * lanes) tile: C = alpha * op(A) B over kDim (or,
/// Add, C += op(A) B), with op(A)(r, k) = A[r * lda + k] or, TransA,
/// A[k * lda + r]; B[k * ldb + j]. Each C element sums over k in increasing
/// order.
template <class T, int Bytes, int Rows, int Vectors, bool TransA, bool Add>
LOOM_KERNEL_INLINE void gemmTile(int64_t kDim, const T *A, int64_t lda,
                                 const T *B, int64_t ldb, T *C, int64_t ldc,
                                 T alpha) {
  using V = typename SimdVector<T, Bytes>::type;
  constexpr int kLanes = Bytes / int(sizeof(T));
  V c[Rows][Vectors];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 16
    for (int u = 0; u < Vectors; ++u)
      c[r][u] = V{};
  for (int64_t k = 0; k < kDim; ++k) {
    V b[Vectors];
#pragma GCC unroll 16
    for (int u = 0; u < Vectors; ++u)
      b[u] = *reinterpret_cast<const V *>(B + k * ldb + u * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      const T a = TransA ? A[k * lda + r] : A[r * lda + k];
#pragma GCC unroll 16
      for (int u = 0; u < Vectors; ++u)
        c[r][u] += a * b[u];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 16
    for (int u = 0; u < Vectors; ++u) {
      V *out = reinterpret_cast<V *>(C + r * ldc + u * kLanes);
      if constexpr (Add)
        *out += c[r][u];
      else
        *out = alpha * c[r][u];
    }
}

/// The same for a tile narrower than one vector (width < MaxWidth).
template <class T, int Rows, int MaxWidth, bool TransA, bool Add>
LOOM_KERNEL_INLINE void gemmTileNarrow(int64_t kDim, int64_t width, const T *A,
                                       int64_t lda, const T *B, int64_t ldb,
                                       T *C, int64_t ldc, T alpha) {
  T c[Rows][MaxWidth] = {};
  for (int64_t k = 0; k < kDim; ++k)
    for (int r = 0; r < Rows; ++r) {
      const T a = TransA ? A[k * lda + r] : A[r * lda + k];
      for (int64_t j = 0; j < width; ++j)
        c[r][j] += a * B[k * ldb + j];
    }
  for (int r = 0; r < Rows; ++r)
    for (int64_t j = 0; j < width; ++j) {
      if constexpr (Add)
        C[r * ldc + j] += c[r][j];
      else
        C[r * ldc + j] = alpha * c[r][j];
    }
}

/// One column strip (Vectors vectors wide, or `width` < lanes when Vectors is
/// 0) for rows [0, M): full tiles, then one tile of the remaining rows.
template <class T, class Simd, int Vectors, bool TransA, bool Add,
          int Rows = Simd::kRows>
LOOM_KERNEL_INLINE void gemmStrip(int64_t M, int64_t kDim, int64_t width,
                                  const T *A, int64_t lda, const T *B,
                                  int64_t ldb, T *C, int64_t ldc, T alpha) {
  constexpr int kLanes = Simd::kBytes / int(sizeof(T));
  auto tile = [&](int64_t i) {
    const T *Ai = TransA ? A + i : A + i * lda;
    if constexpr (Vectors > 0)
      gemmTile<T, Simd::kBytes, Rows, Vectors, TransA, Add>(
          kDim, Ai, lda, B, ldb, C + i * ldc, ldc, alpha);
    else
      gemmTileNarrow<T, Rows, kLanes, TransA, Add>(kDim, width, Ai, lda, B, ldb,
                                                   C + i * ldc, ldc, alpha);
  };
  int64_t i = 0;
  if constexpr (Rows == Simd::kRows)
    for (; i + Rows <= M; i += Rows)
      tile(i);
  if (M - i == Rows && Rows < Simd::kRows)
    tile(i);
  else if constexpr (Rows > 1)
    if (M - i > 0 && M - i < Rows)
      gemmStrip<T, Simd, Vectors, TransA, Add, Rows - 1>(
          M - i, kDim, width, TransA ? A + i : A + i * lda, lda, B, ldb,
          C + i * ldc, ldc, alpha);
}

/// C = alpha * op(A) B, or Add, C += op(A) B, for one head on the calling
/// thread: op(A) is M x kDim (A[i * lda + k], or TransA, A[k * lda + i]),
/// B is kDim x N (B[k * ldb + j]), C is M x N (C[i * ldc + j]); without Add
/// C is not read. Every element sums over k in increasing order, whatever M
/// and N.
template <class T, class Simd, bool TransA, bool Add>
LOOM_KERNEL_INLINE void smallGemm(int64_t M, int64_t N, int64_t kDim,
                                  const T *A, int64_t lda, const T *B,
                                  int64_t ldb, T *C, int64_t ldc, T alpha) {
  constexpr int kLanes = Simd::kBytes / int(sizeof(T));
  constexpr int kStrip = kLanes * Simd::kVectors;
  static_assert(kLanes >= 1 && kLanes <= 64, "vector width");
  int64_t j = 0;
  for (; j + kStrip <= N; j += kStrip)
    gemmStrip<T, Simd, Simd::kVectors, TransA, Add>(
        M, kDim, kStrip, A, lda, B + j, ldb, C + j, ldc, alpha);
  if constexpr (Simd::kVectors > 1)
    for (; j + kLanes <= N; j += kLanes)
      gemmStrip<T, Simd, 1, TransA, Add>(M, kDim, kLanes, A, lda, B + j, ldb,
                                         C + j, ldc, alpha);
  if (j < N)
    gemmStrip<T, Simd, 0, TransA, Add>(M, kDim, N - j, A, lda, B + j, ldb,
                                       C + j, ldc, alpha);
}

#if defined(__GNUC__)
#define LOOM_KERNEL_NOINLINE [[gnu::noinline]]
#else
#define LOOM_KERNEL_NOINLINE
#endif

/// The per-head functions' GEMMs, out of line (they are called often):
/// nn: C = alpha A B, nnAdd: C += A B, tn: C = alpha A^T B (smallGemm).
/// Kernels.cpp has its own, compiled for AVX2 and AVX-512.
template <class T, class Simd> struct SmallGemm {
  LOOM_KERNEL_NOINLINE static void nn(int64_t M, int64_t N, int64_t kDim,
                                      const T *A, int64_t lda, const T *B,
                                      int64_t ldb, T *C, int64_t ldc, T alpha) {
    smallGemm<T, Simd, false, false>(M, N, kDim, A, lda, B, ldb, C, ldc, alpha);
  }
  LOOM_KERNEL_NOINLINE static void nnAdd(int64_t M, int64_t N, int64_t kDim,
                                         const T *A, int64_t lda, const T *B,
                                         int64_t ldb, T *C, int64_t ldc) {
    smallGemm<T, Simd, false, true>(M, N, kDim, A, lda, B, ldb, C, ldc, T(1));
  }
  LOOM_KERNEL_NOINLINE static void tn(int64_t M, int64_t N, int64_t kDim,
                                      const T *A, int64_t lda, const T *B,
                                      int64_t ldb, T *C, int64_t ldc, T alpha) {
    smallGemm<T, Simd, true, false>(M, N, kDim, A, lda, B, ldb, C, ldc, alpha);
  }
};

/// The 8 x 8 block of floats at src (rows ldSrc apart), transposed into dst.
LOOM_KERNEL_INLINE void transpose8x8(const float *src, int64_t ldSrc,
                                     float *dst, int64_t ldDst) {
  using V = SimdVector<float, 32>::type;
  V a[8], t[8], u[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r)
    a[r] = *reinterpret_cast<const V *>(src + r * ldSrc);
#pragma GCC unroll 4
  for (int r = 0; r < 8; r += 2) {
    t[r] = __builtin_shufflevector(a[r], a[r + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[r + 1] =
        __builtin_shufflevector(a[r], a[r + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
#pragma GCC unroll 2
  for (int r = 0; r < 8; r += 4) {
    u[r] = __builtin_shufflevector(t[r], t[r + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[r + 1] =
        __builtin_shufflevector(t[r], t[r + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[r + 2] =
        __builtin_shufflevector(t[r + 1], t[r + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[r + 3] =
        __builtin_shufflevector(t[r + 1], t[r + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    *reinterpret_cast<V *>(dst + c * ldDst) =
        __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    *reinterpret_cast<V *>(dst + (c + 4) * ldDst) =
        __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

/// dst[c * ldDst + r] = src[r * ldSrc + c] for r < rows, c < cols.
template <class T>
LOOM_KERNEL_INLINE void transpose(int64_t rows, int64_t cols, const T *src,
                                  int64_t ldSrc, T *dst, int64_t ldDst) {
  int64_t r0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
    for (int64_t r = 0; r < rows8; r += 8)
      for (int64_t c = 0; c < cols8; c += 8)
        transpose8x8(src + r * ldSrc + c, ldSrc, dst + c * ldDst + r, ldDst);
    // The rest: columns >= cols8 of every row, rows >= rows8 of the others.
    for (int64_t r = 0; r < rows8; ++r)
      for (int64_t c = cols8; c < cols; ++c)
        dst[c * ldDst + r] = src[r * ldSrc + c];
    r0 = rows8;
  }
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = r0; r < rows; ++r)
      dst[c * ldDst + r] = src[r * ldSrc + c];
}

//--- exp -------------------------------------------------------------------//

/// exp for the softmax: double is libm's; float is Cephes' expf polynomial
/// (about 1 ulp on [-87, 88]), branch-free so that loops over it vectorise;
/// below -87 (where expf is denormal or 0) it returns 0.
LOOM_KERNEL_INLINE double fastExp(double x) { return std::exp(x); }

LOOM_KERNEL_INLINE float fastExp(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick; n's bits are the low
  // mantissa bits of z.
  constexpr float kShift = 12582912.0f;
  const float z = xc * 1.44269504088896341f + kShift;
  const float n = z - kShift;
  const int32_t ni =
      __builtin_bit_cast(int32_t, z) - __builtin_bit_cast(int32_t, kShift);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const float twoN = __builtin_bit_cast(float, (ni + 127) << 23);
  return x < -87.0f ? 0.0f : y * twoN;
}

/// log for the softmax's lse: double is libm's; float is Cephes' logf
/// polynomial (about 1 ulp), branch-free, for positive normal x.
LOOM_KERNEL_INLINE double fastLog(double x) { return std::log(x); }

LOOM_KERNEL_INLINE float fastLog(float x) {
  // x = m 2^e with m in [sqrt(1/2), sqrt(2)).
  const int32_t bits = __builtin_bit_cast(int32_t, x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = __builtin_bit_cast(float, (bits & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float fe = float(e), z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  const float result = m + y + 0.693359375f * fe;
  return x == x ? result : x; // NaN stays NaN.
}

//--- Per-head forward and backward -----------------------------------------//

/// Everything the per-head functions read and write (pointers to whole
/// [B,H,...] tensors). Gated attention sets wg/gate/gatedOut and threshold.
template <class T> struct AttentionProblem {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0, D = 0, Dv = 0;
  bool causal = false;
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  // Forward: out (the attention output; attn when gated) and lse (may be
  // null).
  T *out = nullptr, *lse = nullptr;
  // Backward: the forward pass's out and lse, dout; dq, dk, dv.
  const T *savedOut = nullptr, *savedLse = nullptr, *dout = nullptr;
  T *dq = nullptr, *dk = nullptr, *dv = nullptr;
  // Gated attention: wg, bg; gate[b,h,t], which the forward pass writes
  // (gateOut, from wg and bg) and both passes read; gatedOut = gate * out
  // (forward); dgate: [B*H, 2D+1] per-head sums of dz [q; k; 1] (backward).
  // threshold < 0 is exact.
  const T *wg = nullptr, *bg = nullptr, *gate = nullptr;
  T *gateOut = nullptr, *gatedOut = nullptr;
  double *dgate = nullptr;
  T threshold = T(-1);

  bool gated() const { return wg != nullptr; }
  /// Whether query row `row` (flat over [B*H*Tq]) is computed.
  bool active(int64_t row) const {
    return !gated() || threshold < T(0) || gate[row] >= threshold;
  }
  int64_t heads() const { return B * H; }
  /// The scratch one thread needs (elements of T and of double).
  int64_t forwardScratch() const {
    return D * Tq + kAttentionRowBlock * (Tk + D);
  }
  int64_t backwardScratch() const {
    return D * Tq + kAttentionRowBlock * (2 * Tk + 3 * Dv);
  }
  int64_t backwardScratchDouble() const { return gated() ? Tq : 0; }
  /// Whether the heads are worth spreading over threads.
  bool parallel() const {
    return heads() > 1 && heads() * Tq * Tk * (D + Dv) >= kParallelWork;
  }
};

/// The forward pass of head bh (= b * H + h), scratch: forwardScratch().
/// A block's scores are computed transposed, S^T = K Q_block^T ([n, kRB]:
/// one lane per query row), so that the softmax's max and sum run down the
/// keys with vector operations and no horizontal reductions; the causal mask
/// and skipped rows are a per-lane key count.
template <class T, class Gemm>
LOOM_KERNEL_INLINE void attentionHeadForward(const AttentionProblem<T> &p,
                                             int64_t bh, T *scratch) {
  constexpr int64_t kRB = kAttentionRowBlock;
  const int64_t Tq = p.Tq, Tk = p.Tk, D = p.D, Dv = p.Dv;
  const T scale = T(1.0 / std::sqrt(double(D)));
  const T *q = p.q + bh * Tq * D, *k = p.k + bh * Tk * D,
          *v = p.v + bh * Tk * Dv;
  T *out = p.out + bh * Tq * Dv;
  T *qt = scratch;       // [D, Tq]: q transposed
  T *st = qt + D * Tq;   // [n, kRB]: S^T, then P^T (unnormalised)
  T *kt = st + kRB * Tk; // [D, kRB]: the block's k transposed (gated)
  transpose(Tq, D, q, D, qt, Tq);
  for (int64_t i0 = 0; i0 < Tq; i0 += kRB) {
    const int64_t rows = std::min(kRB, Tq - i0);
    if (p.gated()) {
      // The block's gates, a lane per row: logits summed in double.
      const int64_t h = bh % p.H;
      const T *w = p.wg + h * 2 * D;
      transpose(rows, D, k + i0 * D, D, kt, kRB);
      double z[kRB];
      for (int64_t r = 0; r < kRB; ++r)
        z[r] = double(p.bg[h]);
      for (int64_t d = 0; d < D; ++d) {
        const double wq = w[d], wk = w[D + d];
        const T *qd = qt + d * Tq + i0, *kd = kt + d * kRB;
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r)
          z[r] += double(qd[r]) * wq + double(kd[r]) * wk;
      }
      T *gate = p.gateOut + bh * Tq + i0;
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r)
        gate[r] = T(1) / (T(1) + fastExp(T(-z[r])));
    }
    // visibleKeys grows with the row: the block's last row sees the most.
    const int64_t n = visibleKeys(p.causal, Tq, Tk, i0 + rows - 1);
    T *o = out + i0 * Dv;
    if (n == 0) {
      std::fill(o, o + rows * Dv, T(0));
      for (int64_t r = 0; r < rows; ++r) {
        if (p.lse)
          p.lse[bh * Tq + i0 + r] = -std::numeric_limits<T>::infinity();
        if (p.gated())
          std::fill(p.gatedOut + (bh * Tq + i0 + r) * Dv,
                    p.gatedOut + (bh * Tq + i0 + r + 1) * Dv, T(0));
      }
      continue;
    }
    int32_t keys[kRB]; // Keys each lane sums over; 0: a zero row.
    for (int64_t r = 0; r < kRB; ++r)
      keys[r] = r < rows && p.active(bh * Tq + i0 + r)
                    ? int32_t(visibleKeys(p.causal, Tq, Tk, i0 + r))
                    : 0;
    Gemm::nn(n, rows, D, k, D, qt + i0, Tq, st, kRB, scale);
    T m[kRB], sum[kRB];
    for (int64_t r = 0; r < kRB; ++r) {
      m[r] = -std::numeric_limits<T>::infinity();
      sum[r] = T(0);
    }
    for (int32_t j = 0; j < int32_t(n); ++j) {
      const T *sj = st + j * kRB;
#pragma omp simd
      for (int64_t r = 0; r < kRB; ++r)
        m[r] = j < keys[r] && sj[r] > m[r] ? sj[r] : m[r];
    }
    for (int32_t j = 0; j < int32_t(n); ++j) {
      T *sj = st + j * kRB;
#pragma omp simd
      for (int64_t r = 0; r < kRB; ++r) {
        const T e = j < keys[r] ? fastExp(sj[r] - m[r]) : T(0);
        sj[r] = e;
        sum[r] += e;
      }
    }
    // O = P V = (P^T)^T V, then each row divided by its sum.
    Gemm::tn(rows, Dv, n, st, kRB, v, Dv, o, Dv, T(1));
    T lse[kRB];
#pragma omp simd
    for (int64_t r = 0; r < kRB; ++r)
      lse[r] = m[r] + fastLog(keys[r] > 0 ? sum[r] : T(1));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = bh * Tq + i0 + r;
      T *orow = o + r * Dv;
      if (keys[r] > 0) {
        const T f = T(1) / sum[r];
        for (int64_t c = 0; c < Dv; ++c)
          orow[c] *= f;
      } else { // Exactly 0, whatever v holds.
        std::fill(orow, orow + Dv, T(0));
      }
      if (p.lse)
        p.lse[row] = keys[r] > 0 ? lse[r] : -std::numeric_limits<T>::infinity();
      if (p.gated()) {
        const T g = p.gate[row];
        T *grow = p.gatedOut + row * Dv;
        for (int64_t c = 0; c < Dv; ++c)
          grow[c] = g * orow[c];
      }
    }
  }
}

/// The backward pass of head bh, scratch: backwardScratch() and
/// backwardScratchDouble(). With P = exp(S - lse) (recomputed) and
/// delta_i = dout_i . out_i: dV = P^T dout, dS = P * (dout V^T - delta),
/// dQ = dS K / sqrt(D), dK = dS^T Q / sqrt(D), P and dS transposed as in the
/// forward pass. Gated: dout is replaced by dattn = gate * dout on computed
/// rows, and with dz = (dout . attn) g (1 - g), dq += dz wg[h, :D],
/// dk += dz wg[h, D:], dgate[bh] = sum_t dz [q; k; 1].
template <class T, class Gemm>
LOOM_KERNEL_INLINE void attentionHeadBackward(const AttentionProblem<T> &p,
                                              int64_t bh, T *scratch,
                                              double *scratchDouble) {
  constexpr int64_t kRB = kAttentionRowBlock;
  const int64_t Tq = p.Tq, Tk = p.Tk, D = p.D, Dv = p.Dv;
  const T scale = T(1.0 / std::sqrt(double(D)));
  const T *q = p.q + bh * Tq * D, *k = p.k + bh * Tk * D,
          *v = p.v + bh * Tk * Dv, *out = p.savedOut + bh * Tq * Dv,
          *dout = p.dout + bh * Tq * Dv, *lse = p.savedLse + bh * Tq;
  T *dq = p.dq + bh * Tq * D, *dk = p.dk + bh * Tk * D,
    *dv = p.dv + bh * Tk * Dv;
  T *qt = scratch;            // [D, Tq]: q transposed
  T *pt = qt + D * Tq;        // [n, kRB]: S^T, then P^T
  T *dst = pt + kRB * Tk;     // [n, kRB]: dP^T, then dS^T / sqrt(D)
  T *dOt = dst + kRB * Tk;    // [Dv, kRB]: the block's dout (dattn)^T
  T *ot = dOt + kRB * Dv;     // [Dv, kRB]: the block's out^T
  T *dattn = ot + kRB * Dv;   // [kRB, Dv] (gated)
  double *dz = scratchDouble; // [Tq] (gated)
  const T *w = p.gated() ? p.wg + bh % p.H * 2 * D : nullptr;
  transpose(Tq, D, q, D, qt, Tq);
  int64_t touched = 0; // dk and dv rows [0, touched) hold partial sums.
  for (int64_t i0 = 0; i0 < Tq; i0 += kRB) {
    const int64_t rows = std::min(kRB, Tq - i0);
    const int64_t n = visibleKeys(p.causal, Tq, Tk, i0 + rows - 1);
    // e = dout . out per row (a lane each, in double); delta = dO . out for
    // the gradient dO flowing into out: dout, or dattn = g dout when gated.
    transpose(rows, Dv, dout + i0 * Dv, Dv, dOt, kRB);
    transpose(rows, Dv, out + i0 * Dv, Dv, ot, kRB);
    double e[kRB];
    for (int64_t r = 0; r < kRB; ++r)
      e[r] = 0.0;
    for (int64_t c = 0; c < Dv; ++c) {
      const T *dOc = dOt + c * kRB, *oc = ot + c * kRB;
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r)
        e[r] += double(dOc[r]) * double(oc[r]);
    }
    const T *dO = dout + i0 * Dv;
    int32_t keys[kRB];
    T delta[kRB], l[kRB], g[kRB];
    for (int64_t r = 0; r < kRB; ++r) {
      const int64_t i = i0 + r, row = bh * Tq + i;
      const bool active = r < rows && p.active(row);
      const bool on = active && lse[i] != -std::numeric_limits<T>::infinity();
      keys[r] = on ? int32_t(visibleKeys(p.causal, Tq, Tk, i)) : 0;
      l[r] = on ? lse[i] : T(0);
      if (!p.gated()) {
        delta[r] = on ? T(e[r]) : T(0);
        continue;
      }
      const double gi = active ? double(p.gate[row]) : 0.0;
      g[r] = T(gi);
      delta[r] = on ? T(gi * e[r]) : T(0);
      if (r < rows)
        dz[i] = active ? e[r] * gi * (1.0 - gi) : 0.0;
    }
    if (p.gated()) {
      for (int64_t c = 0; c < Dv; ++c) {
        T *dOc = dOt + c * kRB;
#pragma omp simd
        for (int64_t r = 0; r < kRB; ++r)
          dOc[r] = g[r] * dOc[r];
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < Dv; ++c)
          dattn[r * Dv + c] = g[r] * dO[r * Dv + c];
      dO = dattn;
    }
    if (n == 0) {
      std::fill(dq + i0 * D, dq + (i0 + rows) * D, T(0));
      if (p.gated())
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < D; ++c)
            dq[(i0 + r) * D + c] = T(dz[i0 + r]) * w[c];
      continue;
    }
    Gemm::nn(n, rows, D, k, D, qt + i0, Tq, pt, kRB, scale);
    Gemm::nn(n, rows, Dv, v, Dv, dOt, kRB, dst, kRB, T(1));
    for (int32_t j = 0; j < int32_t(n); ++j) {
      T *pj = pt + j * kRB, *dsj = dst + j * kRB;
#pragma omp simd
      for (int64_t r = 0; r < kRB; ++r) {
        const bool on = j < keys[r];
        const T pr = on ? fastExp(pj[r] - l[r]) : T(0);
        pj[r] = pr;
        dsj[r] = on ? pr * (dsj[r] - delta[r]) * scale : T(0);
      }
    }
    // dQ = dS K, dV += P^T dO, dK += dS^T Q (dS already scaled). The keys
    // [touched, n) get their first terms: those rows are overwritten.
    Gemm::tn(rows, D, n, dst, kRB, k, D, dq + i0 * D, D, T(1));
    for (int64_t r = 0; r < rows; ++r) // Exactly 0, whatever k holds.
      if (keys[r] == 0)
        std::fill(dq + (i0 + r) * D, dq + (i0 + r + 1) * D, T(0));
    const int64_t seen = std::min(touched, n);
    Gemm::nnAdd(seen, Dv, rows, pt, kRB, dO, Dv, dv, Dv);
    Gemm::nnAdd(seen, D, rows, dst, kRB, q + i0 * D, D, dk, D);
    Gemm::nn(n - seen, Dv, rows, pt + seen * kRB, kRB, dO, Dv, dv + seen * Dv,
             Dv, T(1));
    Gemm::nn(n - seen, D, rows, dst + seen * kRB, kRB, q + i0 * D, D,
             dk + seen * D, D, T(1));
    touched = std::max(touched, n);
    if (p.gated()) // The gate's part of dq.
      for (int64_t r = 0; r < rows; ++r) {
        const T z = T(dz[i0 + r]);
        T *dqr = dq + (i0 + r) * D;
#pragma omp simd
        for (int64_t c = 0; c < D; ++c)
          dqr[c] += z * w[c];
      }
  }
  // Keys no query sees get no gradient.
  std::fill(dk + touched * D, dk + Tk * D, T(0));
  std::fill(dv + touched * Dv, dv + Tk * Dv, T(0));
  if (!p.gated())
    return;
  // The gate's part of dk, and its parameters' gradient (summed in double).
  double *dgate = p.dgate + bh * (2 * D + 1);
  std::fill(dgate, dgate + 2 * D + 1, 0.0);
  for (int64_t t = 0; t < Tq; ++t) {
    const double z = dz[t];
    T *dkRow = dk + t * D;
    const T *qRow = q + t * D, *kRow = k + t * D;
#pragma omp simd
    for (int64_t c = 0; c < D; ++c)
      dkRow[c] += T(z) * w[D + c];
#pragma omp simd
    for (int64_t c = 0; c < D; ++c) {
      dgate[c] += z * double(qRow[c]);
      dgate[D + c] += z * double(kRow[c]);
    }
    dgate[2 * D] += z;
  }
}

/// Runs head(bh, scratch, scratchDouble) for every head, spread over the
/// threads, each thread with its own scratch.
template <class T, class Head>
void forEachHead(const AttentionProblem<T> &p, int64_t scratch,
                 int64_t scratchDouble, Head head) {
  const int64_t heads = p.heads();
#pragma omp parallel if (p.parallel())
  {
    std::vector<T> buffer(scratch);
    std::vector<double> bufferDouble(scratchDouble);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < heads; ++bh)
      head(bh, buffer.data(), bufferDouble.data());
  }
}

/// The per-head functions with the small GEMMs `Gemm`.
template <class T, class Gemm> struct AttentionHeads {
  static void forward(const AttentionProblem<T> &p, int64_t bh, T *scratch) {
    attentionHeadForward<T, Gemm>(p, bh, scratch);
  }
  static void backward(const AttentionProblem<T> &p, int64_t bh, T *scratch,
                       double *scratchDouble) {
    attentionHeadBackward<T, Gemm>(p, bh, scratch, scratchDouble);
  }
};

template <class T>
using AttentionForwardHead = void (*)(const AttentionProblem<T> &, int64_t,
                                      T *);
template <class T>
using AttentionBackwardHead = void (*)(const AttentionProblem<T> &, int64_t,
                                       T *, double *);

/// The forward pass of every head with `head` (p.out, p.lse, and for gated
/// attention p.gate and p.gatedOut, are written).
template <class T>
void attentionForwardWith(const AttentionProblem<T> &p,
                          AttentionForwardHead<T> head) {
  if (p.heads() <= 0 || p.Tq <= 0)
    return;
  forEachHead(p, p.forwardScratch(), 0,
              [&](int64_t bh, T *scratch, double *) { head(p, bh, scratch); });
}

/// The backward pass of every head with `head`; for gated attention, dwg and
/// dbg are the per-head dgate sums added up over b in order.
template <class T>
void attentionBackwardWith(AttentionProblem<T> p, AttentionBackwardHead<T> head,
                           T *dwg = nullptr, T *dbg = nullptr) {
  const int64_t width = 2 * p.D + 1;
  std::vector<double> dgate(p.gated() ? p.heads() * width : 0);
  p.dgate = dgate.data();
  if (p.heads() > 0 && p.Tk > 0 && p.Tq > 0)
    forEachHead(p, p.backwardScratch(), p.backwardScratchDouble(),
                [&](int64_t bh, T *scratch, double *scratchDouble) {
                  head(p, bh, scratch, scratchDouble);
                });
  else if (p.heads() > 0) { // No queries or no keys: nothing flows.
    std::fill(p.dq, p.dq + p.heads() * p.Tq * p.D, T(0));
    std::fill(p.dk, p.dk + p.heads() * p.Tk * p.D, T(0));
    std::fill(p.dv, p.dv + p.heads() * p.Tk * p.Dv, T(0));
  }
  if (!p.gated())
    return;
  for (int64_t h = 0; h < p.H; ++h)
    for (int64_t j = 0; j < width; ++j) {
      double sum = 0;
      for (int64_t b = 0; b < p.B; ++b)
        sum += dgate[(b * p.H + h) * width + j];
      if (j < 2 * p.D)
        dwg[h * 2 * p.D + j] = T(sum);
      else
        dbg[h] = T(sum);
    }
}

/// The problem of attentionForward/Backward's arguments (outputs not set).
template <class T>
AttentionProblem<T>
attentionProblem(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                 int64_t Dv, bool causal, const T *q, const T *k, const T *v) {
  AttentionProblem<T> p;
  p.B = B, p.H = H, p.Tq = Tq, p.Tk = Tk, p.D = D, p.Dv = Dv;
  p.causal = causal;
  p.q = q, p.k = k, p.v = v;
  return p;
}

/// The problem of gatedAttentionForward/Backward's arguments (outputs and
/// gate not set).
template <class T>
AttentionProblem<T>
gatedAttentionProblem(int64_t B, int64_t H, int64_t seqLen, int64_t D,
                      int64_t Dv, bool causal, T threshold, const T *q,
                      const T *k, const T *v, const T *wg, const T *bg) {
  AttentionProblem<T> p =
      attentionProblem(B, H, seqLen, seqLen, D, Dv, causal, q, k, v);
  p.wg = wg, p.bg = bg;
  p.threshold = threshold;
  return p;
}

} // namespace detail

/// out = softmax(q k^T / sqrt(D) + mask) v; lse: [B,H,Tq] (may be null).
template <class T>
void attentionForward(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                      int64_t Dv, bool causal, const T *q, const T *k,
                      const T *v, T *out, T *lse) {
  auto p = detail::attentionProblem(B, H, Tq, Tk, D, Dv, causal, q, k, v);
  p.out = out, p.lse = lse;
  detail::attentionForwardWith<T>(
      p, &detail::AttentionHeads<
             T, detail::SmallGemm<T, detail::PortableSimd>>::forward);
}

/// dq, dk, dv of attentionForward given its out and lse.
template <class T>
void attentionBackward(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                       int64_t Dv, bool causal, const T *q, const T *k,
                       const T *v, const T *out, const T *lse, const T *dout,
                       T *dq, T *dk, T *dv) {
  auto p = detail::attentionProblem(B, H, Tq, Tk, D, Dv, causal, q, k, v);
  p.savedOut = out, p.savedLse = lse;
  p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv;
  detail::attentionBackwardWith<T>(
      p, &detail::AttentionHeads<
             T, detail::SmallGemm<T, detail::PortableSimd>>::backward);
}

/// SEMANTICS.md's gated attention (T = Tq = Tk):
/// gate[b,h,t] = sigmoid([q;k][b,h,t,:] . wg[h,:] + bg[h]), wg: [H, 2D];
/// attn = attention(q, k, v) (saved), out = gate * attn. threshold >= 0 is
/// the approximate mode: a row whose gate is below it outputs 0 and its
/// attention row (attn = 0, lse = -inf) is skipped.
template <class T>
void gatedAttentionForward(int64_t B, int64_t H, int64_t seqLen, int64_t D,
                           int64_t Dv, bool causal, T threshold, const T *q,
                           const T *k, const T *v, const T *wg, const T *bg,
                           T *out, T *lse, T *gate, T *attn) {
  auto p = detail::gatedAttentionProblem(B, H, seqLen, D, Dv, causal, threshold,
                                         q, k, v, wg, bg);
  p.out = attn, p.lse = lse, p.gate = gate, p.gateOut = gate;
  p.gatedOut = out;
  detail::attentionForwardWith<T>(
      p, &detail::AttentionHeads<
             T, detail::SmallGemm<T, detail::PortableSimd>>::forward);
}

/// The VJP of gatedAttentionForward: with dz = (dout . attn) g (1 - g),
/// the attention VJP of dattn = g * dout, plus dz * wg[h, :D] into dq and
/// dz * wg[h, D:] into dk; dwg[h] = sum over (b, t) of dz [q; k],
/// dbg[h] = sum of dz. Skipped rows (approximate mode) get no gradient.
template <class T>
void gatedAttentionBackward(int64_t B, int64_t H, int64_t seqLen, int64_t D,
                            int64_t Dv, bool causal, T threshold, const T *q,
                            const T *k, const T *v, const T *wg, const T *lse,
                            const T *gate, const T *attn, const T *dout, T *dq,
                            T *dk, T *dv, T *dwg, T *dbg) {
  auto p = detail::gatedAttentionProblem<T>(B, H, seqLen, D, Dv, causal,
                                            threshold, q, k, v, wg, nullptr);
  p.savedOut = attn, p.savedLse = lse, p.gate = gate;
  p.dout = dout, p.dq = dq, p.dk = dk, p.dv = dv;
  detail::attentionBackwardWith<T>(
      p,
      &detail::AttentionHeads<
          T, detail::SmallGemm<T, detail::PortableSimd>>::backward,
      dwg, dbg);
}
//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

/// Whether dropout keeps element `index` (Philox.h's convention: stream =
/// the op's key, extra = the step, word 0 as a uniform, kept when >= p).
inline bool dropoutKeeps(const PhiloxKey &key, int64_t step, int64_t index,
                         double p) {
  const PhiloxBlock words =
      philox4x32(philoxCounter(uint64_t(index), uint64_t(step)), key);
  return double(uniform01(words[0])) >= p;
}

/// y = x / (1 - p) where kept, 0 elsewhere (p = 1 drops everything). The
/// backward pass is the same function of dy (same seed, key and step).
template <class T>
void dropoutForward(int64_t n, T p, uint64_t seed, uint64_t key, int64_t step,
                    const T *x, T *y) {
  const PhiloxKey streamKey = philoxKey(seed, key);
  const T scale = p < T(1) ? T(1) / (T(1) - p) : T(0);
#pragma omp parallel for schedule(static) if (n * 8 >= kParallelWork)
  for (int64_t i = 0; i < n; ++i)
    y[i] = dropoutKeeps(streamKey, step, i, double(p)) ? x[i] * scale : T(0);
}

template <class T>
void dropoutBackward(int64_t n, T p, uint64_t seed, uint64_t key, int64_t step,
                     const T *dy, T *dx) {
  dropoutForward(n, p, seed, key, step, dy, dx);
}

//===----------------------------------------------------------------------===//
// Optimizers (torch.optim semantics)
//===----------------------------------------------------------------------===//

/// torch.optim.AdamW, one step t >= 1: g = grad * gradScale;
/// p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
template <class T>
void adamwStep(int64_t n, T *param, const T *grad, T *m, T *v, T lr, T beta1,
               T beta2, T eps, T weightDecay, T gradScale, int64_t t) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(t));
  const double bc2Sqrt = std::sqrt(1.0 - std::pow(double(beta2), double(t)));
  const T stepSize = T(double(lr) / bc1);
  const T decay = T(1.0 - double(lr) * double(weightDecay));
#pragma omp parallel for schedule(static) if (n * 8 >= kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * gradScale;
    T p = param[i];
    if (weightDecay != T(0))
      p *= decay;
    m[i] = beta1 * m[i] + (T(1) - beta1) * g;
    v[i] = beta2 * v[i] + (T(1) - beta2) * g * g;
    const T denom = std::sqrt(v[i]) / T(bc2Sqrt) + eps;
    param[i] = p - stepSize * (m[i] / denom);
  }
}

/// torch.optim.SGD (dampening 0): g = grad * gradScale + wd * p; with
/// momentum, buf = g on the first step, else momentum * buf + g, and the
/// update is g + momentum * buf (Nesterov) or buf; p -= lr * update. buf may
/// be null when momentum == 0.
template <class T>
void sgdStep(int64_t n, T *param, const T *grad, T *buf, T lr, T momentum,
             bool nesterov, T weightDecay, T gradScale, bool first) {
#pragma omp parallel for schedule(static) if (n * 4 >= kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i] * gradScale;
    if (weightDecay != T(0))
      g += weightDecay * param[i];
    T update = g;
    if (momentum != T(0)) {
      buf[i] = first ? g : momentum * buf[i] + g;
      update = nesterov ? g + momentum * buf[i] : buf[i];
    }
    param[i] -= lr * update;
  }
}

/// Sum of x^2 in double, over fixed chunks combined in order (the result does
/// not depend on the thread count).
template <class T> double sumSquares(int64_t n, const T *x) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
  for (int64_t c = 0; c < chunks; ++c) {
    double sum = 0;
    for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; ++i)
      sum += double(x[i]) * x[i];
    partial[c] = sum;
  }
  double total = 0;
  for (double s : partial)
    total += s;
  return total;
}

} // namespace loom::kernels

#endif // LOOM_RUNTIME_KERNELS_KERNELS_H
