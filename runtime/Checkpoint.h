//===- Checkpoint.h - weights files and training checkpoints ----*- C++ -*-===//
//
// Two ways the arena's tensors leave and re-enter a run (runtime/README.md,
// "Weights and checkpoints"):
//
//  - weights (`--save`, `--init-from`): every parameter by its manifest name
//    (SEMANTICS.md: `wte`, `layers.3.wq`), [in, out] as the model stores it,
//    in one safetensors file that PyTorch reads with `safetensors.torch`.
//  - checkpoints (`--ckpt-dir`, `--resume`): a folder `step-000050/` holding
//    `state.safetensors` (every parameter and every manifest `state` tensor,
//    the arena's exact bytes) and `index.json` (the step, seed, data cursor
//    and the rest of the loop's state), enough to continue bitwise.
//
// A checkpoint is written into `step-000050.tmp/`, each file fsynced, the
// folder renamed to its final name and the parent fsynced: it is complete
// iff the final name exists and index.json parses, and a failing write
// never touches a complete checkpoint.
//
// On a world of several ranks (a CommMesh of more than one rank passed in)
// the arena holds each rank's slices (Sharding.h): a checkpoint is one
// `rank-R.safetensors` per rank, written by that rank, and one index.json
// written by rank 0 after every rank's file is on disk (format_version 2);
// `--save` gathers the full tensors to rank 0, which writes the one file a
// single rank would; `--init-from` has every rank read the full tensors and
// keep its slices. With pipeline stages a rank's arena holds only its
// stage's tensors (and those of every stage): its checkpoint file, its loads
// and its part of --save are those.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CHECKPOINT_H
#define LOOM_RUNTIME_CHECKPOINT_H

#include "runtime/Artifact.h"
#include "runtime/Collectives.h"
#include "runtime/Dataset.h"
#include "runtime/Json.h"
#include "runtime/Safetensors.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace loom::runtime {

/// The safetensors dtype of a manifest dtype.
safetensors::DType toSafetensors(DType t);

/// What a checkpoint must match to be loaded into an artifact: the model's
/// name and every parameter's and state tensor's name, dtype and shape (and
/// for a split one its global shape and split), in any order (arena offsets
/// do not matter: tensors load by name).
uint64_t layoutFingerprint(const Manifest &m);

/// An error that every rank of the world met alike and knows the text of
/// (the ranks agreed on it): rank 0 reports it and every rank ends cleanly.
class AgreedError : public Error {
public:
  using Error::Error;
};

/// "0x0123456789abcdef".
std::string formatHex64(uint64_t v);
/// Parses formatHex64's form; false on anything else.
bool parseHex64(const std::string &s, uint64_t &out);

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

/// Writes every parameter of `m` from `arena` to `path` (atomically), with
/// `metadata` in the header. With a mesh of several ranks every rank calls
/// it: the slices are gathered into full tensors (global shapes) on rank 0,
/// which writes the file, as one rank would. Throws Error "PATH: cause" (on
/// rank 0 for the write).
safetensors::WriteResult
saveWeights(const std::string &path, const Manifest &m,
            const unsigned char *arena,
            const std::vector<std::pair<std::string, std::string>> &metadata,
            CommMesh *mesh = nullptr);

/// Overwrites every parameter of `m` in `arena` from `path`. The file must
/// hold each parameter under its name with the parameter's exact dtype and
/// (global) shape, no other tensor, and finite values; otherwise Error
/// "PATH: tensor 'layers.0.wq' has shape [32, 16], the model needs [32,
/// 32]". Everything but the values is checked before the arena is written.
/// With a mesh each rank keeps its slice of every tensor.
void loadWeights(const std::string &path, const Manifest &m,
                 unsigned char *arena, const CommMesh *mesh = nullptr);

//===----------------------------------------------------------------------===//
// Checkpoints
//===----------------------------------------------------------------------===//

/// Format 1: one rank, `state.safetensors`; format 2: sharded, one
/// `rank-R.safetensors` per rank. This runtime writes and reads both.
constexpr int64_t kCheckpointFormatVersion = 1;
constexpr int64_t kShardedCheckpointFormatVersion = 2;
constexpr const char *kCheckpointStateFile = "state.safetensors";
constexpr const char *kCheckpointIndexFile = "index.json";
/// "rank-3.safetensors".
std::string rankFileName(int rank);

/// One file of a checkpoint, as index.json records it.
struct CheckpointFile {
  std::string file;
  uint64_t bytes = 0, fnv1a64 = 0;
  int64_t tensors = 0;
};

/// index.json, typed.
struct CheckpointIndex {
  std::string model;
  uint64_t layout = 0;           ///< layoutFingerprint of the writer
  uint64_t artifactChecksum = 0; ///< the writer's artifact (trailer checksum)
  std::string artifact;          ///< its path, for people reading the file
  int64_t step = 0;              ///< optimizer steps completed
  int64_t targetSteps = 0;       ///< --steps of the run that wrote it
  uint64_t seed = 0;
  int64_t threads = 0;
  std::string dataPath;
  DataCursor cursor;
  int64_t skippedTotal = 0;
  /// Lines in the metrics file when the checkpoint was written (0 without
  /// --metrics).
  int64_t metricsLines = 0;
  uint64_t stateBytes = 0, stateFnv1a64 = 0; ///< of state.safetensors
  int64_t stateTensors = 0;
  /// The mesh and ZeRO stage of the writer (format 1: one rank, ZeRO 0).
  Mesh mesh;
  int64_t zero = 0;
  /// Format 2: one file per world rank, in rank order (the state* fields
  /// are then unused).
  std::vector<CheckpointFile> ranks;

  bool sharded() const { return !ranks.empty(); }

  json::Value toJson() const;
  /// Throws Error ("index.json: 'step' ...") on a malformed document.
  static CheckpointIndex fromJson(const json::Value &v);
};

/// "step-000050" (more digits past 999999).
std::string checkpointName(int64_t step);
/// The step of a final checkpoint folder name, or -1 ("step-000050.tmp" and
/// other names are not checkpoints).
int64_t checkpointStep(const std::string &name);

/// Folders in `dir` named like final checkpoints, newest first: (step, path).
/// Nothing about their contents is checked. Throws Error when `dir` cannot
/// be listed (a missing folder is an empty list).
std::vector<std::pair<int64_t, std::string>>
listCheckpoints(const std::string &dir);

/// Creates `dir` (and missing parents) and checks that files can be created
/// in it. Throws Error "cannot create the checkpoint folder DIR: cause".
void prepareCheckpointDir(const std::string &dir);

/// Writes the checkpoint of `index.step` (the state file, then index.json,
/// both fsynced, in a .tmp folder renamed into place), then deletes all but
/// the newest `keep` complete checkpoints (keep 0: none are deleted).
/// Fills in index's state fields. Returns the checkpoint's path. Throws
/// Error "checkpoint DIR/step-000050: cause"; complete checkpoints are
/// never damaged by a failing write.
///
/// With a mesh of several ranks every rank calls it: rank 0 makes the .tmp
/// folder, every rank writes and fsyncs its rank file, the ranks exchange
/// the files' sizes and hashes (which also waits for all of them), rank 0
/// writes the index, renames the folder into place and applies `keep`.
/// A failure on any rank is an AgreedError on every rank, after rank 0 has
/// removed the .tmp folder.
std::string writeCheckpoint(const std::string &dir, const Manifest &m,
                            const unsigned char *arena, CheckpointIndex index,
                            int64_t keep, CommMesh *mesh = nullptr);

/// A checkpoint found by findCheckpoint, checked but not yet loaded.
struct FoundCheckpoint {
  std::string path;
  CheckpointIndex index;
};

/// The newest checkpoint in `dir` that can be loaded into `m`. Incomplete or
/// damaged ones (no index.json, malformed index, a state file whose size,
/// hash or header is wrong) are skipped and described in `skipped` as "PATH:
/// cause". A complete checkpoint of another model, another mesh or ZeRO
/// stage, another layout or another checkpoint format is an Error, not
/// skipped. nullopt when none is left. With a mesh of several ranks every
/// rank calls it; each checks its own rank file and the ranks agree, so
/// that all of them pick the same checkpoint.
std::optional<FoundCheckpoint>
findCheckpoint(const std::string &dir, const Manifest &m,
               std::vector<std::string> *skipped = nullptr,
               CommMesh *mesh = nullptr);

/// Loads the parameters and state of `c` into `arena` (this rank's file of
/// a sharded checkpoint). Throws Error.
void loadCheckpoint(const FoundCheckpoint &c, const Manifest &m,
                    unsigned char *arena, const CommMesh *mesh = nullptr);

} // namespace loom::runtime

#endif // LOOM_RUNTIME_CHECKPOINT_H
