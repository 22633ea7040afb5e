// CUDA twin of residual_cpu.cpp: out = a + b, one thread per element; T = float or bf16 storage.
#include "kernels/bf16_cuda.h"
#include "kernels/cuda_compat.h"
#include "kernels/residual_cuda.h"

namespace diloco {

template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) store(out + i, load(a + i) + load(b + i));
}

template <typename T>
static cudaError_t residual_forward(T* out, const T* a, const T* b, long n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    const int block = 256;
    const long grid = (n + block - 1) / block;
    DILOCO_LAUNCH(residual_forward_kernel<T>, (unsigned)grid, block, 0, stream, out, a, b, n);
    return cudaGetLastError();
}

cudaError_t residual_forward_cuda(float* out, const float* a, const float* b, long n, cudaStream_t stream) {
    return residual_forward(out, a, b, n, stream);
}
cudaError_t residual_forward_cuda(uint16_t* out, const uint16_t* a, const uint16_t* b, long n, cudaStream_t stream) {
    return residual_forward(as_bf16(out), as_bf16(a), as_bf16(b), n, stream);
}

__global__ void bf16_copy_kernel(bf16* dst, const float* src, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

cudaError_t bf16_copy_cuda(uint16_t* dst, const float* src, long n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(bf16_copy_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, as_bf16(dst), src, n);
    return cudaGetLastError();
}

}  // namespace diloco
