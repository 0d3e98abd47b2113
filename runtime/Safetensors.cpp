//===- Safetensors.cpp - reading and writing .safetensors files -----------===//
#include "runtime/Safetensors.h"

#include "runtime/Hash.h"
#include "runtime/Json.h"
#include "runtime/Support.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace loom::runtime::safetensors {

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
    {DType::F64, "F64", 8},   {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
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

bool parseDType(std::string_view name, DType &out) {
  for (const auto &d : kDTypes)
    if (name == d.name) {
      out = d.type;
      return true;
    }
  return false;
}

std::string formatShape(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

const TensorInfo *Header::find(std::string_view name) const {
  if (!byName.empty()) {
    auto it = byName.find(std::string(name));
    return it == byName.end() ? nullptr : &tensors[it->second];
  }
  for (const TensorInfo &t : tensors)
    if (t.name == name)
      return &t;
  return nullptr;
}

const std::string *Header::meta(std::string_view key) const {
  for (const auto &[k, v] : metadata)
    if (k == key)
      return &v;
  return nullptr;
}

//===----------------------------------------------------------------------===//
// Reading
//===----------------------------------------------------------------------===//

/// Elements times element size may not exceed this: far beyond any file,
/// and small enough that no sum of two sizes overflows.
static constexpr uint64_t kMaxTensorBytes = uint64_t(1) << 62;

uint64_t checkHeaderLength(const unsigned char first8[8], uint64_t fileSize) {
  if (fileSize < 8)
    throw Error("file is " + std::to_string(fileSize) +
                " bytes, shorter than the 8-byte header length: not a "
                "safetensors file");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = n << 8 | first8[i];
  if (n > kMaxHeaderBytes)
    throw Error("header length " + std::to_string(n) +
                " exceeds the limit of " + std::to_string(kMaxHeaderBytes) +
                " bytes: corrupted or not a safetensors file");
  if (n > fileSize - 8)
    throw Error("header length " + std::to_string(n) +
                " runs past the end of the file (" + std::to_string(fileSize) +
                " bytes): truncated or not a safetensors file");
  if (n < 2)
    throw Error("header length " + std::to_string(n) +
                " is too short for a JSON object");
  return n;
}

namespace {

[[noreturn]] void failTensor(const std::string &name, const std::string &why) {
  throw Error("tensor '" + name + "': " + why);
}

uint64_t nonNegative(const json::Value &v, const std::string &name,
                     const char *what) {
  if (!v.isInt() || v.asInt() < 0)
    failTensor(name, std::string(what) +
                         " must hold non-negative integers, found " +
                         (v.isNumber() ? json::write(v) : v.kindName()));
  return static_cast<uint64_t>(v.asInt());
}

TensorInfo readTensor(const std::string &name, const json::Value &v,
                      uint64_t dataBytes) {
  if (!v.isObject())
    failTensor(name, std::string("expected an object, found ") + v.kindName());
  TensorInfo t;
  t.name = name;
  const json::Value *dtype = v.find("dtype");
  if (!dtype || !dtype->isString())
    failTensor(name, "'dtype' missing or not a string");
  if (!parseDType(dtype->asString(), t.dtype))
    failTensor(name, "unknown dtype '" + dtype->asString() +
                         "' (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  const json::Value *shape = v.find("shape");
  if (!shape || !shape->isArray())
    failTensor(name, "'shape' missing or not an array");
  uint64_t size = dtypeSize(t.dtype), bytes = size;
  bool zero = false;
  for (const json::Value &d : shape->asArray()) {
    uint64_t dim = nonNegative(d, name, "'shape'");
    t.shape.push_back(static_cast<int64_t>(dim));
    if (dim == 0)
      zero = true;
    else if (!zero && bytes > kMaxTensorBytes / dim)
      failTensor(name, "shape " + formatShape(t.shape) + " is too large");
    else if (!zero)
      bytes *= dim;
  }
  if (zero)
    bytes = 0;
  t.elements = bytes / size;
  const json::Value *offsets = v.find("data_offsets");
  if (!offsets || !offsets->isArray() || offsets->asArray().size() != 2)
    failTensor(name, "'data_offsets' missing or not [begin, end]");
  t.begin = nonNegative(offsets->asArray()[0], name, "'data_offsets'");
  t.end = nonNegative(offsets->asArray()[1], name, "'data_offsets'");
  if (t.end < t.begin)
    failTensor(name, "data_offsets [" + std::to_string(t.begin) + ", " +
                         std::to_string(t.end) + "] end before they begin");
  if (t.end > dataBytes)
    failTensor(name, "data_offsets [" + std::to_string(t.begin) + ", " +
                         std::to_string(t.end) + "] run past the " +
                         std::to_string(dataBytes) +
                         " bytes of data (truncated file?)");
  if (t.end - t.begin != bytes)
    failTensor(name, "data_offsets [" + std::to_string(t.begin) + ", " +
                         std::to_string(t.end) + "] hold " +
                         std::to_string(t.end - t.begin) + " bytes, " +
                         dtypeName(t.dtype) + formatShape(t.shape) + " needs " +
                         std::to_string(bytes));
  return t;
}

} // namespace

Header parseHeader(std::string_view text, uint64_t dataBytes) {
  json::ParseOptions opts;
  opts.maxBytes = kMaxHeaderBytes;
  opts.maxDepth = 8; // {"name": {"shape": [...]}} is three levels deep
  json::Value doc;
  try {
    doc = json::parse(text, opts);
  } catch (const json::ParseError &e) {
    throw Error(std::string("header: malformed JSON at ") + e.what());
  }
  if (!doc.isObject())
    throw Error(std::string("header: expected a JSON object, found ") +
                doc.kindName());
  Header h;
  h.headerBytes = text.size();
  h.dataStart = 8 + text.size();
  h.dataBytes = dataBytes;
  for (const auto &[name, value] : doc.asObject()) {
    if (name == "__metadata__") {
      if (!value.isObject())
        throw Error(std::string("header: __metadata__ must be an object, "
                                "found ") +
                    value.kindName());
      for (const auto &[k, v] : value.asObject()) {
        if (!v.isString())
          throw Error("header: __metadata__." + k +
                      " must be a string, found " + v.kindName());
        h.metadata.emplace_back(k, v.asString());
      }
      continue;
    }
    h.tensors.push_back(readTensor(name, value, dataBytes));
  }
  // The format requires the tensors to tile the data exactly: no byte
  // shared, none unused. (Zero-byte tensors may sit anywhere on the way.)
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const TensorInfo &a, const TensorInfo &b) {
              if (a.begin != b.begin)
                return a.begin < b.begin;
              return a.end != b.end ? a.end < b.end : a.name < b.name;
            });
  uint64_t covered = 0;
  const TensorInfo *last = nullptr; // the tensor ending at `covered`
  for (const TensorInfo &t : h.tensors) {
    if (t.begin < covered)
      failTensor(t.name, "data [" + std::to_string(t.begin) + ", " +
                             std::to_string(t.end) + ") overlaps tensor '" +
                             last->name + "' [" + std::to_string(last->begin) +
                             ", " + std::to_string(last->end) + ")");
    if (t.begin > covered)
      failTensor(t.name, "data starts at " + std::to_string(t.begin) +
                             ", leaving bytes [" + std::to_string(covered) +
                             ", " + std::to_string(t.begin) +
                             ") of the data unused (a gap)");
    covered = t.end;
    last = &t;
  }
  if (covered != dataBytes)
    throw Error("the tensors cover " + std::to_string(covered) + " of the " +
                std::to_string(dataBytes) + " data bytes; " +
                std::to_string(dataBytes - covered) +
                " trailing bytes belong to no tensor");
  for (size_t i = 0; i < h.tensors.size(); ++i)
    h.byName.emplace(h.tensors[i].name, i);
  return h;
}

int64_t firstNonFinite(DType t, const void *data, uint64_t elements) {
  const unsigned char *p = static_cast<const unsigned char *>(data);
  switch (t) {
  case DType::F64:
    for (uint64_t i = 0; i < elements; ++i) {
      uint64_t bits;
      std::memcpy(&bits, p + 8 * i, 8);
      if ((bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull)
        return static_cast<int64_t>(i);
    }
    return -1;
  case DType::F32:
    for (uint64_t i = 0; i < elements; ++i) {
      uint32_t bits;
      std::memcpy(&bits, p + 4 * i, 4);
      if ((bits & 0x7f800000u) == 0x7f800000u)
        return static_cast<int64_t>(i);
    }
    return -1;
  case DType::F16:
  case DType::BF16: {
    uint16_t mask = t == DType::F16 ? 0x7c00 : 0x7f80;
    for (uint64_t i = 0; i < elements; ++i) {
      uint16_t bits;
      std::memcpy(&bits, p + 2 * i, 2);
      if ((bits & mask) == mask)
        return static_cast<int64_t>(i);
    }
    return -1;
  }
  default:
    return -1;
  }
}

static std::string nonFiniteMessage(const TensorInfo &t, const void *data,
                                    int64_t at) {
  const unsigned char *p = static_cast<const unsigned char *>(data);
  bool nan = false;
  size_t size = dtypeSize(t.dtype);
  if (t.dtype == DType::F64) {
    uint64_t b;
    std::memcpy(&b, p + size * at, 8);
    nan = (b & 0x000fffffffffffffull) != 0;
  } else if (t.dtype == DType::F32) {
    uint32_t b;
    std::memcpy(&b, p + size * at, 4);
    nan = (b & 0x007fffffu) != 0;
  } else {
    uint16_t b;
    std::memcpy(&b, p + size * at, 2);
    nan = (b & (t.dtype == DType::F16 ? 0x03ff : 0x007f)) != 0;
  }
  return "tensor '" + t.name + "' holds " + (nan ? "NaN" : "an infinity") +
         " at element " + std::to_string(at);
}

Header validateBytes(const unsigned char *data, size_t size, bool checkFinite) {
  unsigned char first8[8] = {0};
  std::memcpy(first8, data, std::min<size_t>(size, 8));
  uint64_t n = checkHeaderLength(first8, size);
  Header h =
      parseHeader(std::string_view(reinterpret_cast<const char *>(data + 8), n),
                  size - 8 - n);
  if (checkFinite)
    for (const TensorInfo &t : h.tensors) {
      const unsigned char *p = data + h.dataStart + t.begin;
      int64_t at = firstNonFinite(t.dtype, p, t.elements);
      if (at >= 0)
        throw Error(nonFiniteMessage(t, p, at));
    }
  return h;
}

/// Reads exactly `n` bytes at `offset`; false at the end of the file.
static bool preadAll(int fd, void *out, uint64_t n, uint64_t offset) {
  unsigned char *p = static_cast<unsigned char *>(out);
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    ssize_t got = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      throw Error(std::string("read failed: ") + std::strerror(errno));
    if (got == 0)
      return false;
    p += got;
    n -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

std::unique_ptr<Reader> Reader::open(const std::string &path) {
  std::unique_ptr<Reader> r(new Reader());
  r->path_ = path;
  try {
    r->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (r->fd_ < 0)
      throw Error(std::string("cannot open: ") + std::strerror(errno));
    struct stat st;
    if (fstat(r->fd_, &st) != 0)
      throw Error(std::string("cannot stat: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode))
      throw Error("not a regular file");
    uint64_t size = static_cast<uint64_t>(st.st_size);
    unsigned char first8[8] = {0};
    if (size >= 8 && !preadAll(r->fd_, first8, 8, 0))
      throw Error("the file shrank while being read");
    uint64_t n = checkHeaderLength(first8, size);
    std::string text(n, '\0');
    if (!preadAll(r->fd_, text.data(), n, 8))
      throw Error("the file shrank while being read");
    r->header_ = parseHeader(text, size - 8 - n);
  } catch (const Error &e) {
    throw Error(path + ": " + e.what());
  }
  return r;
}

Reader::~Reader() {
  if (fd_ >= 0)
    ::close(fd_);
}

void Reader::read(const TensorInfo &t, void *out, bool checkFinite) const {
  try {
    if (!preadAll(fd_, out, t.bytes(), header_.dataStart + t.begin))
      throw Error("tensor '" + t.name +
                  "': the file ends before its data (truncated while open?)");
  } catch (const Error &e) {
    throw Error(path_ + ": " + e.what());
  }
  if (checkFinite) {
    int64_t at = firstNonFinite(t.dtype, out, t.elements);
    if (at >= 0)
      throw Error(path_ + ": " + nonFiniteMessage(t, out, at));
  }
}

//===----------------------------------------------------------------------===//
// Writing
//===----------------------------------------------------------------------===//

namespace {

struct Planned {
  const TensorData *tensor;
  uint64_t bytes;
};

/// The tensors in name order with their sizes, checked.
std::vector<Planned> plan(const std::vector<TensorData> &tensors) {
  std::vector<Planned> out;
  for (const TensorData &t : tensors) {
    if (t.name == "__metadata__")
      throw Error("tensor name '__metadata__' is reserved by the format");
    uint64_t bytes = dtypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0)
        throw Error("tensor '" + t.name + "': negative dimension in " +
                    formatShape(t.shape));
      if (d != 0 && bytes > kMaxTensorBytes / uint64_t(d))
        throw Error("tensor '" + t.name + "': shape too large");
      bytes *= uint64_t(d);
    }
    if (bytes && !t.data)
      throw Error("tensor '" + t.name + "': no data");
    out.push_back({&t, bytes});
  }
  std::sort(out.begin(), out.end(), [](const Planned &a, const Planned &b) {
    return a.tensor->name < b.tensor->name;
  });
  for (size_t i = 1; i < out.size(); ++i)
    if (out[i].tensor->name == out[i - 1].tensor->name)
      throw Error("tensor '" + out[i].tensor->name + "' given twice");
  return out;
}

std::string
headerFor(const std::vector<Planned> &planned,
          const std::vector<std::pair<std::string, std::string>> &metadata) {
  json::Object root;
  if (!metadata.empty()) {
    json::Object meta;
    for (const auto &[k, v] : metadata)
      meta.emplace_back(k, json::Value(v));
    root.emplace_back("__metadata__", json::Value(std::move(meta)));
  }
  uint64_t at = 0;
  for (const Planned &p : planned) {
    json::Array shape;
    for (int64_t d : p.tensor->shape)
      shape.emplace_back(d);
    json::Array offsets{json::Value(static_cast<int64_t>(at)),
                        json::Value(static_cast<int64_t>(at + p.bytes))};
    root.emplace_back(p.tensor->name,
                      json::Value(json::Object{
                          {"dtype", json::Value(dtypeName(p.tensor->dtype))},
                          {"shape", json::Value(std::move(shape))},
                          {"data_offsets", json::Value(std::move(offsets))}}));
    at += p.bytes;
  }
  std::string text = json::write(json::Value(std::move(root)));
  // Pad so that the data starts 8-byte aligned (the reference writer does
  // the same, with spaces).
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes)
    throw Error("the header would be " + std::to_string(text.size()) +
                " bytes, over the format's limit");
  return text;
}

void lengthPrefix(uint64_t n, unsigned char out[8]) {
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<unsigned char>(n >> (8 * i));
}

} // namespace

std::string
encodeHeader(const std::vector<TensorData> &tensors,
             const std::vector<std::pair<std::string, std::string>> &metadata) {
  return headerFor(plan(tensors), metadata);
}

std::vector<unsigned char>
encode(const std::vector<TensorData> &tensors,
       const std::vector<std::pair<std::string, std::string>> &metadata) {
  std::vector<Planned> planned = plan(tensors);
  std::string header = headerFor(planned, metadata);
  std::vector<unsigned char> out(8 + header.size());
  lengthPrefix(header.size(), out.data());
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (const Planned &p : planned) {
    if (p.bytes == 0)
      continue;
    size_t at = out.size();
    out.resize(at + p.bytes);
    std::memcpy(out.data() + at, p.tensor->data, p.bytes);
  }
  return out;
}

static std::string parentOf(const std::string &path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos)
    return ".";
  if (slash == 0)
    return "/";
  return path.substr(0, slash);
}

WriteResult
write(const std::string &path, const std::vector<TensorData> &tensors,
      const std::vector<std::pair<std::string, std::string>> &metadata) {
  std::vector<Planned> planned;
  std::string header;
  try {
    planned = plan(tensors);
    header = headerFor(planned, metadata);
  } catch (const Error &e) {
    throw Error(path + ": " + e.what());
  }
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw Error(path + ": cannot create " + tmp + ": " + std::strerror(errno));
  WriteResult result;
  result.fnv1a64 = kFnv1a64Offset;
  auto put = [&](const void *data, uint64_t n) {
    result.fnv1a64 = fnv1a64(data, static_cast<size_t>(n), result.fnv1a64);
    const unsigned char *p = static_cast<const unsigned char *>(data);
    while (n > 0) {
      size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
      ssize_t done = ::write(fd, p, chunk);
      if (done < 0 && errno == EINTR)
        continue;
      if (done < 0)
        throw Error(std::string("write failed: ") + std::strerror(errno));
      p += done;
      n -= static_cast<uint64_t>(done);
      result.bytes += static_cast<uint64_t>(done);
    }
  };
  try {
    unsigned char prefix[8];
    lengthPrefix(header.size(), prefix);
    put(prefix, 8);
    put(header.data(), header.size());
    for (const Planned &p : planned)
      put(p.tensor->data, p.bytes);
    if (::fsync(fd) != 0)
      throw Error(std::string("fsync failed: ") + std::strerror(errno));
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0)
      throw Error(std::string("close failed: ") + std::strerror(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw Error("cannot rename " + tmp +
                  " into place: " + std::strerror(errno));
  } catch (const Error &e) {
    if (fd >= 0)
      ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(path + ": " + e.what());
  }
  // The rename is durable once the folder is synced.
  int dir = ::open(parentOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return result;
}

} // namespace loom::runtime::safetensors
