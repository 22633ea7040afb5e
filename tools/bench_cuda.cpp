// `diloco bench KERNEL --device cuda`: each CUDA kernel checked against its CPU twin, then timed
// with CUDA events after warm-up, the median of repeats with the L2 cache flushed between them,
// next to the device's measured ceilings (a large device-to-device copy, a cuBLAS SGEMM).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/adamw_cuda.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"
#include "kernels/bf16.h"
#include "kernels/common.h"
#include "kernels/crossentropy.h"
#include "kernels/crossentropy_cuda.h"
#include "kernels/gelu.h"
#include "kernels/gelu_cuda.h"
#include "kernels/layernorm.h"
#include "kernels/layernorm_cuda.h"
#include "kernels/residual_cuda.h"
#include "kernels/matmul_cuda.h"
#include "kernels/quantize_cuda.h"
#include "kernels/rng.h"
#include "tools/bench.h"
#include "tools/bench_cudnn.h"

namespace diloco {

namespace {

void ck(cudaError_t e, const char* what) {
    DILOCO_CHECK(e == cudaSuccess, std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

struct DevBuf {
    float* p = nullptr;
    size_t n = 0;
    explicit DevBuf(const std::vector<float>& v) : n(v.size()) {
        ck(cudaMalloc(&p, std::max<size_t>(n, 1) * 4), "cudaMalloc");
        ck(cudaMemcpy(p, v.data(), n * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    explicit DevBuf(size_t count) : n(count) { ck(cudaMalloc(&p, std::max<size_t>(n, 1) * 4), "cudaMalloc"); }
    ~DevBuf() { cudaFree(p); }
    std::vector<float> get() const {
        std::vector<float> v(n);
        ck(cudaMemcpy(v.data(), p, n * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
        return v;
    }
};

std::vector<float> randn(size_t n, Rng& rng, double s = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(rng.normal() * s);
    return v;
}

double max_rel_err(const std::vector<float>& got, const std::vector<float>& want) {
    double mx = 0, scale = 1e-30;
    for (size_t i = 0; i < want.size(); i++) scale = std::max(scale, (double)std::fabs(want[i]));
    for (size_t i = 0; i < want.size(); i++) mx = std::max(mx, std::fabs((double)got[i] - want[i]) / scale);
    return mx;
}

// Median milliseconds of `fn` over repeats, after warm-up, flushing L2 before each timed call.
double time_ms(const std::function<void()>& fn, int warmup, int repeats) {
    static DevBuf flush((size_t)64 << 20);  // 256 MiB, larger than any L2
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < warmup; i++) fn();
    std::vector<float> t;
    for (int i = 0; i < repeats; i++) {
        cudaMemsetAsync(flush.p, i & 0xFF, flush.n * 4);
        cudaEventRecord(a);
        fn();
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms = 0;
        cudaEventElapsedTime(&ms, a, b);
        t.push_back(ms);
    }
    ck(cudaGetLastError(), "kernel");
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

struct Ceilings {
    double copy_gbs, sgemm_tflops, bf16_tflops;
};

void report(const char* what, double ms, double flops, double bytes, const Ceilings& c, double err, bool bf16 = false) {
    std::printf("%-28s %9.3f ms", what, ms);
    if (flops > 0 && !bf16) std::printf(" %8.2f TFLOP/s (%5.1f%% of SGEMM)", flops / ms / 1e9, 100 * flops / ms / 1e9 / c.sgemm_tflops);
    if (flops > 0 && bf16) std::printf(" %8.2f TFLOP/s (%5.1f%% of bf16 GEMM)", flops / ms / 1e9, 100 * flops / ms / 1e9 / c.bf16_tflops);
    if (bytes > 0) std::printf(" %8.1f GB/s (%5.1f%% of copy)", bytes / ms / 1e6, 100 * bytes / ms / 1e6 / c.copy_gbs);
    if (err >= 0) std::printf("  max rel err vs CPU twin %.1e", err);
    std::printf("\n");
}

struct DevBits {  // bf16 tensors as 16-bit patterns
    uint16_t* p = nullptr;
    size_t n = 0;
    explicit DevBits(const std::vector<float>& v) : n(v.size()) {
        std::vector<uint16_t> b(n);
        for (size_t i = 0; i < n; i++) b[i] = bf16_bits(v[i]);
        ck(cudaMalloc(&p, std::max<size_t>(n, 1) * 2), "cudaMalloc");
        ck(cudaMemcpy(p, b.data(), n * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    explicit DevBits(size_t count) : n(count) { ck(cudaMalloc(&p, std::max<size_t>(n, 1) * 2), "cudaMalloc"); }
    ~DevBits() { cudaFree(p); }
    std::vector<float> get() const {
        std::vector<uint16_t> b(n);
        ck(cudaMemcpy(b.data(), p, n * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
        std::vector<float> v(n);
        for (size_t i = 0; i < n; i++) v[i] = bf16_value(b[i]);
        return v;
    }
};

// cuBLAS bf16 GEMM (fp32 accumulation) at 8192^3: the tensor-core ceiling bf16 kernels are shown against.
double bf16_gemm_tflops() {
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return NAN;
    const int g = 8192;
    DevBits A((size_t)g * g), B((size_t)g * g), C((size_t)g * g);
    cudaMemset(A.p, 0, A.n * 2);
    cudaMemset(B.p, 0, B.n * 2);
    const float one = 1.0f, zero = 0.0f;
    const double ms = time_ms([&] {
        cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, g, g, g, &one, A.p, CUDA_R_16BF, g, B.p, CUDA_R_16BF, g, &zero, C.p,
                     CUDA_R_16BF, g, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }, 2, 5);
    cublasDestroy(h);
    return 2.0 * g * g * (double)g / ms / 1e9;
}

// Causal attention: variant 1 (fp32, CUDA cores) and variant 2 (bf16, tensor cores), forward and
// forward + backward, and cuDNN's fused SDPA forward; each checked against the fp32 CPU twin (for
// variant 2, the twin runs on the same bf16-rounded inputs).
void bench_attention(const BenchOptions& o, const Ceilings& c, Rng& rng) {
    const long N = (long)o.B * o.T;
    auto qkv = randn(N * 3 * o.C, rng), dy = randn(N * o.C, rng);
    const double flops = 4.0 * o.B * o.NH * (o.T * (o.T + 1) / 2.0) * (o.C / o.NH);
    std::printf("attention B=%d T=%d C=%d NH=%d hs=%d | forward flops = 4 B NH T(T+1)/2 hs (causal); backward 2.5x that\n",
                o.B, o.T, o.C, o.NH, o.C / o.NH);
    DevBuf work(attention_backward_workspace(o.B, o.T, o.NH));
    if (o.variant == 0 || o.variant == 1) {
        std::vector<float> out(N * o.C), lse(N * o.NH);
        attention_forward_cpu(out.data(), lse.data(), qkv.data(), o.B, o.T, o.C, o.NH);
        DevBuf dq(qkv), dout(N * o.C), dl(N * o.NH), ddy(dy), dg(N * 3 * o.C);
        auto fwd = [&] { attention_forward_cuda(dout.p, dl.p, dq.p, o.B, o.T, o.C, o.NH, nullptr); };
        auto both = [&] {
            fwd();
            attention_backward_cuda(dg.p, ddy.p, dq.p, dout.p, dl.p, o.B, o.T, o.C, o.NH, work.p, nullptr);
        };
        fwd();
        report("attention v1 forward", time_ms(fwd, o.warmup, o.repeats), flops, 0, c, max_rel_err(dout.get(), out));
        report("attention v1 fwd+bwd", time_ms(both, o.warmup, o.repeats), 3.5 * flops, 0, c, -1);
    }
    if (o.variant == 0 || o.variant == 2) {
        if ((o.C / o.NH != 64 && o.C / o.NH != 128) || o.C % o.NH) {
            std::printf("attention v2: not run: head size %d (variant 2 takes 64 and 128)\n", o.C / o.NH);
        } else {
            std::vector<float> rounded(qkv.size()), out(N * o.C), lse(N * o.NH);
            for (size_t i = 0; i < qkv.size(); i++) rounded[i] = round_bf16(qkv[i]);
            attention_forward_cpu(out.data(), lse.data(), rounded.data(), o.B, o.T, o.C, o.NH);
            DevBits dq(qkv), dout(N * o.C), ddy(dy), dg(N * 3 * o.C);
            DevBuf dl(N * o.NH);
            auto fwd = [&] { ck(attention_forward_bf16_cuda(dout.p, dl.p, dq.p, o.B, o.T, o.C, o.NH, nullptr), "attention v2"); };
            auto both = [&] {
                fwd();
                attention_backward_bf16_cuda(dg.p, ddy.p, dq.p, dout.p, dl.p, o.B, o.T, o.C, o.NH, work.p, nullptr);
            };
            fwd();
            report("attention v2 forward", time_ms(fwd, o.warmup, o.repeats), flops, 0, c, max_rel_err(dout.get(), out), true);
            report("attention v2 fwd+bwd", time_ms(both, o.warmup, o.repeats), 3.5 * flops, 0, c, -1, true);
            std::printf("  (v2: bf16 in and out, fp32 accumulation on tensor cores; errors of order 1e-2 are bf16's 8 bits)\n");
        }
    }
    const CudnnAttention peer = cudnn_attention_forward(
        qkv, o.B, o.T, o.C, o.NH, [&](const std::function<void()>& fn) { return time_ms(fn, o.warmup, o.repeats); });
    if (peer.available) {
        std::vector<float> out(N * o.C), lse(N * o.NH);
        attention_forward_cpu(out.data(), lse.data(), qkv.data(), o.B, o.T, o.C, o.NH);
        report("cuDNN SDPA forward (fused)", peer.ms, flops, 0, c, max_rel_err(peer.out, out), true);
        if (peer.ms_fwd_bwd > 0) report("cuDNN SDPA fwd+bwd", peer.ms_fwd_bwd, 3.5 * flops, 0, c, -1, true);
        else std::printf("cuDNN SDPA backward: not run: %s\n", peer.why_not_backward.c_str());
        std::printf("  (cuDNN: %s)\n", peer.precision.c_str());
    } else {
        std::printf("cuDNN SDPA: not run: %s\n", peer.why_not.c_str());
    }
}

// LayerNorm forward (variant 1, fp32), then mixed precision's fused residual + layernorm in bf16,
// each checked against the CPU twin and shown in GB/s against the copy bandwidth.
void bench_layernorm(const BenchOptions& o, const Ceilings& c, Rng& rng) {
    const long N = (long)o.B * o.T;
    auto x = randn(N * o.C, rng), w = randn(o.C, rng), b = randn(o.C, rng);
    std::vector<float> out(N * o.C), mean(N), rstd(N);
    layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), (int)N, o.C);
    DevBuf dx(x), dw(w), db(b), dout(N * o.C), dm(N), dr(N);
    auto run = [&] { layernorm_forward_cuda(dout.p, dm.p, dr.p, dx.p, dw.p, db.p, (int)N, o.C, nullptr); };
    run();
    std::printf("layernorm forward N=%ld C=%d | bytes = 4 (2 N C + 2 N); bf16 residual + layernorm: 2 (4 N C) + 8 N\n",
                N, o.C);
    report("layernorm forward v1", time_ms(run, o.warmup, o.repeats), 0, 4.0 * (2.0 * N * o.C + 2.0 * N), c,
           max_rel_err(dout.get(), out));
    // mixed precision's fused form: residual = x + y written, then normalised (reads x, y; writes
    // residual and out). Checked against the twin on the bf16-rounded sum.
    auto y = randn(N * o.C, rng);
    std::vector<float> sum(N * o.C), out16(N * o.C), wr(o.C), br(o.C);
    for (long i = 0; i < N * o.C; i++) sum[i] = round_bf16(round_bf16(x[i]) + round_bf16(y[i]));
    for (int i = 0; i < o.C; i++) wr[i] = round_bf16(w[i]), br[i] = round_bf16(b[i]);
    layernorm_forward_cpu(out16.data(), mean.data(), rstd.data(), sum.data(), wr.data(), br.data(), (int)N, o.C);
    DevBits hx(x), hy(y), hw(w), hb(b), hres(N * o.C), hout(N * o.C);
    auto fused = [&] {
        residual_layernorm_forward_cuda(hres.p, hout.p, dm.p, dr.p, hx.p, hy.p, hw.p, hb.p, (int)N, o.C, nullptr);
    };
    fused();
    report("residual+layernorm bf16", time_ms(fused, o.warmup, o.repeats), 0, 2.0 * 4 * N * o.C + 8.0 * N, c,
           max_rel_err(hout.get(), out16));
}

}  // namespace

// The card's ceilings the kernels are measured against: copy bandwidth and the GEMM rates.
Ceilings measure_ceilings(BlasHandle& blas) {
    Ceilings c{};
    const size_t n = (size_t)256 << 20;  // 1 GiB each way
    DevBuf src(n), dst(n);
    const double ms = time_ms([&] { cudaMemcpyAsync(dst.p, src.p, n * 4, cudaMemcpyDeviceToDevice); }, 2, 10);
    c.copy_gbs = 2.0 * n * 4 / ms / 1e6;
    const int g = 8192;
    DevBuf A((size_t)g * g), B((size_t)g * g), C((size_t)g * g);
    cudaMemset(A.p, 0, A.n * 4);
    cudaMemset(B.p, 0, B.n * 4);
    const double gms = time_ms([&] { matmul_forward_cuda(C.p, A.p, B.p, nullptr, g, g, g, blas, nullptr); }, 2, 5);
    c.sgemm_tflops = 2.0 * g * g * (double)g / gms / 1e9;
    c.bf16_tflops = bf16_gemm_tflops();
    return c;
}

void bench_gelu(const BenchOptions& o, const Ceilings& c, Rng& rng) {
    const long n = (long)o.B * o.T * 4 * o.C;
    auto x = randn(n, rng);
    std::vector<float> out(n);
    gelu_forward_cpu(out.data(), x.data(), n);
    DevBuf dx(x), dout(n);
    auto run = [&] { gelu_forward_cuda(dout.p, dx.p, n, nullptr); };
    run();
    report("gelu forward v1", time_ms(run, o.warmup, o.repeats), 0, 8.0 * n, c, max_rel_err(dout.get(), out));
}

void bench_crossentropy(const BenchOptions& o, const Ceilings& c, Rng& rng) {
    const long N = (long)o.B * o.T;
    auto logits = randn(N * o.V, rng);
    std::vector<int> tg(N);
    for (auto& t : tg) t = (int)rng.below(o.V);
    std::vector<float> losses(N), lse(N);
    crossentropy_forward_cpu(losses.data(), lse.data(), logits.data(), tg.data(), (int)N, o.V);
    DevBuf dl(logits), dloss(N), dlse(N);
    int* dt;
    ck(cudaMalloc(&dt, N * sizeof(int)), "cudaMalloc");
    cudaMemcpy(dt, tg.data(), N * sizeof(int), cudaMemcpyHostToDevice);
    auto run = [&] { crossentropy_forward_cuda(dloss.p, dlse.p, dl.p, dt, (int)N, o.V, nullptr); };
    run();
    report("crossentropy forward v1", time_ms(run, o.warmup, o.repeats), 0, 4.0 * N * o.V, c,
           max_rel_err(dloss.get(), losses));
    cudaFree(dt);
}

void bench_adamw(const BenchOptions& o, const Ceilings& c, Rng& rng) {
    const size_t n = (size_t)o.M * o.N * 8;
    auto p = randn(n, rng), g = randn(n, rng);
    std::vector<float> zeros(n, 0.0f);
    DevBuf dp(p), dg(g), dm(zeros), dv(zeros);
    AdamWSegment seg{0, n, true};
    AdamWSegmentsDevice segs;
    ck(adamw_upload_segments(segs, &seg, 1), "segments");
    const AdamWHyper h{1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    long t = 1;
    auto run = [&] { adamw_update_cuda(dp.p, dm.p, dv.p, dg.p, segs, h, t++, 1.0f, nullptr); };
    std::printf("adamw n=%zu | bytes = 4 n (4 reads + 3 writes); with the bf16 copy + 2 n\n", n);
    report("adamw v1", time_ms(run, o.warmup, o.repeats), 0, 28.0 * n, c, -1);
    DevBits copy(n);
    auto run16 = [&] { adamw_update_cuda(dp.p, dm.p, dv.p, dg.p, segs, h, t++, 1.0f, nullptr, copy.p); };
    report("adamw + bf16 copy", time_ms(run16, o.warmup, o.repeats), 0, 30.0 * n, c, -1);
    adamw_free_segments(segs);
}

void bench_quantize(const BenchOptions& o, const Ceilings& c, Rng& rng) {
    const size_t n = (size_t)o.M * o.N * 4;
    auto x = randn(n, rng);
    DevBuf dx(x), dacc(n);
    const int qb = o.quant_block;  // checked by run_bench
    std::printf("quantize n=%zu block %d | bytes: encode 8n + payload, decode-add payload + 8n | "
                "check: payload bytes equal to the CPU codec's\n", n, qb);
    for (QuantFormat f : {QuantFormat::bf16, QuantFormat::int8, QuantFormat::e2m1, QuantFormat::e3m0}) {
        const size_t pb = quant_bytes(f, n, qb);
        std::vector<uint8_t> want(pb), got(pb);
        quantize_cpu(want.data(), x.data(), n, f, qb);
        uint8_t* dp;
        ck(cudaMalloc(&dp, pb), "cudaMalloc");
        auto enc = [&] { quantize_cuda(dp, dx.p, n, f, qb, nullptr); };
        enc();
        ck(cudaMemcpy(got.data(), dp, pb, cudaMemcpyDeviceToHost), "cudaMemcpy");
        size_t differ = 0;
        for (size_t i = 0; i < pb; i++) differ += got[i] != want[i];
        const std::string name = quant_format_name(f);
        report((name + " encode").c_str(), time_ms(enc, o.warmup, o.repeats), 0, 8.0 * n + pb, c, -1);
        std::printf("  %zu of %zu payload bytes differ from the CPU codec%s\n", differ, pb, differ ? "  <-- MISMATCH" : "");
        auto dec = [&] { dequantize_add_cuda(dacc.p, dp, n, f, qb, nullptr); };
        report((name + " decode+add").c_str(), time_ms(dec, o.warmup, o.repeats), 0, 8.0 * n + pb, c, -1);
        cudaFree(dp);
    }
}

void bench_gemm(const BenchOptions& o, const Ceilings& c, BlasHandle& blas) {
    DevBuf A((size_t)o.M * o.K), B((size_t)o.N * o.K), C((size_t)o.M * o.N);
    cudaMemset(A.p, 0, A.n * 4);
    cudaMemset(B.p, 0, B.n * 4);
    auto run = [&] { matmul_forward_cuda(C.p, A.p, B.p, nullptr, o.M, o.K, o.N, blas, nullptr); };
    report(blas.precision == MatmulPrecision::tf32 ? "cuBLAS SGEMM (tf32)" : "cuBLAS SGEMM",
           time_ms(run, o.warmup, o.repeats), 2.0 * o.M * o.N * (double)o.K, 0, c, -1);
}

int run_bench_cuda(const BenchOptions& o) {
    int ndev = 0;
    DILOCO_CHECK(cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0, "bench --device cuda: no CUDA device");
    DILOCO_CHECK(o.variant == 0 || o.variant == 1 || (o.kernel == "attention" && o.variant == 2),
                 "bench --device cuda: attention has variants 1 and 2, the other kernels variant 1 (0 runs all)");
    const std::string& k = o.kernel;
    DILOCO_CHECK(k == "layernorm" || k == "attention" || k == "gelu" || k == "crossentropy" || k == "adamw" ||
                     k == "quantize" || k == "gemm",
                 "bench --device cuda: unknown kernel '" + k +
                     "' (known: gemm, layernorm, attention, adamw, gelu, crossentropy, quantize)");
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    BlasHandle blas;
    blas_create(blas);
    blas_set_precision(blas, parse_matmul_precision(o.matmul_precision));  // the ceiling too
    const Ceilings c = measure_ceilings(blas);
    std::printf("device %s (sm_%d%d) | ceilings: device copy %.0f GB/s (read + write), cuBLAS SGEMM 8192^3 %.1f TFLOP/s (%s), "
                "cuBLAS bf16 GEMM 8192^3 %.1f TFLOP/s\n",
                prop.name, prop.major, prop.minor, c.copy_gbs, c.sgemm_tflops,
                blas.precision == MatmulPrecision::tf32 ? "tf32 tensor cores" : "fp32, no TF32", c.bf16_tflops);
    Rng rng(1);
    if (k == "layernorm") bench_layernorm(o, c, rng);
    if (k == "attention") bench_attention(o, c, rng);
    if (k == "gelu") bench_gelu(o, c, rng);
    if (k == "crossentropy") bench_crossentropy(o, c, rng);
    if (k == "adamw") bench_adamw(o, c, rng);
    if (k == "quantize") bench_quantize(o, c, rng);
    if (k == "gemm") bench_gemm(o, c, blas);
    blas_destroy(blas);
    return 0;
}

}  // namespace diloco
