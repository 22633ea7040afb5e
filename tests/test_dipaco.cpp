// DiPaCo: the modular layout, the module average, path assignment, document boundaries, routing,
// and the restriction of a path's training stream to its documents.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include "data/dataset.h"
#include "data/documents.h"
#include "data/io.h"
#include "data/prepare.h"
#include "data/routing.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "model/gpt.h"
#include "optim/dipaco.h"
#include "optim/inner.h"
#include "optim/turns.h"
#include "tests/files.h"
#include "tests/reference.h"
#include "tests/reference_gpt.h"

using namespace diloco;
using namespace diloco::test;

namespace {

GPT layout_of(int n_layer) {
    GPT m;
    gpt_layout(m, GPTConfig{256, 16, n_layer, 2, 16});
    return m;
}

TEST(DiPaCoLayout, EveryParameterInExactlyOneModuleOfEveryPath) {
    const int n = 6, L = 3, K = 2;
    const GPT m = layout_of(n);
    const PathLayout layout = path_layout(m, L);
    for (int p = 0; p < num_paths(L, K); p++) {
        std::vector<int> cover(m.num_params, 0);
        std::set<int> levels;
        for (int mod : path_modules(p, L, K)) {
            if (mod > 0) levels.insert((mod - 1) / K);
            for (const Slice& r : module_ranges(layout, mod, K))
                for (size_t i = r.begin; i < r.begin + r.count; i++) cover[i]++;
        }
        for (size_t i = 0; i < m.num_params; i++) ASSERT_EQ(cover[i], 1) << "path " << p << " element " << i;
        EXPECT_EQ(levels.size(), (size_t)L) << "path " << p << " holds one module per level";
        // each tensor lies inside one module: block b's in level b / (n/L), the rest in the shared one
        for (const ParamTensor& t : m.tensors) {
            int holder = -1, holders = 0;
            for (int mod : path_modules(p, L, K))
                for (const Slice& r : module_ranges(layout, mod, K))
                    if (t.offset >= r.begin && t.offset + t.numel() <= r.begin + r.count) holder = mod, holders++;
            ASSERT_EQ(holders, 1) << t.name;
            if (t.block < 0)
                EXPECT_EQ(holder, 0) << t.name;
            else
                EXPECT_EQ((holder - 1) / K, t.block / (n / L)) << t.name;
        }
    }
    // every level-module belongs to K^(L-1) paths, the shared one to all
    std::vector<int> paths_of(num_modules(L, K), 0);
    for (int p = 0; p < num_paths(L, K); p++)
        for (int mod : path_modules(p, L, K)) paths_of[mod]++;
    EXPECT_EQ(paths_of[0], 8);
    for (int mod = 1; mod < num_modules(L, K); mod++) EXPECT_EQ(paths_of[mod], 4);
}

TEST(DiPaCoLayout, RefusesLevelsThatDoNotDivideTheBlocks) {
    expect_error([] { path_layout(layout_of(6), 4); }, "--levels 4 does not divide the model's 6 blocks");
    expect_error([] { num_paths(2, 0); }, "--modules must be >= 1, got 0");
    expect_error([] { num_paths(0, 2); }, "--levels must be >= 1, got 0");
}

TEST(DiPaCoModuleMean, WeightedMeanAgainstADirectComputation) {
    Rng rng(7);
    const size_t n = 257;
    std::vector<std::vector<float>> d(3, std::vector<float>(n));
    for (auto& v : d)
        for (float& x : v) x = (float)rng.normal();
    const std::vector<double> w = {0.5, 0.125, 0.25};
    const std::vector<float> got = module_mean(d, w);
    for (size_t i = 0; i < n; i++) {
        const double want = (0.5 * d[0][i] + 0.125 * d[1][i] + 0.25 * d[2][i]) / 0.875;
        EXPECT_NEAR(got[i], want, 1e-6 * (1 + std::abs(want))) << i;
    }
    // equal weights: DiLoCo's mean, the sum times 1/n, bit for bit
    const std::vector<float> eq = module_mean(d, {0.3, 0.3, 0.3});
    for (size_t i = 0; i < n; i++) EXPECT_EQ(eq[i], ((0.0f + d[0][i]) + d[1][i] + d[2][i]) * (1.0f / 3.0f)) << i;
}

// Modules stored once: a path assembled from the module files equals the path they were taken
// from, module by module, and a damaged file is refused.
TEST(DiPaCoModules, StoredOnceAndAssembledIntoPaths) {
    const int L = 2, K = 2;
    GPT a, b;  // paths 0 = (0, 0) and 3 = (1, 1): they share only the shared module
    gpt_build(a, GPTConfig{256, 16, 4, 2, 16});
    gpt_build(b, GPTConfig{256, 16, 4, 2, 16});
    gpt_init(a, 1);
    gpt_init(b, 2);
    const std::string dir = fresh_dir("modules");
    for (int mod : path_modules(0, L, K)) write_module(dir, a, a.params.data(), L, K, mod);
    for (int mod : path_modules(3, L, K))
        if (mod != 0) write_module(dir, b, b.params.data(), L, K, mod);
    const GPT p0 = load_path(dir, 0), p3 = load_path(dir, 3), p1 = load_path(dir, 1);
    EXPECT_EQ(p0.params, a.params);
    const PathLayout layout = path_layout(a, L);
    for (size_t i = 0; i < a.num_params; i++) {
        const bool shared = i < layout.level[0].begin || i >= a.lnfw;
        ASSERT_EQ(p3.params[i], shared ? a.params[i] : b.params[i]) << i;
        const bool level1 = i >= layout.level[1].begin && i < layout.level[1].begin + layout.level[1].count;
        ASSERT_EQ(p1.params[i], level1 ? b.params[i] : a.params[i]) << i;  // path 1 = (0, 1)
    }
    std::string bytes = read_text_file(dir + "/module_004.bin");
    write_bytes(dir + "/module_004.bin", bytes.substr(0, bytes.size() - 4));
    expect_error([&] { load_path(dir, 3); }, "module_004.bin holds");
    expect_error([&] { load_path(dir, 4); }, "no path 4");
}

TEST(DiPaCoAssign, WorkersFollowTheShareOfTheData) {
    using Lists = std::vector<std::vector<int>>;
    EXPECT_EQ(assign_paths({0.25, 0.5, 0.25}, 3), (Lists{{0}, {1}, {2}}));
    // extra workers: 0.5/1 > 0.25/1, then 0.5/2 ties 0.25/1 and the lower path (0) wins
    EXPECT_EQ(assign_paths({0.25, 0.5, 0.25}, 5), (Lists{{0}, {0}, {1}, {1}, {2}}));
    expect_error([] { assign_paths({0.5, 0.5, 0.0}, 3); }, "path 2 has no training documents");
    expect_error([] { assign_paths({0.5, 0.5, 0.0}, 1); }, "path 2 has no training documents");
}

// Fewer workers than paths: consecutive blocks whose sizes differ by at most one, whatever the
// shares (every path costs the same H steps a round).
TEST(DiPaCoAssign, SeveralPathsPerWorkerInConsecutiveBlocks) {
    using Lists = std::vector<std::vector<int>>;
    EXPECT_EQ(assign_paths({0.5, 0.5}, 1), (Lists{{0, 1}}));
    EXPECT_EQ(assign_paths({0.1, 0.2, 0.3, 0.4}, 2), (Lists{{0, 1}, {2, 3}}));
    EXPECT_EQ(assign_paths({0.7, 0.1, 0.1, 0.05, 0.05}, 2), (Lists{{0, 1, 2}, {3, 4}}));
    EXPECT_EQ(assign_paths({0.2, 0.2, 0.2, 0.2, 0.2}, 3), (Lists{{0, 1}, {2, 3}, {4}}));
}

// Replicas in turn keep their own weights, moments and cursor; a checkpoint's arrays bring them
// back, and arrays for another number of replicas are refused.
// --verify-sync's comparison: only ranks of the same index within their workers hold the same
// part of a module; ranks holding no copy (0) take no part
TEST(DiPaCoVerify, FirstDisagreementAmongRanksOfTheSameIndex) {
    auto entry = [](int local, uint32_t crc) { return (uint64_t)(local + 1) << 32 | crc; };
    using Pair = std::pair<int, int>;
    EXPECT_EQ(first_module_disagreement({}), Pair(-1, -1));
    // two workers of two ranks: each index agrees with itself, the indices hold different parts
    EXPECT_EQ(first_module_disagreement({entry(0, 7), entry(1, 9), entry(0, 7), entry(1, 9)}), Pair(-1, -1));
    EXPECT_EQ(first_module_disagreement({entry(0, 7), entry(1, 9), entry(0, 7), entry(1, 8)}), Pair(1, 3));
    // a worker without the module, between two that hold it and differ
    EXPECT_EQ(first_module_disagreement({entry(0, 5), 0, entry(0, 6)}), Pair(0, 2));
    EXPECT_EQ(first_module_disagreement({0, entry(0, 5), 0, entry(0, 5)}), Pair(-1, -1));
    // a CRC of zero is still a copy
    EXPECT_EQ(first_module_disagreement({entry(0, 0), entry(0, 1)}), Pair(0, 1));
}

TEST(ReplicaTurns, EachReplicaKeepsItsStateAndCheckpointsRoundTrip) {
    Comm comm(1);
    GPT model;
    gpt_build(model, GPTConfig{256, 16, 2, 2, 16});
    InnerOptimizer inner;
    inner_init(inner, model, InnerHyper{});
    const auto stamp = [&](float x, uint64_t* cursor, uint64_t c) {
        std::fill(model.params.begin(), model.params.end(), x);
        std::fill(inner.m.begin(), inner.m.end(), x + 0.25f);
        std::fill(inner.v.begin(), inner.v.end(), x + 0.5f);
        *cursor = c;
    };
    uint64_t cursor = 0;
    ReplicaTurns turns(3, model, inner, cursor, comm);
    const uint64_t big = (1ull << 40) + 12345;  // a cursor beyond 32 bits survives the float arrays
    for (int k = 0; k < 3; k++) {
        turns.activate(k, model, inner, nullptr, cursor);
        stamp((float)k, &cursor, k == 2 ? big : 100 + k);
    }
    for (int k : {1, 0, 2}) {
        turns.activate(k, model, inner, nullptr, cursor);
        EXPECT_EQ(model.params[7], (float)k);
        EXPECT_EQ(inner.m[7], k + 0.25f);
        EXPECT_EQ(inner.v[7], k + 0.5f);
        EXPECT_EQ(cursor, k == 2 ? big : 100u + k);
    }
    turns.activate(0, model, inner, nullptr, cursor);
    std::vector<std::vector<float>> saved = {{1.0f}};  // an algorithm's array first
    for (auto& a : turns.save()) saved.push_back(a);
    ASSERT_EQ(saved.size(), 9u);
    ReplicaTurns again(3, model, inner, cursor, comm);
    again.load(saved);
    EXPECT_EQ(saved, (std::vector<std::vector<float>>{{1.0f}}));
    again.activate(2, model, inner, nullptr, cursor);
    EXPECT_EQ(model.params[3], 2.0f);
    EXPECT_EQ(inner.v[3], 2.5f);
    EXPECT_EQ(cursor, big);
    ReplicaTurns four(4, model, inner, cursor, comm);
    std::vector<std::vector<float>> short_of_one = turns.save();
    expect_error([&] { four.load(short_of_one); }, "the state of the 4 replicas");
}

// The ordered sum of a group of one: 0, then the parts in order.
TEST(OrderedSum, GroupOfOneAddsThePartsInOrder) {
    Comm comm(1);
    const int g = comm.open_cross_group(true);
    const std::vector<float> parts = {1e8f, 1.0f, -1e8f, 1.0f, 1.0f, 2.0f};  // 3 parts of 2
    std::vector<float> out(2);
    comm.ordered_sum_in_group(g, parts.data(), {3}, 2, out.data());
    EXPECT_EQ(out[0], ((0.0f + 1e8f) + -1e8f) + 1.0f);
    EXPECT_EQ(out[0], 1.0f);  // another order would give 0
    EXPECT_EQ(out[1], 4.0f);
}

// generate --best-prefix: the path whose model gives the prompt the lowest loss, against a float64
// forward of every path assembled from the module files. The level-1 modules are scaled apart so
// that the paths' losses differ by far more than float rounding.
TEST(DiPaCoBestPrefix, PicksThePathWithTheLowestPromptLossInFloat64) {
    const int L = 2, K = 2;
    const std::string dir = fresh_dir("best_prefix_modules");
    const GPTConfig cfg{256, 16, 2, 2, 16};
    for (int mod = 0; mod < num_modules(L, K); mod++) {
        GPT g;
        gpt_build(g, cfg);
        gpt_init(g, 11 + mod);
        if (mod >= 1 + K) {  // level 1: blocks scaled by 1, 3
            const Slice r = path_layout(g, L).level[1];
            for (size_t i = r.begin; i < r.begin + r.count; i++) g.params[i] *= (float)(1 + 2 * (mod - 1 - K));
        }
        write_module(dir, g, g.params.data(), L, K, mod);
    }
    Rng rng(3);
    std::vector<int> prompt(13);
    for (int& t : prompt) t = (int)(rng.next() % 256);
    for (int n : {12, 5}) {
        std::vector<double> got;
        const int pick = best_prompt_path(dir, prompt, n, &got);
        std::vector<double> ref;
        for (int p = 0; p < num_paths(L, K); p++) {
            const GPT path = load_path(dir, p);
            const std::vector<double> P(path.params.begin(), path.params.end());
            ref.push_back(reference_loss(path, P, std::vector<int>(prompt.begin(), prompt.begin() + n),
                                         std::vector<int>(prompt.begin() + 1, prompt.begin() + n + 1), 1, n));
            EXPECT_NEAR(got.at(p), ref[p], 1e-5 * ref[p]) << "path " << p << ", " << n << " predictions";
        }
        std::vector<double> sorted = ref;
        std::sort(sorted.begin(), sorted.end());
        const int want = (int)(std::min_element(ref.begin(), ref.end()) - ref.begin());
        EXPECT_EQ(pick, want) << n << " predictions";
        EXPECT_GT(sorted[1] - sorted[0], 1e-4) << "the paths' losses are too close to tell apart";
        EXPECT_NE(want, 0) << "the test wants a best path other than the first";
    }
    expect_error([&] { best_prompt_path(dir, prompt, 13, nullptr); }, "13 predictions need a prompt of 14 tokens");
    expect_error([&] { best_prompt_path(dir, prompt, 0, nullptr); }, "0 predictions");
}

TEST(Documents, ParagraphStartsAndIndexChecks) {
    EXPECT_EQ(paragraph_starts("ab\ncd\n\n\nef\n\ngh"), (std::vector<size_t>{0, 8, 12}));
    const std::string dir = fresh_dir("docs_index");
    write_documents(dir + "/x.docs", {0, 5, 9}, 12);
    const std::vector<TokenRange> d = read_documents(dir + "/x.docs", 12);
    ASSERT_EQ(d.size(), 3u);
    EXPECT_EQ(d[1].begin, 5u);
    EXPECT_EQ(d[2].end, 12u);
    expect_error([&] { read_documents(dir + "/x.docs", 13); }, "belongs to other shards");
    std::string bytes = read_text_file(dir + "/x.docs");
    expect_error([&] { parse_documents(bytes.data(), bytes.size() - 1, 12, "cut"); }, "cut holds");
    uint64_t late = 10;
    std::memcpy(bytes.data() + 16 + 8, &late, 8);  // document 1 would start after document 2 does
    expect_error([&] { parse_documents(bytes.data(), bytes.size(), 12, "x"); }, "document 1 is empty or out of order");
    int32_t huge = 1 << 30;
    std::memcpy(bytes.data() + 8, &huge, 4);
    expect_error([&] { parse_documents(bytes.data(), bytes.size(), 12, "x"); }, "header says 1073741824 documents");
}

// Two kinds of paragraphs: letters a-d, and digits. Returns the prepared directory.
std::string prepare_two_kinds(const std::string& name) {
    const std::string dir = fresh_dir(name);
    Rng rng(3);
    std::string text;
    for (int d = 0; d < 60; d++) {
        const bool digits = rng.below(2);
        const int len = 40 + (int)rng.below(160);
        for (int i = 0; i < len; i++) text += (char)((digits ? '0' : 'a') + rng.below(4));
        text += "\n\n";
    }
    write_bytes(dir + "/in.txt", text);
    PrepareOptions p;
    p.inputs = {dir + "/in.txt"};
    p.out_dir = dir + "/data";
    p.val_fraction = 0.2;
    p.documents = "paragraphs";
    prepare_dataset(p);
    return dir + "/data";
}

TEST(Documents, PrepareKeepsParagraphsAndCutsValidationAtOne) {
    const std::string data = prepare_two_kinds("prep_docs");
    const std::string text = read_text_file(data + "/../in.txt");
    const std::vector<size_t> starts = paragraph_starts(text);
    TokenStream train(data, "train", 256, 16, false, 0), val(data, "val", 256, 16, false, 0);
    const std::vector<TokenRange> td = read_documents(documents_path(data, "train"), train.num_tokens());
    const std::vector<TokenRange> vd = read_documents(documents_path(data, "val"), val.num_tokens());
    EXPECT_EQ(td.size() + vd.size(), starts.size());  // none split between the two
    for (size_t i = 0; i < td.size(); i++) EXPECT_EQ(td[i].begin, starts[i]);
    EXPECT_EQ(vd[0].begin, 0u);
    EXPECT_EQ(td.back().end, starts[td.size()]);  // the cut is a document start
}

TEST(Routing, DeterministicForASeedAndSplitsTheKinds) {
    const std::string data = prepare_two_kinds("route_det");
    RouteOptions o;
    o.data = data;
    o.levels = 1;
    o.modules = 2;
    o.prefix = 32;
    run_route(o);
    const std::string first = read_text_file(routes_path(data));
    run_route(o);
    EXPECT_EQ(read_text_file(routes_path(data)), first);
    const Routes r = read_routes(routes_path(data));
    // every path holds one kind: its documents' first byte is a letter, or a digit, never both
    const std::string text = read_text_file(data + "/../in.txt");
    const std::vector<size_t> starts = paragraph_starts(text);
    std::set<std::pair<int, bool>> kinds;
    for (size_t d = 0; d < r.train.size(); d++) kinds.insert({r.train[d], text[starts[d]] >= 'a'});
    EXPECT_EQ(kinds.size(), 2u);
    // a file that does not match: another L or K, or other documents
    expect_error([&] { read_routes_for(data, 1, 3, r.train.size(), r.val.size()); }, "not --modules 3 ^ --levels 1");
    expect_error([&] { read_routes_for(data, 1, 2, r.train.size() + 1, r.val.size()); }, "does not match the data");
    std::string bytes = first;
    expect_error([&] { parse_routes(bytes.data(), bytes.size() - 2, "r"); }, "r holds");
    uint16_t bad = 2;
    std::memcpy(bytes.data() + 48, &bad, 2);
    expect_error([&] { parse_routes(bytes.data(), bytes.size(), "r"); }, "path 2 is not below 2");
}

// A document routed to path p reaches only the stream of p's workers: the stream restricted to
// p's spans reads exactly p's documents, back to back.
TEST(Routing, APathsStreamHoldsOnlyItsDocuments) {
    const std::string data = prepare_two_kinds("route_stream");
    RouteOptions o;
    o.data = data;
    o.levels = 1;
    o.modules = 2;
    run_route(o);
    const Routes r = read_routes(routes_path(data));
    const int T = 16;
    TokenStream whole(data, "train", 256, T, false, 0);
    const std::vector<TokenRange> docs = read_documents(documents_path(data, "train"), whole.num_tokens());
    const std::string text = read_text_file(data + "/../in.txt");
    for (int p = 0; p < 2; p++) {
        std::string expected;
        for (const TokenRange& s : routed_spans(r.train, docs, p)) expected += text.substr(s.begin, s.end - s.begin);
        TokenStream mine(data, "train", 256, T, false, 0);
        mine.restrict_to(routed_spans(r.train, docs, p));
        ASSERT_EQ(mine.num_tokens(), expected.size());
        std::vector<int> tok(T), tgt(T);
        for (uint64_t c = 0; c < mine.num_chunks(); c++) {
            mine.read_rows(c, 1, tok.data(), tgt.data());
            for (int t = 0; t < T; t++) ASSERT_EQ(tok[t], (unsigned char)expected[c * T + t]) << "path " << p;
        }
        // and shuffled, over two epochs: only this path's kind of text
        TokenStream shuffled(data, "train", 256, T, true, 9);
        shuffled.restrict_to(routed_spans(r.train, docs, p));
        const bool letters = expected[0] >= 'a';
        for (uint64_t row = 0; row < 2 * shuffled.num_chunks(); row++) {
            shuffled.read_rows(row, 1, tok.data(), tgt.data());
            for (int t = 0; t < T; t++)
                if (tok[t] != '\n') ASSERT_EQ(tok[t] >= 'a', letters) << "path " << p << " row " << row;
        }
    }
}

// The final LayerNorm's output of tokens (1, T) in float64, from tests/reference.h alone.
std::vector<double> reference_hidden(const GPT& m, const std::vector<int>& tok) {
    const GPTConfig& c = m.config;
    const int C = c.d_model, T = (int)tok.size();
    std::vector<double> P(m.params.begin(), m.params.end());
    auto slice = [&](size_t off, size_t n) { return ref::Vec(P.begin() + off, P.begin() + off + n); };
    ref::Vec x, ln, mean, rstd, qkv, att, proj, fc, lse;
    ref::embedding_forward(x, tok.data(), slice(m.wte, (size_t)c.vocab * C), slice(m.wpe, (size_t)c.max_seq_len * C), 1,
                           T, C);
    for (int l = 0; l < c.n_layer; l++) {
        const BlockParams& w = m.blocks[l];
        ref::layernorm_forward(ln, mean, rstd, x, slice(w.ln1w, C), slice(w.ln1b, C), T, C);
        ref::Vec bq = slice(w.qkvb, 3 * C), bp = slice(w.attprojb, C), bf = slice(w.fcb, 4 * C), bo = slice(w.fcprojb, C);
        ref::matmul_forward(qkv, ln, slice(w.qkvw, (size_t)3 * C * C), &bq, T, C, 3 * C);
        ref::attention_forward(att, lse, qkv, 1, T, C, c.n_head);
        ref::matmul_forward(proj, att, slice(w.attprojw, (size_t)C * C), &bp, T, C, C);
        for (size_t i = 0; i < x.size(); i++) x[i] += proj[i];
        ref::layernorm_forward(ln, mean, rstd, x, slice(w.ln2w, C), slice(w.ln2b, C), T, C);
        ref::matmul_forward(fc, ln, slice(w.fcw, (size_t)4 * C * C), &bf, T, C, 4 * C);
        for (auto& v : fc) v = ref::gelu(v);
        ref::matmul_forward(proj, fc, slice(w.fcprojw, (size_t)4 * C * C), &bo, T, 4 * C, C);
        for (size_t i = 0; i < x.size(); i++) x[i] += proj[i];
    }
    ref::layernorm_forward(ln, mean, rstd, x, slice(m.lnfw, C), slice(m.lnfb, C), T, C);
    return ln;
}

TEST(Routing, MeanHiddenStateAgainstAFloat64Forward) {
    GPT m;
    gpt_build(m, GPTConfig{256, 24, 2, 2, 16});
    gpt_init(m, 5);
    gpt_allocate(m, 1, 24);
    const std::vector<int> tok = {72, 101, 108, 108, 111, 10, 32, 7, 200, 33, 64};
    const std::vector<double> got = gpt_mean_hidden_state(m, tok.data(), (int)tok.size());
    const std::vector<double> h = reference_hidden(m, tok);
    for (int c = 0; c < 16; c++) {
        double want = 0;
        for (size_t t = 0; t < tok.size(); t++) want += h[t * 16 + c];
        want /= tok.size();
        EXPECT_NEAR(got[c], want, 1e-5) << c;
    }
}

// Routing by the best path on a prefix: each held-out document goes to the model whose float64
// cross-entropy on its first n + 1 tokens is the lowest.
TEST(Routing, BestPathOnAPrefixAgainstAFloat64Forward) {
    const std::string data = prepare_two_kinds("route_prefix");
    RouteOptions o;
    o.data = data;
    o.levels = 1;
    o.modules = 2;
    run_route(o);
    const int n = 20;
    GPT models[2];
    for (int p = 0; p < 2; p++) {
        gpt_build(models[p], GPTConfig{256, 32, 1, 2, 16});
        gpt_init(models[p], 100 + p);
        gpt_allocate(models[p], 1, 32);
    }
    const std::vector<uint16_t> best = best_prefix_paths(data, n, [&](int p) -> GPT& { return models[p]; });
    TokenStream val(data, "val", 256, 16, false, 0);
    const std::vector<TokenRange> docs = read_documents(documents_path(data, "val"), val.num_tokens());
    const Routes r = read_routes(routes_path(data));
    std::string text;  // the validation split's bytes: the tail of the input from the cut on
    {
        const std::string all = read_text_file(data + "/../in.txt");
        text = all.substr(all.size() - val.num_tokens());
    }
    ASSERT_EQ(best.size(), docs.size());
    int scored = 0;
    for (size_t d = 0; d < docs.size(); d++) {
        if (docs[d].end - docs[d].begin <= (uint64_t)n) {
            EXPECT_EQ(best[d], r.val[d]) << "a short document keeps its route";
            continue;
        }
        double loss[2];
        for (int p = 0; p < 2; p++) {
            std::vector<int> tok(n);
            for (int t = 0; t < n; t++) tok[t] = (unsigned char)text[docs[d].begin + t];
            const std::vector<double> h = reference_hidden(models[p], tok);
            const GPT& m = models[p];
            loss[p] = 0;
            for (int t = 0; t < n; t++) {
                std::vector<double> logit(256);
                for (int v = 0; v < 256; v++)
                    for (int c = 0; c < 16; c++) logit[v] += h[t * 16 + c] * m.params[m.wte + v * 16 + c];
                double mx = *std::max_element(logit.begin(), logit.end()), z = 0;
                for (double x : logit) z += std::exp(x - mx);
                loss[p] += mx + std::log(z) - logit[(unsigned char)text[docs[d].begin + t + 1]];
            }
        }
        if (std::abs(loss[0] - loss[1]) < 1e-4 * n) continue;  // too close for float32 to call
        EXPECT_EQ(best[d], loss[1] < loss[0] ? 1 : 0) << "document " << d;
        scored++;
    }
    EXPECT_GT(scored, 0);
}

// Routing by a dense model's hidden state: deterministic, the model kept beside the route file, and
// every document on the path its own feature gives it down the stored tree.
TEST(Routing, ByAModelsHiddenState) {
    const std::string data = prepare_two_kinds("route_hidden");
    GPT m;
    gpt_build(m, GPTConfig{256, 32, 1, 2, 16});
    gpt_init(m, 9);
    TrainState st;
    const std::string ckpt = data + "/../dense.ckpt";
    save_checkpoint(ckpt, m.config, st, m.params.data(), m.params.data(), m.params.data(), m.num_params, {});
    RouteOptions o;
    o.data = data;
    o.levels = 2;
    o.modules = 2;
    o.prefix = 48;
    o.ckpt = ckpt;
    route_data(o);
    const std::string first = read_text_file(routes_path(data));
    route_data(o);
    EXPECT_EQ(read_text_file(routes_path(data)), first);
    const Routes r = read_routes(routes_path(data));
    EXPECT_EQ(r.feature, 1);
    EXPECT_EQ(r.dims, 16);
    TokenStream whole(data, "train", 256, 16, false, 0);
    const std::vector<TokenRange> docs = read_documents(documents_path(data, "train"), whole.num_tokens());
    const std::string text = read_text_file(data + "/../in.txt");
    std::set<int> used;
    for (size_t d = 0; d < docs.size(); d++) {
        const std::vector<int> tok(text.begin() + docs[d].begin, text.begin() + docs[d].end);
        const std::vector<double> f = routing_feature(r, data, tok);  // through DIR/router.bin
        EXPECT_EQ(route_feature(r, f.data()), r.train[d]) << "document " << d;
        used.insert(r.train[d]);
    }
    EXPECT_GT(used.size(), 1u);
    o.ckpt = data + "/../nothing.ckpt";
    expect_error([&] { route_data(o); }, "nothing.ckpt");
}

}  // namespace
