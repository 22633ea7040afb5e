// In-job survival of a lost worker over MPI (--on-worker-loss continue, comm/comm.h).
//
// ULFM (Open MPI 5's fault-tolerance extension, `mpirun --with-ft ulfm`) reports a dead peer as an
// error code from the call that needed it, on the ranks that noticed, and lets the survivors
//   revoke  a communicator: every pending and later call on it fails, so that no survivor stays
//           blocked in a collective that cannot complete;
//   agree   on a flag over the live ranks, even on a revoked communicator;
//   shrink  it to a new communicator of the live ranks, in their old order.
// protect() runs one blocking call across workers, then every rank agrees over the world whether
// it succeeded everywhere. If not, repair() shrinks the world, rebuilds the cross communicators
// over the surviving workers, and the call runs again with its input restored: an outer sync is
// then the sum over the surviving replicas, which the caller averages over them (DiLoCo's
// drop-out, optim/diloco.cpp). The worker communicators stay: a lost worker takes all its ranks.
#include "comm/comm.h"

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "kernels/common.h"

#ifdef DILOCO_HAVE_MPI
#include <mpi.h>
#ifdef DILOCO_HAVE_ULFM
#include <mpi-ext.h>
#endif
#endif

namespace diloco {

bool Comm::launched_fault_tolerant() {
    const char* ft = std::getenv("OMPI_MCA_mpi_ft_enable");
    return ft && (std::strcmp(ft, "1") == 0 || std::strcmp(ft, "true") == 0);
}

void Comm::request_failure_detector() {
    setenv("OMPI_MCA_mpi_ft_detector", "true", 0);
    setenv("OMPI_MCA_mpi_ft_detector_thread", "true", 0);  // heartbeats go on through long compute
}

#if defined(DILOCO_HAVE_MPI) && defined(DILOCO_HAVE_ULFM)

static MPI_Comm& as_comm(void* p) { return *static_cast<MPI_Comm*>(p); }

bool Comm::survival_built() { return true; }

void Comm::enable_survival() {
    DILOCO_CHECK(!server_, "--on-worker-loss continue: a job with a server rank cannot survive a loss");
    DILOCO_CHECK(world_size_ == 1 || launched_fault_tolerant(),
                 "--on-worker-loss continue needs the job started by `mpirun --with-ft ulfm`: without it the "
                 "runtime ends the job at the first lost process");
    survive_ = true;
    if (world_size_ == 1) return;
    // A write to the TCP socket of a peer that has just died raises SIGPIPE, which would kill this
    // survivor too (seen on the test hosts: 3 runs in about 30 lost a second worker so); ignored, the
    // write fails with EPIPE and the loss reaches us as an MPI error like any other.
    std::signal(SIGPIPE, SIG_IGN);
    // a world of our own that returns errors (MPI_COMM_WORLD keeps its handler for everything else)
    MPI_Comm w;
    MPI_Comm_dup(MPI_COMM_WORLD, &w);
    MPI_Comm_set_errhandler(w, MPI_ERRORS_RETURN);
    as_comm(world_comm_) = w;
    MPI_Comm_set_errhandler(as_comm(cross_comm_), MPI_ERRORS_RETURN);
}

void Comm::protect(const std::function<int()>& op, const std::function<void()>& restore) {
    if (!survive_) {
        op();  // an error has ended the job already (the communicators' default handler)
        return;
    }
    for (;;) {
        int ok = op() == MPI_SUCCESS;
        if (!ok) {  // release the peers still blocked in the same call
            MPIX_Comm_revoke(as_comm(cross_comm_));
            MPIX_Comm_revoke(as_comm(world_comm_));
        }
        // the logical AND over the live ranks; an error here: some rank is dead, whatever the flag
        const int agreed = MPIX_Comm_agree(as_comm(world_comm_), &ok);
        if (ok && agreed == MPI_SUCCESS) return;
        repair();
        if (ok) return;  // the call had completed everywhere; only the world had to lose the dead
        restore();
    }
}

void Comm::repair() {
    MPIX_Comm_revoke(as_comm(world_comm_));
    MPI_Comm alive;
    MPIX_Comm_shrink(as_comm(world_comm_), &alive);
    MPI_Comm_set_errhandler(alive, MPI_ERRORS_RETURN);
    // who is left: every survivor's old world rank, in the old order
    int n = 0;
    MPI_Comm_size(alive, &n);
    std::vector<int> old(n);
    int mine = world_rank_;
    MPI_Allgather(&mine, 1, MPI_INT, old.data(), 1, MPI_INT, alive);
    std::vector<int> ranks_left(M_, 0);
    for (int r : old) ranks_left[(r - server_ranks_) / G_]++;
    std::string lost, partial;  // "worker 1 on h1 (ranks 2-3); ..."
    std::vector<int> kept;      // the surviving workers, old numbers
    for (int m = 0; m < M_; m++) {
        std::string& list = ranks_left[m] == 0 ? lost : partial;
        if (ranks_left[m] == G_)
            kept.push_back(m);
        else
            list += (list.empty() ? "" : "; ") + describe_worker(m);
    }
    DILOCO_CHECK(partial.empty(), "lost part of a worker (" + partial + "): its replica cannot go on; relaunch with --resume");
    DILOCO_CHECK(old[0] == 0, "lost world rank 0 (" + lost + "), which writes the metrics and the global checkpoint; "
                              "relaunch on the survivors with --resume");
    const int M_old = M_;
    // the new layout: the survivors' workers numbered again in their old order
    const int my_worker = (int)(std::find(kept.begin(), kept.end(), m_) - kept.begin());
    std::vector<std::string> hosts(n);
    for (int i = 0; i < n; i++) hosts[i] = hosts_[old[i]];
    MPI_Comm_free(&as_comm(world_comm_));
    as_comm(world_comm_) = alive;
    MPI_Comm_rank(alive, &world_rank_);
    world_size_ = n;
    M_ = (int)kept.size();
    m_ = my_worker;
    hosts_ = std::move(hosts);
    MPIX_Comm_revoke(as_comm(cross_comm_));
    MPI_Comm_free(&as_comm(cross_comm_));
    MPI_Comm_split(alive, g_, m_, &as_comm(cross_comm_));
    MPI_Comm_set_errhandler(as_comm(cross_comm_), MPI_ERRORS_RETURN);
    losses_ += M_old - M_;
    loss_report_ = "lost " + lost + "; continuing with " + std::to_string(M_) + " worker" + (M_ > 1 ? "s" : "") +
                   " of " + std::to_string(M_old);
}

#else  // no ULFM: a failure ends the job, as the communicators' default handler does

bool Comm::survival_built() { return false; }

void Comm::enable_survival() {
    throw Error("--on-worker-loss continue needs Open MPI with ULFM (MPIX_Comm_shrink), and this build has "
#ifdef DILOCO_HAVE_MPI
                "an MPI without it"
#else
                "no MPI"
#endif
                ": build against it (docs/distributed.md, \"In-job survival\")");
}

void Comm::protect(const std::function<int()>& op, const std::function<void()>&) { op(); }
void Comm::repair() {}

#endif

}  // namespace diloco
