// Every CPU kernel against a float64 reference (tests/reference.h) on fresh random inputs, at
// several shapes including sizes that are not multiples of any tile, with outputs poisoned with
// NaN before the call. Tolerances follow the standard bound for a float32 sum of n terms,
// |fl(sum) - sum| <= n * u * sum|terms| (u = 2^-24), with n read off each kernel.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/common.h"
#include "kernels/crossentropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/gradnorm.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/residual.h"
#include "tests/compare.h"
#include "tests/reference.h"

using namespace diloco;
using namespace diloco::test;

TEST(Embedding, ForwardAndBackwardMatchReference) {
    struct Shape { int B, T, C, V; };
    Rng rng(11);
    for (Shape s : {Shape{1, 1, 8, 5}, Shape{2, 7, 24, 11}, Shape{3, 33, 40, 50}}) {
        const size_t BT = (size_t)s.B * s.T;
        std::vector<int> tok(BT);
        for (auto& t : tok) t = (int)rng.below(s.V);
        tok[0] = s.V - 1;  // the last row of the table is reachable
        auto wte = randn((size_t)s.V * s.C, rng), wpe = randn((size_t)s.T * s.C, rng);
        auto out = poisoned(BT * s.C);
        embedding_forward_cpu(out.data(), tok.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
        ref::Vec want;
        ref::embedding_forward(want, tok.data(), to_double(wte), to_double(wpe), s.B, s.T, s.C);
        // one fp32 addition: half an ulp of the result
        EXPECT_TRUE(close_rel("embedding forward", out, want, kU32, 0.0));

        // backward accumulates into existing gradients, so start from random values
        auto dout = randn(BT * s.C, rng);
        auto dwte = randn(wte.size(), rng), dwpe = randn(wpe.size(), rng);
        ref::Vec want_wte = to_double(dwte), want_wpe = to_double(dwpe), abs_wte(dwte.size()), abs_wpe(dwpe.size());
        for (size_t i = 0; i < dwte.size(); i++) abs_wte[i] = std::fabs(dwte[i]);
        for (size_t i = 0; i < dwpe.size(); i++) abs_wpe[i] = std::fabs(dwpe[i]);
        for (size_t r = 0; r < BT; r++)
            for (int c = 0; c < s.C; c++) {
                const double g = dout[r * s.C + c];
                want_wte[(size_t)tok[r] * s.C + c] += g;
                abs_wte[(size_t)tok[r] * s.C + c] += std::fabs(g);
                want_wpe[(r % s.T) * s.C + c] += g;
                abs_wpe[(r % s.T) * s.C + c] += std::fabs(g);
            }
        embedding_backward_cpu(dwte.data(), dwpe.data(), dout.data(), tok.data(), s.B, s.T, s.C);
        const double n = (double)BT + 1;  // most terms any one element can sum
        EXPECT_TRUE(all_close("embedding dwte", dwte.data(), want_wte.data(), dwte.size(),
                              [&](size_t i) { return n * kU32 * abs_wte[i]; }));
        EXPECT_TRUE(all_close("embedding dwpe", dwpe.data(), want_wpe.data(), dwpe.size(),
                              [&](size_t i) { return n * kU32 * abs_wpe[i]; }));
    }
}

TEST(LayerNorm, ForwardAndBackwardMatchReference) {
    struct Shape { int N, C; };
    Rng rng(12);
    for (Shape s : {Shape{1, 3}, Shape{7, 24}, Shape{65, 130}, Shape{33, 768}}) {
        const size_t NC = (size_t)s.N * s.C;
        auto x = randn(NC, rng, 2.0);
        for (size_t i = 0; i < NC; i++) x[i] += 0.5f;  // a non-zero mean exercises the centring
        auto w = randn(s.C, rng), b = randn(s.C, rng);
        auto out = poisoned(NC), mean = poisoned(s.N), rstd = poisoned(s.N);
        layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), s.N, s.C);
        ref::Vec want, wmean, wrstd;
        ref::layernorm_forward(want, wmean, wrstd, to_double(x), to_double(w), to_double(b), s.N, s.C);
        // mean and variance are sums of C terms: relative error <= C u on each; xhat is O(1) and
        // then scaled by |w| and shifted by b, so the output error is about 4 C u (|w| + |b| + 1)
        const double tol = 4.0 * s.C * kU32;
        EXPECT_TRUE(close_rel("layernorm mean", mean, wmean, tol, tol * 2.5));
        EXPECT_TRUE(close_rel("layernorm rstd", rstd, wrstd, tol, 0.0));
        EXPECT_TRUE(all_close("layernorm out", out.data(), want.data(), NC, [&](size_t i) {
            return tol * (std::fabs(w[i % s.C]) * 4.0 + std::fabs(b[i % s.C]) + 1.0);
        }));

        auto dout = randn(NC, rng);
        auto dx = randn(NC, rng), dw = randn(s.C, rng), db = randn(s.C, rng);  // accumulated into
        ref::Vec gx, gw, gb;
        ref::layernorm_backward(gx, gw, gb, to_double(dout), to_double(x), to_double(w), s.N, s.C);
        for (size_t i = 0; i < NC; i++) gx[i] += dx[i];
        for (int c = 0; c < s.C; c++) gw[c] += dw[c], gb[c] += db[c];
        layernorm_backward_cpu(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                               mean.data(), rstd.data(), s.N, s.C);
        // dx: two row sums of C terms of size |dout w xhat|; dw, db: column sums of N terms
        EXPECT_TRUE(close_max("layernorm dx", dx, gx, 8.0 * s.C * kU32));
        EXPECT_TRUE(close_max("layernorm dw", dw, gw, 8.0 * (s.N + 1) * kU32));
        EXPECT_TRUE(close_max("layernorm db", db, gb, 8.0 * (s.N + 1) * kU32));
    }
}

TEST(Matmul, ForwardAndBackwardMatchReference) {
    struct Shape { int N, C, OC; };
    Rng rng(13);
    for (Shape s : {Shape{1, 1, 1}, Shape{5, 7, 3}, Shape{37, 64, 96}, Shape{128, 33, 65}}) {
        auto x = randn((size_t)s.N * s.C, rng), w = randn((size_t)s.OC * s.C, rng), bias = randn(s.OC, rng);
        for (bool with_bias : {true, false}) {
            auto out = poisoned((size_t)s.N * s.OC);
            matmul_forward_cpu(out.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, s.N, s.C, s.OC);
            ref::Vec want, mag, bd = to_double(bias), absx(x.size()), absw(w.size()), absb(bias.size());
            ref::matmul_forward(want, to_double(x), to_double(w), with_bias ? &bd : nullptr, s.N, s.C, s.OC);
            for (size_t i = 0; i < x.size(); i++) absx[i] = std::fabs(x[i]);
            for (size_t i = 0; i < w.size(); i++) absw[i] = std::fabs(w[i]);
            for (size_t i = 0; i < bias.size(); i++) absb[i] = std::fabs(bias[i]);
            ref::matmul_forward(mag, absx, absw, with_bias ? &absb : nullptr, s.N, s.C, s.OC);
            // a dot product of C terms plus the bias: error <= (C + 1) u sum|terms|
            EXPECT_TRUE(all_close("matmul forward", out.data(), want.data(), out.size(),
                                  [&](size_t i) { return (s.C + 2) * kU32 * mag[i]; }));
        }
        auto dout = randn((size_t)s.N * s.OC, rng);
        auto dx = poisoned(x.size());
        auto dw = randn(w.size(), rng), db = randn(s.OC, rng);  // accumulated into
        ref::Vec want_dx((size_t)s.N * s.C, 0.0), want_dw = to_double(dw), want_db = to_double(db);
        for (int n = 0; n < s.N; n++)
            for (int o = 0; o < s.OC; o++) {
                const double g = dout[(size_t)n * s.OC + o];
                want_db[o] += g;
                for (int c = 0; c < s.C; c++) {
                    want_dx[(size_t)n * s.C + c] += g * w[(size_t)o * s.C + c];
                    want_dw[(size_t)o * s.C + c] += g * x[(size_t)n * s.C + c];
                }
            }
        matmul_backward_cpu(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), s.N, s.C, s.OC);
        // dx sums OC products, dw and db sum N (+1 for the existing value); terms are O(1)
        // products of unit normals, so the largest output bounds sum|terms| / sqrt(n) at worst
        EXPECT_TRUE(close_max("matmul dx", dx, want_dx, 4.0 * s.OC * kU32 * std::sqrt((double)s.OC)));
        EXPECT_TRUE(close_max("matmul dw", dw, want_dw, 4.0 * (s.N + 1) * kU32 * std::sqrt((double)s.N + 1)));
        EXPECT_TRUE(close_max("matmul db", db, want_db, 4.0 * (s.N + 1) * kU32 * std::sqrt((double)s.N + 1)));
    }
}

// tf32 keeps 10 of float32's 23 mantissa bits: a spacing of 2^-10 between 1 and 2, where the
// exactly representable, the halfway (ties to even, both ways) and the just-above-halfway cases sit.
TEST(Matmul, RoundToTf32IsNearestEven) {
    const float ulp = std::ldexp(1.0f, -10);
    EXPECT_EQ(round_to_tf32(1.0f), 1.0f);
    EXPECT_EQ(round_to_tf32(1.0f + ulp), 1.0f + ulp);
    EXPECT_EQ(round_to_tf32(1.0f + ulp / 2), 1.0f);                    // tie, even below
    EXPECT_EQ(round_to_tf32(1.0f + 3 * ulp / 2), 1.0f + 2 * ulp);      // tie, even above
    EXPECT_EQ(round_to_tf32(1.0f + ulp / 2 + ulp / 1024), 1.0f + ulp);  // just past the tie
    EXPECT_EQ(round_to_tf32(-(1.0f + ulp / 2 + ulp / 1024)), -(1.0f + ulp));
    EXPECT_EQ(round_to_tf32(2.0f - ulp / 4), 2.0f);  // carries into the exponent
    EXPECT_EQ(round_to_tf32(std::numeric_limits<float>::max()), INFINITY);
    EXPECT_EQ(round_to_tf32(-INFINITY), -INFINITY);
    EXPECT_TRUE(std::isnan(round_to_tf32(NAN)));
    const float tiny = std::numeric_limits<float>::denorm_min();  // subnormals round like the rest
    EXPECT_EQ(round_to_tf32(tiny), 0.0f);
    EXPECT_EQ(round_to_tf32(8192 * tiny), 8192 * tiny);
    Rng rng(17);  // and never by more than half a tf32 ulp: relative error <= 2^-11
    for (int i = 0; i < 10000; i++) {
        const float x = (float)(rng.normal() * 100);
        EXPECT_LE(std::fabs((double)round_to_tf32(x) - x), std::ldexp(std::fabs((double)x), -11)) << x;
    }
}

TEST(Matmul, PrecisionNames) {
    EXPECT_EQ(parse_matmul_precision("fp32"), MatmulPrecision::fp32);
    EXPECT_EQ(parse_matmul_precision("tf32"), MatmulPrecision::tf32);
    EXPECT_STREQ(matmul_precision_name(MatmulPrecision::tf32), "tf32");
    try {
        parse_matmul_precision("bf16");
        ADD_FAILURE() << "bf16 accepted";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "unknown matmul precision 'bf16' (fp32 or tf32)");
    }
}

TEST(Gelu, ForwardAndBackwardMatchReference) {
    Rng rng(14);
    for (long n : {1L, 17L, 1000L, 4099L}) {
        auto x = randn(n, rng, 3.0);
        const float special[] = {0.0f, -0.0f, 1e-20f, -1e-20f, 9.0f, -9.0f, 30.0f, -30.0f};
        for (size_t i = 0; i < std::min<size_t>(n, 8); i++) x[i] = special[i];
        auto out = poisoned(n);
        gelu_forward_cpu(out.data(), x.data(), n);
        ref::Vec want(n), wgrad(n);
        for (long i = 0; i < n; i++) want[i] = ref::gelu(x[i]);
        // tanh with a few ulp of absolute error (|tanh| <= 1) is multiplied by 0.5 |x|
        EXPECT_TRUE(all_close("gelu forward", out.data(), want.data(), n,
                              [&](size_t i) { return 8 * kU32 * (std::fabs(want[i]) + std::fabs(x[i])); }));
        auto dout = randn(n, rng), din = poisoned(n);
        gelu_backward_cpu(din.data(), x.data(), dout.data(), n);
        for (long i = 0; i < n; i++) wgrad[i] = dout[i] * ref::gelu_grad(x[i]);
        // gelu' involves x * sech^2 * (1 + 3 a x^2): relative error of a few ulp on each factor
        EXPECT_TRUE(all_close("gelu backward", din.data(), wgrad.data(), n, [&](size_t i) {
            return 16 * kU32 * std::fabs(dout[i]) * (1.0 + x[i] * x[i] * std::fabs(x[i]));
        }));
    }
}

TEST(CrossEntropy, ForwardAndBackwardMatchReference) {
    struct Shape { int N, V; };
    Rng rng(15);
    for (Shape s : {Shape{1, 2}, Shape{5, 17}, Shape{9, 256}, Shape{3, 1000}}) {
        auto logits = randn((size_t)s.N * s.V, rng, 3.0);
        std::vector<int> tg(s.N);
        for (auto& t : tg) t = (int)rng.below(s.V);
        tg[0] = s.V - 1;
        auto losses = poisoned(s.N), lse = poisoned(s.N);
        crossentropy_forward_cpu(losses.data(), lse.data(), logits.data(), tg.data(), s.N, s.V);
        ref::Vec want_loss(s.N), want_lse(s.N), want_d((size_t)s.N * s.V);
        const double dloss = 1.0 / s.N;
        for (int n = 0; n < s.N; n++) {
            double mx = -1e300, z = 0;
            for (int v = 0; v < s.V; v++) mx = std::max(mx, (double)logits[(size_t)n * s.V + v]);
            for (int v = 0; v < s.V; v++) z += std::exp(logits[(size_t)n * s.V + v] - mx);
            want_lse[n] = mx + std::log(z);
            want_loss[n] = want_lse[n] - logits[(size_t)n * s.V + tg[n]];
            for (int v = 0; v < s.V; v++)
                want_d[(size_t)n * s.V + v] = (std::exp(logits[(size_t)n * s.V + v] - want_lse[n]) - (v == tg[n])) * dloss;
        }
        // a sum of V positive terms: relative error <= V u, which log turns into an absolute one;
        // exp adds a few ulp, and the result is compared against values of size |lse|
        const double tol = (s.V + 8) * kU32;
        EXPECT_TRUE(close_rel("crossentropy lse", lse, want_lse, 4 * kU32, tol));
        EXPECT_TRUE(close_rel("crossentropy loss", losses, want_loss, 4 * kU32, tol + 8 * kU32 * 12));
        auto d = poisoned((size_t)s.N * s.V);
        crossentropy_backward_cpu(d.data(), logits.data(), lse.data(), tg.data(), (float)dloss, s.N, s.V);
        // p = exp(x - lse) inherits lse's absolute error as a relative one
        EXPECT_TRUE(close_rel("crossentropy dlogits", d, want_d, tol + 8 * kU32, dloss * 4 * kU32));
    }
}

TEST(Attention, ForwardAndBackwardMatchReference) {
    struct Shape { int B, T, C, NH; };
    Rng rng(16);
    for (Shape s : {Shape{1, 1, 8, 1}, Shape{2, 17, 32, 2}, Shape{1, 50, 64, 4}, Shape{2, 33, 48, 3},
                    Shape{1, 40, 256, 1}, Shape{1, 70, 128, 2}}) {
        const int hs = s.C / s.NH;
        const size_t BT = (size_t)s.B * s.T;
        auto qkv = randn(BT * 3 * s.C, rng);
        auto out = poisoned(BT * s.C), lse = poisoned(BT * s.NH);
        attention_forward_cpu(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
        ref::Vec want, want_lse, want_dqkv;
        ref::attention_forward(want, want_lse, to_double(qkv), s.B, s.T, s.C, s.NH);
        // scores are dot products of hs terms of O(1) (error hs u sqrt(hs) scale); exp and the
        // running rescaling add a few ulp per key tile; out averages T values of |v| <= ~4
        const double tol = (hs + s.T + 32) * kU32 * 8;
        EXPECT_TRUE(close_rel("attention out", out, want, tol, tol));
        EXPECT_TRUE(close_rel("attention lse", lse, want_lse, tol, tol));

        auto dout = randn(BT * s.C, rng), dqkv = poisoned(BT * 3 * s.C);
        attention_backward_cpu(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.C, s.NH);
        ref::attention_backward(want_dqkv, to_double(dout), to_double(qkv), s.B, s.T, s.C, s.NH);
        // sums over up to T keys of products carrying the forward error above
        EXPECT_TRUE(close_max("attention dqkv", dqkv, want_dqkv, 4 * tol));
    }
}

TEST(Residual, ForwardIsOneRoundedAddition) {
    Rng rng(17);
    for (long n : {1L, 31L, 1025L}) {
        auto a = randn(n, rng), b = randn(n, rng), out = poisoned(n);
        residual_forward_cpu(out.data(), a.data(), b.data(), n);
        ref::Vec want(n);
        for (long i = 0; i < n; i++) want[i] = (double)a[i] + b[i];
        EXPECT_TRUE(close_rel("residual", out, want, kU32, 0.0));
    }
}

TEST(GradNorm, MatchesDoubleSumAndClipScale) {
    Rng rng(18);
    for (size_t n : {size_t(1), size_t(1000), size_t(1) << 20}) {
        auto g = randn(n, rng, 0.1);
        double want = 0;
        for (float x : g) want += (double)x * x;
        want = std::sqrt(want);
        // squares of floats are exact in double; the double sum errs by <= n 2^-53 relative
        EXPECT_NEAR(global_norm_cpu(g.data(), n), want, want * (double)n * 1.2e-16 + 1e-300);
    }
    EXPECT_FLOAT_EQ(clip_scale(0.5, 1.0f), 1.0f);
    EXPECT_NEAR(clip_scale(4.0, 1.0f), 0.25f, 1e-6);
    EXPECT_FLOAT_EQ(clip_scale(100.0, 0.0f), 1.0f);  // 0 disables clipping
}

TEST(AdamW, SeveralStepsMatchReferenceWithSegmentsAndScale) {
    Rng rng(19);
    const size_t n = 1037;
    // three segments with a gap: elements 600..699 belong to none and must stay untouched
    std::vector<AdamWSegment> segs = {{0, 300, true}, {300, 300, false}, {700, 337, true}};
    auto p = randn(n, rng), m = poisoned(n), v = poisoned(n);
    std::fill(m.begin(), m.end(), 0.0f);
    std::fill(v.begin(), v.end(), 0.0f);
    ref::Vec P = to_double(p), M(n, 0.0), V(n, 0.0);
    const AdamWHyper h{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
    const float scale = 0.37f;
    for (long t = 1; t <= 5; t++) {
        auto g = randn(n, rng);
        g[5] = 0.0f;  // a zero gradient: the update is driven by the moments alone
        adamw_update_cpu(p.data(), m.data(), v.data(), g.data(), segs.data(), (int)segs.size(), h, t, scale);
        for (const auto& s : segs)
            for (size_t i = s.offset; i < s.offset + s.count; i++) {
                const double gi = (double)g[i] * scale;
                M[i] = 0.9 * M[i] + 0.1 * gi;
                V[i] = 0.95 * V[i] + 0.05 * gi * gi;
                const double mhat = M[i] / (1 - std::pow(0.9, t)), vhat = V[i] / (1 - std::pow(0.95, t));
                P[i] -= 1e-2 * (mhat / (std::sqrt(vhat) + 1e-8) + (s.decay ? 0.1 : 0.0) * P[i]);
            }
    }
    // each step: a few ulp on p, and a few ulp relative on the O(1) ratio mhat/sqrt(vhat) times lr
    EXPECT_TRUE(close_rel("adamw params", p, P, 5 * 8 * kU32, 5 * 8 * kU32 * 1e-2));
    for (size_t i = 600; i < 700; i++) M[i] = V[i] = 0.0;  // untouched moments stay at zero
    // m = 0.9 m + 0.1 g can cancel: its error follows the size of the terms, 0.1 |g| scale,
    // with |g| < 5 for unit normals
    EXPECT_TRUE(close_rel("adamw m", m, M, 5 * 8 * kU32, 5 * 8 * kU32 * 0.1 * scale * 5));
    EXPECT_TRUE(close_rel("adamw v", v, V, 5 * 8 * kU32, 1e-12));
}
