#include "optim/dipaco.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "data/dataset.h"
#include "data/io.h"
#include "data/routing.h"
#include "kernels/common.h"
#include "model/llmc.h"
#include "optim/algorithm.h"
#include "optim/diloco.h"
#include "optim/outer.h"

namespace diloco {

PathLayout path_layout(const GPT& m, int levels) {
    const int n = m.config.n_layer;
    DILOCO_CHECK(levels >= 1 && n % levels == 0, "--levels " + std::to_string(levels) + " does not divide the model's " +
                                                     std::to_string(n) + " blocks");
    // a block's tensors are contiguous and blocks follow each other; a block ends where the next
    // begins, the last where the final LayerNorm begins
    auto block_begin = [&](int b) { return b < n ? m.blocks[b].ln1w : m.lnfw; };
    PathLayout p;
    p.shared = {{0, block_begin(0)}, {m.lnfw, m.num_params - m.lnfw}};
    for (int l = 0; l < levels; l++) {
        const size_t b = block_begin(l * n / levels), e = block_begin((l + 1) * n / levels);
        p.level.push_back({b, e - b});
    }
    return p;
}

int num_modules(int levels, int modules) { return 1 + levels * modules; }

std::vector<int> path_modules(int path, int levels, int modules) {
    std::vector<int> out{0};
    for (int l = 0; l < levels; l++) out.push_back(1 + l * modules + module_of_path(path, l, levels, modules));
    return out;
}

std::vector<Slice> module_ranges(const PathLayout& layout, int module, int modules) {
    if (module == 0) return layout.shared;
    return {layout.level.at((module - 1) / modules)};
}

std::vector<TokenRange> routed_spans(const std::vector<uint16_t>& routes, const std::vector<TokenRange>& docs, int path) {
    DILOCO_CHECK(routes.size() == docs.size(), "the routes do not match the documents");
    std::vector<TokenRange> out;
    for (size_t d = 0; d < docs.size(); d++)
        if (routes[d] == path) out.push_back(docs[d]);
    return out;
}

std::vector<std::vector<int>> assign_paths(const std::vector<double>& share, int M) {
    const int P = (int)share.size();
    for (int p = 0; p < P; p++)
        DILOCO_CHECK(share[p] > 0, "path " + std::to_string(p) + " has no training documents: route to fewer paths");
    std::vector<std::vector<int>> paths_of(M);
    if (M < P) {  // consecutive blocks of paths, their sizes differing by at most one
        for (int m = 0; m < M; m++) {
            const Slice s = slice_of((size_t)P, M, m);
            for (size_t p = s.begin; p < s.begin + s.count; p++) paths_of[m].push_back((int)p);
        }
        return paths_of;
    }
    std::vector<int> count(P, 1);
    for (int extra = P; extra < M; extra++) {
        int best = 0;
        for (int p = 1; p < P; p++)
            if (share[p] / count[p] > share[best] / count[best]) best = p;
        count[best]++;
    }
    int m = 0;  // a path's workers are consecutive
    for (int p = 0; p < P; p++)
        for (int c = 0; c < count[p]; c++) paths_of[m++] = {p};
    return paths_of;
}

MemberScale member_scale(const std::vector<double>& w, double mine) {
    if (std::all_of(w.begin(), w.end(), [&](double x) { return x == w[0]; })) return {1.0f, 1.0f / (float)w.size()};
    double sum = 0.0;
    for (double x : w) sum += x;
    return {(float)(mine / sum), 1.0f};
}

std::vector<float> module_mean(const std::vector<std::vector<float>>& deltas, const std::vector<double>& weights) {
    std::vector<float> sum(deltas.at(0).size(), 0.0f);
    for (size_t m = 0; m < deltas.size(); m++) {
        const MemberScale s = member_scale(weights, weights[m]);
        for (size_t i = 0; i < sum.size(); i++) sum[i] += deltas[m][i] * s.pre;
    }
    const float post = member_scale(weights, weights[0]).post;
    for (float& x : sum) x *= post;
    return sum;
}

std::pair<int, int> first_module_disagreement(const std::vector<uint64_t>& entries) {
    for (size_t a = 0; a < entries.size(); a++)
        for (size_t b = a + 1; b < entries.size() && entries[a] != 0; b++)
            if (entries[b] != 0 && entries[a] >> 32 == entries[b] >> 32 && entries[a] != entries[b])
                return {(int)a, (int)b};
    return {-1, -1};
}

namespace {

bool holds(int path, int module, int levels, int modules) {
    const std::vector<int> mods = path_modules(path, levels, modules);
    return std::find(mods.begin(), mods.end(), module) != mods.end();
}

// One exchange of one module, as this rank takes part in it.
struct ModuleExchange {
    int module = 0;
    int group = -1;                 // comm group of the workers holding it
    std::vector<Slice> pieces;      // its ranges inside this rank's slice, relative to the slice
    size_t count = 0;               // floats in the pieces
    std::vector<int> lanes;         // this worker's replicas (paths) that hold it
    std::vector<float> pre;         // each one's scale before the sum
    float post = 1.0f;              // the sum's scale after it
    std::vector<int> parts_of;      // how many paths holding it each member worker trains
    uint64_t bytes = 0;             // this rank's across-worker bytes for it so far
};

// DiPaCo as a training algorithm: the inner steps run in the loop on the paths' documents, each
// of this worker's paths in turn (replicas_in_turn()); at the end of every round, steps 1-4 of
// dipaco.h for all of them.
class DiPaCo final : public TrainingAlgorithm {
public:
    DiPaCo(const TrainOptions& o, Comm& comm, const GPT& model)
        : o_(o), comm_(comm), hyper_{o.outer_lr, o.outer_momentum, o.outer_opt == "nesterov"},
          layout_(path_layout(model, o.levels)), P_(num_paths(o.levels, o.modules)) {
        read_routing(model.config.vocab);
        outer_.resize(paths_.size());  // theta(0): every module starts equal
        for (OuterState& s : outer_) outer_init(s, comm, model.params.data(), model.num_params);
        if (o.dump_replicas) initial_ = model.params;
        open_exchanges();
        path_params_ = model.num_params;
        const size_t level_params = layout_.level[0].count;
        all_params_ = model.num_params + (size_t)o.levels * (o.modules - 1) * level_params;
    }

    std::string describe() const override {
        size_t most = 0;
        for (const std::vector<int>& l : paths_of_) most = std::max(most, l.size());
        char buf[240];
        std::snprintf(buf, sizeof buf,
                      " L=%d K=%d: %d paths of %.2fM params over %d modules, %.2fM params in all, %s-weighted;%s",
                      o_.levels, o_.modules, P_, path_params_ / 1e6, num_modules(o_.levels, o_.modules),
                      all_params_ / 1e6, o_.module_weights.c_str(),
                      most > 1 ? (" up to " + std::to_string(most) + " paths per worker, in turn;").c_str() : "");
        return buf + outer_description(o_, comm_.workers());
    }
    bool replica_per_worker() const override { return true; }
    long steps_per_round() const override { return o_.inner_steps; }
    int replicas_in_turn() const override { return (int)paths_.size(); }

    // Path p's documents, split over the workers that train p as DiLoCo splits its data.
    std::optional<DataShare> data_share(int replica) const override {
        DataShare d;
        d.spans = train_spans_.at(replica);
        const std::vector<int> w = workers_of(paths_[replica]);
        d.parts = (int)w.size();
        d.index = (int)(std::find(w.begin(), w.end(), comm_.worker()) - w.begin());
        return d;
    }

    void after_inner_step(ReplicaWeights& w, const StepEnd& at) override {
        if (at.round_ends) after_round({&w}, at);
    }

    void after_round(const std::vector<ReplicaWeights*>& ws, const StepEnd& at) override {
        if (!at.round_ends) return;
        DILOCO_CHECK(ws.size() == paths_.size(), "dipaco: one set of weights per path of this worker");
        const bool dump = o_.dump_replicas && comm_.local() == 0;
        if (dump) dump_before_sync(at.step, ws);
        std::vector<float*> params(ws.size());
        for (size_t k = 0; k < ws.size(); k++) {
            OuterState& s = outer_[k];
            params[k] = ws[k]->fetch(s.slice);
            const float* theta_m = params[k] + s.slice.begin;
            for (size_t i = 0; i < s.slice.count; i++) s.delta[i] = s.global[i] - theta_m[i];  // 1
        }
        for (ModuleExchange& x : exchanges_) sync_module(x);                                  // 2, 3
        for (size_t k = 0; k < ws.size(); k++) {                                               // 4
            const OuterState& s = outer_[k];
            std::copy(s.global.begin(), s.global.end(), params[k] + s.slice.begin);
            ws[k]->store(s.slice);
            ws[k]->share_slices_in_worker();
            if (dump) dump_replica(at.step, base_ + (int)k, ".synced", ws[k]->model(), ws[k]->fetch());
        }
        if (o_.verify_sync) verify_modules(at.step, params);
        if (at.run_ends) finish(ws);
    }

    bool evaluates_itself() const override { return true; }

    // Each path's validation documents, scored by that path (on its first worker's local rank 0),
    // pooled over all the validation rows. Each path's sum crosses the ranks alone (one term and
    // zeros: exact) and the paths add up in path order, so the loss does not depend on which
    // worker trained which path.
    double evaluate(const ValidationLoss& loss_on) override {
        std::vector<double> sum(P_, 0.0), rows(P_, 0.0);
        for (size_t k = 0; k < paths_.size(); k++) {
            if (!evaluator_[k]) continue;
            long n = 0;
            const double mean = loss_on((int)k, val_spans_[k], &n);
            if (n > 0) sum[paths_[k]] = mean * n, rows[paths_[k]] = (double)n;
        }
        double total = 0.0, total_rows = 0.0;
        for (int p = 0; p < P_; p++) total += comm_.sum_world(sum[p]), total_rows += comm_.sum_world(rows[p]);
        return total_rows > 0 ? total / total_rows : NAN;
    }

    // theta(t-1) and the momentum of this rank's slice, for each of the worker's paths in turn
    std::vector<std::vector<float>> save_state() override {
        std::vector<std::vector<float>> a;
        for (const OuterState& s : outer_) a.push_back(s.global), a.push_back(s.momentum);
        return a;
    }

    void load_state(std::vector<std::vector<float>> a, long step) override {
        DILOCO_CHECK(step % o_.inner_steps == 0 || step == o_.steps,
                     "step " + std::to_string(step) + " is not at an outer sync");
        DILOCO_CHECK(a.size() == 2 * outer_.size(), "it holds no DiPaCo outer state for " +
                                                        std::to_string(outer_.size()) + " path(s) on this worker");
        for (size_t k = 0; k < outer_.size(); k++) {
            OuterState& s = outer_[k];
            DILOCO_CHECK(a[2 * k].size() == s.slice.count && a[2 * k + 1].size() == s.slice.count,
                         "its outer state was written with another rank layout");
            s.global = std::move(a[2 * k]);
            s.momentum = std::move(a[2 * k + 1]);
        }
    }

private:
    // The route file, each path's documents and share, and this worker's paths.
    void read_routing(int vocab) {
        const std::vector<TokenRange> train = read_documents(documents_path(o_.data, "train"),
                                                             split_token_count(o_.data, "train", vocab));
        const std::vector<TokenRange> val = read_documents(documents_path(o_.data, "val"),
                                                           split_token_count(o_.data, "val", vocab));
        routes_ = read_routes_for(o_.data, o_.levels, o_.modules, train.size(), val.size());
        share_.assign(P_, 0.0);
        for (size_t d = 0; d < train.size(); d++) share_[routes_.train[d]] += (double)(train[d].end - train[d].begin);
        const double total = (double)train.back().end;
        for (double& s : share_) s /= total;
        paths_of_ = assign_paths(share_, comm_.workers());
        paths_ = paths_of_[comm_.worker()];
        for (int m = 0; m < comm_.worker(); m++) base_ += (int)paths_of_[m].size();
        for (int p : paths_) {
            train_spans_.push_back(routed_spans(routes_.train, train, p));
            val_spans_.push_back(routed_spans(routes_.val, val, p));
            evaluator_.push_back(workers_of(p).front() == comm_.worker() && comm_.local() == 0);
        }
    }

    std::vector<int> workers_of(int path) const {
        std::vector<int> w;
        for (int m = 0; m < (int)paths_of_.size(); m++)
            if (std::find(paths_of_[m].begin(), paths_of_[m].end(), path) != paths_of_[m].end()) w.push_back(m);
        return w;
    }

    // One group per module over the cross communicator, opened by every rank in module order. A
    // member contributes one outer gradient per path of its own holding the module; the members'
    // contributions, worker by worker and path by path, are in path order (assign_paths).
    void open_exchanges() {
        for (int mod = 0; mod < num_modules(o_.levels, o_.modules); mod++) {
            ModuleExchange x;
            for (size_t k = 0; k < paths_.size(); k++)
                if (holds(paths_[k], mod, o_.levels, o_.modules)) x.lanes.push_back((int)k);
            const int group = comm_.open_cross_group(!x.lanes.empty());
            if (x.lanes.empty()) continue;
            x.module = mod;
            x.group = group;
            std::vector<double> weights;
            for (int m = 0; m < (int)paths_of_.size(); m++) {
                int parts = 0;
                for (int p : paths_of_[m])
                    if (holds(p, mod, o_.levels, o_.modules)) weights.push_back(weight_of(p)), parts++;
                if (parts > 0) x.parts_of.push_back(parts);
            }
            for (int k : x.lanes) x.pre.push_back(member_scale(weights, weight_of(paths_[k])).pre);
            x.post = member_scale(weights, weights[0]).post;
            const Slice s = outer_[0].slice;
            for (const Slice& r : module_ranges(layout_, mod, o_.modules)) {
                const size_t b = std::max(r.begin, s.begin), e = std::min(r.begin + r.count, s.begin + s.count);
                if (b < e) x.pieces.push_back({b - s.begin, e - b});
                x.count += b < e ? e - b : 0;
            }
            exchanges_.push_back(x);
        }
    }

    // w = 1 / workers(p), or share(p) / workers(p) with --module-weights share, for each worker of p
    double weight_of(int path) const {
        const double path_weight = o_.module_weights == "uniform" ? 1.0 : share_[path];
        return path_weight / (double)workers_of(path).size();
    }

    // 2 and 3 for one module, on this rank's part of it. With one path the run is DiLoCo and
    // sums as DiLoCo does; with several, in path order whatever the layout
    // (Comm::ordered_sum_in_group), so that a path's numbers do not depend on which worker
    // trains it or beside which others.
    void sync_module(ModuleExchange& x) {
        const size_t n = x.count;
        parts_.resize(x.lanes.size() * n);
        for (size_t j = 0; j < x.lanes.size(); j++) {
            float* to = parts_.data() + j * n;
            for (const Slice& pc : x.pieces)
                for (size_t i = 0; i < pc.count; i++) *to++ = outer_[x.lanes[j]].delta[pc.begin + i] * x.pre[j];
        }
        buffer_.resize(n);
        const uint64_t before = comm_.bytes_outer();
        if (P_ == 1) {
            std::copy(parts_.begin(), parts_.begin() + n, buffer_.begin());
            comm_.sum_in_group(x.group, buffer_.data(), n);
        } else {
            comm_.ordered_sum_in_group(x.group, parts_.data(), x.parts_of, n, buffer_.data());
        }
        x.bytes += comm_.bytes_outer() - before;
        for (float& d : buffer_) d *= x.post;
        for (int k : x.lanes) {  // every path holding the module takes the same step: its copies stay equal
            size_t at = 0;
            for (const Slice& pc : x.pieces) {
                outer_step(outer_[k].global.data() + pc.begin, buffer_.data() + at, outer_[k].momentum.data() + pc.begin,
                           pc.count, hyper_);
                at += pc.count;
            }
        }
    }

    // --verify-sync: after the outer step every copy of a module, on every worker and every path of
    // a worker that holds it, must hold the same values; one exchange of CRCs per module, in module
    // order on every rank (collective), ends the run naming the module and two workers that differ.
    void verify_modules(long step, const std::vector<float*>& params) {
        size_t next = 0;  // exchanges_ holds this rank's modules, in module order
        for (int mod = 0; mod < num_modules(o_.levels, o_.modules); mod++) {
            uint64_t entry = 0;
            if (next < exchanges_.size() && exchanges_[next].module == mod) {
                const ModuleExchange& x = exchanges_[next++];
                uint32_t first = 0;
                for (size_t j = 0; j < x.lanes.size(); j++) {
                    const float* slice = params[x.lanes[j]] + outer_[x.lanes[j]].slice.begin;
                    uint32_t crc = 0;
                    for (const Slice& pc : x.pieces) crc = crc32_update(crc, slice + pc.begin, 4 * pc.count);
                    if (j == 0) first = crc;
                    DILOCO_CHECK(crc == first, "--verify-sync: after the outer sync of step " + std::to_string(step) +
                                                   ", module " + std::to_string(mod) + " differs between paths " +
                                                   std::to_string(paths_[x.lanes[0]]) + " and " +
                                                   std::to_string(paths_[x.lanes[j]]) + " of worker " +
                                                   std::to_string(comm_.worker()));
                }
                entry = (uint64_t)(comm_.local() + 1) << 32 | first;
            }
            const std::vector<uint64_t> all = comm_.allgather_u64(entry);
            const auto [a, b] = first_module_disagreement(all);
            if (a >= 0)
                throw CollectiveError("--verify-sync: after the outer sync of step " + std::to_string(step) + ", module " +
                                      std::to_string(mod) + " differs between ranks " + std::to_string(a) + " and " +
                                      std::to_string(b) + " (workers holding it must agree)");
        }
    }

    // --dump-replicas, as DiLoCo writes them (RUNDIR/replicas/step_NNNNNNNN.replica_MMM{suffix}.bin),
    // MMM counting the paths worker by worker (the worker with one path each): theta(0) once, then
    // each path before and after every outer sync
    void dump_before_sync(long step, const std::vector<ReplicaWeights*>& ws) {
        for (size_t k = 0; k < ws.size() && !initial_.empty() && step == o_.inner_steps; k++)
            dump_replica(0, base_ + (int)k, ".synced", ws[k]->model(), initial_.data());
        initial_.clear();
        for (size_t k = 0; k < ws.size(); k++) dump_replica(step, base_ + (int)k, "", ws[k]->model(), ws[k]->fetch());
    }

    void dump_replica(long step, int replica, const char* suffix, const GPT& model, const float* params) const {
        char name[80];
        std::snprintf(name, sizeof name, "step_%08lld.replica_%03d%s.bin", (long long)step, replica, suffix);
        std::filesystem::create_directories(o_.out + "/replicas");
        write_llmc(o_.out + "/replicas/" + name, model, params);
    }

    // At the end of the run: every module to RUNDIR/modules/, once (by the first path holding it,
    // on its first worker's local rank 0), and what each worker sent.
    void finish(const std::vector<ReplicaWeights*>& ws) {
        for (const ModuleExchange& x : exchanges_) {
            bool first = comm_.local() == 0;
            for (int m = 0; m < comm_.worker() && first; m++)
                for (int p : paths_of_[m]) first = first && !holds(p, x.module, o_.levels, o_.modules);
            ReplicaWeights& w = *ws[x.lanes[0]];
            if (first) write_module(o_.out + "/modules", w.model(), w.fetch(), o_.levels, o_.modules, x.module);
        }
        std::string line, paths;
        for (const ModuleExchange& x : exchanges_)
            line += " module " + std::to_string(x.module) + " " + std::to_string(x.bytes) + " B,";
        for (int p : paths_) paths += (paths.empty() ? "" : " ") + std::to_string(p);
        const std::vector<uint64_t> sent = comm_.allgather_u64(comm_.bytes_outer());
        if (comm_.local() == 0)
            std::fprintf(stderr, "dipaco: worker %d (path%s %s), rank %d sent%s %.2f MB across workers in all\n",
                         comm_.worker(), paths_.size() > 1 ? "s" : "", paths.c_str(), comm_.world_rank(), line.c_str(),
                         sent[comm_.world_rank()] / 1e6);
    }

    const TrainOptions o_;
    Comm& comm_;
    const OuterHyper hyper_;
    const PathLayout layout_;
    const int P_;
    Routes routes_;
    std::vector<double> share_;                  // each path's share of the training tokens
    std::vector<std::vector<int>> paths_of_;     // each worker's paths
    std::vector<int> paths_;                     // this worker's, trained in this order each round
    int base_ = 0;                               // paths of the workers before this one
    std::vector<bool> evaluator_;                // per path of this worker: scores its validation documents
    std::vector<std::vector<TokenRange>> train_spans_, val_spans_;
    std::vector<OuterState> outer_;              // per path of this worker
    std::vector<ModuleExchange> exchanges_;
    std::vector<float> buffer_, parts_;
    std::vector<float> initial_;  // --dump-replicas: theta(0) until round 1 has dumped it
    size_t path_params_ = 0, all_params_ = 0;
};

void check(const TrainOptions& o) {
    (void)num_paths(o.levels, o.modules);
    DILOCO_CHECK(o.module_weights == "share" || o.module_weights == "uniform",
                 "--module-weights must be share or uniform, got '" + o.module_weights + "'");
    DILOCO_CHECK(!o.model.empty() || (o.n_layer > 0 && o.n_layer % o.levels == 0),
                 "--levels " + std::to_string(o.levels) + " does not divide the model's " + std::to_string(o.n_layer) +
                     " blocks");
    DILOCO_CHECK(o.drop_prob == 0, "--drop-prob does not apply to --algo dipaco");
    DILOCO_CHECK(!o.eager && !o.delayed, "--eager and --delayed do not apply to --algo dipaco");
    refuse_async_options(o);
    refuse_worker_loss_survival(o, "DiPaCo's module groups");
}

std::unique_ptr<TrainingAlgorithm> create(const TrainOptions& o, Comm& comm, const GPT& model) {
    return std::make_unique<DiPaCo>(o, comm, model);
}

}  // namespace

void refuse_dipaco_options(const TrainOptions& o) {
    DILOCO_CHECK(o.levels == 1 && o.modules == 1 && o.module_weights == "uniform",
                 "--levels, --modules and --module-weights apply to --algo dipaco");
}

const AlgorithmEntry dipaco_algorithm{"dipaco", check, create};

}  // namespace diloco
