// cuDNN's SDPA through cudnn-frontend, the header-only C++ layer over cuDNN's graph API, with
// dynamic loading. Compiled for real only in a native CUDA build that found the frontend's
// headers (CMakeLists.txt); everywhere else the same functions say why it is missing.
#include "model/attention_cudnn.h"

#include <cmath>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "kernels/common.h"

#if defined(DILOCO_HAVE_CUDNN_FRONTEND) && !defined(DILOCO_EMULATE)
#include <dlfcn.h>

#include <cudnn_frontend.h>

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's dynamic-loading hook: libcudnn, opened below
}
#endif

namespace diloco {

#if !defined(DILOCO_HAVE_CUDNN_FRONTEND) || defined(DILOCO_EMULATE)

struct CudnnSdpa {};

static const char* kNoCudnn =
#ifdef DILOCO_EMULATE
    "--attention cudnn needs a native CUDA build: the emulator runs our kernels only";
#else
    "--attention cudnn: this build has no cudnn-frontend headers (tools/setup.sh installs them into .venv; "
    "rebuild after)";
#endif

std::shared_ptr<CudnnSdpa> cudnn_sdpa_create(cudaStream_t) { throw Error(kNoCudnn); }
void cudnn_sdpa_forward(CudnnSdpa&, uint16_t*, float*, const uint16_t*, int, int, int, int) { throw Error(kNoCudnn); }
void cudnn_sdpa_backward(CudnnSdpa&, uint16_t*, const uint16_t*, const uint16_t*, const uint16_t*, const float*, int, int,
                         int, int) {
    throw Error(kNoCudnn);
}

#else

namespace fe = cudnn_frontend;

namespace {

// Opens libcudnn.so.9 for the frontend's dynamic loading, once; throws listing what was tried.
void cudnn_load() {
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

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV };

void check(fe::error_t e, const char* step) {
    DILOCO_CHECK(!e.is_bad(), std::string("cuDNN SDPA: ") + step + ": " + e.get_message());
}

struct Layout {  // (B, NH, T, hs) views of our buffers
    std::vector<int64_t> dims, qkv_stride, out_stride, stat_dims, stat_stride;
    Layout(int B, int T, int C, int NH) {
        const int64_t hs = C / NH;
        dims = {B, NH, T, hs};
        qkv_stride = {(int64_t)T * 3 * C, hs, 3 * (int64_t)C, 1};
        out_stride = {(int64_t)T * C, hs, (int64_t)C, 1};
        stat_dims = {B, NH, T, 1};
        stat_stride = {(int64_t)NH * T, T, 1, 1};
    }
};

std::shared_ptr<fe::graph::Graph> new_graph() {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
}

std::shared_ptr<fe::graph::Tensor_attributes> tensor(fe::graph::Graph& g, const char* name, int64_t uid,
                                                     const std::vector<int64_t>& dims, const std::vector<int64_t>& stride) {
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(stride));
}

void finish(fe::graph::Graph& g, cudnnHandle_t handle) {
    check(g.validate(), "validate");
    check(g.build_operation_graph(handle), "build_operation_graph");
    check(g.create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
    check(g.check_support(handle), "check_support");
    check(g.build_plans(handle), "build_plans");
}

std::shared_ptr<fe::graph::Graph> forward_graph(cudnnHandle_t handle, const Layout& L, float scale) {
    auto g = new_graph();
    auto Q = tensor(*g, "Q", kQ, L.dims, L.qkv_stride), K = tensor(*g, "K", kK, L.dims, L.qkv_stride);
    auto V = tensor(*g, "V", kV, L.dims, L.qkv_stride);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("attention_forward")
                    .set_generate_stats(true)  // training: the backward needs them
                    .set_causal_mask(true)
                    .set_attn_scale(scale);
    auto [O, stats] = g->sdpa(Q, K, V, opts);
    O->set_output(true).set_uid(kO).set_dim(L.dims).set_stride(L.out_stride);
    stats->set_output(true).set_uid(kStats).set_dim(L.stat_dims).set_stride(L.stat_stride)
        .set_data_type(fe::DataType_t::FLOAT);
    finish(*g, handle);
    return g;
}

std::shared_ptr<fe::graph::Graph> backward_graph(cudnnHandle_t handle, const Layout& L, float scale) {
    auto g = new_graph();
    auto Q = tensor(*g, "Q", kQ, L.dims, L.qkv_stride), K = tensor(*g, "K", kK, L.dims, L.qkv_stride);
    auto V = tensor(*g, "V", kV, L.dims, L.qkv_stride);
    auto O = tensor(*g, "O", kO, L.dims, L.out_stride), dO = tensor(*g, "dO", kdO, L.dims, L.out_stride);
    auto S = tensor(*g, "Stats", kStats, L.stat_dims, L.stat_stride);
    S->set_data_type(fe::DataType_t::FLOAT);
    auto opts = fe::graph::SDPA_backward_attributes()
                    .set_name("attention_backward")
                    .set_causal_mask(true)
                    .set_attn_scale(scale);
    auto [dQ, dK, dV] = g->sdpa_backward(Q, K, V, O, dO, S, opts);
    dQ->set_output(true).set_uid(kdQ).set_dim(L.dims).set_stride(L.qkv_stride);
    dK->set_output(true).set_uid(kdK).set_dim(L.dims).set_stride(L.qkv_stride);
    dV->set_output(true).set_uid(kdV).set_dim(L.dims).set_stride(L.qkv_stride);
    finish(*g, handle);
    return g;
}

}  // namespace

struct CudnnSdpa {
    cudnnHandle_t handle = nullptr;
    struct Graphs {
        std::shared_ptr<fe::graph::Graph> forward, backward;
    };
    std::map<std::tuple<int, int, int, int>, Graphs> by_shape;  // (B, T, C, NH)
    void* workspace = nullptr;
    int64_t workspace_bytes = 0;

    ~CudnnSdpa() {
        if (workspace) cudaFree(workspace);
        if (handle) fe::detail::destroy_handle(handle);
    }

    // The shape's graphs, built on first use (a few hundred ms each: not inside the timed steps
    // after the first), with the workspace grown to the larger of their needs.
    Graphs& graphs(int B, int T, int C, int NH) {
        auto it = by_shape.find({B, T, C, NH});
        if (it != by_shape.end()) return it->second;
        const Layout L(B, T, C, NH);
        const float scale = 1.0f / std::sqrt((float)(C / NH));
        Graphs gs{forward_graph(handle, L, scale), backward_graph(handle, L, scale)};
        int64_t fwd = 0, bwd = 0;
        check(gs.forward->get_workspace_size(fwd), "get_workspace_size");
        check(gs.backward->get_workspace_size(bwd), "get_workspace_size");
        const int64_t need = std::max(fwd, bwd);
        if (need > workspace_bytes) {
            if (workspace) cudaFree(workspace);  // waits for the device: nothing may still read it
            workspace = nullptr;
            DILOCO_CHECK(cudaMalloc(&workspace, (size_t)need) == cudaSuccess, "cuDNN SDPA: cannot allocate its workspace");
            workspace_bytes = need;
        }
        return by_shape.emplace(std::make_tuple(B, T, C, NH), std::move(gs)).first->second;
    }
};

std::shared_ptr<CudnnSdpa> cudnn_sdpa_create(cudaStream_t stream) {
    try {
        cudnn_load();
    } catch (const std::runtime_error& e) {
        throw Error(std::string("--attention cudnn: ") + e.what());
    }
    auto s = std::make_shared<CudnnSdpa>();
    DILOCO_CHECK(fe::detail::create_handle(&s->handle) == CUDNN_STATUS_SUCCESS, "--attention cudnn: cudnnCreate failed");
    DILOCO_CHECK(fe::detail::set_stream(s->handle, stream) == CUDNN_STATUS_SUCCESS, "--attention cudnn: cudnnSetStream failed");
    return s;
}

void cudnn_sdpa_forward(CudnnSdpa& s, uint16_t* out, float* stats, const uint16_t* qkv, int B, int T, int C, int NH) {
    auto& g = s.graphs(B, T, C, NH);
    uint16_t* base = const_cast<uint16_t*>(qkv);  // the variant pack takes void*; cuDNN only reads it
    std::unordered_map<int64_t, void*> pack = {{kQ, base}, {kK, base + C}, {kV, base + 2 * C}, {kO, out}, {kStats, stats}};
    check(g.forward->execute(s.handle, pack, s.workspace), "forward execute");
}

void cudnn_sdpa_backward(CudnnSdpa& s, uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv, const uint16_t* out,
                         const float* stats, int B, int T, int C, int NH) {
    auto& g = s.graphs(B, T, C, NH);
    auto in = [](const void* p) { return const_cast<void*>(p); };  // read only, as above
    const uint16_t* q = qkv;
    std::unordered_map<int64_t, void*> pack = {
        {kQ, in(q)},       {kK, in(q + C)}, {kV, in(q + 2 * C)}, {kO, in(out)},       {kStats, in(stats)},
        {kdO, in(dout)},   {kdQ, dqkv},     {kdK, dqkv + C},     {kdV, dqkv + 2 * C}};
    check(g.backward->execute(s.handle, pack, s.workspace), "backward execute");
}

#endif

}  // namespace diloco
