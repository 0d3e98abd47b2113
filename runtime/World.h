//===- World.h - which rank this process is ---------------------*- C++ -*-===//
//
// One process per device. Under an MPI launcher (mpirun sets
// OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK) and with MPI compiled in, the
// world comes from MPI; otherwise the process is rank 0 of 1. A launch as
// several ranks by a runtime built without MPI is an error, not N copies of
// rank 0.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_WORLD_H
#define LOOM_RUNTIME_WORLD_H

namespace loom::runtime {

struct World {
  int rank = 0;
  int size = 1;
  bool mpi = false; ///< MPI was initialised (and must be finalised)
};

/// Starts MPI where launched under it. Throws Error when the launcher asked
/// for several ranks and this build has no MPI.
World initWorld(int *argc, char ***argv);
/// Finalises MPI when it was started.
void finalizeWorld(const World &w);
/// Ends every rank (MPI_Abort under MPI, exit otherwise).
[[noreturn]] void abortWorld(const World &w, int code);

} // namespace loom::runtime

#endif // LOOM_RUNTIME_WORLD_H
