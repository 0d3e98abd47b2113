//===- Support.h - the runtime's error type and small helpers ---*- C++ -*-===//
#ifndef LOOM_RUNTIME_SUPPORT_H
#define LOOM_RUNTIME_SUPPORT_H

#include <cstdint>
#include <stdexcept>
#include <string>

namespace loom::runtime {

/// A user-facing error: what() is one line saying what is wrong and, where
/// it helps, how to fix it. loom-run prints it and exits 1.
class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// "1.5 MiB", "512 B", "3.0 GiB".
std::string formatBytes(uint64_t bytes);

/// 1234567 -> "1,234,567".
std::string formatCount(uint64_t n);

/// Little-endian fields of the binary formats (artifact trailer, dataset).
inline uint32_t readU32(const unsigned char *p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 |
         uint32_t(p[3]) << 24;
}
inline uint64_t readU64(const unsigned char *p) {
  return uint64_t(readU32(p)) | uint64_t(readU32(p + 4)) << 32;
}
inline void putU32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline void putU64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    p[i] = static_cast<unsigned char>(v >> (8 * i));
}

} // namespace loom::runtime

#endif // LOOM_RUNTIME_SUPPORT_H
