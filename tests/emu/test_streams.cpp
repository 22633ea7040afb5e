// The emulator's streams and events (kernels/emu/emu.h): work runs as it is issued, and the
// emulator checks that the program asked for the order a GPU, which runs streams concurrently,
// would need. Each check is shown to fire on the mistake it is for and to stay quiet on the right
// sequence: CudaTrainer's (optim/train_cuda.cpp) averages the gradients on a stream of its own.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/common.h"
#include "kernels/cuda_compat.h"
#include "tests/emu/emu_test_kernels.h"
#include "tests/files.h"

using namespace diloco;
using diloco::test::expect_error;

namespace {

class Streams : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_EQ(cudaStreamCreateWithFlags(&comm, cudaStreamNonBlocking), cudaSuccess);
        for (cudaEvent_t* e : {&ready, &start, &done}) ASSERT_EQ(cudaEventCreate(e), cudaSuccess);
    }
    // The device idle at the end, so that no unordered work carries into the next test.
    void TearDown() override {
        EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        for (cudaEvent_t e : {ready, start, done}) EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
        EXPECT_EQ(cudaStreamDestroy(comm), cudaSuccess);
    }
    // a kernel on the default stream (the model's stream in CudaTrainer)
    void kernel() { emutest::warp_sum(out.data(), in.data(), 64); }
    // what the emulated NCCL issues for a collective on `s`
    static void collective(cudaStream_t s) { emu::stream_issue(s, "ncclAllReduce", true); }
    // CudaTrainer::average_grads_in_worker, with each of its steps optional
    void average(bool wait_for_grads, bool model_waits) {
        ASSERT_EQ(cudaEventRecord(ready, nullptr), cudaSuccess);
        if (wait_for_grads) ASSERT_EQ(cudaStreamWaitEvent(comm, ready, 0), cudaSuccess);
        ASSERT_EQ(cudaEventRecord(start, comm), cudaSuccess);
        collective(comm);
        ASSERT_EQ(cudaEventRecord(done, comm), cudaSuccess);
        if (model_waits) ASSERT_EQ(cudaStreamWaitEvent(nullptr, done, 0), cudaSuccess);
    }

    cudaStream_t comm = nullptr;
    cudaEvent_t ready = nullptr, start = nullptr, done = nullptr;
    std::vector<float> in = std::vector<float>(64, 1.0f), out = std::vector<float>(4, 0.0f);  // a block of 128
};

}  // namespace

TEST_F(Streams, TheTrainersSequenceRunsAndIsTimed) {
    for (int step = 0; step < 3; step++) {
        kernel();  // backward
        average(true, true);
        kernel();  // the optimizer
        ASSERT_EQ(cudaEventSynchronize(done), cudaSuccess);
        float ms = -1.0f;
        ASSERT_EQ(cudaEventElapsedTime(&ms, start, done), cudaSuccess);
        EXPECT_GE(ms, 0.0f);
    }
    EXPECT_EQ(out[0], 32.0f);
}

// Stricter than CUDA for the two waits (a never-recorded event counts as complete there, so the
// wait orders nothing); cudaEventElapsedTime refuses it on a GPU too.
TEST_F(Streams, AnEventMustBeRecordedBeforeItIsUsed) {
    EXPECT_EQ(cudaStreamWaitEvent(comm, ready, 0), cudaErrorInvalidResourceHandle);
    EXPECT_EQ(cudaEventSynchronize(ready), cudaErrorInvalidResourceHandle);
    float ms = 0.0f;
    EXPECT_EQ(cudaEventElapsedTime(&ms, start, done), cudaErrorInvalidResourceHandle);
    ASSERT_EQ(cudaEventRecord(start, comm), cudaSuccess);
    EXPECT_EQ(cudaEventElapsedTime(&ms, start, done), cudaErrorInvalidResourceHandle) << "end not recorded";
    EXPECT_EQ(cudaEventElapsedTime(&ms, done, start), cudaErrorInvalidResourceHandle) << "start not recorded";
    ASSERT_EQ(cudaEventRecord(done, comm), cudaSuccess);
    EXPECT_EQ(cudaEventElapsedTime(&ms, start, done), cudaSuccess);
    EXPECT_EQ(cudaStreamWaitEvent(nullptr, done, 0), cudaSuccess);
    EXPECT_EQ(cudaEventSynchronize(done), cudaSuccess);
}

TEST_F(Streams, DestroyedHandlesAreRefused) {
    cudaEvent_t e;
    cudaStream_t s;
    ASSERT_EQ(cudaEventCreate(&e), cudaSuccess);
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(e, s), cudaSuccess);
    ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
    EXPECT_EQ(cudaEventRecord(e, s), cudaErrorInvalidResourceHandle);
    EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
    EXPECT_EQ(cudaStreamDestroy(s), cudaErrorInvalidResourceHandle);
    expect_error([&] { collective(s); }, "destroyed or never created");
    ASSERT_EQ(cudaEventDestroy(e), cudaSuccess);
    EXPECT_EQ(cudaEventSynchronize(e), cudaErrorInvalidResourceHandle);
    EXPECT_EQ(cudaEventDestroy(e), cudaErrorInvalidResourceHandle);
}

// The collective reads the gradients the default stream's kernels wrote.
TEST_F(Streams, ACollectiveMustWaitForEarlierWorkOnOtherStreams) {
    kernel();
    expect_error([&] { average(false, true); },
                 "is not ordered after earlier work (warp_sum_kernel) on the default stream");
}

// The optimizer's kernels read what the collective wrote.
TEST_F(Streams, LaterWorkMustWaitForACollectiveOnAnotherStream) {
    kernel();
    average(true, false);
    expect_error([&] { kernel(); }, "warp_sum_kernel on the default stream is not ordered after ncclAllReduce");
    std::vector<float> host(4);
    expect_error([&] { cudaMemcpy(host.data(), in.data(), 16, cudaMemcpyDeviceToHost); },
                 "cudaMemcpy on the default stream is not ordered after ncclAllReduce");
    // waiting on the event (or the host synchronising) is enough
    ASSERT_EQ(cudaStreamWaitEvent(nullptr, done, 0), cudaSuccess);
    kernel();
    average(true, false);
    ASSERT_EQ(cudaStreamSynchronize(comm), cudaSuccess);
    kernel();
}

// A blocking stream (cudaStreamCreate) and the legacy default stream wait for each other.
TEST_F(Streams, ABlockingStreamIsOrderedWithTheDefaultStream) {
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    kernel();
    collective(s);
    kernel();
    EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(EmulatedDevices, ANodeOfEightDevices) {
    int n = 0, d = -1;
    ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
    EXPECT_EQ(n, 8);
    EXPECT_EQ(cudaSetDevice(3), cudaSuccess);
    EXPECT_EQ(cudaGetDevice(&d), cudaSuccess);
    EXPECT_EQ(d, 3);
    EXPECT_EQ(cudaSetDevice(8), cudaErrorInvalidDevice);
    EXPECT_EQ(cudaSetDevice(0), cudaSuccess);
}

TEST(EmulatedDevices, DeviceMemoryIsKnown) {
    float* p = nullptr;
    ASSERT_EQ(cudaMalloc(&p, 40), cudaSuccess);
    EXPECT_TRUE(emu::is_device_memory(p, 40));
    EXPECT_TRUE(emu::is_device_memory(p + 5, 20));
    EXPECT_FALSE(emu::is_device_memory(p + 5, 24));
    std::vector<float> host(10);
    EXPECT_FALSE(emu::is_device_memory(host.data(), 4));
    EXPECT_EQ(cudaFree(p), cudaSuccess);
    EXPECT_FALSE(emu::is_device_memory(p, 4));
    EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidValue);
}
