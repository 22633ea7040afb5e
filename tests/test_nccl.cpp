// The NCCL worker communicator on real GPUs. Run as `mpirun -np G nccl_tests` with G GPUs on the
// node (ctest runs it with one rank). Without a device it skips, saying so; with one rank it checks
// that the communicator comes up and that the average of one rank leaves the values as they are,
// and skips the all-gather, which needs two GPUs.
// The emulated build compiles it against the emulated NCCL (emu_nccl_tests, with
// tests/emu/test_nccl_emu.cpp), and ctest runs that with 3 ranks.
#include <gtest/gtest.h>
#include <mpi.h>

#include <string>
#include <vector>

#include "comm/comm.h"
#include "comm/nccl.h"
#ifdef DILOCO_EMULATE
static int cuda_device_count() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}
static std::string cuda_summary() { return "emulated"; }
#else
#include "kernels/cuda_info.h"
#endif

using namespace diloco;

TEST(Nccl, WorkerAverageAndAllGather) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (" << cuda_summary() << "); NCCL test not run";
    Comm comm(1);  // one worker of all ranks: the NCCL communicator spans them
    NcclWorkerComm nccl(comm);
    EXPECT_EQ(nccl.device(), comm.node_local_rank());
    const int G = comm.ranks_per_worker();
    const size_t n = 1001;
    std::vector<float> host(n);
    for (size_t i = 0; i < n; i++) host[i] = (float)(comm.local() + 1) * (float)(i % 13);
    float* dev;
    ASSERT_EQ(cudaMalloc(&dev, n * 4), cudaSuccess);
    cudaMemcpy(dev, host.data(), n * 4, cudaMemcpyHostToDevice);
    nccl.average(dev, n, nullptr);  // one rank too: the training loop calls it for G = 1
    nccl.count_average(n);
    cudaMemcpy(host.data(), dev, n * 4, cudaMemcpyDeviceToHost);
    const float mean_factor = (G + 1) / 2.0f;  // mean of 1..G
    for (size_t i = 0; i < n; i++) ASSERT_FLOAT_EQ(host[i], mean_factor * (float)(i % 13)) << i;
    if (G < 2) {
        cudaFree(dev);
        GTEST_SKIP() << "one rank: the average ran (an identity); the all-gather needs mpirun -np 2+ on 2+ GPUs";
    }
    // all-gather: rank g fills its slice with g, everyone ends with every slice
    const Slice mine = slice_of(n, G, comm.local());
    for (size_t i = 0; i < n; i++) host[i] = -1.0f;
    for (size_t i = mine.begin; i < mine.begin + mine.count; i++) host[i] = (float)comm.local();
    cudaMemcpy(dev, host.data(), n * 4, cudaMemcpyHostToDevice);
    nccl.allgather_slices(dev, n, nullptr);
    cudaMemcpy(host.data(), dev, n * 4, cudaMemcpyDeviceToHost);
    for (int g = 0; g < G; g++) {
        const Slice s = slice_of(n, G, g);
        for (size_t i = s.begin; i < s.begin + s.count; i++) ASSERT_EQ(host[i], (float)g);
    }
    cudaFree(dev);
    // the worker link's bytes, counted as the MPI worker link counts them (docs/distributed.md)
    EXPECT_EQ(comm.bytes_inner(), ring_allreduce_bytes(4 * n, G) + ring_allgather_bytes(4 * n, G));
}

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    const int rc = RUN_ALL_TESTS();
    MPI_Finalize();
    return rc;
}
