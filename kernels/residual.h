// Residual add. Its backward is the identity into both inputs, so the model gets it for free
// by letting both branches read the same gradient buffer; there is no residual_backward.
#pragma once

namespace diloco {

// out (n) = a + b. out may alias a or b.
void residual_forward_cpu(float* out, const float* a, const float* b, long n);

}  // namespace diloco
