//===- Kernels.h - the CPU kernels as element-type templates ---*- C++ -*-===//
//
// Every kernel behind runtime/abi/loom_abi.h as a plain template: the ABI
// functions (Kernels.cpp) instantiate them for float, the tests for double so
// that finite differences can check the backward passes tightly.
//
// Rules every kernel follows:
//  - Semantics exactly as loom_abi.h's comments and /work/shared/SEMANTICS.md.
//  - Sums are accumulated in double.
//  - Results do not depend on the thread count: loops are parallelised over
//    outputs, each output is computed by one thread in a fixed order, and
//    reductions to a scalar combine fixed-size chunks in index order.
//  - Kernels that validate their data return an empty string on success and
//    the cause otherwise (the ABI layer turns it into loom_error).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_KERNELS_KERNELS_H
#define LOOM_RUNTIME_KERNELS_KERNELS_H

#include "runtime/kernels/Philox.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
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

/// loss[0] = mean over counted rows (target != ignoreIndex) of
/// lse(row) - row[target], 0 when none counts; lse[r] for every row;
/// stats = {counted rows, counted rows whose first argmax is the target}.
/// lse and stats may be null.
template <class T>
std::string crossEntropyForward(int64_t rows, int64_t classes, const T *logits,
                                const int32_t *target, int64_t ignoreIndex,
                                T *loss, T *lse, T *stats) {
  if (std::string problem = checkTargets(rows, classes, target, ignoreIndex);
      !problem.empty())
    return problem;
  std::vector<double> rowLoss(rows, 0.0);
  std::vector<unsigned char> rowCorrect(rows, 0);
#pragma omp parallel for schedule(static) if (rows * classes >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = logits + r * classes;
    const int64_t best = std::max_element(xr, xr + classes) - xr;
    const double m = xr[best];
    double sum = 0;
    for (int64_t c = 0; c < classes; ++c)
      sum += std::exp(xr[c] - m);
    const double l = m + std::log(sum);
    if (lse)
      lse[r] = T(l);
    if (target[r] != ignoreIndex) {
      rowLoss[r] = l - xr[target[r]];
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
/// rows, 0 on ignored rows; softmax(row) = exp(row - lse[r]).
template <class T>
std::string crossEntropyBackward(int64_t rows, int64_t classes, const T *logits,
                                 const int32_t *target, int64_t ignoreIndex,
                                 const T *lse, const T *dloss, T *dlogits) {
  if (std::string problem = checkTargets(rows, classes, target, ignoreIndex);
      !problem.empty())
    return problem;
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r)
    counted += target[r] != ignoreIndex;
  const double scale = counted ? double(dloss[0]) / double(counted) : 0.0;
#pragma omp parallel for schedule(static) if (rows * classes >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = logits + r * classes;
    T *dr = dlogits + r * classes;
    if (target[r] == ignoreIndex) {
      std::fill(dr, dr + classes, T(0));
      continue;
    }
    const double l = lse[r];
    for (int64_t c = 0; c < classes; ++c)
      dr[c] = T(scale * (std::exp(xr[c] - l) - (c == target[r] ? 1.0 : 0.0)));
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

/// The keys query row i sees are [0, visibleKeys(i)): all of them, or with a
/// causal mask those <= i + (Tk - Tq). A causal row that sees no key (Tq > Tk)
/// outputs zeros, has lse = -inf and gets no gradient.
inline int64_t visibleKeys(bool causal, int64_t Tq, int64_t Tk, int64_t i) {
  return causal ? std::clamp<int64_t>(i + (Tk - Tq) + 1, 0, Tk) : Tk;
}

namespace detail {

template <class T> double dot(const T *a, const T *b, int64_t n) {
  double sum = 0;
  for (int64_t j = 0; j < n; ++j)
    sum += double(a[j]) * b[j];
  return sum;
}

/// Attention over the query rows `active(row)` accepts (row = flat index into
/// [B*H*Tq]); the other rows get out = 0 and lse = -inf.
template <class T, class RowActive>
void attentionForwardRows(int64_t B, int64_t H, int64_t Tq, int64_t Tk,
                          int64_t D, int64_t Dv, bool causal, const T *q,
                          const T *k, const T *v, T *out, T *lse,
                          RowActive active) {
  const double scale = 1.0 / std::sqrt(double(D));
  const int64_t rows = B * H * Tq;
#pragma omp parallel if (rows * Tk * (D + Dv) >= kParallelWork)
  {
    std::vector<double> score(Tk), acc(Dv);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t bh = row / Tq, i = row % Tq;
      const int64_t keys = visibleKeys(causal, Tq, Tk, i);
      T *o = out + row * Dv;
      if (keys == 0 || !active(row)) {
        std::fill(o, o + Dv, T(0));
        if (lse)
          lse[row] = -std::numeric_limits<T>::infinity();
        continue;
      }
      const T *qi = q + row * D, *kb = k + bh * Tk * D, *vb = v + bh * Tk * Dv;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < keys; ++j) {
        score[j] = dot(qi, kb + j * D, D) * scale;
        m = std::max(m, score[j]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < keys; ++j) {
        const double p = std::exp(score[j] - m);
        sum += p;
        const T *vj = vb + j * Dv;
        for (int64_t c = 0; c < Dv; ++c)
          acc[c] += p * vj[c];
      }
      for (int64_t c = 0; c < Dv; ++c)
        o[c] = T(acc[c] / sum);
      if (lse)
        lse[row] = T(m + std::log(sum));
    }
  }
}

/// The attention VJP over the rows `active` accepts (the others contribute
/// nothing). With P = exp(S - lse), delta_i = dout_i . out_i:
/// dV = P^T dout, dS = P * (dout V^T - delta), dQ = dS K / sqrt(D),
/// dK = dS^T Q / sqrt(D). Two passes, one over query rows (dq) and one over
/// key rows (dk, dv), so every output has one owner and a fixed order.
template <class T, class RowActive>
void attentionBackwardRows(int64_t B, int64_t H, int64_t Tq, int64_t Tk,
                           int64_t D, int64_t Dv, bool causal, const T *q,
                           const T *k, const T *v, const T *out, const T *lse,
                           const T *dout, T *dq, T *dk, T *dv,
                           RowActive active) {
  const double scale = 1.0 / std::sqrt(double(D));
  const int64_t rows = B * H * Tq, keyRows = B * H * Tk;
  [[maybe_unused]] const bool parallel = rows * Tk * (D + Dv) >= kParallelWork;
  std::vector<double> delta(rows);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < rows; ++row)
    delta[row] = dot(dout + row * Dv, out + row * Dv, Dv);

#pragma omp parallel if (parallel)
  {
    std::vector<double> acc(std::max(D, Dv));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t bh = row / Tq, i = row % Tq;
      const int64_t keys = active(row) ? visibleKeys(causal, Tq, Tk, i) : 0;
      const T *qi = q + row * D, *doi = dout + row * Dv;
      const T *kb = k + bh * Tk * D, *vb = v + bh * Tk * Dv;
      std::fill(acc.begin(), acc.begin() + D, 0.0);
      for (int64_t j = 0; j < keys; ++j) {
        const double p = std::exp(dot(qi, kb + j * D, D) * scale - lse[row]);
        const double ds = p * (dot(doi, vb + j * Dv, Dv) - delta[row]);
        for (int64_t c = 0; c < D; ++c)
          acc[c] += ds * kb[j * D + c];
      }
      for (int64_t c = 0; c < D; ++c)
        dq[row * D + c] = T(acc[c] * scale);
    }
  }

#pragma omp parallel if (parallel)
  {
    std::vector<double> accK(D), accV(Dv);
#pragma omp for schedule(static)
    for (int64_t keyRow = 0; keyRow < keyRows; ++keyRow) {
      const int64_t bh = keyRow / Tk, j = keyRow % Tk;
      const T *kj = k + keyRow * D, *vj = v + keyRow * Dv;
      std::fill(accK.begin(), accK.end(), 0.0);
      std::fill(accV.begin(), accV.end(), 0.0);
      // Query i sees key j when j <= i + (Tk - Tq).
      const int64_t first = causal ? std::max<int64_t>(0, j - (Tk - Tq)) : 0;
      for (int64_t i = first; i < Tq; ++i) {
        const int64_t row = bh * Tq + i;
        if (!active(row))
          continue;
        const T *qi = q + row * D, *doi = dout + row * Dv;
        const double p = std::exp(dot(qi, kj, D) * scale - lse[row]);
        const double ds = p * (dot(doi, vj, Dv) - delta[row]);
        for (int64_t c = 0; c < Dv; ++c)
          accV[c] += p * doi[c];
        for (int64_t c = 0; c < D; ++c)
          accK[c] += ds * qi[c];
      }
      for (int64_t c = 0; c < D; ++c)
        dk[keyRow * D + c] = T(accK[c] * scale);
      for (int64_t c = 0; c < Dv; ++c)
        dv[keyRow * Dv + c] = T(accV[c]);
    }
  }
}

struct AllRows {
  bool operator()(int64_t) const { return true; }
};

} // namespace detail

/// out = softmax(q k^T / sqrt(D) + mask) v; lse: [B,H,Tq] (may be null).
template <class T>
void attentionForward(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                      int64_t Dv, bool causal, const T *q, const T *k,
                      const T *v, T *out, T *lse) {
  detail::attentionForwardRows(B, H, Tq, Tk, D, Dv, causal, q, k, v, out, lse,
                               detail::AllRows());
}

/// dq, dk, dv of attentionForward given its out and lse.
template <class T>
void attentionBackward(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D,
                       int64_t Dv, bool causal, const T *q, const T *k,
                       const T *v, const T *out, const T *lse, const T *dout,
                       T *dq, T *dk, T *dv) {
  detail::attentionBackwardRows(B, H, Tq, Tk, D, Dv, causal, q, k, v, out, lse,
                                dout, dq, dk, dv, detail::AllRows());
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
  const int64_t rows = B * H * seqLen;
#pragma omp parallel for schedule(static) if (rows * D >= kParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t h = row / seqLen % H;
    const T *w = wg + h * 2 * D;
    const double z = detail::dot(q + row * D, w, D) +
                     detail::dot(k + row * D, w + D, D) + double(bg[h]);
    gate[row] = T(1.0 / (1.0 + std::exp(-z)));
  }
  const bool exact = threshold < T(0);
  detail::attentionForwardRows(
      B, H, seqLen, seqLen, D, Dv, causal, q, k, v, attn, lse,
      [&](int64_t row) { return exact || gate[row] >= threshold; });
#pragma omp parallel for schedule(static) if (rows * Dv >= kParallelWork)
  for (int64_t row = 0; row < rows; ++row)
    for (int64_t c = 0; c < Dv; ++c)
      out[row * Dv + c] = gate[row] * attn[row * Dv + c];
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
  const int64_t rows = B * H * seqLen;
  const bool exact = threshold < T(0);
  auto active = [&](int64_t row) { return exact || gate[row] >= threshold; };
  std::vector<T> dattn(rows * Dv);
  std::vector<double> dz(rows);
#pragma omp parallel for schedule(static) if (rows * Dv >= kParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const bool on = active(row);
    const double g = gate[row];
    for (int64_t c = 0; c < Dv; ++c)
      dattn[row * Dv + c] = on ? T(g * dout[row * Dv + c]) : T(0);
    dz[row] =
        on ? detail::dot(dout + row * Dv, attn + row * Dv, Dv) * g * (1.0 - g)
           : 0.0;
  }
  detail::attentionBackwardRows(B, H, seqLen, seqLen, D, Dv, causal, q, k, v,
                                attn, lse, dattn.data(), dq, dk, dv, active);
#pragma omp parallel for schedule(static) if (rows * D >= kParallelWork)
  for (int64_t row = 0; row < rows; ++row) {
    const T *w = wg + row / seqLen % H * 2 * D;
    for (int64_t c = 0; c < D; ++c) {
      dq[row * D + c] = T(dq[row * D + c] + dz[row] * w[c]);
      dk[row * D + c] = T(dk[row * D + c] + dz[row] * w[D + c]);
    }
  }
  // dwg[h, j] and dbg[h]: one owner each, summed over (b, t) in order.
#pragma omp parallel for schedule(static) if (rows * D >= kParallelWork)
  for (int64_t hj = 0; hj < H * (2 * D + 1); ++hj) {
    const int64_t h = hj / (2 * D + 1), j = hj % (2 * D + 1);
    double sum = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < seqLen; ++t) {
        const int64_t row = (b * H + h) * seqLen + t;
        const double input = j < D       ? double(q[row * D + j])
                             : j < 2 * D ? double(k[row * D + j - D])
                                         : 1.0;
        sum += dz[row] * input;
      }
    if (j < 2 * D)
      dwg[h * 2 * D + j] = T(sum);
    else
      dbg[h] = T(sum);
  }
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
