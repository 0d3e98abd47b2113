//===- Trace.h - loom-run --trace: a Chrome/Perfetto timeline ---*- C++ -*-===//
//
// With --trace every rank records, for a window of steps, complete events
// ("ph": "X") on one steady clock: the program call of each step (thread 0,
// "compute"), the compiler's schedule spans (loom_trace_begin / _end, thread
// 0, named from the manifest's "trace_spans"), and every collective and
// point-to-point transfer of the Collectives layer (thread 1, "comm"; the
// non-blocking all-reduces that the progress thread runs on thread 2,
// "comm (progress thread)", since they overlap the program thread's own).
// At the end rank 0 gathers every rank's events and writes one trace JSON
// (runtime/README.md has the format).
//
// Clock: std::chrono::steady_clock, in microseconds since an origin that
// every rank takes right after leaving one MPI_Barrier (CommMesh::barrier);
// each rank's origin is its own steady-clock reading then, so ranks agree
// up to the barrier's exit skew (microseconds on one host, more across
// hosts).
//
// Nothing here runs unless loom-run traces: loom_ctx::tracer and the
// mesh's tracer are null otherwise, and the ABI functions return at once.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_TRACE_H
#define LOOM_RUNTIME_TRACE_H

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace loom::runtime {

/// Seconds on std::chrono::steady_clock (the clock of every event).
double steadySeconds();

/// The thread ids of the trace.
enum TraceThread : int { kTraceCompute = 0, kTraceComm = 1, kTraceProgress = 2 };

struct TraceEvent {
  std::string name;
  const char *category = "compute"; ///< "compute" or "comm"
  int tid = kTraceCompute;
  double ts = 0, dur = 0; ///< microseconds since the origin
  /// Arguments; -1: absent.
  int64_t step = -1, bytes = -1, count = -1, tag = -1, batch = -1;
};

class Tracer {
public:
  /// `spans`: the manifest's trace_spans (span k's name is spans[k]).
  explicit Tracer(std::vector<std::string> spans);

  /// Takes the origin now (call right after a barrier over the world).
  void setOrigin();
  /// Microseconds since the origin of a steadySeconds() reading.
  double micros(double seconds) const { return (seconds - origin_) * 1e6; }

  /// Events are recorded only while active (the traced steps).
  void setActive(bool on) { active_.store(on, std::memory_order_relaxed); }
  bool active() const { return active_.load(std::memory_order_relaxed); }
  void setStep(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  int64_t step() const { return step_.load(std::memory_order_relaxed); }

  /// Any thread.
  void record(TraceEvent e);
  /// From the program's thread (loom_trace_begin / loom_trace_end).
  void beginSpan(int64_t span);
  void endSpan(int64_t span);
  /// After a program call: spans begun and never ended are dropped (and
  /// counted).
  void endProgram();

  /// This rank's events and its "M" metadata (process and thread names) as
  /// JSON objects separated by ",\n" (no brackets); "" when there are none.
  std::string fragment(int rank, int dp, int tp, int pp) const;
  /// One line about spans that did not pair up, or "".
  std::string warnings() const;
  size_t size() const;

  /// Writes {"traceEvents": [fragments...], "displayTimeUnit": "ms"} to
  /// `path` through `path`.tmp.PID and a rename. Throws Error.
  static void write(const std::string &path,
                    const std::vector<std::string> &fragments);

private:
  std::string spanName(int64_t span) const;

  std::vector<std::string> spans_;
  double origin_ = 0;
  std::atomic<bool> active_{false};
  std::atomic<int64_t> step_{0};
  mutable std::mutex mutex_;
  std::vector<TraceEvent> events_;
  /// Begin times of open spans, by span index (program thread only).
  std::vector<std::pair<int64_t, double>> open_;
  int64_t unmatchedEnds_ = 0, unendedBegins_ = 0;
  bool progressUsed_ = false;
};

} // namespace loom::runtime

#endif // LOOM_RUNTIME_TRACE_H
