#include "data/routing.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "data/dataset.h"
#include "data/io.h"
#include "kernels/common.h"
#include "kernels/rng.h"

namespace diloco {

int num_paths(int levels, int modules) {
    DILOCO_CHECK(levels >= 1, "--levels must be >= 1, got " + std::to_string(levels));
    DILOCO_CHECK(modules >= 1, "--modules must be >= 1, got " + std::to_string(modules));
    long p = 1;
    for (int l = 0; l < levels; l++) {
        p *= modules;
        DILOCO_CHECK(p <= kMaxPaths, "--modules " + std::to_string(modules) + " ^ --levels " + std::to_string(levels) +
                                         " exceeds " + std::to_string(kMaxPaths) + " paths");
    }
    return (int)p;
}

int module_of_path(int path, int level, int levels, int modules) {
    for (int l = levels - 1; l > level; l--) path /= modules;
    return path % modules;
}

std::vector<double> document_feature(const uint16_t* tokens, size_t n, int prefix) {
    std::vector<double> f(kRouteFeatureDims, 0.0);
    const size_t m = std::min(n, (size_t)prefix);
    for (size_t i = 0; i < m; i++) f[tokens[i] % kRouteFeatureDims] += 1.0;
    for (double& v : f) v /= (double)std::max<size_t>(m, 1);
    return f;
}

namespace {

double dist2(const double* a, const double* b, int F) {
    double s = 0.0;
    for (int i = 0; i < F; i++) s += (a[i] - b[i]) * (a[i] - b[i]);
    return s;
}

int nearest(const double* x, const double* cents, int K, int F) {
    int best = 0;
    double bd = std::numeric_limits<double>::infinity();
    for (int k = 0; k < K; k++) {
        const double d = dist2(x, cents + (size_t)k * F, F);
        if (d < bd) bd = d, best = k;  // ties: the lower index
    }
    return best;
}

// k-means++ seeds, then Lloyd until stable; K centroids (zeros where no point exists).
std::vector<double> kmeans(const std::vector<const double*>& pts, int K, int F, uint64_t seed) {
    std::vector<double> c((size_t)K * F, 0.0);
    const size_t n = pts.size();
    if (n == 0) return c;
    Rng rng(seed);
    std::vector<double> d2(n, std::numeric_limits<double>::infinity());
    size_t pick = rng.below(n);
    for (int k = 0; k < K; k++) {
        std::copy(pts[pick], pts[pick] + F, c.begin() + (size_t)k * F);
        double total = 0.0;
        for (size_t i = 0; i < n; i++) total += d2[i] = std::min(d2[i], dist2(pts[i], pts[pick], F));
        double u = rng.uniform() * total;  // D^2 sampling; all distances zero: any point
        pick = total > 0 ? n - 1 : rng.below(n);
        if (total > 0)
            for (size_t i = 0; i < n; i++)
                if ((u -= d2[i]) < 0) {
                    pick = i;
                    break;
                }
    }
    std::vector<int> assign(n, -1);
    for (int iter = 0; iter < 100; iter++) {
        bool changed = false;
        for (size_t i = 0; i < n; i++) {
            const int a = nearest(pts[i], c.data(), K, F);
            changed |= a != assign[i];
            assign[i] = a;
        }
        if (!changed) break;
        std::vector<double> sum((size_t)K * F, 0.0);
        std::vector<size_t> count(K, 0);
        for (size_t i = 0; i < n; i++) {
            count[assign[i]]++;
            for (int f = 0; f < F; f++) sum[(size_t)assign[i] * F + f] += pts[i][f];
        }
        for (int k = 0; k < K; k++)  // an empty cluster keeps its centroid
            if (count[k])
                for (int f = 0; f < F; f++) c[(size_t)k * F + f] = sum[(size_t)k * F + f] / count[k];
    }
    return c;
}

size_t level_offset(int level, int K, int F) {  // floats before level `level` in the tree
    size_t off = 0, parents = 1;
    for (int l = 0; l < level; l++, parents *= K) off += parents * K * F;
    return off;
}

}  // namespace

int route_feature(const Routes& r, const double* feature) {
    const int K = r.modules, F = r.dims;
    std::vector<double> cents((size_t)K * F);
    int q = 0;
    for (int l = 0; l < r.levels; l++) {
        const float* c = r.centroids.data() + level_offset(l, K, F) + (size_t)q * K * F;
        std::copy(c, c + (size_t)K * F, cents.begin());
        q = q * K + nearest(feature, cents.data(), K, F);
    }
    return q;
}

Routes fit_routes(const std::vector<double>& train, const std::vector<double>& val, int levels, int modules,
                  uint64_t seed, int dims) {
    Routes r;
    r.levels = levels;
    r.modules = modules;
    r.dims = dims;
    const int K = modules, F = r.dims, P = num_paths(levels, modules);
    const size_t n = train.size() / F;
    r.centroids.assign(level_offset(levels, K, F), 0.0f);
    std::vector<int> prefix(n, 0);  // each document's clusters so far, as a base-K number
    for (int l = 0, parents = 1; l < levels; l++, parents *= K) {
        for (int q = 0; q < parents; q++) {
            std::vector<const double*> pts;
            for (size_t i = 0; i < n; i++)
                if (prefix[i] == q) pts.push_back(&train[i * F]);
            const std::vector<double> c = kmeans(pts, K, F, seed * 0x9E3779B97F4A7C15ull + (uint64_t)(l * P + q) + 1);
            float* dst = r.centroids.data() + level_offset(l, K, F) + (size_t)q * K * F;
            for (size_t j = 0; j < c.size(); j++) dst[j] = (float)c[j];
        }
        // the next level splits each cluster of this one, as the stored (float) tree routes it
        for (size_t i = 0; i < n; i++) {
            const float* c = r.centroids.data() + level_offset(l, K, F) + (size_t)prefix[i] * K * F;
            std::vector<double> cents(c, c + (size_t)K * F);
            prefix[i] = prefix[i] * K + nearest(&train[i * F], cents.data(), K, F);
        }
    }
    for (size_t i = 0; i < n; i++) r.train.push_back((uint16_t)route_feature(r, &train[i * F]));
    for (size_t i = 0; i < val.size() / F; i++) r.val.push_back((uint16_t)route_feature(r, &val[i * F]));
    return r;
}

std::string routes_path(const std::string& dir) { return dir + "/routes.idx"; }

uint64_t documents_fingerprint(const std::string& dir) {
    uint64_t h = 1469598103934665603ull;
    for (const char* split : {"train", "val"}) {
        const std::string bytes = read_text_file(documents_path(dir, split));
        for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
    }
    return h;
}

void write_routes(const std::string& path, const Routes& r) {
    const int32_t header[10] = {kRoutesMagic, kRoutesVersion, r.levels, r.modules, r.prefix, r.dims,
                                (int32_t)r.train.size(), (int32_t)r.val.size(), r.feature, 0};
    std::string bytes(sizeof header + 8, '\0');
    std::memcpy(bytes.data(), header, sizeof header);
    std::memcpy(bytes.data() + sizeof header, &r.fingerprint, 8);
    bytes.append((const char*)r.train.data(), 2 * r.train.size());
    bytes.append((const char*)r.val.data(), 2 * r.val.size());
    bytes.append((const char*)r.centroids.data(), 4 * r.centroids.size());
    write_file_atomic(path, bytes);
}

Routes parse_routes(const void* data, size_t bytes, const std::string& path) {
    DILOCO_CHECK(bytes >= 48, path + " is too short for a route file header (" + std::to_string(bytes) + " bytes)");
    int32_t h[10];
    std::memcpy(h, data, sizeof h);
    DILOCO_CHECK(h[0] == kRoutesMagic, path + " is not a route file (bad magic)");
    DILOCO_CHECK(h[1] == kRoutesVersion, path + ": unsupported route file version " + std::to_string(h[1]));
    Routes r;
    r.levels = h[2], r.modules = h[3], r.prefix = h[4], r.dims = h[5], r.feature = h[8];
    const int P = num_paths(r.levels, r.modules);  // bounds L and K before sizes are computed
    const bool dims_ok = r.feature == 0 ? r.dims == kRouteFeatureDims
                                        : r.feature == 1 && r.dims > 0 && r.dims <= kMaxRouteFeatureDims;
    DILOCO_CHECK(dims_ok && r.prefix > 0 && h[6] >= 0 && h[7] >= 0 && h[9] == 0,
                 path + ": bad header (feature kind or dimensions, prefix or document counts)");
    const size_t ncent = level_offset(r.levels, r.modules, r.dims);
    const size_t want = 48 + 2 * ((size_t)h[6] + (size_t)h[7]) + 4 * ncent;
    DILOCO_CHECK(bytes == want, path + " holds " + std::to_string(bytes) + " bytes but its header implies " +
                                    std::to_string(want));
    const char* p = (const char*)data + 40;
    std::memcpy(&r.fingerprint, p, 8);
    r.train.resize(h[6]);
    r.val.resize(h[7]);
    r.centroids.resize(ncent);
    std::memcpy(r.train.data(), p + 8, 2 * r.train.size());
    std::memcpy(r.val.data(), p + 8 + 2 * r.train.size(), 2 * r.val.size());
    std::memcpy(r.centroids.data(), p + 8 + 2 * (r.train.size() + r.val.size()), 4 * ncent);
    for (const auto* v : {&r.train, &r.val})
        for (uint16_t q : *v) DILOCO_CHECK(q < P, path + ": a document's path " + std::to_string(q) + " is not below " + std::to_string(P));
    return r;
}

Routes read_routes(const std::string& path) {
    const std::string bytes = read_text_file(path);
    return parse_routes(bytes.data(), bytes.size(), path);
}

Routes read_routes_for(const std::string& dir, int levels, int modules, size_t train_docs, size_t val_docs) {
    const std::string path = routes_path(dir);
    DILOCO_CHECK(std::ifstream(path).good(), "no route file " + path + ": run `diloco route --data " + dir +
                                                 " --levels " + std::to_string(levels) + " --modules " +
                                                 std::to_string(modules) + "` first");
    Routes r = read_routes(path);
    DILOCO_CHECK(r.levels == levels && r.modules == modules,
                 path + " routes to " + std::to_string(r.modules) + "^" + std::to_string(r.levels) +
                     " paths, not --modules " + std::to_string(modules) + " ^ --levels " + std::to_string(levels) +
                     ": run `diloco route` again");
    DILOCO_CHECK(r.train.size() == train_docs && r.val.size() == val_docs && r.fingerprint == documents_fingerprint(dir),
                 path + " does not match the data's documents (it routed another preparation): run `diloco route` again");
    return r;
}

}  // namespace diloco

namespace diloco {

namespace {

// The split's tokens, its shards back to back (the offsets the document index uses).
std::vector<uint16_t> split_tokens(const std::string& dir, const std::string& split, int vocab) {
    std::vector<uint16_t> all;
    for (const std::string& path : list_shards(dir, split)) {
        const Shard s(path, vocab);
        all.insert(all.end(), s.tokens(), s.tokens() + s.size());
    }
    return all;
}

// Features of every document of one split (n x F), checking the index against the shards.
std::vector<double> split_features(const std::string& dir, const std::string& split, int vocab, int prefix,
                                   const RouteFeature& feature, std::vector<TokenRange>& docs) {
    const std::vector<uint16_t> tokens = split_tokens(dir, split, vocab);
    const std::string index = documents_path(dir, split);
    DILOCO_CHECK(std::ifstream(index).good(), dir + " has no document index " + index +
                                                  ": prepare it again with this version of `diloco prepare`");
    docs = read_documents(index, tokens.size());
    std::vector<double> f;
    f.reserve(docs.size() * kRouteFeatureDims);  // the histogram's size; the hidden one grows it
    for (const TokenRange& d : docs) {
        const size_t n = std::min<size_t>(d.end - d.begin, prefix);
        const std::vector<double> x = feature(tokens.data() + d.begin, n);
        f.insert(f.end(), x.begin(), x.end());
    }
    return f;
}

// The inputs meta.json lists (name, first training token), in order; empty when it lists none.
std::vector<std::pair<std::string, uint64_t>> meta_inputs(const std::string& dir) {
    std::vector<std::pair<std::string, uint64_t>> out;
    std::ifstream f(dir + "/meta.json");
    if (!f) return out;
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (size_t at = text.find("{\"path\": \""); at != std::string::npos; at = text.find("{\"path\": \"", at + 1)) {
        const size_t b = at + 10, e = text.find('"', b), tb = text.find("\"train_begin\": ", at);
        if (e == std::string::npos || tb == std::string::npos) break;
        const std::string digits = text.substr(tb + 15, 20);
        out.push_back({text.substr(b, std::min<size_t>(e - b, 60)), std::strtoull(digits.c_str(), nullptr, 10)});
    }
    return out;
}

// How the paths split the training documents, per input of the corpus.
void report(const std::string& dir, const Routes& r, const std::vector<TokenRange>& docs) {
    const int P = num_paths(r.levels, r.modules);
    auto inputs = meta_inputs(dir);
    if (inputs.empty()) inputs.push_back({"all", 0});
    std::vector<std::vector<uint64_t>> n(inputs.size(), std::vector<uint64_t>(P, 0)), tok = n;
    for (size_t d = 0; d < docs.size(); d++) {
        size_t in = 0;
        while (in + 1 < inputs.size() && docs[d].begin >= inputs[in + 1].second) in++;
        n[in][r.train[d]]++;
        tok[in][r.train[d]] += docs[d].end - docs[d].begin;
    }
    for (size_t in = 0; in < inputs.size(); in++) {
        std::fprintf(stderr, "route: %s:", inputs[in].first.c_str());
        for (int p = 0; p < P; p++)
            std::fprintf(stderr, " path %d %llu docs %.0fk tok%s", p, (unsigned long long)n[in][p], tok[in][p] / 1e3,
                         p + 1 < P ? "," : "\n");
    }
}

}  // namespace

void run_route(const RouteOptions& o, const RouteFeature& hidden, int dims) {
    const int P = num_paths(o.levels, o.modules);
    DILOCO_CHECK(o.prefix > 0, "--prefix must be positive, got " + std::to_string(o.prefix));
    const DatasetInfo info = read_dataset_info(o.data);
    const RouteFeature histogram = [&](const uint16_t* t, size_t n) { return document_feature(t, n, o.prefix); };
    const RouteFeature& feature = hidden ? hidden : histogram;
    std::vector<TokenRange> train_docs, val_docs;
    const std::vector<double> train = split_features(o.data, "train", info.vocab, o.prefix, feature, train_docs);
    const std::vector<double> val = split_features(o.data, "val", info.vocab, o.prefix, feature, val_docs);
    DILOCO_CHECK(train_docs.size() < (size_t)INT32_MAX && val_docs.size() < (size_t)INT32_MAX, "too many documents");
    Routes r = fit_routes(train, val, o.levels, o.modules, o.seed, hidden ? dims : kRouteFeatureDims);
    r.feature = hidden ? 1 : 0;
    r.prefix = o.prefix;
    r.fingerprint = documents_fingerprint(o.data);
    write_routes(routes_path(o.data), r);
    report(o.data, r, train_docs);
    std::fprintf(stderr, "route: %zu training and %zu validation documents to %d paths by the %s of their first %d "
                         "tokens -> %s\n", train_docs.size(), val_docs.size(), P,
                 hidden ? "mean hidden state of the model" : "byte histogram", o.prefix, routes_path(o.data).c_str());
}

}  // namespace diloco
