#include "optim/train.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>

#include "data/dataset.h"
#include "data/io.h"
#include "kernels/common.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "model/llmc.h"
#include "comm/comm.h"
#include "optim/algorithm.h"
#include "optim/device.h"
#include "optim/elastic.h"
#include "optim/exchange.h"
#include "optim/inner.h"
#include "optim/run.h"
#include "optim/trace.h"
#include "optim/train_checks.h"
#include "optim/turns.h"

namespace fs = std::filesystem;

namespace diloco {

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

double evaluate_stream(const std::function<float(const int*, const int*, int, int)>& forward, TokenStream& val, int T,
                       long rows, int chunk) {
    std::vector<int> tok((size_t)chunk * T), tgt((size_t)chunk * T);
    double sum = 0.0;
    for (long r0 = 0; r0 < rows; r0 += chunk) {
        const int n = (int)std::min<long>(chunk, rows - r0);
        val.read_rows((uint64_t)r0, n, tok.data(), tgt.data());
        sum += (double)forward(tok.data(), tgt.data(), n, T) * n;
    }
    return sum / rows;
}

double evaluate_with(const std::function<float(const int*, const int*, int, int)>& forward, int vocab,
                     const std::string& data_dir, int T, long rows, int chunk) {
    TokenStream val(data_dir, "val", vocab, T, false, 0);
    return evaluate_stream(forward, val, T, rows, chunk);
}

double evaluate(GPT& m, const std::string& data_dir, int T, long rows, int chunk) {
    return evaluate_with([&](const int* tok, const int* tgt, int n, int t) { return gpt_forward(m, tok, tgt, n, t); },
                         m.config.vocab, data_dir, T, rows, chunk);
}

// Keeps the metrics lines a resumed run has already reproduced (step <= resumed step), drops the
// rest and any closing line (summary, stop), so that the file reads as one uninterrupted run.
static void truncate_metrics(const std::string& path, int64_t step) {
    if (!fs::exists(path)) return;
    std::ifstream f(path);
    std::string line, kept;
    // bounded, so that a damaged line can neither overflow stoll nor make std::regex recurse deep
    static const std::regex step_re("\"step\":\\s{0,8}(\\d{1,18})");
    while (std::getline(f, line)) {
        std::smatch mt;
        if (line.find("final_val_loss") != std::string::npos || line.find("\"event\": \"stopped\"") != std::string::npos)
            continue;
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

namespace {

// The model at its first weights (initial or resumed), the inner optimizer, the algorithm, and
// the device trainer when training runs on an accelerator.
void set_rows(Run& r);

void set_up_model_and_algorithm(Run& r) {
    const TrainOptions& o = r.o;
    gpt_build(r.model, r.cfg);
    gpt_init(r.model, o.seed);  // the same seed on every rank: the replicas start equal
    require_same_on_all_ranks(r.comm, crc32_update(0, r.model.params.data(), 4 * r.model.num_params),
                              "the initial model (checksum)");
    inner_init(r.inner, r.model, inner_hyper(o));
    r.rng = Rng(o.seed ^ 0xD110C0ull);
    std::copy(r.rng.s, r.rng.s + 4, r.state.rng);
    if (r.root()) {
        fs::create_directories(o.out);
        remove_stale_temporaries(o.out + "/ckpt");
    }
    // a worker training several replicas in turn keeps their states beside the first's
    const auto take_turns = [&r](TrainingAlgorithm& algo, std::vector<std::vector<float>>* arrays) {
        const int turns = algo.replicas_in_turn();
        if (turns <= 1 || r.turns) return;
        r.turns = std::make_unique<ReplicaTurns>(turns, r.model, r.inner, r.state.data_cursor, r.comm);
        if (arrays) r.turns->load(*arrays);
    };
    if (o.resume) {
        r.algo = resume_run(o, r.comm, r.cfg, r.model, r.inner, r.state,
                            [&](TrainingAlgorithm& algo, std::vector<std::vector<float>>& arrays) { take_turns(algo, &arrays); });
        std::copy(r.state.rng, r.state.rng + 4, r.rng.s);
    }
    if (!r.algo) r.algo = find_algorithm(o.algo).create(o, r.comm, r.model);
    take_turns(*r.algo, nullptr);
    // on an accelerator, the model, gradients and AdamW state live there from here on
    const bool on_device = use_device(o);
    DILOCO_CHECK(on_device || o.matmul_precision == "fp32",
                 "--matmul-precision " + o.matmul_precision + " needs --device cuda: the CPU products are fp32");
    r.precision = storage_precision(o, r.cfg, on_device);
    DILOCO_CHECK(o.attention == "ours" || r.precision == Precision::bf16,
                 "--attention cudnn needs --device cuda in bf16 (--precision bf16 or auto): cuDNN's flash attention "
                 "takes bf16 inputs");
    if (on_device) {
        const DeviceOptions d{parse_matmul_precision(o.matmul_precision), r.precision, o.attention == "cudnn",
                              o.cuda_graph == "auto"};
        r.dev = device_backend().create(r.model, inner_hyper(o), o.batch, o.seq_len, r.comm, d);
        if (r.state.step > 0) r.dev->moments_from_host(r.inner.m.data(), r.inner.v.data());
    }
    // the ranks that train one model average their gradients on the device (NCCL) when they are
    // the worker's ranks; otherwise through the host, staged there when there is more than one
    const bool replicas = r.algo->replica_per_worker();
    r.device_averages = r.dev && (replicas || r.comm.workers() == 1) && r.dev->averages_in_worker();
    r.stage_grads = r.dev && !r.device_averages && (replicas ? r.comm.ranks_per_worker() : r.comm.world_size()) > 1;
    set_rows(r);
}

// One stream of R*K*B rows per step for a single model (R: the ranks that train, not a server;
// K micro-batches of B per rank, consecutive, so that they are the rows a batch of K*B reads);
// a worker reads its own part, G*K*B per step.
void set_rows(Run& r) {
    const TrainOptions& o = r.o;
    const bool replicas = r.algo->replica_per_worker();
    const long rank_rows = (long)o.grad_accum * o.batch;
    const int turns = r.algo->replicas_in_turn();
    const long more_turns = (long)r.comm.sum_world((double)(turns - 1));  // each rank of a worker counts its turns
    r.global_rows = ((long)r.comm.workers() * r.comm.ranks_per_worker() + more_turns) * rank_rows;
    r.stream_rows = replicas ? (long)r.comm.ranks_per_worker() * rank_rows : r.global_rows;
    r.my_row = (long)(replicas ? r.comm.local() : r.comm.world_rank()) * rank_rows;
}

// The validation loss of the run's model: rank 0's weights on the first --eval-batches global
// batches of the validation split, or, for an algorithm that evaluates itself, what it returns
// (then called on every rank).
double evaluate_now(Run& r) {
    const std::function<float(const int*, const int*, int, int)> forward = [&](const int* tk, const int* tg, int n,
                                                                              int t) {
        return r.dev ? r.dev->forward_loss(tk, tg, n, t) : gpt_forward(r.model, tk, tg, n, t);
    };
    if (r.algo->evaluates_itself()) {
        return r.algo->evaluate([&](int replica, const std::vector<TokenRange>& spans, long* rows) {
            if (r.turns) r.turns->activate(replica, r.model, r.inner, r.dev.get(), r.state.data_cursor);
            uint64_t tokens = 0;
            for (const TokenRange& s : spans) tokens += s.end - s.begin;
            *rows = tokens > (uint64_t)r.o.seq_len ? (long)((tokens - 1) / r.o.seq_len) : 0;
            if (*rows == 0) return 0.0;
            TokenStream val(r.o.data, "val", r.cfg.vocab, r.o.seq_len, false, 0);
            val.restrict_to(spans);
            return evaluate_stream(forward, val, r.o.seq_len, *rows, r.o.batch);
        });
    }
    const long rows = r.o.eval_batches * r.global_rows;
    if (!r.dev) return evaluate(r.model, r.o.data, r.o.seq_len, rows, r.o.batch);
    return evaluate_with(forward, r.cfg.vocab, r.o.data, r.o.seq_len, rows, r.o.batch);
}

void print_header(const Run& r, const TokenStream& train) {
    const TrainOptions& o = r.o;
    const std::string where = r.dev ? device_backend().name + (r.precision == Precision::bf16 ? ", bf16 mixed precision" : "") +
                                          (o.attention == "cudnn" ? ", cuDNN attention" : "")
                                    : "cpu, " + std::to_string(omp_get_max_threads()) + " threads";
    // without accumulation the line reads as it always has (scripts read it)
    const std::string accum = o.grad_accum == 1 ? "" : " x " + std::to_string(o.grad_accum) + " micro-batches accumulated";
    std::fprintf(stderr,
                 "train: %s | %.2fM params | %s%s | %d ranks (%d workers x %d) | batch %d x %d per rank%s | %ld steps "
                 "| %s | train %.2fM tokens\n",
                 r.cfg.describe().c_str(), r.model.num_params / 1e6, o.algo.c_str(), r.algo->describe().c_str(),
                 r.comm.world_size(), r.comm.workers(), r.comm.ranks_per_worker(), o.batch, o.seq_len, accum.c_str(),
                 o.steps, where.c_str(), train.num_tokens() / 1e6);
}

// The step's gradients, averaged through the host over the ranks that train one model (on a
// device whose ranks cannot average there, staged to the host and back).
void average_gradients(Run& r, StepSeconds& spent) {
    TraceRange trace("gradient average");
    float* grads = r.model.grads.data();
    double t = r.seconds();
    if (r.stage_grads) r.dev->grads_to_host(grads);
    spent.stage += r.seconds() - t;
    t = r.seconds();
    if (r.algo->replica_per_worker())
        r.comm.average_worker(grads, r.model.num_params);
    else
        r.comm.average_world(grads, r.model.num_params);
    spent.comm += r.seconds() - t;
    t = r.seconds();
    if (r.stage_grads) r.dev->grads_from_host(grads);
    spent.stage += r.seconds() - t;
}

// One inner step: this rank's rows of the step's batch, forward and backward (over --grad-accum
// micro-batches, their gradients added), the gradients averaged over the ranks that train one
// model, the inner optimizer's step. On a device the step is enqueued and its loss and norm stay
// there until settle_device_steps reads them, with other steps'.
PendingStep inner_step(Run& r, TokenStream& train, int64_t step, std::vector<int>& tok, std::vector<int>& tgt) {
    const int B = r.o.batch, T = r.o.seq_len, K = r.o.grad_accum;
    const uint64_t rows_at = r.state.data_cursor + r.my_row;
    train.read_rows(rows_at, K * B, tok.data(), tgt.data());
    r.state.data_cursor += r.stream_rows;
    StepSeconds spent;
    double t = r.seconds();
    float loss = NAN;
    InnerStepInfo si{NAN, NAN};
    if (r.dev && !r.stage_grads) {  // the whole step on the device, in one call (a CUDA Graph when it can)
        TraceRange trace("inner step");
        si.lr = r.dev->train_step(tok.data(), tgt.data(), B, T, K, step, r.device_averages);
        spent.compute += r.seconds() - t;
    } else {
        {
            TraceRange trace("forward and backward");
            if (r.dev) {
                r.dev->compute_gradients(tok.data(), tgt.data(), B, T, K);
                r.dev->synchronize();  // averaged through the host: wait here, as compute
            } else {
                loss = compute_gradients(r.model, tok.data(), tgt.data(), B, T, K);
            }
        }
        spent.compute += r.seconds() - t;
        if (!r.dev) {  // this rank's own loss and gradients, before averaging spreads a NaN to every rank
            if (!std::isfinite(loss)) stop_non_finite(r, step, "the loss is " + std::to_string(loss));
            const std::string bad = first_non_finite_tensor(r.model, r.model.grads.data());
            if (!bad.empty()) stop_non_finite(r, step, "the gradient of " + bad + " is the first non-finite tensor");
        }
        average_gradients(r, spent);
        t = r.seconds();
        {
            TraceRange trace("inner optimizer");
            if (r.dev)
                si.lr = r.dev->inner_update(step);
            else
                si = inner_update(r.inner, r.model, step);
        }
        spent.compute += r.seconds() - t;
        if (!r.dev) {
            const std::string bad = first_non_finite_tensor(r.model, r.model.params.data());
            if (!bad.empty()) stop_non_finite(r, step, "the inner update made parameter " + bad + " the first non-finite tensor");
        }
    }
    r.spent += spent;
    r.state.step = step;
    return {step, loss, si.lr, si.grad_norm, r.seconds(), r.spent.compute, spent, r.dev != nullptr, rows_at};
}

// inner_step with its figures at hand: for the callers that use a step's loss at once.
PendingStep settled_inner_step(Run& r, TokenStream& train, int64_t step, std::vector<int>& tok, std::vector<int>& tgt) {
    std::vector<PendingStep> one{inner_step(r, train, step, tok, tgt)};
    settle_device_steps(r, one);
    return one[0];
}

// The algorithm's part of the step, its seconds split into staging and communication.
void after_inner_step(Run& r, ReplicaWeights& weights, const StepEnd& at, StepSeconds& spent) {
    TraceRange trace("algorithm");
    const double t = r.seconds(), staged = weights.staging_seconds;
    if (r.turns && at.round_ends)
        r.algo->after_round(r.turns->weights(weights), at);
    else
        r.algo->after_inner_step(weights, at);
    StepSeconds s;
    s.stage = weights.staging_seconds - staged;
    s.comm = r.seconds() - t - s.stage;
    spent += s;
    r.spent += s;
}

// One round, steps a..b, of a worker that trains several replicas in turn: each replica's steps
// on its own stream, then the algorithm's end of the round with all of them. The losses of a step
// are added over the replicas (report_round divides by all of them), and so are its seconds; the
// learning rate and gradient norm are the first replica's (the same path whatever the layout).
void round_in_turns(Run& r, std::vector<std::unique_ptr<TokenStream>>& trains, ReplicaWeights& weights, int64_t a,
                    int64_t b, std::vector<PendingStep>& pending, std::vector<int>& tok, std::vector<int>& tgt) {
    const size_t first = pending.size();
    for (int k = 0; k < r.turns->count(); k++) {
        r.turns->activate(k, r.model, r.inner, r.dev.get(), r.state.data_cursor);
        for (int64_t step = a; step <= b; step++) {
            const PendingStep p = settled_inner_step(r, *trains[k], step, tok, tgt);
            if (k == 0) pending.push_back(p);
            PendingStep& q = pending[first + (step - a)];
            if (k > 0) q.loss += p.loss, q.spent += p.spent, q.wall = p.wall, q.compute_total = p.compute_total;
            if (step < b) after_inner_step(r, weights, StepEnd{step, false, false, k}, q.spent);
        }
    }
    after_inner_step(r, weights, StepEnd{b, true, b == r.o.steps, r.turns->count() - 1}, pending.back().spent);
}

// Every rank keeps what it alone holds; rank 0 also writes the global model for eval, generate
// and export (in one process, that file is the one --resume reads, so it carries the algorithm's
// state too), with the data's subword tokenizer so that generate needs nothing else. Only the
// --ckpt-keep newest of each are kept.
void save_checkpoints(Run& r, int64_t step) {
    TraceRange trace("checkpoint");
    std::copy(r.rng.s, r.rng.s + 4, r.state.rng);
    if (r.turns) r.turns->activate(0, r.model, r.inner, r.dev.get(), r.state.data_cursor);  // its state is the file's own
    r.state.workers = r.comm.workers();
    r.state.ranks_per_worker = r.comm.ranks_per_worker();
    if (r.dev) {
        r.dev->params_to_host(r.model.params.data());
        r.dev->moments_to_host(r.inner.m.data(), r.inner.v.data());
    }
    std::vector<std::vector<float>> algorithm_state = r.algo->save_state();
    if (r.turns)
        for (std::vector<float>& a : r.turns->save()) algorithm_state.push_back(std::move(a));
    const bool distributed = r.comm.world_size() > 1;
    const float* params = r.model.params.data();
    if (distributed) {
        save_checkpoint(rank_checkpoint_path(r.o.out, step, r.comm.world_rank()), r.cfg, r.state, params,
                        r.inner.m.data(), r.inner.v.data(), r.model.num_params, algorithm_state);
        prune_checkpoints(r.o.out, r.o.ckpt_keep, r.comm.world_rank());
    }
    if (r.root()) {
        save_checkpoint(checkpoint_path(r.o.out, step), r.cfg, r.state, params, r.inner.m.data(), r.inner.v.data(),
                        r.model.num_params, distributed ? std::vector<std::vector<float>>{} : algorithm_state,
                        r.tokenizer);
        prune_checkpoints(r.o.out, r.o.ckpt_keep, -1);
    }
}

// At the end of a round: report when due, then evaluate and checkpoint the global model when due
// (both come with a report, so that no checkpoint holds a step whose figures were not checked).
void end_round(Run& r, std::vector<PendingStep>& pending, int64_t step, uint64_t outer_before) {
    const TrainOptions& o = r.o;
    const bool last = step == o.steps;
    if (report_due(r, pending, step)) {
        report_round(r, pending);
        pending.clear();
    }
    if (step != r.end_step) r.peak_bytes_step = std::max(r.peak_bytes_step, r.comm.bytes_outer() - outer_before);
    if ((r.root() || r.algo->evaluates_itself()) && (step >= r.next_eval || last) && (o.eval_every > 0 || last)) {
        TraceRange trace("evaluation");
        r.val_loss = evaluate_now(r);
        if (r.root()) {
            std::fprintf(r.metrics, "{\"step\": %lld, \"val_loss\": %.9g}\n", (long long)step, r.val_loss);
            std::fprintf(stderr, "step %lld | val_loss %.4f\n", (long long)step, r.val_loss);
        }
        while (r.next_eval <= step) r.next_eval += o.eval_every;
    }
    if (r.root()) std::fflush(r.metrics);
    // every run ends with its model saved: the last step, or the last of a --stop-at slot
    if (step >= r.next_ckpt || step == r.end_step) {
        save_checkpoints(r, step);
        while (r.next_ckpt <= step) r.next_ckpt += o.ckpt_every;
    }
}

// Workers were lost and the survivors went on (--on-worker-loss continue, comm/comm.h): from the
// round just ended on, the layout is theirs. As after an elastic restart, the rows of the shared
// training order consumed so far (the lost replica's last rows too: they left the order, though
// they never reached the global model) become the origin of streams partitioned over the
// surviving workers, so that a checkpoint from here on resumes like any other.
void continue_without_lost_workers(Run& r, std::vector<std::unique_ptr<TokenStream>>& trains, int workers_before) {
    const bool replicas = r.algo->replica_per_worker();
    r.state.row_origin += r.state.data_cursor * (uint64_t)(replicas ? workers_before : 1);
    r.state.data_cursor = 0;
    r.state.origin_step = r.state.step;
    set_rows(r);
    for (auto& t : trains) {
        if (replicas) t->set_partition(r.comm.workers(), r.comm.worker(), r.o.shard == "noniid");
        t->set_origin(r.state.row_origin);
    }
    if (!r.root()) return;
    std::fprintf(stderr, "train: step %lld: %s\n", (long long)r.state.step, r.comm.loss_report().c_str());
    std::fprintf(r.metrics, "{\"step\": %lld, \"event\": \"worker_lost\", \"workers\": %d, \"ranks\": %d}\n",
                 (long long)r.state.step, r.comm.workers(), r.comm.world_size());
}

// The test fault after step r.state.step: every rank's checkpoint of the step is on disk first.
void inject_failure(Run& r) {
    (void)r.comm.sum_world(0.0);
    if (r.comm.world_rank() == r.comm.world_size() - 1) {
        std::fprintf(stderr, "error: rank %d: test failure injected after step %lld (DILOCO_TEST_FAIL_AFTER_STEP)\n",
                     r.comm.world_rank(), (long long)r.state.step);
        std::fflush(stderr);
        _exit(42);
    }
}

// The loop's services to an algorithm that runs its own schedule (optim/algorithm.h).
class RunServices final : public LoopServices {
public:
    RunServices(Run& r, TokenStream& train, ReplicaWeights& w, std::vector<int>& tok, std::vector<int>& tgt)
        : r_(r), train_(train), weights_(w), tok_(tok), tgt_(tgt), resumed_(r.state.step) {}
    float inner_step(long schedule_step, float* lr, double* compute_seconds) override {
        const PendingStep p = settled_inner_step(r_, train_, schedule_step, tok_, tgt_);
        if (lr) *lr = p.lr;
        if (compute_seconds) *compute_seconds = p.spent.compute;
        return (float)p.loss;
    }
    ReplicaWeights& weights() override { return weights_; }
    double evaluate() override { return evaluate_now(r_); }
    void save_checkpoint(long step) override {
        r_.state.step = step;
        save_checkpoints(r_, step);
    }
    std::FILE* metrics() override { return r_.metrics; }
    double seconds() const override { return r_.seconds(); }
    long resumed_step() const override { return resumed_; }
    long end_step() const override { return r_.end_step; }
    void set_final_val_loss(double loss) override { r_.val_loss = loss; }

private:
    Run& r_;
    TokenStream& train_;
    ReplicaWeights& weights_;
    std::vector<int>&tok_, &tgt_;
    const long resumed_;
};

}  // namespace

// A test-only fault (tools/launch.sh's tests, docs/distributed.md): DILOCO_TEST_FAIL_AFTER_STEP=N
// makes the job's last rank exit with status 42 after step N, its checkpoints (if due) written on
// every rank. Only a process that trained step N itself fails, so a run resumed from step N or
// later goes on. -1 when unset.
static int64_t test_step(const char* variable) {
    const char* env = std::getenv(variable);
    if (!env || !*env) return -1;
    char* end = nullptr;
    const long long n = std::strtoll(env, &end, 10);
    DILOCO_CHECK(*end == 0 && n > 0, std::string(variable) + " must be a step >= 1, got '" + env + "'");
    return n;
}

// Which worker runs on which host, once at start: Open MPI's report of a dead rank names its rank
// and node, and this line turns that into a worker.
static void print_rank_map(const Comm& comm) {
    if (!comm.is_root() || comm.world_size() == 1) return;
    std::string line = "ranks:";
    if (comm.world_size() > comm.workers() * comm.ranks_per_worker()) line += " server on " + comm.host_of(0) + " (rank 0),";
    for (int m = 0; m < comm.workers(); m++) line += (m ? ", " : " ") + comm.describe_worker(m);
    std::fprintf(stderr, "%s\n", line.c_str());
}

// The loop of a worker that trains one replica: each inner step, the algorithm's part, and a round's
// end; the survivors' new layout after a lost worker; the test faults (kill_at, fail_after: -1 off).
static void run_steps(Run& r, std::vector<std::unique_ptr<TokenStream>>& trains, ReplicaWeights& weights,
                      std::vector<PendingStep>& pending, std::vector<int>& tok, std::vector<int>& tgt, int64_t kill_at,
                      int64_t fail_after) {
    TokenStream& train = *trains[0];
    const long round = r.algo->steps_per_round();
    int losses_seen = 0, workers = r.comm.workers();
    for (int64_t step = r.first_step; step <= r.end_step; step++) {
        const uint64_t outer_before = r.comm.bytes_outer();
        pending.push_back(inner_step(r, train, step, tok, tgt));
        if (step == kill_at && r.comm.worker() == r.comm.workers() - 1) raise(SIGKILL);
        const StepEnd at{step, step % round == 0 || step == r.end_step, step == r.o.steps};
        after_inner_step(r, weights, at, pending.back().spent);
        if (at.round_ends && r.comm.losses() != losses_seen) {
            continue_without_lost_workers(r, trains, workers);
            losses_seen = r.comm.losses();
            workers = r.comm.workers();
        }
        if (at.round_ends)
            end_round(r, pending, step, outer_before);
        else
            r.peak_bytes_step = std::max(r.peak_bytes_step, r.comm.bytes_outer() - outer_before);
        if (step == fail_after) inject_failure(r);
    }
}

double run_train(const TrainOptions& o) {
    check_options(o);
    const int64_t fail_after = test_step("DILOCO_TEST_FAIL_AFTER_STEP");
    // tests of --on-worker-loss: every rank of the last worker dies by SIGKILL after this step's
    // inner step, before its algorithm part (in the inner phase, or as the outer sync starts)
    const int64_t kill_at = test_step("DILOCO_TEST_KILL_LAST_WORKER_AT_STEP");
    Comm comm(o.workers, find_algorithm(o.algo).server_ranks);
    comm.emulate_outer_link(o.outer_gbps, o.outer_latency_ms);
    comm.set_timeout(o.comm_timeout);
    print_rank_map(comm);
    const std::string options_text = describe_options(o);
    require_same_on_all_ranks(comm, fnv1a(options_text.data(), options_text.size()), "the configuration (some option)");
    if (o.comm_progress == "thread") comm.start_progress_thread();
    if (o.on_worker_loss == "continue") comm.enable_survival();
    // under --with-ft the runtime leaves a lost process to the job: with the default handlers a
    // loss then hung the job or ended it with status 0 (Open MPI 5.0.11), so say so at the start.
    // Every rank sees the same: a collective error, so that they leave together rather than each
    // calling MPI_Abort (which, under --with-ft, sometimes left mpirun waiting)
    if (o.on_worker_loss != "continue" && comm.world_size() > 1 && Comm::launched_fault_tolerant())
        throw CollectiveError("mpirun --with-ft ulfm asks the job to outlive a lost process, and --on-worker-loss "
                              "abort does not: give --on-worker-loss continue, or start mpirun without --with-ft");
    const DatasetInfo data_info = read_dataset_info(o.data);
    Run r(o, comm, resolve_config(o, data_info.vocab));
    r.tokenizer = read_dataset_tokenizer(o.data, data_info);
    set_up_model_and_algorithm(r);
    r.metrics_path = o.out + "/metrics.jsonl";
    if (r.root()) {
        if (r.state.step > 0)
            truncate_metrics(r.metrics_path, r.state.step);
        else if (fs::exists(r.metrics_path))
            fs::remove(r.metrics_path);
    }
    std::vector<std::unique_ptr<TokenStream>> trains;  // one per replica in turn, each with its own cursor
    for (int k = 0; k < (r.turns ? r.turns->count() : 1); k++) {
        trains.push_back(std::make_unique<TokenStream>(o.data, "train", r.cfg.vocab, o.seq_len, true, o.seed));
        if (const std::optional<DataShare> share = r.algo->data_share(k)) {
            trains[k]->restrict_to(share->spans);
            trains[k]->set_partition(share->parts, share->index, o.shard == "noniid");
        } else if (r.algo->replica_per_worker()) {
            trains[k]->set_partition(comm.workers(), comm.worker(), o.shard == "noniid");
        }
        trains[k]->set_origin(r.state.row_origin);  // rows consumed before an elastic restart
    }
    TokenStream& train = *trains[0];
    r.train = &train;
    gpt_allocate(r.model, o.batch, o.seq_len);
    std::vector<int> tok((size_t)o.grad_accum * o.batch * o.seq_len), tgt(tok.size());  // a step's K micro-batches
    if (r.root()) {
        r.metrics = std::fopen(r.metrics_path.c_str(), "a");
        DILOCO_CHECK(r.metrics, "cannot open " + r.metrics_path + " for writing");
        print_header(r, train);
    }

    r.t0 = std::chrono::steady_clock::now();
    r.first_step = r.state.step + 1;
    r.tokens_before = r.tokens_at(r.state.step);
    r.end_step = o.stop_at > 0 ? std::min<int64_t>(o.stop_at, o.steps) : o.steps;
    if (o.eval_every > 0) r.next_eval = (r.state.step / o.eval_every + 1) * o.eval_every;
    if (o.ckpt_every > 0) r.next_ckpt = (r.state.step / o.ckpt_every + 1) * o.ckpt_every;
    ReplicaWeights weights(r.model, r.dev.get(), comm);
    const long round = r.algo->steps_per_round();
    std::vector<PendingStep> pending;
    if (r.algo->runs_own_schedule()) {
        RunServices services(r, train, weights, tok, tgt);
        r.algo->run_schedule(services);
    }
    for (int64_t a = r.first_step; r.turns && a <= r.end_step; a = (a - 1) / round * round + round + 1) {
        const int64_t b = std::min<int64_t>((a - 1) / round * round + round, r.end_step);
        const uint64_t outer_before = comm.bytes_outer();
        round_in_turns(r, trains, weights, a, b, pending, tok, tgt);
        end_round(r, pending, b, outer_before);
    }
    if (!r.algo->runs_own_schedule() && !r.turns) run_steps(r, trains, weights, pending, tok, tgt, kill_at, fail_after);
    if (r.end_step < o.steps) {
        if (r.root()) {
            // the closing line of a stop, as the summary is of a finished run (tools/launch.sh reads it)
            std::fprintf(r.metrics, "{\"step\": %lld, \"event\": \"stopped\"}\n", (long long)r.end_step);
            std::fclose(r.metrics);
            std::fprintf(stderr, "train: stopped at step %lld of %ld as asked; --resume continues\n",
                         (long long)r.end_step, o.steps);
        }
        return NAN;
    }
    if ((r.root() || r.algo->evaluates_itself()) && std::isnan(r.val_loss)) r.val_loss = evaluate_now(r);
    write_summary(r);
    return r.val_loss;
}

}  // namespace diloco
