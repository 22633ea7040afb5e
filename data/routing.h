// DiPaCo's offline routing (Douillard et al. 2024): every document of a prepared corpus goes to one
// of K^L paths, a path being one module per level (optim/dipaco.h).
//
// The feature of a document is computed from its first `prefix` tokens, one of two kinds:
//   histogram (0): the normalised histogram of those tokens, each counted in bucket (token mod
//     256): for byte-level data, the byte frequencies of the document's beginning. It needs no
//     trained model, and it separates kinds of text that differ in their characters (verse
//     numbers and prose against a dictionary's headwords and markup). F = 256.
//   hidden (1): the mean over those tokens of the final hidden state of a small dense model trained
//     first (`route --ckpt FILE`), as the paper routes by a base model's features; F = its d_model.
//     Its weights are kept beside the route file (DIR/router.bin, llm.c format), so that a prompt
//     can be routed later.
//
// The routing is a tree of k-means: level 0 splits all training documents into K clusters; level l
// splits the documents of each cluster of level l-1 into K again. A document's path is its clusters
// from level 0 down, read as the digits of a base-K number (level 0 the most significant), so the
// paths that share a level-0 module hold one coarse cluster of the data. k-means++ seeding, then
// Lloyd iterations until no assignment changes (at most 100); everything in float64 and in a fixed
// order, with one seed, so the same seed gives the same file. Validation documents, and any text
// at generation time, go down the same tree to the nearest centroid of each level.
//
// DIR/routes.idx (docs/formats.md), little-endian:
//   header: 10 int32 (40 bytes): magic 20241201, version 1, levels L, modules K, prefix, feature
//           dimensions F, training documents n_train, validation documents n_val, feature kind
//           (0 histogram, 1 hidden), 0; then uint64: the FNV-1a hash of DIR/train.docs and DIR/val.docs, which ties the file to
//           the data it routed
//   body:   n_train + n_val uint16 paths; then the tree's centroids, float32: for each level l,
//           K^l parents x K children x F
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/documents.h"

namespace diloco {

constexpr int32_t kRoutesMagic = 20241201;
constexpr int32_t kRoutesVersion = 1;
constexpr int kRouteFeatureDims = 256;
constexpr int kMaxPaths = 4096;
constexpr int kMaxRouteFeatureDims = 1 << 16;

// K^L; throws Error unless L >= 1, K >= 1 and K^L <= kMaxPaths.
int num_paths(int levels, int modules);
// The module of `path` at `level`: digit `level` of path in base K, level 0 the most significant.
int module_of_path(int path, int level, int levels, int modules);

struct Routes {
    int levels = 1, modules = 1, prefix = 256, dims = kRouteFeatureDims;
    int feature = 0;  // 0 histogram, 1 hidden
    uint64_t fingerprint = 0;
    std::vector<uint16_t> train, val;  // the path of each document
    std::vector<float> centroids;      // the tree, as in the file
};

// The feature of one document: its first `prefix` tokens (all when it holds fewer).
std::vector<double> document_feature(const uint16_t* tokens, size_t n, int prefix);

// Fits the tree on `train` (n x dims features, row-major) and routes `train` and then `val` by it.
Routes fit_routes(const std::vector<double>& train, const std::vector<double>& val, int levels, int modules,
                  uint64_t seed, int dims = kRouteFeatureDims);
// The path a feature goes to, down the tree of `r`.
int route_feature(const Routes& r, const double* feature);

// DIR/routes.idx
std::string routes_path(const std::string& dir);
// The hash of the data's document indexes that a route file records.
uint64_t documents_fingerprint(const std::string& dir);
void write_routes(const std::string& path, const Routes& r);
// Reads and checks a route file (sizes against the header before allocating, every path < K^L).
Routes read_routes(const std::string& path);
Routes parse_routes(const void* data, size_t bytes, const std::string& path);
// Reads DIR's route file and checks it against the data and against --levels and --modules: one
// line naming what differs.
Routes read_routes_for(const std::string& dir, int levels, int modules, size_t train_docs, size_t val_docs);

struct RouteOptions {
    std::string data;
    int levels = 1, modules = 2;
    int prefix = 256;
    uint64_t seed = 1337;
    std::string ckpt;  // a dense model's checkpoint: the hidden feature (optim/dipaco.h)
};

// A document's feature from its tokens (all of them; the caller passes at most `prefix`).
using RouteFeature = std::function<std::vector<double>(const uint16_t* tokens, size_t n)>;

// `diloco route`: routes every document of DIR and writes DIR/routes.idx atomically; prints to
// stderr how many documents and tokens of each input went to each path. `hidden`, when given, is
// the hidden feature of `dims` dimensions; otherwise the histogram.
void run_route(const RouteOptions& o, const RouteFeature& hidden = nullptr, int dims = kRouteFeatureDims);

}  // namespace diloco
