// Data-parallel training: every inner step, the gradients are averaged over all R ranks (the
// loop does that, as replica_per_worker() is false), so every rank holds the same model after
// every step and there is nothing for the algorithm to do between steps.
#include <memory>

#include "kernels/common.h"
#include "optim/algorithm.h"

namespace diloco {

namespace {

class DataParallel final : public TrainingAlgorithm {
public:
    std::string describe() const override { return ""; }
    bool replica_per_worker() const override { return false; }
    long steps_per_round() const override { return 1; }
    void after_inner_step(ReplicaWeights&, const StepEnd&) override {}
    std::vector<std::vector<float>> save_state() override { return {}; }
    void load_state(std::vector<std::vector<float>>, long) override {}  // nothing beyond the model
    // one model on every rank: any number of ranks takes it as it is
    std::string resize_refusal() const override { return ""; }
};

void check(const TrainOptions& o) {
    DILOCO_CHECK(o.drop_prob == 0, "--drop-prob applies to --algo diloco and streaming");
    DILOCO_CHECK(!o.eager, "--eager applies to --algo diloco and streaming");
    DILOCO_CHECK(!o.delayed, "--delayed applies to --algo diloco");
    refuse_async_options(o);
    refuse_dipaco_options(o);
}

std::unique_ptr<TrainingAlgorithm> create(const TrainOptions&, Comm&, const GPT&) {
    return std::make_unique<DataParallel>();
}

}  // namespace

const AlgorithmEntry data_parallel_algorithm{"dp", check, create};

}  // namespace diloco
