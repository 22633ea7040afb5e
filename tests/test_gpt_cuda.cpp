// One training step of the whole model on the CUDA path against the same step on the CPU: the loss
// and the gradient of every named tensor. Built into emu_twin_tests (every kernel's own source
// emulated, the CPU BLAS for the products) and into cuda_native_tests (skips without a device).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "model/gpt.h"
#include "model/gpt_cuda.h"
#include "tests/compare.h"

#ifndef DILOCO_EMULATE
#include "kernels/cuda_info.h"
#endif

using namespace diloco;
using namespace diloco::test;

TEST(CudaModel, TrainingStepMatchesCpu) {
#ifndef DILOCO_EMULATE
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (" << cuda_summary() << "); native GPU test not run";
#endif
    const GPTConfig cfg{67, 24, 2, 2, 64};  // head size 32; vocab and T not multiples of any tile
    const int B = 2, T = 19;
    GPT cpu;
    gpt_build(cpu, cfg);
    gpt_init(cpu, 11);
    gpt_allocate(cpu, B, T);
    Rng rng(12);
    std::vector<int> tok(B * T), tgt(B * T);
    for (auto& t : tok) t = (int)rng.below(cfg.vocab);
    for (auto& t : tgt) t = (int)rng.below(cfg.vocab);
    gpt_zero_grad(cpu);
    const float cpu_loss = gpt_forward(cpu, tok.data(), tgt.data(), B, T);
    gpt_backward(cpu);

    std::vector<float> grads[2];
    for (int run = 0; run < 2; run++) {
#ifdef DILOCO_EMULATE
        diloco::emu::set_schedule_seed(600 + run);
#endif
        GPTCuda dev;
        gpt_cuda_create(dev, cpu, B, T);
        gpt_cuda_zero_grad(dev);
        const float loss = gpt_cuda_forward(dev, tok.data(), tgt.data(), B, T);
        gpt_cuda_backward(dev);
        grads[run] = gpt_cuda_download(dev, dev.grads);
        gpt_cuda_destroy(dev);
        EXPECT_NEAR(loss, cpu_loss, 1e-5 * cpu_loss);
    }
    EXPECT_EQ(std::memcmp(grads[0].data(), grads[1].data(), 4 * grads[0].size()), 0)
        << "the gradients depend on the schedule";
    // float32 against float32 with other summation orders: the framework oracle's per-tensor bound
    for (const auto& t : cpu.tensors) {
        double diff = 0, norm = 0;
        for (size_t i = t.offset; i < t.offset + t.numel(); i++) {
            diff += std::pow((double)grads[0][i] - cpu.grads[i], 2);
            norm += std::pow((double)cpu.grads[i], 2);
        }
        EXPECT_LE(std::sqrt(diff), 1e-4 * std::sqrt(norm) + 1e-12) << t.name;
    }
}
