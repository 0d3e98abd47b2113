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
