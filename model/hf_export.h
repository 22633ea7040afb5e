// Export to the Hugging Face ecosystem: a directory that transformers' GPT2LMHeadModel loads with
// from_pretrained(DIR). Specified in docs/formats.md (Hugging Face export):
//   config.json         GPT2Config: sizes, activation "gelu_new" (GELU, tanh approximation),
//                       layer_norm_epsilon 1e-5, tie_word_embeddings true, dropout 0
//   model.safetensors   the weights in fp32 under transformers' names. GPT-2's linear layers are
//                       Conv1D there, stored (in, out): our (out, in) matrices are transposed. The
//                       LM head is tied to wte and not stored.
#pragma once
#include <string>

#include "model/gpt.h"

namespace diloco {

// Writes DIR/config.json and DIR/model.safetensors for `model` with weights `params` (our flat
// layout). DIR must not exist or be empty (nothing is overwritten); each file is written
// atomically. Throws Error.
void write_hf(const std::string& dir, const GPT& model, const float* params);

}  // namespace diloco
