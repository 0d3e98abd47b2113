//===- FrontendFuzzer.cpp - libFuzzer target for the DSL front end --------===//
//
// The contract under test: any byte string given to the front end yields
// either a graph or at least one error diagnostic — no crash, no hang, no
// sanitizer report, no silent failure — and every diagnostic renders.
//
//===----------------------------------------------------------------------===//

#include "frontend/Sema.h"

#include <cstdint>
#include <cstdlib>
#include <string>

using namespace loom::frontend;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (1u << 16))
    return 0; // loomc refuses large files before parsing; keep runs fast.
  SourceFile file("fuzz.loom",
                  std::string(reinterpret_cast<const char *>(data), size));
  DiagnosticEngine diag;
  CompileOptions opts;
  auto graph = compileSource(file, opts, diag);
  if (!graph && !diag.hasErrors())
    std::abort(); // Failed without telling the user why.
  std::string text = diag.render();
  if (diag.hasErrors() && text.find("error: ") == std::string::npos)
    std::abort();
  return 0;
}
