// CUDA twins of embedding.h (device pointers, except where noted).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

cudaError_t embedding_forward_cuda(float* out, const int* tokens, const float* wte, const float* wpe,
                                   int B, int T, int C, cudaStream_t stream);

// The bitonic sort's length for N tokens: the power of two at or above N.
inline int embedding_sort_length(int N) {
    int n = 1;
    while (n < N) n *= 2;
    return n;
}
// Ints of device workspace embedding_backward_cuda needs for B*T tokens: one 64-bit sort key per
// element of the sort.
inline long embedding_backward_workspace(int B, int T) { return 2L * embedding_sort_length(B * T); }

// dwte += scatter of dout rows by token, dwpe += dout summed over b, deterministically and without
// the host: the positions are sorted on the device by (token, position) (tokens: the device
// tokens the forward saw), and the rows of each token are summed in position order, as the CPU
// twin adds them. `workspace` holds embedding_backward_workspace(B, T) ints of device memory,
// 8-byte aligned (cudaMalloc's is).
cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* tokens,
                                    int B, int T, int C, int* workspace, cudaStream_t stream);
// bf16 storage (16-bit patterns) for out, wte, wpe and dout; dwte, dwpe fp32.
cudaError_t embedding_forward_cuda(uint16_t* out, const int* tokens, const uint16_t* wte, const uint16_t* wpe, int B, int T,
                                   int C, cudaStream_t stream);
cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const uint16_t* dout, const int* tokens, int B, int T,
                                    int C, int* workspace, cudaStream_t stream);

}  // namespace diloco
