// The options of `diloco train`, as the command line and config files set them (tools/main.cpp
// names each one). The training loop and every training algorithm read them from here.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/quantize.h"

namespace diloco {

struct TrainOptions {
    std::string data, out;
    // model
    std::string model;  // preset name, or "" for the explicit sizes below
    int n_layer = 4, n_head = 4, d_model = 128, seq_len = 128;
    int max_seq_len = 0;  // position-embedding rows; 0 = the preset's, or seq_len
    // batch and length
    int batch = 16;
    int grad_accum = 1;  // K: micro-batches of --batch per inner step, their gradients added (optim/inner.h)
    long steps = 1000;
    // inner optimizer
    float lr = 1e-3f, min_lr_frac = 0.1f, weight_decay = 0.1f, beta1 = 0.9f, beta2 = 0.95f;
    float eps = 1e-8f, grad_clip = 1.0f;
    long warmup = 100;
    std::string inner_opt = "adamw";
    // algorithm
    std::string algo = "dp";  // a name in the registry of optim/algorithm.h
    int workers = 1;          // M replicas; the ranks are split into M workers of R/M
    long inner_steps = 50;    // H
    float outer_lr = 0.7f, outer_momentum = 0.9f;
    std::string outer_opt = "nesterov";  // nesterov | sgd | delayed-nesterov (async)
    double drop_prob = 0.0;  // a replica fails to deliver its outer gradient with this probability
    std::string drop_mode = "gradient";  // gradient: lost for the round | replica: the replica also keeps its weights
    bool verify_sync = false;  // check after every outer sync that all replicas hold equal weights
    bool dump_replicas = false;  // write each replica's weights before every outer sync
    // Streaming DiLoCo
    int fragments = 1;
    std::string fragment_pattern = "strided";  // strided | sequential
    long overlap = 0;  // tau
    float alpha = 0.5f;
    std::string quant = "fp32";
    int quant_block = kQuantBlockDefault;  // values per fp32 scale of int8, e2m1, e3m0
    std::string exchange = "reduce-scatter";  // compressed payloads: allgather | reduce-scatter (optim/exchange.h)
    bool eager = false;  // one-round-overlapped outer sync with the eager formula (diloco)
    bool delayed = false;  // one-round-overlapped outer sync, the previous round's average alone (diloco)
    // Asynchronous Local-SGD (optim/async_local_sgd.h)
    int delay_buffer = 1;      // N: arrivals per momentum update of delayed Nesterov
    bool dylu = false;         // dynamic local updates: H scaled by each worker's speed
    std::string worker_speeds;  // "1,1,0.5,0.25": worker w's inner steps take 1/speed the time
    double virtual_step_s = 0.0;  // > 0: the virtual clock, a speed-1 inner step takes this long
    // DiPaCo (optim/dipaco.h)
    int levels = 1;   // L: levels the blocks are cut into
    int modules = 1;  // K: modules per level
    std::string module_weights = "uniform";  // a path's weight in a module's mean: uniform | share (of the data)
    // link emulation of the across-worker link
    double outer_gbps = 0.0, outer_latency_ms = 0.0;
    // seconds a blocking call across workers may take before the job is ended as a lost worker
    // (comm/watchdog.h); 0 = off
    double comm_timeout = 600.0;
    // how non-blocking exchanges move while compute goes on: steps (one MPI test after each inner
    // step) | thread (a progress thread polls MPI meanwhile; comm/progress.h)
    std::string comm_progress = "steps";
    // what a lost worker does to the job: abort (end it; relaunch with --resume) | continue (the
    // survivors drop it and go on, an Open MPI build with ULFM; comm/survival.cpp)
    std::string on_worker_loss = "abort";
    // data
    std::string shard = "iid";
    uint64_t seed = 1337;
    // evaluation, checkpoints, output
    long eval_every = 0, ckpt_every = 0, log_every = 10;
    int ckpt_keep = 3;  // numbered checkpoints kept (the newest); 0 keeps all
    int eval_batches = 8;
    bool resume = false;
    long stop_at = 0;  // leave after this step with a checkpoint (0: run to --steps)
    std::string device = "auto";
    std::string matmul_precision = "fp32";  // fp32 | tf32 (tensor cores; --device cuda only)
    // auto | fp32 | bf16 (mixed precision, --device cuda only); auto: bf16 on a device when the
    // model's head size allows it (64 or 128), else fp32
    std::string precision = "auto";
    std::string attention = "ours";  // ours (attention v2) | cudnn (cuDNN's SDPA; bf16 on a device)
    // auto: a device replays the inner step as a CUDA Graph where it is stable | off
    std::string cuda_graph = "auto";
};

}  // namespace diloco
