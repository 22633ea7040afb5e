#include "optim/train.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>

#include "data/dataset.h"
#include "data/io.h"
#include "kernels/common.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "model/llmc.h"
#include "comm/comm.h"
#include "optim/device.h"
#include "optim/diloco.h"
#include "optim/inner.h"
#include "optim/streaming.h"

namespace fs = std::filesystem;

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

static void check_options(const TrainOptions& o) {
    DILOCO_CHECK(o.batch > 0, "--batch must be positive, got " + std::to_string(o.batch));
    DILOCO_CHECK(o.steps > 0, "--steps must be positive, got " + std::to_string(o.steps));
    DILOCO_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr must be positive");
    DILOCO_CHECK(o.warmup >= 0, "--warmup must be >= 0");
    DILOCO_CHECK(o.min_lr_frac >= 0 && o.min_lr_frac <= 1, "--min-lr-frac must be in [0, 1]");
    DILOCO_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0");
    DILOCO_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1,
                 "--beta1 and --beta2 must be in [0, 1)");
    DILOCO_CHECK(o.grad_clip >= 0, "--grad-clip must be >= 0 (0 disables clipping)");
    DILOCO_CHECK(o.inner_opt == "adamw" || o.inner_opt == "sgd",
                 "--inner-opt must be adamw or sgd, got '" + o.inner_opt + "'");
    DILOCO_CHECK(o.algo == "dp" || o.algo == "diloco" || o.algo == "streaming",
                 "--algo must be dp, diloco or streaming, got '" + o.algo + "'");
    DILOCO_CHECK(o.fragment_pattern == "strided" || o.fragment_pattern == "sequential",
                 "--fragment-pattern must be strided or sequential, got '" + o.fragment_pattern + "'");
    (void)parse_quant_format(o.quant);
    DILOCO_CHECK(o.overlap >= 0 && o.overlap < o.inner_steps, "--overlap must be in [0, --inner-steps)");
    DILOCO_CHECK(o.alpha >= 0 && o.alpha <= 1, "--alpha must be in [0, 1]");
    DILOCO_CHECK(!(o.algo == "dp" && o.drop_prob > 0), "--drop-prob applies to --algo diloco and streaming");
    DILOCO_CHECK(!o.eager || o.algo != "dp", "--eager applies to --algo diloco and streaming");
    DILOCO_CHECK(!(o.eager && o.drop_prob > 0), "--eager and --drop-prob do not combine");
    DILOCO_CHECK(!(o.eager && o.overlap > 0), "--eager overlaps a whole round by itself: leave --overlap at 0");
    DILOCO_CHECK(o.outer_gbps >= 0 && o.outer_latency_ms >= 0, "--outer-gbps and --outer-latency-ms must be >= 0");
    DILOCO_CHECK(o.workers > 0, "--workers must be positive, got " + std::to_string(o.workers));
    DILOCO_CHECK(o.inner_steps > 0, "--inner-steps must be positive, got " + std::to_string(o.inner_steps));
    DILOCO_CHECK(o.outer_lr > 0, "--outer-lr must be positive");
    DILOCO_CHECK(o.outer_momentum >= 0 && o.outer_momentum < 1, "--outer-momentum must be in [0, 1)");
    DILOCO_CHECK(o.outer_opt == "nesterov" || o.outer_opt == "sgd",
                 "--outer-opt must be nesterov or sgd, got '" + o.outer_opt + "'");
    DILOCO_CHECK(o.drop_prob >= 0 && o.drop_prob < 1, "--drop-prob must be in [0, 1)");
    DILOCO_CHECK(o.shard == "iid" || o.shard == "noniid",
                 "--shard must be iid or noniid, got '" + o.shard + "'");
    DILOCO_CHECK(o.eval_batches > 0, "--eval-batches must be positive");
    DILOCO_CHECK(o.eval_every >= 0 && o.ckpt_every >= 0 && o.log_every >= 0,
                 "--eval-every, --ckpt-every and --log-every must be >= 0");
    DILOCO_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda",
                 "--device must be auto, cpu or cuda, got '" + o.device + "'");
    DILOCO_CHECK(!o.data.empty() && !o.out.empty(), "train needs --data and --out");
    DILOCO_CHECK(o.stop_at >= 0, "--stop-at must be >= 0");
}

// Every option that shapes the run, as text: ranks compare a hash of it at start.
static std::string describe_options(const TrainOptions& o) {
    std::ostringstream s;
    s << o.data << '|' << o.out << '|' << o.model << '|' << o.n_layer << '|' << o.n_head << '|'
      << o.d_model << '|' << o.seq_len << '|' << o.max_seq_len << '|' << o.batch << '|' << o.steps
      << '|' << o.lr << '|' << o.min_lr_frac << '|' << o.weight_decay << '|' << o.beta1 << '|'
      << o.beta2 << '|' << o.eps << '|' << o.grad_clip << '|' << o.warmup << '|' << o.inner_opt
      << '|' << o.algo << '|' << o.workers << '|' << o.inner_steps << '|' << o.outer_lr << '|'
      << o.outer_momentum << '|' << o.outer_opt << '|' << o.drop_prob << '|' << o.verify_sync << '|' << o.dump_replicas << '|' << o.fragments << '|'
      << o.fragment_pattern << '|' << o.overlap << '|' << o.alpha << '|' << o.quant << '|' << o.eager << '|'
      << o.outer_gbps << '|' << o.outer_latency_ms
      << '|' << o.shard << '|' << o.seed << '|' << o.eval_every << '|' << o.ckpt_every << '|'
      << o.eval_batches << '|' << o.resume << '|' << o.stop_at << '|' << o.device;
    return s.str();
}

static uint64_t fnv1a(const void* data, size_t n) {
    uint64_t h = 1469598103934665603ull;
    const uint8_t* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

// Throws the same CollectiveError on every rank if `value` is not the same on all of them.
static void require_same_on_all_ranks(Comm& comm, uint64_t value, const std::string& what) {
    const std::vector<uint64_t> all = comm.allgather_u64(value);
    for (size_t r = 1; r < all.size(); r++)
        if (all[r] != all[0])
            throw CollectiveError(what + " differs between rank 0 and rank " + std::to_string(r));
}

double evaluate_with(const std::function<float(const int*, const int*, int, int)>& forward, int vocab,
                     const std::string& data_dir, int T, long rows, int chunk) {
    TokenStream val(data_dir, "val", vocab, T, false, 0);
    std::vector<int> tok((size_t)chunk * T), tgt((size_t)chunk * T);
    double sum = 0.0;
    for (long r0 = 0; r0 < rows; r0 += chunk) {
        const int n = (int)std::min<long>(chunk, rows - r0);
        val.read_rows((uint64_t)r0, n, tok.data(), tgt.data());
        sum += (double)forward(tok.data(), tgt.data(), n, T) * n;
    }
    return sum / rows;
}

double evaluate(GPT& m, const std::string& data_dir, int T, long rows, int chunk) {
    return evaluate_with([&](const int* tok, const int* tgt, int n, int t) { return gpt_forward(m, tok, tgt, n, t); },
                         m.config.vocab, data_dir, T, rows, chunk);
}

// Whether this run trains on the registered accelerator backend; throws if it was asked for and
// is not there.
static bool use_device(const TrainOptions& o) {
    const DeviceBackend& be = device_backend();
    const int n = be.device_count ? be.device_count() : 0;
    if (o.device == "cuda") {
        DILOCO_CHECK(be.create, "--device cuda: this build has no CUDA backend (CUDA was not found at build time)");
        DILOCO_CHECK(n > 0, "--device cuda: no CUDA device is visible (see `diloco info`)");
        return true;
    }
    return o.device == "auto" && be.create && n > 0;
}

// Keeps the metrics lines a resumed run has already reproduced (step <= resumed step), drops the
// rest and any summary, so that the file reads as one uninterrupted run.
static void truncate_metrics(const std::string& path, int64_t step) {
    if (!fs::exists(path)) return;
    std::ifstream f(path);
    std::string line, kept;
    static const std::regex step_re("\"step\":\\s*(\\d+)");
    while (std::getline(f, line)) {
        std::smatch mt;
        if (line.find("final_val_loss") != std::string::npos) continue;
        if (std::regex_search(line, mt, step_re) && std::stoll(mt[1]) <= step) kept += line + "\n";
    }
    write_file_atomic(path, kept);
}

// A run killed while writing a checkpoint leaves `step_N.ckpt.tmp.<pid>`; it is never read, and
// is cleared here so that it does not pile up.
static void remove_stale_temporaries(const std::string& dir) {
    if (!fs::is_directory(dir)) return;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.path().filename().string().find(".tmp.") != std::string::npos) fs::remove(e.path());
}

static std::string fmt_duration(double s) {
    char buf[32];
    long t = (long)(s + 0.5);
    if (t >= 3600)
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
}

namespace {
// Per-step figures held until the next sync point, when rank 0 learns the global mean loss.
struct PendingStep {
    int64_t step;
    double loss;
    float lr;
    double grad_norm;
    double wall;     // seconds since start when the step finished
    double compute;  // seconds of those spent computing (forward, backward, optimizer)
};
}  // namespace

double run_train(const TrainOptions& o) {
    check_options(o);
    Comm comm(o.workers);
    comm.emulate_outer_link(o.outer_gbps, o.outer_latency_ms);
    const std::string options_text = describe_options(o);
    require_same_on_all_ranks(comm, fnv1a(options_text.data(), options_text.size()),
                              "the configuration (some option)");
    const bool root = comm.is_root();
    const bool is_diloco = o.algo == "diloco";
    const bool is_streaming = o.algo == "streaming";
    const bool replicas = is_diloco || is_streaming;  // each worker trains its own replica
    const DatasetInfo info = read_dataset_info(o.data);
    const GPTConfig cfg = resolve_config(o, info.vocab);
    const int B = o.batch, T = o.seq_len, M = comm.workers(), G = comm.ranks_per_worker();
    const long global_rows = (long)comm.world_size() * B;  // rows of one inner step, all replicas
    // DP reads one stream of R*B rows per step; a DiLoCo worker reads its own part, G*B per step
    const long stream_rows = replicas ? (long)G * B : global_rows;
    const long my_row = replicas ? (long)comm.local() * B : (long)comm.world_rank() * B;
    const long H = replicas ? o.inner_steps : 1;  // inner steps between syncs of the global model

    GPT m;
    gpt_build(m, cfg);
    gpt_init(m, o.seed);  // the same seed on every rank: the replicas start equal
    require_same_on_all_ranks(comm, crc32_update(0, m.params.data(), 4 * m.num_params),
                              "the initial model (checksum)");
    InnerOptimizer inner;
    inner_init(inner, m, inner_hyper(o));
    const OuterHyper outer_h{o.outer_lr, o.outer_momentum, o.outer_opt == "nesterov"};
    OuterState outer;
    EagerState eager;
    TrainState state;
    Rng rng(o.seed ^ 0xD110C0ull);
    std::copy(rng.s, rng.s + 4, state.rng);

    if (root) {
        fs::create_directories(o.out);
        remove_stale_temporaries(o.out + "/ckpt");
    }
    const std::string metrics_path = o.out + "/metrics.jsonl";
    const bool distributed = comm.world_size() > 1;
    std::vector<std::vector<float>> resumed_outer;  // DiLoCo: this rank's slices of theta and momentum
    if (o.resume) {
        // one process: the newest checkpoint; several ranks: the newest step every rank has a file for
        std::string ck_path = distributed ? "" : latest_checkpoint(o.out);
        if (distributed) {
            const int64_t mine = latest_rank_checkpoint_step(o.out, comm.world_rank());
            const int64_t common = (int64_t)-comm.max_world(-(double)mine);
            const int64_t newest = (int64_t)comm.max_world((double)mine);
            if (common < 0 && newest >= 0)
                throw CollectiveError("--resume: some ranks have checkpoints in " + o.out + "/ckpt and others none");
            const bool have = common >= 0 && fs::exists(rank_checkpoint_path(o.out, common, comm.world_rank()));
            if (comm.sum_world(have ? 1.0 : 0.0) < comm.world_size() && common >= 0)
                throw CollectiveError("--resume: not every rank has a checkpoint for step " + std::to_string(common));
            if (common >= 0) ck_path = rank_checkpoint_path(o.out, common, comm.world_rank());
        }
        if (ck_path.empty()) {
            if (root) std::fprintf(stderr, "resume: no checkpoint in %s/ckpt, starting from scratch\n", o.out.c_str());
        } else {
            Checkpoint ck = load_checkpoint(ck_path);
            DILOCO_CHECK(ck.config == cfg, "checkpoint " + ck_path + " was written for a different "
                                           "model (" + ck.config.describe() + ") than this run (" +
                                           cfg.describe() + ")");
            DILOCO_CHECK(ck.state.step <= o.steps, "checkpoint " + ck_path + " is at step " +
                                                       std::to_string(ck.state.step) +
                                                       ", beyond --steps " + std::to_string(o.steps));
            DILOCO_CHECK(!is_diloco || ck.state.step % H == 0 || ck.state.step == o.steps,
                         "checkpoint " + ck_path + " is not at an outer sync");
            DILOCO_CHECK(!is_diloco || ck.extra.size() == (o.eager ? 4u : 2u),
                         "checkpoint " + ck_path + " holds no DiLoCo outer state (or was written by another --eager)");
            DILOCO_CHECK(!is_streaming || !ck.extra.empty(),
                         "checkpoint " + ck_path + " holds no Streaming DiLoCo state");
            m.params = std::move(ck.params);
            inner.m = std::move(ck.adam_m);
            inner.v = std::move(ck.adam_v);
            resumed_outer = std::move(ck.extra);
            state = ck.state;
            std::copy(state.rng, state.rng + 4, rng.s);
            if (root) std::fprintf(stderr, "resume: %s (step %lld)\n", ck_path.c_str(), (long long)state.step);
        }
    }
    if (is_diloco) {
        outer_init(outer, comm, m.params.data(), m.num_params);
        if (!resumed_outer.empty()) {
            DILOCO_CHECK(resumed_outer[0].size() == outer.slice.count && resumed_outer[1].size() == outer.slice.count,
                         "the checkpoint's outer state was written with another rank layout");
            outer.global = std::move(resumed_outer[0]);
            outer.momentum = std::move(resumed_outer[1]);
            if (o.eager) {  // the exchange that was in flight, completed before the checkpoint
                DILOCO_CHECK(resumed_outer[2].size() == (size_t)M * outer.slice.count && resumed_outer[3].size() == 1,
                             "the checkpoint's eager state was written with another rank layout");
                eager.send.assign(outer.slice.count, 0.0f);
                eager.recv[0] = std::move(resumed_outer[2]);
                eager.recv[1].assign((size_t)M * outer.slice.count, 0.0f);
                eager.current = 0;
                eager.in_flight = resumed_outer[3][0] != 0.0f;
            }
        }
    }
    // on an accelerator, the model, gradients and AdamW state live there from here on
    std::unique_ptr<DeviceTrainer> dev;
    if (use_device(o)) {
        dev = device_backend().create(m, inner_hyper(o), B, T, comm);
        if (state.step > 0) dev->moments_from_host(inner.m.data(), inner.v.data());
    }
    const bool stage_grads = dev && (replicas ? G > 1 : comm.world_size() > 1);
    auto eval_now = [&] {
        if (!dev) return evaluate(m, o.data, T, o.eval_batches * global_rows, B);
        return evaluate_with([&](const int* tk, const int* tg, int n, int t) { return dev->forward_loss(tk, tg, n, t); },
                             cfg.vocab, o.data, T, o.eval_batches * global_rows, B);
    };
    if (root) {
        if (state.step > 0)
            truncate_metrics(metrics_path, state.step);
        else if (fs::exists(metrics_path))
            fs::remove(metrics_path);
    }

    TokenStream train(o.data, "train", cfg.vocab, T, true, o.seed);
    if (replicas) train.set_partition(M, comm.worker(), o.shard == "noniid");
    std::unique_ptr<Streaming> streaming;
    if (is_streaming) {
        StreamingOptions so;
        so.fragments = o.fragments;
        so.strided = o.fragment_pattern == "strided";
        so.H = H;
        so.tau = o.overlap;
        so.alpha = o.alpha;
        so.quant = parse_quant_format(o.quant);
        so.outer = outer_h;
        so.eager = o.eager;
        so.drop_prob = o.drop_prob;
        so.seed = o.seed;
        streaming = std::make_unique<Streaming>(so, comm, m);
        if (!resumed_outer.empty()) streaming->load_state(std::move(resumed_outer));
    }
    gpt_allocate(m, B, T);
    std::vector<int> tok((size_t)B * T), tgt((size_t)B * T);

    std::FILE* metrics = nullptr;
    if (root) {
        metrics = std::fopen(metrics_path.c_str(), "a");
        DILOCO_CHECK(metrics, "cannot open " + metrics_path + " for writing");
        std::fprintf(stderr, "train: %s | %.2fM params | %s", cfg.describe().c_str(), m.num_params / 1e6,
                     o.algo.c_str());
        if (replicas)
            std::fprintf(stderr, " M=%d H=%ld outer %s lr %.2g mom %.2g", M, H, o.outer_opt.c_str(),
                         o.outer_lr, o.outer_momentum);
        if (is_streaming)
            std::fprintf(stderr, " P=%d %s tau=%ld alpha=%.2g %s", o.fragments, o.fragment_pattern.c_str(), o.overlap,
                         o.alpha, o.quant.c_str());
        std::fprintf(stderr, " | %d ranks (%d workers x %d) | batch %d x %d per rank | %ld steps | %s | "
                             "train %.2fM tokens\n",
                     comm.world_size(), M, G, B, T, o.steps,
                     dev ? device_backend().name.c_str() : ("cpu, " + std::to_string(omp_get_max_threads()) + " threads").c_str(),
                     train.num_tokens() / 1e6);
    }

    const auto t0 = std::chrono::steady_clock::now();
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    const int64_t first_step = state.step + 1;
    const int64_t end_step = o.stop_at > 0 ? std::min<int64_t>(o.stop_at, o.steps) : o.steps;
    double val_loss = NAN;
    int64_t next_eval = o.eval_every > 0 ? (state.step / o.eval_every + 1) * o.eval_every : INT64_MAX;
    int64_t next_ckpt = o.ckpt_every > 0 ? (state.step / o.ckpt_every + 1) * o.ckpt_every : INT64_MAX;
    // the most bytes this rank sent across workers in one inner step; the final step, where every
    // Streaming DiLoCo fragment syncs at once so that the run ends on one model, is left out
    uint64_t peak_bytes_step = 0;
    double compute_s = 0.0;
    std::vector<PendingStep> pending;
    pending.reserve(H);
    std::vector<double> losses(H);
    for (int64_t step = first_step; step <= end_step; step++) {
        // one inner step: this rank's rows of the step's batch, gradients averaged over the
        // ranks that share them (all of them for DP, the worker's for DiLoCo)
        train.read_rows(state.data_cursor + my_row, B, tok.data(), tgt.data());
        state.data_cursor += stream_rows;
        const double c0 = seconds();
        const float loss = dev ? dev->compute_gradients(tok.data(), tgt.data(), B, T)
                               : compute_gradients(m, tok.data(), tgt.data(), B, T);
        compute_s += seconds() - c0;
        DILOCO_CHECK(std::isfinite(loss), "loss became " + std::to_string(loss) + " at step " +
                                              std::to_string(step) + " on rank " +
                                              std::to_string(comm.world_rank()) + "; lower --lr");
        if (stage_grads) dev->grads_to_host(m.grads.data());  // (NCCL would keep them on the device)
        const uint64_t outer_before = comm.bytes_outer();
        if (replicas)
            comm.average_worker(m.grads.data(), m.num_params);
        else
            comm.average_world(m.grads.data(), m.num_params);
        if (stage_grads) dev->grads_from_host(m.grads.data());
        const double c1 = seconds();
        const InnerStepInfo si = dev ? dev->inner_update(step) : inner_update(inner, m, step);
        compute_s += seconds() - c1;
        state.step = step;
        pending.push_back({step, loss, si.lr, si.grad_norm, seconds(), compute_s});

        const bool last = step == o.steps;
        if (is_streaming) {
            if (dev) dev->params_to_host(m.params.data());
            // the last step of the run (not of a --stop-at slot) ends on one global model
            streaming->after_step(comm, m.params.data(), step, last);
            if (dev) dev->params_from_host(m.params.data());
        }
        const bool sync = !replicas || step % H == 0 || step == end_step;
        if (!sync) {
            peak_bytes_step = std::max(peak_bytes_step, comm.bytes_outer() - outer_before);
            continue;
        }
        if (is_diloco) {
            // the last round always delivers, so that every run ends on the global model
            const long round = (step + H - 1) / H;
            int n_delivered = 0;
            for (int r = 0; r < M; r++)
                n_delivered += last || replica_delivers(o.seed, round, r, o.drop_prob);
            const bool delivered = last || replica_delivers(o.seed, round, comm.worker(), o.drop_prob);
            if (dev) dev->params_to_host(m.params.data());
            if (o.dump_replicas && comm.local() == 0) {
                char name[96];
                std::snprintf(name, sizeof name, "/replicas/step_%08lld.replica_%03d.bin", (long long)step, comm.worker());
                fs::create_directories(o.out + "/replicas");
                write_llmc(o.out + name, m, m.params.data());
            }
            if (o.eager)
                diloco_eager_sync(outer, eager, comm, m.params.data(), m.num_params, outer_h, last);
            else
                diloco_outer_sync(outer, comm, m.params.data(), m.num_params, outer_h, delivered, n_delivered);
            if (dev) dev->params_from_host(m.params.data());
            if (o.verify_sync && (!o.eager || last)) {  // eager replicas may differ until the end
                const uint64_t crc = delivered ? crc32_update(0, m.params.data(), 4 * m.num_params) : 0;
                const std::vector<uint64_t> all = comm.allgather_u64(crc);
                for (size_t r = 0; r < all.size(); r++)
                    if (all[r] != 0 && crc != 0 && all[r] != crc)
                        throw CollectiveError("after the outer sync of step " + std::to_string(step) +
                                              ", rank " + std::to_string(r) + " holds different weights");
            }
        }
        // telemetry: the global mean loss of each pending step reaches rank 0 (one small message
        // per sync, counted on the outer link)
        for (size_t k = 0; k < pending.size(); k++) losses[k] = pending[k].loss;
        comm.reduce_to_root(losses.data(), pending.size());
        if (root) {
            for (size_t k = 0; k < pending.size(); k++) {
                const PendingStep& p = pending[k];
                const double wall = p.wall;
                std::fprintf(metrics,
                             "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.6g, \"grad_norm\": %.6g, "
                             "\"tokens\": %.0f, \"wall_s\": %.3f, \"compute_util\": %.4f, \"bytes_outer\": %llu, "
                             "\"bytes_inner\": %llu}\n",
                             (long long)p.step, losses[k] / comm.world_size(), p.lr, p.grad_norm,
                             (double)p.step * global_rows * T, wall, wall > 0 ? p.compute / wall : 0.0,
                             (unsigned long long)comm.bytes_outer(), (unsigned long long)comm.bytes_inner());
                const bool log_line = o.log_every > 0 && (p.step % o.log_every == 0 || p.step == first_step);
                if (log_line || p.step == o.steps) {
                    const double done = (double)(p.step - first_step + 1);
                    std::fprintf(stderr, "step %lld/%ld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | ETA %s\n",
                                 (long long)p.step, o.steps, losses[k] / comm.world_size(), p.lr, p.grad_norm,
                                 done * global_rows * T / wall,
                                 fmt_duration(wall / done * (o.steps - p.step)).c_str());
                }
            }
        }
        pending.clear();
        if (step != end_step) peak_bytes_step = std::max(peak_bytes_step, comm.bytes_outer() - outer_before);
        // evaluation and checkpoints of the global model, by rank 0, at sync points
        if (root && (step >= next_eval || last) && (o.eval_every > 0 || last)) {
            val_loss = eval_now();
            std::fprintf(metrics, "{\"step\": %lld, \"val_loss\": %.9g}\n", (long long)step, val_loss);
            std::fprintf(stderr, "step %lld | val_loss %.4f\n", (long long)step, val_loss);
            while (next_eval <= step) next_eval += o.eval_every;
        }
        if (root) std::fflush(metrics);
        if (step >= next_ckpt || (o.ckpt_every > 0 && last) || (step == end_step && !last)) {
            std::copy(rng.s, rng.s + 4, state.rng);
            if (dev) {
                dev->params_to_host(m.params.data());
                dev->moments_to_host(inner.m.data(), inner.v.data());
            }
            // every rank keeps what it alone holds; rank 0 also writes the global model for
            // eval, generate and export
            std::vector<std::vector<float>> extra;
            if (is_diloco) extra = {outer.global, outer.momentum};
            if (is_diloco && o.eager) {  // complete the exchange in flight; its data is the state
                if (eager.in_flight) comm.wait(eager.request);
                extra.push_back(eager.recv[eager.current]);
                extra.push_back({eager.in_flight ? 1.0f : 0.0f});
            }
            if (is_streaming) extra = streaming->save_state(comm);
            if (distributed)
                save_checkpoint(rank_checkpoint_path(o.out, step, comm.world_rank()), cfg, state, m.params.data(),
                                inner.m.data(), inner.v.data(), m.num_params, extra);
            // one process: this file is also the one --resume reads, so it carries the outer state
            if (root)
                save_checkpoint(checkpoint_path(o.out, step), cfg, state, m.params.data(), inner.m.data(),
                                inner.v.data(), m.num_params, distributed ? std::vector<std::vector<float>>{} : extra);
            while (next_ckpt <= step) next_ckpt += o.ckpt_every;
        }
    }
    if (end_step < o.steps) {
        if (root) std::fclose(metrics);
        if (root)
            std::fprintf(stderr, "train: stopped at step %lld of %ld as asked; --resume continues\n",
                         (long long)end_step, o.steps);
        return NAN;
    }
    if (root && std::isnan(val_loss)) val_loss = eval_now();
    const double wall = seconds();
    const long trained = std::max<long>(0, o.steps - first_step + 1);
    // across-worker traffic of the whole job, and what data-parallel would have sent: every step,
    // an allreduce of each rank's 1/G slice over the M workers
    const double outer_total = comm.sum_world((double)comm.bytes_outer());
    const double dp_outer_total = M > 1 ? (double)o.steps * comm.world_size() * 2.0 * (M - 1) / M *
                                              4.0 * ((double)m.num_params / G)
                                        : 0.0;
    if (root) {
        std::fprintf(metrics,
                     "{\"summary\": true, \"step\": %ld, \"final_val_loss\": %.9g, \"tokens\": %.0f, "
                     "\"wall_s\": %.3f, \"tok_per_s\": %.1f, \"params\": %zu, \"algo\": \"%s\", "
                     "\"workers\": %d, \"ranks\": %d, \"inner_steps\": %ld, \"bytes_outer_total\": %.0f, "
                     "\"bytes_outer_dp_equivalent\": %.0f, \"peak_bytes_step\": %llu, \"compute_util\": %.4f}\n",
                     o.steps, val_loss, (double)o.steps * global_rows * T, wall,
                     trained > 0 ? trained * (double)global_rows * T / wall : 0.0, m.num_params,
                     o.algo.c_str(), M, comm.world_size(), H, outer_total, dp_outer_total,
                     (unsigned long long)peak_bytes_step, wall > 0 ? compute_s / wall : 0.0);
        std::fclose(metrics);
        std::fprintf(stderr, "train: done in %s | final val_loss %.4f\n", fmt_duration(wall).c_str(), val_loss);
        if (M > 1)
            std::fprintf(stderr, "train: across-worker bytes %.2f MB in total; data-parallel would have "
                                 "sent %.2f MB for the same tokens (%.1fx)\n",
                         outer_total / 1e6, dp_outer_total / 1e6, dp_outer_total / std::max(outer_total, 1.0));
    }
    return val_loss;
}

std::string run_generate(const GenerateOptions& o) {
    DILOCO_CHECK(o.tokens >= 0, "--tokens must be >= 0");
    Checkpoint ck = load_checkpoint(o.ckpt);
    GPT m;
    gpt_build(m, ck.config);
    m.params = std::move(ck.params);
    const int maxT = ck.config.max_seq_len, V = ck.config.vocab;
    const bool bytes = V == 256;
    std::vector<int> ctx;
    if (bytes) {
        for (unsigned char ch : o.prompt) ctx.push_back(ch);
    } else {
        ctx.push_back(V == 50257 ? 50256 : 0);  // GPT-2's <|endoftext|>; no text tokenizer here
    }
    DILOCO_CHECK(!ctx.empty(), "--prompt must not be empty");
    gpt_allocate(m, 1, std::min<int>(maxT, (int)ctx.size() + o.tokens));
    Rng rng(o.seed);
    std::string out;
    std::vector<double> prob(V);
    for (int i = 0; i < o.tokens; i++) {
        const int n = std::min<int>((int)ctx.size(), m.T);
        const int* window = ctx.data() + ctx.size() - n;
        gpt_forward(m, window, nullptr, 1, n);
        const float* logits = gpt_logits(m) + (size_t)(n - 1) * V;
        int next = 0;
        if (o.temperature <= 0.0f) {
            for (int v = 1; v < V; v++)
                if (logits[v] > logits[next]) next = v;
        } else {
            double mx = logits[0], sum = 0.0;
            for (int v = 1; v < V; v++) mx = std::max(mx, (double)logits[v]);
            for (int v = 0; v < V; v++) sum += prob[v] = std::exp((logits[v] - mx) / o.temperature);
            double u = rng.uniform() * sum;
            next = V - 1;
            for (int v = 0; v < V; v++) {
                u -= prob[v];
                if (u <= 0.0) {
                    next = v;
                    break;
                }
            }
        }
        ctx.push_back(next);
        if (bytes)
            out.push_back((char)next);
        else
            out += std::to_string(next) + " ";
    }
    return out;
}

}  // namespace diloco
