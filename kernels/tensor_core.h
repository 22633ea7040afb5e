// Tensor-core instructions and asynchronous copies for the bf16 kernels, as small functions: inline
// PTX under nvcc (sm_80 and later), the emulator's checked versions otherwise (kernels/emu/emu.h),
// so that every kernel using them runs in CPU tests against its twin.
//
//   mma_m16n8k16_bf16(d, a, b, c)  d = a b + c: a 16x16 bf16 (row) by 16x8 bf16 (col), fp32 c and d;
//                                  a, b, c, d in the PTX ISA's fragment layouts (spelt out in
//                                  kernels/emu/emu.cpp). The whole warp calls it together.
//   ldmatrix_x4(r, p) / _x4_trans   four 8x8 16-bit matrices from shared memory: lane 8m + j gives the
//                                  address of row j of matrix m (16 bytes, 16-byte aligned); register
//                                  m gets row lane/4, columns 2(lane%4) and +1 (of the transpose).
//   ldmatrix_x2(r, p) / _x2_trans   two matrices (lanes 0..15 give the addresses).
//   cp_async_16(dst, src, n)        16 bytes global -> shared, bytes past n (0..16) zero-filled.
//   cp_async_commit(), cp_async_wait<N>()   close a group of copies; wait until at most N are pending.
#pragma once
#include <cstdint>

#include "kernels/bf16_cuda.h"
#include "kernels/cuda_compat.h"

namespace diloco {

#if defined(__CUDACC__)

__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ uint32_t shared_address(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
}

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes = 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

#else

inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    emu::mma_bf16_m16n8k16(d, a, b, c);
}
inline void ldmatrix_x4(uint32_t r[4], const void* row) { emu::ldmatrix(4, false, row, r); }
inline void ldmatrix_x4_trans(uint32_t r[4], const void* row) { emu::ldmatrix(4, true, row, r); }
inline void ldmatrix_x2(uint32_t r[2], const void* row) {
    uint32_t all[4];
    emu::ldmatrix(2, false, row, all);
    r[0] = all[0], r[1] = all[1];
}
inline void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
    uint32_t all[4];
    emu::ldmatrix(2, true, row, all);
    r[0] = all[0], r[1] = all[1];
}
inline void cp_async_16(void* dst, const void* src, int src_bytes = 16) { emu::cp_async(dst, src, 16, src_bytes); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() { emu::cp_async_wait(N); }

#endif

}  // namespace diloco
