//===- Explain.cpp - sharding explanations and communication --------------===//

#include "compiler/tools/loomc/Explain.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Location.h"
#include "llvm/Support/Format.h"

using namespace mlir;

namespace loom::loomc {
namespace {

std::string locText(Location loc) {
  if (auto f = dyn_cast<FileLineColLoc>(loc))
    return (f.getFilename().getValue() + ":" + Twine(f.getLine()) + ":" +
            Twine(f.getColumn()))
        .str();
  if (auto n = dyn_cast<NameLoc>(loc))
    return locText(n.getChildLoc());
  if (auto fused = dyn_cast<FusedLoc>(loc))
    for (Location l : fused.getLocations())
      if (auto t = locText(l); !t.empty())
        return t;
  return "";
}

int64_t bytesOf(Type t) {
  auto r = dyn_cast<RankedTensorType>(t);
  if (!r)
    return 0;
  return r.getNumElements() *
         std::max<int64_t>(1, r.getElementTypeBitWidth() / 8);
}

std::string typeText(Type t) {
  std::string s;
  llvm::raw_string_ostream os(s);
  t.print(os);
  return s;
}


} // namespace

std::string humanBytes(double b) {
  char buf[32];
  if (b >= double(1 << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1 << 30));
  else if (b >= double(1 << 20))
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / double(1 << 20));
  else if (b >= 1024)
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

Communication analyzeCommunication(ModuleOp module) {
  Communication comm;
  module.walk([&](Operation *op) {
    if (op->getName().getStringRef() == "dist.mesh")
      if (auto s = op->getAttrOfType<DenseI64ArrayAttr>("shape"))
        for (size_t i = 0; i < 3 && i < s.size(); ++i)
          comm.mesh[i] = s[i];
  });
  auto groupOf = [&](StringRef axis) -> int64_t {
    return axis == "dp" ? comm.mesh[0] : axis == "tp" ? comm.mesh[1] : comm.mesh[2];
  };
  module.walk([&](Operation *program) {
    if (program->getName().getStringRef() != "dist.program")
      return;
    auto kind = program->getAttrOfType<StringAttr>("kind");
    if (!kind || kind.getValue() != "train")
      return;
    for (Operation &op : program->getRegion(0).front()) {
      StringRef n = op.getName().getStringRef();
      auto add = [&](Collective c) {
        comm.sentBytes += c.sentBytes;
        comm.payloadBytes += c.payloadBytes;
        comm.collectives.push_back(std::move(c));
      };
      if (n.starts_with("dist.") && n != "dist.program" && n != "dist.mesh") {
        Collective c;
        c.kind = n.drop_front(5).str();
        auto axis = op.getAttrOfType<StringAttr>("axis");
        c.axis = axis ? axis.getValue().str() : "";
        c.group = groupOf(c.axis);
        double g = static_cast<double>(c.group);
        int64_t in = op.getNumOperands() ? bytesOf(op.getOperand(0).getType()) : 0;
        int64_t out = op.getNumResults() ? bytesOf(op.getResult(0).getType()) : in;
        if (auto stage = program->getAttrOfType<IntegerAttr>("stage"))
          c.stage = stage.getInt();
        if (c.kind == "send") {
          c.payloadBytes = in;
          c.sentBytes = in;
        } else if (c.kind == "recv") {
          c.payloadBytes = out;
          c.sentBytes = 0;
        } else if (c.kind == "all_reduce") {
          c.payloadBytes = in;
          c.sentBytes = 2 * (g - 1) / g * in;
        } else if (c.kind == "all_gather") {
          c.payloadBytes = out;
          c.sentBytes = (g - 1) / g * out;
        } else if (c.kind == "reduce_scatter") {
          c.payloadBytes = in;
          c.sentBytes = (g - 1) / g * in;
        } else {
          c.payloadBytes = 0; // dist.shard: a local slice
        }
        if (auto cause = op.getAttrOfType<StringAttr>("dist.cause"))
          c.cause = cause.getValue().str();
        c.where = locText(op.getLoc());
        add(std::move(c));
        continue;
      }
      // Kernel-internal collectives of vocabulary-parallel cross-entropy:
      // per row, the max, the sum of exp and the target logit (the forward)
      // and the argmax (for accuracy): four all-reduces of `rows` floats.
      if ((n == "train.cross_entropy" || n == "loom.cross_entropy") &&
          op.hasAttr("vocab_axis")) {
        int64_t axis = cast<IntegerAttr>(op.getAttr("vocab_axis")).getInt();
        auto lse = cast<RankedTensorType>(op.getResult(1).getType());
        Collective c;
        c.kind = "all_reduce (inside cross_entropy)";
        c.axis = axis == 0 ? "dp" : "tp";
        c.group = groupOf(c.axis);
        double g = static_cast<double>(c.group);
        c.payloadBytes = 4 * lse.getNumElements() * 4;
        c.sentBytes = 2 * (g - 1) / g * c.payloadBytes;
        c.where = locText(op.getLoc());
        c.cause = "vocabulary-parallel cross-entropy: row max, sum of exp, "
                  "target logit and argmax over the classes split on " + c.axis;
        add(std::move(c));
      }
    }
  });
  return comm;
}

void explainSharding(ModuleOp module, const Communication &comm,
                     llvm::raw_ostream &os) {
  os << "mesh dp=" << comm.mesh[0] << " tp=" << comm.mesh[1]
     << " pp=" << comm.mesh[2] << " ("
     << comm.mesh[0] * comm.mesh[1] * comm.mesh[2] << " ranks)\n"
     << "A sharding lists, per dimension, the mesh axis it is split over "
        "(_: whole); partial(a): each rank holds a partial sum over a.\n";
  module.walk([&](Operation *program) {
    if (program->getName().getStringRef() != "dist.program")
      return;
    os << "\nprogram " << cast<StringAttr>(program->getAttr("sym_name")).getValue()
       << ":\n";
    for (Operation &op : program->getRegion(0).front()) {
      auto res = op.getAttrOfType<ArrayAttr>("dist.sharding");
      auto reason = op.getAttrOfType<StringAttr>("dist.reason");
      std::string where = locText(op.getLoc());
      if (op.getName().getStringRef().starts_with("dist.")) {
        os << llvm::format("  %-28s ", where.c_str()) << "+ "
           << op.getName().getStringRef().drop_front(5);
        if (auto a = op.getAttrOfType<StringAttr>("axis"))
          os << " over " << a.getValue();
        if (op.getNumOperands())
          os << "  " << typeText(op.getOperand(0).getType()) << " ("
             << humanBytes(static_cast<double>(bytesOf(op.getOperand(0).getType())))
             << ")";
        if (auto cause = op.getAttrOfType<StringAttr>("dist.cause"))
          os << "\n  " << std::string(29, ' ') << "  because " << cause.getValue();
        os << "\n";
        continue;
      }
      if (!res || !reason)
        continue; // ops the partitioner added (weights, buckets)
      std::string shard;
      for (Attribute a : res)
        shard += (shard.empty() ? "" : ", ") + cast<StringAttr>(a).getValue().str();
      if (shard.empty())
        shard = "-";
      std::string name = op.getName().getStringRef().str();
      if (auto n = op.getAttrOfType<StringAttr>("name"))
        name += " \"" + n.getValue().str() + "\"";
      os << llvm::format("  %-28s %-32s %s", where.c_str(), name.c_str(),
                         shard.c_str())
         << "\n  " << std::string(29, ' ') << "  " << reason.getValue() << "\n";
    }
  });
  os << "\ncollectives of one training step, per rank:\n";
  for (const Collective &c : comm.collectives)
    os << llvm::format("  %-34s over %-3s payload %10s, sends %10s  at %s\n",
                       c.kind.c_str(), c.axis.c_str(),
                       humanBytes(static_cast<double>(c.payloadBytes)).c_str(),
                       humanBytes(c.sentBytes).c_str(), c.where.c_str());
  os << "total: " << comm.collectives.size() << " collective(s), payload "
     << humanBytes(static_cast<double>(comm.payloadBytes)) << ", sent per rank "
     << humanBytes(comm.sentBytes) << " (ring model)\n";
}

} // namespace loom::loomc
