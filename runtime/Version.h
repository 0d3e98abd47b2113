//===- Version.h - runtime build facts --------------------------*- C++ -*-===//
//
// What this build of the runtime can do. The artifact format version lives
// here too once artifacts exist: the runtime owns the contract.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_VERSION_H
#define LOOM_RUNTIME_VERSION_H

#include <string>

namespace loom::runtime {

/// Which optional back ends this runtime was built with.
struct BuildFeatures {
  bool mpi;
  bool dnnl;
  bool cuda;
};

BuildFeatures buildFeatures();
/// "mpi=yes dnnl=yes cuda=no".
std::string describeBuild();

} // namespace loom::runtime

#endif // LOOM_RUNTIME_VERSION_H
