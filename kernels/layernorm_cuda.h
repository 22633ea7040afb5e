// CUDA twins of layernorm.h (device pointers; same shapes and accumulate rules).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t layernorm_forward_cuda(float* out, float* mean, float* rstd, const float* inp,
                                   const float* w, const float* b, int N, int C, cudaStream_t stream);

cudaError_t layernorm_backward_cuda(float* dinp, float* dw, float* db, const float* dout,
                                    const float* inp, const float* w, const float* mean,
                                    const float* rstd, int N, int C, cudaStream_t stream);

// bf16 storage (16-bit patterns) for the activations and w, bias; mean, rstd, dw, db fp32.
// With `residual` non-null: residual = a + b (N,C) is stored first and the rows normalised are
// residual's (as stored, rounded); with residual null, the rows of a (b unused).
cudaError_t residual_layernorm_forward_cuda(uint16_t* residual, uint16_t* out, float* mean, float* rstd, const uint16_t* a,
                                            const uint16_t* b, const uint16_t* w, const uint16_t* bias, int N, int C,
                                            cudaStream_t stream);
// dinp += (rounded once per element), dw += and db += as above.
cudaError_t layernorm_backward_cuda(uint16_t* dinp, float* dw, float* db, const uint16_t* dout, const uint16_t* inp,
                                    const uint16_t* w, const float* mean, const float* rstd, int N, int C,
                                    cudaStream_t stream);

}  // namespace diloco
