//===- AST.h - the Loom DSL's abstract syntax tree --------------*- C++ -*-===//
//
// A file holds `model`, `layer` and `train` declarations. The tree is plain
// data owned through unique_ptr; sema reads it and never mutates it.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_FRONTEND_AST_H
#define LOOM_FRONTEND_AST_H

#include "frontend/Diagnostics.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace loom::frontend {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

/// A call argument, positional (`name` empty) or keyword (`name = value`).
struct Arg {
  std::string name;
  SourceLoc nameLoc;
  ExprPtr value;
};

struct Expr {
  enum Kind { Int, Float, Bool, String, Ident, List, Neg, Binary, Call };
  Kind kind;
  SourceLoc loc;
  /// Int/Float: the literal text; Ident: the name; String: the value;
  /// Binary: the operator ("+", "-", "*", "/", "@").
  std::string text;
  /// A number's unit suffix ("GiB"), kept for sizes like `budget = 40GiB`.
  std::string suffix;
  bool boolValue = false;
  ExprPtr lhs, rhs;          ///< Binary operands; Neg uses lhs
  ExprPtr callee;            ///< Call
  std::vector<Arg> args;     ///< Call arguments
  std::vector<ExprPtr> elems; ///< List elements

  /// Height of the tree under this node: flat chains (`a + b + ... + z`)
  /// are as deep as they are long for every recursive walk.
  unsigned depth = 1;

  Expr(Kind k, SourceLoc l) : kind(k), loc(l) {}
};

/// `f32[batch, 64]`.
struct TypeExpr {
  std::string dtype;
  SourceLoc loc;
  std::vector<ExprPtr> dims;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;

struct Stmt {
  enum Kind { Input, Param, Let, Assign, Return, Loss, Repeat };
  Kind kind;
  SourceLoc loc;
  std::string name; ///< Input/Param/Let/Assign; Repeat: `as` alias
  SourceLoc nameLoc;
  TypeExpr type;    ///< Input/Param
  ExprPtr init;     ///< Param: `init glorot` / `init normal(0.02)`; may be null
  /// Param: `shard(_, tp)`, one entry per dimension ("_" = replicated).
  std::vector<std::pair<std::string, SourceLoc>> shard;
  bool hasShard = false;
  SourceLoc shardLoc;
  ExprPtr value;    ///< Let/Assign/Return/Loss; Repeat: the count
  std::vector<StmtPtr> body; ///< Repeat

  Stmt(Kind k, SourceLoc l) : kind(k), loc(l) {}
};

/// A parameter of a model or layer header: `batch = 64` or `d`.
struct HeaderParam {
  std::string name;
  SourceLoc loc;
  ExprPtr defaultValue; ///< may be null
};

struct ModelDecl {
  std::string name;
  SourceLoc loc;
  std::vector<HeaderParam> params;
  std::vector<StmtPtr> body;
};

struct LayerDecl {
  std::string name;
  SourceLoc loc;
  std::vector<HeaderParam> params;
  std::vector<StmtPtr> decls; ///< params of the layer
  SourceLoc fnLoc;
  bool hasFn = false;
  std::vector<std::pair<std::string, SourceLoc>> fnArgs;
  std::vector<StmtPtr> fnBody;
};

/// One line of a train block: `optimizer adamw(lr = 3e-4)`,
/// `mesh dp = 2, tp = 2`. Positional and keyword arguments as for calls.
struct TrainOption {
  std::string name;
  SourceLoc loc;
  std::vector<Arg> args;
};

struct TrainDecl {
  std::string model;
  SourceLoc loc, modelLoc;
  std::vector<TrainOption> options;
};

struct Module {
  std::vector<std::unique_ptr<ModelDecl>> models;
  std::vector<std::unique_ptr<LayerDecl>> layers;
  std::vector<std::unique_ptr<TrainDecl>> trains;
};

/// Prints the tree as indented S-expressions (`loomc --emit=ast`).
std::string printAST(const Module &m);
std::string printExpr(const Expr &e);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_AST_H
