// The outer optimizer of DiLoCo, applied to the outer gradient ("pseudo-gradient")
//   delta = theta_global_old - mean_m theta_m      (old minus new)
// in PyTorch's SGD convention (dampening 0), which the papers' implementations follow:
//   nesterov:  mom = mu * mom + delta;  theta -= lr * (delta + mu * mom)
//   sgd:       mom = mu * mom + delta;  theta -= lr * mom        (mu = 0: theta -= lr * delta)
// With sgd, lr 1 and mu 0 the new theta is the replicas' mean (FedAvg).
#pragma once
#include <cstddef>

namespace diloco {

struct OuterHyper {
    float lr = 0.7f;
    float momentum = 0.9f;
    bool nesterov = true;
};

// theta, delta and mom hold n floats; mom starts at zero.
void outer_step(float* theta, const float* delta, float* mom, size_t n, const OuterHyper& h);

// The Nesterov step with the momentum fed by one input and the step by another (delayed Nesterov,
// optim/async_local_sgd.h):  mom = mu * mom + into_momentum;  theta -= lr * (into_step + mu * mom).
// With into_momentum == into_step it is outer_step's nesterov, computed the same way.
void outer_step_split(float* theta, const float* into_momentum, const float* into_step, float* mom, size_t n,
                      const OuterHyper& h);

}  // namespace diloco
