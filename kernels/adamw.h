// Fused AdamW over the flat parameter buffer, in one pass.
#pragma once
#include <cstddef>

namespace diloco {

// A run of the flat buffer that shares one weight-decay rule. Decay applies to 2-D weights only
// (matrices and embeddings), not to biases and LayerNorm gains, as in nanoGPT.
struct AdamWSegment {
    size_t offset;
    size_t count;
    bool decay;
};

struct AdamWHyper {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
};

// What changes from step to step: the learning rate and the bias corrections 1 - b1^t and
// 1 - b2^t (each from double, rounded to float once). The CPU's AdamW and the CUDA one take them
// from here; the CUDA one reads them from device memory, so that a captured step (a CUDA Graph)
// runs whichever step's they hold.
struct AdamWStepScalars {
    float lr, bc1, bc2;
};
AdamWStepScalars adamw_step_scalars(const AdamWHyper& h, long t);

// For each element i of each segment, with g = grads[i] * grad_scale (grad_scale carries clipping):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
// t counts optimizer steps from 1.
void adamw_update_cpu(float* params, float* m, float* v, const float* grads,
                      const AdamWSegment* segments, int nsegments, const AdamWHyper& h, long t,
                      float grad_scale);

}  // namespace diloco
