//===- World.cpp - which rank this process is -----------------------------===//
#include "runtime/World.h"

#include "runtime/Support.h"

#include <cstdio>
#include <cstdlib>
#include <string>

#if LOOM_HAVE_MPI
// The C API only: Open MPI's and MPICH's C++ bindings need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace loom::runtime {

/// The world size an MPI launcher announced, or 0 when there was none.
static int launcherWorldSize() {
  for (const char *var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
                          "MPI_LOCALNRANKS", "SLURM_NTASKS"}) {
    if (const char *v = std::getenv(var)) {
      int n = std::atoi(v);
      if (n > 0 && std::string(var) != "SLURM_NTASKS")
        return n;
    }
  }
  // PMIx launchers may set only the rank.
  if (std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"))
    return 1;
  return 0;
}

World initWorld(int *argc, char ***argv) {
  World w;
  int launched = launcherWorldSize();
#if LOOM_HAVE_MPI
  if (launched > 0) {
    // MULTIPLE: the progress thread of loom_all_reduce_start and the
    // watchdog (MPI_Abort) call MPI beside the thread running the program.
    // Where the library offers less, the non-blocking reductions run inside
    // their wait instead (Collectives.cpp).
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) !=
        MPI_SUCCESS)
      throw Error("MPI_Init_thread failed");
    w.mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  }
#else
  (void)argc;
  (void)argv;
  if (launched > 1)
    throw Error("launched as " + std::to_string(launched) +
                " ranks, but this loom-run was built without MPI (install "
                "libopenmpi-dev and rebuild)");
#endif
  return w;
}

void finalizeWorld(const World &w) {
#if LOOM_HAVE_MPI
  if (w.mpi)
    MPI_Finalize();
#else
  (void)w;
#endif
}

void abortWorld(const World &w, int code) {
  std::fflush(stdout);
  std::fflush(stderr);
#if LOOM_HAVE_MPI
  if (w.mpi && w.size > 1)
    MPI_Abort(MPI_COMM_WORLD, code);
  if (w.mpi)
    MPI_Finalize();
#else
  (void)w;
#endif
  std::exit(code);
}

} // namespace loom::runtime
