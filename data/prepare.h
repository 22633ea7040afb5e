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
    std::string documents = "files";   // what a document is: "files" (each input) or "paragraphs"
};

// Each input contributes its last val_fraction of bytes to the validation split and the rest, in
// input order, to the training split: every corpus is represented in both, and the training
// stream keeps each corpus contiguous. With "sp", a SentencePiece model is trained on the
// training parts only and written to out_dir/tokenizer.model, each part is encoded on its own,
// and <|endoftext|> ends each part. Prints a summary to stderr.
//
// Document boundaries go to DIR/train.docs and DIR/val.docs (data/documents.h). With "files" each
// part of an input is one document; with "paragraphs" a document is a run of lines up to and
// including the empty lines that end it, the validation cut moves forward to the next document's
// start (so that no document is split between the two splits, unless one document holds the whole
// cut), and each document is encoded on its own.
void prepare_dataset(const PrepareOptions& opt);

}  // namespace diloco
