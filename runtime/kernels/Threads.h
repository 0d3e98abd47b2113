//===- Threads.h - thread budget and scratch of the CPU kernels -*- C++ -*-===//
//
// Internal to runtime/kernels: how a kernel call takes the rank's thread
// budget from its context, runs small products on the calling thread, and
// keeps per-thread scratch buffers.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_KERNELS_THREADS_H
#define LOOM_RUNTIME_KERNELS_THREADS_H

#include "runtime/Context.h"

#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace loom::kernels::threads {

/// Multiply-adds below which a product runs on the calling thread alone:
/// waking the other OpenMP threads (futex waits under
/// OMP_WAIT_POLICY=passive) costs more than the product (the MLP's eval
/// step at batch 64: 0.2 ms on 2 threads, 0.02 ms on one).
inline constexpr int64_t kSmallGemmWork = int64_t(1) << 20;

/// v's data with room for n elements. It never shrinks: products of
/// different sizes alternate (a model's layers), and growing a vector
/// zero-fills what it adds.
template <typename T> inline T *scratch(std::vector<T> &v, int64_t n) {
  if (v.size() < size_t(n))
    v.resize(size_t(n));
  return v.data();
}

/// While alive, oneDNN (and any OpenMP region) runs on one thread when
/// `work` is below kSmallGemmWork.
class OneThreadIfSmall {
public:
  explicit OneThreadIfSmall(int64_t work) {
#ifdef _OPENMP
    threads_ = omp_get_max_threads();
    active = work < kSmallGemmWork && threads_ > 1;
    if (active)
      omp_set_num_threads(1);
#else
    (void)work;
#endif
  }
  ~OneThreadIfSmall() {
#ifdef _OPENMP
    if (active)
      omp_set_num_threads(threads_);
#endif
  }
  OneThreadIfSmall(const OneThreadIfSmall &) = delete;
  OneThreadIfSmall &operator=(const OneThreadIfSmall &) = delete;
  bool active = false;

private:
  int threads_ = 1;
};

/// Runs the kernels of this call on ctx->threads OpenMP threads (the rank's
/// thread budget); a context without one keeps the OpenMP default.
inline void useContextThreads(loom_ctx *ctx) {
#ifdef _OPENMP
  if (ctx && ctx->threads > 0 && omp_get_max_threads() != ctx->threads)
    omp_set_num_threads(ctx->threads);
#else
  (void)ctx;
#endif
}

} // namespace loom::kernels::threads

#endif // LOOM_RUNTIME_KERNELS_THREADS_H
