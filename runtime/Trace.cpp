//===- Trace.cpp - loom-run --trace and loom_trace_begin / loom_trace_end -===//
#include "runtime/Trace.h"

#include "runtime/Context.h"
#include "runtime/Json.h"
#include "runtime/Support.h"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <unistd.h>

namespace loom::runtime {

double steadySeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

Tracer::Tracer(std::vector<std::string> spans) : spans_(std::move(spans)) {
  origin_ = steadySeconds();
}

void Tracer::setOrigin() { origin_ = steadySeconds(); }

void Tracer::record(TraceEvent e) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (e.tid == kTraceProgress)
    progressUsed_ = true;
  events_.push_back(std::move(e));
}

std::string Tracer::spanName(int64_t span) const {
  if (span >= 0 && uint64_t(span) < spans_.size())
    return spans_[size_t(span)];
  return "span " + std::to_string(span);
}

void Tracer::beginSpan(int64_t span) {
  open_.emplace_back(span, micros(steadySeconds()));
}

void Tracer::endSpan(int64_t span) {
  double now = micros(steadySeconds());
  // The innermost open span of that index (spans of one index may nest).
  for (size_t i = open_.size(); i-- > 0;) {
    if (open_[i].first != span)
      continue;
    TraceEvent e;
    e.name = spanName(span);
    e.category = "compute";
    e.tid = kTraceCompute;
    e.ts = open_[i].second;
    e.dur = now - e.ts;
    e.step = step();
    open_.erase(open_.begin() + std::ptrdiff_t(i));
    record(std::move(e));
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  ++unmatchedEnds_;
}

void Tracer::endProgram() {
  if (open_.empty())
    return;
  std::lock_guard<std::mutex> lock(mutex_);
  unendedBegins_ += int64_t(open_.size());
  open_.clear();
}

size_t Tracer::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return events_.size();
}

std::string Tracer::warnings() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!unmatchedEnds_ && !unendedBegins_)
    return "";
  return std::to_string(unmatchedEnds_) +
         " loom_trace_end without a begin and " +
         std::to_string(unendedBegins_) +
         " loom_trace_begin never ended in its program call (dropped)";
}

namespace {
std::string micro(double us) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.3f", us < 0 ? 0.0 : us);
  return buf;
}

std::string metadata(const char *what, int pid, int tid,
                     const std::string &name) {
  return std::string("{\"name\": \"") + what +
         "\", \"ph\": \"M\", \"pid\": " + std::to_string(pid) +
         ", \"tid\": " + std::to_string(tid) +
         ", \"args\": {\"name\": " + json::quote(name) + "}}";
}
} // namespace

std::string Tracer::fragment(int rank, int dp, int tp, int pp) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  out += metadata("process_name", rank, 0,
                  "rank " + std::to_string(rank) + " (dp " +
                      std::to_string(dp) + ", tp " + std::to_string(tp) +
                      ", pp " + std::to_string(pp) + ")");
  out += ",\n{\"name\": \"process_sort_index\", \"ph\": \"M\", \"pid\": " +
         std::to_string(rank) + ", \"tid\": 0, \"args\": {\"sort_index\": " +
         std::to_string(rank) + "}}";
  out += ",\n" + metadata("thread_name", rank, kTraceCompute, "compute");
  out += ",\n" + metadata("thread_name", rank, kTraceComm, "comm");
  if (progressUsed_)
    out += ",\n" +
           metadata("thread_name", rank, kTraceProgress, "comm (progress thread)");
  for (const TraceEvent &e : events_) {
    out += ",\n{\"name\": " + json::quote(e.name) + ", \"cat\": \"" +
           e.category + "\", \"ph\": \"X\", \"ts\": " + micro(e.ts) +
           ", \"dur\": " + micro(e.dur) + ", \"pid\": " +
           std::to_string(rank) + ", \"tid\": " + std::to_string(e.tid) +
           ", \"args\": {";
    std::string args;
    auto arg = [&](const char *key, int64_t v) {
      if (v < 0)
        return;
      args += (args.empty() ? "\"" : ", \"") + std::string(key) +
              "\": " + std::to_string(v);
    };
    arg("step", e.step);
    arg("batch", e.batch);
    arg("bytes", e.bytes);
    arg("count", e.count);
    arg("tag", e.tag);
    if (e.tag >= 0) {
      arg("micro_batch", e.tag >> 16);
      arg("slot", e.tag & 0xffff);
    }
    out += args + "}}";
  }
  return out;
}

void Tracer::write(const std::string &path,
                   const std::vector<std::string> &fragments) {
  std::string text = "{\"traceEvents\": [\n";
  bool first = true;
  for (const std::string &f : fragments) {
    if (f.empty())
      continue;
    if (!first)
      text += ",\n";
    text += f;
    first = false;
  }
  text += "\n], \"displayTimeUnit\": \"ms\"}\n";
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  std::FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    throw Error("cannot write the trace " + tmp + ": " + std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = std::fflush(f) == 0 && ok;
  int err = errno;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error("cannot write the trace " + tmp + ": " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    throw Error("cannot rename the trace " + tmp + " to " + path + ": " +
                std::strerror(err));
  }
}

} // namespace loom::runtime

using loom::runtime::Tracer;

extern "C" void loom_trace_begin(loom_ctx *ctx, int64_t span) {
  if (!ctx || !ctx->tracer)
    return;
  auto *t = static_cast<Tracer *>(ctx->tracer);
  if (t->active())
    t->beginSpan(span);
}

extern "C" void loom_trace_end(loom_ctx *ctx, int64_t span) {
  if (!ctx || !ctx->tracer)
    return;
  auto *t = static_cast<Tracer *>(ctx->tracer);
  if (t->active())
    t->endSpan(span);
}
