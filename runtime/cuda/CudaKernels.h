//===- CudaKernels.h - the GPU kernels behind the ABI -----------*- C++ -*-===//
//
// The CUDA counterparts of runtime/abi/loom_abi.h's kernels, in namespace
// loom::cuda. Each has the semantics of the CPU ABI function of the same
// name (loom_abi.h's comments, runtime/kernels/Kernels.h); the differences
// are the GPU conventions of runtime/cuda/README.md (section
// "Conventions"):
//
//  - Every pointer is device memory; every call only enqueues work on
//    ctx.stream (nothing waits, nothing reads device memory on the host), so
//    a step can be captured into a CUDA graph. Values that change from step
//    to step are DEVICE pointers (lr, gradScale, step, dloss, ...);
//    constants known when the program is compiled are host values.
//  - Data errors (an id or target out of range, a non-finite value) set the
//    device error word ctx.error (CudaContext.h) naming `op`, the caller's op
//    index; the runtime reads it after the step.
//  - Launch and library failures throw loom::runtime::Error naming the call,
//    the kernel and the rank.
//  - Results are deterministic: reductions run in a fixed order that
//    depends on the shape only (no float atomics); two runs on one GPU give
//    bitwise the same results.
//  - Reductions accumulate in double as the CPU kernels do (GEMMs: fp32).
//
// Plain C++: includable from files a host compiler builds.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CUDA_CUDAKERNELS_H
#define LOOM_RUNTIME_CUDA_CUDAKERNELS_H

#include "runtime/cuda/CudaContext.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace loom::cuda {

//===----------------------------------------------------------------------===//
// GEMM (cuBLASLt, Gemm.cpp)
//===----------------------------------------------------------------------===//

/// loom_gemm: for b in [0, batch): C_b = alpha op(A_b) op(B_b) + beta C_b,
/// row-major, X_b = X + b * strideX (elements; 0 broadcasts), strideC == 0
/// with batch > 1 applies the batches in order to one C. fp32 compute
/// (CUBLAS_COMPUTE_32F_PEDANTIC: no TF32, no reduced-precision shortcuts).
/// alpha/beta are host values (they are constants of the program).
void gemm(CudaContext &ctx, int64_t batch, bool transA, bool transB, int64_t M,
          int64_t N, int64_t K, const float *A, int64_t strideA, const float *B,
          int64_t strideB, float *C, int64_t strideC, float alpha = 1.0f,
          float beta = 0.0f);
/// loom_gemm_bf16 / loom_gemm_f16: 16-bit operands and result (bit
/// patterns), fp32 accumulation (CUBLAS_COMPUTE_32F), each output rounded
/// once; alpha = 1, beta = 0. strideC == 0 with batch > 1 leaves the last
/// batch's product in C, as the CPU kernel does.
void gemmBf16(CudaContext &ctx, int64_t batch, bool transA, bool transB,
              int64_t M, int64_t N, int64_t K, const uint16_t *A,
              int64_t strideA, const uint16_t *B, int64_t strideB, uint16_t *C,
              int64_t strideC);
void gemmF16(CudaContext &ctx, int64_t batch, bool transA, bool transB,
             int64_t M, int64_t N, int64_t K, const uint16_t *A,
             int64_t strideA, const uint16_t *B, int64_t strideB, uint16_t *C,
             int64_t strideC);
/// loom_gemm_bias_gelu_bf16, one row-major GEMM (batch 1) with cuBLASLt's
/// GELU_AUX_BIAS epilogue: with P = op(A) op(B) accumulated in f32 and the
/// bf16 bias [N] added, pre = bf16(P) and Y = bf16(gelu(P)), the
/// tanh-approximated GELU in f32. Where cuBLASLt has no fused algorithm,
/// the bf16 GEMM then a kernel (P rounded to bf16 before the bias).
void gemmBiasGeluBf16(CudaContext &ctx, bool transA, bool transB, int64_t M,
                      int64_t N, int64_t K, const uint16_t *A,
                      const uint16_t *B, const uint16_t *bias, uint16_t *Y,
                      uint16_t *pre);
/// loom_gemm_gelu_grad_bf16, with the DGELU epilogue: D = bf16(gelu'(pre) *
/// op(A) op(B)), the product and the derivative in f32 (same fallback).
void gemmGeluGradBf16(CudaContext &ctx, bool transA, bool transB, int64_t M,
                      int64_t N, int64_t K, const uint16_t *A,
                      const uint16_t *B, const uint16_t *pre, uint16_t *D);
/// Number of cached GEMM plans (descriptors + algorithm) in ctx: one per
/// distinct (dtype, shape, strides, pointer alignment).
size_t gemmPlanCount(const CudaContext &ctx);
/// How many of them cuBLASLt had no algorithm for: those shapes run a plain
/// tiled kernel (fp32 accumulation, k in order) instead.
size_t gemmFallbackCount(const CudaContext &ctx);

//===----------------------------------------------------------------------===//
// Normalisation and softmax, over the last dimension `cols`
//===----------------------------------------------------------------------===//

/// gain/bias may be null (1 and 0); mean/rstd may be null.
void layerNormFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                  const float *gain, const float *bias, float eps, float *y,
                  float *mean, float *rstd);
/// gain may be null; dx, dgain, dbias may each be null (not wanted).
/// dgain/dbias: per-block partial column sums (double), then a second pass
/// adding the partials in order. Uses ctx scratch.
void layerNormBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *dy,
                  const float *x, const float *gain, const float *mean,
                  const float *rstd, float *dx, float *dgain, float *dbias);
/// The same with the output rounded to bf16 (bit patterns; bitwise the f32
/// output rounded once to nearest even), and with a bf16 dy (widened
/// exactly): a bf16 program's casts around its norms folded in.
void layerNormFwdBf16Out(CudaContext &ctx, int64_t rows, int64_t cols,
                         const float *x, const float *gain, const float *bias,
                         float eps, uint16_t *y, float *mean, float *rstd);
void layerNormBwdBf16Dy(CudaContext &ctx, int64_t rows, int64_t cols,
                        const uint16_t *dy, const float *x, const float *gain,
                        const float *mean, const float *rstd, float *dx,
                        float *dgain, float *dbias);
void rmsNormFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                const float *gain, float eps, float *y, float *rstd);
void rmsNormBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *dy,
                const float *x, const float *gain, const float *rstd, float *dx,
                float *dgain);
void softmaxFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                float *y);
/// dx = y * (dy - sum(dy * y)).
void softmaxBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *y,
                const float *dy, float *dx);
void logSoftmaxFwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *x,
                   float *y);
/// dx = dy - exp(y) * sum(dy).
void logSoftmaxBwd(CudaContext &ctx, int64_t rows, int64_t cols, const float *y,
                   const float *dy, float *dx);

//===----------------------------------------------------------------------===//
// Cross-entropy and embedding
//===----------------------------------------------------------------------===//

/// loss (a device float) = mean over counted rows of lse - logit[target];
/// lse[r] per row (may be null); stats (may be null) = {counted, correct}.
/// A bad target sets the error word (kTargetOutOfRange) and its row is not
/// counted. Uses ctx scratch.
void crossEntropyFwd(CudaContext &ctx, int64_t rows, int64_t classes,
                     const float *logits, const int32_t *target,
                     int64_t ignoreIndex, float *loss, float *lse, float *stats,
                     int32_t op = -1);
/// dlogits = dloss[0] / counted * (softmax - onehot) on counted rows, 0 on
/// ignored rows; dloss is a device pointer. Uses ctx scratch.
void crossEntropyBwd(CudaContext &ctx, int64_t rows, int64_t classes,
                     const float *logits, const int32_t *target,
                     int64_t ignoreIndex, const float *lse, const float *dloss,
                     float *dlogits, int32_t op = -1);
/// loom_cross_entropy_fwd_bf16 / _bwd_bf16: bf16 logits (each widened
/// exactly on load: bitwise the fp32 kernels' results on the widened
/// logits) and, backward, bf16 dlogits (each rounded once).
void crossEntropyFwdBf16(CudaContext &ctx, int64_t rows, int64_t classes,
                         const uint16_t *logits, const int32_t *target,
                         int64_t ignoreIndex, float *loss, float *lse,
                         float *stats, int32_t op = -1);
void crossEntropyBwdBf16(CudaContext &ctx, int64_t rows, int64_t classes,
                         const uint16_t *logits, const int32_t *target,
                         int64_t ignoreIndex, const float *lse,
                         const float *dloss, uint16_t *dlogits,
                         int32_t op = -1);
/// Vocabulary-parallel cross-entropy (loom_cross_entropy_fwd_sharded): this
/// rank's logits are the classes [start, start + classesLocal) of classes.
/// `reduce(data, count, max)` all-reduces over the group, in place and in
/// stream order: int64 keys by maximum (max = true), then doubles by sum;
/// every member calls it twice, in that order. Loss, lse and stats as
/// crossEntropyFwd's on the gathered logits, up to the order of the sum of
/// exponentials. Uses ctx scratch.
void crossEntropyFwdSharded(
    CudaContext &ctx, int64_t rows, int64_t classesLocal, int64_t classes,
    int64_t start, const float *logits, const int32_t *target,
    int64_t ignoreIndex, float *loss, float *lse, float *stats,
    const std::function<void(void *data, size_t count, bool max)> &reduce,
    int32_t op = -1);
/// Its backward: crossEntropyBwd's columns [start, start + classesLocal),
/// bit for bit; no communication.
void crossEntropyBwdSharded(CudaContext &ctx, int64_t rows,
                            int64_t classesLocal, int64_t classes,
                            int64_t start, const float *logits,
                            const int32_t *target, int64_t ignoreIndex,
                            const float *lse, const float *dloss,
                            float *dlogits, int32_t op = -1);
/// out[i, :] = table[ids[i], :]; a bad id sets the error word
/// (kEmbeddingIdOutOfRange) and leaves its row unwritten.
void embeddingFwd(CudaContext &ctx, int64_t n, int64_t vocab, int64_t dim,
                  const int32_t *ids, const float *table, float *out,
                  int32_t op = -1);
/// dtable = 0, then dtable[ids[i], :] += dout[i, :], deterministic: the
/// (id, position) pairs are stably radix-sorted and each table row is summed
/// by one thread block in position order, in double: bitwise the CPU
/// kernel's result. Bad ids set the error word and are skipped. Uses ctx
/// scratch.
void embeddingBwd(CudaContext &ctx, int64_t n, int64_t vocab, int64_t dim,
                  const int32_t *ids, const float *dout, float *dtable,
                  int32_t op = -1);
/// Vocabulary-parallel (loom_embedding_{fwd,bwd}_sharded): this rank's
/// table holds rows [start, start + vocabLocal) of vocab. Forward: other
/// ids give zero rows; backward: embeddingBwd on this rank's rows. An id
/// outside [0, vocab) sets the error word.
void embeddingFwdSharded(CudaContext &ctx, int64_t n, int64_t vocabLocal,
                         int64_t vocab, int64_t start, int64_t dim,
                         const int32_t *ids, const float *table, float *out,
                         int32_t op = -1);
void embeddingBwdSharded(CudaContext &ctx, int64_t n, int64_t vocabLocal,
                         int64_t vocab, int64_t start, int64_t dim,
                         const int32_t *ids, const float *dout, float *dtable,
                         int32_t op = -1);

//===----------------------------------------------------------------------===//
// Dropout
//===----------------------------------------------------------------------===//

/// Keeps element i when uniform01(philox(ctx.seed, key, *step, i) word 0) >= p
/// (runtime/kernels/Philox.h, the CPU's generator compiled for the device:
/// bit-identical masks and values); kept values scaled by 1/(1-p). `step` is
/// a device int64. p outside [0, 1] throws (it is a compile-time constant).
void dropoutFwd(CudaContext &ctx, int64_t n, float p, uint64_t key,
                const int64_t *step, const float *x, float *y);
void dropoutBwd(CudaContext &ctx, int64_t n, float p, uint64_t key,
                const int64_t *step, const float *dy, float *dx);

//===----------------------------------------------------------------------===//
// Optimizers (torch.optim semantics), device-side step state
//===----------------------------------------------------------------------===//

/// loom_adamw with lr, gradScale (device floats) and the step t >= 1 (device
/// int64). Same float operations in the same order as the CPU kernel (no
/// contraction into FMAs).
void adamw(CudaContext &ctx, int64_t n, float *param, const float *grad,
           float *m, float *v, const float *lr, float beta1, float beta2,
           float eps, float weightDecay, const float *gradScale,
           const int64_t *step);

/// One tensor of a multi-tensor AdamW (device memory, an array of these).
struct AdamWTensor {
  float *param;
  const float *grad;
  float *m;
  float *v;
  int64_t n;
  float weightDecay;
};
/// AdamW over `count` tensors described by the device array `tensors`, in
/// one launch; maxN is the largest n among them (it sizes the grid). Each
/// element gets exactly adamw's arithmetic.
void adamwMulti(CudaContext &ctx, const AdamWTensor *tensors, int32_t count,
                int64_t maxN, const float *lr, float beta1, float beta2,
                float eps, const float *gradScale, const int64_t *step);
/// Owns a device copy of a tensor list for adamwMulti (build it once, before
/// capturing a graph).
class AdamWTensorList {
public:
  AdamWTensorList(CudaContext &ctx, const std::vector<AdamWTensor> &tensors);
  ~AdamWTensorList();
  AdamWTensorList(const AdamWTensorList &) = delete;
  AdamWTensorList &operator=(const AdamWTensorList &) = delete;
  const AdamWTensor *device() const { return list; }
  int32_t count() const { return size; }
  int64_t maxN() const { return largest; }

private:
  AdamWTensor *list = nullptr;
  int32_t size = 0;
  int64_t largest = 0;
};

/// loom_sgd with lr, gradScale and `first` (non-zero on the first step) as
/// device values. buf may be null when momentum == 0.
void sgd(CudaContext &ctx, int64_t n, float *param, const float *grad,
         float *buf, const float *lr, float momentum, bool nesterov,
         float weightDecay, const float *gradScale, const int32_t *first);

/// *out = sum of x^2 in double (accumulate: *out += it), deterministic: fixed
/// per-block partials (the grid depends on n only), then one block adds them
/// in a fixed order. Uses ctx scratch.
void sumSquares(CudaContext &ctx, int64_t n, const float *x, double *out,
                bool accumulate = false);

/// One tensor of a multi-tensor sumSquares: its partials are blocks
/// [first, first + blocks) of the launch.
struct SumSquaresItem {
  const float *x;
  int64_t n, first, blocks;
};

/// A device list of tensors for sumSquaresMulti (built once, reused).
class SumSquaresList {
public:
  SumSquaresList(CudaContext &ctx,
                 const std::vector<std::pair<const float *, int64_t>> &tensors);
  ~SumSquaresList();
  SumSquaresList(const SumSquaresList &) = delete;
  SumSquaresList &operator=(const SumSquaresList &) = delete;
  const SumSquaresItem *device() const { return list; }
  int32_t count() const { return size; }
  int64_t blocks() const { return totalBlocks; }

private:
  SumSquaresItem *list = nullptr;
  int32_t size = 0;
  int64_t totalBlocks = 0;
};

/// The sequence of calls sumSquares(x_0, out, accumulate), sumSquares(x_1,
/// out, true), ... in three launches, with bitwise the same result: each
/// tensor's partials and sum as sumSquares computes them, added into *out
/// in list order.
void sumSquaresMulti(CudaContext &ctx, const SumSquaresList &tensors,
                     double *out, bool accumulate);

/// loom_adaptive_clip on device state, one thread: *coef = the clipping
/// coefficient for *norm; history (window floats) and *count as the CPU.
void adaptiveClip(CudaContext &ctx, const float *norm, float *history,
                  int64_t window, int64_t *count, float sigmas, float maxNorm,
                  bool record, float *coef);

/// loom_check_finite's scan (the caller launches it only under
/// --check-numerics): dtype 0 f32, 1 bf16, 2 f16. The first (lowest-index)
/// inf or NaN sets the error word (kNotFinite, `op`); a no-op once another
/// op has set it.
void checkFinite(CudaContext &ctx, const void *data, int64_t n, int32_t dtype,
                 int64_t op);

//===----------------------------------------------------------------------===//
// Glue
//===----------------------------------------------------------------------===//

/// x[0..n) = value (host constant).
void fill(CudaContext &ctx, float *x, int64_t n, float value);
void fillU16(CudaContext &ctx, uint16_t *x, int64_t n, uint16_t value);
void fillI32(CudaContext &ctx, int32_t *x, int64_t n, int32_t value);
void fillI64(CudaContext &ctx, int64_t *x, int64_t n, int64_t value);
/// cudaMemcpyAsync device to device on ctx.stream.
void copy(CudaContext &ctx, void *dst, const void *src, size_t bytes);

/// Scalar dtypes of scalarCopy.
enum ScalarType : int32_t { kF32 = 0, kF64 = 1, kI32 = 2, kI64 = 3 };
/// *dst = convert(*src), one device scalar to another (a loss into an output
/// slot, a double norm into a float, the step counter into a float, ...).
/// With sqrtOf, dst = sqrt(src) (computed in double).
void scalarCopy(CudaContext &ctx, const void *src, ScalarType srcType,
                void *dst, ScalarType dstType, bool sqrtOf = false);

/// Casts, rounding to nearest-even exactly as runtime/kernels/LowPrecision.cpp
/// (bit-identical, NaN and overflow included).
void castF32ToBf16(CudaContext &ctx, const float *x, uint16_t *y, int64_t n);
void castBf16ToF32(CudaContext &ctx, const uint16_t *x, float *y, int64_t n);
void castF32ToF16(CudaContext &ctx, const float *x, uint16_t *y, int64_t n);
void castF16ToF32(CudaContext &ctx, const uint16_t *x, float *y, int64_t n);

} // namespace loom::cuda

#endif // LOOM_RUNTIME_CUDA_CUDAKERNELS_H
