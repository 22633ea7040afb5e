// `diloco prepare`: text files -> token shards + meta.json (see data/dataset.h for the layout).
#pragma once
#include <string>
#include <vector>

namespace diloco {

struct PrepareOptions {
    std::vector<std::string> inputs;
    std::string out_dir;
    double val_fraction = 0.05;
    std::string tokenizer = "byte";
    size_t shard_tokens = 100'000'000;  // tokens per shard file at most, as llm.c's shards
};

// Each input contributes its last val_fraction of tokens to the validation split and the rest,
// in input order, to the training split: every corpus is represented in both, and the training
// stream keeps each corpus contiguous. Prints a summary to stderr.
void prepare_dataset(const PrepareOptions& opt);

}  // namespace diloco
