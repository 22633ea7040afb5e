// Native CUDA tests: the CUDA kernels on a real device against their CPU twins. Without a device
// every test here skips with a message saying so; none passes silently.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/cuda_info.h"
#include "kernels/residual.h"
#include "kernels/residual_cuda.h"
#include "tests/compare.h"

using namespace diloco;
using namespace diloco::test;

#define SKIP_WITHOUT_GPU()                                                                     \
    do {                                                                                       \
        if (cuda_device_count() == 0)                                                          \
            GTEST_SKIP() << "no CUDA device (" << cuda_summary() << "); native GPU test not run"; \
    } while (0)

TEST(CudaNative, ResidualMatchesCpuTwinBitForBit) {
    SKIP_WITHOUT_GPU();
    Rng rng(31);
    for (long n : {1L, 255L, 257L, 100003L}) {
        auto a = randn(n, rng), b = randn(n, rng), want = poisoned(n), got = poisoned(n);
        residual_forward_cpu(want.data(), a.data(), b.data(), n);
        float *da, *db, *dout;
        ASSERT_EQ(cudaMalloc(&da, n * 4), cudaSuccess);
        ASSERT_EQ(cudaMalloc(&db, n * 4), cudaSuccess);
        ASSERT_EQ(cudaMalloc(&dout, n * 4), cudaSuccess);
        cudaMemcpy(da, a.data(), n * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(db, b.data(), n * 4, cudaMemcpyHostToDevice);
        cudaMemset(dout, 0xFF, n * 4);  // NaN poison: an unwritten element shows
        ASSERT_EQ(residual_forward_cuda(dout, da, db, n, 0), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(got.data(), dout, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        cudaFree(da);
        cudaFree(db);
        cudaFree(dout);
        for (long i = 0; i < n; i++) ASSERT_EQ(got[i], want[i]) << "element " << i << " of " << n;
    }
}
