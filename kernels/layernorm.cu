// CUDA twin of layernorm_cpu.cpp.
//
// forward (variant 1): one warp per row, 8 rows per block of 256 threads. Two passes over the row
//   (mean, then the variance of x - mean) as the CPU twin does; lanes stride the row so that a
//   warp's loads are contiguous. bytes: 4 (2 N C + 2 N).
// backward: kernel 1, one warp per row, adds the input gradient; kernel 2 reduces dw and db over
//   rows: a block owns 32 columns, its 8 warps take every 8th row, and the 8 partial sums are added
//   in a fixed order through shared memory, so the result does not depend on scheduling.
#include "kernels/cuda_common.h"
#include "kernels/layernorm.h"
#include "kernels/layernorm_cuda.h"

namespace diloco {

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* w, const float* b, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;  // whole warps leave together
    const float* x = inp + (long)row * C;
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += x[c];
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = x[c] - m;
        var += d * d;
    }
    const float s = rsqrtf(warp_sum(var) / C + kLayerNormEps);
    float* o = out + (long)row * C;
    for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * s * w[c] + b[c];
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

__global__ void layernorm_backward_input_kernel(float* dinp, const float* dout, const float* inp,
                                                const float* w, const float* mean, const float* rstd,
                                                int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const float* x = inp + (long)row * C;
    const float* d = dout + (long)row * C;
    const float m = mean[row], s = rstd[row];
    float dnorm_sum = 0.0f, dnorm_xhat_sum = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float dnorm = d[c] * w[c];
        dnorm_sum += dnorm;
        dnorm_xhat_sum += dnorm * (x[c] - m) * s;
    }
    const float dnorm_mean = warp_sum(dnorm_sum) / C;
    const float dnorm_xhat_mean = warp_sum(dnorm_xhat_sum) / C;
    float* di = dinp + (long)row * C;
    for (int c = lane; c < C; c += 32) {
        const float xhat = (x[c] - m) * s;
        di[c] += (d[c] * w[c] - dnorm_mean - xhat * dnorm_xhat_mean) * s;
    }
}

// blockDim (32, 8): threadIdx.x picks the column within the block's 32, threadIdx.y the row phase.
__global__ void layernorm_backward_params_kernel(float* dw, float* db, const float* dout, const float* inp,
                                                 const float* mean, const float* rstd, int N, int C) {
    DILOCO_DYNAMIC_SHARED(float, partial);  // [2][8][32]: dw and db partial sums per row phase
    const int c = blockIdx.x * 32 + threadIdx.x;
    float sw = 0.0f, sb = 0.0f;
    if (c < C)
        for (int n = threadIdx.y; n < N; n += blockDim.y) {
            const float d = dout[(long)n * C + c];
            sw += d * (inp[(long)n * C + c] - mean[n]) * rstd[n];
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

cudaError_t layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int N, int C, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    const int rows_per_block = 8;
    DILOCO_LAUNCH(layernorm_forward_kernel, (N + rows_per_block - 1) / rows_per_block, 32 * rows_per_block,
                  0, stream, out, mean, rstd, inp, w, b, N, C);
    return cudaGetLastError();
}

cudaError_t layernorm_backward_cuda(float* dinp, float* dw, float* db, const float* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int N, int C, cudaStream_t stream) {
    if (N <= 0) return cudaSuccess;
    const int rows_per_block = 8;
    DILOCO_LAUNCH(layernorm_backward_input_kernel, (N + rows_per_block - 1) / rows_per_block,
                  32 * rows_per_block, 0, stream, dinp, dout, inp, w, mean, rstd, N, C);
    const dim3 block(32, 8);
    DILOCO_LAUNCH(layernorm_backward_params_kernel, (C + 31) / 32, block, 2 * 8 * 32 * sizeof(float),
                  stream, dw, db, dout, inp, mean, rstd, N, C);
    return cudaGetLastError();
}

}  // namespace diloco
