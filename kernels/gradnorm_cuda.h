// CUDA twin of gradnorm.h: the global norm's square, reduced deterministically.
#pragma once
#include <cstddef>

#include "kernels/cuda_compat.h"

namespace diloco {

constexpr int kGradNormBlocks = 1024;  // stage-1 partial sums: a fixed number, summed in order

// *out_dev = sum g^2 (double, device memory). workspace: kGradNormBlocks floats of device memory.
cudaError_t global_norm_squared_cuda(double* out_dev, const float* g, size_t n, float* workspace,
                                     cudaStream_t stream);

// The gate between a training step's figures and its update, for a host that reads the figures
// only steps later (optim/inner_cuda.h). figures (device): the step's {loss sum, squared gradient
// norm, gate}; halted (device, one double): 0 until a step's loss or norm is not finite, then 1 for
// good. Writes the gate: the squared norm, or NaN once halted, which adamw_update_clipped_cuda takes
// as "change nothing". So the weights stay those of before the first bad step, however many steps
// the host enqueues after it before it reads their figures.
cudaError_t step_gate_cuda(double* figures, double* halted, cudaStream_t stream);

}  // namespace diloco
