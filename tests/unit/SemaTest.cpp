//===- SemaTest.cpp - names, shapes, elaboration and train options --------===//
//
// Each test compiles a small model with compileSource and checks either the
// elaborated Graph (ops, attributes, value types) or the exact position and
// text of the diagnostics.
//
//===----------------------------------------------------------------------===//

#include "frontend/Sema.h"
#include "frontend/Parser.h"
#include "tests/unit/TestUtil.h"

#include "gtest/gtest.h"

#include <cstdlib>
#include <functional>

using namespace loom::frontend;
using loom::frontend::test::errorsOf;
using loom::frontend::test::firstError;
using loom::frontend::test::notesOf;

namespace {

using Strs = std::vector<std::string>;

/// A compiled text. The file outlives the graph, whose locations point
/// into it.
struct Compiled {
  std::unique_ptr<SourceFile> file;
  DiagnosticEngine diag;
  std::optional<Graph> graph;

  std::vector<std::string> errors() const { return errorsOf(diag); }
  std::string error() const { return firstError(diag); }
};

std::unique_ptr<Compiled> compile(const std::string &text,
                                  CompileOptions opts = {}) {
  auto c = std::make_unique<Compiled>();
  c->file = std::make_unique<SourceFile>("test.loom", text);
  c->graph = compileSource(*c->file, opts, c->diag);
  EXPECT_EQ(c->graph.has_value(), !c->diag.hasErrors()) << c->diag.render();
  return c;
}

CompileOptions inference() {
  CompileOptions o;
  o.training = false;
  return o;
}

std::string typeOf(const Graph &g, int id) {
  return loom::shape::str(g.values.at(id));
}

std::string resultType(const Graph &g, const Node &n) {
  return typeOf(g, n.results.at(0));
}

std::vector<std::string> opsOf(const Region &r) {
  std::vector<std::string> out;
  for (const Node &n : r.nodes)
    out.push_back(n.op);
  return out;
}

const AttrValue *findAttr(const Node &n, const std::string &name) {
  for (const auto &[k, v] : n.attrs)
    if (k == name)
      return &v;
  return nullptr;
}

template <typename T> T attr(const Node &n, const std::string &name) {
  const AttrValue *v = findAttr(n, name);
  if (!v) {
    ADD_FAILURE() << "op '" << n.op << "' has no attribute '" << name << "'";
    return T{};
  }
  if (!std::holds_alternative<T>(*v)) {
    ADD_FAILURE() << "attribute '" << name << "' of '" << n.op
                  << "' has another type";
    return T{};
  }
  return std::get<T>(*v);
}

/// Visits every node, entering layer regions.
void walk(const Region &r, const std::function<void(const Node &)> &f) {
  for (const Node &n : r.nodes) {
    f(n);
    if (n.region)
      walk(*n.region, f);
  }
}

/// The dotted names of all parameters, in elaboration order.
std::vector<std::string> paramNames(const Graph &g) {
  std::vector<std::string> out;
  walk(g.body, [&](const Node &n) {
    if (n.op == "param")
      out.push_back(attr<std::string>(n, "name"));
  });
  return out;
}

/// The `name` attribute of every loom.layer op, in elaboration order.
std::vector<std::string> layerNames(const Graph &g) {
  std::vector<std::string> out;
  walk(g.body, [&](const Node &n) {
    if (n.op == "layer")
      out.push_back(attr<std::string>(n, "name"));
  });
  return out;
}

const Node *findParam(const Graph &g, const std::string &name) {
  const Node *found = nullptr;
  walk(g.body, [&](const Node &n) {
    if (n.op == "param" && attr<std::string>(n, "name") == name)
      found = &n;
  });
  return found;
}

//===----------------------------------------------------------------------===//
// A whole model
//===----------------------------------------------------------------------===//

const char *kMlp = R"(model Mlp(batch = 64, hidden = 128) {
  input  x : f32[batch, 64]
  input  y : i32[batch]
  param  w1 : f32[64, hidden]  init glorot
  param  b1 : f32[hidden]      init zeros
  param  w2 : f32[hidden, 10]  init normal(0.02)
  param  b2 : f32[10]
  let h = relu(x @ w1 + b1)
  let logits = h @ w2 + b2
  loss cross_entropy(logits, y)
}
)";

TEST(Sema, MlpElaboratesToTypedOps) {
  auto c = compile(kMlp);
  ASSERT_TRUE(c->graph) << c->diag.render();
  const Graph &g = *c->graph;
  EXPECT_EQ(g.modelName, "Mlp");
  EXPECT_EQ(opsOf(g.body), Strs({"input", "input", "param", "param", "param",
                                 "param", "matmul", "add", "relu", "matmul",
                                 "add", "cross_entropy", "loss"}));
  const auto &n = g.body.nodes;
  EXPECT_EQ(resultType(g, n[0]), "f32[64, 64]");
  EXPECT_EQ(attr<std::string>(n[0], "name"), "x");
  EXPECT_EQ(resultType(g, n[1]), "i32[64]");
  EXPECT_EQ(resultType(g, n[2]), "f32[64, 128]");
  EXPECT_EQ(attr<std::string>(n[2], "name"), "w1");
  EXPECT_EQ(attr<std::string>(n[2], "init"), "glorot");
  EXPECT_EQ(attr<std::string>(n[3], "init"), "zeros");
  EXPECT_EQ(attr<std::string>(n[4], "init"), "normal");
  EXPECT_EQ(attr<std::vector<double>>(n[4], "init_args"),
            std::vector<double>({0.02}));
  EXPECT_EQ(attr<std::string>(n[5], "init"), "zeros"); // rank-1 default
  EXPECT_EQ(findAttr(n[5], "shard"), nullptr);
  EXPECT_EQ(resultType(g, n[6]), "f32[64, 128]");
  EXPECT_EQ(n[6].operands,
            std::vector<int>({n[0].results[0], n[2].results[0]}));
  EXPECT_EQ(resultType(g, n[7]), "f32[64, 128]");
  EXPECT_EQ(resultType(g, n[8]), "f32[64, 128]");
  EXPECT_EQ(resultType(g, n[10]), "f32[64, 10]");
  EXPECT_EQ(resultType(g, n[11]), "f32[]");
  EXPECT_EQ(attr<int64_t>(n[11], "ignore_index"), -100);
  EXPECT_TRUE(n[12].results.empty());
  EXPECT_EQ(n[12].operands, n[11].results);
  EXPECT_EQ(n[8].loc.line(), 8u);
  EXPECT_EQ(n[8].loc.col(), 11u);
}

TEST(Sema, DefaultInitIsGlorotForMatricesAndZerosOtherwise) {
  auto c = compile("model M {\n"
                   "  input x : f32[2, 3]\n"
                   "  param m : f32[3, 3]\n"
                   "  param v : f32[3]\n"
                   "  param s : f32[]\n"
                   "  param o : f32[3] init ones\n"
                   "  param u : f32[3] init uniform(-0.5, b = 0.5)\n"
                   "}",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  const Graph &g = *c->graph;
  EXPECT_EQ(attr<std::string>(*findParam(g, "m"), "init"), "glorot");
  EXPECT_EQ(attr<std::string>(*findParam(g, "v"), "init"), "zeros");
  EXPECT_EQ(attr<std::string>(*findParam(g, "s"), "init"), "zeros");
  EXPECT_EQ(resultType(g, *findParam(g, "s")), "f32[]");
  EXPECT_EQ(attr<std::string>(*findParam(g, "o"), "init"), "ones");
  EXPECT_EQ(attr<std::vector<double>>(*findParam(g, "u"), "init_args"),
            std::vector<double>({-0.5, 0.5}));
}

TEST(Sema, EveryElementType) {
  auto c = compile("model M {\n"
                   "  input a : f32[2]\n  input b : f16[2]\n"
                   "  input c : bf16[2]\n  input d : f64[2]\n"
                   "  input e : i1[2]\n  input f : i8[2]\n"
                   "  input g : i32[2]\n  input h : i64[2]\n"
                   "}",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  std::vector<std::string> types;
  for (const Node &n : c->graph->body.nodes)
    types.push_back(resultType(*c->graph, n));
  EXPECT_EQ(types, Strs({"f32[2]", "f16[2]", "bf16[2]", "f64[2]", "i1[2]",
                         "i8[2]", "i32[2]", "i64[2]"}));
}

//===----------------------------------------------------------------------===//
// Built-in ops: the op, result type and attributes of each
//===----------------------------------------------------------------------===//

const char *kInputs = R"(model M {
  input x : f32[4, 8]
  input v : f32[8]
  input ids : i32[4, 6]
  input t : i32[4]
  input table : f32[10, 8]
  input seq : f32[2, 6, 8]
  input q : f32[2, 4, 6, 8]
  input kv : f32[2, 4, 5, 8]
  input wg : f32[4, 16]
  input bg : f32[4]
  let r = )";

/// Compiles `let r = EXPR` after the inputs above, for inference.
std::unique_ptr<Compiled> builtin(const std::string &e) {
  return compile(std::string(kInputs) + e + "\n}\n", inference());
}

struct BuiltinCase {
  const char *expr, *op, *type;
};
void PrintTo(const BuiltinCase &c, std::ostream *os) { *os << c.expr; }

class Builtin : public ::testing::TestWithParam<BuiltinCase> {};

TEST_P(Builtin, ResultType) {
  const BuiltinCase &bc = GetParam();
  auto c = builtin(bc.expr);
  ASSERT_TRUE(c->graph) << bc.expr << "\n" << c->diag.render();
  const Node &last = c->graph->body.nodes.back();
  EXPECT_EQ(last.op, bc.op) << bc.expr;
  EXPECT_EQ(resultType(*c->graph, last), bc.type) << bc.expr;
}

INSTANTIATE_TEST_SUITE_P(
    Sema, Builtin,
    ::testing::Values(
        BuiltinCase{"exp(x)", "exp", "f32[4, 8]"},
        BuiltinCase{"log(x)", "log", "f32[4, 8]"},
        BuiltinCase{"sqrt(x)", "sqrt", "f32[4, 8]"},
        BuiltinCase{"rsqrt(x)", "rsqrt", "f32[4, 8]"},
        BuiltinCase{"tanh(x)", "tanh", "f32[4, 8]"},
        BuiltinCase{"relu(x)", "relu", "f32[4, 8]"},
        BuiltinCase{"gelu(x)", "gelu", "f32[4, 8]"},
        BuiltinCase{"sigmoid(x)", "sigmoid", "f32[4, 8]"},
        BuiltinCase{"neg(x)", "neg", "f32[4, 8]"},
        BuiltinCase{"neg(ids)", "neg", "i32[4, 6]"},
        BuiltinCase{"-x", "neg", "f32[4, 8]"},
        BuiltinCase{"softmax(x)", "softmax", "f32[4, 8]"},
        BuiltinCase{"log_softmax(seq)", "log_softmax", "f32[2, 6, 8]"},
        BuiltinCase{"layer_norm(x, v, v)", "layer_norm", "f32[4, 8]"},
        BuiltinCase{"rms_norm(seq, gain = v)", "rms_norm", "f32[2, 6, 8]"},
        BuiltinCase{"embedding(ids, table)", "embedding", "f32[4, 6, 8]"},
        BuiltinCase{"reshape(x, [8, 4])", "reshape", "f32[8, 4]"},
        BuiltinCase{"reshape(x, [-1])", "reshape", "f32[32]"},
        BuiltinCase{"reshape(x, [2, -1, 2])", "reshape", "f32[2, 8, 2]"},
        BuiltinCase{"reshape(v, 8)", "reshape", "f32[8]"},
        BuiltinCase{"transpose(x)", "transpose", "f32[8, 4]"},
        BuiltinCase{"transpose(q, [0, 2, 1, 3])", "transpose",
                    "f32[2, 6, 4, 8]"},
        BuiltinCase{"split_heads(seq, 2)", "split_heads", "f32[2, 2, 6, 4]"},
        BuiltinCase{"merge_heads(q)", "merge_heads", "f32[2, 6, 32]"},
        BuiltinCase{"broadcast_to(v, [3, 8])", "broadcast_to", "f32[3, 8]"},
        BuiltinCase{"sum(x)", "reduce_sum", "f32[]"},
        BuiltinCase{"mean(x, 1)", "reduce_mean", "f32[4]"},
        BuiltinCase{"max(x, [-1], keepdim = true)", "reduce_max", "f32[4, 1]"},
        BuiltinCase{"sum(seq, dims = [0, 2])", "reduce_sum", "f32[6]"},
        BuiltinCase{"concat(x, x)", "concat", "f32[4, 16]"},
        BuiltinCase{"concat(x, x, x, dim = 0)", "concat", "f32[12, 8]"},
        BuiltinCase{"slice(x, 1, 2, 5)", "slice", "f32[4, 3]"},
        BuiltinCase{"slice(x, dim = -2, start = 0, end = 1)", "slice",
                    "f32[1, 8]"},
        BuiltinCase{"cast(x, to = bf16)", "cast", "bf16[4, 8]"},
        BuiltinCase{"cast(ids, f32)", "cast", "f32[4, 6]"},
        BuiltinCase{"dropout(x, 0.1)", "dropout", "f32[4, 8]"},
        BuiltinCase{"dropout(x, p = 0)", "dropout", "f32[4, 8]"},
        BuiltinCase{"attention(q, kv, kv)", "attention", "f32[2, 4, 6, 8]"},
        BuiltinCase{"attention(q, q, q, causal = true)", "attention",
                    "f32[2, 4, 6, 8]"},
        BuiltinCase{"gated_attention(q, q, q, wg, bg)", "gated_attention",
                    "f32[2, 4, 6, 8]"},
        BuiltinCase{"cross_entropy(x, t)", "cross_entropy", "f32[]"},
        BuiltinCase{"cross_entropy(embedding(ids, table), ids)",
                    "cross_entropy", "f32[]"},
        BuiltinCase{"mse(x, x)", "mse", "f32[]"},
        BuiltinCase{"x @ transpose(table)", "matmul", "f32[4, 10]"},
        BuiltinCase{"seq @ transpose(table)", "matmul", "f32[2, 6, 10]"},
        BuiltinCase{"q @ transpose(kv, [0, 1, 3, 2])", "matmul",
                    "f32[2, 4, 6, 5]"},
        BuiltinCase{"x + v", "add", "f32[4, 8]"},
        BuiltinCase{"x - 1", "sub", "f32[4, 8]"},
        BuiltinCase{"x * 2.5", "mul", "f32[4, 8]"},
        BuiltinCase{"x / v", "div", "f32[4, 8]"},
        BuiltinCase{"2 * x", "mul", "f32[4, 8]"},
        BuiltinCase{"ids + 1", "add", "i32[4, 6]"},
        BuiltinCase{"seq * v", "mul", "f32[2, 6, 8]"}));

TEST(Sema, BroadcastingShapes) {
  auto c = builtin("seq + v + reshape(v, [1, 8])");
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes.back()), "f32[2, 6, 8]");
}

TEST(Sema, NumberOperandBecomesAScalarConstantOfTheTensorsType) {
  auto c = builtin("ids + 3");
  ASSERT_TRUE(c->graph) << c->diag.render();
  const auto &n = c->graph->body.nodes;
  const Node &k = n[n.size() - 2];
  EXPECT_EQ(k.op, "constant");
  EXPECT_EQ(resultType(*c->graph, k), "i32[]");
  EXPECT_EQ(attr<double>(k, "value"), 3.0);
  EXPECT_EQ(n.back().operands[1], k.results[0]);

  c = builtin("0.5 * x");
  ASSERT_TRUE(c->graph) << c->diag.render();
  const Node &h = c->graph->body.nodes[c->graph->body.nodes.size() - 2];
  EXPECT_EQ(resultType(*c->graph, h), "f32[]");
  EXPECT_EQ(attr<double>(h, "value"), 0.5);
  EXPECT_EQ(c->graph->body.nodes.back().operands[0], h.results[0]);
}

TEST(Sema, CompileTimeArithmeticMakesNoOps) {
  auto c = compile("model M(d = 4) {\n  input x : f32[2 * d - 6, d / 2 + 1, "
                   "-(-3)]\n}",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(opsOf(c->graph->body), Strs({"input"}));
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes[0]), "f32[2, 3, 3]");
}

TEST(Sema, BuiltinAttributes) {
  auto c = builtin("transpose(x)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(
      attr<std::vector<int64_t>>(c->graph->body.nodes.back(), "permutation"),
      std::vector<int64_t>({1, 0}));

  c = builtin("max(seq, [-1, 0], keepdim = true)");
  ASSERT_TRUE(c->graph);
  const Node &m = c->graph->body.nodes.back();
  // Negative dimensions are normalised before they reach the IR.
  EXPECT_EQ(attr<std::vector<int64_t>>(m, "dims"),
            std::vector<int64_t>({2, 0}));
  EXPECT_EQ(attr<bool>(m, "keepdim"), true);
  EXPECT_EQ(resultType(*c->graph, m), "f32[1, 6, 1]");

  c = builtin("sum(seq)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(attr<std::vector<int64_t>>(c->graph->body.nodes.back(), "dims"),
            std::vector<int64_t>({0, 1, 2}));
  EXPECT_EQ(attr<bool>(c->graph->body.nodes.back(), "keepdim"), false);

  c = builtin("concat(x, x)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(attr<int64_t>(c->graph->body.nodes.back(), "dim"), 1);

  c = builtin("slice(seq, -1, 2, 6)");
  ASSERT_TRUE(c->graph);
  const Node &s = c->graph->body.nodes.back();
  EXPECT_EQ(attr<int64_t>(s, "dim"), 2);
  EXPECT_EQ(attr<int64_t>(s, "start"), 2);
  EXPECT_EQ(attr<int64_t>(s, "end"), 6);

  c = builtin("split_heads(seq, 4)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(attr<int64_t>(c->graph->body.nodes.back(), "heads"), 4);

  c = builtin("attention(q, q, q)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(attr<bool>(c->graph->body.nodes.back(), "causal"), false);

  c = builtin("gated_attention(q, q, q, wg, bg, causal = true, "
              "threshold = 0.25)");
  ASSERT_TRUE(c->graph) << c->diag.render();
  const Node &ga = c->graph->body.nodes.back();
  EXPECT_EQ(attr<bool>(ga, "causal"), true);
  EXPECT_EQ(attr<double>(ga, "gate_threshold"), 0.25);
  EXPECT_EQ(ga.operands.size(), 5u);

  c = builtin("gated_attention(q, q, q, wg, bg)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(findAttr(c->graph->body.nodes.back(), "gate_threshold"), nullptr);

  c = builtin("cross_entropy(x, t, ignore_index = 0)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(attr<int64_t>(c->graph->body.nodes.back(), "ignore_index"), 0);

  c = builtin("dropout(x, 0.25)");
  ASSERT_TRUE(c->graph);
  EXPECT_EQ(attr<double>(c->graph->body.nodes.back(), "p"), 0.25);
  EXPECT_EQ(attr<std::string>(c->graph->body.nodes.back(), "key"), "dropout_0");
}

TEST(Sema, DropoutKeysAreUniquePerUse) {
  auto c = compile(R"(layer Drop(p) {
  fn(x) { return dropout(dropout(x, p), p) }
}
model M {
  input x : f32[4, 8]
  let a = dropout(x, 0.1)
  repeat 2 as blocks { a = Drop(0.2)(a) }
  let b = dropout(a, 0.3)
}
)",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  std::vector<std::string> keys;
  walk(c->graph->body, [&](const Node &n) {
    if (n.op == "dropout")
      keys.push_back(attr<std::string>(n, "key"));
  });
  EXPECT_EQ(keys,
            Strs({"dropout_0", "blocks.0.dropout_0", "blocks.0.dropout_1",
                  "blocks.1.dropout_0", "blocks.1.dropout_1", "dropout_1"}));
}

//===----------------------------------------------------------------------===//
// Errors in expressions: position and message
//===----------------------------------------------------------------------===//

struct ErrorCase {
  const char *expr, *error;
};
void PrintTo(const ErrorCase &c, std::ostream *os) { *os << c.expr; }

class BuiltinError : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(BuiltinError, Message) {
  const ErrorCase &ec = GetParam();
  auto c = builtin(ec.expr);
  EXPECT_FALSE(c->graph) << ec.expr;
  // Errors are on line 12, after "  let r = " (10 columns).
  EXPECT_EQ(c->error(), ec.error) << ec.expr;
}

INSTANTIATE_TEST_SUITE_P(
    Sema, BuiltinError,
    ::testing::Values(
        // Broadcasting and element types.
        ErrorCase{"x + seq", "12:13: add: shapes [4, 8] and [2, 6, 8] cannot "
                             "be broadcast together (dimension 1: 4 vs 6)"},
        ErrorCase{"x * table", "12:13: mul: shapes [4, 8] and [10, 8] cannot "
                               "be broadcast together (dimension 0: 4 vs 10)"},
        ErrorCase{"x - ids", "12:13: sub: element types differ: f32[4, 8] and "
                             "i32[4, 6] (insert an explicit cast)"},
        ErrorCase{"ids + 0.5", "12:17: cannot combine an i32 tensor with the "
                               "non-integer 0.500000"},
        ErrorCase{"x + \"s\"", "12:15: operator '+' needs tensors or numbers, "
                               "got a string"},
        ErrorCase{"x @ [1]", "12:15: operator '@' needs tensors or numbers, "
                             "got a list"},
        // matmul.
        ErrorCase{"x @ table", "12:13: matmul contraction dimensions differ: "
                               "f32[4, 8] @ f32[10, 8] (8 vs 10)"},
        ErrorCase{"v @ x", "12:13: matmul operands must have rank >= 2, got "
                           "f32[8] @ f32[4, 8]"},
        ErrorCase{"2 @ 3", "12:13: '@' multiplies matrices, not numbers"},
        // Unary ops and arity.
        ErrorCase{"exp(ids)", "12:11: exp: operand must have a floating-point "
                              "element type, got i32[4, 6]"},
        ErrorCase{"relu(x, x)", "12:19: relu takes at most 1 argument(s)"},
        ErrorCase{"relu()", "12:11: relu is missing argument 'x'"},
        ErrorCase{"layer_norm(x, v)", "12:11: layer_norm is missing argument "
                                      "'bias'"},
        ErrorCase{"relu(3)", "12:16: relu: argument 'x' must be a tensor, got "
                             "an integer"},
        ErrorCase{"-\"s\"", "12:11: cannot negate a string"},
        // Keyword arguments.
        ErrorCase{"softmax(x, dim = 1)", "12:22: softmax has no argument "
                                         "'dim'"},
        ErrorCase{"sum(x, dim = 1)", "12:18: sum has no argument 'dim'; did "
                                     "you mean 'dims'?"},
        ErrorCase{"sum(x, keepdim = true, 1)", "12:34: positional argument "
                                               "after a keyword argument"},
        ErrorCase{"sum(x, 1, dims = [0])", "12:21: sum: argument 'dims' given "
                                           "twice"},
        ErrorCase{"concat(x, dims = 0)",
                  "12:21: concat has no argument 'dims'; "
                  "did you mean 'dim'?"},
        ErrorCase{"split_heads(seq, 2.0)", "12:28: split_heads: argument "
                                           "'heads' must be an integer, got a "
                                           "number"},
        ErrorCase{"sum(x, keepdim = 1)", "12:28: sum: argument 'keepdim' must "
                                         "be true or false, got an integer"},
        ErrorCase{"sum(x, [1.5])", "12:18: sum: argument 'dims' must be a list "
                                   "of integers, got a list"},
        ErrorCase{"dropout(x, true)", "12:22: dropout: argument 'p' must be a "
                                      "number, got a boolean"},
        // Shape rules of the layout ops.
        ErrorCase{"reshape(x, 3)", "12:11: reshape: cannot reshape f32[4, 8] "
                                   "(32 elements) to [3] (3 elements)"},
        ErrorCase{"reshape(x, [-1, -1])", "12:22: reshape: dimension -1 is "
                                          "invalid (positive, or one -1)"},
        ErrorCase{"reshape(x, [0, 4])", "12:22: reshape: dimension 0 is "
                                        "invalid (positive, or one -1)"},
        ErrorCase{"reshape(x, [-1, 5])", "12:22: reshape: cannot infer -1: 32 "
                                         "elements do not divide by 5"},
        ErrorCase{"reshape(x, [1099511627776, 2])", "12:22: reshape: target "
                                                    "shape is too large"},
        ErrorCase{"transpose(v)", "12:11: transpose without a permutation "
                                  "swaps the last two dimensions; the operand "
                                  "has rank 1"},
        ErrorCase{"transpose(x, [0, 0])", "12:11: transpose: [0, 0] is not a "
                                          "permutation of 0..1"},
        ErrorCase{"transpose(x, [0])", "12:11: transpose: permutation [0] "
                                       "does not match rank 2 of f32[4, 8]"},
        ErrorCase{"split_heads(seq, 3)", "12:11: split_heads: 3 heads do not "
                                         "divide the channel dimension 8"},
        ErrorCase{"split_heads(x, 2)", "12:11: split_heads input must have "
                                       "rank 3, got f32[4, 8]"},
        ErrorCase{"merge_heads(seq)", "12:11: merge_heads input must have "
                                      "rank 4, got f32[2, 6, 8]"},
        ErrorCase{"broadcast_to(x, [3, 8])", "12:11: broadcast_to: shapes "
                                             "[4, 8] and [3, 8] cannot be "
                                             "broadcast together (dimension "
                                             "0: 4 vs 3)"},
        ErrorCase{"broadcast_to(v, [1, 1])", "12:11: broadcast_to: cannot "
                                             "broadcast f32[8] to [1, 1]"},
        ErrorCase{"max(x, [2])", "12:11: reduce_max: reduction dimension 2 is "
                                 "out of range for f32[4, 8]"},
        ErrorCase{"sum(x, [1, -1])", "12:11: reduce_sum: reduction dimension "
                                     "-1 is listed twice"},
        ErrorCase{"concat(x, 1)", "12:11: concat takes tensors, got an "
                                  "integer"},
        ErrorCase{"concat(x, v)", "12:11: concat operand 1 f32[8] does not "
                                  "match f32[4, 8] outside dimension 1"},
        ErrorCase{"concat(x, x, dim = 2)", "12:11: concat dimension 2 "
                                           "is out of range for f32[4, 8]"},
        ErrorCase{"slice(x, 1, 5, 2)", "12:11: slice [5, 2) is empty or "
                                       "outside dimension 1 of size 8"},
        ErrorCase{"slice(x, 2, 0, 1)", "12:11: slice dimension 2 is out "
                                       "of range for f32[4, 8]"},
        ErrorCase{"cast(x, to = f33)", "12:24: cast: argument 'to' must be an "
                                       "element type (f32, bf16, f16, f64, "
                                       "i32, ...)"},
        ErrorCase{"cast(x, 3)", "12:19: cast: argument 'to' must be an element "
                                "type (f32, bf16, f16, f64, i32, ...)"},
        // Regularisation, attention, losses.
        ErrorCase{"dropout(x, 1.5)", "12:11: dropout probability "
                                     "must be in [0, 1), got 1.500000"},
        ErrorCase{"dropout(ids, 0.1)", "12:11: dropout input must "
                                       "have a floating-point element type, "
                                       "got i32[4, 6]"},
        ErrorCase{"attention(q, kv, x)", "12:11: attention: v must have rank "
                                         "4, got f32[4, 8]"},
        ErrorCase{"attention(q, seq, q)", "12:11: attention: k must have rank "
                                          "4, got f32[2, 6, 8]"},
        ErrorCase{"attention(q, transpose(kv, [0, 1, 3, 2]), kv)",
                  "12:11: attention: q and k head dimensions differ: 8 vs 5"},
        ErrorCase{"gated_attention(q, kv, kv, wg, bg)",
                  "12:11: gated_attention gates on [q; k] per "
                  "position, so q and k need the same sequence length (6 vs "
                  "5)"},
        ErrorCase{"gated_attention(q, q, q, bg, bg)",
                  "12:11: gated_attention: gate weight must be f32[4, 16] "
                  "([heads, 2 * head_dim]), got f32[4]"},
        ErrorCase{"gated_attention(q, q, q, wg, bg, threshold = 1)",
                  "12:56: gated_attention threshold must be in [0, 1)"},
        ErrorCase{"cross_entropy(x, x)", "12:11: cross_entropy targets must be "
                                         "integer class ids, got f32[4, 8]"},
        ErrorCase{"cross_entropy(x, ids)", "12:11: cross_entropy: targets [4, "
                                           "6] must match the logits [4, 8] "
                                           "without the class dimension"},
        ErrorCase{"mse(x, v)", "12:11: mse operands must have the same type, "
                               "got f32[4, 8] and f32[8]"},
        ErrorCase{"embedding(x, table)", "12:11: embedding ids must be "
                                         "integers, got f32[4, 8]"},
        ErrorCase{"embedding(ids, v)", "12:11: embedding table must have rank "
                                       "2, got f32[8]"},
        ErrorCase{"layer_norm(x, table, v)", "12:11: layer_norm: gain must "
                                             "have shape [8], got f32[10, 8]"},
        ErrorCase{"softmax(ids)", "12:11: softmax: operand must have a "
                                  "floating-point element type, got i32[4, 6]"},
        // Names and calls.
        ErrorCase{"frobnicate(x)", "12:11: unknown function 'frobnicate'"},
        ErrorCase{"relux(x)", "12:11: unknown function 'relux'; did you mean "
                              "'relu'?"},
        ErrorCase{"zzz", "12:11: unknown name 'zzz'"},
        ErrorCase{"idz + 1", "12:11: unknown name 'idz'; did you mean 'ids'?"},
        ErrorCase{"x(1)", "12:11: cannot call a tensor"},
        ErrorCase{"(1)(2)", "12:12: cannot call an integer"},
        // Compile-time numbers.
        ErrorCase{"7 / 2", "12:13: 7 / 2 is not an integer; integer division "
                           "must be exact (write a float, e.g. 7.0, for a real "
                           "quotient)"},
        ErrorCase{"1 / 0", "12:13: division by zero"},
        ErrorCase{"1.0 / 0", "12:15: division by zero"},
        ErrorCase{"9223372036854775807 + 1", "12:31: integer overflow"},
        ErrorCase{"3037000500 * 3037000500", "12:22: integer overflow"},
        ErrorCase{"-9223372036854775807 - 2", "12:32: integer overflow"},
        ErrorCase{"1e308 * 10", "12:17: arithmetic overflow"},
        ErrorCase{"99999999999999999999", "12:11: integer "
                                          "'99999999999999999999' is too "
                                          "large"},
        ErrorCase{"1e999", "12:11: number '1e999' is out of range"},
        ErrorCase{"40GiB", "12:11: unexpected suffix 'GiB' on a number"},
        ErrorCase{"2.5x", "12:11: unexpected suffix 'x' on a number"}));

//===----------------------------------------------------------------------===//
// Statements
//===----------------------------------------------------------------------===//

TEST(Sema, LetsShadowAndAssignmentsRebind) {
  auto c = compile("model M {\n"
                   "  input x : f32[4, 8]\n"
                   "  let h = x\n"
                   "  h = relu(h)\n"
                   "  let h = exp(h)\n"
                   "  h = h + 1\n"
                   "  loss mean(h)\n"
                   "}");
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(opsOf(c->graph->body), Strs({"input", "relu", "exp", "constant",
                                         "add", "reduce_mean", "loss"}));
}

TEST(Sema, StatementErrors) {
  struct Case {
    const char *body, *error;
  } cases[] = {
      {"x = relu(x)", "5:3: cannot assign to input 'x'; use 'let' for a new "
                      "value"},
      {"w = x", "5:3: cannot assign to parameter 'w'; use 'let' for a new "
                "value"},
      {"n = 2", "5:3: cannot assign to model parameter 'n'; use 'let' for a "
                "new value"},
      {"zzz = x", "5:3: unknown name 'zzz'"},
      {"return x", "5:3: 'return' belongs in a layer's fn; a model ends with "
                   "'loss'"},
      {"loss x", "5:8: the loss must be a scalar f32 tensor, got f32[4, 8]"},
      {"loss sum(ids)", "5:8: the loss must be a scalar f32 tensor, got "
                        "i32[]"},
      {"loss 3", "5:8: the loss must be a scalar f32 tensor, got an integer"},
      {"input x : f32[4, 8]", "5:9: input 'x' is declared twice"},
      {"param p : i32[4]", "5:13: parameter 'p' must have a floating-point "
                           "type, got i32"},
      {"param p : f33[4]", "5:13: unknown element type 'f33' (f32, f16, bf16, "
                           "f64, i1, i8, i32, i64)"},
      {"param w : f32[4, 4]", "5:9: parameter 'w' is defined twice"},
      {"repeat 2 as r { input z : f32[4] }", "5:19: an input cannot be "
                                             "declared inside 'repeat'"},
      {"repeat 2 as r { loss mean(x) }", "5:19: 'loss' belongs at the top "
                                         "level of a model"},
      {"repeat 1.5 as r { }", "5:10: a repeat count must be an integer in "
                              "0..4096"},
      {"repeat 4097 as r { }", "5:10: a repeat count must be an integer in "
                               "0..4096"},
      {"repeat -1 as r { }", "5:10: a repeat count must be an integer in "
                             "0..4096"},
      {"repeat n * 2 { }", "5:12: name this repeat with 'as NAME': its index "
                           "becomes part of parameter names (NAME.0.w, "
                           "NAME.1.w, ...)"},
      {"let L = 1", "5:7: 'L' names a layer"},
      {"let y = L", "5:11: layer 'L' must be instantiated: L(args)(inputs)"},
  };
  for (const Case &c : cases) {
    auto r = compile(std::string("model M(n = 2) {\n"
                                 "  input x : f32[4, 8]\n"
                                 "  input ids : i32[4]\n"
                                 "  param w : f32[8, 8]\n  ") +
                         c.body +
                         "\n}\n"
                         "layer L { fn(x) { return x } }\n",
                     inference());
    EXPECT_EQ(r->error(), c.error) << c.body;
  }
}

TEST(Sema, NotesPointAtTheEarlierDeclaration) {
  auto c = compile("model M {\n  input x : f32[4]\n  x = x\n}", inference());
  EXPECT_EQ(notesOf(c->diag), Strs({"2:9: declared here"}));

  c = compile("model M {\n  input x : f32[4]\n  y = x\n}", inference());
  EXPECT_EQ(notesOf(c->diag),
            Strs({"3:3: introduce a new name with 'let y = ...'"}));

  c = compile("model M {\n  param w : f32[4]\n  param w : f32[4]\n}",
              inference());
  EXPECT_EQ(notesOf(c->diag), Strs({"2:9: the first definition is here"}));
}

TEST(Sema, TwoLossesAreAnError) {
  auto c = compile("model M {\n  input x : f32[4]\n  loss mean(x)\n"
                   "  loss sum(x)\n}");
  EXPECT_EQ(c->errors(), Strs({"4:3: a model has one loss; this is the "
                               "second"}));
  EXPECT_EQ(notesOf(c->diag), Strs({"3:3: the first loss is here"}));
}

TEST(Sema, MissingLoss) {
  auto c = compile("model M {\n  input x : f32[4]\n}\ntrain M { steps 1 }");
  EXPECT_EQ(c->errors(), Strs({"1:7: model 'M' has no loss; training needs "
                               "'loss EXPR'"}));
  EXPECT_EQ(notesOf(c->diag), Strs({"4:1: it is trained here"}));
  // Inference needs none.
  c = compile("model M {\n  input x : f32[4]\n}", inference());
  EXPECT_TRUE(c->graph) << c->diag.render();
}

TEST(Sema, DimensionErrors) {
  struct Case {
    const char *type, *error;
  } cases[] = {
      {"f32[0]", "1:25: dimension 0 is out of range (1 to 2^40)"},
      {"f32[-4]", "1:25: dimension -4 is out of range (1 to 2^40)"},
      {"f32[1099511627777]", "1:25: dimension 1099511627777 is out of range "
                             "(1 to 2^40)"},
      {"f32[2.5]", "1:25: a dimension must be an integer, got a number"},
      {"f32[true]", "1:25: a dimension must be an integer, got a boolean"},
      {"f32[[2]]", "1:25: a dimension must be an integer, got a list"},
      {"f32[\"2\"]", "1:25: a dimension must be an integer, got a string"},
      {"f32[n]", "1:25: unknown name 'n'"},
  };
  for (const Case &c : cases) {
    auto r = compile(std::string("model M { input x : ") + c.type + " }",
                     inference());
    EXPECT_EQ(r->error(), c.error) << c.type;
  }
}

TEST(Sema, ElementCountLimit) {
  auto c = compile("model M { input x : f32[1048576, 1048576] }", inference());
  EXPECT_TRUE(c->graph) << c->diag.render(); // exactly 2^40
  c = compile("model M { input x : f32[1048576, 1048577] }", inference());
  EXPECT_EQ(c->error().substr(0, 30), "1:21: input 'x' has 1099512676");
  EXPECT_NE(c->error().find("elements; the limit is 2^40"), std::string::npos);
}

// 2^20 x 2^20 x 2^20 x 2^20 elements is 2^80: broadcasting must respect the
// 2^40 element limit that every declared tensor obeys, or later size
// arithmetic overflows int64.
TEST(Sema, BroadcastResultObeysTheElementLimit) {
  auto c = compile("model M {\n"
                   "  input a : f32[1048576, 1, 1]\n"
                   "  input b : f32[1, 1048576, 1]\n"
                   "  input c : f32[1, 1, 1048576]\n"
                   "  let y = a + b + c\n"
                   "}",
                   inference());
  EXPECT_FALSE(c->graph) << "a tensor of 2^60 elements was accepted";
  EXPECT_EQ(c->error().substr(0, 11), "5:17: add: ");
}

TEST(Sema, InitializerErrors) {
  struct Case {
    const char *decl, *error;
  } cases[] = {
      {"f32[4, 4] init glorott", "2:28: unknown initializer 'glorott'; did "
                                 "you mean 'glorot'?"},
      {"f32[4, 4] init 3", "2:28: expected an initializer: zeros, ones, "
                           "normal(std), glorot or uniform(a, b)"},
      {"f32[4, 4] init normal", "2:28: initializer 'normal' takes 1 "
                                "argument(s), got 0"},
      {"f32[4, 4] init zeros(1)", "2:28: initializer 'zeros' takes 0 "
                                  "argument(s), got 1"},
      {"f32[4, 4] init normal(mean = 1)", "2:35: initializer 'normal' expects "
                                          "argument 'std' here"},
      {"f32[4, 4] init normal(\"a\")", "2:35: initializer arguments are "
                                       "numbers"},
      {"f32[4, 4] init normal(0)", "2:28: normal(std) needs std > 0"},
      {"f32[4, 4] init uniform(1, 1)", "2:28: uniform(a, b) needs a < b"},
      {"f32[4] init glorot", "2:25: glorot initialisation needs rank >= 2 "
                             "(fan-in and fan-out); 'w' is f32[4]"},
  };
  for (const Case &c : cases) {
    auto r = compile(std::string("model M {\n  param w : ") + c.decl + "\n}",
                     inference());
    EXPECT_EQ(r->error(), c.error) << c.decl;
  }
}

TEST(Sema, BatchNeedsADimension) {
  auto c = compile("model M {\n  input s : f32[]\n  loss mean(s)\n}");
  EXPECT_EQ(c->errors(), Strs({"2:3: input 's' needs a batch dimension"}));
}

//===----------------------------------------------------------------------===//
// Declarations: which model, duplicates
//===----------------------------------------------------------------------===//

TEST(Sema, ModelSelection) {
  const char *two = "model A { input x : f32[2] }\n"
                    "model B { input x : f32[4] }\n";
  auto c = compile(two, inference());
  EXPECT_EQ(c->errors(), Strs({"-: the file defines several models (A, B) and "
                               "no train block; choose one with "
                               "--model=NAME"}));

  CompileOptions o = inference();
  o.model = "B";
  c = compile(two, o);
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->modelName, "B");

  o.model = "Zzz";
  c = compile(two, o);
  EXPECT_EQ(c->errors(), Strs({"-: no model named 'Zzz'"}));

  c = compile(std::string(two) + "train B { steps 2 }", inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->modelName, "B");
  EXPECT_EQ(c->graph->config.steps, 2);

  c = compile(std::string(two) + "train Bb { steps 2 }", inference());
  EXPECT_EQ(c->errors(), Strs({"3:7: no model named 'Bb'; did you mean "
                               "'B'?"}));

  c = compile("layer L { fn(x) { return x } }", inference());
  EXPECT_EQ(c->errors(), Strs({"-: the file defines no model"}));
}

TEST(Sema, DuplicateDeclarations) {
  auto c = compile("model A { input x : f32[2] }\n"
                   "model A { input y : f32[2] }\n",
                   inference());
  EXPECT_EQ(c->error(), "2:7: model 'A' is defined twice");
  EXPECT_EQ(notesOf(c->diag), Strs({"1:7: the first definition is here"}));

  c = compile("layer L { fn(x) { return x } }\n"
              "layer L { fn(x) { return x } }\n"
              "model M { input x : f32[2] }\n",
              inference());
  EXPECT_EQ(c->error(), "2:7: layer 'L' is defined twice");

  c = compile("layer M { fn(x) { return x } }\n"
              "model M { input x : f32[2] }\n",
              inference());
  EXPECT_EQ(c->error(), "1:7: 'M' names both a model and a layer");

  c = compile("model M { input x : f32[2] }\n"
              "train M { steps 1 }\ntrain M { steps 2 }\n",
              inference());
  EXPECT_EQ(c->error(), "3:1: a file may hold one train block; this is the "
                        "second");
  EXPECT_EQ(notesOf(c->diag), Strs({"2:1: the first is here"}));

  c = compile("model M(a = 1, a = 2) { input x : f32[2] }", inference());
  EXPECT_EQ(c->error(), "1:16: model parameter 'a' is listed twice");
}

//===----------------------------------------------------------------------===//
// Model parameters and -D
//===----------------------------------------------------------------------===//

CompileOptions defines(std::vector<std::pair<std::string, std::string>> d) {
  CompileOptions o = inference();
  o.defines = std::move(d);
  return o;
}

TEST(Sema, DefinesOverrideDefaults) {
  auto c = compile(kMlp, defines({{"hidden", "32"}, {"batch", "8"}}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, *findParam(*c->graph, "w1")), "f32[64, 32]");
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes[0]), "f32[8, 64]");
}

TEST(Sema, LastDefineWins) {
  auto c = compile(kMlp, defines({{"hidden", "32"}, {"hidden", "16"}}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, *findParam(*c->graph, "w1")), "f32[64, 16]");
}

TEST(Sema, DefineValuesAreExpressions) {
  auto c = compile(kMlp, defines({{"hidden", "4 * (2 + 2)"}}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, *findParam(*c->graph, "w1")), "f32[64, 16]");
}

TEST(Sema, DefaultsMaySeeEarlierParameters) {
  auto c =
      compile("model M(d = 4, h = d * 2) { input x : f32[d, h] }", inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes[0]), "f32[4, 8]");
  c = compile("model M(d = 4, h = d * 2) { input x : f32[d, h] }",
              defines({{"d", "3"}}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes[0]), "f32[3, 6]");
}

TEST(Sema, BooleanModelParameter) {
  auto c = compile("model M(causal = false) {\n"
                   "  input q : f32[1, 1, 2, 4]\n"
                   "  let a = attention(q, q, q, causal = causal)\n}",
                   defines({{"causal", "true"}}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(attr<bool>(c->graph->body.nodes.back(), "causal"), true);
}

TEST(Sema, DefineErrors) {
  auto c = compile(kMlp, defines({{"hiden", "3"}}));
  EXPECT_EQ(c->errors(), Strs({"-: -Dhiden: model 'Mlp' has no parameter "
                               "'hiden'; did you mean 'hidden'?"}));

  c = compile(kMlp, defines({{"zzzz", "3"}}));
  EXPECT_EQ(c->errors(), Strs({"-: -Dzzzz: model 'Mlp' has no parameter "
                               "'zzzz'"}));

  c = compile(kMlp, defines({{"hidden", "wide"}}));
  EXPECT_EQ(c->errors(), Strs({"1:1: unknown name 'wide'"}));
  EXPECT_EQ(c->diag.diagnostics()[0].loc.file->name(), "-Dhidden");

  c = compile(kMlp, defines({{"hidden", "4 4"}}));
  EXPECT_EQ(c->errors(), Strs({"1:3: unexpected number '4' after value"}));

  c = compile(kMlp, defines({{"hidden", "\"wide\""}}));
  EXPECT_EQ(c->errors(), Strs({"1:23: model parameter 'hidden' must be a "
                               "number or boolean, got a string"}));

  c = compile(kMlp, defines({{"hidden", "2.5"}}));
  EXPECT_EQ(c->errors(), Strs({"4:23: a dimension must be an integer, got a "
                               "number",
                               "5:19: a dimension must be an integer, got a "
                               "number",
                               "6:19: a dimension must be an integer, got a "
                               "number"}));

  c = compile("model M(n) { input x : f32[n] }", inference());
  EXPECT_EQ(c->errors(), Strs({"1:9: model parameter 'n' has no default; "
                               "pass -Dn=VALUE"}));
}

// A model parameter's default, or a -D value, that instantiates a layer is
// evaluated before any statement runs; it must be an error, not a crash.
TEST(SemaDeathTest, LayerInAModelParameterDefaultIsAnErrorNotACrash) {
  EXPECT_EXIT(
      {
        auto c = compile("layer L(n) { fn(x) { return x } }\n"
                         "model M(a = L(1)) { input x : f32[4] }\n",
                         inference());
        std::exit(c->graph ? 3 : c->error() == "" ? 4 : 0);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(
      {
        auto c = compile("layer L(n) { fn(x) { return x } }\n"
                         "model M(a = 1) { input x : f32[4] }\n",
                         defines({{"a", "L(1)"}}));
        std::exit(c->graph ? 3 : c->error() == "" ? 4 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}

// The longest chain the parser accepts elaborates without overflowing the
// stack (one frame per operator), into one add per operator.
TEST(SemaDeathTest, LongOperatorChainDoesNotOverflowTheStack) {
  std::string chain = "x";
  for (unsigned i = 0; i + 2 < kMaxExprDepth; ++i)
    chain += " + x";
  EXPECT_EXIT(
      {
        auto c = compile("model M {\n  input x : f32[4]\n  let y = " + chain +
                             "\n}\n",
                         inference());
        std::exit(c->graph && c->graph->body.nodes.size() == kMaxExprDepth - 1
                      ? 0
                      : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

// A dense layer over 8 input features, used by the layer tests below.
constexpr const char *kDense = R"(layer Dense(out, scale = 1) {
  param w : f32[8, out]
  param b : f32[out]
  fn(x) { return (x @ w + b) * scale }
}
)";

TEST(Sema, LayerBecomesARegion) {
  auto c = compile(std::string(kDense) + "model M {\n"
                                         "  input x : f32[4, 8]\n"
                                         "  let y = Dense(16)(x)\n"
                                         "}\n",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  const Graph &g = *c->graph;
  EXPECT_EQ(opsOf(g.body), Strs({"input", "layer"}));
  const Node &l = g.body.nodes[1];
  EXPECT_EQ(attr<std::string>(l, "name"), "dense");
  EXPECT_EQ(attr<std::string>(l, "layer"), "Dense");
  EXPECT_EQ(l.operands, g.body.nodes[0].results);
  EXPECT_EQ(resultType(g, l), "f32[4, 16]");
  ASSERT_TRUE(l.region);
  EXPECT_EQ(opsOf(*l.region),
            Strs({"param", "param", "matmul", "add", "constant", "mul"}));
  ASSERT_EQ(l.region->args.size(), 1u);
  EXPECT_EQ(typeOf(g, l.region->args[0]), "f32[4, 8]");
  // The region's matmul reads the block argument, not the caller's value.
  EXPECT_EQ(l.region->nodes[2].operands[0], l.region->args[0]);
  ASSERT_EQ(l.region->yields.size(), 1u);
  EXPECT_EQ(l.region->yields[0], l.region->nodes.back().results[0]);
  EXPECT_EQ(paramNames(g), Strs({"dense.w", "dense.b"}));
}

TEST(Sema, RepeatNamesInstancesByIndex) {
  auto c = compile(std::string(kDense) + "model M(layers = 3) {\n"
                                         "  input x : f32[4, 8]\n"
                                         "  let h = x\n"
                                         "  repeat layers { h = Dense(8)(h) }\n"
                                         "}\n",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(layerNames(*c->graph), Strs({"layers.0", "layers.1", "layers.2"}));
  EXPECT_EQ(paramNames(*c->graph),
            Strs({"layers.0.w", "layers.0.b", "layers.1.w", "layers.1.b",
                  "layers.2.w", "layers.2.b"}));
  // Each instance reads the previous one's result.
  const auto &n = c->graph->body.nodes;
  EXPECT_EQ(n[2].operands, n[1].results);
}

TEST(Sema, RepeatAliasNamesThePrefix) {
  auto c = compile(std::string(kDense) + "model M {\n"
                                         "  input x : f32[4, 8]\n"
                                         "  let h = x\n"
                                         "  repeat 2 as blocks { h = "
                                         "Dense(8)(h) }\n"
                                         "}\n",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(layerNames(*c->graph), Strs({"blocks.0", "blocks.1"}));
  EXPECT_EQ(paramNames(*c->graph)[2], "blocks.1.w");
}

TEST(Sema, ParamsDeclaredInARepeatGetTheIndex) {
  auto c = compile("model M {\n  input x : f32[4]\n"
                   "  repeat 2 as r { param w : f32[4] }\n}",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(paramNames(*c->graph), Strs({"r.0.w", "r.1.w"}));
}

TEST(Sema, SeveralLayersInARepeatBodyAreNamedBySnakeCase) {
  auto c = compile(R"(layer SelfAttention(d) {
  param wq : f32[d, d]
  fn(x) { return x @ wq }
}
layer MLPBlock(d) {
  param w : f32[d, d]
  fn(x) { return x @ w }
}
model M {
  input x : f32[4, 8]
  let h = x
  repeat 2 as layers {
    h = SelfAttention(8)(h)
    h = MLPBlock(8)(h)
  }
}
)",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(layerNames(*c->graph),
            Strs({"layers.0.self_attention", "layers.0.mlp_block",
                  "layers.1.self_attention", "layers.1.mlp_block"}));
  EXPECT_EQ(paramNames(*c->graph),
            Strs({"layers.0.self_attention.wq", "layers.0.mlp_block.w",
                  "layers.1.self_attention.wq", "layers.1.mlp_block.w"}));
}

TEST(Sema, SameLayerTwiceGetsOrdinals) {
  auto c = compile(std::string(kDense) + "model M {\n"
                                         "  input x : f32[4, 8]\n"
                                         "  let a = Dense(8)(x)\n"
                                         "  let b = Dense(8, scale = 2)(a)\n"
                                         "  repeat 1 as r {\n"
                                         "    b = Dense(8)(b)\n"
                                         "    b = Dense(8)(b)\n"
                                         "  }\n"
                                         "}\n",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(layerNames(*c->graph),
            Strs({"dense_0", "dense_1", "r.0.dense_0", "r.0.dense_1"}));
  EXPECT_EQ(paramNames(*c->graph)[2], "dense_1.w");
}

TEST(Sema, NestedLayersExtendTheirParentsPath) {
  auto c = compile(std::string(kDense) + R"(layer Block(d) {
  param g : f32[d]
  fn(x) { return Dense(d)(x) * g }
}
model M {
  input x : f32[4, 8]
  let h = x
  repeat 2 as layers { h = Block(8)(h) }
}
)",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(layerNames(*c->graph),
            Strs({"layers.0", "layers.0.dense", "layers.1", "layers.1.dense"}));
  EXPECT_EQ(paramNames(*c->graph),
            Strs({"layers.0.g", "layers.0.dense.w", "layers.0.dense.b",
                  "layers.1.g", "layers.1.dense.w", "layers.1.dense.b"}));
}

TEST(Sema, LayerArgumentsByKeywordAndDefaults) {
  auto c = compile("layer L(a, b = a * 2) {\n"
                   "  param w : f32[a, b]\n"
                   "  fn(x) { return x @ w }\n"
                   "}\n"
                   "model M {\n  input x : f32[4, 3]\n"
                   "  let y = L(b = 5, a = 3)(x)\n"
                   "  let z = L(3)(x)\n}",
                   inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes[1]), "f32[4, 5]");
  EXPECT_EQ(resultType(*c->graph, c->graph->body.nodes[2]), "f32[4, 6]");
}

TEST(Sema, LayerInstanceInALet) {
  auto c =
      compile(std::string(kDense) + "model M {\n  input x : f32[4, 8]\n"
                                    "  let d = Dense(8)\n  let y = d(x)\n}",
              inference());
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(layerNames(*c->graph), Strs({"dense"}));
}

TEST(Sema, LayerErrors) {
  struct Case {
    const char *use, *error;
  } cases[] = {
      {"Dense(8, 1, 2)(x)", "11:23: layer 'Dense' takes 2 argument(s)"},
      {"Dense(outs = 8)(x)", "11:17: layer 'Dense' has no parameter 'outs'"},
      {"Dense(8, out = 8)(x)", "11:26: argument 'out' given twice"},
      {"Dense()(x)", "11:11: layer 'Dense' needs argument 'out'"},
      {"Dense(x)(x)", "11:17: layer arguments are compile-time numbers; "
                      "tensors go in the second call: Dense(args)(inputs)"},
      {"Dense(8)(x, x)", "11:11: layer 'Dense' takes 1 input(s), got 2"},
      {"Dense(8)(3)", "11:20: a layer input must be a tensor, got an integer"},
      {"Dense(8)(in = x)", "11:20: layer inputs are positional"},
      {"NoFn()(x)", "11:11: layer 'NoFn' has no fn to apply"},
      {"NoReturn()(x)", "8:18: fn of layer 'NoReturn' ends without 'return'"},
      {"Scalar()(x)", "7:31: a layer returns a tensor, not an integer"},
      {"Dens(8)(x)", "11:11: unknown function 'Dens'; did you mean 'Dense'?"},
  };
  std::string layers = std::string(kDense) +
                       "layer NoFn { param w : f32[2] }\n"
                       "layer Scalar { fn(x) { return 1 } }\n"
                       "layer NoReturn { fn(x) { let y = x } }\n";
  for (const Case &c : cases) {
    auto r = compile(layers + "model M {\n  input x : f32[4, 8]\n  let y = " +
                         c.use + "\n}\n",
                     inference());
    EXPECT_EQ(r->error(), c.error) << c.use;
  }
}

TEST(Sema, LayerInstanceIsAppliedOnce) {
  auto c = compile(std::string(kDense) +
                       "model M {\n  input x : f32[4, 8]\n"
                       "  let d = Dense(8)\n  let y = d(x)\n  let z = d(y)\n}",
                   inference());
  EXPECT_EQ(c->error(), "10:11: this instance of layer 'Dense' was already "
                        "applied; sharing weights between applications is not "
                        "supported");
}

TEST(Sema, LayerFnRules) {
  struct Case {
    const char *fn, *error;
  } cases[] = {
      {"fn(x) { input z : f32[2]\n return x }", "2:11: inputs belong to a "
                                                "model, not to a layer's fn; "
                                                "pass tensors as fn arguments"},
      {"fn(x) { param w : f32[2]\n return x }", "2:11: declare a layer's "
                                                "params beside its fn, not "
                                                "inside it"},
      {"fn(x) { loss mean(x)\n return x }", "2:11: 'loss' belongs at the top "
                                            "level of a model"},
      {"fn(x) { return x\n let y = x }", "3:2: statement after 'return' is "
                                         "never reached"},
      {"fn(x) { repeat 2 as r { return x } }", "2:27: 'return' cannot appear "
                                               "inside 'repeat'"},
      {"fn(x) { return y }", "2:18: unknown name 'y'; did you mean 'x'?"},
      // A layer sees its own names only, not the model's.
      {"fn(x) { return x + w0 }", "2:22: unknown name 'w0'"},
  };
  for (const Case &c : cases) {
    auto r = compile(std::string("layer L {\n  ") + c.fn +
                         "\n}\nmodel M {\n  input x : f32[4]\n"
                         "  param w0 : f32[4]\n  let y = L()(x)\n}\n",
                     inference());
    EXPECT_EQ(r->error(), c.error) << c.fn;
  }
}

TEST(Sema, SelfInstantiatingLayerStopsAtTheDepthLimit) {
  auto c = compile("layer R(d) {\n  fn(x) { return R(d)(x) }\n}\n"
                   "model M {\n  input x : f32[4]\n  let y = R(1)(x)\n}\n",
                   inference());
  EXPECT_EQ(c->errors(), Strs({"2:18: layers nest more than 32 deep; is layer "
                               "'R' recursive?"}));
}

TEST(Sema, MutuallyRecursiveLayersStopAtTheDepthLimit) {
  auto c = compile("layer A { fn(x) { return B()(x) } }\n"
                   "layer B { fn(x) { return A()(x) } }\n"
                   "model M {\n  input x : f32[4]\n  let y = A()(x)\n}\n",
                   inference());
  ASSERT_EQ(c->errors().size(), 1u);
  EXPECT_NE(c->error().find("layers nest more than 32 deep"),
            std::string::npos);
}

//===----------------------------------------------------------------------===//
// Mesh, shard and batch
//===----------------------------------------------------------------------===//

CompileOptions withTrain(std::vector<std::string> texts) {
  CompileOptions o;
  for (std::string &t : texts)
    o.trainOverrides.push_back({std::move(t), "", ""});
  return o;
}

const char *kSharded = R"(model M(batch = 8, d = 6) {
  input x : f32[batch, d]
  input y : i32[batch]
  param w : f32[d, 4] shard(tp, _)
  param v : f32[4, d] shard(_, tp)
  loss cross_entropy(x @ w @ v, y)
}
)";

TEST(Sema, ShardAttributes) {
  auto c = compile(kSharded, withTrain({"mesh tp = 2"}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(attr<std::vector<std::string>>(*findParam(*c->graph, "w"), "shard"),
            Strs({"tp", "_"}));
  EXPECT_EQ(c->graph->config.tp, 2);
}

TEST(Sema, ShardDivisibility) {
  auto c = compile(kSharded, withTrain({"mesh tp = 4"}));
  EXPECT_EQ(c->errors(), Strs({"4:29: dimension 0 of 'w' (size 6) is not "
                               "divisible by tp = 4",
                               "5:32: dimension 1 of 'v' (size 6) is not "
                               "divisible by tp = 4"}));

  c = compile("model M(batch = 8) {\n  input x : f32[batch, 6]\n"
              "  param w : f32[6, 3] shard(dp, _)\n  loss mean(x)\n}",
              withTrain({"mesh dp = 4"}));
  EXPECT_EQ(c->errors(), Strs({"3:29: dimension 0 of 'w' (size 6) is not "
                               "divisible by dp = 4"}));
}

TEST(Sema, ShardErrors) {
  struct Case {
    const char *decl, *error;
  } cases[] = {
      {"f32[4, 4] shard(tp)", "2:23: shard lists 1 dimension(s) but 'w' has "
                              "rank 2"},
      {"f32[4, 4] shard(_, tq)", "2:32: unknown mesh axis 'tq'; did you mean "
                                 "'tp'? (the mesh has dp, tp and pp; '_' "
                                 "replicates)"},
      {"f32[4, 4] shard(_, rows)", "2:32: unknown mesh axis 'rows' (the "
                                   "mesh has dp, tp and pp; '_' replicates)"},
      {"f32[4, 4] shard(pp, _)", "2:29: 'pp' splits the model into pipeline "
                                 "stages by layer, not tensor dimensions; "
                                 "shard over tp or dp"},
      {"f32[4, 4] shard(tp, tp)", "2:33: mesh axis 'tp' shards two "
                                  "dimensions"},
  };
  for (const Case &c : cases) {
    auto r = compile(std::string("model M {\n  param w : ") + c.decl + "\n}",
                     inference());
    EXPECT_EQ(r->error(), c.error) << c.decl;
  }
}

TEST(Sema, BatchDivisibleByDataParallelTimesMicrobatches) {
  auto c = compile(kSharded,
                   withTrain({"mesh dp = 2", "pipeline microbatches = 4"}));
  ASSERT_TRUE(c->graph) << c->diag.render();

  c = compile(kSharded, withTrain({"mesh dp = 3"}));
  EXPECT_EQ(c->errors(),
            Strs({"2:3: the global batch 8 of input 'x' is not divisible by "
                  "dp × microbatches = 3 × 1",
                  "3:3: the global batch 8 of input 'y' is not divisible by "
                  "dp × microbatches = 3 × 1"}));

  c = compile(kSharded, withTrain({"mesh dp = 2", "pipeline microbatches = "
                                                  "8"}));
  EXPECT_EQ(c->error(), "2:3: the global batch 8 of input 'x' is not "
                        "divisible by dp × microbatches = 2 × 8");
}

//===----------------------------------------------------------------------===//
// Train options
//===----------------------------------------------------------------------===//

TEST(TrainConfig, Defaults) {
  TrainConfig c;
  EXPECT_EQ(c.steps, 1000);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.pp, 1);
  EXPECT_EQ(c.zero, 0);
  EXPECT_EQ(c.microbatches, 1);
  EXPECT_EQ(c.schedule, "1f1b");
  EXPECT_EQ(c.virtualStages, 1);
  EXPECT_TRUE(c.stages.empty());
  EXPECT_EQ(c.recompute, "none");
  EXPECT_EQ(c.precision, "fp32");
  EXPECT_EQ(c.lossScale, "none");
  EXPECT_FALSE(c.lossScaleExplicit);
  EXPECT_EQ(c.lossScaleInit, 32768);
  EXPECT_EQ(c.lossScaleGrowth, 2);
  EXPECT_EQ(c.lossScaleBackoff, 0.5);
  EXPECT_EQ(c.lossScaleInterval, 1000);
  EXPECT_EQ(c.lossScaleHysteresis, 2);
  EXPECT_EQ(c.lossScaleMin, 1);
  EXPECT_EQ(c.clip, "none");
  EXPECT_EQ(c.clipMax, 0);
  EXPECT_EQ(c.clipWindow, 100);
  EXPECT_EQ(c.clipSigmas, 3);
  EXPECT_EQ(c.quantize, "none");
  EXPECT_EQ(c.quantWeights, "per_channel_symmetric");
  EXPECT_EQ(c.quantActivations, "per_tensor_affine");
  EXPECT_EQ(c.quantStart, 0);
  EXPECT_EQ(c.quantFreeze, -1);
  EXPECT_EQ(c.optimizer, "adamw");
  EXPECT_EQ(c.lr, 1e-3);
  EXPECT_EQ(c.beta1, 0.9);
  EXPECT_EQ(c.beta2, 0.999);
  EXPECT_EQ(c.eps, 1e-8);
  EXPECT_EQ(c.weightDecay, 0.01);
  EXPECT_EQ(c.momentum, 0);
  EXPECT_FALSE(c.nesterov);
  EXPECT_EQ(c.warmup, 0);
  EXPECT_EQ(c.decay, "none");
  EXPECT_EQ(c.data, "");
}

TEST(TrainConfig, ModelWithoutTrainBlockGetsDefaults) {
  auto c = compile(kMlp);
  ASSERT_TRUE(c->graph) << c->diag.render();
  const TrainConfig &t = c->graph->config;
  EXPECT_EQ(t.steps, 1000);
  EXPECT_EQ(t.optimizer, "adamw");
  EXPECT_EQ(t.lossScale, "none");
}

TEST(TrainConfig, EveryOptionInATrainBlock) {
  auto c = compile(std::string(kMlp) + R"(train Mlp {
  steps 300
  mesh dp = 2, tp = 2, pp = 2
  zero 1
  pipeline microbatches = 4, schedule = interleaved, virtual = 2, stages = [1, 2, 3]
  recompute budget = 40GiB
  precision bf16
  clip adaptive(window = 50, sigmas = 2.5, max = 10)
  optimizer adamw(lr = 3e-4, beta1 = 0.8, beta2 = 0.95, eps = 1e-6,
                  weight_decay = 0.1, warmup = 10,
                  decay = cosine(total = 300, min = 0.1))
  data "data/digits.bin"
}
)",
                   [] {
                     CompileOptions o;
                     o.baseDir = "/work/samples";
                     return o;
                   }());
  ASSERT_TRUE(c->graph) << c->diag.render();
  const TrainConfig &t = c->graph->config;
  EXPECT_EQ(t.steps, 300);
  EXPECT_EQ(t.dp, 2);
  EXPECT_EQ(t.tp, 2);
  EXPECT_EQ(t.pp, 2);
  EXPECT_EQ(t.zero, 1);
  EXPECT_EQ(t.microbatches, 4);
  EXPECT_EQ(t.schedule, "interleaved");
  EXPECT_EQ(t.virtualStages, 2);
  EXPECT_EQ(t.stages, std::vector<int64_t>({1, 2, 3}));
  EXPECT_EQ(t.recompute, "budget");
  EXPECT_EQ(t.recomputeBudget, int64_t(40) << 30);
  EXPECT_EQ(t.precision, "bf16");
  EXPECT_EQ(t.lossScale, "none"); // bf16 needs no loss scaling
  EXPECT_EQ(t.clip, "adaptive");
  EXPECT_EQ(t.clipWindow, 50);
  EXPECT_EQ(t.clipSigmas, 2.5);
  EXPECT_EQ(t.clipMax, 10);
  EXPECT_EQ(t.optimizer, "adamw");
  EXPECT_EQ(t.lr, 3e-4);
  EXPECT_EQ(t.beta1, 0.8);
  EXPECT_EQ(t.beta2, 0.95);
  EXPECT_EQ(t.eps, 1e-6);
  EXPECT_EQ(t.weightDecay, 0.1);
  EXPECT_EQ(t.warmup, 10);
  EXPECT_EQ(t.decay, "cosine");
  EXPECT_EQ(t.decayTotal, 300);
  EXPECT_EQ(t.decayMin, 0.1);
  EXPECT_EQ(t.data, "/work/samples/data/digits.bin");
}

/// Applies option texts one after the other to a fresh configuration.
struct Applied {
  TrainConfig config;
  DiagnosticEngine diag;
  bool ok = true;
};

std::unique_ptr<Applied> applyAll(std::vector<std::string> texts,
                                  bool validate = false) {
  auto a = std::make_unique<Applied>();
  for (const std::string &t : texts) {
    auto opt = parseTrainOption(a->diag.addFile("option", t), a->diag);
    a->ok &= opt && a->config.apply(*opt, "/base", a->diag);
  }
  if (validate && a->ok)
    a->ok = a->config.validate(SourceLoc{}, a->diag);
  return a;
}

TEST(TrainConfig, OptionsUpdateOnlyWhatTheyName) {
  auto a = applyAll({"pipeline microbatches = 4", "pipeline schedule = gpipe"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.microbatches, 4);
  EXPECT_EQ(a->config.schedule, "gpipe");

  a = applyAll({"optimizer adamw(lr = 0.5)", "optimizer adamw(beta1 = 0.5)"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.lr, 0.5);
  EXPECT_EQ(a->config.beta1, 0.5);
}

TEST(TrainConfig, MeshAxesNotNamedKeepTheirValue) {
  auto a = applyAll({"mesh dp = 2", "mesh tp = 2"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.dp, 2);
  EXPECT_EQ(a->config.tp, 2);
  EXPECT_EQ(a->config.pp, 1);
}

TEST(TrainConfig, ChangingTheOptimizerResetsItsDefaults) {
  auto a = applyAll({"optimizer adamw(lr = 0.5, weight_decay = 0.2)",
                     "optimizer sgd(momentum = 0.9, nesterov = true)"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.optimizer, "sgd");
  EXPECT_EQ(a->config.lr, 0.01);
  EXPECT_EQ(a->config.weightDecay, 0.0);
  EXPECT_EQ(a->config.momentum, 0.9);
  EXPECT_TRUE(a->config.nesterov);

  a = applyAll({"optimizer sgd"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.optimizer, "sgd");
}

TEST(TrainConfig, RecomputeModes) {
  auto a = applyAll({"recompute every = 2"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.recompute, "every");
  EXPECT_EQ(a->config.recomputeEvery, 2);
  a = applyAll({"recompute budget = 1.5GiB", "recompute none"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.recompute, "none");
  EXPECT_EQ(a->config.recomputeBudget, int64_t(3) << 29);
}

TEST(TrainConfig, LossScaling) {
  auto a = applyAll({"precision fp16, loss_scale = static(1024)"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.precision, "fp16");
  EXPECT_EQ(a->config.lossScale, "static");
  EXPECT_TRUE(a->config.lossScaleExplicit);
  EXPECT_EQ(a->config.lossScaleInit, 1024);

  a = applyAll({"precision loss_scale = dynamic(init = 128, growth = 4, "
                "backoff = 0.25, interval = 10, hysteresis = 3, min = 2)"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.lossScale, "dynamic");
  EXPECT_EQ(a->config.lossScaleInit, 128);
  EXPECT_EQ(a->config.lossScaleGrowth, 4);
  EXPECT_EQ(a->config.lossScaleBackoff, 0.25);
  EXPECT_EQ(a->config.lossScaleInterval, 10);
  EXPECT_EQ(a->config.lossScaleHysteresis, 3);
  EXPECT_EQ(a->config.lossScaleMin, 2);
}

TEST(TrainConfig, Fp16DefaultsToDynamicLossScaling) {
  CompileOptions o = withTrain({"precision fp16"});
  auto c = compile(kMlp, o);
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->config.lossScale, "dynamic");
  c = compile(kMlp, withTrain({"precision fp16, loss_scale = none"}));
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->config.lossScale, "none");
}

TEST(TrainConfig, ClipAndQuantize) {
  auto a = applyAll({"clip global_norm"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.clip, "global_norm");
  EXPECT_EQ(a->config.clipMax, 1.0);
  a = applyAll({"clip global_norm(max = 0.5)"});
  EXPECT_EQ(a->config.clipMax, 0.5);

  a = applyAll({"quantize qat(int8, weights = per_tensor_symmetric, "
                "activations = per_tensor_symmetric, start = 10, freeze = "
                "20)"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.quantize, "qat");
  EXPECT_EQ(a->config.quantWeights, "per_tensor_symmetric");
  EXPECT_EQ(a->config.quantActivations, "per_tensor_symmetric");
  EXPECT_EQ(a->config.quantStart, 10);
  EXPECT_EQ(a->config.quantFreeze, 20);
  a = applyAll({"quantize ptq(int8)"});
  ASSERT_TRUE(a->ok) << a->diag.render();
  EXPECT_EQ(a->config.quantize, "ptq");
}

TEST(TrainConfig, DataPathsResolveAgainstTheFile) {
  auto a = applyAll({"data \"d/x.bin\""});
  EXPECT_EQ(a->config.data, "/base/d/x.bin");
  a = applyAll({"data \"/abs/x.bin\""});
  EXPECT_EQ(a->config.data, "/abs/x.bin");
}

TEST(TrainConfig, OptionErrors) {
  struct Case {
    const char *text, *error;
  } cases[] = {
      {"stepz 10", "1:1: unknown train option 'stepz'; did you mean "
                   "'steps'?"},
      {"steps 0", "1:7: steps count must be at least 1, got 0"},
      {"steps 1.5", "1:7: steps count must be an integer, found '1.5'"},
      {"steps 1f1b", "1:7: steps count must be an integer, found '1f1b'"},
      {"steps 99999999999999999999", "1:7: steps count: integer "
                                     "'99999999999999999999' is too large"},
      {"steps", "1:1: option 'steps' needs count"},
      {"steps 1, 2", "1:10: option 'steps' takes at most 1 argument(s)"},
      {"steps counts = 1", "1:7: option 'steps' has no argument 'counts'; did "
                           "you mean 'count'?"},
      {"zero 2", "1:6: zero stage must be 0 or 1, got 2"},
      {"mesh 2", "1:6: mesh axes are named: write 'mesh dp = 2, tp = 2, pp = "
                 "1'"},
      {"mesh dp = 0", "1:11: mesh axis 'dp' must be at least 1, got 0"},
      {"mesh dq = 2", "1:6: option 'mesh' has no argument 'dq'; did you mean "
                      "'dp'?"},
      {"mesh dp = 2, dp = 4", "1:14: option 'mesh': argument 'dp' given "
                              "twice"},
      {"pipeline schedule = onef", "1:21: pipeline schedule must be one of "
                                   "gpipe, 1f1b, interleaved, zero_bubble, "
                                   "found 'onef'"},
      {"pipeline microbatches = 0", "1:25: pipeline microbatches must be at "
                                    "least 1, got 0"},
      {"pipeline stages = 4", "1:19: pipeline stages must be a list of layer "
                              "indices where stages begin, e.g. [4, 8]"},
      {"pipeline stages = [4, 2]", "1:23: pipeline stage cuts must increase"},
      {"pipeline stages = [0]", "1:20: pipeline stage cut must be at least 1, "
                                "got 0"},
      {"recompute", "1:1: recompute takes one of: none, every = N, budget = "
                    "SIZE"},
      {"recompute every = 2, budget = 1GiB", "1:1: recompute takes one of: "
                                             "none, every = N, budget = SIZE"},
      {"recompute budget = 40XB", "1:20: recompute budget '40XB' is not a "
                                  "positive size (units: B, KiB, MiB, GiB, "
                                  "TiB, KB, MB, GB, TB)"},
      {"recompute budget = lots", "1:20: recompute budget must be a size such "
                                  "as 40GiB"},
      {"recompute all", "1:11: recompute must be one of none, found 'all'"},
      {"precision fp8", "1:11: precision must be one of fp32, bf16, fp16, "
                        "found 'fp8'; did you mean 'fp32'?"},
      {"precision loss_scale = auto", "1:24: precision loss_scale must be one "
                                      "of none, static, dynamic, found "
                                      "'auto'"},
      {"precision loss_scale = static(0)", "1:31: loss_scale must be "
                                           "positive, got 0"},
      {"precision loss_scale = dynamic(growth = 1)", "1:24: loss_scale growth "
                                                     "must be greater than 1"},
      {"precision loss_scale = dynamic(backoff = 1)", "1:24: loss_scale "
                                                      "backoff must be below "
                                                      "1"},
      {"precision loss_scale = dynamic(speed = 1)", "1:32: dynamic has no "
                                                    "argument 'speed'"},
      {"clip", "1:1: option 'clip' needs method"},
      {"clip global_norm(max = 0)", "1:24: clip must be positive, got 0"},
      {"clip adaptive(window = 0)", "1:24: clip must be at least 1, got 0"},
      {"clip norm", "1:6: clip must be one of none, global_norm, adaptive, "
                    "found 'norm'; did you mean 'none'?"},
      {"quantize qat(int4)", "1:14: qat must be one of int8, found 'int4'; "
                             "did you mean 'int8'?"},
      {"quantize ptq(int8, start = 1)", "1:20: ptq has no argument "
                                        "'start'"},
      {"optimizer adam", "1:11: optimizer must be one of sgd, adamw, found "
                         "'adam'; did you mean 'adamw'?"},
      {"optimizer adamw(lr = 0)", "1:22: adamw must be positive, got 0"},
      {"optimizer adamw(momentum = 0.9)", "1:17: adamw has no argument "
                                          "'momentum'"},
      {"optimizer sgd(beta1 = 0.9)", "1:15: sgd has no argument 'beta1'"},
      {"optimizer sgd(nesterov = 1)", "1:26: sgd must be true or false"},
      {"optimizer adamw(decay = linear)", "1:25: adamw must be one of none, "
                                          "cosine, found 'linear'"},
      {"optimizer adamw(decay = cosine)", "1:25: cosine decay needs total = "
                                          "N (its horizon in steps)"},
      {"optimizer adamw(warmup = -1)", "1:27: adamw must be at least 0, got "
                                       "-1"},
      {"data 3", "1:6: data must be a non-empty quoted path"},
      {"data \"\"", "1:6: data must be a non-empty quoted path"},
  };
  for (const Case &c : cases) {
    auto a = applyAll({c.text});
    EXPECT_FALSE(a->ok) << c.text;
    EXPECT_EQ(firstError(a->diag), c.error) << c.text;
  }
}

TEST(TrainConfig, ValidationOfTheCombination) {
  struct Case {
    std::vector<std::string> texts;
    const char *error;
  } cases[] = {
      {{"optimizer adamw(beta1 = 1)"}, "-: adamw betas must lie in [0, 1)"},
      {{"optimizer sgd(momentum = -1)"},
       "-: sgd momentum must be "
       "non-negative"},
      {{"optimizer sgd(nesterov = true)"},
       "-: nesterov momentum needs "
       "momentum > 0 (as "
       "torch.optim.SGD)"},
      {{"optimizer adamw(weight_decay = -0.1)"},
       "-: weight_decay must be "
       "non-negative"},
      {{"optimizer adamw(warmup = 200, decay = cosine(total = 100))"},
       "-: cosine decay total (100) must exceed warmup (200)"},
      {{"optimizer adamw(decay = cosine(total = 100, min = 2))"},
       "-: cosine decay min is a fraction of lr in [0, 1]"},
      {{"pipeline schedule = interleaved"},
       "-: the interleaved schedule "
       "needs virtual >= 2 stages per "
       "rank"},
      {{"pipeline virtual = 2"},
       "-: virtual stages apply only to schedule = "
       "interleaved"},
      {{"mesh pp = 3", "pipeline stages = [4]"},
       "-: pipeline stages lists 1 "
       "cut(s), but pp = 3 needs 2"},
      {{"precision bf16", "quantize qat(int8)"},
       "-: quantization-aware "
       "training runs in fp32; drop "
       "precision bf16 or quantize"},
      {{"mesh dp = 1024, tp = 1024, pp = 2"},
       "-: mesh dp × tp × pp is too "
       "large"},
  };
  for (const Case &c : cases) {
    auto a = applyAll(c.texts, /*validate=*/true);
    EXPECT_FALSE(a->ok) << c.texts[0];
    EXPECT_EQ(firstError(a->diag), c.error) << c.texts[0];
  }
}

TEST(TrainConfig, ValidationErrorsPointAtTheTrainBlock) {
  auto c =
      compile(std::string(kMlp) + "train Mlp {\n  pipeline virtual = 2\n}\n");
  EXPECT_EQ(c->errors(), Strs({"12:1: virtual stages apply only to schedule "
                               "= interleaved"}));
}

TEST(TrainConfig, SetOptionText) {
  TrainConfig c;
  EXPECT_EQ(c.setOptionText("optimizer", "lr", "0.5"),
            "optimizer adamw(lr = 0.5)");
  EXPECT_EQ(c.setOptionText("clip", "max", "2"), "clip global_norm(max = 2)");
  EXPECT_EQ(c.setOptionText("quantize", "start", "5"),
            "quantize qat(start = 5)");
  EXPECT_EQ(c.setOptionText("mesh", "tp", "2"), "mesh tp = 2");
  EXPECT_EQ(c.setOptionText("pipeline", "microbatches", "4"),
            "pipeline microbatches = 4");
  EXPECT_EQ(c.setOptionText("optimizer", "method", "sgd"), "optimizer sgd");
  EXPECT_EQ(c.setOptionText("steps", "count", "7"), "steps 7");
  c.optimizer = "sgd";
  c.clip = "adaptive";
  EXPECT_EQ(c.setOptionText("optimizer", "momentum", "0.9"),
            "optimizer sgd(momentum = 0.9)");
  EXPECT_EQ(c.setOptionText("clip", "window", "5"),
            "clip adaptive(window = 5)");
}

TEST(TrainConfig, ParseByteSize) {
  int64_t b = -1;
  EXPECT_TRUE(parseByteSize("40", "GiB", b));
  EXPECT_EQ(b, int64_t(40) << 30);
  EXPECT_TRUE(parseByteSize("512", "MiB", b));
  EXPECT_EQ(b, int64_t(512) << 20);
  EXPECT_TRUE(parseByteSize("2", "GB", b));
  EXPECT_EQ(b, 2000000000);
  EXPECT_TRUE(parseByteSize("1.5", "KiB", b));
  EXPECT_EQ(b, 1536);
  EXPECT_TRUE(parseByteSize("1000000", "", b));
  EXPECT_EQ(b, 1000000);
  EXPECT_TRUE(parseByteSize("7", "B", b));
  EXPECT_EQ(b, 7);
  EXPECT_TRUE(parseByteSize("1", "TiB", b));
  EXPECT_EQ(b, int64_t(1) << 40);
  EXPECT_TRUE(parseByteSize("3", "KB", b));
  EXPECT_EQ(b, 3000);
  EXPECT_TRUE(parseByteSize("3", "MB", b));
  EXPECT_EQ(b, 3000000);
  EXPECT_TRUE(parseByteSize("3", "TB", b));
  EXPECT_EQ(b, 3000000000000);
  EXPECT_FALSE(parseByteSize("40", "XB", b));
  EXPECT_FALSE(parseByteSize("40", "gib", b));
  EXPECT_FALSE(parseByteSize("-1", "B", b));
  EXPECT_FALSE(parseByteSize("abc", "", b));
  EXPECT_FALSE(parseByteSize("10000000", "TiB", b)); // past int64
}

//===----------------------------------------------------------------------===//
// Command-line train options (loomc --mesh, --set, ...)
//===----------------------------------------------------------------------===//

TEST(TrainOverrides, FlagsOverrideTheTrainBlock) {
  CompileOptions o = withTrain({"mesh dp = 2, tp = 2", "pipeline microbatches "
                                                       "= 2"});
  o.trainOverrides.push_back({"0.5", "optimizer", "lr"});
  o.trainOverrides.push_back({"fp16", "precision", "type"});
  auto c = compile(std::string(kMlp) +
                       "train Mlp {\n  steps 300\n  mesh dp = 4\n"
                       "  optimizer adamw(lr = 1e-3, weight_decay = 0.2)\n}\n",
                   o);
  ASSERT_TRUE(c->graph) << c->diag.render();
  const TrainConfig &t = c->graph->config;
  EXPECT_EQ(t.steps, 300);
  EXPECT_EQ(t.dp, 2);
  EXPECT_EQ(t.tp, 2);
  EXPECT_EQ(t.microbatches, 2);
  EXPECT_EQ(t.lr, 0.5);
  EXPECT_EQ(t.weightDecay, 0.2); // --set changes only the named argument
  EXPECT_EQ(t.precision, "fp16");
  EXPECT_EQ(t.lossScale, "dynamic");
}

TEST(TrainOverrides, SetKeepsTheOtherMeshAxes) {
  CompileOptions o;
  o.trainOverrides.push_back({"2", "mesh", "tp"});
  auto c = compile(std::string(kMlp) + "train Mlp {\n  mesh dp = 2\n}\n", o);
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->config.dp, 2);
  EXPECT_EQ(c->graph->config.tp, 2);
}

TEST(TrainOverrides, SetFollowsTheOptimizerChosenBefore) {
  CompileOptions o;
  o.trainOverrides.push_back({"0.9", "optimizer", "momentum"});
  auto c = compile(
      std::string(kMlp) + "train Mlp {\n  optimizer sgd(lr = 0.1)\n}\n", o);
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->config.optimizer, "sgd");
  EXPECT_EQ(c->graph->config.lr, 0.1);
  EXPECT_EQ(c->graph->config.momentum, 0.9);
}

TEST(TrainOverrides, ErrorsPointIntoTheCommandLine) {
  CompileOptions o = withTrain({"mesh dp = x"});
  auto c = compile(kMlp, o);
  EXPECT_EQ(c->errors(), Strs({"1:11: mesh axis 'dp' must be an integer, "
                               "found 'x'"}));
  EXPECT_EQ(c->diag.diagnostics()[0].loc.file->name(), "command line");

  o = CompileOptions();
  o.trainOverrides.push_back({"1", "optimizer", "lrr"});
  c = compile(kMlp, o);
  EXPECT_EQ(c->errors(), Strs({"1:17: adamw has no argument 'lrr'; did you "
                               "mean 'lr'?"}));

  o = CompileOptions();
  o.trainOverrides.push_back({"1", "bogus", "x"});
  c = compile(kMlp, o);
  EXPECT_EQ(c->errors(), Strs({"1:1: unknown train option 'bogus'"}));
}

TEST(TrainOverrides, TrainBlockOfAnotherModelIsIgnoredWithModelFlag) {
  CompileOptions o;
  o.model = "Mlp";
  auto c = compile(std::string(kMlp) + "model Other { input x : f32[2] }\n"
                                       "train Other {\n  steps 5\n}\n",
                   o);
  ASSERT_TRUE(c->graph) << c->diag.render();
  EXPECT_EQ(c->graph->config.steps, 1000);
}

// A `param` is an op like any other: a repeat that declares two million
// parameters must stop at the op limit, at the declaration, before it
// exhausts memory.
TEST(SemaDeathTest, ParamsCountTowardsTheOpLimit) {
  EXPECT_EXIT(
      {
        auto c = compile("model M {\n  input x : f32[4]\n"
                         "  repeat 4096 as a { repeat 489 as b { param w : "
                         "f32[2] } }\n}\n",
                         inference());
        std::exit(c->error().rfind("3:", 0) == 0 &&
                          c->error().find("the model elaborates to more than "
                                          "2000000 ops") != std::string::npos
                      ? 0
                      : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

} // namespace
