// Asynchronous Local-SGD (Liu et al. 2024, arXiv 2401.09135), `--algo async`, written to be read
// next to the paper.
//
// M workers train their own replicas, each at its own pace, and never wait for one another. A
// server, world rank 0 besides the workers (the job takes M + 1 ranks), holds the global
// parameters theta and the outer optimizer. Each worker w, round after round:
//   1  pulls theta from the server, with the number n of inner steps to run next
//   2  runs n inner AdamW steps on its own shard (its AdamW state stays with it)
//   3  pushes its pseudo-gradient  g = theta_pulled - theta_w   (old minus new)
// and goes on at once with the next pull. The server applies each push when it arrives:
//   nesterov (the paper's naive baseline), per arrival:
//       mom = mu mom + g;  theta -= lr (g + mu mom)                       (optim/outer.h)
//   delayed-nesterov (--delay-buffer N): buffer += g at every arrival; at every N-th
//       mom = mu mom + buffer/N;  theta -= lr (mu mom + g/N);  buffer = 0
//     and at the others  theta -= lr g/N.  With N = 1 this is nesterov.
//   sgd: mom = mu mom + g;  theta -= lr mom
// Dynamic local updates (--dylu): worker w runs floor(v(w) / max v * H) inner steps (at least 1),
// v(w) its speed in inner steps per second: measured from its last round, or its nominal speed
// under the virtual clock.
//
// Why a dedicated server rank, rather than the workers serving in turn or MPI one-sided windows:
// a push must be applied while every other worker computes. A worker that serves in its turn
// answers only between its own inner steps, so a push waits up to a step (the wait the method
// removes). One-sided windows put theta and the momentum in a window that every worker updates
// under an exclusive lock: the read-modify-write of n floats by a rank the scheduler may pause
// blocks all the others, and passive-target progress in Open MPI's shared-memory and TCP paths
// can wait for the target rank to enter MPI. A dedicated server that polls and sleeps
// (Comm::wait_message) costs one mostly idle process and serves whatever the load: with five
// ranks on two cores each push is served as soon as the server is scheduled.
//
// Arrival order. Wall-clock (default): pushes are applied in the order they reach the server, so
// two runs differ (not bit-reproducible). Virtual clock (--virtual-step-s S > 0): worker w's clock
// advances S / speed(w) per inner step; the server applies pushes in the order of their virtual
// arrival times (ties: the lower worker), waiting for the push that is next by that clock. The
// order is then fixed, runs are bit-reproducible, and times do not depend on this machine's load.
// --worker-speeds slows worker w in wall-clock mode by sleeping (1/speed - 1) x each inner step's
// compute time; under the virtual clock only the clock is slowed.
//
// Length: equal tokens to the synchronous algorithms, M x --steps inner steps in all. The server
// hands them out: each pull carries n = min(H_w, steps not yet handed out). The global step is the
// steps applied so far / M, rounded up; the inner learning rate of a round's k-th step is the
// schedule's at (global step at its pull) + k.
//
// Checkpoints (--ckpt-every, --stop-at, and the end): at the mark the server stops handing out
// steps, applies the pushes in flight (the workers wait), saves theta, the momentum, the buffer
// and the counters, and tells every worker to save at the same step; then it hands out the next
// steps. A resumed run continues from that quiet point: consistent (every push applied exactly
// once, no step lost or repeated), bit for bit only under the virtual clock.
//
// Every push carries its sequence number; the server refuses one out of order, and at the end
// compares each worker's count of pushes with its own. The pushes, the pulls and the final reports
// are counted on the outer link.
#pragma once
#include <string>
#include <vector>

#include "optim/options.h"

namespace diloco {

// --worker-speeds as M positive numbers (all 1 when empty); throws Error in one line otherwise.
std::vector<double> parse_worker_speeds(const std::string& list, int workers);

// Inner steps of worker w's next round under dynamic local updates: floor(v / v_max * H), >= 1.
long dynamic_local_steps(double v, double v_max, long H);

}  // namespace diloco
