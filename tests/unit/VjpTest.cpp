//===- VjpTest.cpp - loom-autodiff's VJP rules against finite differences -===//
//
// Each test compiles tiny DSL models (front end, MLIRGen, loom-autodiff),
// feeds random inputs and parameters of random shapes, and holds every
// `train.gradient` that the float64 interpreter (TrainInterpreter.h)
// computes against central finite differences of the interpreted loss:
//
//   max_i |g_i - fd_i| <= max(1e-6 * ||g||, 1e-9),  fd_i = (L(p + h e_i) -
//   L(p - h e_i)) / 2h,  h = 1e-6,
//
// over several seeds, each seed drawing new sizes (-D overrides of the
// model's header) and new values. A wrong VJP rule fails with the op's test
// name, the parameter, the worst element (rule vs finite difference) and the
// train step's IR.
//
//===----------------------------------------------------------------------===//

#include "tests/unit/TrainInterpreter.h"

#include "compiler/passes/Passes.h"
#include "compiler/registration/Registration.h"
#include "frontend/Diagnostics.h"
#include "frontend/Graph.h"
#include "frontend/MLIRGen.h"
#include "frontend/Sema.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/raw_ostream.h"

#include "gtest/gtest.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

using loom::test::InterpreterOptions;
using loom::test::interpretTrainStep;
using loom::test::shapeString;
using loom::test::StepResult;
using loom::test::Tensor;

namespace {

using Rng = std::mt19937_64;
/// The sizes drawn for one seed, by model header parameter.
using Sizes = std::map<std::string, int64_t>;
/// Draws one element of an input or a parameter.
using Draw = std::function<double(Rng &, const Sizes &)>;

constexpr double kStep = 1e-6;   // h of the central differences
constexpr double kRelTol = 1e-6; // of ||g||
constexpr double kAbsTol = 1e-9;

//===----------------------------------------------------------------------===//
// Value draws
//===----------------------------------------------------------------------===//

Draw normal(double stddev = 1.0) {
  return [=](Rng &rng, const Sizes &) {
    return std::normal_distribution<double>(0.0, stddev)(rng);
  };
}

Draw uniform(double lo, double hi) {
  return [=](Rng &rng, const Sizes &) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
}

/// |value| in [lo, hi) with a random sign: keeps relu away from its kink.
Draw awayFromZero(double lo, double hi) {
  return [=](Rng &rng, const Sizes &) {
    double v = std::uniform_real_distribution<double>(lo, hi)(rng);
    return std::bernoulli_distribution(0.5)(rng) ? v : -v;
  };
}

/// Integers in [0, size) where `size` is a model header parameter.
Draw ids(std::string size) {
  return [=](Rng &rng, const Sizes &sizes) {
    return double(
        std::uniform_int_distribution<int64_t>(0, sizes.at(size) - 1)(rng));
  };
}

/// Class targets in [0, size), a fraction of them `ignoreIndex`.
Draw targets(std::string size, double ignored, int64_t ignoreIndex = -100) {
  return [=](Rng &rng, const Sizes &sizes) {
    if (std::bernoulli_distribution(ignored)(rng))
      return double(ignoreIndex);
    return double(
        std::uniform_int_distribution<int64_t>(0, sizes.at(size) - 1)(rng));
  };
}

//===----------------------------------------------------------------------===//
// The model under test
//===----------------------------------------------------------------------===//

struct SizeRange {
  std::string name;
  int64_t lo, hi; ///< inclusive
};

/// One model whose gradients are checked.
struct Case {
  std::string source;
  /// Header parameters drawn per seed (others keep their defaults).
  std::vector<SizeRange> sizes;
  /// Draws by input/parameter name; a name's last path component
  /// ("layers.0.g1" -> "g1") also matches. Floats default to normal(1);
  /// integer inputs need a draw.
  std::map<std::string, Draw> draws;
  /// Parameters whose gradient must be exactly zero (the loss ignores them).
  std::vector<std::string> zeroGradients;
  int seeds = 4;
  /// Edits the lowered step before it runs (the harness's own tests).
  std::function<void(mlir::Operation *)> mutate;
};

/// A model lowered to its training step; owns everything the IR refers to.
struct Lowered {
  std::unique_ptr<loom::frontend::SourceFile> file;
  std::unique_ptr<mlir::MLIRContext> context;
  mlir::OwningOpRef<mlir::ModuleOp> module;
  mlir::Operation *step = nullptr;

  std::string stepText() const {
    std::string s;
    llvm::raw_string_ostream os(s);
    step->print(os);
    return os.str();
  }
};

/// Front end, MLIRGen and loom-autodiff; false (with `error`) on failure.
bool lower(const std::string &source, const Sizes &sizes, Lowered &out,
           std::string &error) {
  namespace fe = loom::frontend;
  out.file = std::make_unique<fe::SourceFile>("vjp.loom", source);
  fe::CompileOptions opts;
  for (const auto &[name, value] : sizes)
    opts.defines.push_back({name, std::to_string(value)});
  fe::DiagnosticEngine diag;
  std::optional<fe::Graph> graph = fe::compileSource(*out.file, opts, diag);
  if (!graph) {
    error = "the front end rejected the model:\n" + diag.render();
    return false;
  }

  mlir::DialectRegistry registry;
  loom::registerLoomDialects(registry);
  out.context = std::make_unique<mlir::MLIRContext>(
      registry, mlir::MLIRContext::Threading::DISABLED);
  out.context->loadAllAvailableDialects();
  std::string diagnostics;
  mlir::ScopedDiagnosticHandler handler(
      out.context.get(), [&](mlir::Diagnostic &d) {
        llvm::raw_string_ostream os(diagnostics);
        os << d.getLocation() << ": " << d << "\n";
        return mlir::success();
      });
  out.module = fe::buildLoomModule(*out.context, *graph);
  if (!out.module) {
    error = "MLIRGen failed:\n" + diagnostics;
    return false;
  }
  mlir::PassManager pm(out.context.get());
  pm.addPass(loom::createAutodiff());
  if (mlir::failed(pm.run(*out.module))) {
    error = "loom-autodiff failed:\n" + diagnostics;
    return false;
  }
  for (mlir::Operation &op : out.module->getBody()->getOperations())
    if (op.getName().getStringRef() == "train.step")
      if (auto kind = op.getAttrOfType<mlir::StringAttr>("kind");
          kind && kind.getValue() == "train")
        out.step = &op;
  if (!out.step) {
    error = "loom-autodiff produced no train.step of kind \"train\"";
    return false;
  }
  return true;
}

const Draw *findDraw(const Case &c, const std::string &name) {
  auto it = c.draws.find(name);
  if (it == c.draws.end())
    it = c.draws.find(name.substr(name.rfind('.') + 1));
  return it == c.draws.end() ? nullptr : &it->second;
}

/// Fills every train.input and train.param of the step with drawn values.
bool drawLeaves(const Case &c, const Lowered &l, Rng &rng, const Sizes &sizes,
                std::map<std::string, Tensor> &inputs,
                std::map<std::string, Tensor> &params,
                std::vector<std::string> &paramOrder, std::string &error) {
  static const Draw kDefault = normal(1.0);
  for (mlir::Operation &op : l.step->getRegion(0).front()) {
    llvm::StringRef n = op.getName().getStringRef();
    if (n != "train.input" && n != "train.param")
      continue;
    std::string name =
        op.getAttrOfType<mlir::StringAttr>("name").getValue().str();
    auto type = mlir::cast<mlir::RankedTensorType>(op.getResult(0).getType());
    const Draw *draw = findDraw(c, name);
    if (!draw && type.getElementType().isInteger()) {
      error = "integer input '" + name + "' needs a draw";
      return false;
    }
    Tensor t(
        std::vector<int64_t>(type.getShape().begin(), type.getShape().end()));
    for (double &v : t.data)
      v = (draw ? *draw : kDefault)(rng, sizes);
    if (n == "train.input") {
      inputs[name] = std::move(t);
    } else {
      params[name] = std::move(t);
      paramOrder.push_back(name);
    }
  }
  return true;
}

std::string multiIndex(int64_t flat, const std::vector<int64_t> &shape) {
  std::vector<int64_t> index(shape.size());
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return shapeString(index);
}

std::string preview(const std::vector<double> &v) {
  std::ostringstream os;
  os.precision(9);
  os << "[";
  for (size_t i = 0; i < v.size() && i < 12; ++i)
    os << (i ? ", " : "") << v[i];
  os << (v.size() > 12 ? ", ...]" : "]");
  return os.str();
}

/// Every disagreement between `c`'s gradients and finite differences, over
/// its seeds; empty when the VJP rules hold.
std::vector<std::string> gradientErrors(const Case &c) {
  std::vector<std::string> errors;
  // LOOM_VJP_SEEDS=N runs N seeds of every case (a longer search).
  int seeds = c.seeds;
  if (const char *env = std::getenv("LOOM_VJP_SEEDS");
      env && std::atoi(env) > 0)
    seeds = std::atoi(env);
  for (int seed = 0; seed < seeds; ++seed) {
    Rng rng(0x10001ull * (seed + 1) + std::hash<std::string>()(c.source));
    Sizes sizes;
    for (const SizeRange &r : c.sizes)
      sizes[r.name] = std::uniform_int_distribution<int64_t>(r.lo, r.hi)(rng);
    std::string sizeText;
    for (const auto &[name, value] : sizes)
      sizeText += " -D" + name + "=" + std::to_string(value);
    const std::string where = "seed " + std::to_string(seed) + ", model (" +
                              sizeText + "):\n" + c.source;

    Lowered l;
    std::string error;
    if (!lower(c.source, sizes, l, error)) {
      errors.push_back(error + "\n" + where);
      return errors;
    }
    if (c.mutate)
      c.mutate(l.step);
    std::map<std::string, Tensor> inputs, params;
    std::vector<std::string> order;
    if (!drawLeaves(c, l, rng, sizes, inputs, params, order, error)) {
      errors.push_back(error);
      return errors;
    }

    StepResult full = interpretTrainStep(l.step, inputs, params);
    if (!full.ok) {
      errors.push_back("the interpreter failed: " + full.error + "\n" + where +
                       "\ntrain step:\n" + l.stepText());
      return errors;
    }
    if (!std::isfinite(full.loss())) {
      errors.push_back("the loss is " + std::to_string(full.loss()) + "\n" +
                       where);
      return errors;
    }

    InterpreterOptions lossOnly;
    lossOnly.lossOnly = true;
    std::string lossError;
    auto lossAt = [&](const std::map<std::string, Tensor> &p) {
      StepResult r = interpretTrainStep(l.step, inputs, p, lossOnly);
      if (!r.ok && lossError.empty())
        lossError = r.error;
      return r.loss();
    };
    // The loss-only run must agree with the full one (same ops, same order).
    if (double again = lossAt(params); again != full.loss())
      errors.push_back("the loss-only run gives " + std::to_string(again) +
                       ", the full run " + std::to_string(full.loss()));

    for (const std::string &name : order) {
      auto it = full.gradients.find(name);
      if (it == full.gradients.end()) {
        errors.push_back("no train.gradient for parameter '" + name + "'\n" +
                         where);
        continue;
      }
      const Tensor &grad = it->second;
      const Tensor &value = params.at(name);
      if (grad.shape != value.shape) {
        errors.push_back("the gradient of '" + name + "' is " +
                         shapeString(grad.shape) + ", the parameter " +
                         shapeString(value.shape) + "\n" + where);
        continue;
      }

      std::vector<double> fd(value.data.size());
      std::map<std::string, Tensor> moved = params;
      std::vector<double> &p = moved.at(name).data;
      for (size_t i = 0; i < p.size(); ++i) {
        const double keep = p[i];
        p[i] = keep + kStep;
        const double up = lossAt(moved);
        p[i] = keep - kStep;
        const double down = lossAt(moved);
        p[i] = keep;
        fd[i] = (up - down) / (2 * kStep);
      }
      if (!lossError.empty()) {
        errors.push_back("the interpreter failed: " + lossError + "\n" + where);
        return errors;
      }

      double norm = 0, worst = -1;
      int64_t at = 0;
      bool finite = true;
      for (size_t i = 0; i < fd.size(); ++i) {
        norm += grad.data[i] * grad.data[i];
        finite &= std::isfinite(grad.data[i]);
        double err = std::fabs(grad.data[i] - fd[i]);
        if (!(err <= worst)) {
          worst = err;
          at = int64_t(i);
        }
      }
      norm = std::sqrt(norm);
      const double tolerance = std::max(kRelTol * norm, kAbsTol);
      if (!finite || !(worst <= tolerance)) {
        std::ostringstream os;
        os.precision(9);
        os << "gradient of '" << name << "' " << shapeString(value.shape)
           << " disagrees with finite differences:\n"
           << "  worst element " << multiIndex(at, value.shape) << ": autodiff "
           << grad.data[at] << ", finite difference " << fd[at] << " (|diff| "
           << worst << " > tolerance " << tolerance << ", ||g|| " << norm
           << ")\n"
           << "  autodiff:          " << preview(grad.data) << "\n"
           << "  finite difference: " << preview(fd) << "\n"
           << where << "\ntrain step:\n"
           << l.stepText();
        errors.push_back(os.str());
      }
      for (const std::string &z : c.zeroGradients)
        if (z == name)
          for (double g : grad.data)
            if (g != 0.0) {
              errors.push_back("'" + name +
                               "' does not affect the loss but its gradient "
                               "holds " +
                               std::to_string(g) + "\n" + where);
              break;
            }
    }
  }
  return errors;
}

/// Fails the current test with every disagreement of `c`.
void checkGradients(const Case &c) {
  for (const std::string &e : gradientErrors(c))
    ADD_FAILURE() << e;
}

/// A model with inputs, `params` and `loss` over sizes B, T, D (and any
/// others listed in `header`).
std::string model(const std::string &header, const std::string &body) {
  return "model M(" + header + ") {\n" + body + "\n}\n";
}

const std::vector<SizeRange> kBTD = {{"B", 1, 3}, {"T", 1, 4}, {"D", 1, 5}};

/// The cases of a binary op `a OP b` under broadcasting: both operands are
/// parameters, so both adjoints (and their unbroadcasts) are checked.
std::vector<Case> binaryCases(const std::string &op, Draw rhs) {
  const std::string header = "B = 2, T = 3, D = 4";
  // [lhs type, rhs type, result type]
  const std::vector<std::tuple<std::string, std::string, std::string>> shapes =
      {{"f32[B, T, D]", "f32[B, T, D]", "f32[B, T, D]"},
       {"f32[B, T, D]", "f32[D]", "f32[B, T, D]"},
       {"f32[D]", "f32[B, T, D]", "f32[B, T, D]"},
       {"f32[B, T, D]", "f32[B, 1, D]", "f32[B, T, D]"},
       {"f32[B, 1, D]", "f32[T, 1]", "f32[B, T, D]"},
       {"f32[1, T, 1]", "f32[B, 1, D]", "f32[B, T, D]"},
       {"f32[B, T, D]", "f32[]", "f32[B, T, D]"},
       {"f32[]", "f32[T, D]", "f32[T, D]"}};
  std::vector<Case> cases;
  for (const auto &[a, b, r] : shapes) {
    Case c;
    c.source = model(header, "  input t : " + r + "\n  param a : " + a +
                                 "\n  param b : " + b + "\n  loss mse(a " + op +
                                 " b, t)");
    c.sizes = kBTD;
    c.draws["b"] = rhs;
    cases.push_back(std::move(c));
  }
  // A number operand (a loom.constant) on either side, and the op inside a
  // chain of others.
  Case k;
  k.source = model(header, "  input t : f32[B, T, D]\n"
                           "  param a : f32[B, T, D]\n"
                           "  param b : f32[D]\n"
                           "  loss mse(tanh((a " +
                               op + " 1.5) " + op + " b) " + op + " (2.0 " +
                               op + " b), t)");
  k.sizes = kBTD;
  k.draws["b"] = rhs;
  cases.push_back(std::move(k));
  return cases;
}

/// `loss mse(OP(w), t)`, `loss sum(OP(w) * c)` and `loss mse(OP(w) @ m, t)`
/// with w drawn by `values`.
std::vector<Case> unaryCases(const std::string &op, Draw values) {
  std::vector<Case> cases;
  Case a;
  a.source = model("B = 2, T = 3, D = 4", "  input t : f32[B, T, D]\n"
                                          "  param w : f32[B, T, D]\n"
                                          "  loss mse(" +
                                              op + "(w), t)");
  a.sizes = kBTD;
  a.draws["w"] = values;
  cases.push_back(a);

  Case b;
  b.source = model("B = 2, D = 4", "  input c : f32[B, D]\n"
                                   "  param w : f32[B, D]\n"
                                   "  loss sum(" +
                                       op + "(w) * c)");
  b.sizes = {{"B", 1, 4}, {"D", 1, 6}};
  b.draws["w"] = values;
  cases.push_back(b);

  Case m;
  m.source = model("B = 2, D = 4, E = 3", "  input t : f32[B, E]\n"
                                          "  param w : f32[B, D]\n"
                                          "  param m : f32[D, E]\n"
                                          "  loss mse(" +
                                              op + "(w) @ m, t)");
  m.sizes = {{"B", 1, 4}, {"D", 1, 4}, {"E", 1, 3}};
  m.draws["w"] = values;
  cases.push_back(m);
  return cases;
}

void checkAll(const std::vector<Case> &cases) {
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + ":\n" + cases[i].source);
    checkGradients(cases[i]);
  }
}

//===----------------------------------------------------------------------===//
// Elementwise
//===----------------------------------------------------------------------===//

TEST(Vjp, Add) { checkAll(binaryCases("+", normal())); }
TEST(Vjp, Sub) { checkAll(binaryCases("-", normal())); }
TEST(Vjp, Mul) { checkAll(binaryCases("*", normal())); }
TEST(Vjp, Div) { checkAll(binaryCases("/", awayFromZero(0.5, 2.0))); }

TEST(Vjp, Neg) {
  checkAll(unaryCases("neg", normal()));
  Case c;
  c.source = model("B = 2, D = 3", "  input t : f32[B, D]\n"
                                   "  param w : f32[B, D]\n"
                                   "  loss mse(-w * 3.0, t)");
  c.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  checkGradients(c);
}

TEST(Vjp, Exp) { checkAll(unaryCases("exp", normal())); }
TEST(Vjp, Log) { checkAll(unaryCases("log", uniform(0.3, 3.0))); }
TEST(Vjp, Sqrt) { checkAll(unaryCases("sqrt", uniform(0.3, 3.0))); }
TEST(Vjp, Rsqrt) { checkAll(unaryCases("rsqrt", uniform(0.3, 3.0))); }
TEST(Vjp, Tanh) { checkAll(unaryCases("tanh", normal())); }
TEST(Vjp, Relu) { checkAll(unaryCases("relu", awayFromZero(0.05, 2.0))); }
TEST(Vjp, Gelu) { checkAll(unaryCases("gelu", normal(1.5))); }
TEST(Vjp, Sigmoid) { checkAll(unaryCases("sigmoid", normal(1.5))); }

//===----------------------------------------------------------------------===//
// Matmul
//===----------------------------------------------------------------------===//

Case matmulCase(const std::string &a, const std::string &b,
                const std::string &r, std::vector<SizeRange> sizes) {
  Case c;
  c.source = model("B = 2, H = 2, M = 3, K = 4, N = 2",
                   "  input t : " + r + "\n  param a : " + a +
                       "\n  param b : " + b + "\n  loss mse(a @ b, t)");
  c.sizes = std::move(sizes);
  return c;
}

const std::vector<SizeRange> kMKN = {
    {"B", 1, 3}, {"H", 1, 3}, {"M", 1, 4}, {"K", 1, 5}, {"N", 1, 4}};

TEST(Vjp, Matmul2D) {
  checkGradients(matmulCase("f32[M, K]", "f32[K, N]", "f32[M, N]", kMKN));
}

TEST(Vjp, MatmulBatched3DBy2D) {
  // The Linear layer: the weight's adjoint folds the batch into the GEMM.
  checkGradients(matmulCase("f32[B, M, K]", "f32[K, N]", "f32[B, M, N]", kMKN));
  checkGradients(
      matmulCase("f32[B, H, M, K]", "f32[K, N]", "f32[B, H, M, N]", kMKN));
}

TEST(Vjp, MatmulBatchedByBatched) {
  checkGradients(
      matmulCase("f32[B, M, K]", "f32[B, K, N]", "f32[B, M, N]", kMKN));
  // 2-D @ 3-D: the left operand's adjoint sums over the batch.
  checkGradients(matmulCase("f32[M, K]", "f32[B, K, N]", "f32[B, M, N]", kMKN));
  checkGradients(
      matmulCase("f32[1, M, K]", "f32[B, K, N]", "f32[B, M, N]", kMKN));
}

TEST(Vjp, Matmul4D) {
  checkGradients(matmulCase("f32[B, H, M, K]", "f32[B, H, K, N]",
                            "f32[B, H, M, N]", kMKN));
  // Batch dimensions broadcast both ways.
  checkGradients(
      matmulCase("f32[B, 1, M, K]", "f32[H, K, N]", "f32[B, H, M, N]", kMKN));
  checkGradients(
      matmulCase("f32[H, M, K]", "f32[B, 1, K, N]", "f32[B, H, M, N]", kMKN));
}

TEST(Vjp, MatmulLinearLayer) {
  Case c;
  c.source =
      model("B = 2, T = 3, D = 4, E = 5", "  input x : f32[B, T, D]\n"
                                          "  input t : f32[B, T, E]\n"
                                          "  param w : f32[D, E]\n"
                                          "  param b : f32[E]\n"
                                          "  loss mse(gelu(x @ w + b), t)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 4}, {"D", 1, 5}, {"E", 1, 5}};
  checkGradients(c);
}

//===----------------------------------------------------------------------===//
// Softmax and normalisation
//===----------------------------------------------------------------------===//

TEST(Vjp, Softmax) {
  Case a;
  a.source = model("B = 2, T = 3, C = 4", "  input t : f32[B, T, C]\n"
                                          "  param w : f32[B, T, C]\n"
                                          "  loss mse(softmax(w), t)");
  a.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"C", 1, 6}};
  checkGradients(a);
  Case b;
  b.source = model("B = 2, C = 4", "  input c : f32[B, C]\n"
                                   "  param w : f32[B, C]\n"
                                   "  loss sum(softmax(w * 2.0) * c)");
  b.sizes = {{"B", 1, 3}, {"C", 2, 6}};
  checkGradients(b);
}

TEST(Vjp, LogSoftmax) {
  Case a;
  a.source = model("B = 2, T = 3, C = 4", "  input t : f32[B, T, C]\n"
                                          "  param w : f32[B, T, C]\n"
                                          "  loss mse(log_softmax(w), t)");
  a.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"C", 1, 6}};
  checkGradients(a);
  Case b;
  b.source = model("B = 2, C = 4", "  input c : f32[B, C]\n"
                                   "  param w : f32[B, C]\n"
                                   "  loss sum(log_softmax(w) * c)");
  b.sizes = {{"B", 1, 3}, {"C", 2, 6}};
  checkGradients(b);
}

// Norms over 2 (layer_norm) or 1 (rms_norm) elements are nearly constant
// (+-1): their gradients are of the order of eps and finite differences
// resolve them no better than 1e-9, so the sizes start above that.
TEST(Vjp, LayerNorm) {
  Case c;
  c.source = model("B = 2, T = 3, D = 4", "  input t : f32[B, T, D]\n"
                                          "  param x : f32[B, T, D]\n"
                                          "  param g : f32[D]\n"
                                          "  param b : f32[D]\n"
                                          "  loss mse(layer_norm(x, g, b), t)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"D", 3, 6}};
  checkGradients(c);
  // Rank 2, inside a linear layer.
  Case l;
  l.source =
      model("B = 2, D = 4, E = 3", "  input x : f32[B, D]\n"
                                   "  input t : f32[B, E]\n"
                                   "  param w : f32[D, E]\n"
                                   "  param g : f32[E]\n"
                                   "  param b : f32[E]\n"
                                   "  loss mse(layer_norm(x @ w, g, b), t)");
  l.sizes = {{"B", 1, 4}, {"D", 1, 4}, {"E", 3, 5}};
  checkGradients(l);
}

TEST(Vjp, Conv2d) {
  // Padding 1, stride 1: the output has the input's size.
  Case c;
  c.source = model("N = 2, C = 2, H = 5, O = 3",
                   "  input t : f32[N, O, H, H]\n"
                   "  param x : f32[N, C, H, H]\n"
                   "  param k : f32[O, C, 3, 3]\n"
                   "  loss mse(conv2d(x, k, padding = 1), t)");
  c.sizes = {{"N", 1, 3}, {"C", 1, 3}, {"H", 3, 6}, {"O", 1, 4}};
  checkGradients(c);
  // Stride 2 and a 2x3 kernel without padding (the last rows and columns
  // of x may not be read); a quadratic loss.
  Case s;
  s.source = model("N = 2, C = 3, H = 6, W = 7, O = 2",
                   "  param x : f32[N, C, H, W]\n"
                   "  param k : f32[O, C, 2, 3]\n"
                   "  let y = conv2d(x, k, stride = 2)\n"
                   "  loss mean(y * y)");
  s.sizes = {{"N", 1, 2}, {"C", 1, 3}, {"H", 2, 7}, {"W", 3, 8}, {"O", 1, 3}};
  checkGradients(s);
}

// Batch statistics make every output depend on every input of its channel:
// the sizes keep at least two values per channel.
TEST(Vjp, BatchNorm) {
  Case c;
  c.source = model("N = 3, C = 2, H = 2",
                   "  input t : f32[N, C, H, H]\n"
                   "  param x : f32[N, C, H, H]\n"
                   "  param g : f32[C]\n"
                   "  param b : f32[C]\n"
                   "  loss mse(relu(batch_norm(x, g, b)) * x, t)");
  c.sizes = {{"N", 2, 4}, {"C", 1, 3}, {"H", 1, 3}};
  checkGradients(c);
  // Rank 2 (BatchNorm1d), after a linear layer.
  Case l;
  l.source = model("N = 4, D = 3, E = 2",
                   "  input x : f32[N, D]\n"
                   "  input t : f32[N, E]\n"
                   "  param w : f32[D, E]\n"
                   "  param g : f32[E]\n"
                   "  param b : f32[E]\n"
                   "  loss mse(batch_norm(x @ w, g, b, eps = 0.001) * (x @ w), t)");
  l.sizes = {{"N", 2, 5}, {"D", 1, 4}, {"E", 1, 3}};
  checkGradients(l);
}

TEST(Vjp, RmsNorm) {
  Case c;
  c.source = model("B = 2, T = 3, D = 4", "  input t : f32[B, T, D]\n"
                                          "  param x : f32[B, T, D]\n"
                                          "  param g : f32[D]\n"
                                          "  loss mse(rms_norm(x, g), t)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"D", 2, 6}};
  checkGradients(c);
  Case l;
  l.source = model("B = 2, D = 4, E = 3", "  input x : f32[B, D]\n"
                                          "  input c : f32[B, E]\n"
                                          "  param w : f32[D, E]\n"
                                          "  param g : f32[E]\n"
                                          "  loss sum(rms_norm(x @ w, g) * c)");
  l.sizes = {{"B", 1, 4}, {"D", 1, 4}, {"E", 2, 5}};
  checkGradients(l);
}

//===----------------------------------------------------------------------===//
// Indexing and layout
//===----------------------------------------------------------------------===//

TEST(Vjp, Embedding) {
  // A small vocabulary, so ids repeat and the scatter-add accumulates.
  Case c;
  c.source = model("B = 2, T = 3, V = 4, D = 3",
                   "  input ids : i32[B, T]\n"
                   "  input t : f32[B, T, D]\n"
                   "  param table : f32[V, D]\n"
                   "  loss mse(embedding(ids, table), t)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 4}, {"V", 1, 5}, {"D", 1, 4}};
  c.draws["ids"] = ids("V");
  checkGradients(c);
  // Rank-1 ids, followed by a projection.
  Case p;
  p.source = model("B = 5, V = 3, D = 3, E = 2",
                   "  input ids : i32[B]\n"
                   "  input t : f32[B, E]\n"
                   "  param table : f32[V, D]\n"
                   "  param w : f32[D, E]\n"
                   "  loss mse(tanh(embedding(ids, table) @ w), t)");
  p.sizes = {{"B", 1, 6}, {"V", 1, 4}, {"D", 1, 4}, {"E", 1, 3}};
  p.draws["ids"] = ids("V");
  checkGradients(p);
}

TEST(Vjp, Reshape) {
  Case c;
  c.source = model("B = 2, T = 3, D = 4, E = 2",
                   "  input t : f32[B, E]\n"
                   "  param x : f32[B, T, D]\n"
                   "  param w : f32[T * D, E]\n"
                   "  loss mse(reshape(x, [B, -1]) @ w, t)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"D", 1, 4}, {"E", 1, 3}};
  checkGradients(c);
  Case s;
  s.source = model("B = 2, T = 3, D = 4",
                   "  input c : f32[T, B, D]\n"
                   "  param x : f32[B, T * D]\n"
                   "  loss sum(exp(reshape(x, [T, B, D])) * c)");
  s.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"D", 1, 4}};
  s.draws["x"] = normal(0.5);
  checkGradients(s);
}

TEST(Vjp, Transpose) {
  Case c;
  c.source = model("B = 2, T = 3, D = 4", "  input t : f32[B, D, T]\n"
                                          "  param x : f32[B, T, D]\n"
                                          "  loss mse(tanh(transpose(x)), t)");
  c.sizes = kBTD;
  checkGradients(c);
  Case p;
  p.source = model("B = 2, T = 3, D = 4",
                   "  input t : f32[D, B, T]\n"
                   "  param x : f32[B, T, D]\n"
                   "  loss mse(transpose(x, perm = [2, 0, 1]) * 2.0, t)");
  p.sizes = kBTD;
  checkGradients(p);
  Case q;
  q.source =
      model("B = 2, H = 2, T = 3, D = 4",
            "  input c : f32[T, D, B, H]\n"
            "  param x : f32[B, H, T, D]\n"
            "  loss sum(sigmoid(transpose(x, perm = [2, 3, 0, 1])) * c)");
  q.sizes = {{"B", 1, 2}, {"H", 1, 3}, {"T", 1, 3}, {"D", 1, 3}};
  checkGradients(q);
}

TEST(Vjp, SplitMergeHeads) {
  Case s;
  s.source = model("B = 2, T = 3, H = 2, E = 2",
                   "  input c : f32[B, H, T, E]\n"
                   "  param x : f32[B, T, H * E]\n"
                   "  loss sum(tanh(split_heads(x, H)) * c)");
  s.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"H", 1, 3}, {"E", 1, 3}};
  checkGradients(s);
  Case m;
  m.source = model("B = 2, T = 3, H = 2, E = 2",
                   "  input c : f32[B, T, H * E]\n"
                   "  param x : f32[B, H, T, E]\n"
                   "  loss sum(tanh(merge_heads(x)) * c)");
  m.sizes = s.sizes;
  checkGradients(m);
  // The projection -> heads -> merge round trip of an attention block.
  Case r;
  r.source =
      model("B = 2, T = 3, H = 2, E = 2", "  input x : f32[B, T, H * E]\n"
                                          "  input c : f32[B, H, T, E]\n"
                                          "  input t : f32[B, T, H * E]\n"
                                          "  param w : f32[H * E, H * E]\n"
                                          "  let h = split_heads(x @ w, H)\n"
                                          "  loss mse(merge_heads(h * c), t)");
  r.sizes = s.sizes;
  checkGradients(r);
}

TEST(Vjp, BroadcastTo) {
  Case a;
  a.source = model("B = 2, T = 3, D = 4",
                   "  input c : f32[B, T, D]\n"
                   "  param w : f32[T, 1]\n"
                   "  loss sum(tanh(broadcast_to(w, [B, T, D])) * c)");
  a.sizes = kBTD;
  checkGradients(a);
  Case b;
  b.source =
      model("B = 2, T = 3, D = 4", "  input t : f32[B, T, D]\n"
                                   "  param w : f32[B, 1, D]\n"
                                   "  loss mse(broadcast_to(w, [B, T, D]), t)");
  b.sizes = kBTD;
  checkGradients(b);
  Case s;
  s.source = model("B = 2, D = 4", "  input t : f32[B, D]\n"
                                   "  param w : f32[]\n"
                                   "  loss mse(broadcast_to(w, [B, D]), t)");
  s.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  checkGradients(s);
}

/// `loss mse(REDUCTION, t)` for a [B, T, D] parameter, t of `result`.
Case reduceCase(const std::string &call, const std::string &result) {
  Case c;
  c.source = model(
      "B = 2, T = 3, D = 4",
      (result.empty() ? std::string() : "  input t : " + result + "\n") +
          "  param x : f32[B, T, D]\n" +
          (result.empty() ? "  loss " + call : "  loss mse(" + call + ", t)"));
  c.sizes = kBTD;
  return c;
}

TEST(Vjp, ReduceSum) {
  checkGradients(reduceCase("sum(x, dims = [1])", "f32[B, D]"));
  checkGradients(reduceCase("sum(x, dims = [0, 2])", "f32[T]"));
  checkGradients(
      reduceCase("sum(x, dims = -1, keepdim = true)", "f32[B, T, 1]"));
  checkGradients(
      reduceCase("sum(x, dims = [0, 1], keepdim = true)", "f32[1, 1, D]"));
  checkGradients(reduceCase("sum(tanh(x))", ""));
}

TEST(Vjp, ReduceMean) {
  checkGradients(reduceCase("mean(x, dims = [1])", "f32[B, D]"));
  checkGradients(reduceCase("mean(x, dims = [-1, 0])", "f32[T]"));
  checkGradients(
      reduceCase("mean(x, dims = [2], keepdim = true)", "f32[B, T, 1]"));
  checkGradients(reduceCase("mean(x * x)", ""));
}

TEST(Vjp, ReduceMax) {
  // Random values: no ties, so the maximum is differentiable.
  checkGradients(reduceCase("max(x, dims = [1])", "f32[B, D]"));
  checkGradients(reduceCase("max(x, dims = [0, 2])", "f32[T]"));
  checkGradients(
      reduceCase("max(x, dims = -1, keepdim = true)", "f32[B, T, 1]"));
  checkGradients(
      reduceCase("max(x, dims = [0, 1], keepdim = true)", "f32[1, 1, D]"));
  checkGradients(reduceCase("max(x) * 3.0", ""));
}

TEST(Vjp, Concat) {
  Case a;
  a.source = model("B = 2, T = 3, U = 2, D = 4",
                   "  input t : f32[B, T + U, D]\n"
                   "  param x : f32[B, T, D]\n"
                   "  param y : f32[B, U, D]\n"
                   "  loss mse(tanh(concat(x, y, dim = 1)), t)");
  a.sizes = {{"B", 1, 3}, {"T", 1, 3}, {"U", 1, 3}, {"D", 1, 3}};
  checkGradients(a);
  Case b;
  b.source = model("B = 2, D = 2, E = 3, F = 1",
                   "  input t : f32[B, D + E + F]\n"
                   "  param x : f32[B, D]\n"
                   "  param y : f32[B, E]\n"
                   "  param z : f32[B, F]\n"
                   "  loss mse(concat(x, y * 2.0, z) * 3.0, t)");
  b.sizes = {{"B", 1, 3}, {"D", 1, 3}, {"E", 1, 3}, {"F", 1, 3}};
  checkGradients(b);
  // The same value twice: both slices of the adjoint accumulate into it.
  Case s;
  s.source =
      model("B = 2, D = 3", "  input t : f32[2 * B, D]\n"
                            "  param x : f32[B, D]\n"
                            "  loss mse(concat(x, tanh(x), dim = 0), t)");
  s.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  checkGradients(s);
}

TEST(Vjp, Slice) {
  Case a;
  a.source =
      model("B = 2, T = 5, D = 3", "  input t : f32[B, 2, D]\n"
                                   "  param x : f32[B, T, D]\n"
                                   "  loss mse(tanh(slice(x, 1, 1, 3)), t)");
  a.sizes = {{"B", 1, 3}, {"T", 3, 6}, {"D", 1, 3}};
  checkGradients(a);
  Case b;
  b.source =
      model("B = 2, D = 5", "  input t : f32[B, 3]\n"
                            "  param x : f32[B, D]\n"
                            "  loss mse(slice(x, -1, D - 3, D) * 2.0, t)");
  b.sizes = {{"B", 1, 3}, {"D", 3, 6}};
  checkGradients(b);
  // Two overlapping slices of one parameter.
  Case c;
  c.source = model("B = 2, D = 5",
                   "  input t : f32[B, 2]\n"
                   "  param x : f32[B, D]\n"
                   "  loss mse(slice(x, 1, 0, 2) * slice(x, 1, 1, 3), t)");
  c.sizes = {{"B", 1, 3}, {"D", 3, 6}};
  checkGradients(c);
}

TEST(Vjp, Cast) {
  Case a;
  a.source = model("B = 2, D = 3", "  input t : f32[B, D]\n"
                                   "  param x : f32[B, D]\n"
                                   "  loss mse(tanh(cast(x, to = f32)), t)");
  a.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  checkGradients(a);
  // A round trip through a low-precision type (the interpreter keeps the
  // value, so the VJP is the identity cast back).
  Case b;
  b.source =
      model("B = 2, D = 3",
            "  input t : f32[B, D]\n"
            "  param x : f32[B, D]\n"
            "  loss mse(cast(tanh(cast(x, to = bf16)) * 2.0, to = f32), t)");
  b.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  checkGradients(b);
}

//===----------------------------------------------------------------------===//
// Regularisation, attention and losses
//===----------------------------------------------------------------------===//

TEST(Vjp, Dropout) {
  // The mask is a fixed function of (seed, step, key, index), so the loss
  // is linear in the dropped tensor and finite differences hold.
  Case c;
  c.source = model("B = 2, T = 3, D = 4, E = 3",
                   "  input x : f32[B, T, D]\n"
                   "  input t : f32[B, T, E]\n"
                   "  param w : f32[D, E]\n"
                   "  param b : f32[E]\n"
                   "  loss mse(dropout(tanh(x @ w + b), 0.3), t)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 4}, {"D", 1, 4}, {"E", 2, 5}};
  checkGradients(c);
  // Two dropouts with different keys on one parameter.
  Case d;
  d.source = model("B = 4, D = 4", "  input t : f32[B, D]\n"
                                   "  param w : f32[B, D]\n"
                                   "  loss mse(dropout(w, 0.5) + "
                                   "dropout(w * w, 0.25), t)");
  d.sizes = {{"B", 2, 5}, {"D", 2, 5}};
  checkGradients(d);
}

Case attentionCase(bool causal, bool sameLength) {
  Case c;
  c.source = model("B = 2, H = 2, Q = 3, K = 3, E = 2, F = 3",
                   std::string("  input t : f32[B, H, Q, F]\n") +
                       "  param q : f32[B, H, Q, E]\n"
                       "  param k : f32[B, H, " +
                       (sameLength ? "Q" : "K") +
                       ", E]\n"
                       "  param v : f32[B, H, " +
                       (sameLength ? "Q" : "K") +
                       ", F]\n"
                       "  loss mse(attention(q, k, v, causal = " +
                       (causal ? "true" : "false") + "), t)");
  c.sizes = {{"B", 1, 2}, {"H", 1, 3}, {"Q", 1, 4},
             {"K", 1, 5}, {"E", 1, 4}, {"F", 1, 3}};
  return c;
}

TEST(Vjp, Attention) {
  checkGradients(attentionCase(/*causal=*/false, /*sameLength=*/true));
  checkGradients(attentionCase(/*causal=*/true, /*sameLength=*/true));
  // Tq != Tk: a causal query i sees keys <= i + (Tk - Tq).
  Case c = attentionCase(/*causal=*/false, /*sameLength=*/false);
  checkGradients(c);
  Case d = attentionCase(/*causal=*/true, /*sameLength=*/false);
  d.sizes = {{"B", 1, 2}, {"H", 1, 2}, {"Q", 1, 3},
             {"K", 3, 5}, {"E", 1, 3}, {"F", 1, 3}};
  checkGradients(d);
  // Causal with Tq > Tk: the first Tq - Tk queries see no key at all.
  Case e = attentionCase(/*causal=*/true, /*sameLength=*/false);
  e.sizes = {{"B", 1, 2}, {"H", 1, 2}, {"Q", 3, 5},
             {"K", 1, 3}, {"E", 1, 3}, {"F", 1, 3}};
  checkGradients(e);
}

Case gatedAttentionCase(bool causal, const std::string &extra = "") {
  Case c;
  c.source = model("B = 2, H = 2, T = 3, E = 2, F = 3",
                   std::string("  input t : f32[B, H, T, F]\n") +
                       "  param q : f32[B, H, T, E]\n"
                       "  param k : f32[B, H, T, E]\n"
                       "  param v : f32[B, H, T, F]\n"
                       "  param wg : f32[H, 2 * E]\n"
                       "  param bg : f32[H]\n"
                       "  loss mse(gated_attention(q, k, v, wg, bg, causal = " +
                       (causal ? "true" : "false") + extra + "), t)");
  c.sizes = {{"B", 1, 2}, {"H", 1, 3}, {"T", 1, 4}, {"E", 1, 3}, {"F", 1, 3}};
  return c;
}

TEST(Vjp, GatedAttention) {
  checkGradients(gatedAttentionCase(/*causal=*/false));
  checkGradients(gatedAttentionCase(/*causal=*/true));
}

TEST(Vjp, GatedAttentionThreshold) {
  // The opt-in approximate mode: skipped heads contribute nothing, so away
  // from the threshold the loss is still smooth.
  Case c = gatedAttentionCase(/*causal=*/true, ", threshold = 0.5");
  checkGradients(c);
}

TEST(Vjp, CrossEntropy) {
  Case c;
  c.source = model("B = 2, T = 3, C = 4", "  input y : i32[B, T]\n"
                                          "  param logits : f32[B, T, C]\n"
                                          "  loss cross_entropy(logits, y)");
  c.sizes = {{"B", 1, 3}, {"T", 1, 4}, {"C", 1, 6}};
  c.draws["y"] = targets("C", /*ignored=*/0.3);
  c.seeds = 4;
  checkGradients(c);
  // A custom ignore_index, after a projection.
  Case p;
  p.source = model("B = 6, D = 3, C = 4",
                   "  input x : f32[B, D]\n"
                   "  input y : i32[B]\n"
                   "  param w : f32[D, C]\n"
                   "  param b : f32[C]\n"
                   "  loss cross_entropy(x @ w + b, y, ignore_index = 1)");
  p.sizes = {{"B", 2, 8}, {"D", 1, 4}, {"C", 2, 5}};
  p.draws["y"] = targets("C", /*ignored=*/0.3, /*ignoreIndex=*/1);
  checkGradients(p);
}

TEST(Vjp, Mse) {
  // Both arguments are parameters: pred gets +d, target -d.
  Case c;
  c.source = model("B = 2, T = 3", "  param p : f32[B, T]\n"
                                   "  param q : f32[B, T]\n"
                                   "  loss mse(p, q)");
  c.sizes = {{"B", 1, 4}, {"T", 1, 4}};
  checkGradients(c);
  Case d;
  d.source = model("B = 2, T = 3, D = 2", "  input t : f32[B, T, D]\n"
                                          "  param p : f32[B, T, D]\n"
                                          "  loss mse(p * p, t) * 0.5");
  d.sizes = kBTD;
  checkGradients(d);
}

TEST(Vjp, MseOfLowPrecision) {
  // mse of bf16 operands is an f32 scalar, so its adjoint (f32) meets
  // bf16 operands in the VJP rule.
  Case c;
  c.source = model("B = 2, D = 3", "  input t : bf16[B, D]\n"
                                   "  param x : f32[B, D]\n"
                                   "  loss mse(cast(x, to = bf16), t)");
  c.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  checkGradients(c);
}

TEST(Vjp, CrossEntropyOfLowPrecision) {
  Case c;
  c.source =
      model("B = 3, C = 4", "  input y : i32[B]\n"
                            "  param l : f32[B, C]\n"
                            "  loss cross_entropy(cast(l, to = bf16), y)");
  c.sizes = {{"B", 1, 4}, {"C", 2, 5}};
  c.draws["y"] = targets("C", 0.2);
  checkGradients(c);
}

//===----------------------------------------------------------------------===//
// Adjoint accumulation and combinations
//===----------------------------------------------------------------------===//

TEST(Vjp, ParamUsedTwice) {
  Case c;
  c.source =
      model("B = 2, D = 3", "  input x : f32[B, D]\n"
                            "  input t : f32[B, D]\n"
                            "  param w : f32[D, D]\n"
                            "  loss mse(tanh(x @ w) @ w + x * sum(w), t)");
  c.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  c.draws["w"] = normal(0.5);
  checkGradients(c);
}

TEST(Vjp, UnusedParamHasZeroGradient) {
  Case c;
  c.source = model("B = 2, D = 3", "  input x : f32[B, D]\n"
                                   "  input t : f32[B, D]\n"
                                   "  param w : f32[D, D]\n"
                                   "  param unused : f32[D, 2]\n"
                                   "  param s : f32[]\n"
                                   "  loss mse(x @ w, t)");
  c.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  c.zeroGradients = {"unused", "s"};
  checkGradients(c);
}

TEST(Vjp, MlpClassifier) {
  Case c;
  c.source = model("B = 4, D = 5, H = 6, C = 3",
                   "  input x : f32[B, D]\n"
                   "  input y : i32[B]\n"
                   "  param w1 : f32[D, H]\n"
                   "  param b1 : f32[H]\n"
                   "  param w2 : f32[H, C]\n"
                   "  param b2 : f32[C]\n"
                   "  let h = relu(x @ w1 + b1)\n"
                   "  loss cross_entropy(h @ w2 + b2, y)");
  c.sizes = {{"B", 1, 5}, {"D", 1, 5}, {"H", 1, 6}, {"C", 2, 5}};
  c.draws["y"] = targets("C", 0.0);
  checkGradients(c);
}

TEST(Vjp, LayersAndRepeat) {
  // Layers are inlined; a repeat gives each instance its own parameters.
  Case c;
  c.source = "layer Block(d) {\n"
             "  param g : f32[d]\n"
             "  param b : f32[d]\n"
             "  param w : f32[d, d]\n"
             "  fn(x) {\n"
             "    let h = gelu(layer_norm(x, g, b) @ w)\n"
             "    return x + dropout(h, 0.2)\n"
             "  }\n"
             "}\n" +
             model("B = 2, T = 3, D = 4, blocks = 2",
                   "  input x : f32[B, T, D]\n"
                   "  input t : f32[B, T, D]\n"
                   "  let y = x\n"
                   "  repeat blocks { y = Block(D)(y) }\n"
                   "  loss mse(y, t)");
  c.sizes = {{"B", 1, 2}, {"T", 1, 3}, {"D", 2, 4}, {"blocks", 1, 3}};
  c.draws["g"] = uniform(0.5, 1.5);
  c.draws["w"] = normal(0.5);
  checkGradients(c);
}

TEST(Vjp, TransformerBlock) {
  // Every op of a decoder: embedding, positions, norms, heads, causal
  // attention, residuals, an MLP and a language-model loss.
  Case c;
  c.source = model(
      "B = 2, T = 3, V = 5, D = 4, H = 2",
      "  input tokens : i32[B, T]\n"
      "  input y : i32[B, T]\n"
      "  param wte : f32[V, D]\n"
      "  param wpe : f32[T, D]\n"
      "  param g1 : f32[D]\n"
      "  param b1 : f32[D]\n"
      "  param wq : f32[D, D]\n"
      "  param wk : f32[D, D]\n"
      "  param wv : f32[D, D]\n"
      "  param wo : f32[D, D]\n"
      "  param g2 : f32[D]\n"
      "  param w1 : f32[D, 2 * D]\n"
      "  param c1 : f32[2 * D]\n"
      "  param w2 : f32[2 * D, D]\n"
      "  param head : f32[D, V]\n"
      "  let x = embedding(tokens, wte) + wpe\n"
      "  let h = layer_norm(x, g1, b1)\n"
      "  let a = attention(split_heads(h @ wq, H), split_heads(h @ wk, H),\n"
      "                    split_heads(h @ wv, H), causal = true)\n"
      "  let x = x + merge_heads(a) @ wo\n"
      "  let x = x + gelu(rms_norm(x, g2) @ w1 + c1) @ w2\n"
      "  loss cross_entropy(x @ head, y)");
  c.sizes = {{"B", 1, 2}, {"T", 1, 4}, {"V", 2, 6}, {"H", 1, 2}};
  c.draws["tokens"] = ids("V");
  c.draws["y"] = targets("V", 0.2);
  c.draws["g1"] = c.draws["g2"] = uniform(0.5, 1.5);
  for (const char *w : {"wq", "wk", "wv", "wo", "w1", "w2", "head"})
    c.draws[w] = normal(0.5);
  checkGradients(c);
}

TEST(Vjp, GptSample) {
  // samples/gpt.loom at toy sizes: gated attention, layers, repeat.
  std::ifstream in(LOOM_SOURCE_DIR "/samples/gpt.loom");
  ASSERT_TRUE(in) << "cannot read samples/gpt.loom";
  std::stringstream text;
  text << in.rdbuf();
  Case c;
  c.source = text.str();
  c.sizes = {{"vocab", 3, 6},  {"d", 4, 4},   {"heads", 2, 2},
             {"layers", 1, 2}, {"seq", 2, 3}, {"batch", 1, 2}};
  c.draws["tokens"] = ids("vocab");
  c.draws["targets"] = targets("vocab", 0.0);
  for (const char *g : {"g1", "g2", "gf"})
    c.draws[g] = uniform(0.5, 1.5);
  for (const char *w : {"wq", "wk", "wv", "wo", "w1", "w2", "head", "wg"})
    c.draws[w] = normal(0.5);
  c.seeds = 2;
  checkGradients(c);
}

//===----------------------------------------------------------------------===//
// The harness itself
//===----------------------------------------------------------------------===//

TEST(VjpHarness, CatchesAWrongRule) {
  // tanh's rule is g * (1 - y * y); making the 1 a 1.5 must be caught.
  Case c;
  c.source = model("B = 2, D = 3", "  input t : f32[B, D]\n"
                                   "  param w : f32[B, D]\n"
                                   "  loss mse(tanh(w), t)");
  c.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  c.seeds = 1;
  int edited = 0;
  c.mutate = [&](mlir::Operation *step) {
    for (mlir::Operation &op : step->getRegion(0).front()) {
      if (op.getName().getStringRef() != "loom.sub")
        continue;
      mlir::Operation *one = op.getOperand(0).getDefiningOp();
      if (!one || one->getName().getStringRef() != "loom.constant")
        continue;
      auto type =
          mlir::cast<mlir::RankedTensorType>(one->getResult(0).getType());
      one->setAttr("value",
                   mlir::DenseElementsAttr::get(
                       type, mlir::FloatAttr::get(type.getElementType(), 1.5)));
      ++edited;
    }
  };
  std::vector<std::string> errors = gradientErrors(c);
  ASSERT_GE(edited, 1); // once per seed
  ASSERT_FALSE(errors.empty());
  for (const std::string &e : errors)
    EXPECT_NE(e.find("gradient of 'w'"), std::string::npos) << e;
}

TEST(VjpHarness, CatchesAMissingAccumulation) {
  // Drops one of the two adjoints of a parameter used twice.
  Case c;
  c.source = model("B = 2, D = 3", "  input t : f32[B, D]\n"
                                   "  param w : f32[B, D]\n"
                                   "  loss mse(tanh(w) * w, t)");
  c.sizes = {{"B", 1, 3}, {"D", 1, 4}};
  c.seeds = 1;
  int edited = 0;
  c.mutate = [&](mlir::Operation *step) {
    for (mlir::Operation &op : step->getRegion(0).front())
      if (op.getName().getStringRef() == "train.gradient") {
        mlir::Operation *sum = op.getOperand(0).getDefiningOp();
        if (sum && sum->getName().getStringRef() == "loom.add") {
          op.setOperand(0, sum->getOperand(0));
          ++edited;
        }
      }
  };
  std::vector<std::string> errors = gradientErrors(c);
  ASSERT_GE(edited, 1); // once per seed
  ASSERT_FALSE(errors.empty());
  for (const std::string &e : errors)
    EXPECT_NE(e.find("gradient of 'w'"), std::string::npos) << e;
}

//===----------------------------------------------------------------------===//
// The interpreter's forward semantics, against values computed here
//===----------------------------------------------------------------------===//

/// Lowers `source` at its default sizes and runs it on the given values.
StepResult runModel(const std::string &source,
                    const std::map<std::string, Tensor> &inputs,
                    const std::map<std::string, Tensor> &params,
                    std::string &ir) {
  Lowered l;
  std::string error;
  if (!lower(source, {}, l, error)) {
    StepResult r;
    r.error = error;
    return r;
  }
  ir = l.stepText();
  return interpretTrainStep(l.step, inputs, params);
}

Tensor iota(std::vector<int64_t> shape, double scale = 1.0) {
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.size(); ++i)
    t.data[i] = scale * double(i);
  return t;
}

TEST(TrainInterpreter, SplitHeadsIsHeadMajor) {
  // sum(split_heads(x, 2) * c) with c one-hot at [b=0, h=1, t=1, j=0]
  // reads channel h * (D/H) + j = 2 of x[0, 1, :].
  Tensor c(std::vector<int64_t>{1, 2, 2, 2});
  c.data[((0 * 2 + 1) * 2 + 1) * 2 + 0] = 1.0;
  std::string ir;
  StepResult r = runModel(model("B = 1, T = 2, D = 4",
                                "  input c : f32[B, 2, T, 2]\n"
                                "  param x : f32[B, T, D]\n"
                                "  loss sum(split_heads(x, 2) * c)"),
                          {{"c", c}}, {{"x", iota({1, 2, 4})}}, ir);
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.loss(), 1 * 4 + 2) << ir;
  // The gradient is c merged back: 1 at x[0, 1, 2].
  std::vector<double> want(8, 0.0);
  want[1 * 4 + 2] = 1.0;
  EXPECT_EQ(r.gradients.at("x").data, want) << ir;
}

TEST(TrainInterpreter, ForwardValues) {
  std::string ir;
  // mean((x @ w + b)^2) against a hand computation.
  Tensor x = iota({2, 3}, 0.5), w = iota({3, 2}, -0.25), b({2});
  b.data = {1.0, -2.0};
  StepResult r =
      runModel(model("B = 2", "  input x : f32[B, 3]\n"
                              "  input t : f32[B, 2]\n"
                              "  param w : f32[3, 2]\n"
                              "  param b : f32[2]\n"
                              "  loss mse(x @ w + b, t)"),
               {{"x", x}, {"t", Tensor({2, 2})}}, {{"w", w}, {"b", b}}, ir);
  ASSERT_TRUE(r.ok) << r.error;
  double want = 0;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      double y = b.data[j];
      for (int k = 0; k < 3; ++k)
        y += x.data[i * 3 + k] * w.data[k * 2 + j];
      want += y * y / 4;
    }
  EXPECT_NEAR(r.loss(), want, 1e-12) << ir;

  // gelu is the tanh approximation; sigmoid and rsqrt as written.
  Tensor v({1, 3});
  v.data = {-1.0, 0.5, 2.0};
  r = runModel(model("B = 1", "  input c : f32[B, 3]\n"
                              "  param v : f32[B, 3]\n"
                              "  loss sum(gelu(v) * c + sigmoid(v) + "
                              "rsqrt(v * v + 1.0))"),
               {{"c", Tensor({1, 3}, 1.0)}}, {{"v", v}}, ir);
  ASSERT_TRUE(r.ok) << r.error;
  want = 0;
  for (double e : v.data)
    want +=
        0.5 * e *
            (1 + std::tanh(std::sqrt(2 / M_PI) * (e + 0.044715 * e * e * e))) +
        1 / (1 + std::exp(-e)) + 1 / std::sqrt(e * e + 1);
  EXPECT_NEAR(r.loss(), want, 1e-12) << ir;

  // Cross-entropy: mean over the non-ignored rows of lse - logit[target].
  Tensor logits({3, 2});
  logits.data = {0.0, 1.0, 2.0, -1.0, 0.5, 0.5};
  Tensor y({3});
  y.data = {1, -100, 0};
  r = runModel(model("B = 3", "  input y : i32[B]\n"
                              "  param l : f32[B, 2]\n"
                              "  loss cross_entropy(l, y)"),
               {{"y", y}}, {{"l", logits}}, ir);
  ASSERT_TRUE(r.ok) << r.error;
  want = ((std::log(std::exp(0.0) + std::exp(1.0)) - 1.0) + std::log(2.0)) / 2;
  EXPECT_NEAR(r.loss(), want, 1e-12) << ir;
}

TEST(TrainInterpreter, ReduceAndConcatLayout) {
  std::string ir;
  // max over dim 1, concatenated with x[:, 0, 0]: rows [3, 4, 5, 0] and
  // [9, 10, 11, 6] for x = 0..11, weighted by c = 0..7.
  StepResult r;
  r = runModel(model("B = 2", "  input c : f32[B, 4]\n"
                              "  param x : f32[B, 2, 3]\n"
                              "  loss sum(concat(max(x, dims = [1]), "
                              "reshape(slice(slice(x, 1, 0, 1), 2, 0, 1), "
                              "[B, 1]), dim = 1) * c)"),
               {{"c", iota({2, 4})}}, {{"x", iota({2, 2, 3})}}, ir);
  ASSERT_TRUE(r.ok) << r.error;
  const double want =
      (0 * 3 + 1 * 4 + 2 * 5 + 3 * 0) + (4 * 9 + 5 * 10 + 6 * 11 + 7 * 6);
  EXPECT_EQ(r.loss(), want) << ir;
}

} // namespace
