// CUDA twins of crossentropy.h (device pointers; same shapes and semantics).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t crossentropy_forward_cuda(float* losses, float* lse, const float* logits, const int* targets,
                                      int N, int V, cudaStream_t stream);

// *sum (one double, device memory) += the mean of losses[0..N), summed in double in a fixed order
// (no host wait: a training step reads its loss once, at its end)
cudaError_t loss_mean_accumulate_cuda(double* sum, const float* losses, int N, cudaStream_t stream);

cudaError_t crossentropy_backward_cuda(float* dlogits, const float* logits, const float* lse,
                                       const int* targets, float dloss, int N, int V, cudaStream_t stream);
// bf16 logits (16-bit patterns), fp32 losses and lse; the backward may overwrite the logits.
cudaError_t crossentropy_forward_cuda(float* losses, float* lse, const uint16_t* logits, const int* targets, int N, int V,
                                      cudaStream_t stream);
cudaError_t crossentropy_backward_cuda(uint16_t* dlogits, const uint16_t* logits, const float* lse, const int* targets,
                                       float dloss, int N, int V, cudaStream_t stream);

}  // namespace diloco
