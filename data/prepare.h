// `diloco prepare`: text files -> token shards + meta.json (see data/dataset.h for the layout).
#pragma once
#include <string>
#include <vector>

namespace diloco {

struct PrepareOptions {
    std::vector<std::string> inputs;
    std::string out_dir;
    double val_fraction = 0.05;
    std::string tokenizer = "byte";  // "byte" or "sp" (SentencePiece, trained here)
    int vocab_size = 0;              // sp: pieces (0: 4096); byte: 0 or 256
    std::string sp_model_type = "bpe";  // "bpe" or "unigram"
    size_t shard_tokens = 100'000'000;  // tokens per shard file at most, as llm.c's shards
};

// Each input contributes its last val_fraction of bytes to the validation split and the rest, in
// input order, to the training split: every corpus is represented in both, and the training
// stream keeps each corpus contiguous. With "sp", a SentencePiece model is trained on the
// training parts only and written to out_dir/tokenizer.model, each part is encoded on its own,
// and <|endoftext|> ends each part. Prints a summary to stderr.
void prepare_dataset(const PrepareOptions& opt);

}  // namespace diloco
