// DiPaCo's routing with a model and its routed evaluation (optim/dipaco.h): the hidden feature of
// `diloco route --ckpt`, the feature of a prompt, and `diloco eval --routed`.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/dataset.h"
#include "data/io.h"
#include "data/routing.h"
#include "kernels/common.h"
#include "model/checkpoint.h"
#include "model/llmc.h"
#include "optim/dipaco.h"
#include "optim/train.h"

namespace diloco {

namespace {

std::string module_file(const std::string& dir, int module) {
    char name[32];
    std::snprintf(name, sizeof name, "/module_%03d.bin", module);
    return dir + name;
}

struct ModuleFile {
    int32_t h[16];
    std::vector<float> floats;
};

ModuleFile read_module(const std::string& dir, int module) {
    const std::string path = module_file(dir, module);
    const std::string bytes = read_text_file(path);
    DILOCO_CHECK(bytes.size() >= 72, path + " is too short for a module header");
    ModuleFile f;
    std::memcpy(f.h, bytes.data(), 64);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data() + 64, 8);
    DILOCO_CHECK(f.h[0] == kModuleMagic && f.h[1] == 1, path + " is not a DiPaCo module file (magic or version)");
    DILOCO_CHECK(f.h[9] == module, path + " holds module " + std::to_string(f.h[9]));
    DILOCO_CHECK(n <= (bytes.size() - 72) / 4 && bytes.size() == 72 + 4 * n,
                 path + " holds " + std::to_string(bytes.size()) + " bytes, not its header's " + std::to_string(n) + " floats");
    f.floats.resize(n);
    std::memcpy(f.floats.data(), bytes.data() + 72, 4 * n);
    return f;
}

}  // namespace

void write_module(const std::string& dir, const GPT& m, const float* params, int levels, int modules, int module) {
    const GPTConfig& c = m.config;
    const int32_t h[16] = {kModuleMagic, 1, c.vocab, c.max_seq_len, c.n_layer, c.n_head, c.d_model, levels, modules,
                           module, 0, 0, 0, 0, 0, 0};
    std::string bytes((const char*)h, 64);
    uint64_t n = 0;
    const std::vector<Slice> ranges = module_ranges(path_layout(m, levels), module, modules);
    for (const Slice& r : ranges) n += r.count;
    bytes.append((const char*)&n, 8);
    for (const Slice& r : ranges) bytes.append((const char*)(params + r.begin), 4 * r.count);
    std::filesystem::create_directories(dir);
    write_file_atomic(module_file(dir, module), bytes);
}

void modules_shape(const std::string& dir, int* levels, int* modules) {
    const ModuleFile f = read_module(dir, 0);
    *levels = f.h[7];
    *modules = f.h[8];
    (void)num_paths(*levels, *modules);
}

GPT load_path(const std::string& dir, int path) {
    int L = 0, K = 0;
    modules_shape(dir, &L, &K);
    DILOCO_CHECK(path >= 0 && path < num_paths(L, K), "no path " + std::to_string(path) + " in " + dir);
    GPT m;
    for (int mod : path_modules(path, L, K)) {
        const ModuleFile f = read_module(dir, mod);
        const GPTConfig c{f.h[2], f.h[3], f.h[4], f.h[5], f.h[6]};
        if (mod == 0) {
            gpt_build(m, c);  // validates the config
        } else {
            DILOCO_CHECK(c == m.config && f.h[7] == L && f.h[8] == K, module_file(dir, mod) + " belongs to another model");
        }
        size_t at = 0;
        for (const Slice& r : module_ranges(path_layout(m, L), mod, K)) {
            DILOCO_CHECK(at + r.count <= f.floats.size(), module_file(dir, mod) + " is too small for its module");
            std::copy(f.floats.begin() + at, f.floats.begin() + at + r.count, m.params.begin() + r.begin);
            at += r.count;
        }
        DILOCO_CHECK(at == f.floats.size(), module_file(dir, mod) + " is too large for its module");
    }
    return m;
}

std::string modules_dir_of_checkpoint(const std::string& ckpt) {
    return (std::filesystem::path(ckpt).parent_path().parent_path() / "modules").string();
}

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

int best_prompt_path(const std::string& dir, const std::vector<int>& prompt, int n, std::vector<double>* losses) {
    DILOCO_CHECK(n > 0 && (size_t)n < prompt.size(), "--best-prefix: " + std::to_string(n) + " predictions need a prompt of " +
                                                         std::to_string(n + 1) + " tokens or more");
    int levels = 0, modules = 0;
    modules_shape(dir, &levels, &modules);
    const std::vector<int> tok(prompt.begin(), prompt.begin() + n), tgt(prompt.begin() + 1, prompt.begin() + n + 1);
    int best = 0;
    double lowest = INFINITY;
    if (losses) losses->clear();
    for (int p = 0; p < num_paths(levels, modules); p++) {
        GPT path = load_path(dir, p);
        DILOCO_CHECK(n <= path.config.max_seq_len, "--best-prefix " + std::to_string(n) + " exceeds the model's max_seq_len " +
                                                      std::to_string(path.config.max_seq_len));
        gpt_allocate(path, 1, n);
        const double loss = gpt_forward(path, tok.data(), tgt.data(), 1, n);
        if (losses) losses->push_back(loss);
        if (loss < lowest) lowest = loss, best = p;
    }
    return best;
}

}  // namespace diloco
