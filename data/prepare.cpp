#include "data/prepare.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string_view>

#include "data/documents.h"
#include "data/io.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "kernels/common.h"

namespace fs = std::filesystem;

namespace diloco {

static const char kSpModelFile[] = "tokenizer.model";
static const int kSpDefaultVocab = 4096;

static void write_split(const std::string& dir, const std::string& split,
                        const std::vector<uint16_t>& tokens, size_t shard_tokens) {
    size_t nshards = 0;
    for (size_t start = 0; start < tokens.size(); start += shard_tokens, nshards++) {
        char name[64];
        std::snprintf(name, sizeof name, "%s_%06zu.bin", split.c_str(), nshards);
        write_shard(dir + "/" + name, tokens.data() + start, std::min(shard_tokens, tokens.size() - start));
    }
}

// The options that make sense, checked before any input is read; returns the vocabulary size.
static int check_options(const PrepareOptions& opt) {
    DILOCO_CHECK(opt.tokenizer == "byte" || opt.tokenizer == "sp",
                 "unknown tokenizer '" + opt.tokenizer + "' (prepare supports: byte, sp; bring GPT-2 "
                 "tokens as llm.c shards)");
    DILOCO_CHECK(opt.val_fraction > 0.0 && opt.val_fraction < 1.0,
                 "--val-fraction must be in (0, 1), got " + std::to_string(opt.val_fraction));
    DILOCO_CHECK(!opt.inputs.empty(), "prepare needs at least one --input file");
    DILOCO_CHECK(opt.documents == "files" || opt.documents == "paragraphs",
                 "--documents must be files or paragraphs, got '" + opt.documents + "'");
    DILOCO_CHECK(opt.sp_model_type == "bpe" || opt.sp_model_type == "unigram",
                 "--sp-model-type must be bpe or unigram, got '" + opt.sp_model_type + "'");
    if (opt.tokenizer == "byte") {
        DILOCO_CHECK(opt.vocab_size == 0 || opt.vocab_size == 256,
                     "--vocab-size " + std::to_string(opt.vocab_size) + " needs --tokenizer sp (bytes are 256 tokens)");
        return 256;
    }
    const int vocab = opt.vocab_size ? opt.vocab_size : kSpDefaultVocab;
    check_sp_vocab(vocab);
    require_sentencepiece("--tokenizer sp");
    return vocab;
}

struct Input {
    std::string path, text;
    size_t ntrain = 0;  // bytes of the training part; the rest is validation
    std::vector<size_t> starts;  // byte offsets of its documents ("paragraphs"), else {0}
};

// Moves the validation cut forward to the first document start at or past it, when one lies
// inside the text, so that no document is split between training and validation.
static void cut_at_document(Input& in) {
    for (size_t s : in.starts)
        if (s >= in.ntrain && s < in.text.size()) {
            in.ntrain = s;
            return;
        }
}

// Reads every input and cuts it; for subwords the cut moves back to the start of a UTF-8
// character, so that neither part begins with half of one.
static std::vector<Input> read_inputs(const PrepareOptions& opt) {
    std::vector<Input> inputs;
    for (const std::string& path : opt.inputs) {
        DILOCO_CHECK(fs::is_regular_file(path), "input " + path + " does not exist or is not a file");
        Input in{path, read_text_file(path), 0, {}};
        const std::string& t = in.text;
        DILOCO_CHECK(t.size() >= 2, "input " + path + " is empty");
        const size_t nval = std::max<size_t>(1, (size_t)(t.size() * opt.val_fraction));
        in.ntrain = t.size() - nval;
        if (opt.tokenizer != "byte")
            while (in.ntrain > 1 && ((unsigned char)t[in.ntrain] & 0xC0) == 0x80) in.ntrain--;
        in.starts = opt.documents == "paragraphs" ? paragraph_starts(t) : std::vector<size_t>{0};
        cut_at_document(in);
        inputs.push_back(std::move(in));
    }
    return inputs;
}

// Trains the SentencePiece model on the training parts and writes it into the data directory.
static std::unique_ptr<Tokenizer> train_tokenizer(const PrepareOptions& opt, const std::vector<Input>& inputs,
                                                  int vocab) {
    std::vector<std::string_view> parts;
    size_t bytes = 0;
    for (const Input& in : inputs) {
        parts.push_back(std::string_view(in.text).substr(0, in.ntrain));
        bytes += in.ntrain;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::string model = train_sp_model(parts, vocab, opt.sp_model_type);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    write_file_atomic(opt.out_dir + "/" + kSpModelFile, model);
    std::fprintf(stderr, "prepare: SentencePiece %s model of %d pieces trained on %zu bytes in %.1f s -> %s/%s\n",
                 opt.sp_model_type.c_str(), vocab, bytes, secs, opt.out_dir.c_str(), kSpModelFile);
    return make_sp_tokenizer(model, opt.out_dir + "/" + kSpModelFile);
}

// Appends the tokens of text[begin, end) (and end-of-text, when the vocabulary has one) to `out`,
// each document (those of `starts` inside the range; the range's start begins one) encoded on its
// own; each document's first token goes to `doc_starts`. Returns the tokens appended.
static size_t append_tokens(std::vector<uint16_t>& out, std::vector<uint64_t>& doc_starts, const Tokenizer& tok,
                            std::string_view text, size_t begin, size_t end, const std::vector<size_t>& starts) {
    const size_t before = out.size();
    std::vector<size_t> cuts{begin};
    for (size_t s : starts)
        if (s > begin && s < end) cuts.push_back(s);
    cuts.push_back(end);
    for (size_t d = 0; d + 1 < cuts.size(); d++) {
        std::vector<int> ids = encode_long_text(tok, text.substr(cuts[d], cuts[d + 1] - cuts[d]));
        if (d + 2 == cuts.size() && tok.eos() >= 0) ids.push_back(tok.eos());
        if (ids.empty()) continue;  // nothing to route: it joins the next document
        doc_starts.push_back(out.size());
        for (int id : ids) out.push_back((uint16_t)id);
    }
    return out.size() - before;
}

static std::string meta_json(const PrepareOptions& opt, int vocab, int eos, size_t ntrain, size_t nval,
                             const std::string& inputs_json) {
    std::ostringstream meta;
    meta << "{\"tokenizer\": \"" << opt.tokenizer << "\", \"vocab\": " << vocab;
    if (opt.tokenizer == "sp")
        meta << ", \"tokenizer_model\": \"" << kSpModelFile << "\", \"sp_model_type\": \"" << opt.sp_model_type
             << "\", \"eos\": " << eos;
    meta << ", \"train_tokens\": " << ntrain << ", \"val_tokens\": " << nval << ", \"inputs\": [" << inputs_json
         << "]}\n";
    return meta.str();
}

void prepare_dataset(const PrepareOptions& opt) {
    const int vocab = check_options(opt);
    const std::vector<Input> inputs = read_inputs(opt);
    fs::create_directories(opt.out_dir);
    const std::unique_ptr<Tokenizer> tok =
        opt.tokenizer == "sp" ? train_tokenizer(opt, inputs, vocab) : make_byte_tokenizer();
    std::vector<uint16_t> train, val;
    std::vector<uint64_t> train_docs, val_docs;
    std::ostringstream inputs_json;
    for (size_t i = 0; i < inputs.size(); i++) {
        const Input& in = inputs[i];
        const std::string_view text(in.text);
        const size_t begin = train.size();
        const size_t ntrain = append_tokens(train, train_docs, *tok, text, 0, in.ntrain, in.starts);
        const size_t nval = append_tokens(val, val_docs, *tok, text, in.ntrain, text.size(), in.starts);
        inputs_json << (i ? ", " : "") << "{\"path\": \"" << fs::path(in.path).filename().string()
                    << "\", \"train_begin\": " << begin << ", \"train_tokens\": " << ntrain
                    << ", \"val_tokens\": " << nval << "}";
        std::fprintf(stderr, "prepare: %s: %zu bytes -> %zu train + %zu val tokens\n", in.path.c_str(),
                     in.text.size(), ntrain, nval);
    }
    write_split(opt.out_dir, "train", train, opt.shard_tokens);
    write_split(opt.out_dir, "val", val, opt.shard_tokens);
    write_documents(documents_path(opt.out_dir, "train"), train_docs, train.size());
    write_documents(documents_path(opt.out_dir, "val"), val_docs, val.size());
    write_file_atomic(opt.out_dir + "/meta.json", meta_json(opt, vocab, tok->eos(), train.size(), val.size(),
                                                            inputs_json.str()));
    std::fprintf(stderr, "prepare: wrote %zu train and %zu val tokens (%zu and %zu documents) to %s\n", train.size(),
                 val.size(), train_docs.size(), val_docs.size(), opt.out_dir.c_str());
}

}  // namespace diloco
