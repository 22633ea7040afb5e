#include "optim/elastic.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "data/io.h"
#include "kernels/common.h"

namespace fs = std::filesystem;

namespace diloco {

std::string describe_layout(int workers, int ranks_per_worker) {
    return std::to_string(workers) + (workers == 1 ? " worker x " : " workers x ") + std::to_string(ranks_per_worker) +
           (ranks_per_worker == 1 ? " rank" : " ranks");
}

std::string resume_file(const ResumePoint& p, const std::string& out, int rank) {
    return p.per_rank ? rank_checkpoint_path(out, p.step, rank) : checkpoint_path(out, p.step);
}

bool same_layout(const ResumePoint& p, const Comm& comm) {
    const bool distributed = comm.world_size() > 1;
    return p.per_rank == distributed && p.workers == comm.workers() && p.ranks_per_worker == comm.ranks_per_worker();
}

namespace {

// The layout of the rank files at `step`, from rank 0's file; nullopt-like {0,0} when its set of
// files is incomplete. A file older than version 4 records none: it is taken to be this job's,
// as before elastic restart, when exactly this job's ranks have files there, and refused otherwise.
ResumePoint rank_files_at(const std::string& out, int64_t step, const Comm& comm, int server_ranks) {
    const Checkpoint ck = load_checkpoint(rank_checkpoint_path(out, step, 0));
    ResumePoint p{step, ck.state.workers, ck.state.ranks_per_worker, true};
    if (p.workers == 0) {
        int n = 0;
        while (fs::exists(rank_checkpoint_path(out, step, n))) n++;
        DILOCO_CHECK(n == comm.world_size(),
                     "--resume: the checkpoint at step " + std::to_string(step) + " (" + std::to_string(n) +
                         " rank files) records no layout (written before elastic restart, version < 4): resume it "
                         "with the -np and --workers it was written with");
        p.workers = comm.workers();
        p.ranks_per_worker = comm.ranks_per_worker();
        return p;
    }
    const int64_t ranks = (int64_t)p.workers * p.ranks_per_worker + server_ranks;
    for (int64_t r = 0; r < ranks; r++)
        if (!fs::exists(rank_checkpoint_path(out, step, (int)r))) return ResumePoint{};
    return p;
}

// Rank 0: the newest complete checkpoint, rank files or the one file of a one-process run.
ResumePoint find_on_root(const Comm& comm, const std::string& out, int server_ranks) {
    std::vector<int64_t> steps = checkpoint_steps_of(out, 0), global = checkpoint_steps_of(out, -1);
    steps.insert(steps.end(), global.begin(), global.end());
    std::sort(steps.rbegin(), steps.rend());
    steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
    for (int64_t step : steps) {
        if (fs::exists(rank_checkpoint_path(out, step, 0))) {
            const ResumePoint p = rank_files_at(out, step, comm, server_ranks);
            if (p.step >= 0) return p;
            continue;
        }
        // a distributed run's global file holds no algorithm state: only a one-process run's counts
        const Checkpoint ck = load_checkpoint(checkpoint_path(out, step));
        if ((int64_t)ck.state.workers * ck.state.ranks_per_worker <= 1) return ResumePoint{step, 1, 1, false};
    }
    return ResumePoint{};
}

}  // namespace

ResumePoint find_resume_point(Comm& comm, const std::string& out, int server_ranks) {
    ResumePoint p;
    if (comm.is_root()) p = find_on_root(comm, out, server_ranks);
    // rank 0's answer to everyone (the other ranks' values are ignored)
    const uint64_t step = comm.allgather_u64((uint64_t)(p.step + 1))[0];
    const uint64_t layout = comm.allgather_u64((uint64_t)p.workers | (uint64_t)p.ranks_per_worker << 24 |
                                               (uint64_t)p.per_rank << 48)[0];
    p.step = (int64_t)step - 1;
    p.workers = (int)(layout & 0xFFFFFF);
    p.ranks_per_worker = (int)((layout >> 24) & 0xFFFFFF);
    p.per_rank = (layout >> 48) & 1;
    return p;
}

ResizedStart load_resized_start(const ResumePoint& p, const Comm& comm, const std::string& out, int server_ranks,
                                bool one_model) {
    auto old_rank = [&](int m, int g) { return server_ranks + m * p.ranks_per_worker + g; };
    ResizedStart r;
    Checkpoint first;  // worker 0, local rank 0: the training state every worker shares
    for (int g = 0; g < p.ranks_per_worker; g++) {
        Checkpoint ck = load_checkpoint(resume_file(p, out, old_rank(0, g)));
        r.old_states.push_back(std::move(ck.extra));
        if (g == 0) first = std::move(ck);
    }
    r.survivor = one_model || comm.worker() < p.workers;
    const int source = one_model || comm.worker() == 0 ? -1 : r.survivor ? old_rank(comm.worker(), 0) : -1;
    r.start = source < 0 ? std::move(first) : load_checkpoint(resume_file(p, out, source));
    if (!r.survivor) {  // a new replica: the inner optimizer starts afresh
        std::fill(r.start.adam_m.begin(), r.start.adam_m.end(), 0.0f);
        std::fill(r.start.adam_v.begin(), r.start.adam_v.end(), 0.0f);
    }
    // the rows every worker has consumed, in the shared order: the origin of the new streams
    TrainState& s = r.start.state;
    const TrainState& w0 = source < 0 ? s : first.state;
    const uint64_t consumed = w0.row_origin + w0.data_cursor * (uint64_t)(one_model ? 1 : p.workers);
    s.row_origin = consumed;
    s.data_cursor = 0;
    s.origin_step = s.step;
    return r;
}

namespace {

// What --resume fills in: the loop's model, inner optimizer, position, and the algorithm.
struct Target {
    const TrainOptions& o;
    Comm& comm;
    const GPTConfig& cfg;
    GPT& model;
    InnerOptimizer& inner;
    TrainState& state;
    std::unique_ptr<TrainingAlgorithm> algo;
    const BeforeLoad& before_load;
};

// Takes a checkpoint's model, AdamW moments and position in training; returns its extra arrays
// (the algorithm's state).
std::vector<std::vector<float>> take_checkpoint(Target& r, Checkpoint&& ck, const std::string& path) {
    DILOCO_CHECK(ck.config == r.cfg, "checkpoint " + path + " was written for a different model (" +
                                         ck.config.describe() + ") than this run (" + r.cfg.describe() + ")");
    DILOCO_CHECK(ck.state.step <= r.o.steps, "checkpoint " + path + " is at step " + std::to_string(ck.state.step) +
                                                 ", beyond --steps " + std::to_string(r.o.steps));
    r.model.params = std::move(ck.params);
    r.inner.m = std::move(ck.adam_m);
    r.inner.v = std::move(ck.adam_v);
    r.state = ck.state;
    return std::move(ck.extra);
}

// "step_NNNNNNNN.replica_MMM", as the replica dumps name them
std::string replica_file_stem(int64_t step, int worker) {
    char name[64];
    std::snprintf(name, sizeof name, "step_%08lld.replica_%03d", (long long)step, worker);
    return name;
}

// Elastic restart (optim/elastic.h): the algorithm is created first, so that it can refuse, on
// every rank alike, before anything is read; then the old worker 0's state is re-sliced.
void resume_resized(Target& r, const ResumePoint& point, int server_ranks) {
    const TrainOptions& o = r.o;
    r.algo = find_algorithm(o.algo).create(o, r.comm, r.model);
    const std::string from = describe_layout(point.workers, point.ranks_per_worker),
                      to = describe_layout(r.comm.workers(), r.comm.ranks_per_worker());
    const std::string refusal = r.algo->resize_refusal();
    if (!refusal.empty())
        throw CollectiveError("--resume: the checkpoint at step " + std::to_string(point.step) + " was written by " +
                              from + ", this job is " + to + "; --algo " + o.algo + " cannot change its layout: " + refusal);
    ResizedStart rs = load_resized_start(point, r.comm, o.out, server_ranks, !r.algo->replica_per_worker());
    const std::string path = resume_file(point, o.out, server_ranks);
    take_checkpoint(r, std::move(rs.start), path);
    try {
        r.algo->load_resized(rs.old_states, point.workers, r.state.step, r.model.params.data());
    } catch (const Error& e) {
        throw Error("checkpoint " + path + ": " + e.what());
    }
    if (o.dump_replicas && r.comm.local() == 0) {  // the replica's first state, for checks (docs/formats.md)
        const std::string stem = o.out + "/replicas/" + replica_file_stem(r.state.step, r.comm.worker());
        fs::create_directories(o.out + "/replicas");
        write_file_atomic(stem + ".resumed.f32", r.model.params.data(), 4 * r.model.num_params);
        std::vector<float> moments(r.inner.m);
        moments.insert(moments.end(), r.inner.v.begin(), r.inner.v.end());
        write_file_atomic(stem + ".resumed_moments.f32", moments.data(), 4 * moments.size());
    }
    if (r.comm.is_root())
        std::fprintf(stderr, "resume: step %lld, elastic: %s -> %s; every replica starts from the global model, "
                             "new ones with fresh inner-optimizer state; data from row %llu of the shared order\n",
                     (long long)r.state.step, from.c_str(), to.c_str(), (unsigned long long)r.state.row_origin);
}

// --resume: the newest complete checkpoint, in this job's layout (each rank its own file, bit for
// bit) or re-sliced from another; r.algo stays null when there is nothing to resume.
void resume(Target& r) {
    const TrainOptions& o = r.o;
    const int server_ranks = find_algorithm(o.algo).server_ranks;
    const ResumePoint point = find_resume_point(r.comm, o.out, server_ranks);
    if (point.step < 0) {
        if (r.comm.is_root()) std::fprintf(stderr, "resume: no checkpoint in %s/ckpt, starting from scratch\n", o.out.c_str());
        return;
    }
    if (!same_layout(point, r.comm)) {
        resume_resized(r, point, server_ranks);
        return;
    }
    const std::string path = resume_file(point, o.out, r.comm.world_rank());
    std::vector<std::vector<float>> algorithm_state = take_checkpoint(r, load_checkpoint(path), path);
    r.algo = find_algorithm(o.algo).create(o, r.comm, r.model);
    try {
        if (r.before_load) r.before_load(*r.algo, algorithm_state);
        r.algo->load_state(std::move(algorithm_state), r.state.step);
    } catch (const CollectiveError&) {
        throw;
    } catch (const Error& e) {
        throw Error("checkpoint " + path + ": " + e.what());
    }
    if (r.comm.is_root()) std::fprintf(stderr, "resume: %s (step %lld)\n", path.c_str(), (long long)r.state.step);
}

}  // namespace

std::unique_ptr<TrainingAlgorithm> resume_run(const TrainOptions& o, Comm& comm, const GPTConfig& cfg, GPT& model,
                                              InnerOptimizer& inner, TrainState& state, const BeforeLoad& before_load) {
    Target t{o, comm, cfg, model, inner, state, nullptr, before_load};
    resume(t);
    return std::move(t.algo);
}

}  // namespace diloco
