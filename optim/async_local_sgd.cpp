// Asynchronous Local-SGD: the server, the workers, and their messages (optim/async_local_sgd.h).
#include "optim/async_local_sgd.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <thread>

#include "kernels/common.h"
#include "optim/algorithm.h"
#include "optim/diloco.h"
#include "optim/outer.h"

namespace diloco {

std::vector<double> parse_worker_speeds(const std::string& list, int workers) {
    if (list.empty()) return std::vector<double>(workers, 1.0);
    std::vector<double> speeds;
    std::stringstream in(list);
    std::string item;
    while (std::getline(in, item, ',')) {
        char* end = nullptr;
        const double v = std::strtod(item.c_str(), &end);
        DILOCO_CHECK(!item.empty() && end && *end == '\0' && std::isfinite(v),
                     "--worker-speeds: '" + item + "' is not a number");
        DILOCO_CHECK(v > 0, "--worker-speeds: worker " + std::to_string(speeds.size()) +
                                "'s speed must be positive, got " + item);
        speeds.push_back(v);
    }
    DILOCO_CHECK((int)speeds.size() == workers, "--worker-speeds lists " + std::to_string(speeds.size()) +
                                                    " speeds for --workers " + std::to_string(workers));
    return speeds;
}

long dynamic_local_steps(double v, double v_max, long H) {
    return std::max<long>(1, (long)std::floor(v / v_max * (double)H));
}

void refuse_async_options(const TrainOptions& o) {
    DILOCO_CHECK(o.outer_opt != "delayed-nesterov", "--outer-opt delayed-nesterov applies to --algo async");
    DILOCO_CHECK(o.delay_buffer == 1, "--delay-buffer applies to --algo async");
    DILOCO_CHECK(!o.dylu, "--dylu applies to --algo async");
    DILOCO_CHECK(o.worker_speeds.empty(), "--worker-speeds applies to --algo async");
    DILOCO_CHECK(o.virtual_step_s == 0, "--virtual-step-s applies to --algo async");
}

namespace {

enum Tag { kPush = 1701, kPull, kReport };
enum Command { kContinue = 0, kSaveAndContinue = 1, kSaveAndLeave = 2 };

// The fixed-size headers in front of the messages' floats (all fields doubles, 8 bytes each).
struct PushHeader {
    double sequence, steps, loss_sum, lr, seconds, idle_s;  // seconds: the round's, sleeps included
};
struct PullHeader {
    double command, steps, schedule_start, checkpoint_step;
};
struct ReportHeader {
    double pushes, steps, idle_s;
};

// A header and n floats, back to back, as one message.
template <class Header>
std::vector<char> pack(const Header& h, const float* x, size_t n) {
    std::vector<char> m(sizeof h + 4 * n);
    std::memcpy(m.data(), &h, sizeof h);
    if (n) std::memcpy(m.data() + sizeof h, x, 4 * n);
    return m;
}

// Doubles kept in a checkpoint's float arrays: each as two floats, hi and the remainder, which
// carry 48 of its 53 bits (counters exactly below 2^48).
void put(std::vector<float>& a, double v) {
    const float hi = (float)v;
    a.push_back(hi);
    a.push_back((float)(v - (double)hi));
}
double get(const std::vector<float>& a, size_t& at) {
    const double v = (double)a.at(at) + (double)a.at(at + 1);
    at += 2;
    return v;
}

// What the server knows of one worker.
struct WorkerView {
    long pushes = 0, steps = 0;    // applied from it
    double clock = 0.0;            // virtual time of its last push (or of its pull)
    double next_arrival = 0.0;     // virtual time of the push it is computing
    double virtual_idle = 0.0;     // virtual seconds it waited (at checkpoints and the end)
    double idle_s = 0.0;           // wall seconds it waited, as it reports them
    double measured_speed = 0.0;   // inner steps per second of its last round (0: none yet)
    long pulled_at = 0;            // updates applied when it pulled (staleness of its next push)
    long assigned = 0;             // steps of the round it is computing
    bool held = false;             // waits at a checkpoint or the end
};

class AsyncLocalSGD final : public TrainingAlgorithm {
public:
    AsyncLocalSGD(const TrainOptions& o, Comm& comm, const GPT& model)
        : o_(o), comm_(comm), n_(model.num_params), M_(comm.workers()),
          hyper_{o.outer_lr, o.outer_momentum, o.outer_opt != "sgd"},
          delayed_(o.outer_opt == "delayed-nesterov"), speeds_(parse_worker_speeds(o.worker_speeds, M_)),
          workers_(M_) {
        if (comm.ranks_per_worker() != 1)
            throw CollectiveError("--algo async runs one rank per worker: mpirun -np " + std::to_string(M_ + 1) +
                                  " for --workers " + std::to_string(M_) + " (the server and the workers)");
        if (comm.is_server()) {
            momentum_.assign(n_, 0.0f);
            if (delayed_) buffer_.assign(n_, 0.0f);
        }
    }

    std::string describe() const override {
        std::string s = outer_description(o_, M_);  // " M=4 H=50 outer nesterov lr 0.7 mom 0.9"
        if (delayed_) s += " buffer " + std::to_string(o_.delay_buffer);
        if (o_.dylu) s += " dylu";
        if (!o_.worker_speeds.empty()) s += " speeds " + o_.worker_speeds;
        char clock[64];
        std::snprintf(clock, sizeof clock, " | virtual clock, %g s a step", o_.virtual_step_s);
        return s + (virtual_clock() ? clock : " | wall clock (not reproducible)") + " | server: rank 0";
    }
    bool replica_per_worker() const override { return true; }
    long steps_per_round() const override { return o_.inner_steps; }
    void after_inner_step(ReplicaWeights&, const StepEnd&) override {}
    bool runs_own_schedule() const override { return true; }

    void run_schedule(LoopServices& loop) override {
        if (comm_.is_server())
            serve(loop);
        else
            work(loop);
    }

    std::vector<std::vector<float>> save_state() override;
    void load_state(std::vector<std::vector<float>> arrays, long step) override;

private:
    bool virtual_clock() const { return o_.virtual_step_s > 0; }
    int worker_of(int rank) const { return rank - comm_.rank_of(0); }

    // ---- the server ----
    void serve(LoopServices& loop);
    int next_arrival();
    void apply(float* theta, const float* g);
    long assign(int w);
    void pull(int w, Command command, long checkpoint_step, const float* theta);
    bool end_phase(LoopServices& loop, float* theta);
    void write_arrival(LoopServices& loop, int w, const PushHeader& h, long staleness);
    long global_step() const { return (applied_steps_ + M_ - 1) / M_; }
    // steps handed out in all when the phase that follows global step c ends
    long phase_end_after(long c, long end_step) const {
        long mark = end_step;
        if (o_.ckpt_every > 0) mark = std::min(mark, (c / o_.ckpt_every + 1) * o_.ckpt_every);
        return mark * M_;
    }

    // ---- a worker ----
    void work(LoopServices& loop);

    const TrainOptions o_;
    Comm& comm_;
    const size_t n_;
    const int M_;
    const OuterHyper hyper_;
    const bool delayed_;
    const std::vector<double> speeds_;
    // server: the outer optimizer (theta is the server's own model weights)
    std::vector<float> momentum_, buffer_, scratch_;
    long buffered_ = 0;          // arrivals in buffer_
    long updates_ = 0;           // pushes applied
    long applied_steps_ = 0;     // their inner steps
    long handed_out_ = 0;        // inner steps handed out (applied and in flight)
    long phase_end_ = 0;         // handed_out_ stops here until the checkpoint or the end
    long next_eval_ = 0;
    std::vector<WorkerView> workers_;
    std::vector<char> message_;
    // worker: its own counts
    long pushes_ = 0, steps_ = 0;
    double idle_s_ = 0.0;
};

// ---------------------------------------------------------------------------------------------
// The server: hands out rounds, applies pushes in arrival order, checkpoints at quiet points.

void AsyncLocalSGD::serve(LoopServices& loop) {
    float* theta = loop.weights().fetch();
    const long start = loop.resumed_step();
    phase_end_ = phase_end_after(start, loop.end_step());
    handed_out_ = applied_steps_;
    if (o_.eval_every > 0) next_eval_ = (start / o_.eval_every + 1) * o_.eval_every;
    for (int w = 0; w < M_; w++) workers_[w].held = true;
    bool running = true;
    for (int w = 0; w < M_; w++)  // the first pull of every worker
        if (assign(w) > 0) pull(w, kContinue, 0, theta);
    if (handed_out_ == applied_steps_) running = end_phase(loop, theta);  // resumed at the end
    message_.resize(sizeof(PushHeader) + 4 * n_);
    scratch_.resize(n_);
    while (running) {
        const int w = next_arrival();
        comm_.recv(comm_.rank_of(w), kPush, message_.data(), message_.size());
        PushHeader h;
        std::memcpy(&h, message_.data(), sizeof h);
        WorkerView& v = workers_[w];
        DILOCO_CHECK((long)h.sequence == v.pushes + 1 && (long)h.steps == v.assigned,
                     "worker " + std::to_string(w) + " pushed #" + std::to_string((long)h.sequence) + " of " +
                         std::to_string((long)h.steps) + " steps where #" + std::to_string(v.pushes + 1) + " of " +
                         std::to_string(v.assigned) + " was due");
        std::memcpy(scratch_.data(), message_.data() + sizeof h, 4 * n_);
        apply(theta, scratch_.data());
        const long staleness = updates_ - v.pulled_at;
        updates_++;
        applied_steps_ += v.assigned;
        v.pushes++;
        v.steps += v.assigned;
        v.clock = v.next_arrival;
        v.idle_s = h.idle_s;
        if (h.seconds > 0) v.measured_speed = (double)v.assigned / h.seconds;
        write_arrival(loop, w, h, staleness);
        if (assign(w) > 0) {
            pull(w, kContinue, 0, theta);
            continue;
        }
        v.held = true;
        bool all_held = true;
        for (const WorkerView& x : workers_) all_held &= x.held;
        if (all_held) running = end_phase(loop, theta);
    }
}

// Which worker's push is applied next: the first to arrive (wall clock), or the one whose
// virtual arrival time is earliest (virtual clock; ties to the lower worker), waited for.
int AsyncLocalSGD::next_arrival() {
    if (!virtual_clock()) return worker_of(comm_.wait_message(-1, kPush));
    int next = -1;
    for (int w = 0; w < M_; w++)
        if (!workers_[w].held && (next < 0 || workers_[w].next_arrival < workers_[next].next_arrival)) next = w;
    DILOCO_CHECK(next >= 0, "the server waits for a push while every worker is held");
    comm_.wait_message(comm_.rank_of(next), kPush);
    return next;
}

void AsyncLocalSGD::apply(float* theta, const float* g) {
    if (!delayed_) {
        outer_step(theta, g, momentum_.data(), n_, hyper_);
        return;
    }
    const long N = o_.delay_buffer;
    const float inv = 1.0f / (float)N;
    for (size_t i = 0; i < n_; i++) buffer_[i] += g[i];
    if (++buffered_ < N) {  // between momentum updates, the plain gradient step
        for (size_t i = 0; i < n_; i++) theta[i] -= hyper_.lr * (g[i] * inv);
        return;
    }
    // the N-th arrival: the momentum takes the buffer's mean, the step adds this push's share
    std::vector<float> mean(n_), share(n_);
    for (size_t i = 0; i < n_; i++) mean[i] = buffer_[i] * inv;
    for (size_t i = 0; i < n_; i++) share[i] = g[i] * inv;
    outer_step_split(theta, mean.data(), share.data(), momentum_.data(), n_, hyper_);
    std::fill(buffer_.begin(), buffer_.end(), 0.0f);
    buffered_ = 0;
}

// The next round of worker w: its length, and on the virtual clock when it will arrive.
long AsyncLocalSGD::assign(int w) {
    WorkerView& v = workers_[w];
    long H = o_.inner_steps;
    if (o_.dylu) {
        double v_max = 0.0;
        for (int x = 0; x < M_; x++)
            v_max = std::max(v_max, virtual_clock() ? speeds_[x] : workers_[x].measured_speed);
        const double mine = virtual_clock() ? speeds_[w] : v.measured_speed;
        if (mine > 0) H = dynamic_local_steps(mine, v_max, H);  // unmeasured yet: H
    }
    v.assigned = std::min(H, phase_end_ - handed_out_);
    if (v.assigned <= 0) return v.assigned = 0;
    handed_out_ += v.assigned;
    v.pulled_at = updates_;
    v.next_arrival = v.clock + (double)v.assigned * o_.virtual_step_s / speeds_[w];
    v.held = false;
    return v.assigned;
}

void AsyncLocalSGD::pull(int w, Command command, long checkpoint_step, const float* theta) {
    const PullHeader h{(double)command, (double)workers_[w].assigned, (double)(applied_steps_ / M_),
                       (double)checkpoint_step};
    const std::vector<char> m = pack(h, theta, n_);
    comm_.send(comm_.rank_of(w), kPull, m.data(), m.size());
}

// Every worker waits (held): save at the phase's step, then hand out the next phase, or leave.
// Returns whether the run goes on.
bool AsyncLocalSGD::end_phase(LoopServices& loop, float* theta) {
    const long step = phase_end_ / M_;
    double latest = 0.0;  // on the virtual clock, everyone waits for the last push
    for (const WorkerView& v : workers_) latest = std::max(latest, v.clock);
    for (WorkerView& v : workers_) v.virtual_idle += latest - v.clock, v.clock = latest;
    loop.weights().store();
    loop.save_checkpoint(step);
    const bool leave = step >= loop.end_step();
    if (!leave) phase_end_ = phase_end_after(step, loop.end_step());
    for (int w = 0; w < M_; w++) {
        if (!leave) assign(w);
        pull(w, leave ? kSaveAndLeave : kSaveAndContinue, step, theta);
    }
    if (!leave) return true;
    for (int w = 0; w < M_; w++) {  // each worker's own count of what it pushed
        ReportHeader r;
        comm_.wait_message(comm_.rank_of(w), kReport);
        comm_.recv(comm_.rank_of(w), kReport, &r, sizeof r);
        DILOCO_CHECK((long)r.pushes == workers_[w].pushes && (long)r.steps == workers_[w].steps,
                     "worker " + std::to_string(w) + " pushed " + std::to_string((long)r.pushes) +
                         " pseudo-gradients and the server applied " + std::to_string(workers_[w].pushes));
        workers_[w].idle_s = r.idle_s;
    }
    if (step < o_.steps) return false;  // --stop-at: the run is not over
    double clock = 0.0;
    for (const WorkerView& v : workers_) clock = std::max(clock, v.clock);
    for (int w = 0; w < M_; w++) {
        const WorkerView& v = workers_[w];
        if (loop.metrics())
            std::fprintf(loop.metrics(),
                         "{\"worker\": %d, \"speed\": %.6g, \"pushes\": %ld, \"steps\": %ld, \"idle_s\": %.3f, "
                         "\"virtual_idle_s\": %.6g}\n",
                         w, speeds_[w], v.pushes, v.steps, v.idle_s, v.virtual_idle);
    }
    const double val = loop.evaluate();  // every worker has stopped: the final global model
    loop.set_final_val_loss(val);
    if (loop.metrics())
        std::fprintf(loop.metrics(), "{\"async\": true, \"updates\": %ld, \"virtual_s\": %.6g, \"val_loss\": %.9g}\n",
                     updates_, clock, val);
    return false;
}

void AsyncLocalSGD::write_arrival(LoopServices& loop, int w, const PushHeader& h, long staleness) {
    const long step = global_step();
    std::FILE* f = loop.metrics();
    const double tokens = (double)applied_steps_ * o_.batch * o_.grad_accum * o_.seq_len;
    std::fprintf(f,
                 "{\"step\": %ld, \"update\": %ld, \"worker\": %d, \"loss\": %.9g, \"lr\": %.6g, "
                 "\"inner_steps\": %ld, \"staleness\": %ld, \"tokens\": %.0f, \"wall_s\": %.3f, "
                 "\"virtual_s\": %.6g, \"bytes_outer\": %llu, \"bytes_inner\": 0}\n",
                 step, updates_, w, h.loss_sum / h.steps, h.lr, (long)h.steps, staleness, tokens, loop.seconds(),
                 workers_[w].clock, (unsigned long long)comm_.bytes_outer());
    if (o_.log_every > 0 && (updates_ % o_.log_every == 0))
        std::fprintf(stderr, "update %ld | step %ld/%ld | worker %d | loss %.4f | staleness %ld\n", updates_, step,
                     o_.steps, w, h.loss_sum / h.steps, staleness);
    if (o_.eval_every > 0 && step >= next_eval_ && step < o_.steps) {
        loop.weights().store();
        const double val = loop.evaluate();
        std::fprintf(f, "{\"step\": %ld, \"val_loss\": %.9g, \"update\": %ld, \"virtual_s\": %.6g}\n", step, val,
                     updates_, workers_[w].clock);
        while (next_eval_ <= step) next_eval_ += o_.eval_every;
    }
    std::fflush(f);
}

// ---------------------------------------------------------------------------------------------
// A worker: pull, run the round, push; save when told; report and leave at the end.

void AsyncLocalSGD::work(LoopServices& loop) {
    ReplicaWeights& weights = loop.weights();
    std::vector<char> message(sizeof(PullHeader) + 4 * n_);
    std::vector<float> pulled(n_), g(n_);
    const double slow = 1.0 / speeds_[comm_.worker()] - 1.0;  // sleep per second of compute
    for (;;) {
        const double t = loop.seconds();
        comm_.wait_message(0, kPull);
        comm_.recv(0, kPull, message.data(), message.size());
        idle_s_ += loop.seconds() - t;
        PullHeader h;
        std::memcpy(&h, message.data(), sizeof h);
        std::memcpy(pulled.data(), message.data() + sizeof h, 4 * n_);
        std::copy(pulled.begin(), pulled.end(), weights.host());
        weights.store();
        const int command = (int)h.command;
        if (command != kContinue) loop.save_checkpoint((long)h.checkpoint_step);
        if (command == kSaveAndLeave) {
            std::fprintf(stderr, "async: worker %d pushed %ld pseudo-gradients, %ld inner steps, idle %.3f s\n",
                         comm_.worker(), pushes_, steps_, idle_s_);
            const ReportHeader r{(double)pushes_, (double)steps_, idle_s_};
            comm_.send(0, kReport, &r, sizeof r);
            return;
        }
        const long n = (long)h.steps;
        if (n == 0) continue;  // nothing handed out to it before the next checkpoint: wait
        PushHeader p{(double)(pushes_ + 1), (double)n, 0.0, 0.0, 0.0, 0.0};
        for (long k = 1; k <= n; k++) {
            float lr = 0.0f;
            double compute = 0.0;
            p.loss_sum += loop.inner_step((long)h.schedule_start + k, &lr, &compute);
            p.lr = lr;
            p.seconds += compute;
            if (!virtual_clock() && slow > 0) {  // the emulated slower worker
                std::this_thread::sleep_for(std::chrono::duration<double>(slow * compute));
                p.seconds += slow * compute;
            }
        }
        const float* theta_w = weights.fetch();
        for (size_t i = 0; i < n_; i++) g[i] = pulled[i] - theta_w[i];  // old minus new
        p.idle_s = idle_s_;
        const std::vector<char> m = pack(p, g.data(), n_);
        comm_.send(0, kPush, m.data(), m.size());
        pushes_++;
        steps_ += n;
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: the server's outer state and counters; a worker's counts. Saved only at quiet
// points (every worker held), so nothing is in flight.

std::vector<std::vector<float>> AsyncLocalSGD::save_state() {
    std::vector<float> counters;
    if (!comm_.is_server()) {
        for (double v : {(double)pushes_, (double)steps_, idle_s_}) put(counters, v);
        return {counters};
    }
    for (double v : {(double)updates_, (double)applied_steps_, (double)buffered_}) put(counters, v);
    for (const WorkerView& w : workers_)
        for (double v : {(double)w.pushes, (double)w.steps, w.clock, w.virtual_idle, w.idle_s, w.measured_speed})
            put(counters, v);
    return {counters, momentum_, delayed_ ? buffer_ : std::vector<float>{}};
}

void AsyncLocalSGD::load_state(std::vector<std::vector<float>> a, long step) {
    (void)step;
    size_t at = 0;
    if (!comm_.is_server()) {
        DILOCO_CHECK(a.size() == 1 && a[0].size() == 6, "it holds no async worker state");
        pushes_ = (long)get(a[0], at);
        steps_ = (long)get(a[0], at);
        idle_s_ = get(a[0], at);
        return;
    }
    DILOCO_CHECK(a.size() == 3 && a[0].size() == 6 + 12 * (size_t)M_,
                 "it holds no async server state for --workers " + std::to_string(M_));
    DILOCO_CHECK(a[1].size() == n_ && a[2].size() == (delayed_ ? n_ : 0),
                 "its outer state was written with another model or --outer-opt");
    updates_ = (long)get(a[0], at);
    applied_steps_ = (long)get(a[0], at);
    buffered_ = (long)get(a[0], at);
    for (WorkerView& w : workers_) {
        w.pushes = (long)get(a[0], at);
        w.steps = (long)get(a[0], at);
        w.clock = get(a[0], at);
        w.virtual_idle = get(a[0], at);
        w.idle_s = get(a[0], at);
        w.measured_speed = get(a[0], at);
    }
    momentum_ = std::move(a[1]);
    if (delayed_) buffer_ = std::move(a[2]);
}

void check(const TrainOptions& o) {
    DILOCO_CHECK(o.outer_opt == "nesterov" || o.outer_opt == "delayed-nesterov" || o.outer_opt == "sgd",
                 "--outer-opt for --algo async must be nesterov, delayed-nesterov or sgd, got '" + o.outer_opt + "'");
    DILOCO_CHECK(o.delay_buffer >= 1, "--delay-buffer must be >= 1, got " + std::to_string(o.delay_buffer));
    DILOCO_CHECK(o.delay_buffer == 1 || o.outer_opt == "delayed-nesterov",
                 "--delay-buffer applies to --outer-opt delayed-nesterov");
    DILOCO_CHECK(o.virtual_step_s >= 0 && std::isfinite(o.virtual_step_s), "--virtual-step-s must be >= 0");
    (void)parse_worker_speeds(o.worker_speeds, o.workers);
    DILOCO_CHECK(o.drop_prob == 0, "--drop-prob applies to --algo diloco and streaming");
    DILOCO_CHECK(!o.eager && !o.delayed, "--eager and --delayed apply to --algo diloco (async never waits)");
    DILOCO_CHECK(!o.verify_sync && !o.dump_replicas, "--verify-sync and --dump-replicas apply to --algo diloco");
    refuse_dipaco_options(o);
    refuse_worker_loss_survival(o, "asynchronous Local-SGD's server");
}

std::unique_ptr<TrainingAlgorithm> create(const TrainOptions& o, Comm& comm, const GPT& model) {
    return std::make_unique<AsyncLocalSGD>(o, comm, model);
}

}  // namespace

const AlgorithmEntry async_algorithm{"async", check, create, 1};

}  // namespace diloco
