//===- Sema.cpp - name, type and shape checking; elaboration --------------===//

#include "frontend/Sema.h"
#include "frontend/Parser.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <set>

namespace loom::frontend {
namespace {

using shape::DType;
using shape::TensorType;

struct LayerRef;

/// A compile-time value: a number, a tensor (graph value id), a list, or a
/// layer instantiated with its arguments and waiting for its inputs.
struct Val {
  enum Kind { Poison, Int, Float, Bool, String, Tensor, List, Layer };
  Kind kind = Poison;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  int tensor = -1;
  std::vector<Val> list;
  std::shared_ptr<LayerRef> layer;

  static Val ofInt(int64_t v) {
    Val x;
    x.kind = Int;
    x.i = v;
    return x;
  }
  static Val ofFloat(double v) {
    Val x;
    x.kind = Float;
    x.f = v;
    return x;
  }
  static Val ofBool(bool v) {
    Val x;
    x.kind = Bool;
    x.b = v;
    return x;
  }
  static Val ofTensor(int id) {
    Val x;
    x.kind = Tensor;
    x.tensor = id;
    return x;
  }
  bool isNumber() const { return kind == Int || kind == Float; }
  double number() const { return kind == Int ? static_cast<double>(i) : f; }
};

struct LayerRef {
  const LayerDecl *decl = nullptr;
  std::vector<std::pair<std::string, Val>> args;
  std::string path;
  SourceLoc loc;
  bool applied = false;
};

const char *kindName(Val::Kind k) {
  switch (k) {
  case Val::Int:
    return "an integer";
  case Val::Float:
    return "a number";
  case Val::Bool:
    return "a boolean";
  case Val::String:
    return "a string";
  case Val::Tensor:
    return "a tensor";
  case Val::List:
    return "a list";
  case Val::Layer:
    return "a layer";
  case Val::Poison:
    return "an invalid value";
  }
  return "a value";
}

enum class Origin { Let, Arg, Input, Param, ModelParam, LayerParam };

struct Binding {
  Val val;
  SourceLoc loc;
  Origin origin;
};

struct Scope {
  Scope *parent = nullptr;
  std::map<std::string, Binding> names;

  Binding *find(const std::string &n) {
    for (Scope *s = this; s; s = s->parent) {
      auto it = s->names.find(n);
      if (it != s->names.end())
        return &it->second;
    }
    return nullptr;
  }
  void collect(std::vector<std::string> &out) const {
    for (const Scope *s = this; s; s = s->parent)
      for (const auto &kv : s->names)
        out.push_back(kv.first);
  }
};

/// Naming context of a statement list: where parameters of this body and of
/// the layer instances it creates get their dotted names.
struct BodyCtx {
  std::string prefix;
  bool repeatBody = false;
  std::map<std::string, int> sites; ///< layer application sites by layer
  std::map<std::string, int> seen;  ///< instances created so far
  int totalSites = 0;
};

std::string join(const std::string &a, const std::string &b) {
  return a.empty() ? b : a + "." + b;
}

std::string snakeCase(const std::string &s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool upper = c >= 'A' && c <= 'Z';
    if (upper && i > 0 && ((s[i - 1] >= 'a' && s[i - 1] <= 'z') ||
                           (i + 1 < s.size() && s[i + 1] >= 'a' &&
                            s[i + 1] <= 'z' && s[i - 1] >= 'A' &&
                            s[i - 1] <= 'Z')))
      out += '_';
    out += upper ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return out;
}

/// Built-in ops callable from the DSL, with their argument specs.
enum class ArgKind { Tensor, Int, Number, Bool, IntList, DType, Variadic };
struct ArgSpec {
  const char *name;
  ArgKind kind;
  std::optional<Val> def = std::nullopt;
};

/// Layer instantiation deeper than this is a (probably recursive) error.
constexpr unsigned kMaxLayerDepth = 32;
/// Repeat counts above this are a likely typo and would blow up the IR.
constexpr int64_t kMaxRepeat = 4096;
/// Elaborated ops above this stop compilation (a runaway program).
constexpr size_t kMaxNodes = 2000000;

class Elaborator {
public:
  Elaborator(const Module &m, const CompileOptions &opts,
             DiagnosticEngine &diag)
      : module_(m), opts_(opts), diag_(diag) {}

  std::optional<Graph> run();

private:
  // Declarations.
  const ModelDecl *selectModel(const TrainDecl *&train);
  bool buildConfig(const TrainDecl *train, const ModelDecl &model);
  bool bindModelParams(const ModelDecl &model, Scope &scope);

  // Statements.
  void execBody(const std::vector<StmtPtr> &body, Scope &scope, BodyCtx &ctx,
                bool inFn, std::optional<Val> *ret);
  void execInput(const Stmt &s, Scope &scope);
  void execParam(const Stmt &s, Scope &scope, BodyCtx &ctx);
  void execRepeat(const Stmt &s, Scope &scope, BodyCtx &ctx, bool inFn,
                  std::optional<Val> *ret);
  void countSites(const std::vector<StmtPtr> &body, BodyCtx &ctx);
  void countSitesExpr(const Expr &e, BodyCtx &ctx);

  // Expressions.
  std::optional<Val> eval(const Expr &e, Scope &scope);
  std::optional<Val> evalBinary(const Expr &e, Scope &scope);
  std::optional<Val> evalCall(const Expr &e, Scope &scope);
  std::optional<Val> instantiate(const LayerDecl &decl, const Expr &call,
                                 Scope &scope);
  std::optional<Val> apply(LayerRef &layer, const Expr &call, Scope &scope);
  std::optional<Val> callBuiltin(const std::string &name, const Expr &call,
                                 Scope &scope);
  std::optional<int64_t> evalDim(const Expr &e, Scope &scope);
  std::optional<TensorType> evalType(const TypeExpr &t, Scope &scope,
                                     const std::string &what);

  // Graph construction.
  int newValue(const TensorType &t) {
    graph_.values.push_back(t);
    return static_cast<int>(graph_.values.size() - 1);
  }
  int emit(const std::string &op, std::vector<int> operands,
           const TensorType &result,
           std::vector<std::pair<std::string, AttrValue>> attrs,
           SourceLoc loc) {
    Node n;
    n.op = op;
    n.operands = std::move(operands);
    int id = newValue(result);
    n.results.push_back(id);
    n.attrs = std::move(attrs);
    n.loc = loc;
    region_->nodes.push_back(std::move(n));
    if (++numNodes_ > kMaxNodes && !tooBig_) {
      diag_.error(loc, "the model elaborates to more than " +
                           std::to_string(kMaxNodes) + " ops");
      tooBig_ = true;
    }
    return id;
  }
  int constant(double v, DType t, SourceLoc loc) {
    return emit("constant", {}, TensorType{t, {}}, {{"value", v}}, loc);
  }
  const TensorType &typeOf(int id) const { return graph_.values[id]; }
  /// Reports a ShapeRules failure or returns the emitted value.
  std::optional<Val> finish(const std::string &op, shape::Result r,
                            const std::string &err, std::vector<int> operands,
                            std::vector<std::pair<std::string, AttrValue>> attrs,
                            SourceLoc loc) {
    if (!r) {
      // Shape rules may already name the op ("matmul contraction ...").
      bool named = err.compare(0, op.size(), op) == 0 ||
                   err.compare(0, 5, "split") == 0;
      diag_.error(loc, named ? err : op + ": " + err);
      return std::nullopt;
    }
    if (tooBig_)
      return std::nullopt;
    return Val::ofTensor(emit(op, std::move(operands), *r, std::move(attrs),
                              loc));
  }
  void unknownName(const std::string &name, SourceLoc loc, Scope &scope);

  const Module &module_;
  const CompileOptions &opts_;
  DiagnosticEngine &diag_;
  Graph graph_;
  Region *region_ = &graph_.body;
  std::map<std::string, const LayerDecl *> layers_;
  std::map<std::string, SourceLoc> paramNames_, inputNames_;
  BodyCtx *ctx_ = nullptr;
  unsigned layerDepth_ = 0;
  size_t numNodes_ = 0;
  bool tooBig_ = false;
  int lossCount_ = 0;
  /// Dropouts per path prefix: keys stay unique even where a repeat body and
  /// the layer it instantiates share a prefix.
  std::map<std::string, int> dropoutCount_;
  SourceLoc firstLoss_;
};

void Elaborator::unknownName(const std::string &name, SourceLoc loc,
                             Scope &scope) {
  std::vector<std::string> names;
  scope.collect(names);
  std::string msg = "unknown name '" + name + "'";
  std::string near = closestMatch(name, names);
  if (!near.empty())
    msg += "; did you mean '" + near + "'?";
  diag_.error(loc, msg);
}

//===----------------------------------------------------------------------===//
// Declarations
//===----------------------------------------------------------------------===//

const ModelDecl *Elaborator::selectModel(const TrainDecl *&train) {
  std::map<std::string, const ModelDecl *> models;
  for (const auto &m : module_.models) {
    auto [it, inserted] = models.insert({m->name, m.get()});
    if (!inserted) {
      diag_.error(m->loc, "model '" + m->name + "' is defined twice");
      diag_.note(it->second->loc, "the first definition is here");
    }
  }
  for (const auto &l : module_.layers) {
    if (models.count(l->name))
      diag_.error(l->loc, "'" + l->name + "' names both a model and a layer");
    auto [it, inserted] = layers_.insert({l->name, l.get()});
    if (!inserted) {
      diag_.error(l->loc, "layer '" + l->name + "' is defined twice");
      diag_.note(it->second->loc, "the first definition is here");
    }
  }
  train = nullptr;
  for (const auto &t : module_.trains) {
    if (train) {
      diag_.error(t->loc, "a file may hold one train block; this is the "
                          "second");
      diag_.note(train->loc, "the first is here");
      continue;
    }
    train = t.get();
  }
  std::vector<std::string> names;
  for (const auto &kv : models)
    names.push_back(kv.first);
  auto byName = [&](const std::string &n, SourceLoc loc) -> const ModelDecl * {
    auto it = models.find(n);
    if (it != models.end())
      return it->second;
    std::string msg = "no model named '" + n + "'";
    std::string near = closestMatch(n, names);
    if (!near.empty())
      msg += "; did you mean '" + near + "'?";
    diag_.error(loc, msg);
    return nullptr;
  };
  if (!opts_.model.empty())
    return byName(opts_.model, SourceLoc{});
  if (train)
    return byName(train->model, train->modelLoc);
  if (models.size() == 1)
    return models.begin()->second;
  if (models.empty()) {
    diag_.error(SourceLoc{}, "the file defines no model");
    return nullptr;
  }
  std::string list;
  for (const std::string &n : names)
    list += (list.empty() ? "" : ", ") + n;
  diag_.error(SourceLoc{}, "the file defines several models (" + list +
                               ") and no train block; choose one with "
                               "--model=NAME");
  return nullptr;
}

bool Elaborator::buildConfig(const TrainDecl *train, const ModelDecl &model) {
  TrainConfig &c = graph_.config;
  bool ok = true;
  if (train && train->model == model.name)
    for (const TrainOption &o : train->options)
      ok &= c.apply(o, opts_.baseDir, diag_);
  // Flags override the file, in order; each is parsed as DSL option text.
  for (const CompileOptions::Override &o : opts_.trainOverrides) {
    std::string text =
        o.setOption.empty() ? o.text
                            : c.setOptionText(o.setOption, o.setArg, o.text);
    auto opt = parseTrainOption(diag_.addFile("command line", text), diag_);
    ok &= opt && c.apply(*opt, "", diag_);
  }
  if (!c.lossScaleExplicit)
    c.lossScale = c.precision == "fp16" ? "dynamic" : "none";
  if (ok)
    ok = c.validate(train ? train->loc : model.loc, diag_);
  return ok;
}

bool Elaborator::bindModelParams(const ModelDecl &model, Scope &scope) {
  bool ok = true;
  std::set<std::string> used;
  for (const auto &[name, value] : opts_.defines) {
    bool known = false;
    for (const HeaderParam &p : model.params)
      known |= p.name == name;
    if (!known) {
      std::vector<std::string> names;
      for (const HeaderParam &p : model.params)
        names.push_back(p.name);
      std::string msg = "-D" + name + ": model '" + model.name +
                        "' has no parameter '" + name + "'";
      std::string near = closestMatch(name, names);
      if (!near.empty())
        msg += "; did you mean '" + near + "'?";
      diag_.error(SourceLoc{}, msg);
      ok = false;
    }
  }
  for (const HeaderParam &p : model.params) {
    if (scope.names.count(p.name)) {
      diag_.error(p.loc, "model parameter '" + p.name + "' is listed twice");
      ok = false;
      continue;
    }
    std::optional<Val> v;
    // The last -D for a name wins.
    const std::string *define = nullptr;
    for (const auto &[name, value] : opts_.defines)
      if (name == p.name)
        define = &value;
    if (define) {
      ExprPtr e =
          parseStandaloneExpr(diag_.addFile("-D" + p.name, *define), diag_);
      if (e)
        v = eval(*e, scope);
    } else if (p.defaultValue) {
      v = eval(*p.defaultValue, scope);
    } else {
      diag_.error(p.loc, "model parameter '" + p.name +
                             "' has no default; pass -D" + p.name + "=VALUE");
    }
    if (v && !v->isNumber() && v->kind != Val::Bool) {
      diag_.error(p.loc, "model parameter '" + p.name +
                             "' must be a number or boolean, got " +
                             kindName(v->kind));
      v.reset();
    }
    scope.names[p.name] = {v ? *v : Val{}, p.loc, Origin::ModelParam};
    ok &= v.has_value();
  }
  return ok;
}

std::optional<Graph> Elaborator::run() {
  const TrainDecl *train = nullptr;
  const ModelDecl *model = selectModel(train);
  if (!model)
    return std::nullopt;
  graph_.modelName = model->name;
  graph_.loc = model->loc;

  Scope top;
  bool ok = bindModelParams(*model, top);
  ok &= buildConfig(train, *model);
  if (!ok || diag_.hasErrors())
    return std::nullopt;

  BodyCtx ctx;
  countSites(model->body, ctx);
  execBody(model->body, top, ctx, /*inFn=*/false, nullptr);
  if (diag_.hasErrors())
    return std::nullopt;

  if (lossCount_ == 0 && (opts_.training || opts_.inference)) {
    // An inference artifact runs the evaluation step: its loss and accuracy
    // are what loom-run --infer reports.
    diag_.error(model->loc,
                "model '" + model->name + "' has no loss; " +
                    (opts_.training ? "training needs 'loss EXPR'"
                                    : "an inference artifact (--mode=infer) "
                                      "reports the loss: add 'loss EXPR'"));
    if (train && opts_.training)
      diag_.note(train->loc, "it is trained here");
    return std::nullopt;
  }
  // The global batch splits over dp replicas and micro-batches.
  const TrainConfig &c = graph_.config;
  int64_t parts = c.dp * c.microbatches;
  for (const Node &n : graph_.body.nodes) {
    if (n.op != "input")
      continue;
    const TensorType &t = typeOf(n.results[0]);
    if (t.dims.empty()) {
      diag_.error(n.loc, "input '" + std::get<std::string>(n.attrs[0].second) +
                             "' needs a batch dimension");
      continue;
    }
    if (t.dims[0] % parts != 0)
      diag_.error(n.loc, "the global batch " + std::to_string(t.dims[0]) +
                             " of input '" +
                             std::get<std::string>(n.attrs[0].second) +
                             "' is not divisible by dp × microbatches = " +
                             std::to_string(c.dp) + " × " +
                             std::to_string(c.microbatches));
  }
  if (diag_.hasErrors())
    return std::nullopt;
  return std::move(graph_);
}

//===----------------------------------------------------------------------===//
// Statements
//===----------------------------------------------------------------------===//

void Elaborator::countSitesExpr(const Expr &e, BodyCtx &ctx) {
  switch (e.kind) {
  case Expr::Call:
    if (e.callee->kind == Expr::Ident && layers_.count(e.callee->text)) {
      ++ctx.sites[e.callee->text];
      ++ctx.totalSites;
    }
    countSitesExpr(*e.callee, ctx);
    for (const Arg &a : e.args)
      countSitesExpr(*a.value, ctx);
    break;
  case Expr::Binary:
    countSitesExpr(*e.lhs, ctx);
    countSitesExpr(*e.rhs, ctx);
    break;
  case Expr::Neg:
    countSitesExpr(*e.lhs, ctx);
    break;
  case Expr::List:
    for (const ExprPtr &x : e.elems)
      countSitesExpr(*x, ctx);
    break;
  default:
    break;
  }
}

void Elaborator::countSites(const std::vector<StmtPtr> &body, BodyCtx &ctx) {
  for (const StmtPtr &s : body)
    if (s->value && s->kind != Stmt::Repeat)
      countSitesExpr(*s->value, ctx);
}

void Elaborator::execBody(const std::vector<StmtPtr> &body, Scope &scope,
                          BodyCtx &ctx, bool inFn, std::optional<Val> *ret) {
  BodyCtx *savedCtx = ctx_;
  ctx_ = &ctx;
  bool returned = false;
  for (const StmtPtr &sp : body) {
    if (diag_.tooManyErrors() || tooBig_)
      break;
    const Stmt &s = *sp;
    if (returned) {
      diag_.error(s.loc, "statement after 'return' is never reached");
      break;
    }
    switch (s.kind) {
    case Stmt::Input:
      if (inFn)
        diag_.error(s.loc, "inputs belong to a model, not to a layer's fn; "
                           "pass tensors as fn arguments");
      else if (ctx.repeatBody)
        diag_.error(s.loc, "an input cannot be declared inside 'repeat'");
      else
        execInput(s, scope);
      break;
    case Stmt::Param:
      if (inFn)
        diag_.error(s.loc, "declare a layer's params beside its fn, not "
                           "inside it");
      else
        execParam(s, scope, ctx);
      break;
    case Stmt::Let: {
      if (layers_.count(s.name))
        diag_.error(s.nameLoc, "'" + s.name + "' names a layer");
      auto v = eval(*s.value, scope);
      scope.names[s.name] = {v ? *v : Val{}, s.nameLoc, Origin::Let};
      break;
    }
    case Stmt::Assign: {
      Binding *b = scope.find(s.name);
      if (!b) {
        unknownName(s.name, s.nameLoc, scope);
        diag_.note(s.nameLoc, "introduce a new name with 'let " + s.name +
                                  " = ...'");
        break;
      }
      if (b->origin != Origin::Let && b->origin != Origin::Arg) {
        const char *what = b->origin == Origin::Input   ? "input"
                           : b->origin == Origin::Param ? "parameter"
                                                        : "model parameter";
        diag_.error(s.nameLoc, std::string("cannot assign to ") + what + " '" +
                                   s.name + "'; use 'let' for a new value");
        diag_.note(b->loc, "declared here");
        break;
      }
      auto v = eval(*s.value, scope);
      b->val = v ? *v : Val{};
      break;
    }
    case Stmt::Return: {
      if (!inFn) {
        diag_.error(s.loc, "'return' belongs in a layer's fn; a model ends "
                           "with 'loss'");
        break;
      }
      if (ctx.repeatBody) {
        diag_.error(s.loc, "'return' cannot appear inside 'repeat'");
        break;
      }
      auto v = eval(*s.value, scope);
      if (v && v->kind != Val::Tensor) {
        diag_.error(s.value->loc, std::string("a layer returns a tensor, "
                                              "not ") +
                                      kindName(v->kind));
        v.reset();
      }
      if (ret)
        *ret = v ? v : std::optional<Val>(Val{});
      returned = true;
      break;
    }
    case Stmt::Loss: {
      if (inFn || ctx.repeatBody) {
        diag_.error(s.loc, "'loss' belongs at the top level of a model");
        break;
      }
      auto v = eval(*s.value, scope);
      if (!v)
        break;
      if (v->kind != Val::Tensor || !typeOf(v->tensor).dims.empty() ||
          typeOf(v->tensor).dtype != DType::F32) {
        diag_.error(s.value->loc,
                    "the loss must be a scalar f32 tensor, got " +
                        (v->kind == Val::Tensor ? shape::str(typeOf(v->tensor))
                                                : std::string(kindName(v->kind))));
        break;
      }
      if (++lossCount_ > 1) {
        diag_.error(s.loc, "a model has one loss; this is the second");
        diag_.note(firstLoss_, "the first loss is here");
        break;
      }
      firstLoss_ = s.loc;
      Node n;
      n.op = "loss";
      n.operands = {v->tensor};
      n.loc = s.loc;
      region_->nodes.push_back(std::move(n));
      break;
    }
    case Stmt::Repeat:
      execRepeat(s, scope, ctx, inFn, ret);
      break;
    }
  }
  ctx_ = savedCtx;
}

std::optional<int64_t> Elaborator::evalDim(const Expr &e, Scope &scope) {
  auto v = eval(e, scope);
  if (!v)
    return std::nullopt;
  if (v->kind != Val::Int) {
    diag_.error(e.loc, std::string("a dimension must be an integer, got ") +
                           kindName(v->kind));
    return std::nullopt;
  }
  if (v->i <= 0 || v->i > shape::kMaxElements) {
    diag_.error(e.loc, "dimension " + std::to_string(v->i) +
                           " is out of range (1 to 2^40)");
    return std::nullopt;
  }
  return v->i;
}

std::optional<TensorType> Elaborator::evalType(const TypeExpr &t, Scope &scope,
                                               const std::string &what) {
  auto dt = shape::parseDType(t.dtype);
  if (!dt) {
    diag_.error(t.loc, "unknown element type '" + t.dtype +
                           "' (f32, f16, bf16, f64, i1, i8, i32, i64)");
    return std::nullopt;
  }
  TensorType out{*dt, {}};
  bool ok = true;
  double elems = 1;
  for (const ExprPtr &d : t.dims) {
    auto v = evalDim(*d, scope);
    if (!v) {
      ok = false;
      continue;
    }
    out.dims.push_back(*v);
    elems *= static_cast<double>(*v);
  }
  if (ok && elems > static_cast<double>(shape::kMaxElements)) {
    diag_.error(t.loc, what + " has " + std::to_string(elems) +
                           " elements; the limit is 2^40");
    return std::nullopt;
  }
  return ok ? std::optional<TensorType>(out) : std::nullopt;
}

void Elaborator::execInput(const Stmt &s, Scope &scope) {
  auto t = evalType(s.type, scope, "input '" + s.name + "'");
  auto [it, inserted] = inputNames_.insert({s.name, s.nameLoc});
  if (!inserted) {
    diag_.error(s.nameLoc, "input '" + s.name + "' is declared twice");
    diag_.note(it->second, "the first declaration is here");
    return;
  }
  if (!t) {
    scope.names[s.name] = {Val{}, s.nameLoc, Origin::Input};
    return;
  }
  int id = emit("input", {}, *t, {{"name", s.name}}, s.loc);
  scope.names[s.name] = {Val::ofTensor(id), s.nameLoc, Origin::Input};
}

void Elaborator::execParam(const Stmt &s, Scope &scope, BodyCtx &ctx) {
  std::string path = join(ctx.prefix, s.name);
  auto t = evalType(s.type, scope, "parameter '" + s.name + "'");
  // Bound (as invalid until it succeeds) only after its type is read, so
  // `param d : f32[d]` sees the model parameter d.
  scope.names[s.name] = {Val{}, s.nameLoc, Origin::Param};
  if (!t)
    return;
  if (!shape::isFloat(t->dtype)) {
    diag_.error(s.type.loc, "parameter '" + s.name +
                                "' must have a floating-point type, got " +
                                shape::dtypeName(t->dtype));
    return;
  }
  auto [it, inserted] = paramNames_.insert({path, s.nameLoc});
  if (!inserted) {
    diag_.error(s.nameLoc, "parameter '" + path + "' is defined twice");
    diag_.note(it->second, "the first definition is here");
    return;
  }

  // init NAME or init NAME(args).
  std::string init = t->dims.size() >= 2 ? "glorot" : "zeros";
  std::vector<double> initArgs;
  if (s.init) {
    const Expr &e = *s.init;
    const Expr *head = e.kind == Expr::Call ? e.callee.get() : &e;
    if (head->kind != Expr::Ident) {
      diag_.error(e.loc, "expected an initializer: zeros, ones, "
                         "normal(std), glorot or uniform(a, b)");
      return;
    }
    init = head->text;
    static const std::map<std::string, std::vector<std::string>> inits = {
        {"zeros", {}},
        {"ones", {}},
        {"glorot", {}},
        {"normal", {"std"}},
        {"uniform", {"a", "b"}}};
    auto spec = inits.find(init);
    if (spec == inits.end()) {
      std::vector<std::string> names;
      for (const auto &kv : inits)
        names.push_back(kv.first);
      std::string msg = "unknown initializer '" + init + "'";
      std::string near = closestMatch(init, names);
      if (!near.empty())
        msg += "; did you mean '" + near + "'?";
      diag_.error(head->loc, msg);
      return;
    }
    const std::vector<Arg> noArgs;
    const std::vector<Arg> &args = e.kind == Expr::Call ? e.args : noArgs;
    if (args.size() != spec->second.size()) {
      diag_.error(e.loc, "initializer '" + init + "' takes " +
                             std::to_string(spec->second.size()) +
                             " argument(s), got " +
                             std::to_string(args.size()));
      return;
    }
    initArgs.resize(args.size());
    for (size_t i = 0; i < args.size(); ++i) {
      if (!args[i].name.empty() && args[i].name != spec->second[i]) {
        diag_.error(args[i].nameLoc, "initializer '" + init +
                                         "' expects argument '" +
                                         spec->second[i] + "' here");
        return;
      }
      auto v = eval(*args[i].value, scope);
      if (!v)
        return;
      if (!v->isNumber()) {
        diag_.error(args[i].value->loc, "initializer arguments are numbers");
        return;
      }
      initArgs[i] = v->number();
    }
    if (init == "normal" && !(initArgs[0] > 0)) {
      diag_.error(e.loc, "normal(std) needs std > 0");
      return;
    }
    if (init == "uniform" && !(initArgs[0] < initArgs[1])) {
      diag_.error(e.loc, "uniform(a, b) needs a < b");
      return;
    }
  }
  if (init == "glorot" && t->dims.size() < 2) {
    diag_.error(s.init ? s.init->loc : s.nameLoc,
                "glorot initialisation needs rank >= 2 (fan-in and fan-out); "
                "'" + s.name + "' is " + shape::str(*t));
    return;
  }

  std::vector<std::string> shard;
  if (s.hasShard) {
    if (s.shard.size() != t->dims.size()) {
      diag_.error(s.shardLoc, "shard lists " + std::to_string(s.shard.size()) +
                                  " dimension(s) but '" + s.name + "' has rank " +
                                  std::to_string(t->dims.size()));
      return;
    }
    const TrainConfig &c = graph_.config;
    std::set<std::string> usedAxes;
    for (size_t i = 0; i < s.shard.size(); ++i) {
      const auto &[axis, loc] = s.shard[i];
      shard.push_back(axis);
      if (axis == "_")
        continue;
      if (axis == "pp") {
        diag_.error(loc, "'pp' splits the model into pipeline stages by "
                         "layer, not tensor dimensions; shard over tp or dp");
        return;
      }
      if (axis != "dp" && axis != "tp") {
        std::string msg = "unknown mesh axis '" + axis + "'";
        std::string near = closestMatch(axis, {"dp", "tp", "pp"});
        if (!near.empty())
          msg += "; did you mean '" + near + "'?";
        msg += " (the mesh has dp, tp and pp; '_' replicates)";
        diag_.error(loc, msg);
        return;
      }
      if (!usedAxes.insert(axis).second) {
        diag_.error(loc, "mesh axis '" + axis + "' shards two dimensions");
        return;
      }
      int64_t n = axis == "dp" ? c.dp : c.tp;
      if (t->dims[i] % n != 0) {
        diag_.error(loc, "dimension " + std::to_string(i) + " of '" + s.name +
                             "' (size " + std::to_string(t->dims[i]) +
                             ") is not divisible by " + axis + " = " +
                             std::to_string(n));
        return;
      }
    }
  }
  std::vector<std::pair<std::string, AttrValue>> attrs = {{"name", path},
                                                          {"init", init}};
  if (!initArgs.empty())
    attrs.push_back({"init_args", initArgs});
  if (s.hasShard)
    attrs.push_back({"shard", shard});
  int id = emit("param", {}, *t, std::move(attrs), s.loc);
  scope.names[s.name] = {Val::ofTensor(id), s.nameLoc, Origin::Param};
}

void Elaborator::execRepeat(const Stmt &s, Scope &scope, BodyCtx &ctx,
                            bool inFn, std::optional<Val> *ret) {
  auto n = eval(*s.value, scope);
  if (!n)
    return;
  if (n->kind != Val::Int || n->i < 0 || n->i > kMaxRepeat) {
    diag_.error(s.value->loc, "a repeat count must be an integer in 0.." +
                                  std::to_string(kMaxRepeat));
    return;
  }
  std::string name = s.name;
  if (name.empty()) {
    if (s.value->kind != Expr::Ident) {
      diag_.error(s.value->loc, "name this repeat with 'as NAME': its index "
                                "becomes part of parameter names "
                                "(NAME.0.w, NAME.1.w, ...)");
      return;
    }
    name = s.value->text;
  }
  for (int64_t i = 0; i < n->i && !diag_.tooManyErrors() && !tooBig_; ++i) {
    Scope iter;
    iter.parent = &scope;
    BodyCtx body;
    body.prefix = join(ctx.prefix, name + "." + std::to_string(i));
    body.repeatBody = true;
    countSites(s.body, body);
    execBody(s.body, iter, body, inFn, ret);
  }
}

//===----------------------------------------------------------------------===//
// Expressions
//===----------------------------------------------------------------------===//

std::optional<Val> Elaborator::eval(const Expr &e, Scope &scope) {
  switch (e.kind) {
  case Expr::Int: {
    if (!e.suffix.empty()) {
      diag_.error(e.loc, "unexpected suffix '" + e.suffix + "' on a number");
      return std::nullopt;
    }
    errno = 0;
    long long v = std::strtoll(e.text.c_str(), nullptr, 10);
    if (errno == ERANGE) {
      diag_.error(e.loc, "integer '" + e.text + "' is too large");
      return std::nullopt;
    }
    return Val::ofInt(v);
  }
  case Expr::Float: {
    if (!e.suffix.empty()) {
      diag_.error(e.loc, "unexpected suffix '" + e.suffix + "' on a number");
      return std::nullopt;
    }
    errno = 0;
    double v = std::strtod(e.text.c_str(), nullptr);
    if (errno == ERANGE || !std::isfinite(v)) {
      diag_.error(e.loc, "number '" + e.text + "' is out of range");
      return std::nullopt;
    }
    return Val::ofFloat(v);
  }
  case Expr::Bool:
    return Val::ofBool(e.boolValue);
  case Expr::String: {
    Val v;
    v.kind = Val::String;
    v.s = e.text;
    return v;
  }
  case Expr::Ident: {
    Binding *b = scope.find(e.text);
    if (!b) {
      if (layers_.count(e.text))
        diag_.error(e.loc, "layer '" + e.text + "' must be instantiated: " +
                               e.text + "(args)(inputs)");
      else
        unknownName(e.text, e.loc, scope);
      return std::nullopt;
    }
    if (b->val.kind == Val::Poison)
      return std::nullopt; // Already diagnosed where it was defined.
    return b->val;
  }
  case Expr::List: {
    Val v;
    v.kind = Val::List;
    for (const ExprPtr &el : e.elems) {
      auto x = eval(*el, scope);
      if (!x)
        return std::nullopt;
      v.list.push_back(*x);
    }
    return v;
  }
  case Expr::Neg: {
    auto x = eval(*e.lhs, scope);
    if (!x)
      return std::nullopt;
    if (x->kind == Val::Int) {
      if (x->i == INT64_MIN) {
        diag_.error(e.loc, "integer overflow");
        return std::nullopt;
      }
      return Val::ofInt(-x->i);
    }
    if (x->kind == Val::Float)
      return Val::ofFloat(-x->f);
    if (x->kind == Val::Tensor) {
      std::string err;
      return finish("neg", shape::unary(typeOf(x->tensor), false, err), err,
                    {x->tensor}, {}, e.loc);
    }
    diag_.error(e.loc, std::string("cannot negate ") + kindName(x->kind));
    return std::nullopt;
  }
  case Expr::Binary:
    return evalBinary(e, scope);
  case Expr::Call:
    return evalCall(e, scope);
  }
  return std::nullopt;
}

std::optional<Val> Elaborator::evalBinary(const Expr &e, Scope &scope) {
  auto a = eval(*e.lhs, scope);
  auto b = eval(*e.rhs, scope);
  if (!a || !b)
    return std::nullopt;
  const std::string &op = e.text;
  // Compile-time arithmetic on numbers (dimensions, hyper-parameters).
  if (a->isNumber() && b->isNumber()) {
    if (op == "@") {
      diag_.error(e.loc, "'@' multiplies matrices, not numbers");
      return std::nullopt;
    }
    if (a->kind == Val::Int && b->kind == Val::Int) {
      int64_t r = 0;
      bool overflow = false;
      if (op == "+")
        overflow = __builtin_add_overflow(a->i, b->i, &r);
      else if (op == "-")
        overflow = __builtin_sub_overflow(a->i, b->i, &r);
      else if (op == "*")
        overflow = __builtin_mul_overflow(a->i, b->i, &r);
      else {
        if (b->i == 0) {
          diag_.error(e.loc, "division by zero");
          return std::nullopt;
        }
        if (a->i % b->i != 0) {
          diag_.error(e.loc, std::to_string(a->i) + " / " +
                                 std::to_string(b->i) +
                                 " is not an integer; integer division must "
                                 "be exact (write a float, e.g. " +
                                 std::to_string(a->i) + ".0, for a real "
                                 "quotient)");
          return std::nullopt;
        }
        if (a->i == INT64_MIN && b->i == -1)
          overflow = true;
        else
          r = a->i / b->i;
      }
      if (overflow) {
        diag_.error(e.loc, "integer overflow");
        return std::nullopt;
      }
      return Val::ofInt(r);
    }
    double x = a->number(), y = b->number(), r;
    if (op == "+")
      r = x + y;
    else if (op == "-")
      r = x - y;
    else if (op == "*")
      r = x * y;
    else {
      if (y == 0) {
        diag_.error(e.loc, "division by zero");
        return std::nullopt;
      }
      r = x / y;
    }
    if (!std::isfinite(r)) {
      diag_.error(e.loc, "arithmetic overflow");
      return std::nullopt;
    }
    return Val::ofFloat(r);
  }
  // Tensor arithmetic; a number operand becomes a scalar constant of the
  // tensor's element type.
  auto asTensor = [&](const Val &v, const Val &other, SourceLoc loc)
      -> std::optional<int> {
    if (v.kind == Val::Tensor)
      return v.tensor;
    if (v.isNumber() && other.kind == Val::Tensor) {
      DType t = typeOf(other.tensor).dtype;
      if (shape::isInteger(t) && v.kind == Val::Float) {
        diag_.error(loc, "cannot combine an " +
                             std::string(shape::dtypeName(t)) +
                             " tensor with the non-integer " +
                             std::to_string(v.f));
        return std::nullopt;
      }
      return constant(v.number(), t, loc);
    }
    diag_.error(loc, "operator '" + op + "' needs tensors or numbers, got " +
                         kindName(v.kind));
    return std::nullopt;
  };
  auto x = asTensor(*a, *b, e.lhs->loc);
  if (!x)
    return std::nullopt;
  auto y = asTensor(*b, *a, e.rhs->loc);
  if (!y)
    return std::nullopt;
  std::string err;
  if (op == "@")
    return finish("matmul", shape::matmul(typeOf(*x), typeOf(*y), err), err,
                  {*x, *y}, {}, e.loc);
  static const std::map<std::string, std::string> names = {
      {"+", "add"}, {"-", "sub"}, {"*", "mul"}, {"/", "div"}};
  return finish(names.at(op),
                shape::broadcastBinary(typeOf(*x), typeOf(*y), err), err,
                {*x, *y}, {}, e.loc);
}

std::optional<Val> Elaborator::evalCall(const Expr &e, Scope &scope) {
  const Expr &callee = *e.callee;
  if (callee.kind == Expr::Ident) {
    if (auto it = layers_.find(callee.text); it != layers_.end())
      return instantiate(*it->second, e, scope);
    if (!scope.find(callee.text))
      return callBuiltin(callee.text, e, scope);
  }
  auto f = eval(callee, scope);
  if (!f)
    return std::nullopt;
  if (f->kind != Val::Layer) {
    diag_.error(e.loc, std::string("cannot call ") + kindName(f->kind));
    return std::nullopt;
  }
  return apply(*f->layer, e, scope);
}

std::optional<Val> Elaborator::instantiate(const LayerDecl &decl,
                                           const Expr &call, Scope &scope) {
  auto ref = std::make_shared<LayerRef>();
  ref->decl = &decl;
  ref->loc = call.loc;
  if (!ctx_) {
    diag_.error(call.loc, "layer '" + decl.name +
                              "' cannot be instantiated here; layers are "
                              "applied in a model or layer body");
    return std::nullopt;
  }
  // Bind the layer's header arguments (compile-time numbers).
  std::map<std::string, Val> bound;
  size_t next = 0;
  bool ok = true;
  for (const Arg &a : call.args) {
    std::string name = a.name;
    if (name.empty()) {
      if (next >= decl.params.size()) {
        diag_.error(a.value->loc, "layer '" + decl.name + "' takes " +
                                      std::to_string(decl.params.size()) +
                                      " argument(s)");
        return std::nullopt;
      }
      name = decl.params[next++].name;
    } else {
      bool known = false;
      for (const HeaderParam &p : decl.params)
        known |= p.name == name;
      if (!known) {
        diag_.error(a.nameLoc,
                    "layer '" + decl.name + "' has no parameter '" + name + "'");
        return std::nullopt;
      }
    }
    if (bound.count(name)) {
      diag_.error(a.value->loc, "argument '" + name + "' given twice");
      return std::nullopt;
    }
    auto v = eval(*a.value, scope);
    if (!v) {
      ok = false;
      continue;
    }
    if (!v->isNumber() && v->kind != Val::Bool) {
      diag_.error(a.value->loc, "layer arguments are compile-time numbers; "
                                "tensors go in the second call: " +
                                    decl.name + "(args)(inputs)");
      return std::nullopt;
    }
    bound[name] = *v;
  }
  if (!ok)
    return std::nullopt;
  Scope defaults;
  for (const HeaderParam &p : decl.params) {
    auto it = bound.find(p.name);
    Val v;
    if (it != bound.end()) {
      v = it->second;
    } else if (p.defaultValue) {
      auto d = eval(*p.defaultValue, defaults);
      if (!d)
        return std::nullopt;
      v = *d;
    } else {
      diag_.error(call.loc, "layer '" + decl.name + "' needs argument '" +
                                p.name + "'");
      diag_.note(p.loc, "declared here");
      return std::nullopt;
    }
    defaults.names[p.name] = {v, p.loc, Origin::LayerParam};
    ref->args.push_back({p.name, v});
  }
  // Instance name: a repeat body with one layer site names it by the repeat
  // index alone (layers.3.wq); otherwise the layer's snake_case name, with an
  // ordinal when the body instantiates the same layer more than once.
  BodyCtx &ctx = *ctx_;
  int ordinal = ctx.seen[decl.name]++;
  if (ctx.repeatBody && ctx.totalSites == 1) {
    ref->path = ctx.prefix;
  } else {
    std::string base = snakeCase(decl.name);
    if (ctx.sites[decl.name] > 1)
      base += "_" + std::to_string(ordinal);
    ref->path = join(ctx.prefix, base);
  }
  Val v;
  v.kind = Val::Layer;
  v.layer = ref;
  return v;
}

std::optional<Val> Elaborator::apply(LayerRef &layer, const Expr &call,
                                     Scope &scope) {
  const LayerDecl &decl = *layer.decl;
  if (!decl.hasFn) {
    diag_.error(call.loc, "layer '" + decl.name + "' has no fn to apply");
    diag_.note(decl.loc, "defined here");
    return std::nullopt;
  }
  if (layer.applied) {
    diag_.error(call.loc, "this instance of layer '" + decl.name +
                              "' was already applied; sharing weights "
                              "between applications is not supported");
    return std::nullopt;
  }
  layer.applied = true;
  if (call.args.size() != decl.fnArgs.size()) {
    diag_.error(call.loc, "layer '" + decl.name + "' takes " +
                              std::to_string(decl.fnArgs.size()) +
                              " input(s), got " +
                              std::to_string(call.args.size()));
    diag_.note(decl.fnLoc, "its fn is here");
    return std::nullopt;
  }
  std::vector<int> inputs;
  for (const Arg &a : call.args) {
    if (!a.name.empty()) {
      diag_.error(a.nameLoc, "layer inputs are positional");
      return std::nullopt;
    }
    auto v = eval(*a.value, scope);
    if (!v)
      return std::nullopt;
    if (v->kind != Val::Tensor) {
      diag_.error(a.value->loc, std::string("a layer input must be a tensor, "
                                            "got ") +
                                    kindName(v->kind));
      return std::nullopt;
    }
    inputs.push_back(v->tensor);
  }
  if (layerDepth_ >= kMaxLayerDepth) {
    diag_.error(call.loc, "layers nest more than " +
                              std::to_string(kMaxLayerDepth) +
                              " deep; is layer '" + decl.name +
                              "' recursive?");
    return std::nullopt;
  }

  // Elaborate the body into its own region: a layer sees its header
  // arguments, its params and its fn's inputs, nothing of the caller.
  auto region = std::make_unique<Region>();
  Region *saved = region_;
  region_ = region.get();
  ++layerDepth_;
  Scope header;
  for (const auto &[n, v] : layer.args)
    header.names[n] = {v, decl.loc, Origin::LayerParam};
  Scope body;
  body.parent = &header;
  BodyCtx ctx;
  ctx.prefix = layer.path;
  countSites(decl.fnBody, ctx);
  for (const StmtPtr &p : decl.decls)
    execParam(*p, body, ctx);
  for (size_t i = 0; i < inputs.size(); ++i) {
    int arg = newValue(typeOf(inputs[i]));
    region->args.push_back(arg);
    body.names[decl.fnArgs[i].first] = {Val::ofTensor(arg),
                                        decl.fnArgs[i].second, Origin::Arg};
  }
  std::optional<Val> ret;
  execBody(decl.fnBody, body, ctx, /*inFn=*/true, &ret);
  --layerDepth_;
  region_ = saved;
  if (!ret) {
    if (!diag_.hasErrors())
      diag_.error(decl.fnLoc, "fn of layer '" + decl.name +
                                  "' ends without 'return'");
    return std::nullopt;
  }
  if (ret->kind != Val::Tensor)
    return std::nullopt;
  region->yields.push_back(ret->tensor);
  Node n;
  n.op = "layer";
  n.operands = inputs;
  n.results.push_back(newValue(typeOf(ret->tensor)));
  n.attrs = {{"name", layer.path}, {"layer", decl.name}};
  n.loc = call.loc;
  n.region = std::move(region);
  int result = n.results[0];
  region_->nodes.push_back(std::move(n));
  ++numNodes_;
  return Val::ofTensor(result);
}

//===----------------------------------------------------------------------===//
// Built-in ops
//===----------------------------------------------------------------------===//

std::optional<Val> Elaborator::callBuiltin(const std::string &name,
                                           const Expr &call, Scope &scope) {
  using K = ArgKind;
  static const std::map<std::string, std::vector<ArgSpec>> specs = {
      {"exp", {{"x", K::Tensor}}},
      {"log", {{"x", K::Tensor}}},
      {"sqrt", {{"x", K::Tensor}}},
      {"rsqrt", {{"x", K::Tensor}}},
      {"tanh", {{"x", K::Tensor}}},
      {"relu", {{"x", K::Tensor}}},
      {"gelu", {{"x", K::Tensor}}},
      {"sigmoid", {{"x", K::Tensor}}},
      {"neg", {{"x", K::Tensor}}},
      {"softmax", {{"x", K::Tensor}}},
      {"log_softmax", {{"x", K::Tensor}}},
      {"layer_norm", {{"x", K::Tensor}, {"gain", K::Tensor}, {"bias", K::Tensor}}},
      {"rms_norm", {{"x", K::Tensor}, {"gain", K::Tensor}}},
      {"embedding", {{"ids", K::Tensor}, {"table", K::Tensor}}},
      {"reshape", {{"x", K::Tensor}, {"shape", K::IntList}}},
      {"transpose", {{"x", K::Tensor}, {"perm", K::IntList, Val{}}}},
      {"split_heads", {{"x", K::Tensor}, {"heads", K::Int}}},
      {"merge_heads", {{"x", K::Tensor}}},
      {"broadcast_to", {{"x", K::Tensor}, {"shape", K::IntList}}},
      {"sum", {{"x", K::Tensor}, {"dims", K::IntList, Val{}}, {"keepdim", K::Bool, Val::ofBool(false)}}},
      {"mean", {{"x", K::Tensor}, {"dims", K::IntList, Val{}}, {"keepdim", K::Bool, Val::ofBool(false)}}},
      {"max", {{"x", K::Tensor}, {"dims", K::IntList, Val{}}, {"keepdim", K::Bool, Val::ofBool(false)}}},
      {"concat", {{"xs", K::Variadic}, {"dim", K::Int, Val::ofInt(-1)}}},
      {"slice", {{"x", K::Tensor}, {"dim", K::Int}, {"start", K::Int}, {"end", K::Int}}},
      {"cast", {{"x", K::Tensor}, {"to", K::DType}}},
      {"dropout", {{"x", K::Tensor}, {"p", K::Number}}},
      {"fake_quant", {{"x", K::Tensor}, {"scale", K::Tensor}, {"zero_point", K::Tensor}, {"qmin", K::Int}, {"qmax", K::Int}, {"axis", K::Int, Val::ofInt(-1)}}},
      {"attention", {{"q", K::Tensor}, {"k", K::Tensor}, {"v", K::Tensor}, {"causal", K::Bool, Val::ofBool(false)}}},
      {"gated_attention", {{"q", K::Tensor}, {"k", K::Tensor}, {"v", K::Tensor}, {"wg", K::Tensor}, {"bg", K::Tensor}, {"causal", K::Bool, Val::ofBool(false)}, {"threshold", K::Number, Val{}}}},
      {"cross_entropy", {{"logits", K::Tensor}, {"target", K::Tensor}, {"ignore_index", K::Int, Val::ofInt(-100)}}},
      {"mse", {{"pred", K::Tensor}, {"target", K::Tensor}}},
      {"conv2d", {{"x", K::Tensor}, {"w", K::Tensor}, {"stride", K::Int, Val::ofInt(1)}, {"padding", K::Int, Val::ofInt(0)}}},
      {"batch_norm", {{"x", K::Tensor}, {"gamma", K::Tensor}, {"beta", K::Tensor}, {"momentum", K::Number, Val::ofFloat(0.1)}, {"eps", K::Number, Val::ofFloat(1e-5)}}},
  };
  auto it = specs.find(name);
  if (it == specs.end()) {
    std::vector<std::string> names;
    scope.collect(names);
    for (const auto &kv : specs)
      names.push_back(kv.first);
    for (const auto &kv : layers_)
      names.push_back(kv.first);
    std::string msg = "unknown function '" + name + "'";
    std::string near = closestMatch(name, names);
    if (!near.empty())
      msg += "; did you mean '" + near + "'?";
    diag_.error(call.callee->loc, msg);
    return std::nullopt;
  }
  const std::vector<ArgSpec> &spec = it->second;

  // Bind arguments: positional in order, then keywords; a Variadic spec
  // takes every positional argument.
  std::vector<std::optional<Val>> args(spec.size());
  std::vector<SourceLoc> locs(spec.size(), call.loc);
  std::vector<Val> variadic;
  bool isVariadic = spec[0].kind == K::Variadic;
  size_t next = isVariadic ? 1 : 0;
  std::vector<const Arg *> keywords;
  for (const Arg &a : call.args) {
    if (!a.name.empty()) {
      keywords.push_back(&a);
      continue;
    }
    if (!keywords.empty()) {
      diag_.error(a.value->loc, "positional argument after a keyword argument");
      return std::nullopt;
    }
    if (!isVariadic && next < spec.size() && spec[next].kind == K::DType) {
      // `cast(x, bf16)`: an element type is a name, not a value.
      locs[next] = a.value->loc;
      Val s;
      s.kind = Val::String;
      s.s = a.value->kind == Expr::Ident ? a.value->text : "";
      args[next++] = s;
      continue;
    }
    auto v = eval(*a.value, scope);
    if (isVariadic) {
      if (!v)
        return std::nullopt;
      variadic.push_back(*v);
      continue;
    }
    if (next >= spec.size()) {
      diag_.error(a.value->loc, name + " takes at most " +
                                    std::to_string(spec.size()) +
                                    " argument(s)");
      return std::nullopt;
    }
    if (!v)
      return std::nullopt;
    locs[next] = a.value->loc;
    args[next++] = *v;
  }
  for (const Arg *a : keywords) {
    size_t k = 0;
    while (k < spec.size() && a->name != spec[k].name)
      ++k;
    if (k == spec.size() || spec[k].kind == K::Variadic) {
      std::vector<std::string> names;
      for (const ArgSpec &s : spec)
        names.push_back(s.name);
      std::string msg = name + " has no argument '" + a->name + "'";
      std::string near = closestMatch(a->name, names);
      if (!near.empty())
        msg += "; did you mean '" + near + "'?";
      diag_.error(a->nameLoc, msg);
      return std::nullopt;
    }
    if (args[k]) {
      diag_.error(a->nameLoc, name + ": argument '" + a->name +
                                  "' given twice");
      return std::nullopt;
    }
    locs[k] = a->value->loc;
    if (spec[k].kind == K::DType) {
      Val s;
      s.kind = Val::String;
      s.s = a->value->kind == Expr::Ident ? a->value->text : "";
      args[k] = s;
      continue;
    }
    auto v = eval(*a->value, scope);
    if (!v)
      return std::nullopt;
    args[k] = *v;
  }
  // fake_quant's per-tensor scale and zero point may be written as numbers.
  if (name == "fake_quant")
    for (size_t k : {size_t(1), size_t(2)})
      if (args[k] && args[k]->isNumber())
        args[k] = Val::ofTensor(constant(args[k]->number(), DType::F32, locs[k]));
  // Defaults, missing arguments and kinds.
  for (size_t k = 0; k < spec.size(); ++k) {
    if (spec[k].kind == K::Variadic)
      continue;
    if (!args[k]) {
      if (!spec[k].def) {
        diag_.error(call.loc, name + " is missing argument '" +
                                  std::string(spec[k].name) + "'");
        return std::nullopt;
      }
      args[k] = *spec[k].def; // Poison marks "absent" for optional args.
      continue;
    }
    Val &v = *args[k];
    bool ok = true;
    const char *want = "";
    switch (spec[k].kind) {
    case K::Tensor:
      ok = v.kind == Val::Tensor, want = "a tensor";
      break;
    case K::Int:
      ok = v.kind == Val::Int, want = "an integer";
      break;
    case K::Number:
      ok = v.isNumber(), want = "a number";
      break;
    case K::Bool:
      ok = v.kind == Val::Bool, want = "true or false";
      break;
    case K::IntList:
      if (v.kind == Val::Int) {
        Val l;
        l.kind = Val::List;
        l.list.push_back(v);
        v = l;
      }
      ok = v.kind == Val::List;
      for (const Val &x : v.list)
        ok &= x.kind == Val::Int;
      want = "a list of integers";
      break;
    case K::DType:
      ok = shape::parseDType(v.s).has_value(),
      want = "an element type (f32, bf16, f16, f64, i32, ...)";
      break;
    case K::Variadic:
      break;
    }
    if (!ok) {
      diag_.error(locs[k], name + ": argument '" + spec[k].name +
                               "' must be " + want +
                               (spec[k].kind == K::DType
                                    ? std::string("")
                                    : std::string(", got ") + kindName(v.kind)));
      return std::nullopt;
    }
  }
  for (const Val &v : variadic)
    if (v.kind != Val::Tensor) {
      diag_.error(call.loc, name + " takes tensors, got " + kindName(v.kind));
      return std::nullopt;
    }

  auto tensor = [&](size_t k) { return args[k]->tensor; };
  auto type = [&](size_t k) { return typeOf(args[k]->tensor); };
  auto ints = [&](size_t k) {
    std::vector<int64_t> out;
    for (const Val &x : args[k]->list)
      out.push_back(x.i);
    return out;
  };
  auto present = [&](size_t k) { return args[k]->kind != Val::Poison; };
  std::string err;
  SourceLoc loc = call.loc;

  static const std::set<std::string> floatUnary = {
      "exp", "log", "sqrt", "rsqrt", "tanh", "relu", "gelu", "sigmoid"};
  if (floatUnary.count(name) || name == "neg")
    return finish(name, shape::unary(type(0), name != "neg", err), err,
                  {tensor(0)}, {}, loc);
  if (name == "softmax" || name == "log_softmax")
    return finish(name, shape::softmax(type(0), err), err, {tensor(0)}, {},
                  loc);
  if (name == "layer_norm") {
    TensorType b = type(2);
    return finish(name, shape::norm(type(0), type(1), &b, err), err,
                  {tensor(0), tensor(1), tensor(2)}, {}, loc);
  }
  if (name == "rms_norm")
    return finish(name, shape::norm(type(0), type(1), nullptr, err), err,
                  {tensor(0), tensor(1)}, {}, loc);
  if (name == "embedding")
    return finish(name, shape::embedding(type(0), type(1), err), err,
                  {tensor(0), tensor(1)}, {}, loc);
  if (name == "reshape") {
    std::vector<int64_t> dims = ints(1);
    // One -1 is inferred from the element count, as in torch.reshape.
    int inferred = -1;
    int64_t known = 1;
    for (size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == -1 && inferred < 0) {
        inferred = static_cast<int>(i);
      } else if (dims[i] <= 0) {
        diag_.error(locs[1], "reshape: dimension " + std::to_string(dims[i]) +
                                 " is invalid (positive, or one -1)");
        return std::nullopt;
      } else if (__builtin_mul_overflow(known, dims[i], &known) ||
                 known > shape::kMaxElements) {
        diag_.error(locs[1], "reshape: target shape is too large");
        return std::nullopt;
      }
    }
    if (inferred >= 0) {
      int64_t total = type(0).numElements();
      if (total % known != 0) {
        diag_.error(locs[1], "reshape: cannot infer -1: " +
                                 std::to_string(total) +
                                 " elements do not divide by " +
                                 std::to_string(known));
        return std::nullopt;
      }
      dims[inferred] = total / known;
    }
    auto r = shape::reshape(type(0), dims, err);
    return finish(name, r, err, {tensor(0)}, {}, loc);
  }
  if (name == "transpose") {
    std::vector<int64_t> perm;
    if (present(1)) {
      perm = ints(1);
    } else {
      size_t r = type(0).dims.size();
      if (r < 2) {
        diag_.error(loc, "transpose without a permutation swaps the last two "
                         "dimensions; the operand has rank " +
                             std::to_string(r));
        return std::nullopt;
      }
      for (size_t i = 0; i < r; ++i)
        perm.push_back(static_cast<int64_t>(i));
      std::swap(perm[r - 1], perm[r - 2]);
    }
    return finish(name, shape::transpose(type(0), perm, err), err,
                  {tensor(0)}, {{"permutation", perm}}, loc);
  }
  if (name == "split_heads")
    return finish(name, shape::splitHeads(type(0), args[1]->i, err), err,
                  {tensor(0)}, {{"heads", args[1]->i}}, loc);
  if (name == "merge_heads")
    return finish(name, shape::mergeHeads(type(0), err), err, {tensor(0)}, {},
                  loc);
  if (name == "broadcast_to")
    return finish(name, shape::broadcastTo(type(0), ints(1), err), err,
                  {tensor(0)}, {}, loc);
  if (name == "sum" || name == "mean" || name == "max") {
    std::vector<int64_t> dims;
    if (present(1))
      dims = ints(1);
    else
      for (size_t i = 0; i < type(0).dims.size(); ++i)
        dims.push_back(static_cast<int64_t>(i));
    bool keep = args[2]->b;
    auto r = shape::reduce(type(0), dims, keep, err);
    // Store normalised dimensions so the IR never sees negative indices.
    if (r)
      for (int64_t &d : dims)
        d = *shape::normalizeDim(d, type(0).dims.size());
    return finish("reduce_" + name, r, err, {tensor(0)},
                  {{"dims", dims}, {"keepdim", keep}}, loc);
  }
  if (name == "concat") {
    std::vector<TensorType> ts;
    std::vector<int> ids;
    for (const Val &v : variadic) {
      ts.push_back(typeOf(v.tensor));
      ids.push_back(v.tensor);
    }
    int64_t dim = args[1]->i;
    auto r = shape::concat(ts, dim, err);
    if (r)
      dim = *shape::normalizeDim(dim, ts[0].dims.size());
    return finish(name, r, err, ids, {{"dim", dim}}, loc);
  }
  if (name == "slice") {
    int64_t dim = args[1]->i;
    auto r = shape::slice(type(0), dim, args[2]->i, args[3]->i, err);
    if (r)
      dim = *shape::normalizeDim(dim, type(0).dims.size());
    return finish(name, r, err, {tensor(0)},
                  {{"dim", dim}, {"start", args[2]->i}, {"end", args[3]->i}},
                  loc);
  }
  if (name == "cast")
    return finish(name, shape::cast(type(0), *shape::parseDType(args[1]->s), err),
                  err, {tensor(0)}, {}, loc);
  if (name == "fake_quant") {
    // axis: the channel dimension of a per-channel scale (negative counts
    // from the end); unused per tensor.
    int64_t axis = 0;
    if (!type(1).dims.empty()) {
      auto normalized = shape::normalizeDim(args[5]->i, type(0).dims.size());
      if (!normalized) {
        diag_.error(locs[5], "fake_quant axis " + std::to_string(args[5]->i) +
                                 " is outside the input " +
                                 shape::str(type(0)));
        return std::nullopt;
      }
      axis = *normalized;
    }
    return finish(name,
                  shape::fakeQuant(type(0), type(1), type(2), axis, args[3]->i,
                                   args[4]->i, err),
                  err, {tensor(0), tensor(1), tensor(2)},
                  {{"qmin", args[3]->i}, {"qmax", args[4]->i}, {"axis", axis}},
                  loc);
  }
  if (name == "dropout") {
    // The key that, with seed, step and element index, decides the mask: the
    // op's path, unique per layer instance and per use within it.
    int k = dropoutCount_[ctx_->prefix]++;
    std::string key = join(ctx_->prefix, "dropout_" + std::to_string(k));
    return finish(name, shape::dropout(type(0), args[1]->number(), err), err,
                  {tensor(0)}, {{"p", args[1]->number()}, {"key", key}}, loc);
  }
  if (name == "attention")
    return finish(name, shape::attention(type(0), type(1), type(2), err), err,
                  {tensor(0), tensor(1), tensor(2)},
                  {{"causal", args[3]->b}}, loc);
  if (name == "gated_attention") {
    std::vector<std::pair<std::string, AttrValue>> attrs = {
        {"causal", args[5]->b}};
    if (present(6)) {
      double th = args[6]->number();
      if (!(th >= 0 && th < 1)) {
        diag_.error(locs[6], "gated_attention threshold must be in [0, 1)");
        return std::nullopt;
      }
      attrs.push_back({"gate_threshold", th});
    }
    return finish(name,
                  shape::gatedAttention(type(0), type(1), type(2), type(3),
                                        type(4), err),
                  err, {tensor(0), tensor(1), tensor(2), tensor(3), tensor(4)},
                  attrs, loc);
  }
  if (name == "cross_entropy")
    return finish(name, shape::crossEntropy(type(0), type(1), err), err,
                  {tensor(0), tensor(1)}, {{"ignore_index", args[2]->i}}, loc);
  if (name == "mse")
    return finish(name, shape::mse(type(0), type(1), err), err,
                  {tensor(0), tensor(1)}, {}, loc);
  if (name == "conv2d")
    return finish(name,
                  shape::conv2d(type(0), type(1), args[2]->i, args[3]->i, err),
                  err, {tensor(0), tensor(1)},
                  {{"stride", args[2]->i}, {"padding", args[3]->i}}, loc);
  if (name == "batch_norm")
    return finish(name,
                  shape::batchNorm(type(0), type(1), type(2),
                                   args[3]->number(), args[4]->number(), err),
                  err, {tensor(0), tensor(1), tensor(2)},
                  {{"momentum", args[3]->number()}, {"eps", args[4]->number()}},
                  loc);
  diag_.error(loc, "internal: built-in '" + name + "' has no lowering");
  return std::nullopt;
}

} // namespace

std::optional<Graph> analyze(const Module &module, const CompileOptions &opts,
                             DiagnosticEngine &diag) {
  return Elaborator(module, opts, diag).run();
}

std::optional<Graph> compileSource(const SourceFile &file,
                                   const CompileOptions &opts,
                                   DiagnosticEngine &diag) {
  auto module = parseModule(file, diag);
  if (diag.hasErrors())
    return std::nullopt;
  return analyze(*module, opts, diag);
}

} // namespace loom::frontend
