// Learning-rate schedule of the inner optimizer: linear warmup, then cosine decay to a floor.
#pragma once
#include <cmath>

namespace diloco {

// step counts from 1. For step <= warmup: lr * step / warmup. After: cosine from lr down to
// lr * min_lr_frac, reached at step == total_steps.
inline float lr_at(long step, long total_steps, long warmup, float lr, float min_lr_frac) {
    if (warmup > 0 && step <= warmup) return lr * (float)step / (float)warmup;
    const float floor = lr * min_lr_frac;
    if (total_steps <= warmup) return lr;
    double progress = (double)(step - warmup) / (double)(total_steps - warmup);
    if (progress > 1.0) progress = 1.0;
    return floor + (float)(0.5 * (1.0 + std::cos(3.141592653589793 * progress))) * (lr - floor);
}

}  // namespace diloco
