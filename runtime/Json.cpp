//===- Json.cpp - a small strict JSON reader and writer -------------------===//
#include "runtime/Json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

namespace loom::json {

ParseError::ParseError(size_t offset, const std::string &cause)
    : std::runtime_error("byte " + std::to_string(offset) + ": " + cause),
      offset_(offset), cause_(cause) {}

Value::Value(Array a)
    : kind_(Kind::Array), array_(std::make_shared<Array>(std::move(a))) {}
Value::Value(Object o)
    : kind_(Kind::Object), object_(std::make_shared<Object>(std::move(o))) {}

static const Array kEmptyArray;
static const Object kEmptyObject;

const Array &Value::asArray() const { return array_ ? *array_ : kEmptyArray; }
Array &Value::asArray() {
  if (!array_)
    throw std::logic_error("json::Value::asArray on a " +
                           std::string(kindName()));
  return *array_;
}
const Object &Value::asObject() const {
  return object_ ? *object_ : kEmptyObject;
}
Object &Value::asObject() {
  if (!object_)
    throw std::logic_error("json::Value::asObject on a " +
                           std::string(kindName()));
  return *object_;
}

const Value *Value::find(std::string_view key) const {
  if (kind_ != Kind::Object)
    return nullptr;
  for (const auto &[k, v] : *object_)
    if (k == key)
      return &v;
  return nullptr;
}

const char *Value::kindName(Kind k) {
  switch (k) {
  case Kind::Null:
    return "null";
  case Kind::Bool:
    return "bool";
  case Kind::Number:
    return "number";
  case Kind::String:
    return "string";
  case Kind::Array:
    return "array";
  case Kind::Object:
    return "object";
  }
  return "?";
}

//===----------------------------------------------------------------------===//
// Parser
//===----------------------------------------------------------------------===//

namespace {

class Parser {
public:
  Parser(std::string_view text, const ParseOptions &opts)
      : s_(text), opts_(opts) {}

  Value parseDocument() {
    if (s_.size() > opts_.maxBytes)
      fail(opts_.maxBytes, "document larger than the limit of " +
                               std::to_string(opts_.maxBytes) + " bytes");
    skipSpace();
    Value v = parseValue(0);
    skipSpace();
    if (pos_ != s_.size())
      fail(pos_, "unexpected " + describeHere() + " after the document");
    return v;
  }

private:
  [[noreturn]] void fail(size_t at, const std::string &cause) {
    throw ParseError(at, cause);
  }

  std::string describeHere() const {
    if (pos_ >= s_.size())
      return "end of input";
    unsigned char c = s_[pos_];
    char buf[32];
    if (c >= 0x20 && c < 0x7f)
      std::snprintf(buf, sizeof buf, "'%c'", c);
    else
      std::snprintf(buf, sizeof buf, "byte 0x%02x", c);
    return buf;
  }

  void skipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' ||
                                s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  Value parseValue(int depth) {
    if (pos_ >= s_.size())
      fail(pos_, "expected a value, found end of input");
    char c = s_[pos_];
    switch (c) {
    case '{':
      return parseObject(depth + 1);
    case '[':
      return parseArray(depth + 1);
    case '"':
      return Value(parseString());
    case 't':
      expectWord("true");
      return Value(true);
    case 'f':
      expectWord("false");
      return Value(false);
    case 'n':
      expectWord("null");
      return Value();
    default:
      if (c == '-' || (c >= '0' && c <= '9'))
        return parseNumber();
      fail(pos_, "expected a value, found " + describeHere());
    }
  }

  void expectWord(const char *word) {
    size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0)
      fail(pos_, std::string("invalid literal (expected '") + word + "')");
    pos_ += n;
  }

  void enter(int depth) {
    if (depth > opts_.maxDepth)
      fail(pos_,
           "nesting deeper than " + std::to_string(opts_.maxDepth) + " levels");
  }

  Value parseObject(int depth) {
    enter(depth);
    ++pos_; // '{'
    Object members;
    std::unordered_set<std::string> seen;
    skipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return Value(std::move(members));
    }
    while (true) {
      skipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"')
        fail(pos_, "expected a string key, found " + describeHere());
      size_t keyAt = pos_;
      std::string key = parseString();
      if (!seen.insert(key).second)
        fail(keyAt, "duplicate key " + quote(key));
      skipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':')
        fail(pos_, "expected ':' after key " + quote(key) + ", found " +
                       describeHere());
      ++pos_;
      skipSpace();
      members.emplace_back(std::move(key), parseValue(depth));
      skipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return Value(std::move(members));
      }
      fail(pos_, "expected ',' or '}' in an object, found " + describeHere());
    }
  }

  Value parseArray(int depth) {
    enter(depth);
    ++pos_; // '['
    Array items;
    skipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return Value(std::move(items));
    }
    while (true) {
      skipSpace();
      items.push_back(parseValue(depth));
      skipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return Value(std::move(items));
      }
      fail(pos_, "expected ',' or ']' in an array, found " + describeHere());
    }
  }

  unsigned hex4(size_t at) {
    if (at + 4 > s_.size())
      fail(at, "truncated \\u escape");
    unsigned v = 0;
    for (size_t i = 0; i < 4; ++i) {
      char c = s_[at + i];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        v |= c - 'A' + 10;
      else
        fail(at + i, "invalid hex digit in \\u escape");
    }
    return v;
  }

  static void appendUtf8(std::string &out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  /// Validates one UTF-8 sequence starting at pos_ and copies it.
  void copyUtf8(std::string &out) {
    size_t at = pos_;
    unsigned char c = s_[pos_];
    int extra;
    unsigned cp;
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++pos_;
      return;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      fail(at, "invalid UTF-8 in a string");
    }
    if (pos_ + extra >= s_.size())
      fail(at, "truncated UTF-8 sequence in a string");
    for (int i = 1; i <= extra; ++i) {
      unsigned char d = s_[pos_ + i];
      if ((d & 0xC0) != 0x80)
        fail(at, "invalid UTF-8 in a string");
      cp = (cp << 6) | (d & 0x3F);
    }
    static const unsigned kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      fail(at, "invalid UTF-8 in a string (overlong, surrogate or too large)");
    out.append(s_.data() + pos_, extra + 1);
    pos_ += extra + 1;
  }

  std::string parseString() {
    size_t start = pos_;
    ++pos_; // '"'
    std::string out;
    while (true) {
      if (pos_ >= s_.size())
        fail(start, "unterminated string");
      unsigned char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20)
        fail(pos_, "control character in a string (escape it)");
      if (c != '\\') {
        copyUtf8(out);
        continue;
      }
      size_t escAt = pos_;
      ++pos_;
      if (pos_ >= s_.size())
        fail(start, "unterminated string");
      char e = s_[pos_++];
      switch (e) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        unsigned cp = hex4(pos_);
        pos_ += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
          fail(escAt, "lone low surrogate in \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (pos_ + 1 >= s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
            fail(escAt, "high surrogate not followed by a low surrogate");
          unsigned lo = hex4(pos_ + 2);
          if (lo < 0xDC00 || lo > 0xDFFF)
            fail(escAt, "high surrogate not followed by a low surrogate");
          pos_ += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        appendUtf8(out, cp);
        break;
      }
      default:
        fail(escAt, "invalid escape '\\" + std::string(1, e) + "'");
      }
    }
  }

  Value parseNumber() {
    size_t start = pos_;
    bool integral = true;
    if (s_[pos_] == '-')
      ++pos_;
    if (pos_ >= s_.size())
      fail(start, "invalid number");
    if (s_[pos_] == '0') {
      ++pos_;
      if (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9')
        fail(start, "invalid number (leading zero)");
    } else if (s_[pos_] >= '1' && s_[pos_] <= '9') {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9')
        ++pos_;
    } else {
      fail(start, "invalid number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9'))
        fail(start, "invalid number (digits must follow '.')");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9')
        ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-'))
        ++pos_;
      if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9'))
        fail(start, "invalid number (digits must follow the exponent)");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9')
        ++pos_;
    }
    std::string lit(s_.substr(start, pos_ - start));
    if (integral) {
      errno = 0;
      char *end = nullptr;
      long long v = std::strtoll(lit.c_str(), &end, 10);
      if (errno == 0 && end == lit.c_str() + lit.size())
        return Value(static_cast<int64_t>(v));
      // Too large for int64: fall through to a double.
    }
    errno = 0;
    double d = std::strtod(lit.c_str(), nullptr);
    if (!std::isfinite(d))
      fail(start, "number out of range");
    return Value(d);
  }

  std::string_view s_;
  ParseOptions opts_;
  size_t pos_ = 0;
};

} // namespace

Value parse(std::string_view text, const ParseOptions &options) {
  return Parser(text, options).parseDocument();
}

//===----------------------------------------------------------------------===//
// Writer
//===----------------------------------------------------------------------===//

std::string formatNumber(double d) {
  if (!std::isfinite(d))
    return "null";
  if (d == std::floor(d) && std::fabs(d) < 9.007199254740992e15) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(d));
    if (d == 0 && std::signbit(d))
      return "-0.0";
    return buf;
  }
  char buf[40];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, d);
    if (std::strtod(buf, nullptr) == d)
      break;
  }
  return buf;
}

std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\b':
      out += "\\b";
      break;
    case '\f':
      out += "\\f";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  out += '"';
  return out;
}

static void writeTo(std::string &out, const Value &v, int indent, int level) {
  auto newline = [&](int lvl) {
    if (indent < 0)
      return;
    out += '\n';
    out.append(static_cast<size_t>(indent) * lvl, ' ');
  };
  switch (v.kind()) {
  case Value::Kind::Null:
    out += "null";
    return;
  case Value::Kind::Bool:
    out += v.asBool() ? "true" : "false";
    return;
  case Value::Kind::Number:
    if (v.isInt())
      out += std::to_string(v.asInt());
    else
      out += formatNumber(v.asDouble());
    return;
  case Value::Kind::String:
    out += quote(v.asString());
    return;
  case Value::Kind::Array: {
    const Array &a = v.asArray();
    out += '[';
    for (size_t i = 0; i < a.size(); ++i) {
      if (i)
        out += ',';
      newline(level + 1);
      writeTo(out, a[i], indent, level + 1);
    }
    if (!a.empty())
      newline(level);
    out += ']';
    return;
  }
  case Value::Kind::Object: {
    const Object &o = v.asObject();
    out += '{';
    for (size_t i = 0; i < o.size(); ++i) {
      if (i)
        out += ',';
      newline(level + 1);
      out += quote(o[i].first);
      out += indent < 0 ? ":" : ": ";
      writeTo(out, o[i].second, indent, level + 1);
    }
    if (!o.empty())
      newline(level);
    out += '}';
    return;
  }
  }
}

std::string write(const Value &v, int indent) {
  std::string out;
  writeTo(out, v, indent, 0);
  return out;
}

} // namespace loom::json
