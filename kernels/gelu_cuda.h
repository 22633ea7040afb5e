// CUDA twins of gelu.h (device pointers).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t gelu_forward_cuda(float* out, const float* inp, long n, cudaStream_t stream);
// dinp = dout * gelu'(inp); dinp may alias dout.
cudaError_t gelu_backward_cuda(float* dinp, const float* inp, const float* dout, long n, cudaStream_t stream);
// bf16 storage (16-bit patterns), fp32 arithmetic, rounded once
cudaError_t gelu_forward_cuda(uint16_t* out, const uint16_t* inp, long n, cudaStream_t stream);
cudaError_t gelu_backward_cuda(uint16_t* dinp, const uint16_t* inp, const uint16_t* dout, long n, cudaStream_t stream);

}  // namespace diloco
