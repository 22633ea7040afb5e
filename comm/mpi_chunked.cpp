#include "comm/comm.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <string>

#include "kernels/common.h"

namespace diloco {

// 0: not forced (the environment variable, else 2^30 bytes' worth)
static std::atomic<size_t> forced_chunk{0};

void set_mpi_chunk_elements(size_t n) { forced_chunk = n; }

size_t mpi_chunk_elements_forced() {
    if (size_t f = forced_chunk.load()) return f;
    const char* env = std::getenv("DILOCO_MPI_CHUNK_ELEMENTS");
    if (!env || !*env) return 0;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    DILOCO_CHECK(*end == '\0' && v > 0, std::string("DILOCO_MPI_CHUNK_ELEMENTS must be a positive integer, got '") +
                                            env + "'");
    return (size_t)v;
}

}  // namespace diloco

#ifdef DILOCO_HAVE_MPI
#include "comm/mpi_chunked.h"

namespace diloco::chunked {

static size_t type_bytes(MPI_Datatype type) {
    int s = 0;
    MPI_Type_size(type, &s);
    return (size_t)s;
}

size_t limit(size_t elem_bytes) {
    size_t n = mpi_chunk_elements_forced();
    if (n == 0) n = ((size_t)1 << 30) / (elem_bytes ? elem_bytes : 1);
    return std::max<size_t>(1, std::min<size_t>(n, INT_MAX));
}

// Calls f(byte offset, count) for consecutive pieces of n elements, at least one call (n = 0
// included, so that every rank still takes part in the collective as before).
template <class F>
static void in_pieces(size_t n, MPI_Datatype type, F f) {
    const size_t eb = type_bytes(type), step = limit(eb);
    size_t at = 0;
    do {
        const size_t c = std::min(step, n - at);
        f(at * eb, (int)c);
        at += c;
    } while (at < n);
}

static char* byte_ptr(void* p, size_t off) { return static_cast<char*>(p) + off; }

// The first error stops the pieces (only a communicator set to return errors returns one).
int allreduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm) {
    int rc = MPI_SUCCESS;
    in_pieces(n, type, [&](size_t off, int c) {
        if (rc == MPI_SUCCESS) rc = MPI_Allreduce(MPI_IN_PLACE, byte_ptr(x, off), c, type, op, comm);
    });
    return rc;
}

int reduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, int root, MPI_Comm comm) {
    int me = 0, rc = MPI_SUCCESS;
    MPI_Comm_rank(comm, &me);
    in_pieces(n, type, [&](size_t off, int c) {
        if (rc != MPI_SUCCESS) return;
        if (me == root)
            rc = MPI_Reduce(MPI_IN_PLACE, byte_ptr(x, off), c, type, op, root, comm);
        else
            rc = MPI_Reduce(byte_ptr(x, off), nullptr, c, type, op, root, comm);
    });
    return rc;
}

void bcast(void* x, size_t n, MPI_Datatype type, int root, MPI_Comm comm) {
    in_pieces(n, type, [&](size_t off, int c) { MPI_Bcast(byte_ptr(x, off), c, type, root, comm); });
}

void iallreduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    in_pieces(n, type, [&](size_t off, int c) {
        reqs.emplace_back();
        MPI_Iallreduce(MPI_IN_PLACE, byte_ptr(x, off), c, type, op, comm, &reqs.back());
    });
}

void ibcast(void* x, size_t n, MPI_Datatype type, int root, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    in_pieces(n, type, [&](size_t off, int c) {
        reqs.emplace_back();
        MPI_Ibcast(byte_ptr(x, off), c, type, root, comm, &reqs.back());
    });
}

void isend(const void* x, size_t n, MPI_Datatype type, int to, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    in_pieces(n, type, [&](size_t off, int c) {
        reqs.emplace_back();
        MPI_Isend(static_cast<const char*>(x) + off, c, type, to, tag, comm, &reqs.back());
    });
}

void irecv(void* x, size_t n, MPI_Datatype type, int from, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
    in_pieces(n, type, [&](size_t off, int c) {
        reqs.emplace_back();
        MPI_Irecv(byte_ptr(x, off), c, type, from, tag, comm, &reqs.back());
    });
}

void recv(void* x, size_t n, MPI_Datatype type, int from, int tag, MPI_Comm comm) {
    in_pieces(n, type, [&](size_t off, int c) {
        MPI_Status status;
        MPI_Probe(from, tag, comm, &status);
        int got = 0;
        MPI_Get_count(&status, type, &got);
        const std::string unit = type == MPI_BYTE ? " bytes" : " elements";
        DILOCO_CHECK(got == c, std::string((size_t)c == n ? "a message of " : "a piece of a message of ") +
                                   std::to_string(got) + unit + " from rank " + std::to_string(from) + " where " +
                                   std::to_string(c) + " were expected" +
                                   ((size_t)c == n ? "" : " (of " + std::to_string(n) + unit + " in all)"));
        MPI_Recv(byte_ptr(x, off), c, type, from, tag, comm, MPI_STATUS_IGNORE);
    });
}

}  // namespace diloco::chunked
#endif
