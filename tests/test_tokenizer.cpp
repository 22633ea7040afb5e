// Subword data end to end: prepare with SentencePiece, the tokenizer carried in checkpoints,
// training on subword tokens and generating text from the checkpoint alone.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/dataset.h"
#include "data/io.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "kernels/rng.h"
#include "model/checkpoint.h"
#include "optim/generate.h"
#include "optim/train.h"
#include "tests/files.h"

using namespace diloco;
using namespace diloco::test;
namespace fs = std::filesystem;

namespace {

#define NEED_SENTENCEPIECE() \
    if (!have_sentencepiece()) GTEST_SKIP() << "this build has no SentencePiece"

// Text with enough distinct words for a few hundred learned pieces: made-up words of one to four
// syllables, drawn with a skew toward the first ones (as words are), in lines of 4 to 14 words;
// some accented letters, a snowman, doubled spaces and blank lines.
std::string make_text(size_t bytes, uint64_t seed) {
    const char* syl[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "bri", "sto", "gle",
                         "an", "or", "é", "ün", "ch", "th", "wa", "xe", "dy", "fo", "ge", "hi", "jo", "ly"};
    Rng rng(seed);
    std::vector<std::string> words;
    for (int w = 0; w < 900; w++) {
        std::string s;
        for (int k = 0, n = 1 + (int)rng.below(4); k < n; k++) s += syl[rng.below(28)];
        words.push_back(s);
    }
    std::string text;
    while (text.size() < bytes) {
        const int n = 4 + (int)rng.below(11);
        for (int i = 0; i < n; i++) {
            const double u = rng.uniform();
            text += words[(size_t)(u * u * u * words.size())];
            text += i + 1 < n ? (rng.below(20) == 0 ? "  " : " ") : (rng.below(10) == 0 ? " ☃\n\n" : ".\n");
        }
    }
    return text;
}

// A data directory prepared with SentencePiece from one generated text; returns its path.
std::string prepare_sp(const std::string& dir, int vocab, const std::string& type, const std::string& text) {
    fs::create_directories(dir);
    write_bytes(dir + "/corpus.txt", text);
    PrepareOptions p;
    p.inputs = {dir + "/corpus.txt"};
    p.out_dir = dir + "/data";
    p.val_fraction = 0.1;
    p.tokenizer = "sp";
    p.vocab_size = vocab;
    p.sp_model_type = type;
    prepare_dataset(p);
    return p.out_dir;
}

std::vector<int> shard_ids(const std::string& path, int vocab) {
    Shard s(path, vocab);
    return std::vector<int>(s.tokens(), s.tokens() + s.size());
}

}  // namespace

TEST(Tokenizer, BytesRoundTripAndNeedNoLibrary) {
    const auto tok = make_byte_tokenizer();
    const std::string text = "any bytes \xff\x00 at all";
    EXPECT_EQ(tok->decode(tok->encode(text)), text);
    EXPECT_EQ(tok->vocab(), 256);
    EXPECT_EQ(tok->eos(), -1);
}

TEST(Tokenizer, PrepareTrainsTheAskedVocabularyAndTextRoundTrips) {
    NEED_SENTENCEPIECE();
    const std::string dir = fresh_dir("sp_prepare");
    const std::string text = make_text(150000, 3);
    for (const std::string type : {"bpe", "unigram"}) {
        const int asked = type == "bpe" ? 777 : 555;
        const std::string data = prepare_sp(dir + "/" + type, asked, type, text);
        const DatasetInfo info = read_dataset_info(data);
        EXPECT_EQ(info.tokenizer, "sp");
        EXPECT_EQ(info.vocab, asked);
        EXPECT_EQ(info.eos, kSpEosId);
        EXPECT_EQ(info.model_file, "tokenizer.model");
        const auto tok = make_sp_tokenizer(read_text_file(data + "/tokenizer.model"), type);
        EXPECT_EQ(tok->vocab(), asked) << type;
        EXPECT_EQ(tok->eos(), kSpEosId);
        EXPECT_EQ(tok->decode({2 + 'A', 2 + 0xC3, 2 + 0xA9}), "Aé") << "byte pieces at 2..257";
        // the splits hold the corpus, each part ended by <|endoftext|>
        std::vector<int> train = shard_ids(list_shards(data, "train")[0], asked);
        std::vector<int> val = shard_ids(list_shards(data, "val")[0], asked);
        ASSERT_EQ(train.back(), kSpEosId);
        ASSERT_EQ(val.back(), kSpEosId);
        train.pop_back();
        val.pop_back();
        EXPECT_EQ(tok->decode(train) + tok->decode(val), text) << type;
        EXPECT_NEAR((double)tok->decode(val).size() / text.size(), 0.1, 0.001);
        EXPECT_LT(train.size(), text.size() / 2) << "subwords are shorter than bytes";
        // exact round trip of text it was not trained on
        const std::string other = "Naïve  café ☃\n\n\tsnow \x01 ends here";
        EXPECT_EQ(tok->decode(tok->encode(other)), other);
        // a long text encoded in pieces: what one call gives for BPE; unigram's Viterbi may settle a
        // near-tie differently (its path scores are float sums from the start of the input)
        const std::vector<int> long_ids = encode_long_text(*tok, text);
        if (type == "bpe") EXPECT_EQ(long_ids, tok->encode(text));
        EXPECT_EQ(tok->decode(long_ids), text);
    }
}

TEST(Tokenizer, VocabularySizeOutOfRangeIsRefused) {
    const std::string dir = fresh_dir("sp_range");
    write_bytes(dir + "/a.txt", "some text\n");
    PrepareOptions p;
    p.inputs = {dir + "/a.txt"};
    p.out_dir = dir + "/out";
    p.tokenizer = "sp";
    for (int v : {100, 257, 65537, -1}) {
        p.vocab_size = v;
        expect_error([&] { prepare_dataset(p); }, "--vocab-size " + std::to_string(v) + " is out of range");
    }
    p.tokenizer = "byte";
    p.vocab_size = 4096;
    expect_error([&] { prepare_dataset(p); }, "needs --tokenizer sp");
    EXPECT_FALSE(fs::exists(p.out_dir));
}

TEST(Tokenizer, CheckpointCarriesTheTokenizer) {
    NEED_SENTENCEPIECE();
    const std::string dir = fresh_dir("sp_ckpt");
    const std::string data = prepare_sp(dir, 400, "bpe", make_text(40000, 4));
    const TokenizerBlob blob = read_dataset_tokenizer(data, read_dataset_info(data));
    ASSERT_EQ(blob.name, "sp");
    GPT m;
    gpt_build(m, GPTConfig{400, 8, 1, 2, 8});
    gpt_init(m, 1);
    const std::vector<std::vector<float>> extra = {{1.5f, 2.5f}, {}};
    const std::string path = dir + "/run/ckpt/step_00000003.ckpt";
    save_checkpoint(path, m.config, TrainState{3, 4, {}}, m.params.data(), m.params.data(), m.params.data(),
                    m.num_params, extra, blob);
    fs::remove_all(data);  // the checkpoint alone must do
    const Checkpoint ck = load_checkpoint(path);
    EXPECT_EQ(ck.tokenizer.name, "sp");
    EXPECT_EQ(ck.tokenizer.model, blob.model);
    EXPECT_EQ(ck.extra, extra);
    EXPECT_EQ(ck.params, m.params);
    const auto tok = make_tokenizer(ck.tokenizer, path);
    const std::string text = "kalo mine ruti\nvoze";
    EXPECT_EQ(tok->decode(tok->encode(text)), text);
    EXPECT_EQ(tok->vocab(), 400);

    // a tokenizer section whose lengths overrun the file is refused before anything is allocated
    // (the CRC is recomputed, so that only the section is wrong)
    std::string bytes = read_text_file(path);
    const size_t len_at = bytes.size() - blob.model.size() - 8;
    auto with_crc = [](std::string b) {
        const uint32_t crc = crc32_update(0, b.data() + 24, b.size() - 24);
        std::memcpy(b.data() + 12, &crc, 4);
        return b;
    };
    std::string bad = bytes;
    const uint64_t huge = 1ull << 60;
    std::memcpy(bad.data() + len_at, &huge, 8);
    write_bytes(dir + "/long.ckpt", with_crc(bad));
    expect_error([&] { load_checkpoint(dir + "/long.ckpt"); }, "corrupt tokenizer section");
    bad = bytes;
    const uint32_t name_len = 1u << 30;
    std::memcpy(bad.data() + len_at - 2 - 4, &name_len, 4);  // the name is "sp"
    write_bytes(dir + "/name.ckpt", with_crc(bad));
    expect_error([&] { load_checkpoint(dir + "/name.ckpt"); }, "corrupt tokenizer section");
    // model bytes that are no SentencePiece model load as a checkpoint, and fail as a tokenizer
    bad = bytes;
    for (size_t i = len_at + 8; i < bad.size(); i++) bad[i] = (char)(i * 7);
    write_bytes(dir + "/garbage.ckpt", with_crc(bad));
    const Checkpoint g = load_checkpoint(dir + "/garbage.ckpt");
    expect_error([&] { make_tokenizer(g.tokenizer, "garbage.ckpt"); }, "is not a valid SentencePiece model");
}

TEST(Tokenizer, TrainOnSubwordsThenGenerateFromTheCheckpointAlone) {
    NEED_SENTENCEPIECE();
    const std::string dir = fresh_dir("sp_train");
    const int V = 500;
    const std::string data = prepare_sp(dir, V, "bpe", make_text(60000, 5));
    TrainOptions o;
    o.data = data;
    o.out = dir + "/run";
    o.n_layer = 2, o.n_head = 2, o.d_model = 32, o.seq_len = 32;
    o.batch = 8, o.steps = 40, o.warmup = 5, o.lr = 3e-3f, o.log_every = 0, o.eval_batches = 2, o.ckpt_every = 40;
    const double val = run_train(o);
    // from ln 500 = 6.2 nats at the start, a working run drops well below in 40 steps
    EXPECT_LT(val, std::log((double)V) - 1.0);
    fs::remove_all(data);
    GenerateOptions g;
    g.ckpt = checkpoint_path(o.out, 40);
    g.prompt = "kalo ";
    g.tokens = 30;
    g.temperature = 0.0f;
    const std::string text = run_generate(g);
    EXPECT_FALSE(text.empty());
    g.tokens = 0;
    EXPECT_EQ(run_generate(g), "");
}

TEST(Tokenizer, GenerateStopsAtEndOfText) {
    NEED_SENTENCEPIECE();
    const std::string dir = fresh_dir("sp_eos");
    const std::string data = prepare_sp(dir, 300, "bpe", make_text(30000, 6));
    const TokenizerBlob blob = read_dataset_tokenizer(data, read_dataset_info(data));
    // lnf's output is its bias b at every position (gain 0), and wte's end-of-text row is 10 b, so
    // that token has the largest logit, whatever the input
    GPT m;
    gpt_build(m, GPTConfig{300, 16, 1, 2, 8});
    gpt_init(m, 2);
    Rng rng(3);
    for (int c = 0; c < 8; c++) {
        m.params[m.lnfw + c] = 0.0f;
        m.params[m.lnfb + c] = (float)rng.normal();
        m.params[m.wte + (size_t)kSpEosId * 8 + c] = 10.0f * m.params[m.lnfb + c];
    }
    const std::string path = dir + "/eos.ckpt";
    save_checkpoint(path, m.config, TrainState{}, m.params.data(), m.params.data(), m.params.data(), m.num_params,
                    {}, blob);
    GenerateOptions g;
    g.ckpt = path;
    g.prompt = "kalo";
    g.tokens = 50;
    g.temperature = 0.0f;
    EXPECT_EQ(run_generate(g), "");
}
