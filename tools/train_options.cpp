#include "tools/train_options.h"

namespace diloco {

// The algorithms' options: which one, and its outer, async, DiPaCo, streaming and across-worker
// link options (in --help's order).
static void add_algorithm_options(CLI::App* t, TrainOptions& o) {
    // algorithm
    t->add_option("--algo", o.algo, "dp, diloco, streaming, async or dipaco")->capture_default_str();
    t->add_option("--workers", o.workers, "replicas M; the ranks form M workers of R/M ranks")->capture_default_str();
    t->add_option("--inner-steps", o.inner_steps, "H: inner steps between outer syncs (diloco)")->capture_default_str();
    t->add_option("--outer-lr", o.outer_lr, "outer learning rate")->capture_default_str();
    t->add_option("--outer-momentum", o.outer_momentum, "outer momentum")->capture_default_str();
    t->add_option("--outer-opt", o.outer_opt, "nesterov or sgd; async also delayed-nesterov")->capture_default_str();
    t->add_option("--drop-prob", o.drop_prob, "probability that a replica's outer gradient is lost in a round")->capture_default_str();
    t->add_option("--drop-mode", o.drop_mode, "gradient: only the outer gradient is lost, the replica still takes the new "
                                              "global model (the DiLoCo paper); replica: it also keeps its own weights")
        ->capture_default_str();
    t->add_flag("--verify-sync", o.verify_sync, "check after every outer sync that the replicas agree");
    t->add_flag("--dump-replicas", o.dump_replicas, "write each replica's weights (llm.c format) to RUNDIR/replicas/ before every outer sync");
    // Asynchronous Local-SGD (a server rank besides the M workers: M + 1 ranks)
    t->add_option("--delay-buffer", o.delay_buffer, "N: arrivals per momentum update of delayed-nesterov (async)")
        ->capture_default_str();
    t->add_flag("--dylu", o.dylu, "dynamic local updates: worker w runs floor(v(w)/max v * H) inner steps (async)");
    t->add_option("--worker-speeds", o.worker_speeds, "one speed per worker, e.g. 1,1,0.5,0.25: worker w's inner "
                                                       "steps take 1/speed the time (async)");
    t->add_option("--virtual-step-s", o.virtual_step_s, "virtual clock: a speed-1 inner step takes this many "
                                                         "seconds, pushes apply in virtual-time order, runs are "
                                                         "reproducible (async; 0: wall clock)")
        ->capture_default_str();
    // DiPaCo (the data's documents routed by `diloco route` to K^L paths)
    t->add_option("--levels", o.levels, "L: levels the blocks are cut into (dipaco)")->capture_default_str();
    t->add_option("--modules", o.modules, "K: modules per level (dipaco)")->capture_default_str();
    t->add_option("--module-weights", o.module_weights, "a path's weight in the mean of a module's outer gradients: "
                                                        "uniform, or share (its share of the training tokens) (dipaco)")
        ->capture_default_str();
    // Streaming DiLoCo
    t->add_option("--fragments", o.fragments, "P: fragments of the blocks (streaming)")->capture_default_str();
    t->add_option("--fragment-pattern", o.fragment_pattern, "strided or sequential")->capture_default_str();
    t->add_option("--overlap", o.overlap, "tau: inner steps an exchange may take")->capture_default_str();
    t->add_option("--alpha", o.alpha, "mix of local progress when an overlapped exchange lands")->capture_default_str();
    t->add_option("--quant", o.quant, "exchange format: fp32, bf16, int8, e2m1, e3m0")->capture_default_str();
    t->add_option("--quant-block", o.quant_block, "values per fp32 scale of int8, e2m1, e3m0 (even, 2..65536)")
        ->capture_default_str();
    t->add_option("--exchange", o.exchange, "compressed outer gradients: allgather (sum all M payloads) or "
                                             "reduce-scatter (each replica sums one chunk, bytes independent of M)")
        ->capture_default_str();
    t->add_flag("--eager", o.eager, "eager outer updates: overlap a whole round, own fresh outer gradient (diloco, streaming)");
    t->add_flag("--delayed", o.delayed, "naive one-round delay: overlap a whole round, apply the previous round's average (diloco)");
    t->add_option("--outer-gbps", o.outer_gbps, "emulate an across-worker link of this many Gbit/s (0: off)")->capture_default_str();
    t->add_option("--outer-latency-ms", o.outer_latency_ms, "emulated latency per across-worker message")->capture_default_str();
    t->add_option("--comm-timeout", o.comm_timeout,
                  "seconds an outer sync (any blocking call across workers) may wait before the job ends, "
                  "naming the lost worker (0: wait for ever)")
        ->capture_default_str();
    t->add_option("--on-worker-loss", o.on_worker_loss,
                  "abort (the job ends naming the lost worker; relaunch with --resume) or continue (the surviving "
                  "workers drop it and go on: needs Open MPI with ULFM and mpirun --with-ft ulfm)")
        ->capture_default_str();
    t->add_option("--comm-progress", o.comm_progress,
                  "how overlapped exchanges move during compute: steps (an MPI test after each inner step) "
                  "or thread (a progress thread; needs MPI_THREAD_MULTIPLE)")
        ->capture_default_str();
}

void add_train_options(CLI::App* t, TrainOptions& o) {
    static std::string config_file;  // read before parsing (tools/config_file.h); listed for --help
    t->add_option("--config", config_file, "TOML or INI file setting any option below under its name; "
                                           "the command line overrides it");
    t->add_option("--data", o.data, "prepared data directory")->required();
    t->add_option("--out", o.out, "run directory (metrics.jsonl, ckpt/)")->required();
    // model
    t->add_option("--model", o.model, "preset: " + [] {
        std::string s;
        for (const auto& n : gpt_preset_names()) s += (s.empty() ? "" : ", ") + n;
        return s;
    }() + " (overrides the sizes)");
    t->add_option("--n-layer", o.n_layer, "transformer blocks")->capture_default_str();
    t->add_option("--n-head", o.n_head, "attention heads")->capture_default_str();
    t->add_option("--d-model", o.d_model, "model width")->capture_default_str();
    t->add_option("--seq-len", o.seq_len, "training sequence length")->capture_default_str();
    t->add_option("--max-seq-len", o.max_seq_len, "position-embedding rows (0: preset's or --seq-len)");
    // batch and length
    t->add_option("--batch", o.batch, "sequences per rank per forward pass (a micro-batch)")->capture_default_str();
    t->add_option("--grad-accum", o.grad_accum, "K: micro-batches of --batch per inner step, gradients added "
                                                "(a step trains on K x --batch sequences per rank)")
        ->capture_default_str();
    t->add_option("--steps", o.steps, "inner steps")->capture_default_str();
    // inner optimizer
    t->add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
    t->add_option("--warmup", o.warmup, "linear warmup steps")->capture_default_str();
    t->add_option("--min-lr-frac", o.min_lr_frac, "cosine floor as a fraction of --lr")->capture_default_str();
    t->add_option("--weight-decay", o.weight_decay, "decoupled weight decay on 2-D weights")->capture_default_str();
    t->add_option("--beta1", o.beta1, "AdamW beta1")->capture_default_str();
    t->add_option("--beta2", o.beta2, "AdamW beta2")->capture_default_str();
    t->add_option("--eps", o.eps, "AdamW epsilon")->capture_default_str();
    t->add_option("--grad-clip", o.grad_clip, "clip the global gradient norm (0: off)")->capture_default_str();
    t->add_option("--inner-opt", o.inner_opt, "adamw or sgd")->capture_default_str();
    add_algorithm_options(t, o);
    // data
    t->add_option("--shard", o.shard, "iid or noniid (replicas' data)")->capture_default_str();
    t->add_option("--seed", o.seed, "initialisation and data-order seed")->capture_default_str();
    // evaluation, checkpoints
    t->add_option("--eval-every", o.eval_every, "steps between evaluations (0: at the end only)")->capture_default_str();
    t->add_option("--eval-batches", o.eval_batches, "validation batches per evaluation")->capture_default_str();
    t->add_option("--ckpt-every", o.ckpt_every, "steps between checkpoints (0: only at the end)")->capture_default_str();
    t->add_option("--ckpt-keep", o.ckpt_keep, "numbered checkpoints kept, the newest (0: all)")->capture_default_str();
    t->add_option("--log-every", o.log_every, "steps between progress lines")->capture_default_str();
    t->add_option("--stop-at", o.stop_at, "leave after this step with a checkpoint (0: run to --steps)");
    t->add_flag("--resume", o.resume, "continue from the newest checkpoint in --out");
    t->add_option("--device", o.device, "auto, cpu or cuda")->capture_default_str();
    t->add_option("--matmul-precision", o.matmul_precision, "matrix products on --device cuda: fp32 or tf32 (tensor cores)")
        ->capture_default_str();
    t->add_option("--precision", o.precision,
                  "auto, fp32 or bf16 (mixed precision on --device cuda: bf16 weights copy and activations, fp32 master "
                  "weights and optimizer state); auto: bf16 on a device when the head size is 64 or 128")
        ->capture_default_str();
    t->add_option("--attention", o.attention,
                  "ours or cudnn: the bf16 path's attention, our kernel (variant 2) or cuDNN's fused SDPA")
        ->capture_default_str();
    t->add_option("--cuda-graph", o.cuda_graph,
                  "auto or off: on --device cuda, capture the inner step once as a CUDA Graph and launch it whole "
                  "(auto: where the step allows it; off: every kernel launched by itself)")
        ->capture_default_str();
}

void add_train_options_scratch(CLI::App* app) {
    static TrainOptions scratch;
    add_train_options(app, scratch);
}

}  // namespace diloco
