// Softmax + cross-entropy, fused: no probability tensor is ever stored.
#pragma once

namespace diloco {

// logits (N,V), targets (N) in [0,V).
// losses (N) = lse - logits[target], lse (N) = log sum_v exp(logits[v]) (saved for backward).
void crossentropy_forward_cpu(float* losses, float* lse, const float* logits, const int* targets,
                              int N, int V);

// dlogits (N,V) = (softmax(logits) - onehot(target)) * dloss, where dloss is the gradient of the
// final scalar with respect to each row's loss (1/N for a mean). Overwrites; may alias logits.
void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* lse,
                               const int* targets, float dloss, int N, int V);

}  // namespace diloco
