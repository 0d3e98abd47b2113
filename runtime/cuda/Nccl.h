//===- Nccl.h - the dp x tp x pp mesh over NCCL -----------------*- C++ -*-===//
//
// The GPU counterpart of runtime/Collectives.h's CommMesh: one NCCL
// communicator per mesh-axis group, with the same rank mapping
// (rank = ((d·tp)+t)·pp+p, runtime/README.md) and the same group order.
//
//  - Bootstrap over MPI: rank 0 draws ncclGetUniqueId and MPI_Bcasts it; every
//    rank joins the world communicator (ncclCommInitRank), then splits it
//    once per axis (ncclCommSplit, colour = the other two coordinates, key =
//    the coordinate on the axis), so a group's NCCL rank is its coordinate.
//  - Every call only enqueues work on the given stream (capturable into a
//    CUDA graph). Errors throw loom::runtime::Error naming the rank, the
//    collective, the axis and NCCL's message.
//  - synchronize() is the watchdog: it waits for a stream while polling
//    ncclCommGetAsyncError; on an asynchronous error or after the timeout
//    it aborts every communicator (ncclCommAbort), so no rank stays blocked
//    inside NCCL, and throws; loom-run then ends the job with MPI_Abort.
//
// Plain C++ header: the stream is a void* (a cudaStream_t).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CUDA_NCCL_H
#define LOOM_RUNTIME_CUDA_NCCL_H

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace loom::cuda {

enum class NcclType { F32, F64, BF16, F16, I32, I64 };
enum class NcclOp { Sum, Max };

class NcclMesh {
public:
  /// Collective over MPI_COMM_WORLD (MPI must be initialised): every rank
  /// constructs its mesh with the same sizes. `device` is this rank's GPU
  /// (cudaSetDevice is called with it). Throws Error when dp·tp·pp differs
  /// from the world size or NCCL fails.
  NcclMesh(int64_t dp, int64_t tp, int64_t pp, int worldRank, int worldSize,
           int device);
  ~NcclMesh();
  NcclMesh(const NcclMesh &) = delete;
  NcclMesh &operator=(const NcclMesh &) = delete;

  int worldRank() const;
  int worldSize() const;
  /// Ranks along `axis` (0 dp, 1 tp, 2 pp) and this rank's coordinate there.
  int size(int axis) const;
  int coord(int axis) const;

  /// In place when in == out. count elements of `type`.
  void allReduce(const void *in, void *out, size_t count, NcclType type,
                 NcclOp op, int axis, void *stream);
  /// out holds size(axis) · count elements, member k's `in` at k · count.
  void allGather(const void *in, void *out, size_t count, NcclType type,
                 int axis, void *stream);
  /// in holds size(axis) · count elements; out gets this member's reduced
  /// block (count elements).
  void reduceScatter(const void *in, void *out, size_t count, NcclType type,
                     NcclOp op, int axis, void *stream);
  /// data = member `root`'s data (root: a coordinate on `axis`).
  void broadcast(void *data, size_t count, NcclType type, int root, int axis,
                 void *stream);
  /// Point-to-point along `axis`; `peer` is a signed offset in coordinates
  /// (+1 the next stage). A send and its recv must be issued in matching
  /// order on both sides (NCCL orders point-to-point per peer and stream).
  void send(const void *data, size_t count, NcclType type, int peer, int axis,
            void *stream);
  void recv(void *data, size_t count, NcclType type, int peer, int axis,
            void *stream);

  /// Waits until `stream` has drained. Polls ncclCommGetAsyncError of every
  /// communicator; on an error, or when `timeoutSeconds` > 0 elapses, aborts
  /// the communicators and throws Error("rank R: nccl: WHAT: ..."). After an
  /// abort every later call throws.
  void synchronize(void *stream, double timeoutSeconds, const std::string &what);

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The version of the NCCL library this process loaded, "2.28.3".
std::string ncclVersionString();

} // namespace loom::cuda

#endif // LOOM_RUNTIME_CUDA_NCCL_H
