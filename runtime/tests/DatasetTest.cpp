//===- DatasetTest.cpp - the .bin format, binding, shuffle and split ------===//
#include "runtime/Dataset.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <set>
#include <unistd.h>

using namespace loom::runtime;

namespace {

#define EXPECT_HAS(haystack, needle)                                           \
  do {                                                                         \
    std::string h_ = (haystack);                                               \
    EXPECT_NE(h_.find(needle), std::string::npos) << h_;                       \
  } while (0)

template <typename T>
std::vector<unsigned char> bytesOf(const std::vector<T> &v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

/// n records: x f32[4] with x[r] = {r, r, r, r}, y i32 = r % 3.
std::vector<unsigned char> records(int64_t n) {
  std::vector<float> x;
  std::vector<int32_t> y;
  for (int64_t r = 0; r < n; ++r) {
    for (int k = 0; k < 4; ++k)
      x.push_back(float(r));
    y.push_back(int32_t(r % 3));
  }
  return encodeDataset(DataKind::Records, n,
                       {{"x", DataType::F32, {4}, bytesOf(x)},
                        {"y", DataType::I32, {}, bytesOf(y)}});
}

/// A u8 token stream 0, 1, 2, ... (mod 251).
std::vector<unsigned char> stream(int64_t n, uint32_t vocab = 256) {
  std::vector<unsigned char> t(n);
  for (int64_t i = 0; i < n; ++i)
    t[i] = static_cast<unsigned char>(i % 251);
  return encodeDataset(DataKind::Tokens, n, {{"tokens", DataType::U8, {}, t}},
                       vocab);
}

Buffer input(const std::string &name, DType t, std::vector<int64_t> shape,
             int64_t offset) {
  Buffer b;
  b.name = name;
  b.dtype = t;
  b.shape = shape;
  b.offset = offset;
  b.elements = 1;
  for (int64_t d : shape)
    b.elements *= d;
  b.bytes = b.elements * int64_t(dtypeSize(t));
  return b;
}

/// Inputs x f32[8, 4] at 0, y i32[8] at 128.
std::vector<Buffer> recordInputs() {
  return {input("x", DType::F32, {8, 4}, 0), input("y", DType::I32, {8}, 128)};
}

std::string openError(std::vector<unsigned char> bytes) {
  try {
    Dataset::fromBytes("d.bin", std::move(bytes));
  } catch (const Error &e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("d.bin: ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  return "(no error)";
}

void putU32(std::vector<unsigned char> &b, size_t at, uint32_t v) {
  std::memcpy(b.data() + at, &v, 4);
}
void putU64(std::vector<unsigned char> &b, size_t at, uint64_t v) {
  std::memcpy(b.data() + at, &v, 8);
}

TEST(Dataset, ReadsRecordsAndStreams) {
  auto d = Dataset::fromBytes("d.bin", records(100));
  EXPECT_EQ(d->kind(), DataKind::Records);
  EXPECT_EQ(d->count(), 100);
  ASSERT_EQ(d->fields().size(), 2u);
  EXPECT_EQ(d->field("x")->shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(d->field("y")->recordBytes, 4u);
  EXPECT_EQ(d->summary(), "records: 100 × {x f32[4], y i32[]}");
  auto s = Dataset::fromBytes("s.bin", stream(1000));
  EXPECT_EQ(s->kind(), DataKind::Tokens);
  EXPECT_EQ(s->summary(), "token stream: 1,000 u8 tokens, vocab 256");
  EXPECT_NE(d->fingerprint(), s->fingerprint());
}

TEST(Dataset, RejectsMalformedFiles) {
  std::vector<unsigned char> good = records(20);
  EXPECT_HAS(openError({1, 2, 3}), "shorter than the 32-byte header");
  auto bad = good;
  bad[0] = 'X';
  EXPECT_HAS(openError(bad), "not a Loom dataset");
  bad = good;
  putU32(bad, 8, 2);
  EXPECT_HAS(openError(bad), "dataset format version 2, this runtime reads 1");
  bad = good;
  putU32(bad, 12, 3);
  EXPECT_HAS(openError(bad), "unknown dataset kind 3");
  bad = good;
  putU32(bad, 24, 0);
  EXPECT_HAS(openError(bad), "field count 0");
  bad = good;
  putU32(bad, 24, 1000);
  EXPECT_HAS(openError(bad), "field count 1000");
  // Field 0's descriptor starts at 32.
  bad = good;
  std::memset(bad.data() + 32, 'a', 32);
  EXPECT_HAS(openError(bad), "not NUL-terminated");
  bad = good;
  bad[32] = '-';
  EXPECT_HAS(openError(bad), "outside [A-Za-z0-9_.]");
  bad = good;
  putU32(bad, 32 + 32, 99);
  EXPECT_HAS(openError(bad), "field 'x': unknown dtype code 99");
  bad = good;
  putU32(bad, 32 + 36, 5);
  EXPECT_HAS(openError(bad), "rank 5 exceeds 4");
  bad = good;
  putU64(bad, 32 + 48, 3); // dims[1] of a rank-1 field
  EXPECT_HAS(openError(bad), "dims beyond its rank must be 0");
  bad = good;
  putU64(bad, 32 + 40, 0);
  EXPECT_HAS(openError(bad), "dimension 0 is 0");
  bad = good;
  putU64(bad, 32 + 72, 200);
  EXPECT_HAS(openError(bad), "not a multiple of 64");
  bad = good;
  putU64(bad, 32 + 72, 64);
  EXPECT_HAS(openError(bad), "lies inside the header");
  bad = good;
  putU64(bad, 16, 21); // one record more than the file holds
  EXPECT_HAS(openError(bad), "run past the end of the file");
  bad = good;
  putU64(bad, 16, uint64_t(1) << 47); // huge count must not overflow
  EXPECT_HAS(openError(bad), "run past the end of the file");
  bad = good;
  bad.push_back(0);
  EXPECT_HAS(openError(bad), "trailing bytes");
  bad = good;
  bad.resize(bad.size() - 1);
  EXPECT_HAS(openError(bad), "truncated");
  bad = good;
  putU64(bad, 32 + 80 + 72, 192); // y's data on top of x's
  EXPECT_HAS(openError(bad), "overlap");
  bad = good;
  std::memcpy(bad.data() + 32 + 80, "x", 2); // two fields named x
  EXPECT_HAS(openError(bad), "appears twice");
}

TEST(Dataset, RejectsMalformedStreams) {
  auto bad = stream(100);
  putU32(bad, 32 + 32, uint32_t(DataType::F32));
  EXPECT_HAS(openError(bad), "token stream dtype f32");
  EXPECT_HAS(openError(stream(300, 200)), "token 200 is 200, outside [0, 200)");
  std::vector<int32_t> neg = {1, 2, -5, 3};
  EXPECT_HAS(
      openError(encodeDataset(DataKind::Tokens, 4,
                              {{"tokens", DataType::I32, {}, bytesOf(neg)}})),
      "token 2 is -5");
  std::vector<unsigned char> t(10);
  EXPECT_HAS(openError(encodeDataset(DataKind::Tokens, 10,
                                     {{"ids", DataType::U8, {}, t}})),
             "a token stream's field is 'tokens'");
  EXPECT_HAS(openError(encodeDataset(DataKind::Tokens, 10,
                                     {{"tokens", DataType::U8, {}, t},
                                      {"more", DataType::U8, {}, t}})),
             "exactly one field");
}

TEST(Dataset, OpensFilesByPath) {
  std::string path = testing::TempDir() + "dataset_test.bin";
  std::vector<unsigned char> b = records(30);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(b.data()), b.size());
  }
  auto d = Dataset::open(path);
  EXPECT_EQ(d->count(), 30);
  float x0;
  std::memcpy(&x0, d->data(*d->field("x")) + 16 * 7, 4);
  EXPECT_EQ(x0, 7.0f);
  unlink(path.c_str());
  try {
    Dataset::open(path);
    ADD_FAILURE();
  } catch (const Error &e) {
    EXPECT_HAS(e.what(), path + ": cannot open the dataset");
  }
}

std::string bindError(const Dataset &d, const std::vector<Buffer> &inputs) {
  try {
    DataLoader l(d, inputs, 0);
  } catch (const Error &e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos);
    return msg;
  }
  return "(no error)";
}

TEST(Dataset, BindingErrorsNameFileFieldAndTypes) {
  auto d = Dataset::fromBytes("digits.bin", records(100));
  std::vector<Buffer> in = recordInputs();
  EXPECT_EQ(bindError(*d, in), "(no error)");
  in[1].name = "label";
  EXPECT_EQ(bindError(*d, in),
            "digits.bin: no field 'label' for the model's input 'label' "
            "(expected i32[] per record); the file has x f32[4], y i32[]");
  in = recordInputs();
  in[0] = input("x", DType::F32, {8, 5}, 0);
  EXPECT_EQ(bindError(*d, in), "digits.bin: field 'x' is f32[4] per record, "
                               "the model's input 'x' expects f32[5]");
  in = recordInputs();
  in[1] = input("y", DType::I64, {8}, 128);
  EXPECT_EQ(bindError(*d, in), "digits.bin: field 'y' is i32[] per record, "
                               "the model's input 'y' expects i64[]");
  // Fewer training records than a batch.
  auto small = Dataset::fromBytes("small.bin", records(5));
  EXPECT_HAS(bindError(*small, recordInputs()), "fewer than one batch of 8");
  // A stream needs tokens and targets.
  auto s = Dataset::fromBytes("text.bin", stream(1000));
  EXPECT_EQ(
      bindError(*s, recordInputs()),
      "text.bin: a token stream feeds the inputs 'tokens' and 'targets', "
      "both i32[batch, seq]; the model's inputs are x f32[8, 4], y i32[8]");
}

TEST(Dataset, ShuffleIsDeterministicPerSeedAndEpoch) {
  auto d = Dataset::fromBytes("d.bin", records(100));
  DataLoader a(*d, recordInputs(), 1), b(*d, recordInputs(), 1),
      c(*d, recordInputs(), 2);
  EXPECT_EQ(a.trainSize(), 90);
  EXPECT_EQ(a.heldOutSize(), 10);
  std::vector<int64_t> o0 = a.trainOrder(0);
  EXPECT_EQ(o0, b.trainOrder(0));
  EXPECT_NE(o0, a.trainOrder(1));
  EXPECT_NE(o0, c.trainOrder(0));
  std::vector<int64_t> sorted = o0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 90; ++i)
    EXPECT_EQ(sorted[i], i);
  // Not the identity.
  int fixed = 0;
  for (int64_t i = 0; i < 90; ++i)
    fixed += o0[i] == i;
  EXPECT_LT(fixed, 10);
}

TEST(Dataset, BatchesFollowTheOrderAndNeverTouchHeldOut) {
  auto d = Dataset::fromBytes("d.bin", records(100));
  std::vector<Buffer> in = recordInputs();
  DataLoader l(*d, in, 3);
  EXPECT_EQ(l.batchesPerEpoch(), 11); // 90 / 8, remainder dropped
  EXPECT_EQ(l.evalBatches(), 1);      // 10 / 8
  std::vector<unsigned char> arena(256);
  std::set<int64_t> trained;
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> order = l.trainOrder(epoch);
    for (int64_t b = 0; b < l.batchesPerEpoch(); ++b) {
      l.nextTrainBatch(arena.data());
      const float *x = reinterpret_cast<const float *>(arena.data());
      const int32_t *y = reinterpret_cast<const int32_t *>(arena.data() + 128);
      for (int r = 0; r < 8; ++r) {
        int64_t rec = order[b * 8 + r];
        ASSERT_EQ(x[r * 4 + 3], float(rec));
        ASSERT_EQ(y[r], rec % 3);
        trained.insert(rec);
      }
    }
  }
  EXPECT_EQ(l.cursor().epoch, 3u);
  EXPECT_EQ(*trained.rbegin(), 89); // never a held-out record (90..99)
  l.evalBatch(0, arena.data());
  const float *x = reinterpret_cast<const float *>(arena.data());
  for (int r = 0; r < 8; ++r)
    EXPECT_EQ(x[r * 4], float(90 + r));
  EXPECT_EQ(l.evalRecords(0).front(), 90);
  EXPECT_THROW(l.evalBatch(1, arena.data()), Error);
}

TEST(Dataset, CursorResumesExactly) {
  auto d = Dataset::fromBytes("d.bin", records(100));
  std::vector<Buffer> in = recordInputs();
  DataLoader a(*d, in, 5);
  std::vector<unsigned char> arena(256);
  for (int i = 0; i < 15; ++i) // into the second epoch
    a.nextTrainBatch(arena.data());
  DataCursor saved = DataCursor::fromJson(
      loom::json::parse(loom::json::write(a.cursor().toJson())));
  EXPECT_EQ(saved.epoch, 1u);
  EXPECT_EQ(saved.batch, 4u);
  std::vector<std::vector<unsigned char>> expected;
  for (int i = 0; i < 10; ++i) {
    a.nextTrainBatch(arena.data());
    expected.push_back(arena);
  }
  DataLoader b(*d, in, 5);
  b.restore(saved);
  for (int i = 0; i < 10; ++i) {
    b.nextTrainBatch(arena.data());
    EXPECT_EQ(arena, expected[i]) << i;
  }
  DataLoader other(*d, in, 6);
  EXPECT_THROW(other.restore(saved), Error);
  auto d2 = Dataset::fromBytes("d2.bin", records(101));
  DataLoader elsewhere(*d2, in, 5);
  EXPECT_THROW(elsewhere.restore(saved), Error);
  DataCursor past = saved;
  past.batch = 11;
  EXPECT_THROW(b.restore(past), Error);
  EXPECT_THROW(DataCursor::fromJson(loom::json::parse(R"({"seed": 1})")),
               Error);
}

TEST(Dataset, StreamWindowsShiftTargetsAndStayInTheTrainingPart) {
  auto d = Dataset::fromBytes("text.bin", stream(1000));
  std::vector<Buffer> in = {input("tokens", DType::I32, {4, 16}, 0),
                            input("targets", DType::I32, {4, 16}, 256)};
  DataLoader l(*d, in, 9);
  EXPECT_EQ(l.seqLength(), 16);
  EXPECT_EQ(l.tokensPerBatch(), 64);
  EXPECT_EQ(l.trainSize(), 900);
  EXPECT_EQ(l.heldOutSize(), 100);
  EXPECT_EQ(l.evalBatches(), 1); // (100 - 1) / 16 = 6 windows -> 1 batch of 4
  std::vector<unsigned char> arena(512);
  std::set<int64_t> starts;
  for (uint64_t b = 0; b < 50; ++b) {
    l.nextTrainBatch(arena.data());
    const int32_t *tok = reinterpret_cast<const int32_t *>(arena.data());
    const int32_t *tgt = reinterpret_cast<const int32_t *>(arena.data() + 256);
    for (int r = 0; r < 4; ++r) {
      int64_t s = l.windowStart(b, r);
      starts.insert(s);
      ASSERT_GE(s, 0);
      ASSERT_LE(s + 16 + 1, 900); // the whole window is training data
      for (int t = 0; t < 16; ++t) {
        ASSERT_EQ(tok[r * 16 + t], (s + t) % 251);
        ASSERT_EQ(tgt[r * 16 + t], (s + t + 1) % 251);
      }
    }
  }
  EXPECT_GT(starts.size(), 150u); // offsets vary
  DataLoader same(*d, in, 9), other(*d, in, 10);
  EXPECT_EQ(same.windowStart(7, 2), l.windowStart(7, 2));
  EXPECT_NE(other.windowStart(7, 2), l.windowStart(7, 2));
  l.evalBatch(0, arena.data());
  const int32_t *tok = reinterpret_cast<const int32_t *>(arena.data());
  EXPECT_EQ(tok[0], 900 % 251);
  EXPECT_EQ(tok[16], (900 + 16) % 251);
  // Cursor: batches drawn.
  EXPECT_EQ(l.cursor().batch, 50u);
  DataLoader resumed(*d, in, 9);
  resumed.restore(l.cursor());
  std::vector<unsigned char> x(512), y(512);
  l.nextTrainBatch(x.data());
  resumed.nextTrainBatch(y.data());
  EXPECT_EQ(x, y);
}

TEST(Dataset, StreamTooShortForOneWindow) {
  auto d = Dataset::fromBytes("tiny.bin", stream(10));
  std::vector<Buffer> in = {input("tokens", DType::I32, {1, 16}, 0),
                            input("targets", DType::I32, {1, 16}, 64)};
  EXPECT_HAS(bindError(*d, in), "fewer than one window of seq + 1 = 17");
}

} // namespace
