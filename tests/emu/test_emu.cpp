// The CUDA emulator's own tests: correct kernels give exact answers under any schedule, and each
// deliberately broken kernel is caught.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda_compat.h"
#include "kernels/common.h"
#include "tests/emu/emu_test_kernels.h"

using namespace diloco;

namespace {

std::vector<float> iota_floats(int n) {
    std::vector<float> v(n);
    for (int i = 0; i < n; i++) v[i] = (float)(i % 7) - 3.0f;  // small integers: sums are exact
    return v;
}

template <typename F>
void expect_error(F fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "the emulator did not report: " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

}  // namespace

TEST(Emulator, BlockReductionThroughSharedMemory) {
    for (int n : {1, 100, 1000, 4099}) {
        auto in = iota_floats(n);
        const int block = 128, nb = (n + block - 1) / block;
        std::vector<float> out(nb, NAN);
        for (uint64_t seed : {1, 2, 3}) {
            emu::set_schedule_seed(seed);
            emutest::block_sum(out.data(), in.data(), n, block, true);
            for (int b = 0; b < nb; b++) {
                float want = 0;
                for (int i = b * block; i < std::min(n, (b + 1) * block); i++) want += in[i];
                ASSERT_EQ(out[b], want) << "block " << b << ", seed " << seed;
            }
        }
    }
}

TEST(Emulator, WarpReductionThroughShuffles) {
    const int n = 512;
    auto in = iota_floats(n);
    std::vector<float> out(n / 32, NAN);
    emutest::warp_sum(out.data(), in.data(), n);
    for (int w = 0; w < n / 32; w++) {
        float want = 0;
        for (int i = 0; i < 32; i++) want += in[w * 32 + i];
        EXPECT_EQ(out[w], want) << "warp " << w;
    }
}

TEST(Emulator, TiledTransposeOnAwkwardShapes) {
    for (auto [rows, cols] : {std::pair{1, 1}, std::pair{33, 65}, std::pair{64, 32}, std::pair{70, 5}}) {
        auto in = iota_floats(rows * cols);
        for (int i = 0; i < rows * cols; i++) in[i] = (float)i;
        std::vector<float> out(rows * cols, NAN);
        emutest::transpose(out.data(), in.data(), rows, cols);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) ASSERT_EQ(out[c * rows + r], in[r * cols + c]) << rows << "x" << cols;
    }
}

TEST(Emulator, MissingBarrierChangesTheResult) {
    const int n = 256, block = 256;
    auto in = iota_floats(n);
    float want = 0;
    for (float x : in) want += x;
    int wrong = 0;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        emu::set_schedule_seed(seed);
        float out = NAN;
        emutest::block_sum(&out, in.data(), n, block, false);
        wrong += !(out == want);  // NaN (an unwritten slot read) counts as wrong too
    }
    EXPECT_GT(wrong, 0) << "a reduction without barriers gave the right sum under all 8 schedules";
}

TEST(Emulator, DivergentBarrierIsReported) {
    std::vector<float> out(64, 0.0f);
    expect_error([&] { emutest::divergent_barrier(out.data(), 64); }, "divergent __syncthreads");
    expect_error([&] { emutest::early_exit_barrier(out.data(), 64, 40); }, "exited while the others wait");
}

TEST(Emulator, UninitialisedSharedMemoryIsPoisoned) {
    std::vector<float> out(64, 0.0f);
    emutest::uninitialised_shared(out.data(), 64);
    // thread 62 reads slot 63, which nobody wrote; thread 63 wraps around to slot 0
    EXPECT_TRUE(std::isnan(out[62])) << "the unwritten shared slot read back as " << out[62];
    for (int t = 0; t < 62; t++) EXPECT_EQ(out[t], (float)(t + 1));
    EXPECT_EQ(out[63], 0.0f);
}

TEST(Emulator, ShuffleNamingAMissingLaneIsReported) {
    std::vector<float> out(48, 0.0f);
    expect_error([&] { emutest::partial_warp_shuffle(out.data()); }, "does not exist");
}

#if defined(__SANITIZE_ADDRESS__)
static void read_past_the_end() {
    float *in, *out;
    cudaMalloc(&in, 100 * sizeof(float));  // emulated device memory is heap memory
    cudaMalloc(&out, 100 * sizeof(float));
    cudaMemset(in, 0, 100 * sizeof(float));
    emutest::out_of_bounds(out, in, 100);
}

TEST(EmulatorDeathTest, OutOfBoundsGlobalReadIsCaughtByAddressSanitizer) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(read_past_the_end(), "heap-buffer-overflow");
}
#else
TEST(EmulatorDeathTest, OutOfBoundsGlobalReadIsCaughtByAddressSanitizer) {
    GTEST_SKIP() << "needs the AddressSanitizer build of the emulated tests (build-asan, run by tools/test.sh)";
}
#endif
