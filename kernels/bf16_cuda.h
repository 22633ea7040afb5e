// bf16 storage in kernels: the type, and the loads and stores through which a kernel templated on
// its storage type T (float, or bf16) keeps fp32 arithmetic while reading and writing T. Mixed
// precision (--precision bf16) stores weights copies and activations in bf16; every kernel
// computes in fp32 and rounds once, when it stores (round to nearest even).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

namespace diloco {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = __float2bfloat16_rn(v); }

// Two floats as a bf16 pair in one 32-bit register: `lo` in bits 0..15 (the lower address in memory,
// and the lower-indexed element of an mma fragment).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &p, sizeof u);
    return u;
}

// Stores of packed pairs: one 4-byte (or 8-byte) store, where a memcpy into a bf16 pointer would
// compile to byte stores (the compiler knows only 2-byte alignment). dst 4- (8-) byte aligned.
__device__ __forceinline__ void store_bf16x2(bf16* dst, uint32_t pair) {
#if defined(__CUDACC__)
    *reinterpret_cast<uint32_t*>(dst) = pair;
#else
    memcpy(dst, &pair, 4);
#endif
}
__device__ __forceinline__ void store_bf16x4(bf16* dst, uint32_t lo, uint32_t hi) {
#if defined(__CUDACC__)
    *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
#else
    memcpy(dst, &lo, 4);
    memcpy(dst + 2, &hi, 4);
#endif
}

// Host wrappers take bf16 tensors as their 16-bit patterns (uint16_t*, the type host code has).
__host__ __device__ __forceinline__ bf16* as_bf16(uint16_t* p) { return reinterpret_cast<bf16*>(p); }
__host__ __device__ __forceinline__ const bf16* as_bf16(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

}  // namespace diloco
