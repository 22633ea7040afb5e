// CUDA entry points of the residual add (device pointers). Kept apart from residual.h so that the
// CPU backend never sees CUDA types.
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

// out (n) = a + b on `stream`; returns the launch's error status.
cudaError_t residual_forward_cuda(float* out, const float* a, const float* b, long n,
                                  cudaStream_t stream);
// bf16 storage (16-bit patterns), fp32 sum, rounded once
cudaError_t residual_forward_cuda(uint16_t* out, const uint16_t* a, const uint16_t* b, long n, cudaStream_t stream);

// dst (bf16, 16-bit patterns) = src rounded to nearest even: the weights' bf16 copy.
cudaError_t bf16_copy_cuda(uint16_t* dst, const float* src, long n, cudaStream_t stream);

}  // namespace diloco
