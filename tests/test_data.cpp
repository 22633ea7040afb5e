// Shards, the sampler, prepare, the LR schedule, checkpoints, and whole training runs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "data/dataset.h"
#include "data/io.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "kernels/common.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "optim/schedule.h"
#include "optim/train.h"
#include "tests/files.h"

using namespace diloco;
using namespace diloco::test;
namespace fs = std::filesystem;

namespace {

std::string shard_bytes(int32_t magic, int32_t version, int32_t count, const std::vector<uint16_t>& tokens) {
    std::string s(kShardHeaderBytes, '\0');
    int32_t h[3] = {magic, version, count};
    std::memcpy(s.data(), h, sizeof h);
    s.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
    return s;
}

// A small learnable corpus: sentences built from a few words in a seeded order.
std::string make_corpus(size_t bytes, uint64_t seed) {
    const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"};
    Rng rng(seed);
    std::string s;
    while (s.size() < bytes) {
        int n = 3 + (int)rng.below(6);
        for (int i = 0; i < n; i++) s += std::string(words[rng.below(12)]) + (i + 1 < n ? " " : ". ");
    }
    return s;
}

std::string prepared_corpus(const std::string& name, size_t bytes = 60000) {
    const std::string dir = fresh_dir(name);
    write_bytes(dir + "/corpus.txt", make_corpus(bytes, 9));
    PrepareOptions p;
    p.inputs = {dir + "/corpus.txt"};
    p.out_dir = dir + "/data";
    p.val_fraction = 0.1;
    prepare_dataset(p);
    return dir;
}

std::vector<std::string> metric_losses(const std::string& path) {
    std::ifstream f(path);
    std::string line;
    std::vector<std::string> out;
    static const std::regex re("\"loss\": ([^,]+),");
    while (std::getline(f, line)) {
        std::smatch m;
        if (std::regex_search(line, m, re)) out.push_back(m[1]);
    }
    return out;
}

}  // namespace

TEST(Shard, RoundTripsAndRejectsBadFiles) {
    const std::string dir = fresh_dir("shard");
    std::vector<uint16_t> tok = {1, 2, 3, 255, 0, 7};
    write_shard(dir + "/good.bin", tok.data(), tok.size());
    Shard s(dir + "/good.bin", 256);
    ASSERT_EQ(s.size(), tok.size());
    EXPECT_TRUE(std::equal(tok.begin(), tok.end(), s.tokens()));

    expect_error([&] { Shard(dir + "/missing.bin", 256); }, "cannot open");
    write_bytes(dir + "/short.bin", "abc");
    expect_error([&] { Shard(dir + "/short.bin", 256); }, "truncated");
    write_bytes(dir + "/magic.bin", shard_bytes(12345, 1, 6, tok));
    expect_error([&] { Shard(dir + "/magic.bin", 256); }, "bad magic");
    write_bytes(dir + "/version.bin", shard_bytes(kShardMagic, 2, 6, tok));
    expect_error([&] { Shard(dir + "/version.bin", 256); }, "version");
    write_bytes(dir + "/empty.bin", shard_bytes(kShardMagic, 1, 0, {}));
    expect_error([&] { Shard(dir + "/empty.bin", 256); }, "empty");
    write_bytes(dir + "/cut.bin", shard_bytes(kShardMagic, 1, 10, tok));
    expect_error([&] { Shard(dir + "/cut.bin", 256); }, "truncated");
    write_bytes(dir + "/trail.bin", shard_bytes(kShardMagic, 1, 5, tok));
    expect_error([&] { Shard(dir + "/trail.bin", 256); }, "trailing");
    expect_error([&] { Shard(dir + "/good.bin", 200); }, "outside the vocabulary");
}

TEST(TokenStream, ReadsLlmcGpt2ShardsWithoutMeta) {
    const std::string dir = fresh_dir("gpt2");
    std::vector<uint16_t> tok(3000);
    for (size_t i = 0; i < tok.size(); i++) tok[i] = (uint16_t)((i * 7919) % 50257);
    write_shard(dir + "/fineweb_train_000001.bin", tok.data(), tok.size());
    write_shard(dir + "/fineweb_train_000002.bin", tok.data(), 1000);
    write_shard(dir + "/fineweb_val_000000.bin", tok.data(), 500);
    const DatasetInfo info = read_dataset_info(dir);
    EXPECT_EQ(info.vocab, 50257);
    EXPECT_EQ(info.tokenizer, "gpt2");
    TokenStream s(dir, "train", info.vocab, 64, false, 0);
    EXPECT_EQ(s.num_tokens(), 4000u);
    EXPECT_EQ(s.num_chunks(), (3000u - 1) / 64 + (1000u - 1) / 64);  // chunks stay inside a shard
    std::vector<int> t(64), g(64);
    s.read_rows(3000 / 64, 1, t.data(), g.data());  // the first chunk of the second shard
    EXPECT_EQ(t[1], tok[1]);
    EXPECT_EQ(g[0], tok[1]);
}

TEST(TokenStream, RankSlicesCompose) {
    const std::string dir = prepared_corpus("stream");
    const int T = 16, G = 12;
    TokenStream a(dir + "/data", "train", 256, T, true, 5), b(dir + "/data", "train", 256, T, true, 5);
    for (uint64_t step = 0; step < 3; step++) {
        std::vector<int> whole(G * T), whole_t(G * T), part(G * T), part_t(G * T);
        a.read_rows(step * G, G, whole.data(), whole_t.data());
        for (int r = 0; r < 4; r++)  // four ranks of three rows
            b.read_rows(step * G + r * 3, 3, part.data() + r * 3 * T, part_t.data() + r * 3 * T);
        EXPECT_EQ(whole, part);
        EXPECT_EQ(whole_t, part_t);
        for (int r = 0; r < G; r++)
            for (int t = 0; t + 1 < T; t++) EXPECT_EQ(whole_t[r * T + t], whole[r * T + t + 1]);
    }
}

TEST(TokenStream, EachEpochVisitsEveryChunkOnce) {
    const std::string dir = prepared_corpus("epoch", 5000);
    const int T = 32;
    TokenStream s(dir + "/data", "train", 256, T, true, 7);
    const uint64_t n = s.num_chunks();
    ASSERT_GT(n, 50u);
    std::vector<int> tok(T), tgt(T);
    TokenStream plain(dir + "/data", "train", 256, T, false, 0);
    std::vector<std::vector<int>> chunks(n, std::vector<int>(T));
    for (uint64_t c = 0; c < n; c++) plain.read_rows(c, 1, chunks[c].data(), tgt.data());
    for (int epoch = 0; epoch < 2; epoch++) {
        std::set<std::vector<int>> seen;
        bool in_order = true;
        for (uint64_t r = 0; r < n; r++) {
            s.read_rows(epoch * n + r, 1, tok.data(), tgt.data());
            seen.insert(tok);
            in_order = in_order && tok == chunks[r];
        }
        EXPECT_EQ(seen, std::set<std::vector<int>>(chunks.begin(), chunks.end()));
        EXPECT_FALSE(in_order) << "the shuffle left epoch " << epoch << " in file order";
    }
}

// Elastic restart (data/dataset.h): after O rows of the shared order, the M' replicas of the new
// layout read rows O, O+1, ... between them (iid: replica m takes O + i M' + m), none twice; noniid
// replicas start at row O / M' of their own contiguous part.
TEST(TokenStream, OriginContinuesTheSharedOrderOnAnotherLayout) {
    const std::string dir = prepared_corpus("origin");
    const int T = 16, M = 2, M2 = 3;
    const uint64_t O = 2 * 7 * M;  // two replicas took 7 steps of 2 rows each
    TokenStream whole(dir + "/data", "train", 256, T, true, 5);
    std::vector<int> want(T), got(T), tgt(T);
    for (int m = 0; m < M2; m++) {
        TokenStream part(dir + "/data", "train", 256, T, true, 5);
        part.set_partition(M2, m, false);
        part.set_origin(O);
        for (uint64_t i = 0; i < 5; i++) {
            whole.read_rows(O + i * M2 + m, 1, want.data(), tgt.data());
            part.read_rows(i, 1, got.data(), tgt.data());
            EXPECT_EQ(got, want) << "replica " << m << ", row " << i;
        }
    }
    // the rows before the origin are the ones the old layout read
    TokenStream old0(dir + "/data", "train", 256, T, true, 5);
    old0.set_partition(M, 1, false);
    old0.read_rows(O / M - 1, 1, got.data(), tgt.data());
    whole.read_rows(O - 1, 1, want.data(), tgt.data());
    EXPECT_EQ(got, want);
    TokenStream noniid(dir + "/data", "train", 256, T, true, 5), fresh(dir + "/data", "train", 256, T, true, 5);
    noniid.set_partition(M2, 1, true);
    fresh.set_partition(M2, 1, true);
    noniid.set_origin(O);
    noniid.read_rows(0, 1, got.data(), tgt.data());
    fresh.read_rows(O / M2, 1, want.data(), tgt.data());
    EXPECT_EQ(got, want);
}

TEST(Prepare, SplitsEachInputAndWritesMeta) {
    const std::string dir = fresh_dir("prepare");
    write_bytes(dir + "/a.txt", std::string(1000, 'a'));
    write_bytes(dir + "/b.txt", std::string(3000, 'b'));
    PrepareOptions p;
    p.inputs = {dir + "/a.txt", dir + "/b.txt"};
    p.out_dir = dir + "/out";
    p.val_fraction = 0.1;
    prepare_dataset(p);
    const DatasetInfo info = read_dataset_info(p.out_dir);
    EXPECT_EQ(info.vocab, 256);
    EXPECT_EQ(info.tokenizer, "byte");
    Shard train(list_shards(p.out_dir, "train")[0], 256), val(list_shards(p.out_dir, "val")[0], 256);
    ASSERT_EQ(train.size(), 900u + 2700u);
    ASSERT_EQ(val.size(), 100u + 300u);
    EXPECT_EQ(train.tokens()[899], 'a');
    EXPECT_EQ(train.tokens()[900], 'b');
    EXPECT_EQ(val.tokens()[99], 'a');
    EXPECT_EQ(val.tokens()[100], 'b');
    p.inputs = {dir + "/nope.txt"};
    expect_error([&] { prepare_dataset(p); }, "does not exist");
    p.inputs = {dir + "/a.txt"};
    p.val_fraction = 1.5;
    expect_error([&] { prepare_dataset(p); }, "--val-fraction");
}

TEST(Schedule, WarmupThenCosineToFloor) {
    EXPECT_FLOAT_EQ(lr_at(1, 100, 10, 1.0f, 0.1f), 0.1f);
    EXPECT_FLOAT_EQ(lr_at(10, 100, 10, 1.0f, 0.1f), 1.0f);
    EXPECT_NEAR(lr_at(55, 100, 10, 1.0f, 0.1f), 0.55f, 1e-6);  // halfway down the cosine
    EXPECT_FLOAT_EQ(lr_at(100, 100, 10, 1.0f, 0.1f), 0.1f);
    EXPECT_FLOAT_EQ(lr_at(1, 100, 0, 2.0f, 0.0f), 2.0f * 0.5f * (1.0f + std::cos(3.14159265f / 100)));
}

TEST(Checkpoint, RoundTripsAndRejectsCorruption) {
    const std::string dir = fresh_dir("ckpt");
    GPT m;
    gpt_build(m, GPTConfig{40, 8, 1, 2, 8});
    gpt_init(m, 1);
    std::vector<float> am(m.num_params, 0.25f), av(m.num_params, 0.5f);
    TrainState st{17, 12345, {1, 2, 3, 4}};
    const std::string path = checkpoint_path(dir, 17);
    save_checkpoint(path, m.config, st, m.params.data(), am.data(), av.data(), m.num_params);
    EXPECT_EQ(latest_checkpoint(dir), path);
    Checkpoint ck = load_checkpoint(path);
    EXPECT_EQ(ck.config, m.config);
    EXPECT_EQ(ck.params, m.params);
    EXPECT_EQ(ck.adam_m, am);
    EXPECT_EQ(ck.adam_v, av);
    EXPECT_EQ(ck.state.step, 17);
    EXPECT_EQ(ck.state.data_cursor, 12345u);
    EXPECT_EQ(ck.state.rng[3], 4u);

    std::string bytes = read_text_file(path);
    std::string flipped = bytes;
    flipped[bytes.size() / 2] ^= 0x10;
    write_bytes(dir + "/flipped.ckpt", flipped);
    expect_error([&] { load_checkpoint(dir + "/flipped.ckpt"); }, "CRC32 mismatch");
    write_bytes(dir + "/cut.ckpt", bytes.substr(0, bytes.size() - 7));
    expect_error([&] { load_checkpoint(dir + "/cut.ckpt"); }, "truncated");
    write_bytes(dir + "/junk.ckpt", "not a checkpoint at all, just text");
    expect_error([&] { load_checkpoint(dir + "/junk.ckpt"); }, "bad magic");
    // temporaries of an interrupted write are never taken as the latest
    write_bytes(dir + "/ckpt/step_00000099.ckpt.tmp.123", "partial");
    EXPECT_EQ(latest_checkpoint(dir), path);
}

// Version 4 carries the layout and the data origin; a file without them is still written as
// before, and a layout out of bounds is refused.
TEST(Checkpoint, Version4RecordsTheLayout) {
    const std::string dir = fresh_dir("ckpt4");
    GPT m;
    gpt_build(m, GPTConfig{40, 8, 1, 2, 8});
    gpt_init(m, 1);
    std::vector<float> am(m.num_params, 0.25f), av(m.num_params, 0.5f);
    TrainState st{17, 5, {1, 2, 3, 4}};
    save_checkpoint(dir + "/one.ckpt", m.config, st, m.params.data(), am.data(), av.data(), m.num_params);
    st.workers = st.ranks_per_worker = 1;  // one process, never resized: still version 1
    save_checkpoint(dir + "/one1.ckpt", m.config, st, m.params.data(), am.data(), av.data(), m.num_params);
    EXPECT_EQ(read_text_file(dir + "/one.ckpt"), read_text_file(dir + "/one1.ckpt"));
    st.workers = 4;
    st.ranks_per_worker = 2;
    st.row_origin = 96;
    st.origin_step = 12;
    save_checkpoint(dir + "/four.ckpt", m.config, st, m.params.data(), am.data(), av.data(), m.num_params, {{1.5f}});
    const Checkpoint ck = load_checkpoint(dir + "/four.ckpt");
    EXPECT_EQ(ck.state.workers, 4);
    EXPECT_EQ(ck.state.ranks_per_worker, 2);
    EXPECT_EQ(ck.state.row_origin, 96u);
    EXPECT_EQ(ck.state.origin_step, 12);
    EXPECT_EQ(ck.extra, std::vector<std::vector<float>>{{1.5f}});
    EXPECT_TRUE(ck.tokenizer.name.empty());
    std::string bytes = read_text_file(dir + "/four.ckpt");
    uint32_t version;
    std::memcpy(&version, bytes.data() + 8, 4);
    EXPECT_EQ(version, 4u);
    st.origin_step = 18;  // beyond the step: refused
    save_checkpoint(dir + "/bad.ckpt", m.config, st, m.params.data(), am.data(), av.data(), m.num_params);
    expect_error([&] { load_checkpoint(dir + "/bad.ckpt"); }, "corrupt layout");
}

TEST(Training, TinyRunLowersTheLossByAStatedMargin) {
    const std::string dir = prepared_corpus("learn");
    TrainOptions o;
    o.data = dir + "/data";
    o.out = dir + "/run";
    o.n_layer = 2, o.n_head = 2, o.d_model = 32, o.seq_len = 32;
    o.batch = 8, o.steps = 80, o.warmup = 10, o.lr = 3e-3f, o.log_every = 0, o.eval_batches = 4;
    const double val = run_train(o);
    const auto losses = metric_losses(o.out + "/metrics.jsonl");
    ASSERT_EQ(losses.size(), 80u);
    const double first = std::stod(losses.front());
    EXPECT_NEAR(first, std::log(256.0), 0.1);
    // the corpus is 12 words over ~20 distinct bytes: a working trainer goes from ln 256 = 5.55
    // to well under 2.5 nats in 80 steps (about 2.2 when measured); a broken one stays near 5
    EXPECT_LT(std::stod(losses.back()), first - 3.0);
    EXPECT_LT(val, first - 3.0);
}

TEST(Training, ResumeReproducesTheUninterruptedRunBitForBit) {
    const std::string dir = prepared_corpus("resume");
    TrainOptions o;
    o.data = dir + "/data";
    o.n_layer = 2, o.n_head = 2, o.d_model = 32, o.seq_len = 32;
    o.batch = 4, o.steps = 20, o.warmup = 5, o.lr = 3e-3f, o.log_every = 0, o.eval_batches = 2;
    o.eval_every = 7;  // evaluations in between must not disturb training
    o.out = dir + "/straight";
    run_train(o);
    o.out = dir + "/split";
    o.stop_at = 10;
    EXPECT_TRUE(std::isnan(run_train(o)));
    EXPECT_EQ(latest_checkpoint(o.out), checkpoint_path(o.out, 10));
    o.stop_at = 0;
    o.resume = true;
    run_train(o);
    const auto a = metric_losses(dir + "/straight/metrics.jsonl"), b = metric_losses(dir + "/split/metrics.jsonl");
    ASSERT_EQ(a.size(), 20u);
    EXPECT_EQ(a, b);  // printed with 9 significant digits: equal strings mean equal floats

    // a checkpoint from another model is refused, naming both configs
    o.d_model = 64;
    expect_error([&] { run_train(o); }, "different model");
}
