#include "optim/train_cuda.h"

#include <string>

#include "kernels/common.h"
#include "model/gpt_cuda.h"
#include "optim/device.h"
#include "optim/inner_cuda.h"
#ifndef DILOCO_EMULATE
#include "kernels/cuda_info.h"
#endif
#ifdef DILOCO_HAVE_NCCL
#include "comm/nccl.h"
#endif

namespace diloco {

namespace {

MatmulPrecision g_matmul_precision = MatmulPrecision::fp32;

void check(cudaError_t e, const char* what) {
    DILOCO_CHECK(e == cudaSuccess, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

class CudaTrainer : public DeviceTrainer {
public:
    CudaTrainer(const GPT& host, const InnerHyper& h, int B, int T, Comm& comm) {
        // the device first: everything below allocates on it
#ifdef DILOCO_HAVE_NCCL
        if (comm.ranks_per_worker() > 1) nccl_ = std::make_unique<NcclWorkerComm>(comm);  // sets the device
#endif
#ifndef DILOCO_EMULATE
        int ndev = 0;
        check(cudaGetDeviceCount(&ndev), "cudaGetDeviceCount");
        if (ndev > 0) check(cudaSetDevice(comm.node_local_rank() % ndev), "cudaSetDevice");
#else
        (void)comm;
#endif
        gpt_cuda_create(model_, host, B, T);
        blas_set_precision(model_.blas, g_matmul_precision);
        inner_cuda_create(opt_, model_, h);
    }
    ~CudaTrainer() override {
        inner_cuda_destroy(opt_);
        gpt_cuda_destroy(model_);
    }
    float compute_gradients(const int* tokens, const int* targets, int B, int T) override {
        gpt_cuda_zero_grad(model_);
        const float loss = gpt_cuda_forward(model_, tokens, targets, B, T);
        gpt_cuda_backward(model_);
        return loss;
    }
    InnerStepInfo inner_update(long step) override { return inner_update_cuda(opt_, model_, step); }
    float forward_loss(const int* tokens, const int* targets, int B, int T) override {
        return gpt_cuda_forward(model_, tokens, targets, B, T);
    }
    void grads_to_host(float* h) override { copy(h, model_.grads, cudaMemcpyDeviceToHost); }
    void grads_from_host(const float* h) override { copy(model_.grads, h, cudaMemcpyHostToDevice); }
    void params_to_host(float* h) override { copy(h, model_.params, cudaMemcpyDeviceToHost); }
    void params_from_host(const float* h) override { copy(model_.params, h, cudaMemcpyHostToDevice); }
    void moments_to_host(float* m, float* v) override {
        copy(m, opt_.m, cudaMemcpyDeviceToHost);
        copy(v, opt_.v, cudaMemcpyDeviceToHost);
    }
    void moments_from_host(const float* m, const float* v) override {
        copy(opt_.m, m, cudaMemcpyHostToDevice);
        copy(opt_.v, v, cudaMemcpyHostToDevice);
    }
    bool average_grads_in_worker() override {
#ifdef DILOCO_HAVE_NCCL
        if (nccl_) {
            nccl_->average(model_.grads, model_.layout.num_params, model_.stream);
            return true;
        }
#endif
        return false;
    }

private:
    void copy(void* dst, const void* src, cudaMemcpyKind kind) {
        check(cudaMemcpy(dst, src, model_.layout.num_params * sizeof(float), kind), "cudaMemcpy");
    }
#ifdef DILOCO_HAVE_NCCL
    std::unique_ptr<NcclWorkerComm> nccl_;  // declared first of the device state: destroyed last
#endif
    GPTCuda model_;
    InnerOptimizerCuda opt_;
};

int count_devices() {
#ifdef DILOCO_EMULATE
    return 1;  // the emulator
#else
    return cuda_device_count();
#endif
}

std::unique_ptr<DeviceTrainer> create(const GPT& host, const InnerHyper& h, int B, int T, Comm& comm) {
    return std::make_unique<CudaTrainer>(host, h, B, T, comm);
}

}  // namespace

void set_cuda_matmul_precision(MatmulPrecision p) { g_matmul_precision = p; }

void register_cuda_backend() {
#ifdef DILOCO_EMULATE
    register_device_backend({"cuda (emulated)", count_devices, create});
#else
    register_device_backend({"cuda", count_devices, create});
#endif
}

}  // namespace diloco
