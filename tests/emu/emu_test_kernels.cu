// Small kernels for the emulator's own tests (tests/emu/test_emu.cpp): correct ones, deliberately
// broken ones that the emulator must catch, and launches a GPU would refuse. Compiled by nvcc too (so that they stay
// valid CUDA), but only ever run emulated: the broken ones would hang or misbehave on a GPU.
#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_kernels.h"

namespace diloco::emutest {

// Tree reduction through shared memory; blockDim.x a power of two.
__global__ void block_sum_kernel(float* out, const float* in, int n, bool with_barriers) {
    DILOCO_DYNAMIC_SHARED(float, s);
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? in[i] : 0.0f;
    if (with_barriers) __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        if (with_barriers) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

__global__ void warp_sum_kernel(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? in[i] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) out[i / 32] = v;
}

// out (cols, rows) = in (rows, cols)^T through a 32 x 33 shared tile; blockDim (32, 8).
__global__ void transpose_kernel(float* out, const float* in, int rows, int cols) {
    DILOCO_DYNAMIC_SHARED(float, tile);  // [32][33]: the padding column avoids bank conflicts
    const int x = blockIdx.x * 32 + threadIdx.x;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        const int y = blockIdx.y * 32 + k;
        if (x < cols && y < rows) tile[k * 33 + threadIdx.x] = in[(long)y * cols + x];
    }
    __syncthreads();
    const int ox = blockIdx.y * 32 + threadIdx.x;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        const int oy = blockIdx.x * 32 + k;
        if (ox < rows && oy < cols) out[(long)oy * rows + ox] = tile[threadIdx.x * 33 + k];
    }
}

// Broken: only half of the block reaches the barrier.
__global__ void divergent_barrier_kernel(float* out) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Broken: threads past n leave before the barrier the others wait at.
__global__ void early_exit_barrier_kernel(float* out, int n) {
    if ((int)threadIdx.x >= n) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Broken: each thread reads its right neighbour's slot, but the last slot is never written.
__global__ void uninitialised_shared_kernel(float* out) {
    DILOCO_DYNAMIC_SHARED(float, s);
    if (threadIdx.x + 1 < blockDim.x) s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Broken: a full-warp shuffle in a block of 48 threads, whose second warp has 16 lanes.
__global__ void partial_warp_shuffle_kernel(float* out) {
    float v = (float)threadIdx.x;
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// Broken: the last thread reads one element past the end of `in`.
__global__ void out_of_bounds_kernel(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + 1];
}

// Fills `n` floats of dynamic shared memory, then thread t reads back slot n - 1 - t (written by
// another thread): the whole allocation is there and usable. Two copies of the kernel, so that the
// limit raised for one leaves the other at the default.
__device__ void fill_shared(float* out, int n) {
    DILOCO_DYNAMIC_SHARED(float, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = (float)i;
    __syncthreads();
    out[threadIdx.x] = s[n - 1 - threadIdx.x];
}
__global__ void smem_default_kernel(float* out, int n) { fill_shared(out, n); }
__global__ void smem_raised_kernel(float* out, int n) { fill_shared(out, n); }

void fill_shared(float* out, size_t bytes, bool raised_kernel) {
    const int n = (int)(bytes / sizeof(float));
    if (raised_kernel) DILOCO_LAUNCH(smem_raised_kernel, 1, kSmemThreads, bytes, nullptr, out, n);
    else DILOCO_LAUNCH(smem_default_kernel, 1, kSmemThreads, bytes, nullptr, out, n);
}
int set_raised_kernel_limit(int bytes) {
    return (int)cudaFuncSetAttribute(smem_raised_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

void out_of_bounds(float* out, const float* in, int n) {
    DILOCO_LAUNCH(out_of_bounds_kernel, (n + 63) / 64, 64, 0, nullptr, out, in, n);
}

void block_sum(float* out, const float* in, int n, int block, bool with_barriers) {
    DILOCO_LAUNCH(block_sum_kernel, (n + block - 1) / block, block, block * sizeof(float), nullptr, out, in, n, with_barriers);
}
void warp_sum(float* out, const float* in, int n) {
    DILOCO_LAUNCH(warp_sum_kernel, (n + 127) / 128, 128, 0, nullptr, out, in, n);
}
void transpose(float* out, const float* in, int rows, int cols) {
    DILOCO_LAUNCH(transpose_kernel, dim3((cols + 31) / 32, (rows + 31) / 32), dim3(32, 8), 32 * 33 * sizeof(float),
                  nullptr, out, in, rows, cols);
}
void divergent_barrier(float* out, int block) { DILOCO_LAUNCH(divergent_barrier_kernel, 1, block, 0, nullptr, out); }
void early_exit_barrier(float* out, int block, int n) { DILOCO_LAUNCH(early_exit_barrier_kernel, 1, block, 0, nullptr, out, n); }
void uninitialised_shared(float* out, int block) {
    DILOCO_LAUNCH(uninitialised_shared_kernel, 1, block, block * sizeof(float), nullptr, out);
}
void partial_warp_shuffle(float* out) { DILOCO_LAUNCH(partial_warp_shuffle_kernel, 1, 48, 0, nullptr, out); }

}  // namespace diloco::emutest
