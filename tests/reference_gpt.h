// The float64 forward of a whole GPT, built only from tests/reference.h (shared by the model's
// gradient checks and DiPaCo's best-prefix routing test).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/gpt.h"
#include "tests/reference.h"

namespace diloco::test {

// Float64 forward of the whole GPT from the flat parameter buffer (as doubles), built only from
// tests/reference.h. Returns the mean cross-entropy.
inline double reference_loss(const GPT& m, const std::vector<double>& P, const std::vector<int>& tok,
                      const std::vector<int>& tgt, int B, int T) {
    const GPTConfig& c = m.config;
    const int C = c.d_model, N = B * T, V = c.vocab;
    auto slice = [&](size_t off, size_t n) { return ref::Vec(P.begin() + off, P.begin() + off + n); };
    ref::Vec x, ln, mean, rstd, qkv, att, proj, fc, h;
    ref::embedding_forward(x, tok.data(), slice(m.wte, (size_t)V * C), slice(m.wpe, (size_t)c.max_seq_len * C), B, T, C);
    for (int l = 0; l < c.n_layer; l++) {
        const BlockParams& w = m.blocks[l];
        ref::layernorm_forward(ln, mean, rstd, x, slice(w.ln1w, C), slice(w.ln1b, C), N, C);
        ref::Vec bq = slice(w.qkvb, 3 * C), bp = slice(w.attprojb, C), bf = slice(w.fcb, 4 * C), bo = slice(w.fcprojb, C);
        ref::matmul_forward(qkv, ln, slice(w.qkvw, (size_t)3 * C * C), &bq, N, C, 3 * C);
        ref::Vec lse;
        ref::attention_forward(att, lse, qkv, B, T, C, c.n_head);
        ref::matmul_forward(proj, att, slice(w.attprojw, (size_t)C * C), &bp, N, C, C);
        for (size_t i = 0; i < x.size(); i++) x[i] += proj[i];
        ref::layernorm_forward(ln, mean, rstd, x, slice(w.ln2w, C), slice(w.ln2b, C), N, C);
        ref::matmul_forward(fc, ln, slice(w.fcw, (size_t)4 * C * C), &bf, N, C, 4 * C);
        for (auto& v : fc) v = ref::gelu(v);
        ref::matmul_forward(proj, fc, slice(w.fcprojw, (size_t)4 * C * C), &bo, N, 4 * C, C);
        for (size_t i = 0; i < x.size(); i++) x[i] += proj[i];
    }
    ref::layernorm_forward(ln, mean, rstd, x, slice(m.lnfw, C), slice(m.lnfb, C), N, C);
    ref::Vec logits;
    ref::matmul_forward(logits, ln, slice(m.wte, (size_t)V * C), nullptr, N, C, V);
    double loss = 0;
    for (int n = 0; n < N; n++) {
        double mx = -1e300, z = 0;
        for (int v = 0; v < V; v++) mx = std::max(mx, logits[(size_t)n * V + v]);
        for (int v = 0; v < V; v++) z += std::exp(logits[(size_t)n * V + v] - mx);
        loss += mx + std::log(z) - logits[(size_t)n * V + tgt[n]];
    }
    return loss / N;
}

}  // namespace diloco::test
