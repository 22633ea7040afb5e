#include "optim/train_cuda.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/common.h"
#include "model/attention_cudnn.h"
#include "model/gpt_cuda.h"
#include "optim/device.h"
#include "optim/inner_cuda.h"
#include "optim/step_graph.h"
#ifndef DILOCO_EMULATE
#include "kernels/cuda_info.h"
#endif
#ifdef DILOCO_HAVE_NCCL
#include "comm/nccl.h"
#endif

namespace diloco {

namespace {

void check(cudaError_t e, const char* what) {
    DILOCO_CHECK(e == cudaSuccess, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

class CudaTrainer : public DeviceTrainer {
public:
    CudaTrainer(const GPT& host, const InnerHyper& h, int B, int T, Comm& comm, const DeviceOptions& o)
        : graph_(o.graphs && !o.cudnn_attention && !cuda_sync_enabled()) {
        // the device first: everything below allocates on it. With NCCL the worker's gradients are
        // averaged on the device even for one rank, so that one GPU runs the path many GPUs take.
#ifdef DILOCO_HAVE_NCCL
        nccl_ = std::make_unique<NcclWorkerComm>(comm);  // sets the device
#endif
#ifndef DILOCO_EMULATE
        int ndev = 0;
        check(cudaGetDeviceCount(&ndev), "cudaGetDeviceCount");
        if (ndev > 0) check(cudaSetDevice(comm.node_local_rank() % ndev), "cudaSetDevice");
#else
        (void)comm;
#endif
        gpt_cuda_create(model_, host, B, T, o.storage);
        blas_set_precision(model_.blas, o.precision);
        if (o.cudnn_attention) model_.cudnn_attention = cudnn_sdpa_create(model_.stream);
        inner_cuda_create(opt_, model_, h);
        for (SlotEvents& e : slot_events_)
            for (cudaEvent_t* ev : {&e.start, &e.end, &e.average_start, &e.averaged}) check(cudaEventCreate(ev), "cudaEventCreate");
#ifdef DILOCO_HAVE_NCCL
        check(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        for (cudaEvent_t* e : {&grads_ready_, &averaged_}) check(cudaEventCreate(e), "cudaEventCreate");
#endif
    }
    ~CudaTrainer() override {
        for (SlotEvents& e : slot_events_)
            for (cudaEvent_t ev : {e.start, e.end, e.average_start, e.averaged}) cudaEventDestroy(ev);
#ifdef DILOCO_HAVE_NCCL
        for (cudaEvent_t e : {grads_ready_, averaged_})
            if (e) cudaEventDestroy(e);
        if (comm_stream_) cudaStreamDestroy(comm_stream_);
#endif
        inner_cuda_destroy(opt_);
        gpt_cuda_destroy(model_);
    }
    // A step takes the next slot of the kept figures and of the events around it; the host reads
    // them when asked, or when every slot holds an unread step.
    void compute_gradients(const int* tokens, const int* targets, int B, int T, int micro_batches) override {
        begin_step();
        split_steps_++;
        compute_gradients_cuda(model_, tokens, targets, B, T, micro_batches);
    }
    float inner_update(long step) override {
        const float lr = inner_update_cuda(opt_, model_, step);
        end_step(lr);
        return lr;
    }
    // The step's rows and scalars go up first; what follows launches the same kernels with the
    // same arguments at every step, and is replayed as a CUDA Graph when graphs are on.
    float train_step(const int* tokens, const int* targets, int B, int T, int micro_batches, long step,
                     bool average) override {
        begin_step();
        gpt_cuda_stage_rows(model_, tokens, targets, B, T, micro_batches);
        const float lr = stage_step_scalars_cuda(opt_, model_, step);
        const std::string shape = std::to_string(B) + "x" + std::to_string(T) + "x" + std::to_string(micro_batches) +
                                  (average ? " averaged" : "") + " rows@" + std::to_string((uintptr_t)model_.rows);
        graph_.run(model_.stream, shape, [&] {
            gradients_on_device_cuda(model_, B, T, micro_batches);
            if (average) average_on_device(!graph_.capturing());
            update_on_device_cuda(opt_, model_);
        });
        if (average) count_average();
        end_step(lr);
        return lr;
    }
    std::string describe_steps() const override {
        std::string line = "inner steps: " + std::to_string(graph_.launches()) + " launched as a CUDA Graph, " +
                           std::to_string(graph_.direct() + split_steps_) + " kernel by kernel";
#ifdef DILOCO_EMULATE  // the emulator counts the host's waits: tests hold the loop to its reads
        line += "; the host waited for the device " + std::to_string(emu::host_wait_count()) + " times";
#endif
        return line;
    }
    std::vector<StepFigures> read_figures() override {
        read_unread();
        return std::exchange(read_, {});
    }
    void synchronize() override { check(cudaStreamSynchronize(model_.stream), "cudaStreamSynchronize"); }
    float forward_loss(const int* tokens, const int* targets, int B, int T) override {
        return gpt_cuda_forward(model_, tokens, targets, B, T);
    }
    void grads_to_host(float* h) override { copy(h, model_.grads, cudaMemcpyDeviceToHost); }
    void grads_from_host(const float* h) override { copy(model_.grads, h, cudaMemcpyHostToDevice); }
    void params_to_host(float* h) override { copy(h, model_.params, cudaMemcpyDeviceToHost); }
    void params_from_host(const float* h) override {
        copy(model_.params, h, cudaMemcpyHostToDevice);
        gpt_cuda_refresh_bf16(model_, 0, model_.layout.num_params);
    }
    void params_to_host(float* h, size_t begin, size_t count) override {
        check(cudaMemcpy(h + begin, model_.params + begin, count * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    }
    void params_from_host(const float* h, size_t begin, size_t count) override {
        check(cudaMemcpy(model_.params + begin, h + begin, count * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
        gpt_cuda_refresh_bf16(model_, begin, count);
    }
    void moments_to_host(float* m, float* v) override {
        copy(m, opt_.m, cudaMemcpyDeviceToHost);
        copy(v, opt_.v, cudaMemcpyDeviceToHost);
    }
    void moments_from_host(const float* m, const float* v) override {
        copy(opt_.m, m, cudaMemcpyHostToDevice);
        copy(opt_.v, v, cudaMemcpyHostToDevice);
    }
    bool averages_in_worker() const override {
#ifdef DILOCO_HAVE_NCCL
        return true;
#else
        return false;
#endif
    }
    bool average_grads_in_worker() override {
#ifdef DILOCO_HAVE_NCCL
        average_on_device(true);
        count_average();
        return true;
#else
        return false;
#endif
    }
    bool allgather_param_slices_in_worker() override {
#ifdef DILOCO_HAVE_NCCL
        nccl_->allgather_slices(model_.params, model_.layout.num_params, model_.stream);
        gpt_cuda_refresh_bf16(model_, 0, model_.layout.num_params);
        check(cudaStreamSynchronize(model_.stream), "cudaStreamSynchronize");
        return true;
#else
        return false;
#endif
    }

private:
    struct SlotEvents {
        cudaEvent_t start = nullptr, end = nullptr;              // around the step, on the model's stream
        cudaEvent_t average_start = nullptr, averaged = nullptr;  // around its average, on the comm stream
    };
    struct UnreadStep {
        int slot;
        float lr;
        bool averaged;
    };
    void begin_step() {
        averaged_this_step_ = false;
        check(cudaEventRecord(slot_events_[next_slot_].start, model_.stream), "cudaEventRecord");
    }
    void end_step(float lr) {
        gpt_cuda_keep_step_figures(model_, next_slot_);
        check(cudaEventRecord(slot_events_[next_slot_].end, model_.stream), "cudaEventRecord");
        unread_.push_back({next_slot_, lr, averaged_this_step_});
        next_slot_ = (next_slot_ + 1) % kStepFigureSlots;
        if ((int)unread_.size() == kStepFigureSlots) read_unread();
    }
    // grads ready (model stream) -> allreduce on the comm stream -> averaged (the model stream
    // waits). Timed by the slot's events; in a graph, by fixed events that only order (an event
    // recorded in a capture is not one the host can time).
    void average_on_device(bool timed) {
#ifdef DILOCO_HAVE_NCCL
        SlotEvents& e = slot_events_[next_slot_];
        cudaEvent_t done = timed ? e.averaged : averaged_;
        check(cudaEventRecord(grads_ready_, model_.stream), "cudaEventRecord");
        check(cudaStreamWaitEvent(comm_stream_, grads_ready_, 0), "cudaStreamWaitEvent");
        if (timed) check(cudaEventRecord(e.average_start, comm_stream_), "cudaEventRecord");
        nccl_->average(model_.grads, model_.layout.num_params, comm_stream_);
        check(cudaEventRecord(done, comm_stream_), "cudaEventRecord");
        check(cudaStreamWaitEvent(model_.stream, done, 0), "cudaStreamWaitEvent");
        averaged_this_step_ = timed;
#else
        (void)timed;
        DILOCO_CHECK(false, "internal: an average on the device without NCCL");
#endif
    }
    void count_average() {
#ifdef DILOCO_HAVE_NCCL
        nccl_->count_average(model_.layout.num_params);
#endif
    }
    // The figures of the unread steps, in one copy and one wait, kept in read_ with their seconds.
    void read_unread() {
        if (unread_.empty()) return;
        std::vector<float> lrs;
        for (const UnreadStep& u : unread_) lrs.push_back(u.lr);
        std::vector<StepFigures> f = read_step_figures_cuda(model_, unread_[0].slot, (int)unread_.size(), lrs.data(),
                                                            model_.step_micro_batches);
        for (size_t k = 0; k < f.size(); k++) {
            const SlotEvents& e = slot_events_[unread_[k].slot];
            f[k].device_seconds = elapsed_seconds(e.start, e.end);
            if (unread_[k].averaged) f[k].average_seconds = elapsed_seconds(e.average_start, e.averaged);
            read_.push_back(f[k]);
        }
        unread_.clear();
    }
    static double elapsed_seconds(cudaEvent_t a, cudaEvent_t b) {
        float ms = 0.0f;
        check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
        return ms / 1e3;
    }
    void copy(void* dst, const void* src, cudaMemcpyKind kind) {
        check(cudaMemcpy(dst, src, model_.layout.num_params * sizeof(float), kind), "cudaMemcpy");
    }
#ifdef DILOCO_HAVE_NCCL
    std::unique_ptr<NcclWorkerComm> nccl_;  // declared first of the device state: destroyed last
    cudaStream_t comm_stream_ = nullptr;
    cudaEvent_t grads_ready_ = nullptr, averaged_ = nullptr;
#endif
    GPTCuda model_;
    InnerOptimizerCuda opt_;
    StepGraph graph_;  // declared after the model: destroyed before its stream
    SlotEvents slot_events_[kStepFigureSlots];
    int next_slot_ = 0;
    long split_steps_ = 0;  // steps through compute_gradients and inner_update (their gradients staged)
    bool averaged_this_step_ = false;
    std::vector<UnreadStep> unread_;  // enqueued steps whose figures are still on the device, oldest first
    std::vector<StepFigures> read_;   // read, not yet handed to the loop
};

int count_devices() {
#ifdef DILOCO_EMULATE
    int n = 0;  // the emulator's node of kEmulatedDevices, one for each rank of a worker
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
#else
    return cuda_device_count();
#endif
}

std::unique_ptr<DeviceTrainer> create(const GPT& host, const InnerHyper& h, int B, int T, Comm& comm,
                                      const DeviceOptions& options) {
    return std::make_unique<CudaTrainer>(host, h, B, T, comm, options);
}

}  // namespace

void register_cuda_backend() {
#ifdef DILOCO_EMULATE
    register_device_backend({"cuda (emulated)", count_devices, create});
#else
    register_device_backend({"cuda", count_devices, create});
#endif
}

}  // namespace diloco
