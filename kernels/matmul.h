// Linear layer through CBLAS: out = inp @ w^T + bias, with w stored (OC, C) as in PyTorch/llm.c.
#pragma once

namespace diloco {

// out (N,OC) = inp (N,C) @ w^T + bias (OC). bias may be null.
void matmul_forward_cpu(float* out, const float* inp, const float* w, const float* bias, int N,
                        int C, int OC);

// dinp (N,C) = dout (N,OC) @ w       (overwrites; null skips it)
// dw (OC,C) += dout^T @ inp          (accumulates)
// dbias (OC) += column sums of dout  (accumulates; null skips it)
void matmul_backward_cpu(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                         const float* w, int N, int C, int OC);

}  // namespace diloco
