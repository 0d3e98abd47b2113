//===- Artifact.h - reading and validating a .loomx artifact ----*- C++ -*-===//
//
// The runtime side of runtime/ARTIFACT.md: the trailer, the checksum, the ELF
// image, the manifest (parsed into typed structs and range-checked against
// the arena) and the CPU features the code needs. Nothing is dlopen'ed until
// all of it has been checked.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_ARTIFACT_H
#define LOOM_RUNTIME_ARTIFACT_H

#include "runtime/Json.h"
#include "runtime/Support.h"
#include "runtime/abi/loom_abi.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace loom::runtime {

/// The artifact format version this runtime reads (ARTIFACT.md).
constexpr uint32_t kArtifactFormatVersion = 1;
/// The oldest ABI version this runtime still runs (ABI 2: one rank, no
/// `global_shape`); the newest is LOOM_ABI_VERSION.
constexpr uint32_t kMinAbiVersion = 2;
constexpr size_t kTrailerBytes = 64;
constexpr uint64_t kMaxManifestBytes = 64ull << 20;
/// Every arena buffer starts at a multiple of this.
constexpr int64_t kArenaAlignment = 64;
/// `LOOMX\0\0\1`.
extern const unsigned char kArtifactMagic[8];

enum class DType { F32, F16, BF16, F64, I32, I64, I8, U8 };
const char *dtypeName(DType t);
size_t dtypeSize(DType t);
/// Parses "f32", "bf16", ...; false for an unknown name.
bool parseDType(const std::string &name, DType &out);
/// "f32[64, 128]", "i64[]".
std::string formatTensorType(DType t, const std::vector<int64_t> &shape);

struct Mesh {
  int64_t dp = 1, tp = 1, pp = 1;
  int64_t ranks() const { return dp * tp * pp; }
  /// Ranks along axis 0 dp, 1 tp, 2 pp.
  int64_t size(int32_t axis) const {
    return axis == 0 ? dp : axis == 1 ? tp : pp;
  }
  bool operator==(const Mesh &o) const {
    return dp == o.dp && tp == o.tp && pp == o.pp;
  }
  bool operator!=(const Mesh &o) const { return !(*this == o); }
};
/// "dp=2 tp=1 pp=1".
std::string formatMesh(const Mesh &m);

/// A tensor at a fixed place in the arena. `shape` is this rank's (local)
/// buffer; `globalShape` the full tensor it is a slice of, and `split` says,
/// per dimension, which mesh axis that dimension is split over evenly (-1:
/// not split; 0 dp, 1 tp): shape[d] = globalShape[d] / size(split[d]).
struct Buffer {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t elements = 1; ///< product of shape (1 for a scalar)
  int64_t bytes = 0;    ///< elements * dtypeSize(dtype)
  /// Empty (a hand-built Buffer) means: the same as shape, not split.
  std::vector<int64_t> globalShape;
  std::vector<int32_t> split;
  /// The pipeline stage whose arena holds it (the manifest's `stage`), or
  /// -1: every stage's arena holds it, at `offset`.
  int64_t stage = -1;
  /// State only: starts at 1 rather than 0 (the manifest's "init": "ones").
  bool startsAtOne = false;

  /// Whether the arena of pipeline stage `s` holds this buffer.
  bool inStage(int64_t s) const { return stage < 0 || stage == s; }

  /// The full tensor's shape.
  const std::vector<int64_t> &global() const {
    return globalShape.empty() ? shape : globalShape;
  }
  int64_t globalElements() const;
  /// The mesh axis dimension d is split over, or -1.
  int32_t splitAxis(size_t d) const {
    return d < split.size() ? split[d] : -1;
  }
  /// Whether any dimension is split.
  bool isSplit() const;
  /// "f32[64, 10] of f32[64, 20] split (_, tp)" or "f32[64, 10]".
  std::string describeType() const;
};

/// The activation range of a weight's input (state "<weight>.act_range",
/// f32[2]), calibrated (post-training quantization) or trained (a
/// quantization-aware observer): saved and loaded with the weights.
inline bool isActivationRange(const std::string &name) {
  const std::string suffix = ".act_range";
  return name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool isActivationRange(const Buffer &b) {
  return isActivationRange(b.name);
}

/// State that is part of the model and travels with its weights (--save,
/// --init-from): activation ranges and batch norms' running statistics.
inline bool isSavedWithWeights(const std::string &name) {
  for (const std::string suffix : {".act_range", ".running_mean", ".running_var"})
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  return false;
}
inline bool isSavedWithWeights(const Buffer &b) {
  return isSavedWithWeights(b.name);
}

/// A trainable parameter: a buffer plus how to initialise and shard it.
struct ParamSpec : Buffer {
  std::string init = "zeros"; ///< zeros | ones | normal | uniform | glorot
  std::vector<double> initArgs;
  /// The manifest's `shard`, one entry per dimension: "_" or a mesh axis;
  /// empty when the manifest gives none. From ABI 3 it is the buffer's split
  /// (`split` above); in ABI 2 it was the DSL's annotation only.
  std::vector<std::string> shard;
};

/// The manifest, typed. Field meanings are in ARTIFACT.md.
struct Manifest {
  int64_t formatVersion = 0, abiVersion = 0;
  std::string model, source, target;
  std::vector<std::string> cpuFeatures;
  /// target "cuda": the kernels' PTX (sm_90) and their launch shapes, in
  /// the order the host program's loom_cuda_launchN indexes them.
  std::string ptx;
  struct Kernel {
    std::string name;
    int64_t grid = 1, block = 1;
    /// The DSL location it was generated from (optional).
    std::string origin;
  };
  std::vector<Kernel> kernels;
  /// target "cuda": the programs (symbols) whose scalar code runs on the
  /// device, so the runtime may capture them as CUDA graphs, and the arena
  /// offset of the int64 step those programs read (-1: none).
  std::vector<std::string> cudaGraphPrograms;
  int64_t deviceStepOffset = -1;
  /// For --check-numerics: what op k of the programs is, with its DSL line
  /// ("loom.matmul at gpt.loom:29:24"); optional.
  std::vector<std::string> ops;
  /// The names of the pipeline schedule's spans (loom_trace_begin's `span`
  /// indexes them: "F0", "B3", ...); optional, empty when absent.
  std::vector<std::string> traceSpans;
  Mesh mesh;
  /// ZeRO stage: 0, or 1 (optimizer state split over dp).
  int64_t zero = 0;
  /// Pipeline stages (the manifest's `stages`, = mesh.pp when given; 1
  /// when absent).
  int64_t stages = 1;
  /// The largest arena of any stage.
  int64_t arenaBytes = 0;
  /// The arena of each stage (`stage_arena_bytes`; arenaBytes for every
  /// stage when absent): `stages` entries.
  std::vector<int64_t> stageArenaBytes;
  /// Planned bytes by category (params, grads, ..., peak), in manifest order.
  std::vector<std::pair<std::string, int64_t>> memory;
  /// Role ("train_step", "eval_step", ...) -> exported symbol of each
  /// stage (one per stage; a single one when stages == 1).
  std::vector<std::pair<std::string, std::vector<std::string>>> programs;
  std::vector<ParamSpec> params;
  std::vector<Buffer> state;
  std::vector<Buffer> inputs;
  /// Output name -> arena offset of an f32 scalar.
  std::vector<std::pair<std::string, int64_t>> outputs;
  /// The train block as compiled; the runtime reads its defaults (`steps`,
  /// `data`) from it and prints the rest. Always an object.
  json::Value train;

  /// The symbol stage `stage` runs for `role`, or null.
  const std::string *program(const std::string &role,
                             int64_t stage = 0) const;
  /// The arena bytes of stage `stage`.
  int64_t arenaBytesOf(int64_t stage) const;
  std::optional<int64_t> output(const std::string &name) const;
  const Buffer *input(const std::string &name) const;
  std::optional<int64_t> memoryOf(const std::string &category) const;
  /// train.steps, when the train block has it.
  std::optional<int64_t> trainSteps() const;
  /// train.data, when the train block has it.
  std::optional<std::string> trainData() const;
};

/// The 64-byte trailer, decoded.
struct Trailer {
  uint32_t formatVersion = 0, abiVersion = 0;
  uint64_t elfSize = 0, manifestOffset = 0, manifestSize = 0, checksum = 0;
};

/// Decodes and checks the trailer (the last kTrailerBytes of a file of
/// `fileSize` bytes): magic, versions, reserved bytes, sizes adding up.
/// Throws Error with the cause only (callers prefix the file).
Trailer parseTrailer(const unsigned char *trailer, uint64_t fileSize);

/// Encodes a trailer (used by tests and by tools that write artifacts).
void writeTrailer(const Trailer &t, unsigned char out[kTrailerBytes]);

/// Parses and validates manifest JSON text. Throws Error with the cause only,
/// as "manifest: params[1] ('b1'): ...".
Manifest parseManifest(std::string_view text);

/// Validates a whole artifact image held in memory (trailer, checksum, ELF
/// magic, manifest) and returns its manifest. Throws Error with the cause
/// only. Does not check CPU features.
Manifest validateImage(const unsigned char *data, size_t size);

/// Reads `path` and validates it as validateImage does, streaming the
/// checksum. Throws Error "PATH: cause".
Manifest readArtifact(const std::string &path);

/// Whether `name` is a CPU feature this runtime knows how to test.
bool isKnownCpuFeature(const std::string &name);
/// Whether this CPU (and OS) supports `name`; false for unknown names.
bool cpuSupports(const std::string &name);
/// The names in `required` that this CPU lacks. Throws Error for a name
/// that is not known.
std::vector<std::string>
missingCpuFeatures(const std::vector<std::string> &required);
/// Throws Error "needs avx2, fma; this CPU lacks fma; recompile with
/// --cpu=native on this machine" when a required feature is absent.
void checkCpuFeatures(const Manifest &m);

/// The manifest in human-readable form (loom-run --describe).
std::string describe(const Manifest &m, const std::string &path);

/// A validated artifact whose native code is loaded.
class Artifact {
public:
  /// readArtifact + checkCpuFeatures + dlopen + dlsym of every program.
  /// Throws Error "PATH: cause".
  static std::unique_ptr<Artifact> load(const std::string &path);
  ~Artifact();
  Artifact(const Artifact &) = delete;
  Artifact &operator=(const Artifact &) = delete;

  const Manifest &manifest() const { return manifest_; }
  const std::string &path() const { return path_; }
  /// The program stage `stage` runs for `role`, or null when the artifact
  /// has none.
  loom_program_fn program(const std::string &role, int64_t stage = 0) const;

private:
  Artifact() = default;
  std::string path_;
  Manifest manifest_;
  void *handle_ = nullptr;
  /// Role -> the program of each stage.
  std::vector<std::pair<std::string, std::vector<loom_program_fn>>> programs_;
};

} // namespace loom::runtime

#endif // LOOM_RUNTIME_ARTIFACT_H
