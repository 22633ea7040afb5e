// DILOCO_HD marks a small function that the CPU code and the CUDA kernels share, so that both
// compute the same bits by construction: __host__ __device__ under nvcc, plain inline otherwise
// (the CPU build, and the emulator, whose kernels are host code).
#pragma once

#if defined(__CUDACC__)
#define DILOCO_HD __host__ __device__ __forceinline__
#else
#define DILOCO_HD inline
#endif
