#include "comm/nccl.h"

#include <mpi.h>

#include <cstdio>
#ifdef DILOCO_EMULATE
#include "kernels/emu/nccl_emu.h"
#else
#include <nccl.h>
#endif

#include "kernels/common.h"
#include "kernels/cuda_check.h"

namespace diloco {

#define NCCL_CHECK(call)                                                                       \
    do {                                                                                       \
        ncclResult_t r_ = (call);                                                              \
        DILOCO_CHECK(r_ == ncclSuccess, std::string("NCCL: ") + #call + ": " + ncclGetErrorString(r_)); \
    } while (0)

NcclWorkerComm::NcclWorkerComm(Comm& comm) : comm_(comm) {
    int ndev = 0;
    DILOCO_CUDA_CHECK(cudaGetDeviceCount(&ndev));
    const int local = comm.node_local_rank();
    DILOCO_CHECK(local < ndev, "rank " + std::to_string(comm.world_rank()) + " is local rank " +
                                   std::to_string(local) + " on its node, which has only " +
                                   std::to_string(ndev) + " GPUs");
    device_ = local;
    DILOCO_CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId id;
    if (comm.local() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    if (comm.ranks_per_worker() > 1) {
        DILOCO_CHECK(comm.worker_mpi_comm(), "NCCL across the ranks of a worker needs MPI");
        MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, *static_cast<MPI_Comm*>(comm.worker_mpi_comm()));
    }
    ncclComm_t c;
    NCCL_CHECK(ncclCommInitRank(&c, comm.ranks_per_worker(), id, comm.local()));
    nccl_ = c;
    if (comm.is_root())  // which link the worker's averages take shows in the log (tests read it)
        std::fprintf(stderr, "nccl: the worker link of %d rank(s) runs on the device, through %s\n",
                     comm.ranks_per_worker(),
#ifdef DILOCO_EMULATE
                     "the emulated NCCL (MPI on host memory)"
#else
                     "NCCL"
#endif
        );
}

NcclWorkerComm::~NcclWorkerComm() {
    if (nccl_) ncclCommDestroy(static_cast<ncclComm_t>(nccl_));
}

void NcclWorkerComm::average(float* x, size_t n, cudaStream_t stream) {
    // G = 1 too: one GPU runs the path of many
    NCCL_CHECK(ncclAllReduce(x, x, n, ncclFloat32, ncclAvg, static_cast<ncclComm_t>(nccl_), stream));
}

void NcclWorkerComm::count_average(size_t n) {
    comm_.count_inner(ring_allreduce_bytes(4 * n, comm_.ranks_per_worker()));  // as the MPI worker link counts
}

void NcclWorkerComm::allgather_slices(float* x, size_t n, cudaStream_t stream) {
    const int G = comm_.ranks_per_worker();
    if (G == 1) return;
    // NCCL's all-gather takes equal pieces: broadcast each rank's slice in turn inside one group
    NCCL_CHECK(ncclGroupStart());
    for (int g = 0; g < G; g++) {
        const Slice s = slice_of(n, G, g);
        NCCL_CHECK(ncclBroadcast(x + s.begin, x + s.begin, s.count, ncclFloat32, g,
                                 static_cast<ncclComm_t>(nccl_), stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    comm_.count_inner(ring_allgather_bytes(4 * n, G));
}

}  // namespace diloco
