//===- Checkpoint.cpp - weights files and training checkpoints ------------===//
#include "runtime/Checkpoint.h"

#include "runtime/Hash.h"
#include "runtime/Sharding.h"
#include "runtime/Support.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

namespace loom::runtime {

namespace st = safetensors;

safetensors::DType toSafetensors(DType t) {
  switch (t) {
  case DType::F32:
    return st::DType::F32;
  case DType::F16:
    return st::DType::F16;
  case DType::BF16:
    return st::DType::BF16;
  case DType::F64:
    return st::DType::F64;
  case DType::I32:
    return st::DType::I32;
  case DType::I64:
    return st::DType::I64;
  case DType::I8:
    return st::DType::I8;
  case DType::U8:
    return st::DType::U8;
  }
  return st::DType::U8;
}

namespace {

/// Every tensor a checkpoint (of a rank of pipeline stage `stage`) holds:
/// the parameters, then the state, those of that stage's arena.
std::vector<const Buffer *> checkpointTensors(const Manifest &m,
                                              int64_t stage) {
  std::vector<const Buffer *> v;
  for (const ParamSpec &p : m.params)
    if (p.inStage(stage))
      v.push_back(&p);
  for (const Buffer &b : m.state)
    if (b.inStage(stage))
      v.push_back(&b);
  return v;
}

std::string typeOf(st::DType t, const std::vector<int64_t> &shape) {
  return std::string(st::dtypeName(t)) + st::formatShape(shape);
}

} // namespace

uint64_t layoutFingerprint(const Manifest &m) {
  std::vector<std::string> lines;
  // A split buffer adds its global shape and split; an unsplit one reads as
  // it did before sharding existed, so older checkpoints still match.
  auto line = [](const char *kind, const Buffer &b) {
    std::string l = std::string(kind) + " " + b.name + " " +
                    formatTensorType(b.dtype, b.shape);
    if (b.isSplit())
      l += " slice " + b.describeType();
    if (b.stage >= 0)
      l += " stage " + std::to_string(b.stage);
    return l;
  };
  for (const ParamSpec &p : m.params)
    lines.push_back(line("param", p));
  for (const Buffer &b : m.state)
    lines.push_back(line("state", b));
  // By name: a compiler that only reorders the arena keeps its checkpoints.
  std::sort(lines.begin(), lines.end());
  std::string text = "model " + m.model + "\n";
  for (const std::string &l : lines)
    text += l + "\n";
  return fnv1a64(text);
}

std::string formatHex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016" PRIx64, v);
  return buf;
}

bool parseHex64(const std::string &s, uint64_t &out) {
  if (s.size() != 18 || s[0] != '0' || s[1] != 'x')
    return false;
  uint64_t v = 0;
  for (size_t i = 2; i < s.size(); ++i) {
    char c = s[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                   : -1;
    if (d < 0)
      return false;
    v = v << 4 | uint64_t(d);
  }
  out = v;
  return true;
}

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

namespace {
bool manyRanks(const CommMesh *mesh) { return mesh && mesh->worldSize() > 1; }

MeshCoord coordOf(const CommMesh *mesh) {
  if (!mesh)
    return {0, 0, 0};
  return {mesh->coord(0), mesh->coord(1), mesh->coord(2)};
}

Mesh meshOf(const CommMesh *mesh) {
  Mesh m;
  if (mesh) {
    m.dp = mesh->size(0);
    m.tp = mesh->size(1);
    m.pp = mesh->size(2);
  }
  return m;
}
} // namespace

safetensors::WriteResult
saveWeights(const std::string &path, const Manifest &m,
            const unsigned char *arena,
            const std::vector<std::pair<std::string, std::string>> &metadata,
            CommMesh *mesh) {
  if (!manyRanks(mesh)) {
    std::vector<st::TensorData> tensors;
    for (const ParamSpec &p : m.params)
      tensors.push_back(
          {p.name, toSafetensors(p.dtype), p.global(), arena + p.offset});
    // Activation ranges (DESIGN.md: --calibrate=N --save=Q.safetensors) and
    // batch norms' running statistics go with the weights.
    for (const Buffer &b : m.state)
      if (isSavedWithWeights(b))
        tensors.push_back(
            {b.name, toSafetensors(b.dtype), b.global(), arena + b.offset});
    return st::write(path, tensors, metadata);
  }
  // Gather: rank 0 assembles each full tensor from the slices of the ranks
  // that own them (coordinate 0 on the axes the tensor is not split over,
  // the parameter's stage on pp).
  const Mesh shape = meshOf(mesh);
  const bool root = mesh->worldRank() == 0;
  // The parameters, then the state saved with them.
  std::vector<const Buffer *> items;
  for (const ParamSpec &p : m.params)
    items.push_back(&p);
  for (const Buffer &b : m.state)
    if (isSavedWithWeights(b))
      items.push_back(&b);
  std::vector<std::vector<unsigned char>> full(items.size());
  std::vector<unsigned char> slice;
  for (size_t i = 0; i < items.size(); ++i) {
    const Buffer &p = *items[i];
    const size_t elem = dtypeSize(p.dtype);
    if (!p.isSplit() && p.stage <= 0) {
      // Rank 0 holds the whole tensor; its copy is the one.
      if (root)
        full[i].assign(arena + p.offset, arena + p.offset + p.bytes);
      continue;
    }
    if (root)
      full[i].resize(size_t(p.globalElements()) * elem);
    for (int r = 0; r < mesh->worldSize(); ++r) {
      MeshCoord c = meshCoordOf(shape, r);
      if (!ownsSlice(p, c))
        continue;
      const unsigned char *src = arena + p.offset;
      if (r != 0) {
        if (root) {
          slice.resize(size_t(p.bytes));
          mesh->sendToRoot(r, slice.data(), uint64_t(p.bytes), "--save");
          src = slice.data();
        } else if (mesh->worldRank() == r) {
          mesh->sendToRoot(r, const_cast<unsigned char *>(src),
                           uint64_t(p.bytes), "--save");
        }
      }
      if (root)
        insertBlock(src, p.global(), sliceStart(p, c), p.shape, elem,
                    full[i].data());
    }
  }
  if (!root)
    return {};
  std::vector<st::TensorData> tensors;
  for (size_t i = 0; i < items.size(); ++i) {
    const Buffer &p = *items[i];
    tensors.push_back(
        {p.name, toSafetensors(p.dtype), p.global(), full[i].data()});
  }
  return st::write(path, tensors, metadata);
}

void loadWeights(const std::string &path, const Manifest &m,
                 unsigned char *arena, const CommMesh *mesh) {
  std::unique_ptr<st::Reader> file = st::Reader::open(path);
  const st::Header &h = file->header();
  auto fail = [&](const std::string &cause) {
    throw Error(path + ": " + cause);
  };
  std::vector<const st::TensorInfo *> found;
  for (const ParamSpec &p : m.params) {
    const st::TensorInfo *t = h.find(p.name);
    if (!t)
      fail("tensor '" + p.name + "' is missing (model '" + m.model +
           "' needs all of its " + std::to_string(m.params.size()) +
           " parameters; the file has " + std::to_string(h.tensors.size()) +
           " tensors)");
    st::DType want = toSafetensors(p.dtype);
    if (t->dtype != want)
      fail("tensor '" + p.name + "' has dtype " + st::dtypeName(t->dtype) +
           ", the model needs " + st::dtypeName(want));
    if (t->shape != p.global())
      fail("tensor '" + p.name + "' has shape " + st::formatShape(t->shape) +
           ", the model needs " + st::formatShape(p.global()));
    found.push_back(t);
  }
  std::set<std::string> names;
  for (const ParamSpec &p : m.params)
    names.insert(p.name);
  // Activation ranges and running statistics, where the model has them
  // (optional here: an FP32 model's weights load into a post-training
  // quantization artifact for its calibration).
  std::vector<std::pair<const Buffer *, const st::TensorInfo *>> ranges;
  for (const Buffer &b : m.state) {
    if (!isSavedWithWeights(b))
      continue;
    names.insert(b.name);
    if (const st::TensorInfo *t = h.find(b.name)) {
      if (t->dtype != toSafetensors(b.dtype) || t->shape != b.global())
        fail("tensor '" + b.name + "' has dtype " + st::dtypeName(t->dtype) +
             " and shape " + st::formatShape(t->shape) + ", the model needs " +
             st::dtypeName(toSafetensors(b.dtype)) + " " +
             st::formatShape(b.global()));
      ranges.push_back({&b, t});
    }
  }
  // A quantization-aware-trained model's ranges are of no use to an FP32
  // artifact of it: they are skipped, other unknown tensors are errors.
  std::vector<std::string> unknown;
  for (const st::TensorInfo &t : h.tensors)
    if (!names.count(t.name) &&
        !isActivationRange(t.name))
      unknown.push_back(t.name);
  if (!unknown.empty()) {
    std::sort(unknown.begin(), unknown.end());
    fail("tensor '" + unknown[0] + "' is not a parameter of model '" + m.model +
         "'" +
         (unknown.size() > 1 ? " (and " + std::to_string(unknown.size() - 1) +
                                   " more unknown tensor" +
                                   (unknown.size() > 2 ? "s" : "") + ")"
                             : std::string()));
  }
  MeshCoord coord = coordOf(mesh);
  for (auto [b, t] : ranges)
    if (b->inStage(coord[2]))
      file->read(*t, arena + b->offset, /*checkFinite=*/true);
  std::vector<unsigned char> whole;
  for (size_t i = 0; i < m.params.size(); ++i) {
    const ParamSpec &p = m.params[i];
    // Another pipeline stage's parameter: not in this rank's arena.
    if (!p.inStage(coord[2]))
      continue;
    if (!p.isSplit()) {
      file->read(*found[i], arena + p.offset, /*checkFinite=*/true);
      continue;
    }
    // This rank's slice of the full tensor (every value checked, so that
    // all ranks accept or refuse the file alike).
    whole.resize(size_t(found[i]->bytes()));
    file->read(*found[i], whole.data(), /*checkFinite=*/true);
    extractBlock(whole.data(), p.global(), sliceStart(p, coord), p.shape,
                 dtypeSize(p.dtype), arena + p.offset);
  }
}

//===----------------------------------------------------------------------===//
// index.json
//===----------------------------------------------------------------------===//

json::Value CheckpointIndex::toJson() const {
  // u64 values (seed, hashes) as strings: JSON numbers stop being exact at
  // 2^53.
  json::Value doc(json::Object{
      {"format", json::Value("loom-checkpoint")},
      {"format_version", json::Value(kCheckpointFormatVersion)},
      {"model", json::Value(model)},
      {"layout_fingerprint", json::Value(formatHex64(layout))},
      {"artifact", json::Value(artifact)},
      {"artifact_checksum", json::Value(formatHex64(artifactChecksum))},
      {"step", json::Value(step)},
      {"target_steps", json::Value(targetSteps)},
      {"mesh", json::Value(json::Object{{"dp", json::Value(mesh.dp)},
                                        {"tp", json::Value(mesh.tp)},
                                        {"pp", json::Value(mesh.pp)}})},
      {"zero", json::Value(zero)},
      {"seed", json::Value(std::to_string(seed))},
      {"threads", json::Value(threads)},
      {"data", json::Value(dataPath)},
      {"data_cursor", cursor.toJson()},
      {"skipped_total", json::Value(skippedTotal)},
      {"metrics_lines", json::Value(metricsLines)}});
  json::Object &o = doc.asObject();
  auto fileJson = [](const CheckpointFile &f) {
    return json::Value(json::Object{
        {"file", json::Value(f.file)},
        {"bytes", json::Value(static_cast<int64_t>(f.bytes))},
        {"fnv1a64", json::Value(formatHex64(f.fnv1a64))},
        {"tensors", json::Value(f.tensors)}});
  };
  if (sharded()) {
    o[1].second = json::Value(kShardedCheckpointFormatVersion);
    json::Array files;
    for (const CheckpointFile &f : ranks)
      files.push_back(fileJson(f));
    o.emplace_back("ranks", json::Value(std::move(files)));
  } else {
    o.emplace_back("state",
                   fileJson({kCheckpointStateFile, stateBytes, stateFnv1a64,
                             stateTensors}));
  }
  return doc;
}

CheckpointIndex CheckpointIndex::fromJson(const json::Value &v) {
  auto fail = [](const std::string &key, const std::string &why) -> Error {
    return Error("index.json: '" + key + "' " + why);
  };
  if (!v.isObject())
    throw Error(std::string("index.json: expected an object, found ") +
                v.kindName());
  auto member = [&](const json::Value &obj, const std::string &key,
                    const std::string &where) -> const json::Value & {
    const json::Value *x = obj.find(key);
    if (!x)
      throw fail(where, "missing");
    return *x;
  };
  auto integer = [&](const json::Value &obj, const std::string &key,
                     const std::string &where) {
    const json::Value &x = member(obj, key, where);
    if (!x.isInt() || x.asInt() < 0)
      throw fail(where, "is not a non-negative integer");
    return x.asInt();
  };
  auto string = [&](const json::Value &obj, const std::string &key,
                    const std::string &where) -> const std::string & {
    const json::Value &x = member(obj, key, where);
    if (!x.isString())
      throw fail(where, "is not a string");
    return x.asString();
  };
  auto hex = [&](const json::Value &obj, const std::string &key,
                 const std::string &where) {
    uint64_t out;
    if (!parseHex64(string(obj, key, where), out))
      throw fail(where, "is not a 0x-prefixed 16-digit hex string");
    return out;
  };
  if (string(v, "format", "format") != "loom-checkpoint")
    throw fail("format", "is not \"loom-checkpoint\"");
  CheckpointIndex c;
  int64_t version = integer(v, "format_version", "format_version");
  if (version != kCheckpointFormatVersion &&
      version != kShardedCheckpointFormatVersion)
    throw Error("index.json: checkpoint format " + std::to_string(version) +
                ", this runtime reads " +
                std::to_string(kCheckpointFormatVersion) + " and " +
                std::to_string(kShardedCheckpointFormatVersion));
  c.model = string(v, "model", "model");
  c.layout = hex(v, "layout_fingerprint", "layout_fingerprint");
  c.artifact = string(v, "artifact", "artifact");
  c.artifactChecksum = hex(v, "artifact_checksum", "artifact_checksum");
  c.step = integer(v, "step", "step");
  c.targetSteps = integer(v, "target_steps", "target_steps");
  const std::string &seed = string(v, "seed", "seed");
  if (seed.empty() || seed.size() > 20 ||
      seed.find_first_not_of("0123456789") != std::string::npos)
    throw fail("seed", "is not a decimal string");
  errno = 0;
  c.seed = std::strtoull(seed.c_str(), nullptr, 10);
  if (errno)
    throw fail("seed", "is out of range");
  c.threads = integer(v, "threads", "threads");
  c.dataPath = string(v, "data", "data");
  try {
    c.cursor = DataCursor::fromJson(member(v, "data_cursor", "data_cursor"));
  } catch (const Error &e) {
    throw Error(std::string("index.json: ") + e.what());
  }
  c.skippedTotal = integer(v, "skipped_total", "skipped_total");
  c.metricsLines = integer(v, "metrics_lines", "metrics_lines");
  if (const json::Value *mesh = v.find("mesh")) {
    if (!mesh->isObject())
      throw fail("mesh", "is not an object");
    auto axis = [&](const char *name) {
      int64_t n = integer(*mesh, name, std::string("mesh.") + name);
      if (n < 1)
        throw fail(std::string("mesh.") + name, "is not positive");
      return n;
    };
    c.mesh.dp = axis("dp");
    c.mesh.tp = axis("tp");
    c.mesh.pp = axis("pp");
  }
  if (v.find("zero"))
    c.zero = integer(v, "zero", "zero");
  auto file = [&](const json::Value &f, const std::string &where) {
    if (!f.isObject())
      throw fail(where, "is not an object");
    CheckpointFile out;
    out.file = string(f, "file", where + ".file");
    out.bytes = static_cast<uint64_t>(integer(f, "bytes", where + ".bytes"));
    out.fnv1a64 = hex(f, "fnv1a64", where + ".fnv1a64");
    out.tensors = integer(f, "tensors", where + ".tensors");
    return out;
  };
  if (version == kShardedCheckpointFormatVersion) {
    const json::Value &ranks = member(v, "ranks", "ranks");
    if (!ranks.isArray())
      throw fail("ranks", "is not an array");
    const json::Array &a = ranks.asArray();
    if (int64_t(a.size()) != c.mesh.ranks() || a.size() < 2)
      throw fail("ranks", "lists " + std::to_string(a.size()) +
                              " files for a mesh of " +
                              std::to_string(c.mesh.ranks()) + " ranks");
    for (size_t r = 0; r < a.size(); ++r) {
      std::string where = "ranks[" + std::to_string(r) + "]";
      CheckpointFile f = file(a[r], where);
      if (f.file != rankFileName(int(r)))
        throw fail(where + ".file", "is not \"" + rankFileName(int(r)) + "\"");
      c.ranks.push_back(f);
    }
    return c;
  }
  if (c.mesh.ranks() != 1)
    throw fail("mesh", "has several ranks in a format 1 (one rank) checkpoint");
  CheckpointFile state = file(member(v, "state", "state"), "state");
  if (state.file != kCheckpointStateFile)
    throw fail("state.file",
               std::string("is not \"") + kCheckpointStateFile + "\"");
  c.stateBytes = state.bytes;
  c.stateFnv1a64 = state.fnv1a64;
  c.stateTensors = state.tensors;
  return c;
}

std::string rankFileName(int rank) {
  return "rank-" + std::to_string(rank) + ".safetensors";
}

//===----------------------------------------------------------------------===//
// Files and folders
//===----------------------------------------------------------------------===//

namespace {

std::string errnoText() { return std::strerror(errno); }

void fsyncPath(const std::string &path, bool directory) {
  int fd = ::open(path.c_str(),
                  O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0)
    throw Error("cannot open " + path + " to sync it: " + errnoText());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems cannot sync a folder (EINVAL); the rename is then as
  // durable as they make it.
  if (rc != 0 && !(directory && (err == EINVAL || err == EROFS)))
    throw Error("fsync of " + path + " failed: " + std::strerror(err));
}

void writeSynced(const std::string &path, const std::string &text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error("cannot create " + path + ": " + errnoText());
  const char *p = text.data();
  size_t n = text.size();
  while (n > 0) {
    ssize_t done = ::write(fd, p, n);
    if (done < 0 && errno == EINTR)
      continue;
    if (done < 0) {
      std::string why = errnoText();
      ::close(fd);
      throw Error("cannot write " + path + ": " + why);
    }
    p += done;
    n -= static_cast<size_t>(done);
  }
  if (::fsync(fd) != 0) {
    std::string why = errnoText();
    ::close(fd);
    throw Error("fsync of " + path + " failed: " + why);
  }
  if (::close(fd) != 0)
    throw Error("cannot close " + path + ": " + errnoText());
}

bool isDirectory(const std::string &path) {
  struct stat s;
  return ::stat(path.c_str(), &s) == 0 && S_ISDIR(s.st_mode);
}

bool exists(const std::string &path) {
  struct stat s;
  return ::lstat(path.c_str(), &s) == 0;
}

/// Removes a checkpoint folder that this runtime wrote: index.json first
/// (so that a half-removed folder is incomplete, never mistaken for a
/// checkpoint), then the other plain files, then the folder. Anything else
/// inside (a sub-folder) is left alone and the folder stays. Best effort.
bool removeCheckpointFolder(const std::string &path) {
  ::unlink((path + "/" + kCheckpointIndexFile).c_str());
  if (DIR *d = ::opendir(path.c_str())) {
    std::vector<std::string> files;
    while (struct dirent *e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..")
        continue;
      struct stat s;
      std::string full = path + "/" + name;
      if (::lstat(full.c_str(), &s) == 0 && !S_ISDIR(s.st_mode))
        files.push_back(full);
    }
    ::closedir(d);
    for (const std::string &f : files)
      ::unlink(f.c_str());
  }
  return ::rmdir(path.c_str()) == 0;
}

} // namespace

std::string checkpointName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

int64_t checkpointStep(const std::string &name) {
  if (name.rfind("step-", 0) != 0 || name.size() < 11 || name.size() > 24)
    return -1;
  std::string digits = name.substr(5);
  if (digits.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  errno = 0;
  long long v = std::strtoll(digits.c_str(), nullptr, 10);
  if (errno || v < 0)
    return -1;
  // The one spelling checkpointName gives: "step-50" or "step-0000050" is
  // someone else's folder.
  if (checkpointName(v) != name)
    return -1;
  return v;
}

std::vector<std::pair<int64_t, std::string>>
listCheckpoints(const std::string &dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  DIR *d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT)
      return out;
    throw Error("cannot list the checkpoint folder " + dir + ": " +
                errnoText());
  }
  while (struct dirent *e = ::readdir(d)) {
    int64_t step = checkpointStep(e->d_name);
    if (step >= 0 && isDirectory(dir + "/" + e->d_name))
      out.emplace_back(step, dir + "/" + e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(),
            [](const auto &a, const auto &b) { return a.first > b.first; });
  return out;
}

void prepareCheckpointDir(const std::string &dir) {
  auto fail = [&](const std::string &why) -> Error {
    return Error("cannot create the checkpoint folder " + dir + ": " + why);
  };
  if (dir.empty())
    throw fail("empty path");
  // mkdir -p.
  for (size_t at = 1; at <= dir.size(); ++at) {
    if (at != dir.size() && dir[at] != '/')
      continue;
    std::string prefix = dir.substr(0, at);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
      throw fail(std::string(std::strerror(errno)) +
                 (prefix != dir ? " (at " + prefix + ")" : ""));
  }
  if (!isDirectory(dir))
    throw fail("exists and is not a folder");
  // Creating a file is the only sure test (read-only mounts, ACLs, quotas).
  std::string probe = dir + "/.loom-write-test." + std::to_string(::getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    throw fail(std::string("cannot create files in it: ") + errnoText());
  ::close(fd);
  ::unlink(probe.c_str());
}

namespace {

/// Deletes all but the newest `keep` complete checkpoints up to `step` (whose
/// folder is `final`), and unfinished writes of earlier steps.
void applyRetention(const std::string &dir, const std::string &final,
                    int64_t upTo, int64_t keep) {
  // Keep the newest `keep` complete checkpoints up to this one.
  if (keep > 0) {
    int64_t kept = 0;
    for (const auto &[step, path] : listCheckpoints(dir)) {
      // A later step than this one is what a resumed run stepped over as
      // damaged: it is replaced when this run gets there, never counted.
      if (step > upTo)
        continue;
      if (path == final) {
        ++kept;
        continue;
      }
      bool complete = false;
      std::ifstream in(path + "/" + kCheckpointIndexFile);
      if (in) {
        std::stringstream ss;
        ss << in.rdbuf();
        try {
          json::parse(ss.str());
          complete = true;
        } catch (const json::ParseError &) {
        }
      }
      if (complete && kept < keep)
        ++kept;
      else if (kept >= keep)
        removeCheckpointFolder(path); // older than the newest `keep`
      // else: damaged but newer than the oldest kept one; --resume skips it
      // and the step's next write replaces it.
    }
    // Unfinished writes of earlier steps.
    if (DIR *d = ::opendir(dir.c_str())) {
      std::vector<std::string> leftovers;
      while (struct dirent *e = ::readdir(d)) {
        std::string n = e->d_name;
        for (const char *suffix : {".tmp", ".stale"}) {
          size_t len = std::strlen(suffix);
          if (n.size() > len && n.compare(n.size() - len, len, suffix) == 0 &&
              checkpointStep(n.substr(0, n.size() - len)) >= 0 &&
              checkpointStep(n.substr(0, n.size() - len)) < upTo)
            leftovers.push_back(dir + "/" + n);
        }
      }
      ::closedir(d);
      for (const std::string &l : leftovers)
        removeCheckpointFolder(l);
    }
  }
}

/// Puts the finished `tmp` folder in place as `final` (setting an earlier
/// folder of the same step aside first) and syncs the parent.
void publish(const std::string &dir, const std::string &tmp,
             const std::string &final) {
  fsyncPath(tmp, true);
  // The same step may exist already: left by a run that was resumed from
  // an older checkpoint (it was skipped as damaged). Set it aside, put the
  // new one in place, then remove it.
  std::string stale;
  if (exists(final)) {
    stale = final + ".stale";
    if (exists(stale))
      removeCheckpointFolder(stale);
    if (::rename(final.c_str(), stale.c_str()) != 0)
      throw Error("cannot move the earlier " + final + " aside: " +
                  errnoText());
  }
  if (::rename(tmp.c_str(), final.c_str()) != 0)
    throw Error("cannot rename " + tmp + " to " + final + ": " + errnoText());
  fsyncPath(dir, true);
  if (!stale.empty())
    removeCheckpointFolder(stale);
}

/// An empty .tmp folder for a new write (one left by an unfinished write is
/// removed first).
void makeTmp(const std::string &tmp) {
  // A .tmp folder is a write that never finished: never a checkpoint.
  if (exists(tmp) && !removeCheckpointFolder(tmp))
    throw Error("cannot remove the unfinished " + tmp + " left by an "
                "earlier run: " + errnoText());
  if (::mkdir(tmp.c_str(), 0755) != 0)
    throw Error("cannot create " + tmp + ": " + errnoText());
}

/// The sharded write (writeCheckpoint with several ranks).
std::string writeSharded(const std::string &dir, const Manifest &m,
                         const unsigned char *arena, CheckpointIndex index,
                         int64_t keep, CommMesh &mesh) {
  const int rank = mesh.worldRank();
  const bool root = rank == 0;
  std::string name = checkpointName(index.step);
  std::string final = dir + "/" + name, tmp = final + ".tmp";
  auto failed = [&](const std::string &cause) {
    return AgreedError("checkpoint " + final + ": " + cause);
  };
  /// Every rank's outcome ("" = success); the first failure, on every rank.
  auto agree = [&](const std::string &mine, const char *what) {
    std::vector<std::string> all = mesh.allGather(mine, what);
    for (size_t r = 0; r < all.size(); ++r)
      if (!all[r].empty())
        return "rank " + std::to_string(r) + ": " + all[r];
    return std::string();
  };
  std::string why;
  if (root) {
    try {
      makeTmp(tmp);
    } catch (const Error &e) {
      why = e.what();
    }
  }
  if (std::string first = agree(why, "checkpoint folder"); !first.empty())
    throw failed(first);

  // Each rank its own slices, by name, with their local shapes.
  why.clear();
  CheckpointFile mine;
  mine.file = rankFileName(rank);
  try {
    std::vector<st::TensorData> tensors;
    for (const Buffer *b : checkpointTensors(m, mesh.coord(2)))
      tensors.push_back(
          {b->name, toSafetensors(b->dtype), b->shape, arena + b->offset});
    st::WriteResult w = st::write(
        tmp + "/" + mine.file, tensors,
        {{"format", "loom-checkpoint"},
         {"model", m.model},
         {"step", std::to_string(index.step)},
         {"rank", std::to_string(rank)},
         {"stage", std::to_string(mesh.coord(2))},
         {"mesh", formatMesh(m.mesh)}});
    mine.bytes = w.bytes;
    mine.fnv1a64 = w.fnv1a64;
    mine.tensors = int64_t(tensors.size());
  } catch (const Error &e) {
    why = e.what();
  }
  // The exchange is also the barrier: every rank file is fsynced before
  // rank 0 writes the index and renames the folder.
  std::string report =
      why.empty() ? json::write(json::Value(json::Object{
                        {"bytes", json::Value(int64_t(mine.bytes))},
                        {"fnv1a64", json::Value(formatHex64(mine.fnv1a64))},
                        {"tensors", json::Value(mine.tensors)}}))
                  : "!" + why;
  std::vector<std::string> reports = mesh.allGather(report, "checkpoint files");
  std::string first;
  for (size_t r = 0; r < reports.size() && first.empty(); ++r)
    if (!reports[r].empty() && reports[r][0] == '!')
      first = "rank " + std::to_string(r) + ": " + reports[r].substr(1);
  if (!first.empty()) {
    if (root)
      removeCheckpointFolder(tmp);
    mesh.barrier("checkpoint cleanup");
    throw failed(first);
  }

  why.clear();
  if (root) {
    try {
      for (size_t r = 0; r < reports.size(); ++r) {
        json::Value v = json::parse(reports[r]);
        CheckpointFile f;
        f.file = rankFileName(int(r));
        f.bytes = uint64_t(v.find("bytes")->asInt());
        parseHex64(v.find("fnv1a64")->asString(), f.fnv1a64);
        f.tensors = v.find("tensors")->asInt();
        index.ranks.push_back(f);
      }
      writeSynced(tmp + "/" + kCheckpointIndexFile,
                  json::write(index.toJson(), 2) + "\n");
      publish(dir, tmp, final);
    } catch (const std::exception &e) {
      why = e.what();
      removeCheckpointFolder(tmp);
    }
  }
  if (std::string first = agree(why, "checkpoint index"); !first.empty())
    throw failed(first);
  if (root)
    applyRetention(dir, final, index.step, keep);
  return final;
}

} // namespace

std::string writeCheckpoint(const std::string &dir, const Manifest &m,
                            const unsigned char *arena, CheckpointIndex index,
                            int64_t keep, CommMesh *mesh) {
  if (manyRanks(mesh))
    return writeSharded(dir, m, arena, std::move(index), keep, *mesh);
  std::string name = checkpointName(index.step);
  std::string final = dir + "/" + name, tmp = final + ".tmp";
  try {
    makeTmp(tmp);

    std::vector<st::TensorData> tensors;
    for (const Buffer *b : checkpointTensors(m, 0))
      tensors.push_back(
          {b->name, toSafetensors(b->dtype), b->shape, arena + b->offset});
    st::WriteResult w = st::write(tmp + "/" + kCheckpointStateFile, tensors,
                                  {{"format", "loom-checkpoint"},
                                   {"model", m.model},
                                   {"step", std::to_string(index.step)}});
    index.stateBytes = w.bytes;
    index.stateFnv1a64 = w.fnv1a64;
    index.stateTensors = static_cast<int64_t>(tensors.size());
    writeSynced(tmp + "/" + kCheckpointIndexFile,
                json::write(index.toJson(), 2) + "\n");
    publish(dir, tmp, final);
  } catch (const Error &e) {
    removeCheckpointFolder(tmp);
    throw Error("checkpoint " + final + ": " + e.what());
  }

  applyRetention(dir, final, index.step, keep);
  return final;
}

//===----------------------------------------------------------------------===//
// Finding and loading
//===----------------------------------------------------------------------===//

namespace {

/// The first way the tensors of `h` differ from what `m` needs in a rank
/// of pipeline stage `stage`, or "".
std::string layoutDifference(const st::Header &h, const Manifest &m,
                             int64_t stage) {
  std::set<std::string> wanted;
  for (const Buffer *b : checkpointTensors(m, stage)) {
    wanted.insert(b->name);
    const st::TensorInfo *t = h.find(b->name);
    st::DType want = toSafetensors(b->dtype);
    if (!t)
      return "it has no tensor '" + b->name + "' (" + typeOf(want, b->shape) +
             " here)";
    if (t->dtype != want || t->shape != b->shape)
      return "tensor '" + b->name + "' is " + typeOf(t->dtype, t->shape) +
             " there, " + typeOf(want, b->shape) + " here";
  }
  for (const st::TensorInfo &t : h.tensors)
    if (!wanted.count(t.name))
      return "it has a tensor '" + t.name + "' that this artifact lacks";
  return "";
}

/// FNV-1a 64 and size of a file, streamed.
std::pair<uint64_t, uint64_t> hashFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error("cannot open " + path + ": " + errnoText());
  std::vector<char> chunk(1 << 20);
  uint64_t h = kFnv1a64Offset, n = 0;
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    std::streamsize got = in.gcount();
    h = fnv1a64(chunk.data(), static_cast<size_t>(got), h);
    n += static_cast<uint64_t>(got);
  }
  if (in.bad())
    throw Error("cannot read " + path);
  return {h, n};
}

} // namespace

std::optional<FoundCheckpoint>
findCheckpoint(const std::string &dir, const Manifest &m,
               std::vector<std::string> *skipped, CommMesh *mesh) {
  uint64_t layout = layoutFingerprint(m);
  const bool sharded = manyRanks(mesh);
  const int rank = mesh ? mesh->worldRank() : 0;
  const int64_t stage = mesh ? mesh->coord(2) : 0;
  for (const auto &[step, path] : listCheckpoints(dir)) {
    auto skip = [&, p = path](const std::string &why) {
      if (skipped)
        skipped->push_back(p + ": " + why);
    };
    std::string indexPath = path + "/" + kCheckpointIndexFile;
    std::ifstream in(indexPath, std::ios::binary);
    if (!in) {
      skip("incomplete (no readable index.json)");
      continue;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    json::Value doc;
    try {
      doc = json::parse(ss.str());
    } catch (const json::ParseError &e) {
      skip(std::string("index.json is malformed at ") + e.what());
      continue;
    }
    // A complete checkpoint from elsewhere is a mistake to report, not
    // damage to step over: resuming from an older one would silently lose
    // the newer one's work.
    const json::Value *format = doc.find("format_version");
    if (format && format->isInt() &&
        format->asInt() != kCheckpointFormatVersion &&
        format->asInt() != kShardedCheckpointFormatVersion)
      throw Error(path + ": checkpoint format " +
                  std::to_string(format->asInt()) + ", this runtime reads " +
                  std::to_string(kCheckpointFormatVersion) + " and " +
                  std::to_string(kShardedCheckpointFormatVersion) +
                  "; resume it with the Loom that wrote it");
    const json::Value *model = doc.find("model");
    if (model && model->isString() && model->asString() != m.model)
      throw Error(path + ": a checkpoint of model '" + model->asString() +
                  "', this artifact is model '" + m.model +
                  "'; use another --ckpt-dir");
    CheckpointIndex index;
    try {
      index = CheckpointIndex::fromJson(doc);
    } catch (const Error &e) {
      skip(e.what());
      continue;
    }
    if (index.step != step) {
      skip("index.json says step " + std::to_string(index.step) +
           ", the folder's name step " + std::to_string(step));
      continue;
    }
    if (index.mesh != m.mesh)
      throw Error(path + ": written on mesh " + formatMesh(index.mesh) + " (" +
                  std::to_string(index.mesh.ranks()) + " rank" +
                  (index.mesh.ranks() == 1 ? "" : "s") +
                  "), this artifact's mesh is " + formatMesh(m.mesh) +
                  "; resume on the same mesh (or start a new run from its "
                  "weights with --init-from)");
    if (index.zero != m.zero)
      throw Error(path + ": written with ZeRO-" + std::to_string(index.zero) +
                  ", this artifact has ZeRO-" + std::to_string(m.zero) +
                  "; resume with the same --zero");
    std::string file =
        sharded ? rankFileName(rank) : std::string(kCheckpointStateFile);
    std::string statePath = path + "/" + file;
    if (index.layout != layout) {
      std::string why;
      try {
        why = layoutDifference(st::Reader::open(statePath)->header(), m,
                               stage);
      } catch (const Error &) {
      }
      throw Error(path + ": a checkpoint of a different layout of model '" +
                  m.model + "' (parameters or optimizer state differ" +
                  (why.empty() ? "" : ": " + why) +
                  "); it cannot be resumed with this artifact");
    }
    CheckpointFile expect{kCheckpointStateFile, index.stateBytes,
                          index.stateFnv1a64, index.stateTensors};
    if (sharded)
      expect = index.ranks[size_t(rank)];
    std::string why;
    try {
      auto [hash, bytes] = hashFile(statePath);
      if (bytes != expect.bytes)
        throw Error(file + " is " + std::to_string(bytes) +
                    " bytes, index.json says " + std::to_string(expect.bytes) +
                    " (truncated?)");
      if (hash != expect.fnv1a64)
        throw Error(file + " is damaged: FNV-1a " + formatHex64(hash) +
                    ", index.json says " + formatHex64(expect.fnv1a64));
      std::string diff =
          layoutDifference(st::Reader::open(statePath)->header(), m, stage);
      if (!diff.empty())
        throw Error(file + " does not match its index: " + diff);
    } catch (const Error &e) {
      why = e.what();
    }
    if (sharded) {
      // Every rank checked its own file: the checkpoint is usable only if
      // all of them are, and every rank must pick the same one.
      std::vector<std::string> all = mesh->allGather(why, "checkpoint search");
      why.clear();
      for (size_t r = 0; r < all.size() && why.empty(); ++r)
        if (!all[r].empty())
          why = "rank " + std::to_string(r) + ": " + all[r];
    }
    if (!why.empty()) {
      skip(why);
      continue;
    }
    return FoundCheckpoint{path, index};
  }
  return std::nullopt;
}

void loadCheckpoint(const FoundCheckpoint &c, const Manifest &m,
                    unsigned char *arena, const CommMesh *mesh) {
  std::string file = c.index.sharded() ? rankFileName(mesh ? mesh->worldRank()
                                                           : 0)
                                       : std::string(kCheckpointStateFile);
  std::unique_ptr<st::Reader> reader = st::Reader::open(c.path + "/" + file);
  const int64_t stage = mesh ? mesh->coord(2) : 0;
  std::string diff = layoutDifference(reader->header(), m, stage);
  if (!diff.empty())
    throw Error(reader->path() + ": " + diff);
  for (const Buffer *b : checkpointTensors(m, stage))
    reader->read(*reader->header().find(b->name), arena + b->offset);
}

} // namespace loom::runtime
