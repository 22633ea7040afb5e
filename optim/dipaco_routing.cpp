// DiPaCo's routing with a model and its routed evaluation (optim/dipaco.h): the hidden feature of
// `diloco route --ckpt`, the feature of a prompt, and `diloco eval --routed`.
#include <algorithm>
#include <cmath>

#include "data/dataset.h"
#include "data/routing.h"
#include "kernels/common.h"
#include "model/checkpoint.h"
#include "model/llmc.h"
#include "optim/dipaco.h"
#include "optim/train.h"

namespace diloco {

namespace {

std::string router_path(const std::string& dir) { return dir + "/router.bin"; }

// The dense model a hidden feature reads, allocated for one row of up to `prefix` tokens.
void allocate_router(GPT& m, int prefix) { gpt_allocate(m, 1, std::min(prefix, m.config.max_seq_len)); }

std::vector<double> hidden_feature(GPT& m, const uint16_t* tokens, size_t n) {
    const int k = (int)std::min<size_t>(n, (size_t)m.T);
    const std::vector<int> ids(tokens, tokens + k);
    return gpt_mean_hidden_state(m, ids.data(), k);
}

}  // namespace

void route_data(const RouteOptions& o) {
    if (o.ckpt.empty()) return run_route(o);
    Checkpoint ck = load_checkpoint(o.ckpt);
    const int vocab = read_dataset_info(o.data).vocab;
    DILOCO_CHECK(ck.config.vocab == vocab, "--ckpt " + o.ckpt + " was trained on a vocabulary of " +
                                               std::to_string(ck.config.vocab) + ", the data has " + std::to_string(vocab));
    GPT m;
    gpt_build(m, ck.config);
    m.params = std::move(ck.params);
    DILOCO_CHECK(o.prefix > 0, "--prefix must be positive, got " + std::to_string(o.prefix));
    allocate_router(m, o.prefix);
    run_route(o, [&](const uint16_t* t, size_t n) { return hidden_feature(m, t, n); }, m.config.d_model);
    write_llmc(router_path(o.data), m, m.params.data());
}

std::vector<double> routing_feature(const Routes& r, const std::string& dir, const std::vector<int>& tokens) {
    const std::vector<uint16_t> t(tokens.begin(), tokens.begin() + std::min<size_t>(tokens.size(), r.prefix));
    if (r.feature == 0) return document_feature(t.data(), t.size(), r.prefix);
    DILOCO_CHECK(!t.empty(), "an empty text has no hidden state to route by");
    LlmcModel lm = read_llmc(router_path(dir));
    DILOCO_CHECK(lm.config.d_model == r.dims, router_path(dir) + " is not the model " + routes_path(dir) + " was routed by");
    GPT m;
    gpt_build(m, lm.config);
    m.params = std::move(lm.params);
    allocate_router(m, r.prefix);
    return hidden_feature(m, t.data(), t.size());
}

namespace {

// The data's validation documents and its route file, checked against each other.
Routes routes_with_val_docs(const std::string& data, std::vector<TokenRange>& val) {
    const Routes head = read_routes(routes_path(data));
    const int vocab = read_dataset_info(data).vocab;
    val = read_documents(documents_path(data, "val"), split_token_count(data, "val", vocab));
    const std::vector<TokenRange> train = read_documents(documents_path(data, "train"),
                                                         split_token_count(data, "train", vocab));
    return read_routes_for(data, head.levels, head.modules, train.size(), val.size());
}

}  // namespace

double routed_validation_loss(const std::string& data, int T, int batch, const std::function<GPT&(int)>& model_of,
                              std::vector<double>* per_path, const std::vector<uint16_t>* paths, uint64_t skip) {
    std::vector<TokenRange> val;
    const Routes r = routes_with_val_docs(data, val);
    DILOCO_CHECK(!paths || paths->size() == val.size(), "one path per validation document is needed");
    const int P = num_paths(r.levels, r.modules), vocab = read_dataset_info(data).vocab;
    double sum = 0.0;
    long rows_all = 0;
    if (per_path) per_path->assign(P, NAN);
    for (int p = 0; p < P; p++) {
        std::vector<TokenRange> spans;
        for (TokenRange s : routed_spans(paths ? *paths : r.val, val, p))
            if (s.end - s.begin > skip) spans.push_back({s.begin + skip, s.end});
        uint64_t tokens = 0;
        for (const TokenRange& s : spans) tokens += s.end - s.begin;
        const long rows = tokens > (uint64_t)T ? (long)((tokens - 1) / T) : 0;
        if (rows == 0) continue;
        TokenStream stream(data, "val", vocab, T, false, 0);
        stream.restrict_to(spans);
        GPT& m = model_of(p);
        const double loss = evaluate_stream(
            [&](const int* tok, const int* tgt, int n, int t) { return gpt_forward(m, tok, tgt, n, t); }, stream, T,
            rows, batch);
        if (per_path) (*per_path)[p] = loss;
        sum += loss * rows;
        rows_all += rows;
    }
    DILOCO_CHECK(rows_all > 0, "the validation documents of " + data + " hold too few tokens for one row of " +
                                   std::to_string(T + 1));
    return sum / rows_all;
}

std::vector<uint16_t> best_prefix_paths(const std::string& data, int n, const std::function<GPT&(int)>& model_of) {
    DILOCO_CHECK(n > 0, "--best-prefix must be positive, got " + std::to_string(n));
    std::vector<TokenRange> val;
    const Routes r = routes_with_val_docs(data, val);
    const int P = num_paths(r.levels, r.modules), vocab = read_dataset_info(data).vocab;
    std::vector<uint16_t> out = r.val;
    std::vector<int> tok(n), tgt(n);
    std::vector<uint16_t> all;
    for (const std::string& path : list_shards(data, "val")) {
        const Shard s(path, vocab);
        all.insert(all.end(), s.tokens(), s.tokens() + s.size());
    }
    for (size_t d = 0; d < val.size(); d++) {
        if (val[d].end - val[d].begin <= (uint64_t)n) continue;
        for (int t = 0; t < n; t++) tok[t] = all[val[d].begin + t], tgt[t] = all[val[d].begin + t + 1];
        double best = INFINITY;
        for (int p = 0; p < P; p++) {
            const double loss = gpt_forward(model_of(p), tok.data(), tgt.data(), 1, n);
            if (loss < best) best = loss, out[d] = (uint16_t)p;  // ties: the lower path
        }
    }
    return out;
}

}  // namespace diloco
