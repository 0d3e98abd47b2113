//===- Collectives.h - the device mesh and its MPI communicators -*- C++ -*-===//
//
// The ranks of a run form a dp × tp × pp mesh (the manifest's `mesh`). World
// rank r sits at coordinates (d, t, p) with the row-major mapping
//
//   r = ((d · tp) + t) · pp + p
//
// so pp varies fastest. An axis group is the set of ranks that share the other
// two coordinates; a rank's position in its group is its coordinate on that
// axis. CommMesh splits MPI_COMM_WORLD once per axis at start-up; the
// loom_all_reduce / loom_all_gather / loom_reduce_scatter / loom_broadcast ABI
// functions (runtime/abi/loom_abi.h) run on those communicators, reached
// through loom_ctx::mesh, and so do the point-to-point loom_send / loom_recv
// between pipeline stages (neighbours on the pp axis).
//
// Without MPI (not compiled in, or not initialised because the process was
// not launched under mpirun) only a world of one rank is possible; every
// group then has one member and the collectives are copies.
//
// CommMesh also keeps the books on its collectives: a watchdog (a thread
// that ends the job with MPI_Abort when one does not complete within the
// timeout, naming the rank, step and collective), per-step time and payload
// accounting (loom-run's comm_ms), the progress thread behind
// loom_all_reduce_start / loom_all_reduce_wait, and the runtime's own
// collectives over the whole world (metrics, checkpoints, --save).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_COLLECTIVES_H
#define LOOM_RUNTIME_COLLECTIVES_H

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct loom_ctx;

namespace loom::runtime {

class Tracer;

/// The mesh axes, numbered as the ABI's `axis` argument.
enum MeshAxis : int32_t { kAxisDP = 0, kAxisTP = 1, kAxisPP = 2 };

/// "dp", "tp", "pp", or "axis N" for anything else.
const char *meshAxisName(int32_t axis);

/// The mesh's shape, this rank's place in it, and one communicator per axis
/// group. Named CommMesh because `Mesh` (Artifact.h) is the manifest's sizes.
class CommMesh {
public:
  /// Builds the mesh of world rank `worldRank` in a world of `worldSize`
  /// ranks. Collective over MPI_COMM_WORLD when worldSize > 1 (every rank must
  /// construct it, in the same order as any other communicator). Throws Error
  /// when dp·tp·pp != worldSize, a size is < 1, the rank is out of range, or
  /// the world has several ranks but MPI is missing or not initialised.
  CommMesh(int64_t dp, int64_t tp, int64_t pp, int worldRank, int worldSize);
  ~CommMesh();
  CommMesh(const CommMesh &) = delete;
  CommMesh &operator=(const CommMesh &) = delete;

  /// The row-major mapping above.
  static int64_t rankAt(int64_t tp, int64_t pp, int64_t d, int64_t t,
                        int64_t p) {
    return ((d * tp) + t) * pp + p;
  }

  int worldRank() const { return worldRank_; }
  int worldSize() const { return worldSize_; }
  /// Number of ranks along `axis` (the size of each of its groups).
  int size(int32_t axis) const { return sizes_[axis]; }
  /// This rank's coordinate on `axis`, which is its rank in that axis group.
  int coord(int32_t axis) const { return coords_[axis]; }

  //===--------------------------------------------------------------------===//
  // Watchdog and accounting
  //===--------------------------------------------------------------------===//

  /// Turns the watchdog on (seconds > 0) or off (0): from now on a
  /// collective of this rank that has not completed `seconds` after it
  /// started prints "loom-run: error: rank R, step S: collective all_reduce
  /// over dp (N floats) did not complete within T s; aborting the job" and
  /// calls MPI_Abort(MPI_COMM_WORLD, 1). A world of one rank has nothing to
  /// wait for and starts no thread.
  void setTimeout(double seconds);
  double timeout() const;
  /// The step that collectives of the runtime itself (not called with a
  /// context) are attributed to in the watchdog's message.
  void setStep(int64_t step);

  /// What this rank's collectives cost since the last takeStats(): the
  /// seconds the calling thread spent inside them (blocking collectives and
  /// loom_all_reduce_wait, so the part of a non-blocking reduction that
  /// overlapped computation is not counted), their payload bytes (this
  /// rank's input to each) and how many there were.
  struct Stats {
    double seconds = 0;
    int64_t bytes = 0;
    int64_t calls = 0;
  };
  Stats takeStats();

  /// loom-run --trace: from now on every collective and transfer watched
  /// here (the ABI's, the progress thread's, the runtime's own) is recorded
  /// into `tracer` while tracer->active(); nullptr stops it.
  void setTracer(Tracer *tracer);

  /// loom_send transfers not yet known to be complete.
  int64_t pendingSends() const;
  /// Waits for every pending loom_send (the runtime calls it after each
  /// program call: a send completes no later than the end of its step),
  /// watched as a collective is: one whose receiver never takes it ends the
  /// job naming the send. An MPI failure is reported through loom_error.
  void completeSends(loom_ctx *ctx);

  /// Non-blocking all-reduces started and not yet waited.
  int64_t pendingReductions() const;
  /// Waits for every pending one (after a program returned with some).
  void drainReductions(loom_ctx *ctx);

  //===--------------------------------------------------------------------===//
  // The runtime's own collectives over the whole world
  //===--------------------------------------------------------------------===//
  // Every rank calls each of these in the same order; each is watched.
  // `what` names it in the watchdog's message. Without MPI (one rank) they
  // are local. Throw Error on an MPI failure.

  void barrier(const char *what);
  /// v[i] = max over ranks of v[i], on every rank.
  void allReduceMax(double *v, int n, const char *what);
  /// Every rank's `mine`, in world rank order, on every rank.
  std::vector<std::string> allGather(const std::string &mine,
                                     const char *what);
  /// Every rank's `mine`, in world rank order, on rank 0 (MPI_Gatherv);
  /// other ranks get an empty vector.
  std::vector<std::string> gatherToRoot(const std::string &mine,
                                        const char *what);
  /// Rank 0 receives `bytes` bytes from rank `from` into `data`; rank `from`
  /// sends them from `data`. Both call it with the same arguments; other
  /// ranks must not. Any size (chunked under MPI's int counts).
  void sendToRoot(int from, void *data, uint64_t bytes, const char *what);

  /// The axis group's communicator: an `MPI_Comm` (only meaningful in an MPI
  /// build, and only for groups of more than one rank); kept opaque here so
  /// that this header never includes mpi.h. Also the watchdog's records,
  /// the progress thread and the accounting.
  struct Comms;
  Comms *comms() const { return comms_.get(); }

private:
  std::array<int, 3> sizes_{1, 1, 1}, coords_{0, 0, 0};
  int worldRank_ = 0, worldSize_ = 1;
  std::unique_ptr<Comms> comms_;
};

namespace detail {
// For the runtime's sharded kernels (ShardedKernels.cpp): the axis group of
// `axis` and two watched, timed reductions over it. Each reports a problem
// through loom_error(ctx, op, ...) and returns false.

/// The group's size and this rank's coordinate in it (1 and 0 without a
/// mesh or for a group of one).
bool axisGroup(loom_ctx *ctx, const char *op, int32_t axis, int &size,
               int &coord);
/// Per element i: (value[i], index[i]) = the pair with the largest value,
/// ties to the lowest index, over the group (MPI_MAXLOC).
bool groupMaxLoc(loom_ctx *ctx, const char *op, int32_t axis, float *value,
                 int32_t *index, int64_t n);
/// data = the sum over the group, in double, in place.
bool groupSum(loom_ctx *ctx, const char *op, int32_t axis, double *data,
              int64_t n);
} // namespace detail

} // namespace loom::runtime

#endif // LOOM_RUNTIME_COLLECTIVES_H
