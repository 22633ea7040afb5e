// The inner optimizer of optim/inner.h with its state on the CUDA device: the gradient norm
// (gradnorm_cuda), the step's gate, then one fused AdamW launch over the flat buffer that takes the
// clipping factor from the gate on the device. Nothing here waits for the device: a step's loss and
// norm stay in its slot of model.step_figures until the trainer reads many steps' at once
// (optim/train_cuda.cpp).
#pragma once
#include <vector>

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
// 1/micro_batches. Enqueues the work and returns without waiting; the mean loss over all rows is
// left in the figures of model.figure_slot.
void compute_gradients_cuda(GPTCuda& model, const int* tokens, const int* targets, int B, int T, int micro_batches = 1);

void inner_cuda_create(InnerOptimizerCuda& opt, const GPTCuda& model, const InnerHyper& h);
void inner_cuda_destroy(InnerOptimizerCuda& opt);
// Enqueues step `step` (from 1) from model.grads: the norm into the figures of model.figure_slot,
// the gate (step_gate_cuda: nothing changes once a step's loss or norm was not finite), AdamW.
// Returns the step's learning rate.
float inner_update_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step);

// Reads the figures of `count` steps whose slots follow one another from `first_slot` (wrapping
// around kStepFigureSlots), in one copy, waiting for the device. lrs: the steps' learning rates.
std::vector<StepFigures> read_step_figures_cuda(const GPTCuda& model, int first_slot, int count, const float* lrs,
                                                int micro_batches);
// The mean loss of the last compute_gradients_cuda (waits for the device).
float gpt_cuda_read_step_loss(const GPTCuda& model);

}  // namespace diloco
