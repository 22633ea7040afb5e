// CUDA twins of layernorm.h (device pointers; same shapes and accumulate rules).
#pragma once
#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int N, int C, cudaStream_t stream);

cudaError_t layernorm_backward_cuda(float* dinp, float* dw, float* db, const float* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int N, int C, cudaStream_t stream);

}  // namespace diloco
