#include "embedding.h"

#include <algorithm>

namespace diloco {

void embedding_forward_cpu(float* out, const int* tokens, const float* wte, const float* wpe,
                           int B, int T, int C) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float* o = out + ((long)b * T + t) * C;
            const float* we = wte + (long)tokens[(long)b * T + t] * C;
            const float* pe = wpe + (long)t * C;
            for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
        }
}

void embedding_backward_cpu(float* dwte, float* dwpe, const float* dout, const int* tokens,
                            int B, int T, int C) {
    // Column blocks: the scatter into dwte has repeated tokens, so rows cannot be split across
    // threads without atomics or an order-dependent sum; columns can.
    const int CB = 64;
    const int nblocks = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * CB, c1 = std::min(C, c0 + CB);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const float* d = dout + ((long)b * T + t) * C;
                float* we = dwte + (long)tokens[(long)b * T + t] * C;
                float* pe = dwpe + (long)t * C;
                for (int c = c0; c < c1; c++) {
                    we[c] += d[c];
                    pe[c] += d[c];
                }
            }
    }
}

}  // namespace diloco
