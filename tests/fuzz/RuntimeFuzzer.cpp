//===- RuntimeFuzzer.cpp - libFuzzer target for the runtime's readers -----===//
//
// The runtime reads files that come from elsewhere: safetensors weights and
// checkpoints, artifacts, checkpoint indexes. The contract under test: any
// byte string is either accepted or refused with a runtime Error — no
// crash, no hang, no sanitizer report, no other exception — and what is
// accepted survives a write/read round trip. Nothing is dlopen'ed.
//
// The first byte picks the reader (the seeds in runtime-corpus/ carry it):
//   0  a safetensors file (validateBytes, finite check on)
//   1  manifest JSON (parseManifest, then describe and the layout hash)
//   2  an artifact's manifest + 64-byte trailer, behind a fake 64-byte ELF
//      header; the trailer's checksum is recomputed so that mutations reach
//      the checks behind it (validateImage)
//   3  a checkpoint's index.json (CheckpointIndex::fromJson)
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/Checkpoint.h"
#include "runtime/Hash.h"
#include "runtime/Json.h"
#include "runtime/Safetensors.h"
#include "runtime/Support.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace loom::runtime;
namespace json = loom::json;
namespace st = loom::runtime::safetensors;

namespace {

void fuzzSafetensors(const uint8_t *data, size_t size) {
  st::Header h;
  try {
    h = st::validateBytes(data, size, /*checkFinite=*/true);
  } catch (const Error &) {
    return;
  }
  // Accepted: writing the same tensors back must give a file the reader
  // accepts, with the same tensors.
  std::vector<st::TensorData> tensors;
  for (const st::TensorInfo &t : h.tensors)
    tensors.push_back({t.name, t.dtype, t.shape, data + h.dataStart + t.begin});
  std::vector<unsigned char> again = st::encode(tensors, h.metadata);
  st::Header h2 = st::validateBytes(again.data(), again.size(), true);
  if (h2.tensors.size() != h.tensors.size() ||
      h2.metadata.size() != h.metadata.size() || (8 + h2.headerBytes) % 8)
    std::abort();
  for (const st::TensorInfo &t : h2.tensors) {
    const st::TensorInfo *o = h.find(t.name);
    if (!o || o->dtype != t.dtype || o->shape != t.shape ||
        std::memcmp(again.data() + h2.dataStart + t.begin,
                    data + h.dataStart + o->begin, t.bytes()) != 0)
      std::abort();
  }
}

void fuzzManifest(const uint8_t *data, size_t size) {
  try {
    Manifest m = parseManifest(
        std::string_view(reinterpret_cast<const char *>(data), size));
    (void)describe(m, "fuzz.loomx");
    (void)layoutFingerprint(m);
  } catch (const Error &) {
  }
}

void fuzzArtifact(const uint8_t *data, size_t size) {
  std::vector<unsigned char> image(64, 0);
  const unsigned char elf[] = {0x7f, 'E', 'L', 'F', 2, 1};
  std::memcpy(image.data(), elf, sizeof elf);
  image[18] = 62; // x86-64
  image.insert(image.end(), data, data + size);
  if (image.size() >= 64 + kTrailerBytes) {
    unsigned char *trailer = image.data() + image.size() - kTrailerBytes;
    uint64_t offset = 0, manifest = 0;
    for (int i = 7; i >= 0; --i) {
      offset = offset << 8 | trailer[24 + i];
      manifest = manifest << 8 | trailer[32 + i];
    }
    uint64_t body = image.size() - kTrailerBytes;
    if (offset <= body && manifest <= body - offset) {
      uint64_t sum = fnv1a64(image.data(), offset + manifest);
      for (int i = 0; i < 8; ++i)
        trailer[40 + i] = static_cast<unsigned char>(sum >> (8 * i));
    }
  }
  try {
    Manifest m = validateImage(image.data(), image.size());
    (void)describe(m, "fuzz.loomx");
  } catch (const Error &) {
  }
}

void fuzzCheckpointIndex(const uint8_t *data, size_t size) {
  CheckpointIndex ix;
  try {
    ix = CheckpointIndex::fromJson(json::parse(
        std::string_view(reinterpret_cast<const char *>(data), size)));
  } catch (const Error &) {
    return;
  } catch (const json::ParseError &) {
    return;
  }
  CheckpointIndex back =
      CheckpointIndex::fromJson(json::parse(json::write(ix.toJson(), 2)));
  if (back.step != ix.step || back.seed != ix.seed ||
      back.layout != ix.layout || back.model != ix.model ||
      back.cursor.batch != ix.cursor.batch ||
      back.stateFnv1a64 != ix.stateFnv1a64)
    std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0 || size > (1u << 16))
    return 0;
  uint8_t mode = data[0] % 4;
  ++data;
  --size;
  switch (mode) {
  case 0:
    fuzzSafetensors(data, size);
    break;
  case 1:
    fuzzManifest(data, size);
    break;
  case 2:
    fuzzArtifact(data, size);
    break;
  case 3:
    fuzzCheckpointIndex(data, size);
    break;
  }
  return 0;
}
