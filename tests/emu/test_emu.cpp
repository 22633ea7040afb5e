// The CUDA emulator's own tests: correct kernels give exact answers under any schedule, and each
// deliberately broken kernel is caught.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda_compat.h"
#include "kernels/common.h"
#include "tests/emu/emu_test_kernels.h"
#include "tests/files.h"

using namespace diloco;
using diloco::test::expect_error;

namespace {

std::vector<float> iota_floats(int n) {
    std::vector<float> v(n);
    for (int i = 0; i < n; i++) v[i] = (float)(i % 7) - 3.0f;  // small integers: sums are exact
    return v;
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

// A GPU refuses a launch that asks for more than 48 KiB of dynamic shared memory unless the
// kernel's limit was raised with cudaFuncSetAttribute, and never allows more than 227 KiB (sm_90).
// The emulator must refuse exactly those launches, or a kernel passing here fails on a GPU.
namespace {

constexpr size_t kKiB = 1024;

// Runs fill_shared and checks every thread read back the slot another thread wrote.
void expect_filled(size_t bytes, bool raised_kernel) {
    std::vector<float> out(emutest::kSmemThreads, NAN);
    emutest::fill_shared(out.data(), bytes, raised_kernel);
    const int n = (int)(bytes / sizeof(float));
    for (int t = 0; t < emutest::kSmemThreads; t++) ASSERT_EQ(out[t], (float)(n - 1 - t)) << bytes << " bytes, thread " << t;
}

void expect_refused(size_t bytes, bool raised_kernel, const std::string& limit) {
    std::vector<float> out(emutest::kSmemThreads, NAN);
    expect_error([&] { emutest::fill_shared(out.data(), bytes, raised_kernel); },
                 std::to_string(bytes) + " bytes of dynamic shared memory, over its limit of " + limit + " bytes");
}

}  // namespace

TEST(Emulator, DynamicSharedMemoryAbove48KiBNeedsTheAttribute) {
    expect_filled(48 * kKiB, false);
    expect_refused(48 * kKiB + 4, false, "49152");
    ASSERT_EQ(emutest::set_raised_kernel_limit(227 * kKiB), cudaSuccess);
    expect_filled(48 * kKiB + 4, true);
    expect_filled(227 * kKiB, true);
    expect_refused(48 * kKiB + 4, false, "49152");  // raising one kernel's limit leaves the others alone
}

TEST(Emulator, DynamicSharedMemoryNeverAbove227KiB) {
    ASSERT_EQ(emutest::set_raised_kernel_limit(227 * kKiB), cudaSuccess);
    expect_refused(227 * kKiB + 4, true, "232448");
    // the attribute itself cannot go past the opt-in maximum, and a refused value changes nothing
    EXPECT_EQ(emutest::set_raised_kernel_limit(227 * kKiB + 4), cudaErrorInvalidValue);
    expect_refused(227 * kKiB + 4, true, "232448");
    // the limit is the value set, not the maximum
    ASSERT_EQ(emutest::set_raised_kernel_limit(64 * kKiB), cudaSuccess);
    expect_filled(64 * kKiB, true);
    expect_refused(64 * kKiB + 4, true, "65536");
}

// DILOCO_CUDA_SYNC=1: the launch macro checks for an error right after each kernel, and throws
// naming it. The emulator stands in for a faulting kernel by leaving an injected error behind.
TEST(Emulator, SyncModeReportsAFaultAtTheLaunch) {
    std::vector<float> out(64, 0.0f);
    auto in = iota_floats(64);
    ASSERT_EQ(setenv("DILOCO_CUDA_SYNC", "1", 1), 0);
    cuda_sync_reread_env();
    EXPECT_TRUE(cuda_sync_enabled());
    emutest::warp_sum(out.data(), in.data(), 64);  // runs and passes the check
    float want = 0;
    for (int i = 0; i < 32; i++) want += in[i];
    EXPECT_EQ(out[0], want);
    emu::inject_launch_error(cudaErrorIllegalAddress);
    expect_error([&] { emutest::warp_sum(out.data(), in.data(), 64); },
                 "kernel warp_sum_kernel (DILOCO_CUDA_SYNC=1): an illegal memory access was encountered");
    ASSERT_EQ(unsetenv("DILOCO_CUDA_SYNC"), 0);
    cuda_sync_reread_env();
    EXPECT_FALSE(cuda_sync_enabled());
    // without the flag the fault stays pending, for the wrapper's cudaGetLastError to return
    emu::inject_launch_error(cudaErrorIllegalAddress);
    emutest::warp_sum(out.data(), in.data(), 64);
    EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}
