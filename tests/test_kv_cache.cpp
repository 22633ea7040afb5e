// Incremental decoding (model/kv_cache.h) against the full forward it replaces.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/common.h"
#include "kernels/rng.h"
#include "model/gpt.h"
#include "model/kv_cache.h"

using namespace diloco;

namespace {

// Larger weights than the GPT-2 init, so that attention is far from uniform (with std 0.02 every
// score is near 0 and a wrong key or position would hardly move the output).
void random_weights(GPT& m, uint64_t seed) {
    Rng rng(seed);
    for (auto& p : m.params) p = (float)(rng.normal() * 0.3);
}

// Everything the cache holds or uses as scratch becomes NaN: any read of a position that was never
// written (or of stale scratch) turns the logits into NaN.
void poison(KVCache& kv) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (auto* v : {&kv.k, &kv.v, &kv.x, &kv.ln, &kv.mean, &kv.rstd, &kv.qkv, &kv.att, &kv.proj, &kv.fch,
                    &kv.fch_gelu, &kv.scores, &kv.logits})
        std::fill(v->begin(), v->end(), nan);
}

// max_v |got_v - want_v| / max_v |want_v|
double rel_error(const float* got, const float* want, int V) {
    double err = 0.0, scale = 0.0;
    for (int v = 0; v < V; v++) {
        const double d = std::fabs((double)got[v] - want[v]);
        err = std::isnan(d) ? INFINITY : std::max(err, d);
        scale = std::max(scale, std::fabs((double)want[v]));
    }
    return err / scale;
}

// The logits of the last position of a full forward over tokens[0..n).
const float* full_logits(GPT& m, const int* tokens, int n) {
    gpt_forward(m, tokens, nullptr, 1, n);
    return gpt_logits(m) + (size_t)(n - 1) * m.config.vocab;
}

// Feeds a prompt through the cache in one call, then greedy tokens one at a time; when the cache
// is full it restarts on the last half window, as `diloco generate` does. After every call the
// cached logits must equal the full forward's over the tokens the cache holds.
//
// Tolerance: both sides compute the same float32 function in a different order (matrix-vector
// against matrix-matrix products, a direct softmax against the flash kernel's online softmax with
// tile rescaling and fast-math exp). Each dot product of K <= 4C terms has a rounding error of
// about sqrt(K) u |terms| (u = 6e-8), ~1e-6 relative for K = 512, and LayerNorm keeps every layer's
// input at unit scale, so after a few layers the logits differ by a few 1e-6 of their largest
// magnitude. 1e-5 leaves that margin; a wrong position, key, mask or cache row moves the logits
// by O(1) relative at these weights.
double check_against_full_forward(const GPTConfig& cfg, int prompt_len, int generated, uint64_t seed) {
    GPT m;
    gpt_build(m, cfg);
    random_weights(m, seed);
    gpt_allocate(m, 1, cfg.max_seq_len);
    KVCache kv;
    kv_cache_init(kv, cfg);
    poison(kv);
    Rng rng(seed + 1);
    std::vector<int> ctx(prompt_len);
    for (auto& t : ctx) t = (int)rng.below(cfg.vocab);
    const int window = std::max(1, cfg.max_seq_len / 2);
    int restarts = 0;
    double worst = 0.0;
    const float* logits = gpt_forward_cached(m, kv, ctx.data(), prompt_len);
    for (int step = 0;; step++) {
        const int held = kv.len, first = (int)ctx.size() - held;
        const double err = rel_error(logits, full_logits(m, ctx.data() + first, held), cfg.vocab);
        EXPECT_LE(err, 1e-5) << cfg.describe() << ": step " << step << ", " << held << " positions cached";
        worst = std::max(worst, err);
        if (step == generated) break;
        const int next = (int)(std::max_element(logits, logits + cfg.vocab) - logits);
        ctx.push_back(next);
        if (kv.len == cfg.max_seq_len) {
            poison(kv);
            kv.len = 0;
            restarts++;
            logits = gpt_forward_cached(m, kv, ctx.data() + ctx.size() - window, window);
        } else {
            logits = gpt_forward_cached(m, kv, &next, 1);
        }
    }
    if (prompt_len + generated > cfg.max_seq_len) EXPECT_GT(restarts, 0);
    return worst;
}

}  // namespace

TEST(KVCache, IncrementalLogitsEqualTheFullForwardAtEveryStep) {
    // awkward: d_model 45 over 5 heads (head size 9), max_seq_len 29 (no multiple of the 16/32
    // attention tiles), 34 steps so that the cache fills and restarts twice
    const double a = check_against_full_forward(GPTConfig{97, 29, 3, 5, 45}, 5, 34, 11);
    // the demo's width and heads, a 70-token prompt (two chunks of the prefill) and 25 new tokens
    const double b = check_against_full_forward(GPTConfig{256, 100, 2, 4, 128}, 70, 25, 12);
    std::printf("worst relative error of the logits: %.2e (awkward shape), %.2e (demo width)\n", a, b);
}

TEST(KVCache, RefusesWhatDoesNotFit) {
    const GPTConfig cfg{16, 8, 1, 2, 8};
    GPT m;
    gpt_build(m, cfg);
    KVCache kv;
    kv_cache_init(kv, cfg);
    std::vector<int> tok(9, 3);
    EXPECT_THROW(gpt_forward_cached(m, kv, tok.data(), 9), Error);  // beyond max_seq_len
    tok[0] = 16;
    EXPECT_THROW(gpt_forward_cached(m, kv, tok.data(), 1), Error);  // outside the vocabulary
    KVCache other;
    kv_cache_init(other, GPTConfig{16, 8, 2, 2, 8});
    EXPECT_THROW(gpt_forward_cached(m, other, tok.data() + 1, 1), Error);  // sized for another model
}
