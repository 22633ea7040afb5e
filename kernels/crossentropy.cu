// CUDA twin of crossentropy_cpu.cpp: fused softmax + cross-entropy, no probability tensor stored.
//
// forward: one block of 256 threads per row; a strided pass for the row max and one for the sum of
//   exp(x - max), each reduced through warp shuffles and shared memory. bytes: 4 N V (two reads
//   of a row that stays in L2 for the second).
// backward: one thread per element, dlogits = (exp(x - lse) - [v == target]) * dloss; may write
//   in place over the logits. bytes: 8 N V.
// mean: one block of 256 threads; thread k sums the losses of rows k, k + 256, ... in double, then
//   a fixed tree adds the 256 sums, and thread 0 adds their mean into a device double: the
//   training step reads its loss from there once, with its other figures. bytes: 4 N.
// T: the storage of logits and dlogits (float, or bf16 under mixed precision: the logits' buffer is
// then the only (N, V) array, and its gradient overwrites it); losses and lse fp32 always.
#include "kernels/bf16_cuda.h"
#include "kernels/crossentropy.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/cuda_common.h"

namespace diloco {

template <typename T>
__global__ void crossentropy_forward_kernel(float* losses, float* lse, const T* logits, const int* targets, int N, int V) {
    DILOCO_DYNAMIC_SHARED(float, scratch);  // 32 floats for the block reductions
    const int row = blockIdx.x;
    const T* x = logits + (long)row * V;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, load(x + v));
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(load(x + v) - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float l = m + logf(s);
        lse[row] = l;
        losses[row] = l - load(x + targets[row]);
    }
}

template <typename T>
__global__ void crossentropy_backward_kernel(T* dlogits, const T* logits, const float* lse, const int* targets,
                                             float dloss, int N, int V) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * V) return;
    const int row = (int)(i / V), v = (int)(i % V);
    const float p = expf(load(logits + i) - lse[row]);
    store(dlogits + i, (p - (v == targets[row] ? 1.0f : 0.0f)) * dloss);
}

template <typename T>
static cudaError_t crossentropy_forward(float* losses, float* lse, const T* logits, const int* targets, int N, int V,
                                        cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    DILOCO_LAUNCH(crossentropy_forward_kernel<T>, N, 256, 32 * sizeof(float), stream, losses, lse, logits, targets, N, V);
    return cudaGetLastError();
}

template <typename T>
static cudaError_t crossentropy_backward(T* dlogits, const T* logits, const float* lse, const int* targets, float dloss,
                                         int N, int V, cudaStream_t stream) {
    const long n = (long)N * V;
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(crossentropy_backward_kernel<T>, (unsigned)((n + 255) / 256), 256, 0, stream, dlogits, logits, lse,
                  targets, dloss, N, V);
    return cudaGetLastError();
}

constexpr int kLossMeanThreads = 256;

__global__ void loss_mean_accumulate_kernel(double* sum, const float* losses, int N) {
    DILOCO_DYNAMIC_SHARED(double, part);  // kLossMeanThreads sums
    const int k = threadIdx.x, threads = blockDim.x;
    double s = 0.0;
    for (int i = k; i < N; i += threads) s += losses[i];
    part[k] = s;
    __syncthreads();
    for (int half = threads / 2; half > 0; half /= 2) {
        if (k < half) part[k] += part[k + half];
        __syncthreads();
    }
    if (k == 0) *sum += part[0] / N;
}

cudaError_t loss_mean_accumulate_cuda(double* sum, const float* losses, int N, cudaStream_t stream) {
    if (N <= 0) return cudaErrorInvalidValue;
    DILOCO_LAUNCH(loss_mean_accumulate_kernel, 1, kLossMeanThreads, kLossMeanThreads * sizeof(double), stream, sum,
                  losses, N);
    return cudaGetLastError();
}

cudaError_t crossentropy_forward_cuda(float* losses, float* lse, const float* logits, const int* targets,
                                      int N, int V, cudaStream_t stream) {
    return crossentropy_forward(losses, lse, logits, targets, N, V, stream);
}
cudaError_t crossentropy_forward_cuda(float* losses, float* lse, const uint16_t* logits, const int* targets, int N, int V,
                                      cudaStream_t stream) {
    return crossentropy_forward(losses, lse, as_bf16(logits), targets, N, V, stream);
}
cudaError_t crossentropy_backward_cuda(float* dlogits, const float* logits, const float* lse,
                                       const int* targets, float dloss, int N, int V, cudaStream_t stream) {
    return crossentropy_backward(dlogits, logits, lse, targets, dloss, N, V, stream);
}
cudaError_t crossentropy_backward_cuda(uint16_t* dlogits, const uint16_t* logits, const float* lse, const int* targets,
                                       float dloss, int N, int V, cudaStream_t stream) {
    return crossentropy_backward(as_bf16(dlogits), as_bf16(logits), lse, targets, dloss, N, V, stream);
}

}  // namespace diloco
