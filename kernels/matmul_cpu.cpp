#include "matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "kernels/common.h"

namespace diloco {

// OpenBLAS runs single-threaded and OpenMP splits each product by output rows. Two thread pools
// (OpenBLAS's and OpenMP's) on the same cores spin against each other between calls; one pool
// avoids that, and the split by output rows keeps every sum in a fixed order.
static void sgemm_split_rows(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K,
                             const float* A, int lda, const float* Bm, int ldb, float beta, float* Cm,
                             int ldc) {
    static const bool single = [] {
        openblas_set_num_threads(1);
        return true;
    }();
    (void)single;
#pragma omp parallel
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int per = (M + nt - 1) / nt;
        const int m0 = std::min(M, id * per), m1 = std::min(M, m0 + per);
        if (m1 > m0) {
            // rows m0..m1 of op(A): for a transposed A they are columns of the stored matrix
            const float* a = ta == CblasNoTrans ? A + (long)m0 * lda : A + m0;
            cblas_sgemm(CblasRowMajor, ta, tb, m1 - m0, N, K, 1.0f, a, lda, Bm, ldb, beta,
                        Cm + (long)m0 * ldc, ldc);
        }
    }
}

void matmul_forward_cpu(float* out, const float* inp, const float* w, const float* bias, int N,
                        int C, int OC) {
    float beta = 0.0f;
    if (bias) {
        // seed the output with the bias so that sgemm adds the product in one pass
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) std::copy(bias, bias + OC, out + (long)n * OC);
        beta = 1.0f;
    }
    sgemm_split_rows(CblasNoTrans, CblasTrans, N, OC, C, inp, C, w, C, beta, out, OC);
}

void matmul_backward_cpu(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                         const float* w, int N, int C, int OC) {
    if (dinp) sgemm_split_rows(CblasNoTrans, CblasNoTrans, N, C, OC, dout, OC, w, C, 0.0f, dinp, C);
    sgemm_split_rows(CblasTrans, CblasNoTrans, OC, C, N, dout, OC, inp, C, 1.0f, dw, C);
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

MatmulPrecision parse_matmul_precision(const std::string& name) {
    if (name == "fp32") return MatmulPrecision::fp32;
    if (name == "tf32") return MatmulPrecision::tf32;
    throw Error("unknown matmul precision '" + name + "' (fp32 or tf32)");
}

const char* matmul_precision_name(MatmulPrecision p) { return p == MatmulPrecision::tf32 ? "tf32" : "fp32"; }

}  // namespace diloco
