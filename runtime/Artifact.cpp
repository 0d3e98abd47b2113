//===- Artifact.cpp - reading and validating a .loomx artifact ------------===//
#include "runtime/Artifact.h"
#include "runtime/Support.h"

#include "runtime/Hash.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace loom::runtime {

const unsigned char kArtifactMagic[8] = {'L', 'O', 'O', 'M', 'X', 0, 0, 1};

//===----------------------------------------------------------------------===//
// dtypes
//===----------------------------------------------------------------------===//

namespace {
struct DTypeInfo {
  DType type;
  const char *name;
  size_t size;
};
const DTypeInfo kDTypes[] = {
    {DType::F32, "f32", 4}, {DType::F16, "f16", 2}, {DType::BF16, "bf16", 2},
    {DType::F64, "f64", 8}, {DType::I32, "i32", 4}, {DType::I64, "i64", 8},
    {DType::I8, "i8", 1},   {DType::U8, "u8", 1},
};
} // namespace

const char *dtypeName(DType t) {
  for (const auto &d : kDTypes)
    if (d.type == t)
      return d.name;
  return "?";
}

size_t dtypeSize(DType t) {
  for (const auto &d : kDTypes)
    if (d.type == t)
      return d.size;
  return 0;
}

bool parseDType(const std::string &name, DType &out) {
  for (const auto &d : kDTypes)
    if (name == d.name) {
      out = d.type;
      return true;
    }
  return false;
}

std::string formatTensorType(DType t, const std::vector<int64_t> &shape) {
  std::string s = dtypeName(t);
  s += '[';
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i)
      s += ", ";
    s += std::to_string(shape[i]);
  }
  s += ']';
  return s;
}

//===----------------------------------------------------------------------===//
// Buffers and meshes
//===----------------------------------------------------------------------===//

std::string formatMesh(const Mesh &m) {
  return "dp=" + std::to_string(m.dp) + " tp=" + std::to_string(m.tp) +
         " pp=" + std::to_string(m.pp);
}

int64_t Buffer::globalElements() const {
  int64_t n = 1;
  for (int64_t d : global())
    n *= d;
  return n;
}

bool Buffer::isSplit() const {
  for (int32_t a : split)
    if (a >= 0)
      return true;
  return false;
}

std::string Buffer::describeType() const {
  std::string s = formatTensorType(dtype, shape);
  if (!isSplit())
    return s;
  s += " of " + formatTensorType(dtype, global()) + " split (";
  for (size_t d = 0; d < shape.size(); ++d) {
    int32_t a = splitAxis(d);
    s += (d ? ", " : "") + std::string(a == 0 ? "dp" : a == 1 ? "tp" : "_");
  }
  return s + ")";
}

//===----------------------------------------------------------------------===//
// Manifest lookups
//===----------------------------------------------------------------------===//

const std::string *Manifest::program(const std::string &role,
                                     int64_t stage) const {
  for (const auto &[r, syms] : programs)
    if (r == role)
      return stage >= 0 && size_t(stage) < syms.size() ? &syms[size_t(stage)]
                                                       : nullptr;
  return nullptr;
}

int64_t Manifest::arenaBytesOf(int64_t stage) const {
  if (stage >= 0 && size_t(stage) < stageArenaBytes.size())
    return stageArenaBytes[size_t(stage)];
  return arenaBytes;
}

std::optional<int64_t> Manifest::output(const std::string &name) const {
  for (const auto &[n, off] : outputs)
    if (n == name)
      return off;
  return std::nullopt;
}

const Buffer *Manifest::input(const std::string &name) const {
  for (const auto &b : inputs)
    if (b.name == name)
      return &b;
  return nullptr;
}

std::optional<int64_t> Manifest::memoryOf(const std::string &category) const {
  for (const auto &[c, v] : memory)
    if (c == category)
      return v;
  return std::nullopt;
}

std::optional<int64_t> Manifest::trainSteps() const {
  const json::Value *v = train.find("steps");
  if (v && v->isInt())
    return v->asInt();
  return std::nullopt;
}

std::optional<std::string> Manifest::trainData() const {
  const json::Value *v = train.find("data");
  if (v && v->isString() && !v->asString().empty())
    return v->asString();
  return std::nullopt;
}

//===----------------------------------------------------------------------===//
// Trailer
//===----------------------------------------------------------------------===//


void writeTrailer(const Trailer &t, unsigned char out[kTrailerBytes]) {
  std::memset(out, 0, kTrailerBytes);
  std::memcpy(out, kArtifactMagic, 8);
  putU32(out + 8, t.formatVersion);
  putU32(out + 12, t.abiVersion);
  putU64(out + 16, t.elfSize);
  putU64(out + 24, t.manifestOffset);
  putU64(out + 32, t.manifestSize);
  putU64(out + 40, t.checksum);
}

Trailer parseTrailer(const unsigned char *p, uint64_t fileSize) {
  if (std::memcmp(p, kArtifactMagic, 8) != 0)
    throw Error("not a Loom artifact (no LOOMX magic in the last " +
                std::to_string(kTrailerBytes) + " bytes)");
  Trailer t;
  t.formatVersion = readU32(p + 8);
  t.abiVersion = readU32(p + 12);
  t.elfSize = readU64(p + 16);
  t.manifestOffset = readU64(p + 24);
  t.manifestSize = readU64(p + 32);
  t.checksum = readU64(p + 40);
  if (t.formatVersion != kArtifactFormatVersion)
    throw Error("compiled by a different Loom: format " +
                std::to_string(t.formatVersion) + ", this runtime reads " +
                std::to_string(kArtifactFormatVersion));
  if (t.abiVersion < kMinAbiVersion || t.abiVersion > LOOM_ABI_VERSION)
    throw Error("compiled by a different Loom: ABI " +
                std::to_string(t.abiVersion) + ", this runtime implements " +
                std::to_string(LOOM_ABI_VERSION) + " (and runs " +
                std::to_string(kMinAbiVersion) + ")");
  for (size_t i = 48; i < kTrailerBytes; ++i)
    if (p[i] != 0)
      throw Error("trailer byte " + std::to_string(i) +
                  " is not zero (reserved): corrupted or not a Loom artifact");
  if (t.manifestOffset != t.elfSize)
    throw Error("trailer: manifest_offset " + std::to_string(t.manifestOffset) +
                " differs from elf_size " + std::to_string(t.elfSize));
  if (t.manifestSize == 0 || t.manifestSize > kMaxManifestBytes)
    throw Error("trailer: manifest_size " + std::to_string(t.manifestSize) +
                " outside [1, " + std::to_string(kMaxManifestBytes) + "]");
  // Checked without overflow: elf + manifest + trailer == file.
  if (fileSize < kTrailerBytes || t.elfSize > fileSize - kTrailerBytes ||
      t.manifestSize != fileSize - kTrailerBytes - t.elfSize)
    throw Error("sizes do not add up: elf_size " + std::to_string(t.elfSize) +
                " + manifest_size " + std::to_string(t.manifestSize) +
                " + trailer " + std::to_string(kTrailerBytes) +
                " != file size " + std::to_string(fileSize) +
                " (truncated or corrupted)");
  if (t.elfSize < 64)
    throw Error("the ELF image is " + std::to_string(t.elfSize) +
                " bytes, too small to be a shared object");
  return t;
}

static void checkElfHeader(const unsigned char *p) {
  if (!(p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F'))
    throw Error("no ELF magic at offset 0: not a Loom artifact's code image");
  if (p[4] != 2 || p[5] != 1)
    throw Error("the ELF image is not 64-bit little-endian");
#if defined(__x86_64__)
  unsigned machine = p[18] | (p[19] << 8);
  if (machine != 62)
    throw Error("the ELF image is for machine " + std::to_string(machine) +
                ", this runtime runs x86-64 (62)");
#endif
}

//===----------------------------------------------------------------------===//
// Manifest
//===----------------------------------------------------------------------===//

namespace {

/// Walks the manifest with a path for messages ("params[1] ('b1').shape").
class ManifestReader {
public:
  [[noreturn]] static void fail(const std::string &where,
                                const std::string &cause) {
    throw Error("manifest: " + where + ": " + cause);
  }

  static const json::Value &member(const json::Value &obj,
                                   const std::string &where,
                                   const std::string &key) {
    const json::Value *v = obj.find(key);
    if (!v)
      fail(where.empty() ? key : where + "." + key, "missing");
    return *v;
  }

  static std::string join(const std::string &where, const std::string &key) {
    return where.empty() ? key : where + "." + key;
  }

  static int64_t integer(const json::Value &v, const std::string &where,
                         int64_t lo, int64_t hi) {
    if (!v.isInt())
      fail(where, std::string("expected an integer, found ") +
                      (v.isNumber() ? "a non-integer number" : v.kindName()));
    if (v.asInt() < lo || v.asInt() > hi)
      fail(where, std::to_string(v.asInt()) + " outside [" +
                      std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v.asInt();
  }

  static const std::string &string(const json::Value &v,
                                   const std::string &where) {
    if (!v.isString())
      fail(where, std::string("expected a string, found ") + v.kindName());
    return v.asString();
  }

  static const json::Array &array(const json::Value &v,
                                  const std::string &where) {
    if (!v.isArray())
      fail(where, std::string("expected an array, found ") + v.kindName());
    return v.asArray();
  }

  static const json::Object &object(const json::Value &v,
                                    const std::string &where) {
    if (!v.isObject())
      fail(where, std::string("expected an object, found ") + v.kindName());
    return v.asObject();
  }
};

constexpr int64_t kMaxDim = int64_t(1) << 40;
constexpr int64_t kMaxArena = int64_t(1) << 50;

bool isIdentifier(const std::string &s) {
  if (s.empty() || !(std::isalpha((unsigned char)s[0]) || s[0] == '_'))
    return false;
  for (char c : s)
    if (!(std::isalnum((unsigned char)c) || c == '_'))
      return false;
  return true;
}

/// The arena a buffer of stage `stage` (-1: every stage) must fit in, and
/// how a message names it.
std::pair<int64_t, std::string> arenaLimit(const Manifest &m, int64_t stage) {
  if (m.stages == 1)
    return {m.arenaBytes, "arena_bytes " + std::to_string(m.arenaBytes)};
  if (stage >= 0)
    return {m.arenaBytesOf(stage),
            "stage " + std::to_string(stage) + "'s arena (stage_arena_bytes[" +
                std::to_string(stage) + "] = " +
                std::to_string(m.arenaBytesOf(stage)) + ")"};
  size_t smallest = 0;
  for (size_t s = 1; s < m.stageArenaBytes.size(); ++s)
    if (m.stageArenaBytes[s] < m.stageArenaBytes[smallest])
      smallest = s;
  return {m.stageArenaBytes[smallest],
          "stage " + std::to_string(smallest) +
              "'s arena (stage_arena_bytes[" + std::to_string(smallest) +
              "] = " + std::to_string(m.stageArenaBytes[smallest]) +
              "; a buffer without \"stage\" is in every stage's arena)"};
}

void readBuffer(const json::Value &v, const std::string &whereIn,
                const Manifest &m, Buffer &b, bool needsBatchDim) {
  using R = ManifestReader;
  R::object(v, whereIn);
  b.name = R::string(R::member(v, whereIn, "name"), whereIn + ".name");
  if (b.name.empty())
    R::fail(whereIn + ".name", "empty");
  std::string where = whereIn + " ('" + b.name + "')";
  const std::string &dt =
      R::string(R::member(v, where, "dtype"), where + ".dtype");
  if (!parseDType(dt, b.dtype))
    R::fail(where + ".dtype",
            "unknown dtype '" + dt +
                "' (known: f32, f16, bf16, f64, i32, i64, i8, u8)");
  const json::Array &shape =
      R::array(R::member(v, where, "shape"), where + ".shape");
  if (shape.size() > 8)
    R::fail(where + ".shape",
            "rank " + std::to_string(shape.size()) + " exceeds 8");
  if (needsBatchDim && shape.empty())
    R::fail(where + ".shape", "an input needs a batch dimension (rank >= 1)");
  b.shape.clear();
  b.elements = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t d = R::integer(
        shape[i], where + ".shape[" + std::to_string(i) + "]", 1, kMaxDim);
    b.shape.push_back(d);
    if (b.elements > kMaxArena / d)
      R::fail(where + ".shape", "more elements than any arena can hold");
    b.elements *= d;
  }
  b.bytes = b.elements * static_cast<int64_t>(dtypeSize(b.dtype));
  b.offset = R::integer(R::member(v, where, "offset"), where + ".offset", 0,
                        kMaxArena);
  if (b.offset % kArenaAlignment != 0)
    R::fail(where + ".offset", std::to_string(b.offset) + " is not " +
                                   std::to_string(kArenaAlignment) +
                                   "-byte aligned");
  b.stage = -1;
  if (const json::Value *stage = v.find("stage"))
    b.stage = R::integer(*stage, where + ".stage", 0, m.stages - 1);
  auto [limit, arena] = arenaLimit(m, b.stage);
  if (b.bytes > limit - b.offset)
    R::fail(where, "offset " + std::to_string(b.offset) + " + " +
                       std::to_string(b.bytes) + " bytes exceeds " + arena);
  if (const json::Value *bytes = v.find("bytes"))
    if (R::integer(*bytes, where + ".bytes", 0, kMaxArena) != b.bytes)
      R::fail(where + ".bytes", std::to_string(bytes->asInt()) + " but " +
                                    formatTensorType(b.dtype, b.shape) +
                                    " takes " + std::to_string(b.bytes));
}

void readInit(const json::Value &v, const std::string &where, ParamSpec &p) {
  using R = ManifestReader;
  if (const json::Value *init = v.find("init"))
    p.init = R::string(*init, where + ".init");
  struct Known {
    const char *name;
    size_t args;
  };
  static const Known kKnown[] = {
      {"zeros", 0}, {"ones", 0}, {"normal", 1}, {"uniform", 2}, {"glorot", 0}};
  const Known *k = nullptr;
  for (const auto &kk : kKnown)
    if (p.init == kk.name)
      k = &kk;
  if (!k)
    R::fail(where + ".init",
            "unknown initialiser '" + p.init +
                "' (known: zeros, ones, normal, uniform, glorot)");
  p.initArgs.clear();
  if (const json::Value *args = v.find("init_args")) {
    const json::Array &a = R::array(*args, where + ".init_args");
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].isNumber())
        R::fail(where + ".init_args[" + std::to_string(i) + "]",
                std::string("expected a number, found ") + a[i].kindName());
      p.initArgs.push_back(a[i].asDouble());
    }
  }
  if (p.initArgs.size() != k->args)
    R::fail(where + ".init_args", p.init + " takes " + std::to_string(k->args) +
                                      " argument" + (k->args == 1 ? "" : "s") +
                                      ", found " +
                                      std::to_string(p.initArgs.size()));
  if (p.init == "normal" && !(p.initArgs[0] > 0))
    R::fail(where + ".init_args", "normal(std) needs std > 0");
  if (p.init == "uniform" && !(p.initArgs[0] < p.initArgs[1]))
    R::fail(where + ".init_args", "uniform(a, b) needs a < b");
  if (p.init == "glorot" && p.shape.size() < 2)
    R::fail(where + ".init", "glorot needs rank >= 2, the shape is " +
                                 formatTensorType(p.dtype, p.shape));
  if (p.dtype != DType::F32 && p.dtype != DType::F64)
    R::fail(where + ".dtype", std::string("parameters are f32 or f64 (master "
                                          "weights), found ") +
                                  dtypeName(p.dtype));
}

/// `shard` and `global_shape` of a param, state or input entry (ARTIFACT.md):
/// fills b.globalShape and b.split, and the annotation strings of a param.
void readLayout(const json::Value &v, const std::string &where,
                const Manifest &m, Buffer &b,
                std::vector<std::string> *annotation) {
  using R = ManifestReader;
  size_t rank = b.shape.size();
  std::vector<std::string> shard;
  if (const json::Value *s = v.find("shard"); s && !s->isNull()) {
    const json::Array &a = R::array(*s, where + ".shard");
    if (a.size() != rank)
      R::fail(where + ".shard", std::to_string(a.size()) +
                                    " entries for a tensor of rank " +
                                    std::to_string(rank));
    for (size_t i = 0; i < a.size(); ++i) {
      std::string at = where + ".shard[" + std::to_string(i) + "]";
      const std::string &axis = R::string(a[i], at);
      bool known = axis == "_" || axis == "dp" || axis == "tp" ||
                   (axis == "pp" && m.abiVersion < 3);
      if (!known)
        R::fail(at, "'" + axis + "' is not '_' or a mesh axis a dimension " +
                        "can be split over (dp, tp)");
      shard.push_back(axis);
    }
  }
  if (annotation)
    *annotation = shard;
  b.globalShape = b.shape;
  b.split.assign(rank, -1);
  const json::Value *g = v.find("global_shape");
  if (m.abiVersion < 3) {
    // ABI 2: `shard` was the DSL's annotation; buffers are whole tensors.
    if (g)
      R::fail(where + ".global_shape", "not part of ABI " +
                                           std::to_string(m.abiVersion) +
                                           " (since ABI 3)");
    return;
  }
  if (g && !g->isNull()) {
    const json::Array &a = R::array(*g, where + ".global_shape");
    if (a.size() != rank)
      R::fail(where + ".global_shape",
              "rank " + std::to_string(a.size()) + ", the local shape " +
                  formatTensorType(b.dtype, b.shape) + " has rank " +
                  std::to_string(rank));
    int64_t elements = 1;
    for (size_t i = 0; i < a.size(); ++i) {
      int64_t d = R::integer(a[i],
                             where + ".global_shape[" + std::to_string(i) + "]",
                             1, kMaxDim);
      if (elements > kMaxArena / d)
        R::fail(where + ".global_shape", "more elements than a tensor can hold");
      elements *= d;
      b.globalShape[i] = d;
    }
  }
  bool used[3] = {false, false, false};
  for (size_t d = 0; d < rank; ++d) {
    std::string axis = shard.empty() ? "_" : shard[d];
    std::string at = where + ".shard[" + std::to_string(d) + "]";
    int64_t global = b.globalShape[d], local = b.shape[d];
    if (axis == "_") {
      if (global != local)
        R::fail(where + ".shape",
                "dim " + std::to_string(d) + " is " + std::to_string(local) +
                    " but not split, and global_shape says " +
                    std::to_string(global));
      continue;
    }
    int32_t a = axis == "dp" ? 0 : 1;
    if (used[a])
      R::fail(at, "splits a second dimension over " + axis +
                      " (an axis splits at most one dimension of a tensor)");
    used[a] = true;
    int64_t size = m.mesh.size(a);
    if (!g && size > 1)
      R::fail(where + ".global_shape",
              "missing, but dim " + std::to_string(d) + " is split over " +
                  axis + " (" + std::to_string(size) + " ranks)");
    if (global % size != 0)
      R::fail(where + ".global_shape",
              "dim " + std::to_string(d) + " (" + std::to_string(global) +
                  ") does not divide evenly over " + axis + " (" +
                  std::to_string(size) + " ranks)");
    if (local != global / size)
      R::fail(where + ".shape",
              "dim " + std::to_string(d) + " is " + std::to_string(local) +
                  ", but global " + std::to_string(global) + " split over " +
                  axis + " (" + std::to_string(size) + " ranks) gives " +
                  std::to_string(global / size));
    // A split over an axis of one rank is no split.
    if (size > 1)
      b.split[d] = a;
  }
}

} // namespace

Manifest parseManifest(std::string_view text) {
  using R = ManifestReader;
  json::Value doc;
  try {
    doc = json::parse(text, {64, kMaxManifestBytes});
  } catch (const json::ParseError &e) {
    throw Error(std::string("manifest is not valid JSON: ") + e.what());
  }
  R::object(doc, "(top level)");
  Manifest m;

  const std::string &format = R::string(R::member(doc, "", "format"), "format");
  if (format != "loomx")
    R::fail("format", "'" + format + "', expected 'loomx'");
  m.formatVersion = R::integer(R::member(doc, "", "format_version"),
                               "format_version", 0, INT32_MAX);
  if (m.formatVersion != kArtifactFormatVersion)
    throw Error("compiled by a different Loom: format " +
                std::to_string(m.formatVersion) + ", this runtime reads " +
                std::to_string(kArtifactFormatVersion));
  m.abiVersion = R::integer(R::member(doc, "", "abi_version"), "abi_version", 0,
                            INT32_MAX);
  if (m.abiVersion < kMinAbiVersion || m.abiVersion > LOOM_ABI_VERSION)
    throw Error("compiled by a different Loom: ABI " +
                std::to_string(m.abiVersion) + ", this runtime implements " +
                std::to_string(LOOM_ABI_VERSION) + " (and runs " +
                std::to_string(kMinAbiVersion) + ")");

  m.model = R::string(R::member(doc, "", "model"), "model");
  if (const json::Value *s = doc.find("source"))
    m.source = R::string(*s, "source");
  m.target = R::string(R::member(doc, "", "target"), "target");
  if (m.target != "cpu" && m.target != "cuda")
    R::fail("target", "'" + m.target + "', expected 'cpu' or 'cuda'");
  if (m.target == "cuda") {
    m.ptx = R::string(R::member(doc, "", "ptx"), "ptx");
    const json::Array &ks = R::array(R::member(doc, "", "kernels"), "kernels");
    for (size_t i = 0; i < ks.size(); ++i) {
      std::string where = "kernels[" + std::to_string(i) + "]";
      Manifest::Kernel k;
      k.name = R::string(R::member(ks[i], where, "name"), where + ".name");
      k.grid = R::integer(R::member(ks[i], where, "grid"), where + ".grid", 1,
                          INT32_MAX);
      k.block = R::integer(R::member(ks[i], where, "block"), where + ".block",
                           1, 1024);
      if (const json::Value *o = ks[i].find("origin"))
        k.origin = R::string(*o, where + ".origin");
      m.kernels.push_back(std::move(k));
    }
    if (const json::Value *g = doc.find("cuda_graph_programs")) {
      const json::Array &a = R::array(*g, "cuda_graph_programs");
      for (size_t i = 0; i < a.size(); ++i)
        m.cudaGraphPrograms.push_back(
            R::string(a[i], "cuda_graph_programs[" + std::to_string(i) + "]"));
    }
    if (const json::Value *o = doc.find("device_step_offset"))
      m.deviceStepOffset =
          R::integer(*o, "device_step_offset", -1, INT64_MAX);
  }

  if (const json::Value *ops = doc.find("ops")) {
    const json::Array &a = R::array(*ops, "ops");
    for (size_t i = 0; i < a.size(); ++i)
      m.ops.push_back(R::string(a[i], "ops[" + std::to_string(i) + "]"));
  }
  if (const json::Value *spans = doc.find("trace_spans")) {
    const json::Array &a = R::array(*spans, "trace_spans");
    for (size_t i = 0; i < a.size(); ++i)
      m.traceSpans.push_back(
          R::string(a[i], "trace_spans[" + std::to_string(i) + "]"));
  }

  if (const json::Value *f = doc.find("cpu_features")) {
    const json::Array &a = R::array(*f, "cpu_features");
    for (size_t i = 0; i < a.size(); ++i) {
      std::string where = "cpu_features[" + std::to_string(i) + "]";
      const std::string &name = R::string(a[i], where);
      if (!isKnownCpuFeature(name))
        R::fail(where, "unknown CPU feature '" + name +
                           "' (this runtime cannot check it)");
      m.cpuFeatures.push_back(name);
    }
  }

  const json::Value &mesh = R::member(doc, "", "mesh");
  for (const auto &[axis, value] : R::object(mesh, "mesh")) {
    int64_t n = R::integer(value, "mesh." + axis, 1, 1 << 20);
    if (axis == "dp")
      m.mesh.dp = n;
    else if (axis == "tp")
      m.mesh.tp = n;
    else if (axis == "pp")
      m.mesh.pp = n;
    else
      R::fail("mesh." + axis, "unknown mesh axis (known: dp, tp, pp)");
  }

  if (const json::Value *stages = doc.find("stages")) {
    m.stages = R::integer(*stages, "stages", 1, 1 << 20);
    if (m.stages != m.mesh.pp)
      R::fail("stages", std::to_string(m.stages) + ", but mesh.pp is " +
                            std::to_string(m.mesh.pp) +
                            " (one pipeline stage per pp coordinate)");
  }

  if (const json::Value *zero = doc.find("zero")) {
    if (m.abiVersion < 3)
      R::fail("zero", "not part of ABI " + std::to_string(m.abiVersion) +
                          " (since ABI 3)");
    m.zero = R::integer(*zero, "zero", 0, 1);
  }

  m.arenaBytes = R::integer(R::member(doc, "", "arena_bytes"), "arena_bytes", 1,
                            kMaxArena);
  if (const json::Value *sa = doc.find("stage_arena_bytes")) {
    const json::Array &a = R::array(*sa, "stage_arena_bytes");
    if (int64_t(a.size()) != m.stages)
      R::fail("stage_arena_bytes", std::to_string(a.size()) +
                                       " entries for " +
                                       std::to_string(m.stages) + " stage" +
                                       (m.stages == 1 ? "" : "s"));
    int64_t largest = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      int64_t b = R::integer(a[i], "stage_arena_bytes[" + std::to_string(i) +
                                       "]",
                             1, kMaxArena);
      largest = std::max(largest, b);
      m.stageArenaBytes.push_back(b);
    }
    if (largest != m.arenaBytes)
      R::fail("stage_arena_bytes",
              "the largest is " + std::to_string(largest) +
                  ", but arena_bytes is " + std::to_string(m.arenaBytes) +
                  " (arena_bytes is their maximum)");
  } else {
    m.stageArenaBytes.assign(size_t(m.stages), m.arenaBytes);
  }

  if (const json::Value *mem = doc.find("memory"))
    for (const auto &[category, value] : R::object(*mem, "memory"))
      m.memory.emplace_back(
          category, R::integer(value, "memory." + category, 0, kMaxArena));

  const json::Object &programs =
      R::object(R::member(doc, "", "programs"), "programs");
  if (programs.empty())
    R::fail("programs", "empty: the artifact has nothing to run");
  for (const auto &[role, sym] : programs) {
    std::string where = "programs." + role;
    std::vector<std::string> syms;
    if (sym.isArray()) {
      // One symbol per stage, indexed by stage.
      const json::Array &a = sym.asArray();
      if (int64_t(a.size()) != m.stages)
        R::fail(where, std::to_string(a.size()) + " symbol" +
                           (a.size() == 1 ? "" : "s") + " for " +
                           std::to_string(m.stages) + " stage" +
                           (m.stages == 1 ? "" : "s") +
                           " (one per stage, indexed by stage)");
      for (size_t i = 0; i < a.size(); ++i)
        syms.push_back(R::string(a[i], where + "[" + std::to_string(i) + "]"));
    } else {
      if (sym.isString() && m.stages > 1)
        R::fail(where, "a single symbol, but the artifact has " +
                           std::to_string(m.stages) +
                           " stages: expected an array of " +
                           std::to_string(m.stages) +
                           " symbol names, one per stage");
      syms.push_back(R::string(sym, where));
    }
    for (size_t i = 0; i < syms.size(); ++i)
      if (!isIdentifier(syms[i]))
        R::fail(sym.isArray() ? where + "[" + std::to_string(i) + "]" : where,
                "'" + syms[i] + "' is not a C symbol name");
    m.programs.emplace_back(role, std::move(syms));
  }

  std::set<std::string> names;
  auto unique = [&](const Buffer &b, const std::string &where) {
    if (!names.insert(b.name).second)
      R::fail(where, "name '" + b.name + "' used twice");
  };

  const json::Array &params = R::array(R::member(doc, "", "params"), "params");
  for (size_t i = 0; i < params.size(); ++i) {
    std::string where0 = "params[" + std::to_string(i) + "]";
    ParamSpec p;
    readBuffer(params[i], where0, m, p, false);
    std::string where = where0 + " ('" + p.name + "')";
    unique(p, where);
    readLayout(params[i], where, m, p, &p.shard);
    readInit(params[i], where, p);
    m.params.push_back(std::move(p));
  }
  if (const json::Value *state = doc.find("state")) {
    const json::Array &a = R::array(*state, "state");
    for (size_t i = 0; i < a.size(); ++i) {
      std::string where0 = "state[" + std::to_string(i) + "]";
      Buffer b;
      readBuffer(a[i], where0, m, b, false);
      std::string where = where0 + " ('" + b.name + "')";
      unique(b, where);
      readLayout(a[i], where, m, b, nullptr);
      if (const json::Value *init = a[i].find("init")) {
        const std::string &kind = R::string(*init, where + ".init");
        if (kind != "ones" || (b.dtype != DType::F32 && b.dtype != DType::F64))
          R::fail(where + ".init", "state starts at zero or at \"ones\" "
                                   "(f32, f64), got '" + kind + "'");
        b.startsAtOne = true;
      }
      m.state.push_back(std::move(b));
    }
  }
  const json::Array &inputs = R::array(R::member(doc, "", "inputs"), "inputs");
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::string where0 = "inputs[" + std::to_string(i) + "]";
    Buffer b;
    readBuffer(inputs[i], where0, m, b, true);
    std::string where = where0 + " ('" + b.name + "')";
    unique(b, where);
    readLayout(inputs[i], where, m, b, nullptr);
    m.inputs.push_back(std::move(b));
  }
  // The global batch: every rank reads the same one and keeps its slice.
  for (size_t i = 1; i < m.inputs.size(); ++i)
    if (m.inputs[i].global()[0] != m.inputs[0].global()[0])
      R::fail("inputs[" + std::to_string(i) + "] ('" + m.inputs[i].name + "')",
              "batch dimension " + std::to_string(m.inputs[i].global()[0]) +
                  " differs from " + std::to_string(m.inputs[0].global()[0]) +
                  " of '" + m.inputs[0].name + "'");

  // Parameters, state and inputs are written by the runtime; an overlap
  // within one stage's arena would let one clobber another.
  for (int64_t stage = 0; stage < m.stages; ++stage) {
    std::vector<const Buffer *> owned;
    for (const auto &p : m.params)
      if (p.inStage(stage))
        owned.push_back(&p);
    for (const auto &b : m.state)
      if (b.inStage(stage))
        owned.push_back(&b);
    for (const auto &b : m.inputs)
      if (b.inStage(stage))
        owned.push_back(&b);
    std::sort(owned.begin(), owned.end(),
              [](const Buffer *a, const Buffer *b) {
                return a->offset < b->offset;
              });
    const Buffer *furthest = nullptr; // the buffer reaching furthest so far
    for (const Buffer *b : owned) {
      if (furthest && furthest->offset + furthest->bytes > b->offset)
        R::fail("memory plan",
                "buffers '" + furthest->name + "' [" +
                    std::to_string(furthest->offset) + ", " +
                    std::to_string(furthest->offset + furthest->bytes) +
                    ") and '" + b->name + "' [" + std::to_string(b->offset) +
                    ", " + std::to_string(b->offset + b->bytes) + ") overlap" +
                    (m.stages > 1 ? " in stage " + std::to_string(stage) +
                                        "'s arena"
                                  : std::string()));
      if (!furthest ||
          b->offset + b->bytes > furthest->offset + furthest->bytes)
        furthest = b;
    }
  }

  const json::Object &outputs =
      R::object(R::member(doc, "", "outputs"), "outputs");
  for (const auto &[name, value] : outputs) {
    int64_t off = R::integer(value, "outputs." + name, 0, kMaxArena);
    if (off % 4 != 0)
      R::fail("outputs." + name,
              std::to_string(off) + " is not 4-byte aligned");
    // Every stage's program writes every output, at the same offset.
    auto [limit, arena] = arenaLimit(m, -1);
    if (off > limit - 4)
      R::fail("outputs." + name, "offset " + std::to_string(off) +
                                     " + 4 bytes exceeds " + arena);
    m.outputs.emplace_back(name, off);
  }
  auto needOutputs = [&](const char *role,
                         std::initializer_list<const char *> keys) {
    if (!m.program(role))
      return;
    for (const char *k : keys)
      if (!m.output(k))
        R::fail(std::string("outputs.") + k,
                std::string("missing (the ") + role + " program writes it)");
  };
  needOutputs("train_step", {"loss", "grad_norm", "lr"});
  // eval_count and eval_correct exist when the loss is a cross-entropy;
  // other losses report eval_loss alone (accuracy is then undefined).
  needOutputs("eval_step", {"eval_loss"});

  if (const json::Value *train = doc.find("train")) {
    R::object(*train, "train");
    m.train = *train;
    if (const json::Value *steps = train->find("steps"))
      R::integer(*steps, "train.steps", 0, INT64_MAX);
    if (const json::Value *data = train->find("data"))
      R::string(*data, "train.data");
  } else {
    m.train = json::Value(json::Object{});
  }
  return m;
}

//===----------------------------------------------------------------------===//
// The whole image
//===----------------------------------------------------------------------===//

Manifest validateImage(const unsigned char *data, size_t size) {
  if (size < kTrailerBytes)
    throw Error("file is " + std::to_string(size) +
                " bytes, shorter than the " + std::to_string(kTrailerBytes) +
                "-byte trailer: not a Loom artifact");
  Trailer t = parseTrailer(data + size - kTrailerBytes, size);
  uint64_t sum = fnv1a64(data, t.manifestOffset + t.manifestSize);
  if (sum != t.checksum) {
    char buf[96];
    std::snprintf(buf, sizeof buf,
                  "corrupted: checksum 0x%016" PRIx64 " stored, 0x%016" PRIx64
                  " computed",
                  t.checksum, sum);
    throw Error(buf);
  }
  checkElfHeader(data);
  Manifest m = parseManifest(std::string_view(
      reinterpret_cast<const char *>(data + t.manifestOffset), t.manifestSize));
  if (uint64_t(m.formatVersion) != t.formatVersion ||
      uint64_t(m.abiVersion) != t.abiVersion)
    throw Error("manifest versions (format " + std::to_string(m.formatVersion) +
                ", ABI " + std::to_string(m.abiVersion) +
                ") differ from the trailer's");
  return m;
}

Manifest readArtifact(const std::string &path) {
  auto fail = [&](const std::string &cause) -> Error {
    return Error(path + ": " + cause);
  };
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw fail(std::string("cannot open: ") + std::strerror(errno));
  in.seekg(0, std::ios::end);
  uint64_t size = static_cast<uint64_t>(in.tellg());
  try {
    if (size < kTrailerBytes)
      throw Error("file is " + std::to_string(size) +
                  " bytes, shorter than the " + std::to_string(kTrailerBytes) +
                  "-byte trailer: not a Loom artifact");
    unsigned char trailer[kTrailerBytes];
    in.seekg(static_cast<std::streamoff>(size - kTrailerBytes));
    in.read(reinterpret_cast<char *>(trailer), kTrailerBytes);
    if (!in)
      throw Error("cannot read the trailer");
    Trailer t = parseTrailer(trailer, size);

    // The checksum streams over the code image; only the header and the
    // manifest are kept.
    in.seekg(0);
    unsigned char elfHeader[64];
    std::string manifest(t.manifestSize, '\0');
    uint64_t sum = kFnv1a64Offset;
    std::vector<char> chunk(1 << 20);
    uint64_t done = 0, total = t.manifestOffset + t.manifestSize;
    while (done < total) {
      size_t n =
          static_cast<size_t>(std::min<uint64_t>(chunk.size(), total - done));
      in.read(chunk.data(), static_cast<std::streamsize>(n));
      if (!in)
        throw Error("read failed at byte " + std::to_string(done));
      sum = fnv1a64(chunk.data(), n, sum);
      for (size_t i = 0; i < n; ++i) {
        uint64_t at = done + i;
        if (at < 64)
          elfHeader[at] = static_cast<unsigned char>(chunk[i]);
        if (at >= t.manifestOffset)
          manifest[at - t.manifestOffset] = chunk[i];
      }
      done += n;
    }
    if (sum != t.checksum) {
      char buf[96];
      std::snprintf(buf, sizeof buf,
                    "corrupted: checksum 0x%016" PRIx64 " stored, 0x%016" PRIx64
                    " computed",
                    t.checksum, sum);
      throw Error(buf);
    }
    checkElfHeader(elfHeader);
    Manifest m = parseManifest(manifest);
    if (uint64_t(m.formatVersion) != t.formatVersion ||
        uint64_t(m.abiVersion) != t.abiVersion)
      throw Error("manifest versions (format " +
                  std::to_string(m.formatVersion) + ", ABI " +
                  std::to_string(m.abiVersion) + ") differ from the trailer's");
    return m;
  } catch (const Error &e) {
    throw fail(e.what());
  }
}

//===----------------------------------------------------------------------===//
// CPU features
//===----------------------------------------------------------------------===//

namespace {

#if defined(__x86_64__)
bool cpuidBit(unsigned leaf, unsigned subleaf, int reg, int bit) {
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3]))
    return false;
  return (r[reg] >> bit) & 1;
}
enum { EAX, EBX, ECX, EDX };

#define LOOM_BUILTIN(name)                                                     \
  {                                                                            \
    name, [] { return __builtin_cpu_supports(name) != 0; }                     \
  }
const std::vector<std::pair<const char *, std::function<bool()>>> &
featureTable() {
  // LLVM's feature names. Where GCC and Clang's __builtin_cpu_supports know
  // a name it is used (it also checks that the OS saves the vector state);
  // the rest are plain CPUID bits.
  static const std::vector<std::pair<const char *, std::function<bool()>>> t = {
      LOOM_BUILTIN("cmov"),
      LOOM_BUILTIN("mmx"),
      LOOM_BUILTIN("popcnt"),
      LOOM_BUILTIN("sse"),
      LOOM_BUILTIN("sse2"),
      LOOM_BUILTIN("sse3"),
      LOOM_BUILTIN("ssse3"),
      LOOM_BUILTIN("sse4.1"),
      LOOM_BUILTIN("sse4.2"),
      LOOM_BUILTIN("sse4a"),
      LOOM_BUILTIN("avx"),
      LOOM_BUILTIN("avx2"),
      LOOM_BUILTIN("fma"),
      LOOM_BUILTIN("fma4"),
      LOOM_BUILTIN("xop"),
      LOOM_BUILTIN("bmi"),
      LOOM_BUILTIN("bmi2"),
      LOOM_BUILTIN("f16c"),
      LOOM_BUILTIN("lzcnt"),
      LOOM_BUILTIN("movbe"),
      LOOM_BUILTIN("aes"),
      LOOM_BUILTIN("pclmul"),
      LOOM_BUILTIN("adx"),
      LOOM_BUILTIN("sha"),
      LOOM_BUILTIN("rdrnd"),
      LOOM_BUILTIN("rdseed"),
      LOOM_BUILTIN("xsave"),
      LOOM_BUILTIN("xsaveopt"),
      LOOM_BUILTIN("avx512f"),
      LOOM_BUILTIN("avx512vl"),
      LOOM_BUILTIN("avx512bw"),
      LOOM_BUILTIN("avx512dq"),
      LOOM_BUILTIN("avx512cd"),
      LOOM_BUILTIN("avx512vbmi"),
      LOOM_BUILTIN("avx512vbmi2"),
      LOOM_BUILTIN("avx512ifma"),
      LOOM_BUILTIN("avx512vnni"),
      LOOM_BUILTIN("avx512bitalg"),
      LOOM_BUILTIN("avx512vpopcntdq"),
      LOOM_BUILTIN("avx512bf16"),
      LOOM_BUILTIN("avx512fp16"),
      LOOM_BUILTIN("avxvnni"),
      LOOM_BUILTIN("amx-tile"),
      LOOM_BUILTIN("amx-int8"),
      LOOM_BUILTIN("amx-bf16"),
      LOOM_BUILTIN("gfni"),
      LOOM_BUILTIN("vaes"),
      LOOM_BUILTIN("vpclmulqdq"),
      LOOM_BUILTIN("clflushopt"),
      LOOM_BUILTIN("clwb"),
      LOOM_BUILTIN("fsgsbase"),
      LOOM_BUILTIN("prfchw"),
      LOOM_BUILTIN("rdpid"),
      LOOM_BUILTIN("pku"),
      LOOM_BUILTIN("serialize"),
      LOOM_BUILTIN("movdiri"),
      LOOM_BUILTIN("waitpkg"),
      LOOM_BUILTIN("x86-64"),
      LOOM_BUILTIN("x86-64-v2"),
      LOOM_BUILTIN("x86-64-v3"),
      LOOM_BUILTIN("x86-64-v4"),
      {"x87", [] { return cpuidBit(1, 0, EDX, 0); }},
      {"cx8", [] { return cpuidBit(1, 0, EDX, 8); }},
      {"fxsr", [] { return cpuidBit(1, 0, EDX, 24); }},
      {"cx16", [] { return cpuidBit(1, 0, ECX, 13); }},
      {"crc32", [] { return cpuidBit(1, 0, ECX, 20); }}, // part of SSE4.2
      {"sahf", [] { return cpuidBit(0x80000001u, 0, ECX, 0); }},
      {"invpcid", [] { return cpuidBit(7, 0, EBX, 10); }},
      {"64bit", [] { return true; }},
  };
  return t;
}
#undef LOOM_BUILTIN
#else
const std::vector<std::pair<const char *, std::function<bool()>>> &
featureTable() {
  static const std::vector<std::pair<const char *, std::function<bool()>>> t;
  return t;
}
#endif

const std::function<bool()> *findFeature(const std::string &name) {
  for (const auto &[n, f] : featureTable())
    if (name == n)
      return &f;
  return nullptr;
}

} // namespace

bool isKnownCpuFeature(const std::string &name) {
  return findFeature(name) != nullptr;
}

bool cpuSupports(const std::string &name) {
#if defined(__x86_64__)
  __builtin_cpu_init();
#endif
  const std::function<bool()> *f = findFeature(name);
  return f && (*f)();
}

std::vector<std::string>
missingCpuFeatures(const std::vector<std::string> &required) {
  std::vector<std::string> missing;
  for (const std::string &name : required) {
    if (!isKnownCpuFeature(name))
      throw Error("unknown CPU feature '" + name + "'");
    if (!cpuSupports(name))
      missing.push_back(name);
  }
  return missing;
}

static std::string joinNames(const std::vector<std::string> &v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i)
    s += (i ? ", " : "") + v[i];
  return s;
}

void checkCpuFeatures(const Manifest &m) {
  std::vector<std::string> missing = missingCpuFeatures(m.cpuFeatures);
  if (!missing.empty())
    throw Error("needs " + joinNames(m.cpuFeatures) + "; this CPU lacks " +
                joinNames(missing) +
                "; recompile with --cpu=native on this machine");
}

//===----------------------------------------------------------------------===//
// describe
//===----------------------------------------------------------------------===//

/// "  (per rank; global f32[64, 20], split (_, tp))" for a split buffer.
static std::string sliceOf(const Buffer &b) {
  if (!b.isSplit())
    return "";
  std::string s = "  (per rank; global " + formatTensorType(b.dtype, b.global()) +
                  ", split (";
  for (size_t d = 0; d < b.shape.size(); ++d) {
    int32_t a = b.splitAxis(d);
    s += (d ? ", " : "") + std::string(a == 0 ? "dp" : a == 1 ? "tp" : "_");
  }
  return s + "))";
}

/// " in stage 1" for a buffer of one pipeline stage.
static std::string stageOf(const Buffer &b) {
  return b.stage < 0 ? "" : " in stage " + std::to_string(b.stage);
}

std::string describe(const Manifest &m, const std::string &path) {
  std::ostringstream os;
  auto pad = [](std::string s, size_t w) {
    if (s.size() < w)
      s.append(w - s.size(), ' ');
    return s;
  };
  os << "Loom artifact " << path << "\n";
  os << "  model     " << m.model;
  if (!m.source.empty())
    os << " (from " << m.source << ")";
  os << ", target " << m.target << ", format " << m.formatVersion << ", ABI "
     << m.abiVersion << "\n";
  os << "  mesh      dp=" << m.mesh.dp << " tp=" << m.mesh.tp
     << " pp=" << m.mesh.pp << " (" << m.mesh.ranks() << " rank"
     << (m.mesh.ranks() == 1 ? "" : "s") << ")";
  if (m.zero)
    os << ", ZeRO-" << m.zero;
  os << "\n";
  if (m.target == "cuda") {
    os << "  gpu       " << m.kernels.size() << " kernels (PTX for sm_90); "
       << "graph-captured programs: "
       << (m.cudaGraphPrograms.empty() ? "none"
                                       : joinNames(m.cudaGraphPrograms));
    if (m.deviceStepOffset >= 0)
      os << "; step at arena offset " << m.deviceStepOffset;
    os << "\n";
  }
  os << "  cpu       "
     << (m.cpuFeatures.empty() ? "(no required features)"
                               : joinNames(m.cpuFeatures));
  if (!m.cpuFeatures.empty()) {
    std::vector<std::string> missing;
    for (const auto &f : m.cpuFeatures)
      if (!cpuSupports(f))
        missing.push_back(f);
    os << (missing.empty() ? "  [this CPU: all present]"
                           : "  [this CPU lacks " + joinNames(missing) + "]");
  }
  os << "\n";
  os << "  arena     " << formatBytes(m.arenaBytes) << " (" << m.arenaBytes
     << " bytes)";
  if (m.stages > 1) {
    os << "; " << m.stages << " pipeline stages:";
    for (int64_t s = 0; s < m.stages; ++s)
      os << (s ? "," : "") << " stage " << s << " "
         << formatBytes(m.arenaBytesOf(s));
  }
  os << "\n";
  if (!m.memory.empty()) {
    os << "  memory   ";
    for (const auto &[c, v] : m.memory)
      os << " " << c << " " << formatBytes(v) << ";";
    os.seekp(-1, std::ios_base::cur);
    os << "\n";
  }
  os << "  programs ";
  for (size_t i = 0; i < m.programs.size(); ++i) {
    const std::vector<std::string> &syms = m.programs[i].second;
    os << (i ? ", " : " ") << m.programs[i].first << " -> ";
    if (syms.size() == 1 && m.stages == 1) {
      os << syms[0];
      continue;
    }
    os << "[";
    for (size_t s = 0; s < syms.size(); ++s)
      os << (s ? ", " : "") << syms[s];
    os << "]";
  }
  os << "\n";

  int64_t paramElems = 0, paramBytes = 0;
  for (const auto &p : m.params) {
    paramElems += p.elements;
    paramBytes += p.bytes;
  }
  size_t nameWidth = 4, typeWidth = 4;
  for (const auto &p : m.params) {
    nameWidth = std::max(nameWidth, p.name.size());
    typeWidth = std::max(typeWidth, formatTensorType(p.dtype, p.shape).size());
  }
  for (const auto &b : m.state) {
    nameWidth = std::max(nameWidth, b.name.size());
    typeWidth = std::max(typeWidth, formatTensorType(b.dtype, b.shape).size());
  }
  for (const auto &b : m.inputs) {
    nameWidth = std::max(nameWidth, b.name.size());
    typeWidth = std::max(typeWidth, formatTensorType(b.dtype, b.shape).size());
  }
  os << "  params    " << m.params.size() << " tensors, "
     << formatCount(paramElems) << " elements (" << formatBytes(paramBytes)
     << ")\n";
  for (const auto &p : m.params) {
    std::string init = p.init;
    if (!p.initArgs.empty()) {
      init += "(";
      for (size_t i = 0; i < p.initArgs.size(); ++i)
        init += (i ? ", " : "") + json::formatNumber(p.initArgs[i]);
      init += ")";
    }
    std::string shard;
    if (!p.shard.empty()) {
      shard = "shard(";
      for (size_t i = 0; i < p.shard.size(); ++i)
        shard += (i ? ", " : "") + p.shard[i];
      shard += ")";
    }
    os << "    " << pad(p.name, nameWidth) << "  "
       << pad(formatTensorType(p.dtype, p.shape), typeWidth) << "  "
       << pad(init, 14) << " " << pad(shard, 12) << " @ " << p.offset
       << stageOf(p) << sliceOf(p) << "\n";
  }
  auto buffers = [&](const char *title, const std::vector<Buffer> &v) {
    int64_t bytes = 0;
    for (const auto &b : v)
      bytes += b.bytes;
    os << "  " << pad(title, 9) << " " << v.size() << " tensors ("
       << formatBytes(bytes) << ")\n";
    for (const auto &b : v)
      os << "    " << pad(b.name, nameWidth) << "  "
         << pad(formatTensorType(b.dtype, b.shape), typeWidth) << "  @ "
         << b.offset << stageOf(b) << sliceOf(b) << "\n";
  };
  buffers("state", m.state);
  buffers("inputs", m.inputs);
  os << "  outputs  ";
  for (size_t i = 0; i < m.outputs.size(); ++i)
    os << (i ? ", " : " ") << m.outputs[i].first << " @ "
       << m.outputs[i].second;
  os << "\n";
  os << "  train    ";
  const json::Object &train = m.train.asObject();
  if (train.empty())
    os << " (none)";
  for (size_t i = 0; i < train.size(); ++i) {
    const json::Value &v = train[i].second;
    os << (i ? ", " : " ") << train[i].first << " "
       << (v.isString() ? v.asString() : json::write(v));
  }
  os << "\n";
  return os.str();
}

//===----------------------------------------------------------------------===//
// Loading
//===----------------------------------------------------------------------===//

std::unique_ptr<Artifact> Artifact::load(const std::string &path) {
  std::unique_ptr<Artifact> a(new Artifact());
  a->path_ = path;
  a->manifest_ = readArtifact(path);
  try {
    checkCpuFeatures(a->manifest_);
  } catch (const Error &e) {
    throw Error(path + ": " + e.what());
  }
  // dlopen searches the library path for a bare name; a path with a slash
  // is opened as given.
  std::string openPath =
      path.find('/') == std::string::npos ? "./" + path : path;
  dlerror();
  a->handle_ = dlopen(openPath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!a->handle_) {
    const char *why = dlerror();
    throw Error(path + ": cannot load the code image: " +
                (why ? why : "dlopen failed"));
  }
  for (const auto &[role, syms] : a->manifest_.programs) {
    std::vector<loom_program_fn> fns;
    for (size_t stage = 0; stage < syms.size(); ++stage) {
      const std::string &sym = syms[stage];
      dlerror();
      void *p = dlsym(a->handle_, sym.c_str());
      const char *why = dlerror();
      if (why || !p)
        throw Error(path + ": program " + role +
                    (syms.size() > 1 ? " of stage " + std::to_string(stage)
                                     : std::string()) +
                    ": symbol '" + sym + "' not found: " +
                    (why ? why : "null address"));
      fns.push_back(reinterpret_cast<loom_program_fn>(p));
    }
    a->programs_.emplace_back(role, std::move(fns));
  }
  return a;
}

Artifact::~Artifact() {
  if (handle_)
    dlclose(handle_);
}

loom_program_fn Artifact::program(const std::string &role,
                                  int64_t stage) const {
  for (const auto &[r, fns] : programs_)
    if (r == role)
      return stage >= 0 && size_t(stage) < fns.size() ? fns[size_t(stage)]
                                                      : nullptr;
  return nullptr;
}

} // namespace loom::runtime
