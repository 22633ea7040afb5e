#include "optim/streaming.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "data/io.h"
#include "kernels/common.h"
#include "optim/diloco.h"

namespace diloco {

std::vector<Fragment> make_fragments(const GPT& m, int P, bool strided, long H) {
    const int L = m.config.n_layer;
    DILOCO_CHECK(P >= 1 && P <= L, "--fragments must be between 1 and n_layer (" + std::to_string(L) + "), got " +
                                       std::to_string(P));
    std::vector<Fragment> frags(P);
    auto fragment_of_block = [&](int l) { return strided ? l % P : (int)((long)l * P / L); };
    for (const auto& t : m.tensors) {
        const int home = t.block >= 0 ? fragment_of_block(t.block)
                                      : (t.name == "wte" || t.name == "wpe" ? fragment_of_block(0) : fragment_of_block(L - 1));
        auto& r = frags[home].ranges;
        if (!r.empty() && r.back().begin + r.back().count == t.offset)
            r.back().count += t.numel();  // merge neighbours
        else
            r.push_back({t.offset, t.numel()});
        frags[home].count += t.numel();
    }
    for (int p = 0; p < P; p++) frags[p].offset = std::lround((double)p * H / P);
    return frags;
}

Streaming::Streaming(const StreamingOptions& opt, Comm& comm, const GPT& model, std::string description)
    : opt_(opt), comm_(comm), description_(std::move(description)), M_(comm.workers()), G_(comm.ranks_per_worker()), me_(comm.worker()) {
    DILOCO_CHECK(opt.tau >= 0 && opt.tau < opt.H, "--overlap must be in [0, H), got " + std::to_string(opt.tau));
    DILOCO_CHECK(opt.alpha >= 0 && opt.alpha <= 1, "--alpha must be in [0, 1]");
    frags_ = make_fragments(model, opt.fragments, opt.strided, opt.H);
    st_.resize(frags_.size());
    for (size_t p = 0; p < frags_.size(); p++) {
        State& s = st_[p];
        s.mine = slice_of(frags_[p].count, G_, comm.local());
        s.global.resize(s.mine.count);
        gather((int)p, model.params.data(), s.global.data(), s.mine.begin, s.mine.count);
        s.momentum.assign(s.mine.count, 0.0f);
        s.delta.resize(s.mine.count);
        s.sum.assign(s.mine.count, 0.0f);
        if (opt.eager) s.own.assign(s.mine.count, 0.0f);
        s.packed.resize(G_ > 1 ? frags_[p].count : 0);
        s.exchange = std::make_unique<OuterExchange>(comm, s.mine.count, opt.quant, opt.quant_block, opt.exchange);
    }
}

void Streaming::gather(int p, const float* params, float* out, size_t lo, size_t n) const {
    size_t k = 0;  // packed index of the current range's start
    for (const Slice& r : frags_[p].ranges) {
        const size_t a = std::max(lo, k), b = std::min(lo + n, k + r.count);
        for (size_t i = a; i < b; i++) out[i - lo] = params[r.begin + (i - k)];
        k += r.count;
    }
}

void Streaming::scatter(int p, float* params, const float* in, size_t lo, size_t n) const {
    size_t k = 0;
    for (const Slice& r : frags_[p].ranges) {
        const size_t a = std::max(lo, k), b = std::min(lo + n, k + r.count);
        for (size_t i = a; i < b; i++) params[r.begin + (i - k)] = in[i - lo];
        k += r.count;
    }
}

// Sends this replica's outer gradient for its part of fragment p (zero if it misses the round).
void Streaming::start(int p, const float* outer_gradient, long step, bool last) {
    State& s = st_[p];
    // drop-out draws per (fragment, round); the last sync always delivers, so runs end on one model
    const long round = (long)frags_.size() * ((step - frags_[p].offset) / opt_.H) + p;
    s.n_delivered = 0;
    for (int m = 0; m < M_; m++) s.n_delivered += last || replica_delivers(opt_.seed, round, m, opt_.drop_prob);
    s.delivered = last || replica_delivers(opt_.seed, round, me_, opt_.drop_prob);
    const std::vector<float> zeros(s.delivered ? 0 : s.mine.count, 0.0f);
    s.exchange->start(s.delivered ? outer_gradient : zeros.data());
    s.pending = true;
    s.received = false;
    s.started = step;
}

// Waits for fragment p's exchange and forms the fp32 sum of the replicas' outer gradients.
void Streaming::complete(int p) {
    State& s = st_[p];
    if (!s.pending || s.received) return;
    s.exchange->finish(s.sum.data());
    s.received = true;
}

// Fragment p of the replica's weights on the host, brought up to date from the device.
float* Streaming::fetch_fragment(ReplicaWeights& w, int p) const {
    for (const Slice& r : frags_[p].ranges) w.fetch(r);
    return w.host();
}

// Writes `values` (this rank's part of fragment p) into the replica's parameters, and the
// fragment back to the device.
void Streaming::set_fragment(Comm& comm, int p, ReplicaWeights& w, const std::vector<float>& values) {
    State& s = st_[p];
    if (G_ == 1) {
        scatter(p, w.host(), values.data(), s.mine.begin, s.mine.count);
    } else {
        std::copy(values.begin(), values.end(), s.packed.begin() + s.mine.begin);
        comm.allgather_worker(s.packed.data(), s.packed.size());
        scatter(p, w.host(), s.packed.data(), 0, s.packed.size());
    }
    for (const Slice& r : frags_[p].ranges) w.store(r);
}

void Streaming::finish(Comm& comm, int p, ReplicaWeights& w, bool mix) {
    State& s = st_[p];
    complete(p);
    s.pending = s.received = false;
    if (s.n_delivered > 0) {  // nobody delivered: theta~ = theta
        const float inv = 1.0f / s.n_delivered;
        for (size_t i = 0; i < s.mine.count; i++) s.delta[i] = s.sum[i] * inv;
        outer_step(s.global.data(), s.delta.data(), s.momentum.data(), s.mine.count, opt_.outer);
    }
    // --drop-mode replica: a replica that missed the round keeps its own values
    if (opt_.keep_local && (!s.delivered || s.n_delivered == 0)) return;
    // the replica's new fragment: theta~ itself, or mixed with the tau steps of local progress
    std::vector<float>& out = s.delta;  // reuse as the new values of this rank's part
    if (mix) {
        gather(p, fetch_fragment(w, p), out.data(), s.mine.begin, s.mine.count);
        for (size_t i = 0; i < s.mine.count; i++) out[i] = opt_.alpha * out[i] + (1.0f - opt_.alpha) * s.global[i];
    } else {
        std::copy(s.global.begin(), s.global.end(), out.begin());
    }
    set_fragment(comm, p, w, out);
}

// Eager, for fragment p at its sync: step with delta~ = (1/M)[own fresh + others' previous].
void Streaming::eager_sync(Comm& comm, int p, ReplicaWeights& w, long step, bool last) {
    State& s = st_[p];
    const size_t k = s.mine.count;
    std::vector<float> fresh(k);
    gather(p, fetch_fragment(w, p), fresh.data(), s.mine.begin, k);
    for (size_t i = 0; i < k; i++) fresh[i] = s.global[i] - fresh[i];
    const float inv = 1.0f / M_;
    if (last) {  // the fresh average, as in DiLoCo's last round
        complete(p);
        start(p, fresh.data(), step, true);
        complete(p);
        for (size_t i = 0; i < k; i++) s.delta[i] = s.sum[i] * inv;
    } else {
        const bool have_previous = s.pending;
        complete(p);  // the previous round's exchange, started H steps ago
        for (size_t i = 0; i < k; i++) {
            const float others = have_previous ? s.sum[i] - s.own[i] : (M_ - 1) * fresh[i];
            s.delta[i] = (fresh[i] + others) * inv;
        }
        start(p, fresh.data(), step, false);
        // what the others will decode of this replica's gradient, to subtract from next round's sum
        // (with reduce-scatter the sum is rounded once more, so the difference is the others' part
        // up to that rounding)
        s.exchange->decode_own(s.own.data(), fresh.data());
    }
    outer_step(s.global.data(), s.delta.data(), s.momentum.data(), k, opt_.outer);
    if (last) {  // the replicas' copies of theta drifted apart: end on their mean
        s.pending = s.received = false;
        comm.sum_across_workers(s.global.data(), k);
        for (float& g : s.global) g *= inv;
    }
    set_fragment(comm, p, w, s.global);
}

// --verify-sync: fragment p's global values (theta~, which a replica takes as is or mixes with its
// local progress) are the same on every worker: the ranks holding the same slice of it compare
// CRC32s. Every rank sees every checksum, so all of them fail together.
void Streaming::verify_fragment(int p, long step) {
    const State& s = st_[p];
    const uint64_t crc = crc32_update(0, s.global.data(), 4 * s.global.size());
    const std::vector<uint64_t> all = comm_.allgather_u64(((uint64_t)comm_.local() << 32) | crc);
    for (size_t r = 0; r < all.size(); r++)
        for (size_t q = 0; q < r; q++)
            if (all[r] >> 32 == all[q] >> 32 && all[r] != all[q])
                throw CollectiveError("after the sync of fragment " + std::to_string(p) + " at step " + std::to_string(step) +
                                      ", ranks " + std::to_string(q) + " and " + std::to_string(r) +
                                      " hold different global values of it");
}

void Streaming::after_inner_step(ReplicaWeights& weights, const StepEnd& at) {
    Comm& comm = comm_;
    const long step = at.step;
    const bool last = at.run_ends;
    for (size_t p = 0; p < frags_.size(); p++) {
        State& s = st_[p];
        const bool due = step >= frags_[p].offset && (step - frags_[p].offset) % opt_.H == 0 && step > 0;
        bool synced = false;
        if (opt_.eager) {
            // eager copies of theta~ drift apart (each replica steps with its own fresh gradient)
            // until the last sync ends them on their mean
            if (due || last) eager_sync(comm, (int)p, weights, step, last);
            synced = last;
        } else {
            if (s.pending && (last || step - s.started >= opt_.tau)) {
                finish(comm, (int)p, weights, step > s.started);
                synced = true;
            }
            if (due || last) {
                // outer gradient: old global minus new local (start() copies or encodes it at once)
                gather((int)p, fetch_fragment(weights, (int)p), s.delta.data(), s.mine.begin, s.mine.count);
                for (size_t i = 0; i < s.mine.count; i++) s.delta[i] = s.global[i] - s.delta[i];
                start((int)p, s.delta.data(), step, last);
                if (opt_.tau == 0 || last) {
                    finish(comm, (int)p, weights, false);
                    synced = true;
                }
            }
        }
        if (opt_.verify_sync && synced) verify_fragment((int)p, step);
        if (s.pending && !s.received) s.exchange->progress();  // progress while compute goes on
    }
}

std::vector<std::vector<float>> Streaming::save_state() {
    std::vector<std::vector<float>> out;
    for (size_t p = 0; p < frags_.size(); p++) {
        State& s = st_[p];
        complete((int)p);
        // step numbers split in 16-bit halves: exact in floats
        const std::vector<float> meta = {(float)s.pending, (float)(s.started >> 16), (float)(s.started & 0xFFFF),
                                         (float)s.delivered, (float)s.n_delivered};
        out.push_back(s.global);
        out.push_back(s.momentum);
        out.push_back(s.sum);
        out.push_back(s.own);
        out.push_back(meta);
    }
    return out;
}

void Streaming::load_state(std::vector<std::vector<float>> a, long /*step: any; the state holds every round*/) {
    DILOCO_CHECK(a.size() == 5 * frags_.size(), "its streaming state has " + std::to_string(a.size()) +
                                                    " arrays, this run needs " + std::to_string(5 * frags_.size()) +
                                                    " (different --fragments?)");
    for (size_t p = 0; p < frags_.size(); p++) {
        State& s = st_[p];
        auto* f = &a[5 * p];
        DILOCO_CHECK(f[0].size() == s.mine.count && f[1].size() == s.mine.count && f[2].size() == s.mine.count &&
                         f[3].size() == s.own.size() && f[4].size() == 5,
                     "its streaming state was written with another rank layout or options");
        s.global = std::move(f[0]);
        s.momentum = std::move(f[1]);
        s.sum = std::move(f[2]);
        s.own = std::move(f[3]);
        s.pending = s.received = f[4][0] != 0.0f;
        s.started = ((long)f[4][1] << 16) | (long)f[4][2];
        s.delivered = f[4][3] != 0.0f;
        s.n_delivered = (int)f[4][4];
        DILOCO_CHECK(s.n_delivered >= 0 && s.n_delivered <= M_, "its streaming state is damaged");
    }
}

std::string Streaming::resize_refusal() const {
    if (opt_.eager) return "with --eager a fragment's outer gradients are in flight at every checkpoint, one per worker; resume with the layout it was written with";
    return "";
}

void Streaming::load_resized(const std::vector<std::vector<std::vector<float>>>& old, int old_workers, long,
                             float* params) {
    for (const auto& arrays : old)
        DILOCO_CHECK(arrays.size() == 5 * frags_.size(), "its streaming state has " + std::to_string(arrays.size()) +
                                                             " arrays, this run needs " +
                                                             std::to_string(5 * frags_.size()) + " (different --fragments?)");
    for (size_t p = 0; p < frags_.size(); p++) {
        std::vector<float> global, momentum, sum;
        const std::vector<float>& meta = old[0][5 * p + 4];
        DILOCO_CHECK(meta.size() == 5, "its streaming state is damaged");
        const bool pending = meta[0] != 0.0f;
        const int n_delivered = (int)meta[4];
        DILOCO_CHECK(n_delivered >= 0 && n_delivered <= old_workers, "its streaming state is damaged");
        for (const auto& arrays : old) {
            const auto* f = &arrays[5 * p];
            DILOCO_CHECK(f[1].size() == f[0].size() && f[2].size() == f[0].size(), "its streaming state is damaged");
            global.insert(global.end(), f[0].begin(), f[0].end());
            momentum.insert(momentum.end(), f[1].begin(), f[1].end());
            sum.insert(sum.end(), f[2].begin(), f[2].end());
        }
        DILOCO_CHECK(global.size() == frags_[p].count, "its fragment " + std::to_string(p) + " holds " +
                                                           std::to_string(global.size()) + " values, this model's " +
                                                           std::to_string(frags_[p].count));
        // the outer step the old run would have taken tau steps later (finish()), on the whole fragment
        if (pending && n_delivered > 0) {
            const float inv = 1.0f / n_delivered;
            for (float& x : sum) x *= inv;
            outer_step(global.data(), sum.data(), momentum.data(), global.size(), opt_.outer);
        }
        State& s = st_[p];
        s.global.assign(global.begin() + s.mine.begin, global.begin() + s.mine.begin + s.mine.count);
        s.momentum.assign(momentum.begin() + s.mine.begin, momentum.begin() + s.mine.begin + s.mine.count);
        std::fill(s.sum.begin(), s.sum.end(), 0.0f);
        s.pending = s.received = false;
        s.delivered = true;
        s.n_delivered = M_;
        scatter((int)p, params, global.data(), 0, global.size());
    }
}

namespace {

// (the streaming options themselves are checked for every run, in optim/train.cpp)
void check(const TrainOptions& o) {
    DILOCO_CHECK(!o.delayed, "--delayed applies to --algo diloco");
    refuse_async_options(o);
    refuse_dipaco_options(o);
    refuse_worker_loss_survival(o, "Streaming DiLoCo's non-blocking fragment exchanges");
}

std::unique_ptr<TrainingAlgorithm> create(const TrainOptions& o, Comm& comm, const GPT& model) {
    StreamingOptions so;
    so.fragments = o.fragments;
    so.strided = o.fragment_pattern == "strided";
    so.H = o.inner_steps;
    so.tau = o.overlap;
    so.alpha = o.alpha;
    so.quant = parse_quant_format(o.quant);
    so.quant_block = o.quant_block;
    so.exchange = parse_exchange(o.exchange);
    so.outer = OuterHyper{o.outer_lr, o.outer_momentum, o.outer_opt == "nesterov"};
    so.eager = o.eager;
    so.drop_prob = o.drop_prob;
    so.keep_local = o.drop_mode == "replica";
    so.seed = o.seed;
    so.verify_sync = o.verify_sync;
    char buf[160];
    std::snprintf(buf, sizeof buf, " P=%d %s tau=%ld alpha=%.2g %s", o.fragments, o.fragment_pattern.c_str(),
                  o.overlap, o.alpha, o.quant.c_str());
    std::string text = outer_description(o, comm.workers()) + buf;
    if (quant_has_blocks(so.quant)) text += " block " + std::to_string(so.quant_block);
    if (so.quant != QuantFormat::fp32) text += std::string(" by ") + exchange_name(so.exchange);
    return std::make_unique<Streaming>(so, comm, model, text);
}

}  // namespace

const AlgorithmEntry streaming_algorithm{"streaming", check, create};


}  // namespace diloco
