// Finding the checkpoint --resume continues from, and elastic restart: resuming a run on another
// number of workers M' or ranks per worker G' than the one that wrote it (docs/distributed.md,
// "Elastic restart").
//
// Every checkpoint of a distributed run records its layout (M, G; model/checkpoint.h, version 4).
// With the same layout, every rank reads its own file, as it always did, and the run continues
// bit for bit. With another, every rank of the new layout reads:
//   - the G files of the old worker 0, whose algorithm states (the slices of the global model and
//     of the outer state, the same on every worker) the algorithm joins and cuts again for the new
//     G (TrainingAlgorithm::load_resized); every replica starts from the global model;
//   - for its inner optimizer, the file of the old worker with its own index when there was one
//     (a surviving replica keeps its AdamW moments), else nothing (a new replica starts with
//     zero moments); for one model trained by all ranks (data-parallel), rank 0's;
//   - the data position: the rows of the shared training order consumed so far become the new
//     origin of every worker's stream (data/dataset.h), so no row is read twice or skipped, and
//     the token count continues from what was trained.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <memory>

#include "comm/comm.h"
#include "model/checkpoint.h"
#include "optim/algorithm.h"
#include "optim/inner.h"

namespace diloco {

struct ResumePoint {
    int64_t step = -1;  // -1: nothing to resume
    int workers = 0, ranks_per_worker = 0;  // the layout that wrote it
    bool per_rank = false;  // one file per rank (else the one file of a one-process run)
};

// Collective: rank 0 finds the newest step whose files are all there for the layout that wrote
// them, and every rank receives it. `server_ranks`: ranks outside the workers (--algo async).
ResumePoint find_resume_point(Comm& comm, const std::string& out, int server_ranks);

// Whether this job has the layout that wrote the checkpoint.
bool same_layout(const ResumePoint& point, const Comm& comm);

// The file world rank `rank` of the layout that wrote `point` saved at its step.
std::string resume_file(const ResumePoint& point, const std::string& out, int rank);

// "4 workers x 1 rank"
std::string describe_layout(int workers, int ranks_per_worker);

// What a rank of a resized job starts from: `start` carries its model, inner moments (zero for
// a new replica) and training state (the data origin moved, the cursor at 0); `old_states` the
// algorithm states of the old worker 0's ranks, for TrainingAlgorithm::load_resized.
struct ResizedStart {
    Checkpoint start;
    std::vector<std::vector<std::vector<float>>> old_states;
    bool survivor = true;
};
// `one_model`: every rank trains the same model (data-parallel), so every rank takes rank 0's.
ResizedStart load_resized_start(const ResumePoint& point, const Comm& comm, const std::string& out, int server_ranks,
                                bool one_model);

// --resume for the training loop: loads the newest complete checkpoint into `model`, `inner` and
// `state` (the same layout: this rank's own file; another: re-sliced as above) and returns the
// algorithm created and loaded with its state; null when there is nothing to resume (a fresh
// run; the loop creates the algorithm). Collective. `before_load`, when given, sees the algorithm
// and its arrays first in the same layout (the loop takes the arrays of the replicas a worker
// trains in turn, optim/turns.h); a resized resume has no such arrays.
using BeforeLoad = std::function<void(TrainingAlgorithm&, std::vector<std::vector<float>>&)>;
std::unique_ptr<TrainingAlgorithm> resume_run(const TrainOptions& o, Comm& comm, const GPTConfig& cfg, GPT& model,
                                              InnerOptimizer& inner, TrainState& state, const BeforeLoad& before_load = {});

}  // namespace diloco
