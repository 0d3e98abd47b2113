//===- ArtifactTest.cpp - trailer, checksum and manifest validation -------===//
//
// Synthetic artifacts: a fake ELF header, a manifest, a trailer. Every
// corruption ARTIFACT.md lists must be caught with a one-line message.
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/Hash.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

using namespace loom::runtime;

// The manifests follow the runtime's ABI version.
#define LOOM_TEST_STR2(x) #x
#define LOOM_TEST_STR(x) LOOM_TEST_STR2(x)

namespace {

const char *kManifest = R"({
  "format": "loomx", "format_version": 1, "abi_version": )" LOOM_TEST_STR(
    LOOM_ABI_VERSION) R"(,
  "model": "Mlp", "source": "samples/mlp.loom", "target": "cpu",
  "cpu_features": ["sse2"],
  "mesh": {"dp": 1, "tp": 1, "pp": 1},
  "arena_bytes": 4096,
  "memory": {"params": 576, "grads": 0, "optimizer": 0, "inputs": 1280,
             "activations": 0, "workspace": 0, "peak": 4096},
  "programs": {"train_step": "loom_train_step", "eval_step": "loom_eval_step"},
  "params": [
    {"name": "w1", "dtype": "f32", "shape": [8, 16], "offset": 0,
     "init": "glorot", "init_args": [], "shard": ["_", "tp"]},
    {"name": "b1", "dtype": "f32", "shape": [16], "offset": 512,
     "init": "normal", "init_args": [0.02]}
  ],
  "state": [
    {"name": "optimizer.t", "dtype": "i64", "shape": [], "offset": 576}
  ],
  "inputs": [
    {"name": "x", "dtype": "f32", "shape": [4, 8], "offset": 640},
    {"name": "y", "dtype": "i32", "shape": [4], "offset": 768}
  ],
  "outputs": {"loss": 4000, "grad_norm": 4004, "lr": 4008,
              "eval_loss": 4012, "eval_count": 4016, "eval_correct": 4020},
  "train": {"steps": 300, "data": "/data/digits.bin", "optimizer": "adamw", "lr": 0.001}
})";

std::vector<unsigned char> fakeElf(size_t size) {
  std::vector<unsigned char> elf(size, 0);
  elf[0] = 0x7f;
  elf[1] = 'E';
  elf[2] = 'L';
  elf[3] = 'F';
  elf[4] = 2;   // 64-bit
  elf[5] = 1;   // little-endian
  elf[18] = 62; // x86-64
  for (size_t i = 64; i < size; ++i)
    elf[i] = static_cast<unsigned char>(i * 7);
  return elf;
}

/// An artifact image with a correct trailer and checksum around `manifest`.
std::vector<unsigned char>
image(const std::string &manifest,
      std::vector<unsigned char> elf = fakeElf(256)) {
  std::vector<unsigned char> out = std::move(elf);
  Trailer t;
  t.formatVersion = 1;
  t.abiVersion = LOOM_ABI_VERSION;
  t.elfSize = out.size();
  t.manifestOffset = out.size();
  t.manifestSize = manifest.size();
  out.insert(out.end(), manifest.begin(), manifest.end());
  t.checksum = fnv1a64(out.data(), out.size());
  unsigned char trailer[kTrailerBytes];
  writeTrailer(t, trailer);
  out.insert(out.end(), trailer, trailer + kTrailerBytes);
  return out;
}

/// Recomputes the checksum after a deliberate edit, so that the check after
/// the checksum is what fails.
void reseal(std::vector<unsigned char> &img) {
  size_t n = img.size() - kTrailerBytes;
  uint64_t sum = fnv1a64(img.data(), n);
  for (int i = 0; i < 8; ++i)
    img[n + 40 + i] = static_cast<unsigned char>(sum >> (8 * i));
}

std::string errorOf(const std::vector<unsigned char> &img) {
  try {
    validateImage(img.data(), img.size());
  } catch (const Error &e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    return msg;
  }
  return "(no error)";
}

std::string manifestError(const std::string &from, const std::string &to) {
  std::string text = kManifest;
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at == std::string::npos)
    return "";
  text.replace(at, from.size(), to);
  return errorOf(image(text));
}

#define EXPECT_HAS(haystack, needle)                                           \
  do {                                                                         \
    std::string h_ = (haystack);                                               \
    EXPECT_NE(h_.find(needle), std::string::npos) << h_;                       \
  } while (0)

TEST(Artifact, ValidImageGivesTypedManifest) {
  std::vector<unsigned char> img = image(kManifest);
  Manifest m = validateImage(img.data(), img.size());
  EXPECT_EQ(m.model, "Mlp");
  EXPECT_EQ(m.target, "cpu");
  EXPECT_EQ(m.mesh.ranks(), 1);
  EXPECT_EQ(m.arenaBytes, 4096);
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.params[0].name, "w1");
  EXPECT_EQ(m.params[0].shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(m.params[0].bytes, 512);
  EXPECT_EQ(m.params[0].shard, (std::vector<std::string>{"_", "tp"}));
  EXPECT_EQ(m.params[1].init, "normal");
  EXPECT_EQ(m.params[1].initArgs, (std::vector<double>{0.02}));
  ASSERT_EQ(m.state.size(), 1u);
  EXPECT_EQ(m.state[0].dtype, DType::I64);
  EXPECT_EQ(m.state[0].elements, 1);
  ASSERT_EQ(m.inputs.size(), 2u);
  EXPECT_EQ(m.input("y")->bytes, 16);
  EXPECT_EQ(*m.output("eval_correct"), 4020);
  EXPECT_EQ(*m.program("train_step"), "loom_train_step");
  EXPECT_EQ(*m.trainSteps(), 300);
  EXPECT_EQ(*m.trainData(), "/data/digits.bin");
  EXPECT_EQ(*m.memoryOf("peak"), 4096);
}

TEST(Artifact, TooShortOrTruncated) {
  std::vector<unsigned char> tiny(10, 0);
  EXPECT_HAS(errorOf(tiny), "shorter than the 64-byte trailer");
  std::vector<unsigned char> img = image(kManifest);
  // Cut from the end: the trailer is gone.
  std::vector<unsigned char> cut(img.begin(), img.end() - 5);
  EXPECT_HAS(errorOf(cut), "not a Loom artifact");
  // Bytes lost in the middle: the trailer is intact but sizes disagree.
  std::vector<unsigned char> hole = img;
  hole.erase(hole.begin() + 100, hole.begin() + 110);
  EXPECT_HAS(errorOf(hole), "sizes do not add up");
}

TEST(Artifact, FlippedByteIsCorruption) {
  std::vector<unsigned char> img = image(kManifest);
  for (size_t at : {size_t(1), size_t(200), img.size() - kTrailerBytes - 3}) {
    std::vector<unsigned char> bad = img;
    bad[at] ^= 0x10;
    EXPECT_HAS(errorOf(bad), "corrupted: checksum");
  }
}

TEST(Artifact, BadMagicAndVersions) {
  std::vector<unsigned char> img = image(kManifest);
  size_t t = img.size() - kTrailerBytes;
  std::vector<unsigned char> bad = img;
  bad[t] = 'X';
  EXPECT_HAS(errorOf(bad), "not a Loom artifact");
  bad = img;
  bad[t + 8] = 2; // format_version
  EXPECT_HAS(errorOf(bad),
             "compiled by a different Loom: format 2, this runtime reads 1");
  bad = img;
  bad[t + 12] = 9; // abi_version
  EXPECT_HAS(errorOf(bad), "compiled by a different Loom: ABI 9");
  bad = img;
  bad[t + 60] = 1; // reserved
  EXPECT_HAS(errorOf(bad), "reserved");
  // The manifest disagreeing with the trailer.
  std::string m = kManifest;
  m.replace(m.find("\"format_version\": 1"), 19, "\"format_version\": 3");
  EXPECT_HAS(errorOf(image(m)), "format 3");
}

TEST(Artifact, BadOffsetsInTheTrailer) {
  std::vector<unsigned char> img = image(kManifest);
  size_t t = img.size() - kTrailerBytes;
  std::vector<unsigned char> bad = img;
  bad[t + 24] += 1; // manifest_offset != elf_size
  EXPECT_HAS(errorOf(bad), "manifest_offset");
  bad = img;
  bad[t + 16] += 8; // elf_size
  bad[t + 24] += 8; // manifest_offset kept equal
  EXPECT_HAS(errorOf(bad), "sizes do not add up");
  bad = img;
  for (int i = 32; i < 40; ++i)
    bad[t + i] = 0xff; // manifest_size huge
  EXPECT_HAS(errorOf(bad), "manifest_size");
  bad = img;
  for (int i = 16; i < 24; ++i) // elf_size = 2^64 - 1: must not overflow
    bad[t + i] = bad[t + 8 + i] = 0xff;
  EXPECT_HAS(errorOf(bad), "sizes do not add up");
}

TEST(Artifact, ElfMagicMissing) {
  std::vector<unsigned char> elf = fakeElf(256);
  elf[1] = 'X';
  EXPECT_HAS(errorOf(image(kManifest, elf)), "no ELF magic at offset 0");
  elf = fakeElf(256);
  elf[18] = 40; // ARM
  EXPECT_HAS(errorOf(image(kManifest, elf)), "this runtime runs x86-64");
}

TEST(Artifact, MalformedManifestJson) {
  std::string m = kManifest;
  m.insert(m.find("\"model\""), ",");
  EXPECT_HAS(errorOf(image(m)), "manifest is not valid JSON: byte");
  std::vector<unsigned char> img = image(kManifest);
  img[256 + 2] = '{';
  reseal(img);
  EXPECT_HAS(errorOf(img), "manifest is not valid JSON");
  m = kManifest;
  m.replace(m.find("\"Mlp\""), 5, "\"Mlp\", \"model\": \"Twice\"");
  EXPECT_HAS(errorOf(image(m)), "duplicate key \"model\"");
}

TEST(Artifact, ManifestFieldErrors) {
  EXPECT_HAS(manifestError("\"model\": \"Mlp\", ", ""),
             "manifest: model: missing");
  EXPECT_HAS(
      manifestError("\"arena_bytes\": 4096", "\"arena_bytes\": \"4096\""),
      "arena_bytes: expected an integer, found string");
  EXPECT_HAS(manifestError("\"arena_bytes\": 4096", "\"arena_bytes\": 4096.5"),
             "arena_bytes: expected an integer, found a non-integer number");
  EXPECT_HAS(
      manifestError("\"offset\": 768", "\"offset\": 4096"),
      "inputs[1] ('y'): offset 4096 + 16 bytes exceeds arena_bytes 4096");
  EXPECT_HAS(manifestError("\"offset\": 768", "\"offset\": 770"),
             "not 64-byte aligned");
  EXPECT_HAS(manifestError("\"offset\": 768", "\"offset\": -64"), "outside [0");
  EXPECT_HAS(manifestError("\"shape\": [8, 16]", "\"shape\": [8, 0]"),
             "params[0] ('w1').shape[1]: 0 outside [1");
  EXPECT_HAS(manifestError("\"dtype\": \"i32\"", "\"dtype\": \"int32\""),
             "unknown dtype 'int32'");
  EXPECT_HAS(manifestError("\"offset\": 512", "\"offset\": 448"),
             "buffers 'w1' [0, 512) and 'b1' [448, 512) overlap");
  EXPECT_HAS(manifestError("\"init\": \"glorot\"", "\"init\": \"xavier\""),
             "unknown initialiser 'xavier'");
  EXPECT_HAS(manifestError("\"init_args\": [0.02]", "\"init_args\": []"),
             "normal takes 1 argument, found 0");
  EXPECT_HAS(manifestError("\"init_args\": [0.02]", "\"init_args\": [-1]"),
             "std > 0");
  EXPECT_HAS(manifestError("\"init\": \"normal\", \"init_args\": [0.02]",
                           "\"init\": \"glorot\", \"init_args\": []"),
             "glorot needs rank >= 2");
  EXPECT_HAS(manifestError("[\"_\", \"tp\"]", "[\"tp\"]"),
             "shard: 1 entries for a tensor of rank 2");
  EXPECT_HAS(manifestError("[\"_\", \"tp\"]", "[\"_\", \"ep\"]"),
             "'ep' is not '_' or a mesh axis");
  EXPECT_HAS(manifestError("\"pp\": 1", "\"pp\": 1, \"ep\": 2"),
             "mesh.ep: unknown mesh axis");
  EXPECT_HAS(manifestError("\"tp\": 1", "\"tp\": 0"), "mesh.tp: 0 outside [1");
  EXPECT_HAS(manifestError("\"loss\": 4000", "\"loss\": 4094"),
             "outputs.loss: 4094 is not 4-byte aligned");
  EXPECT_HAS(manifestError("\"loss\": 4000", "\"loss\": 4096"),
             "outputs.loss: offset 4096 + 4 bytes exceeds arena_bytes");
  EXPECT_HAS(manifestError("\"loss\": 4000, ", ""),
             "outputs.loss: missing (the train_step program writes it)");
  EXPECT_HAS(manifestError("\"eval_loss\": 4012, ", ""),
             "outputs.eval_loss: missing");
  EXPECT_HAS(manifestError("[\"sse2\"]", "[\"sse2\", \"avx9000\"]"),
             "cpu_features[1]: unknown CPU feature 'avx9000'");
  EXPECT_HAS(manifestError("\"target\": \"cpu\"", "\"target\": \"tpu\""),
             "target: 'tpu'");
  EXPECT_HAS(manifestError("\"loom_train_step\"", "\"not a symbol\""),
             "not a C symbol name");
  EXPECT_HAS(manifestError("\"name\": \"b1\"", "\"name\": \"w1\""),
             "name 'w1' used twice");
  EXPECT_HAS(manifestError("\"shape\": [4, 8]", "\"shape\": []"),
             "an input needs a batch dimension");
  EXPECT_HAS(manifestError("\"shape\": [4]", "\"shape\": [5]"),
             "batch dimension 5 differs from 4");
  EXPECT_HAS(manifestError("\"steps\": 300", "\"steps\": -1"), "train.steps");
  EXPECT_HAS(manifestError("\"format\": \"loomx\"", "\"format\": \"onnx\""),
             "format: 'onnx'");
  EXPECT_HAS(manifestError("\"name\": \"w1\", \"dtype\": \"f32\"",
                           "\"name\": \"w1\", \"dtype\": \"i32\""),
             "parameters are f32 or f64");
}

/// kManifest partitioned over dp=2 x tp=2 with ZeRO-1 (ABI 3): local
/// shapes, global_shape and shard on parameters, state and inputs.
const char *kShardedManifest = R"({
  "format": "loomx", "format_version": 1, "abi_version": 3,
  "model": "Mlp", "target": "cpu",
  "mesh": {"dp": 2, "tp": 2, "pp": 1}, "zero": 1,
  "arena_bytes": 4096,
  "programs": {"train_step": "loom_train_step"},
  "params": [
    {"name": "w1", "dtype": "f32", "shape": [8, 8], "global_shape": [8, 16],
     "offset": 0, "init": "glorot", "shard": ["_", "tp"]},
    {"name": "b1", "dtype": "f32", "shape": [16], "offset": 512,
     "init": "zeros"}
  ],
  "state": [
    {"name": "w1.m", "dtype": "f32", "shape": [4, 8], "global_shape": [8, 16],
     "shard": ["dp", "tp"], "offset": 576}
  ],
  "inputs": [
    {"name": "x", "dtype": "f32", "shape": [2, 8], "global_shape": [4, 8],
     "shard": ["dp", "_"], "offset": 704},
    {"name": "y", "dtype": "i32", "shape": [4], "offset": 768}
  ],
  "outputs": {"loss": 4000, "grad_norm": 4004, "lr": 4008}
})";

std::string shardedError(const std::string &from, const std::string &to) {
  std::string text = kShardedManifest;
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at == std::string::npos)
    return "";
  text.replace(at, from.size(), to);
  try {
    parseManifest(text);
  } catch (const Error &e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Artifact, ShardedBuffersAndZero) {
  Manifest m = parseManifest(kShardedManifest);
  EXPECT_EQ(m.zero, 1);
  EXPECT_EQ(m.mesh, (Mesh{2, 2, 1}));
  const ParamSpec &w = m.params[0];
  EXPECT_EQ(w.shape, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(w.global(), (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(w.split, (std::vector<int32_t>{-1, 1}));
  EXPECT_EQ(w.shard, (std::vector<std::string>{"_", "tp"}));
  EXPECT_TRUE(w.isSplit());
  EXPECT_EQ(w.globalElements(), 128);
  EXPECT_EQ(w.describeType(), "f32[8, 8] of f32[8, 16] split (_, tp)");
  // No global_shape and no shard: the whole tensor on every rank.
  EXPECT_FALSE(m.params[1].isSplit());
  EXPECT_EQ(m.params[1].global(), (std::vector<int64_t>{16}));
  EXPECT_EQ(m.state[0].split, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(m.inputs[0].split, (std::vector<int32_t>{0, -1}));
  // The batch is the global one: x's 4 rows (2 per dp rank) and y's 4
  // (replicated) agree.
  EXPECT_EQ(m.inputs[0].global()[0], m.inputs[1].global()[0]);
  std::string d = describe(m, "mlp.loomx");
  EXPECT_HAS(d, "dp=2 tp=2 pp=1 (4 ranks), ZeRO-1");
  EXPECT_HAS(d, "(per rank; global f32[8, 16], split (_, tp))");
  EXPECT_HAS(d, "(per rank; global f32[8, 16], split (dp, tp))");
}

TEST(Artifact, ShardedBufferErrors) {
  EXPECT_HAS(shardedError("\"global_shape\": [8, 16],\n     \"offset\": 0",
                          "\"global_shape\": [8, 15],\n     \"offset\": 0"),
             "params[0] ('w1').global_shape: dim 1 (15) does not divide "
             "evenly over tp (2 ranks)");
  EXPECT_HAS(shardedError("\"shape\": [8, 8]", "\"shape\": [8, 4]"),
             "params[0] ('w1').shape: dim 1 is 4, but global 16 split over tp "
             "(2 ranks) gives 8");
  EXPECT_HAS(shardedError("\"global_shape\": [8, 16],\n     \"offset\": 0",
                          "\"global_shape\": [8, 16, 1],\n     \"offset\": 0"),
             "params[0] ('w1').global_shape: rank 3, the local shape f32[8, 8] "
             "has rank 2");
  EXPECT_HAS(shardedError("[\"dp\", \"tp\"]", "[\"tp\", \"tp\"]"),
             "state[0] ('w1.m').shard[1]: splits a second dimension over tp");
  EXPECT_HAS(shardedError("[\"dp\", \"_\"]", "[\"pp\", \"_\"]"),
             "inputs[0] ('x').shard[0]: 'pp' is not '_' or a mesh axis a "
             "dimension can be split over (dp, tp)");
  EXPECT_HAS(shardedError("\"global_shape\": [4, 8],", ""),
             "inputs[0] ('x').global_shape: missing, but dim 0 is split over "
             "dp (2 ranks)");
  EXPECT_HAS(shardedError("[\"dp\", \"_\"]", "[\"_\", \"_\"]"),
             "inputs[0] ('x').shape: dim 0 is 2 but not split, and "
             "global_shape says 4");
  EXPECT_HAS(shardedError("\"zero\": 1", "\"zero\": 2"), "zero: 2 outside [0, 1]");
  EXPECT_HAS(shardedError("\"shape\": [4], \"offset\": 768",
                          "\"shape\": [3], \"offset\": 768"),
             "inputs[1] ('y'): batch dimension 3 differs from 4 of 'x'");
  // ABI 2 artifacts still load (one rank, whole tensors) without ABI 3's
  // fields; ABI 4 is from a newer Loom.
  std::string abi2 = kManifest;
  abi2.replace(abi2.find("\"abi_version\": 3"), 16, "\"abi_version\": 2");
  Manifest m = parseManifest(abi2);
  EXPECT_EQ(m.abiVersion, 2);
  EXPECT_EQ(m.params[0].shard, (std::vector<std::string>{"_", "tp"}));
  EXPECT_FALSE(m.params[0].isSplit());
  std::string abi4 = kManifest;
  abi4.replace(abi4.find("\"abi_version\": 3"), 16, "\"abi_version\": 4");
  EXPECT_THROW(parseManifest(abi4), Error);
  std::string abi2sharded = kShardedManifest;
  abi2sharded.replace(abi2sharded.find("\"abi_version\": 3"), 16,
                      "\"abi_version\": 2");
  try {
    parseManifest(abi2sharded);
    ADD_FAILURE() << "ABI 2 took zero";
  } catch (const Error &e) {
    EXPECT_HAS(e.what(), "zero: not part of ABI 2 (since ABI 3)");
  }
}

/// Two pipeline stages (dp=2 x pp=2): per-stage arenas and programs, buffers
/// of one stage (overlapping offsets in different arenas) and of every one.
const char *kStagedManifest = R"({
  "format": "loomx", "format_version": 1, "abi_version": 3,
  "model": "Mlp", "target": "cpu",
  "mesh": {"dp": 2, "tp": 1, "pp": 2}, "stages": 2,
  "arena_bytes": 4096, "stage_arena_bytes": [4096, 1024],
  "programs": {"train_step": ["loom_train_step_stage0", "loom_train_step_stage1"]},
  "params": [
    {"name": "w1", "dtype": "f32", "shape": [8, 16], "offset": 64, "stage": 0,
     "init": "glorot"},
    {"name": "w2", "dtype": "f32", "shape": [16, 4], "offset": 64, "stage": 1,
     "init": "glorot"}
  ],
  "state": [
    {"name": "t", "dtype": "i64", "shape": [], "offset": 0}
  ],
  "inputs": [
    {"name": "x", "dtype": "f32", "shape": [2, 8], "global_shape": [4, 8],
     "shard": ["dp", "_"], "offset": 640, "stage": 0},
    {"name": "y", "dtype": "i32", "shape": [2], "global_shape": [4],
     "shard": ["dp"], "offset": 512, "stage": 1}
  ],
  "outputs": {"loss": 1000, "grad_norm": 1004, "lr": 1008}
})";

std::string stagedError(const std::string &from, const std::string &to) {
  std::string text = kStagedManifest;
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at == std::string::npos)
    return "";
  text.replace(at, from.size(), to);
  try {
    parseManifest(text);
  } catch (const Error &e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Artifact, PipelineStages) {
  Manifest m = parseManifest(kStagedManifest);
  EXPECT_EQ(m.stages, 2);
  EXPECT_EQ(m.stageArenaBytes, (std::vector<int64_t>{4096, 1024}));
  EXPECT_EQ(m.arenaBytesOf(1), 1024);
  EXPECT_EQ(*m.program("train_step", 0), "loom_train_step_stage0");
  EXPECT_EQ(*m.program("train_step", 1), "loom_train_step_stage1");
  EXPECT_EQ(m.program("train_step", 2), nullptr);
  EXPECT_EQ(m.params[0].stage, 0);
  EXPECT_TRUE(m.params[1].inStage(1));
  EXPECT_FALSE(m.params[1].inStage(0));
  EXPECT_EQ(m.state[0].stage, -1);
  EXPECT_TRUE(m.state[0].inStage(0) && m.state[0].inStage(1));
  // Without the new fields: one stage, arena_bytes, a symbol per role.
  Manifest plain = parseManifest(kManifest);
  EXPECT_EQ(plain.stages, 1);
  EXPECT_EQ(plain.stageArenaBytes, (std::vector<int64_t>{4096}));
  EXPECT_EQ(*plain.program("train_step"), "loom_train_step");
  EXPECT_EQ(plain.params[0].stage, -1);
  std::string d = describe(m, "mlp.loomx");
  EXPECT_HAS(d, "4.0 KiB (4096 bytes); 2 pipeline stages: stage 0 4.0 KiB, "
                "stage 1 1.0 KiB");
  EXPECT_HAS(d, "train_step -> [loom_train_step_stage0, "
                "loom_train_step_stage1]");
  EXPECT_HAS(d, "@ 64 in stage 1");
  EXPECT_HAS(d, "@ 512 in stage 1  (per rank; global i32[4], split (dp))");
}

TEST(Artifact, PipelineStageErrors) {
  EXPECT_HAS(stagedError("\"stages\": 2", "\"stages\": 3"),
             "manifest: stages: 3, but mesh.pp is 2 (one pipeline stage per "
             "pp coordinate)");
  EXPECT_HAS(stagedError("[4096, 1024]", "[4096]"),
             "manifest: stage_arena_bytes: 1 entries for 2 stages");
  EXPECT_HAS(stagedError("[4096, 1024]", "[2048, 1024]"),
             "manifest: stage_arena_bytes: the largest is 2048, but "
             "arena_bytes is 4096 (arena_bytes is their maximum)");
  EXPECT_HAS(stagedError("[\"loom_train_step_stage0\", "
                         "\"loom_train_step_stage1\"]",
                         "\"loom_train_step\""),
             "manifest: programs.train_step: a single symbol, but the "
             "artifact has 2 stages: expected an array of 2 symbol names, one "
             "per stage");
  EXPECT_HAS(stagedError("[\"loom_train_step_stage0\", "
                         "\"loom_train_step_stage1\"]",
                         "[\"loom_train_step_stage0\"]"),
             "manifest: programs.train_step: 1 symbol for 2 stages (one per "
             "stage, indexed by stage)");
  EXPECT_HAS(stagedError("\"loom_train_step_stage1\"", "\"stage 1\""),
             "manifest: programs.train_step[1]: 'stage 1' is not a C symbol "
             "name");
  EXPECT_HAS(stagedError("\"offset\": 64, \"stage\": 1",
                         "\"offset\": 64, \"stage\": 2"),
             "params[1] ('w2').stage: 2 outside [0, 1]");
  // w2 (256 bytes) fits stage 0's arena but not stage 1's.
  EXPECT_HAS(stagedError("\"offset\": 64, \"stage\": 1",
                         "\"offset\": 832, \"stage\": 1"),
             "params[1] ('w2'): offset 832 + 256 bytes exceeds stage 1's "
             "arena (stage_arena_bytes[1] = 1024)");
  // A buffer of every stage must fit the smallest arena.
  EXPECT_HAS(stagedError("\"offset\": 0}", "\"offset\": 1024}"),
             "state[0] ('t'): offset 1024 + 8 bytes exceeds stage 1's arena "
             "(stage_arena_bytes[1] = 1024; a buffer without \"stage\" is in "
             "every stage's arena)");
  EXPECT_HAS(stagedError("\"loss\": 1000", "\"loss\": 1024"),
             "outputs.loss: offset 1024 + 4 bytes exceeds stage 1's arena");
  // Overlaps count within a stage's arena (w1 and w2 share offset 64 in
  // different arenas), a stage-less buffer overlapping any stage's.
  EXPECT_HAS(stagedError("\"offset\": 640, \"stage\": 0",
                         "\"offset\": 128, \"stage\": 0"),
             "memory plan: buffers 'w1' [64, 576) and 'x' [128, 192) overlap "
             "in stage 0's arena");
  EXPECT_HAS(stagedError("\"offset\": 0}", "\"offset\": 128}"),
             "memory plan: buffers 'w1' [64, 576) and 't' [128, 136) overlap "
             "in stage 0's arena");
}

TEST(Artifact, CpuFeatures) {
  EXPECT_TRUE(isKnownCpuFeature("avx2"));
  EXPECT_TRUE(isKnownCpuFeature("lzcnt"));
  EXPECT_TRUE(isKnownCpuFeature("avx512f"));
  EXPECT_FALSE(isKnownCpuFeature("avx9000"));
  EXPECT_THROW(missingCpuFeatures({"sse2", "nonsense"}), Error);
#if defined(__x86_64__)
  EXPECT_TRUE(cpuSupports("sse2"));
  EXPECT_TRUE(missingCpuFeatures({"sse2", "x86-64", "cx8"}).empty());
  // The CPUID table agrees with the compiler's builtin where both exist.
  __builtin_cpu_init();
  EXPECT_EQ(cpuSupports("avx2"), __builtin_cpu_supports("avx2") != 0);
  EXPECT_EQ(cpuSupports("crc32"), cpuSupports("sse4.2"));
  // A feature this CPU lacks gives ARTIFACT.md's message.
  std::string lacking;
  for (const char *f : {"xop", "fma4", "sse4a", "avx512fp16", "amx-tile",
                        "avx512vp2intersect", "avx512f"})
    if (isKnownCpuFeature(f) && !cpuSupports(f)) {
      lacking = f;
      break;
    }
  if (lacking.empty())
    GTEST_SKIP() << "this CPU has every feature probed";
  Manifest m;
  m.cpuFeatures = {"sse2", lacking};
  try {
    checkCpuFeatures(m);
    ADD_FAILURE() << "no error for " << lacking;
  } catch (const Error &e) {
    EXPECT_EQ(std::string(e.what()),
              "needs sse2, " + lacking + "; this CPU lacks " + lacking +
                  "; recompile with --cpu=native on this machine");
  }
#endif
}

TEST(Artifact, ReadsFilesAndNamesThemInErrors) {
  std::string path = testing::TempDir() + "artifact_test.loomx";
  std::vector<unsigned char> img = image(kManifest, fakeElf(3 << 20));
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(img.data()), img.size());
  }
  Manifest m = readArtifact(path);
  EXPECT_EQ(m.model, "Mlp");
  // A flipped byte deep in the code image (past the first streamed chunk).
  img[(2 << 20) + 5] ^= 1;
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(img.data()), img.size());
  }
  try {
    readArtifact(path);
    ADD_FAILURE() << "no error";
  } catch (const Error &e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": corrupted: checksum", 0),
              0u)
        << e.what();
  }
  try {
    readArtifact(path + ".missing");
    ADD_FAILURE() << "no error";
  } catch (const Error &e) {
    EXPECT_HAS(e.what(), ".missing: cannot open");
  }
  unlink(path.c_str());
}

TEST(Artifact, LoadReportsTheLoadersError) {
  // A valid container around a code image that is not a loadable object.
  std::string path = testing::TempDir() + "artifact_load_test.loomx";
  std::vector<unsigned char> img = image(kManifest);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char *>(img.data()), img.size());
  }
  try {
    Artifact::load(path);
    ADD_FAILURE() << "loaded a fake ELF";
  } catch (const Error &e) {
    EXPECT_HAS(e.what(), path + ": cannot load the code image: ");
  }
  unlink(path.c_str());
}

TEST(Artifact, DescribePrintsTheManifest) {
  std::vector<unsigned char> img = image(kManifest);
  std::string d = describe(validateImage(img.data(), img.size()), "mlp.loomx");
  EXPECT_HAS(d, "Loom artifact mlp.loomx");
  EXPECT_HAS(d, "model     Mlp (from samples/mlp.loom), target cpu");
  EXPECT_HAS(d, "dp=1 tp=1 pp=1 (1 rank)");
  EXPECT_HAS(d, "params    2 tensors, 144 elements");
  EXPECT_HAS(d, "f32[8, 16]");
  EXPECT_HAS(d, "normal(0.02)");
  EXPECT_HAS(d, "shard(_, tp)");
  EXPECT_HAS(d, "optimizer.t");
  EXPECT_HAS(d, "train_step -> loom_train_step");
  EXPECT_HAS(d, "steps 300");
  EXPECT_HAS(d, "data /data/digits.bin");
}

} // namespace
