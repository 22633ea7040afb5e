#include "tests/fuzz/targets.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <typeinfo>

#include "data/dataset.h"
#include "data/io.h"
#include "data/shard.h"
#include "kernels/common.h"
#include "model/checkpoint.h"
#include "model/llmc.h"
#include "tools/config_file.h"
#include "tools/train_options.h"

namespace diloco::fuzz {

namespace {

[[noreturn]] void broken(const char* target, const std::string& why) {
    std::fprintf(stderr, "fuzz target %s: %s\n", target, why.c_str());
    std::abort();
}

// A reader may refuse with Error; anything else escaping it (std::out_of_range from a stoi, a
// bad_alloc, CLI11's own exceptions) is a bug: the trainer would die without its one clear line.
template <typename F>
void expect_clean(const char* target, F parse) {
    try {
        parse();
    } catch (const Error&) {
    } catch (const std::exception& e) {
        broken(target, std::string("escaped as ") + typeid(e).name() + ": " + e.what());
    }
}

void shard(const uint8_t* data, size_t size) {
    for (int vocab : {256, 50257})
        expect_clean("shard", [&] {
            const size_t ntok = check_shard(data, size, vocab, "fuzz.bin");
            if (kShardHeaderBytes + 2 * ntok != size) broken("shard", "token count does not match the size");
        });
}

void check_checkpoint_budget(const Checkpoint& ck, size_t size) {
    size_t floats = ck.params.size() + ck.adam_m.size() + ck.adam_v.size();
    for (const auto& e : ck.extra) floats += e.size();
    if (4 * floats + ck.tokenizer.model.size() + ck.tokenizer.name.size() > size)
        broken("checkpoint", "the parsed checkpoint holds more bytes than its file");
}

// Twice: the bytes as they are, then with the header's CRC and payload length made to match, so
// that mutations reach the payload's parser instead of all dying at the CRC check.
void checkpoint(const uint8_t* data, size_t size) {
    expect_clean("checkpoint", [&] {
        check_checkpoint_budget(parse_checkpoint(reinterpret_cast<const char*>(data), size, "fuzz.ckpt"), size);
    });
    if (size < 24) return;
    std::vector<char> fixed(data, data + size);
    const uint64_t payload = size - 24;
    const uint32_t crc = crc32_update(0, fixed.data() + 24, payload);
    std::memcpy(fixed.data() + 12, &crc, 4);
    std::memcpy(fixed.data() + 16, &payload, 8);
    expect_clean("checkpoint", [&] { check_checkpoint_budget(parse_checkpoint(fixed.data(), size, "fuzz.ckpt"), size); });
}

void llmc(const uint8_t* data, size_t size) {
    expect_clean("llmc", [&] {
        const LlmcModel m = parse_llmc(reinterpret_cast<const char*>(data), size, "fuzz.bin");
        if (4 * m.params.size() > size) broken("llmc", "the parsed model holds more bytes than its file");
    });
}

void meta(const uint8_t* data, size_t size) {
    expect_clean("meta", [&] {
        const DatasetInfo info = parse_dataset_info(std::string(reinterpret_cast<const char*>(data), size), "meta.json");
        if (info.vocab <= 0 || info.vocab > kMaxVocab) broken("meta", "accepted vocab " + std::to_string(info.vocab));
    });
}

void config(const uint8_t* data, size_t size) {
    // One pair of apps serves many inputs (making them costs more than reading a file), but not
    // all: CLI11's clear() keeps each parse's option order, a list that grows by one per line
    // parsed, and over millions of inputs it outgrew the memory budget (found by this target).
    static std::unique_ptr<ConfigOptions> options;
    static int inputs = 0;
    if (inputs++ % 4096 == 0) options = std::make_unique<ConfigOptions>(add_train_options_scratch);
    expect_clean("config", [&] {
        config_text_arguments(std::string(reinterpret_cast<const char*>(data), size), "fuzz.toml", *options);
    });
}

}  // namespace

const std::vector<NamedTarget>& all_targets() {
    static const std::vector<NamedTarget> targets = {
        {"shard", shard, 8192},       {"checkpoint", checkpoint, 65536}, {"llmc", llmc, 32768},
        {"meta", meta, 4096},         {"config", config, 4096},
    };
    return targets;
}

}  // namespace diloco::fuzz
