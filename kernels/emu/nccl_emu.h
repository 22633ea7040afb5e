// Emulated NCCL: the part of nccl.h that comm/nccl.cpp uses, implemented over MPI on host memory
// (the emulator's device memory is host memory), so that the emulated build (diloco-emu) runs the
// NCCL worker link with several ranks in CI. Built with the emulator when MPI is found; the names,
// types and values are nccl.h's, so comm/nccl.cpp compiles against either.
//
// What it checks beyond running the calls (docs/testing.md):
//   - the order of each collective against the work of other streams (kernels/emu/emu.h);
//   - that every rank makes the same call: collective, count, type, operation and root (one small
//     MPI allreduce per call; NCCL would hang or mix the data);
//   - that the buffers lie in cudaMalloc'd memory, and that send and receive buffers either are one
//     buffer or do not overlap.
// A failure returns an NCCL error code, and ncclGetErrorString says what was wrong.
//
// Only ncclFloat32 reduces (ncclSum, ncclAvg); broadcasts take every type. ncclAvg is NCCL's for
// floating types: each rank's values multiplied by 1/nranks, then summed.
#pragma once
#include <cstddef>

#include "kernels/cuda_compat.h"

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef struct ncclComm* ncclComm_t;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

typedef enum {
    ncclInt8 = 0, ncclChar = 0, ncclUint8 = 1, ncclInt32 = 2, ncclInt = 2, ncclUint32 = 3, ncclInt64 = 4,
    ncclUint64 = 5, ncclFloat16 = 6, ncclHalf = 6, ncclFloat32 = 7, ncclFloat = 7, ncclFloat64 = 8,
    ncclDouble = 8, ncclBfloat16 = 9
} ncclDataType_t;

// NCCL's string for the code, with the reason for this thread's last failure when it has that code.
const char* ncclGetErrorString(ncclResult_t result);

ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
// Collective over the nranks members only, as NCCL's is. Restriction: the process that made `id`
// must be one of the members (it acts as the bootstrap root; with NCCL any process may).
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream);

// Calls inside a group run at once, in the order issued (NCCL defers them to ncclGroupEnd). That is
// right when every rank issues the same sequence, as the project's grouped broadcasts from each
// root in turn do; groups that only complete together (send/receive pairs) are not emulated.
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();
