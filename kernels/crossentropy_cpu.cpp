#include "crossentropy.h"

#include <cmath>

namespace diloco {

void crossentropy_forward_cpu(float* losses, float* lse, const float* logits, const int* targets,
                              int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = logits + (long)n * V;
        float m = -INFINITY;
        for (int v = 0; v < V; v++) m = std::fmax(m, x[v]);
        float s = 0.0f;
        for (int v = 0; v < V; v++) s += std::exp(x[v] - m);
        float l = m + std::log(s);
        lse[n] = l;
        losses[n] = l - x[targets[n]];
    }
}

void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* lse,
                               const int* targets, float dloss, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = logits + (long)n * V;
        float* d = dlogits + (long)n * V;
        float l = lse[n];
        for (int v = 0; v < V; v++) d[v] = std::exp(x[v] - l) * dloss;
        d[targets[n]] -= dloss;
    }
}

}  // namespace diloco
