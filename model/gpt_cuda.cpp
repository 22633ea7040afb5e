#include "model/gpt_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/attention_cuda.h"
#include "kernels/common.h"
#include "kernels/cuda_check.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/embedding_cuda.h"
#include "kernels/gelu_cuda.h"
#include "kernels/layernorm_cuda.h"
#include "kernels/residual_cuda.h"

namespace diloco {

void gpt_cuda_create(GPTCuda& m, const GPT& host, int B, int T, Precision precision) {
    gpt_build(m.layout, host.config);
    m.layout.params.clear();
    m.layout.params.shrink_to_fit();
    m.layout.grads.clear();
    m.layout.grads.shrink_to_fit();
    DILOCO_CHECK(T <= host.config.max_seq_len, "seq_len exceeds the model's max_seq_len");
    DILOCO_CHECK(host.config.d_model / host.config.n_head <= kAttnCudaMaxHead,
                 "the CUDA attention supports head sizes up to " + std::to_string(kAttnCudaMaxHead));
    m.B = B;
    m.T = T;
    m.precision = precision;
    const size_t n = host.num_params;
    DILOCO_CUDA_CHECK(cudaMalloc(&m.params, n * sizeof(float)));
    DILOCO_CUDA_CHECK(cudaMalloc(&m.grads, n * sizeof(float)));
    if (precision == Precision::fp32) {
        Acts a;
        DILOCO_CUDA_CHECK(cudaMalloc(&m.acts, layout_acts(a, nullptr, host.config, B, T) * sizeof(float)));
    }
    // the model's own stream, blocking: a step on it can be captured (the legacy stream cannot),
    // and the host's blocking copies still wait for it
    DILOCO_CUDA_CHECK(cudaStreamCreate(&m.stream));
    m.rows_ints = (size_t)2 * B * T;
    DILOCO_CUDA_CHECK(cudaMalloc(&m.rows, m.rows_ints * sizeof(int)));
    DILOCO_CUDA_CHECK(cudaMalloc(&m.att_workspace, attention_backward_workspace(B, T, host.config.n_head) * sizeof(float)));
    DILOCO_CUDA_CHECK(cudaMalloc(&m.emb_workspace, embedding_backward_workspace(B, T) * sizeof(int)));
    // the widest layer with a bias is the MLP's first (4C outputs); the logits have none
    const long mm_floats = matmul_backward_workspace(B * T, 4 * host.config.d_model);
    DILOCO_CUDA_CHECK(cudaMalloc(&m.mm_workspace, mm_floats * sizeof(float)));
    const size_t figure_bytes = (3 * (1 + kStepFigureSlots) + 1) * sizeof(double);
    DILOCO_CUDA_CHECK(cudaMalloc(&m.step_figures, figure_bytes));
    DILOCO_CUDA_CHECK(cudaMemset(m.step_figures, 0, figure_bytes));
    DILOCO_CUDA_CHECK(cudaMallocHost(&m.figures_host, figure_bytes));
    DILOCO_CUDA_CHECK(cudaEventCreate(&m.staged));
    DILOCO_CUDA_CHECK(cudaMemcpy(m.params, host.params.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    DILOCO_CUDA_CHECK(cudaMemset(m.grads, 0, n * sizeof(float)));
    blas_create(m.blas);
    if (precision == Precision::bf16) gpt_cuda_alloc_bf16(m);  // the copy is taken from params above
}

void gpt_cuda_destroy(GPTCuda& m) {
    m.cudnn_attention.reset();  // before its stream goes
    for (void* p : {(void*)m.params, (void*)m.grads, (void*)m.acts, (void*)m.rows,
                    (void*)m.att_workspace, (void*)m.emb_workspace, (void*)m.mm_workspace, (void*)m.params16,
                    (void*)m.acts16, (void*)m.step_figures})
        if (p) cudaFree(p);
    if (m.staging) cudaFreeHost(m.staging);
    if (m.figures_host) cudaFreeHost(m.figures_host);
    if (m.staged) cudaEventDestroy(m.staged);
    blas_destroy(m.blas);
    if (m.stream) cudaStreamDestroy(m.stream);
    m = GPTCuda{};
}

static Acts device_acts(GPTCuda& m) {
    Acts a;
    layout_acts(a, m.acts, m.layout.config, m.B, m.T);
    return a;
}

// The rows of `micro_batches` micro-batches of N into the pinned staging buffer, then to the device
// in one copy on the model's stream. A blocking copy from pageable memory would wait for the device
// first; this one lets the host run ahead, by about a step: it waits for the last step's copy
// (done when that step's first kernel started) before it writes the buffer again.
static void upload_rows(GPTCuda& m, const int* tokens, const int* targets, int N, int micro_batches) {
    const size_t need = (size_t)micro_batches * 2 * N;
    if (m.staging_in_flight) {
        if (cudaEventQuery(m.staged) != cudaSuccess) DILOCO_CUDA_CHECK(cudaEventSynchronize(m.staged));
        m.staging_in_flight = false;
    }
    if (need > m.staging_ints) {
        if (m.staging) DILOCO_CUDA_CHECK(cudaFreeHost(m.staging));
        m.staging_ints = need;
        DILOCO_CUDA_CHECK(cudaMallocHost(&m.staging, m.staging_ints * sizeof(int)));
    }
    if (need > m.rows_ints) {  // a larger --grad-accum than the last step's
        DILOCO_CUDA_CHECK(cudaFree(m.rows));
        m.rows_ints = need;
        DILOCO_CUDA_CHECK(cudaMalloc(&m.rows, m.rows_ints * sizeof(int)));
    }
    for (int k = 0; k < micro_batches; k++) {
        int* slot = m.staging + (size_t)k * 2 * N;
        std::memcpy(slot, tokens + (size_t)k * N, (size_t)N * sizeof(int));
        if (targets) std::memcpy(slot + N, targets + (size_t)k * N, (size_t)N * sizeof(int));
    }
    const size_t ints = targets ? need : (size_t)N;  // without targets: one micro-batch's tokens
    DILOCO_CUDA_CHECK(cudaMemcpyAsync(m.rows, m.staging, ints * sizeof(int), cudaMemcpyHostToDevice, m.stream));
    DILOCO_CUDA_CHECK(cudaEventRecord(m.staged, m.stream));
    m.staging_in_flight = true;
}

// The forward's rows: micro-batch k of the staged ones.
static void select_rows(GPTCuda& m, int N, int micro_batch) {
    m.tokens = m.rows + (size_t)micro_batch * 2 * N;
    m.targets = m.tokens + N;
}

// The forward on the rows already on the device, to the per-row losses (null without targets).
static const float* forward_on_device(GPTCuda& m, int B, int T, bool with_targets) {
    if (m.precision == Precision::bf16) return gpt_cuda_forward_bf16(m, B, T, with_targets);
    const GPTConfig& c = m.layout.config;
    const int C = c.d_model, NH = c.n_head, V = c.vocab, N = B * T;
    const float* P = m.params;
    Acts a = device_acts(m);
    cudaStream_t st = m.stream;

    DILOCO_CUDA_CHECK(embedding_forward_cuda(a.x0, m.tokens, P + m.layout.wte, P + m.layout.wpe, B, T, C, st));
    const float* x = a.x0;
    for (int l = 0; l < c.n_layer; l++) {
        const BlockParams& w = m.layout.blocks[l];
        LayerActs& L = a.layers[l];
        DILOCO_CUDA_CHECK(layernorm_forward_cuda(L.ln1, L.ln1_mean, L.ln1_rstd, x, P + w.ln1w, P + w.ln1b, N, C, st));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(L.qkv, L.ln1, P + w.qkvw, P + w.qkvb, N, C, 3 * C, m.blas, st));
        DILOCO_CUDA_CHECK(attention_forward_cuda(L.att, L.att_lse, L.qkv, B, T, C, NH, st));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(a.proj, L.att, P + w.attprojw, P + w.attprojb, N, C, C, m.blas, st));
        DILOCO_CUDA_CHECK(residual_forward_cuda(L.x_mid, x, a.proj, (long)N * C, st));
        DILOCO_CUDA_CHECK(layernorm_forward_cuda(L.ln2, L.ln2_mean, L.ln2_rstd, L.x_mid, P + w.ln2w, P + w.ln2b, N, C, st));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(L.fch, L.ln2, P + w.fcw, P + w.fcb, N, C, 4 * C, m.blas, st));
        DILOCO_CUDA_CHECK(gelu_forward_cuda(L.fch_gelu, L.fch, (long)N * 4 * C, st));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(a.proj, L.fch_gelu, P + w.fcprojw, P + w.fcprojb, N, 4 * C, C, m.blas, st));
        DILOCO_CUDA_CHECK(residual_forward_cuda(L.x_out, L.x_mid, a.proj, (long)N * C, st));
        x = L.x_out;
    }
    DILOCO_CUDA_CHECK(layernorm_forward_cuda(a.lnf, a.lnf_mean, a.lnf_rstd, x, P + m.layout.lnfw, P + m.layout.lnfb, N, C, st));
    DILOCO_CUDA_CHECK(matmul_forward_cuda(a.logits, a.lnf, P + m.layout.wte, nullptr, N, C, V, m.blas, st));
    if (!with_targets) return nullptr;
    DILOCO_CUDA_CHECK(crossentropy_forward_cuda(a.losses, a.lse, a.logits, m.targets, N, V, st));
    return a.losses;
}

static void begin_forward(GPTCuda& m, int B, int T) {
    DILOCO_CHECK(B <= m.B && T <= m.T, "forward called with more rows than were allocated");
    m.cur_B = B;
    m.cur_T = T;
}

float gpt_cuda_forward(GPTCuda& m, const int* tokens, const int* targets, int B, int T) {
    begin_forward(m, B, T);
    upload_rows(m, tokens, targets, B * T, 1);
    select_rows(m, B * T, 0);
    const float* losses = forward_on_device(m, B, T, targets != nullptr);
    return losses ? gpt_cuda_mean_loss(losses, B * T) : NAN;
}

void gpt_cuda_stage_rows(GPTCuda& m, const int* tokens, const int* targets, int B, int T, int micro_batches) {
    DILOCO_CHECK(B <= m.B && T <= m.T, "a step with more rows than were allocated");
    upload_rows(m, tokens, targets, B * T, micro_batches);
}

void gpt_cuda_forward_staged(GPTCuda& m, int B, int T, int micro_batch) {
    begin_forward(m, B, T);
    select_rows(m, B * T, micro_batch);
    const float* losses = forward_on_device(m, B, T, true);
    DILOCO_CUDA_CHECK(loss_mean_accumulate_cuda(gpt_cuda_step_figures(m), losses, B * T, m.stream));
}

void gpt_cuda_keep_step_figures(GPTCuda& m, int slot) {
    DILOCO_CUDA_CHECK(cudaMemcpyAsync(gpt_cuda_kept_figures(m, slot), gpt_cuda_step_figures(m), 3 * sizeof(double),
                                      cudaMemcpyDeviceToDevice, m.stream));
}

float gpt_cuda_mean_loss(const float* device_losses, int N) {
    std::vector<float> losses(N);
    DILOCO_CUDA_CHECK(cudaMemcpy(losses.data(), device_losses, N * sizeof(float), cudaMemcpyDeviceToHost));
    double sum = 0.0;
    for (float l : losses) sum += l;
    return (float)(sum / N);
}

void gpt_cuda_backward(GPTCuda& m, int micro_batches) {
    DILOCO_CHECK(micro_batches >= 1, "backward: micro_batches must be >= 1");
    if (m.precision == Precision::bf16) return gpt_cuda_backward_bf16(m, micro_batches);
    const GPTConfig& c = m.layout.config;
    const int B = m.cur_B, T = m.cur_T, C = c.d_model, NH = c.n_head, V = c.vocab, N = B * T;
    const float* P = m.params;
    float* G = m.grads;
    Acts a = device_acts(m);
    cudaStream_t st = m.stream;
    DILOCO_CUDA_CHECK(crossentropy_backward_cuda(a.logits, a.logits, a.lse, m.targets, 1.0f / (float)((long)N * micro_batches), N, V, st));
    const float* x_last = c.n_layer ? a.layers.back().x_out : a.x0;
    DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + m.layout.wte, nullptr, a.logits, a.lnf, P + m.layout.wte, N, C, V,
                                           m.mm_workspace, m.blas, st));
    DILOCO_CUDA_CHECK(cudaMemsetAsync(a.dres, 0, (size_t)N * C * sizeof(float), st));
    DILOCO_CUDA_CHECK(layernorm_backward_cuda(a.dres, G + m.layout.lnfw, G + m.layout.lnfb, a.dtmp, x_last, P + m.layout.lnfw,
                                     a.lnf_mean, a.lnf_rstd, N, C, st));
    for (int l = c.n_layer - 1; l >= 0; l--) {
        const BlockParams& w = m.layout.blocks[l];
        LayerActs& L = a.layers[l];
        const float* x_in = l ? a.layers[l - 1].x_out : a.x0;
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dfch, G + w.fcprojw, G + w.fcprojb, a.dres, L.fch_gelu, P + w.fcprojw, N, 4 * C, C,
                                      m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(gelu_backward_cuda(a.dfch, L.fch, a.dfch, (long)N * 4 * C, st));
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + w.fcw, G + w.fcb, a.dfch, L.ln2, P + w.fcw, N, C, 4 * C,
                                               m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(layernorm_backward_cuda(a.dres, G + w.ln2w, G + w.ln2b, a.dtmp, L.x_mid, P + w.ln2w, L.ln2_mean,
                                         L.ln2_rstd, N, C, st));
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + w.attprojw, G + w.attprojb, a.dres, L.att, P + w.attprojw, N, C, C,
                                      m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(attention_backward_cuda(a.dqkv, a.dtmp, L.qkv, L.att, L.att_lse, B, T, C, NH, m.att_workspace, st));
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + w.qkvw, G + w.qkvb, a.dqkv, L.ln1, P + w.qkvw, N, C, 3 * C,
                                               m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(layernorm_backward_cuda(a.dres, G + w.ln1w, G + w.ln1b, a.dtmp, x_in, P + w.ln1w, L.ln1_mean,
                                         L.ln1_rstd, N, C, st));
    }
    DILOCO_CUDA_CHECK(embedding_backward_cuda(G + m.layout.wte, G + m.layout.wpe, a.dres, m.tokens, B, T, C,
                                     m.emb_workspace, st));
}

void gpt_cuda_zero_grad(GPTCuda& m) {
    DILOCO_CUDA_CHECK(cudaMemsetAsync(m.grads, 0, m.layout.num_params * sizeof(float), m.stream));
}

std::vector<float> gpt_cuda_download(const GPTCuda& m, const float* device_buffer) {
    std::vector<float> out(m.layout.num_params);
    DILOCO_CUDA_CHECK(cudaMemcpy(out.data(), device_buffer, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return out;
}

}  // namespace diloco
