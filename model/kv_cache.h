// Incremental decoding on the CPU: the keys and values of every position so far are kept per
// layer, so that a new token costs one pass over the weights (matrix-vector products) and an
// attention row over the cache, instead of a forward over the whole context.
//
// gpt_forward_cached(m, kv, tokens, n) runs tokens at positions kv.len .. kv.len+n-1: embeddings,
// then per layer LayerNorm, the qkv product, k and v appended to the cache, attention of each new
// row over positions 0 .. its own, the projections and the MLP; the final LayerNorm and the LM head
// only for the last row, whose logits it returns. A prompt goes through in chunks of up to
// kCacheChunk rows (matrix-matrix products); generated tokens one at a time.
//
// The cache holds at most max_seq_len positions (the rows of wpe). What to do when it is full is
// the caller's choice; `diloco generate` restarts it on the last half window (optim/generate.cpp).
#pragma once
#include <vector>

#include "model/gpt.h"

namespace diloco {

constexpr int kCacheChunk = 64;  // rows per pass when several tokens go in at once

struct KVCache {
    int len = 0;      // positions held: 0 .. len-1
    int max_len = 0;  // the model's max_seq_len
    std::vector<float> k, v;  // (n_layer, max_len, C) each; rows >= len are never read
    // scratch for one pass of up to kCacheChunk rows
    std::vector<float> x, ln, mean, rstd, qkv, att, proj, fch, fch_gelu, scores, logits;
};

// Sizes the cache and its scratch for the model's config; len = 0.
void kv_cache_init(KVCache& kv, const GPTConfig& c);

// Appends tokens[0..n) at positions kv.len .. kv.len+n-1 and returns the logits (V) of the last
// one, valid until the next call. Needs n >= 1 and kv.len + n <= max_len; reads only m.params.
const float* gpt_forward_cached(const GPT& m, KVCache& kv, const int* tokens, int n);

}  // namespace diloco
