#include "tools/bench.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/common.h"
#include "kernels/crossentropy.h"
#include "kernels/gelu.h"
#include "kernels/gradnorm.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "kernels/rng.h"
#include "model/gpt.h"

namespace diloco {

namespace {

std::vector<float> random_vec(size_t n, Rng& rng, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(rng.normal() * scale);
    return v;
}

// Median wall time of `repeats` calls after `warmup` untimed ones, in seconds.
double time_median(const std::function<void()>& fn, int warmup, int repeats) {
    for (int i = 0; i < warmup; i++) fn();
    std::vector<double> t;
    for (int i = 0; i < repeats; i++) {
        auto a = std::chrono::steady_clock::now();
        fn();
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

struct Ceilings {
    double gflops, copy_gbs;
};

Ceilings measure_ceilings() {
    Rng rng(7);
    const int n = 2048;
    auto a = random_vec((size_t)n * n, rng), b = random_vec((size_t)n * n, rng);
    std::vector<float> c((size_t)n * n);
    double tg = time_median([&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                    n, 0.0f, c.data(), n);
    }, 1, 5);
    const size_t bytes = 256u << 20;
    std::vector<char> src(bytes, 1), dst(bytes, 0);
    double tc = time_median([&] { std::memcpy(dst.data(), src.data(), bytes); }, 1, 5);
    return {2.0 * n * n * n / tg / 1e9, 2.0 * bytes / tc / 1e9};
}

void report(const char* what, double seconds, double flops, double bytes, const Ceilings& ceil) {
    std::printf("%-22s %10.3f ms", what, seconds * 1e3);
    if (flops > 0)
        std::printf(" %9.1f GFLOP/s (%5.1f%% of sgemm)", flops / seconds / 1e9,
                    100.0 * flops / seconds / 1e9 / ceil.gflops);
    if (bytes > 0)
        std::printf(" %8.2f GB/s (%5.1f%% of copy)", bytes / seconds / 1e9,
                    100.0 * bytes / seconds / 1e9 / ceil.copy_gbs);
    std::printf("\n");
}

}  // namespace

int run_bench(const BenchOptions& o) {
    check_quant_block(o.quant_block);  // before any measuring, on either device
#ifdef DILOCO_HAVE_CUDA
    if (o.device == "cuda") return run_bench_cuda(o);
#endif
    DILOCO_CHECK(o.device == "cpu", "bench --device " + o.device + ": this build benchmarks the CPU kernels only");
    DILOCO_CHECK(parse_matmul_precision(o.matmul_precision) == MatmulPrecision::fp32,
                 "bench --matmul-precision " + o.matmul_precision + ": the CPU products are fp32 only");
    DILOCO_CHECK(o.variant == 0, "the CPU kernels have one variant (0)");
    DILOCO_CHECK(o.B > 0 && o.T > 0 && o.C > 0 && o.NH > 0 && o.V > 0 && o.M > 0 && o.N > 0 &&
                     o.K > 0 && o.repeats > 0 && o.warmup >= 0,
                 "bench shapes and repeats must be positive");
    const Ceilings ceil = measure_ceilings();
    std::printf("device cpu | %d OpenMP threads | %s\n", omp_get_max_threads(), openblas_get_config());
    std::printf("ceilings: sgemm 2048^3 %.1f GFLOP/s | memcpy 256 MiB %.2f GB/s (read + write)\n",
                ceil.gflops, ceil.copy_gbs);
    Rng rng(1);
    const std::string& k = o.kernel;
    const long BT = (long)o.B * o.T;
    if (k == "gemm") {
        auto a = random_vec((size_t)o.M * o.K, rng), b = random_vec((size_t)o.K * o.N, rng);
        std::vector<float> c((size_t)o.M * o.N);
        double t = time_median([&] {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, o.M, o.N, o.K, 1.0f, a.data(),
                        o.K, b.data(), o.N, 0.0f, c.data(), o.N);
        }, o.warmup, o.repeats);
        std::printf("gemm M=%d N=%d K=%d | flops = 2*M*N*K\n", o.M, o.N, o.K);
        report("sgemm", t, 2.0 * o.M * o.N * o.K, 0, ceil);
    } else if (k == "layernorm") {
        auto x = random_vec(BT * o.C, rng), w = random_vec(o.C, rng), b = random_vec(o.C, rng);
        auto dout = random_vec(BT * o.C, rng);
        std::vector<float> out(BT * o.C), mean(BT), rstd(BT), dx(BT * o.C), dw(o.C), db(o.C);
        std::printf("layernorm N=B*T=%ld C=%d | bytes fwd = 4*(2*N*C + 2*N), bwd = 4*(3*N*C + 2*N)\n", BT, o.C);
        report("layernorm forward", time_median([&] {
            layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), (int)BT, o.C);
        }, o.warmup, o.repeats), 0, 4.0 * (2.0 * BT * o.C + 2.0 * BT), ceil);
        report("layernorm backward", time_median([&] {
            layernorm_backward_cpu(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                                   mean.data(), rstd.data(), (int)BT, o.C);
        }, o.warmup, o.repeats), 0, 4.0 * (3.0 * BT * o.C + 2.0 * BT), ceil);
    } else if (k == "attention") {
        DILOCO_CHECK(o.C % o.NH == 0, "--C must be a multiple of --NH");
        auto qkv = random_vec(BT * 3 * o.C, rng), dout = random_vec(BT * o.C, rng);
        std::vector<float> out(BT * o.C), lse(BT * o.NH), dqkv(BT * 3 * o.C);
        // causal: about half of the T*T scores; QK^T and PV are 2*hs flops per score each
        const double fwd = 4.0 * o.B * o.NH * (o.T * (o.T + 1) / 2.0) * (o.C / o.NH);
        std::printf("attention B=%d T=%d C=%d NH=%d | flops fwd = 4*B*NH*T(T+1)/2*hs, bwd = 2.5x fwd\n",
                    o.B, o.T, o.C, o.NH);
        report("attention forward", time_median([&] {
            attention_forward_cpu(out.data(), lse.data(), qkv.data(), o.B, o.T, o.C, o.NH);
        }, o.warmup, o.repeats), fwd, 0, ceil);
        report("attention backward", time_median([&] {
            attention_backward_cpu(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), o.B,
                                   o.T, o.C, o.NH);
        }, o.warmup, o.repeats), 2.5 * fwd, 0, ceil);
    } else if (k == "adamw") {
        const size_t n = (size_t)o.M * o.N * 8;
        auto p = random_vec(n, rng), g = random_vec(n, rng);
        std::vector<float> m(n, 0.0f), v(n, 0.0f);
        AdamWSegment seg{0, n, true};
        AdamWHyper h{1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
        long t = 1;
        std::printf("adamw n=%zu | bytes = 4*n*(4 reads + 3 writes)\n", n);
        report("adamw", time_median([&] {
            adamw_update_cpu(p.data(), m.data(), v.data(), g.data(), &seg, 1, h, t++, 1.0f);
        }, o.warmup, o.repeats), 0, 28.0 * n, ceil);
        report("global norm", time_median([&] { (void)global_norm_cpu(g.data(), n); },
                                          o.warmup, o.repeats), 0, 4.0 * n, ceil);
    } else if (k == "gelu") {
        const long n = BT * 4 * o.C;
        auto x = random_vec(n, rng), d = random_vec(n, rng);
        std::vector<float> out(n);
        std::printf("gelu n=B*T*4C=%ld | bytes fwd = 8n, bwd = 12n\n", n);
        report("gelu forward", time_median([&] { gelu_forward_cpu(out.data(), x.data(), n); },
                                           o.warmup, o.repeats), 0, 8.0 * n, ceil);
        report("gelu backward", time_median([&] { gelu_backward_cpu(out.data(), x.data(), d.data(), n); },
                                            o.warmup, o.repeats), 0, 12.0 * n, ceil);
    } else if (k == "crossentropy") {
        auto logits = random_vec(BT * o.V, rng);
        std::vector<int> tg(BT);
        for (auto& x : tg) x = (int)rng.below(o.V);
        std::vector<float> losses(BT), lse(BT), d(BT * o.V);
        std::printf("crossentropy N=%ld V=%d | bytes fwd = 4*N*V, bwd = 8*N*V\n", BT, o.V);
        report("crossentropy forward", time_median([&] {
            crossentropy_forward_cpu(losses.data(), lse.data(), logits.data(), tg.data(), (int)BT, o.V);
        }, o.warmup, o.repeats), 0, 4.0 * BT * o.V, ceil);
        report("crossentropy backward", time_median([&] {
            crossentropy_backward_cpu(d.data(), logits.data(), lse.data(), tg.data(), 1.0f / BT, (int)BT, o.V);
        }, o.warmup, o.repeats), 0, 8.0 * BT * o.V, ceil);
    } else if (k == "quantize") {
        const size_t n = (size_t)o.M * o.N * 4;
        auto x = random_vec(n, rng);
        std::vector<float> acc(n, 0.0f);
        const int qb = o.quant_block;
        std::printf("quantize n=%zu block %d | bytes: encode 4n + payload, decode-add payload + 8n\n", n, qb);
        for (QuantFormat f : {QuantFormat::bf16, QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0}) {
            std::vector<uint8_t> p(quant_bytes(f, n, qb));
            const std::string name = std::string(quant_format_name(f));
            std::printf("  %s: %.4g bits per value\n", name.c_str(), 8.0 * p.size() / n);
            report((name + " encode").c_str(), time_median([&] { quantize_cpu(p.data(), x.data(), n, f, qb); }, o.warmup, o.repeats),
                   0, 4.0 * n + p.size(), ceil);
            report((name + " decode+add").c_str(), time_median([&] { dequantize_add_cpu(acc.data(), p.data(), n, f, qb); }, o.warmup, o.repeats),
                   0, 8.0 * n + p.size(), ceil);
        }
    } else if (k == "train") {
        GPT m;
        gpt_build(m, gpt_preset(o.model, o.V));
        gpt_init(m, 1);
        gpt_allocate(m, o.B, o.T);
        std::vector<int> tok(BT), tg(BT);
        for (auto& x : tok) x = (int)rng.below(o.V);
        for (auto& x : tg) x = (int)rng.below(o.V);
        std::vector<float> am(m.num_params, 0.0f), av(m.num_params, 0.0f);
        const auto segs = gpt_adamw_segments(m);
        AdamWHyper h{1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
        long step = 1;
        const double flops = gpt_flops_per_token(m.config, o.T) * BT;
        std::printf("train step %s (%s) | %.1fM params | B=%d T=%d | flops = (6*params + 6*L*T*C) per token\n",
                    o.model.c_str(), m.config.describe().c_str(), m.num_params / 1e6, o.B, o.T);
        double t = time_median([&] {
            gpt_zero_grad(m);
            gpt_forward(m, tok.data(), tg.data(), o.B, o.T);
            gpt_backward(m);
            float s = clip_scale(global_norm_cpu(m.grads.data(), m.num_params), 1.0f);
            adamw_update_cpu(m.params.data(), am.data(), av.data(), m.grads.data(), segs.data(),
                             (int)segs.size(), h, step++, s);
        }, o.warmup, o.repeats);
        report("train step", t, flops, 0, ceil);
        std::printf("tokens/s %.1f\n", BT / t);
    } else {
        throw Error("unknown bench kernel '" + k +
                    "' (known: gemm, layernorm, attention, adamw, gelu, crossentropy, quantize, train)");
    }
    return 0;
}

}  // namespace diloco
