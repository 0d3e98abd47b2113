//===- Lexer.h - tokens of the Loom DSL -------------------------*- C++ -*-===//
#ifndef LOOM_FRONTEND_LEXER_H
#define LOOM_FRONTEND_LEXER_H

#include "frontend/Diagnostics.h"

#include <string>
#include <vector>

namespace loom::frontend {

enum class Tok {
  Eof,
  Ident,
  Int,    ///< 42; `text` holds the digits and any unit suffix ("40GiB")
  Float,  ///< 3e-4, 0.5
  String, ///< "..." with escapes resolved in `text`
  // Keywords.
  KwModel,
  KwLayer,
  KwFn,
  KwInput,
  KwParam,
  KwLet,
  KwReturn,
  KwLoss,
  KwRepeat,
  KwTrain,
  KwInit,
  KwShard,
  KwAs,
  KwTrue,
  KwFalse,
  // Punctuation.
  LParen,
  RParen,
  LBrace,
  RBrace,
  LBracket,
  RBracket,
  Comma,
  Colon,
  Semi,
  Equal,
  At,
  Plus,
  Minus,
  Star,
  Slash,
  Error, ///< a lexical error, already diagnosed
};

/// A human spelling of a token kind, for "expected X" messages.
const char *tokName(Tok t);

struct Token {
  Tok kind = Tok::Eof;
  std::string text; ///< identifier, literal text, or the string's value
  std::string suffix; ///< a number's unit suffix: "GiB" in 40GiB, "f1b" in 1f1b
  SourceLoc loc;
};

/// Splits a source file into tokens. Lexical errors (bad bytes, invalid
/// UTF-8, unterminated strings or comments, overlong numbers) are reported
/// to the engine; the lexer recovers and keeps going.
std::vector<Token> lex(const SourceFile &file, DiagnosticEngine &diag);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_LEXER_H
