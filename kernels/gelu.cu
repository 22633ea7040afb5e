// CUDA twin of gelu_cpu.cpp: one thread per element (grid-stride), T = float or bf16 storage.
// bytes (float): fwd 8n, bwd 12n; half that in bf16.
#include "kernels/bf16_cuda.h"
#include "kernels/gelu_cuda.h"

namespace diloco {

#define GELU_SCALE 0.7978845608028654f  // sqrt(2/pi)

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float x = load(inp + i);
        const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        store(out + i, 0.5f * x * (1.0f + tanhf(u)));
    }
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float x = load(inp + i);
        const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        const float th = tanhf(u);
        const float grad = 0.5f * (1.0f + th) +
                           0.5f * x * (1.0f - th * th) * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        store(dinp + i, load(dout + i) * grad);
    }
}

static unsigned grid_for(long n) {
    const long blocks = (n + 255) / 256;
    return (unsigned)(blocks < 65535 ? blocks : 65535);
}

template <typename T>
static cudaError_t gelu_forward(T* out, const T* inp, long n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(gelu_forward_kernel<T>, grid_for(n), 256, 0, stream, out, inp, n);
    return cudaGetLastError();
}

template <typename T>
static cudaError_t gelu_backward(T* dinp, const T* inp, const T* dout, long n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(gelu_backward_kernel<T>, grid_for(n), 256, 0, stream, dinp, inp, dout, n);
    return cudaGetLastError();
}

cudaError_t gelu_forward_cuda(float* out, const float* inp, long n, cudaStream_t stream) {
    return gelu_forward(out, inp, n, stream);
}
cudaError_t gelu_forward_cuda(uint16_t* out, const uint16_t* inp, long n, cudaStream_t stream) {
    return gelu_forward(as_bf16(out), as_bf16(inp), n, stream);
}
cudaError_t gelu_backward_cuda(float* dinp, const float* inp, const float* dout, long n, cudaStream_t stream) {
    return gelu_backward(dinp, inp, dout, n, stream);
}
cudaError_t gelu_backward_cuda(uint16_t* dinp, const uint16_t* inp, const uint16_t* dout, long n, cudaStream_t stream) {
    return gelu_backward(as_bf16(dinp), as_bf16(inp), as_bf16(dout), n, stream);
}

}  // namespace diloco
