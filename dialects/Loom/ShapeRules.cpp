//===- ShapeRules.cpp - shape and dtype rules of the loom ops -------------===//

#include "ShapeRules.h"

#include <algorithm>
#include <sstream>

namespace loom {
namespace shape {

const char *dtypeName(DType t) {
  switch (t) {
  case DType::F32:
    return "f32";
  case DType::F16:
    return "f16";
  case DType::BF16:
    return "bf16";
  case DType::F64:
    return "f64";
  case DType::I1:
    return "i1";
  case DType::I8:
    return "i8";
  case DType::I32:
    return "i32";
  case DType::I64:
    return "i64";
  }
  return "?";
}

std::optional<DType> parseDType(const std::string &name) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I1,
                  DType::I8, DType::I32, DType::I64})
    if (name == dtypeName(t))
      return t;
  return std::nullopt;
}

bool isFloat(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 ||
         t == DType::F64;
}
bool isInteger(DType t) { return !isFloat(t) && t != DType::I1; }

int64_t dtypeBytes(DType t) {
  switch (t) {
  case DType::F64:
  case DType::I64:
    return 8;
  case DType::F32:
  case DType::I32:
    return 4;
  case DType::F16:
  case DType::BF16:
    return 2;
  case DType::I1:
  case DType::I8:
    return 1;
  }
  return 4;
}

int64_t TensorType::numElements() const {
  int64_t n = 1;
  for (int64_t d : dims)
    n *= d;
  return n;
}

std::string str(const Dims &d) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < d.size(); ++i)
    os << (i ? ", " : "") << d[i];
  os << ']';
  return os.str();
}

std::string str(const TensorType &t) { return dtypeName(t.dtype) + str(t.dims); }

std::optional<int64_t> normalizeDim(int64_t dim, size_t rank) {
  int64_t r = static_cast<int64_t>(rank);
  if (dim < -r || dim >= r)
    return std::nullopt;
  return dim < 0 ? dim + r : dim;
}

namespace {
Result fail(std::string &error, const std::string &msg) {
  error = msg;
  return std::nullopt;
}

bool requireFloat(const TensorType &t, const char *what, std::string &error) {
  if (isFloat(t.dtype))
    return true;
  error = std::string(what) + " must have a floating-point element type, got " +
          str(t);
  return false;
}

bool requireRank(const TensorType &t, size_t rank, const char *what,
                 std::string &error) {
  if (t.dims.size() == rank)
    return true;
  error = std::string(what) + " must have rank " + std::to_string(rank) +
          ", got " + str(t);
  return false;
}

/// Element count of `dims`, or nullopt when it exceeds kMaxElements.
std::optional<int64_t> checkedElements(const Dims &dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || d > kMaxElements)
      return std::nullopt;
    if (d != 0 && n > kMaxElements / d)
      return std::nullopt;
    n *= d;
  }
  return n;
}
} // namespace

Result unary(const TensorType &x, bool floatOnly, std::string &error) {
  if (floatOnly && !requireFloat(x, "operand", error))
    return std::nullopt;
  return x;
}

std::optional<Dims> broadcastDims(const Dims &a, const Dims &b,
                                  std::string &error) {
  size_t rank = std::max(a.size(), b.size());
  Dims out(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1) {
      error = "shapes " + str(a) + " and " + str(b) +
              " cannot be broadcast together (dimension " + std::to_string(i) +
              ": " + std::to_string(da) + " vs " + std::to_string(db) + ")";
      return std::nullopt;
    }
    out[i] = da == 1 ? db : da;
  }
  if (!checkedElements(out)) {
    error = "broadcasting " + str(a) + " and " + str(b) +
            " gives more than 2^40 elements";
    return std::nullopt;
  }
  return out;
}

Result broadcastBinary(const TensorType &a, const TensorType &b,
                       std::string &error) {
  if (a.dtype != b.dtype)
    return fail(error, "element types differ: " + str(a) + " and " + str(b) +
                           " (insert an explicit cast)");
  auto dims = broadcastDims(a.dims, b.dims, error);
  if (!dims)
    return std::nullopt;
  return TensorType{a.dtype, *dims};
}

Result matmul(const TensorType &a, const TensorType &b, std::string &error) {
  if (a.dtype != b.dtype)
    return fail(error, "matmul operands have different element types: " +
                           str(a) + " and " + str(b));
  if (a.dims.size() < 2 || b.dims.size() < 2)
    return fail(error, "matmul operands must have rank >= 2, got " + str(a) +
                           " @ " + str(b));
  int64_t m = a.dims[a.dims.size() - 2], k = a.dims.back();
  int64_t k2 = b.dims[b.dims.size() - 2], n = b.dims.back();
  if (k != k2)
    return fail(error, "matmul contraction dimensions differ: " + str(a) +
                           " @ " + str(b) + " (" + std::to_string(k) + " vs " +
                           std::to_string(k2) + ")");
  Dims ba(a.dims.begin(), a.dims.end() - 2), bb(b.dims.begin(), b.dims.end() - 2);
  auto batch = broadcastDims(ba, bb, error);
  if (!batch) {
    error = "matmul batch dimensions: " + error;
    return std::nullopt;
  }
  batch->push_back(m);
  batch->push_back(n);
  if (!checkedElements(*batch))
    return fail(error, "matmul result " + str(*batch) +
                           " has more than 2^40 elements");
  return TensorType{a.dtype, *batch};
}

Result softmax(const TensorType &x, std::string &error) {
  if (!requireFloat(x, "operand", error))
    return std::nullopt;
  if (x.dims.empty())
    return fail(error, "softmax needs rank >= 1, got a scalar");
  return x;
}

Result norm(const TensorType &x, const TensorType &g, const TensorType *b,
            std::string &error) {
  if (!requireFloat(x, "input", error))
    return std::nullopt;
  if (x.dims.empty())
    return fail(error, "normalisation needs rank >= 1, got a scalar");
  TensorType want{x.dtype, {x.dims.back()}};
  if (g.dims != want.dims)
    return fail(error, "gain must have shape " + str(want.dims) + ", got " +
                           str(g));
  if (b && b->dims != want.dims)
    return fail(error, "bias must have shape " + str(want.dims) + ", got " +
                           str(*b));
  if (g.dtype != x.dtype || (b && b->dtype != x.dtype))
    return fail(error, std::string(b ? "gain and bias" : "gain") +
                           " must have the input's element type " +
                           dtypeName(x.dtype));
  return x;
}

Result embedding(const TensorType &ids, const TensorType &table,
                 std::string &error) {
  if (!isInteger(ids.dtype))
    return fail(error, "embedding ids must be integers, got " + str(ids));
  if (!requireFloat(table, "embedding table", error) ||
      !requireRank(table, 2, "embedding table", error))
    return std::nullopt;
  TensorType out{table.dtype, ids.dims};
  out.dims.push_back(table.dims[1]);
  return out;
}

Result reshape(const TensorType &x, const Dims &shape, std::string &error) {
  auto n = checkedElements(shape);
  if (!n)
    return fail(error, "reshape target " + str(shape) +
                           " has a negative or too large dimension");
  if (*n != x.numElements())
    return fail(error, "cannot reshape " + str(x) + " (" +
                           std::to_string(x.numElements()) + " elements) to " +
                           str(shape) + " (" + std::to_string(*n) +
                           " elements)");
  return TensorType{x.dtype, shape};
}

Result transpose(const TensorType &x, const std::vector<int64_t> &perm,
                 std::string &error) {
  if (perm.size() != x.dims.size())
    return fail(error, "permutation " + str(perm) + " does not match rank " +
                           std::to_string(x.dims.size()) + " of " + str(x));
  std::vector<bool> seen(perm.size(), false);
  Dims out;
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(perm.size()) || seen[p])
      return fail(error, str(perm) + " is not a permutation of 0.." +
                             std::to_string(perm.size() - 1));
    seen[p] = true;
    out.push_back(x.dims[p]);
  }
  return TensorType{x.dtype, out};
}

Result splitHeads(const TensorType &x, int64_t heads, std::string &error) {
  if (!requireRank(x, 3, "split_heads input", error))
    return std::nullopt;
  if (heads <= 0)
    return fail(error, "split_heads: heads must be >= 1, got " +
                           std::to_string(heads));
  if (x.dims[2] % heads != 0)
    return fail(error, "split_heads: " + std::to_string(heads) +
                           " heads do not divide the channel dimension " +
                           std::to_string(x.dims[2]));
  return TensorType{x.dtype, {x.dims[0], heads, x.dims[1], x.dims[2] / heads}};
}

Result mergeHeads(const TensorType &x, std::string &error) {
  if (!requireRank(x, 4, "merge_heads input", error))
    return std::nullopt;
  return TensorType{x.dtype, {x.dims[0], x.dims[2], x.dims[1] * x.dims[3]}};
}

Result broadcastTo(const TensorType &x, const Dims &shape, std::string &error) {
  if (!checkedElements(shape))
    return fail(error, "broadcast target " + str(shape) +
                           " has a negative or too large dimension");
  auto dims = broadcastDims(x.dims, shape, error);
  if (!dims)
    return std::nullopt;
  if (*dims != shape)
    return fail(error, "cannot broadcast " + str(x) + " to " + str(shape));
  return TensorType{x.dtype, shape};
}

Result reduce(const TensorType &x, const std::vector<int64_t> &dims,
              bool keepdim, std::string &error) {
  std::vector<bool> reduced(x.dims.size(), false);
  for (int64_t d : dims) {
    auto nd = normalizeDim(d, x.dims.size());
    if (!nd)
      return fail(error, "reduction dimension " + std::to_string(d) +
                             " is out of range for " + str(x));
    if (reduced[*nd])
      return fail(error, "reduction dimension " + std::to_string(d) +
                             " is listed twice");
    reduced[*nd] = true;
  }
  Dims out;
  for (size_t i = 0; i < x.dims.size(); ++i) {
    if (!reduced[i])
      out.push_back(x.dims[i]);
    else if (keepdim)
      out.push_back(1);
  }
  return TensorType{x.dtype, out};
}

Result concat(const std::vector<TensorType> &xs, int64_t dim,
              std::string &error) {
  if (xs.empty())
    return fail(error, "concat needs at least one operand");
  auto nd = normalizeDim(dim, xs[0].dims.size());
  if (!nd)
    return fail(error, "concat dimension " + std::to_string(dim) +
                           " is out of range for " + str(xs[0]));
  TensorType out = xs[0];
  for (size_t i = 1; i < xs.size(); ++i) {
    const TensorType &t = xs[i];
    bool ok = t.dtype == out.dtype && t.dims.size() == out.dims.size();
    for (size_t j = 0; ok && j < t.dims.size(); ++j)
      ok = j == static_cast<size_t>(*nd) || t.dims[j] == out.dims[j];
    if (!ok)
      return fail(error, "concat operand " + std::to_string(i) + " " + str(t) +
                             " does not match " + str(xs[0]) +
                             " outside dimension " + std::to_string(*nd));
    out.dims[*nd] += t.dims[*nd];
  }
  return out;
}

Result slice(const TensorType &x, int64_t dim, int64_t start, int64_t end,
             std::string &error) {
  auto nd = normalizeDim(dim, x.dims.size());
  if (!nd)
    return fail(error, "slice dimension " + std::to_string(dim) +
                           " is out of range for " + str(x));
  if (start < 0 || end > x.dims[*nd] || start >= end)
    return fail(error, "slice [" + std::to_string(start) + ", " +
                           std::to_string(end) +
                           ") is empty or outside dimension " +
                           std::to_string(*nd) + " of size " +
                           std::to_string(x.dims[*nd]));
  TensorType out = x;
  out.dims[*nd] = end - start;
  return out;
}

Result cast(const TensorType &x, DType to, std::string &) {
  return TensorType{to, x.dims};
}

Result conv2d(const TensorType &x, const TensorType &w, int64_t stride,
              int64_t padding, std::string &error) {
  if (!requireFloat(x, "conv2d input", error) ||
      !requireFloat(w, "conv2d weight", error))
    return std::nullopt;
  if (x.dims.size() != 4)
    return fail(error, "conv2d input must be [N, C, H, W], got " + str(x));
  if (w.dims.size() != 4)
    return fail(error, "conv2d weight must be [out, in, kh, kw], got " + str(w));
  if (x.dtype != w.dtype)
    return fail(error, "conv2d input " + str(x) + " and weight " + str(w) +
                           " must have one element type");
  if (w.dims[1] != x.dims[1])
    return fail(error, "conv2d weight " + str(w) + " takes " +
                           std::to_string(w.dims[1]) + " input channels, the "
                           "input " + str(x) + " has " +
                           std::to_string(x.dims[1]));
  if (stride < 1)
    return fail(error, "conv2d stride must be at least 1, got " +
                           std::to_string(stride));
  if (padding < 0 || padding > (int64_t(1) << 20))
    return fail(error, "conv2d padding must be in [0, 2^20], got " +
                           std::to_string(padding));
  Dims out = {x.dims[0], w.dims[0]};
  for (int d = 0; d < 2; ++d) {
    int64_t span = x.dims[2 + d] + 2 * padding - w.dims[2 + d];
    if (w.dims[2 + d] < 1 || span < 0)
      return fail(error, "conv2d kernel " + str(w) + " is larger than the "
                             "padded input " + str(x) + " (padding " +
                             std::to_string(padding) + ")");
    out.push_back(span / stride + 1);
  }
  return TensorType{x.dtype, out};
}

Result batchNorm(const TensorType &x, const TensorType &gamma,
                 const TensorType &beta, double momentum, double eps,
                 std::string &error) {
  if (!requireFloat(x, "batch_norm input", error))
    return std::nullopt;
  if (x.dims.size() < 2)
    return fail(error, "batch_norm input must be [N, C, ...], got " + str(x));
  Dims want = {x.dims[1]};
  if (gamma.dims != want || beta.dims != want)
    return fail(error, "batch_norm gamma and beta must have shape " +
                           str(want) + " (the channels, axis 1 of " + str(x) +
                           "), got " + str(gamma) + " and " + str(beta));
  if (gamma.dtype != x.dtype || beta.dtype != x.dtype)
    return fail(error, std::string("batch_norm gamma and beta must have the "
                                   "input's element type ") +
                           dtypeName(x.dtype));
  if (!(momentum > 0 && momentum <= 1))
    return fail(error, "batch_norm momentum must be in (0, 1], got " +
                           std::to_string(momentum));
  if (!(eps > 0))
    return fail(error, "batch_norm eps must be positive, got " +
                           std::to_string(eps));
  return x;
}

Result fakeQuant(const TensorType &x, const TensorType &scale,
                 const TensorType &zeroPoint, int64_t axis, int64_t qmin,
                 int64_t qmax, std::string &error) {
  if (!requireFloat(x, "fake_quant input", error) ||
      !requireFloat(scale, "fake_quant scale", error) ||
      !requireFloat(zeroPoint, "fake_quant zero_point", error))
    return std::nullopt;
  if (scale.dims != zeroPoint.dims)
    return fail(error, "fake_quant scale " + str(scale.dims) +
                           " and zero_point " + str(zeroPoint.dims) +
                           " must have the same shape");
  if (scale.dims.size() > 1)
    return fail(error, "fake_quant scale must be a scalar (per tensor) or a "
                       "vector (per channel), got " + str(scale.dims));
  if (scale.dims.size() == 1) {
    if (axis < 0 || axis >= int64_t(x.dims.size()))
      return fail(error, "fake_quant axis " + std::to_string(axis) +
                             " is outside the input " + str(x.dims));
    if (scale.dims[0] != x.dims[size_t(axis)])
      return fail(error, "fake_quant has " + std::to_string(scale.dims[0]) +
                             " per-channel scales for " +
                             std::to_string(x.dims[size_t(axis)]) +
                             " channels (axis " + std::to_string(axis) +
                             " of " + str(x.dims) + ")");
  }
  if (!(qmin < qmax))
    return fail(error, "fake_quant needs qmin < qmax, got [" +
                           std::to_string(qmin) + ", " + std::to_string(qmax) +
                           "]");
  return x;
}

Result dropout(const TensorType &x, double p, std::string &error) {
  if (!requireFloat(x, "dropout input", error))
    return std::nullopt;
  if (!(p >= 0.0 && p < 1.0))
    return fail(error, "dropout probability must be in [0, 1), got " +
                           std::to_string(p));
  return x;
}

Result attention(const TensorType &q, const TensorType &k, const TensorType &v,
                 std::string &error) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    if (!requireRank(*t, 4, name, error) || !requireFloat(*t, name, error))
      return std::nullopt;
  }
  if (q.dtype != k.dtype || q.dtype != v.dtype)
    return fail(error, "q, k and v must have the same element type");
  if (q.dims[0] != k.dims[0] || q.dims[1] != k.dims[1] ||
      k.dims[0] != v.dims[0] || k.dims[1] != v.dims[1])
    return fail(error, "q " + str(q.dims) + ", k " + str(k.dims) + " and v " +
                           str(v.dims) +
                           " must agree in batch and heads ([B, H, T, d])");
  if (q.dims[3] != k.dims[3])
    return fail(error, "q and k head dimensions differ: " +
                           std::to_string(q.dims[3]) + " vs " +
                           std::to_string(k.dims[3]));
  if (k.dims[2] != v.dims[2])
    return fail(error, "k and v sequence lengths differ: " +
                           std::to_string(k.dims[2]) + " vs " +
                           std::to_string(v.dims[2]));
  return TensorType{q.dtype, {q.dims[0], q.dims[1], q.dims[2], v.dims[3]}};
}

Result gatedAttention(const TensorType &q, const TensorType &k,
                      const TensorType &v, const TensorType &wg,
                      const TensorType &bg, std::string &error) {
  auto out = attention(q, k, v, error);
  if (!out)
    return std::nullopt;
  if (q.dims[2] != k.dims[2])
    return fail(error, "gated_attention gates on [q; k] per position, so q "
                       "and k need the same sequence length (" +
                           std::to_string(q.dims[2]) + " vs " +
                           std::to_string(k.dims[2]) + ")");
  int64_t h = q.dims[1], d = q.dims[3];
  if (wg.dims != Dims{h, 2 * d} || wg.dtype != q.dtype)
    return fail(error, "gate weight must be " +
                           str(TensorType{q.dtype, {h, 2 * d}}) +
                           " ([heads, 2 * head_dim]), got " + str(wg));
  if (bg.dims != Dims{h} || bg.dtype != q.dtype)
    return fail(error, "gate bias must be " + str(TensorType{q.dtype, {h}}) +
                           " ([heads]), got " + str(bg));
  return out;
}

Result crossEntropy(const TensorType &logits, const TensorType &target,
                    std::string &error) {
  if (!requireFloat(logits, "logits", error))
    return std::nullopt;
  if (!isInteger(target.dtype))
    return fail(error, "cross_entropy targets must be integer class ids, got " +
                           str(target));
  if (logits.dims.empty() ||
      Dims(logits.dims.begin(), logits.dims.end() - 1) != target.dims)
    return fail(error, "cross_entropy: targets " + str(target.dims) +
                           " must match the logits " + str(logits.dims) +
                           " without the class dimension");
  return TensorType{DType::F32, {}};
}

Result mse(const TensorType &pred, const TensorType &target,
           std::string &error) {
  if (!requireFloat(pred, "prediction", error))
    return std::nullopt;
  if (pred != target)
    return fail(error, "mse operands must have the same type, got " +
                           str(pred) + " and " + str(target));
  return TensorType{DType::F32, {}};
}

} // namespace shape
} // namespace loom
