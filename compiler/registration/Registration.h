//===- Registration.h - one registration point for every tool ---*- C++ -*-===//
#ifndef LOOM_COMPILER_REGISTRATION_H
#define LOOM_COMPILER_REGISTRATION_H

namespace mlir {
class DialectRegistry;
} // namespace mlir

namespace loom {

/// Registers Loom's dialects and the upstream dialects its pipelines use.
void registerLoomDialects(mlir::DialectRegistry &registry);
/// Registers every Loom pass (and named pipeline) with MLIR's pass registry.
void registerLoomPasses();

} // namespace loom

#endif // LOOM_COMPILER_REGISTRATION_H
