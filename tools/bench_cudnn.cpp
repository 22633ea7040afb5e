// cuDNN's fused attention (SDPA), the peer `diloco bench attention --device cuda` times our kernel
// against: the same graphs `train --attention cudnn` runs (model/attention_cudnn.cpp), so the bench
// times what training uses. cuDNN is loaded at run time: the program starts on machines without it
// and the bench says why the peer is missing.
//
// cuDNN's flash-attention engines take bf16 or fp16 inputs only, so the peer runs on bf16 copies of
// Q, K, V with fp32 softmax statistics and accumulation. The bench prints it beside our kernels,
// with their errors against the fp32 CPU twin, and says which precision each used.
#include "tools/bench_cudnn.h"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "kernels/quantize_codec.h"
#include "model/attention_cudnn.h"

namespace diloco {

namespace {

struct DeviceBytes {  // owns a cudaMalloc'd region
    void* p = nullptr;
    explicit DeviceBytes(size_t bytes) {
        if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    }
    ~DeviceBytes() { cudaFree(p); }
};

void synchronize(const char* what) {
    if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error(std::string(what) + " failed on the device");
}

}  // namespace

CudnnAttention cudnn_attention_forward(const std::vector<float>& qkv, int B, int T, int C, int NH,
                                       const std::function<double(const std::function<void()>&)>& time_ms) {
    CudnnAttention r;
    try {
        std::shared_ptr<CudnnSdpa> sdpa = cudnn_sdpa_create(nullptr);  // on the default stream, as the timer
        std::vector<uint16_t> qkv_bf16(qkv.size());
        for (size_t i = 0; i < qkv.size(); i++) qkv_bf16[i] = codec::bf16_encode(qkv[i]);
        const size_t out_n = (size_t)B * T * C;
        DeviceBytes d_qkv(qkv.size() * 2), d_out(out_n * 2), d_stats((size_t)B * NH * T * 4);
        if (cudaMemcpy(d_qkv.p, qkv_bf16.data(), qkv.size() * 2, cudaMemcpyHostToDevice) != cudaSuccess)
            throw std::runtime_error("cudaMemcpy failed");
        const auto* in = (const uint16_t*)d_qkv.p;
        auto* out = (uint16_t*)d_out.p;
        auto* stats = (float*)d_stats.p;
        auto forward = [&] { cudnn_sdpa_forward(*sdpa, out, stats, in, B, T, C, NH); };
        forward();
        synchronize("cuDNN SDPA");
        r.ms = time_ms(forward);
        try {  // the forward and its backward together; a backward failure leaves the forward's figure
            DeviceBytes d_dout(out_n * 2), d_dqkv(3 * out_n * 2);
            cudaMemset(d_dout.p, 0x3c, out_n * 2);  // a constant dO (bf16 about 0.0115): the timing needs no data
            auto both = [&] {
                forward();
                cudnn_sdpa_backward(*sdpa, (uint16_t*)d_dqkv.p, (const uint16_t*)d_dout.p, in, out, stats, B, T, C, NH);
            };
            both();
            synchronize("cuDNN SDPA backward");
            r.ms_fwd_bwd = time_ms(both);
        } catch (const std::exception& e) {
            r.why_not_backward = e.what();
        }
        std::vector<uint16_t> out_bf16(out_n);
        cudaMemcpy(out_bf16.data(), d_out.p, out_n * 2, cudaMemcpyDeviceToHost);
        r.out.resize(out_n);
        for (size_t i = 0; i < out_n; i++) r.out[i] = codec::bf16_decode(out_bf16[i]);
        r.available = true;
        r.precision = "bf16 inputs and output, fp32 softmax and accumulation";
    } catch (const std::exception& e) {
        r.why_not = e.what();
    }
    return r;
}

}  // namespace diloco
