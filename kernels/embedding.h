// Token + learned position embedding.
#pragma once

namespace diloco {

// out (B,T,C) = wte[tokens[b,t]] (V,C) + wpe[t] (maxT,C). tokens (B,T), each in [0,V).
void embedding_forward_cpu(float* out, const int* tokens, const float* wte, const float* wpe,
                           int B, int T, int C);

// dwte (V,C) += dout rows scattered by token; dwpe (maxT,C) += dout summed over b.
// Deterministic: each thread owns a range of columns and walks the positions in order.
void embedding_backward_cpu(float* dwte, float* dwpe, const float* dout, const int* tokens,
                            int B, int T, int C);

}  // namespace diloco
