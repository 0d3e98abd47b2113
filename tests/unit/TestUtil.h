//===- TestUtil.h - helpers shared by the front end's unit tests -*- C++
//-*-===//
//
// Diagnostics as compact "line:col: message" strings, so that a test states
// the exact position and text of every error it expects in one assertion.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_TESTS_UNIT_TESTUTIL_H
#define LOOM_TESTS_UNIT_TESTUTIL_H

#include "frontend/Diagnostics.h"

#include <memory>
#include <string>
#include <vector>

namespace loom::frontend::test {

/// "line:col: message" of a diagnostic; "-: message" when it has no location.
inline std::string brief(const Diagnostic &d) {
  std::string where = d.loc.valid() ? std::to_string(d.loc.line()) + ":" +
                                          std::to_string(d.loc.col())
                                    : std::string("-");
  return where + ": " + d.message;
}

/// Every error (not warning or note) in the order reported.
inline std::vector<std::string> errorsOf(const DiagnosticEngine &diag) {
  std::vector<std::string> out;
  for (const Diagnostic &d : diag.diagnostics())
    if (d.severity == Severity::Error)
      out.push_back(brief(d));
  return out;
}

/// Every note, in the order reported.
inline std::vector<std::string> notesOf(const DiagnosticEngine &diag) {
  std::vector<std::string> out;
  for (const Diagnostic &d : diag.diagnostics())
    if (d.severity == Severity::Note)
      out.push_back(brief(d));
  return out;
}

/// The first error, or "" when there is none.
inline std::string firstError(const DiagnosticEngine &diag) {
  std::vector<std::string> e = errorsOf(diag);
  return e.empty() ? std::string() : e.front();
}

} // namespace loom::frontend::test

#endif // LOOM_TESTS_UNIT_TESTUTIL_H
