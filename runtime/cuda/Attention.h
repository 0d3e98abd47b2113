//===- Attention.h - causal attention on the GPU (flash style) --*- C++ -*-===//
//
// The CUDA kernels behind loom_attention_fwd/bwd and
// loom_gated_attention_fwd/bwd (runtime/abi/loom_abi.h, SEMANTICS.md), with
// the semantics of the CPU templates in runtime/kernels/Kernels.h:
//
//   q: [B,H,Tq,D], k: [B,H,Tk,D], v: [B,H,Tk,Dv], all dense row-major;
//   out = softmax(q k^T / sqrt(D) + mask) v, the causal mask letting query t
//   see the keys <= t + (Tk - Tq); lse: [B,H,Tq] the rows' log-sum-exp
//   (-inf, and a zero output row, where a row sees no key).
//
// Flash-attention style: online softmax over key blocks, no T x T matrix in
// memory; the backward pass recomputes P from q, k and lse (FlashAttention-2)
// in two passes, one over key blocks (dk, dv) and one over query blocks (dq),
// so that every output element has one owner and a fixed summation order:
// results are bitwise repeatable (no atomics anywhere).
//
// Two element types:
//  - F32: float tensors, fp32 arithmetic (CUDA cores); any D, Dv <= 128.
//    The correctness path, compared against the CPU templates.
//  - BF16: q, k, v, out, attn, dout, dq, dk, dv as bf16 (uint16 bit
//    patterns), fp32 accumulation on the tensor cores (mma.sync m16n8k16);
//    lse, gate, wg, bg, dwg, dbg stay fp32. D == Dv in {32, 64, 128}.
//
// Everything is asynchronous on `stream` (a cudaStream_t; nullptr is the
// legacy default stream) and capturable in a CUDA graph: no allocation, no
// host synchronisation. The backward passes take a device workspace of
// *BackwardWorkspaceBytes() bytes. Each function returns an empty string on
// success and the cause otherwise (the failing call and CUDA's message).
//
// This header is plain C++ (no CUDA syntax).
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_CUDA_ATTENTION_H
#define LOOM_RUNTIME_CUDA_ATTENTION_H

#include <cstddef>
#include <cstdint>
#include <string>

namespace loom::cuda {

/// The sizes of one attention call (gated attention: Tq == Tk == T).
struct AttentionDims {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0, D = 0, Dv = 0;
  bool causal = true;
  /// q, k, v, out, attn, dout, dq, dk, dv laid out [B,T,H,D] (the heads of
  /// a time step side by side: the output of x @ wq before split_heads)
  /// instead of [B,H,T,D]; lse and gate stay [B,H,T]. BF16 only.
  bool interleaved = false;
};

/// Empty when the kernels of that element type handle `dims`, else why not.
std::string attentionSupportedF32(const AttentionDims &dims);
std::string attentionSupportedBF16(const AttentionDims &dims);

//--- Plain attention ---------------------------------------------------------

/// out: [B,H,Tq,Dv]; lse: [B,H,Tq] (may be null).
std::string attentionForwardF32(const AttentionDims &dims, const float *q,
                                const float *k, const float *v, float *out,
                                float *lse, void *stream);
std::string attentionForwardBF16(const AttentionDims &dims, const uint16_t *q,
                                 const uint16_t *k, const uint16_t *v,
                                 uint16_t *out, float *lse, void *stream);

/// Device workspace the backward passes need (bytes, 256-aligned pointer).
size_t attentionBackwardWorkspaceBytes(const AttentionDims &dims);

/// dq, dk, dv of the forward pass given its out and lse.
std::string attentionBackwardF32(const AttentionDims &dims, const float *q,
                                 const float *k, const float *v,
                                 const float *out, const float *lse,
                                 const float *dout, float *dq, float *dk,
                                 float *dv, void *workspace, void *stream);
std::string attentionBackwardBF16(const AttentionDims &dims, const uint16_t *q,
                                  const uint16_t *k, const uint16_t *v,
                                  const uint16_t *out, const float *lse,
                                  const uint16_t *dout, uint16_t *dq,
                                  uint16_t *dk, uint16_t *dv, void *workspace,
                                  void *stream);

//--- Gated attention (SEMANTICS.md) ------------------------------------------
//
// gate[b,h,t] = sigmoid([q;k][b,h,t,:] . wg[h,:] + bg[h]), wg: [H, 2D],
// bg: [H]; attn = attention(q,k,v) (saved), out = gate * attn. threshold < 0
// is exact; threshold >= 0 is the approximate mode: a row whose gate is below
// it outputs 0, has attn = 0 and lse = -inf, costs no attention work and gets
// no gradient. dims.Tq must equal dims.Tk.

std::string gatedAttentionForwardF32(const AttentionDims &dims, float threshold,
                                     const float *q, const float *k,
                                     const float *v, const float *wg,
                                     const float *bg, float *out, float *lse,
                                     float *gate, float *attn, void *stream);
std::string gatedAttentionForwardBF16(const AttentionDims &dims,
                                      float threshold, const uint16_t *q,
                                      const uint16_t *k, const uint16_t *v,
                                      const float *wg, const float *bg,
                                      uint16_t *out, float *lse, float *gate,
                                      uint16_t *attn, void *stream);

/// Bytes of device workspace for the gated backward passes.
size_t gatedAttentionBackwardWorkspaceBytes(const AttentionDims &dims);

/// With dz = (dout . attn) g (1 - g): the attention VJP of g * dout, plus
/// dz * wg[h,:D] into dq and dz * wg[h,D:] into dk; dwg[h] = sum over (b,t)
/// of dz [q; k], dbg[h] = sum of dz (summed in double, in a fixed order).
std::string gatedAttentionBackwardF32(const AttentionDims &dims,
                                      float threshold, const float *q,
                                      const float *k, const float *v,
                                      const float *wg, const float *lse,
                                      const float *gate, const float *attn,
                                      const float *dout, float *dq, float *dk,
                                      float *dv, float *dwg, float *dbg,
                                      void *workspace, void *stream);
std::string gatedAttentionBackwardBF16(
    const AttentionDims &dims, float threshold, const uint16_t *q,
    const uint16_t *k, const uint16_t *v, const float *wg, const float *lse,
    const float *gate, const uint16_t *attn, const uint16_t *dout,
    uint16_t *dq, uint16_t *dk, uint16_t *dv, float *dwg, float *dbg,
    void *workspace, void *stream);

} // namespace loom::cuda

#endif // LOOM_RUNTIME_CUDA_ATTENTION_H
