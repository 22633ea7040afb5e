#include "model/kv_cache.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/common.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/residual.h"

namespace diloco {

void kv_cache_init(KVCache& kv, const GPTConfig& c) {
    c.validate();
    const size_t C = c.d_model, R = kCacheChunk;
    kv.len = 0;
    kv.max_len = c.max_seq_len;
    kv.k.assign((size_t)c.n_layer * c.max_seq_len * C, 0.0f);
    kv.v.assign(kv.k.size(), 0.0f);
    kv.x.assign(R * C, 0.0f);
    kv.ln.assign(R * C, 0.0f);
    kv.mean.assign(R, 0.0f);
    kv.rstd.assign(R, 0.0f);
    kv.qkv.assign(R * 3 * C, 0.0f);
    kv.att.assign(R * C, 0.0f);
    kv.proj.assign(R * C, 0.0f);
    kv.fch.assign(R * 4 * C, 0.0f);
    kv.fch_gelu.assign(R * 4 * C, 0.0f);
    kv.scores.assign(R * c.n_head * (size_t)c.max_seq_len, 0.0f);
    kv.logits.assign(c.vocab, 0.0f);
}

namespace {

// out (OC) = w (OC, C) @ x + bias, for one row. matmul_forward_cpu splits its rows over the
// threads, which leaves all but one idle for a single row; this splits the outputs instead
// (each output is still one dot product, in one thread, in a fixed order).
void matvec(float* out, const float* x, const float* w, const float* bias, int C, int OC) {
    static const bool single = [] {  // one thread pool, OpenMP's (see kernels/matmul_cpu.cpp)
        openblas_set_num_threads(1);
        return true;
    }();
    (void)single;
#pragma omp parallel if ((long)OC * C >= (1L << 16))
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int per = (OC + nt - 1) / nt;
        const int o0 = std::min(OC, id * per), o1 = std::min(OC, o0 + per);
        if (o1 > o0) {
            // y is set first and beta is 1: a BLAS may scale an unset y by a zero beta (NaN * 0)
            if (bias)
                std::copy(bias + o0, bias + o1, out + o0);
            else
                std::fill(out + o0, out + o1, 0.0f);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, o1 - o0, C, 1.0f, w + (long)o0 * C, C, x, 1, 1.0f, out + o0, 1);
        }
    }
}

void linear(float* out, const float* in, const float* w, const float* bias, int n, int C, int OC) {
    if (n == 1)
        matvec(out, in, w, bias, C, OC);
    else
        matmul_forward_cpu(out, in, w, bias, n, C, OC);
}

// Rows i < n of kv.qkv (positions t0 + i) attend over the cached positions 0 .. t0 + i of one
// layer's keys and values; the output goes to kv.att. The softmax subtracts the row's maximum
// score as the flash kernel's running maximum ends up doing.
void attend_cached(KVCache& kv, const float* K, const float* V, int t0, int n, int C, int NH) {
    const int hs = C / NH, stride = kv.max_len;
    const float scale = 1.0f / std::sqrt((float)hs);
#pragma omp parallel for collapse(2) schedule(static) if ((long)n * NH * (t0 + n) * hs >= (1L << 15))
    for (int i = 0; i < n; i++)
        for (int h = 0; h < NH; h++) {
            const float* q = kv.qkv.data() + (size_t)i * 3 * C + h * hs;
            float* s = kv.scores.data() + ((size_t)i * NH + h) * stride;
            const int len = t0 + i + 1;
            float mx = -1e30f;
            for (int j = 0; j < len; j++) {
                const float* k = K + (size_t)j * C + h * hs;
                float dot = 0.0f;
                for (int d = 0; d < hs; d++) dot += q[d] * k[d];
                s[j] = dot * scale;
                mx = std::max(mx, s[j]);
            }
            float sum = 0.0f;
            for (int j = 0; j < len; j++) sum += s[j] = std::exp(s[j] - mx);
            float* o = kv.att.data() + (size_t)i * C + h * hs;
            std::fill(o, o + hs, 0.0f);
            for (int j = 0; j < len; j++) {
                const float* v = V + (size_t)j * C + h * hs;
                for (int d = 0; d < hs; d++) o[d] += s[j] * v[d];
            }
            const float inv = 1.0f / sum;
            for (int d = 0; d < hs; d++) o[d] *= inv;
        }
}

// One pass of n <= kCacheChunk tokens at positions kv.len .. kv.len + n - 1; with `last`, the
// logits of the last row go to kv.logits.
void forward_chunk(const GPT& m, KVCache& kv, const int* tokens, int n, bool last) {
    const GPTConfig& c = m.config;
    const int C = c.d_model, V = c.vocab, t0 = kv.len;
    const float* P = m.params.data();
    for (int i = 0; i < n; i++) {
        DILOCO_CHECK(tokens[i] >= 0 && tokens[i] < V, "token " + std::to_string(tokens[i]) + " is outside the vocabulary");
        const float* te = P + m.wte + (size_t)tokens[i] * C;
        const float* pe = P + m.wpe + (size_t)(t0 + i) * C;
        for (int d = 0; d < C; d++) kv.x[(size_t)i * C + d] = te[d] + pe[d];
    }
    float* x = kv.x.data();
    for (int l = 0; l < c.n_layer; l++) {
        const BlockParams& w = m.blocks[l];
        float* K = kv.k.data() + (size_t)l * kv.max_len * C;
        float* Vc = kv.v.data() + (size_t)l * kv.max_len * C;
        layernorm_forward_cpu(kv.ln.data(), kv.mean.data(), kv.rstd.data(), x, P + w.ln1w, P + w.ln1b, n, C);
        linear(kv.qkv.data(), kv.ln.data(), P + w.qkvw, P + w.qkvb, n, C, 3 * C);
        for (int i = 0; i < n; i++) {
            const float* row = kv.qkv.data() + (size_t)i * 3 * C;
            std::copy(row + C, row + 2 * C, K + (size_t)(t0 + i) * C);
            std::copy(row + 2 * C, row + 3 * C, Vc + (size_t)(t0 + i) * C);
        }
        attend_cached(kv, K, Vc, t0, n, C, c.n_head);
        linear(kv.proj.data(), kv.att.data(), P + w.attprojw, P + w.attprojb, n, C, C);
        residual_forward_cpu(x, x, kv.proj.data(), (long)n * C);
        layernorm_forward_cpu(kv.ln.data(), kv.mean.data(), kv.rstd.data(), x, P + w.ln2w, P + w.ln2b, n, C);
        linear(kv.fch.data(), kv.ln.data(), P + w.fcw, P + w.fcb, n, C, 4 * C);
        gelu_forward_cpu(kv.fch_gelu.data(), kv.fch.data(), (long)n * 4 * C);
        linear(kv.proj.data(), kv.fch_gelu.data(), P + w.fcprojw, P + w.fcprojb, n, 4 * C, C);
        residual_forward_cpu(x, x, kv.proj.data(), (long)n * C);
    }
    kv.len += n;
    if (!last) return;
    layernorm_forward_cpu(kv.ln.data(), kv.mean.data(), kv.rstd.data(), x + (size_t)(n - 1) * C, P + m.lnfw,
                          P + m.lnfb, 1, C);
    matvec(kv.logits.data(), kv.ln.data(), P + m.wte, nullptr, C, V);
}

// Starting and joining the thread team costs microseconds per parallel region, and milliseconds
// when other processes hold the cores; a pass has about ten regions per layer. For a small
// model's single token that is more than the work it splits (the demo model, 200 tokens on a
// loaded 2-core machine: 140 tokens/s with every pass on two threads, 1028 on one), so a pass of
// fewer multiply-adds than this runs on one thread.
constexpr double kParallelMacs = 4e6;

// Sets the OpenMP thread count for its lifetime, and puts the old one back after.
struct ThreadCount {
    explicit ThreadCount(int n) : saved(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~ThreadCount() { omp_set_num_threads(saved); }
    int saved;
};

}  // namespace

const float* gpt_forward_cached(const GPT& m, KVCache& kv, const int* tokens, int n) {
    DILOCO_CHECK(kv.max_len == m.config.max_seq_len && kv.logits.size() == (size_t)m.config.vocab &&
                     kv.k.size() == (size_t)m.config.n_layer * kv.max_len * m.config.d_model,
                 "the key/value cache was not sized for this model (kv_cache_init)");
    DILOCO_CHECK(n >= 1 && kv.len + n <= kv.max_len,
                 "the key/value cache holds " + std::to_string(kv.len) + " of " + std::to_string(kv.max_len) +
                     " positions; " + std::to_string(n) + " more do not fit");
    const double macs = (double)n * (m.num_params - (size_t)kv.max_len * m.config.d_model);
    ThreadCount threads(macs < kParallelMacs ? 1 : omp_get_max_threads());
    for (int i = 0; i < n; i += kCacheChunk) {
        const int rows = std::min(kCacheChunk, n - i);
        forward_chunk(m, kv, tokens + i, rows, i + rows == n);
    }
    return kv.logits.data();
}

}  // namespace diloco
