// Included by every .cu file. Under nvcc it is CUDA; compiled as host C++ with DILOCO_EMULATE
// it is the emulator of kernels/emu/emu.h, so the same kernel source runs in CPU tests.
// The two visible differences from plain CUDA:
//   DILOCO_LAUNCH(kernel, grid, block, smem, stream, args...)   instead of kernel<<<...>>>(args)
//   DILOCO_DYNAMIC_SHARED(type, name);                          instead of extern __shared__ type name[]
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define DILOCO_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define DILOCO_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#elif defined(DILOCO_EMULATE)
#include "kernels/emu/emu.h"
#else
// host code that only calls the wrappers: the runtime's types are enough
#include <cuda_runtime.h>
#endif
