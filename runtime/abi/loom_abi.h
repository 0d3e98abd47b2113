/*===- loom_abi.h - the C ABI between generated code and the runtime -----===*
 *
 * The one runtime header the compiler includes. A .loomx artifact's native
 * code calls these functions (loom-run exports them) and exports the entry
 * points declared at the end. Everything is plain C: pointers to contiguous
 * row-major buffers, int64 sizes, float32 data unless a name says otherwise.
 *
 * Conventions:
 *  - `ctx` is the runtime's per-rank context: thread pool, run seed, current
 *    step, error slot. A kernel that meets invalid data (an embedding id out
 *    of range, ...) records the error in ctx with loom_error() and returns;
 *    the runtime checks after each program call and stops with a message.
 *  - Gradient outputs are overwritten, never accumulated, unless the name
 *    says `accumulate`.
 *  - Random streams are Philox-4x32-10 keyed by (run seed, a 64-bit key)
 *    and counted by element index; see runtime/README.md.
 *
 *===----------------------------------------------------------------------===*/
#ifndef LOOM_RUNTIME_ABI_LOOM_ABI_H
#define LOOM_RUNTIME_ABI_LOOM_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Bumped whenever a signature below changes; artifacts record it. ABI 3
 *  added the sharded kernels, the non-blocking all-reduce and the manifest's
 *  per-rank (local) shapes with `global_shape` and `shard` (ARTIFACT.md);
 *  additions within ABI 3: loom_send / loom_recv and the manifest's pipeline
 *  fields (`stages`, `stage_arena_bytes`, per-stage `programs`, `stage` on
 *  buffers); loom_trace_begin / loom_trace_end and the manifest's
 *  `trace_spans`. The runtime still runs ABI 2 artifacts of one rank. */
#define LOOM_ABI_VERSION 3

typedef struct loom_ctx loom_ctx;

/** Records an error (the first one wins) naming the kernel and the cause. */
void loom_error(loom_ctx *ctx, const char *op, const char *message);

/** The optimizer step s being run (1-based), as the runtime counts it; the
 *  learning-rate schedule follows it. */
int64_t loom_step(loom_ctx *ctx);

/* --- GEMM --------------------------------------------------------------- */
/** For b in [0, batch): C_b = alpha * op(A_b) @ op(B_b) + beta * C_b, with
 *  op(X) = X or X^T, A_b = A + b*strideA (elements; 0 broadcasts one matrix
 *  to every batch), likewise B and C. op(A) is MxK, op(B) is KxN, C is MxN,
 *  all row-major and dense (leading dimension = number of columns). */
void loom_gemm(loom_ctx *ctx, int64_t batch, int32_t transA, int32_t transB,
               int64_t M, int64_t N, int64_t K, const float *A,
               int64_t strideA, const float *B, int64_t strideB, float *C,
               int64_t strideC, float alpha, float beta);

/** The same with bf16 (or IEEE f16) operands and result, stored as 16-bit
 *  patterns: products accumulate in f32 and each output is rounded once to
 *  nearest-even (since ABI 2; alpha = 1, beta = 0). */
void loom_gemm_bf16(loom_ctx *ctx, int64_t batch, int32_t transA,
                    int32_t transB, int64_t M, int64_t N, int64_t K,
                    const uint16_t *A, int64_t strideA, const uint16_t *B,
                    int64_t strideB, uint16_t *C, int64_t strideC);
void loom_gemm_f16(loom_ctx *ctx, int64_t batch, int32_t transA,
                   int32_t transB, int64_t M, int64_t N, int64_t K,
                   const uint16_t *A, int64_t strideA, const uint16_t *B,
                   int64_t strideB, uint16_t *C, int64_t strideC);

/* --- INT8 inference (additions within ABI 3) ----------------------------- */
/** Per-output-channel symmetric INT8 weights (SEMANTICS.md, quantization):
 *  for w [K, N] (y = x @ w), scale[n] = max(max_k |w[k, n]| / 127, 2^-23)
 *  and wq[k, n] = clamp(round_half_even(w[k, n] * (1 / scale[n])), -127,
 *  127). A non-finite weight is an error. */
void loom_quantize_weight_s8(loom_ctx *ctx, int64_t K, int64_t N,
                             const float *w, int8_t *wq, float *scale);
/** y [M, N] = the INT8 product of x [M, K] and wq [K, N], dequantized: x is
 *  quantized per tensor to UINT8 from range = {min, max} (widened to include
 *  0; scale s = max((max - min) / 255, 2^-23), zero point z =
 *  clamp(round_half_even(-min / s), 0, 255), q = clamp(round_half_even(x *
 *  (1 / s)) + z, 0, 255)), products accumulate exactly in INT32, and
 *  y[m, n] = float(acc[m, n]) * (s * wscale[n]) -- the fake-quantized
 *  product up to that one rounding. Where the CPU has VNNI (exact there):
 *  a oneDNN matmul with wq reordered once into its layout, cached per
 *  weight buffer until loom_quantize_weight_s8 (or _conv_weight_s8)
 *  rewrites that buffer (wq must not change otherwise); elsewhere a plain
 *  loop. */
void loom_qgemm_u8s8(loom_ctx *ctx, int64_t M, int64_t N, int64_t K,
                     const float *x, const float *range, const int8_t *wq,
                     const float *wscale, float *y);
/** An INT8 linear layer with its neighbours fused (an inference artifact's
 *  requantized chains): acc = xq @ wq exactly in INT32, where xq [M, K] is x
 *  quantized from rangeIn as loom_qgemm_u8s8 does (with
 *  LOOM_QLINEAR_SYMMETRIC_INPUT symmetrically: s = max(max(-min, max) /
 *  127, 2^-23), q = clamp(round_half_even(x * (1 / s)), -127, 127), held
 *  as UINT8 with 128 added), or x
 *  itself (UINT8 bits) with LOOM_QLINEAR_QUANTIZED_INPUT; then v =
 *  float(acc) * (scale_in * wscale[n]) (the zero point taken out exactly),
 *  + bias[n] with LOOM_QLINEAR_BIAS, max(v, 0) with LOOM_QLINEAR_RELU, and
 *  y [M, N] = v (f32), or with LOOM_QLINEAR_QUANTIZED_OUTPUT v quantized
 *  to UINT8 from rangeOut (the next layer's input). Every rounding is the
 *  one the unfused ops make. Pointers of flags not set are not read. */
#define LOOM_QLINEAR_QUANTIZED_INPUT 1
#define LOOM_QLINEAR_SYMMETRIC_INPUT 2
#define LOOM_QLINEAR_BIAS 4
#define LOOM_QLINEAR_RELU 8
#define LOOM_QLINEAR_QUANTIZED_OUTPUT 16
#define LOOM_QLINEAR_SYMMETRIC_OUTPUT 32
void loom_qlinear(loom_ctx *ctx, int64_t M, int64_t N, int64_t K,
                  const void *x, int32_t flags, const float *rangeIn,
                  const int8_t *wq, const float *wscale, const float *bias,
                  const float *rangeOut, void *y);
/** A conv2d weight w [O, K = C*kh*kw] in INT8 with the following batch
 *  norm folded (fold != 0): f = gamma * (1 / sqrt(var + eps)) per output
 *  channel (1 without fold), scale[o] = max(max_k |w[o, k] * f| / 127,
 *  2^-23), wq [K, O] (transposed: the product's layout) = clamp(round(w *
 *  f / scale), -127, 127), bias[o] = beta - mean * f (0 without fold). */
void loom_quantize_conv_weight_s8(loom_ctx *ctx, int64_t O, int64_t K,
                                  const float *w, const float *gamma,
                                  const float *beta, const float *mean,
                                  const float *var, int32_t fold, float eps,
                                  int8_t *wq, float *scale, float *bias);
/** An INT8 conv2d (NCHW, no dilation): x quantized from range as
 *  loom_qlinear does (LOOM_QLINEAR_SYMMETRIC_INPUT), its UINT8 columns
 *  times wq [C*KH*KW, O], + bias[o] (LOOM_QLINEAR_BIAS), ReLU
 *  (LOOM_QLINEAR_RELU): y [N, O, Ho, Wo] in f32. */
void loom_qconv2d(loom_ctx *ctx, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t O, int64_t KH, int64_t KW, int64_t stride,
                  int64_t pad, const float *x, int32_t flags,
                  const float *range, const int8_t *wq, const float *wscale,
                  const float *bias, float *y);
/** The min/max observer of post-training quantization's calibration:
 *  out = {min(range[0], min x), max(range[1], max x)} (out may be range). A
 *  NaN in x is an error. */
void loom_observe_range(loom_ctx *ctx, int64_t n, const float *x,
                        const float *range, float *out);

/** The percentile observer of post-training calibration: with b = {the
 *  (100 - percentile)-th, the percentile-th percentile of x} (linear
 *  interpolation between order statistics), out = b at calibration batch 1
 *  (loom_step), else range + (b - range) / batch: the mean over the
 *  batches. A NaN in x is an error. */
void loom_observe_percentile(loom_ctx *ctx, int64_t n, const float *x,
                             const float *range, float percentile,
                             float *out);

/* --- Quantization-aware training (additions within ABI 3) ---------------- */
/** scale[n] = max(max_k |w[k, n]| / 127, 2^-23) for w [K, N]: the
 *  per-channel symmetric scales of loom_quantize_weight_s8, without the
 *  INT8 weights (K * N elements, N = 1: one per-tensor scale). A
 *  non-finite weight is an error. */
void loom_weight_scale_s8(loom_ctx *ctx, int64_t K, int64_t N, const float *w,
                          float *scale);
/** scale[o] = max(max_k |w[o, k]| / 127, 2^-23) for w [O, K]: a conv2d
 *  weight's per-output-channel scales (w [O, C, kh, kw] as [O, C*kh*kw]).
 *  A non-finite weight is an error. */
void loom_weight_scale_rows_s8(loom_ctx *ctx, int64_t O, int64_t K,
                               const float *w, float *scale);
/** The moving-average min/max observer (torch's
 *  MovingAverageMinMaxObserver): with the batch's b = {min x, max x},
 *  out = b at step 1, else range + momentum * (b - range); after step
 *  `freeze` (when freeze >= 0) out = range. out may be range. A NaN in x
 *  is an error. */
void loom_observe_ema(loom_ctx *ctx, int64_t n, const float *x,
                      const float *range, float momentum, int64_t freeze,
                      float *out);
/** An activation's quantization parameters from its range (SEMANTICS.md):
 *  the range widened to include 0; affine: scale = max((max - min) / 255,
 *  2^-23), zero point clamp(round_half_even(-min / scale), 0, 255);
 *  symmetric: scale = max(max(-min, max) / 127, 2^-23), zero point 0. */
void loom_range_qparams(loom_ctx *ctx, const float *range, int32_t symmetric,
                        float *scale, float *zeroPoint);

/* --- Convolution and batch normalisation (NCHW; additions within ABI 3) -- */
/** y [N, O, Ho, Wo] = conv2d(x [N, C, H, W], w [O, C, KH, KW]) with stride
 *  and zero padding `pad` on both sides, Ho = (H + 2 pad - KH) / stride +
 *  1 (likewise Wo); no bias. */
void loom_conv2d_fwd(loom_ctx *ctx, int64_t N, int64_t C, int64_t H, int64_t W,
                     int64_t O, int64_t KH, int64_t KW, int64_t stride,
                     int64_t pad, const float *x, const float *w, float *y);
/** dx = the gradient of loom_conv2d_fwd for x, given dy. */
void loom_conv2d_bwd_data(loom_ctx *ctx, int64_t N, int64_t C, int64_t H,
                          int64_t W, int64_t O, int64_t KH, int64_t KW,
                          int64_t stride, int64_t pad, const float *dy,
                          const float *w, float *dx);
/** dw = the gradient of loom_conv2d_fwd for w, given x and dy. */
void loom_conv2d_bwd_weight(loom_ctx *ctx, int64_t N, int64_t C, int64_t H,
                            int64_t W, int64_t O, int64_t KH, int64_t KW,
                            int64_t stride, int64_t pad, const float *x,
                            const float *dy, float *dw);
/** Training batch norm of x [N, C, S] per channel c: the batch's mean and
 *  biased variance (statistics in double), rstd = 1 / sqrt(var + eps), y =
 *  (x - mean) * rstd * gamma + beta; newMean/newVar = (1 - momentum) *
 *  running + momentum * (mean, unbiased variance). */
void loom_batch_norm_fwd(loom_ctx *ctx, int64_t N, int64_t C, int64_t S,
                         const float *x, const float *gamma, const float *beta,
                         const float *runningMean, const float *runningVar,
                         float momentum, float eps, float *y, float *mean,
                         float *rstd, float *newMean, float *newVar);
/** Evaluation batch norm: the running statistics normalise. */
void loom_batch_norm_eval(loom_ctx *ctx, int64_t N, int64_t C, int64_t S,
                          const float *x, const float *gamma, const float *beta,
                          const float *runningMean, const float *runningVar,
                          float eps, float *y);
/** The VJP of loom_batch_norm_fwd: dx, dgamma, dbeta. */
void loom_batch_norm_bwd(loom_ctx *ctx, int64_t N, int64_t C, int64_t S,
                         const float *dy, const float *x, const float *gamma,
                         const float *mean, const float *rstd, float *dx,
                         float *dgamma, float *dbeta);

/* --- Normalisation and softmax (over the last dimension, `cols`) --------- */
void loom_layer_norm_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                         const float *x, const float *gain, const float *bias,
                         float eps, float *y, float *mean, float *rstd);
void loom_layer_norm_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                         const float *dy, const float *x, const float *gain,
                         const float *mean, const float *rstd, float *dx,
                         float *dgain, float *dbias);
void loom_rms_norm_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                       const float *x, const float *gain, float eps, float *y,
                       float *rstd);
void loom_rms_norm_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                       const float *dy, const float *x, const float *gain,
                       const float *rstd, float *dx, float *dgain);
void loom_softmax_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                      const float *x, float *y);
/** dx = y * (dy - sum(dy * y)). */
void loom_softmax_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                      const float *y, const float *dy, float *dx);
void loom_log_softmax_fwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                          const float *x, float *y);
/** dx = dy - exp(y) * sum(dy). */
void loom_log_softmax_bwd(loom_ctx *ctx, int64_t rows, int64_t cols,
                          const float *y, const float *dy, float *dx);

/* --- Losses -------------------------------------------------------------- */
/** loss[0] = mean over rows with target != ignore_index of
 *  logsumexp(logits_row) - logits_row[target]; 0 when no row counts.
 *  lse[r] = logsumexp of row r (for the backward pass). stats[0] = number of
 *  counted rows, stats[1] = counted rows whose argmax (first maximum) equals
 *  the target. A target outside [0, classes) that is not ignore_index is an
 *  error. */
void loom_cross_entropy_fwd(loom_ctx *ctx, int64_t rows, int64_t classes,
                            const float *logits, const int32_t *target,
                            int64_t ignore_index, float *loss, float *lse,
                            float *stats);
/** dlogits = dloss[0] / counted * (softmax(logits) - onehot(target)) on
 *  counted rows, 0 on ignored rows. */
void loom_cross_entropy_bwd(loom_ctx *ctx, int64_t rows, int64_t classes,
                            const float *logits, const int32_t *target,
                            int64_t ignore_index, const float *lse,
                            const float *dloss, float *dlogits);

/* --- Embedding ------------------------------------------------------------ */
/** out[i, :] = table[ids[i], :]; an id outside [0, vocab) is an error. */
void loom_embedding_fwd(loom_ctx *ctx, int64_t n, int64_t vocab, int64_t dim,
                        const int32_t *ids, const float *table, float *out);
/** dtable = 0, then dtable[ids[i], :] += dout[i, :]. */
void loom_embedding_bwd(loom_ctx *ctx, int64_t n, int64_t vocab, int64_t dim,
                        const int32_t *ids, const float *dout, float *dtable);

/* --- Vocabulary-parallel embedding and cross-entropy (since ABI 3) ------- */
/** The table's rows are split over mesh axis `axis` (0 dp, 1 tp, 2 pp; -1:
 *  not split, identical to loom_embedding_fwd): this rank holds rows
 *  [start, start + vocab_local), start = coord(axis) * vocab_local. An id
 *  outside [0, vocab_local * groupsize(axis)) is an error (loom_error); an
 *  id outside this rank's range gives a zero row (the program then
 *  all-reduces the partial rows over `axis`). No communication. */
void loom_embedding_fwd_sharded(loom_ctx *ctx, int64_t n, int64_t vocab_local,
                                int64_t dim, int32_t axis, const int32_t *ids,
                                const float *table, float *out);
/** dtable = 0, then dtable[ids[i] - start, :] += dout[i, :] for the ids in
 *  this rank's range (rows summed in position order, in double, as
 *  loom_embedding_bwd does). No communication. */
void loom_embedding_bwd_sharded(loom_ctx *ctx, int64_t n, int64_t vocab_local,
                                int64_t dim, int32_t axis, const int32_t *ids,
                                const float *dout, float *dtable);
/** Vocabulary-parallel cross-entropy: logits [rows, classes_local] hold this
 *  rank's classes [start, start + classes_local) of the global
 *  classes_local * groupsize(axis), start = coord(axis) * classes_local.
 *  Computes what loom_cross_entropy_fwd computes on the gathered logits
 *  (loss = mean over counted rows of lse - logit[target], lse per row,
 *  stats[0] = counted rows, stats[1] = counted rows whose global argmax --
 *  the first maximum, lowest global index -- equals the target) with two
 *  all-reduces over `axis`: the per-row maximum with its lowest global index
 *  (MPI_MAXLOC), then the per-row sum of exp(logit - max) and the target
 *  logit (in double). Every member of the group gets identical loss, lse and
 *  stats; they agree with the unsharded kernel up to the order of the sum of
 *  exponentials. Targets are global class indices; one outside [0, global
 *  classes) that is not ignore_index is an error (the collectives still run,
 *  so no member is left waiting). axis -1: identical to
 *  loom_cross_entropy_fwd. */
void loom_cross_entropy_fwd_sharded(loom_ctx *ctx, int64_t rows,
                                    int64_t classes_local, int32_t axis,
                                    const float *logits, const int32_t *target,
                                    int64_t ignore_index, float *loss,
                                    float *lse, float *stats);
/** dlogits = dloss[0] / counted * (exp(logits - lse) - onehot(target -
 *  start)) on counted rows, 0 on ignored rows; lse is the global per-row
 *  log-sum-exp the forward saved. No communication: bitwise the unsharded
 *  kernel's columns [start, start + classes_local). */
void loom_cross_entropy_bwd_sharded(loom_ctx *ctx, int64_t rows,
                                    int64_t classes_local, int32_t axis,
                                    const float *logits, const int32_t *target,
                                    int64_t ignore_index, const float *lse,
                                    const float *dloss, float *dlogits);

/** loom_cross_entropy_fwd/bwd on bf16 logits (bit patterns, each widened
 *  exactly on load: the fp32 functions' results on the widened logits, bit
 *  for bit) and, backward, bf16 dlogits (each rounded once to nearest even):
 *  a bf16 program's casts around its loss folded in (since ABI 3). */
void loom_cross_entropy_fwd_bf16(loom_ctx *ctx, int64_t rows, int64_t classes,
                                 const uint16_t *logits, const int32_t *target,
                                 int64_t ignore_index, float *loss, float *lse,
                                 float *stats);
void loom_cross_entropy_bwd_bf16(loom_ctx *ctx, int64_t rows, int64_t classes,
                                 const uint16_t *logits, const int32_t *target,
                                 int64_t ignore_index, const float *lse,
                                 const float *dloss, uint16_t *dlogits);

/* --- Attention (q: [B,H,Tq,D], k: [B,H,Tk,D], v: [B,H,Tk,Dv]) ------------ */
/** out = softmax(q k^T / sqrt(D) + mask) v, mask = -inf above the diagonal
 *  when causal (query t sees keys <= t + (Tk - Tq)); lse: [B,H,Tq] row
 *  log-sum-exp of the scaled, masked scores (for the backward pass). */
void loom_attention_fwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t Tq,
                        int64_t Tk, int64_t D, int64_t Dv, int32_t causal,
                        const float *q, const float *k, const float *v,
                        float *out, float *lse);
void loom_attention_bwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t Tq,
                        int64_t Tk, int64_t D, int64_t Dv, int32_t causal,
                        const float *q, const float *k, const float *v,
                        const float *out, const float *lse, const float *dout,
                        float *dq, float *dk, float *dv);
/** SEMANTICS.md's gated attention (T = Tq = Tk): gate[b,h,t] = sigmoid(
 *  sum_j [q[b,h,t,:]; k[b,h,t,:]]_j * wg[h,j] + bg[h]), wg: [H, 2D], bg: [H];
 *  attn = attention(q,k,v) (saved), out = gate * attn. With threshold >= 0
 *  (the opt-in approximate mode) a (b,h,t) whose gate is below threshold
 *  outputs 0 and skips its attention row; threshold < 0 is exact. */
void loom_gated_attention_fwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t T,
                              int64_t D, int64_t Dv, int32_t causal,
                              float threshold, const float *q, const float *k,
                              const float *v, const float *wg, const float *bg,
                              float *out, float *lse, float *gate,
                              float *attn);
void loom_gated_attention_bwd(loom_ctx *ctx, int64_t B, int64_t H, int64_t T,
                              int64_t D, int64_t Dv, int32_t causal,
                              float threshold, const float *q, const float *k,
                              const float *v, const float *wg, const float *bg,
                              const float *lse, const float *gate,
                              const float *attn, const float *dout, float *dq,
                              float *dk, float *dv, float *dwg, float *dbg);
/* CUDA artifacts only (runtime/cuda/GpuAbi.cpp, additions within ABI 3):
 * loom_cuda_gated_attention_bthd_fwd/bwd, the two above on bf16 q, k, v,
 * out, attn, dout, dq, dk, dv laid out [B,T,H,D] (lse, gate, wg, bg, dwg,
 * dbg f32 as above), and loom_cuda_layer_norm_fwd_bf16 (bf16 y) /
 * loom_cuda_layer_norm_bwd_bf16 (bf16 dy), the layer norm's with the
 * program's roundings folded in; loom_cuda_gemm_bias_gelu_bf16(ctx, ta, tb,
 * M, N, K, A, B, bias, Y, pre) and loom_cuda_gemm_gelu_grad_bf16(ctx, ta,
 * tb, M, N, K, A, B, pre, D), one bf16 GEMM with GELU (bf16 bias, pre =
 * GELU's input) or GELU's derivative at pre in its epilogue. The CPU
 * runtime has no such functions: the compiler emits them for --target=cuda
 * alone. */

/* --- Dropout -------------------------------------------------------------- */
/** Keeps element i when philox(seed, key, step, i) >= p (as a uniform in
 *  [0,1)), scaling kept values by 1/(1-p); `step` is the runtime's current
 *  step (ctx). The same (key, step, i) gives the same mask in backward. */
void loom_dropout_fwd(loom_ctx *ctx, int64_t n, float p, uint64_t key,
                      const float *x, float *y);
void loom_dropout_bwd(loom_ctx *ctx, int64_t n, float p, uint64_t key,
                      const float *dy, float *dx);

/* --- Optimizers (torch.optim semantics, SEMANTICS.md) --------------------- */
/** g' = grad * grad_scale; p -= lr * wd * p (decoupled, when wd != 0);
 *  m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 *  p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). t >= 1. */
void loom_adamw(loom_ctx *ctx, int64_t n, float *param, const float *grad,
                float *m, float *v, float lr, float beta1, float beta2,
                float eps, float weight_decay, float grad_scale, int64_t t);
/** g' = grad * grad_scale + wd * p; with momentum: buf = g' on the first
 *  step (first != 0), else buf = momentum * buf + g'; update = nesterov ?
 *  g' + momentum * buf : buf; p -= lr * update. */
void loom_sgd(loom_ctx *ctx, int64_t n, float *param, const float *grad,
              float *buf, float lr, float momentum, int32_t nesterov,
              float weight_decay, float grad_scale, int32_t first);
/** Sum of squares of x, accumulated in double, returned as double. */
double loom_sum_squares(loom_ctx *ctx, int64_t n, const float *x);

/** Adaptive clipping (SEMANTICS.md, since ABI 2). history is a ring of
 *  `window` pre-clip norms, *count how many steps were recorded (it may
 *  exceed window). Returns min(1, threshold / (norm + 1e-6)) with threshold =
 *  mean + sigmas * std (population) of the last `window` norms once
 *  *count >= window, else max_norm (<= 0: no bound, coefficient 1). When
 *  `record` is non-zero the norm is then appended and *count incremented. */
float loom_adaptive_clip(loom_ctx *ctx, float norm, float *history,
                         int64_t window, int64_t *count, float sigmas,
                         float max_norm, int32_t record);

/** --check-numerics (since ABI 2): when the runtime enables it, scans the n
 *  elements of an op's output (dtype 0 f32, 1 bf16, 2 f16) and reports the
 *  first inf/NaN as an error naming op `op` of the manifest's "ops" table.
 *  A no-op otherwise, and after the step's first error. */
void loom_check_finite(loom_ctx *ctx, const void *data, int64_t n,
                       int32_t dtype, int64_t op);

/* --- Collectives (additions within ABI 2) -------------------------------- */
/** Over the ranks of this rank's group on mesh axis `axis` (0 dp, 1 tp,
 *  2 pp): the ranks that share the other two mesh coordinates, ordered by
 *  their coordinate on `axis` (runtime/README.md has the rank mapping). Every
 *  member must make the same calls in the same order with the same n. Float32,
 *  n <= INT32_MAX. The result is deterministic: the same inputs give bitwise
 *  the same output on every member and on every call. A group of one rank
 *  copies. Errors (bad axis, op, root or count; an MPI failure) are reported
 *  through loom_error naming the collective and the axis. */
/** In place: data = sum (op 0) or max (op 1) of every member's data[0..n). */
void loom_all_reduce(loom_ctx *ctx, float *data, int64_t n, int32_t axis,
                     int32_t op);
/** out[k*n .. (k+1)*n) = member k's in[0..n); out holds group-size * n. */
void loom_all_gather(loom_ctx *ctx, const float *in, int64_t n, float *out,
                     int32_t axis);
/** in holds group-size * n; out[0..n) = sum over members of their
 *  in[r*n .. (r+1)*n), r this rank's coordinate (out == in: in place, the
 *  result at the start). */
void loom_reduce_scatter(loom_ctx *ctx, const float *in, int64_t n,
                         float *out, int32_t axis);
/** data[0..n) = member `root`'s data (root: a coordinate on `axis`). */
void loom_broadcast(loom_ctx *ctx, float *data, int64_t n, int32_t axis,
                    int32_t root);

/* --- Non-blocking all-reduce (since ABI 3) -------------------------------- */
/** Starts data = sum (op 0) or max (op 1) over the `axis` group, in place,
 *  for overlapping gradient buckets with the backward pass, and returns a
 *  handle (> 0; 0 after an argument error, which is reported through
 *  loom_error). The result is bitwise identical to loom_all_reduce on the
 *  same data: a progress thread of the runtime runs the same blocking
 *  reduction on a duplicate of the axis communicator, in start order, while
 *  the caller computes (runtime/README.md). data must not be read or written
 *  until loom_all_reduce_wait(handle) returns. Every member starts the same
 *  reductions in the same order; every started reduction must be waited in
 *  the same program call (a step that returns with one pending is an
 *  error). */
int64_t loom_all_reduce_start(loom_ctx *ctx, float *data, int64_t n,
                              int32_t axis, int32_t op);
/** Blocks until the reduction of `handle` has completed. Waiting an unknown
 *  or already waited handle is an error. */
void loom_all_reduce_wait(loom_ctx *ctx, int64_t handle);

/* --- Point-to-point between pipeline stages (since ABI 3) ----------------- */
/** Along mesh axis `axis` (pipeline stages: axis 2 = pp), within this
 *  rank's axis group (the ranks that share its other two coordinates).
 *  `peer` is a signed offset in coordinates along the axis (+1: the next
 *  stage, -1: the previous one); a peer outside the group, or 0, is an
 *  error. `tag` identifies the message: tag = microbatch * 65536 + slot
 *  (0 <= tag <= MPI_TAG_UB, which is at least 2^31 - 1 under Open MPI).
 *  Float32, 0 <= n <= INT32_MAX. A send and its recv match by (peer pair,
 *  tag) and must have the same n; messages with the same peer pair and tag
 *  arrive in send order. Errors are reported through loom_error naming the
 *  rank, its stage, the peer's stage, the micro-batch, the slot and sizes.
 *
 *  loom_send never blocks the caller on the peer: it copies data into a
 *  runtime buffer (the caller may reuse `data` at once) and starts the
 *  transfer; the runtime completes it no later than the end of the program
 *  call (a send still pending then is waited for, under the watchdog). */
void loom_send(loom_ctx *ctx, const float *data, int64_t n, int32_t axis,
               int32_t peer, int64_t tag);
/** Blocks until the message (peer, tag) has arrived in data[0..n). The
 *  watchdog (loom-run --timeout) ends the job when it does not arrive in
 *  time, naming rank, stage, peer stage, micro-batch and slot. A message of
 *  another size is an error (the message is consumed, data is unchanged). */
void loom_recv(loom_ctx *ctx, float *data, int64_t n, int32_t axis,
               int32_t peer, int64_t tag);

/** This rank's coordinate on mesh axis `axis` (0 dp, 1 tp, 2 pp): its
 *  position in that axis group; 0 without a mesh. Sharded programs use it to
 *  address their slice of a tensor split over `axis` (since ABI 3). */
int64_t loom_mesh_coord(loom_ctx *ctx, int32_t axis);

/* --- Pipeline schedule markers (additions within ABI 3) ----------------- */
/** Pipeline schedule markers: the compiler brackets each group of ops of one
 *  micro-batch and phase (forward/backward) with begin/end; `span` indexes
 *  the manifest's "trace_spans" array of names (e.g. "F0", "B3"). No-ops
 *  unless loom-run traces (--trace): then each begin/end pair of one program
 *  call becomes a complete event named trace_spans[span] ("span N" for an
 *  index outside the array) on the rank's "compute" thread. Pairs match by
 *  span index, innermost first; an end without a begin, or a begin left open
 *  when the program returns, is dropped (loom-run warns once). */
void loom_trace_begin(loom_ctx *ctx, int64_t span);
void loom_trace_end(loom_ctx *ctx, int64_t span);

/* --- Entry points an artifact exports ------------------------------------- */
/** A program: one call runs one training step (or one evaluation batch) on
 *  the arena laid out by the artifact's memory plan. */
typedef void (*loom_program_fn)(loom_ctx *ctx, uint8_t *arena);

#ifdef __cplusplus
}
#endif

#endif /* LOOM_RUNTIME_ABI_LOOM_ABI_H */
