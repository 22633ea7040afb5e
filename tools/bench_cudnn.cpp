// cuDNN's fused attention (SDPA), the peer `diloco bench attention --device cuda` times our kernel
// against. Built through cudnn-frontend, the header-only C++ layer over cuDNN's graph API
// (installed by tools/setup.sh from PyPI's nvidia-cudnn-frontend), with dynamic loading: the
// program starts on machines without cuDNN and the bench says why the peer is missing.
//
// cuDNN's flash-attention engines take bf16 or fp16 inputs only, so the peer runs on bf16 copies of
// Q, K, V with fp32 softmax statistics and accumulation; our kernel is fp32 throughout. The bench
// prints both, with their errors against the fp32 CPU twin, and says which precision each used.
#include "tools/bench_cudnn.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <memory>
#include <unordered_map>

#include <cuda_runtime.h>

#include "kernels/quantize_codec.h"

#include "model/attention_cudnn.h"

#ifdef DILOCO_HAVE_CUDNN_FRONTEND
#include <cudnn_frontend.h>  // cuDNN itself is opened by cudnn_load (model/attention_cudnn.cpp)
#endif

namespace diloco {

#ifndef DILOCO_HAVE_CUDNN_FRONTEND

CudnnAttention cudnn_attention_forward(const std::vector<float>&, int, int, int, int,
                                       const std::function<double(const std::function<void()>&)>&) {
    CudnnAttention r;
    r.why_not = "this build has no cudnn-frontend headers (tools/setup.sh installs them into .venv)";
    return r;
}

#else

namespace fe = cudnn_frontend;

namespace {

struct DeviceBytes {  // owns a cudaMalloc'd region
    void* p = nullptr;
    explicit DeviceBytes(size_t bytes) {
        if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    }
    ~DeviceBytes() { cudaFree(p); }
};

void check(fe::error_t e, const char* step) {
    if (e.is_bad()) throw std::runtime_error(std::string(step) + ": " + e.get_message());
}

// cuDNN's SDPA backward on the forward's outputs (O and the log-sum-exp): dQ, dK, dV into a
// (B, T, 3C) buffer laid out as qkv. Times the forward and the backward together into r.ms_fwd_bwd;
// on failure leaves it 0 and says why in r.why_not_backward.
void time_backward(cudnnHandle_t handle, CudnnAttention& r, void* qkv, void* out, void* stats, int B, int T, int C, int NH,
                   const std::function<void()>& forward, const std::function<double(const std::function<void()>&)>& time_ms) {
    try {
        const int64_t hs = C / NH;
        const std::vector<int64_t> dims = {B, NH, T, hs}, stat_dims = {B, NH, T, 1};
        const std::vector<int64_t> in_stride = {(int64_t)T * 3 * C, hs, 3 * (int64_t)C, 1};
        const std::vector<int64_t> out_stride = {(int64_t)T * C, hs, (int64_t)C, 1};
        const std::vector<int64_t> stat_stride = {(int64_t)NH * T, T, 1, 1};
        auto graph = std::make_shared<fe::graph::Graph>();
        graph->set_io_data_type(fe::DataType_t::BFLOAT16)
            .set_intermediate_data_type(fe::DataType_t::FLOAT)
            .set_compute_data_type(fe::DataType_t::FLOAT);
        auto tensor = [&](const char* name, int64_t uid, const std::vector<int64_t>& d, const std::vector<int64_t>& st) {
            return graph->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(d).set_stride(st));
        };
        auto Q = tensor("Q", 1, dims, in_stride), K = tensor("K", 2, dims, in_stride), V = tensor("V", 3, dims, in_stride);
        auto O = tensor("O", 4, dims, out_stride), dO = tensor("dO", 6, dims, out_stride);
        auto S = tensor("Stats", 5, stat_dims, stat_stride);
        S->set_data_type(fe::DataType_t::FLOAT);
        auto opts = fe::graph::SDPA_backward_attributes()
                        .set_name("flash_attention_backward")
                        .set_causal_mask(true)
                        .set_attn_scale(1.0f / std::sqrt((float)hs));
        auto [dQ, dK, dV] = graph->sdpa_backward(Q, K, V, O, dO, S, opts);
        dQ->set_output(true).set_uid(7).set_dim(dims).set_stride(in_stride);
        dK->set_output(true).set_uid(8).set_dim(dims).set_stride(in_stride);
        dV->set_output(true).set_uid(9).set_dim(dims).set_stride(in_stride);
        check(graph->validate(), "backward validate");
        check(graph->build_operation_graph(handle), "backward build_operation_graph");
        check(graph->create_execution_plans({fe::HeurMode_t::A}), "backward create_execution_plans");
        check(graph->check_support(handle), "backward check_support");
        check(graph->build_plans(handle), "backward build_plans");
        int64_t ws_bytes = 0;
        check(graph->get_workspace_size(ws_bytes), "backward get_workspace_size");
        const size_t n_out = (size_t)B * T * C;
        DeviceBytes d_dout(n_out * 2), d_dqkv(3 * n_out * 2), d_ws((size_t)ws_bytes);
        cudaMemset(d_dout.p, 0x3c, n_out * 2);  // a constant dO (bf16 about 0.0115): the timing needs no data
        uint16_t* base = (uint16_t*)qkv;
        uint16_t* g = (uint16_t*)d_dqkv.p;
        std::unordered_map<int64_t, void*> pack = {{1, base},     {2, base + C}, {3, base + 2 * C}, {4, out},
                                                   {5, stats},    {6, d_dout.p}, {7, g},            {8, g + C},
                                                   {9, g + 2 * C}};
        auto both = [&] {
            forward();
            check(graph->execute(handle, pack, d_ws.p), "backward execute");
        };
        both();
        if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cuDNN SDPA backward failed on the device");
        r.ms_fwd_bwd = time_ms(both);
    } catch (const std::exception& e) {
        r.why_not_backward = e.what();
    }
}

}  // namespace

CudnnAttention cudnn_attention_forward(const std::vector<float>& qkv, int B, int T, int C, int NH,
                                       const std::function<double(const std::function<void()>&)>& time_ms) {
    CudnnAttention r;
    cudnnHandle_t handle = nullptr;
    try {
        cudnn_load();
        if (fe::detail::create_handle(&handle) != CUDNN_STATUS_SUCCESS) throw std::runtime_error("cudnnCreate failed");
        const int64_t hs = C / NH;
        // qkv (B, T, 3C): per token [q | k | v], head h at column h*hs of each. cuDNN reads the
        // same memory as (B, NH, T, hs) tensors through strides, so no transpose is needed.
        const std::vector<int64_t> dims = {B, NH, T, hs};
        const std::vector<int64_t> in_stride = {(int64_t)T * 3 * C, hs, 3 * (int64_t)C, 1};
        const std::vector<int64_t> out_stride = {(int64_t)T * C, hs, (int64_t)C, 1};

        auto graph = std::make_shared<fe::graph::Graph>();
        graph->set_io_data_type(fe::DataType_t::BFLOAT16)
            .set_intermediate_data_type(fe::DataType_t::FLOAT)
            .set_compute_data_type(fe::DataType_t::FLOAT);
        auto tensor = [&](const char* name, int64_t uid) {
            return graph->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(in_stride));
        };
        auto Q = tensor("Q", 1), K = tensor("K", 2), V = tensor("V", 3);
        auto opts = fe::graph::SDPA_attributes()
                        .set_name("flash_attention")
                        .set_generate_stats(true)  // the log-sum-exp, as our kernel saves it
                        .set_causal_mask(true)
                        .set_attn_scale(1.0f / std::sqrt((float)hs));
        auto [O, stats] = graph->sdpa(Q, K, V, opts);
        O->set_output(true).set_uid(4).set_dim(dims).set_stride(out_stride);
        stats->set_output(true).set_uid(5).set_data_type(fe::DataType_t::FLOAT);

        check(graph->validate(), "validate");
        check(graph->build_operation_graph(handle), "build_operation_graph");
        check(graph->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
        check(graph->check_support(handle), "check_support");
        check(graph->build_plans(handle), "build_plans");
        int64_t ws_bytes = 0;
        check(graph->get_workspace_size(ws_bytes), "get_workspace_size");

        std::vector<uint16_t> qkv_bf16(qkv.size());
        for (size_t i = 0; i < qkv.size(); i++) qkv_bf16[i] = codec::bf16_encode(qkv[i]);
        const size_t out_n = (size_t)B * T * C;
        DeviceBytes d_qkv(qkv.size() * 2), d_out(out_n * 2), d_stats((size_t)B * NH * T * 4), d_ws((size_t)ws_bytes);
        if (cudaMemcpy(d_qkv.p, qkv_bf16.data(), qkv.size() * 2, cudaMemcpyHostToDevice) != cudaSuccess)
            throw std::runtime_error("cudaMemcpy failed");
        uint16_t* base = (uint16_t*)d_qkv.p;
        std::unordered_map<int64_t, void*> pack = {
            {1, base}, {2, base + C}, {3, base + 2 * C}, {4, d_out.p}, {5, d_stats.p}};
        auto run = [&] { check(graph->execute(handle, pack, d_ws.p), "execute"); };
        run();
        if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("cuDNN SDPA failed on the device");
        r.ms = time_ms(run);
        time_backward(handle, r, d_qkv.p, d_out.p, d_stats.p, B, T, C, NH, run, time_ms);
        std::vector<uint16_t> out_bf16(out_n);
        cudaMemcpy(out_bf16.data(), d_out.p, out_n * 2, cudaMemcpyDeviceToHost);
        r.out.resize(out_n);
        for (size_t i = 0; i < out_n; i++) r.out[i] = codec::bf16_decode(out_bf16[i]);
        r.available = true;
        r.precision = "bf16 inputs and output, fp32 softmax and accumulation";
    } catch (const std::exception& e) {
        r.why_not = e.what();
    }
    if (handle) fe::detail::destroy_handle(handle);
    return r;
}

#endif

}  // namespace diloco
