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
// through loom_ctx::mesh.
//
// Without MPI (not compiled in, or not initialised because the process was
// not launched under mpirun) only a world of one rank is possible; every
// group then has one member and the collectives are copies.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_COLLECTIVES_H
#define LOOM_RUNTIME_COLLECTIVES_H

#include <array>
#include <cstdint>
#include <memory>

namespace loom::runtime {

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

  /// The axis group's communicator: an `MPI_Comm` (only meaningful in an MPI
  /// build, and only for groups of more than one rank); kept opaque here so
  /// that this header never includes mpi.h.
  struct Comms;
  const Comms *comms() const { return comms_.get(); }

private:
  std::array<int, 3> sizes_{1, 1, 1}, coords_{0, 0, 0};
  int worldRank_ = 0, worldSize_ = 1;
  std::unique_ptr<Comms> comms_;
};

} // namespace loom::runtime

#endif // LOOM_RUNTIME_COLLECTIVES_H
