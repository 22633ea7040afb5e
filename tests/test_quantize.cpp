// The exchange formats of kernels/quantize.h: round trips within each format's spacing, the
// defined edge cases, sizes, and fp32 accumulation of decoded payloads.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/common.h"
#include "kernels/quantize.h"
#include "tests/compare.h"

using namespace diloco;
using namespace diloco::test;

namespace {

// The block sizes the tests cover: the old fixed 32, the default, large ones, and 6, which
// divides none of the lengths used, so that every payload ends on a partial block.
const int kBlocks[] = {32, kQuantBlockDefault, 256, 1024, 6};

std::vector<float> round_trip(const std::vector<float>& x, QuantFormat f, int block = kQuantBlockDefault) {
    std::vector<uint8_t> p(quant_bytes(f, x.size(), block));
    quantize_cpu(p.data(), x.data(), x.size(), f, block);
    std::vector<float> out(x.size(), std::numeric_limits<float>::quiet_NaN());
    dequantize_cpu(out.data(), p.data(), x.size(), f, block);
    return out;
}

// Values spanning many magnitudes, runs of different scales, n not a multiple of the block.
std::vector<float> mixed_values(size_t n, Rng& rng) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)(rng.normal() * std::pow(10.0, (double)((i / 32) % 9) - 4.0));
    return x;
}

float block_absmax(const std::vector<float>& x, size_t i, int block) {
    float m = 0;
    const size_t b0 = i / block * block;
    for (size_t k = b0; k < std::min(x.size(), b0 + block); k++) m = std::max(m, std::fabs(x[k]));
    return m;
}

// |decoded| must be the representable magnitude nearest to |x| / s (up to float rounding of x / s)
void expect_nearest(const std::vector<float>& x, const std::vector<float>& y, const std::vector<float>& grid, float top,
                    int block, const char* what) {
    size_t bad = 0;
    for (size_t i = 0; i < x.size(); i++) {
        const float s = block_absmax(x, i, block) / top;
        if (s == 0.0f) {
            bad += y[i] != 0.0f;
            continue;
        }
        const double want = std::fabs((double)x[i]) / s, got = std::fabs((double)y[i]) / s;
        double best = 1e300;
        for (float g : grid) best = std::min(best, std::fabs(want - g));
        bad += !(std::fabs(want - got) <= best + 1e-5 * (1 + want)) || (y[i] != 0 && (y[i] < 0) != (x[i] < 0));
    }
    EXPECT_EQ(bad, 0u) << what << " block " << block << ": values not rounded to the nearest representable one";
}

}  // namespace

TEST(Quantize, RoundTripsStayWithinEachFormatsSpacing) {
    Rng rng(41);
    const auto x = mixed_values(1000, rng);
    EXPECT_EQ(round_trip(x, QuantFormat::fp32), x);
    const auto b = round_trip(x, QuantFormat::bf16);
    // 7 stored mantissa bits: half an ulp is 2^(e-8) for |x| in [2^e, 2^(e+1)), at most 2^-8 |x|
    for (size_t i = 0; i < x.size(); i++) ASSERT_LE(std::fabs(b[i] - x[i]), std::ldexp(std::fabs(x[i]), -8)) << i;
    std::vector<float> e3 = {0};
    for (int e = -6; e <= 0; e++) e3.push_back(std::ldexp(1.0f, e));
    for (int block : kBlocks) {
        const auto q = round_trip(x, QuantFormat::int8, block);
        for (size_t i = 0; i < x.size(); i++) {  // half a step of absmax / 127, plus the float rounding of x / s
            const float s = block_absmax(x, i, block) / 127.0f;
            ASSERT_LE(std::fabs(q[i] - x[i]), 0.5f * s * (1 + 1e-5f) + 1e-6f * std::fabs(x[i])) << i << " block " << block;
        }
        expect_nearest(x, round_trip(x, QuantFormat::e2m1, block), {0, 0.5f, 1, 1.5f, 2, 3, 4, 6}, 6.0f, block, "e2m1");
        expect_nearest(x, round_trip(x, QuantFormat::e3m0, block), e3, 1.0f, block, "e3m0");
        // e3m0's stated bound (docs/formats.md): within a third of the value from 1.5 * 2^-7 s up
        // (the midpoint of 2^-7 and 2^-6), at most 2^-7 s below
        const auto y = round_trip(x, QuantFormat::e3m0, block);
        for (size_t i = 0; i < x.size(); i++) {
            const float s = block_absmax(x, i, block), a = std::fabs(x[i]);
            const float bound = a >= 1.5f * std::ldexp(s, -7) ? a / 3 : std::ldexp(s, -7);
            ASSERT_LE(std::fabs(y[i] - x[i]), bound * (1 + 1e-5f)) << i << " block " << block;
        }
        // and each block's largest value comes back exactly (it defines the scale)
        for (QuantFormat f : {QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0}) {
            const auto z = round_trip(x, f, block);
            for (size_t b0 = 0; b0 < x.size(); b0 += block) {
                size_t arg = b0;
                for (size_t i = b0; i < std::min(x.size(), b0 + block); i++)
                    if (std::fabs(x[i]) > std::fabs(x[arg])) arg = i;
                EXPECT_NEAR(z[arg], x[arg], 1e-6 * std::fabs(x[arg])) << quant_format_name(f) << " block " << block
                                                                      << " #" << b0 / block;
            }
        }
    }
}

TEST(Quantize, LargerBlocksOnlyCoarsenTheScale) {
    // A larger block shares one absmax among more values, so the values far below it are encoded
    // more coarsely: the mean error grows with the block, and stays within the format's reach.
    Rng rng(43);
    const auto x = randn(2048, rng);
    for (QuantFormat f : {QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0}) {
        double err32 = 0, err1024 = 0;
        const auto a = round_trip(x, f, 32), b = round_trip(x, f, 1024);
        for (size_t i = 0; i < x.size(); i++) err32 += std::fabs(a[i] - x[i]), err1024 += std::fabs(b[i] - x[i]);
        EXPECT_LT(err32, err1024) << quant_format_name(f);  // a finer scale is closer on average
        EXPECT_LT(err1024, 0.25 * x.size()) << quant_format_name(f);  // and both stay within the format's reach
    }
}

TEST(Quantize, EdgeCasesAreDefined) {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    for (QuantFormat f : {QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0}) {
        const char* name = quant_format_name(f);
        // an all-zero block: scale 0, exact zeros back
        std::vector<float> zeros(40, 0.0f);
        for (float v : round_trip(zeros, f)) EXPECT_EQ(v, 0.0f) << name;
        // subnormals only: finite, no NaN, within the block's own spacing
        std::vector<float> sub(32);  // (within one block of the default size)
        for (int i = 0; i < 32; i++) sub[i] = (i % 2 ? -1.0f : 1.0f) * 1e-40f * (float)(i + 1) / 32.0f;
        for (float v : round_trip(sub, f)) EXPECT_TRUE(std::isfinite(v) && std::fabs(v) <= 1.01e-40f) << name;
        // huge values: no overflow
        std::vector<float> big = {3e38f, -3e38f, 1e38f, 1.0f};
        const auto y = round_trip(big, f);
        EXPECT_FLOAT_EQ(y[0], 3e38f) << name;
        EXPECT_FLOAT_EQ(y[1], -3e38f) << name;
        EXPECT_TRUE(std::isfinite(y[2])) << name;
        // a NaN or an infinity poisons its own block, and only it, at any block size
        for (int block : kBlocks)
            for (float bad : {nan, inf, -inf}) {
                std::vector<float> v(3 * block, 1.0f);
                v[block + 5] = bad;
                const auto r = round_trip(v, f, block);
                for (int i = 0; i < 3 * block; i++)
                    EXPECT_EQ(std::isnan(r[i]), i / block == 1) << name << " block " << block << " value " << i;
                EXPECT_EQ(r[0], 1.0f) << name;
                EXPECT_EQ(r[3 * block - 1], 1.0f) << name;
            }
    }
    // bf16: round to nearest even, NaN and infinities kept
    const auto b = round_trip({1.00390625f, 1.01171875f, nan, inf, -inf, 0.0f, -0.0f}, QuantFormat::bf16);
    EXPECT_EQ(b[0], 1.0f);         // 1 + 2^-8: a tie, to the even 1.0
    EXPECT_EQ(b[1], 1.015625f);    // 1 + 3 * 2^-8: a tie, to the even 1 + 2^-6
    EXPECT_TRUE(std::isnan(b[2]));
    EXPECT_EQ(b[3], inf);
    EXPECT_EQ(b[4], -inf);
    EXPECT_EQ(b[5], 0.0f);
    EXPECT_TRUE(std::signbit(b[6]));
    EXPECT_THROW(parse_quant_format("fp8"), Error);
    for (int block : {0, -2, 1, 33, kQuantBlockMax + 2}) EXPECT_THROW(check_quant_block(block), Error) << block;
    EXPECT_NO_THROW(check_quant_block(2));
    EXPECT_NO_THROW(check_quant_block(kQuantBlockMax));
}

TEST(Quantize, SizesAndAccumulation) {
    const size_t n = 32 * 1024;
    EXPECT_EQ(quant_bytes(QuantFormat::fp32, n, 32), 4 * n);
    EXPECT_EQ(quant_bytes(QuantFormat::bf16, n, 32), 2 * n);
    EXPECT_EQ(quant_bytes(QuantFormat::int8, n, 32), n + n / 8);
    EXPECT_EQ(quant_bytes(QuantFormat::int8, n, 1024), n + n / 256);
    EXPECT_LE(quant_bytes(QuantFormat::e3m0, n, 32) * 6, quant_bytes(QuantFormat::fp32, n, 32));  // at most 1/6 of fp32
    EXPECT_EQ(quant_bytes(QuantFormat::e2m1, 33, 32), 2 * 4 + 17u);
    EXPECT_EQ(quant_bytes(QuantFormat::e3m0, 1000, 6), 4 * 167 + 500u);  // 166 whole blocks and one of 4
    EXPECT_EQ(quant_bytes(QuantFormat::e3m0, 1001, 256), 4 * 4 + 501u);
    // bits per value: 4 + 32/block; the default stays within 4.3 bits, as the paper's 4-bit exchange
    EXPECT_EQ(quant_bits_per_value(QuantFormat::e3m0, 32), 5.0);
    EXPECT_EQ(quant_bits_per_value(QuantFormat::e2m1, 256), 4.125);
    EXPECT_LE(quant_bits_per_value(QuantFormat::e3m0, kQuantBlockDefault), 4.3);
    EXPECT_LE(8.0 * quant_bytes(QuantFormat::e3m0, n, kQuantBlockDefault) / n, 4.3);
    // the sum of several replicas' payloads is taken in fp32, value by value
    Rng rng(42);
    for (int block : kBlocks) {
        std::vector<float> acc(1000, 0.5f);
        std::vector<double> want(1000, 0.5);
        for (int r = 0; r < 3; r++) {
            auto x = randn(1000, rng);
            std::vector<uint8_t> p(quant_bytes(QuantFormat::e3m0, x.size(), block));
            quantize_cpu(p.data(), x.data(), x.size(), QuantFormat::e3m0, block);
            std::vector<float> d(x.size());
            dequantize_cpu(d.data(), p.data(), x.size(), QuantFormat::e3m0, block);
            dequantize_add_cpu(acc.data(), p.data(), x.size(), QuantFormat::e3m0, block);
            for (size_t i = 0; i < x.size(); i++) want[i] += d[i];
        }
        EXPECT_TRUE(close_rel("accumulated", acc, want, 4 * kU32, 4 * kU32)) << "block " << block;
    }
}

TEST(Quantize, BlockAlignedPiecesEncodeAsTheWhole) {
    // The reduce-scatter exchange (optim/exchange.h) encodes a fragment in block-aligned chunks:
    // the codes and scales of a chunk are those of the same values in the whole payload.
    Rng rng(44);
    const auto x = mixed_values(1001, rng);
    for (QuantFormat f : {QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0})
        for (int block : kBlocks) {
            const auto whole = round_trip(x, f, block);
            const size_t cut = std::min<size_t>(x.size(), 2 * block);
            std::vector<float> a(x.begin(), x.begin() + cut), b(x.begin() + cut, x.end());
            auto ya = round_trip(a, f, block), yb = round_trip(b, f, block);
            ya.insert(ya.end(), yb.begin(), yb.end());
            EXPECT_EQ(ya, whole) << quant_format_name(f) << " block " << block;
        }
}
