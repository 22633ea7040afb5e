// CUDA twins of attention.h (device pointers): flash-style causal attention.
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"

namespace diloco {

constexpr int kAttnCudaMaxHead = 128;  // head sizes up to this (32, 64, 128 in the tests)

cudaError_t attention_forward_cuda(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                                   cudaStream_t stream);

// Floats of device workspace attention_backward_cuda needs: D_i = rowsum(dO_i * O_i).
inline long attention_backward_workspace(int B, int T, int NH) { return (long)B * NH * T; }

// dqkv (B,T,3C) is overwritten. Deterministic: no atomics; dK and dV come from one kernel that
// owns key rows, dQ from another that owns query rows.
cudaError_t attention_backward_cuda(float* dqkv, const float* dout, const float* qkv, const float* out,
                                    const float* lse, int B, int T, int C, int NH, float* workspace,
                                    cudaStream_t stream);

// Variant 2 (kernels/attention_mma.cu): FlashAttention-2 on tensor cores. bf16 tensors, passed as
// their 16-bit patterns; lse and the workspace stay fp32. Head sizes 64 and 128 (others:
// cudaErrorInvalidValue). Same shapes and layout as above; the same workspace size.
cudaError_t attention_forward_bf16_cuda(uint16_t* out, float* lse, const uint16_t* qkv, int B, int T, int C, int NH,
                                        cudaStream_t stream);
cudaError_t attention_backward_bf16_cuda(uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv, const uint16_t* out,
                                         const float* lse, int B, int T, int C, int NH, float* workspace,
                                         cudaStream_t stream);

}  // namespace diloco
