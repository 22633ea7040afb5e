// GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#pragma once

namespace diloco {

void gelu_forward_cpu(float* out, const float* inp, long n);

// dinp = dout * gelu'(inp). Overwrites; dinp may alias dout.
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, long n);

}  // namespace diloco
