#include "optim/inner_cuda.h"

#include <cmath>
#include <string>

#include "kernels/common.h"
#include "kernels/cuda_check.h"
#include "kernels/gradnorm.h"
#include "kernels/gradnorm_cuda.h"
#include "optim/schedule.h"

namespace diloco {

void gradients_on_device_cuda(GPTCuda& model, int B, int T, int micro_batches) {
    DILOCO_CHECK(micro_batches >= 1, "compute_gradients: micro_batches must be >= 1");
    gpt_cuda_zero_grad(model);  // once per step: every backward adds into the gradients
    DILOCO_CUDA_CHECK(cudaMemsetAsync(gpt_cuda_step_figures(model), 0, sizeof(double), model.stream));  // the loss sum
    model.step_micro_batches = micro_batches;
    for (int k = 0; k < micro_batches; k++) {
        gpt_cuda_forward_staged(model, B, T, k);
        gpt_cuda_backward(model, micro_batches);
    }
}

void compute_gradients_cuda(GPTCuda& model, const int* tokens, const int* targets, int B, int T, int micro_batches) {
    DILOCO_CHECK(micro_batches >= 1, "compute_gradients: micro_batches must be >= 1");
    gpt_cuda_stage_rows(model, tokens, targets, B, T, micro_batches);
    gradients_on_device_cuda(model, B, T, micro_batches);
}

// the mean of the micro-batches' means, in double, rounded once (the CPU rounds each micro-batch's
// mean to float first: at most an ulp apart, and the same for one micro-batch)
static float step_loss(double sum, int micro_batches) { return (float)(sum / micro_batches); }

float gpt_cuda_read_step_loss(const GPTCuda& model) {
    double sum = 0.0;
    DILOCO_CUDA_CHECK(cudaMemcpy(&sum, gpt_cuda_step_figures(model), sizeof(double), cudaMemcpyDeviceToHost));
    return step_loss(sum, model.step_micro_batches);
}

std::vector<StepFigures> read_step_figures_cuda(const GPTCuda& model, int first_slot, int count, const float* lrs,
                                                int micro_batches) {
    DILOCO_CHECK(count >= 0 && count <= kStepFigureSlots && first_slot >= 0 && first_slot < kStepFigureSlots,
                 "read_step_figures_cuda: slots out of range");
    // every slot in one copy (1.5 KiB), ordered after the steps on the model's stream
    DILOCO_CUDA_CHECK(cudaMemcpyAsync(model.figures_host, gpt_cuda_kept_figures(model, 0),
                                      3 * kStepFigureSlots * sizeof(double), cudaMemcpyDeviceToHost, model.stream));
    DILOCO_CUDA_CHECK(cudaStreamSynchronize(model.stream));
    std::vector<StepFigures> out(count);
    for (int k = 0; k < count; k++) {
        const double* f = model.figures_host + 3 * ((first_slot + k) % kStepFigureSlots);
        out[k].loss = step_loss(f[0], micro_batches);
        out[k].inner = {lrs[k], std::sqrt(f[1])};
    }
    return out;
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
    DILOCO_CUDA_CHECK(cudaMalloc(&opt.step_scalars, sizeof(AdamWStepScalars)));
    DILOCO_CUDA_CHECK(cudaMallocHost(&opt.step_scalars_host, sizeof(AdamWStepScalars)));
    DILOCO_CUDA_CHECK(cudaEventCreate(&opt.scalars_staged));
}

void inner_cuda_destroy(InnerOptimizerCuda& opt) {
    for (void* p : {(void*)opt.m, (void*)opt.v, (void*)opt.norm_workspace, (void*)opt.step_scalars})
        if (p) cudaFree(p);
    if (opt.step_scalars_host) cudaFreeHost(opt.step_scalars_host);
    if (opt.scalars_staged) cudaEventDestroy(opt.scalars_staged);
    adamw_free_segments(opt.segments);
    opt = InnerOptimizerCuda{};
}

float stage_step_scalars_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step) {
    const InnerHyper& h = opt.h;
    const float lr = lr_at(step, h.total_steps, h.warmup, h.lr, h.min_lr_frac);
    if (opt.scalars_in_flight && cudaEventQuery(opt.scalars_staged) != cudaSuccess)
        DILOCO_CUDA_CHECK(cudaEventSynchronize(opt.scalars_staged));  // the last step's copy has left
    *opt.step_scalars_host = adamw_step_scalars(AdamWHyper{lr, h.beta1, h.beta2, h.eps, h.weight_decay}, step);
    DILOCO_CUDA_CHECK(cudaMemcpyAsync(opt.step_scalars, opt.step_scalars_host, sizeof(AdamWStepScalars),
                                      cudaMemcpyHostToDevice, model.stream));
    DILOCO_CUDA_CHECK(cudaEventRecord(opt.scalars_staged, model.stream));
    opt.scalars_in_flight = true;
    return lr;
}

void update_on_device_cuda(InnerOptimizerCuda& opt, GPTCuda& model) {
    const InnerHyper& h = opt.h;
    double* figures = gpt_cuda_step_figures(model);
    DILOCO_CUDA_CHECK(global_norm_squared_cuda(figures + 1, model.grads, model.layout.num_params, opt.norm_workspace,
                                               model.stream));
    DILOCO_CUDA_CHECK(step_gate_cuda(figures, gpt_cuda_halted(model), model.stream));
    const AdamWHyper ah{h.lr, h.beta1, h.beta2, h.eps, h.weight_decay};  // lr and t: from opt.step_scalars
    DILOCO_CUDA_CHECK(adamw_update_clipped_cuda(model.params, opt.m, opt.v, model.grads, opt.segments, ah,
                                                opt.step_scalars, figures + 2, h.grad_clip, model.stream,
                                                model.precision == Precision::bf16 ? model.params16 : nullptr));
}

float inner_update_cuda(InnerOptimizerCuda& opt, GPTCuda& model, long step) {
    const float lr = stage_step_scalars_cuda(opt, model, step);
    update_on_device_cuda(opt, model);
    return lr;
}

}  // namespace diloco
