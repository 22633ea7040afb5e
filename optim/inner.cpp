#include "optim/inner.h"

#include "kernels/common.h"
#include "kernels/gradnorm.h"
#include "optim/schedule.h"

namespace diloco {

void inner_init(InnerOptimizer& opt, const GPT& model, const InnerHyper& h) {
    opt.h = h;
    opt.m.assign(model.num_params, 0.0f);
    opt.v.assign(model.num_params, 0.0f);
    opt.segments = gpt_adamw_segments(model);
}

float compute_gradients(GPT& model, const int* tokens, const int* targets, int B, int T, int micro_batches) {
    DILOCO_CHECK(micro_batches >= 1, "compute_gradients: micro_batches must be >= 1");
    gpt_zero_grad(model);  // once per step: every backward adds into the gradients (model/gpt.h)
    const size_t rows = (size_t)B * T;
    // the micro-batches' mean losses; equal sizes, so their mean is the mean over all rows. With
    // one micro-batch this returns the forward's float unchanged, so K = 1 runs as before to the bit.
    double sum = 0.0;
    for (int k = 0; k < micro_batches; k++) {
        sum += gpt_forward(model, tokens + k * rows, targets + k * rows, B, T);
        gpt_backward(model, micro_batches);
    }
    return (float)(sum / micro_batches);
}

static void sgd_update(float* p, const float* g, const std::vector<AdamWSegment>& segs, float lr,
                       float wd, float grad_scale) {
    for (const auto& s : segs) {
        const float decay = s.decay ? wd : 0.0f;
#pragma omp parallel for schedule(static)
        for (long i = (long)s.offset; i < (long)(s.offset + s.count); i++)
            p[i] -= lr * (g[i] * grad_scale + decay * p[i]);
    }
}

InnerStepInfo inner_update(InnerOptimizer& opt, GPT& model, long step) {
    const InnerHyper& h = opt.h;
    const double norm = global_norm_cpu(model.grads.data(), model.num_params);
    const float scale = clip_scale(norm, h.grad_clip);
    const float lr = lr_at(step, h.total_steps, h.warmup, h.lr, h.min_lr_frac);
    if (h.opt == "adamw") {
        const AdamWHyper ah{lr, h.beta1, h.beta2, h.eps, h.weight_decay};
        adamw_update_cpu(model.params.data(), opt.m.data(), opt.v.data(), model.grads.data(),
                         opt.segments.data(), (int)opt.segments.size(), ah, step, scale);
    } else {
        sgd_update(model.params.data(), model.grads.data(), opt.segments, lr, h.weight_decay, scale);
    }
    return {lr, norm};
}

}  // namespace diloco
