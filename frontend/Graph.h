//===- Graph.h - the elaborated model: typed ops, layers unrolled -*- C++ -*-===//
//
// Sema's output: every name resolved, every layer instantiated (a `repeat`
// unrolled, each instance with its own parameters), every value typed with
// concrete shapes. It is still MLIR-free; MLIRGen turns each Node into the
// loom op of the same name, attribute for attribute.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_FRONTEND_GRAPH_H
#define LOOM_FRONTEND_GRAPH_H

#include "dialects/Loom/ShapeRules.h"
#include "frontend/Diagnostics.h"
#include "frontend/TrainConfig.h"

#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace loom::frontend {

using AttrValue = std::variant<int64_t, double, bool, std::string,
                               std::vector<int64_t>, std::vector<double>,
                               std::vector<std::string>>;

struct Region;

/// One loom op: `op` is its name without the dialect prefix ("matmul").
struct Node {
  std::string op;
  std::vector<int> operands; ///< value ids
  std::vector<int> results;  ///< value ids
  std::vector<std::pair<std::string, AttrValue>> attrs;
  SourceLoc loc;
  std::unique_ptr<Region> region; ///< for "layer"
};

/// A block of nodes; a layer's region has arguments and yields values.
struct Region {
  std::vector<int> args;
  std::vector<Node> nodes;
  std::vector<int> yields;
};

struct Graph {
  std::string modelName;
  SourceLoc loc;
  std::vector<shape::TensorType> values; ///< indexed by value id
  Region body;
  TrainConfig config;
};

} // namespace loom::frontend

#endif // LOOM_FRONTEND_GRAPH_H
