//===- CudaContext.cpp - stream, cuBLASLt, error word, scratch -----------===//

#include "runtime/cuda/CudaContext.h"

#include <cstddef>
#include <string>

namespace loom::cuda {

void destroyGemmPlans(GemmPlans *plans); // Gemm.cpp

namespace {

std::string prefix(int rank, const char *kernel) {
  return "rank " + std::to_string(rank) + ": cuda: " + kernel + ": ";
}

const char *cublasStatusName(cublasStatus_t status) {
  switch (status) {
  case CUBLAS_STATUS_SUCCESS:
    return "CUBLAS_STATUS_SUCCESS";
  case CUBLAS_STATUS_NOT_INITIALIZED:
    return "CUBLAS_STATUS_NOT_INITIALIZED";
  case CUBLAS_STATUS_ALLOC_FAILED:
    return "CUBLAS_STATUS_ALLOC_FAILED";
  case CUBLAS_STATUS_INVALID_VALUE:
    return "CUBLAS_STATUS_INVALID_VALUE";
  case CUBLAS_STATUS_ARCH_MISMATCH:
    return "CUBLAS_STATUS_ARCH_MISMATCH";
  case CUBLAS_STATUS_MAPPING_ERROR:
    return "CUBLAS_STATUS_MAPPING_ERROR";
  case CUBLAS_STATUS_EXECUTION_FAILED:
    return "CUBLAS_STATUS_EXECUTION_FAILED";
  case CUBLAS_STATUS_INTERNAL_ERROR:
    return "CUBLAS_STATUS_INTERNAL_ERROR";
  case CUBLAS_STATUS_NOT_SUPPORTED:
    return "CUBLAS_STATUS_NOT_SUPPORTED";
  case CUBLAS_STATUS_LICENSE_ERROR:
    return "CUBLAS_STATUS_LICENSE_ERROR";
  default:
    return "unknown cuBLAS status";
  }
}

} // namespace

void checkCuda(cudaError_t status, const char *call, const char *kernel,
               int rank) {
  if (status == cudaSuccess)
    return;
  throw runtime::Error(prefix(rank, kernel) + call +
                       " failed: " + cudaGetErrorString(status) + " (" +
                       cudaGetErrorName(status) + ")");
}

void checkCublas(cublasStatus_t status, const char *call, const char *kernel,
                 int rank) {
  if (status == CUBLAS_STATUS_SUCCESS)
    return;
  throw runtime::Error(prefix(rank, kernel) + call +
                       " failed: " + cublasStatusName(status) + " (" +
                       std::to_string(int(status)) + ")");
}

void checkLaunch(const CudaContext &ctx, const char *kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    checkCuda(status, (std::string("launch of ") + kernel).c_str(), kernel,
              ctx.rank);
}

CudaContext::CudaContext(int device_, int rank_, uint64_t seed_)
    : device(device_), rank(rank_), seed(seed_) {
  const char *what = "context";
  try {
    LOOM_CUDA_CHECK(*this, cudaSetDevice(device), what);
    LOOM_CUDA_CHECK(*this,
                    cudaDeviceGetAttribute(&multiprocessors,
                                           cudaDevAttrMultiProcessorCount,
                                           device),
                    what);
    LOOM_CUDA_CHECK(
        *this, cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), what);
    LOOM_CUBLAS_CHECK(*this, cublasLtCreate(&lt), what);
    LOOM_CUDA_CHECK(*this, cudaMalloc(&ltWorkspace, kLtWorkspaceBytes), what);
    LOOM_CUDA_CHECK(
        *this,
        cudaMalloc(reinterpret_cast<void **>(&error), sizeof(DeviceError)),
        what);
    clearError();
    synchronize();
  } catch (...) {
    release();
    throw;
  }
}

CudaContext::~CudaContext() { release(); }

void CudaContext::release() {
  // Best effort: a destructor reports nothing (a sticky device error would
  // make every call fail), but it releases everything it holds.
  if (stream)
    cudaStreamSynchronize(stream);
  if (gemmPlans)
    destroyGemmPlans(gemmPlans);
  gemmPlans = nullptr;
  if (scratchBuffer)
    cudaFree(scratchBuffer);
  scratchBuffer = nullptr;
  scratchSize = 0;
  if (error)
    cudaFree(error);
  error = nullptr;
  if (ltWorkspace)
    cudaFree(ltWorkspace);
  ltWorkspace = nullptr;
  if (lt)
    cublasLtDestroy(lt);
  lt = nullptr;
  if (stream)
    cudaStreamDestroy(stream);
  stream = nullptr;
}

void CudaContext::reserveScratch(size_t bytes) {
  if (bytes <= scratchSize)
    return;
  const char *what = "scratch";
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  LOOM_CUDA_CHECK(*this, cudaStreamIsCapturing(stream, &capture), what);
  if (capture != cudaStreamCaptureStatusNone)
    throw runtime::Error(
        prefix(rank, what) + "the kernels need " + std::to_string(bytes) +
        " bytes of scratch, more than the " + std::to_string(scratchSize) +
        " reserved, while the stream is being captured; reserve it first "
        "(CudaContext::reserveScratch)");
  // Grow geometrically so that a sequence of slightly larger needs does not
  // reallocate every time. cudaFree waits for the kernels using the old one.
  size_t grown = scratchSize + scratchSize / 2;
  if (grown < bytes)
    grown = bytes;
  grown = (grown + 255) / 256 * 256;
  LOOM_CUDA_CHECK(*this, cudaStreamSynchronize(stream), what);
  if (scratchBuffer)
    LOOM_CUDA_CHECK(*this, cudaFree(scratchBuffer), what);
  scratchBuffer = nullptr;
  scratchSize = 0;
  LOOM_CUDA_CHECK(*this, cudaMalloc(&scratchBuffer, grown), what);
  scratchSize = grown;
}

void *CudaContext::scratch(size_t bytes, const char *kernel) {
  if (bytes > scratchSize) {
    try {
      reserveScratch(bytes);
    } catch (const runtime::Error &e) {
      throw runtime::Error(std::string(e.what()) + " (for " + kernel + ")");
    }
  }
  return scratchBuffer;
}

void CudaContext::clearError() {
  const char *what = "clear_error";
  LOOM_CUDA_CHECK(*this, cudaMemsetAsync(error, 0, sizeof(DeviceError), stream),
                  what);
  // a = all ones: the largest key, so the first report's atomicMin wins.
  LOOM_CUDA_CHECK(
      *this, cudaMemsetAsync(&error->a, 0xff, sizeof(int64_t), stream), what);
}

DeviceError CudaContext::readError() {
  DeviceError host{};
  LOOM_CUDA_CHECK(*this,
                  cudaMemcpyAsync(&host, error, sizeof host,
                                  cudaMemcpyDeviceToHost, stream),
                  "read_error");
  synchronize();
  return host;
}

void CudaContext::synchronize() {
  LOOM_CUDA_CHECK(*this, cudaStreamSynchronize(stream), "synchronize");
}

std::string describeDeviceError(const DeviceError &e,
                                const std::string &opName) {
  const std::string op = opName.empty() ? "op " + std::to_string(e.op) : opName;
  const uint64_t a = uint64_t(e.a);
  switch (e.code) {
  case kNoDeviceError:
    return "";
  case kEmbeddingIdOutOfRange:
    return op + ": embedding: id " + std::to_string(int32_t(uint32_t(a))) +
           " at position " + std::to_string(a >> 32) +
           " is outside the vocabulary [0, " + std::to_string(e.b) + ")";
  case kTargetOutOfRange:
    return op + ": cross_entropy: target " +
           std::to_string(int32_t(uint32_t(a))) + " at row " +
           std::to_string(a >> 32) + " is outside the classes [0, " +
           std::to_string(e.b) + ") and is not ignore_index";
  case kNotFinite:
    return "check-numerics: " + op + " produced " + ((a & 1) ? "inf" : "NaN") +
           " (element " + std::to_string(a >> 1) + " of " +
           std::to_string(e.b) + "); it is the first op of the step to do so";
  default:
    return op + ": unknown device error code " + std::to_string(e.code);
  }
}

} // namespace loom::cuda
