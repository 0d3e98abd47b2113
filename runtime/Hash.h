//===- Hash.h - FNV-1a 64 ---------------------------------------*- C++ -*-===//
//
// One hash for two jobs: the artifact checksum (ARTIFACT.md) and the random
// stream of a parameter (fnv1a64 of its name, SEMANTICS.md).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_HASH_H
#define LOOM_RUNTIME_HASH_H

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace loom::runtime {

constexpr uint64_t kFnv1a64Offset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnv1a64Prime = 0x100000001b3ull;

/// FNV-1a 64 of `n` bytes, continuing from `h` (pass a previous result to
/// hash a file in pieces).
inline uint64_t fnv1a64(const void *data, size_t n,
                        uint64_t h = kFnv1a64Offset) {
  const unsigned char *p = static_cast<const unsigned char *>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnv1a64Prime;
  }
  return h;
}

inline uint64_t fnv1a64(std::string_view s) {
  return fnv1a64(s.data(), s.size());
}

} // namespace loom::runtime

#endif // LOOM_RUNTIME_HASH_H
