// CUDA twin of gradnorm_cpu.cpp. Stage 1: kGradNormBlocks blocks of 256 threads; thread k of block
// b sums the squares of elements b*256 + k, stepping by the whole grid, then the block reduces its
// 256 sums. Stage 2: one block adds the kGradNormBlocks partials in a fixed order, in double.
// Neither stage depends on scheduling. bytes: 4 n.
#include <cmath>

#include "kernels/cuda_common.h"
#include "kernels/gradnorm_cuda.h"

namespace diloco {

__global__ void norm_partial_kernel(float* partial, const float* g, size_t n) {
    DILOCO_DYNAMIC_SHARED(float, scratch);
    float s = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void norm_final_kernel(double* out, const float* partial, int nparts) {
    // one thread, in order: 1024 additions are nothing next to stage 1
    if (threadIdx.x != 0) return;
    double s = 0.0;
    for (int k = 0; k < nparts; k++) s += partial[k];
    *out = s;
}

cudaError_t global_norm_squared_cuda(double* out_dev, const float* g, size_t n, float* workspace,
                                     cudaStream_t stream) {
    DILOCO_LAUNCH(norm_partial_kernel, kGradNormBlocks, 256, 32 * sizeof(float), stream, workspace, g, n);
    DILOCO_LAUNCH(norm_final_kernel, 1, 32, 0, stream, out_dev, workspace, kGradNormBlocks);
    return cudaGetLastError();
}

__global__ void step_gate_kernel(double* figures, double* halted) {
    if (threadIdx.x != 0) return;
    if (!isfinite(figures[0]) || !isfinite(figures[1])) *halted = 1.0;
    figures[2] = *halted != 0.0 ? NAN : figures[1];
}

cudaError_t step_gate_cuda(double* figures, double* halted, cudaStream_t stream) {
    DILOCO_LAUNCH(step_gate_kernel, 1, 32, 0, stream, figures, halted);
    return cudaGetLastError();
}

}  // namespace diloco
