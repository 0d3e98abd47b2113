//===- Training.cpp - ABI functions of the training loop's bookkeeping ----===//

#include "runtime/Context.h"
#include "runtime/abi/loom_abi.h"

#include <cmath>
#include <cstring>

extern "C" float loom_adaptive_clip(loom_ctx *, float norm, float *history,
                                    int64_t window, int64_t *count,
                                    float sigmas, float max_norm,
                                    int32_t record) {
  double threshold = max_norm > 0 ? max_norm : INFINITY;
  if (window > 0 && *count >= window) {
    // Population statistics of the previous `window` applied steps, in
    // double, in ring order (deterministic).
    double mean = 0;
    for (int64_t i = 0; i < window; ++i)
      mean += history[i];
    mean /= static_cast<double>(window);
    double var = 0;
    for (int64_t i = 0; i < window; ++i)
      var += (history[i] - mean) * (history[i] - mean);
    var /= static_cast<double>(window);
    threshold = mean + sigmas * std::sqrt(var);
  }
  float coef = 1.0f;
  if (std::isfinite(threshold) && std::isfinite(norm))
    coef = static_cast<float>(
        std::fmin(1.0, threshold / (static_cast<double>(norm) + 1e-6)));
  if (record && window > 0 && std::isfinite(norm)) {
    history[*count % window] = norm;
    ++*count;
  }
  return coef;
}

extern "C" void loom_check_finite(loom_ctx *ctx, const void *data, int64_t n,
                                  int32_t dtype, int64_t op) {
  if (!ctx || !ctx->checkNumerics || ctx->failed)
    return;
  for (int64_t i = 0; i < n; ++i) {
    float v;
    if (dtype == 0) {
      std::memcpy(&v, static_cast<const char *>(data) + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, static_cast<const char *>(data) + 2 * i, 2);
      // Non-finite iff the exponent is all ones, in both 16-bit formats.
      bool bad = dtype == 1 ? (h & 0x7f80u) == 0x7f80u : (h & 0x7c00u) == 0x7c00u;
      v = bad ? NAN : 0.0f;
    }
    if (std::isfinite(v))
      continue;
    std::string what = "op " + std::to_string(op);
    if (ctx->opNames && op >= 0 &&
        static_cast<size_t>(op) < ctx->opNames->size())
      what = (*ctx->opNames)[static_cast<size_t>(op)];
    std::string kind = std::isnan(v) ? "NaN" : "inf";
    loom_error(ctx, "check-numerics",
               (what + " produced " + kind + " (element " + std::to_string(i) +
                " of " + std::to_string(n) + "); it is the first op of the "
                "step to do so").c_str());
    return;
  }
}
