//===- CpuCodegen.cpp - LLVM dialect to x86-64 object code ----------------===//

#include "compiler/codegen/Codegen.h"

#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"

#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Module.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Passes/PassBuilder.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/TargetParser/Host.h"

using namespace mlir;

namespace loom::codegen {
namespace {

/// x86-64-v3: what the baseline artifact may use (AVX2, FMA, BMI1/2, ...).
const char *kBaselineCpu = "x86-64-v3";
const std::vector<std::string> kBaselineFeatures = {
    "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe"};
/// Host features the runtime can check, in its names.
const std::vector<std::string> kCheckable = {
    "avx",      "avx2",     "bmi",      "bmi2",       "f16c",
    "fma",      "lzcnt",    "movbe",    "avx512f",    "avx512bw",
    "avx512dq", "avx512vl", "avx512cd", "avx512vnni", "avx512bf16"};

std::unique_ptr<llvm::TargetMachine> targetMachine(const CpuOptions &options,
                                                   std::string &error) {
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  std::string triple = "x86_64-pc-linux-gnu";
  const llvm::Target *target = llvm::TargetRegistry::lookupTarget(triple, error);
  if (!target)
    return nullptr;
  std::string cpu = options.native ? llvm::sys::getHostCPUName().str()
                                   : std::string(kBaselineCpu);
  std::string features;
  if (options.native) {
    llvm::StringMap<bool> host = llvm::sys::getHostCPUFeatures();
    for (auto &kv : host)
      features += (features.empty() ? "" : ",") +
                  std::string(kv.second ? "+" : "-") + kv.first().str();
  }
  llvm::TargetOptions to;
  return std::unique_ptr<llvm::TargetMachine>(target->createTargetMachine(
      triple, cpu, features, to, llvm::Reloc::PIC_, std::nullopt,
      llvm::CodeGenOptLevel::Aggressive));
}

LogicalResult translate(ModuleOp module, const CpuOptions &options,
                        llvm::LLVMContext &llvmContext,
                        std::unique_ptr<llvm::Module> &out,
                        std::unique_ptr<llvm::TargetMachine> &tm) {
  registerBuiltinDialectTranslation(*module.getContext());
  registerLLVMDialectTranslation(*module.getContext());
  out = translateModuleToLLVMIR(module, llvmContext, "loom");
  if (!out)
    return module.emitError("translation to LLVM IR failed");
  std::string error;
  tm = targetMachine(options, error);
  if (!tm)
    return module.emitError("no x86-64 code generator: ") << error;
  out->setTargetTriple(tm->getTargetTriple().str());
  out->setDataLayout(tm->createDataLayout());

  // -O3 on the whole module: vectorises the generated loop nests.
  llvm::LoopAnalysisManager lam;
  llvm::FunctionAnalysisManager fam;
  llvm::CGSCCAnalysisManager cgam;
  llvm::ModuleAnalysisManager mam;
  // No loop unrolling: the vectoriser still interleaves, but a program of
  // many small fixed-size loops (a pipeline stage with unrolled
  // micro-batches) is not blown up into straight-line code whose
  // instruction selection takes minutes.
  llvm::PipelineTuningOptions tuning;
  tuning.LoopUnrolling = false;
  llvm::PassBuilder pb(tm.get(), tuning);
  pb.registerModuleAnalyses(mam);
  pb.registerCGSCCAnalyses(cgam);
  pb.registerFunctionAnalyses(fam);
  pb.registerLoopAnalyses(lam);
  pb.crossRegisterProxies(lam, fam, cgam, mam);
  llvm::ModulePassManager mpm =
      pb.buildPerModuleDefaultPipeline(llvm::OptimizationLevel::O3);
  mpm.run(*out, mam);
  return success();
}

} // namespace

std::vector<std::string> requiredCpuFeatures(const CpuOptions &options) {
  if (!options.native)
    return kBaselineFeatures;
  llvm::StringMap<bool> host = llvm::sys::getHostCPUFeatures();
  std::vector<std::string> out;
  for (const std::string &f : kCheckable)
    if (host.lookup(f))
      out.push_back(f);
  return out;
}

LogicalResult emitLLVMIR(ModuleOp module, const CpuOptions &options,
                         std::string &ir) {
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> m;
  std::unique_ptr<llvm::TargetMachine> tm;
  if (failed(translate(module, options, llvmContext, m, tm)))
    return failure();
  llvm::raw_string_ostream os(ir);
  m->print(os, nullptr);
  return success();
}

LogicalResult emitObject(ModuleOp module, const CpuOptions &options,
                         std::string &object) {
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> m;
  std::unique_ptr<llvm::TargetMachine> tm;
  if (failed(translate(module, options, llvmContext, m, tm)))
    return failure();
  llvm::SmallVector<char, 0> buffer;
  llvm::raw_svector_ostream os(buffer);
  llvm::legacy::PassManager pm;
  if (tm->addPassesToEmitFile(pm, os, nullptr,
                              llvm::CodeGenFileType::ObjectFile))
    return module.emitError("the x86-64 target cannot emit object files");
  pm.run(*m);
  object.assign(buffer.begin(), buffer.end());
  return success();
}

LogicalResult linkSharedObject(Location loc, const std::string &object,
                               std::string &sharedObject) {
  llvm::SmallString<128> objPath, soPath;
  int fd;
  if (llvm::sys::fs::createTemporaryFile("loom", "o", fd, objPath))
    return emitError(loc, "cannot create a temporary file");
  {
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    os << object;
  }
  if (llvm::sys::fs::createTemporaryFile("loom", "so", soPath))
    return emitError(loc, "cannot create a temporary file");
  std::string linker;
  for (const char *name : {"cc", "gcc", "clang-19", "clang"})
    if (auto p = llvm::sys::findProgramByName(name)) {
      linker = *p;
      break;
    }
  if (linker.empty())
    return emitError(loc, "no C compiler driver (cc) found to link the "
                          "artifact; install gcc");
  // The ABI symbols stay undefined: loom-run provides them at dlopen time.
  llvm::SmallVector<llvm::StringRef> args = {
      linker, "-shared", "-nostartfiles", "-o", soPath, objPath};
  std::string message;
  int rc = llvm::sys::ExecuteAndWait(linker, args, std::nullopt, {}, 0, 0,
                                     &message);
  llvm::sys::fs::remove(objPath);
  if (rc != 0) {
    llvm::sys::fs::remove(soPath);
    return emitError(loc, "linking the artifact with ")
           << linker << " failed (exit " << rc << ") " << message;
  }
  auto buf = llvm::MemoryBuffer::getFile(soPath, false, false);
  llvm::sys::fs::remove(soPath);
  if (!buf)
    return emitError(loc, "cannot read the linked shared object");
  sharedObject = (*buf)->getBuffer().str();
  return success();
}

} // namespace loom::codegen
