// `diloco train`'s options: checked, resolved, and described for the ranks to compare.
#include "optim/train_checks.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "kernels/common.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "optim/algorithm.h"
#include "optim/device.h"
#include "optim/exchange.h"
#include "optim/train.h"

namespace diloco {

InnerHyper inner_hyper(const TrainOptions& o) {
    InnerHyper h;
    h.opt = o.inner_opt;
    h.lr = o.lr;
    h.min_lr_frac = o.min_lr_frac;
    h.weight_decay = o.weight_decay;
    h.beta1 = o.beta1;
    h.beta2 = o.beta2;
    h.eps = o.eps;
    h.grad_clip = o.grad_clip;
    h.warmup = o.warmup;
    h.total_steps = o.steps;
    return h;
}

GPTConfig resolve_config(const TrainOptions& o, int vocab) {
    GPTConfig c;
    if (!o.model.empty()) {
        c = gpt_preset(o.model, vocab);
    } else {
        c = GPTConfig{vocab, o.max_seq_len > 0 ? o.max_seq_len : o.seq_len, o.n_layer, o.n_head,
                      o.d_model};
    }
    if (!o.model.empty() && o.max_seq_len > 0) c.max_seq_len = o.max_seq_len;
    c.validate();
    DILOCO_CHECK(o.seq_len > 0, "--seq-len must be positive, got " + std::to_string(o.seq_len));
    DILOCO_CHECK(o.seq_len <= c.max_seq_len, "--seq-len " + std::to_string(o.seq_len) +
                                                 " exceeds the model's max_seq_len " +
                                                 std::to_string(c.max_seq_len));
    return c;
}

// Gradient accumulation's K: at least one micro-batch, and few enough that a rank's step (K * B * T
// tokens, read into host buffers at once) fits an int and a few GB; GPT-2's 0.5M-token batch is
// 2^19 tokens, far below the bound. K = 1 leaves --batch to its own checks, as before.
static void check_grad_accum(const TrainOptions& o) {
    constexpr long kMaxAccum = 1 << 16, kMaxStepTokens = 1L << 28;
    DILOCO_CHECK(o.grad_accum >= 1, "--grad-accum must be >= 1 (micro-batches per inner step), got " +
                                        std::to_string(o.grad_accum));
    DILOCO_CHECK(o.grad_accum <= kMaxAccum, "--grad-accum " + std::to_string(o.grad_accum) +
                                                " is implausibly large (at most " + std::to_string(kMaxAccum) + ")");
    const long tokens = (long)o.grad_accum * o.batch * std::max(o.seq_len, 1);
    DILOCO_CHECK(o.grad_accum == 1 || tokens <= kMaxStepTokens, "--grad-accum " + std::to_string(o.grad_accum) + " x --batch " +
                                               std::to_string(o.batch) + " x --seq-len " + std::to_string(o.seq_len) +
                                               " = " + std::to_string(tokens) +
                                               " tokens per rank per step is implausibly large (at most " +
                                               std::to_string(kMaxStepTokens) + ")");
}

void check_options(const TrainOptions& o) {
    DILOCO_CHECK(o.batch > 0, "--batch must be positive, got " + std::to_string(o.batch));
    DILOCO_CHECK(o.steps > 0, "--steps must be positive, got " + std::to_string(o.steps));
    check_grad_accum(o);
    DILOCO_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr must be positive");
    DILOCO_CHECK(o.warmup >= 0, "--warmup must be >= 0");
    DILOCO_CHECK(o.min_lr_frac >= 0 && o.min_lr_frac <= 1, "--min-lr-frac must be in [0, 1]");
    DILOCO_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0");
    DILOCO_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1,
                 "--beta1 and --beta2 must be in [0, 1)");
    DILOCO_CHECK(o.grad_clip >= 0, "--grad-clip must be >= 0 (0 disables clipping)");
    DILOCO_CHECK(o.inner_opt == "adamw" || o.inner_opt == "sgd",
                 "--inner-opt must be adamw or sgd, got '" + o.inner_opt + "'");
    DILOCO_CHECK(o.fragment_pattern == "strided" || o.fragment_pattern == "sequential",
                 "--fragment-pattern must be strided or sequential, got '" + o.fragment_pattern + "'");
    (void)parse_quant_format(o.quant);
    check_quant_block(o.quant_block);
    (void)parse_exchange(o.exchange);
    DILOCO_CHECK(o.overlap >= 0 && o.overlap < o.inner_steps, "--overlap must be in [0, --inner-steps)");
    DILOCO_CHECK(o.alpha >= 0 && o.alpha <= 1, "--alpha must be in [0, 1]");
    DILOCO_CHECK(!(o.eager && o.drop_prob > 0), "--eager and --drop-prob do not combine");
    DILOCO_CHECK(!(o.eager && o.overlap > 0), "--eager overlaps a whole round by itself: leave --overlap at 0");
    DILOCO_CHECK(o.outer_gbps >= 0 && o.outer_latency_ms >= 0, "--outer-gbps and --outer-latency-ms must be >= 0");
    if (!(std::isfinite(o.comm_timeout) && o.comm_timeout >= 0)) {
        char got[32];
        std::snprintf(got, sizeof got, "%g", o.comm_timeout);
        throw Error(std::string("--comm-timeout must be a number of seconds >= 0 (0: off), got ") + got);
    }
    DILOCO_CHECK(o.comm_progress == "steps" || o.comm_progress == "thread",
                 "--comm-progress must be steps or thread, got '" + o.comm_progress + "'");
    DILOCO_CHECK(o.on_worker_loss == "abort" || o.on_worker_loss == "continue",
                 "--on-worker-loss must be abort or continue, got '" + o.on_worker_loss + "'");
    DILOCO_CHECK(!(o.on_worker_loss == "continue" && o.comm_progress == "thread"),
                 "--on-worker-loss continue covers the blocking calls across workers, which need no "
                 "--comm-progress thread: leave it at steps");
    DILOCO_CHECK(o.workers > 0, "--workers must be positive, got " + std::to_string(o.workers));
    DILOCO_CHECK(o.inner_steps > 0, "--inner-steps must be positive, got " + std::to_string(o.inner_steps));
    DILOCO_CHECK(o.outer_lr > 0, "--outer-lr must be positive");
    DILOCO_CHECK(o.outer_momentum >= 0 && o.outer_momentum < 1, "--outer-momentum must be in [0, 1)");
    DILOCO_CHECK(o.outer_opt == "nesterov" || o.outer_opt == "sgd" || o.outer_opt == "delayed-nesterov",
                 "--outer-opt must be nesterov or sgd (or delayed-nesterov with --algo async), got '" + o.outer_opt + "'");
    DILOCO_CHECK(o.drop_prob >= 0 && o.drop_prob < 1, "--drop-prob must be in [0, 1)");
    DILOCO_CHECK(o.drop_mode == "gradient" || o.drop_mode == "replica",
                 "--drop-mode must be gradient or replica, got '" + o.drop_mode + "'");
    DILOCO_CHECK(o.shard == "iid" || o.shard == "noniid",
                 "--shard must be iid or noniid, got '" + o.shard + "'");
    DILOCO_CHECK(o.eval_batches > 0, "--eval-batches must be positive");
    DILOCO_CHECK(o.eval_every >= 0 && o.ckpt_every >= 0 && o.log_every >= 0 && o.ckpt_keep >= 0,
                 "--eval-every, --ckpt-every, --ckpt-keep and --log-every must be >= 0");
    DILOCO_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda",
                 "--device must be auto, cpu or cuda, got '" + o.device + "'");
    DILOCO_CHECK(!o.data.empty() && !o.out.empty(), "train needs --data and --out");
    DILOCO_CHECK(o.stop_at >= 0, "--stop-at must be >= 0");
    (void)parse_matmul_precision(o.matmul_precision);
    DILOCO_CHECK(o.precision == "auto" || o.precision == "fp32" || o.precision == "bf16",
                 "--precision must be auto, fp32 or bf16, got '" + o.precision + "'");
    DILOCO_CHECK(o.attention == "ours" || o.attention == "cudnn", "--attention must be ours or cudnn, got '" + o.attention + "'");
    DILOCO_CHECK(o.cuda_graph == "auto" || o.cuda_graph == "off", "--cuda-graph must be auto or off, got '" + o.cuda_graph + "'");
    find_algorithm(o.algo).check_options(o);  // what the chosen algorithm refuses
}

// Every option that shapes the run, as text: ranks compare a hash of it at start.
std::string describe_options(const TrainOptions& o) {
    std::ostringstream s;
    s << o.data << '|' << o.out << '|' << o.model << '|' << o.n_layer << '|' << o.n_head << '|'
      << o.d_model << '|' << o.seq_len << '|' << o.max_seq_len << '|' << o.batch << '|' << o.steps
      << '|' << o.lr << '|' << o.min_lr_frac << '|' << o.weight_decay << '|' << o.beta1 << '|'
      << o.beta2 << '|' << o.eps << '|' << o.grad_clip << '|' << o.warmup << '|' << o.inner_opt
      << '|' << o.algo << '|' << o.workers << '|' << o.inner_steps << '|' << o.outer_lr << '|'
      << o.outer_momentum << '|' << o.outer_opt << '|' << o.drop_prob << '|' << o.drop_mode << '|' << o.delayed << '|' << o.verify_sync << '|' << o.dump_replicas << '|' << o.fragments << '|'
      << o.fragment_pattern << '|' << o.overlap << '|' << o.alpha << '|' << o.quant << '|' << o.quant_block << '|' << o.exchange << '|' << o.eager << '|'
      << o.outer_gbps << '|' << o.outer_latency_ms << '|' << o.comm_timeout << '|' << o.comm_progress << '|' << o.on_worker_loss
      << '|' << o.shard << '|' << o.seed << '|' << o.eval_every << '|' << o.ckpt_every << '|'
      << o.eval_batches << '|' << o.resume << '|' << o.stop_at << '|' << o.device << '|' << o.matmul_precision << '|' << o.precision
      << '|' << o.ckpt_keep << '|' << o.delay_buffer << '|' << o.dylu << '|' << o.worker_speeds << '|'
      << o.virtual_step_s << '|' << o.grad_accum << '|' << o.levels << '|' << o.modules << '|' << o.module_weights << '|' << o.attention;
    return s.str();
}

// Whether this run trains on the registered accelerator backend; throws if it was asked for and
// is not there.
bool use_device(const TrainOptions& o) {
    const DeviceBackend& be = device_backend();
    const int n = be.device_count ? be.device_count() : 0;
    if (o.device == "cuda") {
        DILOCO_CHECK(be.create, "--device cuda: this build has no CUDA backend (CUDA was not found at build time)");
        DILOCO_CHECK(n > 0, "--device cuda: no CUDA device is visible (see `diloco info`)");
        return true;
    }
    return o.device == "auto" && be.create && n > 0;
}

// --precision resolved: bf16 only on a device, and only for head sizes the bf16 path runs; auto
// takes it where it can.
Precision storage_precision(const TrainOptions& o, const GPTConfig& c, bool on_device) {
    std::string why;
    const bool supported = bf16_supports(c, &why);
    if (o.precision == "bf16") {
        DILOCO_CHECK(on_device, "--precision bf16 needs --device cuda: the CPU trainer computes in fp32");
        DILOCO_CHECK(supported, why);
        return Precision::bf16;
    }
    return o.precision == "auto" && on_device && supported ? Precision::bf16 : Precision::fp32;
}

}  // namespace diloco
