//===- Sharding.cpp - a rank's slice of a split tensor --------------------===//
#include "runtime/Sharding.h"

#include <cstring>

namespace loom::runtime {

MeshCoord meshCoordOf(const Mesh &mesh, int64_t rank) {
  return {rank / (mesh.tp * mesh.pp), rank / mesh.pp % mesh.tp,
          rank % mesh.pp};
}

std::vector<int64_t> sliceStart(const Buffer &b, const MeshCoord &coord) {
  std::vector<int64_t> start(b.shape.size(), 0);
  for (size_t d = 0; d < b.shape.size(); ++d)
    if (int32_t a = b.splitAxis(d); a >= 0)
      start[d] = coord[size_t(a)] * b.shape[d];
  return start;
}

bool ownsSlice(const Buffer &b, const MeshCoord &coord) {
  // pp splits no dimension: the pipeline coordinate is the buffer's stage.
  if (coord[2] != (b.stage >= 0 ? b.stage : 0))
    return false;
  for (int32_t a = 0; a < 2; ++a) {
    bool splitHere = false;
    for (size_t d = 0; d < b.shape.size(); ++d)
      splitHere |= b.splitAxis(d) == a;
    if (!splitHere && coord[size_t(a)] != 0)
      return false;
  }
  return true;
}

namespace {

/// Calls copy(fullOffset, blockOffset, bytes) for each contiguous run of the
/// block, in row-major order.
template <class Copy>
void forEachRun(const std::vector<int64_t> &fullShape,
                const std::vector<int64_t> &start,
                const std::vector<int64_t> &extent, size_t elemSize,
                Copy copy) {
  size_t rank = fullShape.size();
  if (rank == 0) {
    copy(size_t(0), size_t(0), elemSize);
    return;
  }
  for (size_t d = 0; d < rank; ++d)
    if (extent[d] == 0)
      return;
  // The innermost dimensions the block spans whole merge into one run.
  size_t inner = rank; // dims [inner, rank) are whole
  int64_t run = 1;
  while (inner > 0 && start[inner - 1] == 0 &&
         extent[inner - 1] == fullShape[inner - 1]) {
    --inner;
    run *= fullShape[inner];
  }
  if (inner == 0) {
    copy(size_t(0), size_t(0), size_t(run) * elemSize);
    return;
  }
  // Dim inner-1 is partial: each run is extent[inner-1] of its rows.
  size_t k = inner - 1;
  int64_t runElems = extent[k] * run;
  std::vector<int64_t> stride(rank, 1);
  for (size_t d = rank - 1; d-- > 0;)
    stride[d] = stride[d + 1] * fullShape[d + 1];
  // Iterate over the outer dims [0, k).
  std::vector<int64_t> idx(k, 0);
  size_t blockAt = 0;
  while (true) {
    int64_t fullAt = start[k] * stride[k];
    for (size_t d = 0; d < k; ++d)
      fullAt += (start[d] + idx[d]) * stride[d];
    copy(size_t(fullAt) * elemSize, blockAt, size_t(runElems) * elemSize);
    blockAt += size_t(runElems) * elemSize;
    size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < extent[d])
        break;
      idx[d] = 0;
      if (d == 0)
        return;
    }
    if (k == 0)
      return;
  }
}

} // namespace

void extractBlock(const void *full, const std::vector<int64_t> &fullShape,
                  const std::vector<int64_t> &start,
                  const std::vector<int64_t> &extent, size_t elemSize,
                  void *block) {
  const auto *src = static_cast<const unsigned char *>(full);
  auto *dst = static_cast<unsigned char *>(block);
  forEachRun(fullShape, start, extent, elemSize,
             [&](size_t fullAt, size_t blockAt, size_t bytes) {
               std::memcpy(dst + blockAt, src + fullAt, bytes);
             });
}

void insertBlock(const void *block, const std::vector<int64_t> &fullShape,
                 const std::vector<int64_t> &start,
                 const std::vector<int64_t> &extent, size_t elemSize,
                 void *full) {
  const auto *src = static_cast<const unsigned char *>(block);
  auto *dst = static_cast<unsigned char *>(full);
  forEachRun(fullShape, start, extent, elemSize,
             [&](size_t fullAt, size_t blockAt, size_t bytes) {
               std::memcpy(dst + fullAt, src + blockAt, bytes);
             });
}

} // namespace loom::runtime
