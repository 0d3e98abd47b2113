//===- CheckpointTest.cpp - weights files and checkpoints -----------------===//
//
// --save/--init-from's library side (names, shapes, dtypes checked before a
// byte of the arena changes) and checkpoints: bitwise round trips, the index,
// retention, and a --resume search that steps over incomplete or damaged
// checkpoints but refuses another model's.
//
//===----------------------------------------------------------------------===//
#include "runtime/Checkpoint.h"
#include "runtime/Init.h"
#include "runtime/Support.h"

#include <gtest/gtest.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <ftw.h>
#include <sstream>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace loom::runtime;
namespace st = loom::runtime::safetensors;
namespace json = loom::json;

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

/// A model with two parameters and Adam-like state (moments and an i64
/// counter); `hidden` changes the layout.
std::string manifestText(const std::string &model = "Mlp", int hidden = 16,
                         const char *optimizer = "adamw") {
  std::ostringstream os;
  os << R"({"format": "loomx", "format_version": 1, "abi_version": )"
     << LOOM_ABI_VERSION << R"(,
  "model": ")"
     << model << R"(", "target": "cpu", "mesh": {"dp": 1, "tp": 1, "pp": 1},
  "arena_bytes": 65536,
  "programs": {"train_step": "loom_train_step"},
  "params": [
    {"name": "layers.0.w1", "dtype": "f32", "shape": [8, )"
     << hidden << R"(], "offset": 0, "init": "glorot", "init_args": []},
    {"name": "b1", "dtype": "f32", "shape": [)"
     << hidden << R"(], "offset": 8192, "init": "normal", "init_args": [0.5]}
  ],
  "state": [
    {"name": "optimizer.step", "dtype": "i64", "shape": [], "offset": 16384},
    {"name": "layers.0.w1.)"
     << optimizer << R"(", "dtype": "f32", "shape": [8, )" << hidden
     << R"(], "offset": 16448},
    {"name": "b1.)"
     << optimizer << R"(", "dtype": "f32", "shape": [)" << hidden
     << R"(], "offset": 32768}
  ],
  "inputs": [{"name": "x", "dtype": "f32", "shape": [4, 8], "offset": 40960}],
  "outputs": {"loss": 65000, "grad_norm": 65004, "lr": 65008}})";
  return os.str();
}

Manifest manifest(const std::string &model = "Mlp", int hidden = 16,
                  const char *optimizer = "adamw") {
  return parseManifest(manifestText(model, hidden, optimizer));
}

/// An arena with initialised parameters and state filled with a pattern.
std::vector<unsigned char> arenaFor(const Manifest &m, uint64_t seed) {
  std::vector<unsigned char> arena(m.arenaBytes, 0);
  initParams(m, seed, arena.data());
  for (const Buffer &b : m.state)
    for (int64_t i = 0; i < b.bytes; ++i)
      arena[b.offset + i] = static_cast<unsigned char>((i * 31 + seed) & 0xff);
  int64_t step = 41 + int64_t(seed);
  std::memcpy(arena.data() + 16384, &step, 8);
  return arena;
}

bool sameTensors(const Manifest &m, const std::vector<unsigned char> &a,
                 const std::vector<unsigned char> &b) {
  for (const ParamSpec &p : m.params)
    if (std::memcmp(a.data() + p.offset, b.data() + p.offset, p.bytes))
      return false;
  for (const Buffer &s : m.state)
    if (std::memcmp(a.data() + s.offset, b.data() + s.offset, s.bytes))
      return false;
  return true;
}

/// Folders this process made, removed (with their contents) at the end.
std::vector<std::string> &madeFolders() {
  static std::vector<std::string> v;
  return v;
}

class RemoveMadeFolders : public testing::Environment {
public:
  void TearDown() override {
    for (const std::string &d : madeFolders())
      nftw(
          d.c_str(),
          [](const char *path, const struct stat *, int, struct FTW *) {
            ::remove(path);
            return 0;
          },
          16, FTW_DEPTH | FTW_PHYS);
  }
};
testing::Environment *const kCleanup =
    testing::AddGlobalTestEnvironment(new RemoveMadeFolders);

std::string tempDir(const std::string &name) {
  std::string d =
      testing::TempDir() + "loom_ckpt_" + std::to_string(getpid()) + "_" + name;
  mkdir(d.c_str(), 0755);
  madeFolders().push_back(d);
  return d;
}

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

std::vector<std::string> entries(const std::string &dir) {
  std::vector<std::string> v;
  if (DIR *d = opendir(dir.c_str())) {
    while (struct dirent *e = readdir(d))
      if (e->d_name[0] != '.')
        v.push_back(e->d_name);
    closedir(d);
  }
  std::sort(v.begin(), v.end());
  return v;
}

CheckpointIndex indexAt(int64_t step, const Manifest &m) {
  CheckpointIndex ix;
  ix.model = m.model;
  ix.layout = layoutFingerprint(m);
  ix.artifactChecksum = 0x1234;
  ix.artifact = "m.loomx";
  ix.step = step;
  ix.targetSteps = 100;
  ix.seed = 18446744073709551615ull; // u64 max survives JSON
  ix.threads = 2;
  ix.dataPath = "digits.bin";
  ix.cursor.seed = ix.seed;
  ix.cursor.fingerprint = 99;
  ix.cursor.epoch = 3;
  ix.cursor.batch = uint64_t(step);
  ix.skippedTotal = 2;
  ix.metricsLines = step;
  return ix;
}

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

TEST(Weights, SaveThenLoadIsBitwise) {
  Manifest m = manifest();
  std::vector<unsigned char> a = arenaFor(m, 1), b = arenaFor(m, 2);
  std::string path = tempDir("w") + "/w.safetensors";
  saveWeights(path, m, a.data(), {{"model", "Mlp"}, {"step", "0"}});
  std::unique_ptr<st::Reader> r = st::Reader::open(path);
  EXPECT_EQ(r->header().tensors.size(), 2u); // parameters only
  EXPECT_EQ(*r->header().meta("model"), "Mlp");
  EXPECT_EQ(r->header().find("layers.0.w1")->shape,
            (std::vector<int64_t>{8, 16}));
  loadWeights(path, m, b.data());
  for (const ParamSpec &p : m.params)
    EXPECT_EQ(std::memcmp(a.data() + p.offset, b.data() + p.offset, p.bytes), 0)
        << p.name;
  // State is not part of a weights file: b keeps its own.
  EXPECT_NE(std::memcmp(a.data() + 16448, b.data() + 16448, 64), 0);
}

TEST(Weights, InitFromRefusesWrongNamesShapesAndDTypes) {
  Manifest m = manifest();
  std::vector<unsigned char> arena = arenaFor(m, 1);
  const std::vector<unsigned char> before = arena;
  std::string dir = tempDir("init");
  std::vector<float> w(8 * 16, 0.25f), wT(16 * 8, 0.25f), bias(16, 1.0f),
      big(8 * 32, 0.0f);
  std::vector<double> w64(8 * 16, 0.25);
  std::vector<uint16_t> b16(16, 0x3c00);
  struct Case {
    const char *what;
    std::vector<st::TensorData> tensors;
    std::string message;
  };
  std::vector<Case> cases = {
      {"missing parameter",
       {{"layers.0.w1", st::DType::F32, {8, 16}, w.data()}},
       "tensor 'b1' is missing (model 'Mlp' needs all of its 2 parameters; "
       "the file has 1 tensors)"},
      {"transposed weight (a PyTorch nn.Linear saved untransposed)",
       {{"layers.0.w1", st::DType::F32, {16, 8}, wT.data()},
        {"b1", st::DType::F32, {16}, bias.data()}},
       "tensor 'layers.0.w1' has shape [16, 8], the model needs [8, 16]"},
      {"wider layer",
       {{"layers.0.w1", st::DType::F32, {8, 32}, big.data()},
        {"b1", st::DType::F32, {16}, bias.data()}},
       "tensor 'layers.0.w1' has shape [8, 32], the model needs [8, 16]"},
      {"f64 weight",
       {{"layers.0.w1", st::DType::F64, {8, 16}, w64.data()},
        {"b1", st::DType::F32, {16}, bias.data()}},
       "tensor 'layers.0.w1' has dtype F64, the model needs F32"},
      {"f16 bias",
       {{"layers.0.w1", st::DType::F32, {8, 16}, w.data()},
        {"b1", st::DType::F16, {16}, b16.data()}},
       "tensor 'b1' has dtype F16, the model needs F32"},
      {"extra tensors",
       {{"layers.0.w1", st::DType::F32, {8, 16}, w.data()},
        {"b1", st::DType::F32, {16}, bias.data()},
        {"zz.extra", st::DType::F32, {16}, bias.data()},
        {"head.weight", st::DType::F32, {16}, bias.data()}},
       "tensor 'head.weight' is not a parameter of model 'Mlp' (and 1 more "
       "unknown tensor)"},
      {"one extra tensor",
       {{"layers.0.w1", st::DType::F32, {8, 16}, w.data()},
        {"b1", st::DType::F32, {16}, bias.data()},
        {"optimizer.step", st::DType::F32, {16}, bias.data()}},
       "tensor 'optimizer.step' is not a parameter of model 'Mlp'"},
      {"a PyTorch-style name",
       {{"layers.0.w1.weight", st::DType::F32, {8, 16}, w.data()},
        {"b1", st::DType::F32, {16}, bias.data()}},
       "tensor 'layers.0.w1' is missing"},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    std::string path = dir + "/bad.safetensors";
    st::write(path, c.tensors);
    EXPECT_THROW_HAS(loadWeights(path, m, arena.data()),
                     path + ": " + c.message);
    EXPECT_EQ(arena, before) << "the arena changed before the check failed";
  }
  // A NaN is refused, naming the tensor and the element.
  std::vector<float> nan = w;
  nan[17] = NAN;
  std::string path = dir + "/nan.safetensors";
  st::write(path, {{"layers.0.w1", st::DType::F32, {8, 16}, nan.data()},
                   {"b1", st::DType::F32, {16}, bias.data()}});
  EXPECT_THROW_HAS(loadWeights(path, m, arena.data()),
                   "tensor 'layers.0.w1' holds NaN at element 17");
  // Not a safetensors file at all.
  writeFile(path, "hello, world");
  EXPECT_THROW_HAS(loadWeights(path, m, arena.data()), "header length");
  EXPECT_THROW_HAS(loadWeights(dir + "/none.safetensors", m, arena.data()),
                   "none.safetensors: cannot open");
  // And the right file loads.
  st::write(path, {{"layers.0.w1", st::DType::F32, {8, 16}, w.data()},
                   {"b1", st::DType::F32, {16}, bias.data()}});
  loadWeights(path, m, arena.data());
  EXPECT_EQ(std::memcmp(arena.data(), w.data(), w.size() * 4), 0);
  EXPECT_EQ(std::memcmp(arena.data() + 8192, bias.data(), 64), 0);
}

//===----------------------------------------------------------------------===//
// Checkpoints
//===----------------------------------------------------------------------===//

TEST(Checkpoint, Names) {
  EXPECT_EQ(checkpointName(50), "step-000050");
  EXPECT_EQ(checkpointName(0), "step-000000");
  EXPECT_EQ(checkpointName(12345678), "step-12345678");
  EXPECT_EQ(checkpointStep("step-000050"), 50);
  EXPECT_EQ(checkpointStep("step-12345678"), 12345678);
  for (const char *n :
       {"step-50", "step-0000050", "step-000050.tmp", "step-000050.stale",
        "step--00050", "step-00005x", "steps-000050", "", "step-"})
    EXPECT_EQ(checkpointStep(n), -1) << n;
}

TEST(Checkpoint, IndexRoundTripAndErrors) {
  Manifest m = manifest();
  CheckpointIndex ix = indexAt(7, m);
  ix.stateBytes = 1000;
  ix.stateFnv1a64 = 0xfedcba9876543210ull;
  ix.stateTensors = 5;
  json::Value v = json::parse(json::write(ix.toJson(), 2));
  CheckpointIndex back = CheckpointIndex::fromJson(v);
  EXPECT_EQ(back.model, "Mlp");
  EXPECT_EQ(back.layout, ix.layout);
  EXPECT_EQ(back.artifactChecksum, 0x1234u);
  EXPECT_EQ(back.step, 7);
  EXPECT_EQ(back.seed, ix.seed);
  EXPECT_EQ(back.cursor.seed, ix.seed);
  EXPECT_EQ(back.cursor.epoch, 3u);
  EXPECT_EQ(back.cursor.batch, 7u);
  EXPECT_EQ(back.skippedTotal, 2);
  EXPECT_EQ(back.metricsLines, 7);
  EXPECT_EQ(back.threads, 2);
  EXPECT_EQ(back.stateFnv1a64, 0xfedcba9876543210ull);
  EXPECT_EQ(v.find("format_version")->asInt(), kCheckpointFormatVersion);

  auto without = [&](const std::string &key) {
    json::Object o = v.asObject();
    o.erase(std::remove_if(o.begin(), o.end(),
                           [&](const auto &kv) { return kv.first == key; }),
            o.end());
    return json::Value(o);
  };
  auto with = [&](const std::string &key, json::Value x) {
    json::Object o = v.asObject();
    for (auto &kv : o)
      if (kv.first == key)
        kv.second = x;
    return json::Value(o);
  };
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(without("step")),
                   "'step' missing");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(with("step", json::Value(-1))),
                   "'step' is not a non-negative integer");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(with("seed", json::Value(3))),
                   "'seed' is not a string");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(
                       with("layout_fingerprint", json::Value("0x12"))),
                   "hex");
  EXPECT_THROW_HAS(
      CheckpointIndex::fromJson(with("format_version", json::Value(3))),
      "checkpoint format 3, this runtime reads 1 and 2");
  // Format 2 is the sharded one: a file per rank instead of "state".
  EXPECT_THROW_HAS(
      CheckpointIndex::fromJson(with("format_version", json::Value(2))),
      "'ranks' missing");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(without("data_cursor")),
                   "'data_cursor' missing");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(json::Value(3)),
                   "expected an object");
}

TEST(Checkpoint, ShardedIndexRoundTrip) {
  CheckpointIndex ix;
  ix.model = "Gpt";
  ix.step = 12;
  ix.targetSteps = 20;
  ix.seed = 1;
  ix.threads = 1;
  ix.mesh = Mesh{2, 2, 1};
  ix.zero = 1;
  for (int r = 0; r < 4; ++r)
    ix.ranks.push_back({rankFileName(r), uint64_t(100 + r), 0xabcull + r, 7});
  json::Value v = json::parse(json::write(ix.toJson(), 2));
  EXPECT_EQ(v.find("format_version")->asInt(), kShardedCheckpointFormatVersion);
  EXPECT_EQ(v.find("state"), nullptr);
  CheckpointIndex back = CheckpointIndex::fromJson(v);
  EXPECT_TRUE(back.sharded());
  EXPECT_EQ(back.mesh, (Mesh{2, 2, 1}));
  EXPECT_EQ(back.zero, 1);
  ASSERT_EQ(back.ranks.size(), 4u);
  EXPECT_EQ(back.ranks[3].file, "rank-3.safetensors");
  EXPECT_EQ(back.ranks[3].bytes, 103u);
  EXPECT_EQ(back.ranks[3].fnv1a64, 0xabcull + 3);
  EXPECT_EQ(back.ranks[3].tensors, 7);
  // The file list must match the mesh, in rank order.
  json::Object o = v.asObject();
  for (auto &kv : o)
    if (kv.first == "mesh")
      kv.second = json::parse(R"({"dp": 4, "tp": 2, "pp": 1})");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(json::Value(o)),
                   "'ranks' lists 4 files for a mesh of 8 ranks");
  o = v.asObject();
  for (auto &kv : o)
    if (kv.first == "ranks")
      kv.second.asArray()[1].asObject()[0].second = json::Value("x");
  EXPECT_THROW_HAS(CheckpointIndex::fromJson(json::Value(o)),
                   "'ranks[1].file' is not \"rank-1.safetensors\"");
  // A one-rank checkpoint says its mesh too, and older ones without it
  // read as one rank.
  CheckpointIndex one;
  one.model = "Mlp";
  json::Value w = one.toJson();
  EXPECT_EQ(w.find("format_version")->asInt(), kCheckpointFormatVersion);
  EXPECT_EQ(w.find("mesh")->find("dp")->asInt(), 1);
  json::Object old = w.asObject();
  old.erase(std::remove_if(old.begin(), old.end(),
                           [](const auto &kv) {
                             return kv.first == "mesh" || kv.first == "zero";
                           }),
            old.end());
  EXPECT_EQ(CheckpointIndex::fromJson(json::Value(old)).mesh, (Mesh{1, 1, 1}));
}

TEST(Checkpoint, LayoutFingerprint) {
  Manifest a = manifest();
  EXPECT_EQ(layoutFingerprint(a), layoutFingerprint(manifest()));
  EXPECT_NE(layoutFingerprint(a), layoutFingerprint(manifest("Other")));
  EXPECT_NE(layoutFingerprint(a), layoutFingerprint(manifest("Mlp", 32)));
  EXPECT_NE(layoutFingerprint(a),
            layoutFingerprint(manifest("Mlp", 16, "momentum_buffer")));
  // Arena offsets do not matter: tensors load by name.
  std::string moved = manifestText();
  moved.replace(moved.find("\"offset\": 32768"), 15, "\"offset\": 33024");
  EXPECT_EQ(layoutFingerprint(a), layoutFingerprint(parseManifest(moved)));
  uint64_t x;
  EXPECT_TRUE(parseHex64(formatHex64(0xabcdef0123456789ull), x));
  EXPECT_EQ(x, 0xabcdef0123456789ull);
  EXPECT_FALSE(parseHex64("0xABCDEF0123456789", x));
  EXPECT_FALSE(parseHex64("abcdef0123456789", x));
}

TEST(Checkpoint, WriteFindLoadIsBitwise) {
  Manifest m = manifest();
  std::string dir = tempDir("roundtrip") + "/nested/ckpt";
  prepareCheckpointDir(dir);
  std::vector<unsigned char> a = arenaFor(m, 5);
  std::string path = writeCheckpoint(dir, m, a.data(), indexAt(50, m), 3);
  EXPECT_EQ(path, dir + "/step-000050");
  EXPECT_EQ(entries(path),
            (std::vector<std::string>{"index.json", "state.safetensors"}));
  EXPECT_EQ(entries(dir), std::vector<std::string>{"step-000050"});

  // The state file holds parameters and state by name, i64 as I64.
  std::unique_ptr<st::Reader> r = st::Reader::open(path + "/state.safetensors");
  EXPECT_EQ(r->header().tensors.size(), 5u);
  EXPECT_EQ(r->header().find("optimizer.step")->dtype, st::DType::I64);
  EXPECT_TRUE(r->header().find("optimizer.step")->shape.empty());
  EXPECT_EQ(r->header().find("b1.adamw")->dtype, st::DType::F32);

  std::vector<std::string> skipped;
  std::optional<FoundCheckpoint> c = findCheckpoint(dir, m, &skipped);
  ASSERT_TRUE(c);
  EXPECT_TRUE(skipped.empty());
  EXPECT_EQ(c->path, path);
  EXPECT_EQ(c->index.step, 50);
  EXPECT_EQ(c->index.stateTensors, 5);
  std::vector<unsigned char> b = arenaFor(m, 6);
  ASSERT_FALSE(sameTensors(m, a, b));
  loadCheckpoint(*c, m, b.data());
  EXPECT_TRUE(sameTensors(m, a, b));
}

TEST(Checkpoint, KeepsTheNewestK) {
  Manifest m = manifest();
  std::string dir = tempDir("keep");
  std::vector<unsigned char> a = arenaFor(m, 1);
  for (int64_t s : {10, 20, 30, 40, 50})
    writeCheckpoint(dir, m, a.data(), indexAt(s, m), 2);
  EXPECT_EQ(entries(dir),
            (std::vector<std::string>{"step-000040", "step-000050"}));
  std::string all = tempDir("keepall");
  for (int64_t s : {1, 2, 3, 4})
    writeCheckpoint(all, m, a.data(), indexAt(s, m), 0);
  EXPECT_EQ(entries(all).size(), 4u);
  // Leftovers of interrupted writes of earlier steps are cleaned up.
  mkdir((dir + "/step-000045.tmp").c_str(), 0755);
  writeFile(dir + "/step-000045.tmp/state.safetensors", "partial");
  writeCheckpoint(dir, m, a.data(), indexAt(60, m), 2);
  EXPECT_EQ(entries(dir),
            (std::vector<std::string>{"step-000050", "step-000060"}));
}

TEST(Checkpoint, ResumeSkipsIncompleteAndDamagedCheckpoints) {
  Manifest m = manifest();
  std::string dir = tempDir("damaged");
  std::vector<unsigned char> good = arenaFor(m, 1);
  writeCheckpoint(dir, m, good.data(), indexAt(10, m), 0);
  std::vector<unsigned char> other = arenaFor(m, 2);
  for (int64_t s : {20, 30, 40, 50, 60, 70})
    writeCheckpoint(dir, m, other.data(), indexAt(s, m), 0);
  // 70: the write died before the rename (only the .tmp name exists).
  rename((dir + "/step-000070").c_str(), (dir + "/step-000070.tmp").c_str());
  // 60: no index.json.
  unlink((dir + "/step-000060/index.json").c_str());
  // 50: index.json cut short.
  std::string ix = readFile(dir + "/step-000050/index.json");
  writeFile(dir + "/step-000050/index.json", ix.substr(0, ix.size() / 2));
  // 40: the state file truncated.
  std::string s40 = readFile(dir + "/step-000040/state.safetensors");
  writeFile(dir + "/step-000040/state.safetensors",
            s40.substr(0, s40.size() - 8));
  // 30: one bit of the state flipped.
  std::string s30 = readFile(dir + "/step-000030/state.safetensors");
  s30[s30.size() - 3] ^= 0x10;
  writeFile(dir + "/step-000030/state.safetensors", s30);
  // 20: the state file missing.
  unlink((dir + "/step-000020/state.safetensors").c_str());
  // Unrelated folders and files are not checkpoints.
  mkdir((dir + "/step-99").c_str(), 0755);
  writeFile(dir + "/step-000080", "a file, not a folder");

  std::vector<std::string> skipped;
  std::optional<FoundCheckpoint> c = findCheckpoint(dir, m, &skipped);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->index.step, 10);
  ASSERT_EQ(skipped.size(), 5u);
  EXPECT_NE(skipped[0].find("step-000060: incomplete (no readable index.json)"),
            std::string::npos)
      << skipped[0];
  EXPECT_NE(skipped[1].find("step-000050: index.json is malformed"),
            std::string::npos)
      << skipped[1];
  EXPECT_NE(skipped[2].find("step-000040: state.safetensors is"),
            std::string::npos)
      << skipped[2];
  EXPECT_NE(skipped[2].find("(truncated?)"), std::string::npos) << skipped[2];
  EXPECT_NE(skipped[3].find("step-000030: state.safetensors is damaged"),
            std::string::npos)
      << skipped[3];
  EXPECT_NE(skipped[4].find("step-000020: cannot open"), std::string::npos)
      << skipped[4];
  std::vector<unsigned char> b = arenaFor(m, 3);
  loadCheckpoint(*c, m, b.data());
  EXPECT_TRUE(sameTensors(m, good, b));

  // The next write of a damaged step replaces it; the keep-count only
  // counts complete checkpoints.
  writeCheckpoint(dir, m, b.data(), indexAt(20, m), 2);
  c = findCheckpoint(dir, m);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->index.step, 20);

  // Nothing loadable: no checkpoint.
  std::string empty = tempDir("nothing");
  EXPECT_FALSE(findCheckpoint(empty, m));
  EXPECT_FALSE(findCheckpoint(empty + "/missing", m));
  mkdir((empty + "/step-000001").c_str(), 0755);
  skipped.clear();
  EXPECT_FALSE(findCheckpoint(empty, m, &skipped));
  EXPECT_EQ(skipped.size(), 1u);
}

TEST(Checkpoint, ResumeRefusesAnotherModelOrLayout) {
  Manifest m = manifest();
  std::string dir = tempDir("foreign");
  std::vector<unsigned char> a = arenaFor(m, 1);
  writeCheckpoint(dir, m, a.data(), indexAt(10, m), 3);
  EXPECT_THROW_HAS(findCheckpoint(dir, manifest("Gpt")),
                   "step-000010: a checkpoint of model 'Mlp', this artifact "
                   "is model 'Gpt'");
  EXPECT_THROW_HAS(findCheckpoint(dir, manifest("Mlp", 32)),
                   "step-000010: a checkpoint of a different layout of model "
                   "'Mlp' (parameters or optimizer state differ: tensor "
                   "'layers.0.w1' is F32[8, 16] there, F32[8, 32] here)");
  EXPECT_THROW_HAS(findCheckpoint(dir, manifest("Mlp", 16, "momentum")),
                   "it has no tensor 'layers.0.w1.momentum'");
}

TEST(Checkpoint, CheckpointFolderProblems) {
  EXPECT_THROW_HAS(prepareCheckpointDir("/proc/x"),
                   "cannot create the checkpoint folder /proc/x: ");
  std::string file = tempDir("notadir") + "/file";
  writeFile(file, "x");
  EXPECT_THROW_HAS(prepareCheckpointDir(file), "exists and is not a folder");
  EXPECT_THROW_HAS(prepareCheckpointDir(file + "/sub"), "Not a directory");
  std::string fine = tempDir("fine") + "/a/b/c";
  prepareCheckpointDir(fine);
  prepareCheckpointDir(fine); // again: already there
  EXPECT_TRUE(entries(fine).empty());
}

TEST(Checkpoint, AFailingWriteNeverDamagesAGoodCheckpoint) {
  Manifest m = manifest();
  std::string dir = tempDir("diskfull");
  std::vector<unsigned char> a = arenaFor(m, 1);
  writeCheckpoint(dir, m, a.data(), indexAt(10, m), 1);
  std::string before = readFile(dir + "/step-000010/state.safetensors");
  // A child whose files may not exceed 1 KiB: the state file (about 1.6
  // KiB) cannot be written, as on a full disk.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {1024, 1024};
    setrlimit(RLIMIT_FSIZE, &lim);
    std::vector<unsigned char> b = arenaFor(m, 2);
    try {
      writeCheckpoint(dir, m, b.data(), indexAt(20, m), 1);
    } catch (const Error &e) {
      bool named = std::string(e.what()).find("checkpoint " + dir +
                                              "/step-000020: ") == 0;
      _exit(named ? 42 : 43);
    }
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 42) << "the write should fail, naming itself";
  // The good checkpoint is whole, nothing half-written is left, and the
  // good one is what --resume finds.
  EXPECT_EQ(entries(dir), std::vector<std::string>{"step-000010"});
  EXPECT_EQ(readFile(dir + "/step-000010/state.safetensors"), before);
  std::optional<FoundCheckpoint> c = findCheckpoint(dir, m);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->index.step, 10);
}

} // namespace
