// CUDA twins of embedding.h (device pointers, except where noted).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t embedding_forward_cuda(float* out, const int* tokens, const float* wte, const float* wpe,
                                   int B, int T, int C, cudaStream_t stream);

// Ints of device workspace embedding_backward_cuda needs for B*T tokens.
inline long embedding_backward_workspace(int B, int T) { return 3L * B * T + 1; }

// dwte += scatter of dout rows by token, dwpe += dout summed over b, deterministically: the host
// groups the positions of each token (tokens_host, the same tokens the forward saw) into buckets
// in position order, and one block per distinct token sums its rows in that order.
// `workspace` holds embedding_backward_workspace(B, T) ints of device memory.
cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* tokens_host,
                                    int B, int T, int C, int* workspace, cudaStream_t stream);
// bf16 storage (16-bit patterns) for out, wte, wpe and dout; dwte, dwpe fp32.
cudaError_t embedding_forward_cuda(uint16_t* out, const int* tokens, const uint16_t* wte, const uint16_t* wpe, int B, int T,
                                   int C, cudaStream_t stream);
cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const uint16_t* dout, const int* tokens_host, int B, int T,
                                    int C, int* workspace, cudaStream_t stream);

}  // namespace diloco
