// Helpers shared by the CUDA kernels: warp and block reductions in a fixed order, and the
// dynamic shared memory opt-in of the host wrappers.
#pragma once
#include <climits>
#include <cstddef>

#include "kernels/cuda_compat.h"

namespace diloco {

// Dynamic shared memory a launch may ask for without raising the kernel's limit first.
constexpr size_t kDefaultDynamicSmemBytes = 48 * 1024;

// Call before launching `kernel` with `bytes` of dynamic shared memory. Above 48 KiB a GPU refuses
// the launch unless the kernel's own limit was raised first, which is what this does; the limit
// cannot go past the device's opt-in maximum (227 KiB on sm_90, 163 KiB on sm_80), and then this
// returns the error (cudaErrorInvalidValue) instead of a launch that would fail.
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel* kernel, size_t bytes) {
    if (bytes <= kDefaultDynamicSmemBytes) return cudaSuccess;
    if (bytes > (size_t)INT_MAX) return cudaErrorInvalidValue;
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum (or max) of v over the block; every thread gets the result. blockDim.x must be a multiple
// of 32 and at most 1024; `scratch` holds 32 floats of shared memory, free on entry.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < nwarps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();  // scratch may be reused right after
    return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = lane < nwarps ? scratch[lane] : -INFINITY;
    m = warp_max(m);
    __syncthreads();
    return m;
}

}  // namespace diloco
