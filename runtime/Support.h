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

} // namespace loom::runtime

#endif // LOOM_RUNTIME_SUPPORT_H
