#include "optim/train.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "data/dataset.h"
#include "data/io.h"
#include "kernels/common.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "optim/inner.h"

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
    DILOCO_CHECK(o.shard == "iid", "--shard " + o.shard + " needs several workers; a single process "
                                   "reads the one iid stream");
    DILOCO_CHECK(o.eval_batches > 0, "--eval-batches must be positive");
    DILOCO_CHECK(o.eval_every >= 0 && o.ckpt_every >= 0 && o.log_every >= 0,
                 "--eval-every, --ckpt-every and --log-every must be >= 0");
    DILOCO_CHECK(o.device == "auto" || o.device == "cpu" || o.device == "cuda",
                 "--device must be auto, cpu or cuda, got '" + o.device + "'");
    DILOCO_CHECK(o.device != "cuda", "--device cuda: this build trains on the CPU only; the CUDA "
                                     "training backend is not part of it yet");
    DILOCO_CHECK(!o.data.empty() && !o.out.empty(), "train needs --data and --out");
    DILOCO_CHECK(o.stop_at >= 0, "--stop-at must be >= 0");
}

double evaluate(GPT& m, const std::string& data_dir, int batch, int T, int batches) {
    TokenStream val(data_dir, "val", m.config.vocab, T, false, 0);
    std::vector<int> tok((size_t)batch * T), tgt((size_t)batch * T);
    double sum = 0.0;
    for (int k = 0; k < batches; k++) {
        val.read_rows((uint64_t)k * batch, batch, tok.data(), tgt.data());
        sum += gpt_forward(m, tok.data(), tgt.data(), batch, T);
    }
    return sum / batches;
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

double run_train(const TrainOptions& o) {
    check_options(o);
    const DatasetInfo info = read_dataset_info(o.data);
    const GPTConfig cfg = resolve_config(o, info.vocab);
    const int B = o.batch, T = o.seq_len;
    const long global_rows = B;  // one process holds the whole global batch

    GPT m;
    gpt_build(m, cfg);
    gpt_init(m, o.seed);
    InnerOptimizer inner;
    inner_init(inner, m, inner_hyper(o));
    TrainState state;
    Rng rng(o.seed ^ 0xD110C0ull);
    std::copy(rng.s, rng.s + 4, state.rng);

    fs::create_directories(o.out);
    remove_stale_temporaries(o.out + "/ckpt");
    const std::string metrics_path = o.out + "/metrics.jsonl";
    if (o.resume) {
        const std::string ck_path = latest_checkpoint(o.out);
        if (ck_path.empty()) {
            std::fprintf(stderr, "resume: no checkpoint in %s/ckpt, starting from scratch\n", o.out.c_str());
        } else {
            Checkpoint ck = load_checkpoint(ck_path);
            DILOCO_CHECK(ck.config == cfg, "checkpoint " + ck_path + " was written for a different "
                                           "model (" + ck.config.describe() + ") than this run (" +
                                           cfg.describe() + ")");
            DILOCO_CHECK(ck.state.step <= o.steps, "checkpoint " + ck_path + " is at step " +
                                                       std::to_string(ck.state.step) +
                                                       ", beyond --steps " + std::to_string(o.steps));
            m.params = std::move(ck.params);
            inner.m = std::move(ck.adam_m);
            inner.v = std::move(ck.adam_v);
            state = ck.state;
            std::copy(state.rng, state.rng + 4, rng.s);
            std::fprintf(stderr, "resume: %s (step %lld)\n", ck_path.c_str(), (long long)state.step);
        }
    }
    if (state.step > 0)
        truncate_metrics(metrics_path, state.step);
    else if (fs::exists(metrics_path))
        fs::remove(metrics_path);

    TokenStream train(o.data, "train", cfg.vocab, T, true, o.seed);
    gpt_allocate(m, B, T);
    std::vector<int> tok((size_t)B * T), tgt((size_t)B * T);

    std::FILE* metrics = std::fopen(metrics_path.c_str(), "a");
    DILOCO_CHECK(metrics, "cannot open " + metrics_path + " for writing");
    std::fprintf(stderr,
                 "train: %s | %.2fM params | batch %d x %d tokens | %ld steps | %s | %d threads | "
                 "train %.2fM tokens\n",
                 cfg.describe().c_str(), m.num_params / 1e6, B, T, o.steps, o.inner_opt.c_str(),
                 omp_get_max_threads(), train.num_tokens() / 1e6);

    const auto t0 = std::chrono::steady_clock::now();
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    const int64_t first_step = state.step + 1;
    const int64_t end_step = o.stop_at > 0 ? std::min<int64_t>(o.stop_at, o.steps) : o.steps;
    double val_loss = NAN;
    for (int64_t step = first_step; step <= end_step; step++) {
        train.read_rows(state.data_cursor, B, tok.data(), tgt.data());
        state.data_cursor += global_rows;
        const float loss = compute_gradients(m, tok.data(), tgt.data(), B, T);
        DILOCO_CHECK(std::isfinite(loss), "loss became " + std::to_string(loss) + " at step " +
                                              std::to_string(step) + "; lower --lr");
        const InnerStepInfo info = inner_update(inner, m, step);
        const float lr = info.lr;
        const double norm = info.grad_norm;
        state.step = step;
        const double wall = seconds();
        const double tokens = (double)step * global_rows * T;
        std::fprintf(metrics,
                     "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.6g, \"grad_norm\": %.6g, "
                     "\"tokens\": %.0f, \"wall_s\": %.3f, \"bytes_outer\": 0, \"bytes_inner\": 0}\n",
                     (long long)step, loss, lr, norm, tokens, wall);
        const bool last = step == o.steps;
        if (o.eval_every > 0 && (step % o.eval_every == 0 || last)) {
            val_loss = evaluate(m, o.data, B, T, o.eval_batches);
            std::fprintf(metrics, "{\"step\": %lld, \"val_loss\": %.9g}\n", (long long)step, val_loss);
            std::fprintf(stderr, "step %lld | val_loss %.4f\n", (long long)step, val_loss);
        }
        std::fflush(metrics);
        if ((o.log_every > 0 && (step % o.log_every == 0 || step == first_step)) || last) {
            const double done = (double)(step - first_step + 1);
            const double tps = done * global_rows * T / wall;
            std::fprintf(stderr, "step %lld/%ld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | ETA %s\n",
                         (long long)step, o.steps, loss, lr, norm, tps,
                         fmt_duration(wall / done * (o.steps - step)).c_str());
        }
        if ((o.ckpt_every > 0 && (step % o.ckpt_every == 0 || last)) || (step == end_step && !last)) {
            std::copy(rng.s, rng.s + 4, state.rng);
            save_checkpoint(checkpoint_path(o.out, step), cfg, state, m.params.data(), inner.m.data(),
                            inner.v.data(), m.num_params);
        }
    }
    if (end_step < o.steps) {
        std::fclose(metrics);
        std::fprintf(stderr, "train: stopped at step %lld of %ld as asked; --resume continues\n",
                     (long long)end_step, o.steps);
        return NAN;
    }
    if (std::isnan(val_loss)) val_loss = evaluate(m, o.data, B, T, o.eval_batches);
    const double wall = seconds();
    const long trained = std::max<long>(0, o.steps - first_step + 1);
    std::fprintf(metrics,
                 "{\"summary\": true, \"step\": %ld, \"final_val_loss\": %.9g, \"tokens\": %.0f, "
                 "\"wall_s\": %.3f, \"tok_per_s\": %.1f, \"params\": %zu}\n",
                 o.steps, val_loss, (double)o.steps * global_rows * T, wall,
                 trained > 0 ? trained * (double)global_rows * T / wall : 0.0, m.num_params);
    std::fclose(metrics);
    std::fprintf(stderr, "train: done in %s | final val_loss %.4f\n", fmt_duration(wall).c_str(), val_loss);
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
