// The cuDNN peer of the attention bench (tools/bench_cudnn.cpp).
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace diloco {

struct CudnnAttention {
    bool available = false;
    std::string why_not;    // when not available: what was missing
    std::string precision;  // what cuDNN computed in
    double ms = 0;          // median time, by the caller's timer
    double ms_fwd_bwd = 0;  // forward + SDPA backward (0 when the backward could not run)
    std::string why_not_backward;
    std::vector<float> out;  // (B, T, C), for the accuracy check
};

// Causal attention forward on qkv (B, T, 3C) by cuDNN's fused SDPA, timed with `time_ms`; then
// the forward and its backward together.
CudnnAttention cudnn_attention_forward(const std::vector<float>& qkv, int B, int T, int C, int NH,
                                       const std::function<double(const std::function<void()>&)>& time_ms);

}  // namespace diloco
