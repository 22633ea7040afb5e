// The inner step as a CUDA Graph: captured once, then launched whole at every step, so that the
// host's cost of a step is one launch rather than a few hundred. A step can be captured because
// its launches are the same at every step: its rows, learning rate and bias corrections are read
// from device buffers filled before it (gpt_cuda_stage_rows, stage_step_scalars_cuda), and its
// figures go to one place that is copied out after it (gpt_cuda_keep_step_figures).
#pragma once
#include <functional>
#include <string>

#include "kernels/cuda_compat.h"

namespace diloco {

class StepGraph {
public:
    // enabled: --cuda-graph auto (else every step is issued launch by launch)
    explicit StepGraph(bool enabled) : enabled_(enabled) {}
    ~StepGraph();
    StepGraph(const StepGraph&) = delete;
    StepGraph& operator=(const StepGraph&) = delete;

    // Enqueues the step that `issue` enqueues on `stream`: launches the graph captured for `shape`
    // (what the step's launches depend on: its sizes and device buffers), capturing it first when
    // there is none for that shape. Without graphs, or once a capture failed (a one-line notice
    // says why; the run goes on without graphs), calls issue() itself.
    void run(cudaStream_t stream, const std::string& shape, const std::function<void()>& issue);
    // Whether issue() is being captured now (rather than run).
    bool capturing() const { return capturing_; }
    long launches() const { return launches_; }  // steps launched as a graph so far
    long direct() const { return direct_; }      // steps issued kernel by kernel

private:
    bool capture(cudaStream_t stream, const std::function<void()>& issue);
    void release();

    bool enabled_;
    bool capturing_ = false;
    long launches_ = 0, direct_ = 0;
    std::string shape_;                // of the graph held
    cudaGraphExec_t exec_ = nullptr;
};

}  // namespace diloco
