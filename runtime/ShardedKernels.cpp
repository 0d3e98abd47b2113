//===- ShardedKernels.cpp - vocabulary-parallel embedding and loss --------===//
//
// loom_embedding_{fwd,bwd}_sharded and loom_cross_entropy_{fwd,bwd}_sharded
// (runtime/abi/loom_abi.h, since ABI 3): the table's rows, or the logits'
// classes, are split over a mesh axis. They live in the runtime rather than
// in kernels/ because the loss needs the axis group (Collectives.h); the
// arithmetic follows the unsharded templates of kernels/Kernels.h exactly,
// so that a group of one gives bitwise their results and a split differs
// only where a sum's order must (the cross-entropy's sum of exponentials).
//
//===----------------------------------------------------------------------===//
#include "runtime/Collectives.h"
#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"
#include "runtime/kernels/Kernels.h"
#include "runtime/kernels/Threads.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kn = loom::kernels;
namespace detail = loom::runtime::detail;

namespace {

constexpr int64_t kParallelWork = kn::kParallelWork;

using loom::kernels::threads::useContextThreads;

void report(loom_ctx *ctx, const char *op, const std::string &problem) {
  if (!problem.empty())
    loom_error(ctx, op, problem.c_str());
}

/// Sizes must be non-negative (and the split dimension positive); "" or the
/// problem.
std::string checkSizes(int64_t a, const char *aName, int64_t local,
                       const char *localName, int64_t b, const char *bName) {
  if (a < 0)
    return std::string(aName) + " " + std::to_string(a) + " is negative";
  if (local < 1)
    return std::string(localName) + " " + std::to_string(local) +
           " is not positive";
  if (b < 0)
    return std::string(bName) + " " + std::to_string(b) + " is negative";
  return {};
}

} // namespace

extern "C" void loom_embedding_fwd_sharded(loom_ctx *ctx, int64_t n,
                                           int64_t vocab_local, int64_t dim,
                                           int32_t axis, const int32_t *ids,
                                           const float *table, float *out) {
  const char *op = "loom_embedding_fwd_sharded";
  useContextThreads(ctx);
  if (axis == -1) {
    report(ctx, op,
           kn::embeddingForward<float>(n, vocab_local, dim, ids, table, out));
    return;
  }
  int size = 1, coord = 0;
  if (!detail::axisGroup(ctx, op, axis, size, coord))
    return;
  if (std::string p = checkSizes(n, "n", vocab_local, "vocab_local", dim,
                                 "dim");
      !p.empty())
    return report(ctx, op, p);
  const int64_t start = int64_t(coord) * vocab_local;
  if (std::string p = kn::checkIds(n, vocab_local * size, ids); !p.empty())
    return report(ctx, op, p);
#pragma omp parallel for schedule(static) if (n * dim >= kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = int64_t(ids[i]) - start;
    float *dst = out + i * dim;
    if (v >= 0 && v < vocab_local)
      std::copy(table + v * dim, table + (v + 1) * dim, dst);
    else
      std::fill(dst, dst + dim, 0.0f);
  }
}

extern "C" void loom_embedding_bwd_sharded(loom_ctx *ctx, int64_t n,
                                           int64_t vocab_local, int64_t dim,
                                           int32_t axis, const int32_t *ids,
                                           const float *dout, float *dtable) {
  const char *op = "loom_embedding_bwd_sharded";
  useContextThreads(ctx);
  if (axis == -1) {
    report(ctx, op,
           kn::embeddingBackward<float>(n, vocab_local, dim, ids, dout,
                                        dtable));
    return;
  }
  int size = 1, coord = 0;
  if (!detail::axisGroup(ctx, op, axis, size, coord))
    return;
  if (std::string p = checkSizes(n, "n", vocab_local, "vocab_local", dim,
                                 "dim");
      !p.empty())
    return report(ctx, op, p);
  const int64_t start = int64_t(coord) * vocab_local;
  if (std::string p = kn::checkIds(n, vocab_local * size, ids); !p.empty())
    return report(ctx, op, p);
  // kn::embeddingBackward on this rank's rows: positions grouped by row with
  // a stable counting sort, each row summed in double in position order.
  auto local = [&](int64_t i) { return int64_t(ids[i]) - start; };
  auto mine = [&](int64_t i) {
    return local(i) >= 0 && local(i) < vocab_local;
  };
  std::vector<int64_t> first(size_t(vocab_local + 1), 0);
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i)
    if (mine(i)) {
      ++first[size_t(local(i) + 1)];
      ++count;
    }
  for (int64_t v = 0; v < vocab_local; ++v)
    first[size_t(v + 1)] += first[size_t(v)];
  std::vector<int64_t> order(static_cast<size_t>(count));
  {
    std::vector<int64_t> next(first.begin(), first.end() - 1);
    for (int64_t i = 0; i < n; ++i)
      if (mine(i))
        order[size_t(next[size_t(local(i))]++)] = i;
  }
#pragma omp parallel if ((count + vocab_local) * dim >= kParallelWork)
  {
    std::vector<double> acc(static_cast<size_t>(dim));
#pragma omp for schedule(static)
    for (int64_t v = 0; v < vocab_local; ++v) {
      float *row = dtable + v * dim;
      if (first[size_t(v)] == first[size_t(v + 1)]) {
        std::fill(row, row + dim, 0.0f);
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t s = first[size_t(v)]; s < first[size_t(v + 1)]; ++s) {
        const float *src = dout + order[size_t(s)] * dim;
        for (int64_t c = 0; c < dim; ++c)
          acc[size_t(c)] += src[c];
      }
      for (int64_t c = 0; c < dim; ++c)
        row[c] = float(acc[size_t(c)]);
    }
  }
}

extern "C" void loom_cross_entropy_fwd_sharded(
    loom_ctx *ctx, int64_t rows, int64_t classes_local, int32_t axis,
    const float *logits, const int32_t *target, int64_t ignore_index,
    float *loss, float *lse, float *stats) {
  const char *op = "loom_cross_entropy_fwd_sharded";
  useContextThreads(ctx);
  if (axis == -1) {
    report(ctx, op,
           kn::crossEntropyForward<float>(rows, classes_local, logits, target,
                                          ignore_index, loss, lse, stats));
    return;
  }
  int size = 1, coord = 0;
  if (!detail::axisGroup(ctx, op, axis, size, coord))
    return;
  if (std::string p = checkSizes(rows, "rows", classes_local, "classes_local",
                                 0, "");
      !p.empty())
    return report(ctx, op, p);
  const int64_t classes = classes_local * size;
  const int64_t start = int64_t(coord) * classes_local;
  // A bad target is reported after the collectives, which every member
  // must still join; its row is left out meanwhile.
  std::string problem = kn::checkTargets(rows, classes, target, ignore_index);
  auto counted = [&](int64_t r) {
    const int64_t t = target[r];
    return t != ignore_index && t >= 0 && t < classes;
  };

  // 1. The row's maximum and its first (lowest global) index, over the group.
  std::vector<float> best(static_cast<size_t>(rows));
  std::vector<int32_t> arg(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static) if (rows * classes_local >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = logits + r * classes_local;
    const int64_t b = std::max_element(xr, xr + classes_local) - xr;
    best[size_t(r)] = xr[b];
    arg[size_t(r)] = int32_t(start + b);
  }
  if (!detail::groupMaxLoc(ctx, op, axis, best.data(), arg.data(), rows))
    return;
  // 2. Sum of exp(x - max) and the target's logit, over the group.
  std::vector<double> sums(size_t(2 * rows), 0.0);
#pragma omp parallel for schedule(static) if (rows * classes_local >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = logits + r * classes_local;
    const double m = best[size_t(r)];
    double sum = 0;
    for (int64_t c = 0; c < classes_local; ++c)
      sum += std::exp(xr[c] - m);
    sums[size_t(2 * r)] = sum;
    const int64_t t = int64_t(target[r]) - start;
    if (counted(r) && t >= 0 && t < classes_local)
      sums[size_t(2 * r + 1)] = xr[t];
  }
  if (!detail::groupSum(ctx, op, axis, sums.data(), 2 * rows))
    return;
  int64_t nCounted = 0, correct = 0;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double l = double(best[size_t(r)]) + std::log(sums[size_t(2 * r)]);
    if (lse)
      lse[r] = float(l);
    if (!counted(r))
      continue;
    ++nCounted;
    correct += arg[size_t(r)] == target[r];
    total += l - sums[size_t(2 * r + 1)];
  }
  loss[0] = float(nCounted ? total / double(nCounted) : 0.0);
  if (stats) {
    stats[0] = float(nCounted);
    stats[1] = float(correct);
  }
  report(ctx, op, problem);
}

extern "C" void loom_cross_entropy_bwd_sharded(
    loom_ctx *ctx, int64_t rows, int64_t classes_local, int32_t axis,
    const float *logits, const int32_t *target, int64_t ignore_index,
    const float *lse, const float *dloss, float *dlogits) {
  const char *op = "loom_cross_entropy_bwd_sharded";
  useContextThreads(ctx);
  if (axis == -1) {
    report(ctx, op,
           kn::crossEntropyBackward<float>(rows, classes_local, logits, target,
                                           ignore_index, lse, dloss, dlogits));
    return;
  }
  int size = 1, coord = 0;
  if (!detail::axisGroup(ctx, op, axis, size, coord))
    return;
  if (std::string p = checkSizes(rows, "rows", classes_local, "classes_local",
                                 0, "");
      !p.empty())
    return report(ctx, op, p);
  const int64_t start = int64_t(coord) * classes_local;
  if (std::string p =
          kn::checkTargets(rows, classes_local * size, target, ignore_index);
      !p.empty())
    return report(ctx, op, p);
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r)
    counted += target[r] != ignore_index;
  const double scale = counted ? double(dloss[0]) / double(counted) : 0.0;
#pragma omp parallel for schedule(static) if (rows * classes_local >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = logits + r * classes_local;
    float *dr = dlogits + r * classes_local;
    if (target[r] == ignore_index) {
      std::fill(dr, dr + classes_local, 0.0f);
      continue;
    }
    const double l = lse[r];
    const int64_t t = int64_t(target[r]) - start;
    for (int64_t c = 0; c < classes_local; ++c)
      dr[c] = float(scale * (std::exp(xr[c] - l) - (c == t ? 1.0 : 0.0)));
  }
}
