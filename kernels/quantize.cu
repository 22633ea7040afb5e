// CUDA twin of quantize_cpu.cpp, built on the same per-value codec (quantize_codec.h).
// quantize, block formats: two kernels, so that blocks of any size (--quant-block, up to 65536)
//   spread over many threads: (1) one warp per block finds the absmax (lanes read neighbouring
//   values, the maximum is exact in any order, so the scale has the CPU codec's bits), (2) one
//   thread per payload byte of codes reads its block's scale back and encodes one value (int8) or
//   a pair (4 bits; blocks are even, so a pair never spans two blocks and no two threads share a
//   byte). bf16: one thread per value.
// dequantize_add: one thread per value. bytes: encode 8n read + payload, decode-add payload + 8n.
#include "kernels/quantize_codec.h"
#include "kernels/quantize_cuda.h"

namespace diloco {

using namespace codec;

__device__ __forceinline__ float top_of(int f) {
    return f == (int)QuantFormat::int8 ? 127.0f : (f == (int)QuantFormat::e2m1 ? 6.0f : 1.0f);
}

__device__ __forceinline__ uint8_t encode4(int f, float x, float s) {
    return f == (int)QuantFormat::e2m1 ? e2m1_encode(x, s) : e3m0_encode(x, s);
}

// One warp per block: the block's scale, as codec::block_scale computes it.
__global__ void quantize_scales_kernel(uint8_t* payload, const float* x, size_t n, int block, int f) {
    const size_t b = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    const size_t nb = (n + block - 1) / block;
    if (b >= nb) return;  // whole warps leave: b is the same for the 32 lanes
    const size_t i0 = b * block;
    const int count = (int)(n - i0 < (size_t)block ? n - i0 : (size_t)block);
    float m = 0.0f;
    int bad = 0;
    for (int k = lane; k < count; k += 32) {
        const float a = fabsf(x[i0 + k]);
        if (!(a <= 3.4028234663852886e38f)) bad = 1;  // NaN or infinity
        m = a > m ? a : m;
    }
    for (int d = 16; d > 0; d /= 2) {
        const float o = __shfl_xor_sync(0xFFFFFFFFu, m, d);
        m = o > m ? o : m;
        bad |= __shfl_xor_sync(0xFFFFFFFFu, bad, d);
    }
    if (lane == 0) {
        const float s = bad ? NAN : m / top_of(f);
        memcpy(payload + 4 * b, &s, 4);
    }
}

// One thread per byte of codes: value i (int8) or values i, i + 1 (4 bits), scaled by their block's s.
__global__ void quantize_codes_kernel(uint8_t* payload, const float* x, size_t n, int block, int f) {
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool pairs = f != (int)QuantFormat::int8;
    const size_t i = pairs ? 2 * t : t;
    if (i >= n) return;
    const size_t nb = (n + block - 1) / block;
    float s;
    memcpy(&s, payload + 4 * (i / block), 4);
    uint8_t* codes = payload + 4 * nb;
    if (!pairs) {
        codes[i] = (uint8_t)int8_encode(x[i], s);
        return;
    }
    uint8_t c = encode4(f, x[i], s);
    if (i + 1 < n) c |= (uint8_t)(encode4(f, x[i + 1], s) << 4);
    codes[t] = c;
}

__global__ void quantize_bf16_kernel(uint8_t* payload, const float* x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint16_t b = bf16_encode(x[i]);
    memcpy(payload + 2 * i, &b, 2);
}

__global__ void dequantize_add_kernel(float* acc, const uint8_t* payload, size_t n, int block, int f) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v;
    if (f == (int)QuantFormat::fp32) {
        memcpy(&v, payload + 4 * i, 4);
    } else if (f == (int)QuantFormat::bf16) {
        uint16_t b;
        memcpy(&b, payload + 2 * i, 2);
        v = bf16_decode(b);
    } else {
        const size_t nb = (n + block - 1) / block;
        float s;
        memcpy(&s, payload + 4 * (i / block), 4);
        const uint8_t* codes = payload + 4 * nb;
        if (f == (int)QuantFormat::int8) {
            v = int8_decode((int8_t)codes[i], s);
        } else {
            const uint8_t c = (codes[i / 2] >> (4 * (i % 2))) & 0xF;
            v = f == (int)QuantFormat::e2m1 ? e2m1_decode(c, s) : e3m0_decode(c, s);
        }
    }
    acc[i] += v;
}

cudaError_t quantize_cuda(uint8_t* payload, const float* x, size_t n, QuantFormat f, int block, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (f == QuantFormat::fp32) return cudaMemcpyAsync(payload, x, 4 * n, cudaMemcpyDeviceToDevice, stream);
    if (f == QuantFormat::bf16) {
        DILOCO_LAUNCH(quantize_bf16_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, payload, x, n);
        return cudaGetLastError();
    }
    check_quant_block(block);
    const size_t nb = (n + block - 1) / block;
    DILOCO_LAUNCH(quantize_scales_kernel, (unsigned)((nb * 32 + 127) / 128), 128, 0, stream, payload, x, n, block, (int)f);
    const size_t threads = f == QuantFormat::int8 ? n : (n + 1) / 2;
    DILOCO_LAUNCH(quantize_codes_kernel, (unsigned)((threads + 255) / 256), 256, 0, stream, payload, x, n, block, (int)f);
    return cudaGetLastError();
}

cudaError_t dequantize_add_cuda(float* acc, const uint8_t* payload, size_t n, QuantFormat f, int block, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (quant_has_blocks(f)) check_quant_block(block);
    DILOCO_LAUNCH(dequantize_add_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, acc, payload, n, block, (int)f);
    return cudaGetLastError();
}

}  // namespace diloco
