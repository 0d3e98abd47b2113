//===- Artifact.cpp - the .loomx writer (runtime/ARTIFACT.md) -------------===//

#include "compiler/codegen/Codegen.h"

#include "runtime/abi/loom_abi.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <cstdio>

using namespace mlir;

namespace loom::codegen {
namespace {

constexpr uint32_t kFormatVersion = 1;

void jsonString(llvm::raw_ostream &os, llvm::StringRef s) {
  os << '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\')
      os << '\\' << c;
    else if (c == '\n')
      os << "\\n";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      os << buf;
    } else
      os << c;
  }
  os << '"';
}

void jsonNumber(llvm::raw_ostream &os, double v) {
  if (!std::isfinite(v)) {
    os << "null";
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  os << buf;
}

/// Attribute → JSON: dictionaries, arrays, strings, numbers, booleans.
void json(llvm::raw_ostream &os, Attribute a) {
  if (auto d = dyn_cast<DictionaryAttr>(a)) {
    os << '{';
    bool first = true;
    for (NamedAttribute na : d) {
      os << (first ? "" : ", ");
      first = false;
      jsonString(os, na.getName().getValue());
      os << ": ";
      json(os, na.getValue());
    }
    os << '}';
  } else if (auto arr = dyn_cast<ArrayAttr>(a)) {
    os << '[';
    for (size_t i = 0; i < arr.size(); ++i) {
      os << (i ? ", " : "");
      json(os, arr[i]);
    }
    os << ']';
  } else if (auto s = dyn_cast<StringAttr>(a)) {
    jsonString(os, s.getValue());
  } else if (auto b = dyn_cast<BoolAttr>(a)) {
    os << (b.getValue() ? "true" : "false");
  } else if (auto i = dyn_cast<IntegerAttr>(a)) {
    os << i.getInt();
  } else if (auto f = dyn_cast<FloatAttr>(a)) {
    jsonNumber(os, f.getValueAsDouble());
  } else if (auto ia = dyn_cast<DenseI64ArrayAttr>(a)) {
    os << '[';
    for (size_t i = 0; i < ia.size(); ++i)
      os << (i ? ", " : "") << ia[i];
    os << ']';
  } else if (auto fa = dyn_cast<DenseF64ArrayAttr>(a)) {
    os << '[';
    for (size_t i = 0; i < fa.size(); ++i) {
      os << (i ? ", " : "");
      jsonNumber(os, fa[i]);
    }
    os << ']';
  } else {
    os << "null";
  }
}

uint64_t fnv1a64(const std::string &bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

void put(std::string &out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

} // namespace

std::string manifestJson(ModuleOp module, const ArtifactInfo &info) {
  std::string text;
  llvm::raw_string_ostream os(text);
  auto manifest = module->getAttrOfType<DictionaryAttr>("loom.manifest");
  os << "{\"format\": \"loomx\", \"format_version\": " << kFormatVersion
     << ", \"abi_version\": " << LOOM_ABI_VERSION << ", \"source\": ";
  jsonString(os, info.source);
  os << ", \"target\": ";
  jsonString(os, info.target);
  os << ", \"cpu_features\": [";
  for (size_t i = 0; i < info.cpuFeatures.size(); ++i) {
    os << (i ? ", " : "");
    jsonString(os, info.cpuFeatures[i]);
  }
  os << "]";
  if (info.target == "cuda") {
    os << ", \"kernels\": [";
    for (size_t i = 0; i < info.kernels.size(); ++i) {
      os << (i ? ", " : "") << "{\"name\": ";
      jsonString(os, info.kernels[i].name);
      os << ", \"grid\": " << info.kernels[i].grid
         << ", \"block\": " << info.kernels[i].block << ", \"origin\": ";
      jsonString(os, info.kernels[i].origin);
      os << "}";
    }
    os << "], \"cuda_graph_programs\": [";
    for (size_t i = 0; i < info.graphPrograms.size(); ++i) {
      os << (i ? ", " : "");
      jsonString(os, info.graphPrograms[i]);
    }
    os << "], \"device_step_offset\": " << info.stepOffset << ", \"ptx\": ";
    jsonString(os, info.ptx);
  }
  for (NamedAttribute na : manifest) {
    os << ", ";
    jsonString(os, na.getName().getValue());
    os << ": ";
    if (na.getName() == "mesh") {
      auto mesh = cast<DenseI64ArrayAttr>(na.getValue());
      os << "{\"dp\": " << mesh[0] << ", \"tp\": " << mesh[1]
         << ", \"pp\": " << mesh[2] << "}";
      continue;
    }
    json(os, na.getValue());
  }
  os << "}\n";
  return text;
}

LogicalResult writeArtifact(Location loc, const std::string &path,
                            const std::string &sharedObject,
                            const std::string &manifest) {
  std::string bytes = sharedObject + manifest;
  uint64_t checksum = fnv1a64(bytes);
  std::string trailer = "LOOMX";
  trailer.append({'\0', '\0', '\1'});
  put(trailer, kFormatVersion, 4);
  put(trailer, LOOM_ABI_VERSION, 4);
  put(trailer, sharedObject.size(), 8);
  put(trailer, sharedObject.size(), 8);
  put(trailer, manifest.size(), 8);
  put(trailer, checksum, 8);
  trailer.append(16, '\0');

  // Write beside the target and rename: never a half-written artifact.
  llvm::SmallString<256> tmp(path);
  tmp += ".tmp";
  {
    std::error_code ec;
    llvm::raw_fd_ostream os(tmp, ec);
    if (ec)
      return emitError(loc, "cannot write '") << tmp << "': " << ec.message();
    os << bytes << trailer;
    os.close();
    if (os.has_error())
      return emitError(loc, "writing '") << tmp << "' failed";
  }
  if (std::error_code ec = llvm::sys::fs::rename(tmp, path)) {
    llvm::sys::fs::remove(tmp);
    return emitError(loc, "cannot write '") << path << "': " << ec.message();
  }
  return success();
}

} // namespace loom::codegen
