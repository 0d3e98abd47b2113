//===- Collectives.cpp - mesh communicators and the collective ABI --------===//
//
// CommMesh (one MPI communicator per axis group, split once at start-up) and
// loom_all_reduce, loom_all_gather, loom_reduce_scatter, loom_broadcast.
//
// Determinism: each collective runs on a fixed communicator with a fixed
// count and datatype, so Open MPI's tuned component picks the same algorithm
// and the same reduction tree every call; the order in which partial sums
// are combined depends on ranks and sizes only, never on message timing.
// The same call on the same data therefore gives bitwise the same result,
// on every member of the group. (MPI leaves this to the implementation; Open
// MPI 4.x's tuned/basic collectives behave so, MPICH's default ones too.)
//
// Every rank must make the same calls in the same order: a rank that skips
// one (after an argument error every rank meets alike, the arguments being
// the same SPMD values) skips it everywhere, so no rank is left waiting.
// Collectives run even after a kernel has reported an error, for the same
// reason. Calls come from the thread that initialised MPI (FUNNELED).
//
//===----------------------------------------------------------------------===//
#include "runtime/Collectives.h"

#include "runtime/Context.h"
#include "runtime/Support.h"

#include <climits>
#include <cstring>
#include <string>

#if LOOM_HAVE_MPI
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace loom::runtime {

struct CommMesh::Comms {
#if LOOM_HAVE_MPI
  /// MPI_COMM_NULL for groups of one rank (no communication needed).
  std::array<MPI_Comm, 3> axis{MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL};
#endif
};

const char *meshAxisName(int32_t axis) {
  switch (axis) {
  case kAxisDP:
    return "dp";
  case kAxisTP:
    return "tp";
  case kAxisPP:
    return "pp";
  default:
    return "axis out of range";
  }
}

#if LOOM_HAVE_MPI
static std::string mpiErrorText(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
    return "MPI error " + std::to_string(rc);
  return std::string(text, len);
}
#endif

CommMesh::CommMesh(int64_t dp, int64_t tp, int64_t pp, int worldRank,
                   int worldSize)
    : worldRank_(worldRank), worldSize_(worldSize),
      comms_(std::make_unique<Comms>()) {
  std::string shape = "dp=" + std::to_string(dp) + " tp=" +
                      std::to_string(tp) + " pp=" + std::to_string(pp);
  if (dp < 1 || tp < 1 || pp < 1 || dp * tp * pp > INT_MAX)
    throw Error("mesh " + shape + ": every axis needs at least one rank");
  if (dp * tp * pp != worldSize)
    throw Error("mesh " + shape + " has " + std::to_string(dp * tp * pp) +
                " ranks, the world " + std::to_string(worldSize));
  if (worldRank < 0 || worldRank >= worldSize)
    throw Error("rank " + std::to_string(worldRank) + " outside a world of " +
                std::to_string(worldSize));
  sizes_ = {int(dp), int(tp), int(pp)};
  // Inverse of rank = ((d * tp) + t) * pp + p.
  coords_ = {int(worldRank / (tp * pp)), int(worldRank / pp % tp),
             int(worldRank % pp)};
  if (worldSize == 1)
    return;
#if LOOM_HAVE_MPI
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised)
    throw Error("mesh " + shape + ": MPI is not initialised (launch under "
                                  "mpirun)");
  for (int32_t axis = 0; axis < 3; ++axis) {
    // Every rank takes part in every split (MPI_Comm_split is collective over
    // MPI_COMM_WORLD), even where its own group has one member.
    // color: the other two coordinates; key: the coordinate on this axis,
    // so the group's ranks are ordered by it.
    std::array<int, 3> c = coords_;
    c[axis] = 0;
    int color = int(rankAt(tp, pp, c[0], c[1], c[2]));
    MPI_Comm comm = MPI_COMM_NULL;
    int rc = MPI_Comm_split(MPI_COMM_WORLD, color, coords_[axis], &comm);
    if (rc != MPI_SUCCESS)
      throw Error(std::string("mesh ") + shape + ": MPI_Comm_split for " +
                  meshAxisName(axis) + " failed: " + mpiErrorText(rc));
    // Report through loom_error rather than abort on a failing collective.
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int groupRank = -1, groupSize = 0;
    MPI_Comm_rank(comm, &groupRank);
    MPI_Comm_size(comm, &groupSize);
    comms_->axis[axis] = comm;
    if (groupRank != coords_[axis] || groupSize != sizes_[axis])
      throw Error(std::string("mesh ") + shape + ": the " +
                  meshAxisName(axis) + " group of rank " +
                  std::to_string(worldRank) + " has rank " +
                  std::to_string(groupRank) + " of " +
                  std::to_string(groupSize) + ", expected " +
                  std::to_string(coords_[axis]) + " of " +
                  std::to_string(sizes_[axis]));
  }
#else
  throw Error("mesh " + shape + " needs " + std::to_string(worldSize) +
              " ranks, but this runtime was built without MPI (install "
              "libopenmpi-dev and rebuild)");
#endif
}

CommMesh::~CommMesh() {
#if LOOM_HAVE_MPI
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (finalised)
    return;
  for (MPI_Comm &comm : comms_->axis)
    if (comm != MPI_COMM_NULL)
      MPI_Comm_free(&comm);
#endif
}

} // namespace loom::runtime

using loom::runtime::CommMesh;
using loom::runtime::meshAxisName;
#if LOOM_HAVE_MPI
using loom::runtime::mpiErrorText;
#endif

namespace {

/// One call's axis group, resolved and checked.
struct Group {
  int size = 1, rank = 0;
#if LOOM_HAVE_MPI
  MPI_Comm comm = MPI_COMM_NULL;
#endif
};

void report(loom_ctx *ctx, const char *op, int32_t axis,
            const std::string &cause) {
  std::string message = std::string("axis ") + meshAxisName(axis) + ": " +
                        cause;
  if (axis < 0 || axis > 2)
    message = "axis " + std::to_string(axis) + " (0 dp, 1 tp, 2 pp): " + cause;
  loom_error(ctx, op, message.c_str());
}

/// Checks what every collective shares and finds the group; false after
/// reporting an error.
bool resolve(loom_ctx *ctx, const char *op, int32_t axis, int64_t n,
             const void *a, const void *b, Group &g) {
  if (axis < 0 || axis > 2) {
    report(ctx, op, axis, "no such mesh axis");
    return false;
  }
  if (n < 0) {
    report(ctx, op, axis, "negative count " + std::to_string(n));
    return false;
  }
  if (n > INT_MAX) {
    report(ctx, op, axis,
           "count " + std::to_string(n) + " exceeds MPI's int counts");
    return false;
  }
  if (n > 0 && (!a || !b)) {
    report(ctx, op, axis, "null buffer");
    return false;
  }
  if (!ctx)
    return false; // loom_error above has nothing to record into either
  const auto *mesh = static_cast<const CommMesh *>(ctx->mesh);
  if (!mesh) {
    // No mesh: the world of one rank that a bare context describes.
    if (ctx->worldSize != 1) {
      report(ctx, op, axis,
             "the runtime set no mesh on a world of " +
                 std::to_string(ctx->worldSize) + " ranks");
      return false;
    }
    return true;
  }
  g.size = mesh->size(axis);
  g.rank = mesh->coord(axis);
#if LOOM_HAVE_MPI
  if (g.size > 1)
    g.comm = mesh->comms()->axis[axis];
#endif
  if (g.size > 1) {
#if LOOM_HAVE_MPI
    if (g.comm == MPI_COMM_NULL) {
      report(ctx, op, axis,
             "the group has " + std::to_string(g.size) +
                 " ranks but no communicator (MPI not initialised?)");
      return false;
    }
#else
    report(ctx, op, axis,
           "the group has " + std::to_string(g.size) +
               " ranks, but this runtime was built without MPI");
    return false;
#endif
  }
  return true;
}

#if LOOM_HAVE_MPI
bool check(loom_ctx *ctx, const char *op, int32_t axis, const char *call,
           int rc) {
  if (rc == MPI_SUCCESS)
    return true;
  report(ctx, op, axis, std::string(call) + " failed: " + mpiErrorText(rc));
  return false;
}
#endif

} // namespace

extern "C" void loom_all_reduce(loom_ctx *ctx, float *data, int64_t n,
                                int32_t axis, int32_t op) {
  const char *name = "loom_all_reduce";
  Group g;
  if (!resolve(ctx, name, axis, n, data, data, g))
    return;
  if (op != 0 && op != 1) {
    report(ctx, name, axis,
           "unknown reduction " + std::to_string(op) + " (0 sum, 1 max)");
    return;
  }
  if (g.size == 1 || n == 0)
    return;
#if LOOM_HAVE_MPI
  check(ctx, name, axis, "MPI_Allreduce",
        MPI_Allreduce(MPI_IN_PLACE, data, int(n), MPI_FLOAT,
                      op == 0 ? MPI_SUM : MPI_MAX, g.comm));
#endif
}

extern "C" void loom_all_gather(loom_ctx *ctx, const float *in, int64_t n,
                                float *out, int32_t axis) {
  const char *name = "loom_all_gather";
  Group g;
  if (!resolve(ctx, name, axis, n, in, out, g) || n == 0)
    return;
  if (g.size == 1) {
    std::memmove(out, in, size_t(n) * sizeof(float));
    return;
  }
#if LOOM_HAVE_MPI
  // `in` already at this rank's slot of `out` is MPI's in-place form.
  const void *send = in == out + int64_t(g.rank) * n ? MPI_IN_PLACE : in;
  check(ctx, name, axis, "MPI_Allgather",
        MPI_Allgather(send, int(n), MPI_FLOAT, out, int(n), MPI_FLOAT,
                      g.comm));
#endif
}

extern "C" void loom_reduce_scatter(loom_ctx *ctx, const float *in, int64_t n,
                                    float *out, int32_t axis) {
  const char *name = "loom_reduce_scatter";
  Group g;
  if (!resolve(ctx, name, axis, n, in, out, g) || n == 0)
    return;
  if (g.size == 1) {
    std::memmove(out, in, size_t(n) * sizeof(float));
    return;
  }
#if LOOM_HAVE_MPI
  if (in == out) {
    // In place: the whole input in `out`, this rank's block left at its start.
    check(ctx, name, axis, "MPI_Reduce_scatter_block",
          MPI_Reduce_scatter_block(MPI_IN_PLACE, out, int(n), MPI_FLOAT,
                                   MPI_SUM, g.comm));
    return;
  }
  check(ctx, name, axis, "MPI_Reduce_scatter_block",
        MPI_Reduce_scatter_block(in, out, int(n), MPI_FLOAT, MPI_SUM, g.comm));
#endif
}

extern "C" void loom_broadcast(loom_ctx *ctx, float *data, int64_t n,
                               int32_t axis, int32_t root) {
  const char *name = "loom_broadcast";
  Group g;
  if (!resolve(ctx, name, axis, n, data, data, g))
    return;
  if (root < 0 || root >= g.size) {
    report(ctx, name, axis,
           "root " + std::to_string(root) + " outside the group's " +
               std::to_string(g.size) + " rank" + (g.size == 1 ? "" : "s"));
    return;
  }
  if (g.size == 1 || n == 0)
    return;
#if LOOM_HAVE_MPI
  check(ctx, name, axis, "MPI_Bcast",
        MPI_Bcast(data, int(n), MPI_FLOAT, root, g.comm));
#endif
}

extern "C" int64_t loom_mesh_coord(loom_ctx *ctx, int32_t axis) {
  if (!ctx || !ctx->mesh || axis < 0 || axis > 2)
    return 0;
  return static_cast<const CommMesh *>(ctx->mesh)->coord(axis);
}
