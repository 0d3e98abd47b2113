//===- attention_bench.cpp - GFLOP/s of the CPU attention kernels ---------===//
//
// Not a test: times loom_attention_fwd/bwd and loom_gated_attention_fwd/bwd
// (the "after" figures) against a copy of the row-by-row kernels they
// replaced (the "before" figures, namespace `before` below), causal, for the
// GPT sample's shape (B=16, H=4, T=64, D=32) and a larger one (B=8, H=12,
// T=256, D=64), on one thread and on all of them. Build it with
// `ninja loom-kernels-bench` (it is not part of `all`).
//
// FLOPs count the work on visible (unmasked) query-key pairs: forward
// 2 * pairs * (D + Dv) (q k^T and P v), backward 2 * pairs * (3 D + 2 Dv)
// (recomputed q k^T, dout v^T, P^T dout, dS k and dS^T q). The gate's
// O(B H T D) terms are not counted.
//
// Each figure is the fastest call of those made in about a second (at least
// 5 calls): on a shared machine, the one least disturbed by other work.
//
// Options: --quick (about 0.1 s per figure), --no-before (skip the slow
// kernels), --cpu-time (one thread only, timed by the thread's CPU time:
// figures that other load on the machine does not skew).
// LOOM_ATTENTION_ISA=portable|avx2|avx512 picks the vector ISA of "after".
//
//===----------------------------------------------------------------------===//
#include "runtime/kernels/Kernels.h"

#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using loom::kernels::kParallelWork;
using loom::kernels::visibleKeys;

/// The kernels before this rewrite (Kernels.h as of commit cdcb592), verbatim
/// but for the namespace: one query (or key) row at a time, double sums,
/// libm's exp.
namespace before {

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

} // namespace before

struct Shape {
  int64_t B, H, T, D;
};

bool useCpuTime = false;

/// Seconds: wall-clock, or with --cpu-time this thread's CPU time.
double now() {
  if (useCpuTime) {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  }
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Seconds per call of fn: the fastest of the calls made in `seconds` (at
/// least `minCalls`).
double timePerCall(const std::function<void()> &fn, double seconds,
                   int minCalls) {
  fn(); // Warm up (first touch, scratch, dispatch).
  double best = 1e30, total = 0;
  for (int calls = 0; calls < minCalls || total < seconds; ++calls) {
    const double start = now();
    fn();
    const double elapsed = now() - start;
    best = std::min(best, elapsed);
    total += elapsed;
  }
  return best;
}

double relativeError(const std::vector<float> &a, const std::vector<float> &b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return ref == 0 ? std::sqrt(diff) : std::sqrt(diff / ref);
}

void setThreads(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

struct Row {
  std::string what;
  double fwdBefore = 0, bwdBefore = 0, fwdAfter = 0, bwdAfter = 0;
};

void report(const Row &row, bool withBefore) {
  if (withBefore)
    std::printf("%-44s fwd %8.2f -> %8.2f GFLOP/s (x%5.1f)   bwd %8.2f -> "
                "%8.2f GFLOP/s (x%5.1f)\n",
                row.what.c_str(), row.fwdBefore, row.fwdAfter,
                row.fwdAfter / row.fwdBefore, row.bwdBefore, row.bwdAfter,
                row.bwdAfter / row.bwdBefore);
  else
    std::printf("%-44s fwd %8.2f GFLOP/s   bwd %8.2f GFLOP/s\n",
                row.what.c_str(), row.fwdAfter, row.bwdAfter);
  std::fflush(stdout);
}

void bench(const Shape &s, bool gated, int threads, bool withBefore,
           double seconds, int minCalls) {
  const int64_t B = s.B, H = s.H, T = s.T, D = s.D, Dv = s.D;
  const int64_t rows = B * H * T;
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto random = [&](int64_t n) {
    std::vector<float> x(n);
    for (float &e : x)
      e = dist(rng);
    return x;
  };
  const std::vector<float> q = random(rows * D), k = random(rows * D),
                           v = random(rows * Dv), dout = random(rows * Dv),
                           wg = random(H * 2 * D), bg = random(H);
  std::vector<float> out(rows * Dv), lse(rows), gate(rows), attn(rows * Dv),
      dq(rows * D), dk(rows * D), dv(rows * Dv), dwg(H * 2 * D), dbg(H);
  std::vector<float> refOut, refDq, refDk, refDv;

  int64_t pairs = 0;
  for (int64_t i = 0; i < T; ++i)
    pairs += visibleKeys(true, T, T, i);
  pairs *= B * H;
  const double fwdFlops = 2.0 * double(pairs) * double(D + Dv);
  const double bwdFlops = 2.0 * double(pairs) * double(3 * D + 2 * Dv);

  loom_ctx ctx;
  ctx.threads = threads;
  auto fwdAfter = [&] {
    if (gated)
      loom_gated_attention_fwd(&ctx, B, H, T, D, Dv, 1, -1.0f, q.data(),
                               k.data(), v.data(), wg.data(), bg.data(),
                               out.data(), lse.data(), gate.data(),
                               attn.data());
    else
      loom_attention_fwd(&ctx, B, H, T, T, D, Dv, 1, q.data(), k.data(),
                         v.data(), out.data(), lse.data());
  };
  auto bwdAfter = [&] {
    if (gated)
      loom_gated_attention_bwd(
          &ctx, B, H, T, D, Dv, 1, -1.0f, q.data(), k.data(), v.data(),
          wg.data(), bg.data(), lse.data(), gate.data(), attn.data(),
          dout.data(), dq.data(), dk.data(), dv.data(), dwg.data(), dbg.data());
    else
      loom_attention_bwd(&ctx, B, H, T, T, D, Dv, 1, q.data(), k.data(),
                         v.data(), out.data(), lse.data(), dout.data(),
                         dq.data(), dk.data(), dv.data());
  };
  auto fwdBefore = [&] {
    if (gated)
      before::gatedAttentionForward<float>(
          B, H, T, D, Dv, true, -1.0f, q.data(), k.data(), v.data(), wg.data(),
          bg.data(), out.data(), lse.data(), gate.data(), attn.data());
    else
      before::attentionForward<float>(B, H, T, T, D, Dv, true, q.data(),
                                      k.data(), v.data(), out.data(),
                                      lse.data());
  };
  auto bwdBefore = [&] {
    if (gated)
      before::gatedAttentionBackward<float>(
          B, H, T, D, Dv, true, -1.0f, q.data(), k.data(), v.data(), wg.data(),
          lse.data(), gate.data(), attn.data(), dout.data(), dq.data(),
          dk.data(), dv.data(), dwg.data(), dbg.data());
    else
      before::attentionBackward<float>(
          B, H, T, T, D, Dv, true, q.data(), k.data(), v.data(), out.data(),
          lse.data(), dout.data(), dq.data(), dk.data(), dv.data());
  };

  Row row;
  char what[128];
  std::snprintf(what, sizeof what, "%s B=%lld H=%lld T=%lld D=%lld, %d thr",
                gated ? "gated" : "plain", (long long)B, (long long)H,
                (long long)T, (long long)D, threads);
  row.what = what;
  if (withBefore) {
    setThreads(threads);
    row.fwdBefore = fwdFlops / timePerCall(fwdBefore, seconds, minCalls) * 1e-9;
    fwdBefore();
    row.bwdBefore = bwdFlops / timePerCall(bwdBefore, seconds, minCalls) * 1e-9;
    bwdBefore();
    refOut = out;
    refDq = dq, refDk = dk, refDv = dv;
  }
  row.fwdAfter = fwdFlops / timePerCall(fwdAfter, seconds, minCalls) * 1e-9;
  fwdAfter();
  row.bwdAfter = bwdFlops / timePerCall(bwdAfter, seconds, minCalls) * 1e-9;
  bwdAfter();
  report(row, withBefore);
  if (withBefore) {
    const double err =
        std::max({relativeError(out, refOut), relativeError(dq, refDq),
                  relativeError(dk, refDk), relativeError(dv, refDv)});
    if (!(err <= 1e-5))
      std::printf("  WARNING: after differs from before by %.3g (relative)\n",
                  err);
  }
}

} // namespace

int main(int argc, char **argv) {
  bool quick = false, withBefore = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0)
      quick = true;
    else if (std::strcmp(argv[i], "--no-before") == 0)
      withBefore = false;
    else if (std::strcmp(argv[i], "--cpu-time") == 0)
      useCpuTime = true;
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--no-before] [--cpu-time]\n",
                   argv[0]);
      return 2;
    }
  }
  int all = 1;
#ifdef _OPENMP
  all = omp_get_num_procs();
#endif
  const double seconds = quick ? 0.1 : 1.0;
  const int minCalls = quick ? 2 : 5;
  const char *isa = std::getenv("LOOM_ATTENTION_ISA");
  std::printf("attention (causal), %d CPUs, %s; LOOM_ATTENTION_ISA=%s\n", all,
              useCpuTime ? "thread CPU time" : "wall-clock",
              isa ? isa : "(auto)");
  for (const Shape &s : {Shape{16, 4, 64, 32}, Shape{8, 12, 256, 64}})
    for (bool gated : {true, false})
      for (int threads : {1, all}) {
        bench(s, gated, threads, withBefore, seconds, minCalls);
        if (all == 1 || useCpuTime)
          break;
      }
  return 0;
}
