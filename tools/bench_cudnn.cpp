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

#ifdef DILOCO_HAVE_CUDNN_FRONTEND
#include <dlfcn.h>

#include <cudnn_frontend.h>

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's dynamic-loading hook: libcudnn, opened below
}
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

// libcudnn.so.9 from $DILOCO_CUDNN_LIB, the loader's path, or the toolkit's own folders.
void open_cudnn() {
    if (fe::cudnn_dlhandle) return;
    std::vector<std::string> tries;
    if (const char* env = std::getenv("DILOCO_CUDNN_LIB")) tries.push_back(env);
    for (const char* p : {"libcudnn.so.9", "/usr/local/cuda/lib64/libcudnn.so.9", "/usr/local/cuda/lib/libcudnn.so.9",
                          "/usr/lib/x86_64-linux-gnu/libcudnn.so.9"})
        tries.push_back(p);
    std::string errors;
    for (const auto& t : tries) {
        if ((fe::cudnn_dlhandle = dlopen(t.c_str(), RTLD_NOW | RTLD_GLOBAL))) return;
        const char* e = dlerror();
        errors += "\n    " + (e ? std::string(e) : t + ": not loadable");
    }
    throw std::runtime_error("cuDNN 9 not found (set DILOCO_CUDNN_LIB to libcudnn.so.9):" + errors);
}

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

}  // namespace

CudnnAttention cudnn_attention_forward(const std::vector<float>& qkv, int B, int T, int C, int NH,
                                       const std::function<double(const std::function<void()>&)>& time_ms) {
    CudnnAttention r;
    cudnnHandle_t handle = nullptr;
    try {
        open_cudnn();
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
