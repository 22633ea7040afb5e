#include "optim/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "data/io.h"
#include "data/routing.h"
#include "data/tokenizer.h"
#include "kernels/common.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "model/kv_cache.h"
#include "optim/dipaco.h"

namespace fs = std::filesystem;

namespace diloco {

namespace {

// --tokenizer-model, else the checkpoint's own tokenizer, else bytes for a vocabulary of 256;
// null: token ids in and out (llm.c's GPT-2 models, whose tokenizer is not ours).
std::unique_ptr<Tokenizer> choose_tokenizer(const GenerateOptions& o, const Checkpoint& ck) {
    std::unique_ptr<Tokenizer> tok;
    if (!o.tokenizer_model.empty()) {
        DILOCO_CHECK(fs::is_regular_file(o.tokenizer_model),
                     "--tokenizer-model " + o.tokenizer_model + " does not exist or is not a file");
        tok = make_sp_tokenizer(read_text_file(o.tokenizer_model), "--tokenizer-model " + o.tokenizer_model);
    } else if (!ck.tokenizer.name.empty()) {
        tok = make_tokenizer(ck.tokenizer, "the tokenizer in checkpoint " + o.ckpt);
    } else if (ck.config.vocab == 256) {
        tok = make_byte_tokenizer();
    }
    if (tok)
        DILOCO_CHECK(tok->vocab() <= ck.config.vocab,
                     "the tokenizer has " + std::to_string(tok->vocab()) + " tokens, more than the model's vocabulary of " +
                         std::to_string(ck.config.vocab));
    return tok;
}

std::vector<int> prompt_tokens(const GenerateOptions& o, const Tokenizer* tok, int vocab) {
    if (!tok) return {vocab == 50257 ? 50256 : 0};  // GPT-2's <|endoftext|>; no text tokenizer here
    std::vector<int> ids = tok->encode(o.prompt);
    if (ids.empty() && tok->eos() >= 0) ids.push_back(tok->eos());  // a document starts after one
    DILOCO_CHECK(!ids.empty(), "--prompt must not be empty");
    return ids;
}

// Greedy at temperature 0, otherwise a draw from softmax(logits / temperature) over ids < V.
int sample(const float* logits, int V, float temperature, Rng& rng, std::vector<double>& prob) {
    int next = 0;
    if (temperature <= 0.0f) {
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[next]) next = v;
        return next;
    }
    double mx = logits[0], sum = 0.0;
    for (int v = 1; v < V; v++) mx = std::max(mx, (double)logits[v]);
    for (int v = 0; v < V; v++) sum += prob[v] = std::exp((logits[v] - mx) / temperature);
    double u = rng.uniform() * sum;
    for (int v = 0; v < V; v++) {
        u -= prob[v];
        if (u <= 0.0) return v;
    }
    return V - 1;
}

// The text of `out` following the prompt. Decoding the prompt and the continuation together
// keeps a character whose bytes straddle the two whole.
std::string continuation_text(const Tokenizer* tok, const std::vector<int>& prompt, const std::vector<int>& out) {
    if (!tok) {
        std::string s;
        for (int id : out) s += std::to_string(id) + " ";
        return s;
    }
    std::vector<int> all = prompt;
    all.insert(all.end(), out.begin(), out.end());
    const std::string whole = tok->decode(all), head = tok->decode(prompt);
    return whole.starts_with(head) ? whole.substr(head.size()) : tok->decode(out);
}

}  // namespace

// When the context reaches max_seq_len (the cache is full), the cache restarts on the last half
// window of tokens and continues from there: each restart costs one batched pass over half a
// window, paid once per half window of new tokens, where sliding by one token would need a pass
// over the whole window for every token (the positions of every cached key change).
// --best-prefix as predictions on the prompt: "prompt" (all of it, up to the model's window) or a
// number N >= 1.
static int best_prefix_predictions(const std::string& value, size_t prompt_tokens, int max_seq_len) {
    if (value == "prompt") {
        DILOCO_CHECK(prompt_tokens >= 2, "--best-prefix prompt needs a prompt of 2 tokens or more (one prediction); "
                                         "it has " + std::to_string(prompt_tokens));
        return (int)std::min<size_t>(prompt_tokens - 1, (size_t)max_seq_len);
    }
    const bool digits = !value.empty() && value.size() <= 9 &&
                        std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
    DILOCO_CHECK(digits && std::stoi(value) > 0,
                 "--best-prefix must be 'prompt' or a positive number of predictions, got '" + value + "'");
    const int n = std::stoi(value);
    DILOCO_CHECK((size_t)n < prompt_tokens, "--best-prefix " + value + " needs a prompt of " + std::to_string(n + 1) +
                                                " tokens or more; it has " + std::to_string(prompt_tokens));
    return n;
}

// The prompt's path, assembled from the modules of the run of `ckpt` into `params`: the router's
// (data/routing.h), or with --best-prefix the one that predicts the prompt best.
static void take_routed_path(const GenerateOptions& o, const std::vector<int>& prompt, const GPTConfig& config,
                             std::vector<float>& params) {
    const Routes r = read_routes(routes_path(o.route_data));
    const int n = o.best_prefix.empty() ? 0 : best_prefix_predictions(o.best_prefix, prompt.size(), config.max_seq_len);
    const std::string dir = modules_dir_of_checkpoint(o.ckpt);
    std::vector<double> losses;
    const std::vector<double> f = routing_feature(r, o.route_data, prompt);
    const int routed = route_feature(r, f.data());
    const int p = n > 0 ? best_prompt_path(dir, prompt, n, &losses) : routed;
    GPT path = load_path(dir, p);
    DILOCO_CHECK(path.config == config, dir + " holds another model (" + path.config.describe() + ") than " + o.ckpt);
    params = std::move(path.params);
    if (n == 0) {
        std::fprintf(stderr, "generate: the prompt routes to path %d of %d (modules of %s)\n", p,
                     num_paths(r.levels, r.modules), dir.c_str());
        return;
    }
    std::string all;
    for (double l : losses) all += (all.empty() ? "" : " ") + std::to_string(l);
    std::fprintf(stderr, "generate: path %d of %d predicts the prompt's first %d tokens best (losses by path: %s; "
                         "the router gives path %d; modules of %s)\n",
                 p, (int)losses.size(), n + 1, all.c_str(), routed, dir.c_str());
}

std::string run_generate(const GenerateOptions& o) {
    DILOCO_CHECK(o.tokens >= 0, "--tokens must be >= 0");
    DILOCO_CHECK(o.best_prefix.empty() || !o.route_data.empty(), "--best-prefix needs --route (a DiPaCo run's paths)");
    Checkpoint ck = load_checkpoint(o.ckpt);
    const std::unique_ptr<Tokenizer> tok = choose_tokenizer(o, ck);
    GPT m;
    gpt_build(m, ck.config);
    m.params = std::move(ck.params);
    const int V = tok ? tok->vocab() : ck.config.vocab, eos = tok ? tok->eos() : -1;
    const int maxT = ck.config.max_seq_len, window = std::max(1, maxT / 2);
    std::vector<int> ctx = prompt_tokens(o, tok.get(), ck.config.vocab);
    const std::vector<int> prompt = ctx;
    if (!o.route_data.empty()) take_routed_path(o, prompt, ck.config, m.params);
    KVCache kv;
    kv_cache_init(kv, ck.config);
    Rng rng(o.seed);
    std::vector<double> prob(V);
    std::vector<int> out;
    int restarts = 0;
    const auto t0 = std::chrono::steady_clock::now();
    const int n0 = std::min<int>((int)ctx.size(), maxT);
    const float* logits = o.tokens > 0 ? gpt_forward_cached(m, kv, ctx.data() + ctx.size() - n0, n0) : nullptr;
    for (int i = 0; i < o.tokens; i++) {
        const int next = sample(logits, V, o.temperature, rng, prob);
        if (next == eos) break;
        out.push_back(next);
        ctx.push_back(next);
        if (i + 1 == o.tokens) break;
        if (kv.len == maxT) {
            kv.len = 0;
            restarts++;
            logits = gpt_forward_cached(m, kv, ctx.data() + ctx.size() - window, window);
        } else {
            logits = gpt_forward_cached(m, kv, &next, 1);
        }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "generate: %zu tokens in %.2f s, %.1f tokens/s (a prompt of %zu tokens included; "
                         "key/value cache, %d restarts at max_seq_len %d)\n",
                 out.size(), secs, secs > 0 ? out.size() / secs : 0.0, prompt.size(), restarts, maxT);
    return continuation_text(tok.get(), prompt, out);
}

}  // namespace diloco
