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

}  // namespace diloco
