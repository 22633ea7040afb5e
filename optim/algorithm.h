// The interface every training algorithm implements, and the registry that maps `--algo` to one.
//
// The shared loop (optim/train.cpp) owns the data, the inner step and the inner optimizer,
// evaluation, checkpoints, metrics and progress. An algorithm owns what happens between inner
// steps: its outer state, its exchanges across workers, and what of them a checkpoint keeps.
//
// Life cycle of one algorithm in one run (docs/design.md walks through it):
//   1. check_options(options)         before any rank starts training: refuse what does not apply
//   2. create(options, comm, model)   once the model holds its first weights (initial or resumed)
//   3. load_state(arrays, step)       when the run resumes: the arrays its save_state() wrote
//   4. every inner step: the loop reads this rank's rows, computes the gradients, averages them
//      over the ranks that train one model (the worker's, or all of them), steps the inner
//      optimizer, and then calls after_inner_step()
//   5. at the end of a round (every steps_per_round() steps, and at the last step of a run or of a
//      --stop-at slot) the loop reports the global loss, evaluates and checkpoints; a checkpoint
//      calls save_state()
//   6. after the run's last step (StepEnd::run_ends) the weights of every rank are the one
//      global model, which the loop evaluates and saves
// An asynchronous algorithm, whose ranks never step together, replaces 4-6 by its own schedule
// (runs_own_schedule(), below): the loop hands it the run and lends it its services.
#pragma once
#include <cstddef>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "data/documents.h"
#include "model/gpt.h"
#include "optim/options.h"

namespace diloco {

class DeviceTrainer;

// The replica's weights, where an algorithm reads and writes them: the host copy of the flat
// buffer. When the model trains on a device, the host copy is brought up to date only where an
// algorithm asks: fetch() copies weights from the device, store() puts them back, each for the
// whole buffer or one range, so that an outer sync moves only the slice or fragment it needs.
// On the CPU every call but share_slices_in_worker() is free. The time spent copying and waiting
// is counted for the run's metrics.
class ReplicaWeights {
public:
    ReplicaWeights(GPT& model, DeviceTrainer* device, Comm& comm) : model_(model), device_(device), comm_(comm) {}
    float* host() { return model_.params.data(); }  // not brought up to date by itself
    float* fetch();
    void store();
    float* fetch(Slice range);  // returns host(), with `range` up to date
    void store(Slice range);
    // Every rank of the worker has written its own slice (slice_of(count(), G, local rank)) and
    // stored it; afterwards every rank holds all G slices: gathered by NCCL on the device when
    // the device trainer can, otherwise over MPI on the host and stored. The host copy is then up
    // to date only in this rank's slice (device path) or everywhere (host path).
    void share_slices_in_worker();
    size_t count() const { return model_.num_params; }
    const GPT& model() const { return model_; }

    double staging_seconds = 0.0;  // spent copying between device and host, all calls so far

private:
    GPT& model_;
    DeviceTrainer* device_;
    Comm& comm_;
};

struct StepEnd {
    long step;        // the inner step just taken, from 1
    bool round_ends;  // step is a multiple of steps_per_round(), or the last of this run or slot
    bool run_ends;    // step == --steps: every rank must leave this call holding the global model
    int replica = 0;  // which of the worker's replicas in turn took the step (replicas_in_turn())
};

// What the loop lends an algorithm that runs its own schedule: the inner step on this rank's data
// and inner optimizer, evaluation, checkpoints, the metrics file, the clock.
class LoopServices {
public:
    virtual ~LoopServices() = default;
    // One inner step on this rank's next rows. `schedule_step` (from 1) sets the inner learning
    // rate and AdamW's bias correction. Returns the step's mean loss; `lr` and `compute_seconds`
    // receive its learning rate and the seconds it computed.
    virtual float inner_step(long schedule_step, float* lr, double* compute_seconds) = 0;
    virtual ReplicaWeights& weights() = 0;
    // The validation loss of the weights this rank holds (the loop's fixed validation rows).
    virtual double evaluate() = 0;
    // This rank's checkpoint files at `step` (every rank must save at the same steps), with the
    // algorithm's save_state(); rank 0 also writes the model file that eval and --resume read.
    virtual void save_checkpoint(long step) = 0;
    virtual std::FILE* metrics() = 0;  // metrics.jsonl, rank 0 only (null elsewhere)
    virtual double seconds() const = 0;  // since this run (or resumed run) started
    virtual long resumed_step() const = 0;  // the checkpoint's step, 0 for a fresh run
    virtual long end_step() const = 0;      // --stop-at when set, else --steps
    // Records the final validation loss for the summary line (rank 0).
    virtual void set_final_val_loss(double loss) = 0;
};

// The part of the training split a worker's replica reads, when an algorithm chooses it: the
// tokens of `spans` back to back (TokenStream::restrict_to), split over `parts` replicas as DiLoCo
// splits the whole split, this replica taking part `index`.
struct DataShare {
    std::vector<TokenRange> spans;
    int parts = 1, index = 0;
};

// The mean loss of this rank's weights over every row of the validation tokens in `spans` (the
// loop's forward, on the device when training runs there); `*rows` receives how many rows that was
// (0, and a loss of 0, when the spans hold too few tokens for one).
// `replica`: which of the worker's replicas in turn (0 when there is one) supplies the weights.
using ValidationLoss = std::function<double(int replica, const std::vector<TokenRange>& spans, long* rows)>;

class TrainingAlgorithm {
public:
    virtual ~TrainingAlgorithm() = default;

    // The run's header line, after the algorithm's name: "M=4 H=50 outer nesterov lr 0.7 ..."
    virtual std::string describe() const = 0;
    // True: each of the M workers trains its own replica on its own shard of the data, and the
    // gradients of a step are averaged over the worker's ranks. False: all ranks train one model
    // on one stream of data, and gradients are averaged over all of them.
    virtual bool replica_per_worker() const = 0;
    // Inner steps between the points where all replicas hold the global model (1 for
    // data-parallel). The loop reports losses, evaluates and checkpoints only at such points.
    virtual long steps_per_round() const = 0;
    // What the algorithm does after the inner optimizer's step: exchanges, outer updates.
    virtual void after_inner_step(ReplicaWeights& weights, const StepEnd& at) = 0;
    // This rank's outer state for a checkpoint, as float arrays, and its restoration at `step`.
    // Exchanges in flight are completed first, so that a resumed run continues bit for bit.
    // load_state throws Error (without the file's name; the loop adds it) on arrays it cannot use.
    virtual std::vector<std::vector<float>> save_state() = 0;
    virtual void load_state(std::vector<std::vector<float>> arrays, long step) = 0;

    // Elastic restart (optim/elastic.h, docs/distributed.md): "" when this run can take its outer
    // state from a checkpoint written with another number of workers or ranks per worker; else
    // why not, as the end of one line ("... cannot change its layout: ...").
    virtual std::string resize_refusal() const {
        return "its state is not defined on another number of workers; resume with the layout it was written with";
    }
    // The outer state from such a checkpoint: old[g] holds what save_state() wrote on local rank g
    // of worker 0 of the old layout (its G ranks, in order), old_workers the old M. `params`, the
    // whole flat buffer, receives the global model that every replica starts from. Throws Error
    // on arrays it cannot use. Called only when resize_refusal() is "".
    virtual void load_resized(const std::vector<std::vector<std::vector<float>>>& /*old*/, int /*old_workers*/,
                              long /*step*/, float* /*params*/) {}

    // True for an algorithm whose ranks do not take their inner steps together (asynchronous
    // ones): the loop then calls run_schedule() once instead of its lockstep rounds, and never
    // after_inner_step(). run_schedule() returns on every rank when the run (or --stop-at slot)
    // is over, with the final loss recorded when the run is over; the loop writes the summary.
    virtual bool runs_own_schedule() const { return false; }

    // What replica `replica` of this worker trains on; none: the loop's partition of the whole
    // split among the workers (or the whole split, for one model).
    virtual std::optional<DataShare> data_share(int /*replica*/) const { return std::nullopt; }

    // Replicas this worker trains in turn (DiPaCo with fewer workers than paths: its paths). With
    // n > 1 the loop keeps each one's weights, inner-optimizer moments (2x the weights: the memory
    // of n - 1 more models and their moments), data stream and cursor apart, and each round trains
    // replica 0 for the round's steps, then replica 1, ..., each at the same schedule steps, as
    // if each had a worker of its own. after_inner_step() then comes after every step but the
    // last of the round (with at.replica), and after_round() once at the round's end with all of
    // them; checkpoints keep them all. Every rank of a worker must return the same n.
    virtual int replicas_in_turn() const { return 1; }
    // Only when replicas_in_turn() > 1: the round's end (at.round_ends), with this worker's replica
    // k at replicas[k]; every replica must leave it as the next round starts it.
    virtual void after_round(const std::vector<ReplicaWeights*>& /*replicas*/, const StepEnd& /*at*/) {}
    // True for an algorithm whose run holds more than one model at its end (DiPaCo: one per path):
    // the loop then calls evaluate() on every rank at each evaluation, instead of evaluating rank
    // 0's weights on the validation split, and every rank receives the same loss.
    virtual bool evaluates_itself() const { return false; }
    virtual double evaluate(const ValidationLoss& /*loss_on*/) { return 0.0; }
    virtual void run_schedule(LoopServices& /*loop*/) {}
};

// One entry of the registry: an algorithm's `--algo` name, its option checks, its constructor.
struct AlgorithmEntry {
    const char* name;
    void (*check_options)(const TrainOptions& options);  // throws Error on options it refuses
    std::unique_ptr<TrainingAlgorithm> (*create)(const TrainOptions& options, Comm& comm, const GPT& model);
    int server_ranks = 0;  // ranks besides the workers' (world rank 0 serves; comm/comm.h)
};

// Each defined in its algorithm's own file.
extern const AlgorithmEntry data_parallel_algorithm;  // optim/data_parallel.cpp
extern const AlgorithmEntry diloco_algorithm;         // optim/diloco.cpp
extern const AlgorithmEntry streaming_algorithm;      // optim/streaming.cpp
extern const AlgorithmEntry async_algorithm;          // optim/async_local_sgd.cpp
extern const AlgorithmEntry dipaco_algorithm;         // optim/dipaco.cpp

// Refuses --algo async's own options (--outer-opt delayed-nesterov, --delay-buffer, --dylu,
// --worker-speeds, --virtual-step-s) for an algorithm that has none of them (optim/async_local_sgd.cpp).
void refuse_async_options(const TrainOptions& options);

// Refuses --levels and --modules for an algorithm that has no modules (optim/dipaco.cpp).
void refuse_dipaco_options(const TrainOptions& options);

// Refuses --on-worker-loss continue for an algorithm whose exchanges it does not cover (non-blocking
// ones, a server), saying why in `why` (optim/algorithm.cpp).
void refuse_worker_loss_survival(const TrainOptions& options, const char* why);

// The entry for `--algo name`; throws Error listing the names it knows.
const AlgorithmEntry& find_algorithm(const std::string& name);

}  // namespace diloco
