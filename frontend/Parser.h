//===- Parser.h - recursive-descent parser of the Loom DSL ------*- C++ -*-===//
#ifndef LOOM_FRONTEND_PARSER_H
#define LOOM_FRONTEND_PARSER_H

#include "frontend/AST.h"

namespace loom::frontend {

/// Expression and block nesting deeper than this is an error, so that no
/// input can overflow the parser's (or sema's) stack.
constexpr unsigned kMaxNesting = 128;
/// An expression tree higher than this (a very long operator chain) is an
/// error too: every later walk of the tree recurses once per level.
constexpr unsigned kMaxExprDepth = 1000;

/// Parses a whole file. Always returns a module (possibly partial); errors
/// are in `diag`.
std::unique_ptr<Module> parseModule(const SourceFile &file,
                                    DiagnosticEngine &diag);

/// Parses one train-block option, e.g. "mesh dp = 2, tp = 2" — how loomc
/// turns `--mesh=dp=2,tp=2` into the same form as the DSL.
std::optional<TrainOption> parseTrainOption(const SourceFile &file,
                                            DiagnosticEngine &diag);

/// Parses a single expression filling the whole file (a `--set` value).
ExprPtr parseStandaloneExpr(const SourceFile &file, DiagnosticEngine &diag);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_PARSER_H
