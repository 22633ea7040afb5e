// Included by every .cu file. Under nvcc it is CUDA; compiled as host C++ with DILOCO_EMULATE
// it is the emulator of kernels/emu/emu.h, so the same kernel source runs in CPU tests.
// The two visible differences from plain CUDA:
//   DILOCO_LAUNCH(kernel, grid, block, smem, stream, args...)   instead of kernel<<<...>>>(args)
//   DILOCO_DYNAMIC_SHARED(type, name);                          instead of extern __shared__ type name[]
// With DILOCO_CUDA_SYNC=1 in the environment, every DILOCO_LAUNCH is followed by
// cudaGetLastError and cudaDeviceSynchronize, and a failure throws an Error naming the kernel.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/common.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define DILOCO_LAUNCH(kernel, grid, block, smem, stream, ...)                  \
    do {                                                                       \
        kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__);            \
        ::diloco::after_launch(#kernel);                                       \
    } while (0)
#define DILOCO_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#elif defined(DILOCO_EMULATE)
#include "kernels/emu/emu.h"
#else
// host code that only calls the wrappers: the runtime's types are enough
#include <cuda_runtime.h>
#endif

namespace diloco {

// -1 until the environment is read, then 0 or 1. A constant-initialised atomic: reading it costs
// one load, and no guard.
inline std::atomic<int>& cuda_sync_flag() {
    static std::atomic<int> flag{-1};
    return flag;
}

// DILOCO_CUDA_SYNC=1: kernels run one at a time and report their faults at their own launch,
// instead of at whatever call next synchronises.
inline bool cuda_sync_enabled() {
    int f = cuda_sync_flag().load(std::memory_order_relaxed);
    if (f < 0) {
        const char* e = std::getenv("DILOCO_CUDA_SYNC");
        f = e && std::strcmp(e, "1") == 0;
        cuda_sync_flag().store(f, std::memory_order_relaxed);
    }
    return f == 1;
}

// Reads DILOCO_CUDA_SYNC again at the next launch (for tests that change it with setenv).
inline void cuda_sync_reread_env() { cuda_sync_flag().store(-1, std::memory_order_relaxed); }

// Called by DILOCO_LAUNCH after every launch. Not usable while a stream is being captured into a
// graph (cudaDeviceSynchronize is not allowed then): the trainer captures none in this mode.
inline void after_launch(const char* kernel) {
    if (!cuda_sync_enabled()) return;
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
        throw Error(std::string("CUDA: kernel ") + kernel + " (DILOCO_CUDA_SYNC=1): " + cudaGetErrorString(e));
}

}  // namespace diloco
