// Weight interchange with llm.c's fp32 checkpoint format (train_gpt2.c), and through it with
// PyTorch GPT-2 code. Specified in docs/formats.md:
//   header: 256 int32: [0] magic 20240326, [1] version 3, [2] max_seq_len, [3] vocab,
//           [4] n_layer, [5] n_head, [6] d_model, [7] padded vocab (a multiple of 128)
//   then fp32 tensors, each stacked over layers: wte (Vp,C), wpe (maxT,C), ln1w (L,C), ln1b (L,C),
//   qkvw (L,3C,C), qkvb (L,3C), attprojw (L,C,C), attprojb (L,C), ln2w (L,C), ln2b (L,C),
//   fcw (L,4C,C), fcb (L,4C), fcprojw (L,C,4C), fcprojb (L,C), lnfw (C), lnfb (C)
// Our layout is block-major, llm.c's is tensor-major: converting is a real permutation.
#pragma once
#include <string>
#include <vector>

#include "model/gpt.h"

namespace diloco {

constexpr int kLlmcMagic = 20240326;
constexpr int kLlmcVersionFp32 = 3;

// llm.c pads the vocabulary to a multiple of 128; the padded rows of wte are zero.
int llmc_padded_vocab(int vocab);

// A flat buffer in our layout (params or grads) -> llm.c's tensor-major layout, padded rows zero.
std::vector<float> to_llmc_layout(const GPT& model, const float* flat);

// Writes header + to_llmc_layout(flat), atomically.
void write_llmc(const std::string& path, const GPT& model, const float* flat);

struct LlmcModel {
    GPTConfig config;
    std::vector<float> params;   // our flat layout
    bool padding_was_zero = true;  // false: non-zero padded rows were dropped
};

// Reads and validates an llm.c fp32 checkpoint (header fields, file size); throws Error.
LlmcModel read_llmc(const std::string& path);
// The same on a whole file held in memory (`path` names it in errors); the fuzz target's entry.
LlmcModel parse_llmc(const char* data, size_t bytes, const std::string& path);

}  // namespace diloco
