//===- Checkpoint.cpp - weights files and training checkpoints ------------===//
#include "runtime/Checkpoint.h"

#include "runtime/Hash.h"
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

/// Every tensor a checkpoint holds: the parameters, then the state.
std::vector<const Buffer *> checkpointTensors(const Manifest &m) {
  std::vector<const Buffer *> v;
  for (const ParamSpec &p : m.params)
    v.push_back(&p);
  for (const Buffer &b : m.state)
    v.push_back(&b);
  return v;
}

std::string typeOf(st::DType t, const std::vector<int64_t> &shape) {
  return std::string(st::dtypeName(t)) + st::formatShape(shape);
}

} // namespace

uint64_t layoutFingerprint(const Manifest &m) {
  std::vector<std::string> lines;
  for (const ParamSpec &p : m.params)
    lines.push_back("param " + p.name + " " +
                    formatTensorType(p.dtype, p.shape));
  for (const Buffer &b : m.state)
    lines.push_back("state " + b.name + " " +
                    formatTensorType(b.dtype, b.shape));
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

safetensors::WriteResult
saveWeights(const std::string &path, const Manifest &m,
            const unsigned char *arena,
            const std::vector<std::pair<std::string, std::string>> &metadata) {
  std::vector<st::TensorData> tensors;
  for (const ParamSpec &p : m.params)
    tensors.push_back(
        {p.name, toSafetensors(p.dtype), p.shape, arena + p.offset});
  return st::write(path, tensors, metadata);
}

void loadWeights(const std::string &path, const Manifest &m,
                 unsigned char *arena) {
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
    if (t->shape != p.shape)
      fail("tensor '" + p.name + "' has shape " + st::formatShape(t->shape) +
           ", the model needs " + st::formatShape(p.shape));
    found.push_back(t);
  }
  std::set<std::string> names;
  for (const ParamSpec &p : m.params)
    names.insert(p.name);
  std::vector<std::string> unknown;
  for (const st::TensorInfo &t : h.tensors)
    if (!names.count(t.name))
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
  for (size_t i = 0; i < m.params.size(); ++i)
    file->read(*found[i], arena + m.params[i].offset, /*checkFinite=*/true);
}

//===----------------------------------------------------------------------===//
// index.json
//===----------------------------------------------------------------------===//

json::Value CheckpointIndex::toJson() const {
  // u64 values (seed, hashes) as strings: JSON numbers stop being exact at
  // 2^53.
  return json::Value(json::Object{
      {"format", json::Value("loom-checkpoint")},
      {"format_version", json::Value(kCheckpointFormatVersion)},
      {"model", json::Value(model)},
      {"layout_fingerprint", json::Value(formatHex64(layout))},
      {"artifact", json::Value(artifact)},
      {"artifact_checksum", json::Value(formatHex64(artifactChecksum))},
      {"step", json::Value(step)},
      {"target_steps", json::Value(targetSteps)},
      {"seed", json::Value(std::to_string(seed))},
      {"threads", json::Value(threads)},
      {"data", json::Value(dataPath)},
      {"data_cursor", cursor.toJson()},
      {"skipped_total", json::Value(skippedTotal)},
      {"metrics_lines", json::Value(metricsLines)},
      {"state", json::Value(json::Object{
                    {"file", json::Value(kCheckpointStateFile)},
                    {"bytes", json::Value(static_cast<int64_t>(stateBytes))},
                    {"fnv1a64", json::Value(formatHex64(stateFnv1a64))},
                    {"tensors", json::Value(stateTensors)}})}});
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
  if (version != kCheckpointFormatVersion)
    throw Error("index.json: checkpoint format " + std::to_string(version) +
                ", this runtime reads " +
                std::to_string(kCheckpointFormatVersion));
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
  const json::Value &state = member(v, "state", "state");
  if (!state.isObject())
    throw fail("state", "is not an object");
  if (string(state, "file", "state.file") != kCheckpointStateFile)
    throw fail("state.file",
               std::string("is not \"") + kCheckpointStateFile + "\"");
  c.stateBytes = static_cast<uint64_t>(integer(state, "bytes", "state.bytes"));
  c.stateFnv1a64 = hex(state, "fnv1a64", "state.fnv1a64");
  c.stateTensors = integer(state, "tensors", "state.tensors");
  return c;
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

std::string writeCheckpoint(const std::string &dir, const Manifest &m,
                            const unsigned char *arena, CheckpointIndex index,
                            int64_t keep) {
  std::string name = checkpointName(index.step);
  std::string final = dir + "/" + name, tmp = final + ".tmp";
  try {
    // A .tmp folder is a write that never finished: never a checkpoint.
    if (exists(tmp) && !removeCheckpointFolder(tmp))
      throw Error("cannot remove the unfinished " + tmp +
                  " left by an "
                  "earlier run: " +
                  errnoText());
    if (::mkdir(tmp.c_str(), 0755) != 0)
      throw Error("cannot create " + tmp + ": " + errnoText());

    std::vector<st::TensorData> tensors;
    for (const Buffer *b : checkpointTensors(m))
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
        throw Error("cannot move the earlier " + final +
                    " aside: " + errnoText());
    }
    if (::rename(tmp.c_str(), final.c_str()) != 0)
      throw Error("cannot rename " + tmp + " to " + final + ": " + errnoText());
    fsyncPath(dir, true);
    if (!stale.empty())
      removeCheckpointFolder(stale);
  } catch (const Error &e) {
    removeCheckpointFolder(tmp);
    throw Error("checkpoint " + final + ": " + e.what());
  }

  // Keep the newest `keep` complete checkpoints up to this one.
  if (keep > 0) {
    int64_t kept = 0;
    for (const auto &[step, path] : listCheckpoints(dir)) {
      // A later step than this one is what a resumed run stepped over as
      // damaged: it is replaced when this run gets there, never counted.
      if (step > index.step)
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
              checkpointStep(n.substr(0, n.size() - len)) < index.step)
            leftovers.push_back(dir + "/" + n);
        }
      }
      ::closedir(d);
      for (const std::string &l : leftovers)
        removeCheckpointFolder(l);
    }
  }
  return final;
}

//===----------------------------------------------------------------------===//
// Finding and loading
//===----------------------------------------------------------------------===//

namespace {

/// The first way the tensors of `h` differ from what `m` needs, or "".
std::string layoutDifference(const st::Header &h, const Manifest &m) {
  std::set<std::string> wanted;
  for (const Buffer *b : checkpointTensors(m)) {
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
               std::vector<std::string> *skipped) {
  uint64_t layout = layoutFingerprint(m);
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
        format->asInt() != kCheckpointFormatVersion)
      throw Error(path + ": checkpoint format " +
                  std::to_string(format->asInt()) + ", this runtime reads " +
                  std::to_string(kCheckpointFormatVersion) +
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
    std::string statePath = path + "/" + kCheckpointStateFile;
    if (index.layout != layout) {
      std::string why;
      try {
        why = layoutDifference(st::Reader::open(statePath)->header(), m);
      } catch (const Error &) {
      }
      throw Error(path + ": a checkpoint of a different layout of model '" +
                  m.model + "' (parameters or optimizer state differ" +
                  (why.empty() ? "" : ": " + why) +
                  "); it cannot be resumed with this artifact");
    }
    try {
      auto [hash, bytes] = hashFile(statePath);
      if (bytes != index.stateBytes)
        throw Error(std::string(kCheckpointStateFile) + " is " +
                    std::to_string(bytes) + " bytes, index.json says " +
                    std::to_string(index.stateBytes) + " (truncated?)");
      if (hash != index.stateFnv1a64)
        throw Error(std::string(kCheckpointStateFile) + " is damaged: FNV-1a " +
                    formatHex64(hash) + ", index.json says " +
                    formatHex64(index.stateFnv1a64));
      std::string diff =
          layoutDifference(st::Reader::open(statePath)->header(), m);
      if (!diff.empty())
        throw Error(std::string(kCheckpointStateFile) +
                    " does not match its index: " + diff);
    } catch (const Error &e) {
      skip(e.what());
      continue;
    }
    return FoundCheckpoint{path, index};
  }
  return std::nullopt;
}

void loadCheckpoint(const FoundCheckpoint &c, const Manifest &m,
                    unsigned char *arena) {
  std::unique_ptr<st::Reader> file =
      st::Reader::open(c.path + "/" + kCheckpointStateFile);
  std::string diff = layoutDifference(file->header(), m);
  if (!diff.empty())
    throw Error(file->path() + ": " + diff);
  for (const Buffer *b : checkpointTensors(m))
    file->read(*file->header().find(b->name), arena + b->offset);
}

} // namespace loom::runtime
