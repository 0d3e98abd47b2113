//===- Diagnostics.cpp - source files and file:line:col diagnostics -------===//

#include "frontend/Diagnostics.h"

#include <algorithm>

namespace loom::frontend {

SourceFile::SourceFile(std::string name, std::string text)
    : name_(std::move(name)), text_(std::move(text)) {
  lineStarts_.push_back(0);
  for (size_t i = 0; i < text_.size(); ++i)
    if (text_[i] == '\n')
      lineStarts_.push_back(i + 1);
}

std::pair<unsigned, unsigned> SourceFile::lineCol(size_t offset) const {
  offset = std::min(offset, text_.size());
  auto it = std::upper_bound(lineStarts_.begin(), lineStarts_.end(), offset);
  size_t line = static_cast<size_t>(it - lineStarts_.begin());
  return {static_cast<unsigned>(line),
          static_cast<unsigned>(offset - lineStarts_[line - 1] + 1)};
}

std::string SourceFile::lineText(unsigned line) const {
  if (line == 0 || line > lineStarts_.size())
    return "";
  size_t begin = lineStarts_[line - 1];
  size_t end = text_.find('\n', begin);
  if (end == std::string::npos)
    end = text_.size();
  std::string s = text_.substr(begin, end - begin);
  if (!s.empty() && s.back() == '\r')
    s.pop_back();
  return s;
}

void DiagnosticEngine::error(SourceLoc loc, std::string msg) {
  skippingNotes_ = !seen_.insert({loc.file, loc.offset, msg}).second;
  if (skippingNotes_)
    return;
  if (numErrors_ >= kMaxErrors) {
    if (!dropping_)
      diags_.push_back({Severity::Note, SourceLoc{},
                        "too many errors; stopping after " +
                            std::to_string(kMaxErrors)});
    dropping_ = true;
    return;
  }
  dropping_ = false;
  ++numErrors_;
  diags_.push_back({Severity::Error, loc, std::move(msg)});
}

void DiagnosticEngine::warning(SourceLoc loc, std::string msg) {
  skippingNotes_ = false;
  diags_.push_back({Severity::Warning, loc, std::move(msg)});
}

void DiagnosticEngine::note(SourceLoc loc, std::string msg) {
  if (dropping_ || skippingNotes_)
    return;
  diags_.push_back({Severity::Note, loc, std::move(msg)});
}

std::string DiagnosticEngine::render(const Diagnostic &d) {
  std::string out;
  const char *sev = d.severity == Severity::Error     ? "error"
                    : d.severity == Severity::Warning ? "warning"
                                                      : "note";
  if (d.loc.valid()) {
    auto [line, col] = d.loc.file->lineCol(d.loc.offset);
    out += d.loc.file->name() + ":" + std::to_string(line) + ":" +
           std::to_string(col) + ": " + sev + ": " + d.message + "\n";
    // The source line, with non-printable bytes shown as '?' so that a
    // binary file cannot garble the terminal, and a caret under the column.
    std::string text = d.loc.file->lineText(line);
    if (text.size() > 200)
      text = text.substr(0, 200);
    for (char &c : text) {
      unsigned char u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f)
        c = '?';
    }
    out += text + "\n";
    std::string caret;
    for (unsigned i = 1; i < col && i - 1 < text.size(); ++i)
      caret += text[i - 1] == '\t' ? '\t' : ' ';
    out += caret + "^\n";
  } else {
    out += std::string("loomc: ") + sev + ": " + d.message + "\n";
  }
  return out;
}

std::string DiagnosticEngine::render() const {
  std::string out;
  for (const Diagnostic &d : diags_)
    out += render(d);
  return out;
}

static unsigned editDistance(const std::string &a, const std::string &b) {
  std::vector<unsigned> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    prev[j] = static_cast<unsigned>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<unsigned>(i);
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1,
                         prev[j - 1] + (a[i - 1] == b[j - 1] ? 0u : 1u)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closestMatch(const std::string &name,
                         const std::vector<std::string> &candidates) {
  if (name.size() > 64)
    return "";
  std::string best;
  unsigned bestDist = static_cast<unsigned>(name.size() / 3 + 1);
  for (const std::string &c : candidates) {
    if (c.size() > 64)
      continue;
    unsigned d = editDistance(name, c);
    if (d <= bestDist && (best.empty() || d < editDistance(name, best)))
      best = c, bestDist = d;
  }
  return best;
}

} // namespace loom::frontend
