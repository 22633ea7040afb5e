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
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
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
};

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
};

// One entry of the registry: an algorithm's `--algo` name, its option checks, its constructor.
struct AlgorithmEntry {
    const char* name;
    void (*check_options)(const TrainOptions& options);  // throws Error on options it refuses
    std::unique_ptr<TrainingAlgorithm> (*create)(const TrainOptions& options, Comm& comm, const GPT& model);
};

// Each defined in its algorithm's own file.
extern const AlgorithmEntry data_parallel_algorithm;  // optim/data_parallel.cpp
extern const AlgorithmEntry diloco_algorithm;         // optim/diloco.cpp
extern const AlgorithmEntry streaming_algorithm;      // optim/streaming.cpp

// The entry for `--algo name`; throws Error listing the names it knows.
const AlgorithmEntry& find_algorithm(const std::string& name);

}  // namespace diloco
