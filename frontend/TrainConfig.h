//===- TrainConfig.h - the train block's options and defaults ---*- C++ -*-===//
//
// Every option of a `train` block, with the defaults frontend/README.md
// documents. The DSL block and loomc's flags produce the same TrainOption
// syntax; `apply` updates the configuration from one option, so a flag
// overrides the file (`--set=optimizer.lr=1e-3` changes only the rate).
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_FRONTEND_TRAINCONFIG_H
#define LOOM_FRONTEND_TRAINCONFIG_H

#include "frontend/AST.h"

#include <cstdint>
#include <string>
#include <vector>

namespace loom::frontend {

struct TrainConfig {
  int64_t steps = 1000;

  // mesh dp = D, tp = T, pp = P
  int64_t dp = 1, tp = 1, pp = 1;
  // zero 0|1
  int64_t zero = 0;

  // pipeline microbatches = M, schedule = gpipe|1f1b|interleaved|zero_bubble,
  //          virtual = V, stages = [cut, ...]
  int64_t microbatches = 1;
  std::string schedule = "1f1b";
  int64_t virtualStages = 1;
  std::vector<int64_t> stages;

  // recompute none | every = N | budget = SIZE
  std::string recompute = "none";
  int64_t recomputeEvery = 0;
  int64_t recomputeBudget = 0; ///< bytes

  // precision fp32|bf16|fp16, loss_scale = none | static(S) | dynamic(...)
  std::string precision = "fp32";
  std::string lossScale = "none"; ///< none | static | dynamic
  bool lossScaleExplicit = false;
  double lossScaleInit = 32768, lossScaleGrowth = 2, lossScaleBackoff = 0.5;
  int64_t lossScaleInterval = 1000, lossScaleHysteresis = 2;
  double lossScaleMin = 1;

  // clip none | global_norm(max) | adaptive(window, sigmas, max)
  std::string clip = "none";
  double clipMax = 0; ///< 0: no fixed bound (adaptive only)
  int64_t clipWindow = 100;
  double clipSigmas = 3;

  // quantize none | qat(int8, weights = ..., activations = ..., start, freeze)
  //          | ptq(int8, activations = ..., observer = minmax|percentile,
  //                percentile = P)
  std::string quantize = "none";
  std::string quantWeights = "per_channel_symmetric";
  std::string quantActivations = "per_tensor_affine";
  int64_t quantStart = 0;
  int64_t quantFreeze = -1; ///< -1: never freeze observers
  /// Post-training calibration: minmax, or percentile(quantPercentile).
  std::string quantObserver = "minmax";
  double quantPercentile = 99.99;

  // optimizer sgd(lr, momentum, nesterov, weight_decay)
  //         | adamw(lr, beta1, beta2, eps, weight_decay, warmup, decay)
  std::string optimizer = "adamw";
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weightDecay = 0.01;
  double momentum = 0;
  bool nesterov = false;
  int64_t warmup = 0;
  std::string decay = "none"; ///< none | cosine
  int64_t decayTotal = 0;
  double decayMin = 0;

  // data "path" (relative to the .loom file)
  std::string data;

  /// Applies one option. `baseDir` resolves relative data paths. Errors go
  /// to `diag` at the option's argument.
  bool apply(const TrainOption &opt, const std::string &baseDir,
             DiagnosticEngine &diag);
  /// Checks the combination once every option is applied.
  bool validate(SourceLoc loc, DiagnosticEngine &diag) const;
  /// `--set=OPT.ARG=VALUE` as option text: `optimizer adamw(lr = 1e-3)` when
  /// OPT currently holds a call-like choice, otherwise `OPT ARG = VALUE`.
  std::string setOptionText(const std::string &option, const std::string &arg,
                            const std::string &value) const;

  /// The names of all train options, for suggestions.
  static const std::vector<std::string> &optionNames();
};

/// Parses a byte size: 40GiB, 512MiB, 1000000 (bytes), 2GB.
bool parseByteSize(const std::string &digits, const std::string &suffix,
                   int64_t &bytes);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_TRAINCONFIG_H
