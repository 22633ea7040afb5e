// Each CUDA kernel against its CPU twin. This file is built twice:
//   emu_twin_tests     the kernels' own source run by the CUDA emulator (every CI run);
//   cuda_native_tests  the kernels on a real GPU; each test skips, saying so, without a device.
// Outputs are poisoned (0xFF bytes = NaN) before every launch. Each kernel runs twice (under two
// emulator schedules when emulated) and must give bit-identical results: the kernels are
// deterministic, and a missing barrier would change the emulated result with the schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/adamw.h"
#include "kernels/adamw_cuda.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/bf16.h"
#include "kernels/crossentropy.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/embedding.h"
#include "kernels/embedding_cuda.h"
#include "kernels/gelu.h"
#include "kernels/gelu_cuda.h"
#include "kernels/gradnorm.h"
#include "kernels/gradnorm_cuda.h"
#include "kernels/layernorm.h"
#include "kernels/quantize.h"
#include "kernels/quantize_cuda.h"
#include "kernels/layernorm_cuda.h"
#include "kernels/matmul.h"
#include "kernels/matmul_cuda.h"
#include "kernels/residual.h"
#include "kernels/residual_cuda.h"
#include "tests/compare.h"

#include "tests/twins.h"

using namespace diloco;
using namespace diloco::test;

namespace {

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), 4 * a.size()) == 0;
}

}  // namespace

TEST(Twin, ResidualMatchesCpuBitForBit) {
    REQUIRE_DEVICE();
    Rng rng(31);
    for (long n : {1L, 255L, 257L, 10003L}) {
        auto a = randn(n, rng), b = randn(n, rng), want = poisoned(n);
        residual_forward_cpu(want.data(), a.data(), b.data(), n);
        Dev<float> da(a), db(b), out(n);
        CUDA_OK(residual_forward_cuda(out.p, da.p, db.p, n, nullptr));
        EXPECT_TRUE(same_bits(out.get(), want)) << "n = " << n;
    }
}

TEST(Twin, LayerNormMatchesCpu) {
    REQUIRE_DEVICE();
    struct Shape { int N, C; };
    Rng rng(32);
    for (Shape s : {Shape{1, 3}, Shape{7, 24}, Shape{9, 130}, Shape{17, 768}}) {
        const size_t NC = (size_t)s.N * s.C;
        auto x = randn(NC, rng, 2.0), w = randn(s.C, rng), b = randn(s.C, rng), dout = randn(NC, rng);
        auto dx0 = randn(NC, rng), dw0 = randn(s.C, rng), db0 = randn(s.C, rng);  // accumulated into
        std::vector<float> out(NC), mean(s.N), rstd(s.N), dx = dx0, dw = dw0, db = db0;
        layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.N, s.C);
        layernorm_backward_cpu(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                               rstd.data(), s.N, s.C);
        std::vector<float> got[2][6];
        for (int run = 0; run < 2; run++) {
            use_schedule(100 + run);
            Dev<float> dX(x), dW(w), dB(b), dOut(NC), dMean(s.N), dRstd(s.N), dD(dout), gX(dx0), gW(dw0), gB(db0);
            CUDA_OK(layernorm_forward_cuda(dOut.p, dMean.p, dRstd.p, dX.p, dW.p, dB.p, s.N, s.C, nullptr));
            CUDA_OK(layernorm_backward_cuda(gX.p, gW.p, gB.p, dD.p, dX.p, dW.p, dMean.p, dRstd.p, s.N, s.C, nullptr));
            got[run][0] = dOut.get(), got[run][1] = dMean.get(), got[run][2] = dRstd.get();
            got[run][3] = gX.get(), got[run][4] = gW.get(), got[run][5] = gB.get();
        }
        for (int k = 0; k < 6; k++) EXPECT_TRUE(same_bits(got[0][k], got[1][k])) << "output " << k << " depends on the schedule";
        // the same sums in another order: the float32 bound C u (or N u for the column sums)
        // times the size of the terms, as in the CPU kernel tests
        auto as_double = [](const std::vector<float>& v) { return to_double(v); };
        const double tc = 8.0 * s.C * kU32, tn = 8.0 * (s.N + 1) * kU32;
        EXPECT_TRUE(close_max("out", got[0][0], as_double(out), tc));
        EXPECT_TRUE(close_rel("mean", got[0][1], as_double(mean), tc, tc * 2.5));
        EXPECT_TRUE(close_rel("rstd", got[0][2], as_double(rstd), tc, 0.0));
        EXPECT_TRUE(close_max("dx", got[0][3], as_double(dx), tc));
        EXPECT_TRUE(close_max("dw", got[0][4], as_double(dw), tn));
        EXPECT_TRUE(close_max("db", got[0][5], as_double(db), tn));
    }
}

TEST(Twin, CrossEntropyMatchesCpu) {
    REQUIRE_DEVICE();
    struct Shape { int N, V; };
    Rng rng(33);
    for (Shape s : {Shape{1, 2}, Shape{5, 17}, Shape{9, 256}, Shape{3, 1000}, Shape{2, 50257}}) {
        const size_t NV = (size_t)s.N * s.V;
        auto logits = randn(NV, rng, 3.0);
        std::vector<int> tg(s.N);
        for (auto& t : tg) t = (int)rng.below(s.V);
        std::vector<float> losses(s.N), lse(s.N), d(NV);
        crossentropy_forward_cpu(losses.data(), lse.data(), logits.data(), tg.data(), s.N, s.V);
        crossentropy_backward_cpu(d.data(), logits.data(), lse.data(), tg.data(), 1.0f / s.N, s.N, s.V);
        std::vector<float> got[2][3];
        for (int run = 0; run < 2; run++) {
            use_schedule(200 + run);
            Dev<float> dL(logits), dLoss(s.N), dLse(s.N), dD(NV);
            Dev<int> dT(tg);
            CUDA_OK(crossentropy_forward_cuda(dLoss.p, dLse.p, dL.p, dT.p, s.N, s.V, nullptr));
            CUDA_OK(crossentropy_backward_cuda(dD.p, dL.p, dLse.p, dT.p, 1.0f / s.N, s.N, s.V, nullptr));
            got[run][0] = dLoss.get(), got[run][1] = dLse.get(), got[run][2] = dD.get();
        }
        for (int k = 0; k < 3; k++) EXPECT_TRUE(same_bits(got[0][k], got[1][k])) << "output " << k << " depends on the schedule";
        // a sum of V positive terms in another order: V u relative, which log makes absolute
        const double tol = (s.V + 8) * kU32;
        EXPECT_TRUE(close_rel("lse", got[0][1], to_double(lse), 4 * kU32, tol));
        EXPECT_TRUE(close_rel("losses", got[0][0], to_double(losses), 4 * kU32, tol + 100 * kU32));
        EXPECT_TRUE(close_rel("dlogits", got[0][2], to_double(d), tol + 8 * kU32, 4 * kU32 / s.N));
    }
}

TEST(Twin, GeluMatchesCpu) {
    REQUIRE_DEVICE();
    Rng rng(34);
    for (long n : {1L, 1000L, 70001L}) {
        auto x = randn(n, rng, 3.0), d = randn(n, rng);
        std::vector<float> out(n), din(n);
        gelu_forward_cpu(out.data(), x.data(), n);
        gelu_backward_cpu(din.data(), x.data(), d.data(), n);
        Dev<float> dX(x), dD(d), dOut(n), dIn(n);
        CUDA_OK(gelu_forward_cuda(dOut.p, dX.p, n, nullptr));
        CUDA_OK(gelu_backward_cuda(dIn.p, dX.p, dD.p, n, nullptr));
        // the same formula; only tanhf implementations differ (a few ulp of |tanh| <= 1)
        EXPECT_TRUE(all_close("gelu forward", dOut.get().data(), to_double(out).data(), n,
                              [&](size_t i) { return 8 * kU32 * (std::fabs(out[i]) + std::fabs(x[i])); }));
        EXPECT_TRUE(all_close("gelu backward", dIn.get().data(), to_double(din).data(), n, [&](size_t i) {
            return 16 * kU32 * std::fabs(d[i]) * (1.0 + x[i] * x[i] * std::fabs(x[i]));
        }));
    }
}

TEST(Twin, EmbeddingMatchesCpuBitForBit) {
    REQUIRE_DEVICE();
    struct Shape { int B, T, C, V; };
    Rng rng(35);
    // N = 1, odd N, N past the sort's 256-key blocks and not a power of two; one token only
    // (one run of every position), and tokens mostly distinct
    for (Shape s : {Shape{1, 1, 8, 5}, Shape{2, 7, 24, 3}, Shape{3, 33, 130, 50}, Shape{4, 75, 9, 1},
                    Shape{3, 100, 5, 4000}}) {
        const int N = s.B * s.T;
        std::vector<int> tok(N);
        for (auto& t : tok) t = (int)rng.below(s.V);  // small vocabularies: many repeated tokens
        auto wte = randn((size_t)s.V * s.C, rng), wpe = randn((size_t)s.T * s.C, rng), dout = randn((size_t)N * s.C, rng);
        auto dwte0 = randn(wte.size(), rng), dwpe0 = randn(wpe.size(), rng);
        std::vector<float> out((size_t)N * s.C), dwte = dwte0, dwpe = dwpe0;
        embedding_forward_cpu(out.data(), tok.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
        embedding_backward_cpu(dwte.data(), dwpe.data(), dout.data(), tok.data(), s.B, s.T, s.C);
        for (int run = 0; run < 2; run++) {
            use_schedule(300 + run);
            Dev<int> dTok(tok), work(embedding_backward_workspace(s.B, s.T));
            Dev<float> dWte(wte), dWpe(wpe), dOut((size_t)N * s.C), dD(dout), gWte(dwte0), gWpe(dwpe0);
            CUDA_OK(embedding_forward_cuda(dOut.p, dTok.p, dWte.p, dWpe.p, s.B, s.T, s.C, nullptr));
            CUDA_OK(embedding_backward_cuda(gWte.p, gWpe.p, dD.p, dTok.p, s.B, s.T, s.C, work.p, nullptr));
            // the same additions in the same order as the CPU twin (position order): bit for bit
            EXPECT_TRUE(same_bits(dOut.get(), out));
            EXPECT_TRUE(same_bits(gWpe.get(), dwpe));
            EXPECT_TRUE(same_bits(gWte.get(), dwte));
        }
    }
}

TEST(Twin, AdamWMatchesCpu) {
    REQUIRE_DEVICE();
    Rng rng(36);
    // odd sizes: segment boundaries that are not multiples of 4 exercise the scalar path
    std::vector<AdamWSegment> segs = {{0, 301, true}, {301, 3, false}, {304, 1000, true}, {1304, 7, false}};
    const size_t n = 1311;
    auto p = randn(n, rng), m0 = randn(n, rng, 0.01), v0 = std::vector<float>(n);
    for (auto& x : v0) x = (float)std::fabs(rng.normal() * 0.01);
    const AdamWHyper h{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
    std::vector<float> P = p, M = m0, Vv = v0;
    AdamWSegmentsDevice dsegs;
    CUDA_OK(adamw_upload_segments(dsegs, segs.data(), (int)segs.size()));
    Dev<float> dp(p), dm(m0), dv(v0), dg(n);
    Dev<uint16_t> dcopy(n);  // the bf16 copy, written on the last step only
    for (long t = 1; t <= 3; t++) {
        auto g = randn(n, rng);
        adamw_update_cpu(P.data(), M.data(), Vv.data(), g.data(), segs.data(), (int)segs.size(), h, t, 0.5f);
        dg.upload(g);
        CUDA_OK(adamw_update_cuda(dp.p, dm.p, dv.p, dg.p, dsegs, h, t, 0.5f, nullptr, t == 3 ? dcopy.p : nullptr));
    }
    adamw_free_segments(dsegs);
    // the bf16 copy is the updated master weights rounded to nearest even, bit for bit, in both the
    // vector and the scalar paths (the segment boundaries above are not multiples of 4)
    const std::vector<float> master = dp.get();
    const std::vector<uint16_t> copy = dcopy.get();
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += copy[i] != bf16_bits(master[i]);
    EXPECT_EQ(wrong, 0u) << "bf16 copy elements that are not the rounded master weight";
    // the same per-element formula: differences come from sqrtf / division rounding only
    EXPECT_TRUE(close_rel("adamw params", dp.get(), to_double(P), 3 * 8 * kU32, 3 * 8 * kU32 * 1e-2));
    EXPECT_TRUE(close_rel("adamw m", dm.get(), to_double(M), 3 * 8 * kU32, 1e-9));
    EXPECT_TRUE(close_rel("adamw v", dv.get(), to_double(Vv), 3 * 8 * kU32, 1e-12));
}

// The clipping scale taken on the device from the squared norm (adamw_update_clipped_cuda) is the
// host's clip_scale of the same double arithmetic, and the step's scalars read from device memory
// are the host's (the hyperparameters it is given carry a wrong learning rate, which must not be
// used): the update must match the one given that scale, bit for bit, clipped or not; and clipping
// must change it.
TEST(Twin, AdamWClipScaleTakenOnTheDeviceIsTheHosts) {
    REQUIRE_DEVICE();
    Rng rng(38);
    const std::vector<AdamWSegment> segs = {{0, 97, true}, {97, 30, false}};
    const size_t n = 127;
    const AdamWHyper h{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
    AdamWSegmentsDevice dsegs;
    CUDA_OK(adamw_upload_segments(dsegs, segs.data(), (int)segs.size()));
    const auto p = randn(n, rng), g = randn(n, rng);
    for (const auto& [norm_sq, max_norm] : {std::pair{0.25, 1.0f}, std::pair{7.3, 1.0f}, std::pair{1e6, 0.5f},
                                            std::pair{7.3, 0.0f}}) {
        const float scale = clip_scale(std::sqrt(norm_sq), max_norm);
        std::vector<float> got[3];
        for (int run = 0; run < 3; run++) {  // [0] the host's scale, [1] the device's, [2] unclipped
            Dev<float> dp(p), dm(n), dv(n), dg(g);
            CUDA_OK(cudaMemset(dm.p, 0, n * sizeof(float)));
            CUDA_OK(cudaMemset(dv.p, 0, n * sizeof(float)));
            Dev<double> sq(std::vector<double>{norm_sq});
            Dev<AdamWStepScalars> step(std::vector<AdamWStepScalars>{adamw_step_scalars(h, 2)});
            AdamWHyper wrong_lr = h;
            wrong_lr.lr = 1e6f;
            if (run == 0) CUDA_OK(adamw_update_cuda(dp.p, dm.p, dv.p, dg.p, dsegs, h, 2, scale, nullptr));
            if (run == 1)
                CUDA_OK(adamw_update_clipped_cuda(dp.p, dm.p, dv.p, dg.p, dsegs, wrong_lr, step.p, sq.p, max_norm, nullptr));
            if (run == 2) CUDA_OK(adamw_update_cuda(dp.p, dm.p, dv.p, dg.p, dsegs, h, 2, 1.0f, nullptr));
            got[run] = dp.get();
        }
        EXPECT_TRUE(same_bits(got[1], got[0])) << "norm^2 " << norm_sq << ", max " << max_norm << ", scale " << scale;
        EXPECT_EQ(same_bits(got[2], got[0]), scale == 1.0f) << "norm^2 " << norm_sq << ": clipping made no difference";
    }
    // a non-finite norm (a NaN in the gradients) leaves the weights and moments as they were
    for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
        const auto m0 = randn(n, rng, 0.01), v0 = randn(n, rng, 0.01);
        Dev<float> dp(p), dm(m0), dv(v0), dg(g);
        Dev<uint16_t> copy(n);
        Dev<double> sq(std::vector<double>{bad});
        Dev<AdamWStepScalars> step(std::vector<AdamWStepScalars>{adamw_step_scalars(h, 2)});
        CUDA_OK(adamw_update_clipped_cuda(dp.p, dm.p, dv.p, dg.p, dsegs, h, step.p, sq.p, 1.0f, nullptr, copy.p));
        EXPECT_TRUE(same_bits(dp.get(), p) && same_bits(dm.get(), m0) && same_bits(dv.get(), v0)) << "norm^2 " << bad;
        const std::vector<uint16_t> c = copy.get();
        EXPECT_TRUE(std::all_of(c.begin(), c.end(), [](uint16_t b) { return b == 0xFFFF; })) << "the bf16 copy was written";
    }
    adamw_free_segments(dsegs);
}

// The gate between a step's figures and its update (step_gate_cuda): it passes the squared norm
// while every step so far had a finite loss and norm, and from the first that did not it gives NaN
// (AdamW's "change nothing") for good, even to finite figures after it. The gate slot is poisoned
// before each call, so a kernel that skipped writing it fails.
TEST(Twin, StepGateHaltsForGoodAtTheFirstNonFiniteStep) {
    REQUIRE_DEVICE();
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    struct Case {
        double loss, norm_sq;
        bool passes;  // the gate is the norm (else NaN)
    };
    // finite, finite, a NaN loss (halts), finite again (stays halted); then a fresh flag: an
    // infinite norm halts as well
    const Case run1[] = {{2.5, 0.75, true}, {1e30, 3e300, true}, {nan, 0.5, false}, {2.0, 0.5, false}};
    const Case run2[] = {{2.5, 0.75, true}, {2.5, inf, false}, {-inf, 0.75, false}};
    for (const auto& [cases, count] : {std::pair{run1, 4}, std::pair{run2, 3}}) {
        Dev<double> halted(std::vector<double>{0.0});
        for (int k = 0; k < count; k++) {
            Dev<double> figures(std::vector<double>{cases[k].loss, cases[k].norm_sq, -12345.0});
            CUDA_OK(step_gate_cuda(figures.p, halted.p, nullptr));
            const std::vector<double> f = figures.get();
            if (cases[k].passes)
                EXPECT_EQ(f[2], cases[k].norm_sq) << "step " << k;
            else
                EXPECT_TRUE(std::isnan(f[2])) << "step " << k << ": gate " << f[2];
            if (std::isnan(cases[k].loss))
                EXPECT_TRUE(std::isnan(f[0])) << "step " << k << ": the loss was changed";
            else
                EXPECT_EQ(f[0], cases[k].loss) << "step " << k << ": the loss was changed";
            EXPECT_EQ(halted.get()[0], cases[k].passes ? 0.0 : 1.0) << "step " << k;
        }
    }
}

// The step's loss, summed on the device: the mean of N losses added into a double that already
// holds something. Against a float64 sum: both are double sums of the same floats in other
// orders, so they agree to about N * 2^-53 relative; we allow 1e-12. Lengths around the block's
// 256 threads, one below a full stride and a long one.
TEST(Twin, LossMeanAccumulatesInDouble) {
    REQUIRE_DEVICE();
    Rng rng(39);
    for (int N : {1, 255, 256, 257, 16411}) {
        std::vector<float> losses(N);
        for (auto& l : losses) l = (float)(5.0 + 3.0 * rng.normal());
        double want = 0.0;
        for (float l : losses) want += l;
        want = 1.25 + want / N;
        double got[2];
        for (int run = 0; run < 2; run++) {
            use_schedule(450 + run);
            Dev<float> d(losses);
            Dev<double> sum(std::vector<double>{1.25});  // a previous micro-batch's mean
            CUDA_OK(loss_mean_accumulate_cuda(sum.p, d.p, N, nullptr));
            got[run] = sum.get()[0];
        }
        EXPECT_EQ(got[0], got[1]) << "the sum depends on the schedule, N = " << N;
        EXPECT_NEAR(got[0], want, 1e-12 * std::fabs(want)) << "N = " << N;
    }
    Dev<double> sum(1);
    Dev<float> d(std::vector<float>{1.0f});
    EXPECT_EQ(loss_mean_accumulate_cuda(sum.p, d.p, 0, nullptr), cudaErrorInvalidValue) << "an empty batch has no mean";
}

TEST(Twin, GradNormMatchesCpu) {
    REQUIRE_DEVICE();
    Rng rng(37);
#if defined(__SANITIZE_ADDRESS__)
    // every size launches the same fixed 1024 x 256 grid, slow to emulate under ASan: one size
    const std::vector<size_t> sizes = {300001};
#else
    const std::vector<size_t> sizes = {1, 1000, 300001};
#endif
    for (size_t n : sizes) {
        auto g = randn(n, rng, 0.1);
        const double want = global_norm_cpu(g.data(), n);
        double got[2];
        for (int run = 0; run < 2; run++) {
            use_schedule(400 + run);
            Dev<float> dg(g), work(kGradNormBlocks);
            Dev<double> out(1);
            CUDA_OK(global_norm_squared_cuda(out.p, dg.p, n, work.p, nullptr));
            got[run] = std::sqrt(out.get()[0]);
        }
        EXPECT_EQ(got[0], got[1]) << "the norm depends on the schedule";
        // float32 partial sums of n / (1024 * 256) squares each: relative error ~ that count * u
        EXPECT_NEAR(got[0], want, want * (8.0 * (n / (kGradNormBlocks * 256.0) + 16) * kU32)) << "n = " << n;
    }
}

TEST(Twin, AttentionMatchesCpu) {
    REQUIRE_DEVICE();
    struct Shape { int B, T, C, NH; };
    Rng rng(38);
    // head sizes 32, 64, 128 (over 48 KiB of shared memory: the wrappers must raise the kernels'
    // limit), 21 (odd) and 8; T = 1, across tiles, and one past a tile
    for (Shape s : {Shape{1, 1, 32, 1}, Shape{2, 17, 64, 2}, Shape{1, 45, 128, 2}, Shape{1, 70, 128, 1},
                    Shape{2, 33, 96, 3}, Shape{2, 65, 256, 2}, Shape{1, 40, 42, 2}, Shape{3, 9, 16, 2}}) {
        const int hs = s.C / s.NH;
        const size_t BT = (size_t)s.B * s.T;
        auto qkv = randn(BT * 3 * s.C, rng), dout = randn(BT * s.C, rng);
        std::vector<float> out(BT * s.C), lse(BT * s.NH), dqkv(BT * 3 * s.C);
        attention_forward_cpu(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
        attention_backward_cpu(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.C, s.NH);
        std::vector<float> got[2][3];
        for (int run = 0; run < 2; run++) {
            use_schedule(500 + run);
            Dev<float> dQkv(qkv), dOut(BT * s.C), dLse(BT * s.NH), dD(dout), dG(BT * 3 * s.C),
                work(attention_backward_workspace(s.B, s.T, s.NH));
            CUDA_OK(attention_forward_cuda(dOut.p, dLse.p, dQkv.p, s.B, s.T, s.C, s.NH, nullptr));
            CUDA_OK(attention_backward_cuda(dG.p, dD.p, dQkv.p, dOut.p, dLse.p, s.B, s.T, s.C, s.NH, work.p, nullptr));
            got[run][0] = dOut.get(), got[run][1] = dLse.get(), got[run][2] = dG.get();
        }
        for (int k = 0; k < 3; k++) EXPECT_TRUE(same_bits(got[0][k], got[1][k])) << "output " << k << " depends on the schedule";
        // the same algorithm with other tile sizes and summation orders: the CPU kernel tests'
        // tolerance (dot products of hs terms, sums over T keys)
        const double tol = (hs + s.T + 32) * kU32 * 8;
        EXPECT_TRUE(close_rel("attention out", got[0][0], to_double(out), tol, tol));
        EXPECT_TRUE(close_rel("attention lse", got[0][1], to_double(lse), tol, tol));
        EXPECT_TRUE(close_max("attention dqkv", got[0][2], to_double(dqkv), 4 * tol));
    }
}

TEST(Twin, QuantizeProducesTheCpuCodecsBits) {
    REQUIRE_DEVICE();
    Rng rng(39);
    // blocks of 32, the default, 256 and 1024, and 6, which divides none of the lengths
    for (int block : {32, kQuantBlockDefault, 256, 1024, 6}) {
        for (QuantFormat f : {QuantFormat::fp32, QuantFormat::bf16, QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0}) {
            if (block != 32 && !quant_has_blocks(f)) continue;
            for (size_t n : {size_t(1), size_t(33), size_t(1000), size_t(2051)}) {
                auto x = randn(n, rng);
                if (n > 40) x[37] = std::numeric_limits<float>::quiet_NaN();  // a poisoned block travels too
                if (n > 2000) x[1500] = -std::numeric_limits<float>::infinity();
                std::vector<uint8_t> want(quant_bytes(f, n, block));
                quantize_cpu(want.data(), x.data(), n, f, block);
                auto acc0 = randn(n, rng);
                std::vector<float> acc = acc0;
                dequantize_add_cpu(acc.data(), want.data(), n, f, block);
                Dev<float> dx(x), dacc(acc0);
                Dev<uint8_t> payload(want.size());
                CUDA_OK(quantize_cuda(payload.p, dx.p, n, f, block, nullptr));
                CUDA_OK(dequantize_add_cuda(dacc.p, payload.p, n, f, block, nullptr));
                EXPECT_EQ(payload.get(), want) << quant_format_name(f) << " n=" << n << " block " << block;
                const auto got = dacc.get();
                size_t differ = 0;  // the same bits, except that NaNs may carry another payload on a GPU
                for (size_t i = 0; i < n; i++)
                    differ += !(std::memcmp(&got[i], &acc[i], 4) == 0 || (std::isnan(got[i]) && std::isnan(acc[i])));
                EXPECT_EQ(differ, 0u) << quant_format_name(f) << " n=" << n << " block " << block;
            }
        }
    }
}

namespace {

// Float64 results of a linear layer's forward and backward, each with the sum of the magnitudes of
// its terms: a float32 sum of n terms, in any order, is within about n u of those.
struct MatmulRef {
    std::vector<double> out, out_mag, dx, dx_mag, dw, dw_mag, db, db_mag;
};

MatmulRef matmul_reference(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                           const std::vector<float>& g, const std::vector<float>& dw0, const std::vector<float>& db0,
                           int N, int C, int OC) {
    MatmulRef r;
    r.out.assign((size_t)N * OC, 0.0), r.out_mag.assign((size_t)N * OC, 0.0);
    r.dx.assign((size_t)N * C, 0.0), r.dx_mag.assign((size_t)N * C, 0.0);
    r.dw = to_double(dw0), r.db = to_double(db0);
    for (float v : dw0) r.dw_mag.push_back(std::fabs(v));
    for (float v : db0) r.db_mag.push_back(std::fabs(v));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            const size_t no = (size_t)n * OC + o;
            r.out[no] = b[o], r.out_mag[no] = std::fabs(b[o]);
            r.db[o] += g[no], r.db_mag[o] += std::fabs(g[no]);
            for (int c = 0; c < C; c++) {
                const double xv = x[(size_t)n * C + c], wv = w[(size_t)o * C + c];
                r.out[no] += xv * wv, r.out_mag[no] += std::fabs(xv * wv);
                r.dx[(size_t)n * C + c] += g[no] * wv, r.dx_mag[(size_t)n * C + c] += std::fabs(g[no] * wv);
                r.dw[(size_t)o * C + c] += g[no] * xv, r.dw_mag[(size_t)o * C + c] += std::fabs(g[no] * xv);
            }
        }
    return r;
}

struct MatmulGot {
    std::vector<float> out, dx, dw, db;
};

MatmulGot run_matmul(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                     const std::vector<float>& g, const std::vector<float>& dw0, const std::vector<float>& db0, int N,
                     int C, int OC, MatmulPrecision precision) {
    BlasHandle blas;
    blas_create(blas);
    blas_set_precision(blas, precision);
    Dev<float> dX(x), dW(w), dB(b), dG(g), out((size_t)N * OC), gX((size_t)N * C), gW(dw0), gB(db0),
        work(std::max(1L, matmul_backward_workspace(N, OC)));
    EXPECT_EQ(matmul_forward_cuda(out.p, dX.p, dW.p, dB.p, N, C, OC, blas, nullptr), cudaSuccess);
    EXPECT_EQ(matmul_backward_cuda(gX.p, gW.p, gB.p, dG.p, dX.p, dW.p, N, C, OC, work.p, blas, nullptr), cudaSuccess);
    MatmulGot r{out.get(), gX.get(), gW.get(), gB.get()};
    blas_destroy(blas);
    return r;
}

::testing::AssertionResult within(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                                  const std::vector<double>& mag, double rel) {
    return all_close(what, got.data(), want.data(), got.size(), [&](size_t i) { return rel * mag[i] + 1e-30; });
}

}  // namespace

// Awkward shapes: N not a multiple of the bias gradient's 256-row chunks or its 8 row phases, OC
// odd and not a multiple of its 32 columns, N = 1. dinp is poisoned; dw and dbias hold random
// values, since both are accumulated into.
TEST(Twin, MatmulMatchesFloat64) {
    REQUIRE_DEVICE();
    struct Shape { int N, C, OC; };
    Rng rng(40);
    for (Shape s : {Shape{1, 1, 1}, Shape{7, 5, 33}, Shape{257, 24, 77}, Shape{513, 40, 130}, Shape{1000, 16, 31}}) {
        auto x = randn((size_t)s.N * s.C, rng), w = randn((size_t)s.OC * s.C, rng), b = randn(s.OC, rng);
        auto g = randn((size_t)s.N * s.OC, rng), dw0 = randn(w.size(), rng), db0 = randn(s.OC, rng);
        const MatmulRef want = matmul_reference(x, w, b, g, dw0, db0, s.N, s.C, s.OC);
        MatmulGot got[2];
        for (int run = 0; run < 2; run++) {
            use_schedule(700 + run);
            got[run] = run_matmul(x, w, b, g, dw0, db0, s.N, s.C, s.OC, MatmulPrecision::fp32);
        }
        EXPECT_TRUE(same_bits(got[0].db, got[1].db)) << "the bias gradient depends on the schedule";
        // float32 sums of n terms in some order: error <= n u sum|terms| (to first order). out: C
        // products plus the bias; dx: OC products; dw: N products plus the existing value.
        EXPECT_TRUE(within("matmul out", got[0].out, want.out, want.out_mag, (s.C + 2) * kU32));
        EXPECT_TRUE(within("matmul dx", got[0].dx, want.dx, want.dx_mag, (s.OC + 1) * kU32));
        EXPECT_TRUE(within("matmul dw", got[0].dw, want.dw, want.dw_mag, (s.N + 2) * kU32));
        // dbias: a thread adds at most 32 rows (256-row chunk / 8 phases), then the 8 phases are
        // added, then the N/256 chunks in order, then the existing value: n = 32 + 8 + N/256 + 1,
        // far fewer than the N additions of one sequential sum.
        const double nb = 32 + 8 + (s.N + 255) / 256 + 2;
        EXPECT_TRUE(within("matmul dbias", got[0].db, want.db, want.db_mag, nb * kU32)) << s.N << "x" << s.OC;
    }
}

// TF32 products: each input rounded to a 10-bit mantissa, relative error at most u_t = 2^-11 with
// round to nearest, so a product x w carries at most (2 u_t + u_t^2)|x w|, and the float32 sum of
// C of them adds (C + 1) u: |err| <= (2 u_t + u_t^2 + (C + 2) u (1 + u_t)^2) sum|x w|. A GPU's
// conversion may truncate instead (u_t = 2^-10), so natively the bound uses that. The bias and the
// bias gradient are float32 kernels in both precisions.
TEST(Twin, MatmulTf32WithinItsBound) {
    REQUIRE_DEVICE();
#ifdef DILOCO_EMULATE
    const double ut = std::ldexp(1.0, -11);
#else
    const double ut = std::ldexp(1.0, -10);
#endif
    auto bound = [&](int n) { return 2 * ut + ut * ut + (n + 2) * kU32 * (1 + ut) * (1 + ut); };
    struct Shape { int N, C, OC; };
    Rng rng(41);
    for (Shape s : {Shape{3, 7, 5}, Shape{70, 64, 33}, Shape{129, 100, 64}}) {
        auto x = randn((size_t)s.N * s.C, rng), w = randn((size_t)s.OC * s.C, rng), b = randn(s.OC, rng);
        auto g = randn((size_t)s.N * s.OC, rng), dw0 = randn(w.size(), rng), db0 = randn(s.OC, rng);
        const MatmulRef want = matmul_reference(x, w, b, g, dw0, db0, s.N, s.C, s.OC);
        const MatmulGot got = run_matmul(x, w, b, g, dw0, db0, s.N, s.C, s.OC, MatmulPrecision::tf32);
        EXPECT_TRUE(within("tf32 out", got.out, want.out, want.out_mag, bound(s.C)));
        EXPECT_TRUE(within("tf32 dx", got.dx, want.dx, want.dx_mag, bound(s.OC)));
        EXPECT_TRUE(within("tf32 dw", got.dw, want.dw, want.dw_mag, bound(s.N)));
#ifdef DILOCO_EMULATE
        // and the rounding happened: somewhere the error exceeds what float32 inputs allow
        EXPECT_FALSE(within("tf32 out, at fp32's bound", got.out, want.out, want.out_mag, (s.C + 2) * kU32))
            << "the tf32 path computed in float32";
#endif
    }
}

#ifndef DILOCO_EMULATE
// Runs without a device too: cuBLAS then refuses to start, and the error must name its status.
TEST(Twin, CublasFailuresNameTheStatus) {
    EXPECT_STREQ(cublas_status_name(13), "CUBLAS_STATUS_EXECUTION_FAILED");
    EXPECT_STREQ(cublas_status_name(16), "CUBLAS_STATUS_LICENSE_ERROR");
    BlasHandle blas;
    if (cuda_device_count() == 0) {
        try {
            blas_create(blas);
            ADD_FAILURE() << "cublasCreate succeeded without a device";
            blas_destroy(blas);
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("cuBLAS: cublasCreate: CUBLAS_STATUS_"), std::string::npos) << e.what();
        }
        return;
    }
    blas_create(blas);
    Dev<float> a(16), out(16);
    try {  // k = -1 is refused before anything runs
        matmul_forward_cuda(out.p, a.p, a.p, nullptr, 4, -1, 4, blas, nullptr);
        ADD_FAILURE() << "cublasSgemm accepted k = -1";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("CUBLAS_STATUS_INVALID_VALUE"), std::string::npos) << e.what();
    }
    blas_destroy(blas);
}
#endif

// Mixed precision: the bf16 products (cuBLASLt with the bias, and bias + GELU, fused; cuBLAS for the
// backward) against float64 from the same bf16 values. A bf16 output is its fp32 value rounded
// once: the fp32 bound above plus half a bf16 spacing, 2^-8 |value|. Shapes keep C and OC multiples
// of 8 (cuBLASLt's bf16 alignment); N is awkward.
TEST(Twin, MatmulBf16WithinItsBound) {
    REQUIRE_DEVICE();
    struct Shape { int N, C, OC; };
    Rng rng(42);
    const double half_spacing = 1.0 / 256;
    auto rounded = [](std::vector<float> v, std::vector<uint16_t>* bits) {
        bits->resize(v.size());
        for (size_t i = 0; i < v.size(); i++) (*bits)[i] = bf16_bits(v[i]), v[i] = bf16_value((*bits)[i]);
        return v;
    };
    auto widen = [](const std::vector<uint16_t>& b) {
        std::vector<float> v(b.size());
        for (size_t i = 0; i < b.size(); i++) v[i] = bf16_value(b[i]);
        return v;
    };
    for (Shape s : {Shape{1, 8, 8}, Shape{257, 24, 72}, Shape{513, 40, 136}, Shape{1000, 16, 32}}) {
        std::vector<uint16_t> xb, wb, bb, gb;
        const auto x = rounded(randn((size_t)s.N * s.C, rng), &xb), w = rounded(randn((size_t)s.OC * s.C, rng), &wb),
                   b = rounded(randn(s.OC, rng), &bb), g = rounded(randn((size_t)s.N * s.OC, rng), &gb);
        const auto dw0 = randn(w.size(), rng), db0 = randn(s.OC, rng);
        const MatmulRef want = matmul_reference(x, w, b, g, dw0, db0, s.N, s.C, s.OC);
        BlasHandle blas;
        blas_create(blas);
        Dev<uint16_t> dX(xb), dW(wb), dB(bb), dG(gb), out((size_t)s.N * s.OC), act((size_t)s.N * s.OC), gX((size_t)s.N * s.C);
        Dev<float> gW(dw0), gB(db0), work(std::max(1L, matmul_backward_workspace(s.N, s.OC)));
        CUDA_OK(matmul_forward_cuda(out.p, dX.p, dW.p, dB.p, s.N, s.C, s.OC, blas, nullptr));
        std::vector<uint16_t> pre_bits;
        {
            Dev<uint16_t> pre((size_t)s.N * s.OC);
            CUDA_OK(matmul_forward_cuda(act.p, dX.p, dW.p, dB.p, s.N, s.C, s.OC, blas, nullptr, pre.p));
            pre_bits = pre.get();
        }
        CUDA_OK(matmul_backward_cuda(gX.p, gW.p, gB.p, dG.p, dX.p, dW.p, s.N, s.C, s.OC, work.p, blas, nullptr));
        blas_destroy(blas);
        const auto got_out = widen(out.get()), got_pre = widen(pre_bits), got_act = widen(act.get()), got_dx = widen(gX.get());
        const std::string shape = std::to_string(s.N) + "x" + std::to_string(s.C) + "x" + std::to_string(s.OC);
        auto bound = [&](const std::vector<double>& ref, const std::vector<double>& mag, double n) {
            return [&ref, &mag, n, half_spacing](size_t i) { return half_spacing * std::fabs(ref[i]) + n * kU32 * mag[i] * 1.01 + 1e-30; };
        };
        EXPECT_TRUE(all_close(shape + " out", got_out.data(), want.out.data(), got_out.size(), bound(want.out, want.out_mag, s.C + 2)));
        EXPECT_TRUE(all_close(shape + " gelu pre-activation", got_pre.data(), want.out.data(), got_pre.size(),
                              bound(want.out, want.out_mag, s.C + 2)));
        // gelu(pre) with pre off by e: gelu' is at most 1.13, and tanhf adds a few ulp (the gelu twin test's bound)
        std::vector<float> pre_f(want.out.begin(), want.out.end()), gelu_ref(pre_f.size());
        gelu_forward_cpu(gelu_ref.data(), pre_f.data(), (long)pre_f.size());
        const auto gelu_want = to_double(gelu_ref);
        EXPECT_TRUE(all_close(shape + " gelu out", got_act.data(), gelu_want.data(), got_act.size(), [&](size_t i) {
            return half_spacing * std::fabs(gelu_want[i]) + 1.2 * (s.C + 2) * kU32 * want.out_mag[i] +
                   8 * kU32 * (std::fabs(gelu_want[i]) + std::fabs(want.out[i])) + 1e-30;
        }));
        EXPECT_TRUE(all_close(shape + " dx", got_dx.data(), want.dx.data(), got_dx.size(), bound(want.dx, want.dx_mag, s.OC + 1)));
        EXPECT_TRUE(within(shape + " dw (fp32)", gW.get(), want.dw, want.dw_mag, (s.N + 2) * kU32));
        EXPECT_TRUE(within(shape + " dbias (fp32)", gB.get(), want.db, want.db_mag, (32 + 8 + (s.N + 255) / 256 + 2) * kU32));
    }
}
