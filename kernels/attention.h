// Causal multi-head self-attention, flash style: tiles of queries and keys, an online softmax
// (running max and running sum), the log-sum-exp saved per query row, P recomputed in backward.
// The CUDA kernel follows the same algorithm; this is its CPU twin.
#pragma once

namespace diloco {

constexpr int kAttnBlockQ = 16;     // query rows per tile
constexpr int kAttnBlockK = 32;     // key rows per tile
constexpr int kAttnMaxHead = 256;   // largest head size the tiles' local arrays hold

// qkv (B,T,3C): q at [.., 0:C), k at [C:2C), v at [2C:3C); head h uses columns [h*hs, (h+1)*hs)
// of each, hs = C/NH. out (B,T,C); lse (B,NH,T) = log sum_j exp(q_i.k_j / sqrt(hs)) over j <= i.
void attention_forward_cpu(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);

// dqkv (B,T,3C) is overwritten with the gradients of q, k and v.
void attention_backward_cpu(float* dqkv, const float* dout, const float* qkv, const float* out,
                            const float* lse, int B, int T, int C, int NH);

}  // namespace diloco
