//===- ShapeRulesTest.cpp - every shape rule, success and failure ---------===//

#include "dialects/Loom/ShapeRules.h"

#include "gtest/gtest.h"

using namespace loom::shape;

namespace {

TensorType f32(Dims d) { return TensorType{DType::F32, std::move(d)}; }
TensorType i32(Dims d) { return TensorType{DType::I32, std::move(d)}; }

/// The rule's result as "f32[2, 3]", or "error: MESSAGE".
std::string show(const Result &r, const std::string &error) {
  return r ? str(*r) : "error: " + error;
}

#define RULE(call)                                                             \
  [&] {                                                                        \
    std::string error;                                                         \
    Result r = call;                                                           \
    return show(r, error);                                                     \
  }()

TEST(ShapeRules, DTypeNamesRoundTrip) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I1,
                  DType::I8, DType::I32, DType::I64})
    EXPECT_EQ(parseDType(dtypeName(t)), t) << dtypeName(t);
  EXPECT_STREQ(dtypeName(DType::BF16), "bf16");
  EXPECT_STREQ(dtypeName(DType::I1), "i1");
  EXPECT_FALSE(parseDType("f33"));
  EXPECT_FALSE(parseDType("F32"));
  EXPECT_FALSE(parseDType(""));
}

TEST(ShapeRules, DTypeClasses) {
  EXPECT_TRUE(isFloat(DType::F32));
  EXPECT_TRUE(isFloat(DType::F16));
  EXPECT_TRUE(isFloat(DType::BF16));
  EXPECT_TRUE(isFloat(DType::F64));
  EXPECT_FALSE(isFloat(DType::I1));
  // i1 is a boolean, neither a float nor an index type.
  EXPECT_FALSE(isInteger(DType::I1));
  EXPECT_TRUE(isInteger(DType::I8));
  EXPECT_TRUE(isInteger(DType::I32));
  EXPECT_TRUE(isInteger(DType::I64));
  EXPECT_FALSE(isInteger(DType::BF16));
}

TEST(ShapeRules, DTypeBytes) {
  EXPECT_EQ(dtypeBytes(DType::F64), 8);
  EXPECT_EQ(dtypeBytes(DType::I64), 8);
  EXPECT_EQ(dtypeBytes(DType::F32), 4);
  EXPECT_EQ(dtypeBytes(DType::I32), 4);
  EXPECT_EQ(dtypeBytes(DType::F16), 2);
  EXPECT_EQ(dtypeBytes(DType::BF16), 2);
  EXPECT_EQ(dtypeBytes(DType::I8), 1);
  EXPECT_EQ(dtypeBytes(DType::I1), 1);
}

TEST(ShapeRules, TensorTypeBasics) {
  EXPECT_EQ(f32({2, 3}).numElements(), 6);
  EXPECT_EQ(f32({}).numElements(), 1);
  EXPECT_EQ(str(f32({2, 3})), "f32[2, 3]");
  EXPECT_EQ(str(i32({})), "i32[]");
  EXPECT_EQ(str(Dims{4}), "[4]");
  EXPECT_TRUE(f32({2}) == f32({2}));
  EXPECT_TRUE(f32({2}) != i32({2}));
  EXPECT_TRUE(f32({2}) != f32({3}));
}

TEST(ShapeRules, NormalizeDim) {
  EXPECT_EQ(normalizeDim(0, 3), 0);
  EXPECT_EQ(normalizeDim(2, 3), 2);
  EXPECT_EQ(normalizeDim(-1, 3), 2);
  EXPECT_EQ(normalizeDim(-3, 3), 0);
  EXPECT_FALSE(normalizeDim(3, 3));
  EXPECT_FALSE(normalizeDim(-4, 3));
  EXPECT_FALSE(normalizeDim(0, 0));
}

TEST(ShapeRules, Unary) {
  EXPECT_EQ(RULE(unary(f32({2, 3}), true, error)), "f32[2, 3]");
  EXPECT_EQ(RULE(unary(i32({2}), false, error)), "i32[2]");
  EXPECT_EQ(RULE(unary(i32({2}), true, error)),
            "error: operand must have a floating-point element type, got "
            "i32[2]");
}

TEST(ShapeRules, BroadcastDims) {
  std::string error;
  EXPECT_EQ(broadcastDims({4, 1}, {3}, error), Dims({4, 3}));
  EXPECT_EQ(broadcastDims({}, {2, 2}, error), Dims({2, 2}));
  EXPECT_EQ(broadcastDims({5, 1, 3}, {4, 1}, error), Dims({5, 4, 3}));
  EXPECT_FALSE(broadcastDims({4, 3}, {5}, error));
  EXPECT_EQ(error, "shapes [4, 3] and [5] cannot be broadcast together "
                   "(dimension 1: 3 vs 5)");
}

TEST(ShapeRules, BroadcastBinary) {
  EXPECT_EQ(RULE(broadcastBinary(f32({4, 1}), f32({1, 3}), error)),
            "f32[4, 3]");
  EXPECT_EQ(RULE(broadcastBinary(f32({}), f32({2}), error)), "f32[2]");
  EXPECT_EQ(RULE(broadcastBinary(f32({4, 3}), f32({5}), error)),
            "error: shapes [4, 3] and [5] cannot be broadcast together "
            "(dimension 1: 3 vs 5)");
  EXPECT_EQ(RULE(broadcastBinary(f32({2}), i32({2}), error)),
            "error: element types differ: f32[2] and i32[2] (insert an "
            "explicit cast)");
}

// ShapeRules.h: "Largest dimension and element count accepted anywhere
// (2^40), so size arithmetic never overflows int64." A broadcast of
// [2^20, 1, 1] with [1, 2^20, 2^20] would have 2^60 elements.
TEST(ShapeRules, BroadcastResultsObeyTheElementLimit) {
  const int64_t m = int64_t(1) << 20;
  std::string error;
  EXPECT_FALSE(broadcastDims({m, 1, 1}, {1, m, m}, error))
      << "a result of 2^60 elements was accepted";
  EXPECT_FALSE(broadcastBinary(f32({m, 1, 1}), f32({1, m, m}), error));
  EXPECT_FALSE(matmul(f32({m, 1, 2, 2}), f32({1, m, 2, 2}), error))
      << "a matmul result of 2^42 elements was accepted";
  // Exactly 2^40 is still fine.
  EXPECT_TRUE(broadcastDims({m, 1}, {1, m}, error));
}

TEST(ShapeRules, Matmul) {
  EXPECT_EQ(RULE(matmul(f32({4, 8}), f32({8, 3}), error)), "f32[4, 3]");
  EXPECT_EQ(RULE(matmul(f32({2, 4, 8}), f32({8, 3}), error)), "f32[2, 4, 3]");
  EXPECT_EQ(RULE(matmul(f32({2, 1, 4, 8}), f32({5, 8, 3}), error)),
            "f32[2, 5, 4, 3]");
  EXPECT_EQ(RULE(matmul(f32({4, 8}), f32({7, 3}), error)),
            "error: matmul contraction dimensions differ: f32[4, 8] @ f32[7, "
            "3] (8 vs 7)");
  EXPECT_EQ(RULE(matmul(f32({8}), f32({8, 3}), error)),
            "error: matmul operands must have rank >= 2, got f32[8] @ f32[8, "
            "3]");
  EXPECT_EQ(RULE(matmul(f32({4, 8}), i32({8, 3}), error)),
            "error: matmul operands have different element types: f32[4, 8] "
            "and i32[8, 3]");
  EXPECT_EQ(RULE(matmul(f32({2, 4, 8}), f32({3, 8, 3}), error)),
            "error: matmul batch dimensions: shapes [2] and [3] cannot be "
            "broadcast together (dimension 0: 2 vs 3)");
}

TEST(ShapeRules, Softmax) {
  EXPECT_EQ(RULE(softmax(f32({2, 5}), error)), "f32[2, 5]");
  EXPECT_EQ(RULE(softmax(f32({}), error)),
            "error: softmax needs rank >= 1, got a scalar");
  EXPECT_EQ(RULE(softmax(i32({2}), error)),
            "error: operand must have a floating-point element type, got "
            "i32[2]");
}

TEST(ShapeRules, Norm) {
  TensorType b = f32({8});
  EXPECT_EQ(RULE(norm(f32({4, 8}), f32({8}), &b, error)), "f32[4, 8]");
  EXPECT_EQ(RULE(norm(f32({4, 8}), f32({8}), nullptr, error)), "f32[4, 8]");
  EXPECT_EQ(RULE(norm(f32({4, 8}), f32({4}), nullptr, error)),
            "error: gain must have shape [8], got f32[4]");
  TensorType bad = f32({2, 8});
  EXPECT_EQ(RULE(norm(f32({4, 8}), f32({8}), &bad, error)),
            "error: bias must have shape [8], got f32[2, 8]");
  TensorType bf = TensorType{DType::BF16, {8}};
  EXPECT_EQ(RULE(norm(f32({4, 8}), f32({8}), &bf, error)),
            "error: gain and bias must have the input's element type f32");
  EXPECT_EQ(RULE(norm(f32({}), f32({}), nullptr, error)),
            "error: normalisation needs rank >= 1, got a scalar");
  EXPECT_EQ(RULE(norm(i32({4}), f32({4}), nullptr, error)),
            "error: input must have a floating-point element type, got i32[4]");
}

TEST(ShapeRules, Embedding) {
  EXPECT_EQ(RULE(embedding(i32({2, 5}), f32({100, 16}), error)),
            "f32[2, 5, 16]");
  EXPECT_EQ(RULE(embedding(f32({2}), f32({100, 16}), error)),
            "error: embedding ids must be integers, got f32[2]");
  EXPECT_EQ(RULE(embedding(i32({2}), f32({100}), error)),
            "error: embedding table must have rank 2, got f32[100]");
  EXPECT_EQ(RULE(embedding(TensorType{DType::I1, {2}}, f32({100, 16}), error)),
            "error: embedding ids must be integers, got i1[2]");
  EXPECT_EQ(RULE(embedding(i32({2}), i32({100, 4}), error)),
            "error: embedding table must have a floating-point element type, "
            "got i32[100, 4]");
}

TEST(ShapeRules, Reshape) {
  EXPECT_EQ(RULE(reshape(f32({4, 6}), {2, 12}, error)), "f32[2, 12]");
  EXPECT_EQ(RULE(reshape(f32({4, 6}), {24}, error)), "f32[24]");
  EXPECT_EQ(RULE(reshape(f32({1}), {}, error)), "f32[]");
  EXPECT_EQ(RULE(reshape(f32({4, 6}), {5, 5}, error)),
            "error: cannot reshape f32[4, 6] (24 elements) to [5, 5] (25 "
            "elements)");
  EXPECT_EQ(RULE(reshape(f32({4}), {-1, -4}, error)),
            "error: reshape target [-1, -4] has a negative or too large "
            "dimension");
  EXPECT_EQ(
      RULE(reshape(f32({4}), {int64_t(1) << 30, int64_t(1) << 30}, error)),
      "error: reshape target [1073741824, 1073741824] has a negative or "
      "too large dimension");
}

TEST(ShapeRules, Transpose) {
  EXPECT_EQ(RULE(transpose(f32({2, 3, 4}), {2, 0, 1}, error)), "f32[4, 2, 3]");
  EXPECT_EQ(RULE(transpose(f32({2, 3}), {0}, error)),
            "error: permutation [0] does not match rank 2 of f32[2, 3]");
  EXPECT_EQ(RULE(transpose(f32({2, 3}), {1, 1}, error)),
            "error: [1, 1] is not a permutation of 0..1");
  EXPECT_EQ(RULE(transpose(f32({2, 3}), {0, 2}, error)),
            "error: [0, 2] is not a permutation of 0..1");
  EXPECT_EQ(RULE(transpose(f32({2, 3}), {-1, 0}, error)),
            "error: [-1, 0] is not a permutation of 0..1");
}

TEST(ShapeRules, SplitAndMergeHeads) {
  EXPECT_EQ(RULE(splitHeads(f32({2, 5, 12}), 3, error)), "f32[2, 3, 5, 4]");
  EXPECT_EQ(RULE(splitHeads(f32({2, 5, 12}), 5, error)),
            "error: split_heads: 5 heads do not divide the channel dimension "
            "12");
  EXPECT_EQ(RULE(splitHeads(f32({2, 5, 12}), 0, error)),
            "error: split_heads: heads must be >= 1, got 0");
  EXPECT_EQ(RULE(splitHeads(f32({2, 5, 12}), -3, error)),
            "error: split_heads: heads must be >= 1, got -3");
  EXPECT_EQ(RULE(splitHeads(f32({5, 12}), 3, error)),
            "error: split_heads input must have rank 3, got f32[5, 12]");
  EXPECT_EQ(RULE(mergeHeads(f32({2, 3, 5, 4}), error)), "f32[2, 5, 12]");
  EXPECT_EQ(RULE(mergeHeads(f32({2, 5, 12}), error)),
            "error: merge_heads input must have rank 4, got f32[2, 5, 12]");
}

TEST(ShapeRules, BroadcastTo) {
  EXPECT_EQ(RULE(broadcastTo(f32({1, 3}), {4, 3}, error)), "f32[4, 3]");
  EXPECT_EQ(RULE(broadcastTo(f32({3}), {2, 4, 3}, error)), "f32[2, 4, 3]");
  EXPECT_EQ(RULE(broadcastTo(f32({4, 3}), {3}, error)),
            "error: cannot broadcast f32[4, 3] to [3]");
  EXPECT_EQ(RULE(broadcastTo(f32({2}), {3}, error)),
            "error: shapes [2] and [3] cannot be broadcast together "
            "(dimension 0: 2 vs 3)");
  EXPECT_EQ(RULE(broadcastTo(f32({1}), {-2}, error)),
            "error: broadcast target [-2] has a negative or too large "
            "dimension");
}

TEST(ShapeRules, Reduce) {
  EXPECT_EQ(RULE(reduce(f32({2, 3, 4}), {1}, false, error)), "f32[2, 4]");
  EXPECT_EQ(RULE(reduce(f32({2, 3, 4}), {-1, 0}, true, error)), "f32[1, 3, 1]");
  EXPECT_EQ(RULE(reduce(f32({2, 3}), {0, 1}, false, error)), "f32[]");
  EXPECT_EQ(RULE(reduce(f32({2, 3}), {}, false, error)), "f32[2, 3]");
  EXPECT_EQ(RULE(reduce(f32({2, 3}), {2}, false, error)),
            "error: reduction dimension 2 is out of range for f32[2, 3]");
  EXPECT_EQ(RULE(reduce(f32({2, 3}), {1, -1}, false, error)),
            "error: reduction dimension -1 is listed twice");
}

TEST(ShapeRules, Concat) {
  EXPECT_EQ(RULE(concat({f32({2, 3}), f32({2, 5})}, 1, error)), "f32[2, 8]");
  EXPECT_EQ(RULE(concat({f32({2, 3}), f32({4, 3}), f32({1, 3})}, -2, error)),
            "f32[7, 3]");
  EXPECT_EQ(RULE(concat({f32({2, 3})}, 0, error)), "f32[2, 3]");
  EXPECT_EQ(RULE(concat({}, 0, error)),
            "error: concat needs at least one operand");
  EXPECT_EQ(RULE(concat({f32({2, 3}), f32({3, 3})}, 1, error)),
            "error: concat operand 1 f32[3, 3] does not match f32[2, 3] "
            "outside dimension 1");
  EXPECT_EQ(RULE(concat({f32({2, 3}), i32({2, 3})}, 1, error)),
            "error: concat operand 1 i32[2, 3] does not match f32[2, 3] "
            "outside dimension 1");
  EXPECT_EQ(RULE(concat({f32({2, 3}), f32({2, 3})}, 2, error)),
            "error: concat dimension 2 is out of range for f32[2, 3]");
}

TEST(ShapeRules, Slice) {
  EXPECT_EQ(RULE(slice(f32({4, 10}), 1, 2, 7, error)), "f32[4, 5]");
  EXPECT_EQ(RULE(slice(f32({4, 10}), -2, 0, 4, error)), "f32[4, 10]");
  EXPECT_EQ(RULE(slice(f32({4, 10}), 1, 7, 7, error)),
            "error: slice [7, 7) is empty or outside dimension 1 of size 10");
  EXPECT_EQ(RULE(slice(f32({4, 10}), 1, -1, 3, error)),
            "error: slice [-1, 3) is empty or outside dimension 1 of size 10");
  EXPECT_EQ(RULE(slice(f32({4, 10}), 1, 0, 11, error)),
            "error: slice [0, 11) is empty or outside dimension 1 of size 10");
  EXPECT_EQ(RULE(slice(f32({4, 10}), 2, 0, 1, error)),
            "error: slice dimension 2 is out of range for f32[4, 10]");
}

TEST(ShapeRules, Cast) {
  EXPECT_EQ(RULE(cast(f32({2, 3}), DType::BF16, error)), "bf16[2, 3]");
  EXPECT_EQ(RULE(cast(i32({}), DType::F64, error)), "f64[]");
}

TEST(ShapeRules, Dropout) {
  EXPECT_EQ(RULE(dropout(f32({2}), 0.0, error)), "f32[2]");
  EXPECT_EQ(RULE(dropout(f32({2}), 0.5, error)), "f32[2]");
  EXPECT_EQ(RULE(dropout(f32({2}), 1.0, error)),
            "error: dropout probability must be in [0, 1), got 1.000000");
  EXPECT_EQ(RULE(dropout(f32({2}), -0.1, error)),
            "error: dropout probability must be in [0, 1), got -0.100000");
  EXPECT_EQ(RULE(dropout(i32({2}), 0.1, error)),
            "error: dropout input must have a floating-point element type, "
            "got i32[2]");
}

TEST(ShapeRules, Attention) {
  TensorType q = f32({2, 4, 6, 8}), k = f32({2, 4, 5, 8}),
             v = f32({2, 4, 5, 3});
  EXPECT_EQ(RULE(attention(q, k, v, error)), "f32[2, 4, 6, 3]");
  EXPECT_EQ(RULE(attention(f32({4, 6, 8}), k, v, error)),
            "error: q must have rank 4, got f32[4, 6, 8]");
  EXPECT_EQ(RULE(attention(q, k, i32({2, 4, 5, 3}), error)),
            "error: v must have a floating-point element type, got i32[2, 4, "
            "5, 3]");
  EXPECT_EQ(RULE(attention(q, TensorType{DType::BF16, {2, 4, 5, 8}}, v, error)),
            "error: q, k and v must have the same element type");
  EXPECT_EQ(RULE(attention(q, f32({2, 2, 5, 8}), v, error)),
            "error: q [2, 4, 6, 8], k [2, 2, 5, 8] and v [2, 4, 5, 3] must "
            "agree in batch and heads ([B, H, T, d])");
  EXPECT_EQ(RULE(attention(q, f32({2, 4, 5, 7}), v, error)),
            "error: q and k head dimensions differ: 8 vs 7");
  EXPECT_EQ(RULE(attention(q, k, f32({2, 4, 6, 3}), error)),
            "error: k and v sequence lengths differ: 5 vs 6");
}

TEST(ShapeRules, GatedAttention) {
  TensorType q = f32({2, 4, 6, 8});
  EXPECT_EQ(RULE(gatedAttention(q, q, q, f32({4, 16}), f32({4}), error)),
            "f32[2, 4, 6, 8]");
  EXPECT_EQ(RULE(gatedAttention(q, f32({2, 4, 5, 8}), f32({2, 4, 5, 8}),
                                f32({4, 16}), f32({4}), error)),
            "error: gated_attention gates on [q; k] per position, so q and k "
            "need the same sequence length (6 vs 5)");
  EXPECT_EQ(RULE(gatedAttention(q, q, q, f32({4, 8}), f32({4}), error)),
            "error: gate weight must be f32[4, 16] ([heads, 2 * head_dim]), "
            "got f32[4, 8]");
  EXPECT_EQ(RULE(gatedAttention(q, q, q, f32({4, 16}), f32({2}), error)),
            "error: gate bias must be f32[4] ([heads]), got f32[2]");
  EXPECT_EQ(RULE(gatedAttention(q, q, q, TensorType{DType::F16, {4, 16}},
                                f32({4}), error)),
            "error: gate weight must be f32[4, 16] ([heads, 2 * head_dim]), "
            "got f16[4, 16]");
  EXPECT_EQ(
      RULE(gatedAttention(f32({2, 4, 6}), q, q, f32({4, 16}), f32({4}), error)),
      "error: q must have rank 4, got f32[2, 4, 6]");
}

TEST(ShapeRules, CrossEntropy) {
  EXPECT_EQ(RULE(crossEntropy(f32({4, 10}), i32({4}), error)), "f32[]");
  EXPECT_EQ(RULE(crossEntropy(TensorType{DType::BF16, {2, 3, 10}},
                              TensorType{DType::I64, {2, 3}}, error)),
            "f32[]");
  EXPECT_EQ(RULE(crossEntropy(f32({4, 10}), f32({4}), error)),
            "error: cross_entropy targets must be integer class ids, got "
            "f32[4]");
  EXPECT_EQ(RULE(crossEntropy(f32({4, 10}), TensorType{DType::I1, {4}}, error)),
            "error: cross_entropy targets must be integer class ids, got "
            "i1[4]");
  EXPECT_EQ(RULE(crossEntropy(f32({4, 10}), i32({5}), error)),
            "error: cross_entropy: targets [5] must match the logits [4, 10] "
            "without the class dimension");
  EXPECT_EQ(RULE(crossEntropy(f32({}), i32({}), error)),
            "error: cross_entropy: targets [] must match the logits [] "
            "without the class dimension");
  EXPECT_EQ(RULE(crossEntropy(i32({4, 10}), i32({4}), error)),
            "error: logits must have a floating-point element type, got "
            "i32[4, 10]");
}

TEST(ShapeRules, Mse) {
  EXPECT_EQ(RULE(mse(f32({4, 3}), f32({4, 3}), error)), "f32[]");
  EXPECT_EQ(RULE(mse(f32({4, 3}), f32({3}), error)),
            "error: mse operands must have the same type, got f32[4, 3] and "
            "f32[3]");
  EXPECT_EQ(RULE(mse(i32({4}), i32({4}), error)),
            "error: prediction must have a floating-point element type, got "
            "i32[4]");
}

} // namespace
