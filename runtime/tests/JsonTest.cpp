//===- JsonTest.cpp - the strict JSON reader and writer -------------------===//
#include "runtime/Json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

using namespace loom::json;

namespace {

/// The error offset and message of a document that must not parse.
ParseError parseFails(const std::string &text, ParseOptions opts = {}) {
  try {
    parse(text, opts);
  } catch (const ParseError &e) {
    return e;
  }
  ADD_FAILURE() << "parsed but should not: " << text;
  return ParseError(0, "");
}

TEST(Json, ParsesEveryKind) {
  Value v =
      parse(R"( {"a": 1, "b": -2.5e3, "c": "x\ty", "d": [true, false, null],
                       "e": {}, "f": [], "g": 0, "h": -0.0} )");
  ASSERT_TRUE(v.isObject());
  EXPECT_EQ(v.asObject().size(), 8u);
  EXPECT_TRUE(v.find("a")->isInt());
  EXPECT_EQ(v.find("a")->asInt(), 1);
  EXPECT_FALSE(v.find("b")->isInt());
  EXPECT_DOUBLE_EQ(v.find("b")->asDouble(), -2500.0);
  EXPECT_EQ(v.find("c")->asString(), "x\ty");
  const Array &d = v.find("d")->asArray();
  ASSERT_EQ(d.size(), 3u);
  EXPECT_TRUE(d[0].asBool());
  EXPECT_FALSE(d[1].asBool());
  EXPECT_TRUE(d[2].isNull());
  EXPECT_TRUE(v.find("e")->isObject());
  EXPECT_TRUE(v.find("f")->isArray());
  EXPECT_EQ(v.find("missing"), nullptr);
  // Members keep document order.
  EXPECT_EQ(v.asObject()[0].first, "a");
  EXPECT_EQ(v.asObject()[7].first, "h");
}

TEST(Json, LargeIntegersStayExact) {
  Value v =
      parse("[9007199254740993, -9223372036854775808, 18446744073709551616]");
  EXPECT_TRUE(v.asArray()[0].isInt());
  EXPECT_EQ(v.asArray()[0].asInt(), 9007199254740993LL);
  EXPECT_EQ(v.asArray()[1].asInt(), INT64_MIN);
  // Beyond int64: a double.
  EXPECT_FALSE(v.asArray()[2].isInt());
  EXPECT_DOUBLE_EQ(v.asArray()[2].asDouble(), 18446744073709551616.0);
}

TEST(Json, UnicodeEscapes) {
  EXPECT_EQ(parse(R"("\u0041\u00e9\u4e2d")").asString(),
            "A\xc3\xa9\xe4\xb8\xad");
  // A surrogate pair: U+1F600.
  EXPECT_EQ(parse(R"("\ud83d\ude00")").asString(), "\xf0\x9f\x98\x80");
  EXPECT_EQ(parse(R"("\"\\\/\b\f\n\r\t")").asString(), "\"\\/\b\f\n\r\t");
  // Raw UTF-8 passes through.
  EXPECT_EQ(parse("\"\xc3\xa9\"").asString(), "\xc3\xa9");
}

TEST(Json, RejectsMalformedWithOffsets) {
  EXPECT_EQ(parseFails("").offset(), 0u);
  EXPECT_EQ(parseFails("[1, 2,]").offset(), 6u);   // trailing comma
  EXPECT_EQ(parseFails("{\"a\" 1}").offset(), 5u); // missing colon
  EXPECT_EQ(parseFails("[1] x").offset(), 4u);     // trailing content
  EXPECT_EQ(parseFails("01").offset(), 0u);        // leading zero
  EXPECT_EQ(parseFails("[1.]").offset(), 1u);      // no fraction digits
  EXPECT_EQ(parseFails("[1e]").offset(), 1u);
  EXPECT_EQ(parseFails("NaN").offset(), 0u);
  EXPECT_EQ(parseFails("[Infinity]").offset(), 1u);
  EXPECT_EQ(parseFails("tru").offset(), 0u);
  EXPECT_EQ(parseFails("\"abc").offset(), 0u);            // unterminated
  EXPECT_EQ(parseFails("\"a\x01\"").offset(), 2u);        // control character
  EXPECT_EQ(parseFails(R"("\x")").offset(), 1u);          // bad escape
  EXPECT_EQ(parseFails(R"("\u12")").offset(), 3u);        // short \u
  EXPECT_EQ(parseFails(R"("\ud800")").offset(), 1u);      // lone high surrogate
  EXPECT_EQ(parseFails(R"("\udc00")").offset(), 1u);      // lone low surrogate
  EXPECT_EQ(parseFails("\"\xff\"").offset(), 1u);         // invalid UTF-8
  EXPECT_EQ(parseFails("\"\xc0\xaf\"").offset(), 1u);     // overlong
  EXPECT_EQ(parseFails("\"\xed\xa0\x80\"").offset(), 1u); // encoded surrogate
  EXPECT_EQ(parseFails("[1e999]").offset(), 1u);          // out of range
  EXPECT_EQ(parseFails("// c\n1").offset(), 0u);          // no comments
  EXPECT_EQ(parseFails("{'a': 1}").offset(), 1u);         // no single quotes
  std::string msg = parseFails("[1, 2,]").what();
  EXPECT_NE(msg.find("byte 6"), std::string::npos) << msg;
}

TEST(Json, RejectsDuplicateKeys) {
  ParseError e = parseFails(R"({"a": 1, "b": 2, "a": 3})");
  EXPECT_EQ(e.offset(), 17u);
  EXPECT_NE(e.cause().find("duplicate key \"a\""), std::string::npos);
  // The same key in different objects is fine.
  EXPECT_NO_THROW(parse(R"({"a": {"a": 1}, "b": {"a": 2}})"));
}

TEST(Json, BoundsDepthAndSize) {
  std::string deep(200, '[');
  deep += std::string(200, ']');
  ParseError e = parseFails(deep);
  EXPECT_NE(e.cause().find("nesting deeper than 128"), std::string::npos);
  EXPECT_EQ(e.offset(), 128u);
  ParseOptions loose;
  loose.maxDepth = 256;
  EXPECT_NO_THROW(parse(deep, loose));
  // Exactly at the limit parses.
  std::string atLimit = std::string(128, '[') + std::string(128, ']');
  EXPECT_NO_THROW(parse(atLimit));
  // Objects count too.
  std::string objs;
  for (int i = 0; i < 130; ++i)
    objs += "{\"k\":";
  objs += "1" + std::string(130, '}');
  EXPECT_THROW(parse(objs), ParseError);
  ParseOptions small;
  small.maxBytes = 8;
  EXPECT_NE(parseFails("[1, 2, 3, 4]", small).cause().find("larger than"),
            std::string::npos);
}

TEST(Json, WriteRoundTrips) {
  std::string text =
      R"({"a":1,"b":[true,false,null],"c":"q\"\\\n\u0001","d":0.1,"e":-3.25e-10,"f":{}})";
  Value v = parse(text);
  EXPECT_EQ(write(v), text);
  Value again = parse(write(v));
  EXPECT_EQ(write(again), write(v));
  EXPECT_DOUBLE_EQ(again.find("d")->asDouble(), 0.1);
  EXPECT_DOUBLE_EQ(again.find("e")->asDouble(), -3.25e-10);
  EXPECT_EQ(again.find("c")->asString(), "q\"\\\n\x01");
  // Pretty printing parses back to the same document.
  EXPECT_EQ(write(parse(write(v, 2))), write(v));
}

TEST(Json, NumbersFormatShortestAndNonFiniteAsNull) {
  EXPECT_EQ(formatNumber(0.1), "0.1");
  EXPECT_EQ(formatNumber(3.0), "3");
  EXPECT_EQ(formatNumber(1e-7), "1e-07");
  EXPECT_EQ(formatNumber(NAN), "null");
  EXPECT_EQ(formatNumber(INFINITY), "null");
  EXPECT_EQ(write(Value(-INFINITY)), "null");
  double third = 1.0 / 3.0;
  EXPECT_EQ(std::stod(formatNumber(third)), third);
  EXPECT_EQ(write(Value(Array{Value(int64_t(1) << 60)})),
            "[1152921504606846976]");
}

} // namespace
