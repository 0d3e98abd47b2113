//===- Init.h - parameter initialisation ------------------------*- C++ -*-===//
//
// SEMANTICS.md: `zeros | ones | normal(std) | uniform(a, b) | glorot`, each
// element a pure function of (run seed, parameter name, global element
// index) through Philox (runtime/Random.h), so a shard initialises exactly
// the values the full tensor has at its indices.
//
//   normal(std)    std * sqrt(-2 ln u1) * cos(2 pi u2), u1 = 1 - uniform01(w0)
//                  in (0, 1], u2 = uniform01(w1), w = Philox words of the index
//   uniform(a, b)  a + (b - a) * uniform01(w0)
//   glorot         uniform(-r, r), r = sqrt(6 / (fan_in + fan_out)): fan_in =
//                  product of all dims but the last, fan_out = the last dim
//                  ([in, out] weights); rank 4 is a conv weight [out, in, kh,
//                  kw]: fan_in = in*kh*kw, fan_out = out*kh*kw (PyTorch)
//
// Arithmetic is in double, rounded once to the parameter's dtype.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_INIT_H
#define LOOM_RUNTIME_INIT_H

#include "runtime/Artifact.h"
#include "runtime/Sharding.h"

#include <cstdint>
#include <utility>
#include <vector>

namespace loom::runtime {

/// The Philox stream of a parameter: fnv1a64 of its name.
uint64_t paramStream(const std::string &name);

/// (fan_in, fan_out) as glorot uses them (of the full tensor: pass
/// ParamSpec::global()). Requires rank >= 2.
std::pair<int64_t, int64_t> glorotFans(const std::vector<int64_t> &shape);

/// Element `index` (row-major in the full shape, p.global()) of parameter
/// `p`.
double initValue(const ParamSpec &p, uint64_t seed, int64_t index);

/// Elements [begin, begin + count) of the full tensor into `out` (f32).
void initRange(const ParamSpec &p, uint64_t seed, int64_t begin, int64_t count,
               float *out);

/// A block of the full tensor (p.global()): dims [start[d], start[d] +
/// extent[d]) in each dimension d, row-major into `out` (f32). This is what
/// a rank holding a shard initialises.
void initBlock(const ParamSpec &p, uint64_t seed,
               const std::vector<int64_t> &start,
               const std::vector<int64_t> &extent, float *out);

/// Initialises every parameter of `m` in place in `arena`: the slice that
/// the rank at `coord` holds (Sharding.h), so any sharding gives the values
/// the single-rank run has at the same global indices. Only the parameters
/// of the rank's pipeline stage (coord[2]) and those without a stage: the
/// arena of one stage holds no other stage's.
void initParams(const Manifest &m, uint64_t seed, unsigned char *arena,
                const MeshCoord &coord = {0, 0, 0});

/// Sets every state buffer of `m` that pipeline stage `stage`'s `arena`
/// holds to its start: zero, or one for state marked "init": "ones".
void zeroState(const Manifest &m, unsigned char *arena, int64_t stage = 0);

} // namespace loom::runtime

#endif // LOOM_RUNTIME_INIT_H
