//===- Version.cpp - runtime build facts ----------------------------------===//
#include "runtime/Version.h"

namespace loom::runtime {

BuildFeatures buildFeatures() {
  return {LOOM_HAVE_MPI != 0, LOOM_HAVE_DNNL != 0, LOOM_HAVE_CUDA != 0};
}

std::string describeBuild() {
  BuildFeatures f = buildFeatures();
  auto yn = [](bool b) { return b ? "yes" : "no"; };
  return std::string("mpi=") + yn(f.mpi) + " dnnl=" + yn(f.dnnl) +
         " cuda=" + yn(f.cuda);
}

} // namespace loom::runtime
