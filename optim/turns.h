// Several replicas trained in turn by one worker (TrainingAlgorithm::replicas_in_turn(); DiPaCo
// with fewer workers than paths). The active replica lives where the loop trains: its model (and
// device trainer), inner optimizer and data cursor. The others wait here, on the host: weights,
// AdamW moments and cursor, swapped in when their turn comes (on the CPU the buffers trade places
// and nothing is copied).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "model/gpt.h"
#include "optim/algorithm.h"
#include "optim/device.h"
#include "optim/inner.h"

namespace diloco {

class ReplicaTurns {
public:
    // n replicas, each starting as the loop's are now (weights, moments, cursor); replica 0 active.
    ReplicaTurns(int n, const GPT& model, const InnerOptimizer& inner, uint64_t cursor, Comm& comm);
    int count() const { return (int)parked_.size(); }
    int active() const { return active_; }
    // Makes replica k the active one: the active one's weights and moments come to the host (from
    // the device, when there is one) and wait; k's take their place.
    void activate(int k, GPT& model, InnerOptimizer& inner, DeviceTrainer* dev, uint64_t& cursor);
    // Every replica's weights in order, the active one's being `active_weights`.
    std::vector<ReplicaWeights*> weights(ReplicaWeights& active_weights);
    // What a checkpoint keeps beside replica 0's own state (which must be the active one): for
    // each replica k = 1..n-1, four arrays: weights, AdamW m, AdamW v, and the data cursor as four
    // floats of 16 bits each, low bits first (docs/formats.md).
    std::vector<std::vector<float>> save() const;
    // Restores replicas 1..n-1 from the last 4(n-1) arrays of `arrays` and removes them; throws
    // Error when they do not fit.
    void load(std::vector<std::vector<float>>& arrays);

private:
    struct Parked {
        GPT model;  // weights only (no gradients or activations); empty while active
        std::vector<float> m, v;
        uint64_t cursor = 0;
    };
    std::vector<Parked> parked_;
    std::vector<std::unique_ptr<ReplicaWeights>> views_;
    int active_ = 0;
};

}  // namespace diloco
