// The GPT of model/gpt.h on a CUDA device: the same parameter layout, activation layout and order
// of operations, over the CUDA kernels (kernels/*.cu) and cuBLAS. Built natively with CUDA, and
// built emulated (DILOCO_EMULATE) so that CI runs a whole training step through the kernels' own
// source, with the CPU BLAS in place of cuBLAS.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/adamw_cuda.h"
#include "kernels/matmul_cuda.h"
#include "model/gpt.h"
#include "model/gpt_acts.h"

namespace diloco {

struct CudnnSdpa;  // model/attention_cudnn.h

constexpr int kStepFigureSlots = 64;

struct GPTCuda {
    GPT layout;  // config and tensor table (its host buffers stay empty)
    float* params = nullptr;  // device, flat, block-major as on the host
    float* grads = nullptr;
    float* acts = nullptr;  // fp32: every activation; bf16: only the fp32 statistics
    Precision precision = Precision::fp32;
    uint16_t* params16 = nullptr;  // bf16: the weights' bf16 copy, the flat layout of params
    uint16_t* acts16 = nullptr;    // bf16: the activations and their gradients
    int B = 0, T = 0, cur_B = 0, cur_T = 0;
    // device: a step's rows, micro-batch k's tokens at 2kN and its targets at 2kN + N (N = B T)
    int* rows = nullptr;
    size_t rows_ints = 0;
    int* tokens = nullptr;   // the rows of the forward at hand, in `rows`
    int* targets = nullptr;
    // pinned host: the same layout, on its way to `rows` in one asynchronous copy; `staged` is
    // recorded after the copy, and the host waits on it before it refills the buffer
    int* staging = nullptr;
    size_t staging_ints = 0;
    cudaEvent_t staged = nullptr;
    bool staging_in_flight = false;
    // device, in slots of 3 doubles: [0] a step's loss (its micro-batches' means, added), [1] the
    // squared norm of its gradients, [2] the gate AdamW takes its clipping from (step_gate_cuda).
    // The first slot is the step being computed (every step's kernels use the same addresses, so
    // that a step can be captured once and replayed); kStepFigureSlots more keep each step's in
    // turn, so that the host reads many steps' in one copy (optim/train_cuda.cpp); then one double,
    // the sticky "halted" flag that a non-finite loss or norm sets (kernels/gradnorm_cuda.h)
    double* step_figures = nullptr;
    double* figures_host = nullptr;  // pinned: the kept slots' copy on the host (one copy, one wait)
    int step_micro_batches = 1;  // of that step
    float* att_workspace = nullptr;
    int* emb_workspace = nullptr;
    float* mm_workspace = nullptr;  // the bias gradients' partial sums
    std::shared_ptr<CudnnSdpa> cudnn_attention;  // bf16 with --attention cudnn: cuDNN's SDPA, not variant 2
    BlasHandle blas;
    cudaStream_t stream = nullptr;
};

// The figures of the step being computed, those kept in `slot`, and the halted flag (device).
inline double* gpt_cuda_step_figures(const GPTCuda& m) { return m.step_figures; }
inline double* gpt_cuda_kept_figures(const GPTCuda& m, int slot) { return m.step_figures + 3 * (1 + slot); }
inline double* gpt_cuda_halted(const GPTCuda& m) { return m.step_figures + 3 * (1 + kStepFigureSlots); }
// Keeps the step's figures in `slot` (an asynchronous copy on the model's stream).
void gpt_cuda_keep_step_figures(GPTCuda& m, int slot);

// Allocates everything for batches of up to B x T and copies the host model's parameters.
void gpt_cuda_create(GPTCuda& m, const GPT& host, int B, int T, Precision precision = Precision::fp32);
void gpt_cuda_destroy(GPTCuda& m);

// Forward on host tokens/targets (B,T); returns the mean loss (NaN without targets), read back
// at once (evaluation).
float gpt_cuda_forward(GPTCuda& m, const int* tokens, const int* targets, int B, int T);
// A training step's rows, micro_batches x B x T tokens and targets (host), on their way to the
// device in one asynchronous copy; waits only for the previous such copy to have left the staging
// buffer. May reallocate m.rows (never while a graph is being captured: it is not part of one).
void gpt_cuda_stage_rows(GPTCuda& m, const int* tokens, const int* targets, int B, int T, int micro_batches);
// The forward of micro-batch `micro_batch` of the staged rows: adds its mean loss into the loss of
// the step's figures, on the device, and returns without waiting for the device.
void gpt_cuda_forward_staged(GPTCuda& m, int B, int T, int micro_batch);
// Backward of the last forward's mean loss; accumulates into m.grads, weighted 1/micro_batches
// as gpt_backward (model/gpt.h) for gradient accumulation.
void gpt_cuda_backward(GPTCuda& m, int micro_batches = 1);
void gpt_cuda_zero_grad(GPTCuda& m);

// bf16: rewrites the bf16 copy of params[begin, begin + count) from the master weights; call after
// anything but AdamW changed them (a copy from the host, an all-gather). No-op in fp32.
void gpt_cuda_refresh_bf16(GPTCuda& m, size_t begin, size_t count);

// The mean of N per-row losses on the device, read back once (both precisions' forward ends so).
float gpt_cuda_mean_loss(const float* device_losses, int N);

// The bf16 path's pieces (model/gpt_cuda_bf16.cpp), called through the functions above.
void gpt_cuda_alloc_bf16(GPTCuda& m);
const float* gpt_cuda_forward_bf16(GPTCuda& m, int B, int T, bool with_targets);  // the device's per-row losses
void gpt_cuda_backward_bf16(GPTCuda& m, int micro_batches);

// Copies a device buffer of the model (params or grads) to the host.
std::vector<float> gpt_cuda_download(const GPTCuda& m, const float* device_buffer);

}  // namespace diloco
