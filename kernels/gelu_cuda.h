// CUDA twins of gelu.h (device pointers).
#pragma once
#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t gelu_forward_cuda(float* out, const float* inp, long n, cudaStream_t stream);
// dinp = dout * gelu'(inp); dinp may alias dout.
cudaError_t gelu_backward_cuda(float* dinp, const float* inp, const float* dout, long n, cudaStream_t stream);

}  // namespace diloco
