// CUDA twin of matmul_cpu.cpp. cuBLAS is column-major, where a row-major (N,OC) matrix reads as
// its (OC,N) transpose; so out = inp w^T becomes out^T = w inp^T:
// cublasSgemm(OP_T, OP_N, OC, N, C, w, inp, out), as llm.c does. Bias: separate small kernels.
#include <functional>
#include <string>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/bf16_cuda.h"
#include "kernels/common.h"
#include "kernels/cuda_common.h"
#include "kernels/gelu.h"
#include "kernels/matmul.h"
#include "kernels/matmul_cuda.h"

#if defined(__CUDACC__)
#include <cublasLt.h>
#include <cublas_v2.h>
#endif

namespace diloco {

__global__ void add_bias_kernel(float* out, const float* bias, int N, int OC) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)N * OC) out[i] += bias[i % OC];
}

// The bias gradient sums N rows (N = B T, thousands) per column. One thread per column would use
// OC threads for the whole job; instead each block takes 32 columns of one chunk of kBiasRows
// rows, its 8 warps reading 8 rows at a time (128 contiguous bytes per warp), and the partial
// sums of the chunks are added in order by a second pass. Error: each thread adds 32 rows, then
// 8 phases, then N / kBiasRows chunks: far fewer than the N successive additions of one thread.
constexpr int kBiasRows = 256, kBiasPhases = 8;

template <typename T>
__global__ void bias_grad_partial_kernel(float* partial, const T* dout, int N, int OC) {
    DILOCO_DYNAMIC_SHARED(float, sums);  // kBiasPhases x 32
    const int c = blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y;
    const int r1 = min(N, (chunk + 1) * kBiasRows);
    float s = 0.0f;
    if (c < OC)
        for (int r = chunk * kBiasRows + threadIdx.y; r < r1; r += kBiasPhases) s += load(dout + (long)r * OC + c);
    sums[threadIdx.y * 32 + threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || c >= OC) return;
    float t = 0.0f;
    for (int y = 0; y < kBiasPhases; y++) t += sums[y * 32 + threadIdx.x];
    partial[(long)chunk * OC + c] = t;
}

// dbias[c] += the chunks' partial sums of column c, in chunk order
__global__ void bias_grad_final_kernel(float* dbias, const float* partial, int nchunks, int OC) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    float s = 0.0f;
    for (int k = 0; k < nchunks; k++) s += partial[(long)k * OC + c];
    dbias[c] += s;
}

static int bias_chunks(int N) { return (N + kBiasRows - 1) / kBiasRows; }

long matmul_backward_workspace(int N, int OC) { return (long)bias_chunks(N) * OC; }

template <typename T>
static cudaError_t bias_grad(float* dbias, const T* dout, int N, int OC, float* workspace, cudaStream_t stream) {
    const dim3 grid((OC + 31) / 32, bias_chunks(N)), block(32, kBiasPhases);
    DILOCO_LAUNCH(bias_grad_partial_kernel<T>, grid, block, kBiasPhases * 32 * sizeof(float), stream, workspace, dout,
                  N, OC);
    DILOCO_LAUNCH(bias_grad_final_kernel, (OC + 127) / 128, 128, 0, stream, dbias, workspace, bias_chunks(N), OC);
    return cudaGetLastError();
}

#if defined(__CUDACC__)

const char* cublas_status_name(int status) {
#define DILOCO_CUBLAS_NAME(s) \
    case s: return #s
    switch ((cublasStatus_t)status) {
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_SUCCESS);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_NOT_INITIALIZED);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_ALLOC_FAILED);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_INVALID_VALUE);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_ARCH_MISMATCH);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_MAPPING_ERROR);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_EXECUTION_FAILED);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_INTERNAL_ERROR);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_NOT_SUPPORTED);
        DILOCO_CUBLAS_NAME(CUBLAS_STATUS_LICENSE_ERROR);
    }
#undef DILOCO_CUBLAS_NAME
    return "CUBLAS_STATUS_UNKNOWN";
}

static void blas_check(cublasStatus_t s, const char* call) {
    if (s != CUBLAS_STATUS_SUCCESS) throw Error(std::string("cuBLAS: ") + call + ": " + cublas_status_name(s));
}

void blas_create(BlasHandle& h) {
    cublasHandle_t c;
    blas_check(cublasCreate(&c), "cublasCreate");
    h.handle = c;
    cublasLtHandle_t lt;
    blas_check(cublasLtCreate(&lt), "cublasLtCreate");
    h.lt = lt;
    if (cudaMalloc(&h.lt_workspace, kLtWorkspaceBytes) != cudaSuccess) throw Error("CUDA: cannot allocate the cuBLASLt workspace");
    blas_set_precision(h, h.precision);
}
void blas_destroy(BlasHandle& h) {
    if (h.handle) cublasDestroy(static_cast<cublasHandle_t>(h.handle));
    if (h.lt) cublasLtDestroy(static_cast<cublasLtHandle_t>(h.lt));
    if (h.lt_workspace) cudaFree(h.lt_workspace);
    h.handle = h.lt = h.lt_workspace = nullptr;
}

void blas_set_precision(BlasHandle& h, MatmulPrecision p) {
    h.precision = p;
    if (!h.handle) return;  // applied by blas_create
    const cublasMath_t mode = p == MatmulPrecision::tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH;
    blas_check(cublasSetMathMode(static_cast<cublasHandle_t>(h.handle), mode), "cublasSetMathMode");
}

static void sgemm(BlasHandle& b, cudaStream_t stream, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                  int k, const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    cublasHandle_t h = static_cast<cublasHandle_t>(b.handle);
    blas_check(cublasSetStream(h, stream), "cublasSetStream");
    const float one = 1.0f;
    const cublasStatus_t s = cublasSgemm(h, ta, tb, m, n, k, &one, A, lda, B, ldb, &beta, C, ldc);
    if (s != CUBLAS_STATUS_SUCCESS)
        throw Error("cuBLAS: cublasSgemm (m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" +
                    std::to_string(k) + "): " + cublas_status_name(s));
}

#else  // emulated: device memory is host memory, the CPU BLAS does the products

void blas_create(BlasHandle& h) { h.handle = nullptr; }
void blas_destroy(BlasHandle& h) { h.handle = nullptr; }
void blas_set_precision(BlasHandle& h, MatmulPrecision p) { h.precision = p; }

// The emulated product: an operation on `stream`, run now or kept by the stream's capture to run
// at each launch of its graph (kernels/emu/emu.h), as cuBLAS's kernels would be.
static cudaError_t emulated_product(cudaStream_t stream, const std::function<void()>& product) {
    const emu::Issue i = emu::capture_or_run(stream, [=] {
        emu::stream_issue(stream, "cuBLAS product (emulated)");
        product();
    });
    return i == emu::kRefused ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}

// The inputs a product sees: themselves in fp32, rounded copies in tf32 (as the tensor cores do).
struct ProductInput {
    std::vector<float> rounded;
    const float* p;
    ProductInput(const float* x, long n, MatmulPrecision prec) : p(x) {
        if (prec != MatmulPrecision::tf32 || !x) return;
        rounded.resize(n);
        for (long i = 0; i < n; i++) rounded[i] = round_to_tf32(x[i]);
        p = rounded.data();
    }
};

#endif

cudaError_t matmul_forward_cuda(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                                int OC, BlasHandle& blas, cudaStream_t stream) {
    if (N <= 0 || OC <= 0) return cudaSuccess;
#if defined(__CUDACC__)
    sgemm(blas, stream, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, 0.0f, out, OC);
#else
    const MatmulPrecision prec = blas.precision;
    if (cudaError_t e = emulated_product(stream, [=] {
            const ProductInput a(inp, (long)N * C, prec), b(w, (long)OC * C, prec);
            matmul_forward_cpu(out, a.p, b.p, nullptr, N, C, OC);
        }))
        return e;
#endif
    if (bias) {
        const long n = (long)N * OC;
        DILOCO_LAUNCH(add_bias_kernel, (unsigned)((n + 255) / 256), 256, 0, stream, out, bias, N, OC);
    }
    return cudaGetLastError();
}

cudaError_t matmul_backward_cuda(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                                 const float* w, int N, int C, int OC, float* workspace, BlasHandle& blas,
                                 cudaStream_t stream) {
    if (N <= 0 || OC <= 0) return cudaSuccess;
#if defined(__CUDACC__)
    if (dinp) sgemm(blas, stream, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout, OC, 0.0f, dinp, C);
    sgemm(blas, stream, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dw, C);
#else
    const MatmulPrecision prec = blas.precision;
    if (cudaError_t e = emulated_product(stream, [=] {
            const ProductInput g(dout, (long)N * OC, prec), a(inp, (long)N * C, prec),
                b(w, (long)OC * C, dinp ? prec : MatmulPrecision::fp32);  // w only serves dinp
            matmul_backward_cpu(dinp, dw, nullptr, g.p, a.p, b.p, N, C, OC);
        }))
        return e;
#endif
    if (dbias) return bias_grad(dbias, dout, N, OC, workspace, stream);
    return cudaGetLastError();
}

// ---- bf16 (mixed precision) ----------------------------------------------------------------------

#if defined(__CUDACC__)

// C (m x n, column-major, type ctype) = op(A) op(B) + beta C, bf16 A and B, fp32 accumulation.
// Default math (tensor cores) rather than the handle's pedantic fp32 mode, but never a split-K
// reduction in reduced precision: the sum is fp32 until the one rounding of the output.
static void gemm_bf16(BlasHandle& b, cudaStream_t stream, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                      const bf16* A, int lda, const bf16* B, int ldb, float beta, void* Cm, cudaDataType_t ctype, int ldc) {
    cublasHandle_t h = static_cast<cublasHandle_t>(b.handle);
    blas_check(cublasSetStream(h, stream), "cublasSetStream");
    blas_check(cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
               "cublasSetMathMode");
    const float one = 1.0f;
    const cublasStatus_t s = cublasGemmEx(h, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, Cm, ctype,
                                          ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    blas_set_precision(b, b.precision);  // the fp32 products keep their mode
    if (s != CUBLAS_STATUS_SUCCESS)
        throw Error("cuBLAS: cublasGemmEx bf16 (m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" +
                    std::to_string(k) + "): " + cublas_status_name(s));
}

// The largest power of two, up to 256, that divides the address: cuBLASLt's heuristic otherwise
// assumes 256-byte alignment and may pick an algorithm the real pointers cannot run.
static uint32_t alignment_of(const void* p) {
    uint32_t a = 256;
    while (a > 1 && reinterpret_cast<uintptr_t>(p) % a) a /= 2;
    return a;
}

// cuBLASLt's descriptors, destroyed however lt_forward leaves.
struct LtDescriptors {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t A = nullptr, B = nullptr, D = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~LtDescriptors() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        for (auto l : {A, B, D})
            if (l) cublasLtMatrixLayoutDestroy(l);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

// out (N,OC) = epilogue(inp (N,C) w^T + bias) through cuBLASLt, fp32 accumulation, bf16 out; with
// gelu_pre, the epilogue also stores the pre-activation there (GELU_AUX_BIAS), as the backward needs.
// Without an epilogue and without an algorithm for these pointers and strides (an odd vocabulary
// as the logits' leading dimension, say), the product falls back to cublasGemmEx.
static void lt_forward(BlasHandle& b, cudaStream_t stream, bf16* out, bf16* gelu_pre, const bf16* inp, const bf16* w,
                       const bf16* bias, int N, int C, int OC) {
    auto ok = [](cublasStatus_t s, const char* call) { blas_check(s, call); };
    LtDescriptors d;
    ok(cublasLtMatmulDescCreate(&d.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;  // column-major: out^T = w (C x OC)^T inp^T
    ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
    ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
    cublasLtEpilogue_t epi = gelu_pre ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                      : (bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
    ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), "EPILOGUE");
    if (bias) {  // bf16, D's type (the default, set for the reader)
        const cudaDataType_t bt = CUDA_R_16BF;
        ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "BIAS_POINTER");
        ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), "BIAS_DATA_TYPE");
    }
    if (gelu_pre) {  // in D's type, bf16; ld a multiple of 8 (4C)
        const int64_t ld = OC;
        ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &gelu_pre, sizeof gelu_pre), "AUX_POINTER");
        ok(cublasLtMatmulDescSetAttribute(d.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld), "AUX_LD");
    }
    ok(cublasLtMatrixLayoutCreate(&d.A, CUDA_R_16BF, C, OC, C), "layout A");
    ok(cublasLtMatrixLayoutCreate(&d.B, CUDA_R_16BF, C, N, C), "layout B");
    ok(cublasLtMatrixLayoutCreate(&d.D, CUDA_R_16BF, OC, N, OC), "layout D");
    ok(cublasLtMatmulPreferenceCreate(&d.pref), "cublasLtMatmulPreferenceCreate");
    const size_t ws = kLtWorkspaceBytes;
    ok(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), "workspace");
    const uint32_t align_a = alignment_of(w), align_b = alignment_of(inp), align_d = alignment_of(out);
    ok(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a), "align A");
    ok(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b), "align B");
    ok(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d), "align C");
    ok(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d), "align D");
    // a split-K reduction in fp32 or none: one rounding of the output, as the twins assume
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_NONE;
    ok(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes),
       "reduction scheme");
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    const auto lt = static_cast<cublasLtHandle_t>(b.lt);
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt, d.desc, d.A, d.B, d.D, d.D, d.pref, 1, &heur, &found);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
        if (!bias && !gelu_pre) {
            gemm_bf16(b, stream, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, inp, C, 0.0f, out, CUDA_R_16BF, OC);
            return;
        }
        throw Error("cuBLASLt: no algorithm for the bf16 product (N=" + std::to_string(N) + " C=" + std::to_string(C) +
                    " OC=" + std::to_string(OC) + ", epilogue " + std::to_string((int)epi) + "): " + cublas_status_name(hs));
    }
    const float one = 1.0f, zero = 0.0f;
    const cublasStatus_t s = cublasLtMatmul(lt, d.desc, &one, w, d.A, inp, d.B, &zero, out, d.D, out, d.D, &heur.algo,
                                            b.lt_workspace, ws, stream);
    if (s != CUBLAS_STATUS_SUCCESS)
        throw Error("cuBLASLt: cublasLtMatmul bf16 (N=" + std::to_string(N) + " C=" + std::to_string(C) + " OC=" +
                    std::to_string(OC) + "): " + cublas_status_name(s));
}

#else  // emulated: the CPU BLAS on the bf16 values, in fp32, then one rounding (the fused epilogue's)

static std::vector<float> widen(const bf16* x, long n) {
    std::vector<float> v(x ? n : 0);
    for (long i = 0; i < (long)v.size(); i++) v[i] = __bfloat162float(x[i]);
    return v;
}

#endif

cudaError_t matmul_forward_cuda(uint16_t* out16, const uint16_t* inp16, const uint16_t* w16, const uint16_t* bias16, int N,
                                int C, int OC, BlasHandle& blas, cudaStream_t stream, uint16_t* gelu_pre16) {
    if (N <= 0 || OC <= 0) return cudaSuccess;
    bf16* out = as_bf16(out16);
    bf16* pre = gelu_pre16 ? as_bf16(gelu_pre16) : nullptr;
    const bf16 *inp = as_bf16(inp16), *w = as_bf16(w16), *bias = bias16 ? as_bf16(bias16) : nullptr;
#if defined(__CUDACC__)
    lt_forward(blas, stream, out, pre, inp, w, bias, N, C, OC);
#else
    if (cudaError_t e = emulated_product(stream, [=] {
            const long n = (long)N * OC;
            const auto a = widen(inp, (long)N * C), wf = widen(w, (long)OC * C), bf = widen(bias, OC);
            std::vector<float> acc(n), act(pre ? n : 0);
            matmul_forward_cpu(acc.data(), a.data(), wf.data(), bias ? bf.data() : nullptr, N, C, OC);
            if (pre) gelu_forward_cpu(act.data(), acc.data(), n);
            for (long i = 0; i < n; i++) {
                if (pre) pre[i] = __float2bfloat16_rn(acc[i]);
                out[i] = __float2bfloat16_rn(pre ? act[i] : acc[i]);
            }
        }))
        return e;
#endif
    return cudaGetLastError();
}

cudaError_t matmul_backward_cuda(uint16_t* dinp16, float* dw, float* dbias, const uint16_t* dout16, const uint16_t* inp16,
                                 const uint16_t* w16, int N, int C, int OC, float* workspace, BlasHandle& blas,
                                 cudaStream_t stream) {
    if (N <= 0 || OC <= 0) return cudaSuccess;
    bf16* dinp = dinp16 ? as_bf16(dinp16) : nullptr;
    const bf16 *dout = as_bf16(dout16), *inp = as_bf16(inp16), *w = as_bf16(w16);
#if defined(__CUDACC__)
    if (dinp) gemm_bf16(blas, stream, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, dout, OC, 0.0f, dinp, CUDA_R_16BF, C);
    gemm_bf16(blas, stream, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dw, CUDA_R_32F, C);
#else
    if (cudaError_t e = emulated_product(stream, [=] {
            const auto g = widen(dout, (long)N * OC), a = widen(inp, (long)N * C),
                       wf = widen(dinp ? w : nullptr, (long)OC * C);
            std::vector<float> di(dinp ? (size_t)N * C : 0);
            matmul_backward_cpu(dinp ? di.data() : nullptr, dw, nullptr, g.data(), a.data(), wf.data(), N, C, OC);
            for (size_t i = 0; i < di.size(); i++) dinp[i] = __float2bfloat16_rn(di[i]);
        }))
        return e;
#endif
    if (dbias) return bias_grad(dbias, dout, N, OC, workspace, stream);
    return cudaGetLastError();
}

}  // namespace diloco
