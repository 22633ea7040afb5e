// DiPaCo (Douillard et al. 2024, arXiv 2403.10616): paths over shared modules, documents routed
// to paths offline, DiLoCo per module.
//
// The modular model. The n_layer blocks are cut into L contiguous levels of n_layer/L blocks; each
// level has K modules, each a full copy of that level's blocks. The token embedding (tied to the
// LM head), the position table and the final LayerNorm form one more module, the shared one, that
// every path holds, as in the paper, where the embeddings are shared across paths. A path is one
// module per level plus the shared module: an ordinary GPT of n_layer blocks over the flat layout,
// so every kernel, the checkpoint and the llm.c / HF export work on one path unchanged. There are
// K^L paths; path p takes module digit_l(p) at level l (data/routing.h: module_of_path).
//
// Routing is offline (`diloco route`, data/routing.h): DIR/routes.idx gives every document a path.
// A path trains on its documents only: its stream is its documents back to back
// (TokenStream::restrict_to).
//
// Workers. With M >= K^L workers, path p first gets one worker, then each further worker goes to
// the path with the largest share of the training tokens per worker it already has (ties: the
// lower path); the workers of one path split its stream as DiLoCo replicas do. With M < K^L,
// worker m trains the consecutive block m of the paths (slice_of: block sizes differ by at most
// one), each in turn every round: H inner steps on that path's own stream, with its own AdamW
// moments and data cursor (the loop's replicas in turn, optim/algorithm.h). Blocks are balanced by
// count, not by data share, because every path costs the same H steps a round whatever its
// share. A path computes the same numbers whichever worker trains it: the module sums below run
// in path order (Comm::ordered_sum_in_group), so M = 1, 2 or K^L give the same run bit for bit.
//
// Per outer round t (every H inner steps), for worker m training path p(m) (each of its paths):
//   1  delta_m = theta_p(t-1) - theta_m(t)                   (DiLoCo's outer gradient, per path)
//   2  for every module i, over the workers whose path holds it (comm: one group per module):
//        delta_i = sum_m w_m delta_m[i] / sum_m w_m,  w_m = 1 / workers(p(m))
//      (--module-weights share: w_m = share(p(m)) / workers(p(m)), share(p) the path's fraction
//      of the training tokens)
//   3  theta_i(t) = Nesterov(theta_i(t-1), delta_i)           (the module's own outer momentum)
//   4  worker m starts round t+1 from its path's modules
// By default every path counts the same, whatever the number of its workers or of its documents:
// each path's outer gradient is the work of the same H inner steps, and with data weights a path
// holding half the corpus dominated the modules it shares, at the expense of the small paths that
// share them (docs/results.md: uniform weights gave the lower validation loss with both routings
// and both seeds). When every member weighs the same the mean is computed as DiLoCo computes it
// (sum, then times 1/n), so that L = K = 1 is DiLoCo bit for bit. Every member of a module computes
// the same update from the same sum, so the copies of a module on different workers stay equal.
// As in DiLoCo, local rank g of a worker keeps theta(t-1) and the momentum for slice g of each of
// its paths' buffers and exchanges only that slice.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "data/documents.h"
#include "data/routing.h"
#include "model/gpt.h"

namespace diloco {

// Where the modules lie in one path's flat buffer.
struct PathLayout {
    std::vector<Slice> shared;  // the embeddings and the position table, then the final LayerNorm
    std::vector<Slice> level;   // level l: its blocks, one contiguous range
};
// Throws Error when `levels` does not divide the blocks.
PathLayout path_layout(const GPT& model, int levels);

// Modules are numbered 0 (shared), then 1 + l*K + k for module k of level l.
int num_modules(int levels, int modules);
// The modules of path p, in increasing order (the shared one first).
std::vector<int> path_modules(int path, int levels, int modules);
// The ranges of module `module` (of path p's buffer; the same offsets in every path).
std::vector<Slice> module_ranges(const PathLayout& layout, int module, int modules);

// The modules of a finished run are stored once, each in RUNDIR/modules/module_III.bin
// (docs/formats.md): header 16 int32 (64 bytes): magic 20241202, version 1, vocab, max_seq_len,
// n_layer, n_head, d_model, L, K, the module's index, then 0; uint64 float count; then the floats
// of the module's ranges of a path's flat buffer, in order.
constexpr int32_t kModuleMagic = 20241202;
void write_module(const std::string& dir, const GPT& path_model, const float* params, int levels, int modules,
                  int module);
// Path p of the modules in `dir`, assembled into an ordinary GPT (parameters set, nothing
// allocated for activations). Checks every file (sizes before allocation, one model config, L
// and K) and throws Error naming the first that does not fit.
GPT load_path(const std::string& dir, int path);
// The L and K the modules in `dir` were written with (from module 0).
void modules_shape(const std::string& dir, int* levels, int* modules);

// The documents of `docs` whose route is `path`, in order: what the path trains (or is scored) on.
std::vector<TokenRange> routed_spans(const std::vector<uint16_t>& routes, const std::vector<TokenRange>& docs, int path);

// The paths of each of M workers (above), from each path's share of the training tokens: one path
// each when M >= P, else consecutive blocks. Throws Error when a path has no share.
std::vector<std::vector<int>> assign_paths(const std::vector<double>& share, int M);

// How a member of a module exchange scales its outer gradient before the sum (pre) and the sum
// after it (post), given the weights of all the module's members and its own.
struct MemberScale {
    float pre = 1.0f, post = 1.0f;
};
MemberScale member_scale(const std::vector<double>& member_weights, double mine);

// The weighted mean of the members' outer gradients (each n floats) as step 2 computes it with
// member_scale, in the members' order: what the exchange does, without the exchange.
// --verify-sync over modules: each rank's entry is 0 where it holds no copy of the module, else
// (its index within its worker + 1) << 32 | the CRC-32 of its part of the module. Ranks of the same
// index hold the same part, so their CRCs must agree; returns the first pair (a, b) of world ranks
// whose CRCs differ, or (-1, -1) when every part agrees.
std::pair<int, int> first_module_disagreement(const std::vector<uint64_t>& entries);

std::vector<float> module_mean(const std::vector<std::vector<float>>& deltas, const std::vector<double>& weights);

// RUNDIR/modules of a run whose checkpoint is RUNDIR/ckpt/FILE.
std::string modules_dir_of_checkpoint(const std::string& ckpt);

// `diloco route`: with o.ckpt, routes by the mean hidden state of that dense model (its weights are
// copied to DIR/router.bin, so that prompts can be routed later); otherwise by the histogram.
void route_data(const RouteOptions& o);
// The feature of `tokens` (its first r.prefix) as the route file `r` of data directory `dir` wants.
std::vector<double> routing_feature(const Routes& r, const std::string& dir, const std::vector<int>& tokens);

// `diloco eval --routed`: the validation documents of `data`, each scored by the model of its
// path: for every path, every row of its validation documents back to back, as a DiPaCo run
// evaluates itself; the loss is the mean over all those rows. The paths are the route file's, or
// `paths` (one per validation document) when given; `skip` leaves out each document's first
// tokens. `model_of(p)` gives path p's model, allocated for `batch` rows of T (the same model for
// all paths scores a dense model on the same rows). `per_path` receives each path's mean loss
// (NaN where it has no row).
double routed_validation_loss(const std::string& data, int T, int batch, const std::function<GPT&(int)>& model_of,
                              std::vector<double>* per_path, const std::vector<uint16_t>* paths = nullptr,
                              uint64_t skip = 0);

// Routing by the best path on a prefix (`eval --routed --best-prefix N`): the path of each
// validation document whose model gives its first n + 1 tokens (n predictions) the lowest loss;
// a document of n tokens or fewer keeps the route file's path. Models as above, allocated for at
// least one row of n.
std::vector<uint16_t> best_prefix_paths(const std::string& data, int n, const std::function<GPT&(int)>& model_of);

// The same choice for one prompt (`generate --route DIR --best-prefix`): the path, assembled from
// the modules in `dir`, whose model gives the prompt's first n + 1 tokens (n predictions) the
// lowest mean loss; ties: the lower path. `losses` receives every path's.
int best_prompt_path(const std::string& dir, const std::vector<int>& prompt, int n, std::vector<double>* losses);

}  // namespace diloco
