// Linear layer through CBLAS: out = inp @ w^T + bias, with w stored (OC, C) as in PyTorch/llm.c.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace diloco {

// out (N,OC) = inp (N,C) @ w^T + bias (OC). bias may be null.
void matmul_forward_cpu(float* out, const float* inp, const float* w, const float* bias, int N,
                        int C, int OC);

// dinp (N,C) = dout (N,OC) @ w       (overwrites; null skips it)
// dw (OC,C) += dout^T @ inp          (accumulates)
// dbias (OC) += column sums of dout  (accumulates; null skips it)
void matmul_backward_cpu(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                         const float* w, int N, int C, int OC);

// The products of the CUDA path (kernels/matmul_cuda.h): fp32 (cuBLAS without tensor-core
// rounding, the default) or tf32 (tensor cores: inputs rounded to 10 mantissa bits, fp32 sums).
enum class MatmulPrecision { fp32, tf32 };

// "fp32" or "tf32"; anything else throws an Error naming the accepted values.
MatmulPrecision parse_matmul_precision(const std::string& name);
const char* matmul_precision_name(MatmulPrecision p);

// The tf32 value nearest x, ties to even (10 explicit mantissa bits, fp32's exponent), as a float.
// NaN and infinities pass unchanged; a value past the largest tf32 rounds to infinity.
inline float round_to_tf32(float x) {
    uint32_t b;
    std::memcpy(&b, &x, 4);
    if ((b & 0x7f800000u) == 0x7f800000u) return x;
    b += 0x0fffu + ((b >> 13) & 1u);  // half of the dropped 13 bits, plus one when the kept lsb is odd
    b &= ~0x1fffu;
    std::memcpy(&x, &b, 4);
    return x;
}

}  // namespace diloco
