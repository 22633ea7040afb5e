#include "optim/outer.h"

namespace diloco {

void outer_step(float* theta, const float* delta, float* mom, size_t n, const OuterHyper& h) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < (long)n; i++) {
        const float m = h.momentum * mom[i] + delta[i];
        mom[i] = m;
        theta[i] -= h.lr * (h.nesterov ? delta[i] + h.momentum * m : m);
    }
}

void outer_step_split(float* theta, const float* into_momentum, const float* into_step, float* mom, size_t n,
                      const OuterHyper& h) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < (long)n; i++) {
        const float m = h.momentum * mom[i] + into_momentum[i];
        mom[i] = m;
        theta[i] -= h.lr * (into_step[i] + h.momentum * m);
    }
}

}  // namespace diloco
