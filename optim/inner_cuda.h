// The inner optimizer of optim/inner.h with its state on the CUDA device: the gradient norm
// (gradnorm_cuda), then one fused AdamW launch over the flat buffer that takes the clipping factor
// from that norm on the device. A step waits for the device once, at its end, to read its loss and
// norm (model.step_figures) in one copy.
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
};

// compute_gradients of optim/inner.h on the device: tokens and targets (host) hold micro_batches
// x B rows, the gradients are zeroed once and each micro-batch of B adds its gradient weighted
// 1/micro_batches. Enqueues the work and returns without waiting; the mean loss over all rows
// comes back with inner_update_cuda's figures, or from gpt_cuda_read_step_loss.
void compute_gradients_cuda(GPTCuda& model, const int* tokens, const int* targets, int B, int T, int micro_batches = 1);
// The mean loss of the last compute_gradients_cuda (waits for the device).
float gpt_cuda_read_step_loss(const GPTCuda& model);

void inner_cuda_create(InnerOptimizerCuda& opt, const GPTCuda& model, const InnerHyper& h);
void inner_cuda_destroy(InnerOptimizerCuda& opt);
// Step `step` (from 1) from model.grads, then the step's one wait for the device: its mean loss
// (of the compute_gradients_cuda before) and the gradient norm come back in one copy.
StepFigures inner_update_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step);

}  // namespace diloco
