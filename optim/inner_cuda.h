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
    // the step's learning rate and bias corrections: on the device, where AdamW reads them, and in
    // page-locked memory on their way there (scalars_staged: recorded after the copy)
    AdamWStepScalars* step_scalars = nullptr;
    AdamWStepScalars* step_scalars_host = nullptr;
    cudaEvent_t scalars_staged = nullptr;
    bool scalars_in_flight = false;
};

// compute_gradients of optim/inner.h on the device: tokens and targets (host) hold micro_batches
// x B rows, the gradients are zeroed once and each micro-batch of B adds its gradient weighted
// 1/micro_batches. Enqueues the work and returns without waiting; the mean loss over all rows is
// left in the step's figures (gpt_cuda_step_figures). It is gpt_cuda_stage_rows, then
// gradients_on_device_cuda: the part whose launches are the same at every step.
void compute_gradients_cuda(GPTCuda& model, const int* tokens, const int* targets, int B, int T, int micro_batches = 1);
void gradients_on_device_cuda(GPTCuda& model, int B, int T, int micro_batches);

void inner_cuda_create(InnerOptimizerCuda& opt, const GPTCuda& model, const InnerHyper& h);
void inner_cuda_destroy(InnerOptimizerCuda& opt);
// Enqueues step `step` (from 1) from model.grads and returns its learning rate: its scalars go to
// the device (stage_step_scalars_cuda), then the norm into the step's figures, the gate
// (step_gate_cuda: nothing changes once a step's loss or norm was not finite) and AdamW
// (update_on_device_cuda: the same launches at every step).
float inner_update_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step);
float stage_step_scalars_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step);
void update_on_device_cuda(InnerOptimizerCuda& opt, GPTCuda& model);

// Reads the figures of `count` steps kept in slots that follow one another from `first_slot`
// (wrapping around kStepFigureSlots; gpt_cuda_keep_step_figures), in one copy, waiting for the
// device. lrs: the steps' learning rates.
std::vector<StepFigures> read_step_figures_cuda(const GPTCuda& model, int first_slot, int count, const float* lrs,
                                                int micro_batches);
// The mean loss of the last compute_gradients_cuda (waits for the device).
float gpt_cuda_read_step_loss(const GPTCuda& model);

}  // namespace diloco
