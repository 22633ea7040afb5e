// CUDA twin of residual_cpu.cpp: out = a + b, one thread per element.
#include "kernels/cuda_compat.h"
#include "kernels/residual_cuda.h"

namespace diloco {

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

cudaError_t residual_forward_cuda(float* out, const float* a, const float* b, long n,
                                  cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    const int block = 256;
    const long grid = (n + block - 1) / block;
    DILOCO_LAUNCH(residual_forward_kernel, (unsigned)grid, block, 0, stream, out, a, b, n);
    return cudaGetLastError();
}

}  // namespace diloco
