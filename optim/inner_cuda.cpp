#include "optim/inner_cuda.h"

#include <cmath>
#include <string>

#include "kernels/common.h"
#include "kernels/cuda_check.h"
#include "kernels/gradnorm.h"
#include "kernels/gradnorm_cuda.h"
#include "optim/schedule.h"

namespace diloco {

float compute_gradients_cuda(GPTCuda& model, const int* tokens, const int* targets, int B, int T, int micro_batches) {
    DILOCO_CHECK(micro_batches >= 1, "compute_gradients: micro_batches must be >= 1");
    gpt_cuda_zero_grad(model);  // once per step: every backward adds into the gradients
    const size_t rows = (size_t)B * T;
    double sum = 0.0;  // as on the CPU: with one micro-batch the forward's float comes back unchanged
    for (int k = 0; k < micro_batches; k++) {
        sum += gpt_cuda_forward(model, tokens + k * rows, targets + k * rows, B, T);
        gpt_cuda_backward(model, micro_batches);
    }
    return (float)(sum / micro_batches);
}

void inner_cuda_create(InnerOptimizerCuda& opt, const GPTCuda& model, const InnerHyper& h) {
    DILOCO_CHECK(h.opt == "adamw", "the CUDA inner optimizer is AdamW (--inner-opt sgd runs on the CPU)");
    opt.h = h;
    const size_t n = model.layout.num_params;
    DILOCO_CUDA_CHECK(cudaMalloc(&opt.m, n * sizeof(float)));
    DILOCO_CUDA_CHECK(cudaMalloc(&opt.v, n * sizeof(float)));
    DILOCO_CUDA_CHECK(cudaMemset(opt.m, 0, n * sizeof(float)));
    DILOCO_CUDA_CHECK(cudaMemset(opt.v, 0, n * sizeof(float)));
    const std::vector<AdamWSegment> segs = gpt_adamw_segments(model.layout);
    DILOCO_CUDA_CHECK(adamw_upload_segments(opt.segments, segs.data(), (int)segs.size()));
    DILOCO_CUDA_CHECK(cudaMalloc(&opt.norm_workspace, kGradNormBlocks * sizeof(float)));
    DILOCO_CUDA_CHECK(cudaMalloc(&opt.norm_out, sizeof(double)));
}

void inner_cuda_destroy(InnerOptimizerCuda& opt) {
    for (void* p : {(void*)opt.m, (void*)opt.v, (void*)opt.norm_workspace, (void*)opt.norm_out})
        if (p) cudaFree(p);
    adamw_free_segments(opt.segments);
    opt = InnerOptimizerCuda{};
}

InnerStepInfo inner_update_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step) {
    const InnerHyper& h = opt.h;
    DILOCO_CUDA_CHECK(global_norm_squared_cuda(opt.norm_out, model.grads, model.layout.num_params, opt.norm_workspace,
                                      model.stream));
    double sq = 0.0;
    DILOCO_CUDA_CHECK(cudaMemcpy(&sq, opt.norm_out, sizeof(double), cudaMemcpyDeviceToHost));
    const double norm = std::sqrt(sq);
    const float lr = lr_at(step, h.total_steps, h.warmup, h.lr, h.min_lr_frac);
    const AdamWHyper ah{lr, h.beta1, h.beta2, h.eps, h.weight_decay};
    DILOCO_CUDA_CHECK(adamw_update_cuda(model.params, opt.m, opt.v, model.grads, opt.segments, ah, step,
                               clip_scale(norm, h.grad_clip), model.stream,
                               model.precision == Precision::bf16 ? model.params16 : nullptr));
    return {lr, norm};
}

}  // namespace diloco
