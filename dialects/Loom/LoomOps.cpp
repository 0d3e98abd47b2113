//===- LoomOps.cpp - ops of the loom dialect ------------------------------===//
//
// Result-type inference and verifiers of the loom ops. Shape and dtype rules
// come only from ShapeRules.h; this file converts between MLIR tensor types
// and the rules' plain TensorType and turns the rules' messages into
// diagnostics.
//
//===----------------------------------------------------------------------===//

#include "dialects/Loom/LoomOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/OpImplementation.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallSet.h"

using namespace mlir;
using namespace loom;

//===----------------------------------------------------------------------===//
// Type conversion between MLIR and the shape rules
//===----------------------------------------------------------------------===//

/// The DType of an MLIR element type; nullopt for types loom has no use for.
static std::optional<shape::DType> toDType(Type type) {
  if (type.isF32())
    return shape::DType::F32;
  if (type.isF16())
    return shape::DType::F16;
  if (type.isBF16())
    return shape::DType::BF16;
  if (type.isF64())
    return shape::DType::F64;
  if (type.isSignlessInteger(1))
    return shape::DType::I1;
  if (type.isSignlessInteger(8))
    return shape::DType::I8;
  if (type.isSignlessInteger(32))
    return shape::DType::I32;
  if (type.isSignlessInteger(64))
    return shape::DType::I64;
  return std::nullopt;
}

static Type toElementType(MLIRContext *context, shape::DType dtype) {
  Builder b(context);
  switch (dtype) {
  case shape::DType::F32:
    return b.getF32Type();
  case shape::DType::F16:
    return b.getF16Type();
  case shape::DType::BF16:
    return b.getBF16Type();
  case shape::DType::F64:
    return b.getF64Type();
  case shape::DType::I1:
    return b.getI1Type();
  case shape::DType::I8:
    return b.getI8Type();
  case shape::DType::I32:
    return b.getI32Type();
  case shape::DType::I64:
    return b.getI64Type();
  }
  llvm_unreachable("unknown loom dtype");
}

std::optional<shape::TensorType> loom::toShapeType(Type type) {
  auto ranked = dyn_cast<RankedTensorType>(type);
  if (!ranked || !ranked.hasStaticShape())
    return std::nullopt;
  std::optional<shape::DType> dtype = toDType(ranked.getElementType());
  if (!dtype)
    return std::nullopt;
  return shape::TensorType{
      *dtype, shape::Dims(ranked.getShape().begin(), ranked.getShape().end())};
}

RankedTensorType loom::toMlirType(MLIRContext *context,
                                  const shape::TensorType &type) {
  return RankedTensorType::get(type.dims, toElementType(context, type.dtype));
}

//===----------------------------------------------------------------------===//
// Shared inference and verification
//===----------------------------------------------------------------------===//

namespace {
/// The message for a value that is not a loom tensor, worded as ODS words
/// Loom_Tensor's: inference runs while parsing, before the ODS type
/// constraints are checked, so it needs its own.
constexpr const char *kNotLoomTensor =
    " must be statically shaped tensor of f32, f16, bf16, f64, i1, i8, i32 or "
    "i64, but got ";
} // namespace

/// Infers the single result type of `opName` by running `rule` on the
/// operand types; a rule's error becomes a diagnostic at `location`, worded
/// as a verifier's would be.
template <typename Rule>
static LogicalResult inferWithShapeRule(MLIRContext *context,
                                        std::optional<Location> location,
                                        StringRef opName, ValueRange operands,
                                        SmallVectorImpl<Type> &inferred,
                                        Rule rule) {
  SmallVector<shape::TensorType> types;
  for (auto [index, operand] : llvm::enumerate(operands)) {
    std::optional<shape::TensorType> type = toShapeType(operand.getType());
    if (!type)
      return emitOptionalError(location, "'", opName, "' op operand #", index,
                               kNotLoomTensor, operand.getType());
    types.push_back(*type);
  }
  std::string error;
  shape::Result result = rule(ArrayRef<shape::TensorType>(types), error);
  if (!result)
    return emitOptionalError(location, "'", opName, "' op ", error);
  inferred.push_back(toMlirType(context, *result));
  return success();
}

/// Inference reads attributes that the ODS verifier has not yet checked for
/// presence when an op is built generically; report instead of crashing.
static LogicalResult missingAttribute(std::optional<Location> location,
                                      StringRef opName, StringRef attrName) {
  return emitOptionalError(location, "'", opName, "' op requires attribute '",
                           attrName, "'");
}

/// Checks an explicitly written result type against what the shape rule
/// computes from the input and that result type.
static LogicalResult verifyExplicitResult(Operation *op,
                                          const shape::Result &expected,
                                          const std::string &error) {
  if (!expected)
    return op->emitOpError(error);
  // ODS has verified the result is a loom tensor before verify() runs.
  shape::TensorType actual = *toShapeType(op->getResult(0).getType());
  if (actual == *expected)
    return success();
  return op->emitOpError() << "result type " << shape::str(actual)
                           << " does not match " << shape::str(*expected)
                           << ", the type its shape rule gives";
}

//===----------------------------------------------------------------------===//
// Custom directives
//===----------------------------------------------------------------------===//

/// `glorot`, `normal(2.0e-02)`, `uniform(-1.0e-01, 1.0e-01)`: the
/// initialiser and its arguments, written the way the DSL writes them.
static ParseResult parseParamInit(OpAsmParser &parser, StringAttr &init,
                                  DenseF64ArrayAttr &args) {
  std::string name;
  if (parser.parseKeywordOrString(&name))
    return failure();
  init = parser.getBuilder().getStringAttr(name);
  if (failed(parser.parseOptionalLParen()))
    return success();
  SmallVector<double> values;
  if (failed(parser.parseOptionalRParen())) {
    if (parser.parseCommaSeparatedList(
            [&] { return parser.parseFloat(values.emplace_back()); }) ||
        parser.parseRParen())
      return failure();
  }
  args = parser.getBuilder().getDenseF64ArrayAttr(values);
  return success();
}

static void printParamInit(OpAsmPrinter &printer, Operation *,
                           StringAttr init, DenseF64ArrayAttr args) {
  printer.printKeywordOrString(init.getValue());
  if (!args || args.empty())
    return;
  printer << '(';
  llvm::interleaveComma(args.asArrayRef(), printer, [&](double value) {
    printer.printFloat(llvm::APFloat(value));
  });
  printer << ')';
}

/// `@Decoder`: the layer definition's name, spelled like a symbol because it
/// names a definition, although it is stored as a plain string.
static ParseResult parseLayerName(OpAsmParser &parser, StringAttr &layer) {
  return parser.parseSymbolName(layer);
}

static void printLayerName(OpAsmPrinter &printer, Operation *,
                           StringAttr layer) {
  printer.printSymbolName(layer.getValue());
}

/// `[0, 2]` or `[0, 2] keepdim`: the reduced dimensions and whether they are
/// kept with size 1.
static ParseResult parseReduceDims(OpAsmParser &parser,
                                   DenseI64ArrayAttr &dims, BoolAttr &keepdim) {
  Attribute parsed = DenseI64ArrayAttr::parse(parser, Type());
  if (!parsed)
    return failure();
  dims = cast<DenseI64ArrayAttr>(parsed);
  keepdim = parser.getBuilder().getBoolAttr(
      succeeded(parser.parseOptionalKeyword("keepdim")));
  return success();
}

static void printReduceDims(OpAsmPrinter &printer, Operation *,
                            DenseI64ArrayAttr dims, BoolAttr keepdim) {
  dims.print(printer);
  if (keepdim && keepdim.getValue())
    printer << " keepdim";
}

#define GET_OP_CLASSES
#include "dialects/Loom/LoomOps.cpp.inc"

//===----------------------------------------------------------------------===//
// Structure
//===----------------------------------------------------------------------===//

LogicalResult ModelOp::verify() {
  // Autodiff starts from the one loss; a model without one cannot train and
  // one with two would need a rule for combining them.
  size_t losses = 0;
  if (!getBody().empty())
    losses = llvm::range_size(getBody().front().getOps<LossOp>());
  if (losses != 1)
    return emitOpError() << "model '@" << getSymName()
                         << "' must have exactly one loom.loss, found "
                         << losses;
  return success();
}

namespace {
/// An initialiser and the arguments it takes.
struct InitSpec {
  StringRef name;
  size_t numArgs;
  StringRef argNames;
};
constexpr InitSpec kInits[] = {{"zeros", 0, ""},
                               {"ones", 0, ""},
                               {"normal", 1, "std"},
                               {"glorot", 0, ""},
                               {"uniform", 2, "a, b"}};
} // namespace

LogicalResult ParamOp::verify() {
  StringRef init = getInit();
  const InitSpec *spec = llvm::find_if(
      kInits, [&](const InitSpec &candidate) { return candidate.name == init; });
  if (spec == std::end(kInits))
    return emitOpError() << "unknown init '" << init
                         << "'; expected zeros, ones, normal, glorot or "
                            "uniform";

  ArrayRef<double> args;
  if (DenseF64ArrayAttr argsAttr = getInitArgsAttr())
    args = argsAttr.asArrayRef();
  if (args.size() != spec->numArgs) {
    InFlightDiagnostic diag = emitOpError()
                              << "init '" << init << "' takes "
                              << spec->numArgs
                              << (spec->numArgs == 1 ? " argument" : " arguments");
    if (!spec->argNames.empty())
      diag << " (" << spec->argNames << ")";
    return diag << ", got " << args.size();
  }
  if (init == "normal" && !(args[0] > 0.0))
    return emitOpError() << "normal init needs std > 0, got " << args[0];
  if (init == "uniform" && !(args[0] < args[1]))
    return emitOpError() << "uniform init needs a < b, got (" << args[0]
                         << ", " << args[1] << ")";

  ArrayAttr shard = getShardAttr();
  if (!shard)
    return success();
  int64_t rank = getType().getRank();
  if (static_cast<int64_t>(shard.size()) != rank)
    return emitOpError() << "shard has " << shard.size()
                         << " entries but the parameter has rank " << rank;
  // A mesh axis splits one dimension: splitting two over the same axis would
  // leave each rank a block that is not a shard of either.
  llvm::SmallSet<StringRef, 2> usedAxes;
  for (auto [dim, entry] : llvm::enumerate(shard.getAsValueRange<StringAttr>())) {
    if (entry == "_")
      continue;
    if (entry != "dp" && entry != "tp")
      return emitOpError() << "shard entry " << dim << " is '" << entry
                           << "'; expected \"_\", \"dp\" or \"tp\"";
    if (!usedAxes.insert(entry).second)
      return emitOpError() << "mesh axis '" << entry
                           << "' shards more than one dimension";
  }
  return success();
}

LogicalResult LayerOp::verify() {
  if (getBody().empty())
    return emitOpError("needs a body block");
  Block &body = getBody().front();
  if (body.getNumArguments() != getInputs().size())
    return emitOpError() << "body has " << body.getNumArguments()
                         << " arguments but the layer has "
                         << getInputs().size() << " inputs";
  for (auto [index, arg, input] :
       llvm::enumerate(body.getArguments(), getInputs())) {
    if (arg.getType() != input.getType())
      return emitOpError() << "body argument #" << index << " has type "
                           << arg.getType() << " but input #" << index
                           << " has type " << input.getType();
  }

  // The terminator is checked here, not left to the block verifier, because
  // op verifiers run before the ops they contain are verified.
  auto yield = body.empty() ? YieldOp() : dyn_cast<YieldOp>(body.back());
  if (!yield)
    return emitOpError("body must end with loom.yield");
  if (yield.getValues().size() != getOutputs().size())
    return emitOpError() << "loom.yield returns " << yield.getValues().size()
                         << " values but the layer has "
                         << getOutputs().size() << " results";
  for (auto [index, value, output] :
       llvm::enumerate(yield.getValues(), getOutputs())) {
    if (value.getType() != output.getType())
      return emitOpError() << "yielded value #" << index << " has type "
                           << value.getType() << " but result #" << index
                           << " has type " << output.getType();
  }
  return success();
}

//===----------------------------------------------------------------------===//
// Linear algebra, normalisation
//===----------------------------------------------------------------------===//

LogicalResult MatmulOp::inferReturnTypes(MLIRContext *context,
                                         std::optional<Location> location,
                                         Adaptor adaptor,
                                         SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::matmul(t[0], t[1], error);
      });
}

LogicalResult LayerNormOp::inferReturnTypes(MLIRContext *context,
                                            std::optional<Location> location,
                                            Adaptor adaptor,
                                            SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::norm(t[0], t[1], &t[2], error);
      });
}

/// eps keeps the denominator away from zero for a constant row.
static LogicalResult verifyEps(Operation *op, double eps) {
  if (eps > 0.0)
    return success();
  return op->emitOpError() << "eps must be positive, got " << eps;
}

LogicalResult LayerNormOp::verify() {
  return verifyEps(*this, getEps().convertToDouble());
}

LogicalResult RmsNormOp::inferReturnTypes(MLIRContext *context,
                                          std::optional<Location> location,
                                          Adaptor adaptor,
                                          SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::norm(t[0], t[1], /*b=*/nullptr, error);
      });
}

LogicalResult RmsNormOp::verify() {
  return verifyEps(*this, getEps().convertToDouble());
}

//===----------------------------------------------------------------------===//
// Indexing and layout
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::inferReturnTypes(MLIRContext *context,
                                            std::optional<Location> location,
                                            Adaptor adaptor,
                                            SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::embedding(t[0], t[1], error);
      });
}

LogicalResult ReshapeOp::verify() {
  std::string error;
  shape::Result expected =
      shape::reshape(*toShapeType(getInput().getType()),
                     toShapeType(getType())->dims, error);
  return verifyExplicitResult(*this, expected, error);
}

LogicalResult TransposeOp::inferReturnTypes(MLIRContext *context,
                                            std::optional<Location> location,
                                            Adaptor adaptor,
                                            SmallVectorImpl<Type> &inferred) {
  if (!adaptor.getPermutationAttr())
    return missingAttribute(location, getOperationName(), "permutation");
  std::vector<int64_t> perm(adaptor.getPermutation().begin(),
                            adaptor.getPermutation().end());
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::transpose(t[0], perm, error);
      });
}

LogicalResult SplitHeadsOp::inferReturnTypes(MLIRContext *context,
                                             std::optional<Location> location,
                                             Adaptor adaptor,
                                             SmallVectorImpl<Type> &inferred) {
  if (!adaptor.getHeadsAttr())
    return missingAttribute(location, getOperationName(), "heads");
  int64_t heads = adaptor.getHeads();
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::splitHeads(t[0], heads, error);
      });
}

LogicalResult MergeHeadsOp::inferReturnTypes(MLIRContext *context,
                                             std::optional<Location> location,
                                             Adaptor adaptor,
                                             SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::mergeHeads(t[0], error);
      });
}

LogicalResult BroadcastToOp::verify() {
  std::string error;
  shape::Result expected =
      shape::broadcastTo(*toShapeType(getInput().getType()),
                         toShapeType(getType())->dims, error);
  return verifyExplicitResult(*this, expected, error);
}

LogicalResult ConcatOp::inferReturnTypes(MLIRContext *context,
                                         std::optional<Location> location,
                                         Adaptor adaptor,
                                         SmallVectorImpl<Type> &inferred) {
  if (!adaptor.getDimAttr())
    return missingAttribute(location, getOperationName(), "dim");
  int64_t dim = adaptor.getDim();
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::concat(t.vec(), dim, error);
      });
}

LogicalResult SliceOp::inferReturnTypes(MLIRContext *context,
                                        std::optional<Location> location,
                                        Adaptor adaptor,
                                        SmallVectorImpl<Type> &inferred) {
  for (auto [attr, name] : {std::pair{adaptor.getDimAttr(), "dim"},
                            {adaptor.getStartAttr(), "start"},
                            {adaptor.getEndAttr(), "end"}}) {
    if (!attr)
      return missingAttribute(location, getOperationName(), name);
  }
  int64_t dim = adaptor.getDim(), start = adaptor.getStart(),
          end = adaptor.getEnd();
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::slice(t[0], dim, start, end, error);
      });
}

LogicalResult CastOp::verify() {
  std::string error;
  shape::Result expected =
      shape::cast(*toShapeType(getInput().getType()),
                  toShapeType(getType())->dtype, error);
  return verifyExplicitResult(*this, expected, error);
}

LogicalResult ConstantOp::inferReturnTypes(MLIRContext *,
                                           std::optional<Location> location,
                                           Adaptor adaptor,
                                           SmallVectorImpl<Type> &inferred) {
  ElementsAttr value = adaptor.getValueAttr();
  if (!value)
    return missingAttribute(location, getOperationName(), "value");
  if (!toShapeType(value.getType()))
    return emitOptionalError(location, "'", getOperationName(), "' op value",
                             kNotLoomTensor, value.getType());
  inferred.push_back(value.getType());
  return success();
}

OpFoldResult ConstantOp::fold(FoldAdaptor) { return getValueAttr(); }

//===----------------------------------------------------------------------===//
// Regularisation and attention
//===----------------------------------------------------------------------===//

LogicalResult Conv2dOp::inferReturnTypes(MLIRContext *context,
                                         std::optional<Location> location,
                                         Adaptor adaptor,
                                         SmallVectorImpl<Type> &inferred) {
  int64_t stride = adaptor.getStrideAttr() ? adaptor.getStride() : 1;
  int64_t padding = adaptor.getPaddingAttr() ? adaptor.getPadding() : 0;
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::conv2d(t[0], t[1], stride, padding, error);
      });
}

LogicalResult BatchNormOp::inferReturnTypes(MLIRContext *context,
                                            std::optional<Location> location,
                                            Adaptor adaptor,
                                            SmallVectorImpl<Type> &inferred) {
  double momentum =
      adaptor.getMomentumAttr() ? adaptor.getMomentum().convertToDouble() : 0.1;
  double eps = adaptor.getEpsAttr() ? adaptor.getEps().convertToDouble() : 1e-5;
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::batchNorm(t[0], t[1], t[2], momentum, eps, error);
      });
}

LogicalResult FakeQuantOp::inferReturnTypes(MLIRContext *context,
                                            std::optional<Location> location,
                                            Adaptor adaptor,
                                            SmallVectorImpl<Type> &inferred) {
  if (!adaptor.getQminAttr())
    return missingAttribute(location, getOperationName(), "qmin");
  if (!adaptor.getQmaxAttr())
    return missingAttribute(location, getOperationName(), "qmax");
  int64_t qmin = adaptor.getQmin(), qmax = adaptor.getQmax();
  int64_t axis = adaptor.getAxisAttr() ? adaptor.getAxis() : 0;
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::fakeQuant(t[0], t[1], t[2], axis, qmin, qmax, error);
      });
}

LogicalResult DropoutOp::inferReturnTypes(MLIRContext *context,
                                          std::optional<Location> location,
                                          Adaptor adaptor,
                                          SmallVectorImpl<Type> &inferred) {
  if (!adaptor.getPAttr())
    return missingAttribute(location, getOperationName(), "p");
  double p = adaptor.getP().convertToDouble();
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [&](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::dropout(t[0], p, error);
      });
}

LogicalResult DropoutOp::verify() {
  // Dropouts sharing a key would share a mask; the front end keys each by
  // its DSL path, so an empty key means the op was built without one.
  if (getKey().empty())
    return emitOpError("needs a non-empty key (the op's DSL path) to seed its "
                       "mask");
  return success();
}

namespace {
/// A rank-0 f32 tensor.
bool isF32Scalar(Type t) {
  auto r = dyn_cast<RankedTensorType>(t);
  return r && r.getRank() == 0 && r.getElementType().isF32();
}
} // namespace

LogicalResult ObserveOp::verify() {
  if (getName().empty())
    return emitOpError("needs the name of the weight its activation meets");
  if (!cast<RankedTensorType>(getInput().getType()).getElementType().isF32())
    return emitOpError("observes f32 activations");
  if (!isF32Scalar(getScale().getType()) ||
      !isF32Scalar(getZeroPoint().getType()))
    return emitOpError("results must be rank-0 f32 tensors");
  double m = getMomentum().convertToDouble();
  if (!(m > 0 && m <= 1))
    return emitOpError("momentum must be in (0, 1], got ") << m;
  return success();
}

LogicalResult WeightScaleOp::verify() {
  auto w = cast<RankedTensorType>(getWeight().getType());
  if (!w.getElementType().isF32() ||
      !((w.getRank() == 2 && getAxis() == 1) ||
        (w.getRank() == 4 && getAxis() == 0)))
    return emitOpError("needs an f32 matmul weight [in, out] (axis 1) or "
                       "conv2d weight [out, in, kh, kw] (axis 0)");
  auto s = cast<RankedTensorType>(getScale().getType());
  bool ok = s.getElementType().isF32() &&
            (getPerTensor() ? s.getRank() == 0
                            : s.getRank() == 1 &&
                                  s.getDimSize(0) == w.getDimSize(getAxis()));
  if (!ok)
    return emitOpError("result must be f32 ")
           << (getPerTensor() ? "rank-0" : "[out]") << " for " << w;
  return success();
}

LogicalResult QuantEnabledOp::verify() {
  if (!isF32Scalar(getResult().getType()))
    return emitOpError("result must be a rank-0 f32 tensor");
  if (getStart() < 0)
    return emitOpError("start must not be negative");
  return success();
}

LogicalResult AttentionOp::inferReturnTypes(MLIRContext *context,
                                            std::optional<Location> location,
                                            Adaptor adaptor,
                                            SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::attention(t[0], t[1], t[2], error);
      });
}

LogicalResult
GatedAttentionOp::inferReturnTypes(MLIRContext *context,
                                   std::optional<Location> location,
                                   Adaptor adaptor,
                                   SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::gatedAttention(t[0], t[1], t[2], t[3], t[4], error);
      });
}

LogicalResult GatedAttentionOp::verify() {
  // A gate is a sigmoid in (0, 1): a threshold of 1 or more would skip every
  // head, a negative one none, which is the exact mode spelled confusingly.
  std::optional<APFloat> threshold = getGateThreshold();
  if (!threshold)
    return success();
  double value = threshold->convertToDouble();
  if (!(value >= 0.0 && value < 1.0))
    return emitOpError() << "gate_threshold must be in [0, 1), got " << value;
  return success();
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

LogicalResult
CrossEntropyOp::inferReturnTypes(MLIRContext *context,
                                 std::optional<Location> location,
                                 Adaptor adaptor,
                                 SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::crossEntropy(t[0], t[1], error);
      });
}

LogicalResult MseOp::inferReturnTypes(MLIRContext *context,
                                      std::optional<Location> location,
                                      Adaptor adaptor,
                                      SmallVectorImpl<Type> &inferred) {
  return inferWithShapeRule(
      context, location, getOperationName(), adaptor.getOperands(), inferred,
      [](ArrayRef<shape::TensorType> t, std::string &error) {
        return shape::mse(t[0], t[1], error);
      });
}
