// The inner optimizer of optim/inner.h with its state on the CUDA device: the gradient norm and
// clipping factor (gradnorm_cuda), then one fused AdamW launch over the flat buffer.
#pragma once
#include "kernels/adamw_cuda.h"
#include "model/gpt_cuda.h"
#include "optim/inner.h"

namespace diloco {

struct InnerOptimizerCuda {
    InnerHyper h;
    float* m = nullptr;  // device, flat layout
    float* v = nullptr;
    AdamWSegmentsDevice segments;
    float* norm_workspace = nullptr;
    double* norm_out = nullptr;
};

// compute_gradients of optim/inner.h on the device: tokens and targets (host) hold micro_batches
// x B rows, the gradients are zeroed once and each micro-batch of B adds its gradient weighted
// 1/micro_batches; returns the mean loss over all rows.
float compute_gradients_cuda(GPTCuda& model, const int* tokens, const int* targets, int B, int T, int micro_batches = 1);

void inner_cuda_create(InnerOptimizerCuda& opt, const GPTCuda& model, const InnerHyper& h);
void inner_cuda_destroy(InnerOptimizerCuda& opt);
// Step `step` (from 1) from model.grads; the norm is the one value that comes back to the host.
InnerStepInfo inner_update_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step);

}  // namespace diloco
