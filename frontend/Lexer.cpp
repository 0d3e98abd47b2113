//===- Lexer.cpp - tokens of the Loom DSL ---------------------------------===//

#include "frontend/Lexer.h"

#include <cstdio>
#include <unordered_map>

namespace loom::frontend {

const char *tokName(Tok t) {
  switch (t) {
  case Tok::Eof:
    return "end of file";
  case Tok::Ident:
    return "identifier";
  case Tok::Int:
    return "integer";
  case Tok::Float:
    return "number";
  case Tok::String:
    return "string";
  case Tok::KwModel:
    return "'model'";
  case Tok::KwLayer:
    return "'layer'";
  case Tok::KwFn:
    return "'fn'";
  case Tok::KwInput:
    return "'input'";
  case Tok::KwParam:
    return "'param'";
  case Tok::KwLet:
    return "'let'";
  case Tok::KwReturn:
    return "'return'";
  case Tok::KwLoss:
    return "'loss'";
  case Tok::KwRepeat:
    return "'repeat'";
  case Tok::KwTrain:
    return "'train'";
  case Tok::KwInit:
    return "'init'";
  case Tok::KwShard:
    return "'shard'";
  case Tok::KwAs:
    return "'as'";
  case Tok::KwTrue:
    return "'true'";
  case Tok::KwFalse:
    return "'false'";
  case Tok::LParen:
    return "'('";
  case Tok::RParen:
    return "')'";
  case Tok::LBrace:
    return "'{'";
  case Tok::RBrace:
    return "'}'";
  case Tok::LBracket:
    return "'['";
  case Tok::RBracket:
    return "']'";
  case Tok::Comma:
    return "','";
  case Tok::Colon:
    return "':'";
  case Tok::Semi:
    return "';'";
  case Tok::Equal:
    return "'='";
  case Tok::At:
    return "'@'";
  case Tok::Plus:
    return "'+'";
  case Tok::Minus:
    return "'-'";
  case Tok::Star:
    return "'*'";
  case Tok::Slash:
    return "'/'";
  case Tok::Error:
    return "invalid token";
  }
  return "token";
}

namespace {

const std::unordered_map<std::string, Tok> &keywords() {
  static const std::unordered_map<std::string, Tok> kw = {
      {"model", Tok::KwModel},   {"layer", Tok::KwLayer},
      {"fn", Tok::KwFn},         {"input", Tok::KwInput},
      {"param", Tok::KwParam},   {"let", Tok::KwLet},
      {"return", Tok::KwReturn}, {"loss", Tok::KwLoss},
      {"repeat", Tok::KwRepeat}, {"train", Tok::KwTrain},
      {"init", Tok::KwInit},     {"shard", Tok::KwShard},
      {"as", Tok::KwAs},         {"true", Tok::KwTrue},
      {"false", Tok::KwFalse}};
  return kw;
}

bool isIdentStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isIdentChar(char c) { return isIdentStart(c) || isDigit(c); }

/// Length of the well-formed UTF-8 sequence at s[i], or 0 if it is invalid.
size_t utf8Length(const std::string &s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3
                          : (c >> 3) == 0x1e ? 4 : 0;
  if (n == 0 || i + n > s.size())
    return 0;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2)
      return 0;
  unsigned char c1 = static_cast<unsigned char>(s[i + 1 < s.size() ? i + 1 : i]);
  if (n == 2 && c < 0xc2) // overlong
    return 0;
  if (n == 3 && ((c == 0xe0 && c1 < 0xa0) ||   // overlong
                 (c == 0xed && c1 > 0x9f)))    // UTF-16 surrogates
    return 0;
  if (n == 4 && ((c == 0xf0 && c1 < 0x90) ||   // overlong
                 (c == 0xf4 && c1 > 0x8f) ||   // above U+10FFFF
                 c > 0xf4))
    return 0;
  return n;
}

class Lexer {
public:
  Lexer(const SourceFile &file, DiagnosticEngine &diag)
      : file_(file), s_(file.text()), diag_(diag) {}

  std::vector<Token> run() {
    std::vector<Token> out;
    while (true) {
      skipTrivia();
      if (diag_.tooManyErrors()) {
        out.push_back(make(Tok::Eof, s_.size()));
        break;
      }
      Token t = next();
      out.push_back(t);
      if (t.kind == Tok::Eof)
        break;
    }
    return out;
  }

private:
  SourceLoc at(size_t off) const { return SourceLoc{&file_, off}; }
  Token make(Tok k, size_t begin) const {
    Token t;
    t.kind = k;
    t.loc = at(begin);
    return t;
  }

  /// Validates UTF-8 in comments and strings; reports the first bad byte.
  bool checkUtf8(size_t &i) {
    size_t n = utf8Length(s_, i);
    if (n == 0) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "0x%02X",
                    static_cast<unsigned char>(s_[i]));
      diag_.error(at(i), std::string("invalid UTF-8 byte ") + buf);
      ++i;
      return false;
    }
    i += n;
    return true;
  }

  void skipTrivia() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else if (c == '#' ||
                 (c == '/' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '/')) {
        while (pos_ < s_.size() && s_[pos_] != '\n')
          checkUtf8(pos_);
      } else if (c == '/' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '*') {
        size_t begin = pos_;
        pos_ += 2;
        bool closed = false;
        while (pos_ < s_.size()) {
          if (s_[pos_] == '*' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '/') {
            pos_ += 2;
            closed = true;
            break;
          }
          checkUtf8(pos_);
        }
        if (!closed)
          diag_.error(at(begin), "unterminated block comment");
      } else {
        return;
      }
    }
  }

  Token next() {
    if (pos_ >= s_.size())
      return make(Tok::Eof, s_.size());
    size_t begin = pos_;
    char c = s_[pos_];
    if (isIdentStart(c)) {
      while (pos_ < s_.size() && isIdentChar(s_[pos_]))
        ++pos_;
      Token t = make(Tok::Ident, begin);
      t.text = s_.substr(begin, pos_ - begin);
      auto it = keywords().find(t.text);
      if (it != keywords().end())
        t.kind = it->second;
      return t;
    }
    if (isDigit(c) || (c == '.' && pos_ + 1 < s_.size() && isDigit(s_[pos_ + 1])))
      return number(begin);
    if (c == '"')
      return string(begin);
    ++pos_;
    switch (c) {
    case '(':
      return make(Tok::LParen, begin);
    case ')':
      return make(Tok::RParen, begin);
    case '{':
      return make(Tok::LBrace, begin);
    case '}':
      return make(Tok::RBrace, begin);
    case '[':
      return make(Tok::LBracket, begin);
    case ']':
      return make(Tok::RBracket, begin);
    case ',':
      return make(Tok::Comma, begin);
    case ':':
      return make(Tok::Colon, begin);
    case ';':
      return make(Tok::Semi, begin);
    case '=':
      return make(Tok::Equal, begin);
    case '@':
      return make(Tok::At, begin);
    case '+':
      return make(Tok::Plus, begin);
    case '-':
      return make(Tok::Minus, begin);
    case '*':
      return make(Tok::Star, begin);
    case '/':
      return make(Tok::Slash, begin);
    default:
      break;
    }
    unsigned char uc = static_cast<unsigned char>(c);
    if (uc >= 0x80) {
      pos_ = begin;
      if (checkUtf8(pos_))
        diag_.error(at(begin), "unexpected non-ASCII character; identifiers "
                               "and operators are ASCII");
    } else if (uc < 0x20 || uc == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "0x%02X", uc);
      diag_.error(at(begin), std::string("unexpected control byte ") + buf);
    } else {
      diag_.error(at(begin), std::string("unexpected character '") + c + "'");
    }
    return make(Tok::Error, begin);
  }

  Token number(size_t begin) {
    bool isFloat = false;
    while (pos_ < s_.size() && isDigit(s_[pos_]))
      ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '.' &&
        (pos_ + 1 >= s_.size() || !isIdentStart(s_[pos_ + 1]))) {
      isFloat = true;
      ++pos_;
      while (pos_ < s_.size() && isDigit(s_[pos_]))
        ++pos_;
    }
    // An exponent only when digits follow: "1e-3", not the "e" of a suffix.
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < s_.size() && (s_[p] == '+' || s_[p] == '-'))
        ++p;
      if (p < s_.size() && isDigit(s_[p])) {
        isFloat = true;
        pos_ = p;
        while (pos_ < s_.size() && isDigit(s_[pos_]))
          ++pos_;
      }
    }
    Token t = make(isFloat ? Tok::Float : Tok::Int, begin);
    t.text = s_.substr(begin, pos_ - begin);
    size_t sbegin = pos_;
    while (pos_ < s_.size() && isIdentChar(s_[pos_]))
      ++pos_;
    t.suffix = s_.substr(sbegin, pos_ - sbegin);
    if (t.text.size() > 64) {
      diag_.error(t.loc, "numeric literal is too long");
      t.kind = Tok::Error;
    }
    return t;
  }

  Token string(size_t begin) {
    ++pos_;
    Token t = make(Tok::String, begin);
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] == '\n') {
        diag_.error(at(begin), "unterminated string literal");
        t.kind = Tok::Error;
        return t;
      }
      char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return t;
      }
      if (c == '\\') {
        if (pos_ + 1 >= s_.size()) {
          ++pos_;
          continue;
        }
        char e = s_[pos_ + 1];
        if (e == 'n')
          t.text += '\n';
        else if (e == 't')
          t.text += '\t';
        else if (e == '"' || e == '\\')
          t.text += e;
        else
          diag_.error(at(pos_), std::string("unknown escape sequence '\\") +
                                    (static_cast<unsigned char>(e) < 0x80 &&
                                             e >= 0x20
                                         ? std::string(1, e)
                                         : std::string("?")) +
                                    "'");
        pos_ += 2;
        continue;
      }
      size_t start = pos_;
      if (checkUtf8(pos_))
        t.text += s_.substr(start, pos_ - start);
    }
  }

  const SourceFile &file_;
  const std::string &s_;
  DiagnosticEngine &diag_;
  size_t pos_ = 0;
};

} // namespace

std::vector<Token> lex(const SourceFile &file, DiagnosticEngine &diag) {
  return Lexer(file, diag).run();
}

} // namespace loom::frontend
