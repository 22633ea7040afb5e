// The state of one training run (optim/train.cpp's loop) and the reporting that reads it
// (optim/train_report.cpp): per-step figures, held until a report, then metrics.jsonl, progress,
// the checks for non-finite values, and the summary.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "data/dataset.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "model/gpt.h"
#include "optim/algorithm.h"
#include "optim/device.h"
#include "optim/inner.h"
#include "optim/options.h"
#include "optim/turns.h"

namespace diloco {

// Where the seconds of one inner step went (metrics.jsonl): computing the model's forward,
// backward and optimizer step; communicating (the gradient average, an algorithm's exchanges,
// waits and outer updates); staging weights or gradients between device and host.
struct StepSeconds {
    double compute = 0.0, comm = 0.0, stage = 0.0;
    StepSeconds& operator+=(const StepSeconds& o) {
        compute += o.compute, comm += o.comm, stage += o.stage;
        return *this;
    }
};

// Per-step figures held until the end of the round, when rank 0 learns the global mean loss.
struct PendingStep {
    int64_t step;
    double loss;
    float lr;
    double grad_norm;
    double wall;          // seconds since start when the step finished
    double compute_total;  // seconds of those spent computing, all steps so far
    StepSeconds spent;    // this step's seconds
    // on a device: loss and grad_norm are still there (settle_device_steps fills them, and the
    // seconds, in); rows_at: the first row of the step's batch, to compute it again for a diagnosis
    bool figures_on_device = false;
    uint64_t rows_at = 0;
};

// Everything one run of the loop holds. The algorithm owns its outer state; the loop owns the
// model, the inner optimizer, the data position and the run directory.
struct Run {
    Run(const TrainOptions& options, Comm& c, const GPTConfig& config) : o(options), comm(c), cfg(config) {}
    const TrainOptions& o;
    Comm& comm;
    GPTConfig cfg;
    GPT model;
    InnerOptimizer inner;
    TrainState state;
    Rng rng{0};
    std::unique_ptr<TrainingAlgorithm> algo;
    std::unique_ptr<ReplicaTurns> turns;  // null unless the worker trains several replicas in turn
    std::unique_ptr<DeviceTrainer> dev;  // null: training on the CPU
    TokenStream* train = nullptr;        // the loop's stream (null for replicas in turn and own schedules)
    Precision precision = Precision::fp32;  // of the device's forward and backward (--precision)
    TokenizerBlob tokenizer;             // the data's subword tokenizer, carried in rank 0's checkpoints
    bool device_averages = false;        // gradients are averaged on the device (NCCL)
    bool stage_grads = false;            // gradients cross the host for their average
    long global_rows = 0;                // rows of one inner step, all replicas (and their turns) together
    long stream_rows = 0, my_row = 0;    // rows the stream advances per step; this rank's first
    std::string metrics_path;
    std::FILE* metrics = nullptr;        // rank 0 only
    std::chrono::steady_clock::time_point t0;
    int64_t first_step = 1, end_step = 0, next_eval = INT64_MAX, next_ckpt = INT64_MAX;
    double tokens_before = 0.0;  // tokens_at(first_step - 1): this process's speed counts from there
    double val_loss = NAN;
    StepSeconds spent;  // all steps so far
    // the most bytes this rank sent across workers in one inner step; the final step, where every
    // Streaming DiLoCo fragment syncs at once so that the run ends on one model, is left out
    uint64_t peak_bytes_step = 0;

    double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
    bool root() const { return comm.is_root(); }
    // Tokens trained on by all replicas together by the end of `step`: those before this layout
    // began (an elastic restart moved the origin), then a global batch a step.
    double tokens_at(int64_t step) const {
        return ((double)state.row_origin + (double)(step - state.origin_step) * global_rows) * o.seq_len;
    }
};

// A NaN or an infinity at `step` ends the run with one error naming the step, the rank and what
// first went non-finite.
[[noreturn]] void stop_non_finite(Run& r, int64_t step, const std::string& what);
// Puts in place the figures the device holds for `steps` (one wait), and stops the run at the
// first non-finite step among them.
void settle_device_steps(Run& r, std::vector<PendingStep>& steps);
// Whether the round ending at `step` reports the steps pending.
bool report_due(const Run& r, const std::vector<PendingStep>& pending, int64_t step);
// The pending steps' metrics lines and progress, with the global mean loss of each.
void report_round(Run& r, std::vector<PendingStep>& pending);
// The summary line of metrics.jsonl and the closing lines on stderr.
void write_summary(Run& r);

}  // namespace diloco
