//===- Sharding.h - a rank's slice of a split tensor ------------*- C++ -*-===//
//
// A buffer of the manifest is this rank's slice of a global tensor
// (ARTIFACT.md, "Sharded buffers"): each dimension d is either whole or split
// evenly over one mesh axis a, this rank holding
//
//   [coord(a) * shape[d], (coord(a) + 1) * shape[d])   of   globalShape[d]
//
// with coord(a) its coordinate on that axis (Collectives.h's rank mapping).
// These helpers find that block and copy it out of, or into, the row-major
// full tensor; the initialiser, the data loader's batch slicing, --save,
// --init-from and the sharded checkpoints use them.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_SHARDING_H
#define LOOM_RUNTIME_SHARDING_H

#include "runtime/Artifact.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace loom::runtime {

/// A rank's coordinates on the mesh axes dp, tp, pp.
using MeshCoord = std::array<int64_t, 3>;

/// The coordinates of world rank `rank` (r = ((d·tp)+t)·pp+p).
MeshCoord meshCoordOf(const Mesh &mesh, int64_t rank);

/// Where this rank's slice of `b` starts in each dimension of the global
/// tensor (all zeros for a buffer that is not split).
std::vector<int64_t> sliceStart(const Buffer &b, const MeshCoord &coord);

/// Whether the rank at `coord` is the one whose copy of its slice counts
/// when slices are assembled (--save): coordinate 0 on every mesh axis that
/// `b` is not split over, except pp, where it is the buffer's stage (0 for a
/// buffer every stage holds). The other ranks hold replicas of the same
/// block, or (another stage) none.
bool ownsSlice(const Buffer &b, const MeshCoord &coord);

/// Copies the block [start, start + extent) of the row-major tensor `full`
/// (shape `fullShape`, elements of `elemSize` bytes) into the dense
/// row-major `block`.
void extractBlock(const void *full, const std::vector<int64_t> &fullShape,
                  const std::vector<int64_t> &start,
                  const std::vector<int64_t> &extent, size_t elemSize,
                  void *block);
/// The inverse: writes the dense `block` into its place in `full`.
void insertBlock(const void *block, const std::vector<int64_t> &fullShape,
                 const std::vector<int64_t> &start,
                 const std::vector<int64_t> &extent, size_t elemSize,
                 void *full);

} // namespace loom::runtime

#endif // LOOM_RUNTIME_SHARDING_H
