// MPI calls with 64-bit element counts, for comm/comm.cpp (internal: it includes mpi.h).
//
// MPI-3 takes counts and displacements as int, which overflows at 2^31 elements: a flat parameter
// buffer of a model past about 2.1 billion parameters. These helpers take size_t counts and split
// each call into pieces of at most limit() elements. An element-wise operation (allreduce, reduce)
// cut into pieces reduces every element over the same ranks with the same operation, so the result
// per element does not depend on where the cuts fall (tests/test_comm.cpp checks bit for bit).
// Every rank of a communicator must see the same limit: it sets how many calls each rank makes.
#pragma once
#include <mpi.h>

#include <cstddef>
#include <vector>

namespace diloco::chunked {

// The most elements of `elem_bytes` bytes one MPI call carries: 2^30 bytes' worth (well inside
// int, and inside the 2 GiB that some transports handle per message), or the forced value of
// set_mpi_chunk_elements() / DILOCO_MPI_CHUNK_ELEMENTS (comm/comm.h).
size_t limit(size_t elem_bytes);

// Blocking, in place. Both return MPI's first error code (MPI_SUCCESS unless the communicator
// returns errors: in-job survival, comm/survival.cpp).
int allreduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm);
// Reduces x into x on `root`; the other ranks' x is only read.
int reduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, int root, MPI_Comm comm);
void bcast(void* x, size_t n, MPI_Datatype type, int root, MPI_Comm comm);

// Non-blocking: each appends the requests of its pieces to `reqs`. The pieces of one call are
// started in order on every rank, so they match as one call would.
void iallreduce(void* x, size_t n, MPI_Datatype type, MPI_Op op, MPI_Comm comm, std::vector<MPI_Request>& reqs);
void ibcast(void* x, size_t n, MPI_Datatype type, int root, MPI_Comm comm, std::vector<MPI_Request>& reqs);
void isend(const void* x, size_t n, MPI_Datatype type, int to, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs);
void irecv(void* x, size_t n, MPI_Datatype type, int from, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs);

// Blocking receive of exactly n elements sent by isend() with the same limit: each piece is probed
// first, so a message of another size is an Error (naming what arrived), not an MPI abort.
void recv(void* x, size_t n, MPI_Datatype type, int from, int tag, MPI_Comm comm);

}  // namespace diloco::chunked
