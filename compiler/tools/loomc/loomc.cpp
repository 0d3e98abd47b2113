//===- loomc.cpp - the Loom compiler driver -------------------------------===//
//
//   loomc FILE.loom [-o OUT] [--emit=ast|loom|...] [-Dname=value] [options]
//
// Exit status: 0 on success, 1 on any user error (with diagnostics).
//
//===----------------------------------------------------------------------===//

#include "compiler/codegen/Codegen.h"
#include "compiler/passes/Passes.h"
#include "compiler/tools/loomc/Explain.h"
#include "dialects/Loom/LoomOps.h"
#include "compiler/registration/Registration.h"
#include "frontend/AST.h"
#include "frontend/Graph.h"
#include "frontend/MLIRGen.h"
#include "frontend/Parser.h"
#include "frontend/Sema.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Diagnostics.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/JSON.h"
#include <map>
#include "llvm/Support/InitLLVM.h"
#include <functional>
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

using namespace llvm;
namespace fe = loom::frontend;

namespace {

cl::OptionCategory loomCat("Loom options");

cl::opt<std::string> inputFile(cl::Positional, cl::desc("<file.loom>"),
                               cl::Required, cl::cat(loomCat));
cl::opt<std::string> outputFile("o", cl::desc("Output file (default: stdout "
                                              "for --emit of a text stage)"),
                                cl::value_desc("file"), cl::cat(loomCat));

enum class Emit { Ast, Loom, Train, Dist, Exec, Llvm, Ptx, Artifact };
cl::opt<Emit> emit(
    "emit", cl::desc("Stop after a stage and print it"), cl::init(Emit::Artifact),
    cl::values(clEnumValN(Emit::Ast, "ast", "the parsed syntax tree"),
               clEnumValN(Emit::Loom, "loom", "the loom dialect (MLIR)"),
               clEnumValN(Emit::Train, "train", "the training step"),
               clEnumValN(Emit::Dist, "dist", "per-rank programs"),
               clEnumValN(Emit::Exec, "exec", "the executable level"),
               clEnumValN(Emit::Llvm, "llvm", "LLVM IR of the CPU code"),
               clEnumValN(Emit::Ptx, "ptx", "PTX of the GPU kernels"),
               clEnumValN(Emit::Artifact, "artifact", "the .loomx artifact")),
    cl::cat(loomCat));

cl::list<std::string> defines("D", cl::Prefix,
                              cl::desc("Override a model parameter: "
                                       "-Dname=value"),
                              cl::value_desc("name=value"), cl::cat(loomCat));
cl::opt<std::string> modelName("model",
                               cl::desc("Model to compile when the file has "
                                        "several and no train block"),
                               cl::cat(loomCat));
cl::opt<std::string> target("target", cl::desc("cpu | cuda"), cl::init("cpu"),
                            cl::cat(loomCat));
cl::opt<std::string> mode("mode", cl::desc("train | infer"), cl::init("train"),
                          cl::cat(loomCat));
cl::opt<std::string> cpu("cpu", cl::desc("baseline (x86-64-v3) | native"),
                         cl::init("baseline"), cl::cat(loomCat));

// Train-block options as flags; they override the file.
cl::opt<std::string> mesh("mesh", cl::desc("Device mesh, e.g. dp=2,tp=2,pp=2"),
                          cl::cat(loomCat));
cl::opt<std::string> microbatches("microbatches",
                                  cl::desc("Pipeline micro-batches per step"),
                                  cl::cat(loomCat));
cl::opt<std::string> schedule("schedule",
                              cl::desc("gpipe | 1f1b | interleaved | "
                                       "zero_bubble"),
                              cl::cat(loomCat));
cl::opt<std::string> stages("stages",
                            cl::desc("Pipeline cut points (layer indices), "
                                     "e.g. 4,8"),
                            cl::cat(loomCat));
cl::opt<std::string> recompute("recompute",
                               cl::desc("none | every=N | budget=SIZE"),
                               cl::cat(loomCat));
cl::opt<std::string> precision("precision", cl::desc("fp32 | bf16 | fp16"),
                               cl::cat(loomCat));
cl::opt<std::string> lossScale("loss-scale",
                               cl::desc("none | static=S | dynamic"),
                               cl::cat(loomCat));
cl::opt<std::string> zero("zero", cl::desc("ZeRO stage: 0 | 1"),
                          cl::cat(loomCat));
cl::opt<std::string> quantize("quantize",
                              cl::desc("none | qat-int8 | ptq-int8"),
                              cl::cat(loomCat));
cl::opt<std::string> report("report",
                            cl::desc("Print memory by category and FLOPs per "
                                     "rank, then stop (=json for JSON)"),
                            cl::ValueOptional, cl::cat(loomCat));
cl::opt<bool> explainSharding(
    "explain-sharding",
    cl::desc("Print every op's sharding and why, and every collective with "
             "its cause and payload, then stop"),
    cl::cat(loomCat));
cl::list<std::string> sets("set",
                           cl::desc("Any train option's argument: "
                                    "OPTION.ARG=VALUE (optimizer.lr=1e-3)"),
                           cl::value_desc("OPTION.ARG=VALUE"), cl::cat(loomCat));

bool writeOutput(const std::function<void(raw_ostream &)> &print);
int userError(const Twine &msg);

/// GEMM, attention and convolution FLOPs of one training step (forward and
/// backward).
uint64_t countFlops(mlir::ModuleOp module, int stage = -1) {
  uint64_t flops = 0;
  module.walk([&](mlir::Operation *op) {
    llvm::StringRef n = op->getName().getStringRef();
    // The train step, before or after partitioning (per-rank shapes).
    mlir::Operation *parent = op->getParentOp();
    auto kind = parent ? parent->getAttrOfType<mlir::StringAttr>("kind") : nullptr;
    if (!kind || kind.getValue() != "train")
      return;
    if (stage >= 0) {
      auto s = parent->getAttrOfType<mlir::IntegerAttr>("stage");
      if (!s || s.getInt() != stage)
        return;
    }
    auto shapeOf = [](mlir::Value v) {
      return mlir::cast<mlir::RankedTensorType>(v.getType()).getShape();
    };
    auto numel = [](mlir::Value v) {
      return static_cast<uint64_t>(
          mlir::cast<mlir::RankedTensorType>(v.getType()).getNumElements());
    };
    if (n == "loom.matmul" || n == "train.gemm") {
      auto a = shapeOf(op->getOperand(0));
      bool ta = n == "train.gemm" &&
                op->getAttrOfType<mlir::BoolAttr>("transpose_a").getValue();
      uint64_t k = static_cast<uint64_t>(ta ? a[a.size() - 2] : a.back());
      flops += 2 * numel(op->getResult(0)) * k;
    } else if (n == "train.attention" || n == "train.gated_attention") {
      auto q = shapeOf(op->getOperand(0)), k = shapeOf(op->getOperand(1));
      flops += 4 * static_cast<uint64_t>(q[0] * q[1] * q[2] * k[2] * q[3]);
    } else if (n == "train.attention_grad" ||
               n == "train.gated_attention_grad") {
      auto q = shapeOf(op->getOperand(0)), k = shapeOf(op->getOperand(1));
      flops += 8 * static_cast<uint64_t>(q[0] * q[1] * q[2] * k[2] * q[3]);
    } else if (n == "loom.conv2d" || n == "train.conv2d_grad_input" ||
               n == "train.conv2d_grad_weight") {
      // 2 · (output elements) · C·kh·kw, the weight [O, C, kh, kw] being
      // operand 1 (or the result, for the weight gradient).
      mlir::Value w = n == "train.conv2d_grad_weight" ? op->getResult(0)
                                                      : op->getOperand(1);
      mlir::Value y = n == "loom.conv2d" ? op->getResult(0) : op->getOperand(
                                               n == "train.conv2d_grad_input" ? 0 : 1);
      flops += 2 * numel(y) * (numel(w) / static_cast<uint64_t>(shapeOf(w)[0]));
    }
  });
  return flops;
}

using loom::loomc::humanBytes;

/// `--report`: the memory plan by category and the FLOPs of one step.
bool printReport(mlir::ModuleOp module, uint64_t flops, bool asJson,
                 int64_t fp32Peak, const loom::loomc::Communication &comm,
                 const std::vector<uint64_t> &stageFlops) {
  auto manifest = module->getAttrOfType<mlir::DictionaryAttr>("loom.manifest");
  auto memory = manifest.getAs<mlir::DictionaryAttr>("memory");
  auto get = [&](llvm::StringRef k) {
    auto a = memory.getAs<mlir::IntegerAttr>(k);
    return a ? a.getInt() : 0;
  };
  const char *keys[] = {"params", "grads", "optimizer", "activations",
                        "workspace", "inputs", "peak"};
  std::string model =
      manifest.getAs<mlir::StringAttr>("model").getValue().str();
  int64_t ranks = comm.mesh[0] * comm.mesh[1] * comm.mesh[2];
  return writeOutput([&](raw_ostream &os) {
    if (asJson) {
      // Every rank runs the same SPMD program: the same plan, the same
      // collectives; listed per rank with its mesh coordinates.
      os << "{\"model\": \"" << model << "\", \"mesh\": {\"dp\": " << comm.mesh[0]
         << ", \"tp\": " << comm.mesh[1] << ", \"pp\": " << comm.mesh[2]
         << "}, \"ranks\": [";
      for (int64_t r = 0; r < ranks; ++r) {
        int64_t p = r % comm.mesh[2], t = (r / comm.mesh[2]) % comm.mesh[1],
                d = r / (comm.mesh[2] * comm.mesh[1]);
        os << (r ? ", " : "") << "{\"rank\": " << r << ", \"coords\": {\"dp\": "
           << d << ", \"tp\": " << t << ", \"pp\": " << p << "}, \"memory\": {";
        auto stageMem = manifest.getAs<mlir::ArrayAttr>("stage_memory");
        for (size_t i = 0; i < std::size(keys); ++i) {
          int64_t v = get(keys[i]);
          if (stageMem && p < static_cast<int64_t>(stageMem.size()))
            if (auto a = mlir::cast<mlir::DictionaryAttr>(stageMem[p])
                             .getAs<mlir::IntegerAttr>(keys[i]))
              v = a.getInt();
          os << (i ? ", " : "") << "\"" << keys[i] << "\": " << v;
        }
        os << "}, \"stage\": " << p << ", \"flops_per_step\": "
           << (stageMem && p < static_cast<int64_t>(stageFlops.size()) ? stageFlops[p] : flops)
           << ", \"comm_bytes_per_step\": " << static_cast<int64_t>(comm.sentBytes)
           << ", \"comm_payload_bytes_per_step\": " << comm.payloadBytes
           << ", \"collectives_per_step\": " << comm.collectives.size();
        if (fp32Peak >= 0)
          os << ", \"fp32_peak\": " << fp32Peak;
        os << "}";
      }
      os << "], \"collectives\": [";
      for (size_t i = 0; i < comm.collectives.size(); ++i) {
        const auto &c = comm.collectives[i];
        os << (i ? ", " : "") << "{\"kind\": ";
        llvm::json::OStream(os).value(c.kind);
        os << ", \"axis\": \"" << c.axis << "\", \"group\": " << c.group
           << ", \"payload_bytes\": " << c.payloadBytes
           << ", \"sent_bytes\": " << static_cast<int64_t>(c.sentBytes)
           << ", \"at\": ";
        llvm::json::OStream(os).value(c.where);
        os << ", \"cause\": ";
        llvm::json::OStream(os).value(c.cause);
        os << "}";
      }
      os << "]}\n";
      return;
    }
    os << "model " << model << ", mesh " << comm.mesh[0] << "x" << comm.mesh[1]
       << "x" << comm.mesh[2] << " (" << ranks << " rank" << (ranks == 1 ? "" : "s")
       << "; dp x tp x pp)\n";
    os << "memory plan of each rank (live at the step's peak):\n";
    for (size_t i = 0; i + 1 < std::size(keys); ++i)
      os << llvm::format("  %-12s %12lld  (%s)\n", keys[i],
                         static_cast<long long>(get(keys[i])),
                         humanBytes(get(keys[i])).c_str());
    os << llvm::format("  %-12s %12lld  (%s)  arena size\n", (const char *)"peak",
                       static_cast<long long>(get("peak")),
                       humanBytes(get("peak")).c_str());
    if (fp32Peak > 0)
      os << llvm::format("mixed precision: peak %s against %s in fp32 "
                         "(%.1f%% less)\n",
                         humanBytes(get("peak")).c_str(),
                         humanBytes(fp32Peak).c_str(),
                         100.0 * (1.0 - double(get("peak")) / double(fp32Peak)));
    os << llvm::format("FLOPs per step and rank (GEMM + attention + conv, fwd+bwd): %.3g\n",
                       static_cast<double>(flops));
    if (auto stages = manifest.getAs<mlir::ArrayAttr>("stage_memory")) {
      // Activations held by the schedule are in each stage's plan: 1F1B
      // keeps at most pp - s micro-batches alive on stage s, GPipe all.
      os << "pipeline stages (each rank holds one; the plan above is the "
            "largest):\n";
      if (auto split = module->getAttrOfType<mlir::ArrayAttr>("loom.pipeline_split")) {
        std::map<int64_t, std::string> layers;
        for (mlir::Attribute a : split) {
          auto d = mlir::cast<mlir::DictionaryAttr>(a);
          auto &l = layers[d.getAs<mlir::IntegerAttr>("stage").getInt()];
          l += (l.empty() ? "" : " ") + d.getAs<mlir::StringAttr>("layer").str();
        }
        for (auto &[st, l] : layers)
          os << "  stage " << st << ": " << l << "\n";
      }
      for (size_t st = 0; st < stages.size(); ++st) {
        auto m = mlir::cast<mlir::DictionaryAttr>(stages[st]);
        auto v = [&](llvm::StringRef k) { return m.getAs<mlir::IntegerAttr>(k).getInt(); };
        double sent = 0;
        for (const auto &c : comm.collectives)
          if (c.stage == static_cast<int64_t>(st))
            sent += c.sentBytes;
        os << llvm::format("  stage %zu: params %s, grads %s, optimizer %s, "
                           "activations %s, peak %s; %.3g FLOPs; sends %s\n",
                           st, humanBytes(v("params")).c_str(),
                           humanBytes(v("grads")).c_str(),
                           humanBytes(v("optimizer")).c_str(),
                           humanBytes(v("activations")).c_str(),
                           humanBytes(v("peak")).c_str(),
                           st < stageFlops.size() ? double(stageFlops[st]) : 0.0,
                           humanBytes(static_cast<int64_t>(sent)).c_str());
      }
    }
    if (auto rc = manifest.getAs<mlir::DictionaryAttr>("recompute")) {
      auto layers = rc.getAs<mlir::ArrayAttr>("layers");
      os << "recompute: " << layers.size() << " layer(s) recomputed in the "
         << "backward pass, freeing "
         << humanBytes(rc.getAs<mlir::IntegerAttr>("freed_bytes").getInt())
         << " of activations for "
         << llvm::format("%.3g", static_cast<double>(
                                     rc.getAs<mlir::IntegerAttr>("extra_flops").getInt()))
         << " extra FLOPs per step:";
      for (mlir::Attribute l : layers)
        os << " " << mlir::cast<mlir::StringAttr>(l).getValue();
      os << "\n";
    }
    if (comm.collectives.empty()) {
      os << "communication per step: none\n";
    } else {
      std::map<std::string, std::pair<int, double>> byKind;
      for (const auto &c : comm.collectives) {
        auto &e = byKind[c.kind + " over " + c.axis];
        e.first += 1;
        e.second += c.sentBytes;
      }
      os << (comm.mesh[2] > 1 ? "communication per step, all stages' programs: "
                              : "communication per step and rank: ")
         << comm.collectives.size()
         << " collective(s), payload " << humanBytes(comm.payloadBytes)
         << ", sent " << humanBytes(static_cast<int64_t>(comm.sentBytes))
         << " (ring model; --explain-sharding lists each)\n";
      for (auto &[k, e] : byKind)
        os << llvm::format("  %-40s x%-4d sends %s\n", k.c_str(), e.first,
                           humanBytes(static_cast<int64_t>(e.second)).c_str());
    }
  });
}

int userError(const Twine &msg) {
  errs() << "loomc: error: " << msg << "\n";
  return 1;
}

/// Turns the train flags into DSL option text, in a fixed order, with
/// `--set` last in command-line order.
bool collectOverrides(fe::CompileOptions &opts) {
  auto add = [&](std::string text) { opts.trainOverrides.push_back({text, "", ""}); };
  if (!mesh.empty())
    add("mesh " + mesh);
  if (!microbatches.empty())
    add("pipeline microbatches = " + microbatches);
  if (!schedule.empty())
    add("pipeline schedule = " + schedule);
  if (!stages.empty())
    add("pipeline stages = [" + stages + "]");
  if (!recompute.empty())
    add("recompute " + recompute);
  if (!precision.empty())
    add("precision " + precision);
  if (!lossScale.empty()) {
    std::string v = lossScale;
    if (v.rfind("static=", 0) == 0)
      v = "static(" + v.substr(7) + ")";
    add("precision loss_scale = " + v);
  }
  if (!zero.empty())
    add("zero " + zero);
  if (!quantize.empty()) {
    if (quantize == "none")
      add("quantize none");
    else if (quantize == "qat-int8")
      add("quantize qat(int8)");
    else if (quantize == "ptq-int8")
      add("quantize ptq(int8)");
    else {
      userError("--quantize must be none, qat-int8 or ptq-int8, got '" +
                quantize + "'");
      return false;
    }
  }
  for (const std::string &s : sets) {
    size_t dot = s.find('.'), eq = s.find('=');
    if (dot == std::string::npos || eq == std::string::npos || dot > eq ||
        dot == 0 || eq == dot + 1 || eq + 1 == s.size()) {
      userError("--set expects OPTION.ARG=VALUE (e.g. optimizer.lr=1e-3), got "
                "'" + s + "'");
      return false;
    }
    opts.trainOverrides.push_back(
        {s.substr(eq + 1), s.substr(0, dot), s.substr(dot + 1, eq - dot - 1)});
  }
  return true;
}

/// Reads the input, refusing directories, unreadable and oversized files.
bool readSource(std::string &text) {
  if (sys::fs::is_directory(inputFile)) {
    userError("'" + inputFile + "' is a directory, not a .loom file");
    return false;
  }
  auto buf = MemoryBuffer::getFile(inputFile, /*IsText=*/false,
                                   /*RequiresNullTerminator=*/false);
  if (!buf) {
    userError("cannot read '" + inputFile + "': " + buf.getError().message());
    return false;
  }
  constexpr size_t kMaxSource = 16u << 20;
  if ((*buf)->getBufferSize() > kMaxSource) {
    userError("'" + inputFile + "' is larger than 16 MiB; is it a .loom file?");
    return false;
  }
  text = (*buf)->getBuffer().str();
  return true;
}

bool writeOutput(const std::function<void(raw_ostream &)> &print) {
  std::string err;
  auto out = mlir::openOutputFile(
      outputFile.empty() ? std::string("-") : outputFile.getValue(), &err);
  if (!out) {
    userError(err);
    return false;
  }
  print(out->os());
  out->keep();
  return true;
}

} // namespace

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  mlir::registerMLIRContextCLOptions();
  mlir::registerPassManagerCLOptions();
  mlir::registerAsmPrinterCLOptions();
  loom::registerLoomPasses();
  // --help lists Loom's options; LLVM's and MLIR's (still accepted, e.g.
  // --mlir-print-ir-after-all) are under --help-hidden.
  cl::HideUnrelatedOptions(loomCat);
  cl::ParseCommandLineOptions(argc, argv, "Loom compiler\n");

  for (auto [flag, value, allowed] :
       {std::tuple{"--target", &target, "cpu|cuda"},
        std::tuple{"--mode", &mode, "train|infer"},
        std::tuple{"--cpu", &cpu, "baseline|native"}}) {
    std::string a = allowed;
    bool ok = false;
    for (size_t b = 0, e; b <= a.size(); b = e + 1) {
      e = a.find('|', b);
      if (e == std::string::npos)
        e = a.size();
      ok |= a.substr(b, e - b) == value->getValue();
    }
    if (!ok)
      return userError(std::string(flag) + " must be " + allowed + ", got '" +
                       value->getValue() + "'");
  }

  std::string text;
  if (!readSource(text))
    return 1;
  fe::SourceFile file(inputFile, std::move(text));
  fe::DiagnosticEngine diag;

  auto module = fe::parseModule(file, diag);
  if (diag.hasErrors()) {
    errs() << diag.render();
    return 1;
  }
  if (emit == Emit::Ast) {
    errs() << diag.render(); // warnings, if any
    return writeOutput([&](raw_ostream &os) { os << fe::printAST(*module); })
               ? 0
               : 1;
  }

  fe::CompileOptions opts;
  for (const std::string &d : defines) {
    size_t eq = d.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == d.size())
      return userError("-D expects name=value, got '-D" + d + "'");
    opts.defines.push_back({d.substr(0, eq), d.substr(eq + 1)});
  }
  if (!collectOverrides(opts))
    return 1;
  opts.model = modelName;
  opts.training = mode == "train";
  opts.inference = mode == "infer";
  opts.baseDir = sys::path::parent_path(inputFile).str();
  if (opts.baseDir.empty())
    opts.baseDir = ".";

  auto graph = fe::analyze(*module, opts, diag);
  errs() << diag.render();
  if (!graph)
    return 1;

  mlir::DialectRegistry registry;
  loom::registerLoomDialects(registry);
  mlir::MLIRContext context(registry);
  context.loadAllAvailableDialects();
  // Errors of the passes point at the DSL line as the front end's do
  // (file:line:col: error: ..., the line and a caret).
  llvm::SourceMgr sourceMgr;
  sourceMgr.AddNewSourceBuffer(
      llvm::MemoryBuffer::getMemBufferCopy(file.text(), inputFile),
      llvm::SMLoc());
  mlir::SourceMgrDiagnosticHandler sourceDiagnostics(sourceMgr, &context);
  auto ir = fe::buildLoomModule(context, *graph);
  if (!ir)
    return 1;
  // An inference artifact: the forward step alone (Autodiff builds no
  // training step, so no gradients, optimizer state or saved activations).
  if (mode == "infer")
    (*ir)->setAttr("loom.mode", mlir::StringAttr::get(&context, "infer"));
  // conv2d and batch_norm have CPU kernels only.
  if (target == "cuda") {
    mlir::Operation *cpuOnly = nullptr;
    ir->walk([&](mlir::Operation *op) {
      if (!cpuOnly && mlir::isa<loom::Conv2dOp, loom::BatchNormOp>(op))
        cpuOnly = op;
    });
    if (cpuOnly) {
      mlir::emitError(cpuOnly->getLoc())
          << cpuOnly->getName().getStringRef().drop_front(5)
          << " runs on the CPU in this build (no --target=cuda)";
      return 1;
    }
  }
  // INT8 inference kernels exist on the CPU, for one rank; the observers
  // and weight scales of quantization-aware training on the CPU.
  for (auto model : ir->getOps<loom::ModelOp>()) {
    auto cfg = model.getConfigAttr();
    auto q = cfg ? cfg.getAs<mlir::StringAttr>("quantize") : nullptr;
    if (!q || q.getValue() == "none" || (q.getValue() == "ptq" && mode != "infer"))
      continue;
    auto meshAttr = cfg.getAs<mlir::DenseI64ArrayAttr>("mesh");
    bool oneRank = !meshAttr || llvm::all_of(meshAttr.asArrayRef(),
                                             [](int64_t n) { return n == 1; });
    std::string flag = "--quantize=" + q.getValue().str() + "-int8";
    if (mode == "infer" && (target == "cuda" || !oneRank))
      return userError(flag + " --mode=infer: INT8 inference runs on the CPU "
                              "and on one rank in this build (no "
                              "--target=cuda, no --mesh)");
    if (target == "cuda")
      return userError(flag + ": quantization-aware training runs on the CPU "
                              "in this build (no --target=cuda)");
  }

  auto print = [&]() {
    return writeOutput([&](raw_ostream &os) { ir->print(os); }) ? 0 : 1;
  };
  if (emit == Emit::Loom)
    return print();

  // Each stage is a named pipeline (loom-opt --loom-to-train, ...).
  auto stage = [&](void (*build)(mlir::OpPassManager &)) {
    mlir::PassManager pm(&context);
    if (failed(mlir::applyPassManagerCLOptions(pm)))
      return false;
    build(pm);
    return succeeded(pm.run(*ir));
  };
  // For --report of a bf16/fp16 model: the same model's fp32 plan, to show
  // what mixed precision saves.
  int64_t fp32Peak = -1;
  if (report.getNumOccurrences()) {
    for (auto model : ir->getOps<loom::ModelOp>()) {
      auto cfg = model.getConfigAttr();
      auto prec = cfg ? cfg.getAs<mlir::StringAttr>("precision") : nullptr;
      if (!prec || prec.getValue() == "fp32")
        continue;
      mlir::OwningOpRef<mlir::ModuleOp> twin = ir->clone();
      for (auto m : twin->getOps<loom::ModelOp>()) {
        mlir::NamedAttrList c(m.getConfigAttr());
        c.set("precision", mlir::StringAttr::get(&context, "fp32"));
        m.setConfigAttr(c.getDictionary(&context));
      }
      mlir::PassManager pm(&context);
      loom::buildLoomToTrainPipeline(pm);
      loom::buildTrainToDistPipeline(pm);
      loom::buildDistToExecPipeline(pm);
      if (succeeded(pm.run(*twin)))
        if (auto man = (*twin)->getAttrOfType<mlir::DictionaryAttr>("loom.manifest"))
          fp32Peak = man.getAs<mlir::DictionaryAttr>("memory")
                         .getAs<mlir::IntegerAttr>("peak")
                         .getInt();
    }
  }
  if (!stage(loom::buildLoomToTrainPipeline))
    return 1;
  if (emit == Emit::Train)
    return print();
  if (!stage(loom::buildTrainToDistPipeline))
    return 1;
  uint64_t flops = countFlops(*ir); // per rank
  std::vector<uint64_t> stageFlops;
  for (int st = 0; st < 64; ++st) {
    bool any = false;
    ir->walk([&](mlir::Operation *op) {
      if (auto a = op->getAttrOfType<mlir::IntegerAttr>("stage"))
        any |= a.getInt() == st;
    });
    if (!any)
      break;
    stageFlops.push_back(countFlops(*ir, st));
  }
  if (!stageFlops.empty())
    flops = *std::max_element(stageFlops.begin(), stageFlops.end());
  loom::loomc::Communication comm = loom::loomc::analyzeCommunication(*ir);
  if (explainSharding)
    return writeOutput([&](raw_ostream &os) {
             loom::loomc::explainSharding(*ir, comm, os);
           })
               ? 0
               : 1;
  if (emit == Emit::Dist)
    return print();
  // Target-specific rewrites of the exec lowering (FuseElementwise's bf16
  // attention layout) look for this mark.
  if (target == "cuda")
    (*ir)->setAttr("loom.target", mlir::StringAttr::get(&context, "cuda"));
  if (!stage(loom::buildDistToExecPipeline))
    return 1;
  if (report.getNumOccurrences())
    return printReport(*ir, flops, report == "json", fp32Peak, comm, stageFlops) ? 0 : 1;
  if (emit == Emit::Exec && target != "cuda")
    return print();
  if (emit == Emit::Ptx && target != "cuda")
    return userError("--emit=ptx needs --target=cuda");
  loom::codegen::ArtifactInfo info;
  if (target == "cuda") {
    auto kernels = loom::codegen::outlineCudaKernels(*ir);
    if (failed(kernels))
      return 1;
    auto scalars = loom::codegen::keepScalarsOnDevice(*ir, *kernels);
    if (failed(scalars))
      return 1;
    std::string ptx;
    if (failed(loom::codegen::emitPtx(*kernels, ptx)))
      return 1;
    // The host side: launches and the arena's scalars through the runtime.
    if (failed(loom::codegen::lowerHostProgramForCuda(*ir, *kernels)))
      return 1;
    if (emit == Emit::Exec)
      return print();
    if (emit == Emit::Ptx)
      return writeOutput([&](raw_ostream &os) {
               for (const auto &k : kernels->kernels) {
                 os << "// " << k.name << ": grid " << k.grid << " x block "
                    << k.block << ", " << k.args.size() << " argument(s), from "
                    << k.origin << "\n";
               }
               os << ptx;
             })
                 ? 0
                 : 1;
    // The host code compiles as the CPU target's does (below); the
    // artifact carries the kernels' PTX and launch table.
    info.target = "cuda";
    info.ptx = std::move(ptx);
    for (const auto &k : kernels->kernels) {
      // loc("samples/gpt.loom":30:16) -> gpt.loom:30:16
      std::string origin = k.origin;
      if (StringRef(origin).starts_with("loc(\"") && StringRef(origin).ends_with(")")) {
        StringRef inner = StringRef(origin).drop_front(5).drop_back(1);
        auto [file, rest] = inner.split('"');
        origin = (sys::path::filename(file) + rest).str();
      }
      info.kernels.push_back({k.name, k.grid, k.block, origin});
    }
    info.graphPrograms = scalars->programs;
    info.stepOffset = scalars->stepOffset;
  }
  if (!stage(loom::buildExecToLLVMPipeline))
    return 1;
  loom::codegen::CpuOptions cpuOptions;
  cpuOptions.native = cpu == "native";
  if (emit == Emit::Llvm) {
    std::string text;
    if (failed(loom::codegen::emitLLVMIR(*ir, cpuOptions, text)))
      return 1;
    return writeOutput([&](raw_ostream &os) { os << text; }) ? 0 : 1;
  }
  std::string object, shared;
  if (failed(loom::codegen::emitObject(*ir, cpuOptions, object)) ||
      failed(loom::codegen::linkSharedObject(ir->getLoc(), object, shared)))
    return 1;
  info.source = inputFile;
  info.cpuFeatures = loom::codegen::requiredCpuFeatures(cpuOptions);
  std::string out = outputFile;
  if (out.empty() || out == "-")
    out = sys::path::stem(inputFile).str() + ".loomx";
  if (failed(loom::codegen::writeArtifact(ir->getLoc(), out, shared,
                                          loom::codegen::manifestJson(*ir, info))))
    return 1;
  return 0;
}

