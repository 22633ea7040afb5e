// CUDA twin of layernorm_cpu.cpp.
//
// forward (variant 1): one warp per row, 8 rows per block of 256 threads. Two passes over the row
//   (mean, then the variance of x - mean) as the CPU twin does; lanes stride the row so that a
//   warp's loads are contiguous. bytes: 4 (2 N C + 2 N).
// backward: kernel 1, one warp per row, adds the input gradient; kernel 2 reduces dw and db over
//   rows: a block owns 32 columns, its 8 warps take every 8th row, and the 8 partial sums are added
//   in a fixed order through shared memory, so the result does not depend on scheduling.
// T is the storage of the activations and of w, b (float, or bf16 under mixed precision); mean,
// rstd, dw and db are fp32 always, as is the arithmetic.
// residual + layernorm (mixed precision's fused form): each warp first writes its row of
// a + b, then normalises what it wrote (the rounded sum, which the backward will read back), so the
// residual stream costs one pass instead of two.
#include "kernels/bf16_cuda.h"
#include "kernels/cuda_common.h"
#include "kernels/layernorm.h"
#include "kernels/layernorm_cuda.h"

namespace diloco {

// residual (optional): residual = a + b first, and the row normalised is that; else the row is a.
template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, T* residual, const T* a, const T* badd,
                                         const T* w, const T* b, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;  // whole warps leave together
    const T* x = a + (long)row * C;
    if (residual) {  // each lane reads back only what it wrote itself: no barrier needed
        T* r = residual + (long)row * C;
        const T* y = badd + (long)row * C;
        for (int c = lane; c < C; c += 32) store(r + c, load(x + c) + load(y + c));
        x = r;
    }
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += load(x + c);
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = load(x + c) - m;
        var += d * d;
    }
    const float s = rsqrtf(warp_sum(var) / C + kLayerNormEps);
    T* o = out + (long)row * C;
    for (int c = lane; c < C; c += 32) store(o + c, (load(x + c) - m) * s * load(w + c) + load(b + c));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

template <typename T>
__global__ void layernorm_backward_input_kernel(T* dinp, const T* dout, const T* inp, const T* w, const float* mean,
                                                const float* rstd, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const T* x = inp + (long)row * C;
    const T* d = dout + (long)row * C;
    const float m = mean[row], s = rstd[row];
    float dnorm_sum = 0.0f, dnorm_xhat_sum = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float dnorm = load(d + c) * load(w + c);
        dnorm_sum += dnorm;
        dnorm_xhat_sum += dnorm * (load(x + c) - m) * s;
    }
    const float dnorm_mean = warp_sum(dnorm_sum) / C;
    const float dnorm_xhat_mean = warp_sum(dnorm_xhat_sum) / C;
    T* di = dinp + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        const float xhat = (load(x + c) - m) * s;
        store(di + c, load(di + c) + (load(d + c) * load(w + c) - dnorm_mean - xhat * dnorm_xhat_mean) * s);
    }
}

// blockDim (32, 8): threadIdx.x picks the column within the block's 32, threadIdx.y the row phase.
template <typename T>
__global__ void layernorm_backward_params_kernel(float* dw, float* db, const T* dout, const T* inp,
                                                 const float* mean, const float* rstd, int N, int C) {
    DILOCO_DYNAMIC_SHARED(float, partial);  // [2][8][32]: dw and db partial sums per row phase
    const int c = blockIdx.x * 32 + threadIdx.x;
    float sw = 0.0f, sb = 0.0f;
    if (c < C)
        for (int n = threadIdx.y; n < N; n += blockDim.y) {
            const float d = load(dout + (long)n * C + c);
            sw += d * (load(inp + (long)n * C + c) - mean[n]) * rstd[n];
            sb += d;
        }
    partial[threadIdx.y * 32 + threadIdx.x] = sw;
    partial[(blockDim.y + threadIdx.y) * 32 + threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < (int)blockDim.y; k++) {  // fixed order: deterministic
            tw += partial[k * 32 + threadIdx.x];
            tb += partial[(blockDim.y + k) * 32 + threadIdx.x];
        }
        dw[c] += tw;
        db[c] += tb;
    }
}

template <typename T>
static cudaError_t layernorm_forward(T* out, float* mean, float* rstd, T* residual, const T* a, const T* badd,
                                     const T* w, const T* b, int N, int C, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    const int rows_per_block = 8;
    DILOCO_LAUNCH(layernorm_forward_kernel<T>, (N + rows_per_block - 1) / rows_per_block, 32 * rows_per_block,
                  0, stream, out, mean, rstd, residual, a, badd, w, b, N, C);
    return cudaGetLastError();
}

template <typename T>
static cudaError_t layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w,
                                      const float* mean, const float* rstd, int N, int C, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    const int rows_per_block = 8;
    DILOCO_LAUNCH(layernorm_backward_input_kernel<T>, (N + rows_per_block - 1) / rows_per_block,
                  32 * rows_per_block, 0, stream, dinp, dout, inp, w, mean, rstd, N, C);
    const dim3 block(32, 8);
    DILOCO_LAUNCH(layernorm_backward_params_kernel<T>, (C + 31) / 32, block, 2 * 8 * 32 * sizeof(float),
                  stream, dw, db, dout, inp, mean, rstd, N, C);
    return cudaGetLastError();
}

cudaError_t layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int N, int C, cudaStream_t stream) {
    return layernorm_forward<float>(out, mean, rstd, nullptr, inp, nullptr, w, b, N, C, stream);
}

cudaError_t layernorm_backward_cuda(float* dinp, float* dw, float* db, const float* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int N, int C, cudaStream_t stream) {
    return layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C, stream);
}

cudaError_t residual_layernorm_forward_cuda(uint16_t* residual, uint16_t* out, float* mean, float* rstd, const uint16_t* a,
                                            const uint16_t* b, const uint16_t* w, const uint16_t* bias, int N, int C,
                                            cudaStream_t stream) {
    return layernorm_forward(as_bf16(out), mean, rstd, residual ? as_bf16(residual) : nullptr, as_bf16(a),
                             b ? as_bf16(b) : nullptr, as_bf16(w), as_bf16(bias), N, C, stream);
}

cudaError_t layernorm_backward_cuda(uint16_t* dinp, float* dw, float* db, const uint16_t* dout, const uint16_t* inp,
                                    const uint16_t* w, const float* mean, const float* rstd, int N, int C,
                                    cudaStream_t stream) {
    return layernorm_backward(as_bf16(dinp), dw, db, as_bf16(dout), as_bf16(inp), as_bf16(w), mean, rstd, N, C, stream);
}

}  // namespace diloco
