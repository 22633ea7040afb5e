#include "matmul.h"

#include <cblas.h>

#include <algorithm>

namespace diloco {

void matmul_forward_cpu(float* out, const float* inp, const float* w, const float* bias, int N,
                        int C, int OC) {
    float beta = 0.0f;
    if (bias) {
        // seed the output with the bias so that sgemm adds the product in one pass
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) std::copy(bias, bias + OC, out + (long)n * OC);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, w, C, beta, out,
                OC);
}

void matmul_backward_cpu(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                         const float* w, int N, int C, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, w, C,
                    0.0f, dinp, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f,
                dw, C);
    if (dbias) {
        const int CB = 64;  // column blocks: a fixed summation order whatever the thread count
        const int nblocks = (OC + CB - 1) / CB;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblocks; blk++) {
            int c0 = blk * CB, c1 = std::min(OC, c0 + CB);
            for (int n = 0; n < N; n++) {
                const float* d = dout + (long)n * OC;
                for (int c = c0; c < c1; c++) dbias[c] += d[c];
            }
        }
    }
}

}  // namespace diloco
