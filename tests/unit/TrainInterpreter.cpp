//===- TrainInterpreter.cpp - a float64 reference run of a train.step -----===//
//
// One pass over the step's block in order: each op reads its operands'
// tensors and writes its results', whose shapes come from the IR's result
// types (a computed element count that disagrees with the type is an error,
// which keeps the interpreter honest about its own index arithmetic).
//
//===----------------------------------------------------------------------===//

#include "tests/unit/TrainInterpreter.h"

#include "runtime/Context.h"
#include "runtime/kernels/Kernels.h"
#include "runtime/kernels/Philox.h"

#include "mlir/IR/Block.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Operation.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <limits>

using namespace mlir;
namespace kn = loom::kernels;

namespace loom::test {

Tensor::Tensor(std::vector<int64_t> s, double fill)
    : shape(std::move(s)), data(numElements(shape), fill) {}

int64_t Tensor::numElements(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

double StepResult::loss() const {
  auto it = outputs.find("loss");
  return it == outputs.end() ? std::numeric_limits<double>::quiet_NaN()
                             : it->second;
}

namespace {

using Shape = std::vector<int64_t>;

Shape stridesOf(const Shape &shape) {
  Shape strides(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d)
    strides[d] = strides[d + 1] * shape[d + 1];
  return strides;
}

/// Advances a row-major multi-index; returns false after the last element.
bool nextIndex(Shape &index, const Shape &shape) {
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    if (++index[d] < shape[d])
      return true;
    index[d] = 0;
  }
  return false;
}

/// Whether `in` broadcasts to `out` by numpy's rules.
bool broadcasts(const Shape &in, const Shape &out) {
  if (in.size() > out.size())
    return false;
  size_t lead = out.size() - in.size();
  for (size_t d = 0; d < in.size(); ++d)
    if (in[d] != 1 && in[d] != out[d + lead])
      return false;
  return true;
}

/// For each element of `out` (row-major), the element of `in` that numpy
/// broadcasting reads. `in` must broadcast to `out`.
std::vector<int64_t> broadcastIndex(const Shape &in, const Shape &out) {
  const size_t lead = out.size() - in.size();
  const Shape inStrides = stridesOf(in);
  std::vector<int64_t> map(Tensor::numElements(out));
  Shape index(out.size(), 0);
  for (int64_t &src : map) {
    src = 0;
    for (size_t d = 0; d < in.size(); ++d)
      if (in[d] != 1)
        src += index[d + lead] * inStrides[d];
    nextIndex(index, out);
  }
  return map;
}

Shape typeShape(Type t) {
  auto rt = cast<RankedTensorType>(t);
  return Shape(rt.getShape().begin(), rt.getShape().end());
}

bool isIntegerTensor(Type t) {
  return isa<IntegerType>(cast<RankedTensorType>(t).getElementType());
}

/// The product of dimensions [from, to) of `shape`.
int64_t product(const Shape &shape, size_t from, size_t to) {
  int64_t n = 1;
  for (size_t d = from; d < to; ++d)
    n *= shape[d];
  return n;
}

Shape dropBack(const Shape &s, size_t n) {
  return Shape(s.begin(), s.end() - std::min(n, s.size()));
}

double gelu(double x) {
  const double c = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}

/// d gelu(x) / dx for the tanh approximation.
double geluDerivative(double x) {
  const double c = std::sqrt(2.0 / M_PI);
  const double th = std::tanh(c * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + th) +
         0.5 * x * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * x * x);
}

std::vector<int32_t> toInt32(const Tensor &t) {
  std::vector<int32_t> out(t.data.size());
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<int32_t>(t.data[i]);
  return out;
}

class Interpreter {
public:
  Interpreter(const std::map<std::string, Tensor> &inputs,
              const std::map<std::string, Tensor> &params,
              const InterpreterOptions &options, StepResult &result)
      : inputs_(inputs), params_(params), options_(options), result_(result) {
    ctx_.seed = options.seed;
    ctx_.step = options.step;
  }

  bool run(Operation *step) {
    if (step->getNumRegions() != 1 || step->getRegion(0).empty())
      return failMessage("the step has no body");
    for (Operation &op : step->getRegion(0).front()) {
      if (!eval(&op))
        return false;
      if (stop_)
        break;
    }
    return true;
  }

private:
  //===--------------------------------------------------------------------===//
  // Plumbing
  //===--------------------------------------------------------------------===//

  bool failMessage(const std::string &message) {
    result_.error = message;
    return false;
  }

  bool fail(Operation *op, const std::string &message) {
    std::string where;
    llvm::raw_string_ostream os(where);
    os << op->getName() << " at " << op->getLoc();
    return failMessage(os.str() + ": " + message);
  }

  const Tensor &in(Operation *op, unsigned i) {
    return values_.find(op->getOperand(i))->second;
  }

  /// Stores result `i`, taking its shape from the result type.
  bool set(Operation *op, unsigned i, Tensor t) {
    Shape shape = typeShape(op->getResult(i).getType());
    if (Tensor::numElements(shape) != t.size())
      return fail(op, "result " + std::to_string(i) + " has " +
                          std::to_string(t.size()) + " elements, its type " +
                          shapeString(shape) + " wants " +
                          std::to_string(Tensor::numElements(shape)));
    t.shape = std::move(shape);
    values_[op->getResult(i)] = std::move(t);
    return true;
  }

  /// A tensor of result `i`'s shape, filled with `fill`.
  Tensor resultLike(Operation *op, unsigned i, double fill = 0.0) {
    return Tensor(typeShape(op->getResult(i).getType()), fill);
  }

  bool boolAttr(Operation *op, StringRef name, bool dflt = false) {
    auto a = op->getAttrOfType<BoolAttr>(name);
    return a ? a.getValue() : dflt;
  }
  int64_t intAttr(Operation *op, StringRef name, int64_t dflt = 0) {
    auto a = op->getAttrOfType<IntegerAttr>(name);
    return a ? a.getInt() : dflt;
  }
  double floatAttr(Operation *op, StringRef name, double dflt) {
    auto a = op->getAttrOfType<FloatAttr>(name);
    return a ? a.getValueAsDouble() : dflt;
  }
  std::vector<int64_t> arrayAttr(Operation *op, StringRef name) {
    auto a = op->getAttrOfType<DenseI64ArrayAttr>(name);
    return a ? std::vector<int64_t>(a.asArrayRef().begin(),
                                    a.asArrayRef().end())
             : std::vector<int64_t>();
  }
  std::string stringAttr(Operation *op, StringRef name) {
    auto a = op->getAttrOfType<StringAttr>(name);
    return a ? a.getValue().str() : std::string();
  }

  /// Normalises a possibly negative dimension of a rank-`rank` tensor.
  bool dimIndex(Operation *op, int64_t dim, size_t rank, int64_t &out) {
    const int64_t r = static_cast<int64_t>(rank);
    out = dim < 0 ? dim + r : dim;
    if (out < 0 || out >= r)
      return fail(op, "dimension " + std::to_string(dim) +
                          " is out of range for rank " + std::to_string(r));
    return true;
  }

  //===--------------------------------------------------------------------===//
  // Dispatch
  //===--------------------------------------------------------------------===//

  bool eval(Operation *op) {
    for (Value v : op->getOperands())
      if (!values_.count(v))
        return fail(op, "reads a value that no earlier op produced");
    StringRef n = op->getName().getStringRef();

    // Step structure.
    if (n == "train.input" || n == "train.param")
      return evalLeaf(op, n == "train.input" ? inputs_ : params_);
    if (n == "train.output") {
      const Tensor &v = in(op, 0);
      if (v.size() != 1)
        return fail(op, "output is not a scalar");
      std::string name = stringAttr(op, "name");
      result_.outputs[name] = v.data[0];
      if (options_.lossOnly && name == "loss")
        stop_ = true;
      return true;
    }
    if (n == "train.gradient") {
      result_.gradients[stringAttr(op, "name")] = in(op, 0);
      return true;
    }
    // State (a batch norm's running statistics) starts as the runtime
    // starts it; its updates do not feed the loss.
    if (n == "train.state")
      return set(op, 0, resultLike(op, 0, stringAttr(op, "init") == "ones"));
    if (n == "train.update")
      return true;

    // Elementwise.
    if (n == "loom.neg" || n == "loom.exp" || n == "loom.log" ||
        n == "loom.sqrt" || n == "loom.rsqrt" || n == "loom.tanh" ||
        n == "loom.relu" || n == "loom.gelu" || n == "loom.sigmoid")
      return evalUnary(op, n);
    if (n == "loom.add" || n == "loom.sub" || n == "loom.mul" ||
        n == "loom.div")
      return evalBinary(op, n);
    if (n == "loom.constant")
      return evalConstant(op);
    if (n == "loom.cast")
      return evalCast(op);
    if (n == "loom.dropout")
      return evalDropout(op);

    // Linear algebra and softmax.
    if (n == "loom.matmul")
      return evalMatmul(op);
    if (n == "train.gemm")
      return evalGemm(op);
    if (n == "loom.softmax" || n == "loom.log_softmax")
      return evalSoftmax(op, n == "loom.log_softmax");

    // Layout.
    if (n == "loom.reshape")
      return set(op, 0, in(op, 0));
    if (n == "loom.transpose")
      return evalTranspose(op);
    if (n == "loom.split_heads")
      return evalSplitHeads(op);
    if (n == "loom.merge_heads")
      return evalMergeHeads(op);
    if (n == "loom.broadcast_to")
      return evalBroadcastTo(op);
    if (n == "loom.reduce_sum" || n == "loom.reduce_mean" ||
        n == "loom.reduce_max")
      return evalReduce(op, n);
    if (n == "loom.concat")
      return evalConcat(op);
    if (n == "loom.slice")
      return evalSlice(op);
    if (n == "loom.embedding")
      return evalEmbedding(op);
    if (n == "loom.mse")
      return evalMse(op);

    // Forward ops that save values (and their loom forms, result 0 only).
    if (n == "train.layer_norm" || n == "loom.layer_norm")
      return evalLayerNorm(op);
    if (n == "train.rms_norm" || n == "loom.rms_norm")
      return evalRmsNorm(op);
    if (n == "train.attention" || n == "loom.attention")
      return evalAttention(op);
    if (n == "train.gated_attention" || n == "loom.gated_attention")
      return evalGatedAttention(op);
    if (n == "train.cross_entropy" || n == "loom.cross_entropy")
      return evalCrossEntropy(op);

    // Convolution and batch normalisation (plain loops, not the kernels).
    if (n == "loom.conv2d" || n == "train.conv2d_grad_input" ||
        n == "train.conv2d_grad_weight")
      return evalConv(op, n);
    if (n == "train.batch_norm")
      return evalBatchNorm(op);
    if (n == "train.batch_norm_grad")
      return evalBatchNormGrad(op);

    // Backward ops.
    if (n == "train.relu_grad" || n == "train.gelu_grad")
      return evalActivationGrad(op, n == "train.gelu_grad");
    if (n == "train.softmax_grad" || n == "train.log_softmax_grad")
      return evalSoftmaxGrad(op, n == "train.log_softmax_grad");
    if (n == "train.layer_norm_grad")
      return evalLayerNormGrad(op);
    if (n == "train.rms_norm_grad")
      return evalRmsNormGrad(op);
    if (n == "train.cross_entropy_grad")
      return evalCrossEntropyGrad(op);
    if (n == "train.embedding_grad")
      return evalEmbeddingGrad(op);
    if (n == "train.attention_grad")
      return evalAttentionGrad(op);
    if (n == "train.gated_attention_grad")
      return evalGatedAttentionGrad(op);
    if (n == "train.reduce_max_grad")
      return evalReduceMaxGrad(op);
    if (n == "train.slice_grad")
      return evalSliceGrad(op);
    return fail(op, "the interpreter does not know this op");
  }

  //===--------------------------------------------------------------------===//
  // Step structure
  //===--------------------------------------------------------------------===//

  bool evalLeaf(Operation *op, const std::map<std::string, Tensor> &from) {
    std::string name = stringAttr(op, "name");
    auto it = from.find(name);
    if (it == from.end())
      return fail(op, "no value was supplied for '" + name + "'");
    Shape want = typeShape(op->getResult(0).getType());
    const Tensor &t = it->second;
    if (t.size() != Tensor::numElements(want) ||
        (!t.shape.empty() && t.shape != want))
      return fail(op, "'" + name + "' is " + shapeString(t.shape) +
                          ", the step wants " + shapeString(want));
    return set(op, 0, t);
  }

  //===--------------------------------------------------------------------===//
  // Elementwise
  //===--------------------------------------------------------------------===//

  bool evalUnary(Operation *op, StringRef n) {
    Tensor out = in(op, 0);
    for (double &x : out.data) {
      if (n == "loom.neg")
        x = -x;
      else if (n == "loom.exp")
        x = std::exp(x);
      else if (n == "loom.log")
        x = std::log(x);
      else if (n == "loom.sqrt")
        x = std::sqrt(x);
      else if (n == "loom.rsqrt")
        x = 1.0 / std::sqrt(x);
      else if (n == "loom.tanh")
        x = std::tanh(x);
      else if (n == "loom.relu")
        x = x > 0 ? x : 0.0;
      else if (n == "loom.gelu")
        x = gelu(x);
      else // sigmoid
        x = 1.0 / (1.0 + std::exp(-x));
    }
    return set(op, 0, std::move(out));
  }

  bool evalBinary(Operation *op, StringRef n) {
    const Tensor &a = in(op, 0), &b = in(op, 1);
    Tensor out = resultLike(op, 0);
    if (!broadcasts(a.shape, out.shape) || !broadcasts(b.shape, out.shape))
      return fail(op, "operands " + shapeString(a.shape) + " and " +
                          shapeString(b.shape) + " do not broadcast to " +
                          shapeString(out.shape));
    const bool integer = isIntegerTensor(op->getResult(0).getType());
    std::vector<int64_t> ia = broadcastIndex(a.shape, out.shape);
    std::vector<int64_t> ib = broadcastIndex(b.shape, out.shape);
    for (int64_t i = 0; i < out.size(); ++i) {
      const double x = a.data[ia[i]], y = b.data[ib[i]];
      double &r = out.data[i];
      if (n == "loom.add")
        r = x + y;
      else if (n == "loom.sub")
        r = x - y;
      else if (n == "loom.mul")
        r = x * y;
      else
        r = integer ? std::trunc(x / y) : x / y;
    }
    return set(op, 0, std::move(out));
  }

  bool evalConstant(Operation *op) {
    auto attr = op->getAttrOfType<DenseElementsAttr>("value");
    if (!attr)
      return fail(op, "the value is not a dense elements attribute");
    Tensor out = resultLike(op, 0);
    if (attr.getNumElements() != out.size() && !attr.isSplat())
      return fail(op, "the value's element count differs from the type's");
    auto element = [&](int64_t i) -> double {
      if (isa<FloatType>(attr.getElementType()))
        return attr.isSplat()
                   ? attr.getSplatValue<APFloat>().convertToDouble()
                   : (*(attr.value_begin<APFloat>() + i)).convertToDouble();
      APInt v = attr.isSplat() ? attr.getSplatValue<APInt>()
                               : *(attr.value_begin<APInt>() + i);
      return v.getBitWidth() == 1 ? double(v.getZExtValue())
                                  : double(v.getSExtValue());
    };
    for (int64_t i = 0; i < out.size(); ++i)
      out.data[i] = element(i);
    return set(op, 0, std::move(out));
  }

  bool evalCast(Operation *op) {
    Tensor out = in(op, 0);
    if (isIntegerTensor(op->getResult(0).getType()))
      for (double &x : out.data)
        x = std::trunc(x); // float to integer rounds toward zero
    return set(op, 0, std::move(out));
  }

  bool evalDropout(Operation *op) {
    const Tensor &x = in(op, 0);
    const double p = floatAttr(op, "p", 0.0);
    const std::string key = stringAttr(op, "key");
    Tensor out = resultLike(op, 0);
    // The runtime's stream: fnv1a64 of the op's DSL path (LowerToExec.cpp).
    kn::dropoutForward<double>(x.size(), p, ctx_.seed,
                               kn::fnv1a64(key.data(), key.size()), ctx_.step,
                               x.data.data(), out.data.data());
    return set(op, 0, std::move(out));
  }

  //===--------------------------------------------------------------------===//
  // Linear algebra and softmax
  //===--------------------------------------------------------------------===//

  /// Checks a batched product's shapes: a is [..., M, K] (after its
  /// transpose), b [..., K, N], out [..., M, N], batches broadcast.
  bool productShapes(Operation *op, const Shape &a, const Shape &b,
                     const Shape &out, bool ta, bool tb, int64_t &M, int64_t &N,
                     int64_t &K, std::vector<int64_t> &ia,
                     std::vector<int64_t> &ib) {
    if (a.size() < 2 || b.size() < 2 || out.size() < 2)
      return fail(op, "operands and result need rank >= 2");
    const size_t ra = a.size(), rb = b.size(), ro = out.size();
    M = ta ? a[ra - 1] : a[ra - 2];
    K = ta ? a[ra - 2] : a[ra - 1];
    const int64_t Kb = tb ? b[rb - 1] : b[rb - 2];
    N = tb ? b[rb - 2] : b[rb - 1];
    if (K != Kb || out[ro - 2] != M || out[ro - 1] != N)
      return fail(op, "shapes " + shapeString(a) + " and " + shapeString(b) +
                          " do not multiply to " + shapeString(out));
    Shape batch = dropBack(out, 2), ba = dropBack(a, 2), bb = dropBack(b, 2);
    if (!broadcasts(ba, batch) || !broadcasts(bb, batch))
      return fail(op, "batch dimensions of " + shapeString(a) + " and " +
                          shapeString(b) + " do not broadcast to " +
                          shapeString(batch));
    ia = broadcastIndex(ba, batch);
    ib = broadcastIndex(bb, batch);
    return true;
  }

  bool evalMatmul(Operation *op) {
    const Tensor &a = in(op, 0), &b = in(op, 1);
    Tensor out = resultLike(op, 0);
    int64_t M, N, K;
    std::vector<int64_t> ia, ib;
    if (!productShapes(op, a.shape, b.shape, out.shape, false, false, M, N, K,
                       ia, ib))
      return false;
    for (size_t batch = 0; batch < ia.size(); ++batch) {
      const double *A = a.data.data() + ia[batch] * M * K;
      const double *B = b.data.data() + ib[batch] * K * N;
      double *C = out.data.data() + batch * M * N;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double sum = 0;
          for (int64_t k = 0; k < K; ++k)
            sum += A[i * K + k] * B[k * N + j];
          C[i * N + j] = sum;
        }
    }
    return set(op, 0, std::move(out));
  }

  bool evalGemm(Operation *op) {
    const Tensor &a = in(op, 0), &b = in(op, 1);
    const bool ta = boolAttr(op, "transpose_a");
    const bool tb = boolAttr(op, "transpose_b");
    Tensor out = resultLike(op, 0);
    int64_t M, N, K;
    std::vector<int64_t> ia, ib;
    if (!productShapes(op, a.shape, b.shape, out.shape, ta, tb, M, N, K, ia,
                       ib))
      return false;
    for (size_t batch = 0; batch < ia.size(); ++batch)
      kn::gemm<double>(1, ta, tb, M, N, K, a.data.data() + ia[batch] * M * K, 0,
                       b.data.data() + ib[batch] * K * N, 0,
                       out.data.data() + batch * M * N, 0, 1.0, 0.0);
    return set(op, 0, std::move(out));
  }

  bool evalSoftmax(Operation *op, bool log) {
    Tensor out = in(op, 0);
    if (out.shape.empty())
      return fail(op, "needs rank >= 1");
    const int64_t cols = out.shape.back(), rows = out.size() / cols;
    for (int64_t r = 0; r < rows; ++r) {
      double *x = out.data.data() + r * cols;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < cols; ++c)
        m = std::max(m, x[c]);
      double sum = 0;
      for (int64_t c = 0; c < cols; ++c)
        sum += std::exp(x[c] - m);
      for (int64_t c = 0; c < cols; ++c)
        x[c] = log ? x[c] - m - std::log(sum) : std::exp(x[c] - m) / sum;
    }
    return set(op, 0, std::move(out));
  }

  //===--------------------------------------------------------------------===//
  // Layout
  //===--------------------------------------------------------------------===//

  bool evalTranspose(Operation *op) {
    const Tensor &x = in(op, 0);
    std::vector<int64_t> perm = arrayAttr(op, "permutation");
    if (perm.size() != x.shape.size())
      return fail(op, "the permutation does not match the rank");
    Tensor out = resultLike(op, 0);
    for (size_t i = 0; i < perm.size(); ++i)
      if (perm[i] < 0 || perm[i] >= int64_t(perm.size()) ||
          out.shape[i] != x.shape[perm[i]])
        return fail(op, "the result shape is not the permuted input shape");
    const Shape inStrides = stridesOf(x.shape);
    Shape index(out.shape.size(), 0);
    for (int64_t i = 0; i < out.size(); ++i) {
      int64_t src = 0;
      for (size_t d = 0; d < perm.size(); ++d)
        src += index[d] * inStrides[perm[d]];
      out.data[i] = x.data[src];
      nextIndex(index, out.shape);
    }
    return set(op, 0, std::move(out));
  }

  /// [B, T, D] -> [B, H, T, D/H], channel c = h * (D/H) + j to head h.
  bool evalSplitHeads(Operation *op) {
    const Tensor &x = in(op, 0);
    const int64_t H = intAttr(op, "heads");
    if (x.shape.size() != 3 || H <= 0 || x.shape[2] % H)
      return fail(op, "needs [B, T, D] with heads dividing D");
    const int64_t B = x.shape[0], T = x.shape[1], D = x.shape[2], d = D / H;
    Tensor out(Shape{B, H, T, d});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < d; ++j)
            out.data[((b * H + h) * T + t) * d + j] =
                x.data[(b * T + t) * D + h * d + j];
    if (typeShape(op->getResult(0).getType()) != out.shape)
      return fail(op, "the result type is not " + shapeString(out.shape));
    return set(op, 0, std::move(out));
  }

  /// [B, H, T, d] -> [B, T, H * d], head h filling channels h*d .. h*d+d-1.
  bool evalMergeHeads(Operation *op) {
    const Tensor &x = in(op, 0);
    if (x.shape.size() != 4)
      return fail(op, "needs [B, H, T, d]");
    const int64_t B = x.shape[0], H = x.shape[1], T = x.shape[2],
                  d = x.shape[3];
    Tensor out(Shape{B, T, H * d});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < d; ++j)
            out.data[(b * T + t) * H * d + h * d + j] =
                x.data[((b * H + h) * T + t) * d + j];
    if (typeShape(op->getResult(0).getType()) != out.shape)
      return fail(op, "the result type is not " + shapeString(out.shape));
    return set(op, 0, std::move(out));
  }

  bool evalBroadcastTo(Operation *op) {
    const Tensor &x = in(op, 0);
    Tensor out = resultLike(op, 0);
    if (!broadcasts(x.shape, out.shape))
      return fail(op, shapeString(x.shape) + " does not broadcast to " +
                          shapeString(out.shape));
    std::vector<int64_t> map = broadcastIndex(x.shape, out.shape);
    for (int64_t i = 0; i < out.size(); ++i)
      out.data[i] = x.data[map[i]];
    return set(op, 0, std::move(out));
  }

  /// The group (element of the keepdim result) of each input element.
  bool reductionGroups(Operation *op, const Shape &shape,
                       std::vector<int64_t> &group, int64_t &groups,
                       int64_t &groupSize) {
    std::vector<int64_t> dims = arrayAttr(op, "dims");
    Shape kept = shape;
    groupSize = 1;
    for (int64_t dim : dims) {
      int64_t d;
      if (!dimIndex(op, dim, shape.size(), d))
        return false;
      if (kept[d] == 1 && shape[d] != 1)
        return fail(op, "dimension " + std::to_string(dim) + " is repeated");
      groupSize *= shape[d];
      kept[d] = 1;
    }
    groups = Tensor::numElements(kept);
    group = broadcastIndex(kept, shape); // the inverse map of a broadcast
    return true;
  }

  bool evalReduce(Operation *op, StringRef n) {
    const Tensor &x = in(op, 0);
    std::vector<int64_t> group;
    int64_t groups, groupSize;
    if (!reductionGroups(op, x.shape, group, groups, groupSize))
      return false;
    const bool max = n == "loom.reduce_max";
    Tensor out(Shape{groups},
               max ? -std::numeric_limits<double>::infinity() : 0.0);
    for (int64_t i = 0; i < x.size(); ++i) {
      double &r = out.data[group[i]];
      r = max ? std::max(r, x.data[i]) : r + x.data[i];
    }
    if (n == "loom.reduce_mean")
      for (double &r : out.data)
        r /= double(groupSize);
    return set(op, 0, std::move(out));
  }

  bool evalConcat(Operation *op) {
    Tensor out = resultLike(op, 0);
    int64_t dim;
    if (!dimIndex(op, intAttr(op, "dim"), out.shape.size(), dim))
      return false;
    const int64_t outer = product(out.shape, 0, dim);
    const int64_t inner = product(out.shape, dim + 1, out.shape.size());
    int64_t offset = 0;
    for (unsigned i = 0; i < op->getNumOperands(); ++i) {
      const Tensor &x = in(op, i);
      const int64_t size = x.shape.at(dim);
      if (offset + size > out.shape[dim])
        return fail(op, "the inputs are larger than the result");
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t s = 0; s < size; ++s)
          for (int64_t j = 0; j < inner; ++j)
            out.data[(o * out.shape[dim] + offset + s) * inner + j] =
                x.data[(o * size + s) * inner + j];
      offset += size;
    }
    if (offset != out.shape[dim])
      return fail(op, "the inputs do not fill the result");
    return set(op, 0, std::move(out));
  }

  /// Copies between a tensor of `full` shape and its [start, start + size)
  /// range of dimension `dim` (`toFull`: small into full, else full into
  /// small).
  static void sliceCopy(const Shape &full, int64_t dim, int64_t start,
                        int64_t size, double *fullData, double *smallData,
                        bool toFull) {
    const int64_t outer = product(full, 0, dim);
    const int64_t inner = product(full, dim + 1, full.size());
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t s = 0; s < size; ++s)
        for (int64_t j = 0; j < inner; ++j) {
          double &f = fullData[(o * full[dim] + start + s) * inner + j];
          double &p = smallData[(o * size + s) * inner + j];
          if (toFull)
            f = p;
          else
            p = f;
        }
  }

  bool evalSlice(Operation *op) {
    Tensor x = in(op, 0);
    int64_t dim;
    if (!dimIndex(op, intAttr(op, "dim"), x.shape.size(), dim))
      return false;
    const int64_t start = intAttr(op, "start"), end = intAttr(op, "end");
    if (start < 0 || end > x.shape[dim] || start >= end)
      return fail(op, "the range is outside the dimension");
    Tensor out = resultLike(op, 0);
    if (out.size() != x.size() / x.shape[dim] * (end - start))
      return fail(op, "the result type does not match the range");
    sliceCopy(x.shape, dim, start, end - start, x.data.data(), out.data.data(),
              /*toFull=*/false);
    return set(op, 0, std::move(out));
  }

  bool evalEmbedding(Operation *op) {
    const Tensor &ids = in(op, 0), &table = in(op, 1);
    if (table.shape.size() != 2)
      return fail(op, "the table is not [V, D]");
    const int64_t V = table.shape[0], D = table.shape[1];
    Tensor out = resultLike(op, 0);
    if (out.size() != ids.size() * D)
      return fail(op, "the result is not [..., D]");
    for (int64_t i = 0; i < ids.size(); ++i) {
      const int64_t id = static_cast<int64_t>(ids.data[i]);
      if (id < 0 || id >= V)
        return fail(op, "id " + std::to_string(id) + " is outside [0, " +
                            std::to_string(V) + ")");
      std::copy(table.data.begin() + id * D, table.data.begin() + (id + 1) * D,
                out.data.begin() + i * D);
    }
    return set(op, 0, std::move(out));
  }

  bool evalMse(Operation *op) {
    const Tensor &a = in(op, 0), &b = in(op, 1);
    if (a.size() != b.size() || a.size() == 0)
      return fail(op, "operands differ in size");
    double sum = 0;
    for (int64_t i = 0; i < a.size(); ++i)
      sum += (a.data[i] - b.data[i]) * (a.data[i] - b.data[i]);
    return set(op, 0, Tensor(Shape{}, sum / double(a.size())));
  }

  //===--------------------------------------------------------------------===//
  // Forward ops that save values: the double kernels
  //===--------------------------------------------------------------------===//

  /// rows x cols of a tensor normalised over its last dimension, whose
  /// per-row parameters have `cols` elements.
  bool rowsCols(Operation *op, const Tensor &x, int64_t &rows, int64_t &cols) {
    if (x.shape.empty())
      return fail(op, "needs rank >= 1");
    cols = x.shape.back();
    rows = x.size() / cols;
    return true;
  }

  /// conv2d (NCHW) and its two VJPs as direct sums over the same index
  /// set: y[n,o,i,j] += x[n,c,i*s+a-p, j*s+b-p] * w[o,c,a,b].
  bool evalConv(Operation *op, StringRef n) {
    int64_t stride = intAttr(op, "stride", 1), pad = intAttr(op, "padding", 0);
    Shape xs, ws, ys;
    Tensor out;
    const Tensor *x = nullptr, *w = nullptr, *dy = nullptr;
    if (n == "loom.conv2d") {
      x = &in(op, 0);
      w = &in(op, 1);
      xs = x->shape;
      ws = w->shape;
      ys = typeShape(op->getResult(0).getType());
    } else if (n == "train.conv2d_grad_input") {
      dy = &in(op, 0);
      w = &in(op, 1);
      xs = typeShape(op->getResult(0).getType());
      ws = w->shape;
      ys = dy->shape;
    } else {
      x = &in(op, 0);
      dy = &in(op, 1);
      xs = x->shape;
      ws = typeShape(op->getResult(0).getType());
      ys = dy->shape;
    }
    if (xs.size() != 4 || ws.size() != 4 || ys.size() != 4)
      return fail(op, "conv2d operands are not rank 4");
    out = resultLike(op, 0);
    const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ws[0],
                  KH = ws[2], KW = ws[3], Ho = ys[2], Wo = ys[3];
    for (int64_t b0 = 0; b0 < N; ++b0)
      for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < Ho; ++i)
          for (int64_t j = 0; j < Wo; ++j)
            for (int64_t c = 0; c < C; ++c)
              for (int64_t a = 0; a < KH; ++a)
                for (int64_t b = 0; b < KW; ++b) {
                  int64_t h = i * stride + a - pad, v = j * stride + b - pad;
                  if (h < 0 || h >= H || v < 0 || v >= W)
                    continue;
                  int64_t xi = ((b0 * C + c) * H + h) * W + v;
                  int64_t wi = ((o * C + c) * KH + a) * KW + b;
                  int64_t yi = ((b0 * O + o) * Ho + i) * Wo + j;
                  if (n == "loom.conv2d")
                    out.data[yi] += x->data[xi] * w->data[wi];
                  else if (n == "train.conv2d_grad_input")
                    out.data[xi] += dy->data[yi] * w->data[wi];
                  else
                    out.data[wi] += dy->data[yi] * x->data[xi];
                }
    return set(op, 0, std::move(out));
  }

  /// Training batch norm over axis 1 of x [N, C, ...]: y, mean, rstd, and
  /// the running statistics' updates.
  bool evalBatchNorm(Operation *op) {
    const Tensor &x = in(op, 0), &g = in(op, 1), &b = in(op, 2);
    const Tensor &rm = in(op, 3), &rv = in(op, 4);
    const int64_t N = x.shape[0], C = x.shape[1], S = x.size() / (N * C);
    const double eps = floatAttr(op, "eps", 1e-5),
                 mom = floatAttr(op, "momentum", 0.1), m = double(N * S);
    Tensor y(x.shape), mean(Shape{C}), rstd(Shape{C}), nm(Shape{C}),
        nv(Shape{C});
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0, sq = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < S; ++i)
          sum += x.data[(n * C + c) * S + i];
      double mu = sum / m;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < S; ++i) {
          double d = x.data[(n * C + c) * S + i] - mu;
          sq += d * d;
        }
      double r = 1 / std::sqrt(sq / m + eps);
      mean.data[c] = mu;
      rstd.data[c] = r;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < S; ++i) {
          int64_t at = (n * C + c) * S + i;
          y.data[at] = (x.data[at] - mu) * r * g.data[c] + b.data[c];
        }
      nm.data[c] = (1 - mom) * rm.data[c] + mom * mu;
      nv.data[c] = (1 - mom) * rv.data[c] + mom * sq / std::max(1.0, m - 1);
    }
    return set(op, 0, std::move(y)) && set(op, 1, std::move(mean)) &&
           set(op, 2, std::move(rstd)) && set(op, 3, std::move(nm)) &&
           set(op, 4, std::move(nv));
  }

  bool evalBatchNormGrad(Operation *op) {
    const Tensor &dy = in(op, 0), &x = in(op, 1), &g = in(op, 2);
    const Tensor &mean = in(op, 3), &rstd = in(op, 4);
    const int64_t N = x.shape[0], C = x.shape[1], S = x.size() / (N * C);
    const double m = double(N * S);
    Tensor dx(x.shape), dg(Shape{C}), db(Shape{C});
    for (int64_t c = 0; c < C; ++c) {
      double sdy = 0, sdyx = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < S; ++i) {
          int64_t at = (n * C + c) * S + i;
          double xh = (x.data[at] - mean.data[c]) * rstd.data[c];
          sdy += dy.data[at];
          sdyx += dy.data[at] * xh;
        }
      db.data[c] = sdy;
      dg.data[c] = sdyx;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < S; ++i) {
          int64_t at = (n * C + c) * S + i;
          double xh = (x.data[at] - mean.data[c]) * rstd.data[c];
          dx.data[at] = g.data[c] * rstd.data[c] / m *
                        (m * dy.data[at] - sdy - xh * sdyx);
        }
    }
    return set(op, 0, std::move(dx)) && set(op, 1, std::move(dg)) &&
           set(op, 2, std::move(db));
  }

  bool evalLayerNorm(Operation *op) {
    const Tensor &x = in(op, 0), &g = in(op, 1), &b = in(op, 2);
    int64_t rows = 0, cols = 0;
    if (!rowsCols(op, x, rows, cols))
      return false;
    if (g.size() != cols || b.size() != cols)
      return fail(op, "gain and bias are not [D]");
    Tensor y(x.shape), mean(Shape{rows}), rstd(Shape{rows});
    kn::layerNormForward<double>(rows, cols, x.data.data(), g.data.data(),
                                 b.data.data(), floatAttr(op, "eps", 1e-5),
                                 y.data.data(), mean.data.data(),
                                 rstd.data.data());
    if (op->getNumResults() == 1)
      return set(op, 0, std::move(y));
    return set(op, 0, std::move(y)) && set(op, 1, std::move(mean)) &&
           set(op, 2, std::move(rstd));
  }

  bool evalRmsNorm(Operation *op) {
    const Tensor &x = in(op, 0), &g = in(op, 1);
    int64_t rows = 0, cols = 0;
    if (!rowsCols(op, x, rows, cols))
      return false;
    if (g.size() != cols)
      return fail(op, "gain is not [D]");
    Tensor y(x.shape), rstd(Shape{rows});
    kn::rmsNormForward<double>(rows, cols, x.data.data(), g.data.data(),
                               floatAttr(op, "eps", 1e-6), y.data.data(),
                               rstd.data.data());
    if (op->getNumResults() == 1)
      return set(op, 0, std::move(y));
    return set(op, 0, std::move(y)) && set(op, 1, std::move(rstd));
  }

  struct AttentionDims {
    int64_t B, H, Tq, Tk, D, Dv;
  };

  bool attentionDims(Operation *op, const Tensor &q, const Tensor &k,
                     const Tensor &v, AttentionDims &d) {
    if (q.shape.size() != 4 || k.shape.size() != 4 || v.shape.size() != 4)
      return fail(op, "q, k, v are not [B, H, T, d]");
    d = {q.shape[0], q.shape[1], q.shape[2],
         k.shape[2], q.shape[3], v.shape[3]};
    if (k.shape[0] != d.B || k.shape[1] != d.H || k.shape[3] != d.D ||
        v.shape[0] != d.B || v.shape[1] != d.H || v.shape[2] != d.Tk)
      return fail(op, "q, k, v disagree in shape");
    return true;
  }

  bool evalAttention(Operation *op) {
    const Tensor &q = in(op, 0), &k = in(op, 1), &v = in(op, 2);
    AttentionDims d;
    if (!attentionDims(op, q, k, v, d))
      return false;
    Tensor out(Shape{d.B, d.H, d.Tq, d.Dv}), lse(Shape{d.B, d.H, d.Tq});
    kn::attentionForward<double>(
        d.B, d.H, d.Tq, d.Tk, d.D, d.Dv, boolAttr(op, "causal"), q.data.data(),
        k.data.data(), v.data.data(), out.data.data(), lse.data.data());
    if (op->getNumResults() == 1)
      return set(op, 0, std::move(out));
    return set(op, 0, std::move(out)) && set(op, 1, std::move(lse));
  }

  /// The kernels' threshold: the attribute, or -1 for the exact formula.
  double gateThreshold(Operation *op) {
    return floatAttr(op, "gate_threshold", -1.0);
  }

  bool evalGatedAttention(Operation *op) {
    const Tensor &q = in(op, 0), &k = in(op, 1), &v = in(op, 2);
    const Tensor &wg = in(op, 3), &bg = in(op, 4);
    AttentionDims d;
    if (!attentionDims(op, q, k, v, d))
      return false;
    if (d.Tq != d.Tk || wg.size() != d.H * 2 * d.D || bg.size() != d.H)
      return fail(op, "needs Tq = Tk, wg [H, 2d] and bg [H]");
    Tensor out(Shape{d.B, d.H, d.Tq, d.Dv}), lse(Shape{d.B, d.H, d.Tq});
    Tensor gate(Shape{d.B, d.H, d.Tq}), attn(out.shape);
    kn::gatedAttentionForward<double>(
        d.B, d.H, d.Tq, d.D, d.Dv, boolAttr(op, "causal"), gateThreshold(op),
        q.data.data(), k.data.data(), v.data.data(), wg.data.data(),
        bg.data.data(), out.data.data(), lse.data.data(), gate.data.data(),
        attn.data.data());
    if (op->getNumResults() == 1)
      return set(op, 0, std::move(out));
    return set(op, 0, std::move(out)) && set(op, 1, std::move(lse)) &&
           set(op, 2, std::move(gate)) && set(op, 3, std::move(attn));
  }

  bool evalCrossEntropy(Operation *op) {
    const Tensor &logits = in(op, 0), &target = in(op, 1);
    if (logits.shape.empty())
      return fail(op, "the logits need rank >= 1");
    const int64_t classes = logits.shape.back(), rows = target.size();
    if (rows * classes != logits.size())
      return fail(op, "target is not the logits' shape without C");
    std::vector<int32_t> t = toInt32(target);
    Tensor loss(Shape{}), lse(Shape{rows}), stats(Shape{2});
    std::string problem = kn::crossEntropyForward<double>(
        rows, classes, logits.data.data(), t.data(),
        intAttr(op, "ignore_index", -100), loss.data.data(), lse.data.data(),
        stats.data.data());
    if (!problem.empty())
      return fail(op, problem);
    if (op->getNumResults() == 1)
      return set(op, 0, std::move(loss));
    return set(op, 0, std::move(loss)) && set(op, 1, std::move(lse)) &&
           set(op, 2, std::move(stats));
  }

  //===--------------------------------------------------------------------===//
  // Backward ops
  //===--------------------------------------------------------------------===//

  bool evalActivationGrad(Operation *op, bool isGelu) {
    const Tensor &x = in(op, 0), &dy = in(op, 1);
    if (x.size() != dy.size())
      return fail(op, "input and gradient differ in size");
    Tensor dx = dy;
    for (int64_t i = 0; i < dx.size(); ++i)
      dx.data[i] *=
          isGelu ? geluDerivative(x.data[i]) : (x.data[i] > 0 ? 1.0 : 0.0);
    return set(op, 0, std::move(dx));
  }

  bool evalSoftmaxGrad(Operation *op, bool log) {
    const Tensor &y = in(op, 0), &dy = in(op, 1);
    int64_t rows = 0, cols = 0;
    if (!rowsCols(op, y, rows, cols))
      return false;
    if (y.size() != dy.size())
      return fail(op, "output and gradient differ in size");
    Tensor dx(y.shape);
    if (log)
      kn::logSoftmaxBackward<double>(rows, cols, y.data.data(), dy.data.data(),
                                     dx.data.data());
    else
      kn::softmaxBackward<double>(rows, cols, y.data.data(), dy.data.data(),
                                  dx.data.data());
    return set(op, 0, std::move(dx));
  }

  bool evalLayerNormGrad(Operation *op) {
    const Tensor &dy = in(op, 0), &x = in(op, 1), &g = in(op, 2);
    const Tensor &mean = in(op, 3), &rstd = in(op, 4);
    int64_t rows = 0, cols = 0;
    if (!rowsCols(op, x, rows, cols))
      return false;
    if (dy.size() != x.size() || g.size() != cols || mean.size() != rows ||
        rstd.size() != rows)
      return fail(op, "operand sizes disagree");
    Tensor dx(x.shape), dg(Shape{cols}), db(Shape{cols});
    kn::layerNormBackward<double>(rows, cols, dy.data.data(), x.data.data(),
                                  g.data.data(), mean.data.data(),
                                  rstd.data.data(), dx.data.data(),
                                  dg.data.data(), db.data.data());
    return set(op, 0, std::move(dx)) && set(op, 1, std::move(dg)) &&
           set(op, 2, std::move(db));
  }

  bool evalRmsNormGrad(Operation *op) {
    const Tensor &dy = in(op, 0), &x = in(op, 1), &g = in(op, 2);
    const Tensor &rstd = in(op, 3);
    int64_t rows = 0, cols = 0;
    if (!rowsCols(op, x, rows, cols))
      return false;
    if (dy.size() != x.size() || g.size() != cols || rstd.size() != rows)
      return fail(op, "operand sizes disagree");
    Tensor dx(x.shape), dg(Shape{cols});
    kn::rmsNormBackward<double>(rows, cols, dy.data.data(), x.data.data(),
                                g.data.data(), rstd.data.data(), dx.data.data(),
                                dg.data.data());
    return set(op, 0, std::move(dx)) && set(op, 1, std::move(dg));
  }

  bool evalCrossEntropyGrad(Operation *op) {
    const Tensor &logits = in(op, 0), &target = in(op, 1);
    const Tensor &lse = in(op, 2), &dloss = in(op, 3);
    if (logits.shape.empty())
      return fail(op, "the logits need rank >= 1");
    const int64_t classes = logits.shape.back(), rows = target.size();
    if (rows * classes != logits.size() || lse.size() != rows ||
        dloss.size() != 1)
      return fail(op, "operand sizes disagree");
    std::vector<int32_t> t = toInt32(target);
    Tensor dlogits(logits.shape);
    std::string problem = kn::crossEntropyBackward<double>(
        rows, classes, logits.data.data(), t.data(),
        intAttr(op, "ignore_index", -100), lse.data.data(), dloss.data.data(),
        dlogits.data.data());
    if (!problem.empty())
      return fail(op, problem);
    return set(op, 0, std::move(dlogits));
  }

  bool evalEmbeddingGrad(Operation *op) {
    const Tensor &ids = in(op, 0), &dout = in(op, 1);
    Tensor dtable = resultLike(op, 0);
    if (dtable.shape.size() != 2 || dout.size() != ids.size() * dtable.shape[1])
      return fail(op, "the result is not [V, D] for a [..., D] gradient");
    std::vector<int32_t> t = toInt32(ids);
    std::string problem = kn::embeddingBackward<double>(
        ids.size(), dtable.shape[0], dtable.shape[1], t.data(),
        dout.data.data(), dtable.data.data());
    if (!problem.empty())
      return fail(op, problem);
    return set(op, 0, std::move(dtable));
  }

  bool evalAttentionGrad(Operation *op) {
    const Tensor &q = in(op, 0), &k = in(op, 1), &v = in(op, 2);
    const Tensor &out = in(op, 3), &lse = in(op, 4), &dout = in(op, 5);
    AttentionDims d;
    if (!attentionDims(op, q, k, v, d))
      return false;
    if (out.size() != d.B * d.H * d.Tq * d.Dv || dout.size() != out.size() ||
        lse.size() != d.B * d.H * d.Tq)
      return fail(op, "operand sizes disagree");
    Tensor dq(q.shape), dk(k.shape), dv(v.shape);
    kn::attentionBackward<double>(
        d.B, d.H, d.Tq, d.Tk, d.D, d.Dv, boolAttr(op, "causal"), q.data.data(),
        k.data.data(), v.data.data(), out.data.data(), lse.data.data(),
        dout.data.data(), dq.data.data(), dk.data.data(), dv.data.data());
    return set(op, 0, std::move(dq)) && set(op, 1, std::move(dk)) &&
           set(op, 2, std::move(dv));
  }

  bool evalGatedAttentionGrad(Operation *op) {
    const Tensor &q = in(op, 0), &k = in(op, 1), &v = in(op, 2);
    const Tensor &wg = in(op, 3), &bg = in(op, 4), &lse = in(op, 5);
    const Tensor &gate = in(op, 6), &attn = in(op, 7), &dout = in(op, 8);
    AttentionDims d;
    if (!attentionDims(op, q, k, v, d))
      return false;
    const int64_t rows = d.B * d.H * d.Tq;
    if (d.Tq != d.Tk || wg.size() != d.H * 2 * d.D || bg.size() != d.H ||
        lse.size() != rows || gate.size() != rows ||
        attn.size() != rows * d.Dv || dout.size() != rows * d.Dv)
      return fail(op, "operand sizes disagree");
    Tensor dq(q.shape), dk(k.shape), dv(v.shape), dwg(wg.shape), dbg(bg.shape);
    kn::gatedAttentionBackward<double>(
        d.B, d.H, d.Tq, d.D, d.Dv, boolAttr(op, "causal"), gateThreshold(op),
        q.data.data(), k.data.data(), v.data.data(), wg.data.data(),
        lse.data.data(), gate.data.data(), attn.data.data(), dout.data.data(),
        dq.data.data(), dk.data.data(), dv.data.data(), dwg.data.data(),
        dbg.data.data());
    return set(op, 0, std::move(dq)) && set(op, 1, std::move(dk)) &&
           set(op, 2, std::move(dv)) && set(op, 3, std::move(dwg)) &&
           set(op, 4, std::move(dbg));
  }

  /// The gradient of each reduced group goes to the group's first maximal
  /// element in row-major order.
  bool evalReduceMaxGrad(Operation *op) {
    const Tensor &x = in(op, 0), &g = in(op, 1);
    std::vector<int64_t> group;
    int64_t groups, groupSize;
    if (!reductionGroups(op, x.shape, group, groups, groupSize))
      return false;
    if (g.size() != groups)
      return fail(op, "the gradient has " + std::to_string(g.size()) +
                          " elements for " + std::to_string(groups) +
                          " reduced groups");
    std::vector<int64_t> argmax(groups, -1);
    for (int64_t i = 0; i < x.size(); ++i) {
      int64_t &best = argmax[group[i]];
      if (best < 0 || x.data[i] > x.data[best])
        best = i;
    }
    Tensor dx(x.shape);
    for (int64_t gi = 0; gi < groups; ++gi)
      dx.data[argmax[gi]] = g.data[gi];
    return set(op, 0, std::move(dx));
  }

  bool evalSliceGrad(Operation *op) {
    Tensor g = in(op, 0);
    Tensor dx = resultLike(op, 0);
    int64_t dim;
    if (!dimIndex(op, intAttr(op, "dim"), dx.shape.size(), dim))
      return false;
    const int64_t start = intAttr(op, "start");
    if (g.shape.size() != dx.shape.size())
      return fail(op, "the gradient's rank differs from the result's");
    const int64_t size = g.shape[dim];
    if (start < 0 || start + size > dx.shape[dim])
      return fail(op, "the gradient does not fit at the start");
    sliceCopy(dx.shape, dim, start, size, dx.data.data(), g.data.data(),
              /*toFull=*/true);
    return set(op, 0, std::move(dx));
  }

  const std::map<std::string, Tensor> &inputs_, &params_;
  const InterpreterOptions &options_;
  StepResult &result_;
  loom_ctx ctx_;
  llvm::DenseMap<Value, Tensor> values_;
  bool stop_ = false;
};

} // namespace

StepResult interpretTrainStep(Operation *step,
                              const std::map<std::string, Tensor> &inputs,
                              const std::map<std::string, Tensor> &params,
                              const InterpreterOptions &options) {
  StepResult result;
  Interpreter interpreter(inputs, params, options, result);
  result.ok = interpreter.run(step);
  return result;
}

} // namespace loom::test
