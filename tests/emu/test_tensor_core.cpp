// The emulator's tensor-core instructions (mma.sync m16n8k16 bf16, ldmatrix, cp.async) against
// plain host arithmetic. One-hot operands put a single element at every fragment position in turn,
// so that a layout mistake shows as a wrong output position rather than averaging away; small
// integers keep every sum exact, so those checks are equalities.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/common.h"
#include "kernels/cuda_compat.h"
#include "kernels/rng.h"
#include "tests/emu/emu_test_kernels.h"
#include "tests/files.h"

using namespace diloco;
using diloco::test::expect_error;

namespace {

std::vector<uint16_t> bf16_of(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = bf16_bits(v[i]);
    return out;
}

// d = a b + c in double, from the bf16 values (a 16x16, b 16x8, c 16x8, all row-major).
std::vector<double> product(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, const std::vector<float>& c) {
    std::vector<double> d(128);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
            double acc = c[i * 8 + j];
            for (int k = 0; k < 16; k++) acc += (double)bf16_value(a[i * 16 + k]) * bf16_value(b[k * 8 + j]);
            d[i * 8 + j] = acc;
        }
    return d;
}

std::vector<float> distinct_integers(int n, int offset) {  // 1..n (+offset): exact in bf16 up to 256
    std::vector<float> v(n);
    for (int i = 0; i < n; i++) v[i] = (float)(i % 97 + 1 + offset);
    return v;
}

}  // namespace

TEST(TensorCore, MmaPlacesEveryElementOfA) {
    const auto b = bf16_of(distinct_integers(128, 0));
    const std::vector<float> c(128, 0.0f);
    std::vector<float> d(128);
    for (int row = 0; row < 16; row++)
        for (int k = 0; k < 16; k++) {
            std::vector<float> af(256, 0.0f);
            af[row * 16 + k] = 1.0f;
            const auto a = bf16_of(af);
            std::fill(d.begin(), d.end(), NAN);
            emutest::mma_direct(d.data(), a.data(), b.data(), c.data());
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 8; j++)
                    ASSERT_EQ(d[i * 8 + j], i == row ? bf16_value(b[k * 8 + j]) : 0.0f)
                        << "A one-hot at (" << row << "," << k << "), output (" << i << "," << j << ")";
        }
}

TEST(TensorCore, MmaPlacesEveryElementOfBAndC) {
    const auto a = bf16_of(distinct_integers(256, 0));
    std::vector<float> d(128);
    for (int k = 0; k < 16; k++)
        for (int col = 0; col < 8; col++) {
            std::vector<float> bfv(128, 0.0f);
            bfv[k * 8 + col] = 1.0f;
            const auto b = bf16_of(bfv);
            const auto c = distinct_integers(128, 1000);  // c shows at every position too
            std::fill(d.begin(), d.end(), NAN);
            emutest::mma_direct(d.data(), a.data(), b.data(), c.data());
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 8; j++)
                    ASSERT_EQ(d[i * 8 + j], c[i * 8 + j] + (j == col ? bf16_value(a[i * 16 + k]) : 0.0f))
                        << "B one-hot at (" << k << "," << col << "), output (" << i << "," << j << ")";
        }
}

// Random operands: fp32 accumulation of 16 exact products and c, in any order, is within
// 17 * 2^-24 * sum |terms| of the exact sum (each of at most 17 additions rounds once).
TEST(TensorCore, MmaMatchesAPlainProductOnRandomTiles) {
    Rng rng(7);
    for (int trial = 0; trial < 20; trial++) {
        std::vector<float> af(256), bfv(128), c(128);
        for (auto& x : af) x = (float)rng.normal();
        for (auto& x : bfv) x = (float)rng.normal();
        for (auto& x : c) x = (float)rng.normal();
        const auto a = bf16_of(af), b = bf16_of(bfv);
        const auto want = product(a, b, c);
        for (bool by_ldmatrix : {false, true}) {
            std::vector<float> d(128, NAN);
            if (by_ldmatrix) {
                std::vector<uint16_t> bt(128);  // b transposed: 8 rows (n) of 16 (k)
                for (int k = 0; k < 16; k++)
                    for (int n = 0; n < 8; n++) bt[n * 16 + k] = b[k * 8 + n];
                emutest::mma_ldmatrix(d.data(), a.data(), bt.data(), false);
                std::vector<float> d2(128, NAN);
                emutest::mma_ldmatrix(d2.data(), a.data(), b.data(), true);  // b by ldmatrix .trans
                for (int i = 0; i < 128; i++) ASSERT_EQ(d2[i], d[i]) << "ldmatrix_x2 and _x2_trans disagree at " << i;
                // c is 0 on this path
                std::vector<float> zero(128, 0.0f);
                const auto want0 = product(a, b, zero);
                for (int i = 0; i < 128; i++) {
                    double bound = 0;
                    for (int k = 0; k < 16; k++) bound += std::fabs((double)bf16_value(a[i / 8 * 16 + k]) * bf16_value(b[k * 8 + i % 8]));
                    ASSERT_NEAR(d[i], want0[i], 17 * std::ldexp(bound, -24) + 1e-30) << "trial " << trial << " element " << i;
                }
            } else {
                emutest::mma_direct(d.data(), a.data(), b.data(), c.data());
                for (int i = 0; i < 128; i++) {
                    double bound = std::fabs(c[i]);
                    for (int k = 0; k < 16; k++) bound += std::fabs((double)bf16_value(a[i / 8 * 16 + k]) * bf16_value(b[k * 8 + i % 8]));
                    ASSERT_NEAR(d[i], want[i], 17 * std::ldexp(bound, -24)) << "trial " << trial << " element " << i;
                }
            }
        }
    }
}

// ldmatrix_x4 on a tile of distinct values: lane l's register m holds, from the 8x8 block m (rows
// 8 (m % 2), columns 8 (m / 2)), row l/4 columns 2 (l%4) and +1; transposed, rows 2 (l%4) and +1 of column l/4.
TEST(TensorCore, LdmatrixDeliversThePtxLayout) {
    std::vector<uint16_t> a(256);
    for (int i = 0; i < 256; i++) a[i] = (uint16_t)(i + 1);
    for (bool trans : {false, true}) {
        std::vector<uint32_t> out(128, 0xdeadbeefu);
        emutest::ldmatrix_x4_tile(out.data(), a.data(), trans);
        for (int lane = 0; lane < 32; lane++)
            for (int m = 0; m < 4; m++) {
                const int r0 = 8 * (m % 2), c0 = 8 * (m / 2), g = lane / 4, t = lane % 4;
                const int lo = trans ? (r0 + 2 * t) * 16 + c0 + g : (r0 + g) * 16 + c0 + 2 * t;
                const int hi = trans ? (r0 + 2 * t + 1) * 16 + c0 + g : lo + 1;
                EXPECT_EQ(out[lane * 4 + m], (uint32_t)a[lo] | (uint32_t)a[hi] << 16)
                    << (trans ? "trans " : "") << "lane " << lane << " register " << m;
            }
    }
}

TEST(TensorCore, LdmatrixRefusesGlobalMemory) {
    std::vector<uint16_t> a(256, 1);
    std::vector<uint32_t> out(32);
    expect_error([&] { emutest::ldmatrix_from_global(out.data(), a.data()); }, "shared memory");
}

// A copy lands by the wait that covers its group; before that, at random (as on a GPU, any time
// after issue): a read that does not wait sees the poison for some of its copies, under a schedule.
TEST(TensorCore, CpAsyncLandsByItsWait) {
    const int n = 256;
    std::vector<float> in(n);
    for (int i = 0; i < n; i++) in[i] = (float)i + 0.5f;
    int early = 0, late = 0;
    for (uint64_t seed : {1, 2, 3}) {
        emu::set_schedule_seed(seed);
        std::vector<float> out(n, -1.0f);
        emutest::cp_async_copy(out.data(), in.data(), n, 32, 0, 16);
        for (int i = 0; i < n; i++) ASSERT_EQ(out[i], in[i]) << "waited for both groups, element " << i;

        emutest::cp_async_copy(out.data(), in.data(), n, 32, 1, 16);  // wait_group 1: the first half is in
        for (int i = 0; i < n / 2; i++) ASSERT_EQ(out[i], in[i]) << "first group, element " << i;
        for (int i = n / 2; i < n; i++) {
            ASSERT_TRUE(std::isnan(out[i]) || out[i] == in[i]) << "second group, element " << i;
            (std::isnan(out[i]) ? late : early)++;
        }
        emutest::cp_async_copy(out.data(), in.data(), n, 32, 2, 16);  // no wait at all
        for (int i = 0; i < n; i++) {
            ASSERT_TRUE(std::isnan(out[i]) || out[i] == in[i]) << "no wait, element " << i;
            (std::isnan(out[i]) ? late : early)++;
        }
    }
    EXPECT_GT(late, 0) << "every unwaited copy had landed: reads before the wait would go unnoticed";
    EXPECT_GT(early, 0) << "no copy ever landed before its wait: a buffer overwritten too soon would go unnoticed";
}

TEST(TensorCore, CpAsyncZeroFillsPastTheSourceSize) {
    const int n = 64;
    std::vector<float> in(n, 3.0f), out(n, -1.0f);
    emutest::cp_async_copy(out.data(), in.data(), n, 16, 0, 8);  // each 16-byte copy: 8 bytes, then zeros
    for (int i = 0; i < n; i++) EXPECT_EQ(out[i], i % 4 < 2 ? 3.0f : 0.0f) << i;
}

TEST(TensorCore, CpAsyncRefusesAMisalignedDestination) {
    std::vector<float> in(16, 1.0f), out(1);
    expect_error([&] { emutest::cp_async_misaligned(out.data(), in.data()); }, "16-byte aligned");
}

// Rounding to bf16: nearest, ties to even, NaN kept, and the 2^-8 relative bound the twins' tolerances use.
TEST(TensorCore, Bf16RoundsToNearestEven) {
    EXPECT_EQ(bf16_bits(1.0f), 0x3f80);
    EXPECT_EQ(bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // a tie: down to the even 1.0
    EXPECT_EQ(bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // a tie: up to the even neighbour
    EXPECT_EQ(bf16_bits(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);  // above the tie
    EXPECT_EQ(bf16_bits(-2.0f), 0xc000);
    EXPECT_TRUE(std::isnan(round_bf16(NAN)));
    EXPECT_EQ(round_bf16(INFINITY), INFINITY);
    EXPECT_EQ(round_bf16(3.4e38f), INFINITY);  // above the largest bf16 (about 3.39e38): rounds to infinity
    Rng rng(3);
    double worst = 0;
    for (int i = 0; i < 10000; i++) {
        const float x = (float)(rng.normal() * std::exp(rng.normal() * 10));
        ASSERT_LE(std::fabs(round_bf16(x) - x), std::ldexp(std::fabs(x), -8)) << x;
        worst = std::max(worst, (double)std::fabs(round_bf16(x) - x) / std::fabs(x));
    }
    EXPECT_GT(worst, std::ldexp(1.0, -9)) << "rounding finer than bf16's: is it rounding at all?";
}
