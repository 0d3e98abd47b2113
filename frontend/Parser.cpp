//===- Parser.cpp - recursive-descent parser of the Loom DSL --------------===//
//
// Grammar (frontend/README.md has the full EBNF):
//   file    := (model | layer | train)*
//   expr    := sum ; sum := prod (('+'|'-') prod)* ;
//   prod    := unary (('*'|'/'|'@') unary)* ; unary := '-' unary | postfix
//   postfix := primary ('(' args ')')*
// `@` binds like `*` and `/`, as in Python. Statements need no separator;
// an optional ';' is accepted.
//
//===----------------------------------------------------------------------===//

#include "frontend/Parser.h"
#include "frontend/Lexer.h"

namespace loom::frontend {
namespace {

/// Thrown-free error handling: a failed production returns null/false after
/// reporting; callers resynchronise at statement or declaration starts.
class Parser {
public:
  Parser(const SourceFile &file, DiagnosticEngine &diag)
      : diag_(diag), toks_(lex(file, diag)) {}

  std::unique_ptr<Module> module() {
    auto m = std::make_unique<Module>();
    if (toks_.size() == 1 && !diag_.hasErrors())
      diag_.error(cur().loc, "empty file: expected a 'model', 'layer' or "
                             "'train' declaration");
    while (!at(Tok::Eof) && !diag_.tooManyErrors()) {
      size_t before = pos_;
      bool ok = false;
      if (at(Tok::KwModel))
        ok = model(*m);
      else if (at(Tok::KwLayer))
        ok = layer(*m);
      else if (at(Tok::KwTrain))
        ok = train(*m);
      else if (!at(Tok::Error))
        diag_.error(cur().loc, std::string("expected 'model', 'layer' or "
                                           "'train' at top level, found ") +
                                   describe(cur()));
      if (!ok)
        syncTopLevel(before);
    }
    return m;
  }

  std::optional<TrainOption> trainOptionOnly() {
    auto opt = trainOption();
    if (opt && !at(Tok::Eof)) {
      diag_.error(cur().loc, std::string("unexpected ") + describe(cur()) +
                                 " after the option's arguments");
      return std::nullopt;
    }
    return opt;
  }

  ExprPtr exprOnly() {
    ExprPtr e = expr();
    if (e && !at(Tok::Eof)) {
      diag_.error(cur().loc,
                  std::string("unexpected ") + describe(cur()) + " after value");
      return nullptr;
    }
    return e;
  }

private:
  // Token access.
  const Token &cur() const { return toks_[pos_]; }
  const Token &peek(size_t k = 1) const {
    return toks_[std::min(pos_ + k, toks_.size() - 1)];
  }
  bool at(Tok k) const { return cur().kind == k; }
  const Token &take() {
    const Token &t = toks_[pos_];
    if (pos_ + 1 < toks_.size())
      ++pos_;
    return t;
  }
  bool accept(Tok k) {
    if (!at(k))
      return false;
    take();
    return true;
  }
  static std::string describe(const Token &t) {
    switch (t.kind) {
    case Tok::Ident:
      return "identifier '" + t.text + "'";
    case Tok::Int:
    case Tok::Float:
      return "number '" + t.text + t.suffix + "'";
    case Tok::String:
      return "string";
    default:
      return tokName(t.kind);
    }
  }
  bool expect(Tok k, const char *context) {
    if (accept(k))
      return true;
    // A lexical error was already reported at this token.
    if (!at(Tok::Error))
      diag_.error(cur().loc, std::string("expected ") + tokName(k) + " " +
                                 context + ", found " + describe(cur()));
    return false;
  }
  bool expectIdent(std::string &out, SourceLoc &loc, const char *context) {
    if (!at(Tok::Ident)) {
      if (!at(Tok::Error))
        diag_.error(cur().loc, std::string("expected a name ") + context +
                                   ", found " + describe(cur()));
      return false;
    }
    out = cur().text;
    loc = cur().loc;
    take();
    return true;
  }

  /// Skips to the next top-level declaration keyword at brace depth 0.
  void syncTopLevel(size_t before) {
    if (pos_ == before)
      take();
    int depth = 0;
    while (!at(Tok::Eof)) {
      if (depth <= 0 &&
          (at(Tok::KwModel) || at(Tok::KwLayer) || at(Tok::KwTrain)))
        return;
      if (at(Tok::LBrace))
        ++depth;
      if (at(Tok::RBrace))
        --depth;
      take();
    }
  }

  /// Skips to the start of the next statement or the closing brace of the
  /// current block.
  void syncStatement() {
    int depth = 0;
    bool first = true;
    while (!at(Tok::Eof)) {
      Tok k = cur().kind;
      // The block's own closing brace ends recovery without being consumed.
      if (depth == 0 && k == Tok::RBrace)
        return;
      if (!first && depth == 0 &&
          (k == Tok::KwLet || k == Tok::KwInput || k == Tok::KwParam ||
           k == Tok::KwReturn || k == Tok::KwLoss || k == Tok::KwRepeat ||
           k == Tok::RBrace || k == Tok::KwFn || k == Tok::KwModel ||
           k == Tok::KwLayer || k == Tok::KwTrain ||
           (k == Tok::Ident && peek().kind == Tok::Equal)))
        return;
      first = false;
      if (k == Tok::LBrace)
        ++depth;
      if (k == Tok::RBrace)
        --depth;
      take();
    }
  }

  // Declarations.
  bool header(std::vector<HeaderParam> &params) {
    if (!accept(Tok::LParen))
      return true; // A header without parameters.
    if (accept(Tok::RParen))
      return true;
    do {
      HeaderParam p;
      if (!expectIdent(p.name, p.loc, "for a parameter"))
        return false;
      if (accept(Tok::Equal)) {
        p.defaultValue = expr();
        if (!p.defaultValue)
          return false;
      }
      params.push_back(std::move(p));
    } while (accept(Tok::Comma));
    return expect(Tok::RParen, "to close the parameter list");
  }

  bool model(Module &m) {
    auto d = std::make_unique<ModelDecl>();
    take();
    if (!expectIdent(d->name, d->loc, "for the model"))
      return false;
    if (!header(d->params) || !expect(Tok::LBrace, "to open the model body"))
      return false;
    if (!block(d->body, /*inFn=*/false, 0))
      return false;
    m.models.push_back(std::move(d));
    return true;
  }

  bool layer(Module &m) {
    auto d = std::make_unique<LayerDecl>();
    take();
    if (!expectIdent(d->name, d->loc, "for the layer"))
      return false;
    if (!header(d->params) || !expect(Tok::LBrace, "to open the layer body"))
      return false;
    while (!at(Tok::RBrace) && !at(Tok::Eof) && !diag_.tooManyErrors()) {
      if (at(Tok::KwParam)) {
        if (auto s = paramStmt())
          d->decls.push_back(std::move(s));
        else
          syncStatement();
      } else if (at(Tok::KwFn)) {
        if (d->hasFn) {
          diag_.error(cur().loc, "layer '" + d->name + "' already has an fn");
          diag_.note(d->fnLoc, "the first fn is here");
        }
        d->hasFn = true;
        d->fnLoc = cur().loc;
        take();
        if (!expect(Tok::LParen, "after 'fn'"))
          return false;
        if (!at(Tok::RParen)) {
          do {
            std::string name;
            SourceLoc loc;
            if (!expectIdent(name, loc, "for an fn argument"))
              return false;
            d->fnArgs.push_back({name, loc});
          } while (accept(Tok::Comma));
        }
        if (!expect(Tok::RParen, "to close fn's arguments") ||
            !expect(Tok::LBrace, "to open fn's body"))
          return false;
        d->fnBody.clear();
        if (!block(d->fnBody, /*inFn=*/true, 0))
          return false;
      } else if (accept(Tok::Semi)) {
      } else {
        if (!at(Tok::Error))
          diag_.error(cur().loc, "expected 'param' or 'fn' in layer '" +
                                     d->name + "', found " + describe(cur()));
        syncStatement();
      }
    }
    if (!expect(Tok::RBrace, "to close the layer"))
      return false;
    m.layers.push_back(std::move(d));
    return true;
  }

  bool train(Module &m) {
    auto d = std::make_unique<TrainDecl>();
    d->loc = cur().loc;
    take();
    if (!expectIdent(d->model, d->modelLoc, "of the model to train") ||
        !expect(Tok::LBrace, "to open the train block"))
      return false;
    while (!at(Tok::RBrace) && !at(Tok::Eof) && !diag_.tooManyErrors()) {
      if (accept(Tok::Semi))
        continue;
      if (auto o = trainOption())
        d->options.push_back(std::move(*o));
      else
        syncOption();
    }
    if (!expect(Tok::RBrace, "to close the train block"))
      return false;
    m.trains.push_back(std::move(d));
    return true;
  }

  void syncOption() {
    take();
    while (!at(Tok::Eof) && !at(Tok::RBrace) &&
           !(at(Tok::Ident) && peek().kind != Tok::Equal &&
             peek().kind != Tok::Comma && peek().kind != Tok::LParen))
      take();
  }

  std::optional<TrainOption> trainOption() {
    TrainOption o;
    if (!expectIdent(o.name, o.loc, "of a train option"))
      return std::nullopt;
    // The arguments start on the option's own line: a bare option does not
    // swallow the next line's option name.
    if (!startsExpr() || (o.loc.file && cur().loc.line() != o.loc.line()))
      return o;
    do {
      Arg a;
      if (atArgName()) {
        a.name = cur().text;
        a.nameLoc = cur().loc;
        take();
        take();
      }
      a.value = expr();
      if (!a.value)
        return std::nullopt;
      o.args.push_back(std::move(a));
    } while (accept(Tok::Comma));
    return o;
  }

  /// `name =` in an argument list; keywords count as names there, so that
  /// `dynamic(init = 32768)` works although `init` is a keyword.
  bool atArgName() const {
    bool word = cur().kind == Tok::Ident ||
                (cur().kind >= Tok::KwModel && cur().kind <= Tok::KwFalse);
    return word && peek().kind == Tok::Equal;
  }

  bool startsExpr() const {
    switch (cur().kind) {
    case Tok::Ident:
      // `steps 100 \n mesh dp = 2`: the next option name is an identifier
      // followed by something that cannot continue an argument.
      return true;
    case Tok::Int:
    case Tok::Float:
    case Tok::String:
    case Tok::KwTrue:
    case Tok::KwFalse:
    case Tok::LParen:
    case Tok::LBracket:
    case Tok::Minus:
      return true;
    default:
      return false;
    }
  }

  // Statements.
  bool block(std::vector<StmtPtr> &out, bool inFn, unsigned depth) {
    if (depth > kMaxNesting) {
      diag_.error(cur().loc, "blocks are nested too deeply (more than " +
                                 std::to_string(kMaxNesting) + " levels)");
      return false;
    }
    while (!at(Tok::RBrace) && !at(Tok::Eof) && !diag_.tooManyErrors()) {
      if (accept(Tok::Semi))
        continue;
      StmtPtr s = statement(inFn, depth);
      if (s)
        out.push_back(std::move(s));
      else
        syncStatement();
    }
    return expect(Tok::RBrace, "to close the block");
  }

  StmtPtr paramStmt() {
    auto s = std::make_unique<Stmt>(Stmt::Param, cur().loc);
    take();
    if (!expectIdent(s->name, s->nameLoc, "for the parameter") ||
        !expect(Tok::Colon, "before the parameter's type") || !type(s->type))
      return nullptr;
    while (at(Tok::KwInit) || at(Tok::KwShard)) {
      if (accept(Tok::KwInit)) {
        s->init = postfix(0);
        if (!s->init)
          return nullptr;
      } else {
        s->hasShard = true;
        s->shardLoc = cur().loc;
        take();
        if (!expect(Tok::LParen, "after 'shard'"))
          return nullptr;
        do {
          std::string axis;
          SourceLoc loc;
          if (!expectIdent(axis, loc, "of a mesh axis (or '_')"))
            return nullptr;
          s->shard.push_back({axis, loc});
        } while (accept(Tok::Comma));
        if (!expect(Tok::RParen, "to close 'shard'"))
          return nullptr;
      }
    }
    return s;
  }

  StmtPtr statement(bool inFn, unsigned depth) {
    SourceLoc loc = cur().loc;
    switch (cur().kind) {
    case Tok::KwInput: {
      auto s = std::make_unique<Stmt>(Stmt::Input, loc);
      take();
      if (!expectIdent(s->name, s->nameLoc, "for the input") ||
          !expect(Tok::Colon, "before the input's type") || !type(s->type))
        return nullptr;
      return s;
    }
    case Tok::KwParam:
      return paramStmt();
    case Tok::KwLet: {
      auto s = std::make_unique<Stmt>(Stmt::Let, loc);
      take();
      if (!expectIdent(s->name, s->nameLoc, "after 'let'") ||
          !expect(Tok::Equal, "in 'let'"))
        return nullptr;
      s->value = expr();
      return s->value ? std::move(s) : nullptr;
    }
    case Tok::KwReturn:
    case Tok::KwLoss: {
      auto s = std::make_unique<Stmt>(
          at(Tok::KwReturn) ? Stmt::Return : Stmt::Loss, loc);
      take();
      s->value = expr();
      return s->value ? std::move(s) : nullptr;
    }
    case Tok::KwRepeat: {
      auto s = std::make_unique<Stmt>(Stmt::Repeat, loc);
      take();
      s->value = expr();
      if (!s->value)
        return nullptr;
      if (accept(Tok::KwAs) && !expectIdent(s->name, s->nameLoc, "after 'as'"))
        return nullptr;
      if (!expect(Tok::LBrace, "to open the repeat body") ||
          !block(s->body, inFn, depth + 1))
        return nullptr;
      return s;
    }
    case Tok::Ident:
      if (peek().kind == Tok::Equal) {
        auto s = std::make_unique<Stmt>(Stmt::Assign, loc);
        s->name = cur().text;
        s->nameLoc = loc;
        take();
        take();
        s->value = expr();
        return s->value ? std::move(s) : nullptr;
      }
      [[fallthrough]];
    default:
      if (!at(Tok::Error))
        diag_.error(loc, std::string("expected a statement (") +
                             (inFn ? "let, return, repeat or NAME = ..."
                                   : "input, param, let, loss, repeat or "
                                     "NAME = ...") +
                             "), found " + describe(cur()));
      return nullptr;
    }
  }

  bool type(TypeExpr &t) {
    if (!expectIdent(t.dtype, t.loc, "of an element type (f32, i32, ...)") ||
        !expect(Tok::LBracket, "to open the shape"))
      return false;
    if (accept(Tok::RBracket))
      return true;
    do {
      ExprPtr d = expr();
      if (!d)
        return false;
      t.dims.push_back(std::move(d));
    } while (accept(Tok::Comma));
    return expect(Tok::RBracket, "to close the shape");
  }

  /// Sets a node's height from its children; false (with an error) when the
  /// tree grows past kMaxExprDepth.
  bool height(Expr &e) {
    unsigned h = 0;
    for (const Expr *c : {e.lhs.get(), e.rhs.get(), e.callee.get()})
      if (c)
        h = std::max(h, c->depth);
    for (const Arg &a : e.args)
      h = std::max(h, a.value->depth);
    for (const ExprPtr &x : e.elems)
      h = std::max(h, x->depth);
    e.depth = h + 1;
    if (e.depth <= kMaxExprDepth)
      return true;
    if (!tooDeep_)
      diag_.error(e.loc, "expression is too long (more than " +
                             std::to_string(kMaxExprDepth) +
                             " levels of operators); split it with 'let'");
    tooDeep_ = true;
    return false;
  }

  // Expressions.
  ExprPtr expr(unsigned depth = 0) {
    if (depth > kMaxNesting) {
      diag_.error(cur().loc, "expression is nested too deeply (more than " +
                                 std::to_string(kMaxNesting) + " levels)");
      return nullptr;
    }
    return binaryLevel(depth, {{Tok::Plus, "+"}, {Tok::Minus, "-"}},
                       &Parser::product);
  }

  ExprPtr product(unsigned depth) {
    return binaryLevel(depth, {{Tok::Star, "*"}, {Tok::Slash, "/"}, {Tok::At, "@"}},
                       &Parser::unary);
  }

  /// One left-associative precedence level: `next (op next)*`, built
  /// iteratively (the tree's height is still bounded by `height`).
  ExprPtr binaryLevel(unsigned depth,
                      std::initializer_list<std::pair<Tok, const char *>> ops,
                      ExprPtr (Parser::*next)(unsigned)) {
    ExprPtr lhs = (this->*next)(depth);
    while (lhs) {
      const char *spelling = nullptr;
      for (const auto &[tok, text] : ops)
        if (at(tok))
          spelling = text;
      if (!spelling)
        break;
      auto e = std::make_unique<Expr>(Expr::Binary, cur().loc);
      e->text = spelling;
      take();
      e->lhs = std::move(lhs);
      e->rhs = (this->*next)(depth);
      if (!e->rhs || !height(*e))
        return nullptr;
      lhs = std::move(e);
    }
    return lhs;
  }

  ExprPtr unary(unsigned depth) {
    if (at(Tok::Minus)) {
      if (depth > kMaxNesting) {
        diag_.error(cur().loc, "expression is nested too deeply");
        return nullptr;
      }
      auto e = std::make_unique<Expr>(Expr::Neg, cur().loc);
      take();
      e->lhs = unary(depth + 1);
      return e->lhs && height(*e) ? std::move(e) : nullptr;
    }
    return postfix(depth);
  }

  ExprPtr postfix(unsigned depth) {
    ExprPtr e = primary(depth);
    while (e && at(Tok::LParen)) {
      if (++depth > kMaxNesting) {
        diag_.error(cur().loc, "expression is nested too deeply");
        return nullptr;
      }
      auto call = std::make_unique<Expr>(Expr::Call, e->loc);
      take();
      call->callee = std::move(e);
      if (!at(Tok::RParen)) {
        do {
          Arg a;
          if (atArgName()) {
            a.name = cur().text;
            a.nameLoc = cur().loc;
            take();
            take();
          }
          a.value = expr(depth + 1);
          if (!a.value)
            return nullptr;
          call->args.push_back(std::move(a));
        } while (accept(Tok::Comma));
      }
      if (!expect(Tok::RParen, "to close the call") || !height(*call))
        return nullptr;
      e = std::move(call);
    }
    return e;
  }

  ExprPtr primary(unsigned depth) {
    const Token &t = cur();
    switch (t.kind) {
    case Tok::Int:
    case Tok::Float: {
      auto e = std::make_unique<Expr>(
          t.kind == Tok::Int ? Expr::Int : Expr::Float, t.loc);
      e->text = t.text;
      e->suffix = t.suffix;
      take();
      return e;
    }
    case Tok::String: {
      auto e = std::make_unique<Expr>(Expr::String, t.loc);
      e->text = t.text;
      take();
      return e;
    }
    case Tok::KwTrue:
    case Tok::KwFalse: {
      auto e = std::make_unique<Expr>(Expr::Bool, t.loc);
      e->boolValue = t.kind == Tok::KwTrue;
      take();
      return e;
    }
    case Tok::Ident: {
      auto e = std::make_unique<Expr>(Expr::Ident, t.loc);
      e->text = t.text;
      take();
      return e;
    }
    case Tok::LParen: {
      take();
      ExprPtr e = expr(depth + 1);
      if (!e || !expect(Tok::RParen, "to close the parenthesis"))
        return nullptr;
      return e;
    }
    case Tok::LBracket: {
      auto e = std::make_unique<Expr>(Expr::List, t.loc);
      take();
      if (!at(Tok::RBracket)) {
        do {
          ExprPtr el = expr(depth + 1);
          if (!el)
            return nullptr;
          e->elems.push_back(std::move(el));
        } while (accept(Tok::Comma));
      }
      if (!expect(Tok::RBracket, "to close the list") || !height(*e))
        return nullptr;
      return e;
    }
    case Tok::Error:
      return nullptr;
    default:
      diag_.error(t.loc, "expected an expression, found " + describe(t));
      return nullptr;
    }
  }

  DiagnosticEngine &diag_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  bool tooDeep_ = false;
};

} // namespace

std::unique_ptr<Module> parseModule(const SourceFile &file,
                                    DiagnosticEngine &diag) {
  return Parser(file, diag).module();
}

std::optional<TrainOption> parseTrainOption(const SourceFile &file,
                                            DiagnosticEngine &diag) {
  return Parser(file, diag).trainOptionOnly();
}

ExprPtr parseStandaloneExpr(const SourceFile &file, DiagnosticEngine &diag) {
  return Parser(file, diag).exprOnly();
}

} // namespace loom::frontend
