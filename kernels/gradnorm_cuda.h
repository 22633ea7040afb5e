// CUDA twin of gradnorm.h: the global norm's square, reduced deterministically.
#pragma once
#include <cstddef>

#include "kernels/cuda_compat.h"

namespace diloco {

constexpr int kGradNormBlocks = 1024;  // stage-1 partial sums: a fixed number, summed in order

// *out_dev = sum g^2 (double, device memory). workspace: kGradNormBlocks floats of device memory.
cudaError_t global_norm_squared_cuda(double* out_dev, const float* g, size_t n, float* workspace,
                                     cudaStream_t stream);

}  // namespace diloco
