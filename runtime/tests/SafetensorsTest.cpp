//===- SafetensorsTest.cpp - the safetensors reader and writer ------------===//
//
// Round trips are bitwise for every dtype; every malformed header the
// format can have is refused with a message naming the problem, both from
// memory (validateBytes, the fuzzer's entry) and from a file (Reader).
//
//===----------------------------------------------------------------------===//
#include "runtime/Safetensors.h"
#include "runtime/Support.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <ftw.h>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace loom::runtime;
namespace st = loom::runtime::safetensors;

namespace {

#define EXPECT_THROW_HAS(stmt, needle)                                         \
  do {                                                                         \
    try {                                                                      \
      stmt;                                                                    \
      ADD_FAILURE() << "no error; expected one containing: " << (needle);      \
    } catch (const Error &e_) {                                                \
      EXPECT_NE(std::string(e_.what()).find(needle), std::string::npos)        \
          << e_.what();                                                        \
      EXPECT_EQ(std::string(e_.what()).find('\n'), std::string::npos);         \
    }                                                                          \
  } while (0)

std::string tempDir() {
  static std::string dir = [] {
    std::string d = testing::TempDir() + "loom_st_" + std::to_string(getpid());
    mkdir(d.c_str(), 0755);
    return d;
  }();
  return dir;
}

/// Removes tempDir() and everything in it when the tests end.
class RemoveTempDir : public testing::Environment {
public:
  void TearDown() override {
    nftw(
        tempDir().c_str(),
        [](const char *path, const struct stat *, int, struct FTW *) {
          ::remove(path);
          return 0;
        },
        16, FTW_DEPTH | FTW_PHYS);
  }
};
testing::Environment *const kCleanup =
    testing::AddGlobalTestEnvironment(new RemoveTempDir);

std::string readFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string &path, const std::string &bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// A file image from a header text and data, the length prefix computed.
std::string image(const std::string &header, const std::string &data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

st::Header validate(const std::string &img, bool finite = false) {
  return st::validateBytes(reinterpret_cast<const unsigned char *>(img.data()),
                           img.size(), finite);
}

std::string bytesOf(const std::vector<unsigned char> &v) {
  return std::string(v.begin(), v.end());
}

TEST(Safetensors, DTypes) {
  const char *names[] = {"F64", "F32", "F16", "BF16", "I64",
                         "I32", "I16", "I8",  "U8",   "BOOL"};
  size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
  for (size_t i = 0; i < 10; ++i) {
    st::DType t;
    ASSERT_TRUE(st::parseDType(names[i], t)) << names[i];
    EXPECT_STREQ(st::dtypeName(t), names[i]);
    EXPECT_EQ(st::dtypeSize(t), sizes[i]);
  }
  st::DType t;
  EXPECT_FALSE(st::parseDType("f32", t));
  EXPECT_FALSE(st::parseDType("F8_E4M3", t));
  EXPECT_FALSE(st::parseDType("", t));
}

TEST(Safetensors, RoundTripIsBitwiseForEveryDType) {
  std::vector<double> f64 = {1.0 / 3, -0.0, 1e300, 5e-324};
  std::vector<float> f32(6 * 7);
  for (size_t i = 0; i < f32.size(); ++i)
    f32[i] = std::ldexp(float(i) - 20.5f, int(i % 9) - 4);
  uint32_t nanBits = 0x7fc01234u; // a NaN with a payload survives untouched
  std::memcpy(&f32[3], &nanBits, 4);
  std::vector<uint16_t> f16 = {0x3c00, 0x8001, 0x7bff}, bf16 = {0x3f80, 0xff7f};
  std::vector<int64_t> i64 = {INT64_MIN, -1, 42};
  std::vector<int32_t> i32 = {7};
  std::vector<int16_t> i16 = {-3, 3};
  std::vector<int8_t> i8 = {-128, 127, 0};
  std::vector<uint8_t> u8 = {255, 0}, boolean = {1, 0, 1};
  int64_t scalar = 123456789012345;
  std::vector<st::TensorData> tensors = {
      {"w", st::DType::F32, {6, 7}, f32.data()},
      {"layers.0.wq", st::DType::F64, {2, 2}, f64.data()},
      {"half", st::DType::F16, {3}, f16.data()},
      {"brain", st::DType::BF16, {2, 1}, bf16.data()},
      {"optimizer.step", st::DType::I64, {}, &scalar},
      {"i64", st::DType::I64, {3}, i64.data()},
      {"i32", st::DType::I32, {1, 1, 1}, i32.data()},
      {"i16", st::DType::I16, {2}, i16.data()},
      {"i8", st::DType::I8, {3}, i8.data()},
      {"u8", st::DType::U8, {2}, u8.data()},
      {"mask", st::DType::BOOL, {3}, boolean.data()},
      {"empty", st::DType::F32, {0, 5}, nullptr},
  };
  std::string path = tempDir() + "/round.safetensors";
  st::WriteResult w =
      st::write(path, tensors, {{"model", "Gpt"}, {"step", "7"}});
  std::string bytes = readFile(path);
  EXPECT_EQ(w.bytes, bytes.size());
  EXPECT_EQ(bytesOf(st::encode(tensors, {{"model", "Gpt"}, {"step", "7"}})),
            bytes);

  std::unique_ptr<st::Reader> r = st::Reader::open(path);
  const st::Header &h = r->header();
  EXPECT_EQ((8 + h.headerBytes) % 8, 0u) << "data must start 8-byte aligned";
  EXPECT_EQ(h.dataStart + h.dataBytes, bytes.size());
  ASSERT_EQ(h.metadata.size(), 2u);
  EXPECT_EQ(*h.meta("model"), "Gpt");
  EXPECT_EQ(*h.meta("step"), "7");
  EXPECT_EQ(h.meta("absent"), nullptr);
  ASSERT_EQ(h.tensors.size(), tensors.size());
  // Data in name order.
  for (size_t i = 1; i < h.tensors.size(); ++i)
    EXPECT_LT(h.tensors[i - 1].name, h.tensors[i].name);
  for (const st::TensorData &t : tensors) {
    const st::TensorInfo *info = h.find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    std::vector<unsigned char> back(info->bytes());
    r->read(*info, back.data());
    if (info->bytes()) {
      EXPECT_EQ(std::memcmp(back.data(), t.data, back.size()), 0) << t.name;
    }
  }
  EXPECT_EQ(h.find("optimizer.step")->elements, 1u);
  EXPECT_EQ(h.find("empty")->elements, 0u);
  EXPECT_EQ(h.find("empty")->bytes(), 0u);
  // And the in-memory validator agrees.
  EXPECT_EQ(validate(bytes).tensors.size(), tensors.size());
}

TEST(Safetensors, ReadsWhatPythonWrites) {
  // Byte for byte what `safetensors.torch.save_file({"b": torch.zeros(2),
  // "a": torch.ones(1, dtype=torch.float64)}, metadata={"format": "pt"})`
  // writes: metadata first, the header padded with spaces to 8 bytes.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F64","shape":[1],)"
      R"("data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],)"
      R"("data_offsets":[8,16]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  double one = 1.0;
  float zeros[2] = {0, 0};
  std::string data(reinterpret_cast<const char *>(&one), 8);
  data.append(reinterpret_cast<const char *>(zeros), 8);
  st::Header h = validate(image(header, data));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].dtype, st::DType::F32);
  EXPECT_EQ(*h.meta("format"), "pt");
  // Tensors listed out of data order are fine: the order is the offsets'.
  std::string swapped =
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})";
  EXPECT_EQ(validate(image(swapped, data)).tensors[0].name, "a");
  // No tensors at all is a valid (empty) file.
  EXPECT_TRUE(validate(image("{}      ", "")).tensors.empty());
}

struct Bad {
  const char *what;
  std::string image;
  const char *message;
};

std::vector<Bad> malformed() {
  std::string four(4, 'x'), eight(8, 'x'), sixteen(16, 'x');
  auto one = [](const std::string &entry) { return "{" + entry + "}"; };
  std::vector<Bad> v;
  v.push_back({"empty file", "", "shorter than the 8-byte header length"});
  v.push_back({"7 bytes", std::string(7, '\0'), "shorter than the 8-byte"});
  {
    std::string img(8, '\0');
    img[4] = 1; // 2^32: a 4 GB header
    img += "{}";
    v.push_back({"4 GB header length", img,
                 "header length 4294967296 exceeds the limit of 100000000"});
  }
  {
    std::string img(8, '\xff');
    v.push_back({"2^64-1 header length", img, "exceeds the limit"});
  }
  {
    std::string img = image(
        one(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), eight);
    v.push_back({"header past the end (truncated in the header)",
                 img.substr(0, 20), "runs past the end of the file"});
  }
  v.push_back({"length 0", image("", ""), "too short for a JSON object"});
  v.push_back({"bad JSON", image("{\"a\": ", ""), "malformed JSON"});
  v.push_back({"trailing comma", image(R"({"a":{},})", ""), "malformed JSON"});
  v.push_back(
      {"NUL padding", image(std::string("{}") + '\0', ""), "malformed JSON"});
  v.push_back(
      {"not an object", image("[1, 2]  ", ""), "expected a JSON object"});
  v.push_back({"duplicate names",
               image(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                     R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                     "xx"),
               "duplicate"});
  v.push_back(
      {"unknown dtype",
       image(one(R"("a":{"dtype":"F8","shape":[1],"data_offsets":[0,1]})"),
             "x"),
       "tensor 'a': unknown dtype 'F8'"});
  v.push_back({"dtype not a string",
               image(one(R"("a":{"dtype":4,"shape":[1],"data_offsets":[0,4]})"),
                     four),
               "'dtype' missing or not a string"});
  v.push_back({"shape missing",
               image(one(R"("a":{"dtype":"U8","data_offsets":[0,1]})"), "x"),
               "'shape' missing"});
  v.push_back(
      {"negative dim",
       image(one(R"("a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]})"),
             "x"),
       "non-negative integers"});
  v.push_back(
      {"fractional dim",
       image(one(R"("a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]})"),
             "x"),
       "non-negative integers"});
  v.push_back(
      {"huge shape",
       image(
           one(R"("a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]})"),
           eight),
       "too large"});
  v.push_back(
      {"size mismatch",
       image(one(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"),
             eight),
       "hold 8 bytes, F32[3] needs 12"});
  v.push_back(
      {"offsets not a pair",
       image(one(R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0]})"), "x"),
       "'data_offsets' missing or not [begin, end]"});
  v.push_back(
      {"end before begin",
       image(one(R"("a":{"dtype":"U8","shape":[0],"data_offsets":[4,2]})"),
             four),
       "end before they begin"});
  v.push_back(
      {"offsets past the end",
       image(one(R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})"),
             eight),
       "run past the 8 bytes of data"});
  {
    std::string img =
        image(one(R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})"),
              sixteen);
    v.push_back({"truncated data", img.substr(0, img.size() - 3),
                 "run past the 13 bytes of data"});
  }
  v.push_back(
      {"overlapping",
       image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             std::string(12, 'x')),
       "tensor 'b': data [4, 12) overlaps tensor 'a' [0, 8)"});
  v.push_back({"same offsets twice",
               image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                     eight),
               "overlaps"});
  v.push_back(
      {"gap between tensors",
       image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
             std::string(12, 'x')),
       "leaving bytes [4, 8) of the data unused"});
  v.push_back(
      {"gap at the start",
       image(one(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"),
             eight),
       "leaving bytes [0, 4)"});
  v.push_back(
      {"bytes after the last tensor",
       image(one(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})"),
             eight),
       "4 trailing bytes belong to no tensor"});
  v.push_back({"metadata not an object", image(R"({"__metadata__":[]})", ""),
               "__metadata__ must be an object"});
  v.push_back({"metadata value not a string",
               image(R"({"__metadata__":{"step":3}})", ""),
               "__metadata__.step must be a string"});
  v.push_back({"tensor entry not an object", image(R"({"a":[1]})", ""),
               "tensor 'a': expected an object"});
  {
    std::string deep(50, '[');
    v.push_back(
        {"deep nesting", image("{\"a\":" + deep, ""), "malformed JSON"});
  }
  return v;
}

TEST(Safetensors, EveryMalformedHeaderIsRefusedFromMemory) {
  for (const Bad &b : malformed()) {
    SCOPED_TRACE(b.what);
    EXPECT_THROW_HAS(validate(b.image), b.message);
  }
}

TEST(Safetensors, EveryMalformedHeaderIsRefusedFromAFile) {
  std::string path = tempDir() + "/bad.safetensors";
  for (const Bad &b : malformed()) {
    SCOPED_TRACE(b.what);
    writeFile(path, b.image);
    EXPECT_THROW_HAS(st::Reader::open(path), path + ": ");
    EXPECT_THROW_HAS(st::Reader::open(path), b.message);
  }
}

TEST(Safetensors, NotAFile) {
  EXPECT_THROW_HAS(st::Reader::open(tempDir() + "/missing.safetensors"),
                   "missing.safetensors: cannot open: No such file");
  EXPECT_THROW_HAS(st::Reader::open(tempDir()), "not a regular file");
}

TEST(Safetensors, NonFiniteValuesAreFoundWhenAsked) {
  struct Case {
    st::DType dtype;
    std::string bytes;
    const char *message;
  };
  auto f32 = [](std::vector<float> v) {
    return std::string(reinterpret_cast<const char *>(v.data()), v.size() * 4);
  };
  auto f64 = [](std::vector<double> v) {
    return std::string(reinterpret_cast<const char *>(v.data()), v.size() * 8);
  };
  auto u16 = [](std::vector<uint16_t> v) {
    return std::string(reinterpret_cast<const char *>(v.data()), v.size() * 2);
  };
  std::vector<Case> cases = {
      {st::DType::F32, f32({1, 2, NAN, 4}), "holds NaN at element 2"},
      {st::DType::F32, f32({1, -INFINITY, 3, 4}),
       "holds an infinity at element 1"},
      {st::DType::F64, f64({0, 0, 0, INFINITY}),
       "holds an infinity at element 3"},
      {st::DType::F16, u16({0x3c00, 0x7e00, 0, 0}), "holds NaN at element 1"},
      {st::DType::F16, u16({0xfc00, 0, 0, 0}),
       "holds an infinity at element 0"},
      {st::DType::BF16, u16({0, 0, 0x7f80, 0}),
       "holds an infinity at element 2"},
      {st::DType::BF16, u16({0, 0, 0, 0xffc1}), "holds NaN at element 3"},
  };
  std::string path = tempDir() + "/nan.safetensors";
  for (const Case &c : cases) {
    SCOPED_TRACE(st::dtypeName(c.dtype));
    std::vector<st::TensorData> t = {{"w", c.dtype, {4}, c.bytes.data()}};
    std::string img = bytesOf(st::encode(t));
    EXPECT_NO_THROW(validate(img, false));
    EXPECT_THROW_HAS(validate(img, true),
                     std::string("tensor 'w' ") + c.message);
    st::write(path, t);
    std::unique_ptr<st::Reader> r = st::Reader::open(path);
    std::vector<char> out(c.bytes.size());
    EXPECT_NO_THROW(r->read(r->header().tensors[0], out.data(), false));
    EXPECT_THROW_HAS(r->read(r->header().tensors[0], out.data(), true),
                     c.message);
  }
  // Finite extremes and integers are never flagged.
  EXPECT_EQ(st::firstNonFinite(st::DType::F32, f32({3.4e38f, -0.0f}).data(), 2),
            -1);
  EXPECT_EQ(st::firstNonFinite(st::DType::F16, u16({0x7bff}).data(), 1), -1);
  EXPECT_EQ(st::firstNonFinite(st::DType::I32, f32({NAN}).data(), 1), -1);
}

TEST(Safetensors, WriterRefusesBadInput) {
  float x = 1;
  EXPECT_THROW_HAS(st::encode({{"a", st::DType::F32, {}, &x},
                               {"a", st::DType::F32, {}, &x}}),
                   "tensor 'a' given twice");
  EXPECT_THROW_HAS(st::encode({{"__metadata__", st::DType::F32, {}, &x}}),
                   "reserved");
  EXPECT_THROW_HAS(st::encode({{"a", st::DType::F32, {-2}, &x}}),
                   "negative dimension");
  EXPECT_THROW_HAS(st::encode({{"a", st::DType::F32, {1}, nullptr}}),
                   "no data");
}

TEST(Safetensors, AFailingWriteLeavesTheOldFileAndNoTemporary) {
  std::string dir = tempDir() + "/atomic";
  mkdir(dir.c_str(), 0755);
  std::string path = dir + "/w.safetensors";
  float a[2] = {1, 2};
  st::write(path, {{"a", st::DType::F32, {2}, a}});
  std::string before = readFile(path);
  EXPECT_THROW_HAS(st::write(path, {{"a", st::DType::F32, {2}, a},
                                    {"a", st::DType::F32, {2}, a}}),
                   path + ": tensor 'a' given twice");
  EXPECT_EQ(readFile(path), before);
  // A folder that does not exist: nothing is created.
  EXPECT_THROW_HAS(st::write(dir + "/no/such/w.safetensors",
                             {{"a", st::DType::F32, {2}, a}}),
                   "cannot create");
  // Overwriting replaces the file whole; no temporary is left behind.
  float b[3] = {4, 5, 6};
  st::write(path, {{"b", st::DType::F32, {3}, b}});
  EXPECT_NE(readFile(path), before);
  int files = 0;
  if (DIR *d = opendir(dir.c_str())) {
    while (struct dirent *e = readdir(d))
      files += e->d_name[0] != '.';
    closedir(d);
  }
  EXPECT_EQ(files, 1);
}

} // namespace
