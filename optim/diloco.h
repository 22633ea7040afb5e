// The training algorithms' communication steps, written to be read next to the papers.
//
// Data-parallel: every inner step, gradients are averaged over all R ranks.
//
// DiLoCo (Douillard et al. 2023, Algorithm 1), per outer round t, for each replica m:
//   1  start from the shared theta(t-1)            (inner AdamW state stays local)
//   2  H inner AdamW steps on replica m's shard     (optim/inner.h, gradients averaged within the
//                                                    worker only)
//   3  outer gradient  delta_m = theta(t-1) - theta_m(t)       (old minus new)
//   4  average over replicas  delta = (1/M) sum_m delta_m      (across-worker link, only here)
//   5  theta(t) = OuterOpt(theta(t-1), delta)                  (optim/outer.h, Nesterov)
// Local rank g of every worker keeps theta(t-1) and the outer momentum for slice g of the flat
// buffer, reduces that slice across workers, and the worker all-gathers the slices.
//
// The algorithm behind optim/algorithm.h (`--algo diloco`, diloco_algorithm) is at the end of
// diloco.cpp: lines 1 and 3-5 run after the last inner step of every round.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "optim/options.h"
#include "optim/outer.h"

namespace diloco {

// theta(t-1) and the outer momentum for this rank's slice, kept in fp32.
struct OuterState {
    Slice slice;
    std::vector<float> global;    // theta(t-1), slice only
    std::vector<float> momentum;  // outer momentum, slice only
    std::vector<float> delta;     // scratch for the outer gradient, slice only
};

void outer_init(OuterState& s, const Comm& comm, const float* params, size_t n);

// Lines 3-5 for one outer round, on this rank's slice of `params` (only that slice is read or
// written). `delivered` says whether this rank's replica delivers its outer gradient this round
// (--drop-prob); `n_delivered` is how many replicas do (the same on every rank). A replica's
// outer gradient that is not delivered is lost for the round, and theta(t) steps with the mean of
// those that were (theta(t-1) when none was), as in the DiLoCo paper; every replica then starts
// the next round from theta(t). With `keep_local`, a replica that did not deliver keeps training
// from its own parameters instead (--drop-mode replica). Returns true when the replica takes
// theta(t): its slice of `params` now holds it, and the caller shares the slices within the
// worker (line 1 of the next round).
bool diloco_outer_sync(OuterState& s, Comm& comm, float* params, const OuterHyper& h, bool delivered,
                       int n_delivered, bool keep_local);

// Eager updates (Kale, Douillard, Donchev 2025): the exchange of round t's outer gradients overlaps
// the whole next round. A replica does not wait for the average; it steps with
//   delta~_m(t) = (1/M) [ delta_m(t) + sum_{m' != m} delta_m'(t-1) ]
// its own fresh outer gradient and the others' from the previous round, which have arrived by
// then. In round 1, with no previous round, its own gradient stands in for the others' (so the
// step is delta_m(1)). Replicas may then differ slightly; the last round waits for the fresh
// average and then averages the replicas' copies of theta, so that every run ends on one global
// model. With M = 1 this is DiLoCo.
struct EagerState {
    std::vector<float> send;     // delta_m(t), slice
    std::vector<float> recv[2];  // M x slice: the round in flight, and the previous one
    int current = 0;             // recv[current] is being filled
    Comm::Request request;
    bool in_flight = false;
};

// As diloco_outer_sync, eagerly; the replica always takes the result into its slice of `params`.
void diloco_eager_sync(OuterState& s, EagerState& e, Comm& comm, float* params, const OuterHyper& h, bool last);

// The eager paper's baseline, the naive one-round delay (--delayed): the exchange of round t's
// outer gradients overlaps round t+1 as in eager updates, but every replica applies the previous
// round's average alone, with no local proxy:
//   theta(t) = OuterOpt(theta(t-1), Delta(t-1)),   Delta(t-1) = (1/M) sum_m Delta_m(t-1)
// In round 1 nothing has arrived and theta(1) = theta(0): the replicas start round 2 from theta(0)
// again. Replicas stay identical. The last round waits for its own average and applies both the
// previous one and it (two outer steps), so that no round's work is lost.
void diloco_delayed_sync(OuterState& s, EagerState& e, Comm& comm, float* params, const OuterHyper& h, bool last);

// Whether replica m delivers its outer gradient in outer round `round`, with drop probability p.
// A function of (seed, round, m) alone, so every rank computes the same answer.
bool replica_delivers(uint64_t seed, long round, int m, double p);

// " M=4 H=50 outer nesterov lr 0.7 mom 0.9": the outer loop's settings for a run's header line.
std::string outer_description(const TrainOptions& o, int M);

}  // namespace diloco
