// Named ranges on a profiler's timeline (NVTX), so that the phases of a training step show in
// Nsight Systems and Nsight Compute under the names metrics.jsonl uses for them. Free when no
// profiler is attached; compiled out where the build has no CUDA toolkit headers.
#pragma once
#ifdef DILOCO_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

namespace diloco {

class TraceRange {
public:
    explicit TraceRange(const char* name) {
#ifdef DILOCO_HAVE_NVTX
        nvtxRangePushA(name);
#else
        (void)name;
#endif
    }
    ~TraceRange() {
#ifdef DILOCO_HAVE_NVTX
        nvtxRangePop();
#endif
    }
    TraceRange(const TraceRange&) = delete;
    TraceRange& operator=(const TraceRange&) = delete;
};

}  // namespace diloco
