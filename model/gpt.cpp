#include "model/gpt.h"
#include "model/gpt_acts.h"

#include <cmath>
#include <sstream>
#include <tuple>

#include "kernels/attention.h"
#include "kernels/common.h"
#include "kernels/crossentropy.h"
#include "kernels/embedding.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/residual.h"
#include "kernels/rng.h"

namespace diloco {

std::string GPTConfig::describe() const {
    std::ostringstream s;
    s << "vocab=" << vocab << " max_seq_len=" << max_seq_len << " n_layer=" << n_layer
      << " n_head=" << n_head << " d_model=" << d_model;
    return s.str();
}

void GPTConfig::validate() const {
    auto positive = [](int v, const char* name) {
        DILOCO_CHECK(v > 0, std::string(name) + " must be positive, got " + std::to_string(v));
    };
    positive(vocab, "vocab");
    positive(max_seq_len, "max_seq_len");
    positive(n_layer, "n_layer");
    positive(n_head, "n_head");
    positive(d_model, "d_model");
    DILOCO_CHECK(d_model % n_head == 0, "n_head (" + std::to_string(n_head) +
                                            ") must divide d_model (" + std::to_string(d_model) + ")");
    DILOCO_CHECK(d_model / n_head <= kAttnMaxHead,
                 "head size d_model/n_head = " + std::to_string(d_model / n_head) +
                     " exceeds the supported maximum " + std::to_string(kAttnMaxHead));
    DILOCO_CHECK(vocab <= 1 << 20, "vocab " + std::to_string(vocab) + " is implausibly large");
    // bounds far above any model this trainer can hold, so that the shapes (4 * d_model) fit an
    // int and a file's header cannot ask for a table of billions of tensors (tests/fuzz/)
    DILOCO_CHECK(d_model <= kMaxDModel, "d_model " + std::to_string(d_model) + " is implausibly large");
    DILOCO_CHECK(n_layer <= kMaxLayers, "n_layer " + std::to_string(n_layer) + " is implausibly large");
    DILOCO_CHECK(max_seq_len <= kMaxSeqLen, "max_seq_len " + std::to_string(max_seq_len) + " is implausibly large");
}

uint64_t gpt_param_count(const GPTConfig& c) {
    c.validate();
    const uint64_t V = c.vocab, T = c.max_seq_len, L = c.n_layer, C = c.d_model;
    return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
}

struct Preset {
    const char* name;
    int n_layer, n_head, d_model, max_seq_len;
};
static const Preset kPresets[] = {
    {"tiny", 2, 2, 64, 128},       {"mini", 4, 4, 128, 256},      {"small", 6, 6, 192, 256},
    {"base", 8, 8, 256, 512},      {"gpt2-small", 12, 12, 768, 1024},
    {"gpt2-medium", 24, 16, 1024, 1024},
};

GPTConfig gpt_preset(const std::string& name, int vocab) {
    for (const auto& p : kPresets)
        if (name == p.name) return GPTConfig{vocab, p.max_seq_len, p.n_layer, p.n_head, p.d_model};
    std::string known;
    for (const auto& n : gpt_preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("unknown model preset '" + name + "' (known: " + known + ")");
}

std::vector<std::string> gpt_preset_names() {
    std::vector<std::string> out;
    for (const auto& p : kPresets) out.push_back(p.name);
    return out;
}

size_t ParamTensor::numel() const {
    size_t n = 1;
    for (int d : shape) n *= (size_t)d;
    return n;
}

void gpt_build(GPT& m, const GPTConfig& c) {
    gpt_layout(m, c);
    m.params.assign(m.num_params, 0.0f);
    m.grads.assign(m.num_params, 0.0f);
}

void gpt_layout(GPT& m, const GPTConfig& c) {
    c.validate();
    m.config = c;
    m.tensors.clear();
    m.blocks.assign(c.n_layer, BlockParams{});
    size_t off = 0;
    auto add = [&](const std::string& name, std::vector<int> shape, int block) {
        ParamTensor t{name, off, std::move(shape), block};
        off += t.numel();
        m.tensors.push_back(t);
        return t.offset;
    };
    const int C = c.d_model;
    m.wte = add("wte", {c.vocab, C}, -1);
    m.wpe = add("wpe", {c.max_seq_len, C}, -1);
    for (int l = 0; l < c.n_layer; l++) {
        const std::string p = "h." + std::to_string(l) + ".";
        BlockParams& b = m.blocks[l];
        b.ln1w = add(p + "ln1.w", {C}, l);
        b.ln1b = add(p + "ln1.b", {C}, l);
        b.qkvw = add(p + "attn.qkv.w", {3 * C, C}, l);
        b.qkvb = add(p + "attn.qkv.b", {3 * C}, l);
        b.attprojw = add(p + "attn.proj.w", {C, C}, l);
        b.attprojb = add(p + "attn.proj.b", {C}, l);
        b.ln2w = add(p + "ln2.w", {C}, l);
        b.ln2b = add(p + "ln2.b", {C}, l);
        b.fcw = add(p + "mlp.fc.w", {4 * C, C}, l);
        b.fcb = add(p + "mlp.fc.b", {4 * C}, l);
        b.fcprojw = add(p + "mlp.proj.w", {C, 4 * C}, l);
        b.fcprojb = add(p + "mlp.proj.b", {C}, l);
    }
    m.lnfw = add("lnf.w", {C}, -1);
    m.lnfb = add("lnf.b", {C}, -1);
    m.num_params = off;
}

void gpt_init(GPT& m, uint64_t seed) {
    Rng rng(seed);
    const float resid_std = 0.02f / std::sqrt(2.0f * m.config.n_layer);
    for (const auto& t : m.tensors) {
        float* p = m.params.data() + t.offset;
        const size_t n = t.numel();
        const bool is_gain = t.name.ends_with("ln1.w") || t.name.ends_with("ln2.w") || t.name == "lnf.w";
        if (is_gain) {
            std::fill_n(p, n, 1.0f);
        } else if (t.shape.size() == 1) {
            std::fill_n(p, n, 0.0f);
        } else {
            const bool residual_out = t.name.ends_with("attn.proj.w") || t.name.ends_with("mlp.proj.w");
            const float std = residual_out ? resid_std : 0.02f;
            for (size_t i = 0; i < n; i++) p[i] = (float)(rng.normal() * std);
        }
    }
}

namespace {
Acts acts_of(GPT& m) {
    Acts a;
    layout_acts(a, m.acts.data(), m.config, m.B, m.T);
    return a;
}
}  // namespace

void gpt_allocate(GPT& m, int B, int T) {
    DILOCO_CHECK(B > 0 && T > 0, "batch and sequence length must be positive");
    DILOCO_CHECK(T <= m.config.max_seq_len,
                 "seq_len " + std::to_string(T) + " exceeds the model's max_seq_len " +
                     std::to_string(m.config.max_seq_len));
    Acts a;
    size_t n = layout_acts(a, nullptr, m.config, B, T);
    m.B = B;
    m.T = T;
    m.acts.assign(n, 0.0f);
    m.tokens.assign((size_t)B * T, 0);
    m.targets.assign((size_t)B * T, 0);
}

std::vector<double> gpt_mean_hidden_state(GPT& m, const int* tokens, int n) {
    DILOCO_CHECK(n > 0, "a hidden state needs at least one token");
    gpt_forward(m, tokens, nullptr, 1, n);
    const int C = m.config.d_model;
    const float* h = acts_of(m).lnf;  // the pass's rows, packed densely
    std::vector<double> mean(C, 0.0);
    for (int t = 0; t < n; t++)
        for (int c = 0; c < C; c++) mean[c] += h[(size_t)t * C + c];
    for (double& v : mean) v /= n;
    return mean;
}

float gpt_forward(GPT& m, const int* tokens, const int* targets, int B, int T) {
    DILOCO_CHECK(B <= m.B && T <= m.T, "forward called with more rows than were allocated");
    const GPTConfig& c = m.config;
    const int C = c.d_model, NH = c.n_head, V = c.vocab, N = B * T;
    const float* P = m.params.data();
    Acts a = acts_of(m);
    std::copy(tokens, tokens + N, m.tokens.begin());
    m.have_targets = targets != nullptr;
    if (targets) std::copy(targets, targets + N, m.targets.begin());
    m.cur_B = B;
    m.cur_T = T;

    embedding_forward_cpu(a.x0, m.tokens.data(), P + m.wte, P + m.wpe, B, T, C);
    const float* x = a.x0;
    for (int l = 0; l < c.n_layer; l++) {
        const BlockParams& w = m.blocks[l];
        LayerActs& L = a.layers[l];
        layernorm_forward_cpu(L.ln1, L.ln1_mean, L.ln1_rstd, x, P + w.ln1w, P + w.ln1b, N, C);
        matmul_forward_cpu(L.qkv, L.ln1, P + w.qkvw, P + w.qkvb, N, C, 3 * C);
        attention_forward_cpu(L.att, L.att_lse, L.qkv, B, T, C, NH);
        matmul_forward_cpu(a.proj, L.att, P + w.attprojw, P + w.attprojb, N, C, C);
        residual_forward_cpu(L.x_mid, x, a.proj, (long)N * C);
        layernorm_forward_cpu(L.ln2, L.ln2_mean, L.ln2_rstd, L.x_mid, P + w.ln2w, P + w.ln2b, N, C);
        matmul_forward_cpu(L.fch, L.ln2, P + w.fcw, P + w.fcb, N, C, 4 * C);
        gelu_forward_cpu(L.fch_gelu, L.fch, (long)N * 4 * C);
        matmul_forward_cpu(a.proj, L.fch_gelu, P + w.fcprojw, P + w.fcprojb, N, 4 * C, C);
        residual_forward_cpu(L.x_out, L.x_mid, a.proj, (long)N * C);
        x = L.x_out;
    }
    layernorm_forward_cpu(a.lnf, a.lnf_mean, a.lnf_rstd, x, P + m.lnfw, P + m.lnfb, N, C);
    matmul_forward_cpu(a.logits, a.lnf, P + m.wte, nullptr, N, C, V);
    if (!targets) return NAN;
    crossentropy_forward_cpu(a.losses, a.lse, a.logits, m.targets.data(), N, V);
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += a.losses[i];
    return (float)(sum / N);
}

const float* gpt_logits(const GPT& m) {
    Acts a;
    layout_acts(a, const_cast<float*>(m.acts.data()), m.config, m.B, m.T);
    return a.logits;
}

void gpt_backward(GPT& m, int micro_batches) {
    DILOCO_CHECK(m.have_targets, "backward needs a forward pass with targets");
    DILOCO_CHECK(micro_batches >= 1, "backward: micro_batches must be >= 1");
    const GPTConfig& c = m.config;
    const int B = m.cur_B, T = m.cur_T, C = c.d_model, NH = c.n_head, V = c.vocab, N = B * T;
    const float* P = m.params.data();
    float* G = m.grads.data();
    Acts a = acts_of(m);

    // dlogits overwrite the logits in place: the probabilities are never stored
    crossentropy_backward_cpu(a.logits, a.logits, a.lse, m.targets.data(), 1.0f / (float)((long)N * micro_batches), N, V);
    const float* x_last = c.n_layer ? a.layers.back().x_out : a.x0;
    matmul_backward_cpu(a.dtmp, G + m.wte, nullptr, a.logits, a.lnf, P + m.wte, N, C, V);
    std::fill_n(a.dres, (size_t)N * C, 0.0f);
    layernorm_backward_cpu(a.dres, G + m.lnfw, G + m.lnfb, a.dtmp, x_last, P + m.lnfw, a.lnf_mean,
                           a.lnf_rstd, N, C);
    // a.dres now holds dL/dx for the residual stream; both branches of each residual add read it
    for (int l = c.n_layer - 1; l >= 0; l--) {
        const BlockParams& w = m.blocks[l];
        LayerActs& L = a.layers[l];
        const float* x_in = l ? a.layers[l - 1].x_out : a.x0;
        // MLP branch: x_out = x_mid + proj(gelu(fc(ln2(x_mid))))
        matmul_backward_cpu(a.dfch, G + w.fcprojw, G + w.fcprojb, a.dres, L.fch_gelu, P + w.fcprojw,
                            N, 4 * C, C);
        gelu_backward_cpu(a.dfch, L.fch, a.dfch, (long)N * 4 * C);
        matmul_backward_cpu(a.dtmp, G + w.fcw, G + w.fcb, a.dfch, L.ln2, P + w.fcw, N, C, 4 * C);
        layernorm_backward_cpu(a.dres, G + w.ln2w, G + w.ln2b, a.dtmp, L.x_mid, P + w.ln2w,
                               L.ln2_mean, L.ln2_rstd, N, C);
        // attention branch: x_mid = x_in + proj(attn(qkv(ln1(x_in))))
        matmul_backward_cpu(a.dtmp, G + w.attprojw, G + w.attprojb, a.dres, L.att, P + w.attprojw,
                            N, C, C);
        attention_backward_cpu(a.dqkv, a.dtmp, L.qkv, L.att, L.att_lse, B, T, C, NH);
        matmul_backward_cpu(a.dtmp, G + w.qkvw, G + w.qkvb, a.dqkv, L.ln1, P + w.qkvw, N, C, 3 * C);
        layernorm_backward_cpu(a.dres, G + w.ln1w, G + w.ln1b, a.dtmp, x_in, P + w.ln1w,
                               L.ln1_mean, L.ln1_rstd, N, C);
    }
    embedding_backward_cpu(G + m.wte, G + m.wpe, a.dres, m.tokens.data(), B, T, C);
    m.have_targets = false;  // the logits were overwritten
}

void gpt_zero_grad(GPT& m) { std::fill(m.grads.begin(), m.grads.end(), 0.0f); }

std::vector<AdamWSegment> gpt_adamw_segments(const GPT& m) {
    std::vector<AdamWSegment> segs;
    for (const auto& t : m.tensors) {
        bool decay = t.shape.size() >= 2;
        if (!segs.empty() && segs.back().decay == decay &&
            segs.back().offset + segs.back().count == t.offset)
            segs.back().count += t.numel();  // merge neighbours with the same rule
        else
            segs.push_back({t.offset, t.numel(), decay});
    }
    return segs;
}

size_t gpt_non_embedding_params(const GPT& m) {
    const GPTConfig& c = m.config;
    return m.num_params - (size_t)c.vocab * c.d_model - (size_t)c.max_seq_len * c.d_model;
}

double gpt_flops_per_token(const GPTConfig& c, int T) {
    size_t C = c.d_model, L = c.n_layer;
    size_t n = (size_t)c.vocab * C + (size_t)c.max_seq_len * C + 2 * C +
               L * (12 * C * C + 13 * C);
    return 6.0 * (double)n + 6.0 * (double)L * T * C;
}

}  // namespace diloco

namespace diloco {

std::string first_non_finite_tensor(const GPT& m, const float* flat) {
    for (const auto& t : m.tensors) {
        const float* p = flat + t.offset;
        const size_t n = t.numel();
        for (size_t i = 0; i < n; i++)
            if (!std::isfinite(p[i])) return t.name + " (" + std::to_string(p[i]) + " at element " + std::to_string(i) + ")";
    }
    return "";
}

// In the order the forward pass writes them, over the rows of the last pass.
std::string first_non_finite_activation(const GPT& m) {
    if (m.acts.empty()) return "";
    Acts a;
    layout_acts(a, const_cast<float*>(m.acts.data()), m.config, m.B, m.T);
    const size_t BT = (size_t)m.cur_B * m.cur_T, C = m.config.d_model;
    std::vector<std::pair<std::string, std::pair<const float*, size_t>>> order = {{"x0 (embeddings)", {a.x0, BT * C}}};
    for (size_t l = 0; l < a.layers.size(); l++) {
        const LayerActs& L = a.layers[l];
        const std::string p = "h." + std::to_string(l) + ".";
        for (const auto& [name, buf, width] : std::vector<std::tuple<const char*, const float*, size_t>>{
                 {"ln1", L.ln1, C}, {"attn.qkv", L.qkv, 3 * C}, {"attn", L.att, C}, {"x_mid", L.x_mid, C},
                 {"ln2", L.ln2, C}, {"mlp.fc", L.fch, 4 * C}, {"mlp.gelu", L.fch_gelu, 4 * C}, {"x_out", L.x_out, C}})
            order.push_back({p + name, {buf, BT * width}});
    }
    order.push_back({"lnf", {a.lnf, BT * C}});
    order.push_back({"logits", {a.logits, BT * (size_t)m.config.vocab}});
    for (const auto& [name, span] : order)
        for (size_t i = 0; i < span.second; i++)
            if (!std::isfinite(span.first[i]))
                return "activation " + name + " (" + std::to_string(span.first[i]) + " at element " + std::to_string(i) + ")";
    return "";
}

Precision parse_precision(const std::string& name) {
    if (name == "fp32") return Precision::fp32;
    if (name == "bf16") return Precision::bf16;
    throw Error("unknown precision '" + name + "' (known: fp32, bf16)");
}

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

bool bf16_supports(const GPTConfig& c, std::string* why) {
    const int hs = c.n_head > 0 ? c.d_model / c.n_head : 0;
    if (hs == 64 || hs == 128) return true;
    if (why) *why = "--precision bf16 needs a head size (d_model / n_head) of 64 or 128 (attention variant 2); this model's is " +
                    std::to_string(hs);
    return false;
}

}  // namespace diloco
