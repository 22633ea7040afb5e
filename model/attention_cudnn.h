// cuDNN's fused attention (SDPA: flash attention, forward and backward) as the bf16 model's
// attention, `train --attention cudnn`: a fast peer in training itself, beside our variant 2.
//
// It reads and writes the memory our kernel does, through strides, with no transpose:
//   qkv  (B, T, 3C) bf16, per token [q | k | v], head h at column h*hs of each, read as (B, NH, T, hs)
//   out  (B, T, C) bf16, head h at column h*hs
//   stats (B, NH, T) fp32: cuDNN's softmax statistics, which only its own backward reads
//   dout (B, T, C) and dqkv (B, T, 3C) bf16, laid out as out and qkv
// Causal, scale 1/sqrt(hs), fp32 softmax and accumulation. cuDNN 9 is loaded at run time
// (DILOCO_CUDNN_LIB, the loader's path, the toolkit's folders), so that the program starts on
// machines without it; the graphs are built once per shape and reused. `diloco bench attention`
// times the same graphs as its peer (tools/bench_cudnn.cpp).
#pragma once
#include <cstdint>
#include <memory>

#include "kernels/cuda_compat.h"

namespace diloco {

struct CudnnSdpa;  // the handle, the graphs by shape, their workspace

// Loads cuDNN and makes a handle that runs on `stream`. Throws Error saying why when this build
// has no cudnn-frontend headers (tools/setup.sh), the program is emulated, or no cuDNN 9 loads.
std::shared_ptr<CudnnSdpa> cudnn_sdpa_create(cudaStream_t stream);

void cudnn_sdpa_forward(CudnnSdpa& s, uint16_t* out, float* stats, const uint16_t* qkv, int B, int T, int C, int NH);
// dqkv is overwritten (not added to), as attention_backward_bf16_cuda does.
void cudnn_sdpa_backward(CudnnSdpa& s, uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv, const uint16_t* out,
                         const float* stats, int B, int T, int C, int NH);

}  // namespace diloco
