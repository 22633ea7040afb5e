// A GPT-2 style decoder-only transformer over the CPU kernels.
//
//   x0 = wte[tokens] + wpe[positions]
//   for each block l:  x = x + attn(ln1(x));  x = x + mlp(ln2(x))
//   logits = lnf(x) @ wte^T   (LM head tied to the token embedding)
//   loss = mean cross-entropy
//
// All parameters live in one flat fp32 buffer, block-major: the embeddings, then every tensor of
// block 0, then block 1, ..., then the final LayerNorm. A table names each tensor. Gradients and
// optimizer moments use the same layout, so a range of blocks is a contiguous byte range.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/adamw.h"

namespace diloco {

// Bounds GPTConfig::validate holds every config to, files' headers included.
constexpr int kMaxDModel = 1 << 16, kMaxLayers = 1 << 10, kMaxSeqLen = 1 << 20;

struct GPTConfig {
    int vocab = 256;
    int max_seq_len = 256;  // rows of the position embedding
    int n_layer = 4;
    int n_head = 4;
    int d_model = 128;

    bool operator==(const GPTConfig&) const = default;
    std::string describe() const;
    void validate() const;  // throws Error naming the first bad field
};

// Storage of the forward and backward on the CUDA path: fp32 throughout, or mixed precision (bf16
// weight copy and activations; fp32 master weights, gradients and optimizer state:
// model/gpt_cuda_bf16.cpp). The CPU model is fp32.
enum class Precision { fp32, bf16 };
Precision parse_precision(const std::string& name);  // "fp32" or "bf16", else an Error naming them
const char* precision_name(Precision p);
// Whether the bf16 path can run this model (head size 64 or 128, attention variant 2's); if not,
// why, in one line.
bool bf16_supports(const GPTConfig& c, std::string* why);

// Named presets; throws Error listing the known names when `name` is unknown.
GPTConfig gpt_preset(const std::string& name, int vocab);
std::vector<std::string> gpt_preset_names();

struct ParamTensor {
    std::string name;   // e.g. "h.3.attn.qkv.w"
    size_t offset;      // in floats, into the flat buffer
    std::vector<int> shape;
    int block;          // transformer block index, -1 for embeddings and the final norm
    size_t numel() const;
};

// Offsets of one block's tensors, in floats into the flat buffer.
struct BlockParams {
    size_t ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb;
};

struct GPT {
    GPTConfig config;
    std::vector<ParamTensor> tensors;
    size_t num_params = 0;
    size_t wte = 0, wpe = 0, lnfw = 0, lnfb = 0;
    std::vector<BlockParams> blocks;
    std::vector<float> params;
    std::vector<float> grads;

    // Activations, sized for (B, T) once by gpt_allocate; forward may run with fewer rows.
    int B = 0, T = 0;
    std::vector<float> acts;
    std::vector<int> tokens, targets;
    bool have_targets = false;
    int cur_B = 0, cur_T = 0;
};

// Builds the tensor table and allocates params and grads (zeroed). Validates the config.
void gpt_build(GPT& m, const GPTConfig& config);

// gpt_build without the parameter and gradient buffers: the table and the offsets only.
void gpt_layout(GPT& m, const GPTConfig& config);

// The parameter count `config` implies (= gpt_build's num_params), computed without building
// anything: what readers check a file's size against before they allocate (validates `config`).
uint64_t gpt_param_count(const GPTConfig& config);

// The first tensor of the table holding a NaN or an infinity in `flat` (params, grads or a
// moment), with the value and its element, or "" when all are finite: what a run that diverges
// names (optim/train.cpp).
std::string first_non_finite_tensor(const GPT& m, const float* flat);

// The same over the activations of the last CPU forward pass, in the order it wrote them.
std::string first_non_finite_activation(const GPT& m);

// GPT-2 initialisation: normal(0, 0.02); residual output projections (attn proj, mlp proj)
// scaled by 1/sqrt(2L); biases zero; LayerNorm gains one.
void gpt_init(GPT& m, uint64_t seed);

// Allocates activation buffers for up to B sequences of T tokens. Call before forward.
void gpt_allocate(GPT& m, int B, int T);

// Forward pass on tokens (B,T). With targets (B,T) returns the mean loss, otherwise NaN.
// B and T may be smaller than the allocated sizes.
float gpt_forward(GPT& m, const int* tokens, const int* targets, int B, int T);

// Logits of the last forward, (B,T,V) row-major. Valid until the next backward.
const float* gpt_logits(const GPT& m);

// The final hidden state (the final LayerNorm's output, what the LM head reads) of tokens (1, n),
// averaged over the n positions, in float64: the feature DiPaCo's routing can take from a dense
// model (data/routing.h). Needs gpt_allocate for at least (1, n).
std::vector<double> gpt_mean_hidden_state(GPT& m, const int* tokens, int n);

// Backward of the mean loss of the last forward (which needs targets); accumulates into grads.
// With micro_batches = K the gradient is weighted 1/K: K backward passes over K equal micro-batches
// then add up to the gradient of the mean over all their rows (gradient accumulation). The weight
// is applied as dloss = 1/(K*B*T), the very float one batch of K*B rows would use.
void gpt_backward(GPT& m, int micro_batches = 1);

void gpt_zero_grad(GPT& m);

// One AdamW segment per tensor, decay on tensors with two or more dimensions.
std::vector<AdamWSegment> gpt_adamw_segments(const GPT& m);

// Parameters that are not embeddings, the N of scaling-law fits.
size_t gpt_non_embedding_params(const GPT& m);

// Training FLOPs per token: 6 * params (every weight multiplies once forward, twice backward)
// plus attention's 6 * n_layer * T * d_model (QK^T and PV, forward and backward, over the causal
// half of the score matrix that is actually computed).
double gpt_flops_per_token(const GPTConfig& c, int T);

}  // namespace diloco
