// The activation buffers of a forward/backward pass, carved out of one allocation, shared by the
// CPU model (model/gpt.cpp) and the CUDA model (model/gpt_cuda.cpp) so that both lay memory out
// the same way. Strides use the allocated (B, T); a pass with fewer rows packs them densely.
#pragma once
#include <cstddef>
#include <vector>

#include "model/gpt.h"

namespace diloco {

struct LayerActs {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *att_lse, *x_mid, *ln2, *ln2_mean, *ln2_rstd,
        *fch, *fch_gelu, *x_out;
};
struct Acts {
    float *x0, *lnf, *lnf_mean, *lnf_rstd, *logits, *losses, *lse, *proj, *dres, *dtmp, *dqkv, *dfch;
    std::vector<LayerActs> layers;
};

// Lays out the buffers from `base` (null to only count) and returns the total floats.
inline size_t layout_acts(Acts& a, float* base, const GPTConfig& c, int B, int T) {
    const size_t BT = (size_t)B * T, C = c.d_model;
    size_t off = 0;
    auto take = [&](size_t n) {
        float* p = base ? base + off : nullptr;
        off += n;
        return p;
    };
    a.x0 = take(BT * C);
    a.layers.resize(c.n_layer);
    for (auto& L : a.layers) {
        L.ln1 = take(BT * C);
        L.ln1_mean = take(BT);
        L.ln1_rstd = take(BT);
        L.qkv = take(BT * 3 * C);
        L.att = take(BT * C);
        L.att_lse = take(BT * c.n_head);
        L.x_mid = take(BT * C);
        L.ln2 = take(BT * C);
        L.ln2_mean = take(BT);
        L.ln2_rstd = take(BT);
        L.fch = take(BT * 4 * C);
        L.fch_gelu = take(BT * 4 * C);
        L.x_out = take(BT * C);
    }
    a.lnf = take(BT * C);
    a.lnf_mean = take(BT);
    a.lnf_rstd = take(BT);
    a.logits = take(BT * c.vocab);
    a.losses = take(BT);
    a.lse = take(BT);
    a.proj = take(BT * C);
    a.dres = take(BT * C);
    a.dtmp = take(BT * C);
    a.dqkv = take(BT * 3 * C);
    a.dfch = take(BT * 4 * C);
    return off;
}

}  // namespace diloco
