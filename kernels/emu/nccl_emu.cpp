// Emulated NCCL over MPI (kernels/emu/nccl_emu.h).
#include "kernels/emu/nccl_emu.h"

#include "kernels/common.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

struct ncclComm {
    MPI_Comm mpi = MPI_COMM_NULL;  // null for a communicator of one rank, which needs no MPI
    int nranks = 1, rank = 0;
};

namespace {

constexpr uint64_t kMagic = 0x64696c6f636f4e43ull;  // "dilocoNC"

// The start of ncclUniqueId::internal. From the id to the communicator: NCCL's id holds the
// address of a bootstrap root (a socket in the process that made the id); the members connect
// to it, send it their addresses, and it tells each one all the others. Here the root is the
// world rank of the process that made the id: every other member sends it (nranks, rank, world
// rank) on MPI_COMM_WORLD with a tag from the id's serial number, it answers with the table of
// world ranks in rank order, and every member builds the communicator from that group with
// MPI_Comm_create_group, which is collective over the members only, as ncclCommInitRank is.
// (An MPI_Comm_split of MPI_COMM_WORLD keyed by the id would be shorter, but it is collective
// over every rank of the job, and would hang as soon as one rank joins no communicator.)
struct IdFields {
    uint64_t magic;
    int32_t root;     // world rank of the process that made the id
    uint32_t serial;  // which of that process's ids: tells the bootstraps of several apart
};
static_assert(sizeof(IdFields) <= NCCL_UNIQUE_ID_BYTES);

constexpr int kTagBase = 7100, kTagSpan = 20000;  // MPI allows tags up to 32767 at least

thread_local ncclResult_t t_last_code = ncclSuccess;
thread_local std::string t_last_reason, t_last_text;
thread_local int t_group_depth = 0;

ncclResult_t fail(ncclResult_t code, const std::string& reason) {
    t_last_code = code;
    t_last_reason = reason;
    return code;
}

bool mpi_up() {
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    return init && !fin;
}

int world_rank() {
    int r = 0;
    if (mpi_up()) MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

// The members' world ranks in rank order, as the root gathered them; empty when the members
// disagree on nranks or two claim one rank (members with a larger nranks than the root's would
// wait for ever, as with NCCL).
std::vector<int> bootstrap(const IdFields& id, int nranks, int rank, int tag) {
    const int me = world_rank();
    std::vector<int> table(nranks, -1);
    int ok = 1;
    if (me == id.root) {
        table[rank] = me;
        std::vector<int> senders;
        for (int i = 1; i < nranks; i++) {
            int hello[3];  // nranks, rank, world rank
            MPI_Recv(hello, 3, MPI_INT, MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            senders.push_back(hello[2]);
            if (hello[0] == nranks && hello[1] >= 0 && hello[1] < nranks && table[hello[1]] < 0)
                table[hello[1]] = hello[2];
            else
                ok = 0;
        }
        for (int s : senders) {
            MPI_Send(&ok, 1, MPI_INT, s, tag, MPI_COMM_WORLD);
            if (ok) MPI_Send(table.data(), nranks, MPI_INT, s, tag, MPI_COMM_WORLD);
        }
    } else {
        int hello[3] = {nranks, rank, me};
        MPI_Send(hello, 3, MPI_INT, id.root, tag, MPI_COMM_WORLD);
        MPI_Recv(&ok, 1, MPI_INT, id.root, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (ok) MPI_Recv(table.data(), nranks, MPI_INT, id.root, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    return ok ? table : std::vector<int>{};
}

// Every rank must make the same call; NCCL would hang or mix the data. One small allreduce of
// the call's description (its maximum and minimum over the ranks) checks it.
ncclResult_t agree(ncclComm_t c, const char* what, int64_t kind, size_t count, int type, int op, int root) {
    if (c->nranks == 1) return ncclSuccess;
    const int64_t d[5] = {kind, (int64_t)count, type, op, root};
    int64_t v[10];
    for (int i = 0; i < 5; i++) v[i] = d[i], v[5 + i] = -d[i];
    MPI_Allreduce(MPI_IN_PLACE, v, 10, MPI_INT64_T, MPI_MAX, c->mpi);
    for (int i = 0; i < 5; i++)
        if (v[i] != -v[5 + i])
            return fail(ncclInvalidUsage, std::string(what) + ": the ranks made different calls "
                                          "(collective, count, type, operation or root differ)");
    return ncclSuccess;
}

// NCCL reads and writes device memory: a host buffer here is a bug that the emulator, where both
// are host memory, would otherwise hide. Send and receive buffers: one, or apart.
ncclResult_t check_buffers(const char* what, const void* send, const void* recv, size_t bytes, bool reads_send) {
    if (bytes == 0) return ncclSuccess;
    if (!diloco::emu::is_device_memory(recv, bytes) || (reads_send && !diloco::emu::is_device_memory(send, bytes)))
        return fail(ncclInvalidArgument, std::string(what) + ": a buffer is not device memory from cudaMalloc");
    const char *s = static_cast<const char*>(send), *r = static_cast<const char*>(recv);
    if (reads_send && s != r && s < r + bytes && r < s + bytes)
        return fail(ncclInvalidArgument, std::string(what) + ": the send and receive buffers overlap");
    return ncclSuccess;
}

size_t type_size(ncclDataType_t t) {
    switch (t) {
        case ncclInt8: case ncclUint8: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    }
    return 0;
}

// MPI counts are ints: f(offset, count) over pieces of at most 2^30 elements
template <typename F>
void in_pieces(size_t n, F f) {
    constexpr size_t kPiece = size_t(1) << 30;
    for (size_t off = 0; off < n; off += kPiece) f(off, (int)std::min(kPiece, n - off));
}

}  // namespace

const char* ncclGetErrorString(ncclResult_t result) {
    const char* s = "unknown result code";
    switch (result) {  // NCCL's strings, without its NCCL_DEBUG hints
        case ncclSuccess: s = "no error"; break;
        case ncclUnhandledCudaError: s = "unhandled cuda error"; break;
        case ncclSystemError: s = "unhandled system error"; break;
        case ncclInternalError: s = "internal error"; break;
        case ncclInvalidArgument: s = "invalid argument"; break;
        case ncclInvalidUsage: s = "invalid usage"; break;
        case ncclRemoteError: s = "remote process exited or there was a network error"; break;
        case ncclInProgress: s = "NCCL operation in progress"; break;
    }
    if (result == ncclSuccess || result != t_last_code) return s;
    t_last_text = std::string(s) + " (emulated NCCL: " + t_last_reason + ")";
    return t_last_text.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: null id");
    static std::atomic<uint32_t> serial{0};
    const IdFields f{kMagic, world_rank(), ++serial};
    std::memset(id->internal, 0, sizeof id->internal);
    std::memcpy(id->internal, &f, sizeof f);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId uid, int rank) {
    IdFields id;
    std::memcpy(&id, uid.internal, sizeof id);
    if (!comm || id.magic != kMagic) return fail(ncclInvalidArgument, "ncclCommInitRank: not an id from ncclGetUniqueId");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " + std::to_string(nranks));
    auto* c = new ncclComm;
    c->nranks = nranks;
    c->rank = rank;
    if (nranks > 1) {
        if (!mpi_up()) {
            delete c;
            return fail(ncclInvalidUsage, "ncclCommInitRank: more than one rank needs MPI");
        }
        const int tag = kTagBase + (int)(id.serial % kTagSpan);
        const std::vector<int> table = bootstrap(id, nranks, rank, tag);
        if (table.empty()) {
            delete c;
            return fail(ncclInvalidUsage, "ncclCommInitRank: the members disagree on nranks, or two hold one rank");
        }
        MPI_Group world, members;
        MPI_Comm_group(MPI_COMM_WORLD, &world);
        MPI_Group_incl(world, nranks, table.data(), &members);  // rank order: MPI rank = NCCL rank
        MPI_Comm_create_group(MPI_COMM_WORLD, members, tag, &c->mpi);
        MPI_Group_free(&members);
        MPI_Group_free(&world);
    }
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommDestroy: null communicator");
    if (comm->mpi != MPI_COMM_NULL && mpi_up()) MPI_Comm_free(&comm->mpi);
    delete comm;
    return ncclSuccess;
}

// A collective runs when issued, or is kept by the stream's capture to run at each launch of its
// graph (kernels/emu/emu.h), where a failure can only throw.
static ncclResult_t issue_collective(cudaStream_t stream, const char* name, const std::function<ncclResult_t()>& run) {
    auto in_call = std::make_shared<bool>(true);  // false once the call returned: then only a graph runs it
    auto result = std::make_shared<ncclResult_t>(ncclSuccess);
    const diloco::emu::Issue i = diloco::emu::capture_or_run(stream, [=] {
        const ncclResult_t r = run();
        if (*in_call)
            *result = r;
        else if (r != ncclSuccess)
            throw diloco::Error(std::string(name) + " in a graph launch: " + ncclGetErrorString(r));
    });
    *in_call = false;
    if (i == diloco::emu::kRefused) return fail(ncclInvalidUsage, std::string(name) + " on the legacy stream during a capture");
    return *result;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    if (!comm) return fail(ncclInvalidArgument, "ncclAllReduce: null communicator");
    if (datatype != ncclFloat32 || (op != ncclSum && op != ncclAvg))
        return fail(ncclInvalidArgument, "ncclAllReduce: the emulator reduces only ncclFloat32 with ncclSum or ncclAvg");
    if (ncclResult_t r = check_buffers("ncclAllReduce", sendbuff, recvbuff, count * 4, true)) return r;
    return issue_collective(stream, "ncclAllReduce", [=]() -> ncclResult_t {
        diloco::emu::stream_issue(stream, "ncclAllReduce", true);
        if (ncclResult_t r = agree(comm, "ncclAllReduce", 1, count, datatype, op, 0)) return r;
        float* x = static_cast<float*>(recvbuff);
        if (sendbuff != recvbuff) std::memcpy(x, sendbuff, count * 4);
        if (op == ncclAvg) {  // NCCL's average of floats: a sum of values pre-multiplied by 1/nranks
            const float inv = (float)(1.0 / comm->nranks);
            for (size_t i = 0; i < count; i++) x[i] *= inv;
        }
        if (comm->nranks > 1)
            in_pieces(count, [&](size_t off, int n) { MPI_Allreduce(MPI_IN_PLACE, x + off, n, MPI_FLOAT, MPI_SUM, comm->mpi); });
        return ncclSuccess;
    });
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
    if (!comm) return fail(ncclInvalidArgument, "ncclBroadcast: null communicator");
    if (root < 0 || root >= comm->nranks)
        return fail(ncclInvalidArgument, "ncclBroadcast: root " + std::to_string(root) + " of " + std::to_string(comm->nranks));
    const size_t bytes = count * type_size(datatype);
    if (type_size(datatype) == 0) return fail(ncclInvalidArgument, "ncclBroadcast: unknown data type");
    const bool is_root = comm->rank == root;  // only the root reads sendbuff
    if (ncclResult_t r = check_buffers("ncclBroadcast", sendbuff, recvbuff, bytes, is_root)) return r;
    return issue_collective(stream, "ncclBroadcast", [=]() -> ncclResult_t {
        diloco::emu::stream_issue(stream, "ncclBroadcast", true);
        if (ncclResult_t r = agree(comm, "ncclBroadcast", 2, count, datatype, 0, root)) return r;
        if (is_root && sendbuff != recvbuff) std::memcpy(recvbuff, sendbuff, bytes);
        char* x = static_cast<char*>(recvbuff);
        if (comm->nranks > 1)
            in_pieces(bytes, [&](size_t off, int n) { MPI_Bcast(x + off, n, MPI_BYTE, root, comm->mpi); });
        return ncclSuccess;
    });
}

ncclResult_t ncclGroupStart() {
    t_group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
    if (t_group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    t_group_depth--;
    return ncclSuccess;
}
