// Tokenizers: bytes (always built) and SentencePiece subwords (when the build found
// libsentencepiece; the GPU machines lack it, so it stays optional).
//
// SentencePiece models are trained by `diloco prepare --tokenizer sp` with settings that make
// decoding exact and concatenative (docs/formats.md): no normalisation, no dummy prefix, spaces
// kept as they are, and byte fallback, so any text round-trips and decode(a + b) is
// decode(a) + decode(b) for whole characters. Fixed ids:
//   0  <unk>            (never produced: byte fallback covers every byte)
//   1  <|endoftext|>    ends every input in both splits; generate stops there
//   2 .. 257            <0x00> .. <0xFF>, the byte pieces
// Pieces learned from the text follow.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace diloco {

constexpr int kSpUnkId = 0;
constexpr int kSpEosId = 1;
// The smallest vocabulary that holds the fixed pieces above; SentencePiece itself refuses sizes
// too small for the corpus's characters, naming the size it needs.
constexpr int kSpMinVocab = 258;
// Tokens are stored as uint16 in the shards.
constexpr int kMaxVocab = 65536;

// Throws Error unless kSpMinVocab <= vocab <= kMaxVocab.
void check_sp_vocab(int vocab);

// Whether this build can train and run SentencePiece models.
bool have_sentencepiece();
// Throws Error "<what> needs SentencePiece, which this build lacks (...)" when it has none.
void require_sentencepiece(const std::string& what);

// The tokenizer a model was trained with, as it travels in data directories and checkpoints:
// its name ("byte", "sp") and, for "sp", the serialized SentencePiece model.
struct TokenizerBlob {
    std::string name;   // empty: none recorded
    std::string model;  // the model file's bytes
};

class Tokenizer {
public:
    virtual ~Tokenizer() = default;
    virtual int vocab() const = 0;
    virtual int eos() const = 0;  // -1 when the vocabulary has no end-of-text token
    virtual std::vector<int> encode(std::string_view text) const = 0;
    virtual std::string decode(const std::vector<int>& ids) const = 0;
};

std::unique_ptr<Tokenizer> make_byte_tokenizer();

// A SentencePiece model from its serialized bytes; `origin` names it in errors. Throws Error if
// the build has no SentencePiece or the bytes are not a model.
std::unique_ptr<Tokenizer> make_sp_tokenizer(const std::string& model, const std::string& origin);

// The tokenizer a blob describes ("byte" or "sp"); throws Error naming `origin` otherwise.
std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerBlob& blob, const std::string& origin);

// Trains a SentencePiece model ("bpe" or "unigram") of exactly `vocab` pieces on `texts`, with
// the fixed ids above. Returns the serialized model. The same input and thread count give the
// same model.
std::string train_sp_model(const std::vector<std::string_view>& texts, int vocab, const std::string& type);

// Encodes a long text in pieces of about 64 KiB cut after newlines, over the OpenMP threads. No
// learned piece holds a newline, so BPE gives exactly what one call gives; unigram's Viterbi may
// settle a near-tie between two segmentations differently (its path scores are float sums from
// the start of the input), which decodes to the same text.
std::vector<int> encode_long_text(const Tokenizer& tok, std::string_view text);

}  // namespace diloco
