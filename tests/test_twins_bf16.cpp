// The bf16 entry points of the elementwise, layernorm, embedding and cross-entropy kernels (mixed
// precision) against their CPU twins run on the same bf16 values. Built twice, like
// tests/test_twins.cpp: emulated on every CI run, natively where a GPU is present.
//
// Tolerance: the kernel computes in fp32 exactly what the fp32 kernel does and rounds once when it
// stores. So a bf16 output differs from the twin's fp32 value by at most the fp32 kernel's own
// tolerance plus half a bf16 spacing, 2^-8 |value| (kernels/bf16.h); fp32 outputs (statistics,
// weight gradients) keep the fp32 tolerance, since their inputs are the same numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/crossentropy.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/embedding.h"
#include "kernels/embedding_cuda.h"
#include "kernels/gelu.h"
#include "kernels/gelu_cuda.h"
#include "kernels/layernorm.h"
#include "kernels/layernorm_cuda.h"
#include "kernels/residual_cuda.h"
#include "tests/compare.h"
#include "tests/twins.h"

using namespace diloco;
using namespace diloco::test;

namespace {

constexpr double kBf16 = 1.0 / 256;  // 2^-8: half a spacing, relative

// Random values already on the bf16 grid, as float (for the twin) and as bits (for the kernel).
struct Bf16Tensor {
    std::vector<float> value;
    std::vector<uint16_t> bits;
};
Bf16Tensor random_bf16(size_t n, Rng& rng, double scale = 1.0) {
    Bf16Tensor t{randn(n, rng, scale), std::vector<uint16_t>(n)};
    for (size_t i = 0; i < n; i++) {
        t.bits[i] = bf16_bits(t.value[i]);
        t.value[i] = bf16_value(t.bits[i]);
    }
    return t;
}

std::vector<float> values(const std::vector<uint16_t>& bits) {
    std::vector<float> v(bits.size());
    for (size_t i = 0; i < bits.size(); i++) v[i] = bf16_value(bits[i]);
    return v;
}

// |got - want| <= 2^-8 |want| (the store's rounding) + extra(i) (the fp32 kernel's own tolerance)
template <typename Extra>
::testing::AssertionResult close_bf16(const std::string& what, const std::vector<uint16_t>& got, const std::vector<float>& want,
                                      Extra extra) {
    const auto g = values(got);
    const auto w = to_double(want);
    return all_close(what, g.data(), w.data(), g.size(),
                     [&](size_t i) { return kBf16 * std::fabs(want[i]) + extra(i) + 1e-30; });
}

}  // namespace

TEST(TwinBf16, ResidualAndGelu) {
    REQUIRE_DEVICE();
    Rng rng(51);
    for (long n : {1L, 1000L, 70001L}) {
        const auto a = random_bf16(n, rng), b = random_bf16(n, rng, 3.0), d = random_bf16(n, rng);
        std::vector<float> sum(n), out(n), din(n);
        for (long i = 0; i < n; i++) sum[i] = a.value[i] + b.value[i];
        gelu_forward_cpu(out.data(), b.value.data(), n);
        gelu_backward_cpu(din.data(), b.value.data(), d.value.data(), n);
        Dev<uint16_t> dA(a.bits), dB(b.bits), dD(d.bits), dSum(n), dOut(n), dIn(n);
        CUDA_OK(residual_forward_cuda(dSum.p, dA.p, dB.p, n, nullptr));
        CUDA_OK(gelu_forward_cuda(dOut.p, dB.p, n, nullptr));
        CUDA_OK(gelu_backward_cuda(dIn.p, dB.p, dD.p, n, nullptr));
        // the fp32 sum of two bf16 values is the twin's sum, so its rounding is too: bit for bit
        std::vector<uint16_t> want_sum(n);
        for (long i = 0; i < n; i++) want_sum[i] = bf16_bits(sum[i]);
        EXPECT_EQ(dSum.get(), want_sum) << "n = " << n;
        EXPECT_TRUE(close_bf16("gelu forward", dOut.get(), out,
                               [&](size_t i) { return 8 * kU32 * (std::fabs(out[i]) + std::fabs(b.value[i])); }));
        EXPECT_TRUE(close_bf16("gelu backward", dIn.get(), din, [&](size_t i) {
            const double x = b.value[i];
            return 16 * kU32 * std::fabs(d.value[i]) * (1.0 + x * x * std::fabs(x));
        }));
    }
}

TEST(TwinBf16, ResidualLayerNormForwardAndBackward) {
    REQUIRE_DEVICE();
    struct Shape { int N, C; };
    Rng rng(52);
    for (Shape s : {Shape{1, 3}, Shape{7, 24}, Shape{9, 130}, Shape{17, 768}}) {
        const size_t NC = (size_t)s.N * s.C;
        const auto a = random_bf16(NC, rng, 2.0), b = random_bf16(NC, rng), w = random_bf16(s.C, rng),
                   bias = random_bf16(s.C, rng), dout = random_bf16(NC, rng), dx0 = random_bf16(NC, rng);
        // the twin: the residual rounded to bf16 as the kernel stores it, then layernorm in fp32
        std::vector<float> residual(NC);
        std::vector<uint16_t> residual_bits(NC);
        for (size_t i = 0; i < NC; i++) {
            residual_bits[i] = bf16_bits(a.value[i] + b.value[i]);
            residual[i] = bf16_value(residual_bits[i]);
        }
        std::vector<float> out(NC), mean(s.N), rstd(s.N), dx = dx0.value, dw(s.C, 0.5f), db(s.C, -0.25f);
        layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), residual.data(), w.value.data(), bias.value.data(), s.N, s.C);
        layernorm_backward_cpu(dx.data(), dw.data(), db.data(), dout.value.data(), residual.data(), w.value.data(),
                               mean.data(), rstd.data(), s.N, s.C);
        std::vector<uint16_t> got16[2][3];
        std::vector<float> got32[2][4];
        for (int run = 0; run < 2; run++) {
            use_schedule(600 + run);
            Dev<uint16_t> dA(a.bits), dB(b.bits), dW(w.bits), dBias(bias.bits), dRes(NC), dOut(NC), dD(dout.bits), gX(dx0.bits);
            Dev<float> dMean(s.N), dRstd(s.N), gW(std::vector<float>(s.C, 0.5f)), gB(std::vector<float>(s.C, -0.25f));
            CUDA_OK(residual_layernorm_forward_cuda(dRes.p, dOut.p, dMean.p, dRstd.p, dA.p, dB.p, dW.p, dBias.p, s.N, s.C, nullptr));
            CUDA_OK(layernorm_backward_cuda(gX.p, gW.p, gB.p, dD.p, dRes.p, dW.p, dMean.p, dRstd.p, s.N, s.C, nullptr));
            got16[run][0] = dRes.get(), got16[run][1] = dOut.get(), got16[run][2] = gX.get();
            got32[run][0] = dMean.get(), got32[run][1] = dRstd.get(), got32[run][2] = gW.get(), got32[run][3] = gB.get();
        }
        for (int k = 0; k < 3; k++) EXPECT_EQ(got16[0][k], got16[1][k]) << "bf16 output " << k << " depends on the schedule";
        for (int k = 0; k < 4; k++) EXPECT_EQ(got32[0][k], got32[1][k]) << "fp32 output " << k << " depends on the schedule";
        EXPECT_EQ(got16[0][0], residual_bits) << "the stored residual is not the rounded sum";
        // the fp32 twin test's bounds (tests/test_twins.cpp), scaled by each output's size
        const double tc = 8.0 * s.C * kU32, tn = 8.0 * (s.N + 1) * kU32;
        double max_out = 0, max_dx = 0;
        for (size_t i = 0; i < NC; i++) max_out = std::max(max_out, (double)std::fabs(out[i])), max_dx = std::max(max_dx, (double)std::fabs(dx[i]));
        EXPECT_TRUE(close_bf16("out", got16[0][1], out, [&](size_t) { return tc * max_out; }));
        EXPECT_TRUE(close_rel("mean", got32[0][0], to_double(mean), tc, tc * 2.5));
        EXPECT_TRUE(close_rel("rstd", got32[0][1], to_double(rstd), tc, 0.0));
        EXPECT_TRUE(close_bf16("dx (accumulated)", got16[0][2], dx, [&](size_t) { return tc * max_dx; }));
        EXPECT_TRUE(close_max("dw", got32[0][2], to_double(dw), tn));
        EXPECT_TRUE(close_max("db", got32[0][3], to_double(db), tn));
    }
}

TEST(TwinBf16, EmbeddingBitForBit) {
    REQUIRE_DEVICE();
    struct Shape { int B, T, C, V; };
    Rng rng(53);
    for (Shape s : {Shape{1, 1, 8, 5}, Shape{2, 7, 24, 3}, Shape{3, 33, 130, 50}}) {
        const int N = s.B * s.T;
        std::vector<int> tok(N);
        for (auto& t : tok) t = (int)rng.below(s.V);
        const auto wte = random_bf16((size_t)s.V * s.C, rng), wpe = random_bf16((size_t)s.T * s.C, rng),
                   dout = random_bf16((size_t)N * s.C, rng);
        auto dwte0 = randn(wte.value.size(), rng), dwpe0 = randn(wpe.value.size(), rng);
        std::vector<float> out((size_t)N * s.C), dwte = dwte0, dwpe = dwpe0;
        embedding_forward_cpu(out.data(), tok.data(), wte.value.data(), wpe.value.data(), s.B, s.T, s.C);
        embedding_backward_cpu(dwte.data(), dwpe.data(), dout.value.data(), tok.data(), s.B, s.T, s.C);
        std::vector<uint16_t> want(out.size());
        for (size_t i = 0; i < out.size(); i++) want[i] = bf16_bits(out[i]);
        Dev<int> dTok(tok), work(embedding_backward_workspace(s.B, s.T));
        Dev<uint16_t> dWte(wte.bits), dWpe(wpe.bits), dOut((size_t)N * s.C), dD(dout.bits);
        Dev<float> gWte(dwte0), gWpe(dwpe0);
        CUDA_OK(embedding_forward_cuda(dOut.p, dTok.p, dWte.p, dWpe.p, s.B, s.T, s.C, nullptr));
        CUDA_OK(embedding_backward_cuda(gWte.p, gWpe.p, dD.p, dTok.p, s.B, s.T, s.C, work.p, nullptr));
        // the same fp32 additions in the same order as the twin, then one rounding
        EXPECT_EQ(dOut.get(), want);
        EXPECT_EQ(gWpe.get(), dwpe);
        EXPECT_EQ(gWte.get(), dwte);
    }
}

TEST(TwinBf16, CrossEntropy) {
    REQUIRE_DEVICE();
    struct Shape { int N, V; };
    Rng rng(54);
    for (Shape s : {Shape{1, 2}, Shape{5, 17}, Shape{9, 256}, Shape{2, 50257}}) {
        const size_t NV = (size_t)s.N * s.V;
        const auto logits = random_bf16(NV, rng, 3.0);
        std::vector<int> tg(s.N);
        for (auto& t : tg) t = (int)rng.below(s.V);
        std::vector<float> losses(s.N), lse(s.N), d(NV);
        crossentropy_forward_cpu(losses.data(), lse.data(), logits.value.data(), tg.data(), s.N, s.V);
        crossentropy_backward_cpu(d.data(), logits.value.data(), lse.data(), tg.data(), 1.0f / s.N, s.N, s.V);
        Dev<uint16_t> dL(logits.bits);
        Dev<float> dLoss(s.N), dLse(s.N);
        Dev<int> dT(tg);
        CUDA_OK(crossentropy_forward_cuda(dLoss.p, dLse.p, dL.p, dT.p, s.N, s.V, nullptr));
        CUDA_OK(crossentropy_backward_cuda(dL.p, dL.p, dLse.p, dT.p, 1.0f / s.N, s.N, s.V, nullptr));  // in place
        const double tol = (s.V + 8) * kU32;  // the fp32 test's: V positive terms in another order
        EXPECT_TRUE(close_rel("lse", dLse.get(), to_double(lse), 4 * kU32, tol));
        EXPECT_TRUE(close_rel("losses", dLoss.get(), to_double(losses), 4 * kU32, tol + 100 * kU32));
        EXPECT_TRUE(close_bf16("dlogits (in place)", dL.get(), d, [&](size_t i) { return (tol + 8 * kU32) * std::fabs(d[i]) + 4 * kU32 / s.N; }));
    }
}
