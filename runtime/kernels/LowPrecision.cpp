//===- LowPrecision.cpp - bf16 and f16 GEMMs with f32 accumulation --------===//
//
// Mixed precision's matmuls: operands widened to f32 (exact for both
// formats), one f32 GEMM (oneDNN or the blocked one, through loom_gemm), and
// each output rounded once to nearest-even.
//
//===----------------------------------------------------------------------===//

#include "runtime/abi/loom_abi.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace {

float fromBF16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t toBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f))
    return static_cast<uint16_t>((u >> 16) | 0x40); // a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

float fromF16(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu,
           mant = h & 0x3ffu, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else { // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      u = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t toF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu >= 0x7f800000u) // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0));
  if (absu >= 0x477ff000u) // rounds to >= 65520: overflow to inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  if (absu < 0x38800000u) { // below the smallest normal: subnormal or zero
    float a;
    std::memcpy(&a, &absu, sizeof a);
    // Scale so the subnormal step (2^-24) is one unit, round to even.
    float scaled = a * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t exp = ((absu >> 23) - 127 + 15) << 10;
  uint32_t mant = absu & 0x7fffffu;
  uint32_t h = exp | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
    ++h; // carries into the exponent correctly
  return static_cast<uint16_t>(sign | h);
}

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

} // namespace

extern "C" void loom_gemm_bf16(loom_ctx *ctx, int64_t batch, int32_t ta,
                               int32_t tb, int64_t M, int64_t N, int64_t K,
                               const uint16_t *A, int64_t sa, const uint16_t *B,
                               int64_t sb, uint16_t *C, int64_t sc) {
  gemm16<fromBF16, toBF16>(ctx, batch, ta, tb, M, N, K, A, sa, B, sb, C, sc);
}

extern "C" void loom_gemm_f16(loom_ctx *ctx, int64_t batch, int32_t ta,
                              int32_t tb, int64_t M, int64_t N, int64_t K,
                              const uint16_t *A, int64_t sa, const uint16_t *B,
                              int64_t sb, uint16_t *C, int64_t sc) {
  gemm16<fromF16, toF16>(ctx, batch, ta, tb, M, N, K, A, sa, B, sb, C, sc);
}
