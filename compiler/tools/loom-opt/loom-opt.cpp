//===- loom-opt.cpp - run Loom passes on MLIR text ------------------------===//
//
// The pass-level test driver: `loom-opt in.mlir --loom-autodiff | FileCheck`.
//
//===----------------------------------------------------------------------===//
#include "compiler/registration/Registration.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  loom::registerLoomDialects(registry);
  loom::registerLoomPasses();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "Loom optimizer driver\n", registry));
}
