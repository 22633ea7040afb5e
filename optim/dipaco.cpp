#include "optim/dipaco.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "data/dataset.h"
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

std::vector<int> assign_paths(const std::vector<double>& share, int M) {
    const int P = (int)share.size();
    DILOCO_CHECK(M >= P, "--algo dipaco trains each of its " + std::to_string(P) + " paths on a worker of its own: "
                         "--workers " + std::to_string(M) + " is fewer");
    for (int p = 0; p < P; p++)
        DILOCO_CHECK(share[p] > 0, "path " + std::to_string(p) + " has no training documents: route to fewer paths");
    std::vector<int> count(P, 1);
    for (int extra = P; extra < M; extra++) {
        int best = 0;
        for (int p = 1; p < P; p++)
            if (share[p] / count[p] > share[best] / count[best]) best = p;
        count[best]++;
    }
    std::vector<int> path_of;  // a path's workers are consecutive
    for (int p = 0; p < P; p++) path_of.insert(path_of.end(), count[p], p);
    return path_of;
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

namespace {

// One exchange of one module, as this rank takes part in it.
struct ModuleExchange {
    int module = 0;
    int group = -1;                 // comm group of the workers holding it
    std::vector<Slice> pieces;      // its ranges inside this rank's slice, relative to the slice
    size_t count = 0;               // floats in the pieces
    MemberScale scale;
    uint64_t bytes = 0;             // this rank's across-worker bytes for it so far
};

// DiPaCo as a training algorithm: the inner steps run in the loop on the path's documents; at the
// end of every round, steps 1-4 of dipaco.h.
class DiPaCo final : public TrainingAlgorithm {
public:
    DiPaCo(const TrainOptions& o, Comm& comm, const GPT& model)
        : o_(o), comm_(comm), hyper_{o.outer_lr, o.outer_momentum, o.outer_opt == "nesterov"},
          layout_(path_layout(model, o.levels)), P_(num_paths(o.levels, o.modules)) {
        read_routing(model.config.vocab);
        outer_init(outer_, comm, model.params.data(), model.num_params);  // theta(0): every module starts equal
        if (o.dump_replicas) initial_ = model.params;
        open_exchanges();
        path_params_ = model.num_params;
        const size_t level_params = layout_.level[0].count;
        all_params_ = model.num_params + (size_t)o.levels * (o.modules - 1) * level_params;
    }

    std::string describe() const override {
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      " L=%d K=%d: %d paths of %.2fM params over %d modules, %.2fM params in all, %s-weighted;",
                      o_.levels, o_.modules, P_, path_params_ / 1e6, num_modules(o_.levels, o_.modules),
                      all_params_ / 1e6, o_.module_weights.c_str());
        return buf + outer_description(o_, comm_.workers());
    }
    bool replica_per_worker() const override { return true; }
    long steps_per_round() const override { return o_.inner_steps; }

    std::optional<DataShare> data_share() const override {
        DataShare d;
        d.spans = train_spans_;
        const int p = path_of_[comm_.worker()];
        d.parts = (int)std::count(path_of_.begin(), path_of_.end(), p);
        d.index = comm_.worker() - (int)(std::find(path_of_.begin(), path_of_.end(), p) - path_of_.begin());
        return d;
    }

    void after_inner_step(ReplicaWeights& w, const StepEnd& at) override {
        if (!at.round_ends) return;
        const bool dump = o_.dump_replicas && comm_.local() == 0;
        if (dump) dump_before_sync(at.step, w);
        float* params = w.fetch(outer_.slice);
        const float* theta_m = params + outer_.slice.begin;
        for (size_t i = 0; i < outer_.slice.count; i++) outer_.delta[i] = outer_.global[i] - theta_m[i];  // 1
        for (ModuleExchange& x : exchanges_) sync_module(x);                                             // 2, 3
        std::copy(outer_.global.begin(), outer_.global.end(), params + outer_.slice.begin);               // 4
        w.store(outer_.slice);
        w.share_slices_in_worker();
        if (dump) dump_replica(at.step, ".synced", w.model(), w.fetch());
        if (at.run_ends) finish(w);
    }

    bool evaluates_itself() const override { return true; }

    // Each path's validation documents, scored by that path (its first worker's local rank 0),
    // pooled over all the validation rows.
    double evaluate(const ValidationLoss& loss_on) override {
        double sum = 0.0, rows = 0.0;
        if (evaluator_) {
            long n = 0;
            const double mean = loss_on(val_spans_, &n);
            if (n > 0) sum = mean * n, rows = (double)n;
        }
        sum = comm_.sum_world(sum);
        rows = comm_.sum_world(rows);
        return rows > 0 ? sum / rows : NAN;
    }

    std::vector<std::vector<float>> save_state() override { return {outer_.global, outer_.momentum}; }

    void load_state(std::vector<std::vector<float>> a, long step) override {
        DILOCO_CHECK(step % o_.inner_steps == 0 || step == o_.steps,
                     "step " + std::to_string(step) + " is not at an outer sync");
        DILOCO_CHECK(a.size() == 2, "it holds no DiPaCo outer state");
        DILOCO_CHECK(a[0].size() == outer_.slice.count && a[1].size() == outer_.slice.count,
                     "its outer state was written with another rank layout");
        outer_.global = std::move(a[0]);
        outer_.momentum = std::move(a[1]);
    }

private:
    // The route file, each path's documents and share, and this worker's path.
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
        path_of_ = assign_paths(share_, comm_.workers());
        path_ = path_of_[comm_.worker()];
        train_spans_ = routed_spans(routes_.train, train, path_);
        val_spans_ = routed_spans(routes_.val, val, path_);
        const bool first_of_path = comm_.worker() == 0 || path_of_[comm_.worker() - 1] != path_;
        evaluator_ = first_of_path && comm_.local() == 0;
    }

    // One group per module over the cross communicator, opened by every rank in module order.
    void open_exchanges() {
        const std::vector<int> mine = path_modules(path_, o_.levels, o_.modules);
        const int M = comm_.workers();
        for (int mod = 0; mod < num_modules(o_.levels, o_.modules); mod++) {
            const bool member = std::find(mine.begin(), mine.end(), mod) != mine.end();
            const int group = comm_.open_cross_group(member);
            if (!member) continue;
            ModuleExchange x;
            x.module = mod;
            x.group = group;
            std::vector<double> weights;
            for (int m = 0; m < M; m++) {
                const std::vector<int> theirs = path_modules(path_of_[m], o_.levels, o_.modules);
                if (std::find(theirs.begin(), theirs.end(), mod) != theirs.end()) weights.push_back(weight_of(m));
            }
            x.scale = member_scale(weights, weight_of(comm_.worker()));
            const Slice s = outer_.slice;
            for (const Slice& r : module_ranges(layout_, mod, o_.modules)) {
                const size_t b = std::max(r.begin, s.begin), e = std::min(r.begin + r.count, s.begin + s.count);
                if (b < e) x.pieces.push_back({b - s.begin, e - b});
                x.count += b < e ? e - b : 0;
            }
            exchanges_.push_back(x);
        }
    }

    // w_m = 1 / workers(p(m)), or share(p(m)) / workers(p(m)) with --module-weights share
    bool first_holder(int module) const {
        for (int m = 0; m < comm_.worker(); m++) {
            const std::vector<int> theirs = path_modules(path_of_[m], o_.levels, o_.modules);
            if (std::find(theirs.begin(), theirs.end(), module) != theirs.end()) return false;
        }
        return true;
    }

    double weight_of(int worker) const {
        const int p = path_of_[worker];
        const double path_weight = o_.module_weights == "uniform" ? 1.0 : share_[p];
        return path_weight / (double)std::count(path_of_.begin(), path_of_.end(), p);
    }

    // 2 and 3 for one module, on this rank's part of it.
    void sync_module(ModuleExchange& x) {
        buffer_.resize(x.count);
        size_t at = 0;
        for (const Slice& pc : x.pieces)
            for (size_t i = 0; i < pc.count; i++) buffer_[at++] = outer_.delta[pc.begin + i] * x.scale.pre;
        const uint64_t before = comm_.bytes_outer();
        comm_.sum_in_group(x.group, buffer_.data(), x.count);
        x.bytes += comm_.bytes_outer() - before;
        at = 0;
        for (const Slice& pc : x.pieces) {
            float* d = buffer_.data() + at;
            for (size_t i = 0; i < pc.count; i++) d[i] *= x.scale.post;
            outer_step(outer_.global.data() + pc.begin, d, outer_.momentum.data() + pc.begin, pc.count, hyper_);
            at += pc.count;
        }
    }

    // --dump-replicas, as DiLoCo writes them (RUNDIR/replicas/step_NNNNNNNN.replica_MMM{suffix}.bin):
    // theta(0) once, then each worker's path before and after every outer sync
    void dump_before_sync(long step, ReplicaWeights& w) {
        if (!initial_.empty()) {
            if (step == o_.inner_steps) dump_replica(0, ".synced", w.model(), initial_.data());
            initial_.clear();
        }
        dump_replica(step, "", w.model(), w.fetch());
    }

    void dump_replica(long step, const char* suffix, const GPT& model, const float* params) const {
        char name[80];
        std::snprintf(name, sizeof name, "step_%08lld.replica_%03d%s.bin", (long long)step, comm_.worker(), suffix);
        std::filesystem::create_directories(o_.out + "/replicas");
        write_llmc(o_.out + "/replicas/" + name, model, params);
    }

    // At the end of the run: every module to RUNDIR/modules/, once (by the first worker holding
    // it, local rank 0), and what each worker sent.
    void finish(ReplicaWeights& w) {
        if (comm_.local() == 0) {
            const float* params = w.fetch();
            for (const ModuleExchange& x : exchanges_)
                if (first_holder(x.module)) write_module(o_.out + "/modules", w.model(), params, o_.levels, o_.modules, x.module);
        }
        std::string line;
        for (const ModuleExchange& x : exchanges_)
            line += " module " + std::to_string(x.module) + " " + std::to_string(x.bytes) + " B,";
        const std::vector<uint64_t> sent = comm_.allgather_u64(comm_.bytes_outer());
        if (comm_.local() == 0)
            std::fprintf(stderr, "dipaco: worker %d (path %d), rank %d sent%s %.2f MB across workers in all\n",
                         comm_.worker(), path_, comm_.world_rank(), line.c_str(), sent[comm_.world_rank()] / 1e6);
    }

    const TrainOptions o_;
    Comm& comm_;
    const OuterHyper hyper_;
    const PathLayout layout_;
    const int P_;
    Routes routes_;
    std::vector<double> share_;     // each path's share of the training tokens
    std::vector<int> path_of_;      // each worker's path
    int path_ = 0;
    bool evaluator_ = false;        // scores its path's validation documents
    std::vector<TokenRange> train_spans_, val_spans_;
    OuterState outer_;
    std::vector<ModuleExchange> exchanges_;
    std::vector<float> buffer_;
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
    DILOCO_CHECK(!o.verify_sync, "--verify-sync does not apply to --algo dipaco: its paths differ");
    refuse_async_options(o);
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
