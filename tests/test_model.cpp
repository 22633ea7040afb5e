// The model as a whole: parameter layout, initialisation, gradients against central finite
// differences of an independent float64 forward, and a tiny run that learns.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "kernels/rng.h"
#include "kernels/common.h"
#include "model/gpt.h"
#include "tests/compare.h"
#include "tests/reference.h"
#include "tests/reference_gpt.h"

using namespace diloco;
using namespace diloco::test;


TEST(GPT, ParameterTableIsFlatBlockMajorAndComplete) {
    GPT m;
    gpt_build(m, GPTConfig{61, 19, 3, 2, 12});
    size_t expect_off = 0;
    int last_block = -1;
    for (const auto& t : m.tensors) {
        EXPECT_EQ(t.offset, expect_off) << t.name << " does not follow its predecessor";
        expect_off += t.numel();
        if (t.block >= 0) {
            EXPECT_GE(t.block, last_block) << t.name << ": blocks are not in order";
            last_block = t.block;
        }
    }
    EXPECT_EQ(expect_off, m.num_params);
    const size_t C = 12, L = 3;
    EXPECT_EQ(m.num_params, 61 * C + 19 * C + L * (12 * C * C + 13 * C) + 2 * C);
    EXPECT_EQ(m.tensors.front().name, "wte");
    EXPECT_EQ(m.tensors.back().name, "lnf.b");
    // one block's tensors form one contiguous range
    for (int l = 0; l < (int)L; l++) {
        size_t lo = SIZE_MAX, hi = 0, sum = 0;
        for (const auto& t : m.tensors)
            if (t.block == l) lo = std::min(lo, t.offset), hi = std::max(hi, t.offset + t.numel()), sum += t.numel();
        EXPECT_EQ(hi - lo, sum);
    }
    EXPECT_THROW(gpt_build(m, GPTConfig{61, 19, 3, 5, 12}), Error);  // 5 does not divide 12
    EXPECT_THROW(gpt_build(m, GPTConfig{0, 19, 3, 2, 12}), Error);
    EXPECT_THROW(gpt_preset("no-such-model", 256), Error);
}

TEST(GPT, InitialLossIsNearLogVocab) {
    GPT m;
    gpt_build(m, gpt_preset("mini", 256));
    gpt_init(m, 3);
    const int B = 4, T = 64;
    gpt_allocate(m, B, T);
    Rng rng(4);
    std::vector<int> tok(B * T), tgt(B * T);
    for (auto& t : tok) t = (int)rng.below(256);
    for (auto& t : tgt) t = (int)rng.below(256);
    const float loss = gpt_forward(m, tok.data(), tgt.data(), B, T);
    EXPECT_NEAR(loss, std::log(256.0), 0.1);
    // the GPT-2 init: std 0.02, residual projections scaled by 1/sqrt(2L)
    auto stddev = [&](const std::string& name) {
        for (const auto& t : m.tensors)
            if (t.name == name) {
                double s = 0;
                for (size_t i = 0; i < t.numel(); i++) s += (double)m.params[t.offset + i] * m.params[t.offset + i];
                return std::sqrt(s / t.numel());
            }
        return -1.0;
    };
    EXPECT_NEAR(stddev("h.0.attn.qkv.w"), 0.02, 0.001);
    EXPECT_NEAR(stddev("h.1.mlp.proj.w"), 0.02 / std::sqrt(8.0), 0.0005);
    EXPECT_EQ(stddev("h.2.attn.qkv.b"), 0.0);
    EXPECT_EQ(stddev("lnf.w"), 1.0);
}

TEST(GPT, ForwardMatchesFloat64AndGradientsMatchFiniteDifferences) {
    GPT m;
    const GPTConfig cfg{11, 9, 2, 2, 8};
    gpt_build(m, cfg);
    // Larger weights than the GPT-2 init, so that every nonlinearity is exercised and no
    // gradient is vanishingly small.
    Rng rng(21);
    for (const auto& t : m.tensors)
        for (size_t i = 0; i < t.numel(); i++)
            m.params[t.offset + i] = (float)((t.shape.size() == 1 && t.name.find(".w") != std::string::npos ? 1.0 : 0.0) +
                                             rng.normal() * 0.3);
    const int B = 2, T = 7;
    gpt_allocate(m, B, T);
    std::vector<int> tok(B * T), tgt(B * T);
    for (auto& t : tok) t = (int)rng.below(cfg.vocab);
    for (auto& t : tgt) t = (int)rng.below(cfg.vocab);
    gpt_zero_grad(m);
    const float loss = gpt_forward(m, tok.data(), tgt.data(), B, T);
    gpt_backward(m);

    std::vector<double> P(m.params.begin(), m.params.end());
    const double ref_loss = reference_loss(m, P, tok, tgt, B, T);
    EXPECT_NEAR(loss, ref_loss, 1e-5 * ref_loss);

    // Central differences in float64: truncation error h^2 |f'''| ~ 1e-10, rounding 1e-16 / h.
    const double h = 1e-5;
    double gmax = 0;
    for (float g : m.grads) gmax = std::max(gmax, (double)std::fabs(g));
    ASSERT_GT(gmax, 1e-3);
    int checked = 0;
    for (const auto& t : m.tensors) {
        std::vector<size_t> idx(t.numel());
        std::iota(idx.begin(), idx.end(), 0);
        if (idx.size() > 48) {  // a random sample of large tensors, every element of small ones
            for (size_t i = 0; i < 48; i++) std::swap(idx[i], idx[i + rng.below(idx.size() - i)]);
            idx.resize(48);
        }
        for (size_t k : idx) {
            const size_t i = t.offset + k;
            const double saved = P[i];
            P[i] = saved + h;
            const double lp = reference_loss(m, P, tok, tgt, B, T);
            P[i] = saved - h;
            const double lm = reference_loss(m, P, tok, tgt, B, T);
            P[i] = saved;
            const double fd = (lp - lm) / (2 * h);
            // our gradient is float32: its error is a few hundred ulp of the largest gradient
            // (sums over B*T rows and d_model columns), plus a relative part for large entries
            EXPECT_NEAR(m.grads[i], fd, 2e-5 * gmax + 1e-4 * std::fabs(fd)) << t.name << "[" << k << "]";
            checked++;
        }
    }
    EXPECT_GT(checked, 500);
}

TEST(GPT, ForwardWithFewerRowsThanAllocatedMatchesExactAllocation) {
    GPT a, b;
    const GPTConfig cfg{32, 16, 2, 2, 16};
    gpt_build(a, cfg);
    gpt_init(a, 5);
    gpt_build(b, cfg);
    b.params = a.params;
    gpt_allocate(a, 4, 16);
    gpt_allocate(b, 2, 9);
    Rng rng(6);
    std::vector<int> tok(2 * 9), tgt(2 * 9);
    for (auto& t : tok) t = (int)rng.below(32);
    for (auto& t : tgt) t = (int)rng.below(32);
    EXPECT_EQ(gpt_forward(a, tok.data(), tgt.data(), 2, 9), gpt_forward(b, tok.data(), tgt.data(), 2, 9));
}

namespace {

// A diverging run names the first tensor holding a NaN or an infinity (optim/train.cpp): the
// table's order, the value and the element; "" while all are finite.
TEST(GPT, FirstNonFiniteTensorIsNamedInTableOrder) {
    GPT m;
    gpt_build(m, GPTConfig{32, 8, 2, 2, 16});
    gpt_init(m, 3);
    EXPECT_EQ(first_non_finite_tensor(m, m.params.data()), "");
    const BlockParams& b1 = m.blocks[1];
    m.params[b1.fcw + 5] = INFINITY;
    EXPECT_EQ(first_non_finite_tensor(m, m.params.data()).rfind("h.1.mlp.fc.w (inf at element 5)", 0), 0u);
    m.params[m.blocks[0].ln2b + 2] = NAN;  // earlier in the table: now the first
    EXPECT_EQ(first_non_finite_tensor(m, m.params.data()).rfind("h.0.ln2.b (nan at element 2)", 0), 0u);
    // activations: a NaN in a gain reaches ln1 of block 0 first
    m.params.assign(m.num_params, 0.0f);
    gpt_init(m, 3);
    m.params[m.blocks[0].ln1w] = NAN;
    gpt_allocate(m, 2, 8);
    std::vector<int> tok(16, 1);
    gpt_forward(m, tok.data(), tok.data(), 2, 8);
    EXPECT_EQ(first_non_finite_activation(m).rfind("activation h.0.ln1 (nan at element 0)", 0), 0u)
        << first_non_finite_activation(m);
}

}  // namespace

namespace {

// Readers check a file's size against gpt_param_count before building anything (tests/fuzz/),
// so it must equal what gpt_build lays out; configs past the plausibility bounds are refused.
TEST(GPT, ParamCountWithoutBuildingEqualsTheLayout) {
    for (const GPTConfig& c : {GPTConfig{256, 128, 4, 4, 128}, GPTConfig{67, 24, 3, 2, 18}, GPTConfig{50257, 1024, 2, 12, 768}}) {
        GPT m;
        gpt_layout(m, c);
        EXPECT_EQ(gpt_param_count(c), m.num_params) << c.describe();
        EXPECT_TRUE(m.params.empty());  // the layout allocates no parameters
    }
    EXPECT_THROW(gpt_param_count(GPTConfig{256, 8, 196608, 524288, 16777216}), Error);  // an llm.c header found by fuzzing
    EXPECT_THROW(gpt_param_count(GPTConfig{256, 8, kMaxLayers + 1, 1, 8}), Error);
    EXPECT_THROW(gpt_param_count(GPTConfig{256, kMaxSeqLen + 1, 1, 1, 8}), Error);
}

}  // namespace
