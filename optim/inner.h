// The inner optimizer: AdamW (or plain SGD), linear warmup + cosine decay, global-norm clipping.
// One call of inner_update is one step of the paper's InnerOpt.
#pragma once
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "model/gpt.h"

namespace diloco {

struct InnerHyper {
    std::string opt = "adamw";  // adamw | sgd
    float lr = 1e-3f, min_lr_frac = 0.1f, weight_decay = 0.1f;
    float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, grad_clip = 1.0f;
    long warmup = 100, total_steps = 1000;
};

struct InnerOptimizer {
    InnerHyper h;
    std::vector<float> m, v;  // AdamW moments, in the flat parameter layout
    std::vector<AdamWSegment> segments;
};

void inner_init(InnerOptimizer& opt, const GPT& model, const InnerHyper& h);

// Zeroes the gradients, runs forward and backward on one batch; returns its mean loss.
// With micro_batches = K > 1 (gradient accumulation, --grad-accum) tokens and targets hold K*B rows
// and the model's activations need only B: the gradients are zeroed once, then each micro-batch
// of B rows adds its gradient weighted 1/K, so the sum is the gradient of the mean loss over all
// K*B rows, as one batch of K*B would give to float rounding. Returns that mean loss.
float compute_gradients(GPT& model, const int* tokens, const int* targets, int B, int T, int micro_batches = 1);

struct InnerStepInfo {
    float lr;
    double grad_norm;  // before clipping
};

// Applies step `step` (from 1) of the inner optimizer using model.grads.
InnerStepInfo inner_update(InnerOptimizer& opt, GPT& model, long step);

// A device step's figures (optim/inner_cuda.h, optim/device.h): its mean loss and its update's,
// read back steps later, and where its time went on the device (from events around the step).
struct StepFigures {
    float loss = 0.0f;
    InnerStepInfo inner{};
    double device_seconds = 0.0;   // from the step's first operation on the device to its update's end
    double average_seconds = 0.0;  // of which the gradient average in the worker (NCCL; 0 without)
};

}  // namespace diloco
