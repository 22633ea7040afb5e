#include "gradnorm.h"

#include <algorithm>
#include <cmath>

namespace diloco {

double global_norm_cpu(const float* g, size_t n) {
    // A fixed number of chunks (set by n alone) summed in order: deterministic for any thread count.
    const long kChunks = 1024;
    const size_t chunk = (n + kChunks - 1) / kChunks;
    double partial[kChunks] = {0.0};
#pragma omp parallel for schedule(static)
    for (long k = 0; k < kChunks; k++) {
        size_t i0 = std::min(n, (size_t)k * chunk), i1 = std::min(n, i0 + chunk);
        double s = 0.0;
        for (size_t i = i0; i < i1; i++) s += (double)g[i] * g[i];
        partial[k] = s;
    }
    double total = 0.0;
    for (long k = 0; k < kChunks; k++) total += partial[k];
    return std::sqrt(total);
}

}  // namespace diloco
