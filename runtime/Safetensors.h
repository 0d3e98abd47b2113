//===- Safetensors.h - reading and writing .safetensors files ---*- C++ -*-===//
//
// The safetensors format (Hugging Face): an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON
//
//   {"__metadata__": {"model": "Gpt"},
//    "wte": {"dtype": "F32", "shape": [256, 32], "data_offsets": [0, 32768]},
//    ...}
//
// then the data, each tensor row-major little-endian at [begin, end) relative
// to the start of the data. Files come from other tools and other machines,
// so the reader trusts nothing before it has checked it: the header length
// (at most 100 MB, inside the file), strict JSON (runtime/Json: duplicate
// names are errors), known dtypes, non-negative shapes, `end - begin ==
// numel * dtype size`, offsets inside the data, tensors neither overlapping
// nor leaving gaps (the format requires the data to be covered
// contiguously, which is also what makes a truncated file detectable).
// Tensor bytes are read straight into the caller's memory, so a large file
// is never held twice.
//
// The writer puts the tensors in name order, pads the header with spaces to
// a multiple of 8 bytes (so the data is aligned), writes a temporary file
// beside the target, fsyncs it and renames it over the target, then fsyncs
// the folder: a reader sees the old file or the new one, never a torn one.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_SAFETENSORS_H
#define LOOM_RUNTIME_SAFETENSORS_H

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace loom::runtime::safetensors {

/// The header length this reader accepts at most (the reference reader's).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

/// Element types the format defines (a subset of the Rust crate's: the ones
/// PyTorch writes).
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };
/// "F32", "BF16", ...
const char *dtypeName(DType t);
size_t dtypeSize(DType t);
/// Parses "F32", ...; false for a name outside the list.
bool parseDType(std::string_view name, DType &out);
/// "[256, 32]".
std::string formatShape(const std::vector<int64_t> &shape);

/// One tensor as the header describes it.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0; ///< relative to the start of the data
  uint64_t elements = 1;       ///< product of shape (1 for a scalar)
  uint64_t bytes() const { return end - begin; }
};

/// A validated header.
struct Header {
  /// In the order of their data (ascending offsets).
  std::vector<TensorInfo> tensors;
  /// `__metadata__`, in document order (string values only).
  std::vector<std::pair<std::string, std::string>> metadata;
  uint64_t headerBytes = 0; ///< N
  uint64_t dataStart = 0;   ///< 8 + N
  uint64_t dataBytes = 0;   ///< file size - 8 - N

  const TensorInfo *find(std::string_view name) const;
  /// A metadata value, or null.
  const std::string *meta(std::string_view key) const;

  /// Name -> index into `tensors` (parseHeader fills it; find() falls back
  /// to a scan when it is empty).
  std::unordered_map<std::string, size_t> byName;
};

/// Validates the header JSON of a file whose data part is `dataBytes` long.
/// Throws Error with the cause only ("tensor 'w1': ...").
Header parseHeader(std::string_view json, uint64_t dataBytes);

/// Validates the first 8 bytes and the header length against a file of
/// `fileSize` bytes; returns N. Throws Error with the cause only.
uint64_t checkHeaderLength(const unsigned char first8[8], uint64_t fileSize);

/// The first non-finite value of a float tensor: its element index, or -1
/// when every value is finite (and for non-float dtypes).
int64_t firstNonFinite(DType t, const void *data, uint64_t elements);

/// Validates a whole file held in memory: header, layout and, with
/// `checkFinite`, every float value. Throws Error with the cause only.
/// (The fuzzer's and the tests' entry point.)
Header validateBytes(const unsigned char *data, size_t size,
                     bool checkFinite = false);

/// An open, validated safetensors file whose tensors are read on demand.
class Reader {
public:
  /// Opens `path` and validates its header against the file's size. Throws
  /// Error "PATH: cause".
  static std::unique_ptr<Reader> open(const std::string &path);
  ~Reader();
  Reader(const Reader &) = delete;
  Reader &operator=(const Reader &) = delete;

  const std::string &path() const { return path_; }
  const Header &header() const { return header_; }
  /// Reads tensor `t` (of this file's header) into `out`, which holds
  /// t.bytes() bytes. With `checkFinite`, a NaN or infinity in a float tensor
  /// is an error naming the tensor and the element. Throws Error "PATH:
  /// cause".
  void read(const TensorInfo &t, void *out, bool checkFinite = false) const;

private:
  Reader() = default;
  std::string path_;
  int fd_ = -1;
  Header header_;
};

/// One tensor to write; `data` holds numel * dtypeSize(dtype) bytes.
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void *data = nullptr;
};

/// What a write produced: the file's size and its FNV-1a 64 (a checkpoint
/// index records both, to recognise a damaged file later).
struct WriteResult {
  uint64_t bytes = 0;
  uint64_t fnv1a64 = 0;
};

/// The header text for `tensors` (sorted by name, data in that order) and
/// `metadata`, padded with spaces so that 8 + its size is a multiple of 8.
/// Throws Error for duplicate or reserved names, negative dims or a size
/// mismatch.
std::string
encodeHeader(const std::vector<TensorData> &tensors,
             const std::vector<std::pair<std::string, std::string>> &metadata);

/// The whole file in memory (tests, the fuzzer's seeds).
std::vector<unsigned char>
encode(const std::vector<TensorData> &tensors,
       const std::vector<std::pair<std::string, std::string>> &metadata = {});

/// Writes `path` atomically: a temporary file beside it, fsync, rename,
/// fsync of the folder. On failure the temporary file is removed and an
/// existing `path` is untouched. Throws Error "PATH: cause".
WriteResult
write(const std::string &path, const std::vector<TensorData> &tensors,
      const std::vector<std::pair<std::string, std::string>> &metadata = {});

} // namespace loom::runtime::safetensors

#endif // LOOM_RUNTIME_SAFETENSORS_H
