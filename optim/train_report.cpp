#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/common.h"
#include "optim/run.h"

namespace diloco {

static std::string fmt_duration(double s) {
    char buf[32];
    long t = (long)(s + 0.5);
    if (t >= 3600)
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
}

// A NaN or an infinity ends the run with the step, the rank and what first went non-finite: the
// first parameter tensor (an outer update may have made it so), else the first activation of the
// forward pass, else the loss itself. On a device the step's figures come back steps later, and
// the tensors are fetched then: the first non-finite gradient, else parameter (its activations
// stay on the device).
[[noreturn]] void stop_non_finite(Run& r, int64_t step, const std::string& what) {
    std::string first = what;
    if (r.dev) {  // the device's gate left the weights of before the step (kernels/gradnorm_cuda.h)
        r.dev->grads_to_host(r.model.grads.data());
        r.dev->params_to_host(r.model.params.data());
        const std::string grad = first_non_finite_tensor(r.model, r.model.grads.data());
        const std::string param = first_non_finite_tensor(r.model, r.model.params.data());
        if (!param.empty()) first += "; parameter " + param + " was already non-finite before the step (read from the device)";
        else if (!grad.empty()) first += "; every parameter is finite, the gradient of " + grad +
                                         " is the first non-finite tensor (read from the device)";
    } else if (what.starts_with("the loss")) {
        const std::string param = first_non_finite_tensor(r.model, r.model.params.data());
        const std::string act = first_non_finite_activation(r.model);
        if (!param.empty()) first += "; parameter " + param + " was already non-finite before the step's forward pass";
        else if (!act.empty()) first += "; every parameter is finite, the first non-finite tensor of the forward pass is " + act;
    }
    throw Error("non-finite values at step " + std::to_string(step) + " on rank " + std::to_string(r.comm.world_rank()) +
                ": " + first + "; lower --lr");
}

// The device's figures of the steps that wait for them (one wait for all), put in place with the
// device's own seconds: a step's compute is its time on the device less its gradient average,
// and it finished as long before the read as the steps after it took. Then the checks the CPU
// makes at every step: the first step whose loss or norm is not finite ends the run. Its
// gradients are computed again first when later steps have overwritten them (the weights are
// still those of before it: the device's gate stopped every update from it on).
void settle_device_steps(Run& r, std::vector<PendingStep>& steps) {
    if (!r.dev) return;
    const std::vector<StepFigures> figures = r.dev->read_figures();
    const double now = r.seconds();
    size_t waiting = 0;
    for (const PendingStep& p : steps) waiting += p.figures_on_device;
    DILOCO_CHECK(waiting == figures.size(), "internal: " + std::to_string(figures.size()) + " device steps read for " +
                                                std::to_string(waiting) + " waiting");
    double later = 0.0;  // device seconds of the steps after the one at hand
    for (size_t k = steps.size(), j = waiting; k-- > 0;) {
        if (!steps[k].figures_on_device) continue;
        steps[k].wall = now - later;
        later += figures[--j].device_seconds;
    }
    double moved = 0.0;  // compute seconds changed so far: the host's enqueueing replaced by device time
    size_t j = 0;
    for (PendingStep& p : steps) {
        if (p.figures_on_device) {
            const StepFigures& f = figures[j++];
            p.loss = f.loss, p.grad_norm = f.inner.grad_norm, p.figures_on_device = false;
            if (!r.stage_grads) {  // a step that staged its gradients waited for the device itself
                const double compute = std::max(0.0, f.device_seconds - f.average_seconds);
                moved += compute - p.spent.compute;
                p.spent.compute = compute;
                p.spent.comm += f.average_seconds;
                r.spent.comm += f.average_seconds;
            }
        }
        p.compute_total += moved;
    }
    r.spent.compute += moved;
    for (const PendingStep& p : steps) {
        if (std::isfinite(p.loss) && std::isfinite(p.grad_norm)) continue;
        if (r.state.step != p.step && r.train) {
            const int B = r.o.batch, T = r.o.seq_len, K = r.o.grad_accum;
            std::vector<int> tok((size_t)K * B * T), tgt(tok.size());
            r.train->read_rows(p.rows_at, K * B, tok.data(), tgt.data());
            r.dev->compute_gradients(tok.data(), tgt.data(), B, T, K);
        }
        if (!std::isfinite(p.loss)) stop_non_finite(r, p.step, "the loss is " + std::to_string(p.loss));
        stop_non_finite(r, p.step, "the gradient norm is " + std::to_string(p.grad_norm));
    }
}

// The global mean loss of each step of the round reaches rank 0 (one small message per round,
// counted on the outer link), which writes the metrics lines and the progress.
void report_round(Run& r, std::vector<PendingStep>& pending) {
    settle_device_steps(r, pending);
    std::vector<double> losses(pending.size());
    for (size_t k = 0; k < pending.size(); k++) losses[k] = pending[k].loss;
    const int lost_before = r.comm.losses();
    r.comm.reduce_to_root(losses.data(), pending.size());
    if (!r.root()) return;
    // rank-replicas whose losses were summed: the survivors', should a worker be lost in this very
    // reduction (--on-worker-loss continue; the layout itself changes at the next round's end)
    const double R = r.comm.losses() != lost_before ? (double)r.comm.world_size()
                                                     : (double)r.global_rows / ((long)r.o.grad_accum * r.o.batch);
    for (size_t k = 0; k < pending.size(); k++) {
        const PendingStep& p = pending[k];
        const double loss = losses[k] / R;
        std::fprintf(r.metrics,
                     "{\"step\": %lld, \"loss\": %.9g, \"lr\": %.6g, \"grad_norm\": %.6g, \"tokens\": %.0f, "
                     "\"wall_s\": %.3f, \"compute_util\": %.4f, \"compute_s\": %.6f, \"comm_s\": %.6f, "
                     "\"stage_s\": %.6f, \"bytes_outer\": %llu, \"bytes_inner\": %llu}\n",
                     (long long)p.step, loss, p.lr, p.grad_norm, r.tokens_at(p.step), p.wall,
                     p.wall > 0 ? p.compute_total / p.wall : 0.0, p.spent.compute, p.spent.comm, p.spent.stage,
                     (unsigned long long)r.comm.bytes_outer(), (unsigned long long)r.comm.bytes_inner());
        const bool log_line = r.o.log_every > 0 && (p.step % r.o.log_every == 0 || p.step == r.first_step);
        if (log_line || p.step == r.o.steps) {
            const double done = (double)(p.step - r.first_step + 1);
            std::fprintf(stderr, "step %lld/%ld | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | ETA %s\n",
                         (long long)p.step, r.o.steps, loss, p.lr, p.grad_norm, (r.tokens_at(p.step) - r.tokens_before) / p.wall,
                         fmt_duration(p.wall / done * (r.o.steps - p.step)).c_str());
        }
    }
}

// Whether the round ending at `step` reports its steps (and those of the rounds before it that did
// not). On the CPU every round does. On a device a report is the host's wait for the steps'
// figures, so a method whose round is one step (data-parallel) reports only when a progress line,
// an evaluation, a checkpoint or the end falls in it, or kMaxUnreportedSteps steps wait; a run that
// survives lost workers reports every round, each under the layout that trained it.
constexpr size_t kMaxUnreportedSteps = 64;
bool report_due(const Run& r, const std::vector<PendingStep>& pending, int64_t step) {
    if (!r.dev || r.o.on_worker_loss == "continue") return true;
    if (step == r.end_step || step >= r.next_eval || step >= r.next_ckpt || pending.size() >= kMaxUnreportedSteps) return true;
    for (const PendingStep& p : pending)
        if (r.o.log_every > 0 && (p.step % r.o.log_every == 0 || p.step == r.first_step)) return true;
    return false;
}

// The summary line of metrics.jsonl and the closing lines on stderr, with the job's
// across-worker traffic against what data-parallel would have sent: every step, an allreduce of
// each rank's 1/G slice over the M workers.
void write_summary(Run& r) {
    const TrainOptions& o = r.o;
    const int M = r.comm.workers(), G = r.comm.ranks_per_worker(), R = M * G;  // the ranks that train
    const double wall = r.seconds();
    const double trained = std::max(0.0, r.tokens_at(o.steps) - r.tokens_before);  // across any change of layout
    const double outer_total = r.comm.sum_world((double)r.comm.bytes_outer());
    const double dp_outer_total =
        M > 1 ? (double)o.steps * R * 2.0 * (M - 1) / M * 4.0 * ((double)r.model.num_params / G) : 0.0;
    if (!r.root()) return;
    std::fprintf(r.metrics,
                 "{\"summary\": true, \"step\": %ld, \"final_val_loss\": %.9g, \"tokens\": %.0f, "
                 "\"wall_s\": %.3f, \"tok_per_s\": %.1f, \"params\": %zu, \"algo\": \"%s\", "
                 "\"workers\": %d, \"ranks\": %d, \"inner_steps\": %ld, \"bytes_outer_total\": %.0f, "
                 "\"bytes_outer_dp_equivalent\": %.0f, \"peak_bytes_step\": %llu, \"compute_util\": %.4f, "
                 "\"compute_s\": %.3f, \"comm_s\": %.3f, \"stage_s\": %.3f, \"progress_polls\": %llu}\n",
                 o.steps, r.val_loss, r.tokens_at(o.steps), wall,
                 wall > 0 ? trained / wall : 0.0, r.model.num_params, o.algo.c_str(), M,
                 r.comm.world_size(), r.algo->steps_per_round(), outer_total, dp_outer_total, (unsigned long long)r.peak_bytes_step,
                 wall > 0 ? r.spent.compute / wall : 0.0, r.spent.compute, r.spent.comm, r.spent.stage,
                 (unsigned long long)r.comm.progress_polls());
    std::fclose(r.metrics);
    std::fprintf(stderr, "train: done in %s | final val_loss %.4f\n", fmt_duration(wall).c_str(), r.val_loss);
    if (r.dev) std::fprintf(stderr, "train: %s\n", r.dev->describe_steps().c_str());
    if (M > 1)
        std::fprintf(stderr, "train: across-worker bytes %.2f MB in total; data-parallel would have sent %.2f MB "
                             "for the same tokens (%.1fx)\n",
                     outer_total / 1e6, dp_outer_total / 1e6, dp_outer_total / std::max(outer_total, 1.0));
}

}  // namespace diloco
