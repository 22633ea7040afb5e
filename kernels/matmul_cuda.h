// CUDA twin of matmul.h: the products through cuBLAS (natively) or the CPU BLAS (emulated: the
// emulator's device memory is host memory), the bias through small deterministic kernels.
#pragma once
#include "kernels/cuda_compat.h"

namespace diloco {

struct BlasHandle {
    void* handle = nullptr;  // cublasHandle_t natively; unused when emulated
};
cudaError_t blas_create(BlasHandle& h);
void blas_destroy(BlasHandle& h);

// out (N,OC) = inp (N,C) @ w^T + bias (OC); bias may be null.
cudaError_t matmul_forward_cuda(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                                int OC, BlasHandle& blas, cudaStream_t stream);

// dinp (N,C) = dout @ w (overwrites; null skips); dw (OC,C) += dout^T @ inp; dbias += column sums
// of dout (null skips), summed over rows in order, so it matches the CPU twin bit for bit.
cudaError_t matmul_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                                 const float* w, int N, int C, int OC, BlasHandle& blas, cudaStream_t stream);

}  // namespace diloco
