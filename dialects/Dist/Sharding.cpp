//===- Sharding.cpp - shardings of values ---------------------------------===//

#include "dialects/Dist/Sharding.h"

#include "mlir/IR/BuiltinAttributes.h"

using namespace mlir;

#include "dialects/Dist/ShardingInterface.cpp.inc"

namespace loom::sharding {

const char *axisName(int axis) {
  switch (axis) {
  case kDp:
    return "dp";
  case kTp:
    return "tp";
  default:
    return "_";
  }
}

std::optional<int> axisNamed(StringRef name) {
  if (name == "dp")
    return kDp;
  if (name == "tp")
    return kTp;
  if (name == "_")
    return kNone;
  return std::nullopt;
}

bool Sharding::isReplicated() const {
  if (partial)
    return false;
  for (int d : dims)
    if (d != kNone)
      return false;
  return true;
}

unsigned Sharding::splitAxes() const {
  unsigned m = 0;
  for (int d : dims)
    if (d != kNone)
      m |= 1u << d;
  return m;
}

std::string Sharding::str() const {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i)
      s += ", ";
    s += axisName(dims[i]);
  }
  s += "]";
  if (partial) {
    s += " partial(";
    bool first = true;
    for (int a = 0; a < kNumAxes; ++a)
      if (partial & (1u << a)) {
        s += first ? "" : ", ";
        s += axisName(a);
        first = false;
      }
    s += ")";
  }
  return s;
}

std::optional<Sharding> Sharding::parse(StringRef text) {
  text = text.trim();
  if (!text.consume_front("["))
    return std::nullopt;
  auto close = text.find(']');
  if (close == StringRef::npos)
    return std::nullopt;
  Sharding s;
  StringRef inner = text.take_front(close);
  text = text.drop_front(close + 1).trim();
  SmallVector<StringRef> parts;
  inner.split(parts, ',', -1, false);
  for (StringRef p : parts) {
    auto a = axisNamed(p.trim());
    if (!a)
      return std::nullopt;
    s.dims.push_back(*a);
  }
  if (text.consume_front("partial(")) {
    if (!text.consume_back(")"))
      return std::nullopt;
    SmallVector<StringRef> axes;
    text.split(axes, ',', -1, false);
    for (StringRef p : axes) {
      auto a = axisNamed(p.trim());
      if (!a || *a == kNone)
        return std::nullopt;
      s.partial |= 1u << *a;
    }
  } else if (!text.empty()) {
    return std::nullopt;
  }
  return s;
}

RankedTensorType localType(RankedTensorType t, const Sharding &s,
                           const Mesh &mesh) {
  SmallVector<int64_t> shape(t.getShape());
  for (size_t i = 0; i < shape.size() && i < s.dims.size(); ++i)
    if (s.dims[i] != kNone)
      shape[i] /= mesh.group(s.dims[i]);
  return RankedTensorType::get(shape, t.getElementType());
}

double reshardBytes(RankedTensorType t, const Sharding &from,
                    const Sharding &to, const Mesh &mesh) {
  double bytes = static_cast<double>(t.getNumElements()) *
                 std::max<int64_t>(1, t.getElementTypeBitWidth() / 8);
  // Per-rank bytes of the value as `from` holds it.
  for (int d : from.dims)
    if (d != kNone)
      bytes /= static_cast<double>(mesh.group(d));
  double cost = 0;
  for (int a = 0; a < kNumAxes; ++a) {
    double n = static_cast<double>(mesh.group(a));
    if (n <= 1)
      continue;
    bool wasPartial = from.partial & (1u << a), isPartial = to.partial & (1u << a);
    if (wasPartial && !isPartial) {
      bool scatter = !(from.splitAxes() & (1u << a)) && (to.splitAxes() & (1u << a));
      cost += (scatter ? 1.0 : 2.0) * (n - 1) / n * bytes;
    }
  }
  for (size_t i = 0; i < from.dims.size() && i < to.dims.size(); ++i)
    if (from.dims[i] != kNone && from.dims[i] != to.dims[i]) {
      double n = static_cast<double>(mesh.group(from.dims[i]));
      cost += (n - 1) * bytes; // all-gather: receive the other shards
      bytes *= n;
    }
  return cost;
}

} // namespace loom::sharding
