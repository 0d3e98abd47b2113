//===- ExecOps.td - the exec dialect -------------------------*- tablegen -*-===//
//
// A per-rank program over a static memory plan: every buffer is a view at a
// fixed byte offset of one arena; work is library calls into the runtime's C
// ABI (runtime/abi/loom_abi.h) and generated loop nests (linalg on memrefs).
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_EXEC_EXECOPS_TD
#define LOOM_DIALECTS_EXEC_EXECOPS_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

def Exec_Dialect : Dialect {
  let name = "exec";
  let cppNamespace = "::loom::exec";
  let summary = "Per-rank programs over a static memory plan";
}

class Exec_Op<string mnemonic, list<Trait> traits = []>
    : Op<Exec_Dialect, mnemonic, traits>;

def Exec_ProgramOp : Exec_Op<"program", [Symbol, IsolatedFromAbove,
                                         SingleBlock, NoTerminator]> {
  let summary = "An entry point of the artifact over one arena";
  let description = [{
    Compiled to `void sym_name(loom_ctx *ctx, uint8_t *arena)`. Every
    `exec.view` inside addresses the arena of `arena_bytes` bytes.
  }];
  let arguments = (ins SymbolNameAttr:$sym_name, StrAttr:$kind,
                       I64Attr:$arena_bytes);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = "$sym_name $kind `arena` $arena_bytes attr-dict-with-keyword $body";
}

def Exec_ViewOp : Exec_Op<"view", [Pure, HasParent<"ProgramOp">]> {
  let summary = "A buffer of the memory plan: the arena at a byte offset";
  let arguments = (ins I64Attr:$offset);
  let results = (outs AnyStaticShapeMemRef:$result);
  let assemblyFormat = "$offset attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def Exec_CallOp : Exec_Op<"call", []> {
  let summary = "A call into the runtime's C ABI";
  let description = [{
    Calls `callee` (a function of runtime/abi/loom_abi.h) with the runtime
    context first, then the operands: memrefs pass their data pointer,
    integers and floats pass by value.
  }];
  let arguments = (ins FlatSymbolRefAttr:$callee, Variadic<AnyType>:$args);
  let results = (outs Variadic<AnyType>:$results);
  let assemblyFormat =
      "$callee `(` $args `)` attr-dict `:` functional-type($args, $results)";
}

#endif // LOOM_DIALECTS_EXEC_EXECOPS_TD
