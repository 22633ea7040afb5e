#include "comm/comm.h"

#include "data/io.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <thread>

#include "kernels/common.h"

#ifdef DILOCO_HAVE_MPI
#include <mpi.h>

#include "comm/mpi_chunked.h"
#endif

namespace diloco {

Slice slice_of(size_t n, int G, int g) {
    const size_t base = n / G, extra = n % G;
    Slice s;
    s.begin = g * base + std::min<size_t>(g, extra);
    s.count = base + ((size_t)g < extra ? 1 : 0);
    return s;
}

static double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void sleep_until(double t) {
    const double d = t - now_seconds();
    if (d > 0) std::this_thread::sleep_for(std::chrono::duration<double>(d));
}

double Comm::link_seconds(uint64_t bytes) const {
    if (link_gbps_ <= 0.0 && link_latency_ms_ <= 0.0) return 0.0;
    return (link_gbps_ > 0.0 ? (double)bytes * 8.0 / (link_gbps_ * 1e9) : 0.0) + link_latency_ms_ / 1000.0;
}

uint64_t ring_allreduce_bytes(size_t bytes, int P) { return P > 1 ? 2 * (uint64_t)bytes * (P - 1) / P : 0; }
uint64_t ring_allgather_bytes(size_t bytes, int P) { return P > 1 ? (uint64_t)bytes * (P - 1) / P : 0; }

// One process waits on nobody: no thread there.
void Comm::set_timeout(double seconds) { watchdog_.set_timeout(world_size_ > 1 ? seconds : 0.0, g_ == 0 ? 0.0 : 2.0); }

const std::string& Comm::host_of(int world_rank) const {
    static const std::string none;
    return world_rank >= 0 && (size_t)world_rank < hosts_.size() ? hosts_[world_rank] : none;
}

// Built with += alone: GCC 12 warns (-Wrestrict, a false positive) on chains of std::string +.
std::string Comm::describe_worker(int m) const {
    std::string hosts;
    for (int g = 0; g < G_; g++) {
        const std::string& h = host_of(rank_of(m, g));
        if (h.empty() || hosts.find(h) != std::string::npos) continue;
        if (!hosts.empty()) hosts += '+';
        hosts += h;
    }
    std::string s = "worker ";
    s += std::to_string(m);
    s += " on ";
    s += hosts.empty() ? "?" : hosts;
    s += G_ > 1 ? " (ranks " : " (rank ";
    s += std::to_string(rank_of(m, 0));
    if (G_ > 1) {
        s += '-';
        s += std::to_string(rank_of(m, G_ - 1));
    }
    s += ')';
    return s;
}

// The surviving side of a stuck collective cannot tell which peer went silent, only which peers
// it was waiting with: with two workers that is exactly the other one.
std::string Comm::lost_line(const char* call) const {
    std::string others;
    int n = 0;
    for (int m = 0; m < M_; m++) {
        if (!server_ && m == m_) continue;
        if (n++) others += ", ";
        others += describe_worker(m);
    }
    char secs[32];
    std::snprintf(secs, sizeof secs, "%g", watchdog_.timeout());
    std::string s = "error: rank ";
    s += std::to_string(world_rank_);
    s += server_ ? " (the server on " : " (worker " + std::to_string(m_) + " on ";
    s += host_of(world_rank_);
    s += "): ";
    s += call;
    s += " has not completed in ";
    s += secs;
    s += " s (--comm-timeout): lost contact with ";
    if (n > 1) s += "one of ";
    s += others;
    s += "; ending the job";
    return s;
}

#ifdef DILOCO_HAVE_MPI

static MPI_Comm as_comm(void* p) { return *static_cast<MPI_Comm*>(p); }

// A non-blocking exchange in flight: one request per piece (comm/mpi_chunked.h); MPI reads the
// count and displacement arrays of the v-variants until the request completes, so they live with it.
struct InFlight {
    std::vector<MPI_Request> reqs;
    std::vector<int> counts;
    MPI_Request* one() {
        reqs.assign(1, MPI_REQUEST_NULL);
        return &reqs[0];
    }
};

bool mpi_active() {
    int init = 0, fin = 0, size = 1;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return false;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size > 1;
}

void abort_job(int code) {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
}

Comm::Comm(int workers, int server_ranks) {
    DILOCO_CHECK(workers > 0, "--workers must be positive, got " + std::to_string(workers));
    int init = 0;
    MPI_Initialized(&init);
    if (init) {
        MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
        MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
    }
    const int trainers = world_size_ - server_ranks;
    if (server_ranks > 0 && trainers < workers)  // every rank sees this: a clean exit, no abort
        throw CollectiveError("this algorithm runs a server on rank 0 besides the workers: --workers " +
                              std::to_string(workers) + " needs " + std::to_string(workers + server_ranks) +
                              " ranks (mpirun -np " + std::to_string(workers + server_ranks) + "), got " +
                              std::to_string(world_size_));
    if (trainers % workers != 0)
        throw CollectiveError("the number of ranks (" + std::to_string(world_size_) +
                              ") is not a multiple of --workers (" + std::to_string(workers) + ")");
    M_ = workers;
    G_ = trainers / workers;
    server_ranks_ = server_ranks;
    server_ = world_rank_ < server_ranks;
    const int trainer = server_ ? 0 : world_rank_ - server_ranks;
    m_ = trainer / G_;
    g_ = trainer % G_;
    if (init) {
        auto* wc = new MPI_Comm;
        auto* cc = new MPI_Comm;
        // the server is in no worker: its two communicators are MPI_COMM_NULL, never used
        MPI_Comm_split(MPI_COMM_WORLD, server_ ? MPI_UNDEFINED : m_, g_, wc);
        MPI_Comm_split(MPI_COMM_WORLD, server_ ? MPI_UNDEFINED : g_, m_, cc);
        worker_comm_ = wc;
        cross_comm_ = cc;
        world_comm_ = new MPI_Comm(MPI_COMM_WORLD);
        gather_hosts();
    }
}

// Every rank's host name, so that a rank can name the host of a worker it lost contact with.
void Comm::gather_hosts() {
    char mine[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MPI_Get_processor_name(mine, &len);
    std::vector<char> all((size_t)world_size_ * MPI_MAX_PROCESSOR_NAME);
    MPI_Allgather(mine, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, MPI_COMM_WORLD);
    hosts_.resize(world_size_);
    for (int r = 0; r < world_size_; r++)
        hosts_[r] = std::string(&all[(size_t)r * MPI_MAX_PROCESSOR_NAME], strnlen(&all[(size_t)r * MPI_MAX_PROCESSOR_NAME], MPI_MAX_PROCESSOR_NAME));
}

// set when a Comm that was ready to survive a loss ends: see finalize_mpi
static bool g_skip_finalize = false;

void finalize_mpi(int code) {
    if (!g_skip_finalize) {
        MPI_Finalize();
        return;
    }
    std::fflush(nullptr);
    std::_Exit(code);
}

Comm::~Comm() {
    progress_.stop();  // before its communicator goes
    int fin = 0;
    MPI_Finalized(&fin);
    // A job that can survive a loss leaves without MPI_Finalize once every rank is past its last
    // call across workers: after a loss, Open MPI 5.0's finalize waits on a fence that includes the
    // dead (open-mpi/ompi issue 11404); with ULFM's failure detector on, it hung in 5 runs of 6
    // without any loss.
    if (survive_ && world_size_ > 1 && !fin) {
        MPI_Barrier(as_comm(world_comm_));
        g_skip_finalize = true;
    }
    std::vector<void*> all = channels_;
    all.push_back(probe_comm_);
    all.insert(all.end(), groups_.begin(), groups_.end());
    all.push_back(worker_comm_);
    all.push_back(cross_comm_);
    all.push_back(world_comm_);
    for (void* p : all)
        if (p) {
            MPI_Comm* c = static_cast<MPI_Comm*>(p);
            if (!fin && *c != MPI_COMM_NULL && *c != MPI_COMM_WORLD) MPI_Comm_free(c);
            delete c;
        }
}

void Comm::average_worker(float* x, size_t n) {
    if (G_ == 1) return;
    chunked::allreduce(x, n, MPI_FLOAT, MPI_SUM, as_comm(worker_comm_));
    bytes_inner_ += ring_allreduce_bytes(4 * n, G_);
    const float inv = 1.0f / G_;
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

void Comm::sum_across_workers(float* x, size_t n) {
    if (M_ == 1) return;
    const double t0 = now_seconds();
    {
        Deadline d(watchdog_, lost_line("the outer sync (sum across workers)"));
        std::vector<float> input;  // to run again over the survivors, should a worker be lost
        if (survive_) input.assign(x, x + n);
        protect([&] { return chunked::allreduce(x, n, MPI_FLOAT, MPI_SUM, as_comm(cross_comm_)); },
                [&] { std::copy(input.begin(), input.end(), x); });
    }
    bytes_outer_ += ring_allreduce_bytes(4 * n, M_);
    sleep_until(t0 + link_seconds(ring_allreduce_bytes(4 * n, M_)));
}

void Comm::allgather_worker(float* x, size_t n) {
    if (G_ == 1) return;
    if (n <= chunked::limit(4)) {  // every count and displacement fits one call
        std::vector<int> counts(G_), displs(G_);
        for (int g = 0; g < G_; g++) {
            Slice s = slice_of(n, G_, g);
            counts[g] = (int)s.count;
            displs[g] = (int)s.begin;
        }
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, counts.data(), displs.data(), MPI_FLOAT,
                       as_comm(worker_comm_));
    } else {  // displacements past int: each slice from its owner, in pieces
        for (int g = 0; g < G_; g++) {
            const Slice s = slice_of(n, G_, g);
            chunked::bcast(x + s.begin, s.count, MPI_FLOAT, g, as_comm(worker_comm_));
        }
    }
    bytes_inner_ += ring_allgather_bytes(4 * n, G_);
}

void Comm::average_world(float* x, size_t n) {
    if (world_size_ == 1) return;
    const Slice mine = slice_of(n, G_, g_);
    if (G_ > 1 && n <= chunked::limit(4)) {
        std::vector<int> counts(G_);
        for (int g = 0; g < G_; g++) counts[g] = (int)slice_of(n, G_, g).count;
        // in place: the reduced slice lands at the start of x, then moves to its own place
        MPI_Reduce_scatter(MPI_IN_PLACE, x, counts.data(), MPI_FLOAT, MPI_SUM, as_comm(worker_comm_));
        if (mine.begin) std::memmove(x + mine.begin, x, 4 * mine.count);
    } else if (G_ > 1) {  // past one call: each slice reduced onto its owner, in pieces, in place
        for (int g = 0; g < G_; g++) {
            const Slice s = slice_of(n, G_, g);
            chunked::reduce(x + s.begin, s.count, MPI_FLOAT, MPI_SUM, g, as_comm(worker_comm_));
        }
    }
    if (G_ > 1) bytes_inner_ += ring_allgather_bytes(4 * n, G_);
    sum_across_workers(x + mine.begin, mine.count);
    const float inv = 1.0f / world_size_;
    for (size_t i = mine.begin; i < mine.begin + mine.count; i++) x[i] *= inv;
    allgather_worker(x, n);
}

int Comm::open_cross_group(bool member) {
    auto* c = new MPI_Comm(MPI_COMM_NULL);
    int size = member ? 1 : 0;
    if (cross_comm_) {  // MPI not initialised: one process, a group of itself
        MPI_Comm_split(as_comm(cross_comm_), member ? 0 : MPI_UNDEFINED, m_, c);
        if (member) MPI_Comm_size(*c, &size);
    }
    groups_.push_back(c);
    group_sizes_.push_back(size);
    return member ? (int)groups_.size() - 1 : -1;
}

int Comm::group_size(int group) const {
    DILOCO_CHECK(group >= 0 && (size_t)group < groups_.size(), "no cross group " + std::to_string(group));
    return group_sizes_[group];
}

void Comm::sum_in_group(int group, float* x, size_t n) {
    const int P = group_size(group);
    if (P == 1) return;
    const double t0 = now_seconds();
    MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, as_comm(groups_[group]));
    bytes_outer_ += ring_allreduce_bytes(4 * n, P);
    sleep_until(t0 + link_seconds(ring_allreduce_bytes(4 * n, P)));
}

void Comm::start_progress_thread() {
    if (world_size_ == 1 || progress_.running()) return;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    DILOCO_CHECK(level == MPI_THREAD_MULTIPLE,
                 "--comm-progress thread needs an MPI library that grants MPI_THREAD_MULTIPLE, and this one does not");
    auto* c = new MPI_Comm;
    MPI_Comm_dup(MPI_COMM_WORLD, c);  // collective: every rank starts the thread, or none
    probe_comm_ = c;
    // 200 us: at 10 Gbit/s a TCP socket's buffer (megabytes) does not drain between two polls
    progress_.start(c, std::chrono::microseconds(200));
}

int Comm::open_cross_channel() {
    if (!cross_comm_) return 0;  // MPI not initialised: one process, nothing to match
    auto* c = new MPI_Comm;
    MPI_Comm_dup(as_comm(cross_comm_), c);
    channels_.push_back(c);
    return (int)channels_.size();
}

void* Comm::channel_comm(int channel) const {
    DILOCO_CHECK(channel >= 0 && (size_t)channel <= channels_.size(), "no cross channel " + std::to_string(channel));
    return channel == 0 ? cross_comm_ : channels_[channel - 1];
}

Comm::Request Comm::iallgather_across_workers(const void* in, size_t bytes, void* out, int channel) {
    Request r;
    if (M_ == 1) {
        std::memcpy(out, in, bytes);
        return r;
    }
    auto* f = new InFlight;
    const MPI_Comm c = as_comm(channel_comm(channel));
    if ((uint64_t)bytes * M_ <= chunked::limit(1)) {
        MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, c, f->one());
    } else {  // past one call: each worker's part from its owner, in pieces
        std::memcpy(static_cast<char*>(out) + (size_t)m_ * bytes, in, bytes);
        for (int j = 0; j < M_; j++) chunked::ibcast(static_cast<char*>(out) + (size_t)j * bytes, bytes, MPI_BYTE, j, c, f->reqs);
    }
    bytes_outer_ += (uint64_t)bytes * (M_ - 1);
    r.handle = f;
    progress_.exchange_started();
    r.send = in;
    r.send_bytes = bytes;
    r.send_crc = crc32_update(0, in, bytes);
    r.ready_at = now_seconds() + link_seconds((uint64_t)bytes * (M_ - 1));
    return r;
}

Comm::Request Comm::isum_across_workers(float* x, size_t n, int channel) {
    Request r;
    if (M_ == 1) return r;
    auto* f = new InFlight;
    chunked::iallreduce(x, n, MPI_FLOAT, MPI_SUM, as_comm(channel_comm(channel)), f->reqs);
    bytes_outer_ += ring_allreduce_bytes(4 * n, M_);
    r.handle = f;
    progress_.exchange_started();
    r.ready_at = now_seconds() + link_seconds(ring_allreduce_bytes(4 * n, M_));
    return r;
}

// counts[0..M) then displacements[M..2M) of parts of `bytes`, back to back (the caller checked
// that the total fits one call)
static std::vector<int> counts_and_displacements(const std::vector<size_t>& bytes) {
    const size_t M = bytes.size();
    std::vector<int> a(2 * M);
    size_t at = 0;
    for (size_t j = 0; j < M; j++) {
        a[j] = (int)bytes[j];
        a[M + j] = (int)at;
        at += bytes[j];
    }
    return a;
}

static size_t total_of(const std::vector<size_t>& bytes) {
    size_t t = 0;
    for (size_t b : bytes) t += b;
    return t;
}

// Past one call, the all-to-all is what it means: a message to and from every other rank, in pieces.
static void ialltoallv_in_pieces(const void* in, const std::vector<size_t>& bytes, void* out, int me, MPI_Comm c,
                                 std::vector<MPI_Request>& reqs) {
    const int tag = 0x5d1c;  // the channel's own point-to-point space: no other messages there
    const size_t M = bytes.size(), mine = bytes[me];
    size_t at = 0;
    for (size_t j = 0; j < M; j++) {
        const char* part = static_cast<const char*>(in) + at;
        char* slot = static_cast<char*>(out) + j * mine;
        if ((int)j == me)
            std::memcpy(slot, part, mine);
        else {
            chunked::irecv(slot, mine, MPI_BYTE, (int)j, tag, c, reqs);
            chunked::isend(part, bytes[j], MPI_BYTE, (int)j, tag, c, reqs);
        }
        at += bytes[j];
    }
}

Comm::Request Comm::ialltoallv_across_workers(const void* in, const std::vector<size_t>& bytes, void* out, int channel) {
    DILOCO_CHECK(bytes.size() == (size_t)M_, "ialltoallv_across_workers: one part per worker");
    Request r;
    if (M_ == 1) {
        if (bytes[0]) std::memcpy(out, in, bytes[0]);
        return r;
    }
    auto* f = new InFlight;
    const size_t lim = chunked::limit(1);
    if (total_of(bytes) <= lim && (uint64_t)bytes[m_] * M_ <= lim) {
        f->counts = counts_and_displacements(bytes);  // sends: [0, 2M)
        const std::vector<size_t> mine(M_, bytes[m_]);
        const std::vector<int> recv = counts_and_displacements(mine);  // receives: [2M, 4M)
        f->counts.insert(f->counts.end(), recv.begin(), recv.end());
        const int* c = f->counts.data();
        MPI_Ialltoallv(in, c, c + M_, MPI_BYTE, out, c + 2 * M_, c + 3 * M_, MPI_BYTE,
                       as_comm(channel_comm(channel)), f->one());
    } else {
        ialltoallv_in_pieces(in, bytes, out, m_, as_comm(channel_comm(channel)), f->reqs);
    }
    const uint64_t sent = total_of(bytes) - bytes[m_];
    bytes_outer_ += sent;
    r.handle = f;
    progress_.exchange_started();
    r.send = in;
    r.send_bytes = total_of(bytes);
    r.send_crc = crc32_update(0, in, r.send_bytes);
    r.ready_at = now_seconds() + link_seconds(sent);
    return r;
}

Comm::Request Comm::iallgatherv_across_workers(const void* in, const std::vector<size_t>& bytes, void* out, int channel) {
    DILOCO_CHECK(bytes.size() == (size_t)M_, "iallgatherv_across_workers: one part per worker");
    Request r;
    if (M_ == 1) {
        if (bytes[0]) std::memcpy(out, in, bytes[0]);
        return r;
    }
    auto* f = new InFlight;
    if (total_of(bytes) <= chunked::limit(1)) {
        f->counts = counts_and_displacements(bytes);
        const int* c = f->counts.data();
        MPI_Iallgatherv(in, c[m_], MPI_BYTE, out, c, c + M_, MPI_BYTE, as_comm(channel_comm(channel)), f->one());
    } else {  // past one call: each worker's part from its owner, in pieces
        size_t at = 0;
        for (int j = 0; j < M_; j++) {
            char* part = static_cast<char*>(out) + at;
            if (j == m_) std::memcpy(part, in, bytes[j]);
            chunked::ibcast(part, bytes[j], MPI_BYTE, j, as_comm(channel_comm(channel)), f->reqs);
            at += bytes[j];
        }
    }
    const uint64_t sent = ring_allgather_bytes(total_of(bytes), M_);
    bytes_outer_ += sent;
    r.handle = f;
    progress_.exchange_started();
    r.send = in;
    r.send_bytes = bytes[m_];
    r.send_crc = crc32_update(0, in, r.send_bytes);
    r.ready_at = now_seconds() + link_seconds(sent);
    return r;
}

// At the completion of a request: its send buffer must be as it was when the exchange started.
static void check_send_buffer(Comm::Request& r) {
    if (!r.send) return;
    const bool same = crc32_update(0, r.send, r.send_bytes) == r.send_crc;
    r.send = nullptr;
    DILOCO_CHECK(same, "the send buffer of a non-blocking exchange was written before the exchange completed "
                       "(a data race that a network would expose)");
}

bool Comm::test(Request& r) {
    if (r.handle) {  // let MPI progress; the emulated link may still be busy afterwards
        int done = 0;
        auto& reqs = static_cast<InFlight*>(r.handle)->reqs;
        MPI_Testall((int)reqs.size(), reqs.data(), &done, MPI_STATUSES_IGNORE);
        if (done) {
            delete static_cast<InFlight*>(r.handle);
            r.handle = nullptr;
            progress_.exchange_done();
            check_send_buffer(r);
        }
    }
    return !r.handle && now_seconds() >= r.ready_at;
}

void Comm::wait(Request& r) {
    if (r.handle) {
        auto& reqs = static_cast<InFlight*>(r.handle)->reqs;
        Deadline d(watchdog_, lost_line("an exchange across workers"));
        MPI_Waitall((int)reqs.size(), reqs.data(), MPI_STATUSES_IGNORE);
        delete static_cast<InFlight*>(r.handle);
        r.handle = nullptr;
        progress_.exchange_done();
        check_send_buffer(r);
    }
    sleep_until(r.ready_at);
    r.ready_at = 0.0;
}

void Comm::send(int to, int tag, const void* data, size_t bytes) {
    const double t0 = now_seconds();
    std::vector<MPI_Request> reqs;  // a large message waits for its receiver: wait politely, as wait_message does
    chunked::isend(data, bytes, MPI_BYTE, to, tag, MPI_COMM_WORLD, reqs);
    for (int done = 0;;) {
        MPI_Testall((int)reqs.size(), reqs.data(), &done, MPI_STATUSES_IGNORE);
        if (done) break;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    bytes_outer_ += bytes;
    sleep_until(t0 + link_seconds(bytes));
}

int Comm::wait_message(int from, int tag) {
    MPI_Status status;
    for (;;) {
        int found = 0;
        MPI_Iprobe(from < 0 ? MPI_ANY_SOURCE : from, tag, MPI_COMM_WORLD, &found, &status);
        if (found) return status.MPI_SOURCE;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
}

void Comm::recv(int from, int tag, void* data, size_t bytes) {
    chunked::recv(data, bytes, MPI_BYTE, from, tag, MPI_COMM_WORLD);  // checks each piece's size
}

void Comm::reduce_to_root(double* x, size_t n) {
    if (world_size_ == 1) return;
    Deadline d(watchdog_, lost_line("a reduction over all ranks"));
    std::vector<double> input;
    if (survive_) input.assign(x, x + n);
    protect([&] { return chunked::reduce(x, n, MPI_DOUBLE, MPI_SUM, 0, as_comm(world_comm_)); },
            [&] { std::copy(input.begin(), input.end(), x); });
    bytes_outer_ += 8 * n;  // a reduction tree sends each rank's buffer once
}

std::vector<uint64_t> Comm::allgather_u64(uint64_t v) {
    std::vector<uint64_t> all(world_size_, v);
    Deadline d(watchdog_, world_size_ > 1 ? lost_line("an all-gather over all ranks") : "");
    if (world_size_ > 1)
        protect([&] {
            all.resize(world_size_);  // fewer after a loss
            return MPI_Allgather(&v, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, as_comm(world_comm_));
        }, [] {});
    return all;
}

double Comm::max_world(double v) {
    if (world_size_ > 1) {
        Deadline d(watchdog_, lost_line("a reduction over all ranks"));
        const double input = v;
        protect([&] { return MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, as_comm(world_comm_)); },
                [&] { v = input; });
    }
    return v;
}

double Comm::sum_world(double v) {
    if (world_size_ > 1) {
        Deadline d(watchdog_, lost_line("a reduction over all ranks"));
        const double input = v;
        protect([&] { return MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, as_comm(world_comm_)); },
                [&] { v = input; });
    }
    return v;
}

void Comm::barrier() {
    if (world_size_ > 1) {
        Deadline d(watchdog_, lost_line("a barrier over all ranks"));
        protect([&] { return MPI_Barrier(as_comm(world_comm_)); }, [] {});
    }
}

int Comm::node_local_rank() const {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) return 0;
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank_, MPI_INFO_NULL, &node);
    int r = 0;
    MPI_Comm_rank(node, &r);
    MPI_Comm_free(&node);
    return r;
}

#else  // one process, no MPI

bool mpi_active() { return false; }
void abort_job(int code) { std::exit(code); }
void finalize_mpi(int) {}

Comm::Comm(int workers, int server_ranks) {
    DILOCO_CHECK(workers == 1 && server_ranks == 0, "--workers " + std::to_string(workers) +
                                   (server_ranks ? " with a server rank" : "") +
                                   " needs MPI, and this build has none (one process = one worker)");
}
Comm::~Comm() = default;
void Comm::average_world(float*, size_t) {}
void Comm::average_worker(float*, size_t) {}
void Comm::sum_across_workers(float*, size_t) {}
void Comm::allgather_worker(float*, size_t) {}
void Comm::reduce_to_root(double*, size_t) {}
void Comm::start_progress_thread() {}
int Comm::open_cross_channel() { return 0; }
int Comm::open_cross_group(bool member) {
    group_sizes_.push_back(1);
    return member ? (int)group_sizes_.size() - 1 : -1;
}
int Comm::group_size(int group) const {
    DILOCO_CHECK(group >= 0 && (size_t)group < group_sizes_.size(), "no cross group " + std::to_string(group));
    return group_sizes_[group];
}
void Comm::sum_in_group(int, float*, size_t) {}
void* Comm::channel_comm(int) const { return nullptr; }
Comm::Request Comm::iallgather_across_workers(const void* in, size_t bytes, void* out, int) {
    std::memcpy(out, in, bytes);
    return {};
}
Comm::Request Comm::isum_across_workers(float*, size_t, int) { return {}; }
Comm::Request Comm::ialltoallv_across_workers(const void* in, const std::vector<size_t>& bytes, void* out, int) {
    if (bytes.at(0)) std::memcpy(out, in, bytes[0]);
    return {};
}
Comm::Request Comm::iallgatherv_across_workers(const void* in, const std::vector<size_t>& bytes, void* out, int) {
    if (bytes.at(0)) std::memcpy(out, in, bytes[0]);
    return {};
}
bool Comm::test(Request&) { return true; }
void Comm::wait(Request&) {}
std::vector<uint64_t> Comm::allgather_u64(uint64_t v) { return {v}; }
double Comm::max_world(double v) { return v; }
double Comm::sum_world(double v) { return v; }
void Comm::barrier() {}
int Comm::node_local_rank() const { return 0; }
void Comm::send(int, int, const void*, size_t) { throw Error("point-to-point messages need MPI"); }
int Comm::wait_message(int, int) { throw Error("point-to-point messages need MPI"); }
void Comm::recv(int, int, void*, size_t) { throw Error("point-to-point messages need MPI"); }

#endif

}  // namespace diloco
