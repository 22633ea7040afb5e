// LayerNorm over the last dimension, eps = 1e-5 (GPT-2).
#pragma once

namespace diloco {

constexpr float kLayerNormEps = 1e-5f;

// inp (N,C) -> out (N,C) = (inp - mean) * rstd * w + b; saves mean (N) and rstd (N) for backward.
void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* w,
                           const float* b, int N, int C);

// Accumulates: dinp (N,C) +=, dw (C) +=, db (C) +=.
// dinp accumulates because the model feeds the residual stream's gradient straight through.
// dw and db are reduced over rows in a fixed order (column blocks), whatever the thread count.
void layernorm_backward_cpu(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                            const float* w, const float* mean, const float* rstd, int N, int C);

}  // namespace diloco
