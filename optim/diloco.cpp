#include "optim/diloco.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "data/io.h"
#include "kernels/common.h"
#include "kernels/rng.h"
#include "model/llmc.h"
#include "optim/algorithm.h"

namespace diloco {

void outer_init(OuterState& s, const Comm& comm, const float* params, size_t n) {
    s.slice = slice_of(n, comm.ranks_per_worker(), comm.local());
    s.global.assign(params + s.slice.begin, params + s.slice.begin + s.slice.count);
    s.momentum.assign(s.slice.count, 0.0f);
    s.delta.assign(s.slice.count, 0.0f);
}

bool diloco_outer_sync(OuterState& s, Comm& comm, float* params, const OuterHyper& h, bool delivered,
                       int n_delivered, bool keep_local) {
    const float* theta_m = params + s.slice.begin;
    // 3: outer gradient of this replica, old minus new (zero if it does not deliver)
    for (size_t i = 0; i < s.slice.count; i++) s.delta[i] = delivered ? s.global[i] - theta_m[i] : 0.0f;
    // 4: average over the replicas that delivered
    const int losses = comm.losses();
    comm.sum_across_workers(s.delta.data(), s.slice.count);
    if (comm.losses() != losses) {  // a worker was lost in the sync (--on-worker-loss continue): the
        float d = delivered ? 1.0f : 0.0f;  // sum is the survivors', so count them again
        comm.sum_across_workers(&d, 1);
        n_delivered = (int)d;
    }
    if (n_delivered > 0) {  // nobody delivered: theta(t) = theta(t-1)
        const float inv = 1.0f / n_delivered;
        for (float& d : s.delta) d *= inv;
        // 5: the outer optimizer step on theta(t-1)
        outer_step(s.global.data(), s.delta.data(), s.momentum.data(), s.slice.count, h);
    }
    // 1 of the next round: the replicas start from theta(t), unless one that missed keeps its own
    if (keep_local && (!delivered || n_delivered == 0)) return false;
    std::copy(s.global.begin(), s.global.end(), params + s.slice.begin);
    return true;
}

void diloco_eager_sync(OuterState& s, EagerState& e, Comm& comm, float* params, const OuterHyper& h, bool last) {
    const size_t k = s.slice.count;
    const int M = comm.workers(), me = comm.worker();
    if (e.send.size() != k) {
        e.send.resize(k);
        e.recv[0].assign((size_t)M * k, 0.0f);
        e.recv[1].assign((size_t)M * k, 0.0f);
    }
    // round t-1's gradients, sent a round ago: received, and e.send free again, only after this
    const bool have_previous = e.in_flight;
    if (e.in_flight) comm.wait(e.request);
    // this round's outer gradient, old minus new
    const float* theta_m = params + s.slice.begin;
    for (size_t i = 0; i < k; i++) e.send[i] = s.global[i] - theta_m[i];
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
}

void diloco_delayed_sync(OuterState& s, EagerState& e, Comm& comm, float* params, const OuterHyper& h, bool last) {
    const size_t k = s.slice.count;
    const int M = comm.workers();
    if (e.send.size() != k) {
        e.send.resize(k);
        e.recv[0].assign((size_t)M * k, 0.0f);
        e.recv[1].assign((size_t)M * k, 0.0f);
    }
    const bool have_previous = e.in_flight;
    if (e.in_flight) comm.wait(e.request);  // round t-1's outer gradients; e.send is free again
    const float* theta_m = params + s.slice.begin;
    for (size_t i = 0; i < k; i++) e.send[i] = s.global[i] - theta_m[i];  // Delta_m(t), old minus new
    const int previous = e.current;
    e.current ^= 1;
    e.request = comm.iallgather_across_workers(e.send.data(), 4 * k, e.recv[e.current].data());
    e.in_flight = true;
    const float inv = 1.0f / M;
    auto step_with_mean_of = [&](const std::vector<float>& all) {
        for (size_t i = 0; i < k; i++) {
            float sum = 0.0f;
            for (int m = 0; m < M; m++) sum += all[(size_t)m * k + i];
            s.delta[i] = sum * inv;
        }
        outer_step(s.global.data(), s.delta.data(), s.momentum.data(), k, h);
    };
    if (have_previous) step_with_mean_of(e.recv[previous]);  // theta(t) = OuterOpt(theta(t-1), Delta(t-1))
    if (last) {  // the last round's own average too
        comm.wait(e.request);
        e.in_flight = false;
        step_with_mean_of(e.recv[e.current]);
    }
    std::copy(s.global.begin(), s.global.end(), params + s.slice.begin);
}

bool replica_delivers(uint64_t seed, long round, int m, double p) {
    if (p <= 0.0) return true;
    Rng rng(seed * 0x9E3779B97F4A7C15ull ^ ((uint64_t)round << 20) ^ (uint64_t)m ^ 0xD209ull);
    return rng.uniform() >= p;
}

std::string outer_description(const TrainOptions& o, int M) {
    char buf[160];
    std::snprintf(buf, sizeof buf, " M=%d H=%ld outer %s lr %.2g mom %.2g", M, o.inner_steps, o.outer_opt.c_str(),
                  o.outer_lr, o.outer_momentum);
    return buf;
}

namespace {

// DiLoCo as a training algorithm: the inner steps run in the loop; at the end of every round of
// H steps, lines 3-5 above (or their eager form), with the drop-out draw, the optional replica
// dump before the sync and the optional check after it.
class DiLoCo final : public TrainingAlgorithm {
public:
    DiLoCo(const TrainOptions& o, Comm& comm, const GPT& model)
        : o_(o), comm_(comm), hyper_{o.outer_lr, o.outer_momentum, o.outer_opt == "nesterov"},
          keep_local_(o.drop_mode == "replica"), params_count_(model.num_params) {
        outer_init(outer_, comm, model.params.data(), model.num_params);  // 1: theta(0)
        if (o.dump_replicas) initial_ = model.params;  // written if the first round is round 1
    }
    std::string describe() const override { return outer_description(o_, comm_.workers()); }
    bool replica_per_worker() const override { return true; }
    long steps_per_round() const override { return o_.inner_steps; }

    void after_inner_step(ReplicaWeights& w, const StepEnd& at) override {
        if (!at.round_ends) return;
        // the last round always delivers, so that every run ends on the global model
        const long round = (at.step + o_.inner_steps - 1) / o_.inner_steps;
        int n_delivered = 0;
        for (int m = 0; m < comm_.workers(); m++)
            n_delivered += at.run_ends || replica_delivers(o_.seed, round, m, o_.drop_prob);
        const bool delivered = at.run_ends || replica_delivers(o_.seed, round, comm_.worker(), o_.drop_prob);
        // only this rank's slice crosses from the device, unless the whole replica is written out
        float* params = o_.dump_replicas ? w.fetch() : w.fetch(outer_.slice);
        const bool dump = o_.dump_replicas && comm_.local() == 0;
        if (dump && !initial_.empty()) {  // theta(0), for a reference to start from
            if (round == 1) dump_replica(0, ".synced", w.model(), initial_.data());
            initial_.clear();
        }
        if (dump) dump_replica(at.step, "", w.model(), params);
        bool takes_theta = true;
        if (o_.eager)
            diloco_eager_sync(outer_, eager_, comm_, params, hyper_, at.run_ends);
        else if (o_.delayed)
            diloco_delayed_sync(outer_, eager_, comm_, params, hyper_, at.run_ends);
        else
            takes_theta = diloco_outer_sync(outer_, comm_, params, hyper_, delivered, n_delivered, keep_local_);
        if (takes_theta) {  // 1: the replica starts the next round from theta(t), every slice of it
            w.store(outer_.slice);
            w.share_slices_in_worker();
        }
        if (dump) dump_replica(at.step, ".synced", w.model(), w.fetch());
        // eager replicas may differ until the end, and with --drop-mode replica those that missed
        if (o_.verify_sync && (!o_.eager || at.run_ends)) {
            const bool synced = !keep_local_ || (delivered && n_delivered > 0);
            verify_replicas_agree(at.step, synced ? crc32_update(0, w.fetch(), 4 * w.count()) : 0);
        }
    }

    // theta(t-1) and the momentum of this rank's slice; eager adds the exchange in flight,
    // completed first (its data is the state), and whether there was one
    std::vector<std::vector<float>> save_state() override {
        std::vector<std::vector<float>> arrays = {outer_.global, outer_.momentum};
        if (o_.eager || o_.delayed) {
            if (eager_.in_flight) comm_.wait(eager_.request);
            arrays.push_back(eager_.recv[eager_.current]);
            arrays.push_back({eager_.in_flight ? 1.0f : 0.0f});
        }
        return arrays;
    }

    void load_state(std::vector<std::vector<float>> a, long step) override {
        const size_t k = outer_.slice.count;
        DILOCO_CHECK(step % o_.inner_steps == 0 || step == o_.steps,
                     "step " + std::to_string(step) + " is not at an outer sync");
        const bool overlapped = o_.eager || o_.delayed;
        DILOCO_CHECK(a.size() == (overlapped ? 4u : 2u),
                     "it holds no DiLoCo outer state (or was written with another --eager or --delayed)");
        DILOCO_CHECK(a[0].size() == k && a[1].size() == k, "its outer state was written with another rank layout");
        outer_.global = std::move(a[0]);
        outer_.momentum = std::move(a[1]);
        if (!overlapped) return;
        const size_t M = comm_.workers();
        DILOCO_CHECK(a[2].size() == M * k && a[3].size() == 1, "its eager state was written with another rank layout");
        eager_.send.assign(k, 0.0f);
        eager_.recv[0] = std::move(a[2]);
        eager_.recv[1].assign(M * k, 0.0f);
        eager_.current = 0;
        eager_.in_flight = a[3][0] != 0.0f;
    }

    // Eager and delayed rounds hold the other replicas' outer gradients of the round in flight,
    // one per old worker: there is no state to give a new worker.
    std::string resize_refusal() const override {
        if (o_.eager || o_.delayed) return "with --eager or --delayed a round's outer gradients are in flight at every checkpoint, one per worker; resume with the layout it was written with";
        return "";
    }

    // theta and the outer momentum are the same on every worker: worker 0's G_old slices, joined
    // and cut again at this rank's slice of the new G.
    void load_resized(const std::vector<std::vector<std::vector<float>>>& old, int, long step, float* params) override {
        DILOCO_CHECK(step % o_.inner_steps == 0 || step == o_.steps,
                     "step " + std::to_string(step) + " is not at an outer sync");
        std::vector<float> global, momentum;
        for (size_t g = 0; g < old.size(); g++) {
            DILOCO_CHECK(old[g].size() == 2, "it holds no DiLoCo outer state (or was written with --eager or --delayed)");
            DILOCO_CHECK(old[g][0].size() == old[g][1].size(), "its outer state is damaged");
            global.insert(global.end(), old[g][0].begin(), old[g][0].end());
            momentum.insert(momentum.end(), old[g][1].begin(), old[g][1].end());
        }
        DILOCO_CHECK(global.size() == params_count_, "its outer state holds " + std::to_string(global.size()) +
                                                         " parameters, the model " + std::to_string(params_count_));
        const Slice& s = outer_.slice;
        outer_.global.assign(global.begin() + s.begin, global.begin() + s.begin + s.count);
        outer_.momentum.assign(momentum.begin() + s.begin, momentum.begin() + s.begin + s.count);
        std::copy(global.begin(), global.end(), params);
    }

private:
    // RUNDIR/replicas/step_NNNNNNNN.replica_MMM{suffix}.bin: before the sync (no suffix) and after
    void dump_replica(long step, const char* suffix, const GPT& model, const float* params) const {
        char name[80];
        std::snprintf(name, sizeof name, "step_%08lld.replica_%03d%s.bin", (long long)step, comm_.worker(), suffix);
        std::filesystem::create_directories(o_.out + "/replicas");
        write_llmc(o_.out + "/replicas/" + name, model, params);
    }

    // Every replica that delivered this round holds the same weights (crc 0: did not deliver).
    void verify_replicas_agree(long step, uint64_t crc) {
        const std::vector<uint64_t> all = comm_.allgather_u64(crc);
        for (size_t r = 0; r < all.size(); r++)
            if (all[r] != 0 && crc != 0 && all[r] != crc)
                throw CollectiveError("after the outer sync of step " + std::to_string(step) + ", rank " +
                                      std::to_string(r) + " holds different weights");
    }

    const TrainOptions o_;
    Comm& comm_;
    const OuterHyper hyper_;
    const bool keep_local_;      // --drop-mode replica
    const size_t params_count_;
    OuterState outer_;
    EagerState eager_;           // --eager and --delayed: the exchange in flight
    std::vector<float> initial_;  // --dump-replicas: theta(0) until round 1 has dumped it
};

void check(const TrainOptions& o) {
    DILOCO_CHECK(!(o.delayed && o.eager), "--delayed and --eager are two ways to overlap a round: choose one");
    DILOCO_CHECK(!(o.delayed && o.drop_prob > 0), "--delayed and --drop-prob do not combine");
    if (o.eager || o.delayed) refuse_worker_loss_survival(o, "the exchanges in flight of --eager and --delayed");
    refuse_async_options(o);
    refuse_dipaco_options(o);
}

std::unique_ptr<TrainingAlgorithm> create(const TrainOptions& o, Comm& comm, const GPT& model) {
    return std::make_unique<DiLoCo>(o, comm, model);
}

}  // namespace

const AlgorithmEntry diloco_algorithm{"diloco", check, create};

}  // namespace diloco
