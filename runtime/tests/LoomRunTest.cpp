//===- LoomRunTest.cpp - loom-run end to end on a hand-written model ------===//
//
// TestModel.c (built as a shared object) stands in for loomc's output; the
// test packs it into a .loomx exactly as ARTIFACT.md lays one out, writes a
// dataset, runs the real loom-run and checks its output, metrics and errors.
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/Checkpoint.h"
#include "runtime/Dataset.h"
#include "runtime/Hash.h"
#include "runtime/Json.h"
#include "runtime/Safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <csignal>
#include <cstring>
#include <fstream>
#include <ftw.h>
#include <glob.h>
#include <random>
#include <sstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace loom::runtime;
namespace json = loom::json;

// The manifests follow the runtime's ABI version.
#define LOOM_TEST_STR2(x) #x
#define LOOM_TEST_STR(x) LOOM_TEST_STR2(x)

namespace {

#define EXPECT_HAS(haystack, needle)                                           \
  do {                                                                         \
    std::string h_ = (haystack);                                               \
    EXPECT_NE(h_.find(needle), std::string::npos) << h_;                       \
  } while (0)

std::string readFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string &path, const void *data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char *>(data), static_cast<std::streamsize>(n));
}

/// Files this process made, removed when the tests end.
std::vector<std::string> &createdFiles() {
  static std::vector<std::string> files;
  return files;
}

std::string tmp(const std::string &name) {
  std::string path =
      testing::TempDir() + "loomrun_" + std::to_string(getpid()) + "_" + name;
  createdFiles().push_back(path);
  return path;
}

/// Removes a file, or a folder with everything in it.
void removeTree(const std::string &path) {
  nftw(
      path.c_str(),
      [](const char *p, const struct stat *, int, struct FTW *) {
        ::remove(p);
        return 0;
      },
      16, FTW_DEPTH | FTW_PHYS);
}

class RemoveCreatedFiles : public testing::Environment {
public:
  void TearDown() override {
    // Folders too (checkpoint tests), even when a test stopped early.
    for (const std::string &f : createdFiles())
      removeTree(f);
  }
};
testing::Environment *const kCleanup =
    testing::AddGlobalTestEnvironment(new RemoveCreatedFiles);

const char *kSoftmaxManifest = R"({
  "format": "loomx", "format_version": 1, "abi_version": )" LOOM_TEST_STR(
    LOOM_ABI_VERSION) R"(,
  "model": "TestSoftmax", "source": "runtime/tests/TestModel.c", "target": "cpu",
  "cpu_features": ["sse2"],
  "mesh": {"dp": 1, "tp": 1, "pp": 1},
  "arena_bytes": 19392,
  "memory": {"params": 2600, "inputs": 16640, "peak": 19392},
  "programs": {"train_step": "loom_test_train_step", "eval_step": "loom_test_eval_step"},
  "params": [
    {"name": "w", "dtype": "f32", "shape": [64, 10], "offset": 0, "init": "glorot", "init_args": []},
    {"name": "b", "dtype": "f32", "shape": [10], "offset": 2560, "init": "zeros", "init_args": []}
  ],
  "state": [{"name": "steps", "dtype": "i64", "shape": [], "offset": 2624}],
  "inputs": [
    {"name": "x", "dtype": "f32", "shape": [64, 64], "offset": 2688},
    {"name": "y", "dtype": "i32", "shape": [64], "offset": 19072}
  ],
  "outputs": {"loss": 19328, "grad_norm": 19332, "lr": 19336,
              "eval_loss": 19340, "eval_count": 19344, "eval_correct": 19348},
  "train": {"steps": 40, "data": "@DATA@", "optimizer": "sgd", "lr": 0.5}
})";

const char *kBigramManifest = R"({
  "format": "loomx", "format_version": 1, "abi_version": )" LOOM_TEST_STR(
    LOOM_ABI_VERSION) R"(,
  "model": "TestBigram", "target": "cpu", "cpu_features": [],
  "mesh": {"dp": 1, "tp": 1, "pp": 1},
  "arena_bytes": 263296,
  "programs": {"train_step": "loom_bigram_train_step", "eval_step": "loom_bigram_eval_step"},
  "params": [
    {"name": "table", "dtype": "f32", "shape": [256, 256], "offset": 0, "init": "normal", "init_args": [0.02]}
  ],
  "state": [{"name": "steps", "dtype": "i64", "shape": [], "offset": 262144}],
  "inputs": [
    {"name": "tokens", "dtype": "i32", "shape": [8, 16], "offset": 262208},
    {"name": "targets", "dtype": "i32", "shape": [8, 16], "offset": 262720}
  ],
  "outputs": {"loss": 263232, "grad_norm": 263236, "lr": 263240,
              "eval_loss": 263244, "eval_count": 263248, "eval_correct": 263252},
  "train": {"steps": 10}
})";

std::string replaceAll(std::string s, const std::string &from,
                       const std::string &to) {
  for (size_t at = s.find(from); at != std::string::npos;
       at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

/// Packs the test model's shared object and `manifest` into a .loomx.
std::string pack(const std::string &name, const std::string &manifest,
                 uint32_t abi = LOOM_ABI_VERSION) {
  std::string elf = readFile(LOOM_TEST_MODEL_PATH);
  EXPECT_GT(elf.size(), 64u);
  std::string img = elf + manifest;
  Trailer t;
  t.formatVersion = 1;
  t.abiVersion = abi;
  t.elfSize = elf.size();
  t.manifestOffset = elf.size();
  t.manifestSize = manifest.size();
  t.checksum = fnv1a64(img.data(), img.size());
  unsigned char trailer[kTrailerBytes];
  writeTrailer(t, trailer);
  img.append(reinterpret_cast<const char *>(trailer), kTrailerBytes);
  std::string path = tmp(name + ".loomx");
  writeFile(path, img.data(), img.size());
  return path;
}

template <typename T>
std::vector<unsigned char> bytesOf(const std::vector<T> &v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

/// 10 separable Gaussian clusters in [0, 1]^features.
std::string clusters(const std::string &name, int64_t n, int features = 64,
                     int32_t badLabel = -1) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(0, 1);
  std::normal_distribution<float> noise(0, 0.15f);
  std::vector<std::vector<float>> means(10, std::vector<float>(features));
  for (auto &m : means)
    for (float &v : m)
      v = u(rng);
  std::vector<float> x;
  std::vector<int32_t> y;
  for (int64_t r = 0; r < n; ++r) {
    int32_t c = static_cast<int32_t>(rng() % 10);
    for (int k = 0; k < features; ++k)
      x.push_back(std::min(1.0f, std::max(0.0f, means[c][k] + noise(rng))));
    y.push_back(badLabel >= 0 ? badLabel : c);
  }
  std::vector<unsigned char> file =
      encodeDataset(DataKind::Records, n,
                    {{"x", DataType::F32, {features}, bytesOf(x)},
                     {"y", DataType::I32, {}, bytesOf(y)}});
  std::string path = tmp(name + ".bin");
  writeFile(path, file.data(), file.size());
  return path;
}

/// A byte stream with strong bigram structure.
std::string text(const std::string &name, int64_t n) {
  std::mt19937 rng(7);
  std::vector<unsigned char> t;
  const char *words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. "};
  while (int64_t(t.size()) < n) {
    const char *w = words[rng() % 6];
    t.insert(t.end(), w, w + std::strlen(w));
  }
  t.resize(n);
  std::vector<unsigned char> file = encodeDataset(
      DataKind::Tokens, n, {{"tokens", DataType::U8, {}, t}}, 256);
  std::string path = tmp(name + ".bin");
  writeFile(path, file.data(), file.size());
  return path;
}

struct RunResult {
  int status = -1;
  std::string out, err;
};

RunResult loomRun(const std::string &args) {
  std::string out = tmp("stdout"), err = tmp("stderr");
  std::string cmd = std::string(LOOM_RUN_PATH) + " " + args + " >" + out +
                    " 2>" + err + " </dev/null";
  int rc = std::system(cmd.c_str());
  RunResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = readFile(out);
  r.err = readFile(err);
  return r;
}

std::vector<json::Value> metricsOf(const std::string &path) {
  std::vector<json::Value> lines;
  std::istringstream in(readFile(path));
  std::string line;
  while (std::getline(in, line))
    lines.push_back(json::parse(line));
  return lines;
}

class LoomRun : public testing::Test {
protected:
  static void SetUpTestSuite() {
    data_ = new std::string(clusters("clusters", 1280));
    artifact_ = new std::string(
        pack("softmax", replaceAll(kSoftmaxManifest, "@DATA@", *data_)));
  }
  static std::string *data_, *artifact_;
};
std::string *LoomRun::data_, *LoomRun::artifact_;

TEST_F(LoomRun, TrainsEvaluatesAndWritesMetrics) {
  std::string metrics = tmp("m.jsonl");
  RunResult r = loomRun(*artifact_ +
                        " --steps=60 --eval-every 20 --seed=1 --threads=1 "
                        "--metrics=" +
                        metrics);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_HAS(r.out, "loom-run: TestSoftmax");
  EXPECT_HAS(r.out, "records: 1,280 × {x f32[64], y i32[]}");
  EXPECT_HAS(r.out, "step 20: eval_loss ");
  EXPECT_HAS(r.out, "loom-run: 60 steps, final loss ");
  std::vector<json::Value> m = metricsOf(metrics);
  ASSERT_EQ(m.size(), 60u);
  const char *keys[] = {"step",          "loss",           "lr",
                        "grad_norm",     "loss_scale",     "skipped",
                        "skipped_total", "samples_per_s",  "tokens_per_s",
                        "step_ms",       "mem_peak_bytes", "comm_ms"};
  for (size_t i = 0; i < m.size(); ++i) {
    const json::Object &o = m[i].asObject();
    bool eval = (i + 1) % 20 == 0;
    ASSERT_EQ(o.size(), eval ? 14u : 12u) << json::write(m[i]);
    for (size_t k = 0; k < 12; ++k)
      EXPECT_EQ(o[k].first, keys[k]);
    EXPECT_EQ(m[i].find("step")->asInt(), int64_t(i + 1));
    EXPECT_DOUBLE_EQ(m[i].find("lr")->asDouble(), 0.5);
    EXPECT_DOUBLE_EQ(m[i].find("loss_scale")->asDouble(), 1.0);
    EXPECT_FALSE(m[i].find("skipped")->asBool());
    EXPECT_EQ(m[i].find("skipped_total")->asInt(), 0);
    EXPECT_EQ(m[i].find("comm_ms")->asDouble(), 0.0);
    EXPECT_GT(m[i].find("mem_peak_bytes")->asInt(), 0);
    EXPECT_GT(m[i].find("grad_norm")->asDouble(), 0.0);
    EXPECT_DOUBLE_EQ(m[i].find("tokens_per_s")->asDouble(),
                     m[i].find("samples_per_s")->asDouble());
    if (eval) {
      EXPECT_EQ(o[12].first, "eval_loss");
      EXPECT_EQ(o[13].first, "eval_accuracy");
    }
  }
  double first = m.front().find("loss")->asDouble();
  double last = m.back().find("loss")->asDouble();
  EXPECT_LT(last, first * 0.5);
  double acc = m.back().find("eval_accuracy")->asDouble();
  EXPECT_GT(acc, 0.9);
  // The final line repeats the last metrics.
  char expect[128];
  std::snprintf(expect, sizeof expect, "eval_accuracy %.4f", acc);
  EXPECT_HAS(r.out, expect);
}

TEST_F(LoomRun, SameSeedSameRunOtherSeedDiffers) {
  auto losses = [&](const std::string &seed) {
    std::string metrics = tmp("seed" + seed + ".jsonl");
    RunResult r = loomRun(*artifact_ + " --steps 5 --seed " + seed +
                          " --metrics " + metrics);
    EXPECT_EQ(r.status, 0) << r.err;
    std::vector<double> v;
    for (const json::Value &line : metricsOf(metrics))
      v.push_back(line.find("loss")->asDouble());
    return v;
  };
  std::vector<double> a = losses("3"), b = losses("3"), c = losses("4");
  ASSERT_EQ(a.size(), 5u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a[0], c[0]);
}

TEST_F(LoomRun, DefaultsComeFromTheTrainBlock) {
  RunResult r = loomRun(*artifact_ + " --threads=1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "loom-run: 40 steps, final loss ");
  EXPECT_HAS(r.out, "eval_accuracy "); // always evaluated at the end
}

TEST_F(LoomRun, Describe) {
  RunResult r = loomRun(*artifact_ + " --describe");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "model     TestSoftmax");
  EXPECT_HAS(r.out, "train_step -> loom_test_train_step");
  EXPECT_HAS(r.out, "f32[64, 10]");
}

TEST_F(LoomRun, UsageErrorsExitTwo) {
  RunResult r = loomRun(*artifact_ + " --bogus=1");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "loom-run: error: unknown option '--bogus' (see --help)\n");
  r = loomRun(*artifact_ + " --steps=ten");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err,
            "loom-run: error: --steps expects an integer >= 0, got 'ten'\n");
  r = loomRun(*artifact_ + " --steps");
  EXPECT_EQ(r.status, 2);
  EXPECT_HAS(r.err, "--steps needs a value");
  r = loomRun("");
  EXPECT_EQ(r.status, 2);
  EXPECT_HAS(r.err, "no artifact given");
  r = loomRun(*artifact_ + " --calibrate=4");
  EXPECT_EQ(r.status, 2);
  EXPECT_HAS(r.err, "--calibrate=N needs --save=Q.safetensors");
  r = loomRun(*artifact_ + " --batch=4");
  EXPECT_EQ(r.status, 2);
  EXPECT_HAS(r.err, "--batch=N goes with --infer");
  r = loomRun(*artifact_ + " --trace-steps=2");
  EXPECT_EQ(r.status, 2);
  EXPECT_HAS(r.err, "--trace-steps needs --trace=FILE.json");
  r = loomRun(*artifact_ + " --trace=t.json --trace-steps=0");
  EXPECT_EQ(r.status, 2);
  r = loomRun(*artifact_ + " --timeout=soon");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "loom-run: error: --timeout expects a number of seconds "
                   ">= 0, got 'soon'\n");
  r = loomRun(*artifact_ + " --timeout=-1");
  EXPECT_EQ(r.status, 2);
  r = loomRun(*artifact_ + " --log-dir=");
  EXPECT_EQ(r.status, 2);
  // On one rank the watchdog has nothing to watch; the flag is accepted.
  r = loomRun(*artifact_ + " --steps=2 --timeout=0.5");
  EXPECT_EQ(r.status, 0) << r.err;
  r = loomRun(*artifact_ + " --resume");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "loom-run: error: --resume needs --ckpt-dir=DIR (where the "
                   "checkpoints are)\n");
  r = loomRun(*artifact_ + " --ckpt-every=5");
  EXPECT_EQ(r.status, 2);
  EXPECT_HAS(r.err, "--ckpt-every needs --ckpt-dir");
  r = loomRun(*artifact_ + " --ckpt-dir=x --ckpt-keep=-1");
  EXPECT_EQ(r.status, 2);
  r = loomRun(*artifact_ + " --save=");
  EXPECT_EQ(r.status, 2);
  r = loomRun(*artifact_ + " --describe=yes");
  EXPECT_EQ(r.status, 2);
  r = loomRun("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_HAS(r.out, "usage: loom-run ARTIFACT.loomx");
  r = loomRun("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_HAS(r.out,
             "artifact format 1, ABI " + std::to_string(LOOM_ABI_VERSION));
}

TEST_F(LoomRun, KernelErrorsNameRankStepOpAndCause) {
  std::string bad = clusters("badlabels", 256, 64, 12);
  RunResult r = loomRun(*artifact_ + " --steps=3 --data=" + bad);
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err,
             "loom-run: error: rank 0, step 1, train_step: "
             "loom_cross_entropy_fwd: target 12 outside [0, 10) in row 0");
}

TEST_F(LoomRun, DataThatDoesNotFitIsAnErrorBeforeTraining) {
  std::string narrow = clusters("narrow", 256, 32);
  RunResult r = loomRun(*artifact_ + " --steps=3 --data=" + narrow);
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "loom-run: error: " + narrow +
                       ": field 'x' is f32[32] per record, the model's input "
                       "'x' expects f32[64]\n");
  r = loomRun(*artifact_ + " --steps=3 --data=" + narrow + ".missing");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, ".missing: cannot open the dataset");
}

TEST_F(LoomRun, ArtifactProblemsAreOneLineErrors) {
  // Corrupted.
  std::string img = readFile(*artifact_);
  img[img.size() / 2] ^= 0x40;
  std::string corrupt = tmp("corrupt.loomx");
  writeFile(corrupt, img.data(), img.size());
  RunResult r = loomRun(corrupt);
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, corrupt + ": corrupted: checksum");
  // A mesh for more ranks than were launched.
  std::string m = replaceAll(kSoftmaxManifest, "@DATA@", *data_);
  std::string dp2 = pack("dp2", replaceAll(m, "\"dp\": 1", "\"dp\": 2"));
  r = loomRun(dp2);
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "world size 1 does not match the artifact's mesh dp=2 tp=1 "
                    "pp=1 (2 ranks): launch with mpirun -np 2");
  // A memory plan larger than the machine.
  std::string huge =
      pack("huge", replaceAll(m, "\"arena_bytes\": 19392",
                              "\"arena_bytes\": 562949953421312"));
  r = loomRun(huge);
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err,
             "the memory plan needs 512.0 TiB per rank, this machine has");
  // A program symbol the code image lacks.
  std::string nosym = pack("nosym", replaceAll(m, "\"loom_test_eval_step\"",
                                               "\"loom_missing_step\""));
  r = loomRun(nosym + " --steps=1");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "program eval_step: symbol 'loom_missing_step' not found");
  // Not an artifact at all.
  r = loomRun(*data_);
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "not a Loom artifact");
  for (const RunResult *x : {&r})
    EXPECT_EQ(std::count(x->err.begin(), x->err.end(), '\n'), 1);
}

TEST_F(LoomRun, MissingCpuFeatureIsRefused) {
  std::string lacking;
  for (const char *f :
       {"xop", "fma4", "sse4a", "avx512fp16", "amx-tile", "avx512f"})
    if (!cpuSupports(f)) {
      lacking = f;
      break;
    }
  if (lacking.empty())
    GTEST_SKIP() << "this CPU has every feature probed";
  std::string m = replaceAll(kSoftmaxManifest, "@DATA@", *data_);
  std::string art = pack(
      "cpu", replaceAll(m, "[\"sse2\"]", "[\"sse2\", \"" + lacking + "\"]"));
  RunResult r = loomRun(art + " --steps=1");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "needs sse2, " + lacking + "; this CPU lacks " + lacking +
                        "; recompile with --cpu=native on this machine");
}

#ifdef LOOM_MPIEXEC
TEST_F(LoomRun, WorldSizeMustMatchTheMesh) {
  // Open MPI refuses root and more ranks than cores unless told.
  std::string mpirun =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      "OMPI_MCA_rmaps_base_oversubscribe=1 " LOOM_MPIEXEC;
  std::string out = tmp("mpi.out"), err = tmp("mpi.err");
  std::string cmd = mpirun + " -np 2 " + LOOM_RUN_PATH + " " + *artifact_ +
                    " --steps=2 >" + out + " 2>" + err + " </dev/null";
  int rc = std::system(cmd.c_str());
  EXPECT_NE(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, 0);
  std::string e = readFile(err);
  EXPECT_HAS(e, "loom-run: error: world size 2 does not match the artifact's "
                "mesh dp=1 tp=1 pp=1 (1 rank)");
  // Said once (by rank 0), not once per rank.
  size_t first = e.find("world size 2");
  EXPECT_EQ(e.find("world size 2", first + 1), std::string::npos) << e;
  cmd = mpirun + " -np 1 " + LOOM_RUN_PATH + " " + *artifact_ + " --steps=2 >" +
        out + " 2>" + err + " </dev/null";
  rc = std::system(cmd.c_str());
  EXPECT_EQ(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, 0) << readFile(err);
  EXPECT_HAS(readFile(out), "loom-run: 2 steps, final loss");
}
#endif

//===----------------------------------------------------------------------===//
// Weights and checkpoints
//===----------------------------------------------------------------------===//

/// A fresh folder, removed with its contents when the tests end.
std::string tmpDir(const std::string &name) {
  std::string path = tmp(name);
  mkdir(path.c_str(), 0755);
  return path;
}

TEST_F(LoomRun, SaveThenInitFromIsBitwise) {
  std::string a = tmp("init.safetensors"), b = tmp("again.safetensors");
  RunResult r = loomRun(*artifact_ + " --steps=0 --save=" + a);
  ASSERT_EQ(r.status, 0) << r.err;
  // The initial weights, by manifest name, [in, out].
  safetensors::Header h = safetensors::validateBytes(
      reinterpret_cast<const unsigned char *>(readFile(a).data()),
      readFile(a).size(), true);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.find("w")->shape, (std::vector<int64_t>{64, 10}));
  EXPECT_EQ(*h.meta("model"), "TestSoftmax");
  EXPECT_EQ(*h.meta("step"), "0");
  r = loomRun(*artifact_ + " --steps=0 --seed=7 --init-from=" + a +
              " --save=" + b);
  ASSERT_EQ(r.status, 0) << r.err;
  // Same tensors; only the seed in the metadata differs.
  std::string x = readFile(a), y = readFile(b);
  ASSERT_EQ(x.size(), y.size());
  EXPECT_EQ(x.substr(x.size() - 2600), y.substr(y.size() - 2600));
  // Training from loaded weights equals training from the initialisation.
  std::string m1 = tmp("init1.jsonl"), m2 = tmp("init2.jsonl");
  ASSERT_EQ(loomRun(*artifact_ + " --steps=3 --metrics=" + m1).status, 0);
  ASSERT_EQ(
      loomRun(*artifact_ + " --steps=3 --init-from=" + b + " --metrics=" + m2)
          .status,
      0);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(metricsOf(m1)[i].find("loss")->asDouble(),
              metricsOf(m2)[i].find("loss")->asDouble());
}

TEST_F(LoomRun, InitFromNamesTheFileAndTheTensor) {
  std::vector<float> wT(10 * 64, 0.0f), bias(10, 0.0f);
  std::string bad = tmp("transposed.safetensors");
  safetensors::write(bad, {{"w", safetensors::DType::F32, {10, 64}, wT.data()},
                           {"b", safetensors::DType::F32, {10}, bias.data()}});
  RunResult r = loomRun(*artifact_ + " --steps=1 --init-from=" + bad);
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "loom-run: error: " + bad +
                       ": tensor 'w' has shape [10, 64], the model needs "
                       "[64, 10]\n");
  EXPECT_EQ(r.out.find("step 1"), std::string::npos) << "trained anyway";
  r = loomRun(*artifact_ + " --steps=1 --init-from=" + bad + ".missing");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, ".missing: cannot open: No such file or directory");
  std::string dir = tmpDir("nosave");
  r = loomRun(*artifact_ + " --steps=1 --save=" + dir +
              "/no/such/folder/w.safetensors");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "cannot write --save file");
  EXPECT_EQ(r.out, "") << "the error comes before any work";
  removeTree(dir);
}

TEST_F(LoomRun, ResumeContinuesBitwise) {
  std::string dir = tmpDir("ckpt");
  std::string ckpt = dir + "/run";
  std::string a = tmp("straight.safetensors"), b = tmp("resumed.safetensors");
  std::string metrics = tmp("resume.jsonl");
  // The test model checks that loom_step continues its own step counter (an
  // i64 state tensor): a resumed run must restore both.
  RunResult r =
      loomRun(*artifact_ + " --steps=40 --seed=3 --threads=1 --save=" + a);
  ASSERT_EQ(r.status, 0) << r.err;
  r = loomRun(*artifact_ + " --steps=15 --seed=3 --threads=1 --ckpt-dir=" +
              ckpt + " --ckpt-every=4 --metrics=" + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "loom-run: checkpoint " + ckpt + "/step-000004");
  EXPECT_HAS(r.out, "loom-run: checkpoint " + ckpt + "/step-000015");
  // Without --seed the checkpoint's seed is used.
  r = loomRun(*artifact_ + " --steps=40 --threads=1 --ckpt-dir=" + ckpt +
              " --resume --save=" + b + " --metrics=" + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_HAS(r.out, "loom-run: resuming from " + ckpt +
                        "/step-000015 (step 15 of 40)");
  EXPECT_EQ(readFile(a), readFile(b));
  // The metrics continue in the same file: steps 1..40 once each.
  std::vector<json::Value> m = metricsOf(metrics);
  ASSERT_EQ(m.size(), 40u);
  for (size_t i = 0; i < m.size(); ++i)
    EXPECT_EQ(m[i].find("step")->asInt(), int64_t(i + 1));
  // --ckpt-keep's default, 3; the resumed run (no --ckpt-every) wrote only
  // the final one.
  std::vector<int64_t> steps;
  for (const auto &[step, path] : listCheckpoints(ckpt))
    steps.push_back(step);
  EXPECT_EQ(steps, (std::vector<int64_t>{40, 15, 12}));
  // Another seed than the checkpoint's is refused; so is a fresh run into
  // a folder of checkpoints, and a target already passed.
  r = loomRun(*artifact_ + " --steps=50 --seed=4 --ckpt-dir=" + ckpt +
              " --resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err,
             "was written by a run with --seed=3, this run has --seed=4");
  r = loomRun(*artifact_ + " --steps=50 --ckpt-dir=" + ckpt);
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "already holds checkpoints");
  r = loomRun(*artifact_ + " --steps=20 --ckpt-dir=" + ckpt + " --resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "is at step 40, past --steps=20");
  // Another model's checkpoints.
  std::string bigram = pack("ckptbigram", kBigramManifest);
  r = loomRun(bigram + " --data=" + text("ckpttext", 4000) +
              " --steps=50 --ckpt-dir=" + ckpt + " --resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "loom-run: error: " + ckpt +
                       "/step-000040: a checkpoint of model 'TestSoftmax', "
                       "this artifact is model 'TestBigram'; use another "
                       "--ckpt-dir\n");
  // No checkpoint yet: start fresh, and say so.
  std::string fresh = dir + "/fresh";
  r = loomRun(*artifact_ + " --steps=2 --ckpt-dir=" + fresh + " --resume");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "loom-run: note: no checkpoint to resume in " + fresh +
                       "; starting from step 0\n");
  // A folder that cannot be made.
  r = loomRun(*artifact_ + " --steps=2 --ckpt-dir=/proc/x");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "loom-run: error: cannot create the checkpoint folder "
                   "/proc/x: No such file or directory\n");
  EXPECT_EQ(r.out, "");
  removeTree(dir);
}

TEST_F(LoomRun, SigtermWritesACheckpointAndResumes) {
  std::string dir = tmpDir("sigterm");
  std::string ckpt = dir + "/ckpt", metrics = dir + "/m.jsonl";
  std::string out = dir + "/out", err = dir + "/err";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen(out.c_str(), "w", stdout);
    freopen(err.c_str(), "w", stderr);
    std::string a1 = "--steps=100000000", a2 = "--ckpt-dir=" + ckpt,
                a3 = "--metrics=" + metrics;
    execl(LOOM_RUN_PATH, LOOM_RUN_PATH, artifact_->c_str(), a1.c_str(),
          a2.c_str(), a3.c_str(), "--threads=1", static_cast<char *>(nullptr));
    _exit(127);
  }
  // Wait for a few steps, then stop it as a cluster's scheduler would.
  for (int i = 0; i < 3000 && metricsOf(metrics).size() < 5; ++i)
    usleep(10000);
  ASSERT_GE(metricsOf(metrics).size(), 5u);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
  EXPECT_HAS(readFile(out), "(stopped by SIGTERM after step ");
  std::vector<std::pair<int64_t, std::string>> found = listCheckpoints(ckpt);
  ASSERT_EQ(found.size(), 1u);
  int64_t step = found[0].first;
  EXPECT_EQ(int64_t(metricsOf(metrics).size()), step);
  RunResult r =
      loomRun(*artifact_ + " --threads=1 --steps=" + std::to_string(step + 3) +
              " --ckpt-dir=" + ckpt + " --resume --metrics=" + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "resuming from " + found[0].second);
  EXPECT_EQ(int64_t(metricsOf(metrics).size()), step + 3);
  removeTree(dir);
}

TEST(LoomRunStream, TrainsABigramModelOnATokenStream) {
  std::string data = text("text", 20000);
  std::string art = pack("bigram", kBigramManifest);
  std::string metrics = tmp("bigram.jsonl");
  RunResult r = loomRun(art + " --data " + data +
                        " --steps 30 --eval-batches 4 --metrics " + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "token stream: 20,000 u8 tokens, vocab 256");
  std::vector<json::Value> m = metricsOf(metrics);
  ASSERT_EQ(m.size(), 30u);
  for (const json::Value &line : m)
    EXPECT_DOUBLE_EQ(line.find("tokens_per_s")->asDouble(),
                     line.find("samples_per_s")->asDouble() * 16);
  EXPECT_LT(m.back().find("loss")->asDouble(),
            m.front().find("loss")->asDouble() - 1.0);
  EXPECT_NEAR(m.front().find("loss")->asDouble(), std::log(256.0), 0.1);
  EXPECT_GT(m.back().find("eval_accuracy")->asDouble(), 0.3);
}

TEST(LoomRunSamples, DigitsAndText) {
  std::string digits = std::string(LOOM_SAMPLES_DATA_DIR) + "/digits.bin";
  std::string text = std::string(LOOM_SAMPLES_DATA_DIR) + "/text.bin";
  if (access(digits.c_str(), R_OK) != 0 || access(text.c_str(), R_OK) != 0)
    GTEST_SKIP() << "samples/data not prepared (run samples/prepare_data.py)";
  std::string art =
      pack("digits", replaceAll(kSoftmaxManifest, "@DATA@", digits));
  RunResult r = loomRun(art + " --steps=300");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "records: 1,797 × {x f32[64], y i32[]}");
  size_t at = r.out.find("eval_accuracy ");
  ASSERT_NE(at, std::string::npos);
  EXPECT_GT(std::stod(r.out.substr(at + 14)), 0.9) << r.out;
  std::string bigram = pack("textbigram", kBigramManifest);
  r = loomRun(bigram + " --data=" + text + " --steps=20 --eval-batches=8");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "u8 tokens, vocab 256");
}


//===----------------------------------------------------------------------===//
// Partitioned artifacts under mpirun (TestModel.c's loom_par_* programs)
//===----------------------------------------------------------------------===//

/// What a --trace file holds, checked for what every trace must satisfy:
/// valid JSON of {"traceEvents": [...], "displayTimeUnit": "ms"}, "X" events
/// with ts, dur >= 0 on pids 0..ranks-1 and tids 0..2, a process_name per
/// rank, and every span and every comm event of a program call (not the
/// runtime's own collectives "over the world") inside a program event of
/// its rank and step.
struct TraceSummary {
  /// events[rank][name]: how many.
  std::vector<std::map<std::string, int>> events;
  std::vector<std::string> processNames;
  std::set<int64_t> steps; ///< steps of the train_step events
  int commEvents = 0;
};

TraceSummary checkTrace(const std::string &path, int ranks) {
  TraceSummary t;
  t.events.resize(size_t(ranks));
  t.processNames.resize(size_t(ranks));
  json::Value doc;
  try {
    doc = json::parse(readFile(path));
  } catch (const std::exception &e) {
    ADD_FAILURE() << path << " is not JSON: " << e.what();
    return t;
  }
  const json::Value *unit = doc.find("displayTimeUnit");
  EXPECT_TRUE(unit && unit->isString() && unit->asString() == "ms");
  const json::Value *evs = doc.find("traceEvents");
  if (!evs || !evs->isArray()) {
    ADD_FAILURE() << "no traceEvents array";
    return t;
  }
  struct Program {
    double ts, end;
    int64_t step;
  };
  std::vector<std::vector<Program>> programs(static_cast<size_t>(ranks));
  struct Inner {
    int pid;
    std::string name;
    double ts, end;
    int64_t step;
  };
  std::vector<Inner> inner;
  for (const json::Value &e : evs->asArray()) {
    std::string ph = e.find("ph")->asString();
    int pid = int(e.find("pid")->asInt());
    EXPECT_GE(pid, 0);
    EXPECT_LT(pid, ranks);
    if (pid < 0 || pid >= ranks)
      continue;
    std::string name = e.find("name")->asString();
    if (ph == "M") {
      if (name == "process_name")
        t.processNames[size_t(pid)] =
            e.find("args")->find("name")->asString();
      continue;
    }
    EXPECT_EQ(ph, "X") << name;
    double ts = e.find("ts")->asDouble(), dur = e.find("dur")->asDouble();
    EXPECT_GE(ts, 0) << name;
    EXPECT_GE(dur, 0) << name;
    int64_t tid = e.find("tid")->asInt();
    std::string cat = e.find("cat")->asString();
    const json::Value *stepArg = e.find("args")->find("step");
    int64_t step = stepArg ? stepArg->asInt() : -1;
    ++t.events[size_t(pid)][name];
    if (cat == "comm") {
      EXPECT_TRUE(tid == 1 || tid == 2) << name;
      EXPECT_TRUE(e.find("args")->find("bytes")) << name;
      ++t.commEvents;
      if (name.find("the world") == std::string::npos)
        inner.push_back({pid, name, ts, ts + dur, step});
      continue;
    }
    EXPECT_EQ(cat, "compute") << name;
    EXPECT_EQ(tid, 0) << name;
    if (name == "train_step" || name == "eval_step") {
      programs[size_t(pid)].push_back({ts, ts + dur, step});
      if (name == "train_step")
        t.steps.insert(step);
    } else {
      inner.push_back({pid, name, ts, ts + dur, step});
    }
  }
  // ts and dur are printed to the nanosecond, each rounded.
  const double eps = 0.01;
  for (const Inner &i : inner) {
    bool inside = false;
    for (const Program &p : programs[size_t(i.pid)])
      inside |= p.step == i.step && i.ts >= p.ts - eps && i.end <= p.end + eps;
    EXPECT_TRUE(inside) << "rank " << i.pid << ": " << i.name << " of step "
                        << i.step << " at [" << i.ts << ", " << i.end
                        << "] is in no program call of its step";
  }
  return t;
}

TEST_F(LoomRun, TraceOfOneRankWithoutMpi) {
  std::string trace = tmp("softmax.trace.json");
  RunResult r = loomRun(*artifact_ + " --steps=5 --eval-every=2 "
                                     "--eval-batches=1 --trace=" + trace);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "loom-run: trace " + trace);
  TraceSummary t = checkTrace(trace, 1);
  // Steps 1..3 (the default), with the evaluation after step 2.
  EXPECT_EQ(t.steps, (std::set<int64_t>{1, 2, 3}));
  EXPECT_EQ(t.events[0]["train_step"], 3);
  EXPECT_EQ(t.events[0]["eval_step"], 1);
  EXPECT_EQ(t.processNames[0], "rank 0 (dp 0, tp 0, pp 0)");
  EXPECT_EQ(t.commEvents, 0);
  // Written through a temporary file, none of which is left.
  glob_t g;
  EXPECT_EQ(glob((trace + ".tmp.*").c_str(), 0, nullptr, &g), GLOB_NOMATCH);
  globfree(&g);
}

#ifdef LOOM_MPIEXEC

/// The softmax regression of TestModel.c partitioned over dp x tp (ZeRO-1
/// optional): local shapes, global_shape and shard as loomc writes them.
std::string parallelManifest(int dp, int tp, bool zero,
                             const std::string &programs,
                             const std::string &data) {
  const int cl = 10 / tp, rows = 64 / dp, mrows = zero ? 64 / dp : 64;
  std::ostringstream os;
  os << R"({"format": "loomx", "format_version": 1, "abi_version": )"
     << LOOM_ABI_VERSION << R"(,
  "model": "TestParallel", "source": "runtime/tests/TestModel.c",
  "target": "cpu", "cpu_features": [],
  "mesh": {"dp": )" << dp << R"(, "tp": )" << tp << R"(, "pp": 1}, "zero": )"
     << (zero ? 1 : 0) << R"(,
  "arena_bytes": 22016,
  "programs": {"train_step": "loom_par_)" << programs
     << R"(_train_step", "eval_step": "loom_par_)" << programs
     << R"(_eval_step"},
  "params": [
    {"name": "w", "dtype": "f32", "shape": [64, )" << cl
     << R"(], "global_shape": [64, 10], "shard": ["_", "tp"], "offset": 0, "init": "glorot"},
    {"name": "b", "dtype": "f32", "shape": [)" << cl
     << R"(], "global_shape": [10], "shard": ["tp"], "offset": 2560, "init": "normal", "init_args": [0.1]}
  ],
  "state": [
    {"name": "w.momentum", "dtype": "f32", "shape": [)" << mrows << ", " << cl
     << R"(], "global_shape": [64, 10], "shard": [")" << (zero ? "dp" : "_")
     << R"(", "tp"], "offset": 2624},
    {"name": "b.momentum", "dtype": "f32", "shape": [)" << cl
     << R"(], "global_shape": [10], "shard": ["tp"], "offset": 5184},
    {"name": "steps", "dtype": "i64", "shape": [], "offset": 5248}
  ],
  "inputs": [
    {"name": "x", "dtype": "f32", "shape": [)" << rows
     << R"(, 64], "global_shape": [64, 64], "shard": ["dp", "_"], "offset": 5312},
    {"name": "y", "dtype": "i32", "shape": [)" << rows
     << R"(], "global_shape": [64], "shard": ["dp"], "offset": 21696}
  ],
  "outputs": {"loss": 21952, "grad_norm": 21956, "lr": 21960,
              "eval_loss": 21964, "eval_count": 21968, "eval_correct": 21972},
  "train": {"steps": 10, "data": ")" << data << R"(", "optimizer": "sgd"}
})";
  return os.str();
}

std::string mpirunPrefix(int np) {
  // Open MPI refuses root and more ranks than cores unless told.
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
         "OMPI_MCA_rmaps_base_oversubscribe=1 " LOOM_MPIEXEC " -np " +
         std::to_string(np) + " ";
}

RunResult mpiRun(int np, const std::string &args) {
  std::string out = tmp("mpistdout"), err = tmp("mpistderr");
  std::string cmd = mpirunPrefix(np) + LOOM_RUN_PATH + " " + args + " >" +
                    out + " 2>" + err + " </dev/null";
  int rc = std::system(cmd.c_str());
  RunResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.out = readFile(out);
  r.err = readFile(err);
  return r;
}

struct MeshCase {
  int dp, tp;
  bool zero;
  const char *programs;
  int ranks() const { return dp * tp; }
};
const MeshCase kMeshes[] = {{2, 1, false, "2x1"},
                            {1, 2, false, "1x2"},
                            {2, 2, false, "2x2"},
                            {2, 1, true, "2x1z"},
                            {2, 2, true, "2x2z"}};

class LoomRunMpi : public testing::Test {
protected:
  static void SetUpTestSuite() {
    data_ = new std::string(clusters("mpiclusters", 1280));
    single_ = new std::string(
        pack("par1x1", parallelManifest(1, 1, false, "1x1", *data_)));
  }
  static std::string artifact(const MeshCase &c) {
    return pack(std::string("par") + c.programs,
                parallelManifest(c.dp, c.tp, c.zero, c.programs, *data_));
  }
  static std::string *data_, *single_;
};
std::string *LoomRunMpi::data_, *LoomRunMpi::single_;

/// The parameters of a --save file, by name.
std::map<std::string, std::vector<float>> weightsOf(const std::string &path) {
  std::map<std::string, std::vector<float>> out;
  auto file = safetensors::Reader::open(path);
  for (const auto &t : file->header().tensors) {
    std::vector<float> v(t.elements);
    file->read(t, v.data());
    out[t.name] = v;
  }
  return out;
}

TEST_F(LoomRunMpi, TraceOfDataParallelRanksHasTheProgressThreadsReductions) {
  std::string trace = tmp("par.trace.json");
  RunResult r = mpiRun(2, artifact(kMeshes[0]) +
                              " --steps=2 --threads=1 --trace=" + trace);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  TraceSummary t = checkTrace(trace, 2);
  EXPECT_EQ(t.steps, (std::set<int64_t>{1, 2}));
  for (int rank = 0; rank < 2; ++rank) {
    auto &ev = t.events[size_t(rank)];
    // Two buckets per step through loom_all_reduce_start.
    EXPECT_EQ(ev["all_reduce over dp (loom_all_reduce_start)"], 4) << rank;
    EXPECT_GT(ev["all_reduce over dp"], 0) << rank;
    EXPECT_GT(ev["all_reduce over the world (step metrics)"], 0) << rank;
  }
  EXPECT_EQ(t.processNames[1], "rank 1 (dp 1, tp 0, pp 0)");
}

TEST_F(LoomRunMpi, InitialisationIsShardingIndependent) {
  // --steps=0 --save: each rank initialises its slices, --save gathers
  // them; the file is the single rank's, byte for byte.
  std::string one = tmp("init1.safetensors");
  RunResult r = loomRun(*single_ + " --steps=0 --seed=5 --save=" + one);
  ASSERT_EQ(r.status, 0) << r.err;
  for (const MeshCase &c : {kMeshes[2], kMeshes[3]}) {
    std::string many = tmp(std::string("init") + c.programs + ".safetensors");
    r = mpiRun(c.ranks(),
               artifact(c) + " --steps=0 --seed=5 --save=" + many);
    ASSERT_EQ(r.status, 0) << c.programs << r.err;
    EXPECT_EQ(readFile(one), readFile(many)) << c.programs;
  }
}

TEST_F(LoomRunMpi, MatchesTheSingleRankRun) {
  // SEMANTICS.md's tolerances: loss at step 1 within 1e-6 relative, at step
  // 10 within 1e-4, weights after 10 steps |dw|/|w| <= 1e-4.
  std::string m1 = tmp("par1.jsonl"), w1 = tmp("par1.safetensors");
  RunResult r = loomRun(*single_ + " --steps=10 --threads=1 --eval-every=5 "
                                   "--metrics=" +
                        m1 + " --save=" + w1);
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<json::Value> base = metricsOf(m1);
  ASSERT_EQ(base.size(), 10u);
  auto ref = weightsOf(w1);
  for (const MeshCase &c : kMeshes) {
    std::string mm = tmp(std::string("par") + c.programs + ".jsonl");
    std::string ww = tmp(std::string("par") + c.programs + ".safetensors");
    r = mpiRun(c.ranks(), artifact(c) + " --steps=10 --threads=1 "
                                        "--eval-every=5 --metrics=" +
                              mm + " --save=" + ww);
    ASSERT_EQ(r.status, 0) << c.programs << r.out << r.err;
    // Rank 0 alone prints and writes the metrics.
    size_t finals = 0;
    for (size_t at = r.out.find("loom-run: 10 steps"); at != std::string::npos;
         at = r.out.find("loom-run: 10 steps", at + 1))
      ++finals;
    EXPECT_EQ(finals, 1u) << r.out;
    EXPECT_HAS(r.out, std::to_string(c.ranks()) + " ranks (dp=" +
                          std::to_string(c.dp) + " tp=" +
                          std::to_string(c.tp) + " pp=1");
    std::vector<json::Value> m = metricsOf(mm);
    ASSERT_EQ(m.size(), 10u) << c.programs;
    auto loss = [](const json::Value &v) {
      return v.find("loss")->asDouble();
    };
    EXPECT_NEAR(loss(m[0]), loss(base[0]), 1e-6 * std::fabs(loss(base[0])))
        << c.programs;
    EXPECT_NEAR(loss(m[9]), loss(base[9]), 1e-4 * std::fabs(loss(base[9])))
        << c.programs;
    EXPECT_NEAR(m[4].find("eval_loss")->asDouble(),
                base[4].find("eval_loss")->asDouble(), 1e-4)
        << c.programs;
    EXPECT_EQ(m[9].find("eval_accuracy")->asDouble(),
              base[9].find("eval_accuracy")->asDouble())
        << c.programs;
    EXPECT_NEAR(m[9].find("grad_norm")->asDouble(),
                base[9].find("grad_norm")->asDouble(),
                1e-4 * base[9].find("grad_norm")->asDouble());
    for (const json::Value &line : m) {
      EXPECT_GT(line.find("comm_ms")->asDouble(), 0.0) << c.programs;
      EXPECT_GT(line.find("samples_per_s")->asDouble(), 0.0);
      EXPECT_GT(line.find("mem_peak_bytes")->asInt(), 0);
    }
    auto got = weightsOf(ww);
    ASSERT_EQ(got.size(), ref.size());
    for (const auto &[name, want] : ref) {
      const std::vector<float> &have = got[name];
      ASSERT_EQ(have.size(), want.size()) << name;
      double diff = 0, norm = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        diff += (double(have[i]) - want[i]) * (double(have[i]) - want[i]);
        norm += double(want[i]) * want[i];
      }
      EXPECT_LE(std::sqrt(diff / norm), 1e-4) << c.programs << " " << name;
    }
  }
}

TEST_F(LoomRunMpi, ShardedCheckpointsResumeBitwise) {
  const MeshCase &c = kMeshes[4]; // dp=2 tp=2, ZeRO-1: every kind of slice
  std::string art = artifact(c);
  std::string dir = tmpDir("mpickpt"), ckpt = dir + "/ckpt";
  std::string a = dir + "/a.safetensors", b = dir + "/b.safetensors";
  std::string metrics = dir + "/m.jsonl";
  RunResult r = mpiRun(4, art + " --steps=12 --threads=1 --save=" + a);
  ASSERT_EQ(r.status, 0) << r.err;
  r = mpiRun(4, art + " --steps=7 --threads=1 --ckpt-dir=" + ckpt +
                    " --ckpt-every=3 --metrics=" + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "loom-run: checkpoint " + ckpt + "/step-000006");
  // One file per rank and one index, written by rank 0.
  std::string step7 = ckpt + "/step-000007";
  for (int rank = 0; rank < 4; ++rank)
    EXPECT_EQ(access((step7 + "/" + rankFileName(rank)).c_str(), R_OK), 0);
  EXPECT_NE(access((step7 + "/state.safetensors").c_str(), F_OK), 0);
  json::Value index = json::parse(readFile(step7 + "/index.json"));
  EXPECT_EQ(index.find("format_version")->asInt(), 2);
  EXPECT_EQ(index.find("zero")->asInt(), 1);
  EXPECT_EQ(index.find("mesh")->find("dp")->asInt(), 2);
  EXPECT_EQ(index.find("ranks")->asArray().size(), 4u);
  // Each rank's file holds its slices, with their local shapes.
  safetensors::Header h =
      safetensors::Reader::open(step7 + "/" + rankFileName(3))->header();
  EXPECT_EQ(h.find("w")->shape, (std::vector<int64_t>{64, 5}));
  EXPECT_EQ(h.find("w.momentum")->shape, (std::vector<int64_t>{32, 5}));
  EXPECT_EQ(*h.meta("rank"), "3");
  r = mpiRun(4, art + " --steps=12 --threads=1 --ckpt-dir=" + ckpt +
                    " --resume --save=" + b + " --metrics=" + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "resuming from " + step7 + " (step 7 of 12)");
  EXPECT_EQ(readFile(a), readFile(b));
  EXPECT_EQ(metricsOf(metrics).size(), 12u);
  // Another mesh is refused, with both meshes named.
  r = mpiRun(2, artifact(kMeshes[3]) + " --steps=14 --ckpt-dir=" + ckpt +
                    " --resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "written on mesh dp=2 tp=2 pp=1 (4 ranks), this "
                    "artifact's mesh is dp=2 tp=1 pp=1; resume on the same "
                    "mesh");
  // A damaged rank file is stepped over by every rank alike.
  std::string damaged = ckpt + "/step-000012/" + rankFileName(2);
  std::string bytes = readFile(damaged);
  bytes[bytes.size() - 1] ^= 1;
  writeFile(damaged, bytes.data(), bytes.size());
  r = mpiRun(4, art + " --steps=12 --threads=1 --ckpt-dir=" + ckpt +
                    " --resume --save=" + b);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.err, "step-000012: rank 2: rank-2.safetensors is damaged");
  EXPECT_HAS(r.out, "resuming from " + step7 + " (step 7 of 12)");
  EXPECT_EQ(readFile(a), readFile(b));
  removeTree(dir);
}

TEST_F(LoomRunMpi, InitFromGivesEveryRankItsSlices) {
  std::string w = tmp("par-init.safetensors"), back = tmp("par-back.safetensors");
  RunResult r = loomRun(*single_ + " --steps=3 --threads=1 --save=" + w);
  ASSERT_EQ(r.status, 0) << r.err;
  r = mpiRun(4, artifact(kMeshes[2]) + " --steps=0 --init-from=" + w +
                    " --save=" + back);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(weightsOf(w), weightsOf(back));
  // A file that is not there is an error on every rank.
  r = mpiRun(2, artifact(kMeshes[0]) + " --steps=1 --init-from=" + tmp("x"));
  EXPECT_EQ(r.status, 1);
}

TEST_F(LoomRunMpi, EveryRankLogsToItsOwnFile) {
  std::string dir = tmpDir("mpilogs");
  RunResult r = mpiRun(2, artifact(kMeshes[0]) +
                              " --steps=4 --threads=1 --log-dir=" + dir +
                              "/logs");
  ASSERT_EQ(r.status, 0) << r.err;
  for (int rank = 0; rank < 2; ++rank) {
    std::string log = readFile(dir + "/logs/rank-" + std::to_string(rank) +
                               ".log");
    EXPECT_HAS(log, "# loom-run rank " + std::to_string(rank) +
                        " of 2 (dp " + std::to_string(rank) + ", tp 0, pp 0)");
    EXPECT_HAS(log, "step=4 loss=");
    EXPECT_HAS(log, " comm_ms=");
    EXPECT_HAS(log, " rss=");
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 5) << log;
  }
  removeTree(dir);
}

TEST_F(LoomRunMpi, WatchdogEndsAHungJob) {
  // Rank 1 stops taking part at step 2; rank 0 waits in a collective of the
  // program, of the sharded cross-entropy, or of the progress thread.
  struct Case {
    int dp, tp;
    const char *programs, *program, *message;
  } cases[] = {
      {2, 1, "2x1", "hang",
       "loom-run: error: rank 0, step 2: collective all_reduce over dp (1 "
       "floats) did not complete within 1.5 s; aborting the job"},
      {1, 2, "1x2", "hangce",
       "loom-run: error: rank 0, step 2: collective all_reduce (max with "
       "index) over tp (64 (float, index) pairs, in "
       "loom_cross_entropy_fwd_sharded) did not complete within 1.5 s; "
       "aborting the job"},
      {2, 1, "2x1", "hangasync",
       "loom-run: error: rank 0, step 2: collective all_reduce over dp (640 "
       "floats, in loom_all_reduce_start) did not complete within 1.5 s; "
       "aborting the job"}};
  for (const Case &c : cases) {
    std::string m = parallelManifest(c.dp, c.tp, false, c.programs, *data_);
    std::string hang = pack(
        std::string("par") + c.program,
        replaceAll(m, std::string("\"loom_par_") + c.programs + "_train_step\"",
                   std::string("\"loom_par_") + c.program + "_train_step\""));
    auto t0 = std::chrono::steady_clock::now();
    RunResult r = mpiRun(2, hang + " --steps=5 --threads=1 --timeout=1.5");
    double seconds = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - t0)
                         .count();
    EXPECT_NE(r.status, 0) << c.program;
    EXPECT_LT(seconds, 15.0) << c.program;
    EXPECT_HAS(r.err, c.message);
  }
}

TEST_F(LoomRunMpi, RefusesUnstagedPipelineMeshesAndOldArtifactsOnSeveralRanks) {
  // A pp mesh without "stages" and per-stage programs.
  std::string pp = pack(
      "parpp", replaceAll(parallelManifest(1, 1, false, "1x1", *data_),
                          "\"pp\": 1", "\"pp\": 2"));
  RunResult r = mpiRun(2, pp + " --steps=1");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "mesh dp=1 tp=1 pp=2: a pipeline-parallel mesh, but the "
                    "manifest has no \"stages\" and per-stage programs (each "
                    "rank runs the program of its stage); recompile it with "
                    "this Loom");
  // An ABI 2 artifact holds whole tensors: the softmax manifest on dp=2.
  std::string old = replaceAll(
      replaceAll(replaceAll(kSoftmaxManifest, "@DATA@", *data_), "\"dp\": 1",
                 "\"dp\": 2"),
      "\"abi_version\": " LOOM_TEST_STR(LOOM_ABI_VERSION), "\"abi_version\": 2");
  r = mpiRun(2, pack("abi2", old, 2) + " --steps=1");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "mesh dp=2 tp=1 pp=1 in an ABI 2 artifact, which holds "
                    "whole tensors for one rank; recompile it with this Loom");
  // Said once, by rank 0.
  EXPECT_EQ(r.err.find("ABI 2 artifact"), r.err.rfind("ABI 2 artifact"));
}

TEST_F(LoomRunMpi, SigtermToOneRankStopsEveryRankAfterTheSameStep) {
  // As a scheduler that signals the tasks (mpirun forwards its own SIGTERM
  // to every rank too): the flag rides on the per-step all-reduce, so every
  // rank stops after the same step and a sharded checkpoint is written.
  std::string dir = tmpDir("mpisigterm");
  std::string ckpt = dir + "/ckpt", metrics = dir + "/m.jsonl";
  std::string logs = dir + "/logs";
  std::string art = artifact(kMeshes[0]);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string cmd = mpirunPrefix(2) + LOOM_RUN_PATH + " " + art +
                      " --steps=100000000 --threads=1 --ckpt-dir=" + ckpt +
                      " --metrics=" + metrics + " --log-dir=" + logs + " >" +
                      dir + "/out 2>" + dir + "/err </dev/null";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char *>(nullptr));
    _exit(127);
  }
  std::string log1 = logs + "/rank-1.log";
  for (int i = 0; i < 3000 && readFile(log1).find("step=20 ") == std::string::npos;
       ++i)
    usleep(10000);
  std::string head = readFile(log1);
  size_t at = head.find(", pid ");
  ASSERT_NE(at, std::string::npos) << head;
  pid_t rank1 = std::atoi(head.c_str() + at + 6);
  ASSERT_GT(rank1, 1);
  auto t0 = std::chrono::steady_clock::now();
  kill(rank1, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  double seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - t0)
                       .count();
  EXPECT_LT(seconds, 15.0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_HAS(readFile(dir + "/out"), "(stopped by SIGTERM after step ");
  // One complete sharded checkpoint, at the step both ranks stopped after.
  auto found = listCheckpoints(ckpt);
  ASSERT_EQ(found.size(), 1u);
  int64_t step = found[0].first;
  EXPECT_EQ(int64_t(metricsOf(metrics).size()), step);
  for (int rank = 0; rank < 2; ++rank) {
    std::string log = readFile(logs + "/rank-" + std::to_string(rank) + ".log");
    EXPECT_HAS(log, "step=" + std::to_string(step) + " ");
    EXPECT_EQ(log.find("step=" + std::to_string(step + 1) + " "),
              std::string::npos);
  }
  RunResult r = mpiRun(2, art + " --threads=1 --steps=" +
                              std::to_string(step + 2) + " --ckpt-dir=" + ckpt +
                              " --resume --metrics=" + metrics);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "resuming from " + found[0].second);
  EXPECT_EQ(int64_t(metricsOf(metrics).size()), step + 2);
  removeTree(dir);
}

TEST_F(LoomRunMpi, AKilledRankEndsTheJobAndTheRunResumes) {
  std::string dir = tmpDir("mpikill");
  std::string ckpt = dir + "/ckpt", logs = dir + "/logs";
  std::string art = artifact(kMeshes[0]);
  std::string out = dir + "/out", err = dir + "/err";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string cmd = mpirunPrefix(2) + LOOM_RUN_PATH + " " + art +
                      " --steps=100000000 --threads=1 --ckpt-every=5 "
                      "--ckpt-dir=" +
                      ckpt + " --log-dir=" + logs + " >" + out + " 2>" + err +
                      " </dev/null";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char *>(nullptr));
    _exit(127);
  }
  // Wait for a few checkpoints, then kill rank 1 as the OOM killer would.
  std::string log1 = logs + "/rank-1.log";
  for (int i = 0; i < 2000 && listCheckpoints(ckpt).size() < 2; ++i)
    usleep(10000);
  ASSERT_GE(listCheckpoints(ckpt).size(), 2u);
  std::string head = readFile(log1);
  size_t at = head.find(", pid ");
  ASSERT_NE(at, std::string::npos) << head;
  pid_t victim = std::atoi(head.c_str() + at + 6);
  ASSERT_GT(victim, 1);
  auto t0 = std::chrono::steady_clock::now();
  kill(victim, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  double seconds = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - t0)
                       .count();
  EXPECT_LT(seconds, 60.0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  std::string e = readFile(err);
  EXPECT_HAS(e, "process rank 1 with PID");
  EXPECT_HAS(e, "exited on signal 9 (Killed)");
  std::fprintf(stderr, "[mpirun after kill -9, %.1f s]\n%s", seconds, e.c_str());
  // The newest complete checkpoint continues.
  int64_t last = listCheckpoints(ckpt).front().first;
  RunResult r = mpiRun(2, art + " --threads=1 --steps=" +
                              std::to_string(last + 3) + " --ckpt-dir=" +
                              ckpt + " --resume");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "resuming from " + ckpt + "/" + checkpointName(last));
  removeTree(dir);
}

//===----------------------------------------------------------------------===//
// Pipeline-parallel artifacts (TestModel.c's loom_pipe_* programs)
//===----------------------------------------------------------------------===//

/// TestModel.c's two-layer network: on one rank (pp = 1, no stage fields),
/// or in 2 pipeline stages (stage 0: w1, b1, x; stage 1: w2, b2, y; `steps`
/// and the outputs in every stage) over dp = 1 or 2, as loomc writes it.
std::string pipelineManifest(int dp, int pp, const std::string &data,
                             const std::string &s0 = "d1_s0",
                             const std::string &s1 = "d1_s1", int tp = 1) {
  const bool staged = pp > 1;
  const int rows = 64 / dp;
  // kStage0 / kStage1 / kWhole of TestModel.c.
  int w1 = 128, b1 = 4224, mw1 = 4288, mb1 = 8384, x = 8448;
  int w2 = staged ? 128 : 24832, b2 = staged ? 768 : 25472,
      mw2 = staged ? 832 : 25536, mb2 = staged ? 1472 : 26176,
      y = staged ? 1536 : 26240;
  auto stage = [&](int s) {
    return staged ? ", \"stage\": " + std::to_string(s) : std::string();
  };
  auto programs = [&](const char *role) {
    if (!staged)
      return "\"loom_pipe_whole_" + std::string(role) + "\"";
    return "[\"loom_pipe_" + s0 + "_" + role + "\", \"loom_pipe_" + s1 + "_" +
           role + "\"]";
  };
  std::ostringstream os;
  os << R"({"format": "loomx", "format_version": 1, "abi_version": )"
     << LOOM_ABI_VERSION << R"(,
  "model": "TestPipeline", "source": "runtime/tests/TestModel.c",
  "target": "cpu", "cpu_features": [],
  "mesh": {"dp": )" << dp << R"(, "tp": )" << tp << R"(, "pp": )" << pp
     << "},";
  if (staged)
    os << R"( "stages": 2, "stage_arena_bytes": [24832, 1792],
  "arena_bytes": 24832,)";
  else
    os << R"( "arena_bytes": 26496,)";
  os << R"(
  "trace_spans": ["F0", "F1", "B0", "B1"],
  "programs": {"train_step": )" << programs("train_step")
     << R"(, "eval_step": )" << programs("eval_step") << R"(},
  "params": [
    {"name": "w1", "dtype": "f32", "shape": [64, 16], "offset": )" << w1
     << stage(0) << R"(, "init": "glorot"},
    {"name": "b1", "dtype": "f32", "shape": [16], "offset": )" << b1
     << stage(0) << R"(, "init": "normal", "init_args": [0.1]},
    {"name": "w2", "dtype": "f32", "shape": [16, 10], "offset": )" << w2
     << stage(1) << R"(, "init": "glorot"},
    {"name": "b2", "dtype": "f32", "shape": [10], "offset": )" << b2
     << stage(1) << R"(, "init": "normal", "init_args": [0.1]}
  ],
  "state": [
    {"name": "steps", "dtype": "i64", "shape": [], "offset": 0},
    {"name": "w1.momentum", "dtype": "f32", "shape": [64, 16], "offset": )"
     << mw1 << stage(0) << R"(},
    {"name": "b1.momentum", "dtype": "f32", "shape": [16], "offset": )" << mb1
     << stage(0) << R"(},
    {"name": "w2.momentum", "dtype": "f32", "shape": [16, 10], "offset": )"
     << mw2 << stage(1) << R"(},
    {"name": "b2.momentum", "dtype": "f32", "shape": [10], "offset": )" << mb2
     << stage(1) << R"(}
  ],
  "inputs": [
    {"name": "x", "dtype": "f32", "shape": [)" << rows
     << R"(, 64], "global_shape": [64, 64], "shard": ["dp", "_"], "offset": )"
     << x << stage(0) << R"(},
    {"name": "y", "dtype": "i32", "shape": [)" << rows
     << R"(], "global_shape": [64], "shard": ["dp"], "offset": )" << y
     << stage(1) << R"(}
  ],
  "outputs": {"loss": 64, "grad_norm": 68, "lr": 72,
              "eval_loss": 76, "eval_count": 80, "eval_correct": 84},
  "train": {"steps": 10, "data": ")" << data << R"(", "optimizer": "sgd"}
})";
  return os.str();
}

class LoomRunPipeline : public testing::Test {
protected:
  static void SetUpTestSuite() {
    data_ = new std::string(clusters("pipeclusters", 1280));
    single_ = new std::string(pack("pipe1", pipelineManifest(1, 1, *data_)));
    pp2_ = new std::string(pack("pipe2", pipelineManifest(1, 2, *data_)));
    dp2pp2_ = new std::string(
        pack("pipe4", pipelineManifest(2, 2, *data_, "d2_s0", "d2_s1")));
  }
  static std::string *data_, *single_, *pp2_, *dp2pp2_;
};
std::string *LoomRunPipeline::data_, *LoomRunPipeline::single_,
    *LoomRunPipeline::pp2_, *LoomRunPipeline::dp2pp2_;

TEST_F(LoomRunPipeline, DescribeNamesStagesAndTheirPrograms) {
  RunResult r = loomRun(*pp2_ + " --describe");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "mesh      dp=1 tp=1 pp=2 (2 ranks)");
  EXPECT_HAS(r.out, "2 pipeline stages: stage 0 24.2 KiB, stage 1 1.8 KiB");
  EXPECT_HAS(r.out, "train_step -> [loom_pipe_d1_s0_train_step, "
                    "loom_pipe_d1_s1_train_step]");
  EXPECT_HAS(r.out, "@ 128 in stage 1");
  EXPECT_HAS(r.out, "y            i32[64]      @ 1536 in stage 1\n");
  r = loomRun(*dp2pp2_ + " --describe");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_HAS(r.out, "@ 1536 in stage 1  (per rank; global i32[64], split "
                    "(dp))");
}

TEST_F(LoomRunPipeline, EachStageInitialisesItsParametersAndSaveHasAll) {
  // Stage 0's w1 and stage 1's w2 share offset 128 in their own arenas: a
  // rank that initialised or loaded the other stage's parameter would
  // clobber its own (or overrun stage 1's 1792-byte arena).
  std::string one = tmp("pipeinit1.safetensors");
  RunResult r = loomRun(*single_ + " --steps=0 --seed=3 --save=" + one);
  ASSERT_EQ(r.status, 0) << r.err;
  for (const std::string *art : {pp2_, dp2pp2_}) {
    int np = art == pp2_ ? 2 : 4;
    std::string many = tmp("pipeinit" + std::to_string(np) + ".safetensors");
    r = mpiRun(np, *art + " --steps=0 --seed=3 --save=" + many);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(readFile(one), readFile(many)) << np;
    EXPECT_EQ(weightsOf(many).size(), 4u);
    // --init-from: each rank reads its stage's parameters.
    std::string back = tmp("pipeback" + std::to_string(np) + ".safetensors");
    std::string trained = tmp("pipetrained.safetensors");
    r = loomRun(*single_ + " --steps=2 --threads=1 --save=" + trained);
    ASSERT_EQ(r.status, 0) << r.err;
    r = mpiRun(np, *art + " --steps=0 --init-from=" + trained +
                       " --save=" + back);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(weightsOf(trained), weightsOf(back)) << np;
  }
}

TEST_F(LoomRunPipeline, TraceOfOneRankHasTheScheduleSpans) {
  std::string trace = tmp("pipe1.trace.json");
  RunResult r = loomRun(*single_ + " --steps=4 --threads=1 --trace=" + trace +
                        " --trace-steps=2");
  ASSERT_EQ(r.status, 0) << r.err;
  TraceSummary t = checkTrace(trace, 1);
  EXPECT_EQ(t.steps, (std::set<int64_t>{1, 2}));
  for (const char *span : {"F0", "F1"})
    EXPECT_EQ(t.events[0][span], 2) << span;
  for (const char *span : {"B0", "B1"})
    EXPECT_EQ(t.events[0][span], 4) << span; // last stage's and first's
}

TEST_F(LoomRunPipeline, TraceOfTwoStagesHasEveryRankSpansAndTransfers) {
  std::string trace = tmp("pipe2.trace.json");
  // The evaluation after the last step (one batch) is traced too.
  RunResult r = mpiRun(2, *pp2_ + " --steps=3 --threads=1 --eval-batches=1 "
                                  "--trace=" + trace);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_HAS(r.out, "loom-run: trace " + trace);
  TraceSummary t = checkTrace(trace, 2);
  EXPECT_EQ(t.steps, (std::set<int64_t>{1, 2, 3}));
  EXPECT_EQ(t.processNames[0], "rank 0 (dp 0, tp 0, pp 0)");
  EXPECT_EQ(t.processNames[1], "rank 1 (dp 0, tp 0, pp 1)");
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(t.events[size_t(rank)]["train_step"], 3) << rank;
    EXPECT_EQ(t.events[size_t(rank)]["eval_step"], 1) << rank;
  }
  // Stage 0: forward and backward of both micro-batches, each step; it
  // sends activations to stage 1 and receives their gradients back.
  EXPECT_EQ(t.events[0]["F0"], 3);
  EXPECT_EQ(t.events[0]["B1"], 3);
  EXPECT_EQ(t.events[0]["recv from stage 1"], 6);
  EXPECT_GE(t.events[0]["send to stage 1"], 6);
  // Stage 1: one span per micro-batch, the mirror-image transfers.
  EXPECT_EQ(t.events[1]["B0"], 3);
  EXPECT_EQ(t.events[1]["F0"], 0);
  EXPECT_EQ(t.events[1]["recv from stage 0"], 7); // and the eval's
  EXPECT_GE(t.events[1]["send to stage 0"], 6);
  EXPECT_GT(t.events[0]["all_reduce over pp"], 0);
}

TEST_F(LoomRunPipeline, MatchesTheSingleRankRun) {
  std::string m1 = tmp("pipe1.jsonl"), w1 = tmp("pipe1w.safetensors");
  RunResult r = loomRun(*single_ + " --steps=10 --threads=1 --eval-every=5 "
                                   "--metrics=" +
                        m1 + " --save=" + w1);
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<json::Value> base = metricsOf(m1);
  ASSERT_EQ(base.size(), 10u);
  auto num = [](const json::Value &v, const char *key) {
    return v.find(key)->asDouble();
  };
  // pp = 2: the same arithmetic in the same order, so bitwise the same.
  std::string dir = tmpDir("pipelogs");
  std::string m2 = tmp("pipe2.jsonl"), w2 = tmp("pipe2w.safetensors");
  r = mpiRun(2, *pp2_ + " --steps=10 --threads=1 --eval-every=5 --metrics=" +
                    m2 + " --save=" + w2 + " --log-dir=" + dir);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_HAS(r.out, "2 ranks (dp=1 tp=1 pp=2)");
  std::vector<json::Value> got = metricsOf(m2);
  ASSERT_EQ(got.size(), 10u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(num(got[i], "loss"), num(base[i], "loss")) << i;
    EXPECT_EQ(num(got[i], "grad_norm"), num(base[i], "grad_norm")) << i;
  }
  EXPECT_EQ(num(got[9], "eval_loss"), num(base[9], "eval_loss"));
  EXPECT_EQ(num(got[9], "eval_accuracy"), num(base[9], "eval_accuracy"));
  EXPECT_EQ(readFile(w1), readFile(w2));
  // tp = 2 x pp = 2, the stages replicated over tp (ranks 0, 2: stage 0;
  // 1, 3: stage 1): the pp groups are {0, 1} and {2, 3}; --save takes tp
  // coordinate 0's copies.
  std::string mt = tmp("pipetp.jsonl"), wt = tmp("pipetpw.safetensors");
  r = mpiRun(4, pack("pipetp", pipelineManifest(1, 2, *data_, "d1_s0",
                                                "d1_s1", 2)) +
                    " --steps=10 --threads=1 --eval-every=5 --metrics=" + mt +
                    " --save=" + wt);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  got = metricsOf(mt);
  ASSERT_EQ(got.size(), 10u);
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_EQ(num(got[i], "loss"), num(base[i], "loss")) << i;
  EXPECT_EQ(readFile(w1), readFile(wt));
  // Each stage's log books its sends and receives: 2 micro-batches of
  // 32 x 16 floats each way (8192 bytes) and the 2-float loss/norm
  // all-reduce over pp; 5 transfers.
  for (int rank = 0; rank < 2; ++rank) {
    std::string log =
        readFile(dir + "/rank-" + std::to_string(rank) + ".log");
    EXPECT_HAS(log, "(dp 0, tp 0, pp " + std::to_string(rank) + ")");
    EXPECT_HAS(log, "step=3 loss=");
    EXPECT_HAS(log, " comm_bytes=8200 collectives=5 ");
  }
  // dp = 2 x pp = 2: the gradients are summed over dp in another order.
  std::string m4 = tmp("pipe4.jsonl"), w4 = tmp("pipe4w.safetensors");
  r = mpiRun(4, *dp2pp2_ + " --steps=10 --threads=1 --eval-every=5 "
                           "--metrics=" +
                    m4 + " --save=" + w4);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  got = metricsOf(m4);
  ASSERT_EQ(got.size(), 10u);
  EXPECT_NEAR(num(got[0], "loss"), num(base[0], "loss"),
              1e-6 * num(base[0], "loss"));
  EXPECT_NEAR(num(got[9], "loss"), num(base[9], "loss"),
              1e-4 * num(base[9], "loss"));
  EXPECT_NEAR(num(got[9], "grad_norm"), num(base[9], "grad_norm"),
              1e-4 * num(base[9], "grad_norm"));
  EXPECT_NEAR(num(got[4], "eval_loss"), num(base[4], "eval_loss"), 1e-4);
  EXPECT_EQ(num(got[9], "eval_accuracy"), num(base[9], "eval_accuracy"));
  auto ref = weightsOf(w1), have = weightsOf(w4);
  ASSERT_EQ(have.size(), ref.size());
  for (const auto &[name, want] : ref) {
    const std::vector<float> &v = have[name];
    ASSERT_EQ(v.size(), want.size()) << name;
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      diff += (double(v[i]) - want[i]) * (double(v[i]) - want[i]);
      norm += double(want[i]) * want[i];
    }
    EXPECT_LE(std::sqrt(diff / norm), 1e-4) << name;
  }
  removeTree(dir);
}

TEST_F(LoomRunPipeline, ShardedCheckpointsResumeBitwise) {
  for (const std::string *art : {pp2_, dp2pp2_}) {
    int np = art == pp2_ ? 2 : 4;
    std::string dir = tmpDir("pipeckpt" + std::to_string(np));
    std::string ckpt = dir + "/ckpt";
    std::string a = dir + "/a.safetensors", b = dir + "/b.safetensors";
    RunResult r = mpiRun(np, *art + " --steps=9 --threads=1 --save=" + a);
    ASSERT_EQ(r.status, 0) << r.err;
    r = mpiRun(np, *art + " --steps=5 --threads=1 --ckpt-dir=" + ckpt +
                       " --ckpt-every=2");
    ASSERT_EQ(r.status, 0) << r.err;
    std::string step5 = ckpt + "/step-000005";
    json::Value index = json::parse(readFile(step5 + "/index.json"));
    EXPECT_EQ(index.find("mesh")->find("pp")->asInt(), 2);
    EXPECT_EQ(index.find("ranks")->asArray().size(), size_t(np));
    // Each rank's file holds its stage's tensors (and `steps`) only.
    for (int rank = 0; rank < np; ++rank) {
      safetensors::Header h =
          safetensors::Reader::open(step5 + "/" + rankFileName(rank))
              ->header();
      bool first = rank % 2 == 0;
      EXPECT_EQ(h.find("w1") != nullptr, first) << rank;
      EXPECT_EQ(h.find("w2.momentum") != nullptr, !first) << rank;
      EXPECT_NE(h.find("steps"), nullptr);
      EXPECT_EQ(h.tensors.size(), 5u);
      EXPECT_EQ(*h.meta("stage"), first ? "0" : "1");
    }
    r = mpiRun(np, *art + " --steps=9 --threads=1 --ckpt-dir=" + ckpt +
                       " --resume --save=" + b);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_HAS(r.out, "resuming from " + step5 + " (step 5 of 9)");
    EXPECT_EQ(readFile(a), readFile(b)) << np;
    removeTree(dir);
  }
  // Another mesh is refused.
  std::string dir = tmpDir("pipeckptmesh"), ckpt = dir + "/ckpt";
  RunResult r = mpiRun(2, *pp2_ + " --steps=2 --ckpt-dir=" + ckpt);
  ASSERT_EQ(r.status, 0) << r.err;
  r = mpiRun(4, *dp2pp2_ + " --steps=3 --ckpt-dir=" + ckpt + " --resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "written on mesh dp=1 tp=1 pp=2 (2 ranks), this "
                    "artifact's mesh is dp=2 tp=1 pp=2");
  removeTree(dir);
}

TEST_F(LoomRunPipeline, WatchdogEndsARecvThatNeverGetsItsSend) {
  // At step 2 stage 1 waits for micro-batch 0's slot 7, which stage 0 never
  // sends; stage 0 stops taking part.
  std::string hang =
      pack("pipehang", pipelineManifest(1, 2, *data_, "hang_s0", "hang_s1"));
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = mpiRun(2, hang + " --steps=5 --threads=1 --timeout=1.5");
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_NE(r.status, 0);
  EXPECT_LT(seconds, 15.0);
  EXPECT_HAS(r.err, "loom-run: error: rank 1 (stage 1), step 2: recv from "
                    "stage 0 (micro-batch 0, slot 7, 512 floats) did not "
                    "complete within 1.5 s; aborting the job");
}

TEST_F(LoomRunPipeline, WatchdogEndsASendNobodyReceives) {
  // At step 2 stage 0 also sends 2^20 floats that stage 1 never receives:
  // the send is still pending when stage 0's program returns.
  std::string hang = pack(
      "pipehangsend", pipelineManifest(1, 2, *data_, "hangsend_s0",
                                       "hangsend_s1"));
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = mpiRun(2, hang + " --steps=5 --threads=1 --timeout=1.5");
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_NE(r.status, 0);
  EXPECT_LT(seconds, 15.0);
  EXPECT_HAS(r.err, "loom-run: error: rank 0 (stage 0), step 2: send to "
                    "stage 1 (micro-batch 0, slot 9, 1048576 floats) did not "
                    "complete within 1.5 s; aborting the job");
}

TEST_F(LoomRunPipeline, ASizeMismatchIsAnError) {
  std::string bad =
      pack("pipesize", pipelineManifest(1, 2, *data_, "d1_s0", "size_s1"));
  RunResult r = mpiRun(2, bad + " --steps=3 --threads=1 --timeout=10");
  EXPECT_EQ(r.status, 1);
  EXPECT_HAS(r.err, "loom-run: error: rank 1, step 1, train_step: loom_recv: "
                    "rank 1 (stage 1): recv from stage 0 (micro-batch 1, "
                    "slot 0, 513 floats): size mismatch: stage 0 sent 512 "
                    "floats, this recv expects 513");
}

#endif // LOOM_MPIEXEC

} // namespace
