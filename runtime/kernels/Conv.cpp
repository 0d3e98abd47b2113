//===- Conv.cpp - conv2d and batch_norm kernels (NCHW, float32) -----------===//
//
// conv2d as im2col and loom_gemm (oneDNN's sgemm where the build has it):
// the columns of image n are cols_n [C*kh*kw, Ho*Wo], y_n [O, Ho*Wo] = w [O,
// C*kh*kw] @ cols_n, the input gradient is w^T @ dy_n scattered back
// (col2im), the weight gradient the sum over n of dy_n @ cols_n^T.
// batch_norm over the channels (axis 1) of x [N, C, S] with statistics in
// double, as SEMANTICS.md and torch's BatchNorm define it.
//
//===----------------------------------------------------------------------===//
#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"
#include "runtime/kernels/Kernels.h"
#include "runtime/kernels/Threads.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace kn = loom::kernels;
using namespace loom::kernels::threads;

namespace {

struct ConvShape {
  int64_t N, C, H, W, O, KH, KW, stride, pad, Ho, Wo;
  int64_t rows() const { return C * KH * KW; } ///< im2col rows
  int64_t cols() const { return Ho * Wo; }
};

bool valid(loom_ctx *ctx, const char *op, int64_t N, int64_t C, int64_t H,
           int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t stride,
           int64_t pad, ConvShape &s) {
  if (N < 0 || C < 1 || H < 1 || W < 1 || O < 1 || KH < 1 || KW < 1 ||
      stride < 1 || pad < 0 || H + 2 * pad < KH || W + 2 * pad < KW) {
    loom_error(ctx, op, "invalid convolution shape");
    return false;
  }
  s = {N,      C,   H,
       W,      O,   KH,
       KW,     stride, pad,
       (H + 2 * pad - KH) / stride + 1, (W + 2 * pad - KW) / stride + 1};
  return true;
}

/// cols [C*KH*KW, Ho*Wo] of one image x [C, H, W]; zero outside it.
void im2col(const ConvShape &s, const float *x, float *cols) {
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t a = 0; a < s.KH; ++a)
      for (int64_t b = 0; b < s.KW; ++b) {
        float *row = cols + ((c * s.KH + a) * s.KW + b) * s.cols();
        for (int64_t i = 0; i < s.Ho; ++i) {
          const int64_t h = i * s.stride + a - s.pad;
          float *out = row + i * s.Wo;
          if (h < 0 || h >= s.H) {
            std::fill(out, out + s.Wo, 0.0f);
            continue;
          }
          const float *in = x + (c * s.H + h) * s.W;
          for (int64_t j = 0; j < s.Wo; ++j) {
            const int64_t w = j * s.stride + b - s.pad;
            out[j] = w >= 0 && w < s.W ? in[w] : 0.0f;
          }
        }
      }
}

/// dx [C, H, W] += the columns scattered back (im2col's adjoint).
void col2imAdd(const ConvShape &s, const float *cols, float *dx) {
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t a = 0; a < s.KH; ++a)
      for (int64_t b = 0; b < s.KW; ++b) {
        const float *row = cols + ((c * s.KH + a) * s.KW + b) * s.cols();
        for (int64_t i = 0; i < s.Ho; ++i) {
          const int64_t h = i * s.stride + a - s.pad;
          if (h < 0 || h >= s.H)
            continue;
          float *out = dx + (c * s.H + h) * s.W;
          for (int64_t j = 0; j < s.Wo; ++j) {
            const int64_t w = j * s.stride + b - s.pad;
            if (w >= 0 && w < s.W)
              out[w] += row[i * s.Wo + j];
          }
        }
      }
}

/// The columns of every image, [N][C*KH*KW][Ho*Wo].
float *columns(const ConvShape &s, const float *x) {
  thread_local std::vector<float> buffer;
  float *cols = scratch(buffer, s.N * s.rows() * s.cols());
  const int64_t image = s.C * s.H * s.W, block = s.rows() * s.cols();
#pragma omp parallel for schedule(static) if (s.N * block >= kn::kParallelWork)
  for (int64_t n = 0; n < s.N; ++n)
    im2col(s, x + n * image, cols + n * block);
  return cols;
}

} // namespace

extern "C" {

void loom_conv2d_fwd(loom_ctx *ctx, int64_t N, int64_t C, int64_t H, int64_t W,
                     int64_t O, int64_t KH, int64_t KW, int64_t stride,
                     int64_t pad, const float *x, const float *w, float *y) {
  useContextThreads(ctx);
  ConvShape s;
  if (!valid(ctx, "conv2d_fwd", N, C, H, W, O, KH, KW, stride, pad, s) || !N)
    return;
  const float *cols = columns(s, x);
  // y_n = w @ cols_n, every image in one batched call (w broadcast).
  loom_gemm(ctx, N, 0, 0, O, s.cols(), s.rows(), w, 0, cols,
            s.rows() * s.cols(), y, O * s.cols(), 1.0f, 0.0f);
}

void loom_conv2d_bwd_data(loom_ctx *ctx, int64_t N, int64_t C, int64_t H,
                          int64_t W, int64_t O, int64_t KH, int64_t KW,
                          int64_t stride, int64_t pad, const float *dy,
                          const float *w, float *dx) {
  useContextThreads(ctx);
  ConvShape s;
  if (!valid(ctx, "conv2d_bwd_data", N, C, H, W, O, KH, KW, stride, pad, s) ||
      !N)
    return;
  thread_local std::vector<float> buffer;
  float *dcols = scratch(buffer, N * s.rows() * s.cols());
  // dcols_n = w^T @ dy_n.
  loom_gemm(ctx, N, 1, 0, s.rows(), s.cols(), O, w, 0, dy, O * s.cols(), dcols,
            s.rows() * s.cols(), 1.0f, 0.0f);
  const int64_t image = C * H * W, block = s.rows() * s.cols();
#pragma omp parallel for schedule(static) if (N * block >= kn::kParallelWork)
  for (int64_t n = 0; n < N; ++n) {
    std::fill(dx + n * image, dx + (n + 1) * image, 0.0f);
    col2imAdd(s, dcols + n * block, dx + n * image);
  }
}

void loom_conv2d_bwd_weight(loom_ctx *ctx, int64_t N, int64_t C, int64_t H,
                            int64_t W, int64_t O, int64_t KH, int64_t KW,
                            int64_t stride, int64_t pad, const float *x,
                            const float *dy, float *dw) {
  useContextThreads(ctx);
  ConvShape s;
  if (!valid(ctx, "conv2d_bwd_weight", N, C, H, W, O, KH, KW, stride, pad, s))
    return;
  if (!N) {
    std::fill(dw, dw + O * s.rows(), 0.0f);
    return;
  }
  const float *cols = columns(s, x);
  // dw = sum_n dy_n @ cols_n^T, accumulated image by image.
  for (int64_t n = 0; n < N; ++n)
    loom_gemm(ctx, 1, 0, 1, O, s.rows(), s.cols(), dy + n * O * s.cols(), 0,
              cols + n * s.rows() * s.cols(), 0, dw, 0, 1.0f,
              n ? 1.0f : 0.0f);
}

void loom_batch_norm_fwd(loom_ctx *ctx, int64_t N, int64_t C, int64_t S,
                         const float *x, const float *gamma, const float *beta,
                         const float *runningMean, const float *runningVar,
                         float momentum, float eps, float *y, float *mean,
                         float *rstd, float *newMean, float *newVar) {
  useContextThreads(ctx);
  const int64_t m = N * S;
  if (m < 1) {
    loom_error(ctx, "batch_norm_fwd", "no values per channel");
    return;
  }
#pragma omp parallel for schedule(static) if (N * C * S >= kn::kParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i)
        sum += x[(n * C + c) * S + i];
    const double mu = sum / double(m);
    double sq = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const double d = x[(n * C + c) * S + i] - mu;
        sq += d * d;
      }
    const double var = sq / double(m);
    const float r = float(1.0 / std::sqrt(var + double(eps)));
    const float mf = float(mu);
    mean[c] = mf;
    rstd[c] = r;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const int64_t at = (n * C + c) * S + i;
        y[at] = (x[at] - mf) * r * gamma[c] + beta[c];
      }
    // The running variance takes the unbiased estimate (torch).
    const double unbiased = m > 1 ? sq / double(m - 1) : var;
    newMean[c] = float((1.0 - momentum) * runningMean[c] + momentum * mu);
    newVar[c] = float((1.0 - momentum) * runningVar[c] + momentum * unbiased);
  }
}

void loom_batch_norm_eval(loom_ctx *ctx, int64_t N, int64_t C, int64_t S,
                          const float *x, const float *gamma, const float *beta,
                          const float *runningMean, const float *runningVar,
                          float eps, float *y) {
  useContextThreads(ctx);
#pragma omp parallel for schedule(static) if (N * C * S >= kn::kParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    const float r = float(1.0 / std::sqrt(double(runningVar[c]) + double(eps)));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const int64_t at = (n * C + c) * S + i;
        y[at] = (x[at] - runningMean[c]) * r * gamma[c] + beta[c];
      }
  }
}

void loom_batch_norm_bwd(loom_ctx *ctx, int64_t N, int64_t C, int64_t S,
                         const float *dy, const float *x, const float *gamma,
                         const float *mean, const float *rstd, float *dx,
                         float *dgamma, float *dbeta) {
  useContextThreads(ctx);
  const int64_t m = N * S;
  if (m < 1) {
    loom_error(ctx, "batch_norm_bwd", "no values per channel");
    return;
  }
#pragma omp parallel for schedule(static) if (N * C * S >= kn::kParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    // x̂ = (x - mean) * rstd; dbeta = Σ dy, dgamma = Σ dy x̂;
    // dx = gamma * rstd / m * (m dy - dbeta - x̂ dgamma).
    double sumDy = 0, sumDyXhat = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const int64_t at = (n * C + c) * S + i;
        const double xhat = double(x[at] - mean[c]) * rstd[c];
        sumDy += dy[at];
        sumDyXhat += double(dy[at]) * xhat;
      }
    dbeta[c] = float(sumDy);
    dgamma[c] = float(sumDyXhat);
    const double k = double(gamma[c]) * rstd[c] / double(m);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < S; ++i) {
        const int64_t at = (n * C + c) * S + i;
        const double xhat = double(x[at] - mean[c]) * rstd[c];
        dx[at] = float(k * (double(m) * dy[at] - sumDy - xhat * sumDyXhat));
      }
  }
}

} // extern "C"
