// Streaming DiLoCo (Douillard et al. 2025), on top of DiLoCo (optim/diloco.h):
//   1. fragments: the blocks are split into P fragments that sync on staggered schedules;
//      fragment p syncs at inner steps t with (t - t_p) mod H = 0, t_p = round(p H / P);
//   2. overlap: fragment p's exchange starts at its sync step and is needed tau steps later; then
//      theta~_p = OuterOpt(theta_p(t), Delta_p) and theta_p <- alpha theta_p(local) + (1-alpha) theta~_p
//      (with tau = 0 the replica simply takes theta~_p, which is DiLoCo for P = 1);
//   3. compressed exchange: each replica's own outer gradient travels in --quant format, with one
//      fp32 scale per --quant-block values, and the decoded gradients are summed in fp32, by an
//      all-gather of the payloads or a reduce-scatter of chunks (--exchange, optim/exchange.h).
//      fp32 payloads need no decoding, so they go through an allreduce (docs/distributed.md);
//   4. eager (--eager, with tau = 0): a fragment's exchange overlaps its whole next round; the
//      replica steps with its own fresh outer gradient and the others' from the previous round
//      (optim/diloco.h, Eager updates), fragment by fragment;
//   5. drop-out (--drop-prob): a replica that misses a fragment's round sends a zero outer
//      gradient, the fragment's outer step averages over those that delivered, and every replica
//      takes the result, as in DiLoCo (with --drop-mode replica, the one that missed keeps its
//      own values of the fragment).
// Fragment homes of the parts outside the blocks: the embeddings (wte, wpe) go with the fragment
// of block 0, the final LayerNorm with the fragment of the last block.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "kernels/quantize.h"
#include "model/gpt.h"
#include "optim/algorithm.h"
#include "optim/exchange.h"
#include "optim/outer.h"

namespace diloco {

struct Fragment {
    std::vector<Slice> ranges;  // of the flat parameter buffer, ascending
    size_t count = 0;           // elements in all
    long offset = 0;            // t_p
};

// P fragments of the model's blocks, strided (block i in fragment i mod P) or sequential.
std::vector<Fragment> make_fragments(const GPT& model, int P, bool strided, long H);

struct StreamingOptions {
    int fragments = 1;
    bool strided = true;
    long H = 50;
    long tau = 0;
    float alpha = 0.5f;
    QuantFormat quant = QuantFormat::fp32;
    int quant_block = kQuantBlockDefault;
    ExchangeKind exchange = ExchangeKind::reduce_scatter;
    OuterHyper outer;
    bool eager = false;
    double drop_prob = 0.0;
    bool keep_local = false;  // --drop-mode replica: a replica that missed a round keeps its values
    uint64_t seed = 0;  // of the drop-out draws
    bool verify_sync = false;  // after every fragment's sync, check that the workers' theta~ agree
};

// `--algo streaming` (streaming_algorithm) behind the interface of optim/algorithm.h.
class Streaming final : public TrainingAlgorithm {
public:
    // `description`: the run's header text for these options (see describe())
    Streaming(const StreamingOptions& opt, Comm& comm, const GPT& model, std::string description);

    std::string describe() const override { return description_; }
    bool replica_per_worker() const override { return true; }
    long steps_per_round() const override { return opt_.H; }
    // After every inner step: start the exchanges of the fragments due now, let MPI progress
    // those in flight, finish the ones started tau steps ago. When the run ends, every fragment
    // syncs and finishes at once, so that the run ends on one global model.
    void after_inner_step(ReplicaWeights& weights, const StepEnd& at) override;

    // For checkpoints: this rank's outer state, 5 arrays per fragment. Exchanges in flight are
    // completed first (waiting early changes no number), so a resumed run continues bit for bit.
    std::vector<std::vector<float>> save_state() override;
    void load_state(std::vector<std::vector<float>> arrays, long step) override;
    // Elastic restart: each fragment's theta and momentum joined from the old slices; an exchange
    // that was pending is applied at once and every replica takes the fragment's global values.
    std::string resize_refusal() const override;
    void load_resized(const std::vector<std::vector<std::vector<float>>>& old, int old_workers, long step,
                      float* params) override;

    const std::vector<Fragment>& fragments() const { return frags_; }

private:
    struct State {
        Slice mine;  // this rank's part of the packed fragment (slice local_rank of G)
        std::vector<float> global, momentum, delta, packed;
        std::vector<float> sum;  // fp32 sum over replicas of the exchanged outer gradients, once received
        std::vector<float> own;  // eager: this replica's last sent outer gradient, as the others decode it
        std::unique_ptr<OuterExchange> exchange;
        bool pending = false;   // an exchange was started and its result not yet applied
        bool received = false;  // ... and it has arrived: `sum` holds it
        long started = 0;
        bool delivered = true;  // this replica's part of the pending round (drop-out)
        int n_delivered = 1;
    };
    void start(int p, const float* outer_gradient, long step, bool last);
    void complete(int p);
    void finish(Comm& comm, int p, ReplicaWeights& w, bool mix);
    void eager_sync(Comm& comm, int p, ReplicaWeights& w, long step, bool last);
    float* fetch_fragment(ReplicaWeights& w, int p) const;
    void verify_fragment(int p, long step);
    void set_fragment(Comm& comm, int p, ReplicaWeights& w, const std::vector<float>& values);
    // copies between the flat buffer and the packed fragment, for packed indices [lo, lo + n)
    void gather(int p, const float* params, float* out, size_t lo, size_t n) const;
    void scatter(int p, float* params, const float* in, size_t lo, size_t n) const;

    StreamingOptions opt_;
    Comm& comm_;
    std::string description_;
    std::vector<Fragment> frags_;
    std::vector<State> st_;
    int M_ = 1, G_ = 1, me_ = 0;
};

}  // namespace diloco
