// `diloco generate`: sampling from a checkpoint with a key/value cache (model/kv_cache.h).
#pragma once
#include <cstdint>
#include <string>

namespace diloco {

struct GenerateOptions {
    std::string ckpt, prompt = "\n";
    int tokens = 256;
    float temperature = 0.8f;
    uint64_t seed = 1;
    std::string tokenizer_model;  // a SentencePiece model file; overrides the checkpoint's
    // DiPaCo: a data directory with routes.idx; the prompt is routed down its tree and its path,
    // assembled from RUNDIR/modules/ (beside the checkpoint's RUNDIR/ckpt/), replaces the weights
    std::string route_data;
    // With route_data: "" takes the router's path; "prompt", or a number of predictions N, takes
    // the path whose model gives the prompt (its first N + 1 tokens) the lowest loss
    std::string best_prefix;
};

// Returns the continuation of the prompt as text: decoded by --tokenizer-model, else by the
// tokenizer the checkpoint carries, else as bytes for a vocabulary of 256, else as token ids
// ("id id ... "). Stops early at end-of-text when the tokenizer has one. Prints the generation
// speed to stderr.
std::string run_generate(const GenerateOptions& opt);

}  // namespace diloco
