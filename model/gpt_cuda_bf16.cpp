// The GPT on the CUDA path in mixed precision (--precision bf16): the same parameter layout and
// order of operations as model/gpt_cuda.cpp, with
//   - fp32 master weights (GPTCuda::params) and fp32 gradients, AdamW moments fp32 (optim/);
//   - a bf16 copy of the weights (params16, same flat layout), written by AdamW in its pass and
//     refreshed whenever the master weights are set from outside (gpt_cuda_refresh_bf16);
//   - bf16 activations and activation gradients (Bf16Acts below), fp32 layernorm statistics,
//     attention log-sum-exp, losses and logits' log-sum-exp;
//   - every kernel computing in fp32 and rounding once on store (docs/kernels.md), products on
//     tensor cores with fp32 accumulation, the loss in fp32.
// Fused: the residual add into the next layernorm, bias and GELU into the products' epilogues,
// the cross-entropy gradient over the logits' own buffer. Head sizes 64 and 128 (attention v2).
#include <cmath>
#include <string>

#include "kernels/attention_cuda.h"
#include "model/attention_cudnn.h"
#include "kernels/common.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/cuda_check.h"
#include "kernels/embedding_cuda.h"
#include "kernels/gelu_cuda.h"
#include "kernels/layernorm_cuda.h"
#include "kernels/residual_cuda.h"
#include "model/gpt_cuda.h"

namespace diloco {

namespace {

using u16 = uint16_t;

struct LayerActs16 {
    u16 *ln1, *qkv, *att, *x_mid, *ln2, *fch, *fch_gelu, *x_out;  // bf16
    float *ln1_mean, *ln1_rstd, *att_lse, *ln2_mean, *ln2_rstd;   // fp32
};
struct Acts16 {
    u16 *x0, *lnf, *logits, *proj, *dres, *dtmp, *dqkv, *dfch;  // bf16
    float *lnf_mean, *lnf_rstd, *losses, *lse;                   // fp32
    std::vector<LayerActs16> layers;
};

// Lays out both buffers (null bases only count) and returns {bf16 elements, floats}. Every buffer
// starts 16-byte aligned (cp.async and cuBLASLt need it; B T V, for one, need not be a multiple of 8).
std::pair<size_t, size_t> layout_acts16(Acts16& a, u16* base16, float* base32, const GPTConfig& c, int B, int T) {
    const size_t BT = (size_t)B * T, C = c.d_model;
    size_t o16 = 0, o32 = 0;
    auto h = [&](size_t n) { u16* p = base16 ? base16 + o16 : nullptr; o16 += (n + 7) / 8 * 8; return p; };
    auto f = [&](size_t n) { float* p = base32 ? base32 + o32 : nullptr; o32 += (n + 3) / 4 * 4; return p; };
    a.x0 = h(BT * C);
    a.layers.resize(c.n_layer);
    for (auto& L : a.layers) {
        L.ln1 = h(BT * C), L.qkv = h(BT * 3 * C), L.att = h(BT * C), L.x_mid = h(BT * C), L.ln2 = h(BT * C);
        L.fch = h(BT * 4 * C), L.fch_gelu = h(BT * 4 * C), L.x_out = h(BT * C);
        L.ln1_mean = f(BT), L.ln1_rstd = f(BT), L.att_lse = f(BT * c.n_head), L.ln2_mean = f(BT), L.ln2_rstd = f(BT);
    }
    a.lnf = h(BT * C), a.logits = h(BT * c.vocab), a.proj = h(BT * C), a.dres = h(BT * C), a.dtmp = h(BT * C);
    a.dqkv = h(BT * 3 * C), a.dfch = h(BT * 4 * C);
    a.lnf_mean = f(BT), a.lnf_rstd = f(BT), a.losses = f(BT), a.lse = f(BT);
    return {o16, o32};
}

Acts16 device_acts16(GPTCuda& m) {
    Acts16 a;
    layout_acts16(a, m.acts16, m.acts, m.layout.config, m.B, m.T);
    return a;
}

}  // namespace

void gpt_cuda_alloc_bf16(GPTCuda& m) {
    std::string why;
    DILOCO_CHECK(bf16_supports(m.layout.config, &why), why);
    Acts16 a;
    const auto [n16, n32] = layout_acts16(a, nullptr, nullptr, m.layout.config, m.B, m.T);
    DILOCO_CUDA_CHECK(cudaMalloc(&m.params16, m.layout.num_params * sizeof(u16)));
    DILOCO_CUDA_CHECK(cudaMalloc(&m.acts16, n16 * sizeof(u16)));
    DILOCO_CUDA_CHECK(cudaMalloc(&m.acts, n32 * sizeof(float)));
    gpt_cuda_refresh_bf16(m, 0, m.layout.num_params);
}

void gpt_cuda_refresh_bf16(GPTCuda& m, size_t begin, size_t count) {
    if (m.precision != Precision::bf16 || count == 0) return;
    DILOCO_CUDA_CHECK(bf16_copy_cuda(m.params16 + begin, m.params + begin, (long)count, m.stream));
}

const float* gpt_cuda_forward_bf16(GPTCuda& m, int B, int T, bool with_targets) {
    const GPTConfig& c = m.layout.config;
    const int C = c.d_model, NH = c.n_head, V = c.vocab, N = B * T;
    const u16* P = m.params16;
    const GPT& L0 = m.layout;
    Acts16 a = device_acts16(m);
    cudaStream_t st = m.stream;
    DILOCO_CUDA_CHECK(embedding_forward_cuda(a.x0, m.tokens, P + L0.wte, P + L0.wpe, B, T, C, st));
    // the first layernorm alone; every later one is fused with the residual add before it
    const u16* w0 = c.n_layer ? P + L0.blocks[0].ln1w : P + L0.lnfw;
    const u16* b0 = c.n_layer ? P + L0.blocks[0].ln1b : P + L0.lnfb;
    float* mean0 = c.n_layer ? a.layers[0].ln1_mean : a.lnf_mean;
    float* rstd0 = c.n_layer ? a.layers[0].ln1_rstd : a.lnf_rstd;
    DILOCO_CUDA_CHECK(residual_layernorm_forward_cuda(nullptr, c.n_layer ? a.layers[0].ln1 : a.lnf, mean0, rstd0, a.x0,
                                                      nullptr, w0, b0, N, C, st));
    const u16* x = a.x0;
    for (int l = 0; l < c.n_layer; l++) {
        const BlockParams& w = L0.blocks[l];
        LayerActs16& A = a.layers[l];
        DILOCO_CUDA_CHECK(matmul_forward_cuda(A.qkv, A.ln1, P + w.qkvw, P + w.qkvb, N, C, 3 * C, m.blas, st));
        if (m.cudnn_attention)  // att_lse then holds cuDNN's statistics, read by its backward only
            cudnn_sdpa_forward(*m.cudnn_attention, A.att, A.att_lse, A.qkv, B, T, C, NH);
        else
            DILOCO_CUDA_CHECK(attention_forward_bf16_cuda(A.att, A.att_lse, A.qkv, B, T, C, NH, st));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(a.proj, A.att, P + w.attprojw, P + w.attprojb, N, C, C, m.blas, st));
        DILOCO_CUDA_CHECK(residual_layernorm_forward_cuda(A.x_mid, A.ln2, A.ln2_mean, A.ln2_rstd, x, a.proj, P + w.ln2w,
                                                          P + w.ln2b, N, C, st));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(A.fch_gelu, A.ln2, P + w.fcw, P + w.fcb, N, C, 4 * C, m.blas, st, A.fch));
        DILOCO_CUDA_CHECK(matmul_forward_cuda(a.proj, A.fch_gelu, P + w.fcprojw, P + w.fcprojb, N, 4 * C, C, m.blas, st));
        const bool last = l + 1 == c.n_layer;
        LayerActs16* next = last ? nullptr : &a.layers[l + 1];
        DILOCO_CUDA_CHECK(residual_layernorm_forward_cuda(
            A.x_out, last ? a.lnf : next->ln1, last ? a.lnf_mean : next->ln1_mean, last ? a.lnf_rstd : next->ln1_rstd,
            A.x_mid, a.proj, P + (last ? L0.lnfw : L0.blocks[l + 1].ln1w), P + (last ? L0.lnfb : L0.blocks[l + 1].ln1b), N,
            C, st));
        x = A.x_out;
    }
    DILOCO_CUDA_CHECK(matmul_forward_cuda(a.logits, a.lnf, P + L0.wte, nullptr, N, C, V, m.blas, st));
    if (!with_targets) return nullptr;
    DILOCO_CUDA_CHECK(crossentropy_forward_cuda(a.losses, a.lse, a.logits, m.targets, N, V, st));
    return a.losses;
}

void gpt_cuda_backward_bf16(GPTCuda& m, int micro_batches) {
    const GPTConfig& c = m.layout.config;
    const int B = m.cur_B, T = m.cur_T, C = c.d_model, NH = c.n_head, V = c.vocab, N = B * T;
    const u16* P = m.params16;
    const GPT& L0 = m.layout;
    float* G = m.grads;
    Acts16 a = device_acts16(m);
    cudaStream_t st = m.stream;
    DILOCO_CUDA_CHECK(crossentropy_backward_cuda(a.logits, a.logits, a.lse, m.targets, 1.0f / (float)((long)N * micro_batches),
                                                 N, V, st));
    const u16* x_last = c.n_layer ? a.layers.back().x_out : a.x0;
    DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + L0.wte, nullptr, a.logits, a.lnf, P + L0.wte, N, C, V, m.mm_workspace,
                                           m.blas, st));
    DILOCO_CUDA_CHECK(cudaMemsetAsync(a.dres, 0, (size_t)N * C * sizeof(u16), st));
    DILOCO_CUDA_CHECK(layernorm_backward_cuda(a.dres, G + L0.lnfw, G + L0.lnfb, a.dtmp, x_last, P + L0.lnfw, a.lnf_mean,
                                              a.lnf_rstd, N, C, st));
    for (int l = c.n_layer - 1; l >= 0; l--) {
        const BlockParams& w = L0.blocks[l];
        LayerActs16& A = a.layers[l];
        const u16* x_in = l ? a.layers[l - 1].x_out : a.x0;
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dfch, G + w.fcprojw, G + w.fcprojb, a.dres, A.fch_gelu, P + w.fcprojw, N,
                                               4 * C, C, m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(gelu_backward_cuda(a.dfch, A.fch, a.dfch, (long)N * 4 * C, st));
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + w.fcw, G + w.fcb, a.dfch, A.ln2, P + w.fcw, N, C, 4 * C,
                                               m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(layernorm_backward_cuda(a.dres, G + w.ln2w, G + w.ln2b, a.dtmp, A.x_mid, P + w.ln2w, A.ln2_mean,
                                                  A.ln2_rstd, N, C, st));
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + w.attprojw, G + w.attprojb, a.dres, A.att, P + w.attprojw, N, C,
                                               C, m.mm_workspace, m.blas, st));
        if (m.cudnn_attention)
            cudnn_sdpa_backward(*m.cudnn_attention, a.dqkv, a.dtmp, A.qkv, A.att, A.att_lse, B, T, C, NH);
        else
            DILOCO_CUDA_CHECK(attention_backward_bf16_cuda(a.dqkv, a.dtmp, A.qkv, A.att, A.att_lse, B, T, C, NH,
                                                           m.att_workspace, st));
        DILOCO_CUDA_CHECK(matmul_backward_cuda(a.dtmp, G + w.qkvw, G + w.qkvb, a.dqkv, A.ln1, P + w.qkvw, N, C, 3 * C,
                                               m.mm_workspace, m.blas, st));
        DILOCO_CUDA_CHECK(layernorm_backward_cuda(a.dres, G + w.ln1w, G + w.ln1b, a.dtmp, x_in, P + w.ln1w, A.ln1_mean,
                                                  A.ln1_rstd, N, C, st));
    }
    DILOCO_CUDA_CHECK(embedding_backward_cuda(G + L0.wte, G + L0.wpe, a.dres, m.tokens, B, T, C, m.emb_workspace, st));
}

}  // namespace diloco
