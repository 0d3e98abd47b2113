//===- Sharding.h - shardings of values, and the op interface -*- C++ -*-===//
//
// A sharding says how one rank holds a value of the global training step:
// for each dimension, the mesh axis it is split over (or none), and the axes
// over which the rank holds only a partial sum (a row-parallel matmul's
// output before its all-reduce, a data-parallel gradient before the
// gradient all-reduce). It is written `[dp, _, tp]` or `[_, tp] partial(dp)`.
//
// Each op states its sharding rule through `ShardingRuleOpInterface`
// (ShardingInterface.td): given the shardings its operands have, the
// shardings it needs them in (a difference costs a collective or a free
// local slice) and the shardings of its results, with the reason. The loom
// and train ops get theirs as external models
// (compiler/passes/ShardingRules.cpp); an op without the interface computes
// on whole (replicated) values, which is always correct.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_DIALECTS_DIST_SHARDING_H
#define LOOM_DIALECTS_DIST_SHARDING_H

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/Operation.h"
#include "llvm/ADT/SmallVector.h"

#include <array>
#include <functional>
#include <map>
#include <optional>
#include <string>

namespace loom::sharding {

/// Mesh axes that split tensors. pp splits programs, not tensors.
enum Axis : int { kNone = -1, kDp = 0, kTp = 1 };
constexpr int kNumAxes = 2;
const char *axisName(int axis);
std::optional<int> axisNamed(llvm::StringRef name);

struct Sharding {
  llvm::SmallVector<int, 4> dims; ///< per dimension: an Axis
  unsigned partial = 0;           ///< bit a: a pending sum over axis a

  static Sharding replicated(unsigned rank) {
    Sharding s;
    s.dims.assign(rank, kNone);
    return s;
  }
  bool isReplicated() const;
  /// The axes any dimension is split over, as a bit set.
  unsigned splitAxes() const;
  bool operator==(const Sharding &o) const {
    return dims == o.dims && partial == o.partial;
  }
  bool operator!=(const Sharding &o) const { return !(*this == o); }
  std::string str() const;
  static std::optional<Sharding> parse(llvm::StringRef text);
};

struct Mesh {
  std::array<int64_t, 3> size = {1, 1, 1}; ///< dp, tp, pp
  int64_t zero = 0;
  int64_t group(int axis) const { return axis < 0 ? 1 : size[axis]; }
};

/// The per-rank type of a value of global type `t` held as `s`.
mlir::RankedTensorType localType(mlir::RankedTensorType t, const Sharding &s,
                                 const Mesh &mesh);
/// Bytes one rank sends to turn `from` into `to` (the ring model for
/// all-reduce: 2(n-1)/n of the buffer; gather/scatter (n-1)/n; a local slice
/// is free), for a value of global type `t`.
double reshardBytes(mlir::RankedTensorType t, const Sharding &from,
                    const Sharding &to, const Mesh &mesh);

struct Rule {
  llvm::SmallVector<Sharding> operands; ///< what the op needs
  llvm::SmallVector<Sharding> results;  ///< what it produces
  std::string reason;
};

/// What a rule may ask about the rest of the program.
struct RuleContext {
  Mesh mesh;
  /// The sharding of a persistent tensor (parameter or optimizer state) by
  /// name, as the program stores it.
  std::function<std::optional<Sharding>(llvm::StringRef)> stored;
  /// The sharding already chosen for a value (its defining op's result).
  std::function<Sharding(mlir::Value)> of;
};

/// The rule of `op` given its operands' shardings: its
/// ShardingRuleOpInterface, or whole values for an op without one. Fails
/// (with a diagnostic on the op) only for requests that cannot be met, such
/// as a `shard` annotation on a dimension its axis does not divide.
mlir::FailureOr<Rule> ruleFor(mlir::Operation *op,
                              llvm::ArrayRef<Sharding> operands,
                              const RuleContext &ctx);

/// The sharding a `train.param` gets from its `shard` annotation, or a
/// diagnostic; `train.state` of a parameter follows its parameter, plus
/// (ZeRO-1) a split over dp of its first dimension dp divides.
mlir::FailureOr<Sharding> annotated(mlir::Operation *param, const Mesh &mesh);
std::optional<int> zeroDim(mlir::RankedTensorType t, const Sharding &s,
                           const Mesh &mesh);

/// The mesh (and ZeRO stage) of a train step's `config` attribute.
Mesh meshOfStep(mlir::Operation *step);
/// loom-propagate-sharding on one train step, for its own mesh or `mesh`
/// (compiler/passes/PropagateSharding.cpp).
mlir::LogicalResult propagateSharding(mlir::Operation *step);
mlir::LogicalResult propagateSharding(mlir::Operation *step, const Mesh &mesh);

/// Attribute names the propagation writes and partitioning reads.
constexpr const char *kResultsAttr = "dist.sharding";
constexpr const char *kOperandsAttr = "dist.operand_sharding";
constexpr const char *kReasonAttr = "dist.reason";

} // namespace loom::sharding

#include "dialects/Dist/ShardingInterface.h.inc"

#endif // LOOM_DIALECTS_DIST_SHARDING_H
