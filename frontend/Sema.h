//===- Sema.h - name, type and shape checking; elaboration ------*- C++ -*-===//
//
// Semantic analysis of a parsed file: resolves the model to compile, applies
// -D overrides and train options, instantiates layers (unrolling `repeat`),
// and checks names, element types, shapes, broadcasting, arity, `shard`
// annotations against the mesh, and batch divisibility — every error at the
// user's line, before any IR exists. Its product is the typed Graph.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_FRONTEND_SEMA_H
#define LOOM_FRONTEND_SEMA_H

#include "frontend/AST.h"
#include "frontend/Graph.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace loom::frontend {

struct CompileOptions {
  /// -Dname=value overrides of model parameters, in command-line order.
  std::vector<std::pair<std::string, std::string>> defines;
  /// A train option from a flag, applied after the file's train block.
  /// Either DSL option text ("mesh dp=2,tp=2"), or with `setOption` given,
  /// `--set=OPTION.ARG=VALUE` (text holds VALUE), which needs the options
  /// applied before it to be spelled.
  struct Override {
    std::string text;
    std::string setOption, setArg;
  };
  std::vector<Override> trainOverrides;
  /// `--model=NAME` when a file has several models and no train block.
  std::string model;
  /// Directory against which a relative `data` path resolves.
  std::string baseDir;
  /// `--mode=train` needs a loss (false: front-end tools and tests that
  /// elaborate loss-free models).
  bool training = true;
  /// loomc --mode=infer: the evaluation step, which reports the loss, so a
  /// loss is required as for training.
  bool inference = false;
};

/// Checks `module` and elaborates the model to compile. Returns nullopt when
/// any error was reported.
std::optional<Graph> analyze(const Module &module, const CompileOptions &opts,
                             DiagnosticEngine &diag);

/// Parses and analyzes a source file in one call (tests, fuzzing, loomc).
std::optional<Graph> compileSource(const SourceFile &file,
                                   const CompileOptions &opts,
                                   DiagnosticEngine &diag);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_SEMA_H
