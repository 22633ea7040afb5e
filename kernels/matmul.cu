// CUDA twin of matmul_cpu.cpp. cuBLAS is column-major, where a row-major (N,OC) matrix reads as
// its (OC,N) transpose; so out = inp w^T becomes out^T = w inp^T:
// cublasSgemm(OP_T, OP_N, OC, N, C, w, inp, out), as llm.c does. Bias: separate small kernels.
#include "kernels/matmul.h"
#include "kernels/matmul_cuda.h"

#if defined(__CUDACC__)
#include <cublas_v2.h>
#endif

namespace diloco {

__global__ void add_bias_kernel(float* out, const float* bias, int N, int OC) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * OC) out[i] += bias[i % OC];
}

// one thread per column, rows in order: deterministic, and the CPU twin's order
__global__ void bias_grad_kernel(float* dbias, const float* dout, int N, int OC) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    float s = dbias[c];
    for (int n = 0; n < N; n++) s += dout[(long)n * OC + c];
    dbias[c] = s;
}

#if defined(__CUDACC__)

static cudaError_t blas_status(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown; }

cudaError_t blas_create(BlasHandle& h) {
    cublasHandle_t c;
    if (cublasCreate(&c) != CUBLAS_STATUS_SUCCESS) return cudaErrorUnknown;
    cublasSetMathMode(c, CUBLAS_PEDANTIC_MATH);  // fp32 as fp32: no TF32 unless asked for
    h.handle = c;
    return cudaSuccess;
}
void blas_destroy(BlasHandle& h) {
    if (h.handle) cublasDestroy(static_cast<cublasHandle_t>(h.handle));
    h.handle = nullptr;
}

static cudaError_t sgemm(BlasHandle& b, cudaStream_t stream, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                         int k, const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    cublasHandle_t h = static_cast<cublasHandle_t>(b.handle);
    cublasSetStream(h, stream);
    const float one = 1.0f;
    return blas_status(cublasSgemm(h, ta, tb, m, n, k, &one, A, lda, B, ldb, &beta, C, ldc));
}

#else  // emulated: device memory is host memory, the CPU BLAS does the products

cudaError_t blas_create(BlasHandle& h) {
    h.handle = nullptr;
    return cudaSuccess;
}
void blas_destroy(BlasHandle& h) { h.handle = nullptr; }

#endif

cudaError_t matmul_forward_cuda(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                                int OC, BlasHandle& blas, cudaStream_t stream) {
    if (N <= 0 || OC <= 0) return cudaSuccess;
#if defined(__CUDACC__)
    cudaError_t e = sgemm(blas, stream, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, 0.0f, out, OC);
    if (e != cudaSuccess) return e;
#else
    (void)blas;
    matmul_forward_cpu(out, inp, w, nullptr, N, C, OC);
#endif
    if (bias) {
        const long n = (long)N * OC;
        DILOCO_LAUNCH(add_bias_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, out, bias, N, OC);
    }
    return cudaGetLastError();
}

cudaError_t matmul_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                                 const float* w, int N, int C, int OC, BlasHandle& blas, cudaStream_t stream) {
    if (N <= 0 || OC <= 0) return cudaSuccess;
#if defined(__CUDACC__)
    cudaError_t e = cudaSuccess;
    if (dinp) e = sgemm(blas, stream, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout, OC, 0.0f, dinp, C);
    if (e == cudaSuccess) e = sgemm(blas, stream, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dw, C);
    if (e != cudaSuccess) return e;
#else
    (void)blas;
    matmul_backward_cpu(dinp, dw, nullptr, dout, inp, w, N, C, OC);
#endif
    if (dbias) DILOCO_LAUNCH(bias_grad_kernel, (OC + 127) / 128, 128, 0, stream, dbias, dout, N, OC);
    return cudaGetLastError();
}

}  // namespace diloco
