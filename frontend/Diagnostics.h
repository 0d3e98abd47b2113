//===- Diagnostics.h - source files and file:line:col diagnostics -*- C++ -*-===//
//
// The front end reports every user error as
//   file:line:col: error: message
//     <the source line>
//         ^
// and keeps going to report more, up to a limit. It has no MLIR dependency so
// that the lexer, parser and sema are unit-testable and fuzzable alone.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_FRONTEND_DIAGNOSTICS_H
#define LOOM_FRONTEND_DIAGNOSTICS_H

#include <cstdint>
#include <memory>
#include <set>
#include <tuple>
#include <string>
#include <vector>

namespace loom::frontend {

/// A source text with its display name; lines are computed once.
class SourceFile {
public:
  SourceFile(std::string name, std::string text);
  const std::string &name() const { return name_; }
  const std::string &text() const { return text_; }
  /// 1-based line and column (in bytes) of a byte offset.
  std::pair<unsigned, unsigned> lineCol(size_t offset) const;
  /// The text of a 1-based line, without its newline.
  std::string lineText(unsigned line) const;

private:
  std::string name_, text_;
  std::vector<size_t> lineStarts_;
};

/// A position in a source file. A null file means "no location" (a
/// command-line error).
struct SourceLoc {
  const SourceFile *file = nullptr;
  size_t offset = 0;
  bool valid() const { return file != nullptr; }
  unsigned line() const { return file ? file->lineCol(offset).first : 0; }
  unsigned col() const { return file ? file->lineCol(offset).second : 0; }
};

enum class Severity { Error, Warning, Note };

struct Diagnostic {
  Severity severity;
  SourceLoc loc;
  std::string message;
};

/// Collects diagnostics; renders them clang-style.
class DiagnosticEngine {
public:
  /// Errors past this many are dropped (with one final note) so that a
  /// pathological input cannot flood the terminal.
  static constexpr unsigned kMaxErrors = 20;

  void error(SourceLoc loc, std::string msg);
  void warning(SourceLoc loc, std::string msg);
  /// A note attaches to the diagnostic before it.
  void note(SourceLoc loc, std::string msg);

  bool hasErrors() const { return numErrors_ > 0; }
  unsigned numErrors() const { return numErrors_; }
  const std::vector<Diagnostic> &diagnostics() const { return diags_; }
  /// Keeps a synthesized source (a command-line value parsed as DSL) alive as
  /// long as the diagnostics that may point into it.
  const SourceFile &addFile(std::string name, std::string text) {
    files_.push_back(std::make_unique<SourceFile>(std::move(name),
                                                  std::move(text)));
    return *files_.back();
  }

  /// True once kMaxErrors were reported: callers may stop early.
  bool tooManyErrors() const { return numErrors_ >= kMaxErrors; }

  /// All diagnostics rendered with source lines and carets.
  std::string render() const;
  static std::string render(const Diagnostic &d);

private:
  std::vector<Diagnostic> diags_;
  std::vector<std::unique_ptr<SourceFile>> files_;
  /// (file, offset, message) of every error so far: an error repeated by an
  /// unrolled repeat or a layer instantiated many times is reported once.
  std::set<std::tuple<const SourceFile *, size_t, std::string>> seen_;
  bool skippingNotes_ = false;
  unsigned numErrors_ = 0;
  bool dropping_ = false;
};

/// The closest of `candidates` to `name` by edit distance, or "" when none is
/// close enough to suggest.
std::string closestMatch(const std::string &name,
                         const std::vector<std::string> &candidates);

} // namespace loom::frontend

#endif // LOOM_FRONTEND_DIAGNOSTICS_H
