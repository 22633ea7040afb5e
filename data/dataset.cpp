#include "data/dataset.h"

#include <algorithm>
#include <filesystem>

#include "data/io.h"
#include "kernels/common.h"
#include "kernels/rng.h"

namespace fs = std::filesystem;

namespace diloco {

// The value of "key": "value" or "key": number in a flat JSON text, "" if absent: the first
// occurrence of the key that is followed by one of them. A linear scan: std::regex recursed once
// per character of a string value, so a meta.json with a 1 MB string overflowed the stack
// (tests/fuzz/regressions/meta/).
static std::string json_field(const std::string& text, const std::string& key) {
    const std::string quoted = "\"" + key + "\"";
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    for (size_t at = text.find(quoted); at != std::string::npos; at = text.find(quoted, at + 1)) {
        size_t i = at + quoted.size();
        while (i < text.size() && space(text[i])) i++;
        if (i >= text.size() || text[i] != ':') continue;
        i++;
        while (i < text.size() && space(text[i])) i++;
        if (i < text.size() && text[i] == '"') {
            const size_t end = text.find('"', i + 1);
            if (end != std::string::npos) return text.substr(i + 1, end - i - 1);
            continue;
        }
        size_t end = i < text.size() && text[i] == '-' ? i + 1 : i;
        const size_t first_digit = end;
        while (end < text.size() && digit(text[end])) end++;
        if (end > first_digit) return text.substr(i, end - i);
    }
    return "";
}

// Values quoted in error messages, cut so that a damaged file still gives one readable line.
static std::string shown(const std::string& value) {
    return value.size() <= 40 ? value : value.substr(0, 40) + "... (" + std::to_string(value.size()) + " bytes)";
}

DatasetInfo read_dataset_info(const std::string& dir) {
    DILOCO_CHECK(fs::is_directory(dir), "data directory " + dir + " does not exist");
    const std::string meta = dir + "/meta.json";
    if (!fs::exists(meta)) return {"gpt2", 50257, "", 50256};
    const DatasetInfo info = parse_dataset_info(read_text_file(meta), meta);
    if (info.tokenizer == "sp")
        DILOCO_CHECK(fs::is_regular_file(dir + "/" + info.model_file),
                     meta + " names the SentencePiece model " + shown(info.model_file) + ", which is missing from " + dir);
    return info;
}

// An integer field: an optional minus and at most 8 digits (quoted or not, as the scan above
// finds it); `fallback` when absent. Anything else is refused, where std::stoi threw
// std::invalid_argument past the one clear line (found by fuzzing; tests/fuzz/regressions/meta/).
static int int_field(const std::string& text, const std::string& key, int fallback, const std::string& meta) {
    const std::string v = json_field(text, key);
    if (v.empty()) return fallback;
    const size_t digits = v.size() - (v[0] == '-');
    const bool ok = digits >= 1 && digits <= 8 &&
                    std::all_of(v.end() - digits, v.end(), [](char c) { return c >= '0' && c <= '9'; });
    DILOCO_CHECK(ok, meta + ": \"" + key + "\" is not an integer: '" + shown(v) + "'");
    return std::stoi(v);
}

DatasetInfo parse_dataset_info(const std::string& text, const std::string& meta) {
    DatasetInfo info;
    info.vocab = int_field(text, "vocab", 0, meta);
    DILOCO_CHECK(info.vocab > 0, meta + " has no valid \"vocab\" field");
    info.tokenizer = json_field(text, "tokenizer");
    if (info.tokenizer.empty()) info.tokenizer = "byte";
    DILOCO_CHECK(info.tokenizer == "byte" || info.tokenizer == "sp" || info.tokenizer == "gpt2",
                 meta + " names an unknown tokenizer '" + shown(info.tokenizer) + "' (known: byte, sp, gpt2)");
    DILOCO_CHECK(info.vocab <= kMaxVocab, meta + ": vocab " + std::to_string(info.vocab) + " does not fit uint16 tokens");
    if (info.tokenizer == "sp") {
        info.model_file = json_field(text, "tokenizer_model");
        info.eos = int_field(text, "eos", -1, meta);
        DILOCO_CHECK(info.eos >= -1 && info.eos < info.vocab,
                     meta + ": \"eos\" " + std::to_string(info.eos) + " is not a token of the vocabulary of " +
                         std::to_string(info.vocab));
        DILOCO_CHECK(!info.model_file.empty() && info.model_file.find('/') == std::string::npos,
                     meta + ": \"tokenizer\": \"sp\" needs \"tokenizer_model\", a file name in the data directory");
    }
    return info;
}

TokenizerBlob read_dataset_tokenizer(const std::string& dir, const DatasetInfo& info) {
    if (info.tokenizer != "sp") return {};
    const std::string path = dir + "/" + info.model_file;
    TokenizerBlob blob{"sp", read_text_file(path)};
    if (have_sentencepiece()) {
        const int pieces = make_sp_tokenizer(blob.model, path)->vocab();
        DILOCO_CHECK(pieces == info.vocab, path + " holds " + std::to_string(pieces) + " pieces but " + dir +
                                               "/meta.json says vocab " + std::to_string(info.vocab));
    }
    return blob;
}

std::vector<std::string> list_shards(const std::string& dir, const std::string& split) {
    DILOCO_CHECK(fs::is_directory(dir), "data directory " + dir + " does not exist");
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        if (e.is_regular_file() && name.ends_with(".bin") && name.find(split) != std::string::npos)
            out.push_back(e.path().string());
    }
    std::sort(out.begin(), out.end());
    DILOCO_CHECK(!out.empty(), "no " + split + " shards (*" + split + "*.bin) in " + dir +
                                   "; run `diloco prepare` first");
    return out;
}

uint64_t split_token_count(const std::string& dir, const std::string& split, int vocab) {
    uint64_t n = 0;
    for (const std::string& path : list_shards(dir, split)) n += Shard(path, vocab).size();
    return n;
}

TokenStream::TokenStream(const std::string& dir, const std::string& split, int vocab, int T,
                         bool shuffle, uint64_t seed)
    : T_(T), shuffle_(shuffle), seed_(seed) {
    for (const auto& path : list_shards(dir, split)) {
        Shard s(path, vocab);
        const uint64_t n = s.size() > (size_t)T ? (s.size() - 1) / T : 0;
        chunk_start_.push_back(total_chunks_);
        total_chunks_ += n;
        total_tokens_ += s.size();
        shards_.push_back(std::move(s));
    }
    DILOCO_CHECK(total_chunks_ > 0, "the " + split + " split of " + dir + " holds " +
                                        std::to_string(total_tokens_) +
                                        " tokens, too few for one sequence of " +
                                        std::to_string(T + 1));
    DILOCO_CHECK(total_chunks_ < UINT32_MAX, "too many chunks in " + dir);
    part_hi_ = total_chunks_;
}

void TokenStream::restrict_to(const std::vector<TokenRange>& spans) {
    own_.clear();
    size_t s = 0;
    uint64_t shard_begin = 0;  // the split's offset of shard s's first token
    for (const TokenRange& r : spans) {
        DILOCO_CHECK(r.begin <= r.end && r.end <= total_tokens_, "a token range lies outside the split");
        for (uint64_t at = r.begin; at < r.end;) {
            if (at < shard_begin) s = 0, shard_begin = 0;  // out of order: search again from the start
            while (at >= shard_begin + shards_[s].size()) shard_begin += shards_[s++].size();
            const uint64_t n = std::min(r.end, shard_begin + shards_[s].size()) - at;
            const uint16_t* src = shards_[s].tokens() + (at - shard_begin);
            own_.insert(own_.end(), src, src + n);
            at += n;
        }
    }
    total_tokens_ = own_.size();
    total_chunks_ = own_.size() > (size_t)T_ ? (own_.size() - 1) / T_ : 0;
    DILOCO_CHECK(total_chunks_ > 0, "the documents chosen hold " + std::to_string(own_.size()) +
                                        " tokens, too few for one sequence of " + std::to_string(T_ + 1));
    chunk_start_.assign(1, 0);
    part_lo_ = 0;
    part_hi_ = total_chunks_;
    perm_epoch_ = -1;
}

void TokenStream::set_partition(int parts, int index, bool contiguous) {
    DILOCO_CHECK(parts > 0 && index >= 0 && index < parts, "bad data partition");
    parts_ = parts;
    part_ = index;
    contiguous_ = contiguous && parts > 1;
    part_lo_ = contiguous_ ? total_chunks_ * index / parts : 0;
    part_hi_ = contiguous_ ? total_chunks_ * (index + 1) / parts : total_chunks_;
    DILOCO_CHECK(part_hi_ > part_lo_, "the training split has " + std::to_string(total_chunks_) +
                                          " sequences, too few for " + std::to_string(parts) + " replicas");
    perm_epoch_ = -1;
}

uint64_t TokenStream::chunk_of_row(uint64_t row) {
    // iid: every parts-th row of the shared order; noniid: the same share of the own part
    row = contiguous_ ? origin_ / parts_ + row : origin_ + row * parts_ + part_;
    const uint64_t n = part_hi_ - part_lo_;
    const uint64_t pos = row % n;
    if (!shuffle_) return part_lo_ + pos;
    const int64_t epoch = (int64_t)(row / n);
    if (epoch != perm_epoch_) {
        perm_.resize(n);  // allocates once; later epochs reuse the storage
        for (uint64_t i = 0; i < n; i++) perm_[i] = (uint32_t)i;
        const uint64_t salt = contiguous_ ? (uint64_t)part_ << 40 : 0;
        Rng rng(seed_ * 0x9E3779B97F4A7C15ull + (uint64_t)epoch + 1 + salt);
        for (uint64_t i = n - 1; i > 0; i--) std::swap(perm_[i], perm_[rng.below(i + 1)]);
        perm_epoch_ = epoch;
    }
    return part_lo_ + perm_[pos];
}

void TokenStream::read_rows(uint64_t first_row, int nrows, int* tokens, int* targets) {
    for (int r = 0; r < nrows; r++) {
        const uint64_t chunk = chunk_of_row(first_row + r);
        const size_t s = std::upper_bound(chunk_start_.begin(), chunk_start_.end(), chunk) -
                         chunk_start_.begin() - 1;
        const uint16_t* base = own_.empty() ? shards_[s].tokens() : own_.data();
        const uint16_t* src = base + (chunk - chunk_start_[s]) * T_;
        for (int t = 0; t < T_; t++) {
            tokens[(long)r * T_ + t] = src[t];
            targets[(long)r * T_ + t] = src[t + 1];
        }
    }
}

}  // namespace diloco
