// Each CUDA kernel against its CPU twin. This file is built twice:
//   emu_twin_tests     the kernels' own source run by the CUDA emulator (every CI run);
//   cuda_native_tests  the kernels on a real GPU; each test skips, saying so, without a device.
// Outputs are poisoned (0xFF bytes = NaN) before every launch. Each kernel runs twice (under two
// emulator schedules when emulated) and must give bit-identical results: the kernels are
// deterministic, and a missing barrier would change the emulated result with the schedule.
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/crossentropy.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/layernorm.h"
#include "kernels/layernorm_cuda.h"
#include "kernels/residual.h"
#include "kernels/residual_cuda.h"
#include "tests/compare.h"

#ifndef DILOCO_EMULATE
#include "kernels/cuda_info.h"
#endif

using namespace diloco;
using namespace diloco::test;

namespace {

#ifdef DILOCO_EMULATE
#define REQUIRE_DEVICE() (void)0
void use_schedule(uint64_t seed) { diloco::emu::set_schedule_seed(seed); }
#else
#define REQUIRE_DEVICE()                                                                          \
    do {                                                                                          \
        if (cuda_device_count() == 0)                                                             \
            GTEST_SKIP() << "no CUDA device (" << cuda_summary() << "); native GPU test not run"; \
    } while (0)
void use_schedule(uint64_t) {}
#endif

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess)

// A device copy of a host vector, freed at scope exit.
template <typename T>
struct Dev {
    T* p = nullptr;
    size_t n = 0;
    explicit Dev(size_t count) : n(count) {
        EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
        poison();
    }
    explicit Dev(const std::vector<T>& v) : Dev(v.size()) { upload(v); }
    ~Dev() { cudaFree(p); }
    void upload(const std::vector<T>& v) { cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice); }
    void poison() { cudaMemset(p, 0xFF, n * sizeof(T)); }
    std::vector<T> get() const {
        std::vector<T> v(n);
        cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
        cudaDeviceSynchronize();
        return v;
    }
};

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
