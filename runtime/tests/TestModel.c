/*===- TestModel.c - a hand-written stand-in for compiled code -----------===*
 *
 * What loomc will emit, written by hand so that loom-run can be tested end to
 * end before code generation exists: programs of type loom_program_fn that
 * work on a fixed arena layout (the one LoomRunTest.cpp writes into the
 * manifest) and report errors through loom_error, which they resolve from
 * the loom-run executable at dlopen time, as they do loom_sum_squares (a
 * kernel of runtime/kernels/: the check that loom-run exports the ABI).
 *
 *  - softmax regression (x f32[64, 64], y i32[64] -> 10 classes), plain SGD:
 *    loom_test_train_step / loom_test_eval_step
 *  - a bigram language model (tokens, targets i32[8, 16], vocab 256):
 *    loom_bigram_train_step / loom_bigram_eval_step
 *
 *===----------------------------------------------------------------------===*/
#include "runtime/abi/loom_abi.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- softmax regression: layout shared with LoomRunTest.cpp ------------ */
#define B 64
#define F 64
#define C 10
#define W_OFF 0        /* f32[64, 10] */
#define BIAS_OFF 2560  /* f32[10] */
#define STEPS_OFF 2624 /* i64[] state: steps run so far */
#define X_OFF 2688     /* f32[64, 64] */
#define Y_OFF 19072    /* i32[64] */
/* Outputs: loss, grad_norm, lr, eval_loss, eval_count, eval_correct. */
#define OUT_OFF 19328
#define LR 0.5f

static int forward(loom_ctx *ctx, uint8_t *arena, float probs[B][C],
                   float *loss, float *correct) {
  const float *w = (const float *)(arena + W_OFF);
  const float *bias = (const float *)(arena + BIAS_OFF);
  const float *x = (const float *)(arena + X_OFF);
  const int32_t *y = (const int32_t *)(arena + Y_OFF);
  double total = 0;
  *correct = 0;
  for (int r = 0; r < B; ++r) {
    if (y[r] < 0 || y[r] >= C) {
      char msg[96];
      snprintf(msg, sizeof msg, "target %d outside [0, %d) in row %d", y[r], C,
               r);
      loom_error(ctx, "loom_cross_entropy_fwd", msg);
      return 0;
    }
    float logits[C], mx = -INFINITY;
    int arg = 0;
    for (int c = 0; c < C; ++c) {
      float s = bias[c];
      for (int k = 0; k < F; ++k)
        s += x[r * F + k] * w[k * C + c];
      logits[c] = s;
      if (s > mx) {
        mx = s;
        arg = c;
      }
    }
    double z = 0;
    for (int c = 0; c < C; ++c)
      z += exp((double)(logits[c] - mx));
    for (int c = 0; c < C; ++c)
      probs[r][c] = (float)(exp((double)(logits[c] - mx)) / z);
    total += log(z) + mx - logits[y[r]];
    *correct += (arg == y[r]);
  }
  *loss = (float)(total / B);
  return 1;
}

void loom_test_train_step(loom_ctx *ctx, uint8_t *arena) {
  int64_t *steps = (int64_t *)(arena + STEPS_OFF);
  if (loom_step(ctx) != *steps + 1) {
    loom_error(ctx, "test_train_step", "loom_step does not count steps from 1");
    return;
  }
  *steps += 1;
  float probs[B][C], loss, correct;
  if (!forward(ctx, arena, probs, &loss, &correct))
    return;
  float *w = (float *)(arena + W_OFF);
  float *bias = (float *)(arena + BIAS_OFF);
  const float *x = (const float *)(arena + X_OFF);
  const int32_t *y = (const int32_t *)(arena + Y_OFF);
  float dw[F * C], db[C];
  memset(dw, 0, sizeof dw);
  memset(db, 0, sizeof db);
  for (int r = 0; r < B; ++r)
    for (int c = 0; c < C; ++c) {
      float g = (probs[r][c] - (c == y[r])) / B;
      db[c] += g;
      for (int k = 0; k < F; ++k)
        dw[k * C + c] += x[r * F + k] * g;
    }
  /* A kernel from LoomKernels, resolved from loom-run at dlopen time: the
     check that the executable exports the whole ABI. */
  double norm = loom_sum_squares(ctx, F * C, dw) + loom_sum_squares(ctx, C, db);
  for (int i = 0; i < F * C; ++i)
    w[i] -= LR * dw[i];
  for (int c = 0; c < C; ++c)
    bias[c] -= LR * db[c];
  float *out = (float *)(arena + OUT_OFF);
  out[0] = loss;
  out[1] = (float)sqrt(norm);
  out[2] = LR;
}

void loom_test_eval_step(loom_ctx *ctx, uint8_t *arena) {
  float probs[B][C], loss, correct;
  if (!forward(ctx, arena, probs, &loss, &correct))
    return;
  float *out = (float *)(arena + OUT_OFF);
  out[3] = loss;
  out[4] = B;
  out[5] = correct;
}

/* ---- bigram language model --------------------------------------------- */
#define V 256
#define NB 8
#define T 16
#define TABLE_OFF 0       /* f32[256, 256] */
#define BSTEPS_OFF 262144 /* i64[] */
#define TOK_OFF 262208    /* i32[8, 16] */
#define TGT_OFF 262720    /* i32[8, 16] */
#define BOUT_OFF 263232
#define BLR 20.0f

static float bigram(loom_ctx *ctx, uint8_t *arena, int update, float *correct) {
  float *table = (float *)(arena + TABLE_OFF);
  const int32_t *tok = (const int32_t *)(arena + TOK_OFF);
  const int32_t *tgt = (const int32_t *)(arena + TGT_OFF);
  static float grad[V * V];
  if (update)
    memset(grad, 0, sizeof grad);
  double total = 0, norm = 0;
  *correct = 0;
  for (int i = 0; i < NB * T; ++i) {
    if (tok[i] < 0 || tok[i] >= V || tgt[i] < 0 || tgt[i] >= V) {
      loom_error(ctx, "loom_embedding_fwd", "token id outside [0, 256)");
      return NAN;
    }
    const float *row = table + tok[i] * V;
    float mx = -INFINITY;
    int arg = 0;
    for (int c = 0; c < V; ++c)
      if (row[c] > mx) {
        mx = row[c];
        arg = c;
      }
    double z = 0;
    for (int c = 0; c < V; ++c)
      z += exp((double)(row[c] - mx));
    total += log(z) + mx - row[tgt[i]];
    *correct += (arg == tgt[i]);
    if (update)
      for (int c = 0; c < V; ++c)
        grad[tok[i] * V + c] +=
            (float)((exp((double)(row[c] - mx)) / z - (c == tgt[i])) /
                    (NB * T));
  }
  if (update) {
    for (int i = 0; i < V * V; ++i) {
      norm += (double)grad[i] * grad[i];
      table[i] -= BLR * grad[i];
    }
    float *out = (float *)(arena + BOUT_OFF);
    out[1] = (float)sqrt(norm);
    out[2] = BLR;
  }
  return (float)(total / (NB * T));
}

void loom_bigram_train_step(loom_ctx *ctx, uint8_t *arena) {
  int64_t *steps = (int64_t *)(arena + BSTEPS_OFF);
  *steps += 1;
  float correct;
  float loss = bigram(ctx, arena, 1, &correct);
  ((float *)(arena + BOUT_OFF))[0] = loss;
}

void loom_bigram_eval_step(loom_ctx *ctx, uint8_t *arena) {
  float correct;
  float loss = bigram(ctx, arena, 0, &correct);
  float *out = (float *)(arena + BOUT_OFF);
  out[3] = loss;
  out[4] = NB * T;
  out[5] = correct;
}

/* ---- the softmax regression, partitioned (ABI 3) ------------------------ *
 * What loomc's partitioner emits, by hand: one SPMD program per mesh, every
 * rank running it on its own slices. The batch is split over dp (x [64/DP,
 * 64], y [64/DP]), the classes over tp (w [64, 10/TP], b [10/TP]), the loss
 * is the vocabulary-parallel cross-entropy over tp, and the gradients are
 * summed over dp with non-blocking all-reduces (or, with ZeRO-1, reduce-
 * scattered so that each dp rank updates its rows of w and its momentum
 * rows, then all-gathers w). Momentum SGD: m = 0.9 m + g, p -= 0.5 m.
 * The layout (LoomRunTest.cpp's kParallelManifest) leaves room for the full
 * tensors, so every variant uses the same offsets. */
#define PW_OFF 0        /* w: f32[64, 10/TP] */
#define PB_OFF 2560     /* b: f32[10/TP] */
#define PMW_OFF 2624    /* w.momentum: f32[64/(ZERO?DP:1), 10/TP] */
#define PMB_OFF 5184    /* b.momentum: f32[10/TP] */
#define PSTEPS_OFF 5248 /* steps: i64[] */
#define PX_OFF 5312     /* x: f32[64/DP, 64] */
#define PY_OFF 21696    /* y: i32[64/DP] */
#define POUT_OFF 21952  /* loss, grad_norm, lr, eval_loss, eval_count, ... */
#define PLR 0.5f
#define PMOMENTUM 0.9f

/* logits[r][c] = b[c] + sum_k x[r, k] w[k, c] over this rank's rows and
 * classes. */
static void par_logits(uint8_t *arena, int R, int CL, float *logits) {
  const float *w = (const float *)(arena + PW_OFF);
  const float *bias = (const float *)(arena + PB_OFF);
  const float *x = (const float *)(arena + PX_OFF);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CL; ++c) {
      float s = bias[c];
      for (int k = 0; k < F; ++k)
        s += x[r * F + k] * w[k * CL + c];
      logits[r * CL + c] = s;
    }
}

/* The watchdog's tests: at step 2 world rank 1 stops taking part (sleeps)
 * at one of these points, so that rank 0 waits in a collective there. */
enum { HANG_NONE, HANG_LOSS, HANG_GRADIENTS };
#include <stdlib.h>
#include <unistd.h>
static void maybe_hang(loom_ctx *ctx, int hang, int here) {
  const char *rank = getenv("OMPI_COMM_WORLD_RANK");
  if (hang == here && loom_step(ctx) == 2 && rank && strcmp(rank, "1") == 0)
    sleep(60);
}

static void par_train_hang(loom_ctx *ctx, uint8_t *arena, int DP, int TP,
                           int ZERO, int hang) {
  const int R = B / DP, CL = C / TP;
  int64_t *steps = (int64_t *)(arena + PSTEPS_OFF);
  if (loom_step(ctx) != *steps + 1) {
    loom_error(ctx, "par_train_step", "loom_step does not count steps from 1");
    return;
  }
  *steps += 1;
  float *w = (float *)(arena + PW_OFF), *bias = (float *)(arena + PB_OFF);
  float *mw = (float *)(arena + PMW_OFF), *mb = (float *)(arena + PMB_OFF);
  const float *x = (const float *)(arena + PX_OFF);
  const int32_t *y = (const int32_t *)(arena + PY_OFF);
  float logits[B * C], dlogits[B * C], lse[B], stats[2], loss;
  par_logits(arena, R, CL, logits);
  maybe_hang(ctx, hang, HANG_LOSS);
  loom_cross_entropy_fwd_sharded(ctx, R, CL, 1, logits, y, -1, &loss, lse,
                                 stats);
  /* The global batch's mean: every dp replica has R of its rows. */
  float global = loss / (float)DP;
  loom_all_reduce(ctx, &global, 1, 0, 0);
  float dloss = 1.0f / (float)DP;
  loom_cross_entropy_bwd_sharded(ctx, R, CL, 1, logits, y, -1, lse, &dloss,
                                 dlogits);
  float dw[F * C], db[C];
  memset(dw, 0, sizeof dw);
  memset(db, 0, sizeof db);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < CL; ++c) {
      float g = dlogits[r * CL + c];
      db[c] += g;
      for (int k = 0; k < F; ++k)
        dw[k * CL + c] += x[r * F + k] * g;
    }
  double sq;
  maybe_hang(ctx, hang, HANG_GRADIENTS);
  if (!ZERO) {
    /* Two buckets in flight at once, then the norm over the tp slices. */
    int64_t hw = loom_all_reduce_start(ctx, dw, F * CL, 0, 0);
    int64_t hb = loom_all_reduce_start(ctx, db, CL, 0, 0);
    loom_all_reduce_wait(ctx, hw);
    loom_all_reduce_wait(ctx, hb);
    float s = (float)(loom_sum_squares(ctx, F * CL, dw) +
                      loom_sum_squares(ctx, CL, db));
    loom_all_reduce(ctx, &s, 1, 1, 0);
    sq = s;
    for (int i = 0; i < F * CL; ++i) {
      mw[i] = PMOMENTUM * mw[i] + dw[i];
      w[i] -= PLR * mw[i];
    }
  } else {
    /* ZeRO-1: this dp rank's rows of dw, summed over dp. */
    const int rows = F / DP;
    const int64_t mine = loom_mesh_coord(ctx, 0);
    float part[F * C];
    loom_reduce_scatter(ctx, dw, (int64_t)rows * CL, part, 0);
    loom_all_reduce(ctx, db, CL, 0, 0);
    float s = (float)loom_sum_squares(ctx, (int64_t)rows * CL, part);
    loom_all_reduce(ctx, &s, 1, 0, 0);
    s += (float)loom_sum_squares(ctx, CL, db);
    loom_all_reduce(ctx, &s, 1, 1, 0);
    sq = s;
    float *wRows = w + mine * rows * CL;
    for (int i = 0; i < rows * CL; ++i) {
      mw[i] = PMOMENTUM * mw[i] + part[i];
      wRows[i] -= PLR * mw[i];
    }
    loom_all_gather(ctx, wRows, (int64_t)rows * CL, w, 0);
  }
  for (int c = 0; c < CL; ++c) {
    mb[c] = PMOMENTUM * mb[c] + db[c];
    bias[c] -= PLR * mb[c];
  }
  float *out = (float *)(arena + POUT_OFF);
  out[0] = global;
  out[1] = (float)sqrt(sq);
  out[2] = PLR;
}

static void par_train(loom_ctx *ctx, uint8_t *arena, int DP, int TP,
                      int ZERO) {
  par_train_hang(ctx, arena, DP, TP, ZERO, HANG_NONE);
}

static void par_eval(loom_ctx *ctx, uint8_t *arena, int DP, int TP) {
  const int R = B / DP, CL = C / TP;
  const int32_t *y = (const int32_t *)(arena + PY_OFF);
  float logits[B * C], lse[B], stats[2], loss;
  par_logits(arena, R, CL, logits);
  loom_cross_entropy_fwd_sharded(ctx, R, CL, 1, logits, y, -1, &loss, lse,
                                 stats);
  float sums[3] = {loss / (float)DP, stats[0], stats[1]};
  loom_all_reduce(ctx, sums, 3, 0, 0);
  float *out = (float *)(arena + POUT_OFF);
  out[3] = sums[0];
  out[4] = sums[1];
  out[5] = sums[2];
}

#define LOOM_PAR_PROGRAMS(NAME, DP, TP, ZERO)                                  \
  void loom_par_##NAME##_train_step(loom_ctx *ctx, uint8_t *arena) {           \
    par_train(ctx, arena, DP, TP, ZERO);                                       \
  }                                                                            \
  void loom_par_##NAME##_eval_step(loom_ctx *ctx, uint8_t *arena) {            \
    par_eval(ctx, arena, DP, TP);                                              \
  }
LOOM_PAR_PROGRAMS(1x1, 1, 1, 0)
LOOM_PAR_PROGRAMS(2x1, 2, 1, 0)
LOOM_PAR_PROGRAMS(1x2, 1, 2, 0)
LOOM_PAR_PROGRAMS(2x2, 2, 2, 0)
LOOM_PAR_PROGRAMS(2x1z, 2, 1, 1)
LOOM_PAR_PROGRAMS(2x2z, 2, 2, 1)

/* Rank 1 stops taking part at step 2: rank 0 waits in the sharded
 * cross-entropy's first collective over tp (1x2), in the loss's all-reduce
 * over dp (2x1), or in the progress thread's gradient reduction (2x1). */
void loom_par_hangce_train_step(loom_ctx *ctx, uint8_t *arena) {
  par_train_hang(ctx, arena, 1, 2, 0, HANG_LOSS);
}
void loom_par_hang_train_step(loom_ctx *ctx, uint8_t *arena) {
  par_train_hang(ctx, arena, 2, 1, 0, HANG_LOSS);
}
void loom_par_hangasync_train_step(loom_ctx *ctx, uint8_t *arena) {
  par_train_hang(ctx, arena, 2, 1, 0, HANG_GRADIENTS);
}

/* ---- a two-layer network in pipeline stages (pp) ------------------------ *
 * What loomc's pipeline splitter emits, by hand. The model: h = tanh(x w1 +
 * b1) (x [B, 64], w1 [64, 16]), logits = h w2 + b2 (w2 [16, 10]), softmax
 * cross-entropy averaged over the global batch of 64, momentum SGD (m = 0.9
 * m + g, p -= 0.5 m). GPipe schedule over PM micro-batches of each dp rank's
 * rows: stage 0 runs the first layer forward and loom_send's h of each
 * micro-batch (slot 0), stage 1 loom_recv's it, runs the second layer and
 * the loss forward and backward and sends dh back (slot 1); stage 0 then
 * runs its backward pass per micro-batch. Gradients accumulate in micro-batch
 * order, are summed over dp, and the loss and the squared gradient norm are
 * summed over pp (every stage writes every output).
 *
 * The single-rank program (stage -1) runs the same arithmetic in the same
 * order with the messages replaced by copies, so a pp=2 run is bitwise the
 * single-rank run. Layouts (LoomRunTest.cpp's pipelineManifest): `steps` and
 * the outputs at the start of every arena; stage 0 holds w1, b1, their
 * momenta and x; stage 1 w2, b2, their momenta and y, at overlapping
 * offsets (different arenas); one rank holds everything. */
#define PH 16  /* hidden units */
#define PM 2   /* micro-batches */
#define QSTEPS_OFF 0
#define QOUT_OFF 64
struct PipeLayout {
  int w1, b1, mw1, mb1, x; /* stage 0's buffers */
  int w2, b2, mw2, mb2, y; /* stage 1's buffers */
};
static const struct PipeLayout kStage0 = {128, 4224, 4288, 8384, 8448,
                                          -1, -1, -1, -1, -1};
static const struct PipeLayout kStage1 = {-1, -1, -1, -1, -1,
                                          128, 768, 832, 1472, 1536};
static const struct PipeLayout kWhole = {128,   4224,  4288,  8384,  8448,
                                         24832, 25472, 25536, 26176, 26240};
#define F32(off) ((float *)(arena + (off)))

/* Stage 0 forward of `rows` rows starting at `row`: h = tanh(x w1 + b1). */
static void pipe_fwd0(uint8_t *arena, const struct PipeLayout *L, int row,
                      int rows, float *h) {
  const float *x = F32(L->x), *w1 = F32(L->w1), *b1 = F32(L->b1);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < PH; ++j) {
      float s = b1[j];
      for (int k = 0; k < F; ++k)
        s += x[(row + r) * F + k] * w1[k * PH + j];
      h[r * PH + j] = tanhf(s);
    }
}

/* Stage 1 forward and backward on h: adds the rows' loss terms to *loss
 * (double, unscaled), their gradients to dw2, db2, and writes dh; scale =
 * 1 / global batch. Also counts correct argmaxes into *correct. */
static int pipe_stage1(loom_ctx *ctx, uint8_t *arena,
                       const struct PipeLayout *L, int row, int rows,
                       const float *h, float scale, double *loss,
                       float *correct, float *dw2, float *db2, float *dh) {
  const float *w2 = F32(L->w2), *b2 = F32(L->b2);
  const int32_t *y = (const int32_t *)(arena + L->y);
  for (int r = 0; r < rows; ++r) {
    int t = y[row + r];
    if (t < 0 || t >= C) {
      loom_error(ctx, "loom_cross_entropy_fwd", "target outside [0, 10)");
      return 0;
    }
    float logits[C], mx = -INFINITY;
    int arg = 0;
    for (int c = 0; c < C; ++c) {
      float s = b2[c];
      for (int j = 0; j < PH; ++j)
        s += h[r * PH + j] * w2[j * C + c];
      logits[c] = s;
      if (s > mx) {
        mx = s;
        arg = c;
      }
    }
    double z = 0;
    for (int c = 0; c < C; ++c)
      z += exp((double)(logits[c] - mx));
    *loss += log(z) + mx - logits[t];
    *correct += (arg == t);
    if (!dw2)
      continue;
    float dl[C];
    for (int c = 0; c < C; ++c)
      dl[c] = (float)(exp((double)(logits[c] - mx)) / z - (c == t)) * scale;
    for (int c = 0; c < C; ++c) {
      db2[c] += dl[c];
      for (int j = 0; j < PH; ++j)
        dw2[j * C + c] += h[r * PH + j] * dl[c];
    }
    for (int j = 0; j < PH; ++j) {
      float s = 0;
      for (int c = 0; c < C; ++c)
        s += dl[c] * w2[j * C + c];
      dh[r * PH + j] = s;
    }
  }
  return 1;
}

/* Stage 0 backward: dw1 += x^T (dh * (1 - h^2)), db1 += its column sums. */
static void pipe_bwd0(uint8_t *arena, const struct PipeLayout *L, int row,
                      int rows, const float *h, const float *dh, float *dw1,
                      float *db1) {
  const float *x = F32(L->x);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < PH; ++j) {
      float g = dh[r * PH + j] * (1.0f - h[r * PH + j] * h[r * PH + j]);
      db1[j] += g;
      for (int k = 0; k < F; ++k)
        dw1[k * PH + j] += x[(row + r) * F + k] * g;
    }
}

static void pipe_update(float *p, float *m, const float *g, int n) {
  for (int i = 0; i < n; ++i) {
    m[i] = PMOMENTUM * m[i] + g[i];
    p[i] -= PLR * m[i];
  }
}

/* Test hooks: HANG_NONE; PIPE_HANG: at step 2 stage 1 waits for a message
 * stage 0 never sends (slot 7), and stage 0 stops taking part (sleeps);
 * PIPE_SIZE: at step 1 stage 1 expects one float more of micro-batch 1;
 * PIPE_HANGSEND: at step 2 stage 0 also sends 2^20 floats (slot 9, past
 * MPI's eager limit) that stage 1 never receives, stage 1 then stops taking
 * part (sleeps at the end of its program). */
enum { PIPE_HANG = 1, PIPE_SIZE = 2, PIPE_HANGSEND = 3 };

static int tag_of(int mb, int slot) { return mb * 65536 + slot; }

/* Schedule markers as loomc brackets them: the manifest's trace_spans are
 * ["F0", "F1", "B0", "B1"] (forward of micro-batch mb: span mb, backward:
 * span PM + mb). No-ops unless loom-run --trace. */
static int span_f(int mb) { return mb; }
static int span_b(int mb) { return PM + mb; }

static void pipe_train(loom_ctx *ctx, uint8_t *arena, int DP, int stage,
                       int hook) {
  const struct PipeLayout *L =
      stage < 0 ? &kWhole : stage == 0 ? &kStage0 : &kStage1;
  const int R = B / DP, MR = R / PM; /* this rank's rows, per micro-batch */
  int64_t *steps = (int64_t *)(arena + QSTEPS_OFF);
  if (loom_step(ctx) != *steps + 1) {
    loom_error(ctx, "pipe_train_step", "loom_step does not count steps from 1");
    return;
  }
  *steps += 1;
  static float h[PM][B * PH], dh[PM][B * PH];
  float dw1[F * PH], db1[PH], dw2[PH * C], db2[C];
  memset(dw1, 0, sizeof dw1);
  memset(db1, 0, sizeof db1);
  memset(dw2, 0, sizeof dw2);
  memset(db2, 0, sizeof db2);
  double lossSum = 0;
  float correct = 0;
  const float scale = 1.0f / B;
  if (stage == 0) {
    for (int mb = 0; mb < PM; ++mb) {
      loom_trace_begin(ctx, span_f(mb));
      pipe_fwd0(arena, L, mb * MR, MR, h[mb]);
      loom_trace_end(ctx, span_f(mb));
      loom_send(ctx, h[mb], (int64_t)MR * PH, 2, +1, tag_of(mb, 0));
    }
    if (hook == PIPE_HANG && loom_step(ctx) == 2)
      sleep(60);
    if (hook == PIPE_HANGSEND && loom_step(ctx) == 2) {
      static float big[1 << 20];
      loom_send(ctx, big, 1 << 20, 2, +1, tag_of(0, 9));
    }
    for (int mb = 0; mb < PM; ++mb) {
      loom_recv(ctx, dh[mb], (int64_t)MR * PH, 2, +1, tag_of(mb, 1));
      loom_trace_begin(ctx, span_b(mb));
      pipe_bwd0(arena, L, mb * MR, MR, h[mb], dh[mb], dw1, db1);
      loom_trace_end(ctx, span_b(mb));
    }
  } else if (stage == 1) {
    for (int mb = 0; mb < PM; ++mb) {
      int64_t n = (int64_t)MR * PH;
      int tag = tag_of(mb, 0);
      if (hook == PIPE_HANG && loom_step(ctx) == 2)
        tag = tag_of(mb, 7);
      if (hook == PIPE_SIZE && mb == 1)
        n += 1;
      loom_recv(ctx, h[mb], n, 2, -1, tag);
      /* The last stage runs forward and backward of a micro-batch at once:
       * one span, the backward's. */
      loom_trace_begin(ctx, span_b(mb));
      if (!pipe_stage1(ctx, arena, L, mb * MR, MR, h[mb], scale, &lossSum,
                       &correct, dw2, db2, dh[mb]))
        return;
      loom_trace_end(ctx, span_b(mb));
      loom_send(ctx, dh[mb], (int64_t)MR * PH, 2, -1, tag_of(mb, 1));
    }
  } else {
    for (int mb = 0; mb < PM; ++mb) {
      loom_trace_begin(ctx, span_f(mb));
      pipe_fwd0(arena, L, mb * MR, MR, h[mb]);
      loom_trace_end(ctx, span_f(mb));
      loom_trace_begin(ctx, span_b(mb));
      if (!pipe_stage1(ctx, arena, L, mb * MR, MR, h[mb], scale, &lossSum,
                       &correct, dw2, db2, dh[mb]))
        return;
      loom_trace_end(ctx, span_b(mb));
    }
    for (int mb = 0; mb < PM; ++mb) {
      loom_trace_begin(ctx, span_b(mb));
      pipe_bwd0(arena, L, mb * MR, MR, h[mb], dh[mb], dw1, db1);
      loom_trace_end(ctx, span_b(mb));
    }
  }
  /* Gradients summed over dp (each stage its own), then the loss and the
   * squared norm summed over the stages. */
  float sq0 = 0, sq1 = 0;
  if (stage <= 0) {
    loom_all_reduce(ctx, dw1, F * PH, 0, 0);
    loom_all_reduce(ctx, db1, PH, 0, 0);
    sq0 = (float)(loom_sum_squares(ctx, F * PH, dw1) +
                  loom_sum_squares(ctx, PH, db1));
  }
  if (stage != 0) {
    loom_all_reduce(ctx, dw2, PH * C, 0, 0);
    loom_all_reduce(ctx, db2, C, 0, 0);
    sq1 = (float)(loom_sum_squares(ctx, PH * C, dw2) +
                  loom_sum_squares(ctx, C, db2));
  }
  float loss = (float)(lossSum / B);
  loom_all_reduce(ctx, &loss, 1, 0, 0);
  float sums[2] = {loss, stage < 0 ? sq0 + sq1 : stage == 0 ? sq0 : sq1};
  if (stage >= 0)
    loom_all_reduce(ctx, sums, 2, 2, 0);
  if (stage <= 0) {
    pipe_update(F32(L->w1), F32(L->mw1), dw1, F * PH);
    pipe_update(F32(L->b1), F32(L->mb1), db1, PH);
  }
  if (stage != 0) {
    pipe_update(F32(L->w2), F32(L->mw2), dw2, PH * C);
    pipe_update(F32(L->b2), F32(L->mb2), db2, C);
  }
  float *out = F32(QOUT_OFF);
  out[0] = sums[0];
  out[1] = sqrtf(sums[1]);
  out[2] = PLR;
  if (hook == PIPE_HANGSEND && stage == 1 && loom_step(ctx) == 2)
    sleep(60);
}

/* Evaluation: one message of every row of this dp rank (slot 2). */
static void pipe_eval(loom_ctx *ctx, uint8_t *arena, int DP, int stage) {
  const struct PipeLayout *L =
      stage < 0 ? &kWhole : stage == 0 ? &kStage0 : &kStage1;
  const int R = B / DP;
  static float h[B * PH];
  double lossSum = 0;
  float correct = 0;
  if (stage <= 0)
    pipe_fwd0(arena, L, 0, R, h);
  if (stage == 0)
    loom_send(ctx, h, (int64_t)R * PH, 2, +1, tag_of(0, 2));
  if (stage == 1)
    loom_recv(ctx, h, (int64_t)R * PH, 2, -1, tag_of(0, 2));
  if (stage != 0 && !pipe_stage1(ctx, arena, L, 0, R, h, 0, &lossSum,
                                 &correct, NULL, NULL, NULL))
    return;
  float sums[3] = {(float)(lossSum / B), stage == 0 ? 0 : (float)R,
                   correct};
  loom_all_reduce(ctx, sums, 3, 0, 0);
  if (stage >= 0)
    loom_all_reduce(ctx, sums, 3, 2, 0);
  float *out = F32(QOUT_OFF);
  out[3] = sums[0];
  out[4] = sums[1];
  out[5] = sums[2];
}

#define LOOM_PIPE_PROGRAMS(NAME, DP, STAGE, HOOK)                              \
  void loom_pipe_##NAME##_train_step(loom_ctx *ctx, uint8_t *arena) {          \
    pipe_train(ctx, arena, DP, STAGE, HOOK);                                   \
  }                                                                            \
  void loom_pipe_##NAME##_eval_step(loom_ctx *ctx, uint8_t *arena) {           \
    pipe_eval(ctx, arena, DP, STAGE);                                          \
  }
LOOM_PIPE_PROGRAMS(whole, 1, -1, 0)
LOOM_PIPE_PROGRAMS(d1_s0, 1, 0, 0)
LOOM_PIPE_PROGRAMS(d1_s1, 1, 1, 0)
LOOM_PIPE_PROGRAMS(d2_s0, 2, 0, 0)
LOOM_PIPE_PROGRAMS(d2_s1, 2, 1, 0)
LOOM_PIPE_PROGRAMS(hang_s0, 1, 0, PIPE_HANG)
LOOM_PIPE_PROGRAMS(hang_s1, 1, 1, PIPE_HANG)
LOOM_PIPE_PROGRAMS(size_s1, 1, 1, PIPE_SIZE)
LOOM_PIPE_PROGRAMS(hangsend_s0, 1, 0, PIPE_HANGSEND)
LOOM_PIPE_PROGRAMS(hangsend_s1, 1, 1, PIPE_HANGSEND)
