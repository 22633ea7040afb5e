// CUDA twins of quantize.h: the same payload bytes as the CPU codec (device pointers).
#pragma once
#include <cstdint>

#include "kernels/cuda_compat.h"
#include "kernels/quantize.h"

namespace diloco {

cudaError_t quantize_cuda(uint8_t* payload, const float* x, size_t n, QuantFormat f, int block,
                          cudaStream_t stream);
// acc += decoded payload, fp32
cudaError_t dequantize_add_cuda(float* acc, const uint8_t* payload, size_t n, QuantFormat f, int block,
                                cudaStream_t stream);

}  // namespace diloco
