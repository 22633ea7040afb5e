// The emulated NCCL's own checks (kernels/emu/nccl_emu.h), under mpirun with 3 ranks (ctest's
// emulated.nccl; tests/test_nccl.cpp in the same program runs NcclWorkerComm itself).
#include <gtest/gtest.h>
#include <mpi.h>

#include <string>
#include <vector>

#include "kernels/common.h"
#include "kernels/emu/nccl_emu.h"

namespace {

int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
int world_size() {
    int n = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

// A communicator of the world ranks in `members` (NCCL rank i = members[i]), from an id that
// members[0] makes; ranks outside it take no part, as with NCCL.
ncclComm_t join(const std::vector<int>& members) {
    ncclUniqueId id;
    if (world_rank() == members[0]) EXPECT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    if (members.size() > 1) MPI_Bcast(&id, sizeof id, MPI_BYTE, members[0], MPI_COMM_WORLD);
    for (size_t i = 0; i < members.size(); i++)
        if (members[i] == world_rank()) {
            ncclComm_t c = nullptr;
            EXPECT_EQ(ncclCommInitRank(&c, (int)members.size(), id, (int)i), ncclSuccess);
            return c;
        }
    return nullptr;
}

struct DeviceFloats {
    explicit DeviceFloats(size_t n) { EXPECT_EQ(cudaMalloc(&p, n * sizeof(float)), cudaSuccess); }
    ~DeviceFloats() { cudaFree(p); }
    float* p = nullptr;
};

}  // namespace

// Collective over its members only: world rank 1 builds nothing while the last rank and rank 0
// (in that order: NCCL ranks need not follow world ranks) sum over theirs.
TEST(EmulatedNccl, ACommunicatorOfSomeRanks) {
    ASSERT_GE(world_size(), 3);
    const int last = world_size() - 1;
    ncclComm_t c = join({last, 0});
    if (!c) {
        EXPECT_TRUE(world_rank() != 0 && world_rank() != last);
        return;
    }
    DeviceFloats x(5);
    std::vector<float> h(5, (float)world_rank());
    cudaMemcpy(x.p, h.data(), 20, cudaMemcpyHostToDevice);
    ASSERT_EQ(ncclAllReduce(x.p, x.p, 5, ncclFloat32, ncclSum, c, nullptr), ncclSuccess);
    cudaMemcpy(h.data(), x.p, 20, cudaMemcpyDeviceToHost);
    for (float v : h) EXPECT_EQ(v, (float)last);
    // grouped broadcasts from each root in turn, out of a separate send buffer: NCCL rank r's
    // two values land at y[2r], y[2r + 1]
    h.assign(2, (float)world_rank());
    cudaMemcpy(x.p, h.data(), 8, cudaMemcpyHostToDevice);
    DeviceFloats y(4);
    ASSERT_EQ(ncclGroupStart(), ncclSuccess);
    for (int root = 0; root < 2; root++)
        ASSERT_EQ(ncclBroadcast(x.p, y.p + 2 * root, 2, ncclFloat32, root, c, nullptr), ncclSuccess);
    ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
    h.resize(4);
    cudaMemcpy(h.data(), y.p, 16, cudaMemcpyDeviceToHost);
    EXPECT_EQ(h, (std::vector<float>{(float)last, (float)last, 0.0f, 0.0f}));
    EXPECT_EQ(ncclCommDestroy(c), ncclSuccess);
}

// A count that differs between ranks would hang NCCL or mix data; every rank is told instead.
TEST(EmulatedNccl, RanksThatMakeDifferentCallsAreTold) {
    std::vector<int> all(world_size());
    for (int i = 0; i < world_size(); i++) all[i] = i;
    ncclComm_t c = join(all);
    ASSERT_TRUE(c);
    DeviceFloats x(8);
    cudaMemset(x.p, 0, 32);
    const size_t count = world_rank() == 1 ? 7 : 8;
    const ncclResult_t r = ncclAllReduce(x.p, x.p, count, ncclFloat32, ncclAvg, c, nullptr);
    EXPECT_EQ(r, ncclInvalidUsage);
    EXPECT_NE(std::string(ncclGetErrorString(r)).find("the ranks made different calls"), std::string::npos)
        << ncclGetErrorString(r);
    EXPECT_EQ(ncclBroadcast(x.p, x.p, 8, ncclFloat32, world_rank() == 0 ? 1 : 0, c, nullptr), ncclInvalidUsage);
    EXPECT_EQ(ncclCommDestroy(c), ncclSuccess);
}

TEST(EmulatedNccl, BuffersMustBeDeviceMemoryAndApart) {
    ncclComm_t c = join({world_rank()});  // a communicator of one: no MPI traffic
    ASSERT_TRUE(c);
    std::vector<float> host(4);
    ncclResult_t r = ncclAllReduce(host.data(), host.data(), 4, ncclFloat32, ncclSum, c, nullptr);
    EXPECT_EQ(r, ncclInvalidArgument);
    EXPECT_NE(std::string(ncclGetErrorString(r)).find("not device memory"), std::string::npos);
    DeviceFloats x(8);
    EXPECT_EQ(ncclAllReduce(x.p, x.p + 2, 4, ncclFloat32, ncclSum, c, nullptr), ncclInvalidArgument);
    EXPECT_EQ(ncclAllReduce(x.p, x.p + 4, 4, ncclFloat32, ncclSum, c, nullptr), ncclSuccess);
    EXPECT_EQ(ncclAllReduce(x.p, x.p, 4, ncclFloat32, ncclMax, c, nullptr), ncclInvalidArgument);
    EXPECT_EQ(ncclGroupEnd(), ncclInvalidUsage);
    EXPECT_EQ(ncclCommDestroy(c), ncclSuccess);
}

// The collective reads what the default stream wrote: on a stream of its own it must wait for it.
TEST(EmulatedNccl, ACollectiveOnAnotherStreamMustWaitForTheData) {
    ncclComm_t c = join({world_rank()});
    ASSERT_TRUE(c);
    DeviceFloats x(4);
    cudaStream_t s;
    cudaEvent_t written;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(cudaEventCreate(&written), cudaSuccess);
    cudaMemset(x.p, 0, 16);
    try {
        ncclAllReduce(x.p, x.p, 4, ncclFloat32, ncclAvg, c, s);
        ADD_FAILURE() << "an unordered collective ran";
    } catch (const diloco::Error& e) {
        EXPECT_NE(std::string(e.what()).find("ncclAllReduce on stream"), std::string::npos) << e.what();
    }
    ASSERT_EQ(cudaEventRecord(written, nullptr), cudaSuccess);
    ASSERT_EQ(cudaStreamWaitEvent(s, written, 0), cudaSuccess);
    EXPECT_EQ(ncclAllReduce(x.p, x.p, 4, ncclFloat32, ncclAvg, c, s), ncclSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    cudaEventDestroy(written);
    cudaStreamDestroy(s);
    EXPECT_EQ(ncclCommDestroy(c), ncclSuccess);
}
