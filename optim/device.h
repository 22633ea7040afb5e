// Training on an accelerator. The training loop (optim/train.cpp) keeps the host model as the
// place where communication, checkpoints and the outer optimizer see the weights; a DeviceTrainer
// holds the model, its gradients and the inner optimizer state on the device, and copies to and
// from the host only where the loop asks: the slice or fragment an outer sync needs
// (ReplicaWeights, optim/algorithm.h), checkpoints, and — without NCCL, with several ranks — the
// gradient average. The CUDA implementation registers itself from main(); the core
// library has no CUDA dependency.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "kernels/matmul.h"
#include "model/gpt.h"
#include "optim/inner.h"

namespace diloco {

class DeviceTrainer {
public:
    virtual ~DeviceTrainer() = default;
    // Zeroes the gradients, then forward and backward over micro_batches x B rows, B at a time,
    // each micro-batch's gradient weighted 1/micro_batches (compute_gradients, optim/inner.h).
    // Returns without waiting for the device: the loss stays there until read_figures.
    virtual void compute_gradients(const int* tokens, const int* targets, int B, int T, int micro_batches) = 0;
    // Enqueues the inner optimizer's step and returns its learning rate, without waiting. A step
    // whose loss or gradient norm is not finite changes nothing, and neither does any step after
    // it (the device's gate, kernels/gradnorm_cuda.h): the weights stay those of before it until
    // the host learns of it from read_figures.
    virtual float inner_update(long step) = 0;
    // Waits for the device and returns the figures of every step updated since the last call,
    // oldest first: the host's one wait for any number of steps.
    virtual std::vector<StepFigures> read_figures() = 0;
    // The whole inner step: compute_gradients, the average within the worker on the device when
    // `average` (average_grads_in_worker; only where averages_in_worker()), inner_update. Returns
    // the learning rate. One call, so that a trainer may capture the step once and replay it.
    virtual float train_step(const int* tokens, const int* targets, int B, int T, int micro_batches, long step,
                             bool average) {
        compute_gradients(tokens, targets, B, T, micro_batches);
        if (average) average_grads_in_worker();
        return inner_update(step);
    }
    // Waits until the device has done everything enqueued so far.
    virtual void synchronize() = 0;
    // mean loss of a forward pass (evaluation), no gradients
    virtual float forward_loss(const int* tokens, const int* targets, int B, int T) = 0;
    virtual void grads_to_host(float* host) = 0;
    virtual void grads_from_host(const float* host) = 0;
    virtual void params_to_host(float* host) = 0;
    virtual void params_from_host(const float* host) = 0;
    // The same for elements [begin, begin + count) of the flat buffer (host points at element 0).
    virtual void params_to_host(float* host, size_t begin, size_t count) = 0;
    virtual void params_from_host(const float* host, size_t begin, size_t count) = 0;
    virtual void moments_to_host(float* m, float* v) = 0;
    virtual void moments_from_host(const float* m, const float* v) = 0;
    // How the inner steps were issued, in a line (say, how many as a CUDA Graph).
    virtual std::string describe_steps() const { return "inner steps issued kernel by kernel"; }
    // Whether average_grads_in_worker can average on the device (NCCL).
    virtual bool averages_in_worker() const { return false; }
    // Averages the gradients over the ranks of this worker on the device (NCCL, on a stream of
    // its own ordered by events, so that the next kernel on the model's stream waits for it) and
    // returns true, or returns false when it cannot, and the loop averages them through the host.
    virtual bool average_grads_in_worker() { return false; }
    // All-gathers the worker's G slices of the parameters (slice_of) on the device (NCCL) and
    // returns true, or returns false and the caller gathers them through the host.
    virtual bool allgather_param_slices_in_worker() { return false; }
};

// How a device trains. precision: of the matrix products (--matmul-precision: fp32, or tf32 on
// tensor cores); storage: fp32, or bf16 mixed precision; cudnn_attention: bf16's attention by
// cuDNN's SDPA (--attention cudnn); graphs: replay the inner step as a CUDA Graph where it is
// stable (--cuda-graph auto).
struct DeviceOptions {
    MatmulPrecision precision = MatmulPrecision::fp32;
    Precision storage = Precision::fp32;
    bool cudnn_attention = false;
    bool graphs = true;
};

struct DeviceBackend {
    std::string name;  // "cuda", or "cuda (emulated)"
    int (*device_count)() = nullptr;
    // comm: the run's topology; the trainer picks its device (the rank's index on its node) and,
    // with NCCL, joins the worker's NCCL communicator
    std::unique_ptr<DeviceTrainer> (*create)(const GPT& host, const InnerHyper& h, int B, int T, Comm& comm,
                                             const DeviceOptions& options) = nullptr;
};

void register_device_backend(const DeviceBackend& backend);
// The registered backend, or one with null functions when the build has none.
const DeviceBackend& device_backend();

}  // namespace diloco
