#include "data/tokenizer.h"

#include <omp.h>

#include <algorithm>

#include "kernels/common.h"

#ifdef DILOCO_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#endif

namespace diloco {

namespace {

class ByteTokenizer : public Tokenizer {
public:
    int vocab() const override { return 256; }
    int eos() const override { return -1; }
    std::vector<int> encode(std::string_view text) const override {
        std::vector<int> ids;
        ids.reserve(text.size());
        for (unsigned char c : text) ids.push_back(c);
        return ids;
    }
    std::string decode(const std::vector<int>& ids) const override {
        std::string s;
        for (int id : ids) s.push_back((char)id);
        return s;
    }
};

}  // namespace

void require_sentencepiece(const std::string& what) {
    DILOCO_CHECK(have_sentencepiece(), what + " needs SentencePiece, which this build lacks (install Debian's "
                                              "libsentencepiece-dev and rebuild)");
}

void check_sp_vocab(int vocab) {
    DILOCO_CHECK(vocab >= kSpMinVocab && vocab <= kMaxVocab,
                 "--vocab-size " + std::to_string(vocab) + " is out of range: a SentencePiece vocabulary here holds [" +
                     std::to_string(kSpMinVocab) + ", " + std::to_string(kMaxVocab) +
                     "] pieces (256 byte pieces, <unk> and <|endoftext|> at least; tokens are stored as uint16)");
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerBlob& blob, const std::string& origin) {
    if (blob.name == "byte") return make_byte_tokenizer();
    if (blob.name == "sp") return make_sp_tokenizer(blob.model, origin);
    throw Error(origin + " names an unknown tokenizer '" + blob.name + "' (known: byte, sp)");
}

std::vector<int> encode_long_text(const Tokenizer& tok, std::string_view text) {
    // pieces of about 64 KiB, each ending after a newline (or at the end of the text)
    std::vector<size_t> cuts{0};
    while (cuts.back() < text.size()) {
        size_t end = std::min(text.size(), cuts.back() + 65536);
        const size_t nl = text.find('\n', end);
        end = nl == std::string_view::npos ? text.size() : nl + 1;
        cuts.push_back(end);
    }
    const int n = (int)cuts.size() - 1;
    std::vector<std::vector<int>> parts(n);
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < n; i++) parts[i] = tok.encode(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
    std::vector<int> ids;
    for (const auto& p : parts) ids.insert(ids.end(), p.begin(), p.end());
    return ids;
}

#ifdef DILOCO_HAVE_SENTENCEPIECE

bool have_sentencepiece() { return true; }

namespace {

class SpTokenizer : public Tokenizer {
public:
    SpTokenizer(const std::string& model, const std::string& origin) {
        const auto st = sp_.LoadFromSerializedProto(model);
        DILOCO_CHECK(st.ok(), origin + " is not a valid SentencePiece model: " + st.ToString());
        DILOCO_CHECK(sp_.GetPieceSize() > 0 && sp_.GetPieceSize() <= kMaxVocab,
                     origin + ": a SentencePiece model of " + std::to_string(sp_.GetPieceSize()) +
                         " pieces does not fit uint16 tokens");
    }
    int vocab() const override { return sp_.GetPieceSize(); }
    int eos() const override { return sp_.eos_id(); }
    std::vector<int> encode(std::string_view text) const override {
        std::vector<int> ids;
        const auto st = sp_.Encode(text, &ids);
        DILOCO_CHECK(st.ok(), "SentencePiece could not encode the text: " + st.ToString());
        return ids;
    }
    std::string decode(const std::vector<int>& ids) const override {
        for (int id : ids)
            DILOCO_CHECK(id >= 0 && id < vocab(), "token " + std::to_string(id) + " is outside the SentencePiece vocabulary");
        std::string text;
        const auto st = sp_.Decode(ids, &text);
        DILOCO_CHECK(st.ok(), "SentencePiece could not decode: " + st.ToString());
        return text;
    }

private:
    sentencepiece::SentencePieceProcessor sp_;
};

// The lines of the texts, without their newlines: no learned piece then spans a line, so a
// newline is always its byte piece and long texts encode line by line (encode_long_text).
class LineIterator : public sentencepiece::SentenceIterator {
public:
    explicit LineIterator(const std::vector<std::string_view>& texts) : texts_(texts) { advance(); }
    bool done() const override { return text_ >= texts_.size(); }
    void Next() override { advance(); }
    const std::string& value() const override { return line_; }
    sentencepiece::util::Status status() const override { return {}; }

private:
    void advance() {  // the next non-empty line
        while (text_ < texts_.size()) {
            const std::string_view t = texts_[text_];
            if (pos_ >= t.size()) {
                text_++, pos_ = 0;
                continue;
            }
            size_t end = t.find('\n', pos_);
            if (end == std::string_view::npos) end = t.size();
            line_.assign(t.substr(pos_, end - pos_));
            pos_ = end + 1;
            if (!line_.empty()) return;
        }
    }
    const std::vector<std::string_view>& texts_;
    size_t text_ = 0, pos_ = 0;
    std::string line_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sp_tokenizer(const std::string& model, const std::string& origin) {
    return std::make_unique<SpTokenizer>(model, origin);
}

std::string train_sp_model(const std::vector<std::string_view>& texts, int vocab, const std::string& type) {
    DILOCO_CHECK(type == "bpe" || type == "unigram", "--sp-model-type must be bpe or unigram, got '" + type + "'");
    check_sp_vocab(vocab);
    sentencepiece::SetRandomGeneratorSeed(1);  // sampling of sentences and unigram's seeding
    LineIterator lines(texts);
    std::string model;
    const auto st = sentencepiece::SentencePieceTrainer::Train(
        {{"model_type", type},
         {"vocab_size", std::to_string(vocab)},
         {"normalization_rule_name", "identity"},  // decode(encode(text)) == text, byte for byte
         {"add_dummy_prefix", "false"},            // and decoding concatenates
         {"remove_extra_whitespaces", "false"},
         {"byte_fallback", "true"},
         {"character_coverage", "1.0"},
         {"unk_id", std::to_string(kSpUnkId)},
         {"eos_id", std::to_string(kSpEosId)},
         {"eos_piece", "<|endoftext|>"},
         {"bos_id", "-1"},
         {"pad_id", "-1"},
         {"input_sentence_size", "4000000"},  // lines sampled at most: bounds memory and time
         {"num_threads", std::to_string(std::max(1, omp_get_max_threads()))},
         {"minloglevel", "2"}},  // its progress log would drown ours; errors come back as a status
        &lines, &model);
    DILOCO_CHECK(st.ok(), "SentencePiece training failed: " + st.ToString());
    return model;
}

#else  // no SentencePiece in this build

bool have_sentencepiece() { return false; }

std::unique_ptr<Tokenizer> make_sp_tokenizer(const std::string&, const std::string& origin) {
    require_sentencepiece(origin);
    return nullptr;
}

std::string train_sp_model(const std::vector<std::string_view>&, int, const std::string&) {
    require_sentencepiece("--tokenizer sp");
    return "";
}

#endif

}  // namespace diloco
