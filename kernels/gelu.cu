// CUDA twin of gelu_cpu.cpp: one thread per element (grid-stride). bytes: fwd 8n, bwd 12n.
#include "kernels/gelu_cuda.h"

namespace diloco {

#define GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

__global__ void gelu_forward_kernel(float* out, const float* inp, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float x = inp[i];
        const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        const float th = tanhf(u);
        const float grad = 0.5f * (1.0f + th) +
                           0.5f * x * (1.0f - th * th) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = dout[i] * grad;
    }
}

static unsigned grid_for(long n) {
    const long blocks = (n + 255) / 256;
    return (unsigned)(blocks < 65535 ? blocks : 65535);
}

cudaError_t gelu_forward_cuda(float* out, const float* inp, long n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(gelu_forward_kernel, grid_for(n), 256, 0, stream, out, inp, n);
    return cudaGetLastError();
}

cudaError_t gelu_backward_cuda(float* dinp, const float* inp, const float* dout, long n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(gelu_backward_kernel, grid_for(n), 256, 0, stream, dinp, inp, dout, n);
    return cudaGetLastError();
}

}  // namespace diloco
