//===- TrainInterpreter.h - float64 run of a train.step ---------*- C++ -*-===//
//
// Evaluates the `train.step @train_step "train"` that loom-autodiff produces
// (before loom-build-train-step adds the optimizer) in double precision, so
// that the tests can hold each VJP rule against central finite differences
// of the same interpreted loss.
//
// Loom ops are evaluated here directly, with numpy broadcasting and the
// meanings of SEMANTICS.md. The train.* ops call the `template <class T>`
// kernels of runtime/kernels/Kernels.h instantiated with double, the code
// the runtime itself runs in float: gemm, the norms, softmax, attention,
// cross-entropy and embedding, forward and backward. The train.* ops that
// have no kernel there (relu_grad, gelu_grad, reduce_max_grad, slice_grad)
// are written out here from their definitions in TrainOps.td. Dropout uses
// the kernels' counter-based mask with the seed and step of a loom_ctx, so
// its mask is the same in every run.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_TESTS_UNIT_TRAININTERPRETER_H
#define LOOM_TESTS_UNIT_TRAININTERPRETER_H

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mlir {
class Operation;
} // namespace mlir

namespace loom::test {

/// A dense row-major tensor of doubles. Integer tensors (ids, targets) hold
/// whole numbers; a rank-0 tensor has an empty shape and one element.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<double> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape, double fill = 0.0);

  /// The number of elements the shape holds.
  static int64_t numElements(const std::vector<int64_t> &shape);
  int64_t size() const { return static_cast<int64_t>(data.size()); }
};

/// "[2, 3, 4]".
std::string shapeString(const std::vector<int64_t> &shape);

struct InterpreterOptions {
  /// Run seed and step of the loom_ctx that dropout's mask is drawn from.
  uint64_t seed = 0x5eed;
  int64_t step = 1;
  /// Stop after `train.output "loss"`: finite differences need no backward.
  bool lossOnly = false;
};

/// What one run of a training step produced.
struct StepResult {
  /// False when an op could not be evaluated; `error` says which and why.
  bool ok = false;
  std::string error;
  /// The `train.output` values by name ("loss").
  std::map<std::string, double> outputs;
  /// The `train.gradient` values by parameter name.
  std::map<std::string, Tensor> gradients;

  double loss() const;
};

/// Runs `step`, a `train.step` as loom-autodiff leaves it: every
/// `train.input` and `train.param` is read from `inputs` and `params` by
/// name (each must be present with the op's shape).
StepResult interpretTrainStep(mlir::Operation *step,
                              const std::map<std::string, Tensor> &inputs,
                              const std::map<std::string, Tensor> &params,
                              const InterpreterOptions &options = {});

} // namespace loom::test

#endif // LOOM_TESTS_UNIT_TRAININTERPRETER_H
