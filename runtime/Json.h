//===- Json.h - a small strict JSON reader and writer -----------*- C++ -*-===//
//
// The runtime reads untrusted JSON (artifact manifests, safetensors headers),
// so the parser is strict: RFC 8259 only (no comments, trailing commas, NaN,
// leading zeros, lone surrogates or invalid UTF-8), duplicate object keys are
// an error, and both nesting depth and input size are bounded. Every error
// names the byte offset where parsing stopped.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_JSON_H
#define LOOM_RUNTIME_JSON_H

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loom::json {

/// A parse error: `what()` is "byte N: cause".
class ParseError : public std::runtime_error {
public:
  ParseError(size_t offset, const std::string &cause);
  size_t offset() const { return offset_; }
  const std::string &cause() const { return cause_; }

private:
  size_t offset_;
  std::string cause_;
};

class Value;
using Array = std::vector<Value>;
/// Members in document order (manifests are printed back in that order).
using Object = std::vector<std::pair<std::string, Value>>;

/// A JSON value. Numbers keep whether their literal was an integer (no
/// fraction, no exponent) that fits int64, so byte offsets and sizes above
/// 2^53 survive exactly.
class Value {
public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Value() = default;
  Value(std::nullptr_t) {}
  Value(bool b) : kind_(Kind::Bool), bool_(b) {}
  Value(int v) : Value(static_cast<int64_t>(v)) {}
  Value(int64_t v)
      : kind_(Kind::Number), isInt_(true), int_(v),
        double_(static_cast<double>(v)) {}
  Value(uint64_t v) = delete; // ambiguous range: convert explicitly
  Value(double v) : kind_(Kind::Number), double_(v) {}
  Value(const char *s) : kind_(Kind::String), string_(s) {}
  Value(std::string s) : kind_(Kind::String), string_(std::move(s)) {}
  Value(Array a);
  Value(Object o);

  Kind kind() const { return kind_; }
  bool isNull() const { return kind_ == Kind::Null; }
  bool isBool() const { return kind_ == Kind::Bool; }
  bool isNumber() const { return kind_ == Kind::Number; }
  /// A number written as an integer literal that fits int64.
  bool isInt() const { return kind_ == Kind::Number && isInt_; }
  bool isString() const { return kind_ == Kind::String; }
  bool isArray() const { return kind_ == Kind::Array; }
  bool isObject() const { return kind_ == Kind::Object; }

  bool asBool() const { return bool_; }
  int64_t asInt() const { return int_; }
  double asDouble() const { return double_; }
  const std::string &asString() const { return string_; }
  const Array &asArray() const;
  Array &asArray();
  const Object &asObject() const;
  Object &asObject();

  /// The member named `key` of an object, or null when absent (or when this
  /// is not an object).
  const Value *find(std::string_view key) const;

  /// "null", "bool", "number", "string", "array", "object".
  static const char *kindName(Kind k);
  const char *kindName() const { return kindName(kind_); }

private:
  Kind kind_ = Kind::Null;
  bool isInt_ = false;
  bool bool_ = false;
  int64_t int_ = 0;
  double double_ = 0;
  std::string string_;
  // Shared so that copying a large manifest value stays cheap; values are
  // treated as immutable once parsed.
  std::shared_ptr<Array> array_;
  std::shared_ptr<Object> object_;
};

struct ParseOptions {
  /// Deepest nesting of arrays and objects accepted.
  int maxDepth = 128;
  /// Largest input accepted, in bytes.
  size_t maxBytes = 64u << 20;
};

/// Parses one JSON document (surrounding whitespace allowed, nothing else).
/// Throws ParseError.
Value parse(std::string_view text, const ParseOptions &options = {});

/// Serialises `v`. indent < 0: compact, one line; otherwise pretty-printed
/// with that many spaces per level. Non-finite numbers are written as null.
std::string write(const Value &v, int indent = -1);

/// A number as JSON text: integers exactly, other doubles in the shortest
/// form that reads back to the same double; non-finite as null.
std::string formatNumber(double d);

/// `s` as a JSON string literal, quotes included.
std::string quote(std::string_view s);

} // namespace loom::json

#endif // LOOM_RUNTIME_JSON_H
