// The emulator's streams and events (kernels/emu/emu.h): work runs as it is issued, and the
// emulator checks that the program asked for the order a GPU, which runs streams concurrently,
// would need. Each check is shown to fire on the mistake it is for and to stay quiet on the right
// sequence: CudaTrainer's (optim/train_cuda.cpp) averages the gradients on a stream of its own.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <utility>
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

// ---- graphs (stream capture) -----------------------------------------------------------------------

namespace {

__global__ void axpy_kernel(float* y, const float* x, float a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}

// Device buffers of n floats, with their values poisoned or set, read back by get().
struct Buffer {
    float* p = nullptr;
    int n;
    explicit Buffer(int n_, float value) : n(n_) {
        EXPECT_EQ(cudaMalloc(&p, n * sizeof(float)), cudaSuccess);
        const std::vector<float> v(n, value);
        EXPECT_EQ(cudaMemcpy(p, v.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
    }
    ~Buffer() { cudaFree(p); }
    std::vector<float> get() const {
        std::vector<float> v(n);
        EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
        return v;
    }
};

class Graphs : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);  // blocking, as the model's stream
        ASSERT_EQ(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
        for (cudaEvent_t* e : {&fork, &join, &outside}) ASSERT_EQ(cudaEventCreate(e), cudaSuccess);
    }
    void TearDown() override {
        EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        for (cudaEvent_t e : {fork, join, outside}) EXPECT_EQ(cudaEventDestroy(e), cudaSuccess);
        EXPECT_EQ(cudaStreamDestroy(side), cudaSuccess);
        EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
    }
    void axpy(Buffer& y, const Buffer& x, float a, cudaStream_t stream) {
        DILOCO_LAUNCH(axpy_kernel, (y.n + 63) / 64, 64, 0, stream, y.p, x.p, a, y.n);
    }
    // ends the capture of `s`, expecting `status`; instantiates the graph when there is one
    cudaGraphExec_t end_capture(cudaError_t status) {
        cudaGraph_t g = nullptr;
        EXPECT_EQ(cudaStreamEndCapture(s, &g), status);
        if (!g) return nullptr;
        cudaGraphExec_t exec = nullptr;
        EXPECT_EQ(cudaGraphInstantiate(&exec, g, 0), cudaSuccess);
        EXPECT_EQ(cudaGraphDestroy(g), cudaSuccess);
        return exec;
    }
    cudaStream_t s = nullptr, side = nullptr;
    cudaEvent_t fork = nullptr, join = nullptr, outside = nullptr;
};

}  // namespace

// Captured work does not run; each launch runs all of it, with the arguments of the capture: a
// kernel (y += 2x), a copy that reads its source at launch (z = y), a set (w = 0).
TEST_F(Graphs, ACaptureRunsAtEveryLaunchWithTheArgumentsOfTheCapture) {
    Buffer x(100, 1.5f), y(100, 1.0f), z(100, -7.0f), w(100, -7.0f);
    float a = 2.0f;
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    cudaStreamCaptureStatus status;
    ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
    EXPECT_EQ(status, cudaStreamCaptureStatusActive);
    axpy(y, x, a, s);
    ASSERT_EQ(cudaMemcpyAsync(z.p, y.p, 100 * sizeof(float), cudaMemcpyDeviceToDevice, s), cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(w.p, 0, 100 * sizeof(float), s), cudaSuccess);
    cudaGraphExec_t exec = end_capture(cudaSuccess);
    ASSERT_NE(exec, nullptr);
    ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
    EXPECT_EQ(status, cudaStreamCaptureStatusNone);
    EXPECT_EQ(y.get(), std::vector<float>(100, 1.0f)) << "the capture ran the kernel";
    EXPECT_EQ(z.get(), std::vector<float>(100, -7.0f)) << "the capture ran the copy";
    EXPECT_EQ(w.get(), std::vector<float>(100, -7.0f)) << "the capture ran the set";
    a = 100.0f;  // the launch keeps the capture's value
    for (int launch = 1; launch <= 2; launch++) {
        ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
        ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
        const float expect = 1.0f + launch * 2.0f * 1.5f;
        EXPECT_EQ(y.get(), std::vector<float>(100, expect)) << "launch " << launch;
        EXPECT_EQ(z.get(), std::vector<float>(100, expect)) << "launch " << launch;
        EXPECT_EQ(w.get(), std::vector<float>(100, 0.0f)) << "launch " << launch;
    }
    EXPECT_EQ(cudaGraphLaunch(exec, side), cudaErrorInvalidValue) << "the emulator launches on the capture's stream only";
    EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
}

// What would make the host wait, or allocate, fails inside a capture and spoils it, as on a GPU.
TEST_F(Graphs, WaitsAndAllocationsInvalidateTheCapture) {
    Buffer y(8, 1.0f);
    std::vector<float> host(8);
    float* p = nullptr;
    const std::vector<std::pair<const char*, std::function<cudaError_t()>>> unsafe = {
        {"cudaMemcpy", [&] { return cudaMemcpy(host.data(), y.p, 32, cudaMemcpyDeviceToHost); }},
        {"cudaMemset", [&] { return cudaMemset(y.p, 0, 32); }},
        {"cudaStreamSynchronize", [&] { return cudaStreamSynchronize(side); }},
        {"cudaDeviceSynchronize", [&] { return cudaDeviceSynchronize(); }},
        {"cudaEventQuery", [&] { return cudaEventQuery(outside); }},
        {"cudaMalloc", [&] { return cudaMalloc(&p, 16); }},
    };
    for (const auto& [name, call] : unsafe) {
        ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
        EXPECT_EQ(call(), cudaErrorStreamCaptureUnsupported) << name;
        cudaStreamCaptureStatus status;
        ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
        EXPECT_EQ(status, cudaStreamCaptureStatusInvalidated) << name;
        EXPECT_EQ(end_capture(cudaErrorStreamCaptureInvalidated), nullptr) << name;
        EXPECT_EQ(call(), cudaSuccess) << name << " after the capture";
        if (p) EXPECT_EQ(cudaFree(p), cudaSuccess), p = nullptr;
    }
    // relaxed mode allows them
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(host.data(), y.p, 32, cudaMemcpyDeviceToHost), cudaSuccess);
    cudaGraphExec_t exec = end_capture(cudaSuccess);
    EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
}

// The legacy default stream cannot be captured, and its work synchronises with a captured
// blocking stream: refused, and the capture spoilt.
TEST_F(Graphs, TheLegacyStreamStaysOutOfCaptures) {
    EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
    Buffer x(8, 1.0f), y(8, 1.0f);
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    expect_error([&] { axpy(y, x, 1.0f, nullptr); }, "cudaErrorStreamCaptureImplicit");
    EXPECT_EQ(cudaMemsetAsync(y.p, 0, 32, nullptr), cudaErrorStreamCaptureImplicit);
    EXPECT_EQ(end_capture(cudaErrorStreamCaptureInvalidated), nullptr);
    EXPECT_EQ(y.get(), std::vector<float>(8, 1.0f));
}

// A stream that waits on an event of the capture joins it and must rejoin the origin before the
// capture ends; the launch then runs the collective in its order, which the stream checks accept.
TEST_F(Graphs, AForkedStreamMustRejoinTheOrigin) {
    Buffer x(8, 1.0f), y(8, 0.0f);
    for (bool rejoin : {false, true}) {
        ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
        axpy(y, x, 1.0f, s);
        ASSERT_EQ(cudaEventRecord(fork, s), cudaSuccess);
        ASSERT_EQ(cudaStreamWaitEvent(side, fork, 0), cudaSuccess);
        // a collective, as the emulated NCCL issues it
        cudaStream_t c = side;
        EXPECT_EQ(emu::capture_or_run(c, [c] { emu::stream_issue(c, "ncclAllReduce", true); }), emu::kCaptured);
        ASSERT_EQ(cudaMemsetAsync(y.p, 0, 4, side), cudaSuccess);
        if (rejoin) {
            ASSERT_EQ(cudaEventRecord(join, side), cudaSuccess);
            ASSERT_EQ(cudaStreamWaitEvent(s, join, 0), cudaSuccess);
        }
        axpy(y, x, 1.0f, s);
        cudaGraphExec_t exec = end_capture(rejoin ? cudaSuccess : cudaErrorStreamCaptureUnjoined);
        if (!rejoin) {
            EXPECT_EQ(exec, nullptr);
            continue;
        }
        ASSERT_NE(exec, nullptr);
        ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
        ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
        const std::vector<float> got = y.get();
        EXPECT_EQ(got[0], 1.0f) << "y[0]: set to 0 between the two kernels";
        EXPECT_EQ(got[7], 2.0f);
        EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
    }
}

// A capture cannot wait on work outside it.
TEST_F(Graphs, AWaitOnAnEventRecordedOutsideIsRefused) {
    ASSERT_EQ(cudaEventRecord(outside, side), cudaSuccess);
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    EXPECT_EQ(cudaStreamWaitEvent(s, outside, 0), cudaErrorStreamCaptureIsolation);
    EXPECT_EQ(end_capture(cudaErrorStreamCaptureInvalidated), nullptr);
}
