//===- ParserTest.cpp - declarations, statements, expressions, recovery ---===//

#include "frontend/Parser.h"
#include "tests/unit/TestUtil.h"

#include "gtest/gtest.h"

#include <cstdlib>

using namespace loom::frontend;
using loom::frontend::test::errorsOf;
using loom::frontend::test::firstError;
using loom::frontend::test::notesOf;

namespace {

using Strs = std::vector<std::string>;

/// A parsed text; the file outlives the tree, whose locations point into it.
struct Parsed {
  std::unique_ptr<SourceFile> file;
  DiagnosticEngine diag;
  std::unique_ptr<Module> module;
};

std::unique_ptr<Parsed> parse(const std::string &text) {
  auto p = std::make_unique<Parsed>();
  p->file = std::make_unique<SourceFile>("test.loom", text);
  p->module = parseModule(*p->file, p->diag);
  return p;
}

/// An expression parsed alone and printed with printExpr, or the first error.
std::string expr(const std::string &text) {
  SourceFile file("expr", text);
  DiagnosticEngine diag;
  ExprPtr e = parseStandaloneExpr(file, diag);
  if (!e || diag.hasErrors())
    return "error " + firstError(diag);
  return printExpr(*e);
}

std::string nested(const std::string &open, const std::string &inner,
                   const std::string &close, int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i)
    s += open;
  s += inner;
  for (int i = 0; i < depth; ++i)
    s += close;
  return s;
}

std::string loc(SourceLoc l) {
  return std::to_string(l.line()) + ":" + std::to_string(l.col());
}

//===----------------------------------------------------------------------===//
// Files and declarations
//===----------------------------------------------------------------------===//

TEST(Parser, EmptyFileIsAnError) {
  auto p = parse("");
  EXPECT_EQ(errorsOf(p->diag),
            Strs({"1:1: empty file: expected a 'model', 'layer' or 'train' "
                  "declaration"}));
  ASSERT_TRUE(p->module);
  EXPECT_TRUE(p->module->models.empty());
}

TEST(Parser, FileOfCommentsAndBlanksIsEmpty) {
  auto p = parse("# only a comment\n  /* and a block */\n\n");
  EXPECT_EQ(errorsOf(p->diag),
            Strs({"4:1: empty file: expected a 'model', 'layer' or 'train' "
                  "declaration"}));
}

TEST(Parser, FileWithOnlyALexicalErrorReportsJustThat) {
  auto p = parse("\x01");
  EXPECT_EQ(errorsOf(p->diag), Strs({"1:1: unexpected control byte 0x01"}));
}

TEST(Parser, ModelWithEveryStatementKind) {
  auto p = parse(R"(model M(batch = 8, d) {
  input x : f32[batch, d]
  param w : f32[d, d] init normal(0.02) shard(_, tp)
  param b : f32[d] shard(tp) init zeros
  let h = x @ w + b;
  h = relu(h)
  repeat 2 as blocks {
    h = -h * 2
  }
  repeat n { }
  loss mean(h, dims = [0, 1], keepdim = false)
}
)");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  EXPECT_EQ(printAST(*p->module),
            "(model M (batch=8 d) @1:7\n"
            "  (input x f32[batch, d]) @2:3\n"
            "  (param w f32[d, d] init=(call normal 0.02) shard=(_ tp)) @3:3\n"
            "  (param b f32[d] init=zeros shard=(tp)) @4:3\n"
            "  (let h (+ (@ x w) b)) @5:3\n"
            "  (assign h (call relu h)) @6:3\n"
            "  (repeat 2 as blocks @7:3\n"
            "    (assign h (* (neg h) 2)) @8:5\n"
            "  ) @7:3\n"
            "  (repeat n @10:3\n"
            "  ) @10:3\n"
            "  (loss (call mean h dims=[0, 1] keepdim=false)) @11:3\n"
            ")\n");

  const ModelDecl &m = *p->module->models.at(0);
  EXPECT_EQ(m.name, "M");
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.params[0].name, "batch");
  ASSERT_TRUE(m.params[0].defaultValue);
  EXPECT_EQ(m.params[1].name, "d");
  EXPECT_FALSE(m.params[1].defaultValue);

  ASSERT_EQ(m.body.size(), 8u);
  const Stmt &w = *m.body[1];
  EXPECT_EQ(w.kind, Stmt::Param);
  EXPECT_EQ(w.name, "w");
  EXPECT_EQ(loc(w.nameLoc), "3:9");
  EXPECT_EQ(w.type.dtype, "f32");
  EXPECT_EQ(w.type.dims.size(), 2u);
  EXPECT_TRUE(w.hasShard);
  EXPECT_EQ(loc(w.shardLoc), "3:41");
  ASSERT_EQ(w.shard.size(), 2u);
  EXPECT_EQ(w.shard[0].first, "_");
  EXPECT_EQ(w.shard[1].first, "tp");
  EXPECT_EQ(loc(w.shard[1].second), "3:50");

  const Stmt &rep = *m.body[5];
  EXPECT_EQ(rep.kind, Stmt::Repeat);
  EXPECT_EQ(rep.name, "blocks");
  EXPECT_EQ(rep.body.size(), 1u);
  EXPECT_EQ(m.body[6]->name, ""); // `repeat n` has no alias
  EXPECT_TRUE(m.body[6]->body.empty());
  EXPECT_EQ(m.body[7]->kind, Stmt::Loss);
}

TEST(Parser, LayerDeclaration) {
  auto p = parse(R"(layer Dense(out, scale = 1) {
  param w : f32[4, out] init glorot;
  fn(x, y) {
    let h = x @ w
    return h
  }
})");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  const LayerDecl &l = *p->module->layers.at(0);
  EXPECT_EQ(l.name, "Dense");
  EXPECT_EQ(loc(l.loc), "1:7");
  ASSERT_EQ(l.params.size(), 2u);
  EXPECT_EQ(l.params[1].name, "scale");
  EXPECT_EQ(l.decls.size(), 1u);
  EXPECT_TRUE(l.hasFn);
  EXPECT_EQ(loc(l.fnLoc), "3:3");
  ASSERT_EQ(l.fnArgs.size(), 2u);
  EXPECT_EQ(l.fnArgs[0].first, "x");
  EXPECT_EQ(l.fnArgs[1].first, "y");
  EXPECT_EQ(loc(l.fnArgs[1].second), "3:9");
  ASSERT_EQ(l.fnBody.size(), 2u);
  EXPECT_EQ(l.fnBody[1]->kind, Stmt::Return);
  EXPECT_EQ(printAST(*p->module), "(layer Dense (out scale=1) @1:7\n"
                                  "  (param w f32[4, out] init=glorot) @2:3\n"
                                  "  (fn (x y)\n"
                                  "    (let h (@ x w)) @4:5\n"
                                  "    (return h) @5:5\n"
                                  "  ))\n");
}

TEST(Parser, LayerWithoutHeaderOrFn) {
  auto p = parse("layer Empty { param w : f32[2] }");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  const LayerDecl &l = *p->module->layers.at(0);
  EXPECT_TRUE(l.params.empty());
  EXPECT_FALSE(l.hasFn);
  EXPECT_TRUE(l.fnArgs.empty());
}

TEST(Parser, FnWithoutArguments) {
  auto p = parse("layer L { fn() { return 1 } }");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  EXPECT_TRUE(p->module->layers.at(0)->fnArgs.empty());
}

TEST(Parser, TrainBlock) {
  auto p = parse(R"(train M {
  steps 100
  mesh dp = 2, tp = 2
  optimizer adamw(lr = 1e-3, decay = cosine(total = 10))
  recompute budget = 40GiB
  pipeline microbatches = 4, schedule = 1f1b;
  data "x.bin"
})");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  EXPECT_EQ(printAST(*p->module),
            "(train M @1:1\n"
            "  (steps 100)\n"
            "  (mesh dp=2 tp=2)\n"
            "  (optimizer (call adamw lr=1e-3 decay=(call cosine total=10)))\n"
            "  (recompute budget=40GiB)\n"
            "  (pipeline microbatches=4 schedule=1f1b)\n"
            "  (data \"x.bin\")\n"
            ")\n");
  const TrainDecl &t = *p->module->trains.at(0);
  EXPECT_EQ(t.model, "M");
  EXPECT_EQ(loc(t.modelLoc), "1:7");
  ASSERT_EQ(t.options.size(), 6u);
  EXPECT_EQ(t.options[1].name, "mesh");
  EXPECT_EQ(loc(t.options[1].loc), "3:3");
  ASSERT_EQ(t.options[1].args.size(), 2u);
  EXPECT_EQ(t.options[1].args[1].name, "tp");
  EXPECT_EQ(loc(t.options[1].args[1].nameLoc), "3:16");
  EXPECT_EQ(t.options[0].args.at(0).name, ""); // positional
}

TEST(Parser, SeveralDeclarationsInOneFile) {
  auto p = parse("layer A { fn(x) { return x } }\n"
                 "model B { input x : f32[1] }\n"
                 "model C { input x : f32[1] }\n"
                 "train B { steps 1 }\n");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  EXPECT_EQ(p->module->layers.size(), 1u);
  EXPECT_EQ(p->module->models.size(), 2u);
  EXPECT_EQ(p->module->trains.size(), 1u);
}

//===----------------------------------------------------------------------===//
// Expressions
//===----------------------------------------------------------------------===//

TEST(Parser, OperatorPrecedence) {
  // `@` binds like `*` and `/`, tighter than `+` and `-`, all left to right.
  EXPECT_EQ(expr("a + b @ c * d"), "(+ a (* (@ b c) d))");
  EXPECT_EQ(expr("a @ b + c"), "(+ (@ a b) c)");
  EXPECT_EQ(expr("a * b @ c"), "(@ (* a b) c)");
  EXPECT_EQ(expr("a - b - c"), "(- (- a b) c)");
  EXPECT_EQ(expr("a / b * c"), "(* (/ a b) c)");
  EXPECT_EQ(expr("a - b * c + d"), "(+ (- a (* b c)) d)");
  EXPECT_EQ(expr("(a + b) * c"), "(* (+ a b) c)");
  EXPECT_EQ(expr("((a))"), "a");
}

TEST(Parser, UnaryMinus) {
  EXPECT_EQ(expr("-a @ b"), "(@ (neg a) b)");
  EXPECT_EQ(expr("--a"), "(neg (neg a))");
  EXPECT_EQ(expr("a * -b"), "(* a (neg b))");
  EXPECT_EQ(expr("-f(x)"), "(neg (call f x))");
  EXPECT_EQ(expr("-1"), "(neg 1)");
}

TEST(Parser, CallsAndKeywordArguments) {
  EXPECT_EQ(expr("f()"), "(call f)");
  EXPECT_EQ(expr("f(a, k = 1, m = [1, 2])"), "(call f a k=1 m=[1, 2])");
  EXPECT_EQ(expr("f(x)(y)"), "(call (call f x) y)");
  EXPECT_EQ(expr("Dense(4, scale = 2)(x + 1)"),
            "(call (call Dense 4 scale=2) (+ x 1))");
  EXPECT_EQ(expr("f(g(h(x)))"), "(call f (call g (call h x)))");
}

TEST(Parser, Literals) {
  EXPECT_EQ(expr("42"), "42");
  EXPECT_EQ(expr("3e-4"), "3e-4");
  EXPECT_EQ(expr("40GiB"), "40GiB");
  EXPECT_EQ(expr("1f1b"), "1f1b");
  EXPECT_EQ(expr("true"), "true");
  EXPECT_EQ(expr("false"), "false");
  EXPECT_EQ(expr(R"("a\"b\\c\nd")"), R"("a\"b\\c\nd")");
}

TEST(Parser, Lists) {
  EXPECT_EQ(expr("[]"), "[]");
  EXPECT_EQ(expr("[1, [2, 3], [], x + 1]"), "[1, [2, 3], [], (+ x 1)]");
}

TEST(Parser, ExpressionErrors) {
  EXPECT_EQ(expr(""), "error 1:1: expected an expression, found end of file");
  EXPECT_EQ(expr("a +"),
            "error 1:4: expected an expression, found end of file");
  EXPECT_EQ(expr("f(a"),
            "error 1:4: expected ')' to close the call, found end of file");
  EXPECT_EQ(expr("f(a b)"),
            "error 1:5: expected ')' to close the call, found identifier 'b'");
  EXPECT_EQ(expr("(a"),
            "error 1:3: expected ')' to close the parenthesis, found end of "
            "file");
  EXPECT_EQ(expr("[1, 2"),
            "error 1:6: expected ']' to close the list, found end of file");
  EXPECT_EQ(expr("1 2"), "error 1:3: unexpected number '2' after value");
  EXPECT_EQ(expr("a )"), "error 1:3: unexpected ')' after value");
  EXPECT_EQ(expr("* a"), "error 1:1: expected an expression, found '*'");
  EXPECT_EQ(expr("model"), "error 1:1: expected an expression, found 'model'");
  EXPECT_EQ(expr("\"s"), "error 1:1: unterminated string literal");
}

//===----------------------------------------------------------------------===//
// Nesting limits: deep input is an error, never a stack overflow
//===----------------------------------------------------------------------===//

TEST(Parser, ParenthesesUpToTheLimitAreAccepted) {
  EXPECT_EQ(expr(nested("(", "a", ")", kMaxNesting)), "a");
}

TEST(Parser, ParenthesesPastTheLimitAreAnError) {
  EXPECT_EQ(expr(nested("(", "a", ")", kMaxNesting + 1)),
            "error 1:130: expression is nested too deeply (more than 128 "
            "levels)");
}

TEST(Parser, TenThousandNestedParentheses) {
  SourceFile file("deep", nested("(", "a", ")", 10000));
  DiagnosticEngine diag;
  EXPECT_FALSE(parseStandaloneExpr(file, diag));
  EXPECT_EQ(errorsOf(diag),
            Strs({"1:130: expression is nested too deeply (more than 128 "
                  "levels)"}));
}

TEST(Parser, TenThousandNestedListsCallsAndMinuses) {
  EXPECT_EQ(expr(nested("[", "1", "]", 10000)),
            "error 1:130: expression is nested too deeply (more than 128 "
            "levels)");
  EXPECT_EQ(expr(nested("f(", "1", ")", 10000)),
            "error 1:130: expression is nested too deeply");
  EXPECT_EQ(expr(std::string(10000, '-') + "x"),
            "error 1:130: expression is nested too deeply");
}

TEST(Parser, DeepNestingInsideAModelRecovers) {
  auto p = parse("model M {\n  let a = " + nested("(", "1", ")", 10000) +
                 "\n  let b = 1 +\n  let c = 2\n}\nmodel N { }");
  EXPECT_EQ(errorsOf(p->diag),
            Strs({"2:140: expression is nested too deeply (more than 128 "
                  "levels)",
                  "4:3: expected an expression, found 'let'"}));
  EXPECT_EQ(p->module->models.size(), 2u);
}

TEST(Parser, NestedRepeatBlocksPastTheLimit) {
  std::string body = "model M {\n";
  for (unsigned i = 0; i < 200; ++i)
    body += "repeat 1 as r {\n";
  body += std::string(200, '}') + "\n}\n";
  auto p = parse(body);
  EXPECT_EQ(firstError(p->diag),
            "131:1: blocks are nested too deeply (more than 128 levels)");
}

TEST(Parser, NestedRepeatBlocksUpToTheLimit) {
  std::string body = "model M {\n";
  for (unsigned i = 0; i < kMaxNesting; ++i)
    body += "repeat 1 as r {\n";
  body += std::string(kMaxNesting, '}') + "\n}\n";
  auto p = parse(body);
  EXPECT_FALSE(p->diag.hasErrors()) << firstError(p->diag);
}

// A flat chain of binary operators is as deep as it is long for every
// later walk of the tree (printing, elaboration, destruction), so the parser
// stops it at kMaxExprDepth with a clear error: 100000 terms (a 400 KB file)
// must end in that error, not a stack overflow.
TEST(ParserDeathTest, LongOperatorChainDoesNotOverflowTheStack) {
  std::string chain = "x";
  for (int i = 0; i < 100000; ++i)
    chain += " + x";
  EXPECT_EXIT(
      {
        auto p = parse("model M {\n  let y = " + chain + "\n}\n");
        std::exit(firstError(p->diag).find("expression is too long") !=
                          std::string::npos
                      ? 0
                      : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

// A chain just inside the limit parses and prints.
TEST(Parser, ChainAtTheDepthLimitParses) {
  std::string chain = "x";
  for (unsigned i = 0; i + 2 < kMaxExprDepth; ++i)
    chain += " + x";
  auto p = parse("model M {\n  let y = " + chain + "\n}\n");
  EXPECT_FALSE(p->diag.hasErrors()) << firstError(p->diag);
  EXPECT_GT(printAST(*p->module).size(), 2000u);
}

TEST(Parser, RecoveryReportsSeveralErrors) {
  auto p = parse(R"(model A {
  input x : f32[4]
  let = 3
  let y = )
  input z f32[4]
  let ok = x
}
model B { 42 }
layer C { fn(x) { return + } }
)");
  EXPECT_EQ(errorsOf(p->diag),
            Strs({"3:7: expected a name after 'let', found '='",
                  "4:11: expected an expression, found ')'",
                  "5:11: expected ':' before the input's type, found "
                  "identifier 'f32'",
                  "8:11: expected a statement (input, param, let, loss, "
                  "repeat or NAME = ...), found number '42'",
                  "9:26: expected an expression, found '+'"}));
  // Every declaration survives, with the statements that parsed.
  ASSERT_EQ(p->module->models.size(), 2u);
  EXPECT_EQ(p->module->models[0]->body.size(), 2u); // x and ok
  EXPECT_EQ(p->module->layers.size(), 1u);
}

TEST(Parser, TopLevelJunkIsSkipped) {
  auto p = parse("foo bar { baz }\nmodel M { input x : f32[1] }");
  EXPECT_EQ(errorsOf(p->diag),
            Strs({"1:1: expected 'model', 'layer' or 'train' at top level, "
                  "found identifier 'foo'"}));
  EXPECT_EQ(p->module->models.size(), 1u);
}

TEST(Parser, StopsAfterTooManyErrors) {
  std::string text = "model M {\n";
  for (int i = 0; i < 30; ++i)
    text += "  let = 1\n";
  text += "}\n";
  auto p = parse(text);
  EXPECT_EQ(p->diag.numErrors(), DiagnosticEngine::kMaxErrors);
  EXPECT_EQ(p->diag.diagnostics().back().message,
            "too many errors; stopping after 20");
}

TEST(Parser, DeclarationErrors) {
  struct Case {
    const char *text, *error;
  } cases[] = {
      {"model { }", "1:7: expected a name for the model, found '{'"},
      {"model M input", "1:9: expected '{' to open the model body, found "
                        "'input'"},
      {"model M(1) { }", "1:9: expected a name for a parameter, found number "
                         "'1'"},
      {"model M(a b) { }", "1:11: expected ')' to close the parameter list, "
                           "found identifier 'b'"},
      {"model M(a = ) { }", "1:13: expected an expression, found ')'"},
      {"model M { input x : f32[1]", "1:27: expected '}' to close the block, "
                                     "found end of file"},
      {"layer { }", "1:7: expected a name for the layer, found '{'"},
      {"layer L fn", "1:9: expected '{' to open the layer body, found 'fn'"},
      {"layer L { let x = 1 }", "1:11: expected 'param' or 'fn' in layer 'L', "
                                "found 'let'"},
      {"layer L { fn x }", "1:14: expected '(' after 'fn', found identifier "
                           "'x'"},
      {"layer L { fn(1) { } }", "1:14: expected a name for an fn argument, "
                                "found number '1'"},
      {"layer L { fn(x { } }", "1:16: expected ')' to close fn's arguments, "
                               "found '{'"},
      {"layer L { fn(x) return }", "1:17: expected '{' to open fn's body, "
                                   "found 'return'"},
      {"layer L { fn(x) { return x }", "1:29: expected '}' to close the "
                                       "layer, found end of file"},
      {"train { }", "1:7: expected a name of the model to train, found '{'"},
      {"train M steps", "1:9: expected '{' to open the train block, found "
                        "identifier 'steps'"},
      {"train M { 5 }", "1:11: expected a name of a train option, found "
                        "number '5'"},
      {"train M { steps 1", "1:18: expected '}' to close the train block, "
                            "found end of file"},
  };
  for (const Case &c : cases) {
    auto p = parse(c.text);
    EXPECT_EQ(firstError(p->diag), c.error) << c.text;
  }
}

TEST(Parser, StatementErrors) {
  struct Case {
    const char *body, *error;
  } cases[] = {
      {"input x f32[4]", "2:11: expected ':' before the input's type, found "
                         "identifier 'f32'"},
      {"input : f32[4]", "2:9: expected a name for the input, found ':'"},
      {"param w f32[4]", "2:11: expected ':' before the parameter's type, "
                         "found identifier 'f32'"},
      {"param w : [4]", "2:13: expected a name of an element type (f32, i32, "
                        "...), found '['"},
      {"param w : f32 4", "2:17: expected '[' to open the shape, found number "
                          "'4'"},
      {"param w : f32[4 init ones", "2:19: expected ']' to close the shape, "
                                    "found 'init'"},
      {"param w : f32[4] shard _", "2:26: expected '(' after 'shard', found "
                                   "identifier '_'"},
      {"param w : f32[4] shard(1)", "2:26: expected a name of a mesh axis (or "
                                    "'_'), found number '1'"},
      {"param w : f32[4] shard(tp", "3:1: expected ')' to close 'shard', "
                                    "found '}'"},
      {"param w : f32[4] init", "3:1: expected an expression, found '}'"},
      {"let x 1", "2:9: expected '=' in 'let', found number '1'"},
      {"let 1 = 2", "2:7: expected a name after 'let', found number '1'"},
      {"repeat 2 as { }", "2:15: expected a name after 'as', found '{'"},
      {"repeat 2 x { }", "2:12: expected '{' to open the repeat body, found "
                         "identifier 'x'"},
      {"repeat { }", "2:10: expected an expression, found '{'"},
      {"loss", "3:1: expected an expression, found '}'"},
      {"x + 1", "2:3: expected a statement (input, param, let, loss, repeat "
                "or NAME = ...), found identifier 'x'"},
      {"fn(x) { }", "2:3: expected a statement (input, param, let, loss, "
                    "repeat or NAME = ...), found 'fn'"},
  };
  for (const Case &c : cases) {
    auto p = parse(std::string("model M {\n  ") + c.body + "\n}");
    EXPECT_EQ(firstError(p->diag), c.error) << c.body;
  }
}

TEST(Parser, StatementErrorInsideFnNamesFnStatements) {
  auto p = parse("layer L { fn(x) { 3 } }");
  EXPECT_EQ(firstError(p->diag),
            "1:19: expected a statement (let, return, repeat or NAME = ...), "
            "found number '3'");
}

TEST(Parser, SecondFnInALayer) {
  auto p = parse("layer L {\n  fn(x) { return x }\n  fn(y) { return y }\n}");
  EXPECT_EQ(errorsOf(p->diag), Strs({"3:3: layer 'L' already has an fn"}));
  EXPECT_EQ(notesOf(p->diag), Strs({"2:3: the first fn is here"}));
}

TEST(Parser, ParamInitAndShardInEitherOrder) {
  auto p = parse("model M {\n"
                 "  param a : f32[4, 4] shard(_, tp) init ones\n"
                 "  param b : f32[4, 4] init uniform(-1, 1) shard(dp, _)\n"
                 "}");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  const auto &body = p->module->models[0]->body;
  EXPECT_EQ(printExpr(*body[0]->init), "ones");
  EXPECT_EQ(body[0]->shard.size(), 2u);
  EXPECT_EQ(printExpr(*body[1]->init), "(call uniform (neg 1) 1)");
  EXPECT_EQ(body[1]->shard[0].first, "dp");
}

TEST(Parser, EmptyShapeIsAScalar) {
  auto p = parse("model M { input s : f32[] }");
  ASSERT_FALSE(p->diag.hasErrors()) << p->diag.render();
  EXPECT_TRUE(p->module->models[0]->body[0]->type.dims.empty());
}

//===----------------------------------------------------------------------===//
// Train options from the command line
//===----------------------------------------------------------------------===//

struct OptionParse {
  std::optional<TrainOption> opt;
  std::string error;
};

OptionParse option(const std::string &text) {
  SourceFile file("command line", text);
  DiagnosticEngine diag;
  OptionParse r;
  r.opt = parseTrainOption(file, diag);
  r.error = firstError(diag);
  return r;
}

TEST(Parser, TrainOptionText) {
  OptionParse r = option("mesh dp = 2, tp = 4");
  ASSERT_TRUE(r.opt) << r.error;
  EXPECT_EQ(r.opt->name, "mesh");
  ASSERT_EQ(r.opt->args.size(), 2u);
  EXPECT_EQ(r.opt->args[0].name, "dp");
  EXPECT_EQ(printExpr(*r.opt->args[1].value), "4");

  r = option("optimizer sgd(lr = 0.1, nesterov = true)");
  ASSERT_TRUE(r.opt) << r.error;
  EXPECT_EQ(printExpr(*r.opt->args.at(0).value),
            "(call sgd lr=0.1 nesterov=true)");

  r = option("pipeline stages = [4, 8]");
  ASSERT_TRUE(r.opt) << r.error;
  EXPECT_EQ(printExpr(*r.opt->args.at(0).value), "[4, 8]");

  r = option("precision");
  ASSERT_TRUE(r.opt) << r.error;
  EXPECT_TRUE(r.opt->args.empty());
}

TEST(Parser, TrainOptionTextErrors) {
  EXPECT_EQ(option("steps 100 5").error,
            "1:11: unexpected number '5' after the option's arguments");
  EXPECT_EQ(option("123").error,
            "1:1: expected a name of a train option, found number '123'");
  EXPECT_EQ(option("mesh dp = ").error,
            "1:11: expected an expression, found end of file");
  EXPECT_FALSE(option("").opt);
}

} // namespace
