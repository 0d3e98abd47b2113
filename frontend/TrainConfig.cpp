//===- TrainConfig.cpp - the train block's options and defaults -----------===//

#include "frontend/TrainConfig.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>

namespace loom::frontend {

const std::vector<std::string> &TrainConfig::optionNames() {
  static const std::vector<std::string> names = {
      "steps", "mesh",  "zero",     "pipeline",  "recompute", "precision",
      "clip",  "quantize", "optimizer", "data"};
  return names;
}

bool parseByteSize(const std::string &digits, const std::string &suffix,
                   int64_t &bytes) {
  static const std::map<std::string, int64_t> units = {
      {"", 1},
      {"B", 1},
      {"KB", 1000},
      {"MB", 1000 * 1000},
      {"GB", 1000 * 1000 * 1000},
      {"TB", int64_t(1000) * 1000 * 1000 * 1000},
      {"KiB", 1 << 10},
      {"MiB", 1 << 20},
      {"GiB", int64_t(1) << 30},
      {"TiB", int64_t(1) << 40}};
  auto it = units.find(suffix);
  if (it == units.end())
    return false;
  errno = 0;
  char *end = nullptr;
  double v = std::strtod(digits.c_str(), &end);
  if (errno || *end || !(v >= 0) || v * it->second > 9.0e18)
    return false;
  bytes = static_cast<int64_t>(v * static_cast<double>(it->second));
  return true;
}

namespace {

/// Binds option or call arguments to parameter names: positional in order,
/// keywords by name. Reports extra, unknown and duplicate arguments.
class Binder {
public:
  Binder(const std::vector<Arg> &args, std::vector<std::string> names,
         const std::string &what, SourceLoc loc, DiagnosticEngine &diag)
      : names_(std::move(names)) {
    size_t next = 0;
    for (const Arg &a : args) {
      std::string name = a.name;
      SourceLoc at = a.name.empty() ? a.value->loc : a.nameLoc;
      if (name.empty()) {
        if (next >= names_.size()) {
          diag.error(at, what + " takes at most " +
                             std::to_string(names_.size()) +
                             " argument(s)");
          ok = false;
          continue;
        }
        name = names_[next++];
      } else {
        bool known = false;
        for (const std::string &n : names_)
          known |= n == name;
        if (!known) {
          std::string msg = what + " has no argument '" + name + "'";
          std::string near = closestMatch(name, names_);
          if (!near.empty())
            msg += "; did you mean '" + near + "'?";
          else if (names_.empty())
            msg += "; it takes no arguments";
          diag.error(at, msg);
          ok = false;
          continue;
        }
      }
      if (values.count(name)) {
        diag.error(at, what + ": argument '" + name + "' given twice");
        ok = false;
        continue;
      }
      values[name] = a.value.get();
    }
    (void)loc;
  }
  const Expr *get(const std::string &n) const {
    auto it = values.find(n);
    return it == values.end() ? nullptr : it->second;
  }
  bool ok = true;
  std::map<std::string, const Expr *> values;

private:
  std::vector<std::string> names_;
};

/// Constant readers for option values. Each reports its own error.
struct Reader {
  DiagnosticEngine &diag;
  std::string what;

  bool integer(const Expr *e, int64_t &out, int64_t min = INT64_MIN) {
    bool neg = false;
    if (e->kind == Expr::Neg && e->lhs->kind == Expr::Int) {
      neg = true;
      e = e->lhs.get();
    }
    if (e->kind != Expr::Int || !e->suffix.empty()) {
      diag.error(e->loc, what + " must be an integer, found '" +
                             printExpr(*e) + "'");
      return false;
    }
    errno = 0;
    long long v = std::strtoll(e->text.c_str(), nullptr, 10);
    if (errno == ERANGE) {
      diag.error(e->loc, what + ": integer '" + e->text + "' is too large");
      return false;
    }
    out = neg ? -v : v;
    if (out < min) {
      diag.error(e->loc, what + " must be at least " + std::to_string(min) +
                             ", got " + std::to_string(out));
      return false;
    }
    return true;
  }

  bool number(const Expr *e, double &out) {
    bool neg = false;
    if (e->kind == Expr::Neg) {
      neg = true;
      e = e->lhs.get();
    }
    if ((e->kind != Expr::Int && e->kind != Expr::Float) ||
        !e->suffix.empty()) {
      diag.error(e->loc, what + " must be a number, found '" + printExpr(*e) +
                             "'");
      return false;
    }
    errno = 0;
    out = std::strtod(e->text.c_str(), nullptr);
    if (errno == ERANGE || !std::isfinite(out)) {
      diag.error(e->loc, what + ": '" + e->text + "' is out of range");
      return false;
    }
    if (neg)
      out = -out;
    return true;
  }

  bool positive(const Expr *e, double &out) {
    if (!number(e, out))
      return false;
    if (out <= 0) {
      diag.error(e->loc, what + " must be positive, got " + printExpr(*e));
      return false;
    }
    return true;
  }

  bool boolean(const Expr *e, bool &out) {
    if (e->kind != Expr::Bool) {
      diag.error(e->loc, what + " must be true or false");
      return false;
    }
    out = e->boolValue;
    return true;
  }

  /// A bare name among `choices` (an integer with a suffix spells "1f1b").
  bool choice(const Expr *e, const std::vector<std::string> &choices,
              std::string &out) {
    std::string name;
    if (e->kind == Expr::Ident)
      name = e->text;
    else if (e->kind == Expr::Int && !e->suffix.empty())
      name = e->text + e->suffix;
    else if (e->kind == Expr::Call && e->callee->kind == Expr::Ident)
      name = e->callee->text;
    for (const std::string &c : choices)
      if (c == name) {
        out = name;
        return true;
      }
    std::string list;
    for (size_t i = 0; i < choices.size(); ++i)
      list += (i ? ", " : "") + choices[i];
    std::string msg = what + " must be one of " + list + ", found '" +
                      printExpr(*e) + "'";
    std::string near = closestMatch(name, choices);
    if (!near.empty())
      msg += "; did you mean '" + near + "'?";
    diag.error(e->loc, msg);
    return false;
  }
};

/// `name` or `name(args...)`: the call's arguments, or none.
const std::vector<Arg> &callArgs(const Expr *e) {
  static const std::vector<Arg> none;
  return e->kind == Expr::Call ? e->args : none;
}


} // namespace

bool TrainConfig::apply(const TrainOption &opt, const std::string &baseDir,
                        DiagnosticEngine &diag) {
  const std::string &n = opt.name;
  auto bind = [&](std::vector<std::string> names) {
    return Binder(opt.args, std::move(names), "option '" + n + "'", opt.loc,
                  diag);
  };
  auto reader = [&](const std::string &what) {
    return Reader{diag, what.empty() ? n : n + " " + what};
  };
  auto need = [&](const Binder &b, const char *arg) -> const Expr * {
    const Expr *e = b.get(arg);
    if (!e)
      diag.error(opt.loc, "option '" + n + "' needs " + arg);
    return e;
  };

  if (n == "steps") {
    Binder b = bind({"count"});
    const Expr *e = b.ok ? need(b, "count") : nullptr;
    return e && reader("count").integer(e, steps, 1);
  }
  if (n == "zero") {
    Binder b = bind({"stage"});
    const Expr *e = b.ok ? need(b, "stage") : nullptr;
    if (!e || !reader("stage").integer(e, zero, 0))
      return false;
    if (zero > 1) {
      diag.error(e->loc, "zero stage must be 0 or 1, got " +
                             std::to_string(zero));
      return false;
    }
    return true;
  }
  if (n == "mesh") {
    Binder b = Binder(opt.args, {"dp", "tp", "pp"}, "option 'mesh'", opt.loc,
                      diag);
    if (!b.ok)
      return false;
    for (const Arg &a : opt.args)
      if (a.name.empty()) {
        diag.error(a.value->loc,
                   "mesh axes are named: write 'mesh dp = 2, tp = 2, pp = 1'");
        return false;
      }
    // Axes not named keep their value: `--mesh=tp=2` on a file with
    // `mesh dp = 2` gives dp = 2, tp = 2.
    bool ok = true;
    for (auto [name, field] :
         {std::pair{"dp", &dp}, {"tp", &tp}, {"pp", &pp}})
      if (const Expr *e = b.get(name))
        ok &= Reader{diag, std::string("mesh axis '") + name + "'"}.integer(
            e, *field, 1);
    return ok;
  }
  if (n == "pipeline") {
    Binder b = bind({"microbatches", "schedule", "virtual", "stages"});
    bool ok = b.ok;
    if (const Expr *e = b.get("microbatches"))
      ok &= reader("microbatches").integer(e, microbatches, 1);
    if (const Expr *e = b.get("schedule"))
      ok &= reader("schedule").choice(
          e, {"gpipe", "1f1b", "interleaved", "zero_bubble"}, schedule);
    if (const Expr *e = b.get("virtual"))
      ok &= reader("virtual").integer(e, virtualStages, 1);
    if (const Expr *e = b.get("stages")) {
      if (e->kind != Expr::List) {
        diag.error(e->loc, "pipeline stages must be a list of layer indices "
                           "where stages begin, e.g. [4, 8]");
        return false;
      }
      stages.clear();
      for (const ExprPtr &el : e->elems) {
        int64_t v;
        if (!reader("stage cut").integer(el.get(), v, 1))
          return false;
        if (!stages.empty() && v <= stages.back()) {
          diag.error(el->loc, "pipeline stage cuts must increase");
          return false;
        }
        stages.push_back(v);
      }
    }
    return ok;
  }
  if (n == "recompute") {
    Binder b = bind({"mode", "every", "budget"});
    if (!b.ok)
      return false;
    int given = (b.get("mode") != nullptr) + (b.get("every") != nullptr) +
                (b.get("budget") != nullptr);
    if (given != 1) {
      diag.error(opt.loc, "recompute takes one of: none, every = N, "
                          "budget = SIZE");
      return false;
    }
    if (const Expr *e = b.get("mode")) {
      std::string m;
      if (!reader("").choice(e, {"none"}, m))
        return false;
      recompute = "none";
      return true;
    }
    if (const Expr *e = b.get("every")) {
      recompute = "every";
      return reader("every").integer(e, recomputeEvery, 1);
    }
    const Expr *e = b.get("budget");
    if (e->kind != Expr::Int && e->kind != Expr::Float) {
      diag.error(e->loc, "recompute budget must be a size such as 40GiB");
      return false;
    }
    if (!parseByteSize(e->text, e->suffix, recomputeBudget) ||
        recomputeBudget <= 0) {
      diag.error(e->loc, "recompute budget '" + e->text + e->suffix +
                             "' is not a positive size (units: B, KiB, MiB, "
                             "GiB, TiB, KB, MB, GB, TB)");
      return false;
    }
    recompute = "budget";
    return true;
  }
  if (n == "precision") {
    Binder b = bind({"type", "loss_scale"});
    if (!b.ok)
      return false;
    if (const Expr *e = b.get("type"))
      if (!reader("").choice(e, {"fp32", "bf16", "fp16"}, precision))
        return false;
    if (const Expr *e = b.get("loss_scale")) {
      lossScaleExplicit = true;
      if (!reader("loss_scale").choice(e, {"none", "static", "dynamic"},
                                       lossScale))
        return false;
      Reader r{diag, "loss_scale"};
      if (lossScale == "static") {
        Binder sb(callArgs(e), {"scale"}, "static", e->loc, diag);
        if (!sb.ok)
          return false;
        if (const Expr *s = sb.get("scale"))
          return r.positive(s, lossScaleInit);
        return true;
      }
      if (lossScale == "dynamic") {
        Binder db(callArgs(e),
                  {"init", "growth", "backoff", "interval", "hysteresis",
                   "min"},
                  "dynamic", e->loc, diag);
        bool ok = db.ok;
        if (const Expr *x = db.get("init"))
          ok &= r.positive(x, lossScaleInit);
        if (const Expr *x = db.get("growth"))
          ok &= r.positive(x, lossScaleGrowth);
        if (const Expr *x = db.get("backoff"))
          ok &= r.positive(x, lossScaleBackoff);
        if (const Expr *x = db.get("interval"))
          ok &= r.integer(x, lossScaleInterval, 1);
        if (const Expr *x = db.get("hysteresis"))
          ok &= r.integer(x, lossScaleHysteresis, 1);
        if (const Expr *x = db.get("min"))
          ok &= r.positive(x, lossScaleMin);
        if (ok && lossScaleGrowth <= 1) {
          diag.error(e->loc, "loss_scale growth must be greater than 1");
          return false;
        }
        if (ok && lossScaleBackoff >= 1) {
          diag.error(e->loc, "loss_scale backoff must be below 1");
          return false;
        }
        return ok;
      }
    }
    return true;
  }
  if (n == "clip") {
    Binder b = bind({"method"});
    const Expr *e = b.ok ? need(b, "method") : nullptr;
    if (!e || !reader("").choice(e, {"none", "global_norm", "adaptive"}, clip))
      return false;
    Reader r{diag, "clip"};
    if (clip == "global_norm") {
      Binder cb(callArgs(e), {"max"}, "global_norm", e->loc, diag);
      if (!cb.ok)
        return false;
      if (const Expr *m = cb.get("max"))
        return r.positive(m, clipMax);
      if (clipMax <= 0)
        clipMax = 1.0;
      return true;
    }
    if (clip == "adaptive") {
      Binder cb(callArgs(e), {"window", "sigmas", "max"}, "adaptive", e->loc,
                diag);
      bool ok = cb.ok;
      if (const Expr *x = cb.get("window"))
        ok &= r.integer(x, clipWindow, 1);
      if (const Expr *x = cb.get("sigmas"))
        ok &= r.positive(x, clipSigmas);
      if (const Expr *x = cb.get("max"))
        ok &= r.positive(x, clipMax);
      return ok;
    }
    return true;
  }
  if (n == "quantize") {
    Binder b = bind({"method"});
    const Expr *e = b.ok ? need(b, "method") : nullptr;
    if (!e || !reader("").choice(e, {"none", "qat", "ptq"}, quantize))
      return false;
    if (quantize == "none")
      return true;
    Binder qb(callArgs(e),
              quantize == "qat"
                  ? std::vector<std::string>{"type", "weights", "activations",
                                             "start", "freeze"}
                  : std::vector<std::string>{"type", "activations",
                                             "observer", "percentile"},
              quantize, e->loc, diag);
    bool ok = qb.ok;
    Reader r{diag, quantize};
    std::string ty;
    if (const Expr *x = qb.get("type"))
      ok &= r.choice(x, {"int8"}, ty);
    if (const Expr *x = qb.get("weights"))
      ok &= r.choice(x, {"per_channel_symmetric", "per_tensor_symmetric"},
                     quantWeights);
    if (const Expr *x = qb.get("activations"))
      ok &= r.choice(x, {"per_tensor_affine", "per_tensor_symmetric"},
                     quantActivations);
    if (const Expr *x = qb.get("start"))
      ok &= r.integer(x, quantStart, 0);
    if (const Expr *x = qb.get("freeze"))
      ok &= r.integer(x, quantFreeze, 0);
    if (const Expr *x = qb.get("observer"))
      ok &= r.choice(x, {"minmax", "percentile"}, quantObserver);
    if (const Expr *x = qb.get("percentile")) {
      Reader pr{diag, "ptq percentile"};
      if (pr.number(x, quantPercentile) &&
          !(quantPercentile > 50 && quantPercentile <= 100)) {
        diag.error(x->loc, "ptq percentile must be in (50, 100], got " +
                               printExpr(*x));
        ok = false;
      }
    }
    return ok;
  }
  if (n == "optimizer") {
    Binder b = bind({"method"});
    const Expr *e = b.ok ? need(b, "method") : nullptr;
    std::string kind;
    if (!e || !reader("").choice(e, {"sgd", "adamw"}, kind))
      return false;
    if (kind != optimizer) {
      // A different optimizer starts from its own defaults.
      TrainConfig fresh;
      optimizer = kind;
      lr = kind == "sgd" ? 0.01 : fresh.lr;
      beta1 = fresh.beta1, beta2 = fresh.beta2, eps = fresh.eps;
      weightDecay = kind == "sgd" ? 0.0 : fresh.weightDecay;
      momentum = 0, nesterov = false;
    }
    Reader r{diag, kind};
    std::vector<std::string> names =
        kind == "sgd"
            ? std::vector<std::string>{"lr", "momentum", "nesterov",
                                       "weight_decay", "warmup", "decay"}
            : std::vector<std::string>{"lr", "beta1", "beta2", "eps",
                                       "weight_decay", "warmup", "decay"};
    Binder ob(callArgs(e), names, kind, e->loc, diag);
    bool ok = ob.ok;
    if (const Expr *x = ob.get("lr"))
      ok &= r.positive(x, lr);
    if (const Expr *x = ob.get("momentum"))
      ok &= r.number(x, momentum);
    if (const Expr *x = ob.get("nesterov"))
      ok &= r.boolean(x, nesterov);
    if (const Expr *x = ob.get("beta1"))
      ok &= r.number(x, beta1);
    if (const Expr *x = ob.get("beta2"))
      ok &= r.number(x, beta2);
    if (const Expr *x = ob.get("eps"))
      ok &= r.positive(x, eps);
    if (const Expr *x = ob.get("weight_decay"))
      ok &= r.number(x, weightDecay);
    if (const Expr *x = ob.get("warmup"))
      ok &= r.integer(x, warmup, 0);
    if (const Expr *x = ob.get("decay")) {
      if (!r.choice(x, {"none", "cosine"}, decay))
        return false;
      if (decay == "cosine") {
        Binder db(callArgs(x), {"total", "min"}, "cosine", x->loc, diag);
        ok &= db.ok;
        if (const Expr *t = db.get("total"))
          ok &= r.integer(t, decayTotal, 1);
        else if (db.ok) {
          diag.error(x->loc, "cosine decay needs total = N (its horizon in "
                             "steps)");
          ok = false;
        }
        if (const Expr *m = db.get("min"))
          ok &= r.number(m, decayMin);
      }
    }
    return ok;
  }
  if (n == "data") {
    Binder b = bind({"path"});
    const Expr *e = b.ok ? need(b, "path") : nullptr;
    if (!e)
      return false;
    if (e->kind != Expr::String || e->text.empty()) {
      diag.error(e->loc, "data must be a non-empty quoted path");
      return false;
    }
    data = (e->text[0] == '/' || baseDir.empty()) ? e->text
                                                   : baseDir + "/" + e->text;
    return true;
  }
  std::string msg = "unknown train option '" + n + "'";
  std::string near = closestMatch(n, optionNames());
  if (!near.empty())
    msg += "; did you mean '" + near + "'?";
  diag.error(opt.loc, msg);
  return false;
}

bool TrainConfig::validate(SourceLoc loc, DiagnosticEngine &diag) const {
  bool ok = true;
  auto err = [&](const std::string &m) {
    diag.error(loc, m);
    ok = false;
  };
  if (optimizer == "adamw" && (beta1 < 0 || beta1 >= 1 || beta2 < 0 ||
                               beta2 >= 1))
    err("adamw betas must lie in [0, 1)");
  if (momentum < 0)
    err("sgd momentum must be non-negative");
  if (nesterov && momentum <= 0)
    err("nesterov momentum needs momentum > 0 (as torch.optim.SGD)");
  if (weightDecay < 0)
    err("weight_decay must be non-negative");
  if (decay == "cosine" && decayTotal <= warmup)
    err("cosine decay total (" + std::to_string(decayTotal) +
        ") must exceed warmup (" + std::to_string(warmup) + ")");
  if (decayMin < 0 || decayMin > 1)
    err("cosine decay min is a fraction of lr in [0, 1]");
  if (schedule == "interleaved" && virtualStages < 2)
    err("the interleaved schedule needs virtual >= 2 stages per rank");
  if (schedule != "interleaved" && virtualStages != 1)
    err("virtual stages apply only to schedule = interleaved");
  if (schedule == "interleaved" && pp > 1 && microbatches % pp != 0)
    err("the interleaved schedule needs the micro-batches (" +
        std::to_string(microbatches) + ") to be a multiple of pp (" +
        std::to_string(pp) + ")");
  // Interleaved: pp × virtual chunks, chunk c on rank c % pp.
  int64_t parts = pp * (schedule == "interleaved" ? virtualStages : 1);
  if (!stages.empty() && static_cast<int64_t>(stages.size()) != parts - 1)
    err("pipeline stages lists " + std::to_string(stages.size()) +
        " cut(s), but pp = " + std::to_string(pp) +
        (parts != pp ? " with " + std::to_string(virtualStages) + " virtual stages"
                     : std::string()) +
        " needs " + std::to_string(parts - 1));
  if (quantize != "none" && precision != "fp32")
    err("quantization-aware training runs in fp32; drop precision " +
        precision + " or quantize");
  int64_t world = 0;
  if (__builtin_mul_overflow(dp, tp, &world) ||
      __builtin_mul_overflow(world, pp, &world) || world > (1 << 20))
    err("mesh dp × tp × pp is too large");
  return ok;
}

std::string TrainConfig::setOptionText(const std::string &option,
                                       const std::string &arg,
                                       const std::string &value) const {
  // The choice itself: --set=optimizer.method=sgd, --set=clip.method=...
  if (arg == "method" || arg == "type" || arg == "count" || arg == "path" ||
      arg == "stage" || arg == "mode")
    return option + " " + value;
  if (option == "optimizer")
    return "optimizer " + optimizer + "(" + arg + " = " + value + ")";
  if (option == "clip")
    return "clip " + (clip == "none" ? std::string("global_norm") : clip) +
           "(" + arg + " = " + value + ")";
  if (option == "quantize")
    return "quantize " + (quantize == "none" ? std::string("qat") : quantize) +
           "(" + arg + " = " + value + ")";
  return option + " " + arg + " = " + value;
}

} // namespace loom::frontend
