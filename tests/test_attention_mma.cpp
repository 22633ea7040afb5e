// Attention variant 2 (kernels/attention_mma.cu: bf16, tensor cores) against a float64 reference
// computed from the same bf16 inputs. Built twice, as tests/test_twins.cpp is: emulated on every
// CI run (mma.sync, ldmatrix and cp.async by the emulator), natively where a GPU is present.
//
// Tolerance, per element, from the kernel's arithmetic: the inputs are the same bf16 values; the
// kernel rounds P (and dS) to bf16 before multiplying, which moves each term p_j x_j by at most
// 2^-8 |p_j x_j|, and rounds its output to bf16 (2^-8 |result|). Everything else is fp32 (sums of
// exact bf16 products, exp2, the online rescaling), orders of magnitude finer. So
//     |got - ref| <= 1.5 * 2^-8 * (sum_j |p_j x_j| + |ref|) + 2^-14 * max |ref|,
// where the sum is over the product the element comes from, the factor 1.5 and the last term
// leave room for the fp32 parts (summation order, exp2f), 2^-24 relative per operation, times at
// most a few hundred terms.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/attention_cuda.h"
#include "kernels/bf16.h"
#include "tests/compare.h"
#include "tests/twins.h"

using namespace diloco;
using namespace diloco::test;

namespace {

struct Shape {
    int B, T, NH, HS;
    int C() const { return NH * HS; }
};

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_bits(v[i]);
    return out;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_value(v[i]);
    return out;
}

// The float64 reference: the values, and for each the sum of |terms| its tolerance scales with.
struct Reference {
    std::vector<double> out, out_terms, lse;                                  // forward
    std::vector<double> dqkv, dqkv_terms;                                     // backward
};

// Forward from qkv; backward from qkv, dout and the forward's inputs `out` and `lse` as the kernel
// gets them (bf16 out, fp32 lse), so that both sides compute one formula from the same numbers.
Reference reference(const Shape& s, const std::vector<float>& qkv, const std::vector<float>& dout,
                    const std::vector<float>& out_in, const std::vector<float>& lse_in) {
    const int T = s.T, C = s.C(), HS = s.HS;
    const double scale = 1.0 / std::sqrt((double)HS);
    Reference r;
    r.out.assign((size_t)s.B * T * C, 0), r.out_terms = r.out, r.lse.assign((size_t)s.B * s.NH * T, 0);
    r.dqkv.assign((size_t)s.B * T * 3 * C, 0), r.dqkv_terms = r.dqkv;
    std::vector<double> S(T * T), P(T * T), dS(T * T);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            auto q = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + h * HS + d]; };
            auto k = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + C + h * HS + d]; };
            auto v = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + 2 * C + h * HS + d]; };
            auto at = [&](int i, int d) { return ((size_t)b * T + i) * C + h * HS + d; };
            auto g = [&](int i, int d) { return (double)dout[at(i, d)]; };
            auto grad = [&](int part, int i, int d) { return ((size_t)b * T + i) * 3 * C + part * C + h * HS + d; };
            for (int i = 0; i < T; i++) {
                double m = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    double dot = 0;
                    for (int d = 0; d < HS; d++) dot += q(i, d) * k(j, d);
                    S[i * T + j] = dot * scale;
                    m = std::max(m, S[i * T + j]);
                }
                double l = 0;
                for (int j = 0; j <= i; j++) l += std::exp(S[i * T + j] - m);
                r.lse[((size_t)b * s.NH + h) * T + i] = m + std::log(l);
                for (int d = 0; d < HS; d++)
                    for (int j = 0; j <= i; j++) {
                        const double p = std::exp(S[i * T + j] - m) / l;
                        r.out[at(i, d)] += p * v(j, d);
                        r.out_terms[at(i, d)] += p * std::fabs(v(j, d));
                    }
            }
            // backward from the given out and lse
            for (int i = 0; i < T; i++) {
                double Di = 0;
                for (int d = 0; d < HS; d++) Di += g(i, d) * out_in[at(i, d)];
                for (int j = 0; j <= i; j++) {
                    P[i * T + j] = std::exp(S[i * T + j] - lse_in[((size_t)b * s.NH + h) * T + i]);
                    double dp = 0;
                    for (int d = 0; d < HS; d++) dp += g(i, d) * v(j, d);
                    dS[i * T + j] = P[i * T + j] * (dp - Di);
                }
            }
            for (int i = 0; i < T; i++)
                for (int j = 0; j <= i; j++)
                    for (int d = 0; d < HS; d++) {
                        r.dqkv[grad(0, i, d)] += scale * dS[i * T + j] * k(j, d);
                        r.dqkv_terms[grad(0, i, d)] += scale * std::fabs(dS[i * T + j] * k(j, d));
                        r.dqkv[grad(1, j, d)] += scale * dS[i * T + j] * q(i, d);
                        r.dqkv_terms[grad(1, j, d)] += scale * std::fabs(dS[i * T + j] * q(i, d));
                        r.dqkv[grad(2, j, d)] += P[i * T + j] * g(i, d);
                        r.dqkv_terms[grad(2, j, d)] += P[i * T + j] * std::fabs(g(i, d));
                    }
        }
    return r;
}

::testing::AssertionResult close_bf16(const std::string& what, const std::vector<float>& got, const std::vector<double>& ref,
                                      const std::vector<double>& terms) {
    double biggest = 0;
    for (double x : ref) biggest = std::max(biggest, std::fabs(x));
    const double u = std::ldexp(1.0, -8);
    return all_close(what, got.data(), ref.data(), got.size(),
                     [&](size_t i) { return 1.5 * u * (terms[i] + std::fabs(ref[i])) + std::ldexp(biggest, -14) + 1e-30; });
}

}  // namespace

TEST(Twin, AttentionVariant2MatchesFloat64) {
    REQUIRE_DEVICE();
    Rng rng(41);
    // both head sizes; T = 1, one tile, tiles with a ragged end, and a row past two tiles
    for (Shape s : {Shape{1, 1, 1, 64}, Shape{2, 17, 2, 64}, Shape{1, 64, 1, 128}, Shape{1, 100, 2, 64},
                    Shape{2, 130, 1, 128}, Shape{1, 129, 1, 64}}) {
        const int C = s.C();
        const size_t BT = (size_t)s.B * s.T;
        const auto qkv16 = to_bf16(randn(BT * 3 * C, rng)), dout16 = to_bf16(randn(BT * C, rng));
        std::vector<uint16_t> got_out[2], got_dqkv[2];
        std::vector<float> got_lse[2];
        for (int run = 0; run < 2; run++) {
            use_schedule(700 + run);
            Dev<uint16_t> dQkv(qkv16), dOut(BT * C), dDout(dout16), dG(BT * 3 * C);
            Dev<float> dLse(BT * s.NH), work(attention_backward_workspace(s.B, s.T, s.NH));
            CUDA_OK(attention_forward_bf16_cuda(dOut.p, dLse.p, dQkv.p, s.B, s.T, C, s.NH, nullptr));
            CUDA_OK(attention_backward_bf16_cuda(dG.p, dDout.p, dQkv.p, dOut.p, dLse.p, s.B, s.T, C, s.NH, work.p, nullptr));
            got_out[run] = dOut.get(), got_lse[run] = dLse.get(), got_dqkv[run] = dG.get();
        }
        const std::string shape = "B" + std::to_string(s.B) + " T" + std::to_string(s.T) + " NH" + std::to_string(s.NH) +
                                  " hs" + std::to_string(s.HS);
        EXPECT_EQ(got_out[0], got_out[1]) << shape << ": out depends on the schedule";
        EXPECT_EQ(got_lse[0], got_lse[1]) << shape << ": lse depends on the schedule";
        EXPECT_EQ(got_dqkv[0], got_dqkv[1]) << shape << ": dqkv depends on the schedule";
        const auto out = from_bf16(got_out[0]);
        const Reference r = reference(s, from_bf16(qkv16), from_bf16(dout16), out, got_lse[0]);
        EXPECT_TRUE(close_bf16(shape + " out", out, r.out, r.out_terms));
        std::vector<double> no_terms(r.lse.size(), 0.0);
        EXPECT_TRUE(all_close(shape + " lse", got_lse[0].data(), r.lse.data(), r.lse.size(),
                              [&](size_t i) { return 1e-5 * (1 + std::fabs(r.lse[i])); }));
        EXPECT_TRUE(close_bf16(shape + " dqkv", from_bf16(got_dqkv[0]), r.dqkv, r.dqkv_terms));
    }
}

TEST(Twin, AttentionVariant2RefusesOtherHeadSizes) {
    REQUIRE_DEVICE();
    Dev<uint16_t> x(3 * 96), o(96);
    Dev<float> l(1);
    EXPECT_EQ(attention_forward_bf16_cuda(o.p, l.p, x.p, 1, 1, 96, 1, nullptr), cudaErrorInvalidValue);
    EXPECT_EQ(attention_forward_bf16_cuda(o.p, l.p, x.p, 1, 1, 96, 3, nullptr), cudaErrorInvalidValue);  // hs 32
}
