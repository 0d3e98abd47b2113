//===- GpuAbi.cpp - the loom_cuda_* functions a CUDA artifact calls -------===//
//
// A CUDA artifact's host program (compiler/codegen/CudaCodegen.cpp) calls
// loom_cuda_<name> with the signature of the CPU ABI's loom_<name>
// (runtime/abi/loom_abi.h), with every buffer in device memory, plus:
//   loom_cuda_launchN(ctx, kernel, N buffers)    one of the artifact's kernels
//   loom_cuda_load_<t>(ctx, ptr) -> t            a scalar of the arena
//   loom_cuda_store_<t>(ctx, ptr, value)
//   loom_cuda_copy(ctx, dst, src, bytes)
// loom-run compiles this file in and exports the symbols. Each function
// enqueues on the session's stream; values passed by the host (lr, the grad
// scale, the step) are copied to device slots first, in stream order. A
// failure is reported through loom_error naming the function and the cause.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/GpuSession.h"

#include "runtime/Collectives.h"
#include "runtime/Context.h"
#include "runtime/Support.h"
#include "runtime/cuda/Attention.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/CudaKernels.h"
#if LOOM_HAVE_NCCL
#include "runtime/cuda/Nccl.h"
#endif

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <tuple>
#include <type_traits>

namespace loom::cuda {

using runtime::Error;

namespace {

/// The few driver functions the session needs, found through the runtime
/// (cudaGetDriverEntryPointByVersion): loom-run does not link libcuda, so
/// it starts on machines without a GPU driver and runs CPU artifacts there.
struct Driver {
  CUresult (*moduleLoadData)(CUmodule *, const void *) = nullptr;
  CUresult (*moduleGetFunction)(CUfunction *, CUmodule, const char *) = nullptr;
  CUresult (*moduleUnload)(CUmodule) = nullptr;
  CUresult (*launchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                           unsigned, unsigned, unsigned, CUstream, void **,
                           void **) = nullptr;
  CUresult (*getErrorString)(CUresult, const char **) = nullptr;

  void load(int rank) {
    auto get = [&](const char *name, auto &fn) {
      void *p = nullptr;
      cudaDriverEntryPointQueryResult status;
      cudaError_t e = cudaGetDriverEntryPointByVersion(name, &p, 12000,
                                                       cudaEnableDefault, &status);
      if (e != cudaSuccess || status != cudaDriverEntryPointSuccess || !p)
        throw Error("rank " + std::to_string(rank) + ": cuda: the driver has no " +
                    name + " (" + cudaGetErrorString(e) + ")");
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
    };
    get("cuModuleLoadData", moduleLoadData);
    get("cuModuleGetFunction", moduleGetFunction);
    get("cuModuleUnload", moduleUnload);
    get("cuLaunchKernel", launchKernel);
    get("cuGetErrorString", getErrorString);
  }
};

} // namespace

struct GpuSession::Impl {
  Impl(int device, int rank, uint64_t seed) : ctx(device, rank, seed) {
    driver.load(rank);
  }
  CudaContext ctx;
  Driver driver;
  CUmodule module = nullptr;
  std::vector<CUfunction> functions;
  std::vector<KernelLaunch> launches;
  uint8_t *arena = nullptr;
  size_t arenaBytes = 0;
  /// Device slots for scalars the host passes (a ring, reused in stream
  /// order: a slot is rewritten only after the kernels enqueued before).
  uint8_t *slots = nullptr;
  static constexpr int kSlots = 1024;
  int nextSlot = 0;
  /// Attention backward workspace, grown on demand.
  void *workspace = nullptr;
  size_t workspaceBytes = 0;
  /// Where programs read the step (-1: none), and the pinned host word it
  /// is copied from (rewritten only after the stream drained).
  int64_t stepOffset = -1;
  int64_t *stepHost = nullptr;
  /// Graph capture per program: eager calls so far, then the executable
  /// graph; `failed` once capturing it did not work (it stays eager).
  struct Graph {
    int calls = 0;
    bool failed = false;
    cudaGraphExec_t exec = nullptr;
    /// LOOM_CUDA_PROFILE: the spans whose events are nodes of the graph.
    std::vector<std::pair<std::string, std::pair<cudaEvent_t, cudaEvent_t>>>
        spans;
  };
  std::map<loom_program_fn, Graph> graphs;
  bool graphsEnabled = true;
  /// Collectives: over NCCL (setNccl; each rank its own GPU), else staged
  /// through pinned host memory into the CPU runtime's MPI collectives.
#if LOOM_HAVE_NCCL
  NcclMesh *nccl = nullptr;
#endif
  cudaStream_t comm = nullptr;
  double timeout = 0;
  /// A call went through the host in this program call (it cannot be
  /// captured as a graph then).
  bool usedHost = false;
  float *host = nullptr;
  size_t hostBytes = 0;
  /// Pinned host staging of at least `bytes` (the stream is idle).
  float *hostStage(size_t bytes, const char *what) {
    usedHost = true;
    if (bytes > hostBytes) {
      if (host)
        cudaFreeHost(host);
      host = nullptr;
      check(cudaMallocHost(reinterpret_cast<void **>(&host), bytes),
            "cudaMallocHost", what);
      hostBytes = bytes;
    }
    return host;
  }
  /// NCCL: non-blocking all-reduces in flight (handle -> done event on the
  /// comm stream) and the device copies of sends (reused each call).
  std::map<int64_t, cudaEvent_t> reductions;
  int64_t nextHandle = 1;
  std::vector<std::pair<void *, size_t>> sendBuffers;
  size_t sendsUsed = 0;
  bool haveNccl() const {
#if LOOM_HAVE_NCCL
    return nccl != nullptr;
#else
    return false;
#endif
  }

  /// Consecutive AdamW calls with the same scalars are launched as one
  /// multi-tensor kernel (each element gets exactly adamw's arithmetic):
  /// the pending group, flushed by any other call and at the end of the
  /// program; device tensor lists are built once per group (the arena's
  /// pointers do not change) and reused by every replay.
  struct AdamwGroup {
    const float *lr = nullptr, *gradScale = nullptr;
    const int64_t *step = nullptr;
    float beta1 = 0, beta2 = 0, eps = 0;
    std::vector<AdamWTensor> tensors;
  };
  AdamwGroup adamw;
  std::map<std::vector<std::tuple<float *, const float *, float *, float *,
                                  int64_t, float>>,
           std::unique_ptr<AdamWTensorList>>
      adamwLists;
  void flushAdamw() {
    if (adamw.tensors.empty())
      return;
    AdamwGroup g = std::move(adamw);
    adamw = AdamwGroup{};
    std::vector<std::tuple<float *, const float *, float *, float *, int64_t,
                           float>>
        key;
    for (const AdamWTensor &t : g.tensors)
      key.emplace_back(t.param, t.grad, t.m, t.v, t.n, t.weightDecay);
    auto &list = adamwLists[key];
    if (!list)
      list = std::make_unique<AdamWTensorList>(ctx, g.tensors);
    timed("loom_adamw (multi-tensor)", [&] {
      adamwMulti(ctx, list->device(), list->count(), list->maxN(), g.lr,
                 g.beta1, g.beta2, g.eps, g.gradScale, g.step);
    });
  }

  /// Consecutive sum_squares calls into one result (the global norm's
  /// parameters, one call each) likewise: one multi-tensor launch with the
  /// calls' exact summation order (sumSquaresMulti).
  struct SumSquaresGroup {
    double *out = nullptr;
    bool accumulate = false;
    std::vector<std::pair<const float *, int64_t>> tensors;
  };
  SumSquaresGroup sumSquaresGroup;
  std::map<std::vector<std::pair<const float *, int64_t>>,
           std::unique_ptr<SumSquaresList>>
      sumSquaresLists;
  void flushSumSquares() {
    if (sumSquaresGroup.tensors.empty())
      return;
    SumSquaresGroup g = std::move(sumSquaresGroup);
    sumSquaresGroup = SumSquaresGroup{};
    auto &list = sumSquaresLists[g.tensors];
    if (!list)
      list = std::make_unique<SumSquaresList>(ctx, g.tensors);
    timed("loom_sum_squares (multi-tensor)", [&] {
      sumSquaresMulti(ctx, *list, g.out, g.accumulate);
    });
  }
  /// Every pending group, before anything that may read its results.
  void flushGroups() {
    flushAdamw();
    flushSumSquares();
  }

  /// setBf16Attention, and the bf16 copies its calls use (grown on demand,
  /// in the eager first call).
  bool bf16Attention = false;
  uint16_t *low = nullptr;
  size_t lowBytes = 0;
  uint16_t *lowScratch(size_t elements, const char *what) {
    size_t bytes = (elements * 2 + 255) / 256 * 256;
    if (bytes > lowBytes) {
      check(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize", what);
      if (low)
        cudaFree(low);
      low = nullptr;
      check(cudaMalloc(reinterpret_cast<void **>(&low), bytes), "cudaMalloc", what);
      lowBytes = bytes;
    }
    return low;
  }

  /// LOOM_CUDA_PROFILE=1: each launch and library call between two events;
  /// the spans of a program call are added up once its stream drained.
  bool profile = false;
  struct Span {
    std::string name;
    cudaEvent_t start, stop;
  };
  /// While a program is being captured: its spans become event-record
  /// nodes of the graph (timed at every replay, with no host gaps).
  bool capturing = false;
  std::vector<Span> spans;
  std::vector<cudaEvent_t> eventPool;
  struct Total {
    double ms = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Total> totals;
  int64_t profiledCalls = 0;
  cudaEvent_t event() {
    if (!eventPool.empty()) {
      cudaEvent_t e = eventPool.back();
      eventPool.pop_back();
      return e;
    }
    cudaEvent_t e;
    check(cudaEventCreate(&e), "cudaEventCreate", "profile");
    return e;
  }
  /// Runs `body` between two events on the stream when profiling.
  template <class F> void timed(const std::string &name, F &&body) {
    if (!profile) {
      body();
      return;
    }
    Span span{name, event(), event()};
    unsigned flags = capturing ? cudaEventRecordExternal : cudaEventRecordDefault;
    check(cudaEventRecordWithFlags(span.start, ctx.stream, flags),
          "cudaEventRecordWithFlags", "profile");
    body();
    check(cudaEventRecordWithFlags(span.stop, ctx.stream, flags),
          "cudaEventRecordWithFlags", "profile");
    spans.push_back(std::move(span));
  }
  /// A GEMM's span: its name says when cuBLASLt had no algorithm for the
  /// shape and the plain fallback kernel ran.
  std::set<std::string> fallbackGemms;
  /// `nameOf()` is only called when profiling (no string work per call
  /// otherwise).
  template <class N, class F> void timedGemm(N &&nameOf, F &&body) {
    if (!profile) {
      body();
      return;
    }
    const std::string name = nameOf();
    size_t before = gemmFallbackCount(ctx);
    bool known = fallbackGemms.count(name) != 0;
    timed(name, body);
    if (known || gemmFallbackCount(ctx) > before) {
      fallbackGemms.insert(name);
      spans.back().name += " (fallback kernel: no cuBLASLt algorithm)";
    }
  }
  /// After the stream drained: `list`'s spans into the totals (count:
  /// false drops them, for eager calls that include host gaps).
  void addSpans(const std::vector<Span> &list, bool count) {
    for (const Span &sp : list) {
      float ms = 0;
      if (count && cudaEventElapsedTime(&ms, sp.start, sp.stop) == cudaSuccess) {
        Total &t = totals[sp.name];
        t.ms += ms;
        ++t.calls;
      }
    }
  }
  void recycle(std::vector<Span> &list) {
    for (Span &sp : list) {
      eventPool.push_back(sp.start);
      eventPool.push_back(sp.stop);
    }
    list.clear();
  }

  /// The step as the device reads it (dropout): the arena's slot when the
  /// programs have one, else a ring slot holding the host's step.
  const int64_t *deviceStep(int64_t hostStep, const char *what) {
    if (stepOffset >= 0)
      return reinterpret_cast<const int64_t *>(arena + stepOffset);
    return slot<int64_t>(hostStep, what);
  }

  void check(cudaError_t e, const char *call, const char *what) {
    checkCuda(e, call, what, ctx.rank);
  }
  void checkDriver(CUresult r, const char *call, const char *what) {
    if (r == CUDA_SUCCESS)
      return;
    const char *text = nullptr;
    driver.getErrorString(r, &text);
    throw Error("rank " + std::to_string(ctx.rank) + ": cuda: " + what + ": " +
                call + " failed: " + (text ? text : "unknown error"));
  }
  /// The next slot of the ring, for a result a kernel writes.
  template <class T> T *resultSlot() {
    uint8_t *at = slots + size_t(nextSlot) * 8;
    nextSlot = (nextSlot + 1) % kSlots;
    return reinterpret_cast<T *>(at);
  }
  /// The next slot, holding `value` once the stream reaches it.
  template <class T> const T *slot(T value, const char *what) {
    T *at = resultSlot<T>();
    check(cudaMemcpyAsync(at, &value, sizeof(T), cudaMemcpyHostToDevice,
                          ctx.stream),
          "cudaMemcpyAsync", what);
    return at;
  }
  void *scratch(size_t bytes, const char *what) {
    if (bytes > workspaceBytes) {
      check(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize", what);
      if (workspace)
        cudaFree(workspace);
      workspace = nullptr;
      check(cudaMalloc(&workspace, bytes), "cudaMalloc", what);
      workspaceBytes = bytes;
    }
    return workspace;
  }
};

GpuSession::GpuSession(int device, int rank, uint64_t seed,
                       const std::string &ptx,
                       const std::vector<KernelLaunch> &kernels,
                       size_t arenaBytes, int64_t stepOffset)
    : impl_(std::make_unique<Impl>(device, rank, seed)) {
  Impl &s = *impl_;
  const char *what = "loading the artifact's kernels";
  // The runtime API made the primary context current on this thread.
  s.checkDriver(s.driver.moduleLoadData(&s.module, ptx.c_str()), "cuModuleLoadData",
                what);
  for (const KernelLaunch &k : kernels) {
    CUfunction f = nullptr;
    s.checkDriver(s.driver.moduleGetFunction(&f, s.module, k.name.c_str()),
                  ("cuModuleGetFunction(" + k.name + ")").c_str(), what);
    s.functions.push_back(f);
  }
  s.launches = kernels;
  s.arenaBytes = arenaBytes;
  s.check(cudaMalloc(reinterpret_cast<void **>(&s.arena), arenaBytes),
          "cudaMalloc", "the arena");
  s.check(cudaMalloc(reinterpret_cast<void **>(&s.slots), Impl::kSlots * 8),
          "cudaMalloc", "scalar slots");
  if (stepOffset >= 0) {
    if (size_t(stepOffset) + sizeof(int64_t) > arenaBytes)
      throw Error("rank " + std::to_string(rank) +
                  ": the manifest's device_step_offset " +
                  std::to_string(stepOffset) + " is outside the arena");
    s.stepOffset = stepOffset;
  }
  s.check(cudaMallocHost(reinterpret_cast<void **>(&s.stepHost), sizeof(int64_t)),
          "cudaMallocHost", "the step word");
  if (const char *g = std::getenv("LOOM_CUDA_GRAPHS"); g && std::string(g) == "0")
    s.graphsEnabled = false;
  if (const char *p = std::getenv("LOOM_CUDA_PROFILE"); p && std::string(p) == "1")
    s.profile = true;
}

GpuSession::~GpuSession() {
  if (!impl_)
    return;
  cudaStreamSynchronize(impl_->ctx.stream);
  for (auto &[fn, g] : impl_->graphs) {
    if (g.exec)
      cudaGraphExecDestroy(g.exec);
    for (auto &[name, ev] : g.spans) {
      cudaEventDestroy(ev.first);
      cudaEventDestroy(ev.second);
    }
  }
  for (cudaEvent_t e : impl_->eventPool)
    cudaEventDestroy(e);
  if (impl_->low)
    cudaFree(impl_->low);
  if (impl_->host)
    cudaFreeHost(impl_->host);
  for (auto &[p, n] : impl_->sendBuffers)
    cudaFree(p);
  for (auto &[h, e] : impl_->reductions)
    cudaEventDestroy(e);
  if (impl_->comm)
    cudaStreamDestroy(impl_->comm);
  if (impl_->stepHost)
    cudaFreeHost(impl_->stepHost);
  if (impl_->workspace)
    cudaFree(impl_->workspace);
  if (impl_->slots)
    cudaFree(impl_->slots);
  if (impl_->arena)
    cudaFree(impl_->arena);
  if (impl_->module)
    impl_->driver.moduleUnload(impl_->module);
}

void GpuSession::push(const uint8_t *hostArena) {
  Impl &s = *impl_;
  s.check(cudaMemcpy(s.arena, hostArena, s.arenaBytes, cudaMemcpyHostToDevice),
          "cudaMemcpy", "uploading the arena");
}

void GpuSession::pull(uint8_t *hostArena) {
  Impl &s = *impl_;
  s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize",
          "downloading the arena");
  s.check(cudaMemcpy(hostArena, s.arena, s.arenaBytes, cudaMemcpyDeviceToHost),
          "cudaMemcpy", "downloading the arena");
}

void GpuSession::disableGraphs() { impl_->graphsEnabled = false; }
void GpuSession::releaseGraphs() {
  impl_->graphsEnabled = false;
  cudaStreamSynchronize(impl_->ctx.stream);
  for (auto &[fn, g] : impl_->graphs)
    if (g.exec) {
      cudaGraphExecDestroy(g.exec);
      g.exec = nullptr;
    }
}
void GpuSession::setBf16Attention(bool on) { impl_->bf16Attention = on; }

void GpuSession::setCollectives(NcclMesh *nccl, double timeoutSeconds) {
  Impl &s = *impl_;
  s.timeout = timeoutSeconds;
#if LOOM_HAVE_NCCL
  s.nccl = nccl;
  if (nccl && !s.comm)
    s.check(cudaStreamCreateWithFlags(&s.comm, cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags", "the communication stream");
#else
  (void)nccl;
#endif
}

int GpuSession::device() const { return impl_->ctx.device; }

int GpuSession::deviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

bool GpuSession::profiling() const { return impl_->profile; }

std::string GpuSession::profileReport() const {
  const Impl &s = *impl_;
  if (!s.profile || s.totals.empty())
    return "";
  std::vector<std::pair<std::string, Impl::Total>> rows(s.totals.begin(),
                                                        s.totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) {
    return a.second.ms > b.second.ms;
  });
  double all = 0;
  for (const auto &r : rows)
    all += r.second.ms;
  char line[512];
  std::string out;
  std::snprintf(line, sizeof line,
                "GPU time by kernel (LOOM_CUDA_PROFILE=1, rank %d): %.1f ms "
                "over %lld program calls, %.3f ms per call\n",
                s.ctx.rank, all, static_cast<long long>(s.profiledCalls),
                s.profiledCalls ? all / double(s.profiledCalls) : 0.0);
  out += line;
  std::snprintf(line, sizeof line, "  %6s %10s %8s %10s  %s\n", "share",
                "total ms", "calls", "us/call", "kernel");
  out += line;
  // LOOM_CUDA_PROFILE_ROWS=N: the N longest rows (default 40), the rest
  // summed on one line.
  size_t limit = 40;
  if (const char *env = std::getenv("LOOM_CUDA_PROFILE_ROWS"))
    if (long n = std::strtol(env, nullptr, 10); n > 0)
      limit = size_t(n);
  size_t shown = 0;
  double rest = 0;
  int64_t restCalls = 0;
  for (const auto &[name, t] : rows) {
    if (shown++ >= limit) {
      rest += t.ms;
      restCalls += t.calls;
      continue;
    }
    std::snprintf(line, sizeof line, "  %5.1f%% %10.2f %8lld %10.1f  %s\n",
                  100.0 * t.ms / all, t.ms, static_cast<long long>(t.calls),
                  1000.0 * t.ms / double(t.calls), name.c_str());
    out += line;
  }
  if (restCalls) {
    std::snprintf(line, sizeof line, "  %5.1f%% %10.2f %8lld %10s  (%zu more)\n",
                  100.0 * rest / all, rest, static_cast<long long>(restCalls),
                  "", rows.size() - limit);
    out += line;
  }
  return out;
}

int GpuSession::capturedPrograms() const {
  int n = 0;
  for (const auto &[fn, g] : impl_->graphs)
    n += g.exec != nullptr;
  return n;
}

void GpuSession::run(const ProgramCall &call, loom_ctx *ctx,
                     uint8_t *hostArena) {
  Impl &s = *impl_;
  const char *what = "program call";
  s.ctx.clearError();
  s.usedHost = false;
  s.sendsUsed = 0;
  if (call.inputs)
    for (const ArenaRange &r : *call.inputs)
      s.check(cudaMemcpyAsync(s.arena + r.offset, hostArena + r.offset, r.bytes,
                              cudaMemcpyHostToDevice, s.ctx.stream),
              "cudaMemcpyAsync", "uploading the inputs");
  if (s.stepOffset >= 0) {
    *s.stepHost = ctx->step; // the stream drained after the previous call
    s.check(cudaMemcpyAsync(s.arena + s.stepOffset, s.stepHost, sizeof(int64_t),
                            cudaMemcpyHostToDevice, s.ctx.stream),
            "cudaMemcpyAsync", "writing the step");
  }
  Impl::Graph *graph = nullptr;
  if (call.capturable && s.graphsEnabled && ctx->poisonStep == 0)
    graph = &s.graphs[call.fn];
  if (graph && graph->exec) {
    s.check(cudaGraphLaunch(graph->exec, s.ctx.stream), "cudaGraphLaunch", what);
  } else if (graph && !graph->failed && graph->calls >= 1) {
    // The first call ran eagerly (GEMM plans, scratch and workspaces are
    // sized); this one is recorded and then launched.
    s.check(cudaStreamBeginCapture(s.ctx.stream, cudaStreamCaptureModeRelaxed),
            "cudaStreamBeginCapture", what);
    s.recycle(s.spans);
    s.capturing = true;
    call.fn(ctx, s.arena);
    s.flushGroups();
    s.capturing = false;
    cudaGraph_t g = nullptr;
    cudaError_t end = cudaStreamEndCapture(s.ctx.stream, &g);
    cudaGraphExec_t exec = nullptr;
    if (end == cudaSuccess && !ctx->failed &&
        cudaGraphInstantiate(&exec, g, 0) == cudaSuccess) {
      graph->exec = exec;
      // The profile's spans are the graph's now.
      for (Impl::Span &sp : s.spans)
        graph->spans.push_back({sp.name, {sp.start, sp.stop}});
      s.spans.clear();
    } else {
      // Something in the program cannot be captured: it stays eager (the
      // recorded work never ran, so it runs now).
      graph->failed = true;
      cudaGetLastError();
      if (ctx->rank == 0)
        std::fprintf(stderr,
                     "loom-run: note: a program could not be captured as a "
                     "CUDA graph (%s%s%s); it runs eagerly\n",
                     cudaGetErrorString(end), ctx->failed ? ": " : "",
                     ctx->failed ? ctx->errorMessage.c_str() : "");
      ctx->failed = false;
      ctx->errorOp.clear();
      ctx->errorMessage.clear();
    }
    if (g)
      cudaGraphDestroy(g);
    if (graph->exec) {
      s.check(cudaGraphLaunch(graph->exec, s.ctx.stream), "cudaGraphLaunch", what);
    } else {
      call.fn(ctx, s.arena);
      s.flushGroups();
    }
  } else {
    if (graph)
      ++graph->calls;
    call.fn(ctx, s.arena);
    s.flushGroups();
    // A program that went through the host (staged collectives, the
    // vocabulary-parallel kernels) synchronises inside: never captured.
    if (graph && s.usedHost)
      graph->failed = true;
  }
#if LOOM_HAVE_NCCL
  if (s.nccl) {
    // The watchdog: NCCL's asynchronous errors and the timeout end the wait
    // (the communicators are aborted) instead of a hang.
    s.nccl->synchronize(s.ctx.stream, s.timeout, what);
    s.nccl->synchronize(s.comm, s.timeout, what);
  }
#endif
  if (!s.reductions.empty()) {
    for (auto &[h, ev] : s.reductions)
      if (ev)
        cudaEventDestroy(ev);
    s.reductions.clear();
    loom_error(ctx, "loom_all_reduce_start",
               "a non-blocking all-reduce was started and not waited "
               "(loom_all_reduce_wait) before the program returned");
  }
  DeviceError e = s.ctx.readError(); // waits for the stream
  if (e.code != kNoDeviceError) {
    std::string op;
    if (ctx->opNames && e.op >= 0 && size_t(e.op) < ctx->opNames->size())
      op = (*ctx->opNames)[size_t(e.op)];
    loom_error(ctx, "gpu", describeDeviceError(e, op).c_str());
  }
  if (s.profile) {
    if (graph && graph->exec) {
      // A replay: every span timed on the GPU alone.
      for (auto &[name, ev] : graph->spans) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, ev.first, ev.second) == cudaSuccess) {
          Impl::Total &t = s.totals[name];
          t.ms += ms;
          ++t.calls;
        }
      }
      ++s.profiledCalls;
    } else {
      // Eager calls of a program that will be captured include the host's
      // gaps (and the first call's setup): not counted.
      bool count = !graph || graph->failed;
      s.addSpans(s.spans, count);
      s.profiledCalls += count;
    }
    s.recycle(s.spans);
  }
  if (call.outputs)
    for (const ArenaRange &r : *call.outputs)
      s.check(cudaMemcpy(hostArena + r.offset, s.arena + r.offset, r.bytes,
                         cudaMemcpyDeviceToHost),
              "cudaMemcpy", "downloading the outputs");
}

std::string GpuSession::describe() const {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, impl_->ctx.device) != cudaSuccess)
    return "GPU " + std::to_string(impl_->ctx.device);
  return std::string(p.name) + ", " + runtime::formatBytes(p.totalGlobalMem) +
         ", sm_" + std::to_string(p.major) + std::to_string(p.minor);
}

} // namespace loom::cuda

using loom::cuda::GpuSession;

namespace {

GpuSession::Impl &session(loom_ctx *ctx) {
  return static_cast<GpuSession *>(ctx->cuda)->impl();
}

/// Runs `body` for the ABI function `name`; an exception becomes the
/// context's error (the runtime stops after the program call).
/// `timed`: its GPU time is a span of the profile under `name` (launches
/// name their kernel instead).
template <class F>
void guarded(loom_ctx *ctx, const char *name, F &&body, bool timed = true) {
  if (!ctx->cuda) {
    loom_error(ctx, name, "a CUDA artifact's function called without a GPU session");
    return;
  }
  try {
    GpuSession::Impl &s = session(ctx);
    if (std::strcmp(name, "loom_adamw_group") != 0)
      s.flushAdamw();
    if (std::strcmp(name, "loom_sum_squares_group") != 0)
      s.flushSumSquares();
    if (timed)
      s.timed(name, [&] { body(s); });
    else
      body(s);
  } catch (const std::exception &e) {
    loom_error(ctx, name, e.what());
  }
}

/// A GEMM's name in the profile: its shape ("loom_gemm_bf16 16384x768x3072
/// NT").
std::string gemmName(const char *fn, int64_t batch, int32_t ta, int32_t tb,
                     int64_t M, int64_t N, int64_t K) {
  std::string name = std::string(fn) + " " + std::to_string(M) + "x" +
                     std::to_string(N) + "x" + std::to_string(K) + " " +
                     (ta ? "T" : "N") + (tb ? "T" : "N");
  if (batch > 1)
    name += " batch " + std::to_string(batch);
  return name;
}

void launch(loom_ctx *ctx, int64_t kernel, std::initializer_list<void *> args) {
  guarded(ctx, "loom_cuda_launch", [&](GpuSession::Impl &s) {
    if (kernel < 0 || size_t(kernel) >= s.functions.size())
      throw loom::runtime::Error("kernel " + std::to_string(kernel) +
                                 " is not in the artifact's launch table");
    std::vector<void *> values(args);
    std::vector<void *> params;
    for (void *&v : values)
      params.push_back(&v);
    const loom::cuda::KernelLaunch &k = s.launches[size_t(kernel)];
    // The profile names the kernel and its DSL line.
    s.timed(k.name + (k.origin.empty() ? "" : " (" + k.origin + ")"), [&] {
      s.checkDriver(s.driver.launchKernel(s.functions[size_t(kernel)],
                                          static_cast<unsigned>(k.grid), 1, 1,
                                          static_cast<unsigned>(k.block), 1, 1,
                                          0, reinterpret_cast<CUstream>(s.ctx.stream),
                                          params.data(), nullptr),
                    "cuLaunchKernel", k.name.c_str());
    });
  }, /*timed=*/false);
}


template <class T> T load(loom_ctx *ctx, const void *p, const char *name) {
  T v{};
  guarded(ctx, name, [&](GpuSession::Impl &s) {
    s.check(cudaMemcpyAsync(&v, p, sizeof(T), cudaMemcpyDeviceToHost, s.ctx.stream),
            "cudaMemcpyAsync", name);
    s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize", name);
  });
  return v;
}

template <class T> void store(loom_ctx *ctx, void *p, T v, const char *name) {
  guarded(ctx, name, [&](GpuSession::Impl &s) {
    s.check(cudaMemcpyAsync(p, &v, sizeof(T), cudaMemcpyHostToDevice, s.ctx.stream),
            "cudaMemcpyAsync", name);
    // The value lives on this frame: wait until it has been read.
    s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize", name);
  });
}

} // namespace

namespace cu = loom::cuda;

extern "C" {

// loom_cuda_launchN(ctx, kernel, N buffers): one per argument count, up to
// kMaxKernelArgs (CudaCodegen.cpp refuses kernels with more).
void loom_cuda_launch1(loom_ctx *c, int64_t k, void *a0) {
  launch(c, k, {a0});
}
void loom_cuda_launch2(loom_ctx *c, int64_t k, void *a0, void *a1) {
  launch(c, k, {a0, a1});
}
void loom_cuda_launch3(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2) {
  launch(c, k, {a0, a1, a2});
}
void loom_cuda_launch4(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                       void *a3) {
  launch(c, k, {a0, a1, a2, a3});
}
void loom_cuda_launch5(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                       void *a3, void *a4) {
  launch(c, k, {a0, a1, a2, a3, a4});
}
void loom_cuda_launch6(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                       void *a3, void *a4, void *a5) {
  launch(c, k, {a0, a1, a2, a3, a4, a5});
}
void loom_cuda_launch7(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                       void *a3, void *a4, void *a5, void *a6) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6});
}
void loom_cuda_launch8(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                       void *a3, void *a4, void *a5, void *a6, void *a7) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7});
}
void loom_cuda_launch9(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                       void *a3, void *a4, void *a5, void *a6, void *a7,
                       void *a8) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8});
}
void loom_cuda_launch10(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9});
}
void loom_cuda_launch11(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9, void *a10) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10});
}
void loom_cuda_launch12(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9, void *a10, void *a11) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11});
}
void loom_cuda_launch13(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9, void *a10, void *a11, void *a12) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12});
}
void loom_cuda_launch14(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9, void *a10, void *a11, void *a12,
                        void *a13) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13});
}
void loom_cuda_launch15(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9, void *a10, void *a11, void *a12,
                        void *a13, void *a14) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13,
                a14});
}
void loom_cuda_launch16(loom_ctx *c, int64_t k, void *a0, void *a1, void *a2,
                        void *a3, void *a4, void *a5, void *a6, void *a7,
                        void *a8, void *a9, void *a10, void *a11, void *a12,
                        void *a13, void *a14, void *a15) {
  launch(c, k, {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14,
                a15});
}

float loom_cuda_load_f32(loom_ctx *c, const void *p) {
  return load<float>(c, p, "loom_cuda_load_f32");
}
double loom_cuda_load_f64(loom_ctx *c, const void *p) {
  return load<double>(c, p, "loom_cuda_load_f64");
}
int64_t loom_cuda_load_i64(loom_ctx *c, const void *p) {
  return load<int64_t>(c, p, "loom_cuda_load_i64");
}
int32_t loom_cuda_load_i32(loom_ctx *c, const void *p) {
  return load<int32_t>(c, p, "loom_cuda_load_i32");
}
void loom_cuda_store_f32(loom_ctx *c, void *p, float v) {
  store(c, p, v, "loom_cuda_store_f32");
}
void loom_cuda_store_f64(loom_ctx *c, void *p, double v) {
  store(c, p, v, "loom_cuda_store_f64");
}
void loom_cuda_store_i64(loom_ctx *c, void *p, int64_t v) {
  store(c, p, v, "loom_cuda_store_i64");
}
void loom_cuda_store_i32(loom_ctx *c, void *p, int32_t v) {
  store(c, p, v, "loom_cuda_store_i32");
}
void loom_cuda_copy(loom_ctx *c, void *dst, const void *src, int64_t bytes) {
  guarded(c, "loom_cuda_copy", [&](GpuSession::Impl &s) {
    cu::copy(s.ctx, dst, src, size_t(bytes));
  });
}

void loom_cuda_gemm(loom_ctx *c, int64_t batch, int32_t ta, int32_t tb,
                    int64_t M, int64_t N, int64_t K, const float *A,
                    int64_t sA, const float *B, int64_t sB, float *C,
                    int64_t sC, float alpha, float beta) {
  guarded(c, "loom_gemm", [&](GpuSession::Impl &s) {
    s.timedGemm([&] { return gemmName("loom_gemm", batch, ta, tb, M, N, K); },
                [&] { cu::gemm(s.ctx, batch, ta, tb, M, N, K, A, sA, B, sB, C, sC, alpha, beta); });
  }, /*timed=*/false);
}
void loom_cuda_gemm_bf16(loom_ctx *c, int64_t batch, int32_t ta, int32_t tb,
                         int64_t M, int64_t N, int64_t K, const uint16_t *A,
                         int64_t sA, const uint16_t *B, int64_t sB,
                         uint16_t *C, int64_t sC) {
  guarded(c, "loom_gemm_bf16", [&](GpuSession::Impl &s) {
    s.timedGemm([&] { return gemmName("loom_gemm_bf16", batch, ta, tb, M, N, K); },
                [&] { cu::gemmBf16(s.ctx, batch, ta, tb, M, N, K, A, sA, B, sB, C, sC); });
  }, /*timed=*/false);
}
void loom_cuda_gemm_f16(loom_ctx *c, int64_t batch, int32_t ta, int32_t tb,
                        int64_t M, int64_t N, int64_t K, const uint16_t *A,
                        int64_t sA, const uint16_t *B, int64_t sB, uint16_t *C,
                        int64_t sC) {
  guarded(c, "loom_gemm_f16", [&](GpuSession::Impl &s) {
    s.timedGemm([&] { return gemmName("loom_gemm_f16", batch, ta, tb, M, N, K); },
                [&] { cu::gemmF16(s.ctx, batch, ta, tb, M, N, K, A, sA, B, sB, C, sC); });
  }, /*timed=*/false);
}

// A bf16 CUDA program's MLP GEMMs with GELU (and its bias) or GELU's
// derivative in the epilogue (compiler/passes/FuseElementwise.cpp).
void loom_cuda_gemm_bias_gelu_bf16(loom_ctx *c, int32_t ta, int32_t tb,
                                   int64_t M, int64_t N, int64_t K,
                                   const uint16_t *A, const uint16_t *B,
                                   const uint16_t *bias, uint16_t *Y,
                                   uint16_t *pre) {
  guarded(c, "loom_gemm_bias_gelu_bf16", [&](GpuSession::Impl &s) {
    s.timedGemm([&] { return gemmName("loom_gemm_bias_gelu_bf16", 1, ta, tb, M, N, K); },
                [&] { cu::gemmBiasGeluBf16(s.ctx, ta, tb, M, N, K, A, B, bias, Y, pre); });
  }, /*timed=*/false);
}
void loom_cuda_gemm_gelu_grad_bf16(loom_ctx *c, int32_t ta, int32_t tb,
                                   int64_t M, int64_t N, int64_t K,
                                   const uint16_t *A, const uint16_t *B,
                                   const uint16_t *pre, uint16_t *D) {
  guarded(c, "loom_gemm_gelu_grad_bf16", [&](GpuSession::Impl &s) {
    s.timedGemm([&] { return gemmName("loom_gemm_gelu_grad_bf16", 1, ta, tb, M, N, K); },
                [&] { cu::gemmGeluGradBf16(s.ctx, ta, tb, M, N, K, A, B, pre, D); });
  }, /*timed=*/false);
}

void loom_cuda_layer_norm_fwd(loom_ctx *c, int64_t rows, int64_t cols,
                              const float *x, const float *g, const float *b,
                              float eps, float *y, float *mean, float *rstd) {
  guarded(c, "loom_layer_norm_fwd", [&](GpuSession::Impl &s) {
    cu::layerNormFwd(s.ctx, rows, cols, x, g, b, eps, y, mean, rstd);
  });
}
void loom_cuda_layer_norm_bwd(loom_ctx *c, int64_t rows, int64_t cols,
                              const float *dy, const float *x, const float *g,
                              const float *mean, const float *rstd, float *dx,
                              float *dg, float *db) {
  guarded(c, "loom_layer_norm_bwd", [&](GpuSession::Impl &s) {
    cu::layerNormBwd(s.ctx, rows, cols, dy, x, g, mean, rstd, dx, dg, db);
  });
}
// A bf16 CUDA program's norm output rounded to bf16 in the kernel, and its
// bf16 dy widened in the kernel (compiler/passes/FuseElementwise.cpp).
void loom_cuda_layer_norm_fwd_bf16(loom_ctx *c, int64_t rows, int64_t cols,
                                   const float *x, const float *g,
                                   const float *b, float eps, uint16_t *y,
                                   float *mean, float *rstd) {
  guarded(c, "loom_layer_norm_fwd", [&](GpuSession::Impl &s) {
    cu::layerNormFwdBf16Out(s.ctx, rows, cols, x, g, b, eps, y, mean, rstd);
  });
}
void loom_cuda_layer_norm_bwd_bf16(loom_ctx *c, int64_t rows, int64_t cols,
                                   const uint16_t *dy, const float *x,
                                   const float *g, const float *mean,
                                   const float *rstd, float *dx, float *dg,
                                   float *db) {
  guarded(c, "loom_layer_norm_bwd", [&](GpuSession::Impl &s) {
    cu::layerNormBwdBf16Dy(s.ctx, rows, cols, dy, x, g, mean, rstd, dx, dg, db);
  });
}
void loom_cuda_rms_norm_fwd(loom_ctx *c, int64_t rows, int64_t cols,
                            const float *x, const float *g, float eps, float *y,
                            float *rstd) {
  guarded(c, "loom_rms_norm_fwd", [&](GpuSession::Impl &s) {
    cu::rmsNormFwd(s.ctx, rows, cols, x, g, eps, y, rstd);
  });
}
void loom_cuda_rms_norm_bwd(loom_ctx *c, int64_t rows, int64_t cols,
                            const float *dy, const float *x, const float *g,
                            const float *rstd, float *dx, float *dg) {
  guarded(c, "loom_rms_norm_bwd", [&](GpuSession::Impl &s) {
    cu::rmsNormBwd(s.ctx, rows, cols, dy, x, g, rstd, dx, dg);
  });
}
void loom_cuda_softmax_fwd(loom_ctx *c, int64_t rows, int64_t cols,
                           const float *x, float *y) {
  guarded(c, "loom_softmax_fwd",
          [&](GpuSession::Impl &s) { cu::softmaxFwd(s.ctx, rows, cols, x, y); });
}
void loom_cuda_softmax_bwd(loom_ctx *c, int64_t rows, int64_t cols,
                           const float *y, const float *dy, float *dx) {
  guarded(c, "loom_softmax_bwd", [&](GpuSession::Impl &s) {
    cu::softmaxBwd(s.ctx, rows, cols, y, dy, dx);
  });
}
void loom_cuda_log_softmax_fwd(loom_ctx *c, int64_t rows, int64_t cols,
                               const float *x, float *y) {
  guarded(c, "loom_log_softmax_fwd", [&](GpuSession::Impl &s) {
    cu::logSoftmaxFwd(s.ctx, rows, cols, x, y);
  });
}
void loom_cuda_log_softmax_bwd(loom_ctx *c, int64_t rows, int64_t cols,
                               const float *y, const float *dy, float *dx) {
  guarded(c, "loom_log_softmax_bwd", [&](GpuSession::Impl &s) {
    cu::logSoftmaxBwd(s.ctx, rows, cols, y, dy, dx);
  });
}

void loom_cuda_cross_entropy_fwd(loom_ctx *c, int64_t rows, int64_t classes,
                                 const float *logits, const int32_t *target,
                                 int64_t ignore, float *loss, float *lse,
                                 float *stats) {
  guarded(c, "loom_cross_entropy_fwd", [&](GpuSession::Impl &s) {
    cu::crossEntropyFwd(s.ctx, rows, classes, logits, target, ignore, loss, lse,
                        stats);
  });
}
void loom_cuda_cross_entropy_bwd(loom_ctx *c, int64_t rows, int64_t classes,
                                 const float *logits, const int32_t *target,
                                 int64_t ignore, const float *lse,
                                 const float *dloss, float *dlogits) {
  guarded(c, "loom_cross_entropy_bwd", [&](GpuSession::Impl &s) {
    cu::crossEntropyBwd(s.ctx, rows, classes, logits, target, ignore, lse,
                        dloss, dlogits);
  });
}
void loom_cuda_cross_entropy_fwd_bf16(loom_ctx *c, int64_t rows, int64_t classes,
                                      const uint16_t *logits,
                                      const int32_t *target, int64_t ignore,
                                      float *loss, float *lse, float *stats) {
  guarded(c, "loom_cross_entropy_fwd_bf16", [&](GpuSession::Impl &s) {
    cu::crossEntropyFwdBf16(s.ctx, rows, classes, logits, target, ignore, loss,
                            lse, stats);
  });
}
void loom_cuda_cross_entropy_bwd_bf16(loom_ctx *c, int64_t rows, int64_t classes,
                                      const uint16_t *logits,
                                      const int32_t *target, int64_t ignore,
                                      const float *lse, const float *dloss,
                                      uint16_t *dlogits) {
  guarded(c, "loom_cross_entropy_bwd_bf16", [&](GpuSession::Impl &s) {
    cu::crossEntropyBwdBf16(s.ctx, rows, classes, logits, target, ignore, lse,
                            dloss, dlogits);
  });
}
void loom_cuda_embedding_fwd(loom_ctx *c, int64_t n, int64_t vocab,
                             int64_t dim, const int32_t *ids,
                             const float *table, float *out) {
  guarded(c, "loom_embedding_fwd", [&](GpuSession::Impl &s) {
    cu::embeddingFwd(s.ctx, n, vocab, dim, ids, table, out);
  });
}
void loom_cuda_embedding_bwd(loom_ctx *c, int64_t n, int64_t vocab,
                             int64_t dim, const int32_t *ids,
                             const float *dout, float *dtable) {
  guarded(c, "loom_embedding_bwd", [&](GpuSession::Impl &s) {
    cu::embeddingBwd(s.ctx, n, vocab, dim, ids, dout, dtable);
  });
}

} // extern "C"

namespace {

/// Carves consecutive bf16 buffers of the given element counts out of the
/// session's low-precision scratch.
std::vector<uint16_t *> lowBuffers(GpuSession::Impl &s,
                                   std::initializer_list<int64_t> counts,
                                   const char *what) {
  size_t total = 0;
  for (int64_t n : counts)
    total += (size_t(n) + 127) / 128 * 128; // 256-byte aligned each
  uint16_t *base = s.lowScratch(total, what);
  std::vector<uint16_t *> out;
  for (int64_t n : counts) {
    out.push_back(base);
    base += (size_t(n) + 127) / 128 * 128;
  }
  return out;
}

void throwIf(const std::string &err) {
  if (!err.empty())
    throw loom::runtime::Error(err);
}

} // namespace

extern "C" {

void loom_cuda_attention_fwd(loom_ctx *c, int64_t B, int64_t H, int64_t Tq,
                             int64_t Tk, int64_t D, int64_t Dv, int32_t causal,
                             const float *q, const float *k, const float *v,
                             float *out, float *lse) {
  guarded(c, "loom_attention_fwd", [&](GpuSession::Impl &s) {
    cu::AttentionDims d{B, H, Tq, Tk, D, Dv, causal != 0};
    if (s.bf16Attention && cu::attentionSupportedBF16(d).empty()) {
      int64_t nq = B * H * Tq * D, nk = B * H * Tk * D, no = B * H * Tq * Dv;
      auto b = lowBuffers(s, {nq, nk, nk, no}, "attention_fwd");
      cu::castF32ToBf16(s.ctx, q, b[0], nq);
      cu::castF32ToBf16(s.ctx, k, b[1], nk);
      cu::castF32ToBf16(s.ctx, v, b[2], nk);
      throwIf(cu::attentionForwardBF16(d, b[0], b[1], b[2], b[3], lse,
                                       s.ctx.stream));
      cu::castBf16ToF32(s.ctx, b[3], out, no);
      return;
    }
    throwIf(cu::attentionForwardF32(d, q, k, v, out, lse, s.ctx.stream));
  });
}
void loom_cuda_attention_bwd(loom_ctx *c, int64_t B, int64_t H, int64_t Tq,
                             int64_t Tk, int64_t D, int64_t Dv, int32_t causal,
                             const float *q, const float *k, const float *v,
                             const float *out, const float *lse,
                             const float *dout, float *dq, float *dk,
                             float *dv) {
  guarded(c, "loom_attention_bwd", [&](GpuSession::Impl &s) {
    cu::AttentionDims d{B, H, Tq, Tk, D, Dv, causal != 0};
    void *ws = s.scratch(cu::attentionBackwardWorkspaceBytes(d), "attention_bwd");
    if (s.bf16Attention && cu::attentionSupportedBF16(d).empty()) {
      int64_t nq = B * H * Tq * D, nk = B * H * Tk * D, no = B * H * Tq * Dv;
      auto b = lowBuffers(s, {nq, nk, nk, no, no, nq, nk, nk}, "attention_bwd");
      cu::castF32ToBf16(s.ctx, q, b[0], nq);
      cu::castF32ToBf16(s.ctx, k, b[1], nk);
      cu::castF32ToBf16(s.ctx, v, b[2], nk);
      cu::castF32ToBf16(s.ctx, out, b[3], no);
      cu::castF32ToBf16(s.ctx, dout, b[4], no);
      throwIf(cu::attentionBackwardBF16(d, b[0], b[1], b[2], b[3], lse, b[4],
                                        b[5], b[6], b[7], ws, s.ctx.stream));
      cu::castBf16ToF32(s.ctx, b[5], dq, nq);
      cu::castBf16ToF32(s.ctx, b[6], dk, nk);
      cu::castBf16ToF32(s.ctx, b[7], dv, nk);
      return;
    }
    throwIf(cu::attentionBackwardF32(d, q, k, v, out, lse, dout, dq, dk, dv, ws,
                                     s.ctx.stream));
  });
}
void loom_cuda_gated_attention_fwd(loom_ctx *c, int64_t B, int64_t H,
                                   int64_t T, int64_t D, int64_t Dv,
                                   int32_t causal, float threshold,
                                   const float *q, const float *k,
                                   const float *v, const float *wg,
                                   const float *bg, float *out, float *lse,
                                   float *gate, float *attn) {
  guarded(c, "loom_gated_attention_fwd", [&](GpuSession::Impl &s) {
    cu::AttentionDims d{B, H, T, T, D, Dv, causal != 0};
    if (s.bf16Attention && cu::attentionSupportedBF16(d).empty()) {
      int64_t n = B * H * T * D, nv = B * H * T * Dv;
      auto b = lowBuffers(s, {n, n, nv, nv, nv}, "gated_attention_fwd");
      cu::castF32ToBf16(s.ctx, q, b[0], n);
      cu::castF32ToBf16(s.ctx, k, b[1], n);
      cu::castF32ToBf16(s.ctx, v, b[2], nv);
      throwIf(cu::gatedAttentionForwardBF16(d, threshold, b[0], b[1], b[2], wg,
                                            bg, b[3], lse, gate, b[4],
                                            s.ctx.stream));
      cu::castBf16ToF32(s.ctx, b[3], out, nv);
      cu::castBf16ToF32(s.ctx, b[4], attn, nv);
      return;
    }
    throwIf(cu::gatedAttentionForwardF32(d, threshold, q, k, v, wg, bg, out, lse,
                                         gate, attn, s.ctx.stream));
  });
}
void loom_cuda_gated_attention_bwd(
    loom_ctx *c, int64_t B, int64_t H, int64_t T, int64_t D, int64_t Dv,
    int32_t causal, float threshold, const float *q, const float *k,
    const float *v, const float *wg, const float *bg, const float *lse,
    const float *gate, const float *attn, const float *dout, float *dq,
    float *dk, float *dv, float *dwg, float *dbg) {
  (void)bg; // the gate's bias enters through the saved gate
  guarded(c, "loom_gated_attention_bwd", [&](GpuSession::Impl &s) {
    cu::AttentionDims d{B, H, T, T, D, Dv, causal != 0};
    void *ws =
        s.scratch(cu::gatedAttentionBackwardWorkspaceBytes(d), "gated_attention_bwd");
    if (s.bf16Attention && cu::attentionSupportedBF16(d).empty()) {
      int64_t n = B * H * T * D, nv = B * H * T * Dv;
      auto b = lowBuffers(s, {n, n, nv, nv, nv, n, n, nv}, "gated_attention_bwd");
      cu::castF32ToBf16(s.ctx, q, b[0], n);
      cu::castF32ToBf16(s.ctx, k, b[1], n);
      cu::castF32ToBf16(s.ctx, v, b[2], nv);
      cu::castF32ToBf16(s.ctx, attn, b[3], nv);
      cu::castF32ToBf16(s.ctx, dout, b[4], nv);
      throwIf(cu::gatedAttentionBackwardBF16(d, threshold, b[0], b[1], b[2], wg,
                                             lse, gate, b[3], b[4], b[5], b[6],
                                             b[7], dwg, dbg, ws, s.ctx.stream));
      cu::castBf16ToF32(s.ctx, b[5], dq, n);
      cu::castBf16ToF32(s.ctx, b[6], dk, n);
      cu::castBf16ToF32(s.ctx, b[7], dv, nv);
      return;
    }
    throwIf(cu::gatedAttentionBackwardF32(d, threshold, q, k, v, wg, lse, gate,
                                          attn, dout, dq, dk, dv, dwg, dbg, ws,
                                          s.ctx.stream));
  });
}

/// Gated attention on bf16 tensors laid out [B,T,H,D] (the q/k/v GEMMs'
/// outputs as they are, no head split, no casts): what the compiler emits
/// when a bf16 CUDA program's attention operands are split_heads of widened
/// bf16 values and its outputs are rounded to bf16 after merge_heads
/// (compiler/passes/FuseElementwise.cpp). The same values bit for bit as
/// the [B,H,T,D] f32 entry points above; lse and gate stay f32 [B,H,T].
void loom_cuda_gated_attention_bthd_fwd(loom_ctx *c, int64_t B, int64_t H,
                                        int64_t T, int64_t D, int64_t Dv,
                                        int32_t causal, float threshold,
                                        const uint16_t *q, const uint16_t *k,
                                        const uint16_t *v, const float *wg,
                                        const float *bg, uint16_t *out,
                                        float *lse, float *gate,
                                        uint16_t *attn) {
  guarded(c, "loom_gated_attention_fwd", [&](GpuSession::Impl &s) {
    cu::AttentionDims d{B, H, T, T, D, Dv, causal != 0};
    d.interleaved = true;
    throwIf(cu::gatedAttentionForwardBF16(d, threshold, q, k, v, wg, bg, out,
                                          lse, gate, attn,
                                          s.ctx.stream));
  });
}
void loom_cuda_gated_attention_bthd_bwd(
    loom_ctx *c, int64_t B, int64_t H, int64_t T, int64_t D, int64_t Dv,
    int32_t causal, float threshold, const uint16_t *q, const uint16_t *k,
    const uint16_t *v, const float *wg, const float *bg, const float *lse,
    const float *gate, const uint16_t *attn, const uint16_t *dout,
    uint16_t *dq, uint16_t *dk, uint16_t *dv, float *dwg, float *dbg) {
  (void)bg; // the gate's bias enters through the saved gate
  guarded(c, "loom_gated_attention_bwd", [&](GpuSession::Impl &s) {
    cu::AttentionDims d{B, H, T, T, D, Dv, causal != 0};
    d.interleaved = true;
    void *ws = s.scratch(cu::gatedAttentionBackwardWorkspaceBytes(d),
                         "gated_attention_bwd");
    throwIf(cu::gatedAttentionBackwardBF16(d, threshold, q, k, v, wg, lse,
                                           gate, attn, dout, dq, dk, dv, dwg,
                                           dbg, ws, s.ctx.stream));
  });
}

void loom_cuda_dropout_fwd(loom_ctx *c, int64_t n, float p, uint64_t key,
                           const float *x, float *y) {
  guarded(c, "loom_dropout_fwd", [&](GpuSession::Impl &s) {
    cu::dropoutFwd(s.ctx, n, p, key, s.deviceStep(c->step, "dropout"), x, y);
  });
}
void loom_cuda_dropout_bwd(loom_ctx *c, int64_t n, float p, uint64_t key,
                           const float *dy, float *dx) {
  guarded(c, "loom_dropout_bwd", [&](GpuSession::Impl &s) {
    cu::dropoutBwd(s.ctx, n, p, key, s.deviceStep(c->step, "dropout"), dy, dx);
  });
}

void loom_cuda_adamw(loom_ctx *c, int64_t n, float *param, const float *grad,
                     float *m, float *v, float lr, float beta1, float beta2,
                     float eps, float wd, float gradScale, int64_t t) {
  guarded(c, "loom_adamw", [&](GpuSession::Impl &s) {
    cu::adamw(s.ctx, n, param, grad, m, v, s.slot(lr, "adamw"), beta1, beta2,
              eps, wd, s.slot(gradScale, "adamw"), s.slot(t, "adamw"));
  });
}
void loom_cuda_sgd(loom_ctx *c, int64_t n, float *param, const float *grad,
                   float *buf, float lr, float momentum, int32_t nesterov,
                   float wd, float gradScale, int32_t first) {
  guarded(c, "loom_sgd", [&](GpuSession::Impl &s) {
    cu::sgd(s.ctx, n, param, grad, buf, s.slot(lr, "sgd"), momentum,
            nesterov != 0, wd, s.slot(gradScale, "sgd"), s.slot(first, "sgd"));
  });
}
double loom_cuda_sum_squares(loom_ctx *c, int64_t n, const float *x) {
  double result = 0;
  guarded(c, "loom_sum_squares", [&](GpuSession::Impl &s) {
    double *out = s.resultSlot<double>();
    cu::sumSquares(s.ctx, n, x, out);
    s.check(cudaMemcpyAsync(&result, out, sizeof result, cudaMemcpyDeviceToHost,
                            s.ctx.stream),
            "cudaMemcpyAsync", "sum_squares");
    s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize",
            "sum_squares");
  });
  // --debug-poison-grads: the overflow check sees NaN on those steps.
  if (c->poisonStep != 0 && c->step >= c->poisonStep && c->step <= c->poisonLast &&
      (c->poisonRank < 0 || c->poisonRank == c->rank))
    result = NAN;
  return result;
}
// The device forms (compiler/codegen/CudaScalars.cpp): the operands that
// change from step to step are device pointers, scalar results go to a
// device slot; nothing here reads device memory on the host.
void loom_cuda_adamw_dev(loom_ctx *c, int64_t n, float *param,
                         const float *grad, float *m, float *v, const float *lr,
                         float beta1, float beta2, float eps, float wd,
                         const float *gradScale, const int64_t *t) {
  guarded(c, "loom_adamw_group", [&](GpuSession::Impl &s) {
    GpuSession::Impl::AdamwGroup &g = s.adamw;
    if (!g.tensors.empty() &&
        (g.lr != lr || g.gradScale != gradScale || g.step != t ||
         g.beta1 != beta1 || g.beta2 != beta2 || g.eps != eps))
      s.flushAdamw();
    if (g.tensors.empty()) {
      g.lr = lr;
      g.gradScale = gradScale;
      g.step = t;
      g.beta1 = beta1;
      g.beta2 = beta2;
      g.eps = eps;
    }
    g.tensors.push_back({param, grad, m, v, n, wd});
  }, /*timed=*/false);
}
void loom_cuda_sgd_dev(loom_ctx *c, int64_t n, float *param, const float *grad,
                       float *buf, const float *lr, float momentum,
                       int32_t nesterov, float wd, const float *gradScale,
                       const int32_t *first) {
  guarded(c, "loom_sgd", [&](GpuSession::Impl &s) {
    cu::sgd(s.ctx, n, param, grad, buf, lr, momentum, nesterov != 0, wd,
            gradScale, first);
  });
}
void loom_cuda_sum_squares_dev(loom_ctx *c, int64_t n, const float *x,
                               double *out, int32_t accumulate) {
  // --debug-poison-grads (never captured): the overflow check sees NaN.
  if (c->poisonStep != 0 && c->step >= c->poisonStep &&
      c->step <= c->poisonLast &&
      (c->poisonRank < 0 || c->poisonRank == c->rank)) {
    guarded(c, "loom_sum_squares", [&](GpuSession::Impl &s) {
      cu::sumSquares(s.ctx, n, x, out, accumulate != 0);
      s.check(cudaMemsetAsync(out, 0xff, sizeof(double), s.ctx.stream),
              "cudaMemsetAsync", "sum_squares");
    });
    return;
  }
  // Joins the pending group (launched by the next other call): a call
  // into another result, or one that starts the sum again, starts a group.
  guarded(
      c, "loom_sum_squares_group",
      [&](GpuSession::Impl &s) {
        GpuSession::Impl::SumSquaresGroup &g = s.sumSquaresGroup;
        if (!g.tensors.empty() && (g.out != out || accumulate == 0))
          s.flushSumSquares();
        if (g.tensors.empty()) {
          g.out = out;
          g.accumulate = accumulate != 0;
        }
        g.tensors.emplace_back(x, n);
      },
      /*timed=*/false);
}
void loom_cuda_adaptive_clip_dev(loom_ctx *c, const float *norm,
                                 float *history, int64_t window,
                                 int64_t *count, float sigmas, float maxNorm,
                                 int32_t record, float *coef) {
  guarded(c, "loom_adaptive_clip", [&](GpuSession::Impl &s) {
    cu::adaptiveClip(s.ctx, norm, history, window, count, sigmas, maxNorm,
                     record != 0, coef);
  });
}

float loom_cuda_adaptive_clip(loom_ctx *c, float norm, float *history,
                              int64_t window, int64_t *count, float sigmas,
                              float maxNorm, int32_t record) {
  float coef = 1;
  guarded(c, "loom_adaptive_clip", [&](GpuSession::Impl &s) {
    float *out = s.resultSlot<float>();
    cu::adaptiveClip(s.ctx, s.slot(norm, "adaptive_clip"), history, window,
                     count, sigmas, maxNorm, record != 0, out);
    s.check(cudaMemcpyAsync(&coef, out, sizeof coef, cudaMemcpyDeviceToHost,
                            s.ctx.stream),
            "cudaMemcpyAsync", "adaptive_clip");
    s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize",
            "adaptive_clip");
  });
  return coef;
}
void loom_cuda_check_finite(loom_ctx *c, const void *data, int64_t n,
                            int32_t dtype, int64_t op) {
  if (!c->checkNumerics)
    return;
  guarded(c, "loom_check_finite", [&](GpuSession::Impl &s) {
    cu::checkFinite(s.ctx, data, n, dtype, op);
  });
}

/* --- Collectives --------------------------------------------------------- */
// Over NCCL when the session has a mesh (enqueued on the stream, capturable;
// non-blocking all-reduces and sends on the communication stream), else
// staged: the stream drains, the data goes to pinned host memory, the CPU
// runtime's collective runs (MPI, ctx->mesh), the result comes back.

} // extern "C"

namespace {

using loom::runtime::CommMesh;

int groupSize(loom_ctx *c, int32_t axis) {
  auto *mesh = static_cast<CommMesh *>(c->mesh);
  return mesh && axis >= 0 && axis < 3 ? mesh->size(axis) : 1;
}

void toHost(GpuSession::Impl &s, void *host, const void *device, size_t bytes,
            const char *what) {
  s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize", what);
  if (bytes)
    s.check(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy",
            what);
}
void toDevice(GpuSession::Impl &s, void *device, const void *host, size_t bytes,
              const char *what) {
  if (bytes)
    s.check(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy",
            what);
}

#if LOOM_HAVE_NCCL
cu::NcclOp ncclOp(int32_t op) {
  if (op != 0 && op != 1)
    throw loom::runtime::Error("op " + std::to_string(op) +
                               " is not 0 (sum) or 1 (max)");
  return op == 0 ? cu::NcclOp::Sum : cu::NcclOp::Max;
}
#endif

/// Runs a CPU ABI function on host copies: `inputs` (device pointer, bytes)
/// are copied into one pinned buffer, `run` gets their host copies and the
/// outputs' host places (the function writes them whole), `outputs` are
/// copied back. For the vocabulary-
/// parallel kernels, which have no GPU version.
template <class F>
void onHost(GpuSession::Impl &s, loom_ctx *c, const char *what,
            std::initializer_list<std::pair<const void *, size_t>> inputs,
            std::initializer_list<std::pair<void *, size_t>> outputs, F &&run) {
  size_t total = 0;
  for (auto &[p, n] : inputs)
    total += (n + 63) / 64 * 64;
  for (auto &[p, n] : outputs)
    total += (n + 63) / 64 * 64;
  char *base = reinterpret_cast<char *>(s.hostStage(total, what));
  std::vector<void *> in, out;
  char *at = base;
  s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize", what);
  for (auto &[p, n] : inputs) {
    if (n)
      s.check(cudaMemcpy(at, p, n, cudaMemcpyDeviceToHost), "cudaMemcpy", what);
    in.push_back(at);
    at += (n + 63) / 64 * 64;
  }
  for (auto &[p, n] : outputs) {
    out.push_back(at);
    at += (n + 63) / 64 * 64;
  }
  run(in, out);
  if (c->failed)
    return;
  size_t i = 0;
  for (auto &[p, n] : outputs)
    toDevice(s, p, out[i++], n, what);
}

/// A staged in-place collective: `data` to pinned host memory, `collective`
/// (the CPU runtime's) on it, back unless it failed.
template <class F>
void stagedInPlace(GpuSession::Impl &s, loom_ctx *c, float *data, int64_t n,
                   const char *what, F &&collective) {
  float *h = s.hostStage(size_t(n) * 4, what);
  toHost(s, h, data, size_t(n) * 4, what);
  collective(h);
  if (!c->failed)
    toDevice(s, data, h, size_t(n) * 4, what);
}

} // namespace

extern "C" {

void loom_cuda_all_reduce(loom_ctx *c, float *data, int64_t n, int32_t axis,
                          int32_t op) {
  guarded(c, "loom_all_reduce", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      s.nccl->allReduce(data, data, size_t(n), cu::NcclType::F32, ncclOp(op),
                        axis, s.ctx.stream);
      return;
    }
#endif
    stagedInPlace(s, c, data, n, "all_reduce",
                  [&](float *h) { loom_all_reduce(c, h, n, axis, op); });
  });
}
void loom_cuda_all_gather(loom_ctx *c, const float *in, int64_t n, float *out,
                          int32_t axis) {
  guarded(c, "loom_all_gather", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      s.nccl->allGather(in, out, size_t(n), cu::NcclType::F32, axis,
                        s.ctx.stream);
      return;
    }
#endif
    size_t g = size_t(groupSize(c, axis));
    float *h = s.hostStage(size_t(n) * 4 * (g + 1), "all_gather");
    toHost(s, h, in, size_t(n) * 4, "all_gather");
    loom_all_gather(c, h, n, h + n, axis);
    if (!c->failed)
      toDevice(s, out, h + n, size_t(n) * 4 * g, "all_gather");
  });
}
void loom_cuda_reduce_scatter(loom_ctx *c, const float *in, int64_t n,
                              float *out, int32_t axis) {
  guarded(c, "loom_reduce_scatter", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      s.nccl->reduceScatter(in, out, size_t(n), cu::NcclType::F32,
                            cu::NcclOp::Sum, axis, s.ctx.stream);
      return;
    }
#endif
    size_t g = size_t(groupSize(c, axis));
    float *h = s.hostStage(size_t(n) * 4 * (g + 1), "reduce_scatter");
    toHost(s, h, in, size_t(n) * 4 * g, "reduce_scatter");
    loom_reduce_scatter(c, h, n, h + n * int64_t(g), axis);
    if (!c->failed)
      toDevice(s, out, h + n * int64_t(g), size_t(n) * 4, "reduce_scatter");
  });
}
void loom_cuda_broadcast(loom_ctx *c, float *data, int64_t n, int32_t axis,
                         int32_t root) {
  guarded(c, "loom_broadcast", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      s.nccl->broadcast(data, size_t(n), cu::NcclType::F32, root, axis,
                        s.ctx.stream);
      return;
    }
#endif
    stagedInPlace(s, c, data, n, "broadcast",
                  [&](float *h) { loom_broadcast(c, h, n, axis, root); });
  });
}
int64_t loom_cuda_all_reduce_start(loom_ctx *c, float *data, int64_t n,
                                   int32_t axis, int32_t op) {
  int64_t handle = 0;
  guarded(c, "loom_all_reduce_start", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      // On the communication stream, after what the compute stream has
      // enqueued so far; loom_all_reduce_wait joins it back.
      cudaEvent_t ready, done;
      s.check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
              "cudaEventCreateWithFlags", "all_reduce_start");
      s.check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming),
              "cudaEventCreateWithFlags", "all_reduce_start");
      s.check(cudaEventRecord(ready, s.ctx.stream), "cudaEventRecord",
              "all_reduce_start");
      s.check(cudaStreamWaitEvent(s.comm, ready, 0), "cudaStreamWaitEvent",
              "all_reduce_start");
      cudaEventDestroy(ready);
      s.nccl->allReduce(data, data, size_t(n), cu::NcclType::F32, ncclOp(op),
                        axis, s.comm);
      s.check(cudaEventRecord(done, s.comm), "cudaEventRecord",
              "all_reduce_start");
      handle = s.nextHandle++;
      s.reductions[handle] = done;
      return;
    }
#endif
    // Staged: the reduction is done when this returns.
    stagedInPlace(s, c, data, n, "all_reduce_start",
                  [&](float *h) { loom_all_reduce(c, h, n, axis, op); });
    if (c->failed)
      return;
    handle = s.nextHandle++;
    s.reductions[handle] = nullptr;
  });
  return handle;
}
void loom_cuda_all_reduce_wait(loom_ctx *c, int64_t handle) {
  guarded(c, "loom_all_reduce_wait", [&](GpuSession::Impl &s) {
    auto it = s.reductions.find(handle);
    if (it == s.reductions.end())
      throw loom::runtime::Error("handle " + std::to_string(handle) +
                                 " was not started or was already waited");
    if (cudaEvent_t done = it->second) {
      s.check(cudaStreamWaitEvent(s.ctx.stream, done, 0), "cudaStreamWaitEvent",
              "all_reduce_wait");
      cudaEventDestroy(done);
    }
    s.reductions.erase(it);
  });
}
void loom_cuda_send(loom_ctx *c, const float *data, int64_t n, int32_t axis,
                    int32_t peer, int64_t tag) {
  guarded(c, "loom_send", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      // The caller may overwrite `data` at once: the communication stream
      // sends a copy (buffers reused every program call).
      size_t bytes = size_t(n) * 4;
      if (s.sendsUsed == s.sendBuffers.size())
        s.sendBuffers.push_back({nullptr, 0});
      auto &[buf, size] = s.sendBuffers[s.sendsUsed++];
      if (size < bytes) {
        s.check(cudaStreamSynchronize(s.comm), "cudaStreamSynchronize", "send");
        if (buf)
          cudaFree(buf);
        buf = nullptr;
        s.check(cudaMalloc(&buf, bytes), "cudaMalloc", "send");
        size = bytes;
      }
      s.check(cudaMemcpyAsync(buf, data, bytes, cudaMemcpyDeviceToDevice,
                              s.ctx.stream),
              "cudaMemcpyAsync", "send");
      cudaEvent_t ready;
      s.check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
              "cudaEventCreateWithFlags", "send");
      s.check(cudaEventRecord(ready, s.ctx.stream), "cudaEventRecord", "send");
      s.check(cudaStreamWaitEvent(s.comm, ready, 0), "cudaStreamWaitEvent",
              "send");
      cudaEventDestroy(ready);
      s.nccl->send(buf, size_t(n), cu::NcclType::F32, peer, axis, s.comm);
      (void)tag; // NCCL matches a peer pair's messages in issue order
      return;
    }
#endif
    float *h = s.hostStage(size_t(n) * 4, "send");
    toHost(s, h, data, size_t(n) * 4, "send");
    loom_send(c, h, n, axis, peer, tag); // copies into the runtime's buffer
  });
}
void loom_cuda_recv(loom_ctx *c, float *data, int64_t n, int32_t axis,
                    int32_t peer, int64_t tag) {
  guarded(c, "loom_recv", [&](GpuSession::Impl &s) {
#if LOOM_HAVE_NCCL
    if (s.nccl) {
      s.nccl->recv(data, size_t(n), cu::NcclType::F32, peer, axis, s.ctx.stream);
      (void)tag;
      return;
    }
#endif
    float *h = s.hostStage(size_t(n) * 4, "recv");
    s.check(cudaStreamSynchronize(s.ctx.stream), "cudaStreamSynchronize", "recv");
    loom_recv(c, h, n, axis, peer, tag);
    if (!c->failed)
      toDevice(s, data, h, size_t(n) * 4, "recv");
  });
}

// The vocabulary-parallel embedding and cross-entropy: with a GPU per rank
// (NCCL), GPU kernels whose two reductions are NCCL all-reduces on the
// stream; axis -1, the unsharded GPU kernels; where ranks share a GPU, the
// CPU kernels on host copies (their reductions the CPU runtime's MPI ones).
namespace {
/// This rank's place on `axis` over NCCL: false when the collectives are
/// staged (or the axis is none).
bool ncclShard(GpuSession::Impl &s, int32_t axis, int64_t local,
               int64_t &global, int64_t &start) {
#if LOOM_HAVE_NCCL
  if (s.nccl && axis >= 0 && axis < 3) {
    global = local * s.nccl->size(axis);
    start = local * s.nccl->coord(axis);
    return true;
  }
#endif
  (void)s, (void)axis, (void)local, (void)global, (void)start;
  return false;
}
} // namespace

void loom_cuda_embedding_fwd_sharded(loom_ctx *c, int64_t n, int64_t vocabLocal,
                                     int64_t dim, int32_t axis,
                                     const int32_t *ids, const float *table,
                                     float *out) {
  guarded(c, "loom_embedding_fwd_sharded", [&](GpuSession::Impl &s) {
    int64_t vocab = 0, start = 0;
    if (axis == -1)
      return cu::embeddingFwd(s.ctx, n, vocabLocal, dim, ids, table, out);
    if (ncclShard(s, axis, vocabLocal, vocab, start))
      return cu::embeddingFwdSharded(s.ctx, n, vocabLocal, vocab, start, dim,
                                     ids, table, out);
    onHost(s, c, "embedding_fwd_sharded",
           {{ids, size_t(n) * 4}, {table, size_t(vocabLocal * dim) * 4}},
           {{out, size_t(n * dim) * 4}}, [&](auto &in, auto &out_) {
             loom_embedding_fwd_sharded(
                 c, n, vocabLocal, dim, axis, static_cast<int32_t *>(in[0]),
                 static_cast<float *>(in[1]), static_cast<float *>(out_[0]));
           });
  });
}
void loom_cuda_embedding_bwd_sharded(loom_ctx *c, int64_t n, int64_t vocabLocal,
                                     int64_t dim, int32_t axis,
                                     const int32_t *ids, const float *dout,
                                     float *dtable) {
  guarded(c, "loom_embedding_bwd_sharded", [&](GpuSession::Impl &s) {
    int64_t vocab = 0, start = 0;
    if (axis == -1)
      return cu::embeddingBwd(s.ctx, n, vocabLocal, dim, ids, dout, dtable);
    if (ncclShard(s, axis, vocabLocal, vocab, start))
      return cu::embeddingBwdSharded(s.ctx, n, vocabLocal, vocab, start, dim,
                                     ids, dout, dtable);
    onHost(s, c, "embedding_bwd_sharded",
           {{ids, size_t(n) * 4}, {dout, size_t(n * dim) * 4}},
           {{dtable, size_t(vocabLocal * dim) * 4}}, [&](auto &in, auto &out_) {
             loom_embedding_bwd_sharded(
                 c, n, vocabLocal, dim, axis, static_cast<int32_t *>(in[0]),
                 static_cast<float *>(in[1]), static_cast<float *>(out_[0]));
           });
  });
}
void loom_cuda_cross_entropy_fwd_sharded(loom_ctx *c, int64_t rows,
                                         int64_t classesLocal, int32_t axis,
                                         const float *logits,
                                         const int32_t *target, int64_t ignore,
                                         float *loss, float *lse, float *stats) {
  guarded(c, "loom_cross_entropy_fwd_sharded", [&](GpuSession::Impl &s) {
    int64_t classes = 0, start = 0;
    if (axis == -1)
      return cu::crossEntropyFwd(s.ctx, rows, classesLocal, logits, target,
                                 ignore, loss, lse, stats);
#if LOOM_HAVE_NCCL
    if (ncclShard(s, axis, classesLocal, classes, start))
      return cu::crossEntropyFwdSharded(
          s.ctx, rows, classesLocal, classes, start, logits, target, ignore,
          loss, lse, stats, [&](void *data, size_t count, bool max) {
            s.nccl->allReduce(data, data, count,
                              max ? cu::NcclType::I64 : cu::NcclType::F64,
                              max ? cu::NcclOp::Max : cu::NcclOp::Sum, axis,
                              s.ctx.stream);
          });
#endif
    onHost(s, c, "cross_entropy_fwd_sharded",
           {{logits, size_t(rows * classesLocal) * 4}, {target, size_t(rows) * 4}},
           {{loss, 4}, {lse, size_t(rows) * 4}, {stats, 8}},
           [&](auto &in, auto &out_) {
             loom_cross_entropy_fwd_sharded(
                 c, rows, classesLocal, axis, static_cast<float *>(in[0]),
                 static_cast<int32_t *>(in[1]), ignore,
                 static_cast<float *>(out_[0]), static_cast<float *>(out_[1]),
                 static_cast<float *>(out_[2]));
           });
  });
}
void loom_cuda_cross_entropy_bwd_sharded(loom_ctx *c, int64_t rows,
                                         int64_t classesLocal, int32_t axis,
                                         const float *logits,
                                         const int32_t *target, int64_t ignore,
                                         const float *lse, const float *dloss,
                                         float *dlogits) {
  guarded(c, "loom_cross_entropy_bwd_sharded", [&](GpuSession::Impl &s) {
    int64_t classes = 0, start = 0;
    if (axis == -1)
      return cu::crossEntropyBwd(s.ctx, rows, classesLocal, logits, target,
                                 ignore, lse, dloss, dlogits);
    if (ncclShard(s, axis, classesLocal, classes, start))
      return cu::crossEntropyBwdSharded(s.ctx, rows, classesLocal, classes,
                                        start, logits, target, ignore, lse,
                                        dloss, dlogits);
    onHost(s, c, "cross_entropy_bwd_sharded",
           {{logits, size_t(rows * classesLocal) * 4},
            {target, size_t(rows) * 4},
            {lse, size_t(rows) * 4},
            {dloss, 4}},
           {{dlogits, size_t(rows * classesLocal) * 4}},
           [&](auto &in, auto &out_) {
             loom_cross_entropy_bwd_sharded(
                 c, rows, classesLocal, axis, static_cast<float *>(in[0]),
                 static_cast<int32_t *>(in[1]), ignore,
                 static_cast<float *>(in[2]), static_cast<float *>(in[3]),
                 static_cast<float *>(out_[0]));
           });
  });
}

} // extern "C"
