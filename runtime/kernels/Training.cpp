//===- Training.cpp - ABI functions of the training loop's bookkeeping ----===//

#include "runtime/abi/loom_abi.h"

#include <cmath>

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
