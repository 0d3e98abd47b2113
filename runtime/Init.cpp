//===- Init.cpp - parameter initialisation --------------------------------===//
#include "runtime/Init.h"

#include "runtime/Hash.h"
#include "runtime/Random.h"

#include <cmath>
#include <algorithm>
#include <cstring>

namespace loom::runtime {

uint64_t paramStream(const std::string &name) { return fnv1a64(name); }

std::pair<int64_t, int64_t> glorotFans(const std::vector<int64_t> &shape) {
  if (shape.size() < 2)
    throw Error("glorot needs rank >= 2");
  if (shape.size() == 4) {
    int64_t receptive = shape[2] * shape[3];
    return {shape[1] * receptive, shape[0] * receptive};
  }
  int64_t fanIn = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i)
    fanIn *= shape[i];
  return {fanIn, shape.back()};
}

namespace {

/// What one parameter's initialiser needs per element, computed once.
struct Initializer {
  enum Kind { Zeros, Ones, Normal, Uniform } kind = Zeros;
  double a = 0, b = 0; ///< normal: std in a; uniform: [a, b)
  uint64_t seed = 0, stream = 0;

  Initializer(const ParamSpec &p, uint64_t runSeed)
      : seed(runSeed), stream(paramStream(p.name)) {
    if (p.init == "zeros") {
      kind = Zeros;
    } else if (p.init == "ones") {
      kind = Ones;
    } else if (p.init == "normal") {
      kind = Normal;
      a = p.initArgs.at(0);
    } else if (p.init == "uniform") {
      kind = Uniform;
      a = p.initArgs.at(0);
      b = p.initArgs.at(1);
    } else if (p.init == "glorot") {
      kind = Uniform;
      // The full tensor's fans, whatever slice this rank holds.
      auto [fanIn, fanOut] = glorotFans(p.global());
      double r = std::sqrt(6.0 / static_cast<double>(fanIn + fanOut));
      a = -r;
      b = r;
    } else {
      throw Error("parameter '" + p.name + "': unknown initialiser '" + p.init +
                  "'");
    }
  }

  double operator()(int64_t index) const {
    switch (kind) {
    case Zeros:
      return 0.0;
    case Ones:
      return 1.0;
    case Uniform: {
      PhiloxCounter w = philoxAt(seed, stream, 0, static_cast<uint64_t>(index));
      return a + (b - a) * static_cast<double>(uniform01(w[0]));
    }
    case Normal: {
      PhiloxCounter w = philoxAt(seed, stream, 0, static_cast<uint64_t>(index));
      double u1 = 1.0 - static_cast<double>(uniform01(w[0])); // (0, 1]
      double u2 = static_cast<double>(uniform01(w[1]));       // [0, 1)
      return a * std::sqrt(-2.0 * std::log(u1)) *
             std::cos(2.0 * 3.14159265358979323846 * u2);
    }
    }
    return 0.0;
  }
};

} // namespace

double initValue(const ParamSpec &p, uint64_t seed, int64_t index) {
  return Initializer(p, seed)(index);
}

void initRange(const ParamSpec &p, uint64_t seed, int64_t begin, int64_t count,
               float *out) {
  Initializer init(p, seed);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (count > 65536)
#endif
  for (int64_t i = 0; i < count; ++i)
    out[i] = static_cast<float>(init(begin + i));
}

namespace {

template <class T>
void initBlockOf(const ParamSpec &p, uint64_t seed,
                 const std::vector<int64_t> &start,
                 const std::vector<int64_t> &extent, T *out) {
  const std::vector<int64_t> &full = p.global();
  size_t rank = full.size();
  if (start.size() != rank || extent.size() != rank)
    throw Error("parameter '" + p.name + "': a block of rank " +
                std::to_string(start.size()) + " for a tensor of rank " +
                std::to_string(rank));
  int64_t count = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (start[d] < 0 || extent[d] < 0 || start[d] + extent[d] > full[d])
      throw Error("parameter '" + p.name +
                  "': block outside the tensor in dim " + std::to_string(d));
    count *= extent[d];
  }
  Initializer init(p, seed);
  // Row-major strides of the full tensor.
  std::vector<int64_t> stride(rank, 1);
  for (size_t d = rank; d-- > 1;)
    stride[d - 1] = stride[d] * full[d];
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (count > 65536)
#endif
  for (int64_t i = 0; i < count; ++i) {
    int64_t rem = i, global = 0;
    for (size_t d = rank; d-- > 0;) {
      int64_t coord = rem % extent[d];
      rem /= extent[d];
      global += (start[d] + coord) * stride[d];
    }
    out[i] = static_cast<T>(init(global));
  }
}

} // namespace

void initBlock(const ParamSpec &p, uint64_t seed,
               const std::vector<int64_t> &start,
               const std::vector<int64_t> &extent, float *out) {
  initBlockOf(p, seed, start, extent, out);
}

void initParams(const Manifest &m, uint64_t seed, unsigned char *arena,
                const MeshCoord &coord) {
  for (const ParamSpec &p : m.params) {
    // Another pipeline stage's parameter is not in this arena.
    if (!p.inStage(coord[2]))
      continue;
    unsigned char *dst = arena + p.offset;
    if (p.dtype != DType::F32 && p.dtype != DType::F64)
      throw Error(std::string("parameter '") + p.name +
                  "': cannot initialise " + dtypeName(p.dtype) +
                  " (parameters are f32 or f64)");
    if (!p.isSplit() && p.dtype == DType::F32) {
      initRange(p, seed, 0, p.elements, reinterpret_cast<float *>(dst));
      continue;
    }
    // This rank's slice: the full tensor's values at their global indices.
    std::vector<int64_t> start = sliceStart(p, coord);
    if (p.dtype == DType::F32)
      initBlockOf(p, seed, start, p.shape, reinterpret_cast<float *>(dst));
    else
      initBlockOf(p, seed, start, p.shape, reinterpret_cast<double *>(dst));
  }
}

void zeroState(const Manifest &m, unsigned char *arena, int64_t stage) {
  for (const Buffer &b : m.state) {
    if (!b.inStage(stage))
      continue;
    std::memset(arena + b.offset, 0, static_cast<size_t>(b.bytes));
    if (b.startsAtOne && b.dtype == DType::F32)
      std::fill_n(reinterpret_cast<float *>(arena + b.offset), b.elements, 1.0f);
    else if (b.startsAtOne && b.dtype == DType::F64)
      std::fill_n(reinterpret_cast<double *>(arena + b.offset), b.elements, 1.0);
  }
}

} // namespace loom::runtime
