#include "adamw.h"

#include <cmath>

namespace diloco {

AdamWStepScalars adamw_step_scalars(const AdamWHyper& h, long t) {
    return {h.lr, 1.0f - (float)std::pow((double)h.beta1, (double)t), 1.0f - (float)std::pow((double)h.beta2, (double)t)};
}

void adamw_update_cpu(float* params, float* m, float* v, const float* grads,
                      const AdamWSegment* segments, int nsegments, const AdamWHyper& h, long t,
                      float grad_scale) {
    const AdamWStepScalars k = adamw_step_scalars(h, t);
    const float bc1 = k.bc1, bc2 = k.bc2;
    for (int s = 0; s < nsegments; s++) {
        const long off = (long)segments[s].offset, cnt = (long)segments[s].count;
        const float wd = segments[s].decay ? h.weight_decay : 0.0f;
#pragma omp parallel for schedule(static)
        for (long i = off; i < off + cnt; i++) {
            float g = grads[i] * grad_scale;
            float mi = h.beta1 * m[i] + (1.0f - h.beta1) * g;
            float vi = h.beta2 * v[i] + (1.0f - h.beta2) * g * g;
            m[i] = mi;
            v[i] = vi;
            float mhat = mi / bc1, vhat = vi / bc2;
            params[i] -= h.lr * (mhat / (std::sqrt(vhat) + h.eps) + wd * params[i]);
        }
    }
}

}  // namespace diloco
