// Shared by the twin tests (tests/test_twins.cpp, tests/test_attention_mma.cpp), which are built
// twice: against the CUDA emulator, and natively, where each test skips without a device.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cuda_compat.h"
#ifndef DILOCO_EMULATE
#include "kernels/cuda_info.h"
#endif

namespace diloco::test {

#ifdef DILOCO_EMULATE
#define REQUIRE_DEVICE() (void)0
inline void use_schedule(uint64_t seed) { diloco::emu::set_schedule_seed(seed); }
#else
#define REQUIRE_DEVICE()                                                                          \
    do {                                                                                          \
        if (::diloco::cuda_device_count() == 0)                                                   \
            GTEST_SKIP() << "no CUDA device (" << ::diloco::cuda_summary() << "); native GPU test not run"; \
    } while (0)
inline void use_schedule(uint64_t) {}
#endif

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess)

// A device copy of a host vector, poisoned (0xFF bytes: NaN as float and as bf16) when allocated,
// freed at scope exit.
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

}  // namespace diloco::test
