// Process topology and the collectives the training algorithms use, with byte accounting.
//
// World ranks are grouped into M workers (replicas) of G consecutive ranks: rank = m*G + g.
//   worker link ("inner"): the G ranks of one worker, every step (gradient averaging)
//   cross link ("outer"):  the M ranks that share local index g, one per worker; in DiLoCo only at
//                          outer syncs. Local rank g owns slice g of the flat parameter buffer
//                          for the outer sync, so each cross communicator moves 1/G of it.
// Without MPI (or with one rank) every communicator has size 1 and the collectives are no-ops.
//
// An algorithm with a server (asynchronous Local-SGD) asks for one more rank: world rank 0 is then
// the server, in no worker, and the workers' ranks are 1 .. R-1 (rank = 1 + m*G + g). The server
// talks to the workers' ranks point to point (send, recv below), on the outer link.
//
// Byte accounting counts what this rank sends, from the real message sizes and the ring
// algorithms' standard costs for P ranks and a buffer of S bytes:
//   allreduce 2(P-1)/P * S;  reduce-scatter (P-1)/P * S;  all-gather (P-1)/P * S (S = whole result);
//   all-to-all: the parts sent to the other P - 1 ranks, (P-1)/P * S for equal parts (S = what this
//   rank contributes)
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/progress.h"
#include "comm/watchdog.h"

namespace diloco {

struct Slice {
    size_t begin = 0, count = 0;
};

// Slice g of n elements split G ways: the first n % G slices hold one extra element.
Slice slice_of(size_t n, int G, int g);

// The ring algorithms' bytes sent by one rank for a buffer of S bytes over P ranks (above); every
// transport counts with these, so that the MPI and NCCL worker links report the same bytes.
uint64_t ring_allreduce_bytes(size_t S, int P);
uint64_t ring_allgather_bytes(size_t S, int P);  // also reduce-scatter; S = the whole result

class Comm {
public:
    // Initialises from MPI_COMM_WORLD (if MPI is compiled in and initialised) and splits it into
    // M workers, after `server_ranks` (0 or 1) server ranks. Throws Error when the ranks left for the
    // workers are not a multiple of M.
    explicit Comm(int workers, int server_ranks = 0);
    ~Comm();
    Comm(const Comm&) = delete;
    Comm& operator=(const Comm&) = delete;

    int world_rank() const { return world_rank_; }
    int world_size() const { return world_size_; }
    int workers() const { return M_; }
    int ranks_per_worker() const { return G_; }
    int worker() const { return m_; }
    int local() const { return g_; }
    bool is_root() const { return world_rank_ == 0; }
    bool is_server() const { return server_; }  // world rank 0 of a job with a server
    // The world rank of local rank g of worker m.
    int rank_of(int m, int g = 0) const { return server_ranks_ + m * G_ + g; }

    // Averages x (n floats) over all R ranks hierarchically: reduce-scatter within the worker,
    // allreduce of this rank's slice across workers, all-gather within the worker.
    void average_world(float* x, size_t n);
    // Averages x over the ranks of this worker (inner link only).
    void average_worker(float* x, size_t n);
    // Sums x (n floats, this rank's slice) over the cross communicator (outer link).
    void sum_across_workers(float* x, size_t n);
    // All-gather of the G slices of x (n floats in all) within the worker.
    void allgather_worker(float* x, size_t n);

    // A group of the cross communicator: the ranks that call this with member = true, in worker
    // order (a collective call over the cross communicator: every one of its ranks opens the same
    // groups in the same order). Returns the group's id, or -1 on a rank that is not a member.
    // DiPaCo exchanges each module among the workers whose paths hold it.
    int open_cross_group(bool member);
    int group_size(int group) const;
    // Sums x (n floats) in place over a group's ranks (outer link), counted as the ring allreduce
    // over the group's size; nothing moves for a group of one.
    void sum_in_group(int group, float* x, size_t n);
    // The sum over a group of parts of n floats each, formed in one fixed order whatever the
    // number of members: 0, plus every part of member 0 in its order, then member 1's, ... (DiPaCo:
    // a module's sum does not depend on how the paths are spread over workers). This rank gives
    // parts_of[its group rank] parts back to back in `parts`; parts_of is every member's count.
    // Each member sums chunk j of the parts' n floats (reduce-scatter by an all-to-all) and the
    // chunks are gathered into `out`: with one part per member, the bytes of a ring allreduce.
    void ordered_sum_in_group(int group, const float* parts, const std::vector<int>& parts_of, size_t n, float* out);

    // Non-blocking exchanges across workers. MPI matches collectives on a communicator by the
    // order in which the ranks start them, so an exchange whose steps start at times that differ
    // between ranks (a second phase started when the first is seen complete) needs a channel of
    // its own: a duplicate of the cross communicator. Channel 0 is the cross communicator itself,
    // which the blocking calls above use. Every rank of the cross communicator opens its channels
    // in the same order (a collective call).
    int open_cross_channel();

    // Non-blocking all-gather across workers: each rank of the cross communicator contributes
    // `bytes` from `in`; `out` (M * bytes) receives them in worker order. Counted outer:
    // (M - 1) * bytes. Drive it with test() (progress, while compute goes on) and wait().
    struct Request {
        void* handle = nullptr;  // the MPI request and the count arrays it reads until it completes
        double ready_at = 0.0;   // link emulation: when the emulated transfer ends (seconds)
        // The send buffer and its checksum when the exchange started: MPI forbids writing it
        // before the request completes, which shared memory forgives and a network does not, so
        // completion checks it and throws if it changed.
        const void* send = nullptr;
        size_t send_bytes = 0;
        uint32_t send_crc = 0;
    };
    // `in` must not be written until the request completes (checked: see Request). So for all below.
    Request iallgather_across_workers(const void* in, size_t bytes, void* out, int channel = 0);
    // Non-blocking in-place sum of x (n floats) across workers. Counted outer: the ring
    // allreduce's 2(M - 1)/M * 4n, fewer bytes than an all-gather of fp32 payloads for M > 2.
    Request isum_across_workers(float* x, size_t n, int channel = 0);
    // Non-blocking all-to-all across workers: `in` holds M parts back to back, part j (bytes[j])
    // for worker j; `out` receives part worker() of every worker, M * bytes[worker()], in worker
    // order. Counted outer: the parts sent to the other workers, sum of bytes[j] for j != worker().
    Request ialltoallv_across_workers(const void* in, const std::vector<size_t>& bytes, void* out, int channel = 0);
    // Non-blocking all-gather of parts of different sizes: this rank contributes bytes[worker()]
    // from `in`; `out` receives all M parts back to back in worker order. Counted outer: the
    // ring's (M - 1)/M * sum of bytes.
    Request iallgatherv_across_workers(const void* in, const std::vector<size_t>& bytes, void* out, int channel = 0);
    bool test(Request& r);
    void wait(Request& r);

    // --comm-progress thread: a thread moves the exchanges above forward while compute goes on
    // (comm/progress.h), rather than only the test() after each inner step. Throws Error when the
    // MPI library was not initialised with MPI_THREAD_MULTIPLE. Nothing to do in one process.
    void start_progress_thread();
    uint64_t progress_polls() const { return progress_.polls(); }

    // Point to point on the outer link, between the server and a worker's rank (world ranks).
    // Counted outer on the sender: the message's bytes; the emulated link delays the sender. Returns
    // once the message has left (a large one: once the receiver takes it), polling as below.
    void send(int to, int tag, const void* data, size_t bytes);
    // Waits for a message with `tag` from world rank `from` (-1: any rank) and returns its sender.
    // It polls and sleeps between polls (about 0.2 ms) rather than spinning in MPI, so that a
    // waiting rank leaves the cores to those computing when ranks outnumber cores.
    int wait_message(int from, int tag);
    // Receives the message wait_message() found: exactly `bytes` (throws Error on another size).
    void recv(int from, int tag, void* data, size_t bytes);

    // Sum of x (n doubles) over all ranks, delivered to world rank 0 (telemetry; counted outer).
    void reduce_to_root(double* x, size_t n);
    // Values of one uint64 from every rank, in world-rank order.
    std::vector<uint64_t> allgather_u64(uint64_t v);
    // Maximum / sum of a value over all ranks (small control messages; not counted).
    double max_world(double v);
    double sum_world(double v);
    void barrier();

    // This rank's index among the ranks on its node (MPI_COMM_TYPE_SHARED): its GPU.
    int node_local_rank() const;
    // The worker's MPI communicator (an MPI_Comm*), for the NCCL set-up; null without MPI.
    void* worker_mpi_comm() const { return worker_comm_; }
    // Bytes another transport (NCCL) sent on the worker link on this Comm's behalf.
    void count_inner(uint64_t bytes) { bytes_inner_ += bytes; }

    // Link emulation for the cross link: every across-worker message also costs
    // bytes / (gbps * 1e9 / 8) + latency_ms / 1000 seconds of waiting in the communication path
    // (blocking calls sleep; a non-blocking exchange is not complete before that time). 0 = off.
    void emulate_outer_link(double gbps, double latency_ms) {
        link_gbps_ = gbps;
        link_latency_ms_ = latency_ms;
    }

    // A deadline on every blocking call that crosses workers (the outer sync, the world-wide
    // reductions): one that has not returned within `seconds` ends this process with one line naming
    // the workers (and hosts) it was waiting for, and Open MPI then ends the job. 0 = off. The
    // ranks other than a worker's local rank 0 wait 2 s more, so that one line speaks for the worker.
    void set_timeout(double seconds);
    // The host (MPI_Get_processor_name, gathered at start) of a world rank; "" without MPI.
    const std::string& host_of(int world_rank) const;
    // "worker 1 on h1 (ranks 2-3)"; a worker over several hosts lists them ("h1+h2").
    std::string describe_worker(int m) const;

    uint64_t bytes_inner() const { return bytes_inner_; }
    uint64_t bytes_outer() const { return bytes_outer_; }

    // In-job survival of a lost worker (--on-worker-loss continue; comm/survival.cpp). Needs Open
    // MPI with ULFM (MPIX_Comm_shrink), run as `mpirun --with-ft ulfm`; throws Error in a build
    // without it. From then on the blocking calls across workers (the outer sync, the world-wide
    // reductions) return errors instead of ending the job, and one that finds a peer dead repairs
    // the communicators: every survivor agrees that the call failed, the dead ranks are shrunk
    // away, the workers are numbered again over the survivors (in their old order), and the call
    // runs again over them with its input as it was. Only whole workers may be lost: a worker that
    // lost some of its ranks, or the loss of world rank 0 (which writes the metrics and the global
    // checkpoint), ends the job with an error. The non-blocking exchanges are not covered.
    void enable_survival();
    static bool survival_built();  // this build has ULFM
    // True when mpirun was asked to keep the job going past a lost process (`--with-ft ulfm`, which
    // sets OMPI_MCA_mpi_ft_enable=1 in every rank): the job must then survive by itself, since a
    // loss under the default handlers was seen to hang it or end it with exit status 0.
    static bool launched_fault_tolerant();
    // Before MPI starts, for --on-worker-loss continue: turns on ULFM's own failure detector (a
    // heartbeat between the ranks, in a thread of the library), which finds a process that exited
    // without MPI_Finalize; the runtime reports only the ones killed by a signal. Its period and
    // timeout stay the library's (3 s, 10 s); OMPI_MCA_mpi_ft_detector* set by the user win.
    static void request_failure_detector();
    // Workers lost so far in this job (the loop compares it after each round), and a line naming
    // the last ones lost and the layout the survivors continue with.
    int losses() const { return losses_; }
    const std::string& loss_report() const { return loss_report_; }

private:
    int world_rank_ = 0, world_size_ = 1, M_ = 1, G_ = 1, m_ = 0, g_ = 0;
    int server_ranks_ = 0;
    bool server_ = false;
    void* worker_comm_ = nullptr;  // MPI_Comm, opaque here so that this header needs no MPI
    void* cross_comm_ = nullptr;
    std::vector<void*> groups_;    // MPI_Comm*: open_cross_group's, MPI_COMM_NULL where not a member
    std::vector<int> group_sizes_;
    std::vector<void*> channels_;  // MPI_Comm*: the cross communicator's duplicates, channel 1, 2, ...
    uint64_t bytes_inner_ = 0, bytes_outer_ = 0;
    double link_gbps_ = 0.0, link_latency_ms_ = 0.0;
    std::vector<std::string> hosts_;  // by world rank
    Watchdog watchdog_;
    ProgressThread progress_;
    void* world_comm_ = nullptr;   // MPI_Comm*: MPI_COMM_WORLD, or its survivors after a loss
    bool survive_ = false;
    int losses_ = 0;
    std::string loss_report_;
    // Runs `op` (MPI calls across workers; returns MPI's first error code). With survival on, a
    // failure anywhere repairs the communicators and runs `op` again after `restore` (which puts
    // back an in-place input). Without it an error has already ended the job.
    void protect(const std::function<int()>& op, const std::function<void()>& restore);
    void repair();
    void* probe_comm_ = nullptr;   // MPI_Comm*: the progress thread's own, which carries nothing
    std::string lost_line(const char* call) const;
    void gather_hosts();  // what the watchdog says when `call` is stuck
    double link_seconds(uint64_t bytes) const;
    void* channel_comm(int channel) const;  // MPI_Comm* of a channel
};

// MPI counts are int: every call in comm/ carries at most a chunk of elements, and a larger buffer
// takes several calls (comm/mpi_chunked.h). The chunk is 2^30 bytes' worth of elements unless
// forced: by this call (n > 0; 0 = not forced), else by the environment variable
// DILOCO_MPI_CHUNK_ELEMENTS. Tests force tiny chunks to check that the pieces add up to the same
// bits. It must be the same on every rank.
void set_mpi_chunk_elements(size_t n);
size_t mpi_chunk_elements_forced();  // 0 when not forced

// True when this process runs under MPI with more than one rank.
bool mpi_active();
// MPI_Finalize, for the program's end. A job that lost a worker and went on (in-job survival)
// leaves here instead, with exit status `code`, without it: Open MPI 5.0's finalize can wait for
// ever on the dead processes (its PMIx fence; open-mpi/ompi issue 11404; here about 1 run in 7
// with 2 ranks a worker). The survivors passed a barrier of their own when their Comm ended, so
// none of them is still in MPI, and `mpirun --with-ft ulfm` takes a plain exit as a clean one.
void finalize_mpi(int code);
// Ends the whole job after a failure on one rank, so that no rank waits forever.
[[noreturn]] void abort_job(int code);

}  // namespace diloco
