//===- HostDevice.h - functions compiled for the CPU and the GPU -*- C++ -*-===//
//
// LOOM_HOST_DEVICE marks inline functions the CUDA kernels share with the CPU
// kernels (Philox, the 16-bit formats): __host__ __device__ under nvcc,
// nothing for a host compiler.
//
//===----------------------------------------------------------------------===//
#ifndef LOOM_RUNTIME_KERNELS_HOSTDEVICE_H
#define LOOM_RUNTIME_KERNELS_HOSTDEVICE_H

#if defined(__CUDACC__)
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif

#endif // LOOM_RUNTIME_KERNELS_HOSTDEVICE_H
