#include "optim/step_graph.h"

#include <cstdio>
#include <exception>

#include "kernels/common.h"

namespace diloco {

StepGraph::~StepGraph() { release(); }

void StepGraph::release() {
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
    shape_.clear();
}

// Thread-local mode: the calls that would wait for the device or allocate fail during the capture
// (and spoil it) instead of silently breaking the graph, while other threads (MPI's progress
// thread) go on as they like.
bool StepGraph::capture(cudaStream_t stream, const std::function<void()>& issue) {
    std::string why;
    cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        why = std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e);
    } else {
        capturing_ = true;
        try {
            issue();
        } catch (const std::exception& ex) {
            why = ex.what();
        }
        capturing_ = false;
        cudaGraph_t graph = nullptr;
        e = cudaStreamEndCapture(stream, &graph);
        if (why.empty() && e != cudaSuccess) why = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e);
        if (why.empty() && (e = cudaGraphInstantiate(&exec_, graph, 0)) != cudaSuccess) {
            why = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e);
            exec_ = nullptr;
        }
        if (graph) cudaGraphDestroy(graph);
    }
    if (why.empty()) return true;
    (void)cudaGetLastError();  // a failed capture leaves its error behind; the steps go on without it
    std::fprintf(stderr, "train: the inner step could not be captured as a CUDA Graph (%s); its kernels are "
                         "launched one by one from here on\n", why.c_str());
    enabled_ = false;
    return false;
}

void StepGraph::run(cudaStream_t stream, const std::string& shape, const std::function<void()>& issue) {
    if (enabled_ && shape != shape_) {
        release();
        if (capture(stream, issue)) shape_ = shape;
    }
    if (!enabled_ || !exec_) {
        issue();
        direct_++;
        return;
    }
    const cudaError_t e = cudaGraphLaunch(exec_, stream);
    DILOCO_CHECK(e == cudaSuccess, std::string("CUDA: cudaGraphLaunch: ") + cudaGetErrorString(e));
    launches_++;
}

}  // namespace diloco
