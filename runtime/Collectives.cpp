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
// reason. Calls come from the thread that called the program.
//
// Watchdog: each collective records itself (name, axis, count, step, start
// time) in a per-thread slot while it runs; a monitor thread checks the slots
// and ends the job with MPI_Abort when one has run past the timeout.
//
// Point-to-point (pipeline stages): loom_send copies the data into a buffer
// of the runtime and starts an MPI_Isend on the axis communicator, tag =
// micro-batch * 65536 + slot; completed sends are retired at the next
// loom_send, and the runtime waits for the rest after the program returns
// (CommMesh::completeSends, watched). loom_recv probes (MPI_Mprobe) for the
// (source, tag) message, compares the sender's count with its own and only
// then receives it (MPI_Mrecv): a size mismatch is an error naming both
// sizes. A recv is watched like a collective; the watchdog's message names
// this rank's stage, the peer's stage, the micro-batch and the slot.
//
// Non-blocking all-reduce: loom_all_reduce_start queues the reduction for a
// progress thread, which runs the same blocking MPI_Allreduce as
// loom_all_reduce (same count, datatype, op and group size, so the same
// algorithm and bits) on a duplicate of the axis communicator, in start
// order; loom_all_reduce_wait waits for it. That needs MPI_THREAD_MULTIPLE;
// without it the reductions run inside loom_all_reduce_wait instead (same
// result, no overlap).
//
//===----------------------------------------------------------------------===//
#include "runtime/Collectives.h"

#include "runtime/Context.h"
#include "runtime/Support.h"
#include "runtime/Trace.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>

#if LOOM_HAVE_MPI
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace loom::runtime {

namespace {

double nowSeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

/// A collective (or a point-to-point transfer) in flight on one thread, as
/// the watchdog reports it.
struct InFlight {
  bool active = false;
  const char *name = "";   ///< "all_reduce"; "recv" / "send" for p2p
  const char *inside = ""; ///< the ABI function it runs in, or ""
  int32_t axis = -1;       ///< -1: the whole world
  int64_t count = 0;
  const char *unit = ""; ///< "floats"; "" for none (a barrier)
  int64_t step = 0;
  double start = 0;
  /// loom_recv / a loom_send completing: the peer's coordinate on `axis`
  /// and the message's tag (micro-batch * 65536 + slot).
  bool p2p = false;
  int peer = 0;
  int64_t tag = 0;
};

/// A loom_send in flight: the runtime's copy of the data and its request.
struct PendingSend {
  std::vector<float> data;
  int32_t axis = 0;
  int peer = 0; ///< the receiver's coordinate on `axis`
  int64_t tag = 0, n = 0, step = 0;
#if LOOM_HAVE_MPI
  MPI_Request request = MPI_REQUEST_NULL;
#endif
};

/// A reduction loom_all_reduce_start queued.
struct AsyncJob {
  int64_t handle = 0;
  float *data = nullptr;
  int64_t n = 0;
  int32_t axis = 0, op = 0;
  int64_t step = 0;
  bool done = false;
  std::string error; ///< an MPI failure, reported by the wait
};

} // namespace

struct CommMesh::Comms {
#if LOOM_HAVE_MPI
  /// MPI_COMM_NULL for groups of one rank (no communication needed).
  std::array<MPI_Comm, 3> axis{MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL};
  /// Duplicates of `axis` for the non-blocking reductions.
  std::array<MPI_Comm, 3> async{MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL};
  /// A duplicate of MPI_COMM_WORLD for the runtime's own collectives.
  MPI_Comm world = MPI_COMM_NULL;
#endif
  int worldRank = 0, worldSize = 1;
  /// This rank's pipeline stage (coordinate on pp), for messages.
  int stage = 0;
  bool threadMultiple = false;
  /// The largest tag MPI takes (MPI_TAG_UB).
  int64_t tagUpperBound = 32767;

  // The watchdog.
  std::mutex watchMutex;
  /// 0: the thread that runs the programs; 1: the progress thread.
  InFlight slot[2];
  double timeout = 0;
  int64_t runtimeStep = 0;
  std::thread watchdog;
  std::condition_variable watchCv;
  bool stopWatch = false;

  // Accounting (the program's thread only).
  Stats stats;

  /// loom-run --trace: every watched collective and transfer is recorded
  /// while it is active. nullptr: not tracing.
  Tracer *tracer = nullptr;

  // loom_send's requests not yet known complete, in send order (the
  // program's thread only).
  std::deque<PendingSend> sends;

  // Non-blocking reductions.
  std::mutex asyncMutex;
  std::condition_variable asyncCv;
  std::deque<std::shared_ptr<AsyncJob>> queue; ///< started, not yet run
  std::map<int64_t, std::shared_ptr<AsyncJob>> pending; ///< not yet waited
  int64_t nextHandle = 1;
  std::thread worker;
  bool stopWorker = false;

  void watchLoop();
  void workerLoop();
  /// Runs one queued reduction (on whichever thread), marks it done.
  void run(AsyncJob &job, int slotIndex);
};

namespace {

/// Records a collective in its thread's slot for as long as it runs, and
/// (slot 0) adds its time to the step's accounting, and its bytes and the
/// call itself unless `booked` (a non-blocking reduction, booked when it
/// was started).
class Watch {
public:
  Watch(CommMesh::Comms *c, int slotIndex, const char *name,
        const char *inside, int32_t axis, int64_t count, const char *unit,
        int64_t step, int64_t bytes, bool booked = false)
      : Watch(c, slotIndex,
              InFlight{true, name, inside, axis, count, unit, step, 0}, bytes,
              booked) {}
  /// `what` as it is recorded (its start time is set here).
  Watch(CommMesh::Comms *c, int slotIndex, InFlight what, int64_t bytes,
        bool booked)
      : c_(c), slot_(slotIndex) {
    if (!c_)
      return;
    start_ = nowSeconds();
    if (c_->tracer && c_->tracer->active()) {
      traced_ = true;
      what_ = what;
    }
    std::lock_guard<std::mutex> lock(c_->watchMutex);
    InFlight &s = c_->slot[slot_];
    s = what;
    s.active = true;
    s.start = start_;
    if (slot_ == 0 && !booked) {
      c_->stats.bytes += bytes;
      c_->stats.calls += 1;
    }
  }
  ~Watch() {
    if (!c_)
      return;
    double end = nowSeconds();
    {
      std::lock_guard<std::mutex> lock(c_->watchMutex);
      c_->slot[slot_].active = false;
      if (slot_ == 0)
        c_->stats.seconds += end - start_;
    }
    if (traced_)
      trace(end);
  }
  Watch(const Watch &) = delete;
  Watch &operator=(const Watch &) = delete;

private:
  /// The trace's event for what ran from start_ to `end`.
  void trace(double end);

  CommMesh::Comms *c_;
  int slot_;
  double start_ = 0;
  bool traced_ = false;
  InFlight what_;
};

/// "stage 1" along pp, "dp coordinate 1" along another axis.
std::string peerName(int32_t axis, int coord) {
  return axis == kAxisPP ? "stage " + std::to_string(coord)
                         : std::string(meshAxisName(axis)) + " coordinate " +
                               std::to_string(coord);
}

/// "recv from stage 0 (micro-batch 1, slot 2, 64 floats)".
std::string describeTransfer(const char *name, int32_t axis, int peer,
                             int64_t tag, int64_t count) {
  return std::string(name) + (std::strcmp(name, "recv") == 0 ? " from " : " to ") +
         peerName(axis, peer) + " (micro-batch " + std::to_string(tag >> 16) +
         ", slot " + std::to_string(tag & 0xffff) + ", " +
         std::to_string(count) + " floats)";
}

std::string describeInFlight(const InFlight &s) {
  if (s.p2p)
    return describeTransfer(s.name, s.axis, s.peer, s.tag, s.count);
  std::string text = std::string("collective ") + s.name + " over " +
                     (s.axis < 0 ? "the world" : meshAxisName(s.axis));
  std::string detail;
  if (*s.unit)
    detail = std::to_string(s.count) + " " + s.unit;
  if (*s.inside)
    detail += (detail.empty() ? "in " : ", in ") + std::string(s.inside);
  if (!detail.empty())
    text += " (" + detail + ")";
  return text;
}

/// Bytes per element of an InFlight's unit.
int64_t unitBytes(const char *unit) {
  if (std::strcmp(unit, "floats") == 0)
    return 4;
  if (std::strcmp(unit, "doubles") == 0 ||
      std::strcmp(unit, "(float, index) pairs") == 0)
    return 8;
  return std::strcmp(unit, "bytes") == 0 ? 1 : 0;
}

void Watch::trace(double end) {
  Tracer &t = *c_->tracer;
  TraceEvent e;
  const InFlight &w = what_;
  if (w.p2p) {
    // "send to stage 1", "recv from stage 0"; a loom_send's completion
    // after the program (booked, already counted) says so.
    bool recv = std::strcmp(w.name, "recv") == 0;
    e.name = std::string(w.name) + (recv ? " from " : " to ") +
             peerName(w.axis, w.peer);
    e.tag = w.tag;
  } else {
    e.name = std::string(w.name) + " over " +
             (w.axis < 0 ? std::string("the world") : meshAxisName(w.axis));
    if (*w.inside)
      e.name += std::string(" (") + w.inside + ")";
  }
  e.category = "comm";
  e.tid = slot_ == 1 ? kTraceProgress : kTraceComm;
  e.ts = t.micros(start_);
  e.dur = t.micros(end) - e.ts;
  e.step = w.step;
  if (*w.unit) {
    e.count = w.count;
    e.bytes = w.count * unitBytes(w.unit);
  }
  t.record(std::move(e));
}

} // namespace

void CommMesh::Comms::watchLoop() {
  std::unique_lock<std::mutex> lock(watchMutex);
  while (!stopWatch) {
    double period = timeout > 0 ? std::clamp(timeout / 10, 0.01, 0.25) : 0.25;
    watchCv.wait_for(lock, std::chrono::duration<double>(period));
    if (stopWatch || timeout <= 0)
      continue;
    double now = nowSeconds();
    for (const InFlight &s : slot) {
      if (!s.active || now - s.start <= timeout)
        continue;
      char limit[32];
      std::snprintf(limit, sizeof limit, "%g", timeout);
      // A transfer between stages names this rank's stage too.
      std::string who = "rank " + std::to_string(worldRank);
      if (s.p2p)
        who += " (stage " + std::to_string(stage) + ")";
      std::fprintf(stderr,
                   "loom-run: error: %s, step %lld: %s did not complete "
                   "within %s s; aborting the job\n",
                   who.c_str(), static_cast<long long>(s.step),
                   describeInFlight(s).c_str(), limit);
      std::fflush(stderr);
      std::fflush(stdout);
#if LOOM_HAVE_MPI
      MPI_Abort(MPI_COMM_WORLD, 1);
#endif
      _exit(1);
    }
  }
}

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

void CommMesh::Comms::run(AsyncJob &job, int slotIndex) {
  std::string error;
#if LOOM_HAVE_MPI
  {
    Watch w(this, slotIndex, "all_reduce", "loom_all_reduce_start", job.axis,
            job.n, "floats", job.step, 0, /*booked=*/true);
    int rc = MPI_Allreduce(MPI_IN_PLACE, job.data, int(job.n), MPI_FLOAT,
                           job.op == 0 ? MPI_SUM : MPI_MAX, async[job.axis]);
    if (rc != MPI_SUCCESS)
      error = "MPI_Allreduce failed: " + mpiErrorText(rc);
  }
#endif
  {
    std::lock_guard<std::mutex> lock(asyncMutex);
    job.error = error;
    job.done = true;
  }
  asyncCv.notify_all();
}

void CommMesh::Comms::workerLoop() {
  for (;;) {
    std::shared_ptr<AsyncJob> job;
    {
      std::unique_lock<std::mutex> lock(asyncMutex);
      asyncCv.wait(lock, [&] { return stopWorker || !queue.empty(); });
      if (queue.empty())
        return;
      job = queue.front();
      queue.pop_front();
    }
    run(*job, 1);
  }
}

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
  comms_->worldRank = worldRank;
  comms_->worldSize = worldSize;
  comms_->stage = coords_[kAxisPP];
  if (worldSize == 1)
    return;
#if LOOM_HAVE_MPI
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised)
    throw Error("mesh " + shape + ": MPI is not initialised (launch under "
                                  "mpirun)");
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  comms_->threadMultiple = level >= MPI_THREAD_MULTIPLE;
  {
    void *ub = nullptr;
    int found = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &found);
    if (found && ub)
      comms_->tagUpperBound = *static_cast<int *>(ub);
  }
  auto dup = [&](MPI_Comm from, MPI_Comm &to, const char *what) {
    int rc = MPI_Comm_dup(from, &to);
    if (rc != MPI_SUCCESS)
      throw Error(std::string("mesh ") + shape + ": MPI_Comm_dup for " + what +
                  " failed: " + mpiErrorText(rc));
    MPI_Comm_set_errhandler(to, MPI_ERRORS_RETURN);
  };
  dup(MPI_COMM_WORLD, comms_->world, "the world");
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
    // Every rank duplicates every axis communicator (MPI_Comm_dup is
    // collective over the group, and every group does it here).
    dup(comm, comms_->async[axis], meshAxisName(axis));
  }
#else
  throw Error("mesh " + shape + " needs " + std::to_string(worldSize) +
              " ranks, but this runtime was built without MPI (install "
              "libopenmpi-dev and rebuild)");
#endif
}

CommMesh::~CommMesh() {
  Comms &c = *comms_;
#if LOOM_HAVE_MPI
  {
    int finalised = 0;
    MPI_Finalized(&finalised);
    // Sends left by a program that failed: nobody will receive them.
    for (PendingSend &p : c.sends)
      if (!finalised && p.request != MPI_REQUEST_NULL) {
        MPI_Cancel(&p.request);
        MPI_Request_free(&p.request);
      }
    c.sends.clear();
  }
#endif
  if (c.worker.joinable()) {
    {
      std::lock_guard<std::mutex> lock(c.asyncMutex);
      c.stopWorker = true;
    }
    c.asyncCv.notify_all();
    c.worker.join();
  }
  if (c.watchdog.joinable()) {
    {
      std::lock_guard<std::mutex> lock(c.watchMutex);
      c.stopWatch = true;
    }
    c.watchCv.notify_all();
    c.watchdog.join();
  }
#if LOOM_HAVE_MPI
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (finalised)
    return;
  for (MPI_Comm *comm : {&c.axis[0], &c.axis[1], &c.axis[2], &c.async[0],
                         &c.async[1], &c.async[2], &c.world})
    if (*comm != MPI_COMM_NULL)
      MPI_Comm_free(comm);
#endif
}

void CommMesh::setTimeout(double seconds) {
  Comms &c = *comms_;
  {
    std::lock_guard<std::mutex> lock(c.watchMutex);
    c.timeout = seconds > 0 ? seconds : 0;
  }
  if (seconds > 0 && worldSize_ > 1 && !c.watchdog.joinable())
    c.watchdog = std::thread([&c] { c.watchLoop(); });
  c.watchCv.notify_all();
}

double CommMesh::timeout() const {
  std::lock_guard<std::mutex> lock(comms_->watchMutex);
  return comms_->timeout;
}

void CommMesh::setStep(int64_t step) {
  std::lock_guard<std::mutex> lock(comms_->watchMutex);
  comms_->runtimeStep = step;
}

void CommMesh::setTracer(Tracer *tracer) { comms_->tracer = tracer; }

CommMesh::Stats CommMesh::takeStats() {
  std::lock_guard<std::mutex> lock(comms_->watchMutex);
  Stats s = comms_->stats;
  comms_->stats = Stats{};
  return s;
}

int64_t CommMesh::pendingReductions() const {
  std::lock_guard<std::mutex> lock(comms_->asyncMutex);
  return int64_t(comms_->pending.size());
}

int64_t CommMesh::pendingSends() const {
  return int64_t(comms_->sends.size());
}

void CommMesh::completeSends(loom_ctx *ctx) {
  Comms &c = *comms_;
  while (!c.sends.empty()) {
#if LOOM_HAVE_MPI
    PendingSend &p = c.sends.front();
    if (p.request != MPI_REQUEST_NULL) {
      InFlight what;
      what.name = "send";
      what.inside = "loom_send";
      what.axis = p.axis;
      what.count = p.n;
      what.unit = "floats";
      what.step = p.step;
      what.p2p = true;
      what.peer = p.peer;
      what.tag = p.tag;
      Watch w(&c, 0, what, 0, /*booked=*/true);
      int rc = MPI_Wait(&p.request, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS && ctx)
        loom_error(ctx, "loom_send",
                   ("rank " + std::to_string(c.worldRank) + " (stage " +
                    std::to_string(c.stage) + "): " +
                    describeTransfer("send", p.axis, p.peer, p.tag, p.n) +
                    ": MPI_Wait failed: " + mpiErrorText(rc))
                       .c_str());
    }
#else
    (void)ctx;
#endif
    c.sends.pop_front();
  }
}

void CommMesh::drainReductions(loom_ctx *ctx) {
  std::vector<int64_t> handles;
  {
    std::lock_guard<std::mutex> lock(comms_->asyncMutex);
    for (const auto &[h, job] : comms_->pending)
      handles.push_back(h);
  }
  for (int64_t h : handles)
    loom_all_reduce_wait(ctx, h);
}

//===----------------------------------------------------------------------===//
// The runtime's own collectives
//===----------------------------------------------------------------------===//

namespace {
int64_t stepOf(CommMesh::Comms *c) {
  std::lock_guard<std::mutex> lock(c->watchMutex);
  return c->runtimeStep;
}
} // namespace

void CommMesh::barrier(const char *what) {
  if (worldSize_ == 1)
    return;
#if LOOM_HAVE_MPI
  Watch w(comms_.get(), 0, "barrier", what, -1, 0, "", stepOf(comms_.get()),
          0);
  int rc = MPI_Barrier(comms_->world);
  if (rc != MPI_SUCCESS)
    throw Error(std::string(what) + ": MPI_Barrier failed: " +
                mpiErrorText(rc));
#endif
}

void CommMesh::allReduceMax(double *v, int n, const char *what) {
  if (worldSize_ == 1 || n == 0)
    return;
#if LOOM_HAVE_MPI
  Watch w(comms_.get(), 0, "all_reduce", what, -1, n, "doubles",
          stepOf(comms_.get()), int64_t(n) * 8);
  int rc = MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX,
                         comms_->world);
  if (rc != MPI_SUCCESS)
    throw Error(std::string(what) + ": MPI_Allreduce failed: " +
                mpiErrorText(rc));
#endif
}

std::vector<std::string> CommMesh::allGather(const std::string &mine,
                                             const char *what) {
  if (worldSize_ == 1)
    return {mine};
  std::vector<std::string> out(static_cast<size_t>(worldSize_));
#if LOOM_HAVE_MPI
  if (mine.size() > size_t(INT_MAX / worldSize_))
    throw Error(std::string(what) + ": " + std::to_string(mine.size()) +
                " bytes are too many to gather");
  Watch w(comms_.get(), 0, "all_gather", what, -1, int64_t(mine.size()),
          "bytes", stepOf(comms_.get()), int64_t(mine.size()));
  int len = int(mine.size());
  std::vector<int> lens(static_cast<size_t>(worldSize_)),
      offsets(static_cast<size_t>(worldSize_));
  int rc = MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT,
                         comms_->world);
  if (rc != MPI_SUCCESS)
    throw Error(std::string(what) + ": MPI_Allgather failed: " +
                mpiErrorText(rc));
  int64_t total = 0;
  for (int r = 0; r < worldSize_; ++r) {
    offsets[size_t(r)] = int(total);
    total += lens[size_t(r)];
  }
  if (total > INT_MAX)
    throw Error(std::string(what) + ": " + std::to_string(total) +
                " bytes are too many to gather");
  std::vector<char> all(size_t(std::max<int64_t>(total, 1)));
  rc = MPI_Allgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                      offsets.data(), MPI_CHAR, comms_->world);
  if (rc != MPI_SUCCESS)
    throw Error(std::string(what) + ": MPI_Allgatherv failed: " +
                mpiErrorText(rc));
  for (int r = 0; r < worldSize_; ++r)
    out[size_t(r)].assign(all.data() + offsets[size_t(r)],
                          size_t(lens[size_t(r)]));
#endif
  return out;
}

std::vector<std::string> CommMesh::gatherToRoot(const std::string &mine,
                                               const char *what) {
  if (worldSize_ == 1)
    return {mine};
  std::vector<std::string> out;
#if LOOM_HAVE_MPI
  if (mine.size() > size_t(INT_MAX))
    throw Error(std::string(what) + ": " + std::to_string(mine.size()) +
                " bytes are too many to gather");
  Watch w(comms_.get(), 0, "gather", what, -1, int64_t(mine.size()), "bytes",
          stepOf(comms_.get()), int64_t(mine.size()));
  int len = int(mine.size());
  bool root = worldRank_ == 0;
  // Every rank learns every length, so that all of them agree whether the
  // whole fits MPI's int displacements before the Gatherv.
  std::vector<int> lens(static_cast<size_t>(worldSize_)),
      offsets(static_cast<size_t>(worldSize_));
  int rc = MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT,
                         comms_->world);
  if (rc != MPI_SUCCESS)
    throw Error(std::string(what) + ": MPI_Allgather failed: " +
                mpiErrorText(rc));
  int64_t total = 0;
  for (int r = 0; r < worldSize_; ++r) {
    offsets[size_t(r)] = int(std::min<int64_t>(total, INT_MAX));
    total += lens[size_t(r)];
  }
  if (total > INT_MAX)
    throw Error(std::string(what) + ": " + std::to_string(total) +
                " bytes are too many to gather");
  std::vector<char> all(root ? size_t(std::max<int64_t>(total, 1)) : 1);
  rc = MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                   offsets.data(), MPI_CHAR, 0, comms_->world);
  if (rc != MPI_SUCCESS)
    throw Error(std::string(what) + ": MPI_Gatherv failed: " +
                mpiErrorText(rc));
  for (int r = 0; root && r < worldSize_; ++r)
    out.emplace_back(all.data() + offsets[size_t(r)], size_t(lens[size_t(r)]));
#else
  (void)what;
#endif
  return out;
}

void CommMesh::sendToRoot(int from, void *data, uint64_t bytes,
                          const char *what) {
  if (from == 0 || worldSize_ == 1)
    return;
#if LOOM_HAVE_MPI
  if (worldRank_ != 0 && worldRank_ != from)
    return;
  Watch w(comms_.get(), 0, worldRank_ == 0 ? "receive" : "send", what, -1,
          int64_t(bytes), "bytes", stepOf(comms_.get()), int64_t(bytes));
  const uint64_t chunk = uint64_t(1) << 30;
  auto *p = static_cast<unsigned char *>(data);
  for (uint64_t done = 0; done < bytes || (bytes == 0 && done == 0);) {
    int n = int(std::min(chunk, bytes - done));
    int rc = worldRank_ == 0
                 ? MPI_Recv(p + done, n, MPI_BYTE, from, 71, comms_->world,
                            MPI_STATUS_IGNORE)
                 : MPI_Send(p + done, n, MPI_BYTE, 0, 71, comms_->world);
    if (rc != MPI_SUCCESS)
      throw Error(std::string(what) + ": MPI_" +
                  (worldRank_ == 0 ? "Recv" : "Send") + " failed: " +
                  mpiErrorText(rc));
    done += uint64_t(n);
    if (bytes == 0)
      break;
  }
#else
  (void)data;
  (void)bytes;
  (void)what;
#endif
}

} // namespace loom::runtime

using loom::runtime::CommMesh;
using loom::runtime::meshAxisName;
#if LOOM_HAVE_MPI
using loom::runtime::mpiErrorText;
#endif

namespace {

using loom::runtime::AsyncJob;
using loom::runtime::Watch;

/// One call's axis group, resolved and checked.
struct Group {
  int size = 1, rank = 0;
  CommMesh::Comms *comms = nullptr;
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
  auto *mesh = static_cast<CommMesh *>(ctx->mesh);
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
  g.comms = mesh->comms();
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
  Watch w(g.comms, 0, "all_reduce", "", axis, n, "floats", ctx->step, n * 4);
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
  if (n > INT_MAX / g.size) {
    report(ctx, name, axis,
           "count " + std::to_string(n) + " times the group's " +
               std::to_string(g.size) + " ranks exceeds MPI's int counts");
    return;
  }
  Watch w(g.comms, 0, "all_gather", "", axis, n, "floats", ctx->step, n * 4);
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
  Watch w(g.comms, 0, "reduce_scatter", "", axis, n * g.size, "floats",
          ctx->step, n * g.size * 4);
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
  Watch w(g.comms, 0, "broadcast", "", axis, n, "floats", ctx->step, n * 4);
  check(ctx, name, axis, "MPI_Bcast",
        MPI_Bcast(data, int(n), MPI_FLOAT, root, g.comm));
#endif
}

extern "C" int64_t loom_mesh_coord(loom_ctx *ctx, int32_t axis) {
  if (!ctx || !ctx->mesh || axis < 0 || axis > 2)
    return 0;
  return static_cast<const CommMesh *>(ctx->mesh)->coord(axis);
}

//===----------------------------------------------------------------------===//
// Non-blocking all-reduce
//===----------------------------------------------------------------------===//

namespace {
/// Handles of reductions that needed no communication (a group of one):
/// waiting them is a no-op. Kept apart from the mesh's queue.
constexpr int64_t kLocalHandleBit = int64_t(1) << 62;
} // namespace

extern "C" int64_t loom_all_reduce_start(loom_ctx *ctx, float *data, int64_t n,
                                         int32_t axis, int32_t op) {
  const char *name = "loom_all_reduce_start";
  Group g;
  if (!resolve(ctx, name, axis, n, data, data, g))
    return 0;
  if (op != 0 && op != 1) {
    report(ctx, name, axis,
           "unknown reduction " + std::to_string(op) + " (0 sum, 1 max)");
    return 0;
  }
  CommMesh::Comms *c = g.comms;
  if (!c) {
    // No mesh (a world of one): nothing to reduce, nothing to track.
    return kLocalHandleBit | 1;
  }
  auto job = std::make_shared<AsyncJob>();
  job->data = data;
  job->n = n;
  job->axis = axis;
  job->op = op;
  job->step = ctx->step;
  bool local = g.size == 1 || n == 0;
  {
    std::lock_guard<std::mutex> lock(c->asyncMutex);
    job->handle = c->nextHandle++;
    if (local)
      job->done = true;
    else
      c->queue.push_back(job);
    c->pending.emplace(job->handle, job);
  }
  if (local)
    return job->handle;
  {
    std::lock_guard<std::mutex> lock(c->watchMutex);
    c->stats.bytes += n * 4;
    c->stats.calls += 1;
  }
  if (c->threadMultiple) {
    if (!c->worker.joinable())
      c->worker = std::thread([c] { c->workerLoop(); });
    c->asyncCv.notify_all();
  }
  return job->handle;
}

extern "C" void loom_all_reduce_wait(loom_ctx *ctx, int64_t handle) {
  const char *name = "loom_all_reduce_wait";
  if (!ctx) {
    loom_error(ctx, name, "no context");
    return;
  }
  auto *mesh = static_cast<CommMesh *>(ctx->mesh);
  if (!mesh) {
    if (handle != (kLocalHandleBit | 1))
      loom_error(ctx, name,
                 ("handle " + std::to_string(handle) +
                  " was not returned by loom_all_reduce_start")
                     .c_str());
    return;
  }
  CommMesh::Comms *c = mesh->comms();
  std::shared_ptr<AsyncJob> job;
  {
    std::lock_guard<std::mutex> lock(c->asyncMutex);
    auto it = c->pending.find(handle);
    if (it != c->pending.end())
      job = it->second;
  }
  if (!job) {
    loom_error(ctx, name,
               ("handle " + std::to_string(handle) +
                " is not a pending reduction (never started, or already "
                "waited)")
                   .c_str());
    return;
  }
  if (c->threadMultiple) {
    // The progress thread runs it; the wait is the exposed time.
    double start = loom::runtime::nowSeconds();
    {
      std::unique_lock<std::mutex> lock(c->asyncMutex);
      c->asyncCv.wait(lock, [&] { return job->done; });
    }
    std::lock_guard<std::mutex> lock(c->watchMutex);
    c->stats.seconds += loom::runtime::nowSeconds() - start;
  } else {
    // No progress thread: run the queue up to this one, in start order.
    for (;;) {
      std::shared_ptr<AsyncJob> next;
      {
        std::lock_guard<std::mutex> lock(c->asyncMutex);
        if (job->done)
          break;
        next = c->queue.front();
        c->queue.pop_front();
      }
      // The queue's time is exposed time here: Watch slot 0 counts it.
      c->run(*next, 0);
    }
  }
  std::string error;
  {
    std::lock_guard<std::mutex> lock(c->asyncMutex);
    error = job->error;
    c->pending.erase(handle);
  }
  if (!error.empty())
    report(ctx, name, job->axis, error);
}

//===----------------------------------------------------------------------===//
// For the sharded kernels
//===----------------------------------------------------------------------===//

namespace loom::runtime::detail {

bool axisGroup(loom_ctx *ctx, const char *op, int32_t axis, int &size,
               int &coord) {
  Group g;
  if (!resolve(ctx, op, axis, 0, nullptr, nullptr, g))
    return false;
  size = g.size;
  coord = g.rank;
  return true;
}

bool groupMaxLoc(loom_ctx *ctx, const char *op, int32_t axis, float *value,
                 int32_t *index, int64_t n) {
  Group g;
  if (!resolve(ctx, op, axis, n, value, index, g))
    return false;
  if (g.size == 1 || n == 0)
    return true;
#if LOOM_HAVE_MPI
  struct Pair {
    float value;
    int index;
  };
  std::vector<Pair> pairs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    pairs[size_t(i)] = {value[i], index[i]};
  {
    Watch w(g.comms, 0, "all_reduce (max with index)", op, axis, n,
            "(float, index) pairs", ctx->step, n * 8);
    if (!check(ctx, op, axis, "MPI_Allreduce",
               MPI_Allreduce(MPI_IN_PLACE, pairs.data(), int(n),
                             MPI_FLOAT_INT, MPI_MAXLOC, g.comm)))
      return false;
  }
  for (int64_t i = 0; i < n; ++i) {
    value[i] = pairs[size_t(i)].value;
    index[i] = pairs[size_t(i)].index;
  }
  return true;
#else
  return false;
#endif
}

bool groupSum(loom_ctx *ctx, const char *op, int32_t axis, double *data,
              int64_t n) {
  Group g;
  if (!resolve(ctx, op, axis, n, data, data, g))
    return false;
  if (g.size == 1 || n == 0)
    return true;
#if LOOM_HAVE_MPI
  Watch w(g.comms, 0, "all_reduce (sum)", op, axis, n, "doubles", ctx->step,
          n * 8);
  return check(ctx, op, axis, "MPI_Allreduce",
               MPI_Allreduce(MPI_IN_PLACE, data, int(n), MPI_DOUBLE, MPI_SUM,
                             g.comm));
#else
  return false;
#endif
}

} // namespace loom::runtime::detail

//===----------------------------------------------------------------------===//
// Point-to-point: loom_send / loom_recv
//===----------------------------------------------------------------------===//

namespace {

using loom::runtime::InFlight;
using loom::runtime::PendingSend;
using loom::runtime::describeTransfer;
using loom::runtime::peerName;

/// The receiver's (or sender's) coordinate on `axis` for a transfer of `n`
/// floats with `tag` to or from `peer` (a signed offset), checked; false
/// after reporting an error.
bool resolvePeer(loom_ctx *ctx, const char *op, int32_t axis, int64_t n,
                 const void *data, int32_t peer, int64_t tag, Group &g,
                 int &peerCoord) {
  if (!resolve(ctx, op, axis, n, data, data, g))
    return false;
  int64_t target = int64_t(g.rank) + int64_t(peer);
  if (peer == 0 || target < 0 || target >= g.size) {
    report(ctx, op, axis,
           "peer offset " + std::to_string(peer) + " from coordinate " +
               std::to_string(g.rank) +
               (peer == 0 ? " is this rank itself"
                          : " is outside the group's " +
                                std::to_string(g.size) + " rank" +
                                (g.size == 1 ? "" : "s")));
    return false;
  }
  int64_t ub = g.comms ? g.comms->tagUpperBound : INT_MAX;
  if (tag < 0 || tag > ub) {
    report(ctx, op, axis,
           "tag " + std::to_string(tag) + " outside [0, " +
               std::to_string(ub) +
               "] (tag = micro-batch * 65536 + slot; MPI_TAG_UB bounds it)");
    return false;
  }
  peerCoord = int(target);
  return true;
}

/// "rank 1 (stage 1): " for the messages of a transfer (the runtime's
/// report of the error adds the step).
std::string transferWho(loom_ctx *ctx, const CommMesh::Comms *c) {
  return "rank " + std::to_string(ctx->rank) + " (stage " +
         std::to_string(c ? c->stage : 0) + "): ";
}

#if LOOM_HAVE_MPI
/// Frees the buffers of sends that have completed, in order, so that many
/// outstanding sends do not pile up.
void retireCompletedSends(CommMesh::Comms *c) {
  for (auto it = c->sends.begin(); it != c->sends.end();) {
    int done = 0;
    if (it->request != MPI_REQUEST_NULL)
      MPI_Test(&it->request, &done, MPI_STATUS_IGNORE);
    else
      done = 1;
    it = done ? c->sends.erase(it) : it + 1;
  }
}
#endif

} // namespace

extern "C" void loom_send(loom_ctx *ctx, const float *data, int64_t n,
                          int32_t axis, int32_t peer, int64_t tag) {
  const char *name = "loom_send";
  Group g;
  int to = 0;
  if (!resolvePeer(ctx, name, axis, n, data, peer, tag, g, to))
    return;
#if LOOM_HAVE_MPI
  CommMesh::Comms *c = g.comms;
  retireCompletedSends(c);
  // The caller may reuse `data` at once: the runtime sends its own copy.
  PendingSend p;
  p.data.assign(data, data + n);
  p.axis = axis;
  p.peer = to;
  p.tag = tag;
  p.n = n;
  p.step = ctx->step;
  c->sends.push_back(std::move(p));
  PendingSend &q = c->sends.back();
  InFlight what;
  what.name = "send";
  what.inside = name;
  what.axis = axis;
  what.count = n;
  what.unit = "floats";
  what.step = ctx->step;
  what.p2p = true;
  what.peer = to;
  what.tag = tag;
  Watch w(c, 0, what, n * 4, /*booked=*/false);
  int rc = MPI_Isend(q.data.data(), int(n), MPI_FLOAT, to, int(tag),
                     g.comm, &q.request);
  if (rc != MPI_SUCCESS) {
    c->sends.pop_back();
    loom_error(ctx, name,
               (transferWho(ctx, c) + describeTransfer("send", axis, to, tag, n) +
                ": MPI_Isend failed: " + mpiErrorText(rc))
                   .c_str());
  }
#else
  (void)to;
#endif
}

extern "C" void loom_recv(loom_ctx *ctx, float *data, int64_t n, int32_t axis,
                          int32_t peer, int64_t tag) {
  const char *name = "loom_recv";
  Group g;
  int from = 0;
  if (!resolvePeer(ctx, name, axis, n, data, peer, tag, g, from))
    return;
#if LOOM_HAVE_MPI
  CommMesh::Comms *c = g.comms;
  InFlight what;
  what.name = "recv";
  what.inside = name;
  what.axis = axis;
  what.count = n;
  what.unit = "floats";
  what.step = ctx->step;
  what.p2p = true;
  what.peer = from;
  what.tag = tag;
  Watch w(c, 0, what, n * 4, /*booked=*/false);
  auto fail = [&](const std::string &cause) {
    loom_error(ctx, name,
               (transferWho(ctx, c) +
                describeTransfer("recv", axis, from, tag, n) + ": " + cause)
                   .c_str());
  };
  // Probe first: the sender's count is known before any data lands, so a
  // mismatch is reported with both sizes (never a truncated buffer).
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status;
  int rc = MPI_Mprobe(from, int(tag), g.comm, &message, &status);
  if (rc != MPI_SUCCESS) {
    fail("MPI_Mprobe failed: " + mpiErrorText(rc));
    return;
  }
  int count = 0;
  MPI_Get_count(&status, MPI_FLOAT, &count);
  if (count != n) {
    // Take the message anyway (the sender's request completes) and say so.
    std::vector<float> sink(size_t(count > 0 ? count : 1));
    MPI_Mrecv(sink.data(), count > 0 ? count : 0, MPI_FLOAT, &message,
              MPI_STATUS_IGNORE);
    fail("size mismatch: " + peerName(axis, from) + " sent " +
         (count == MPI_UNDEFINED ? std::string("a message that is not whole "
                                               "floats")
                                 : std::to_string(count) + " floats") +
         ", this recv expects " + std::to_string(n));
    return;
  }
  rc = MPI_Mrecv(data, int(n), MPI_FLOAT, &message, MPI_STATUS_IGNORE);
  if (rc != MPI_SUCCESS)
    fail("MPI_Mrecv failed: " + mpiErrorText(rc));
#else
  (void)from;
#endif
}
