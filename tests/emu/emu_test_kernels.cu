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

// ---- tensor-core instructions ----------------------------------------------------------------------
#include "kernels/tensor_core.h"

namespace diloco::emutest {

// One warp: d (16x8) = a (16x16, row-major bf16 bits) b (16x8, row-major bf16 bits) + c (16x8),
// each lane loading its fragments straight from global memory by the PTX ISA's formulas, written
// here independently of the emulator's.
__global__ void mma_direct_kernel(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
    const int lane = threadIdx.x, gid = lane >> 2, tig = lane % 4;
    uint32_t af[4], bf[2];
    float cf[4], df[4];
    for (int r = 0; r < 4; r++) {  // register r holds a_{2r} (low half) and a_{2r+1}
        const int row = gid + (r % 2 == 1 ? 8 : 0), col = tig * 2 + (r >= 2 ? 8 : 0);
        af[r] = (uint32_t)a[row * 16 + col] | (uint32_t)a[row * 16 + col + 1] << 16;
    }
    for (int r = 0; r < 2; r++) {  // register r holds b_{2r}, b_{2r+1}: rows k, k+1 of column gid
        const int k = tig * 2 + r * 8;
        bf[r] = (uint32_t)b[k * 8 + gid] | (uint32_t)b[(k + 1) * 8 + gid] << 16;
    }
    for (int i = 0; i < 4; i++) cf[i] = c[(gid + (i >= 2 ? 8 : 0)) * 8 + tig * 2 + (i & 1)];
    mma_m16n8k16_bf16(df, af, bf, cf);
    for (int i = 0; i < 4; i++) d[(gid + (i >= 2 ? 8 : 0)) * 8 + tig * 2 + (i & 1)] = df[i];
}

// One warp, the way attention and matmul kernels load operands: a (16x16 row-major) and bt (8x16
// row-major: b transposed, n by k) staged into shared memory, a by ldmatrix_x4, b by ldmatrix_x2 on
// bt's rows; or, with b_by_trans, b (16x8 row-major, k by n) by ldmatrix_x2_trans. d = a b + 0.
__global__ void mma_ldmatrix_kernel(float* d, const uint16_t* a, const uint16_t* b_or_bt, bool b_by_trans) {
    DILOCO_DYNAMIC_SHARED(uint16_t, smem);  // a: 16 x 16, then b: 128 elements
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) smem[i] = a[i];
    for (int i = lane; i < 128; i += 32) smem[256 + i] = b_or_bt[i];
    __syncwarp();
    uint32_t af[4], bf[2];
    ldmatrix_x4(af, smem + (lane % 16) * 16 + (lane / 16) * 8);  // matrices: rows 0-7|8-15 x cols 0-7|8-15
    if (b_by_trans) ldmatrix_x2_trans(bf, smem + 256 + (lane % 16) * 8);  // rows k 0-7, then 8-15
    else ldmatrix_x2(bf, smem + 256 + (lane % 8) * 16 + (lane / 8 % 2) * 8);  // bt rows n, cols k 0-7 | 8-15
    float cf[4] = {0, 0, 0, 0}, df[4];
    mma_m16n8k16_bf16(df, af, bf, cf);
    const int gid = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; i++) d[(gid + (i >= 2 ? 8 : 0)) * 8 + tig * 2 + (i & 1)] = df[i];
}

// One warp: the 16x16 tile `a` staged in shared memory; each lane writes its four ldmatrix_x4
// registers (lane 8m + j pointing at row j of matrix m = the 8x8 block (m % 2, m / 2)) to out[lane*4..].
__global__ void ldmatrix_kernel(uint32_t* out, const uint16_t* a, bool trans) {
    DILOCO_DYNAMIC_SHARED(uint16_t, smem);
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) smem[i] = a[i];
    __syncwarp();
    uint32_t r[4];
    const uint16_t* row = smem + (lane % 16) * 16 + (lane / 16) * 8;
    if (trans) ldmatrix_x4_trans(r, row);
    else ldmatrix_x4(r, row);
    for (int m = 0; m < 4; m++) out[lane * 4 + m] = r[m];
}

// Broken: ldmatrix straight from global memory.
__global__ void ldmatrix_global_kernel(uint32_t* out, const uint16_t* a) {
    uint32_t r[4];
    ldmatrix_x4(r, a + (threadIdx.x % 16) * 16);
    out[threadIdx.x] = r[0];
}

// cp.async: `block` threads copy n floats (n % 4 == 0) to shared memory in two commit groups (the
// first half, then the second), then read back per `mode`:
//   0: wait for both, barrier, read all (correct);
//   1: wait until one group is pending, barrier, read all (the second half is still in flight);
//   2: read without waiting at all;
// with src_bytes < 16 each copy fills its last 16 - src_bytes bytes with zeros.
__global__ void cp_async_kernel(float* out, const float* in, int n, int mode, int src_bytes) {
    DILOCO_DYNAMIC_SHARED(float, s);
    const int chunks = n / 4, half = chunks / 2;
    for (int c = threadIdx.x; c < half; c += blockDim.x) cp_async_16(s + 4 * c, in + 4 * c, src_bytes);
    cp_async_commit();
    for (int c = half + threadIdx.x; c < chunks; c += blockDim.x) cp_async_16(s + 4 * c, in + 4 * c, src_bytes);
    cp_async_commit();
    if (mode == 0) cp_async_wait<0>();
    if (mode == 1) cp_async_wait<1>();
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = s[i];
}

// Broken: a cp.async destination 4 bytes off 16-byte alignment.
__global__ void cp_async_misaligned_kernel(float* out, const float* in) {
    DILOCO_DYNAMIC_SHARED(float, s);
    cp_async_16(s + 1, in);
    cp_async_commit();
    cp_async_wait<0>();
    out[threadIdx.x] = s[1];
}

void mma_direct(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
    DILOCO_LAUNCH(mma_direct_kernel, 1, 32, 0, nullptr, d, a, b, c);
}
void mma_ldmatrix(float* d, const uint16_t* a, const uint16_t* b_or_bt, bool b_by_trans) {
    DILOCO_LAUNCH(mma_ldmatrix_kernel, 1, 32, (256 + 128) * sizeof(uint16_t), nullptr, d, a, b_or_bt, b_by_trans);
}
void ldmatrix_x4_tile(uint32_t* out, const uint16_t* a, bool trans) {
    DILOCO_LAUNCH(ldmatrix_kernel, 1, 32, 256 * sizeof(uint16_t), nullptr, out, a, trans);
}
void ldmatrix_from_global(uint32_t* out, const uint16_t* a) { DILOCO_LAUNCH(ldmatrix_global_kernel, 1, 32, 0, nullptr, out, a); }
void cp_async_copy(float* out, const float* in, int n, int block, int mode, int src_bytes) {
    DILOCO_LAUNCH(cp_async_kernel, 1, block, n * sizeof(float), nullptr, out, in, n, mode, src_bytes);
}
void cp_async_misaligned(float* out, const float* in) {
    DILOCO_LAUNCH(cp_async_misaligned_kernel, 1, 1, 64, nullptr, out, in);
}

}  // namespace diloco::emutest
