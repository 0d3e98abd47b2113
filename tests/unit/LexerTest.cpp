//===- LexerTest.cpp - tokens, lexical errors and diagnostics rendering ---===//

#include "frontend/Lexer.h"
#include "tests/unit/TestUtil.h"

#include "gtest/gtest.h"

using namespace loom::frontend;
using loom::frontend::test::errorsOf;
using loom::frontend::test::firstError;

using Toks = std::vector<Tok>;
using Strs = std::vector<std::string>;

namespace {

/// A lexed text. The file outlives the tokens, whose locations point into it.
struct Lexed {
  std::unique_ptr<SourceFile> file;
  DiagnosticEngine diag;
  std::vector<Token> toks;

  std::vector<Tok> kinds() const {
    std::vector<Tok> out;
    for (const Token &t : toks)
      out.push_back(t.kind);
    return out;
  }
  /// "line:col" of token i.
  std::string at(size_t i) const {
    return std::to_string(toks[i].loc.line()) + ":" +
           std::to_string(toks[i].loc.col());
  }
};

std::unique_ptr<Lexed> lexText(const std::string &text) {
  auto l = std::make_unique<Lexed>();
  l->file = std::make_unique<SourceFile>("test.loom", text);
  l->toks = lex(*l->file, l->diag);
  return l;
}

//===----------------------------------------------------------------------===//
// Token kinds
//===----------------------------------------------------------------------===//

TEST(Lexer, EmptyInputIsJustEof) {
  auto l = lexText("");
  EXPECT_EQ(l->kinds(), Toks({Tok::Eof}));
  EXPECT_EQ(l->at(0), "1:1");
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, EveryKeyword) {
  auto l = lexText("model layer fn input param let return loss repeat train "
                   "init shard as true false");
  EXPECT_EQ(l->kinds(),
            Toks({Tok::KwModel, Tok::KwLayer, Tok::KwFn, Tok::KwInput,
                  Tok::KwParam, Tok::KwLet, Tok::KwReturn, Tok::KwLoss,
                  Tok::KwRepeat, Tok::KwTrain, Tok::KwInit, Tok::KwShard,
                  Tok::KwAs, Tok::KwTrue, Tok::KwFalse, Tok::Eof}));
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, EveryPunctuator) {
  auto l = lexText("( ) { } [ ] , : ; = @ + - * /");
  EXPECT_EQ(
      l->kinds(),
      Toks({Tok::LParen, Tok::RParen, Tok::LBrace, Tok::RBrace, Tok::LBracket,
            Tok::RBracket, Tok::Comma, Tok::Colon, Tok::Semi, Tok::Equal,
            Tok::At, Tok::Plus, Tok::Minus, Tok::Star, Tok::Slash, Tok::Eof}));
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, PunctuatorsNeedNoSpaces) {
  auto l = lexText("f(x@w+b)*-2/y;");
  EXPECT_EQ(l->kinds(),
            Toks({Tok::Ident, Tok::LParen, Tok::Ident, Tok::At, Tok::Ident,
                  Tok::Plus, Tok::Ident, Tok::RParen, Tok::Star, Tok::Minus,
                  Tok::Int, Tok::Slash, Tok::Ident, Tok::Semi, Tok::Eof}));
}

TEST(Lexer, IdentifiersContainingKeywordsAreIdentifiers) {
  auto l = lexText("models _x x1 Model layer_norm fn2 __");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Ident, Tok::Ident, Tok::Ident,
                              Tok::Ident, Tok::Ident, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "models");
  EXPECT_EQ(l->toks[1].text, "_x");
  EXPECT_EQ(l->toks[2].text, "x1");
  EXPECT_EQ(l->toks[3].text, "Model");
  EXPECT_EQ(l->toks[4].text, "layer_norm");
  EXPECT_EQ(l->toks[5].text, "fn2");
  EXPECT_EQ(l->toks[6].text, "__");
}

TEST(Lexer, TokNameSpellsEveryKind) {
  EXPECT_STREQ(tokName(Tok::Eof), "end of file");
  EXPECT_STREQ(tokName(Tok::Ident), "identifier");
  EXPECT_STREQ(tokName(Tok::Int), "integer");
  EXPECT_STREQ(tokName(Tok::Float), "number");
  EXPECT_STREQ(tokName(Tok::String), "string");
  EXPECT_STREQ(tokName(Tok::KwModel), "'model'");
  EXPECT_STREQ(tokName(Tok::KwLayer), "'layer'");
  EXPECT_STREQ(tokName(Tok::KwFn), "'fn'");
  EXPECT_STREQ(tokName(Tok::KwInput), "'input'");
  EXPECT_STREQ(tokName(Tok::KwParam), "'param'");
  EXPECT_STREQ(tokName(Tok::KwLet), "'let'");
  EXPECT_STREQ(tokName(Tok::KwReturn), "'return'");
  EXPECT_STREQ(tokName(Tok::KwLoss), "'loss'");
  EXPECT_STREQ(tokName(Tok::KwRepeat), "'repeat'");
  EXPECT_STREQ(tokName(Tok::KwTrain), "'train'");
  EXPECT_STREQ(tokName(Tok::KwInit), "'init'");
  EXPECT_STREQ(tokName(Tok::KwShard), "'shard'");
  EXPECT_STREQ(tokName(Tok::KwAs), "'as'");
  EXPECT_STREQ(tokName(Tok::KwTrue), "'true'");
  EXPECT_STREQ(tokName(Tok::KwFalse), "'false'");
  EXPECT_STREQ(tokName(Tok::LParen), "'('");
  EXPECT_STREQ(tokName(Tok::RParen), "')'");
  EXPECT_STREQ(tokName(Tok::LBrace), "'{'");
  EXPECT_STREQ(tokName(Tok::RBrace), "'}'");
  EXPECT_STREQ(tokName(Tok::LBracket), "'['");
  EXPECT_STREQ(tokName(Tok::RBracket), "']'");
  EXPECT_STREQ(tokName(Tok::Comma), "','");
  EXPECT_STREQ(tokName(Tok::Colon), "':'");
  EXPECT_STREQ(tokName(Tok::Semi), "';'");
  EXPECT_STREQ(tokName(Tok::Equal), "'='");
  EXPECT_STREQ(tokName(Tok::At), "'@'");
  EXPECT_STREQ(tokName(Tok::Plus), "'+'");
  EXPECT_STREQ(tokName(Tok::Minus), "'-'");
  EXPECT_STREQ(tokName(Tok::Star), "'*'");
  EXPECT_STREQ(tokName(Tok::Slash), "'/'");
  EXPECT_STREQ(tokName(Tok::Error), "invalid token");
}

TEST(Lexer, LocationsAreOneBasedLinesAndByteColumns) {
  auto l = lexText("model M {\n  input x\n}");
  ASSERT_EQ(l->toks.size(), 7u);
  EXPECT_EQ(l->at(0), "1:1");
  EXPECT_EQ(l->at(1), "1:7");
  EXPECT_EQ(l->at(2), "1:9");
  EXPECT_EQ(l->at(3), "2:3");
  EXPECT_EQ(l->at(4), "2:9");
  EXPECT_EQ(l->at(5), "3:1");
  EXPECT_EQ(l->at(6), "3:2"); // Eof sits just past the last byte.
}

TEST(Lexer, TabsAndCarriageReturnsAreWhitespace) {
  auto l = lexText("a\r\n\tb\rc");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Ident, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(l->at(1), "2:2");
  EXPECT_FALSE(l->diag.hasErrors());
}

//===----------------------------------------------------------------------===//
// Numbers
//===----------------------------------------------------------------------===//

TEST(Lexer, Integers) {
  auto l = lexText("0 42 007 123456789012");
  EXPECT_EQ(l->kinds(),
            Toks({Tok::Int, Tok::Int, Tok::Int, Tok::Int, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "0");
  EXPECT_EQ(l->toks[1].text, "42");
  EXPECT_EQ(l->toks[2].text, "007");
  EXPECT_EQ(l->toks[3].text, "123456789012");
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(l->toks[i].suffix, "");
}

TEST(Lexer, FloatsWithFractionsAndExponents) {
  auto l = lexText("0.5 .5 3e-4 1E+3 2.5e10 7e0 1.");
  std::vector<std::string> texts = {"0.5",    ".5",  "3e-4", "1E+3",
                                    "2.5e10", "7e0", "1."};
  ASSERT_EQ(l->toks.size(), texts.size() + 1);
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(l->toks[i].kind, Tok::Float) << texts[i];
    EXPECT_EQ(l->toks[i].text, texts[i]);
    EXPECT_EQ(l->toks[i].suffix, "");
  }
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, UnitSuffixesStayOnTheNumber) {
  auto l = lexText("40GiB 512MiB 1f1b 1.5GiB 1e3x");
  EXPECT_EQ(l->kinds(), Toks({Tok::Int, Tok::Int, Tok::Int, Tok::Float,
                              Tok::Float, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "40");
  EXPECT_EQ(l->toks[0].suffix, "GiB");
  EXPECT_EQ(l->toks[1].text, "512");
  EXPECT_EQ(l->toks[1].suffix, "MiB");
  EXPECT_EQ(l->toks[2].text, "1");
  EXPECT_EQ(l->toks[2].suffix, "f1b");
  EXPECT_EQ(l->toks[3].text, "1.5");
  EXPECT_EQ(l->toks[3].suffix, "GiB");
  EXPECT_EQ(l->toks[4].text, "1e3");
  EXPECT_EQ(l->toks[4].suffix, "x");
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, AnExponentNeedsDigits) {
  // "1e" and "3ex" are integers with a suffix; "2e+" leaves the '+'.
  auto l = lexText("1e 3ex 2e+");
  EXPECT_EQ(l->kinds(),
            Toks({Tok::Int, Tok::Int, Tok::Int, Tok::Plus, Tok::Eof}));
  EXPECT_EQ(l->toks[0].suffix, "e");
  EXPECT_EQ(l->toks[1].suffix, "ex");
  EXPECT_EQ(l->toks[2].text, "2");
  EXPECT_EQ(l->toks[2].suffix, "e");
}

TEST(Lexer, DotBeforeALetterIsNotAFraction) {
  auto l = lexText("1.e");
  EXPECT_EQ(l->kinds(), Toks({Tok::Int, Tok::Error, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:2: unexpected character '.'"}));
}

TEST(Lexer, NumericLiteralOf64DigitsIsAccepted) {
  auto l = lexText(std::string(64, '9'));
  EXPECT_EQ(l->kinds(), Toks({Tok::Int, Tok::Eof}));
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, NumericLiteralOver64DigitsIsAnError) {
  auto l = lexText("x " + std::string(65, '1') + " y");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Error, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:3: numeric literal is too long"}));
}

//===----------------------------------------------------------------------===//
// Strings
//===----------------------------------------------------------------------===//

TEST(Lexer, StringEscapesAreResolved) {
  auto l = lexText(R"("a\"b\\c\nd\te")");
  EXPECT_EQ(l->kinds(), Toks({Tok::String, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "a\"b\\c\nd\te");
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, EmptyString) {
  auto l = lexText(R"("")");
  EXPECT_EQ(l->kinds(), Toks({Tok::String, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "");
}

TEST(Lexer, StringsKeepUtf8) {
  auto l = lexText("\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\"");
  EXPECT_EQ(l->kinds(), Toks({Tok::String, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80");
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, UnknownEscapeIsReportedAtTheBackslash) {
  auto l = lexText(R"(x = "a\qb")");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:7: unknown escape sequence '\\q'"}));
  // The string itself survives, without the bad escape.
  EXPECT_EQ(l->toks[2].kind, Tok::String);
  EXPECT_EQ(l->toks[2].text, "ab");
}

TEST(Lexer, UnprintableEscapeIsShownAsQuestionMark) {
  auto l = lexText("\"\\\x01\"");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:2: unknown escape sequence '\\?'"}));
}

TEST(Lexer, UnterminatedStringAtEndOfFile) {
  auto l = lexText("let s = \"abc");
  EXPECT_EQ(l->kinds(),
            Toks({Tok::KwLet, Tok::Ident, Tok::Equal, Tok::Error, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:9: unterminated string literal"}));
}

TEST(Lexer, UnterminatedStringStopsAtTheNewline) {
  auto l = lexText("\"abc\nnext");
  EXPECT_EQ(l->kinds(), Toks({Tok::Error, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(l->at(1), "2:1");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:1: unterminated string literal"}));
}

TEST(Lexer, BackslashAtEndOfFileLeavesTheStringUnterminated) {
  auto l = lexText("\"abc\\");
  EXPECT_EQ(l->kinds(), Toks({Tok::Error, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:1: unterminated string literal"}));
}

//===----------------------------------------------------------------------===//
// Comments
//===----------------------------------------------------------------------===//

TEST(Lexer, LineCommentsOfBothKinds) {
  auto l = lexText("a # hash comment ( {\nb // slash comment \"\nc#tail");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Ident, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(l->at(1), "2:1");
  EXPECT_EQ(l->at(2), "3:1");
  EXPECT_EQ(l->toks[2].text, "c");
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, BlockCommentsSpanLines) {
  auto l = lexText("a /* one\n two */ b/**/c");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Ident, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(l->at(1), "2:9");
  EXPECT_FALSE(l->diag.hasErrors());
}

TEST(Lexer, BlockCommentsDoNotNest) {
  auto l = lexText("/* outer /* inner */ c */");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Star, Tok::Slash, Tok::Eof}));
}

TEST(Lexer, CommentMarkersInsideStringsAreText) {
  auto l = lexText(R"("# // /* */")");
  EXPECT_EQ(l->kinds(), Toks({Tok::String, Tok::Eof}));
  EXPECT_EQ(l->toks[0].text, "# // /* */");
}

TEST(Lexer, UnterminatedBlockComment) {
  auto l = lexText("a\n  /* never closed\n more");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag), Strs({"2:3: unterminated block comment"}));
}

TEST(Lexer, SlashOutsideCommentsIsDivision) {
  auto l = lexText("a / b");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Slash, Tok::Ident, Tok::Eof}));
}

//===----------------------------------------------------------------------===//
// Bad bytes
//===----------------------------------------------------------------------===//

TEST(Lexer, InvalidUtf8ByteOutsideStrings) {
  auto l = lexText("a \xff b");
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Error, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:3: invalid UTF-8 byte 0xFF"}));
}

TEST(Lexer, InvalidUtf8ByteInAString) {
  auto l = lexText("x \"ab\xc3\" y");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:6: invalid UTF-8 byte 0xC3"}));
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::String, Tok::Ident, Tok::Eof}));
}

TEST(Lexer, InvalidUtf8ByteInComments) {
  auto l = lexText("# \xfe\n/* \x80 */ x");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:3: invalid UTF-8 byte 0xFE",
                                     "2:4: invalid UTF-8 byte 0x80"}));
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Eof}));
}

TEST(Lexer, OverlongTwoByteSequenceIsInvalid) {
  // 0xC0 0xAF is an overlong '/'; each byte is reported.
  auto l = lexText("\"\xc0\xaf\"");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:2: invalid UTF-8 byte 0xC0",
                                     "1:3: invalid UTF-8 byte 0xAF"}));
}

TEST(Lexer, TruncatedSequenceAtEndOfFileIsInvalid) {
  auto l = lexText("# \xe2\x82");
  EXPECT_EQ(firstError(l->diag), "1:3: invalid UTF-8 byte 0xE2");
}

// RFC 3629 forbids UTF-16 surrogates (U+D800..U+DFFF), overlong three- and
// four-byte forms, and code points above U+10FFFF; the lexer's validator
// documents that it accepts only well-formed UTF-8.
TEST(Lexer, SurrogatesOverlongFormsAndOutOfRangeCodePointsAreInvalid) {
  struct Case {
    const char *bytes;
    const char *error;
  } cases[] = {
      {"\"\xed\xa0\x80\"", "1:2: invalid UTF-8 byte 0xED"},     // U+D800
      {"\"\xe0\x80\xaf\"", "1:2: invalid UTF-8 byte 0xE0"},     // overlong '/'
      {"\"\xf0\x80\x80\xaf\"", "1:2: invalid UTF-8 byte 0xF0"}, // overlong '/'
      {"\"\xf4\x90\x80\x80\"", "1:2: invalid UTF-8 byte 0xF4"}, // U+110000
      {"\"\xf5\x80\x80\x80\"", "1:2: invalid UTF-8 byte 0xF5"}, // no such lead
  };
  for (const Case &c : cases) {
    auto l = lexText(c.bytes);
    EXPECT_EQ(firstError(l->diag), c.error) << "bytes of " << c.error;
  }
}

TEST(Lexer, NonAsciiCharacterOutsideStringsIsOneError) {
  auto l = lexText("let \xce\xbb x");
  EXPECT_EQ(l->kinds(), Toks({Tok::KwLet, Tok::Error, Tok::Ident, Tok::Eof}));
  EXPECT_EQ(errorsOf(l->diag),
            Strs({"1:5: unexpected non-ASCII character; identifiers "
                  "and operators are ASCII"}));
  EXPECT_EQ(l->at(2), "1:8");
}

TEST(Lexer, ControlBytes) {
  auto l = lexText(std::string("a\x01 b\x7f c\0d", 9));
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:2: unexpected control byte 0x01",
                                     "1:5: unexpected control byte 0x7F",
                                     "1:8: unexpected control byte 0x00"}));
  EXPECT_EQ(l->kinds(), Toks({Tok::Ident, Tok::Error, Tok::Ident, Tok::Error,
                              Tok::Ident, Tok::Error, Tok::Ident, Tok::Eof}));
}

TEST(Lexer, UnexpectedAsciiCharacters) {
  auto l = lexText("a $ b ! c ?");
  EXPECT_EQ(errorsOf(l->diag), Strs({"1:3: unexpected character '$'",
                                     "1:7: unexpected character '!'",
                                     "1:11: unexpected character '?'"}));
}

TEST(Lexer, StopsAfterTooManyErrors) {
  auto l = lexText(std::string(30, '$') + " x");
  EXPECT_EQ(l->diag.numErrors(), DiagnosticEngine::kMaxErrors);
  EXPECT_TRUE(l->diag.tooManyErrors());
  // The lexer stops at the limit: the 21st '$' and the 'x' are never lexed.
  ASSERT_EQ(l->toks.size(), 21u);
  EXPECT_EQ(l->toks.back().kind, Tok::Eof);
}

//===----------------------------------------------------------------------===//
// Diagnostics rendering (the lexer's first client)
//===----------------------------------------------------------------------===//

TEST(Diagnostics, LineAndColumnOfOffsets) {
  SourceFile f("f.loom", "ab\ncd\r\n\nlast");
  EXPECT_EQ(f.lineCol(0), std::make_pair(1u, 1u));
  EXPECT_EQ(f.lineCol(2), std::make_pair(1u, 3u)); // the newline itself
  EXPECT_EQ(f.lineCol(3), std::make_pair(2u, 1u));
  EXPECT_EQ(f.lineCol(8), std::make_pair(4u, 1u));
  EXPECT_EQ(f.lineCol(1000), std::make_pair(4u, 5u)); // clamped to the end
  EXPECT_EQ(f.lineText(1), "ab");
  EXPECT_EQ(f.lineText(2), "cd"); // without the '\r'
  EXPECT_EQ(f.lineText(3), "");
  EXPECT_EQ(f.lineText(4), "last");
  EXPECT_EQ(f.lineText(0), "");
  EXPECT_EQ(f.lineText(5), "");
}

TEST(Diagnostics, RenderShowsTheLineAndACaret) {
  SourceFile f("t.loom", "model M {\n  let x = y\n}\n");
  DiagnosticEngine d;
  d.error(SourceLoc{&f, 20}, "unknown name 'y'");
  EXPECT_EQ(d.render(), "t.loom:2:11: error: unknown name 'y'\n"
                        "  let x = y\n"
                        "          ^\n");
}

TEST(Diagnostics, CaretLineKeepsTabs) {
  SourceFile f("t.loom", "\tlet x =\ty");
  DiagnosticEngine d;
  d.error(SourceLoc{&f, 9}, "m");
  EXPECT_EQ(d.render(), "t.loom:1:10: error: m\n"
                        "\tlet x =\ty\n"
                        "\t       \t^\n");
}

TEST(Diagnostics, ControlBytesInTheSourceLineAreShownAsQuestionMarks) {
  SourceFile f("t.loom", std::string("a\x01\x7f\x1b[2Jb"));
  DiagnosticEngine d;
  d.error(SourceLoc{&f, 1}, "bad");
  EXPECT_EQ(d.render(), "t.loom:1:2: error: bad\n"
                        "a???[2Jb\n"
                        " ^\n");
}

TEST(Diagnostics, LongSourceLinesAreCut) {
  SourceFile f("t.loom", std::string(300, 'x'));
  DiagnosticEngine d;
  d.error(SourceLoc{&f, 250}, "far");
  EXPECT_EQ(d.render(), "t.loom:1:251: error: far\n" + std::string(200, 'x') +
                            "\n" + std::string(200, ' ') + "^\n");
}

TEST(Diagnostics, ErrorAtEndOfFile) {
  SourceFile f("t.loom", "abc\n");
  DiagnosticEngine d;
  d.error(SourceLoc{&f, 4}, "eof");
  EXPECT_EQ(d.render(), "t.loom:2:1: error: eof\n\n^\n");
}

TEST(Diagnostics, NoLocationIsAToolMessage) {
  DiagnosticEngine d;
  d.error(SourceLoc{}, "no input");
  d.warning(SourceLoc{}, "careful");
  d.note(SourceLoc{}, "fyi");
  EXPECT_EQ(d.render(), "loomc: error: no input\n"
                        "loomc: warning: careful\n"
                        "loomc: note: fyi\n");
  EXPECT_EQ(d.numErrors(), 1u);
}

TEST(Diagnostics, SeveritiesInRender) {
  SourceFile f("w.loom", "x");
  DiagnosticEngine d;
  d.warning(SourceLoc{&f, 0}, "w");
  d.note(SourceLoc{&f, 0}, "n");
  EXPECT_FALSE(d.hasErrors());
  EXPECT_EQ(d.render(), "w.loom:1:1: warning: w\nx\n^\n"
                        "w.loom:1:1: note: n\nx\n^\n");
}

TEST(Diagnostics, ErrorsPastTheLimitAreDroppedWithOneNote) {
  SourceFile f("t.loom", "x");
  DiagnosticEngine d;
  for (int i = 0; i < 25; ++i) {
    d.error(SourceLoc{&f, 0}, "e" + std::to_string(i));
    d.note(SourceLoc{&f, 0}, "n" + std::to_string(i));
  }
  EXPECT_EQ(d.numErrors(), 20u);
  // 20 errors with their notes, then one "too many errors" note; the notes
  // of dropped errors are dropped too.
  ASSERT_EQ(d.diagnostics().size(), 41u);
  EXPECT_EQ(d.diagnostics()[38].message, "e19");
  EXPECT_EQ(d.diagnostics()[39].message, "n19");
  EXPECT_EQ(d.diagnostics()[40].message, "too many errors; stopping after 20");
  EXPECT_FALSE(d.diagnostics()[40].loc.valid());
}

TEST(Diagnostics, AddFileKeepsSynthesizedSourcesAlive) {
  DiagnosticEngine d;
  const SourceFile &f = d.addFile("command line", "mesh dp=x");
  d.error(SourceLoc{&f, 8}, "bad axis");
  EXPECT_EQ(d.render(), "command line:1:9: error: bad axis\n"
                        "mesh dp=x\n"
                        "        ^\n");
}

TEST(Diagnostics, ClosestMatch) {
  EXPECT_EQ(closestMatch("hiden", {"batch", "hidden"}), "hidden");
  EXPECT_EQ(closestMatch("relux", {"relu", "gelu", "exp"}), "relu");
  // The nearest wins, not the first close one.
  EXPECT_EQ(closestMatch("tp", {"dp", "tp"}), "tp");
  EXPECT_EQ(closestMatch("zzzzzz", {"batch", "hidden"}), "");
  EXPECT_EQ(closestMatch("x", {}), "");
  EXPECT_EQ(closestMatch(std::string(65, 'a'), {std::string(65, 'a')}), "");
}

} // namespace
