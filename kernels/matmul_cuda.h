// CUDA twin of matmul.h: the products through cuBLAS (natively) or the CPU BLAS (emulated: the
// emulator's device memory is host memory), the bias through small deterministic kernels.
//
// Errors: a cuBLAS failure throws Error naming the call and the cuBLAS status
// (e.g. "cuBLAS: cublasSgemm (m=768 n=8192 k=3072): CUBLAS_STATUS_EXECUTION_FAILED"), since
// cudaError_t has no code for it; the cudaError_t returned is the bias kernels' launch status.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda_compat.h"
#include "kernels/matmul.h"

namespace diloco {

struct BlasHandle {
    void* handle = nullptr;  // cublasHandle_t natively; unused when emulated
    void* lt = nullptr;      // cublasLtHandle_t natively (the bf16 products with fused epilogues)
    void* lt_workspace = nullptr;  // kLtWorkspaceBytes of device memory for cuBLASLt
    MatmulPrecision precision = MatmulPrecision::fp32;
};
constexpr size_t kLtWorkspaceBytes = (size_t)32 << 20;
void blas_create(BlasHandle& h);  // throws on failure, naming the cuBLAS status
void blas_destroy(BlasHandle& h);

// The precision of every later product on this handle. fp32 (the default): cuBLAS's pedantic
// math, no tensor-core rounding. tf32: CUBLAS_TF32_TENSOR_OP_MATH, inputs rounded to tf32 (relative
// error up to 2^-11 each) and fp32 sums. Emulated, tf32 rounds the inputs of the CPU BLAS with
// round_to_tf32 (ties to even), so tests see the same loss of precision.
void blas_set_precision(BlasHandle& h, MatmulPrecision p);

#if !defined(DILOCO_EMULATE)
// "CUBLAS_STATUS_EXECUTION_FAILED" and so on, for a cublasStatus_t's value (native builds only).
const char* cublas_status_name(int status);
#endif

// out (N,OC) = inp (N,C) @ w^T + bias (OC); bias may be null.
cudaError_t matmul_forward_cuda(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                                int OC, BlasHandle& blas, cudaStream_t stream);

// Floats of device workspace matmul_backward_cuda needs for a bias gradient of N rows and OC
// columns (one partial sum per column for each block of rows); 0 is enough without dbias.
long matmul_backward_workspace(int N, int OC);

// dinp (N,C) = dout @ w (overwrites; null skips); dw (OC,C) += dout^T @ inp; dbias += column sums
// of dout (null skips): partial sums over blocks of rows, then the partials in order, so the
// result is deterministic (though not the CPU twin's bits: the order of the additions differs).
cudaError_t matmul_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                                 const float* w, int N, int C, int OC, float* workspace, BlasHandle& blas,
                                 cudaStream_t stream);

// Mixed precision (bf16 tensors as 16-bit patterns; fp32 accumulation on tensor cores).
// out (N,OC) = inp (N,C) @ w^T + bias, bias (OC) optional, rounded to bf16 once, after the bias
// (cuBLASLt's fused epilogue natively; emulated, the CPU BLAS in fp32 on the bf16 values). With
// gelu_pre: gelu_pre = the rounded pre-activation (inp w^T + bias) and out = gelu(pre-activation)
// (tanh form), both from the same fp32 value, in the same pass.
cudaError_t matmul_forward_cuda(uint16_t* out, const uint16_t* inp, const uint16_t* w, const uint16_t* bias, int N, int C,
                                int OC, BlasHandle& blas, cudaStream_t stream, uint16_t* gelu_pre = nullptr);
// dinp (N,C) bf16 = dout @ w (overwrites; null skips); dw (OC,C) fp32 += dout^T @ inp; dbias fp32 +=
// column sums of dout (null skips), deterministic as above.
cudaError_t matmul_backward_cuda(uint16_t* dinp, float* dw, float* dbias, const uint16_t* dout, const uint16_t* inp,
                                 const uint16_t* w, int N, int C, int OC, float* workspace, BlasHandle& blas,
                                 cudaStream_t stream);

}  // namespace diloco
