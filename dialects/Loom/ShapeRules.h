//===- ShapeRules.h - shape and dtype rules of the loom ops -----*- C++ -*-===//
//
// The single statement of every loom op's shape rule. It is plain C++17 with
// no MLIR dependency, because two clients must agree on it: the DSL front end
// (which diagnoses a user's shape error at their line, before any IR exists)
// and the loom dialect's result-type inference and verifiers.
//
// Each rule takes operand shapes and the op's static attributes and returns
// the result shape, or std::nullopt with a one-sentence message in `error`.
//
//===----------------------------------------------------------------------===//

#ifndef LOOM_DIALECTS_LOOM_SHAPERULES_H
#define LOOM_DIALECTS_LOOM_SHAPERULES_H

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loom {
namespace shape {

/// Element types a loom tensor may have.
enum class DType { F32, F16, BF16, F64, I1, I8, I32, I64 };

/// The DSL / MLIR spelling: "f32", "bf16", "i32", ...
const char *dtypeName(DType t);
/// Parses a spelling produced by dtypeName.
std::optional<DType> parseDType(const std::string &name);
bool isFloat(DType t);
bool isInteger(DType t);
/// Size of one element in bytes.
int64_t dtypeBytes(DType t);

using Dims = std::vector<int64_t>;

/// A ranked tensor type: element type plus static dimensions.
struct TensorType {
  DType dtype = DType::F32;
  Dims dims;
  bool operator==(const TensorType &o) const {
    return dtype == o.dtype && dims == o.dims;
  }
  bool operator!=(const TensorType &o) const { return !(*this == o); }
  int64_t numElements() const;
};

/// "f32[16, 128]" (the DSL spelling) for messages.
std::string str(const TensorType &t);
std::string str(const Dims &d);

/// Largest dimension and element count accepted anywhere (2^40), so size
/// arithmetic never overflows int64.
constexpr int64_t kMaxElements = int64_t(1) << 40;

using Result = std::optional<TensorType>;

// Elementwise.
/// Same type in, same type out; `floatOnly` for exp/log/tanh/....
Result unary(const TensorType &x, bool floatOnly, std::string &error);
/// numpy broadcasting of add/sub/mul/div; element types must match.
Result broadcastBinary(const TensorType &a, const TensorType &b,
                       std::string &error);
/// numpy broadcasting of two dimension lists.
std::optional<Dims> broadcastDims(const Dims &a, const Dims &b,
                                  std::string &error);

// Linear algebra.
/// torch.matmul for rank >= 2: [..., m, k] @ [..., k, n] -> [..., m, n] with
/// the batch dimensions broadcast.
Result matmul(const TensorType &a, const TensorType &b, std::string &error);

// Normalisation and softmax (over the last dimension).
Result softmax(const TensorType &x, std::string &error);
/// g and b (b may be null, for rms_norm) are [last dim of x].
Result norm(const TensorType &x, const TensorType &g, const TensorType *b,
            std::string &error);

// Indexing and layout.
/// ids: integer [...]; table: float [V, D] -> [..., D].
Result embedding(const TensorType &ids, const TensorType &table,
                 std::string &error);
Result reshape(const TensorType &x, const Dims &shape, std::string &error);
/// perm must be a permutation of 0..rank-1.
Result transpose(const TensorType &x, const std::vector<int64_t> &perm,
                 std::string &error);
/// [B, T, D] -> [B, H, T, D/H].
Result splitHeads(const TensorType &x, int64_t heads, std::string &error);
/// [B, H, T, d] -> [B, T, H*d].
Result mergeHeads(const TensorType &x, std::string &error);
Result broadcastTo(const TensorType &x, const Dims &shape, std::string &error);
/// dims: the reduced dimensions (negative counts from the end), unique.
Result reduce(const TensorType &x, const std::vector<int64_t> &dims,
              bool keepdim, std::string &error);
Result concat(const std::vector<TensorType> &xs, int64_t dim,
              std::string &error);
/// Elements [start, end) of dimension dim.
Result slice(const TensorType &x, int64_t dim, int64_t start, int64_t end,
             std::string &error);
Result cast(const TensorType &x, DType to, std::string &error);

// Regularisation.
Result dropout(const TensorType &x, double p, std::string &error);

// Convolution and batch normalisation (NCHW).
/// conv2d(x [N, C, H, W], w [O, C, kh, kw]) with `stride` >= 1 and
/// `padding` >= 0 on both spatial dimensions: [N, O, (H + 2p - kh) / s + 1,
/// (W + 2p - kw) / s + 1]; both float of one element type.
Result conv2d(const TensorType &x, const TensorType &w, int64_t stride,
              int64_t padding, std::string &error);
/// batch_norm(x [N, C, ...], gamma [C], beta [C]): x's type (channels on
/// axis 1, statistics over every other axis); 0 < momentum <= 1, eps > 0.
Result batchNorm(const TensorType &x, const TensorType &gamma,
                 const TensorType &beta, double momentum, double eps,
                 std::string &error);

// Quantization. fake_quant(x, scale, zero_point): per tensor (scale and
// zero_point of rank 0) or per channel along `axis` (rank 1, one value per
// channel; axis already normalised); qmin < qmax.
Result fakeQuant(const TensorType &x, const TensorType &scale,
                 const TensorType &zeroPoint, int64_t axis, int64_t qmin,
                 int64_t qmax, std::string &error);

// Attention. q: [B, H, Tq, d], k: [B, H, Tk, d], v: [B, H, Tk, dv].
Result attention(const TensorType &q, const TensorType &k,
                 const TensorType &v, std::string &error);
/// As attention, with Tq == Tk, wg: [H, 2 d], bg: [H].
Result gatedAttention(const TensorType &q, const TensorType &k,
                      const TensorType &v, const TensorType &wg,
                      const TensorType &bg, std::string &error);

// Losses (scalar f32 results).
/// logits: float [..., C]; target: integer [...] (the leading dims).
Result crossEntropy(const TensorType &logits, const TensorType &target,
                    std::string &error);
Result mse(const TensorType &pred, const TensorType &target,
           std::string &error);

/// Normalises a possibly negative dimension index; nullopt if out of range.
std::optional<int64_t> normalizeDim(int64_t dim, size_t rank);

} // namespace shape
} // namespace loom

#endif // LOOM_DIALECTS_LOOM_SHAPERULES_H
