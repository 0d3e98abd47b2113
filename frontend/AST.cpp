//===- AST.cpp - printing the Loom DSL's syntax tree ----------------------===//

#include "frontend/AST.h"

namespace loom::frontend {

std::string printExpr(const Expr &e) {
  switch (e.kind) {
  case Expr::Int:
  case Expr::Float:
    return e.text + e.suffix;
  case Expr::Bool:
    return e.boolValue ? "true" : "false";
  case Expr::String: {
    std::string s = "\"";
    for (char c : e.text)
      s += (c == '"' || c == '\\') ? std::string("\\") + c
           : c == '\n'             ? std::string("\\n")
                                   : std::string(1, c);
    return s + "\"";
  }
  case Expr::Ident:
    return e.text;
  case Expr::List: {
    std::string s = "[";
    for (size_t i = 0; i < e.elems.size(); ++i)
      s += (i ? ", " : "") + printExpr(*e.elems[i]);
    return s + "]";
  }
  case Expr::Neg:
    return "(neg " + printExpr(*e.lhs) + ")";
  case Expr::Binary:
    return "(" + e.text + " " + printExpr(*e.lhs) + " " + printExpr(*e.rhs) +
           ")";
  case Expr::Call: {
    std::string s = "(call " + printExpr(*e.callee);
    for (const Arg &a : e.args)
      s += " " + (a.name.empty() ? "" : a.name + "=") + printExpr(*a.value);
    return s + ")";
  }
  }
  return "?";
}

namespace {
std::string loc(SourceLoc l) {
  return "@" + std::to_string(l.line()) + ":" + std::to_string(l.col());
}

std::string type(const TypeExpr &t) {
  std::string s = t.dtype + "[";
  for (size_t i = 0; i < t.dims.size(); ++i)
    s += (i ? ", " : "") + printExpr(*t.dims[i]);
  return s + "]";
}

void stmts(const std::vector<StmtPtr> &body, const std::string &ind,
           std::string &out) {
  for (const StmtPtr &s : body) {
    out += ind;
    switch (s->kind) {
    case Stmt::Input:
      out += "(input " + s->name + " " + type(s->type) + ")";
      break;
    case Stmt::Param:
      out += "(param " + s->name + " " + type(s->type);
      if (s->init)
        out += " init=" + printExpr(*s->init);
      if (s->hasShard) {
        out += " shard=(";
        for (size_t i = 0; i < s->shard.size(); ++i)
          out += (i ? " " : "") + s->shard[i].first;
        out += ")";
      }
      out += ")";
      break;
    case Stmt::Let:
      out += "(let " + s->name + " " + printExpr(*s->value) + ")";
      break;
    case Stmt::Assign:
      out += "(assign " + s->name + " " + printExpr(*s->value) + ")";
      break;
    case Stmt::Return:
      out += "(return " + printExpr(*s->value) + ")";
      break;
    case Stmt::Loss:
      out += "(loss " + printExpr(*s->value) + ")";
      break;
    case Stmt::Repeat:
      out += "(repeat " + printExpr(*s->value) +
             (s->name.empty() ? "" : " as " + s->name) + " " + loc(s->loc) +
             "\n";
      stmts(s->body, ind + "  ", out);
      out += ind + ")";
      break;
    }
    out += " " + loc(s->loc) + "\n";
  }
}

std::string header(const std::vector<HeaderParam> &ps) {
  std::string s = "(";
  for (size_t i = 0; i < ps.size(); ++i) {
    s += (i ? " " : "") + ps[i].name;
    if (ps[i].defaultValue)
      s += "=" + printExpr(*ps[i].defaultValue);
  }
  return s + ")";
}
} // namespace

std::string printAST(const Module &m) {
  std::string out;
  for (const auto &l : m.layers) {
    out += "(layer " + l->name + " " + header(l->params) + " " + loc(l->loc) +
           "\n";
    stmts(l->decls, "  ", out);
    out += "  (fn (";
    for (size_t i = 0; i < l->fnArgs.size(); ++i)
      out += (i ? " " : "") + l->fnArgs[i].first;
    out += ")\n";
    stmts(l->fnBody, "    ", out);
    out += "  ))\n";
  }
  for (const auto &md : m.models) {
    out += "(model " + md->name + " " + header(md->params) + " " +
           loc(md->loc) + "\n";
    stmts(md->body, "  ", out);
    out += ")\n";
  }
  for (const auto &t : m.trains) {
    out += "(train " + t->model + " " + loc(t->loc) + "\n";
    for (const TrainOption &o : t->options) {
      out += "  (" + o.name;
      for (const Arg &a : o.args)
        out += " " + (a.name.empty() ? "" : a.name + "=") + printExpr(*a.value);
      out += ")\n";
    }
    out += ")\n";
  }
  return out;
}

} // namespace loom::frontend
