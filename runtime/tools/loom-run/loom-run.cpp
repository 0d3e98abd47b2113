//===- loom-run.cpp - train a compiled Loom artifact
//-----------------------===//
//
// loom-run ARTIFACT.loomx [options]: validates the artifact, binds the
// dataset to its inputs, initialises the parameters and runs the training
// program step by step, with held-out evaluation, JSONL metrics and a
// progress line. DESIGN.md has the command-line contract, SEMANTICS.md the
// meaning of every metric.
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/Checkpoint.h"
#include "runtime/Collectives.h"
#include "runtime/Context.h"
#include "runtime/Dataset.h"
#include "runtime/Init.h"
#include "runtime/Json.h"
#include "runtime/Sharding.h"
#include "runtime/Support.h"
#include "runtime/Trace.h"
#include "runtime/Version.h"
#include "runtime/World.h"
#if LOOM_HAVE_CUDA
#include "runtime/cuda/GpuSession.h"
#if LOOM_HAVE_NCCL
#include "runtime/cuda/Nccl.h"
#endif
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <pthread.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits.h>
#include <optional>
#include <sched.h>
#include <string>
#include <sys/resource.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

#if LOOM_HAVE_OPENMP
#include <omp.h>
#endif

using namespace loom::runtime;
namespace json = loom::json;

// The ABI functions the runtime itself defines must be in the executable's
// dynamic symbol table even if nothing here calls them.
extern "C" {
__attribute__((used)) static void *const kAbiKeepAlive[] = {
    reinterpret_cast<void *>(&loom_error),
    reinterpret_cast<void *>(&loom_step),
    reinterpret_cast<void *>(&loom_mesh_coord),
    reinterpret_cast<void *>(&loom_all_reduce_start),
    reinterpret_cast<void *>(&loom_all_reduce_wait),
    reinterpret_cast<void *>(&loom_send),
    reinterpret_cast<void *>(&loom_recv),
    reinterpret_cast<void *>(&loom_trace_begin),
    reinterpret_cast<void *>(&loom_trace_end),
    reinterpret_cast<void *>(&loom_embedding_fwd_sharded),
    reinterpret_cast<void *>(&loom_embedding_bwd_sharded),
    reinterpret_cast<void *>(&loom_cross_entropy_fwd_sharded),
    reinterpret_cast<void *>(&loom_cross_entropy_bwd_sharded)};
}

namespace {

const char *kUsage = R"(usage: loom-run ARTIFACT.loomx [options]

Trains a model compiled by loomc. Runs directly (one rank) or under mpirun.

options (--flag=value and --flag value are both accepted):
  --steps=N          the step the run ends at (default: the artifact's train.steps)
  --data=PATH        dataset .bin (default: the artifact's train.data)
  --seed=S           run seed for initialisation and data order (default 0)
  --threads=N        threads per rank (default: all hardware threads)
  --eval-every=N     held-out eval_loss and eval_accuracy every N steps
                     (always also after the last step)
  --eval-batches=N   evaluate on at most N held-out batches (default: all)
  --check-numerics    stop at the first op that produces inf/NaN, naming it
                     and its DSL line
  --debug-poison-grads=STEP[-LAST][@RANK]
                     test hook: the gradients of steps STEP..LAST (on RANK,
                     default every rank) count as overflowed, so loss
                     scaling skips them
  --metrics=FILE     one JSON object per step (keys in SEMANTICS.md); with
                     --resume the file is appended to, never truncated
  --init-from=W.safetensors
                     after initialisation, load every parameter from W (each
                     one present by name, exact shape and dtype, nothing else)
  --save=W.safetensors
                     write the final parameters (--steps=0: the initial ones)
  --ckpt-dir=DIR     write checkpoints into DIR (created if missing): at the
                     end, on SIGINT/SIGTERM, and every --ckpt-every steps
  --ckpt-every=N     also checkpoint after every N-th step
  --ckpt-keep=K      keep the newest K checkpoints (default 3; 0 keeps all)
  --resume           continue from the newest complete checkpoint in
                     --ckpt-dir up to --steps (none there: start fresh)
  --log-every=N      plain progress lines every N steps when not on a terminal
                     (default: steps/10)
  --log-dir=DIR      every rank writes DIR/rank-R.log: a line per step with
                     its loss, step time, time in collectives and memory
  --timeout=SECONDS  collective watchdog: a collective that has not completed
                     after SECONDS ends the job (MPI_Abort) naming the rank,
                     step and collective (default 300 on several ranks;
                     0 turns it off)
  --trace=FILE.json  record a timeline of the first --trace-steps steps on
                     every rank (program calls, the compiler's schedule
                     spans, collectives and transfers) and write it, gathered
                     on rank 0, as one Chrome/Perfetto trace JSON
  --trace-steps=N    steps to trace (default 3): steps 1..N, or the first N
                     after --resume
  --infer            run an inference artifact (loomc --mode=infer): --steps
                     batches (default: the held-out split once, the training
                     split where that is less than a batch) after one warm-up
                     call; prints throughput, p50/p99 latency per call, loss
                     and accuracy (and writes them to --metrics)
  --calibrate=N      post-training quantization (loomc --mode=infer
                     --quantize=ptq-int8): run the FP32 model on N training
                     batches, observing each quantized matmul's input range,
                     and --save the weights with those ranges; --infer
                     --init-from that file then runs the INT8 model
  --batch=N          with --infer: the batch the artifact was compiled for
                     (shapes are static: compile with loomc -Dbatch=N)
  --describe         print the artifact's manifest and exit
  --version          print the runtime's version and build features
  --help             this text

environment (artifacts compiled with --target=cuda):
  LOOM_CUDA_PROFILE=1   print GPU time by kernel at the end (GEMMs by shape,
                        generated kernels by DSL line)
  LOOM_CUDA_PROFILE_ROWS=N
                        the profile's N longest rows (default 40)
  LOOM_CUDA_GRAPHS=0    run every program call eagerly, no CUDA graphs
  LOOM_GPU_COLLECTIVES=nccl|host
                        collectives over NCCL (one GPU per rank; the default
                        when every rank has its own) or staged through host
                        memory over MPI (the default when ranks share a GPU)

exit status: 0 success, 1 a run-time error, 2 a usage error
)";


/// The watchdog's limit when --timeout is not given (several ranks).
constexpr double kDefaultTimeout = 300;

/// This rank's index among the ranks of its node, and their number, from
/// the launcher's environment (Open MPI, MPICH/Hydra, Slurm); 0 and 1 when
/// none says.
int envInt(std::initializer_list<const char *> names, int fallback) {
  for (const char *n : names)
    if (const char *v = std::getenv(n); v && *v)
      return std::atoi(v);
  return fallback;
}
int localRank() {
  return envInt({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"},
                0);
}
int localSize() {
  return envInt({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                 "SLURM_NTASKS_PER_NODE"},
                1);
}

struct Options {
  std::string artifact;
  std::optional<int64_t> steps;
  std::optional<std::string> data;
  uint64_t seed = 0;
  bool seedGiven = false;
  int64_t threads = 0;
  int64_t evalEvery = 0;
  int64_t evalBatches = -1;
  bool infer = false;
  std::optional<int64_t> batch;
  int64_t calibrate = 0;
  int64_t logEvery = 0;
  std::string metrics;
  std::string initFrom, save, ckptDir;
  int64_t ckptEvery = 0, ckptKeep = 3;
  bool ckptEveryGiven = false, ckptKeepGiven = false;
  bool resume = false;
  bool describe = false, help = false, version = false;
  int64_t poisonStep = 0, poisonLast = 0;
  int poisonRank = -1;
  bool checkNumerics = false;
  std::string logDir;
  std::optional<double> timeout;
  std::string trace;
  int64_t traceSteps = 3;
  bool traceStepsGiven = false;
};

struct UsageError {
  std::string message;
};

int64_t parseCount(const std::string &flag, const std::string &v, int64_t lo) {
  char *end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || errno || *end != '\0' || x < lo)
    throw UsageError{"--" + flag + " expects an integer >= " +
                     std::to_string(lo) + ", got '" + v + "'"};
  return x;
}

double parseSeconds(const std::string &flag, const std::string &v) {
  char *end = nullptr;
  errno = 0;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || errno || *end != '\0' || !std::isfinite(x) || x < 0)
    throw UsageError{"--" + flag + " expects a number of seconds >= 0, got '" +
                     v + "'"};
  return x;
}

std::string nonEmpty(const std::string &flag, const std::string &v) {
  if (v.empty())
    throw UsageError{"--" + flag + " expects a path, got ''"};
  return v;
}

Options parseArgs(int argc, char **argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h")
      arg = "--help";
    if (arg.size() < 2 || arg[0] != '-' || arg == "-") {
      positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      for (++i; i < argc; ++i)
        positional.push_back(argv[i]);
      break;
    }
    if (arg.rfind("--", 0) != 0)
      throw UsageError{"unknown option '" + arg + "' (see --help)"};
    std::string name = arg.substr(2), value;
    bool hasValue = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      hasValue = true;
    }
    auto flag = [&](const char *n) { return name == n; };
    auto boolean = [&](bool &out) {
      if (hasValue)
        throw UsageError{"--" + name + " takes no value"};
      out = true;
    };
    auto takeValue = [&]() -> std::string {
      if (hasValue)
        return value;
      if (i + 1 >= argc)
        throw UsageError{"--" + name + " needs a value"};
      return argv[++i];
    };
    if (flag("help"))
      boolean(o.help);
    else if (flag("describe"))
      boolean(o.describe);
    else if (flag("version"))
      boolean(o.version);
    else if (flag("steps"))
      o.steps = parseCount(name, takeValue(), 0);
    else if (flag("data"))
      o.data = takeValue();
    else if (flag("seed")) {
      o.seed = static_cast<uint64_t>(parseCount(name, takeValue(), 0));
      o.seedGiven = true;
    } else if (flag("threads"))
      o.threads = parseCount(name, takeValue(), 1);
    else if (flag("eval-every"))
      o.evalEvery = parseCount(name, takeValue(), 0);
    else if (flag("eval-batches"))
      o.evalBatches = parseCount(name, takeValue(), 0);
    else if (flag("check-numerics"))
      o.checkNumerics = true;
    else if (flag("debug-poison-grads")) {
      std::string v = takeValue();
      size_t at = v.find('@');
      std::string range = v.substr(0, at);
      size_t dash = range.find('-');
      o.poisonStep = parseCount(name, range.substr(0, dash), 1);
      o.poisonLast = dash == std::string::npos
                         ? o.poisonStep
                         : parseCount(name, range.substr(dash + 1), o.poisonStep);
      if (at != std::string::npos)
        o.poisonRank = static_cast<int>(parseCount(name, v.substr(at + 1), 0));
    }
    else if (flag("log-every"))
      o.logEvery = parseCount(name, takeValue(), 1);
    else if (flag("log-dir"))
      o.logDir = nonEmpty(name, takeValue());
    else if (flag("timeout"))
      o.timeout = parseSeconds(name, takeValue());
    else if (flag("trace"))
      o.trace = nonEmpty(name, takeValue());
    else if (flag("trace-steps")) {
      o.traceSteps = parseCount(name, takeValue(), 1);
      o.traceStepsGiven = true;
    } else if (flag("metrics"))
      o.metrics = takeValue();
    else if (flag("init-from"))
      o.initFrom = nonEmpty(name, takeValue());
    else if (flag("save"))
      o.save = nonEmpty(name, takeValue());
    else if (flag("ckpt-dir"))
      o.ckptDir = nonEmpty(name, takeValue());
    else if (flag("ckpt-every")) {
      o.ckptEvery = parseCount(name, takeValue(), 1);
      o.ckptEveryGiven = true;
    } else if (flag("ckpt-keep")) {
      o.ckptKeep = parseCount(name, takeValue(), 0);
      o.ckptKeepGiven = true;
    } else if (flag("resume"))
      boolean(o.resume);
    else if (flag("infer"))
      boolean(o.infer);
    else if (flag("batch"))
      o.batch = parseCount(name, takeValue(), 1);
    else if (flag("calibrate"))
      o.calibrate = parseCount(name, takeValue(), 1);
    else
      throw UsageError{"unknown option '--" + name + "' (see --help)"};
  }
  if (o.help || o.version)
    return o;
  if (o.traceStepsGiven && o.trace.empty())
    throw UsageError{"--trace-steps needs --trace=FILE.json"};
  if (o.batch && !o.infer)
    throw UsageError{"--batch=N goes with --infer"};
  if (o.calibrate && (o.infer || o.resume || !o.ckptDir.empty() ||
                      o.evalEvery > 0 || o.save.empty()))
    throw UsageError{"--calibrate=N needs --save=Q.safetensors (the weights "
                     "and the activation ranges), and no --infer, --resume, "
                     "--ckpt-dir or --eval-every"};
  if (o.infer && (o.resume || !o.ckptDir.empty() || !o.save.empty() ||
                  o.evalEvery > 0))
    throw UsageError{"--infer runs the forward step only: no --resume, "
                     "--ckpt-dir, --save or --eval-every"};
  if (o.ckptDir.empty()) {
    if (o.resume)
      throw UsageError{"--resume needs --ckpt-dir=DIR (where the checkpoints "
                       "are)"};
    if (o.ckptEveryGiven)
      throw UsageError{"--ckpt-every needs --ckpt-dir=DIR"};
    if (o.ckptKeepGiven)
      throw UsageError{"--ckpt-keep needs --ckpt-dir=DIR"};
  }
  if (positional.empty())
    throw UsageError{"no artifact given (usage: loom-run ARTIFACT.loomx "
                     "[options]; see --help)"};
  if (positional.size() > 1)
    throw UsageError{"one artifact expected, got '" + positional[0] +
                     "' and '" + positional[1] + "'"};
  o.artifact = positional[0];
  return o;
}

std::atomic<int> gStopSignal{0};
/// Set while training: SIGINT/SIGTERM then stop the run after the step.
std::atomic<bool> gStopBetweenSteps{false};

/// SIGINT and SIGTERM are blocked in every thread (the mask is set before
/// any thread starts, and threads inherit it) and taken by one thread that
/// waits for them: a signal is never delivered in the middle of a kernel.
/// oneDNN's JIT GEMM runs on a stack it allocates on the heap, and a signal
/// frame pushed there (with the AVX-512 state, kilobytes) overwrote the
/// heap's bookkeeping: a Ctrl-C at the wrong moment aborted the run in
/// free() instead of checkpointing it. While training, the signal asks for
/// a stop after the step; otherwise its default action ends the process.
void startSignalThread() {
  static sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);
  std::thread([] {
    for (;;) {
      int sig = 0;
      if (sigwait(&stopSignals, &sig) != 0)
        continue;
      if (gStopBetweenSteps.load()) {
        gStopSignal.store(sig);
        continue;
      }
      std::signal(sig, SIG_DFL);
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, sig);
      pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
      raise(sig);
    }
  }).detach();
}

double nowSeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

uint64_t peakResidentBytes() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0)
    return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024; // Linux: KiB
}

/// Resident memory now (/proc/self/statm), 0 where unknown.
uint64_t residentBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(in >> size >> resident))
    return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

/// --threads' default: the CPUs this process may run on (its affinity mask:
/// mpirun binds each of up to 2 ranks to a core), shared out among the ranks
/// of this node when they all may run everywhere (no binding).
int defaultThreads(int worldSize) {
  int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int mine = hardware;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    mine = CPU_COUNT(&set);
  if (worldSize > 1 && mine >= hardware) {
    for (const char *var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
      if (const char *v = std::getenv(var)) {
        int local = std::atoi(v);
        if (local > 1)
          return std::max(1, mine / local);
      }
  }
  return std::max(1, mine);
}

uint64_t physicalMemoryBytes() {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || size <= 0)
    return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(size);
}

std::string formatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0)
    return "?";
  long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60,
                  s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

std::string fmt(const char *format, double v) {
  if (!std::isfinite(v))
    return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

/// A number for the metrics file: non-finite values become null.
json::Value metricNumber(double v) {
  return std::isfinite(v) ? json::Value(v) : json::Value();
}

/// Where the data path of the train block points: as given, else relative
/// to the artifact's folder.
std::string resolveManifestData(const std::string &data,
                                const std::string &artifact) {
  if (data.empty() || data[0] == '/' || access(data.c_str(), F_OK) == 0)
    return data;
  size_t slash = artifact.rfind('/');
  if (slash == std::string::npos)
    return data;
  std::string beside = artifact.substr(0, slash + 1) + data;
  return access(beside.c_str(), F_OK) == 0 ? beside : data;
}

/// The artifact's checksum, from its trailer (a checkpoint records which
/// build of the model wrote it). The artifact has been validated already.
uint64_t artifactChecksum(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(0, std::ios::end);
  uint64_t size = static_cast<uint64_t>(in.tellg());
  unsigned char trailer[kTrailerBytes];
  in.seekg(static_cast<std::streamoff>(size - kTrailerBytes));
  in.read(reinterpret_cast<char *>(trailer), kTrailerBytes);
  return parseTrailer(trailer, size).checksum;
}

/// Lines in a text file (0 when it does not exist).
int64_t countLines(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  int64_t n = 0;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof buf);
    n += std::count(buf, buf + in.gcount(), '\n');
  }
  return n;
}

/// Why `path` cannot be created as a file, or "" when its folder takes it.
std::string cannotCreate(const std::string &path) {
  size_t slash = path.rfind('/');
  std::string folder = slash == std::string::npos ? "."
                       : slash == 0               ? "/"
                                                  : path.substr(0, slash);
  struct stat st;
  if (::stat(folder.c_str(), &st) != 0)
    return "folder " + folder + ": " + std::strerror(errno);
  if (!S_ISDIR(st.st_mode))
    return folder + " is not a folder";
  if (access(folder.c_str(), W_OK) != 0)
    return "folder " + folder + ": " + std::strerror(errno);
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return "it is a folder";
  return "";
}

struct EvalResult {
  double loss = NAN, accuracy = NAN;
  double count = 0;
};

class Trainer {
public:
  Trainer(const World &world, const Options &opts)
      : world_(world), opts_(opts) {}
#if LOOM_HAVE_NCCL
  ~Trainer() {
    // Graphs that captured NCCL operations hold their communicators:
    // ncclCommDestroy (nccl_, freed before gpu_) would wait for them forever.
    if (gpu_)
      gpu_->releaseGraphs();
  }
#endif
  int run();

private:
  /// A failure of this rank: every rank that meets one says so, and the
  /// world is taken down.
  [[noreturn]] void fail(const std::string &message) {
    std::string rank = world_.size > 1 && message.rfind("rank ", 0) != 0
                           ? "rank " + std::to_string(world_.rank) + ": "
                           : "";
    std::fprintf(stderr, "%sloom-run: error: %s%s\n",
                 progressShown_ ? "\n" : "", rank.c_str(), message.c_str());
    // One rank has nobody to gather from: its timeline up to the error.
    if (tracer_ && world_.size == 1) {
      try {
        Tracer::write(opts_.trace, {tracer_->fragment(0, 0, 0, 0)});
        std::fprintf(stderr, "loom-run: trace (up to the error) %s\n",
                     opts_.trace.c_str());
      } catch (const Error &e) {
        std::fprintf(stderr, "loom-run: error: %s\n", e.what());
      }
    }
    abortWorld(world_, 1);
  }
  /// A failure every rank meets alike (the artifact, the mesh, the flags):
  /// rank 0 says it once and every rank ends cleanly.
  [[noreturn]] void failEverywhere(const std::string &message) {
    if (world_.rank == 0)
      std::fprintf(stderr, "loom-run: error: %s\n", message.c_str());
    std::fflush(stderr);
    finalizeWorld(world_);
    std::exit(1);
  }
  /// Runs one program call (`batch`: the eval batch, -1 for training);
  /// traced as one "compute" event covering the call and the completion of
  /// its sends and reductions.
  void callProgram(loom_program_fn fn, const char *role, int64_t batch = -1);
  /// --trace: gathers every rank's events on rank 0, which writes the file.
  void finishTrace();
  /// Writes a batch the loader cut into this rank's input buffers.
  void nextTrainBatch();
  void evalBatch(int64_t i);
  float readOutput(const std::string &name) const;
  EvalResult evaluate();
  /// --infer: `batches` forward calls (0: the held-out split once), timed.
  int infer(int64_t batches);
  /// --calibrate: `batches` calls of the calibration step, then --save.
  int calibrate(int64_t batches);
  /// The first two floats of a state buffer (an activation range).
  std::array<float, 2> readFloats(const Buffer &b) const;
  void progress(int64_t step, int64_t steps, double loss, double stepTokens,
                double stepSeconds, double lr, double eta, bool final);
  /// A line of its own between progress updates (rank 0).
  void say(const std::string &line);
  void checkpoint(int64_t step, int64_t steps, int64_t skippedTotal);
  /// Copies this rank's blocks of the global batch in staging_ into the
  /// input buffers its stage's arena holds.
  void scatterInputs();

  const World &world_;
  const Options &opts_;
  std::unique_ptr<Artifact> artifact_;
  std::unique_ptr<Dataset> data_;
  std::unique_ptr<DataLoader> loader_;
  loom_ctx ctx_;
  /// The mesh's communicators, behind ctx_.mesh; freed before MPI_Finalize.
  std::unique_ptr<CommMesh> mesh_;
  MeshCoord coord_{0, 0, 0};
  /// This rank's pipeline stage (coord_[2]): the programs it runs and the
  /// buffers its arena holds.
  int64_t stage_ = 0;
  /// Inputs split over the mesh or held by some pipeline stages only: the
  /// loader writes the global batch here (globalInputs_ lay it out) and each
  /// rank copies its slice of its stage's inputs into the arena. Unused
  /// (empty) otherwise.
  std::vector<Buffer> globalInputs_;
  std::vector<unsigned char> staging_;
  /// --log-dir: this rank's log.
  std::ofstream rankLog_;
  /// --trace: this rank's recorder (behind ctx_.tracer and the mesh's);
  /// null when not tracing.
  std::unique_ptr<Tracer> tracer_;
  unsigned char *arena_ = nullptr;
#if LOOM_HAVE_CUDA
  /// A CUDA artifact's device side (arena, kernels); null for CPU artifacts.
  std::unique_ptr<loom::cuda::GpuSession> gpu_;
#if LOOM_HAVE_NCCL
  /// The mesh over NCCL when every rank has a GPU of its own (freed before
  /// the session and MPI_Finalize).
  std::unique_ptr<loom::cuda::NcclMesh> nccl_;
#endif
  /// Sets up the GPU session's collectives (several ranks).
  void setupGpuCollectives(const Manifest &m);
  /// What a program call uploads (this stage's inputs) and downloads (the
  /// output scalars); the device arena holds everything else.
  std::vector<loom::cuda::ArenaRange> gpuInputs_, gpuOutputs_;
#endif
  /// Before reading the arena on the host (checkpoints, --save): a CUDA
  /// artifact's arena is the device's.
  void pullArena();
  bool tty_ = false, progressShown_ = false;
  double lastProgress_ = 0;
  /// Tokens and training seconds since the last progress line: its rate is
  /// their ratio, steadier than one step's.
  double intervalTokens_ = 0, intervalSeconds_ = 0;
  /// What a checkpoint records besides the arena.
  uint64_t seed_ = 0, artifactChecksum_ = 0;
  int threads_ = 1;
  std::string dataPath_;
  int64_t metricsLines_ = 0;
};

void Trainer::say(const std::string &line) {
  if (world_.rank != 0)
    return;
  if (tty_ && progressShown_) {
    std::printf("\r\x1b[K");
    progressShown_ = false;
  }
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void Trainer::scatterInputs() {
  const Manifest &m = artifact_->manifest();
  for (size_t i = 0; i < m.inputs.size(); ++i) {
    const Buffer &b = m.inputs[i];
    if (!b.inStage(stage_))
      continue; // another stage's input: not in this arena
    extractBlock(staging_.data() + globalInputs_[i].offset, b.global(),
                 sliceStart(b, coord_), b.shape, dtypeSize(b.dtype),
                 arena_ + b.offset);
  }
}

void Trainer::nextTrainBatch() {
  if (globalInputs_.empty()) {
    loader_->nextTrainBatch(arena_);
    return;
  }
  loader_->nextTrainBatch(staging_.data());
  scatterInputs();
}

void Trainer::evalBatch(int64_t i) {
  if (globalInputs_.empty()) {
    loader_->evalBatch(i, arena_);
    return;
  }
  loader_->evalBatch(i, staging_.data());
  scatterInputs();
}

void Trainer::checkpoint(int64_t step, int64_t steps, int64_t skippedTotal) {
  const Manifest &m = artifact_->manifest();
  CheckpointIndex index;
  index.model = m.model;
  index.layout = layoutFingerprint(m);
  index.artifactChecksum = artifactChecksum_;
  index.artifact = opts_.artifact;
  index.step = step;
  index.targetSteps = steps;
  index.seed = seed_;
  index.threads = threads_;
  index.dataPath = dataPath_;
  index.cursor = loader_->cursor();
  index.skippedTotal = skippedTotal;
  index.metricsLines = metricsLines_;
  index.mesh = m.mesh;
  index.zero = m.zero;
  pullArena();
  std::string path;
  try {
    path = writeCheckpoint(opts_.ckptDir, m, arena_, index, opts_.ckptKeep,
                           mesh_.get());
  } catch (const AgreedError &e) {
    // Every rank knows it (and the .tmp folder is gone): said once.
    failEverywhere("step " + std::to_string(step) + ": " + e.what());
  } catch (const Error &e) {
    fail("rank " + std::to_string(world_.rank) + ", step " +
         std::to_string(step) + ": " + e.what());
  }
  if (!tty_)
    say("loom-run: checkpoint " + path);
}

void Trainer::callProgram(loom_program_fn fn, const char *role,
                          int64_t batch) {
  ctx_.clearError();
  bool traced = tracer_ && tracer_->active();
  double t0 = traced ? steadySeconds() : 0;
#if LOOM_HAVE_CUDA
  if (gpu_) {
    try {
      const Manifest &m = artifact_->manifest();
      const std::string *symbol = m.program(role, stage_);
      loom::cuda::ProgramCall call;
      call.fn = fn;
      call.inputs = &gpuInputs_;
      call.outputs = &gpuOutputs_;
      call.capturable = symbol && std::find(m.cudaGraphPrograms.begin(),
                                            m.cudaGraphPrograms.end(),
                                            *symbol) != m.cudaGraphPrograms.end();
      gpu_->run(call, &ctx_, arena_);
    } catch (const Error &e) {
      fail("rank " + std::to_string(world_.rank) + ", step " +
           std::to_string(ctx_.step) + ", " + role + ": " + e.what());
    }
  } else {
    fn(&ctx_, arena_);
  }
#else
  fn(&ctx_, arena_);
#endif
  // Sends complete by the end of the program call (their receivers are in
  // the same step). After an error the job is ended instead: a receiver
  // may never come.
  if (!ctx_.failed)
    mesh_->completeSends(&ctx_);
  if (int64_t pending = mesh_->pendingReductions()) {
    // Their buffers are the arena's: finish them before anything else.
    mesh_->drainReductions(&ctx_);
    loom_error(&ctx_, "loom_all_reduce_start",
               (std::to_string(pending) + " non-blocking all-reduce" +
                (pending == 1 ? " was" : "s were") +
                " started and not waited (loom_all_reduce_wait) before the "
                "program returned")
                   .c_str());
  }
  if (traced) {
    tracer_->endProgram();
    TraceEvent e;
    e.name = role;
    e.ts = tracer_->micros(t0);
    e.dur = tracer_->micros(steadySeconds()) - e.ts;
    e.step = ctx_.step;
    e.batch = batch;
    tracer_->record(std::move(e));
  }
  if (ctx_.failed)
    fail("rank " + std::to_string(world_.rank) + ", step " +
         std::to_string(ctx_.step) + ", " + role + ": " + ctx_.errorOp + ": " +
         ctx_.errorMessage);
}

#if LOOM_HAVE_CUDA
void Trainer::setupGpuCollectives(const Manifest &m) {
  // NCCL needs a GPU per rank. Whether any rank shares its GPU (more local
  // ranks than devices) is agreed over the mesh, so all choose alike.
  int devices = loom::cuda::GpuSession::deviceCount();
  float shared = (devices == 0 || localSize() > devices) ? 1.0f : 0.0f;
  for (int32_t axis = 0; axis < 3; ++axis)
    loom_all_reduce(&ctx_, &shared, 1, axis, /*max*/ 1);
  if (ctx_.failed)
    fail("rank " + std::to_string(world_.rank) + ": " + ctx_.errorOp + ": " +
         ctx_.errorMessage);
  const char *env = std::getenv("LOOM_GPU_COLLECTIVES");
  std::string want = env ? env : "";
  if (!want.empty() && want != "nccl" && want != "host")
    failEverywhere("LOOM_GPU_COLLECTIVES='" + want +
                   "': expected 'nccl' or 'host'");
  bool useNccl = shared == 0 && want != "host";
#if !LOOM_HAVE_NCCL
  useNccl = false;
#endif
  if (want == "nccl" && !useNccl)
    failEverywhere(shared != 0 ? "LOOM_GPU_COLLECTIVES=nccl, but ranks share a "
                                 "GPU (NCCL needs one per rank)"
                               : "LOOM_GPU_COLLECTIVES=nccl, but this runtime "
                                 "was built without NCCL");
  double timeout = opts_.timeout ? *opts_.timeout : kDefaultTimeout;
#if LOOM_HAVE_NCCL
  if (useNccl) {
    try {
      nccl_ = std::make_unique<loom::cuda::NcclMesh>(
          m.mesh.dp, m.mesh.tp, m.mesh.pp, world_.rank, world_.size,
          gpu_->device());
    } catch (const Error &e) {
      fail(e.what());
    }
    gpu_->setCollectives(nccl_.get(), timeout);
    say("loom-run: collectives over NCCL " + loom::cuda::ncclVersionString() +
        ", one GPU per rank");
    return;
  }
#endif
  (void)m;
  gpu_->setCollectives(nullptr, timeout);
  // Each staged collective drains the stream: no graph capture.
  gpu_->disableGraphs();
  say(std::string("loom-run: collectives staged through host memory over "
                  "MPI (") +
      (shared != 0 ? "ranks share a GPU" : "LOOM_GPU_COLLECTIVES=host") + ")");
}
#endif

void Trainer::pullArena() {
#if LOOM_HAVE_CUDA
  if (gpu_) {
    try {
      gpu_->pull(arena_);
    } catch (const Error &e) {
      fail("rank " + std::to_string(world_.rank) + ": " + e.what());
    }
  }
#endif
}

float Trainer::readOutput(const std::string &name) const {
  std::optional<int64_t> off = artifact_->manifest().output(name);
  if (!off)
    return NAN;
  float v;
  std::memcpy(&v, arena_ + *off, sizeof v);
  return v;
}

std::array<float, 2> Trainer::readFloats(const Buffer &b) const {
  std::array<float, 2> v{};
  std::memcpy(v.data(), arena_ + b.offset, sizeof v);
  return v;
}

int Trainer::calibrate(int64_t batches) {
  const Manifest &m = artifact_->manifest();
  loom_program_fn cal = artifact_->program("calibrate_step", stage_);
  if (world_.rank == 0 && !tty_)
    std::printf("loom-run: %s (%s), calibration, %s, %lld batches of %lld "
                "from the training split, %d threads\n",
                m.model.c_str(), opts_.artifact.c_str(),
                data_->summary().c_str(), static_cast<long long>(batches),
                static_cast<long long>(loader_->batchSize()), threads_);
  double lossSum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    nextTrainBatch();
    // Observers that average over batches count them (1-based).
    ctx_.step = i + 1;
    callProgram(cal, "calibrate_step", i);
    lossSum += readOutput("eval_loss");
  }
  std::string ranges;
  for (const Buffer &b : m.state)
    if (isActivationRange(b)) {
      auto r = readFloats(b);
      char text[160];
      std::snprintf(text, sizeof text, "%s%s [%.4g, %.4g]",
                    ranges.empty() ? "" : ", ", b.name.c_str(), r[0], r[1]);
      ranges += text;
    }
  pullArena();
  try {
    saveWeights(opts_.save, m, arena_,
                {{"format", "pt"},
                 {"model", m.model},
                 {"calibration_batches", std::to_string(batches)},
                 {"seed", std::to_string(seed_)}},
                mesh_.get());
  } catch (const Error &e) {
    fail(e.what());
  }
  if (world_.rank == 0)
    std::printf("loom-run: calibrated on %lld batches (FP32 loss %.4f): %s; "
                "weights and ranges saved to %s\n",
                static_cast<long long>(batches),
                lossSum / double(std::max<int64_t>(1, batches)),
                ranges.c_str(), opts_.save.c_str());
  return 0;
}

int Trainer::infer(int64_t batches) {
  const Manifest &m = artifact_->manifest();
  loom_program_fn eval = artifact_->program("eval_step", stage_);
  const int64_t batch = loader_->batchSize();
  if (opts_.batch && *opts_.batch != batch)
    failEverywhere(opts_.artifact + ": --batch=" +
                   std::to_string(*opts_.batch) +
                   ", but the artifact was compiled for batch " +
                   std::to_string(batch) + " (shapes are static: compile with "
                   "loomc -Dbatch=" + std::to_string(*opts_.batch) + ")");
  // The held-out split's batches in order (repeated for more), or the
  // training split's where the held-out one is less than a batch.
  const int64_t heldOut = loader_->evalBatches();
  if (batches == 0)
    batches = heldOut > 0 ? heldOut : 1;
  auto load = [&](int64_t i) {
    if (heldOut > 0)
      evalBatch(i % heldOut);
    else
      nextTrainBatch();
  };
  if (world_.rank == 0 && !tty_)
    std::printf("loom-run: %s (%s), inference, %s, %lld batches of %lld from "
                "the %s split, %d threads%s\n",
                m.model.c_str(), opts_.artifact.c_str(),
                data_->summary().c_str(), static_cast<long long>(batches),
                static_cast<long long>(batch),
                heldOut > 0 ? "held-out" : "training", threads_,
                world_.size > 1 ? (" per rank, " + std::to_string(world_.size) +
                                   " ranks (" + formatMesh(m.mesh) + ")")
                                      .c_str()
                                : "");
  // Post-training quantization: calibrated ranges, then the weights
  // quantized once.
  if (m.program("prepare_step")) {
    const bool calibrated = m.program("calibrate_step") != nullptr;
    for (const Buffer &b : m.state)
      if (isActivationRange(b) && readFloats(b) == std::array<float, 2>{})
        failEverywhere(
            opts_.artifact + ": activation range '" + b.name + "' is " +
            (calibrated
                 ? "not calibrated: run loom-run ART --init-from=W "
                   "--calibrate=N --save=Q.safetensors, then --infer "
                   "--init-from=Q.safetensors"
                 : "not trained: pass --init-from=Q.safetensors, the "
                   "weights and ranges a quantization-aware training run "
                   "(loomc --quantize=qat-int8) saved with --save"));
    callProgram(artifact_->program("prepare_step", stage_), "prepare_step");
  }
  // One warm-up call (first-touch of the arena, CUDA graph capture), not
  // timed.
  load(0);
  callProgram(eval, "eval_step", 0);
  const bool counted = m.output("eval_count").has_value();
  const bool hasAccuracy = m.output("eval_correct").has_value();
  std::vector<double> latency;
  latency.reserve(size_t(batches));
  double lossSum = 0, correct = 0, count = 0, busy = 0;
  for (int64_t i = 0; i < batches; ++i) {
    load(i);
    double t0 = nowSeconds();
    callProgram(eval, "eval_step", i);
    double t = nowSeconds() - t0;
    // Several ranks: the slowest rank's call.
    if (world_.size > 1) {
      try {
        mesh_->allReduceMax(&t, 1, "--infer latency");
      } catch (const Error &e) {
        fail("rank " + std::to_string(world_.rank) + ", --infer batch " +
             std::to_string(i + 1) + ": " + e.what());
      }
    }
    latency.push_back(t);
    busy += t;
    double c = counted ? readOutput("eval_count") : 1.0;
    lossSum += double(readOutput("eval_loss")) * c;
    if (hasAccuracy)
      correct += readOutput("eval_correct");
    count += c;
  }
  if (latency.empty())
    fail("--infer: stopped before the first batch");
  std::vector<double> sorted = latency;
  std::sort(sorted.begin(), sorted.end());
  // Nearest-rank percentiles.
  auto percentile = [&](double p) {
    size_t k = size_t(std::ceil(p / 100.0 * double(sorted.size())));
    return sorted[std::min(sorted.size() - 1, k ? k - 1 : 0)];
  };
  const double p50 = percentile(50) * 1e3, p99 = percentile(99) * 1e3;
  const double samplesPerSecond =
      double(batch) * double(latency.size()) / busy;
  const double loss = count > 0 ? lossSum / count : NAN;
  const double accuracy = hasAccuracy && count > 0 ? correct / count : NAN;
  if (world_.rank == 0) {
    std::printf("loom-run: inference: %zu batches of %lld, %.1f samples/s, "
                "latency p50 %.3f ms, p99 %.3f ms; loss %.4f",
                latency.size(), static_cast<long long>(batch),
                samplesPerSecond, p50, p99, loss);
    if (hasAccuracy)
      std::printf(", accuracy %.4f", accuracy);
    std::printf("\n");
    std::fflush(stdout);
    if (!opts_.metrics.empty()) {
      std::ofstream out(opts_.metrics, std::ios::out | std::ios::trunc);
      if (!out)
        fail("cannot write the metrics file " + opts_.metrics + ": " +
             std::strerror(errno));
      char line[512];
      std::snprintf(line, sizeof line,
                    "{\"mode\": \"infer\", \"batches\": %zu, \"batch\": "
                    "%lld, \"samples_per_s\": %.3f, \"latency_p50_ms\": "
                    "%.6f, \"latency_p99_ms\": %.6f, \"eval_loss\": %s, "
                    "\"eval_accuracy\": %s}\n",
                    latency.size(), static_cast<long long>(batch),
                    samplesPerSecond, p50, p99,
                    std::isfinite(loss) ? std::to_string(loss).c_str() : "null",
                    std::isfinite(accuracy) ? std::to_string(accuracy).c_str()
                                            : "null");
      out << line;
    }
  }
  return 0;
}

EvalResult Trainer::evaluate() {
  EvalResult r;
  loom_program_fn eval = artifact_->program("eval_step", stage_);
  int64_t batches = loader_->evalBatches();
  if (opts_.evalBatches >= 0)
    batches = std::min(batches, opts_.evalBatches);
  double lossSum = 0, correct = 0;
  bool counted = artifact_->manifest().output("eval_count").has_value();
  bool hasAccuracy = artifact_->manifest().output("eval_correct").has_value();
  for (int64_t i = 0; i < batches; ++i) {
    evalBatch(i);
    callProgram(eval, "eval_step", i);
    // Without counted rows (a non-classification loss) every batch weighs 1.
    double count = counted ? readOutput("eval_count") : 1.0;
    lossSum += static_cast<double>(readOutput("eval_loss")) * count;
    if (hasAccuracy)
      correct += readOutput("eval_correct");
    r.count += count;
  }
  if (r.count > 0) {
    r.loss = lossSum / r.count;
    r.accuracy = hasAccuracy ? correct / r.count : NAN;
  }
  return r;
}

void Trainer::progress(int64_t step, int64_t steps, double loss,
                       double stepTokens, double stepSeconds, double lr,
                       double eta, bool final) {
  if (world_.rank != 0)
    return;
  intervalTokens_ += stepTokens;
  intervalSeconds_ += stepSeconds;
  int64_t every =
      opts_.logEvery > 0 ? opts_.logEvery : std::max<int64_t>(1, steps / 10);
  double now = nowSeconds();
  bool show = tty_ ? (final || now - lastProgress_ >= 0.1)
                   : (final || step % every == 0);
  if (!show)
    return;
  double tokensPerS =
      intervalSeconds_ > 0 ? intervalTokens_ / intervalSeconds_ : 0.0;
  intervalTokens_ = intervalSeconds_ = 0;
  lastProgress_ = now;
  if (tty_) {
    std::printf("\rstep %lld/%lld  loss %s  %s tok/s  lr %s  ETA %s\x1b[K",
                static_cast<long long>(step), static_cast<long long>(steps),
                fmt("%.4f", loss).c_str(),
                formatCount(static_cast<uint64_t>(tokensPerS)).c_str(),
                fmt("%.3g", lr).c_str(), formatDuration(eta).c_str());
    progressShown_ = !final;
    if (final)
      std::printf("\n");
  } else {
    std::printf("step %lld/%lld loss %s tokens/s %.0f lr %s eta %s\n",
                static_cast<long long>(step), static_cast<long long>(steps),
                fmt("%.4f", loss).c_str(), tokensPerS, fmt("%.3g", lr).c_str(),
                formatDuration(eta).c_str());
  }
  std::fflush(stdout);
}

void Trainer::finishTrace() {
  tracer_->setActive(false);
  std::string warnings = tracer_->warnings();
  if (!warnings.empty())
    std::fprintf(stderr, "loom-run: warning: rank %d, --trace: %s\n",
                 world_.rank, warnings.c_str());
  std::string mine =
      tracer_->fragment(world_.rank, coord_[0], coord_[1], coord_[2]);
  std::vector<std::string> all;
  try {
    all = mesh_->gatherToRoot(mine, "--trace");
  } catch (const Error &e) {
    fail("rank " + std::to_string(world_.rank) + ": " + e.what());
  }
  if (world_.rank != 0)
    return;
  try {
    Tracer::write(opts_.trace, all);
  } catch (const Error &e) {
    fail(e.what());
  }
  say("loom-run: trace " + opts_.trace);
}

int Trainer::run() {
  const std::string &path = opts_.artifact;
  Manifest manifest;
  try {
    manifest = readArtifact(path);
  } catch (const Error &e) {
    failEverywhere(e.what());
  }
  if (opts_.describe) {
    if (world_.rank == 0)
      std::fputs(describe(manifest, path).c_str(), stdout);
    return 0;
  }

  // Everything that can be checked before any work.
  const Mesh &mesh = manifest.mesh;
  std::string meshText = "dp=" + std::to_string(mesh.dp) +
                         " tp=" + std::to_string(mesh.tp) +
                         " pp=" + std::to_string(mesh.pp);
  if (world_.size != mesh.ranks())
    failEverywhere("world size " + std::to_string(world_.size) +
                   " does not match the artifact's mesh " + meshText + " (" +
                   std::to_string(mesh.ranks()) + " rank" +
                   (mesh.ranks() == 1 ? "" : "s") + "): launch " +
                   (mesh.ranks() == 1
                        ? std::string("without mpirun or with mpirun -np 1")
                        : "with mpirun -np " + std::to_string(mesh.ranks())));
  if (mesh.pp > 1 && manifest.stages != mesh.pp)
    failEverywhere(path + ": mesh " + meshText +
                   ": a pipeline-parallel mesh, but the manifest has no "
                   "\"stages\" and per-stage programs (each rank runs the "
                   "program of its stage); recompile it with this Loom");
  if (mesh.ranks() > 1 && manifest.abiVersion < 3)
    failEverywhere(path + ": mesh " + meshText + " in an ABI " +
                   std::to_string(manifest.abiVersion) +
                   " artifact, which holds whole tensors for one rank; "
                   "recompile it with this Loom (ABI " +
                   std::to_string(LOOM_ABI_VERSION) + ")");
#if LOOM_HAVE_CUDA
  if (manifest.target != "cpu" && manifest.target != "cuda")
#else
  if (manifest.target != "cpu")
#endif
    failEverywhere(path + ": target " + manifest.target +
                   ": this loom-run was built without CUDA and executes CPU "
                   "artifacts only (rebuild the runtime where the CUDA "
                   "toolkit is, or recompile with --target=cpu)");
  // An inference artifact (loomc --mode=infer) has the evaluation step
  // alone.
  const bool inferenceArtifact = !manifest.program("train_step");
  if (inferenceArtifact && !manifest.program("eval_step"))
    failEverywhere(path + ": neither a train_step nor an eval_step program: "
                          "nothing to run");
  const bool ptqArtifact = manifest.program("calibrate_step") != nullptr;
  if (opts_.calibrate && !ptqArtifact)
    failEverywhere(path + ": --calibrate needs a post-training quantization "
                          "artifact (loomc --mode=infer --quantize=ptq-int8)");
  if (inferenceArtifact && !opts_.infer && !opts_.calibrate)
    failEverywhere(path + ": an inference artifact (no train_step program): "
                          "run it with --infer" +
                   (ptqArtifact ? " (or --calibrate=N first)" : ""));
  if (!inferenceArtifact && opts_.infer)
    failEverywhere(path + ": --infer needs an inference artifact (compile the "
                          "model with loomc --mode=infer)");
  uint64_t physical = physicalMemoryBytes();
  if (physical && uint64_t(manifest.arenaBytes) > physical)
    failEverywhere(
        path + ": the memory plan needs " + formatBytes(manifest.arenaBytes) +
        " per rank, this machine has " + formatBytes(physical) +
        " of memory; shrink the model or the batch, or shard it over more "
        "ranks");
  bool hasEval = manifest.program("eval_step") != nullptr;
  if (opts_.evalEvery > 0 && !hasEval)
    failEverywhere(path +
                   ": --eval-every given but the artifact has no eval_step "
                   "program");

  int64_t steps = 0;
  if (opts_.steps)
    steps = *opts_.steps;
  else if (opts_.infer || opts_.calibrate)
    steps = 0; // one pass over the held-out split (Trainer::infer)
  else if (manifest.trainSteps())
    steps = *manifest.trainSteps();
  else
    failEverywhere(path +
                   ": no --steps given and the artifact's train block has no "
                   "steps");
  std::string dataPath;
  if (opts_.data)
    dataPath = *opts_.data;
  else if (manifest.trainData())
    dataPath = resolveManifestData(*manifest.trainData(), path);
  else
    failEverywhere(path +
                   ": no --data given and the artifact's train block names no "
                   "data");

  // The mesh's communicators (collective over the world) and the watchdog,
  // before anything that talks to the other ranks.
  try {
    mesh_ = std::make_unique<CommMesh>(mesh.dp, mesh.tp, mesh.pp, world_.rank,
                                       world_.size);
  } catch (const Error &e) {
    fail(e.what());
  }
  coord_ = {mesh_->coord(0), mesh_->coord(1), mesh_->coord(2)};
  stage_ = coord_[2];
  mesh_->setTimeout(opts_.timeout ? *opts_.timeout
                                  : world_.size > 1 ? kDefaultTimeout : 0);
  ctx_.mesh = mesh_.get();

  // --trace: one clock origin for every rank, taken as they leave a barrier.
  if (!opts_.trace.empty()) {
    if (std::string why = cannotCreate(opts_.trace); !why.empty())
      failEverywhere("cannot write --trace file " + opts_.trace + ": " + why);
    tracer_ = std::make_unique<Tracer>(manifest.traceSpans);
    try {
      mesh_->barrier("--trace clock origin");
    } catch (const Error &e) {
      fail(e.what());
    }
    tracer_->setOrigin();
    mesh_->setTracer(tracer_.get());
    ctx_.tracer = tracer_.get();
  }

  // --log-dir: every rank's own file, made (or found) by every rank.
  if (!opts_.logDir.empty()) {
    std::string file =
        opts_.logDir + "/rank-" + std::to_string(world_.rank) + ".log";
    try {
      prepareCheckpointDir(opts_.logDir);
    } catch (const Error &e) {
      fail(std::string("--log-dir: ") + e.what());
    }
    rankLog_.open(file, std::ios::out | (opts_.resume ? std::ios::app
                                                      : std::ios::trunc));
    if (!rankLog_)
      fail("cannot write the rank log " + file + ": " + std::strerror(errno));
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    rankLog_ << "# loom-run rank " << world_.rank << " of " << world_.size
             << " (dp " << coord_[0] << ", tp " << coord_[1] << ", pp "
             << coord_[2] << "), pid " << getpid() << ", host " << host
             << ", artifact " << path << "\n";
    rankLog_.flush();
  }

  // Weights and checkpoints: every problem that can be seen now is reported
  // before any work.
  if (!opts_.save.empty())
    if (std::string why = cannotCreate(opts_.save); !why.empty())
      failEverywhere("cannot write --save file " + opts_.save + ": " + why);
  std::optional<FoundCheckpoint> resumeFrom;
  if (!opts_.ckptDir.empty()) {
    try {
      prepareCheckpointDir(opts_.ckptDir);
      if (opts_.resume) {
        std::vector<std::string> skipped;
        resumeFrom =
            findCheckpoint(opts_.ckptDir, manifest, &skipped, mesh_.get());
        if (world_.rank == 0)
          for (const std::string &why : skipped)
            std::fprintf(stderr, "loom-run: note: skipping checkpoint %s\n",
                         why.c_str());
      } else if (auto existing = listCheckpoints(opts_.ckptDir);
                 !existing.empty()) {
        throw Error(opts_.ckptDir + " already holds checkpoints (the newest " +
                    existing.front().second +
                    "); pass --resume to continue from it, or use another "
                    "--ckpt-dir");
      }
    } catch (const Error &e) {
      failEverywhere(e.what());
    }
  }
  seed_ = opts_.seed;
  if (resumeFrom) {
    const CheckpointIndex &ix = resumeFrom->index;
    if (opts_.seedGiven && opts_.seed != ix.seed)
      failEverywhere(resumeFrom->path + " was written by a run with --seed=" +
                     std::to_string(ix.seed) +
                     ", this run has --seed=" + std::to_string(opts_.seed) +
                     "; resume with the same seed (or none)");
    seed_ = ix.seed;
    if (ix.step > steps)
      failEverywhere(resumeFrom->path + " is at step " +
                     std::to_string(ix.step) +
                     ", past --steps=" + std::to_string(steps) +
                     "; give --steps of at least " + std::to_string(ix.step));
  } else if (opts_.resume && world_.rank == 0) {
    std::fprintf(stderr,
                 "loom-run: note: no checkpoint to resume in %s; starting "
                 "from step 0\n",
                 opts_.ckptDir.c_str());
  }
  if (resumeFrom && !opts_.initFrom.empty() && world_.rank == 0)
    std::fprintf(stderr,
                 "loom-run: note: --init-from=%s is ignored: the weights come "
                 "from the checkpoint\n",
                 opts_.initFrom.c_str());

  try {
    data_ = Dataset::open(dataPath);
    artifact_ = Artifact::load(path);
    // Every rank reads the same global batch (the same shuffle and cursor
    // as one rank) and keeps its slice of the split inputs.
    const std::vector<Buffer> &inputs = artifact_->manifest().inputs;
    bool split = artifact_->manifest().stages > 1;
    for (const Buffer &b : inputs)
      split |= b.isSplit() || b.stage >= 0;
    if (split) {
      int64_t offset = 0;
      for (const Buffer &b : inputs) {
        Buffer g = b;
        g.shape = b.global();
        g.globalShape.clear();
        g.split.clear();
        g.elements = b.globalElements();
        g.bytes = g.elements * int64_t(dtypeSize(b.dtype));
        g.offset = offset;
        offset += (g.bytes + kArenaAlignment - 1) / kArenaAlignment *
                  kArenaAlignment;
        globalInputs_.push_back(g);
      }
      staging_.assign(size_t(offset), 0);
    }
    loader_ = std::make_unique<DataLoader>(
        *data_, split ? globalInputs_ : inputs, seed_);
    artifactChecksum_ = artifactChecksum(path);
  } catch (const Error &e) {
    fail(e.what());
  }
  const Manifest &m = artifact_->manifest();
  int64_t evalBatches = hasEval ? loader_->evalBatches() : 0;
  if (opts_.evalBatches >= 0)
    evalBatches = std::min(evalBatches, opts_.evalBatches);
  bool evaluating = hasEval && evalBatches > 0;
  if (hasEval && !evaluating && world_.rank == 0)
    std::fprintf(stderr,
                 "loom-run: note: no evaluation: the held-out split of %s "
                 "(%lld %s) is less than one batch\n",
                 dataPath.c_str(),
                 static_cast<long long>(loader_->heldOutSize()),
                 data_->kind() == DataKind::Tokens ? "tokens" : "records");

  int threads = opts_.threads > 0 ? static_cast<int>(opts_.threads)
                                  : defaultThreads(world_.size);
#if LOOM_HAVE_OPENMP
  omp_set_num_threads(threads);
#endif
  ctx_.rank = world_.rank;
  ctx_.worldSize = world_.size;
  ctx_.seed = seed_;
  ctx_.threads = threads;
  ctx_.checkNumerics = opts_.checkNumerics;
  ctx_.opNames = &artifact_->manifest().ops;
  ctx_.poisonStep = opts_.poisonStep;
  ctx_.poisonLast = opts_.poisonLast;
  ctx_.poisonRank = opts_.poisonRank;
  threads_ = threads;
  dataPath_ = dataPath;

  // The arena of this rank's stage.
  size_t arenaBytes =
      (static_cast<size_t>(m.arenaBytesOf(stage_)) + kArenaAlignment - 1) /
      kArenaAlignment * kArenaAlignment;
  arena_ = static_cast<unsigned char *>(
      std::aligned_alloc(kArenaAlignment, arenaBytes));
  if (!arena_)
    fail("rank " + std::to_string(world_.rank) + ": cannot allocate the " +
         formatBytes(arenaBytes) + " arena");
  std::memset(arena_, 0, arenaBytes);
#if LOOM_HAVE_CUDA
  if (m.target == "cuda") {
    try {
      std::vector<loom::cuda::KernelLaunch> kernels;
      for (const auto &k : m.kernels)
        kernels.push_back({k.name, k.grid, k.block, k.origin});
      // One GPU per rank: the local rank's device (ranks share devices
      // when a node has fewer GPUs than ranks).
      int devices = loom::cuda::GpuSession::deviceCount();
      int device = devices > 0 ? localRank() % devices : 0;
      gpu_ = std::make_unique<loom::cuda::GpuSession>(
          device, world_.rank, seed_, m.ptx, kernels, arenaBytes,
          m.deviceStepOffset);
      if (opts_.poisonStep != 0)
        gpu_->disableGraphs();
      // precision bf16: attention's products in bf16 too (GpuSession.h).
      const json::Value *precision = m.train.find("precision");
      gpu_->setBf16Attention(precision && precision->isString() &&
                             precision->asString() == "bf16");
    } catch (const Error &e) {
      fail(e.what());
    }
    for (const Buffer &b : m.inputs)
      if (b.inStage(stage_))
        gpuInputs_.push_back({size_t(b.offset), size_t(b.bytes)});
    for (const auto &[name, offset] : m.outputs)
      gpuOutputs_.push_back({size_t(offset), sizeof(float)});
    ctx_.cuda = gpu_.get();
    say("loom-run: gpu " + gpu_->describe() + ", " +
        std::to_string(m.kernels.size()) + " kernels");
    if (world_.size > 1)
      setupGpuCollectives(m);
  }
#endif
  int64_t start = 0, skippedTotal = 0;
  try {
    initParams(m, seed_, arena_, coord_);
    zeroState(m, arena_, stage_);
    if (resumeFrom) {
      const CheckpointIndex &ix = resumeFrom->index;
      loadCheckpoint(*resumeFrom, m, arena_, mesh_.get());
      loader_->restore(ix.cursor);
      start = ix.step;
      skippedTotal = ix.skippedTotal;
    } else if (!opts_.initFrom.empty()) {
      loadWeights(opts_.initFrom, m, arena_, mesh_.get());
    }
#if LOOM_HAVE_CUDA
    if (gpu_)
      gpu_->push(arena_);
#endif
  } catch (const Error &e) {
    fail(e.what());
  }

  if (opts_.calibrate)
    return calibrate(opts_.calibrate);
  if (opts_.infer)
    return infer(steps);

  std::ofstream metrics;
  if (!opts_.metrics.empty() && world_.rank == 0) {
    // A resumed run continues the file: never truncated.
    metricsLines_ = opts_.resume ? countLines(opts_.metrics) : 0;
    metrics.open(opts_.metrics,
                 std::ios::out |
                     (opts_.resume ? std::ios::app : std::ios::trunc));
    if (!metrics)
      fail("cannot write the metrics file " + opts_.metrics + ": " +
           std::strerror(errno));
    if (resumeFrom && metricsLines_ != resumeFrom->index.metricsLines)
      std::fprintf(stderr,
                   "loom-run: note: %s has %lld lines, the checkpoint at step "
                   "%lld was taken at %lld; the resumed steps are appended "
                   "after them\n",
                   opts_.metrics.c_str(), static_cast<long long>(metricsLines_),
                   static_cast<long long>(start),
                   static_cast<long long>(resumeFrom->index.metricsLines));
  }

  // Under mpirun, stdout is a pseudo-terminal that Open MPI forwards to
  // wherever mpirun's own output goes (often a file): plain lines there.
  tty_ = isatty(fileno(stdout)) != 0 && !world_.mpi;
  gStopBetweenSteps.store(true);

  if (world_.rank == 0 && !tty_)
    std::printf("loom-run: %s (%s), %s, %lld steps, batch %lld, seed %llu, "
                "%d threads%s\n",
                m.model.c_str(), path.c_str(), data_->summary().c_str(),
                static_cast<long long>(steps),
                static_cast<long long>(loader_->batchSize()),
                static_cast<unsigned long long>(seed_), threads,
                world_.size > 1 ? (" per rank, " + std::to_string(world_.size) +
                                   " ranks (" + formatMesh(m.mesh) +
                                   (m.zero ? ", ZeRO-1" : "") + ")")
                                      .c_str()
                                : "");
  if (resumeFrom) {
    say("loom-run: resuming from " + resumeFrom->path + " (step " +
        std::to_string(start) + " of " + std::to_string(steps) + ")");
    if (resumeFrom->index.threads != threads && world_.rank == 0)
      std::fprintf(stderr,
                   "loom-run: note: the checkpoint was written with %lld "
                   "threads, this run has %d: the continuation is not bitwise "
                   "the same as an uninterrupted run\n",
                   static_cast<long long>(resumeFrom->index.threads), threads);
    if (resumeFrom->index.artifactChecksum != artifactChecksum_ &&
        world_.rank == 0)
      std::fprintf(stderr,
                   "loom-run: note: the checkpoint was written by another "
                   "build of model '%s' (%s, artifact checksum differs); its "
                   "layout matches, resuming with this one\n",
                   m.model.c_str(), resumeFrom->index.artifact.c_str());
  }

  loom_program_fn train = artifact_->program("train_step", stage_);
  double trainSeconds = 0;
  double lastLoss = NAN;
  EvalResult lastEval;
  bool evaluated = false;
  int64_t done = start;
  int stopSignal = 0; // the signal every rank agreed to stop on
  for (int64_t s = start + 1; s <= steps; ++s) {
    double t0 = nowSeconds();
    if (tracer_) {
      // Steps start+1 .. start+N: everything they do, evaluation and
      // checkpoints included.
      tracer_->setActive(s <= start + opts_.traceSteps);
      tracer_->setStep(s);
    }
    mesh_->setStep(s);
    mesh_->takeStats(); // this step's collectives from here
    nextTrainBatch();
    ctx_.step = s;
    callProgram(train, "train_step");
    double stepSeconds = nowSeconds() - t0;
    CommMesh::Stats comm = mesh_->takeStats();
    done = s;

    double loss = readOutput("loss");
    double lr = readOutput("lr");
    double gradNorm = readOutput("grad_norm");
    double lossScale = m.output("loss_scale") ? readOutput("loss_scale") : 1.0;
    bool skipped = m.output("skipped") && readOutput("skipped") != 0;
    skippedTotal += skipped;
    lastLoss = loss;
    if (skipped && world_.rank == 0) {
      // SEMANTICS.md: the step changed nothing; the scale may have backed off.
      double next = m.output("next_loss_scale") ? readOutput("next_loss_scale")
                                                : lossScale;
      if (tty_ && progressShown_) {
        std::printf("\r\x1b[K");
        progressShown_ = false;
      }
      std::printf("step %lld: overflow, skipped; loss scale %s -> %s\n",
                  static_cast<long long>(s), fmt("%g", lossScale).c_str(),
                  fmt("%g", next).c_str());
      std::fflush(stdout);
    }
    if (m.output("loss_scale_underflow") &&
        readOutput("loss_scale_underflow") != 0) {
      // Every scale overflows: stop before this state reaches a checkpoint,
      // so the last one stays the last good one.
      fail("rank " + std::to_string(world_.rank) + ", step " +
                  std::to_string(s) +
                  ": the loss scale backed off below its minimum (gradients "
                  "overflow at every scale); stopping" +
                  (opts_.ckptDir.empty()
                       ? std::string()
                       : "; the last checkpoint in " + opts_.ckptDir +
                             " is intact"));
    }
    // Over the world: the slowest rank's step (the global batch took that
    // long), the largest memory and time in collectives, and whether any
    // rank was asked to stop (so that all stop after the same step).
    double rss = double(peakResidentBytes());
    double stopAsked = gStopSignal.load();
    double worldMax[4] = {stepSeconds, rss, comm.seconds, stopAsked};
    if (world_.size > 1) {
      try {
        mesh_->allReduceMax(worldMax, 4, "step metrics");
      } catch (const Error &e) {
        fail("rank " + std::to_string(world_.rank) + ", step " +
             std::to_string(s) + ": " + e.what());
      }
    }
    if (rankLog_.is_open()) {
      uint64_t now = residentBytes();
      uint64_t peak = std::max<uint64_t>(now, peakResidentBytes());
      char line[256];
      std::snprintf(line, sizeof line,
                    "step=%lld loss=%.9g step_ms=%.3f comm_ms=%.3f "
                    "comm_bytes=%lld collectives=%lld rss=%llu peak_rss=%llu\n",
                    static_cast<long long>(s), loss, stepSeconds * 1e3,
                    comm.seconds * 1e3, static_cast<long long>(comm.bytes),
                    static_cast<long long>(comm.calls),
                    static_cast<unsigned long long>(now),
                    static_cast<unsigned long long>(peak));
      rankLog_ << line;
      rankLog_.flush();
    }
    stepSeconds = worldMax[0];
    trainSeconds += stepSeconds;
    // The global batch over the slowest rank's step time.
    double samplesPerS = loader_->batchSize() / stepSeconds;
    double tokensPerS = loader_->tokensPerBatch() / stepSeconds;

    bool evalNow =
        evaluating &&
        (s == steps || (opts_.evalEvery > 0 && s % opts_.evalEvery == 0));
    EvalResult ev;
    if (evalNow) {
      ev = evaluate();
      lastEval = ev;
      evaluated = true;
    }

    if (metrics.is_open()) {
      json::Object line{{"step", json::Value(s)},
                        {"loss", metricNumber(loss)},
                        {"lr", metricNumber(lr)},
                        {"grad_norm", metricNumber(gradNorm)},
                        {"loss_scale", metricNumber(lossScale)},
                        {"skipped", json::Value(skipped)},
                        {"skipped_total", json::Value(skippedTotal)},
                        {"samples_per_s", metricNumber(samplesPerS)},
                        {"tokens_per_s", metricNumber(tokensPerS)},
                        {"step_ms", metricNumber(stepSeconds * 1e3)},
                        {"mem_peak_bytes",
                         json::Value(static_cast<int64_t>(worldMax[1]))},
                        {"comm_ms", json::Value(worldMax[2] * 1e3)}};
      if (evalNow) {
        line.emplace_back("eval_loss", metricNumber(ev.loss));
        line.emplace_back("eval_accuracy", metricNumber(ev.accuracy));
      }
      metrics << json::write(json::Value(std::move(line))) << "\n";
      metrics.flush();
      ++metricsLines_;
    }

    // A signal to any rank stops every rank after this step.
    bool stopping = worldMax[3] != 0;
    if (stopping)
      stopSignal = static_cast<int>(worldMax[3]);
    double eta = trainSeconds / double(s - start) * double(steps - s);
    progress(s, steps, loss, double(loader_->tokensPerBatch()), stepSeconds, lr,
             eta, s == steps || stopping);
    if (evalNow && world_.rank == 0 && s != steps) {
      if (tty_) {
        std::printf("\r\x1b[K");
        progressShown_ = false;
      }
      std::printf("step %lld: eval_loss %s, eval_accuracy %s\n",
                  static_cast<long long>(s), fmt("%.4f", ev.loss).c_str(),
                  fmt("%.4f", ev.accuracy).c_str());
      std::fflush(stdout);
    }
    if (!opts_.ckptDir.empty() &&
        (stopping || s == steps ||
         (opts_.ckptEvery > 0 && s % opts_.ckptEvery == 0)))
      checkpoint(s, steps, skippedTotal);
    if (stopping)
      break;
  }

  int sig = stopSignal;
  if (tracer_)
    finishTrace();
  // The final weights of a run that reached --steps; one stopped early has
  // its checkpoint instead.
  // Every rank takes part (the slices are gathered to rank 0, which writes).
  if (!opts_.save.empty() && done == steps) {
    pullArena();
    try {
      saveWeights(opts_.save, m, arena_,
                  {{"format", "pt"},
                   {"model", m.model},
                   {"step", std::to_string(done)},
                   {"seed", std::to_string(seed_)}},
                  mesh_.get());
    } catch (const Error &e) {
      fail(e.what());
    }
  }

  if (world_.rank == 0) {
    std::string line = "loom-run: " + std::to_string(done) + " steps";
    if (sig)
      line += " (stopped by " +
              std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") +
              " after step " + std::to_string(done) + " of " +
              std::to_string(steps) + ")";
    line += ", final loss " + fmt("%.4f", lastLoss);
    if (evaluated)
      line += ", eval_loss " + fmt("%.4f", lastEval.loss) + ", eval_accuracy " +
              fmt("%.4f", lastEval.accuracy);
    std::printf("%s\n", line.c_str());
#if LOOM_HAVE_CUDA
    if (gpu_) {
      std::printf("loom-run: gpu: %d program(s) replayed as CUDA graphs\n",
                  gpu_->capturedPrograms());
      std::fputs(gpu_->profileReport().c_str(), stdout);
    }
#endif
    std::fflush(stdout);
  }
  std::free(arena_);
  arena_ = nullptr;
  return sig ? 128 + sig : 0;
}

} // namespace

int main(int argc, char **argv) {
  startSignalThread(); // before MPI, OpenMP or NCCL start threads
  World world;
  try {
    world = initWorld(&argc, &argv);
  } catch (const Error &e) {
    std::fprintf(stderr, "loom-run: error: %s\n", e.what());
    return 1;
  }
  Options opts;
  try {
    opts = parseArgs(argc, argv);
  } catch (const UsageError &e) {
    if (world.rank == 0)
      std::fprintf(stderr, "loom-run: error: %s\n", e.message.c_str());
    finalizeWorld(world);
    return 2;
  }
  if (opts.help) {
    if (world.rank == 0)
      std::fputs(kUsage, stdout);
    finalizeWorld(world);
    return 0;
  }
  if (opts.version) {
    if (world.rank == 0)
      std::printf("loom-run: artifact format %u, ABI %d, %s\n",
                  kArtifactFormatVersion, LOOM_ABI_VERSION,
                  describeBuild().c_str());
    finalizeWorld(world);
    return 0;
  }
  int rc = Trainer(world, opts).run();
  finalizeWorld(world);
  return rc;
}
