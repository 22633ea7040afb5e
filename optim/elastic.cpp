#include "optim/elastic.h"

#include <algorithm>
#include <filesystem>

#include "kernels/common.h"

namespace fs = std::filesystem;

namespace diloco {

std::string describe_layout(int workers, int ranks_per_worker) {
    return std::to_string(workers) + (workers == 1 ? " worker x " : " workers x ") + std::to_string(ranks_per_worker) +
           (ranks_per_worker == 1 ? " rank" : " ranks");
}

std::string resume_file(const ResumePoint& p, const std::string& out, int rank, int server_ranks) {
    (void)server_ranks;
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
        Checkpoint ck = load_checkpoint(resume_file(p, out, old_rank(0, g), server_ranks));
        r.old_states.push_back(std::move(ck.extra));
        if (g == 0) first = std::move(ck);
    }
    r.survivor = one_model || comm.worker() < p.workers;
    const int source = one_model || comm.worker() == 0 ? -1 : r.survivor ? old_rank(comm.worker(), 0) : -1;
    r.start = source < 0 ? std::move(first) : load_checkpoint(resume_file(p, out, source, server_ranks));
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

}  // namespace diloco
