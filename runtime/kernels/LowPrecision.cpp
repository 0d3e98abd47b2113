//===- LowPrecision.cpp - bf16 and f16 GEMMs with f32 accumulation --------===//
//
// Mixed precision's matmuls: operands widened to f32 (exact for both
// formats), one f32 GEMM (oneDNN or the blocked one, through loom_gemm), and
// each output rounded once to nearest-even.
//
//===----------------------------------------------------------------------===//

#include "runtime/abi/loom_abi.h"
#include "runtime/kernels/HalfFloat.h"

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#if LOOM_HAVE_DNNL
#include <dnnl.h>
#endif

namespace {

using loom::kernels::fromBF16;
using loom::kernels::fromF16;
using loom::kernels::toBF16;
using loom::kernels::toF16;

template <float (*Widen)(uint16_t), uint16_t (*Narrow)(float)>
void gemm16(loom_ctx *ctx, int64_t batch, int32_t ta, int32_t tb, int64_t M,
            int64_t N, int64_t K, const uint16_t *A, int64_t sa,
            const uint16_t *B, int64_t sb, uint16_t *C, int64_t sc) {
  // Widen the distinct operand matrices once (a zero stride shares one).
  int64_t na = (sa ? batch : 1) * M * K, nb = (sb ? batch : 1) * K * N;
  std::vector<float> a(static_cast<size_t>(na)), b(static_cast<size_t>(nb)),
      c(static_cast<size_t>(batch * M * N));
  for (int64_t i = 0; i < na; ++i)
    a[i] = Widen(A[(sa ? (i / (M * K)) * sa : 0) + i % (M * K)]);
  for (int64_t i = 0; i < nb; ++i)
    b[i] = Widen(B[(sb ? (i / (K * N)) * sb : 0) + i % (K * N)]);
  loom_gemm(ctx, batch, ta, tb, M, N, K, a.data(), sa ? M * K : 0, b.data(),
            sb ? K * N : 0, c.data(), M * N, 1.0f, 0.0f);
  for (int64_t bi = 0; bi < batch; ++bi)
    for (int64_t i = 0; i < M * N; ++i)
      C[bi * sc + i] = Narrow(c[bi * M * N + i]);
}

#if LOOM_HAVE_DNNL
/// bf16 GEMMs through oneDNN's matmul primitive (AVX-512 BF16 / AMX where the
/// CPU has them), one primitive per shape, cached. Returns false when oneDNN
/// cannot build or run it, and the caller falls back to the widening path.
bool gemmBf16Dnnl(int64_t batch, int32_t ta, int32_t tb, int64_t M,
                  int64_t N, int64_t K, const uint16_t *A, int64_t sa,
                  const uint16_t *B, int64_t sb, uint16_t *C, int64_t sc) {
  static std::mutex mu;
  static dnnl_engine_t engine = nullptr;
  static dnnl_stream_t stream = nullptr;
  static bool broken = false;
  using Key = std::tuple<int64_t, int32_t, int32_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, int64_t>;
  struct Prim {
    dnnl_primitive_t prim = nullptr;
    dnnl_memory_desc_t src, wei, dst;
  };
  static std::map<Key, Prim> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (broken)
    return false;
  if (!engine) {
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) !=
            dnnl_success) {
      broken = true;
      return false;
    }
  }
  Key key{batch, ta, tb, M, N, K, sa, sb, sc};
  auto it = cache.find(key);
  if (it == cache.end()) {
    Prim p;
    // A: [batch|1, M, K], element (m, k) at m*K + k, or k*M + m transposed.
    dnnl_dims_t ad = {sa ? batch : 1, M, K},
                as = {sa ? sa : M * K, ta ? 1 : K, ta ? M : 1};
    dnnl_dims_t bd = {sb ? batch : 1, K, N},
                bs = {sb ? sb : K * N, tb ? 1 : N, tb ? K : 1};
    dnnl_dims_t cd = {batch, M, N}, cs = {sc ? sc : M * N, N, 1};
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = nullptr;
    if (dnnl_memory_desc_init_by_strides(&p.src, 3, ad, dnnl_bf16, as) ||
        dnnl_memory_desc_init_by_strides(&p.wei, 3, bd, dnnl_bf16, bs) ||
        dnnl_memory_desc_init_by_strides(&p.dst, 3, cd, dnnl_bf16, cs) ||
        dnnl_matmul_desc_init(&md, &p.src, &p.wei, nullptr, &p.dst) ||
        dnnl_primitive_desc_create(&pd, &md, nullptr, engine, nullptr) ||
        dnnl_primitive_create(&p.prim, pd)) {
      if (pd)
        dnnl_primitive_desc_destroy(pd);
      return false;
    }
    dnnl_primitive_desc_destroy(pd);
    it = cache.emplace(key, p).first;
  }
  Prim &p = it->second;
  dnnl_memory_t a = nullptr, b = nullptr, c = nullptr;
  bool ok =
      dnnl_memory_create(&a, &p.src, engine, const_cast<uint16_t *>(A)) ==
          dnnl_success &&
      dnnl_memory_create(&b, &p.wei, engine, const_cast<uint16_t *>(B)) ==
          dnnl_success &&
      dnnl_memory_create(&c, &p.dst, engine, C) == dnnl_success;
  if (ok) {
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
    ok = dnnl_primitive_execute(p.prim, stream, 3, args) == dnnl_success &&
         dnnl_stream_wait(stream) == dnnl_success;
  }
  for (dnnl_memory_t m : {a, b, c})
    if (m)
      dnnl_memory_destroy(m);
  return ok;
}
#endif

} // namespace

extern "C" void loom_gemm_bf16(loom_ctx *ctx, int64_t batch, int32_t ta,
                               int32_t tb, int64_t M, int64_t N, int64_t K,
                               const uint16_t *A, int64_t sa, const uint16_t *B,
                               int64_t sb, uint16_t *C, int64_t sc) {
#if LOOM_HAVE_DNNL
  if (K > 0 && gemmBf16Dnnl(batch, ta, tb, M, N, K, A, sa, B, sb, C, sc))
    return;
#endif
  gemm16<fromBF16, toBF16>(ctx, batch, ta, tb, M, N, K, A, sa, B, sb, C, sc);
}

extern "C" void loom_gemm_f16(loom_ctx *ctx, int64_t batch, int32_t ta,
                              int32_t tb, int64_t M, int64_t N, int64_t K,
                              const uint16_t *A, int64_t sa, const uint16_t *B,
                              int64_t sb, uint16_t *C, int64_t sc) {
  gemm16<fromF16, toF16>(ctx, batch, ta, tb, M, N, K, A, sa, B, sb, C, sc);
}
