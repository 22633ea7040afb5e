// Global gradient norm and the clipping factor that AdamW folds into its gradient read.
#pragma once
#include <cstddef>

#include "kernels/host_device.h"

namespace diloco {

// sqrt(sum g^2) over n elements, accumulated in double over fixed-size chunks that are summed in
// order, so the result does not depend on the thread count.
double global_norm_cpu(const float* g, size_t n);

// The factor that brings the gradient's norm down to max_norm: min(1, max_norm / (norm + 1e-6)).
// max_norm <= 0 disables clipping. Shared with the CUDA AdamW, which takes it from the device's norm.
DILOCO_HD float clip_scale(double norm, float max_norm) {
    if (max_norm <= 0.0f) return 1.0f;
    const double s = max_norm / (norm + 1e-6);
    return s < 1.0 ? (float)s : 1.0f;
}

}  // namespace diloco
