// CUDA twin of quantize_cpu.cpp, built on the same per-value codec (quantize_codec.h).
// quantize: block formats use one thread per 32-value block (scale, then 32 codes); bf16 one thread
//   per value. Nibble pairs are written whole by one thread, so no two threads share a byte.
// dequantize_add: one thread per value. bytes: 4n read + payload, or payload + 8n.
#include "kernels/quantize_codec.h"
#include "kernels/quantize_cuda.h"

namespace diloco {

using namespace codec;

__device__ __forceinline__ float top_of(int f) {
    return f == (int)QuantFormat::int8 ? 127.0f : (f == (int)QuantFormat::e2m1 ? 6.0f : 1.0f);
}

__global__ void quantize_blocks_kernel(uint8_t* payload, const float* x, size_t n, int f) {
    const size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t nb = (n + kQuantBlock - 1) / kQuantBlock;
    if (b >= nb) return;
    const size_t i0 = b * kQuantBlock;
    const int count = (int)(n - i0 < (size_t)kQuantBlock ? n - i0 : (size_t)kQuantBlock);
    const float s = block_scale(x + i0, count, top_of(f));
    memcpy(payload + 4 * b, &s, 4);
    uint8_t* codes = payload + 4 * nb;
    if (f == (int)QuantFormat::int8) {
        for (int k = 0; k < count; k++) codes[i0 + k] = (uint8_t)int8_encode(x[i0 + k], s);
        return;
    }
    for (int k = 0; k < count; k += 2) {  // i0 is even: value pairs never straddle two threads
        const float a = x[i0 + k];
        uint8_t c = f == (int)QuantFormat::e2m1 ? e2m1_encode(a, s) : e3m0_encode(a, s);
        if (k + 1 < count) {
            const float bb = x[i0 + k + 1];
            const uint8_t hi = f == (int)QuantFormat::e2m1 ? e2m1_encode(bb, s) : e3m0_encode(bb, s);
            c |= (uint8_t)(hi << 4);
        }
        codes[(i0 + k) / 2] = c;
    }
}

__global__ void quantize_bf16_kernel(uint8_t* payload, const float* x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint16_t b = bf16_encode(x[i]);
    memcpy(payload + 2 * i, &b, 2);
}

__global__ void dequantize_add_kernel(float* acc, const uint8_t* payload, size_t n, int f) {
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
        const size_t nb = (n + kQuantBlock - 1) / kQuantBlock;
        float s;
        memcpy(&s, payload + 4 * (i / kQuantBlock), 4);
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

cudaError_t quantize_cuda(uint8_t* payload, const float* x, size_t n, QuantFormat f, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    if (f == QuantFormat::fp32) return cudaMemcpyAsync(payload, x, 4 * n, cudaMemcpyDeviceToDevice, stream);
    if (f == QuantFormat::bf16) {
        DILOCO_LAUNCH(quantize_bf16_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, payload, x, n);
    } else {
        const size_t nb = (n + kQuantBlock - 1) / kQuantBlock;
        DILOCO_LAUNCH(quantize_blocks_kernel, (unsigned)((nb + 127) / 128), 128, 0, stream, payload, x, n, (int)f);
    }
    return cudaGetLastError();
}

cudaError_t dequantize_add_cuda(float* acc, const uint8_t* payload, size_t n, QuantFormat f, cudaStream_t stream) {
    if (n == 0) return cudaSuccess;
    DILOCO_LAUNCH(dequantize_add_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, acc, payload, n, (int)f);
    return cudaGetLastError();
}

}  // namespace diloco
