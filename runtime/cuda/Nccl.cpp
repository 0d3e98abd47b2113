//===- Nccl.cpp - the dp x tp x pp mesh over NCCL -------------------------===//
#include "runtime/cuda/Nccl.h"

#include "runtime/Support.h"

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <thread>
#include <vector>

namespace loom::cuda {

using runtime::Error;

namespace {

const char *axisName(int axis) {
  static const char *names[] = {"dp", "tp", "pp"};
  return axis >= 0 && axis < 3 ? names[axis] : "?";
}

ncclDataType_t toNccl(NcclType t) {
  switch (t) {
  case NcclType::F32:
    return ncclFloat32;
  case NcclType::F64:
    return ncclFloat64;
  case NcclType::BF16:
    return ncclBfloat16;
  case NcclType::F16:
    return ncclFloat16;
  case NcclType::I32:
    return ncclInt32;
  case NcclType::I64:
    return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t toNccl(NcclOp op) { return op == NcclOp::Max ? ncclMax : ncclSum; }

} // namespace

struct NcclMesh::Impl {
  int worldRank = 0, worldSize = 1;
  int sizes[3] = {1, 1, 1};
  int coords[3] = {0, 0, 0};
  ncclComm_t world = nullptr;
  ncclComm_t axis[3] = {nullptr, nullptr, nullptr};
  bool aborted = false;

  [[noreturn]] void fail(const std::string &what, const std::string &cause) {
    throw Error("rank " + std::to_string(worldRank) + ": nccl: " + what + ": " +
                cause);
  }
  void check(ncclResult_t r, const std::string &what, const char *call) {
    if (r == ncclSuccess)
      return;
    std::string cause = std::string(call) + " failed: " + ncclGetErrorString(r);
    if (const char *last = ncclGetLastError(nullptr); last && *last)
      cause += " (" + std::string(last) + ")";
    fail(what, cause);
  }
  ncclComm_t comm(int a, const std::string &what) {
    if (aborted)
      fail(what, "the communicators were aborted after an earlier error");
    if (a < 0 || a > 2)
      fail(what, "mesh axis " + std::to_string(a) + " is not 0 (dp), 1 (tp) or 2 (pp)");
    return axis[a];
  }
  std::string name(const char *op, int a, size_t count) {
    return std::string(op) + " over " + axisName(a) + " (" +
           std::to_string(count) + " elements)";
  }
  int peerRank(int peer, int a, const std::string &what) {
    int to = coords[a] + peer;
    if (peer == 0 || to < 0 || to >= sizes[a])
      fail(what, "peer offset " + std::to_string(peer) + " from coordinate " +
                     std::to_string(coords[a]) + " is outside the " +
                     axisName(a) + " group of " + std::to_string(sizes[a]));
    return to;
  }
  void abortAll() {
    if (aborted)
      return;
    aborted = true;
    for (ncclComm_t &c : axis)
      if (c)
        ncclCommAbort(c);
    if (world)
      ncclCommAbort(world);
    for (ncclComm_t &c : axis)
      c = nullptr;
    world = nullptr;
  }
};

NcclMesh::NcclMesh(int64_t dp, int64_t tp, int64_t pp, int worldRank,
                   int worldSize, int device)
    : impl_(std::make_unique<Impl>()) {
  Impl &m = *impl_;
  m.worldRank = worldRank;
  m.worldSize = worldSize;
  if (dp < 1 || tp < 1 || pp < 1 || dp * tp * pp != worldSize)
    m.fail("mesh", "dp × tp × pp = " + std::to_string(dp) + " × " +
                       std::to_string(tp) + " × " + std::to_string(pp) +
                       " does not match the " + std::to_string(worldSize) +
                       " ranks of the world");
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized)
    m.fail("mesh", "MPI is not initialised (NCCL is bootstrapped over MPI)");
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
    m.fail("mesh", "cudaSetDevice(" + std::to_string(device) +
                       ") failed: " + cudaGetErrorString(e));
  m.sizes[0] = static_cast<int>(dp);
  m.sizes[1] = static_cast<int>(tp);
  m.sizes[2] = static_cast<int>(pp);
  m.coords[2] = worldRank % pp;
  m.coords[1] = (worldRank / pp) % tp;
  m.coords[0] = worldRank / (pp * tp);

  ncclUniqueId id;
  if (worldRank == 0)
    m.check(ncclGetUniqueId(&id), "mesh", "ncclGetUniqueId");
  if (MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
    m.fail("mesh", "MPI_Bcast of the NCCL unique id failed");
  m.check(ncclCommInitRank(&m.world, worldSize, id, worldRank), "mesh",
          "ncclCommInitRank");
  // One communicator per axis: ranks sharing the other two coordinates,
  // ordered by their coordinate on the axis.
  for (int a = 0; a < 3; ++a) {
    int other[2], k = 0;
    for (int b = 0; b < 3; ++b)
      if (b != a)
        other[k++] = b;
    int colour = m.coords[other[0]] * m.sizes[other[1]] + m.coords[other[1]];
    m.check(ncclCommSplit(m.world, colour, m.coords[a], &m.axis[a], nullptr),
            std::string("mesh axis ") + axisName(a), "ncclCommSplit");
  }
}

NcclMesh::~NcclMesh() {
  if (!impl_ || impl_->aborted)
    return;
  for (ncclComm_t c : impl_->axis)
    if (c)
      ncclCommDestroy(c);
  if (impl_->world)
    ncclCommDestroy(impl_->world);
}

int NcclMesh::worldRank() const { return impl_->worldRank; }
int NcclMesh::worldSize() const { return impl_->worldSize; }
int NcclMesh::size(int axis) const { return impl_->sizes[axis]; }
int NcclMesh::coord(int axis) const { return impl_->coords[axis]; }

void NcclMesh::allReduce(const void *in, void *out, size_t count, NcclType type,
                         NcclOp op, int axis, void *stream) {
  std::string what = impl_->name("all_reduce", axis, count);
  impl_->check(ncclAllReduce(in, out, count, toNccl(type), toNccl(op),
                             impl_->comm(axis, what),
                             static_cast<cudaStream_t>(stream)),
               what, "ncclAllReduce");
}

void NcclMesh::allGather(const void *in, void *out, size_t count, NcclType type,
                         int axis, void *stream) {
  std::string what = impl_->name("all_gather", axis, count);
  impl_->check(ncclAllGather(in, out, count, toNccl(type),
                             impl_->comm(axis, what),
                             static_cast<cudaStream_t>(stream)),
               what, "ncclAllGather");
}

void NcclMesh::reduceScatter(const void *in, void *out, size_t count,
                             NcclType type, NcclOp op, int axis, void *stream) {
  std::string what = impl_->name("reduce_scatter", axis, count);
  impl_->check(ncclReduceScatter(in, out, count, toNccl(type), toNccl(op),
                                 impl_->comm(axis, what),
                                 static_cast<cudaStream_t>(stream)),
               what, "ncclReduceScatter");
}

void NcclMesh::broadcast(void *data, size_t count, NcclType type, int root,
                         int axis, void *stream) {
  std::string what = impl_->name("broadcast", axis, count);
  ncclComm_t c = impl_->comm(axis, what);
  if (root < 0 || root >= impl_->sizes[axis])
    impl_->fail(what, "root " + std::to_string(root) + " is outside the group");
  impl_->check(ncclBroadcast(data, data, count, toNccl(type), root, c,
                             static_cast<cudaStream_t>(stream)),
               what, "ncclBroadcast");
}

void NcclMesh::send(const void *data, size_t count, NcclType type, int peer,
                    int axis, void *stream) {
  std::string what = impl_->name("send", axis, count);
  ncclComm_t c = impl_->comm(axis, what);
  impl_->check(ncclSend(data, count, toNccl(type), impl_->peerRank(peer, axis, what),
                        c, static_cast<cudaStream_t>(stream)),
               what, "ncclSend");
}

void NcclMesh::recv(void *data, size_t count, NcclType type, int peer, int axis,
                    void *stream) {
  std::string what = impl_->name("recv", axis, count);
  ncclComm_t c = impl_->comm(axis, what);
  impl_->check(ncclRecv(data, count, toNccl(type), impl_->peerRank(peer, axis, what),
                        c, static_cast<cudaStream_t>(stream)),
               what, "ncclRecv");
}

void NcclMesh::synchronize(void *stream, double timeoutSeconds,
                           const std::string &what) {
  Impl &m = *impl_;
  auto start = std::chrono::steady_clock::now();
  auto s = static_cast<cudaStream_t>(stream);
  for (int spin = 0;; ++spin) {
    cudaError_t q = cudaStreamQuery(s);
    if (q == cudaSuccess)
      return;
    if (q != cudaErrorNotReady)
      m.fail(what, std::string("the stream failed: ") + cudaGetErrorString(q));
    for (ncclComm_t c : m.axis) {
      ncclResult_t async = ncclSuccess;
      if (c && ncclCommGetAsyncError(c, &async) == ncclSuccess &&
          async != ncclSuccess && async != ncclInProgress) {
        std::string cause = std::string("asynchronous NCCL error: ") +
                            ncclGetErrorString(async);
        m.abortAll();
        m.fail(what, cause + "; communicators aborted");
      }
    }
    double waited = std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - start)
                        .count();
    if (timeoutSeconds > 0 && waited > timeoutSeconds) {
      m.abortAll();
      m.fail(what, "did not complete within " + std::to_string(timeoutSeconds) +
                       " s; communicators aborted");
    }
    if (spin > 100)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::string ncclVersionString() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess)
    return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

} // namespace loom::cuda
