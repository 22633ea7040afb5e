// `diloco bench KERNEL`: run one kernel in isolation, time it, print achieved rates.
#pragma once
#include <string>

#include "kernels/quantize.h"

namespace diloco {

struct BenchOptions {
    std::string kernel;
    int variant = 0;
    std::string device = "cpu";
    // shapes: kernels read the ones they need
    int B = 8, T = 256, C = 768, NH = 12, V = 50257;
    int M = 2048, N = 2048, K = 2048;
    // the cuBLAS products (--device cuda): "fp32" or "tf32" (kernels/matmul.h)
    std::string matmul_precision = "fp32";
    // values per fp32 scale of the block formats ("quantize"; kernels/quantize.h)
    int quant_block = kQuantBlockDefault;
    // whole-model step ("train")
    std::string model = "gpt2-small";
    int repeats = 10, warmup = 2;
};

int run_bench(const BenchOptions& opt);
// The CUDA side (tools/bench_cuda.cpp), in CUDA builds.
int run_bench_cuda(const BenchOptions& opt);

}  // namespace diloco
