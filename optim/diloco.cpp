#include "optim/diloco.h"

#include <algorithm>

#include "kernels/rng.h"

namespace diloco {

void outer_init(OuterState& s, const Comm& comm, const float* params, size_t n) {
    s.slice = slice_of(n, comm.ranks_per_worker(), comm.local());
    s.global.assign(params + s.slice.begin, params + s.slice.begin + s.slice.count);
    s.momentum.assign(s.slice.count, 0.0f);
    s.delta.assign(s.slice.count, 0.0f);
}

void diloco_outer_sync(OuterState& s, Comm& comm, float* params, size_t n, const OuterHyper& h,
                       bool delivered, int n_delivered) {
    const float* theta_m = params + s.slice.begin;
    // 3: outer gradient of this replica, old minus new (zero if it does not deliver)
    for (size_t i = 0; i < s.slice.count; i++) s.delta[i] = delivered ? s.global[i] - theta_m[i] : 0.0f;
    // 4: average over the replicas that delivered
    comm.sum_across_workers(s.delta.data(), s.slice.count);
    if (n_delivered == 0) return;  // nobody delivered: theta stays theta(t-1)
    const float inv = 1.0f / n_delivered;
    for (float& d : s.delta) d *= inv;
    // 5: the outer optimizer step on theta(t-1)
    outer_step(s.global.data(), s.delta.data(), s.momentum.data(), s.slice.count, h);
    // 1 of the next round: every delivering replica starts from theta(t)
    if (!delivered) return;
    std::copy(s.global.begin(), s.global.end(), params + s.slice.begin);
    comm.allgather_worker(params, n);
}

void diloco_eager_sync(OuterState& s, EagerState& e, Comm& comm, float* params, size_t n, const OuterHyper& h,
                       bool last) {
    const size_t k = s.slice.count;
    const int M = comm.workers(), me = comm.worker();
    if (e.send.size() != k) {
        e.send.resize(k);
        e.recv[0].assign((size_t)M * k, 0.0f);
        e.recv[1].assign((size_t)M * k, 0.0f);
    }
    // this round's outer gradient, old minus new
    const float* theta_m = params + s.slice.begin;
    for (size_t i = 0; i < k; i++) e.send[i] = s.global[i] - theta_m[i];
    const bool have_previous = e.in_flight;
    if (e.in_flight) comm.wait(e.request);  // round t-1's gradients, sent a round ago
    const int previous = e.current;
    e.current ^= 1;
    e.request = comm.iallgather_across_workers(e.send.data(), 4 * k, e.recv[e.current].data());
    e.in_flight = true;
    const float inv = 1.0f / M;
    if (last) {  // the fresh average for the last step
        comm.wait(e.request);
        e.in_flight = false;
        for (size_t i = 0; i < k; i++) {
            float sum = 0.0f;
            for (int m = 0; m < M; m++) sum += e.recv[e.current][(size_t)m * k + i];
            s.delta[i] = sum * inv;
        }
    } else {
        for (size_t i = 0; i < k; i++) {
            float sum = e.send[i];  // own, fresh
            for (int m = 0; m < M; m++)
                if (m != me) sum += have_previous ? e.recv[previous][(size_t)m * k + i] : e.send[i];
            s.delta[i] = sum * inv;
        }
    }
    outer_step(s.global.data(), s.delta.data(), s.momentum.data(), k, h);
    if (last) {  // the replicas' copies of theta drifted apart: end on their mean
        comm.sum_across_workers(s.global.data(), k);
        for (float& g : s.global) g *= inv;
    }
    std::copy(s.global.begin(), s.global.end(), params + s.slice.begin);
    comm.allgather_worker(params, n);
}

bool replica_delivers(uint64_t seed, long round, int m, double p) {
    if (p <= 0.0) return true;
    Rng rng(seed * 0x9E3779B97F4A7C15ull ^ ((uint64_t)round << 20) ^ (uint64_t)m ^ 0xD209ull);
    return rng.uniform() >= p;
}

}  // namespace diloco
