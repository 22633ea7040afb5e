// The communicators' 64-bit counts (comm/mpi_chunked.h): every collective and point-to-point call
// of comm/comm.h run whole and then forced into tiny pieces must give the same bits, the same byte
// accounting, and MPI calls of at most the chunk. Run as `mpirun -np 4 comm_tests` (ctest does).
//
// Bit-identical needs the same reduction per element. With 2 ranks a sum is a + b whatever the
// algorithm MPI picks for a size (IEEE addition commutes), so 2 workers x 2 ranks take random
// floats; over 4 ranks the order of a sum depends on the algorithm, which MPI picks by message
// size, so those cases take values whose sums are exact in any order.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "comm/comm.h"
#include "kernels/common.h"

using namespace diloco;

// The largest count and the number of data-carrying MPI calls, seen through the MPI profiling
// interface: these definitions take the place of the library's for the code under test.
static int max_count = 0;
static long calls = 0;
static void seen(int c) {
    max_count = std::max(max_count, c);
    calls++;
}
extern "C" {
int MPI_Allreduce(const void* s, void* r, int c, MPI_Datatype t, MPI_Op o, MPI_Comm m) {
    seen(c);
    return PMPI_Allreduce(s, r, c, t, o, m);
}
int MPI_Iallreduce(const void* s, void* r, int c, MPI_Datatype t, MPI_Op o, MPI_Comm m, MPI_Request* q) {
    seen(c);
    return PMPI_Iallreduce(s, r, c, t, o, m, q);
}
int MPI_Reduce(const void* s, void* r, int c, MPI_Datatype t, MPI_Op o, int root, MPI_Comm m) {
    seen(c);
    return PMPI_Reduce(s, r, c, t, o, root, m);
}
int MPI_Bcast(void* b, int c, MPI_Datatype t, int root, MPI_Comm m) {
    seen(c);
    return PMPI_Bcast(b, c, t, root, m);
}
int MPI_Ibcast(void* b, int c, MPI_Datatype t, int root, MPI_Comm m, MPI_Request* q) {
    seen(c);
    return PMPI_Ibcast(b, c, t, root, m, q);
}
int MPI_Isend(const void* b, int c, MPI_Datatype t, int to, int tag, MPI_Comm m, MPI_Request* q) {
    seen(c);
    return PMPI_Isend(b, c, t, to, tag, m, q);
}
int MPI_Irecv(void* b, int c, MPI_Datatype t, int from, int tag, MPI_Comm m, MPI_Request* q) {
    seen(c);
    return PMPI_Irecv(b, c, t, from, tag, m, q);
}
int MPI_Recv(void* b, int c, MPI_Datatype t, int from, int tag, MPI_Comm m, MPI_Status* st) {
    seen(c);
    return PMPI_Recv(b, c, t, from, tag, m, st);
}
}

static int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

// Random floats, different on every rank.
static std::vector<float> random_floats(size_t n, int salt) {
    std::mt19937 rng(1234 + 97 * world_rank() + salt);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

// Multiples of 1/8 below 2^10: sums of a few are exact, in any order.
static std::vector<float> exact_floats(size_t n, int salt) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (float)((i * 7 + world_rank() * 13 + salt) % 8000) / 8.0f - 500.0f;
    return v;
}

struct Outcome {
    std::vector<uint8_t> bits;
    uint64_t inner = 0, outer = 0;
};

// Runs `op` (which fills `out` with its result's bits) whole, then with each forced chunk, and
// expects the same bits and bytes, and pieces of at most the chunk; `splits`: a chunk of 1 must
// make more calls (on this rank: some ranks may send nothing).
static void expect_same_in_pieces(int workers, bool splits,
                                  const std::function<void(Comm&, std::vector<uint8_t>&)>& op) {
    auto run = [&](size_t chunk) {
        set_mpi_chunk_elements(chunk);
        Comm comm(workers);
        Outcome o;
        max_count = 0;
        calls = 0;
        op(comm, o.bits);
        o.inner = comm.bytes_inner();
        o.outer = comm.bytes_outer();
        set_mpi_chunk_elements(0);
        return o;
    };
    const Outcome whole = run(0);
    const long whole_calls = calls;
    for (size_t chunk : {1, 3, 7, 64}) {
        const Outcome pieces = run(chunk);
        EXPECT_EQ(pieces.bits, whole.bits) << "chunk " << chunk << " changed the result";
        EXPECT_EQ(pieces.inner, whole.inner) << "chunk " << chunk;
        EXPECT_EQ(pieces.outer, whole.outer) << "chunk " << chunk;
        EXPECT_LE((size_t)max_count, chunk) << "an MPI call of more than the chunk";
        if (chunk == 1 && splits) EXPECT_GT(calls, whole_calls) << "a chunk of 1 made no more calls than none";
    }
}

static void append(std::vector<uint8_t>& out, const void* p, size_t bytes) {
    out.insert(out.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + bytes);
}

TEST(Chunked, BlockingAveragesAndGathers) {
    for (size_t n : {0, 1, 5, 301}) {
        SCOPED_TRACE("n = " + std::to_string(n));
        expect_same_in_pieces(2, n > 1, [n](Comm& c, std::vector<uint8_t>& out) {  // 2 workers x 2 ranks
            auto x = random_floats(n, 1);
            c.average_world(x.data(), n);
            append(out, x.data(), 4 * n);
            x = random_floats(n, 2);
            c.average_worker(x.data(), n);
            append(out, x.data(), 4 * n);
            x = random_floats(n, 3);
            c.sum_across_workers(x.data(), n);
            append(out, x.data(), 4 * n);
            x = random_floats(n, 4);
            c.allgather_worker(x.data(), n);
            append(out, x.data(), 4 * n);
        });
        expect_same_in_pieces(1, n > 1, [n](Comm& c, std::vector<uint8_t>& out) {  // one worker of 4 ranks
            auto x = exact_floats(n, 5);
            c.average_world(x.data(), n);
            append(out, x.data(), 4 * n);
            std::vector<double> d(n);
            for (size_t i = 0; i < n; i++) d[i] = (double)(i + world_rank());
            c.reduce_to_root(d.data(), n);
            if (c.is_root()) append(out, d.data(), 8 * n);
        });
    }
}

// The non-blocking exchanges across 2 workers, with parts of uneven sizes (an empty one too).
TEST(Chunked, NonBlockingExchanges) {
    expect_same_in_pieces(2, true, [](Comm& c, std::vector<uint8_t>& out) {
        const int M = c.workers();
        const int ch = c.open_cross_channel();
        auto bytes_of = [](const std::vector<float>& v) { return v.size() * 4; };
        const auto mine = random_floats(37 + c.local(), 6);
        std::vector<float> all(M * mine.size());
        auto r1 = c.iallgather_across_workers(mine.data(), bytes_of(mine), all.data(), ch);
        auto sum = random_floats(211, 7);
        auto r2 = c.isum_across_workers(sum.data(), sum.size());
        const auto a2a_in = random_floats(64, 8);  // enough for every part
        std::vector<size_t> sizes(M);
        for (int j = 0; j < M; j++) sizes[j] = 3 * j + 5;  // bytes for worker j, the same on every rank
        std::vector<uint8_t> a2a_out(M * sizes[c.worker()]);
        auto r3 = c.ialltoallv_across_workers(a2a_in.data(), sizes, a2a_out.data(), ch);
        std::vector<size_t> gv(M);
        for (int j = 0; j < M; j++) gv[j] = j ? 0 : 41;  // an empty part too; the same on every rank
        const auto gv_in = random_floats(64, 9);
        std::vector<uint8_t> gv_out(gv[0] + gv[1]);
        auto r4 = c.iallgatherv_across_workers(gv_in.data(), gv, gv_out.data());
        while (!c.test(r1)) {
        }
        c.wait(r2);
        c.wait(r3);
        c.wait(r4);
        append(out, all.data(), all.size() * 4);
        append(out, sum.data(), sum.size() * 4);
        append(out, a2a_out.data(), a2a_out.size());
        append(out, gv_out.data(), gv_out.size());
    });
}

TEST(Chunked, SendAndReceive) {
    expect_same_in_pieces(2, world_rank() == 0 || world_rank() == 3, [](Comm& c, std::vector<uint8_t>& out) {
        const auto msg = random_floats(50, 10);
        std::vector<float> got(50, 0.0f);
        if (c.world_rank() == 3) c.send(0, 7, msg.data(), 4 * msg.size());
        if (c.world_rank() == 0) {
            EXPECT_EQ(c.wait_message(-1, 7), 3);
            c.recv(3, 7, got.data(), 4 * got.size());
        }
        append(out, got.data(), 4 * got.size());
    });
}

// A message of another size is an Error naming the sizes, in pieces as whole.
TEST(Chunked, ReceiveOfAnotherSizeThrows) {
    for (size_t chunk : {0, 4}) {
        set_mpi_chunk_elements(chunk);
        Comm c(2);
        const std::vector<uint8_t> msg(10, 1);
        std::vector<uint8_t> got(12);
        if (c.world_rank() == 1) c.send(0, 8, msg.data(), msg.size());
        if (c.world_rank() == 0) {
            c.wait_message(1, 8);
            EXPECT_THROW(c.recv(1, 8, got.data(), got.size()), Error);
            // take what is left of the message, so that none is pending at the end
            MPI_Status st;
            MPI_Probe(1, 8, MPI_COMM_WORLD, &st);
            int left = 0;
            MPI_Get_count(&st, MPI_BYTE, &left);
            PMPI_Recv(got.data(), left, MPI_BYTE, 1, 8, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            EXPECT_EQ(left, chunk ? 2 : 10);
        }
        c.barrier();
        set_mpi_chunk_elements(0);
    }
}

TEST(Chunked, EnvironmentVariable) {
    setenv("DILOCO_MPI_CHUNK_ELEMENTS", "5", 1);
    EXPECT_EQ(mpi_chunk_elements_forced(), 5u);
    setenv("DILOCO_MPI_CHUNK_ELEMENTS", "five", 1);
    EXPECT_THROW(mpi_chunk_elements_forced(), Error);
    unsetenv("DILOCO_MPI_CHUNK_ELEMENTS");
    EXPECT_EQ(mpi_chunk_elements_forced(), 0u);
}

// --comm-progress thread (comm/progress.h): an all-gather of 1 MB a rank, far past the shared-memory
// transport's eager limit (4 KB), lands while the main threads sleep and make no MPI call at all:
// the progress threads alone move it. The same exchange without the thread (the control) is only
// reported: whether it moves on its own is up to the MPI library.
static bool lands_while_main_sleeps(Comm& c, double seconds) {
    const size_t bytes = 1 << 20;
    std::vector<uint8_t> in(bytes), out(2 * bytes, 0xee);
    for (size_t i = 0; i < bytes; i++) in[i] = (uint8_t)(i * 7 + 31 * c.worker() + 1);
    std::vector<uint8_t> peer(bytes);
    for (size_t i = 0; i < bytes; i++) peer[i] = (uint8_t)(i * 7 + 31 * (1 - c.worker()) + 1);
    const int channel = c.open_cross_channel();
    Comm::Request r = c.iallgather_across_workers(in.data(), bytes, out.data(), channel);
    bool landed = false;
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (!landed && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        landed = std::memcmp(out.data() + (1 - c.worker()) * bytes, peer.data(), bytes) == 0;
    }
    c.wait(r);
    EXPECT_EQ(std::memcmp(out.data() + (1 - c.worker()) * bytes, peer.data(), bytes), 0);
    EXPECT_EQ(std::memcmp(out.data() + c.worker() * bytes, in.data(), bytes), 0);
    return landed;
}

TEST(ProgressThread, AnExchangeLandsWhileTheMainThreadMakesNoMpiCall) {
    {
        Comm control(2);
        const bool moved = lands_while_main_sleeps(control, 0.3);
        if (control.world_rank() == 0)
            std::printf("control: without the progress thread the exchange %s in 0.3 s of no MPI calls\n",
                        moved ? "landed anyway" : "did not land");
        EXPECT_EQ(control.progress_polls(), 0u);
        control.barrier();
    }
    Comm c(2);
    c.start_progress_thread();
    EXPECT_TRUE(lands_while_main_sleeps(c, 10.0));
    const uint64_t polled = c.progress_polls();
    EXPECT_GT(polled, 0u);
    // nothing in flight: the thread sleeps (at most the poll that was under way ends)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const uint64_t idle = c.progress_polls();
    EXPECT_LE(idle, polled + 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(c.progress_polls(), idle);
    c.barrier();
}

int main(int argc, char** argv) {
    int provided = 0;  // the progress thread's test needs two threads in MPI at once
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    if (provided != MPI_THREAD_MULTIPLE) {
        std::fprintf(stderr, "comm_tests: the MPI library does not grant MPI_THREAD_MULTIPLE\n");
        MPI_Finalize();
        return 2;
    }
    ::testing::InitGoogleTest(&argc, argv);
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 4) {
        std::fprintf(stderr, "comm_tests: run under mpirun -np 4 (2 workers x 2 ranks), got %d\n", size);
        MPI_Finalize();
        return 2;
    }
    const int rc = RUN_ALL_TESTS();
    // every rank's verdict: a failure seen on one rank fails the job
    int worst = rc;
    MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
