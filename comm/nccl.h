// The within-worker communicator on GPUs: NCCL over the G ranks of one worker, created from an
// ncclUniqueId that local rank 0 makes and broadcasts over the worker's MPI communicator. Each
// rank drives the GPU whose index is its rank among the ranks on its node.
// Built when CUDA, MPI and NCCL are all found; the CUDA training backend uses it for the worker
// link, as the MPI worker communicator serves on the CPU. The cross link stays MPI.
// The emulated build (DILOCO_EMULATE, with MPI) compiles the same code against the emulated
// NCCL of kernels/emu/nccl_emu.h, so that CI runs this path with several ranks.
#pragma once
#include <cstddef>

#include "kernels/cuda_compat.h"  // the CUDA runtime, or the emulator's

#include "comm/comm.h"

namespace diloco {

class NcclWorkerComm {
public:
    // Selects this rank's device (cudaSetDevice) and joins the worker's NCCL communicator.
    explicit NcclWorkerComm(Comm& comm);
    ~NcclWorkerComm();
    NcclWorkerComm(const NcclWorkerComm&) = delete;
    NcclWorkerComm& operator=(const NcclWorkerComm&) = delete;

    int device() const { return device_; }

    // Averages n floats of device memory over the worker's ranks, in place, on `stream` (also for
    // one rank, where it is a copy in place, so that one GPU exercises the call). Its bytes are
    // counted by count_average, once per average that runs: a CUDA Graph issues the call once
    // and runs it at every launch.
    void average(float* x, size_t n, cudaStream_t stream);
    void count_average(size_t n);
    // All-gather of the G slices (slice_of) of x, n floats in all, in place, on `stream`.
    void allgather_slices(float* x, size_t n, cudaStream_t stream);

private:
    Comm& comm_;
    void* nccl_ = nullptr;  // ncclComm_t
    int device_ = 0;
};

}  // namespace diloco
