// Global gradient norm and the clipping factor that AdamW folds into its gradient read.
#pragma once
#include <cstddef>

namespace diloco {

// sqrt(sum g^2) over n elements, accumulated in double over fixed-size chunks that are summed in
// order, so the result does not depend on the thread count.
double global_norm_cpu(const float* g, size_t n);

// The factor that brings the gradient's norm down to max_norm: min(1, max_norm / (norm + 1e-6)).
// max_norm <= 0 disables clipping.
float clip_scale(double norm, float max_norm);

}  // namespace diloco
