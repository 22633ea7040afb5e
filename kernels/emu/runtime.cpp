// The CUDA runtime API of the emulator (kernels/emu/emu.h): device memory is host memory, and
// streams and events keep the vector clocks with which the order between streams is checked.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "kernels/common.h"
#include "kernels/emu/emu.h"

struct CUstream_st {
    int id;  // index into State::streams; never reused, so a destroyed stream stays known
};

using VectorClock = std::vector<uint64_t>;  // entry t: operations of stream t known to be finished

namespace diloco::emu {
// A stream capture in progress: its origin stream, the streams that joined it, what they issued.
struct Capture {
    int origin;
    std::thread::id thread;
    bool thread_bound;  // global or thread-local mode: the thread's unsafe calls invalidate it
    std::string invalid;  // why it was invalidated ("" while valid)
    std::vector<std::function<void()>> ops;
    std::set<int> streams;               // the origin and the streams that joined
    std::map<int, uint64_t> rejoined_at;  // stream -> its captured operations when the origin last waited on it
};

}  // namespace diloco::emu

struct CUevent_st {
    bool recorded = false;
    double seconds = 0.0;  // host clock at the last record: work runs when it is issued
    VectorClock clock;     // the recording stream's clock at the last record
    // recorded in a capture (null otherwise): on which stream, after how many of its captured operations
    diloco::emu::Capture* captured_in = nullptr;
    int captured_stream = 0;
    uint64_t captured_at = 0;
};

// What a capture kept, in issue order; each operation calls the API again at launch, when its
// stream is no longer captured, and so runs.
struct CUgraph_st {
    std::vector<std::function<void()>> ops;
    int origin;
};
struct CUgraphExec_st {
    CUgraph_st graph;
};

namespace diloco::emu {
namespace {

void merge(VectorClock& into, const VectorClock& from) {
    if (into.size() < from.size()) into.resize(from.size(), 0);
    for (size_t i = 0; i < from.size(); i++) into[i] = std::max(into[i], from[i]);
}

uint64_t entry(const VectorClock& c, size_t i) { return i < c.size() ? c[i] : 0; }

struct Stream {
    Capture* capture = nullptr;   // the capture it belongs to, if any
    uint64_t captured_ops = 0;    // operations it issued to that capture
    bool blocking = true;          // synchronises implicitly with the legacy default stream
    uint64_t issued = 0;           // operations issued to it so far
    uint64_t last_collective = 0;  // the number of its last collective (1-based), 0 if none
    std::string collective, last_op;
    VectorClock seen;  // work of other streams known finished before its next operation
};

struct State {
    std::mutex mutex;
    std::vector<Stream> streams = std::vector<Stream>(1);  // [0]: the legacy default stream (nullptr)
    std::set<const CUstream_st*> live_streams;
    std::set<const CUevent_st*> live_events;
    VectorClock host;                        // what the host has waited for
    uint64_t host_waits = 0;                 // calls that made the host wait for the device
    std::map<const char*, size_t> memory;    // live cudaMalloc allocations: start -> bytes
    std::set<Capture*> captures;             // in progress
};

// Never destroyed: static destructors elsewhere may still free device memory.
State& state() {
    static State* s = new State;
    return *s;
}

double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// -1 for a handle that is not a live stream
int id_of(State& st, cudaStream_t s) {
    if (!s) return 0;
    return st.live_streams.count(s) ? s->id : -1;
}

std::string name_of(int id) { return id == 0 ? "the default stream" : "stream " + std::to_string(id); }

// Everything stream `id` has seen, its own operations included.
VectorClock clock_of(const State& st, int id) {
    VectorClock c = st.streams[id].seen;
    if (c.size() <= (size_t)id) c.resize(id + 1, 0);
    c[id] = st.streams[id].issued;
    return c;
}

// What an operation issued to stream `id` now starts after: whatever the host has waited for, and
// the legacy default stream's implicit synchronisation with the blocking streams (both ways).
void enter(State& st, int id) {
    merge(st.streams[id].seen, st.host);
    if (id == 0) {
        for (size_t t = 1; t < st.streams.size(); t++)
            if (st.streams[t].blocking) merge(st.streams[0].seen, clock_of(st, (int)t));
    } else if (st.streams[id].blocking) {
        merge(st.streams[id].seen, clock_of(st, 0));
    }
}

[[noreturn]] void unordered(const std::string& op, int id, const std::string& other, int t) {
    throw Error("stream order: " + op + " on " + name_of(id) + " is not ordered after " + other + " on " +
                name_of(t) + "; on a GPU they may overlap. Make " + name_of(id) +
                " wait for it (cudaStreamWaitEvent on an event recorded after it) or synchronise first");
}

void issue(State& st, int id, const char* what, bool collective) {
    enter(st, id);
    Stream& s = st.streams[id];
    for (size_t t = 0; t < st.streams.size(); t++) {
        if ((int)t == id) continue;
        const Stream& o = st.streams[t];
        const uint64_t known = entry(s.seen, t);
        if (o.last_collective > known) unordered(what, id, o.collective, (int)t);
        if (collective && o.issued > known) unordered(what, id, "earlier work (" + o.last_op + ")", (int)t);
    }
    s.issued++;
    s.last_op = what;
    if (collective) {
        s.last_collective = s.issued;
        s.collective = what;
    }
}

void host_waits_for_all(State& st) {
    st.host_waits++;
    for (size_t t = 0; t < st.streams.size(); t++) merge(st.host, clock_of(st, (int)t));
}

void invalidate(Capture* c, const std::string& why) {
    if (c->invalid.empty()) c->invalid = why;
}

// A capture that holds a blocking stream, which an operation on the legacy default stream would
// synchronise with: such an operation is refused and invalidates it (null: none).
Capture* capture_with_blocking_stream(State& st) {
    for (Capture* c : st.captures)
        for (int t : c->streams)
            if (st.streams[t].blocking) return c;
    return nullptr;
}

// A call that waits for the device or allocates, made while this thread captures: refused, and
// the capture invalidated (as on a GPU in global or thread-local mode).
bool unsafe_during_capture(State& st, const char* call) {
    bool refused = false;
    for (Capture* c : st.captures)
        if (c->thread_bound && c->thread == std::this_thread::get_id()) {
            invalidate(c, std::string(call) + " while the stream was captured");
            refused = true;
        }
    return refused;
}

}  // namespace

Issue capture_or_run(cudaStream_t stream, const std::function<void()>& run) {
    State& st = state();
    {
        std::lock_guard<std::mutex> lock(st.mutex);
        const int id = id_of(st, stream);
        if (id > 0 && st.streams[id].capture) {
            Stream& s = st.streams[id];
            s.capture->ops.push_back(run);
            s.captured_ops++;
            return kCaptured;
        }
        if (Capture* c = id == 0 ? capture_with_blocking_stream(st) : nullptr) {
            invalidate(c, "an operation on the legacy default stream, which synchronises with a captured stream");
            return kRefused;
        }
    }
    run();
    return kRun;
}

void launch(cudaStream_t stream, const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
            const std::function<void()>& body) {
    const Issue i = capture_or_run(stream, [=] {
        stream_issue(stream, name);
        run_grid(kernel, name, grid, block, dynamic_smem, body);
    });
    if (i == kRefused)
        throw Error(std::string("launch of ") + name + " on the legacy default stream while a blocking stream is "
                    "captured (cudaErrorStreamCaptureImplicit): launch it on the captured stream");
}

void stream_issue(cudaStream_t stream, const char* what, bool collective) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int id = id_of(st, stream);
    DILOCO_CHECK(id >= 0, std::string(what) + " issued to a stream that was destroyed or never created");
    issue(st, id, what, collective);
}

uint64_t host_wait_count() {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    return st.host_waits;
}

bool is_device_memory(const void* p, size_t bytes) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const char* c = static_cast<const char*>(p);
    auto it = st.memory.upper_bound(c);  // the first allocation starting after p
    if (it == st.memory.begin()) return false;
    --it;
    return c + bytes <= it->first + it->second;
}

}  // namespace diloco::emu

using namespace diloco::emu;

// The calls that wait for the device or allocate: refused while this thread captures.
static bool refused_during_capture(const char* call) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    return unsafe_during_capture(st, call);
}

// ---- memory ------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t bytes) {
    if (refused_during_capture("cudaMalloc")) return cudaErrorStreamCaptureUnsupported;
    *p = std::malloc(bytes ? bytes : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    std::memset(*p, 0xFF, bytes);  // fresh device memory is garbage on a GPU too
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    st.memory[static_cast<const char*>(*p)] = bytes;
    return cudaSuccess;
}
// As on a GPU, cudaFree waits for the device first.
cudaError_t cudaFree(void* p) {
    if (!p) return cudaSuccess;
    if (refused_during_capture("cudaFree")) return cudaErrorStreamCaptureUnsupported;
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!st.memory.erase(static_cast<const char*>(p))) return cudaErrorInvalidValue;
    host_waits_for_all(st);
    std::free(p);
    return cudaSuccess;
}
// Page-locked host memory: plain host memory here, poisoned as cudaMalloc's; cudaFreeHost waits
// for the device as cudaFree does.
cudaError_t cudaMallocHost(void** p, size_t bytes) {
    if (refused_during_capture("cudaMallocHost")) return cudaErrorStreamCaptureUnsupported;
    *p = std::malloc(bytes ? bytes : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    std::memset(*p, 0xFF, bytes);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) {
    if (!p) return cudaSuccess;
    if (refused_during_capture("cudaFreeHost")) return cudaErrorStreamCaptureUnsupported;
    State& st = state();
    {
        std::lock_guard<std::mutex> lock(st.mutex);
        host_waits_for_all(st);
    }
    std::free(p);
    return cudaSuccess;
}
// A blocking copy is an operation on the default stream that the host then waits for.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
    if (refused_during_capture("cudaMemcpy")) return cudaErrorStreamCaptureUnsupported;
    diloco::emu::stream_issue(nullptr, "cudaMemcpy");
    std::memmove(dst, src, bytes);
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    st.host_waits++;
    merge(st.host, clock_of(st, 0));
    return cudaSuccess;
}
// A captured copy reads its source when the graph runs, as a graph's copy node does.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t stream) {
    const Issue i = capture_or_run(stream, [=] {
        diloco::emu::stream_issue(stream, "cudaMemcpyAsync");
        std::memmove(dst, src, bytes);
    });
    return i == kRefused ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    if (refused_during_capture("cudaMemset")) return cudaErrorStreamCaptureUnsupported;
    return cudaMemsetAsync(p, value, bytes, nullptr);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
    const Issue i = capture_or_run(stream, [=] {
        diloco::emu::stream_issue(stream, "cudaMemset");
        std::memset(p, value, bytes);
    });
    return i == kRefused ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}

// ---- synchronisation and errors ------------------------------------------------------------------
// Kernels report their faults by throwing from the launch; an injected error is returned once.
cudaError_t cudaDeviceSynchronize() {
    State& st = state();
    {
        std::lock_guard<std::mutex> lock(st.mutex);
        if (unsafe_during_capture(st, "cudaDeviceSynchronize")) return cudaErrorStreamCaptureUnsupported;
        host_waits_for_all(st);
    }
    return diloco::emu::take_pending_error();
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    State& st = state();
    {
        std::lock_guard<std::mutex> lock(st.mutex);
        const int id = id_of(st, stream);
        if (id < 0) return cudaErrorInvalidResourceHandle;
        if (unsafe_during_capture(st, "cudaStreamSynchronize")) return cudaErrorStreamCaptureUnsupported;
        st.host_waits++;
        merge(st.host, clock_of(st, id));
    }
    return diloco::emu::take_pending_error();
}
cudaError_t cudaGetLastError() { return diloco::emu::take_pending_error(); }
const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {  // CUDA's own strings
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorUnknown: return "unknown error";
        default: return "emulated CUDA error";
    }
}

// ---- devices -------------------------------------------------------------------------------------
static thread_local int t_device = 0;
cudaError_t cudaGetDeviceCount(int* count) {
    *count = kEmulatedDevices;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= kEmulatedDevices) return cudaErrorInvalidDevice;
    t_device = device;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
    *device = t_device;
    return cudaSuccess;
}

// ---- streams -------------------------------------------------------------------------------------
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
    if (flags != cudaStreamDefault && flags != cudaStreamNonBlocking) return cudaErrorInvalidValue;
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    *stream = new CUstream_st{(int)st.streams.size()};
    st.streams.emplace_back();
    st.streams.back().blocking = flags == cudaStreamDefault;
    st.live_streams.insert(*stream);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!stream || !st.live_streams.erase(stream)) return cudaErrorInvalidResourceHandle;
    delete stream;  // its clock stays: work issued to it still has to be waited for
    return cudaSuccess;
}

// ---- events --------------------------------------------------------------------------------------
cudaError_t cudaEventCreate(cudaEvent_t* event) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    *event = new CUevent_st;
    st.live_events.insert(*event);
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!st.live_events.erase(event)) return cudaErrorInvalidResourceHandle;
    delete event;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int id = id_of(st, stream);
    if (!st.live_events.count(event) || id < 0) return cudaErrorInvalidResourceHandle;
    if (Capture* c = st.streams[id].capture) {  // kept for the graph; marks where the stream stands in it
        c->ops.push_back([=] { cudaEventRecord(event, stream); });
        event->captured_in = c;
        event->captured_stream = id;
        event->captured_at = st.streams[id].captured_ops;
        return cudaSuccess;
    }
    if (Capture* c = id == 0 ? capture_with_blocking_stream(st) : nullptr) {
        invalidate(c, "cudaEventRecord on the legacy default stream");
        return cudaErrorStreamCaptureImplicit;
    }
    event->captured_in = nullptr;
    enter(st, id);
    event->clock = clock_of(st, id);
    event->recorded = true;
    event->seconds = now_seconds();
    return cudaSuccess;
}
// A live event that was recorded at least once, or null.
static cudaEvent_t recorded(State& st, cudaEvent_t e) {
    return st.live_events.count(e) && e->recorded ? e : nullptr;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int id = id_of(st, stream);
    if (id < 0 || !st.live_events.count(event)) return cudaErrorInvalidResourceHandle;
    if (flags != 0) return cudaErrorInvalidValue;
    Capture* c = event->captured_in && st.captures.count(event->captured_in) ? event->captured_in : nullptr;
    Stream& s = st.streams[id];
    if (c) {  // an event of a capture: the waiting stream joins it, or (the origin) takes the other back
        if (s.capture && s.capture != c) return cudaErrorStreamCaptureIsolation;
        if (!s.capture) {
            if (id == 0) return cudaErrorStreamCaptureUnsupported;
            s.capture = c;
            s.captured_ops = 0;
            c->streams.insert(id);
        }
        c->ops.push_back([=] { cudaStreamWaitEvent(stream, event, flags); });
        if (id == c->origin) c->rejoined_at[event->captured_stream] = event->captured_at;
        return cudaSuccess;
    }
    if (s.capture) {
        invalidate(s.capture, "a wait on an event recorded outside the capture");
        return cudaErrorStreamCaptureIsolation;
    }
    if (!recorded(st, event)) return cudaErrorInvalidResourceHandle;
    merge(s.seen, event->clock);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!recorded(st, event)) return cudaErrorInvalidResourceHandle;
    if (unsafe_during_capture(st, "cudaEventSynchronize")) return cudaErrorStreamCaptureUnsupported;
    st.host_waits++;
    merge(st.host, event->clock);
    return cudaSuccess;
}
// Work runs as it is issued, so a recorded event has always completed: the host learns so without
// waiting. (As on a GPU, an event never recorded counts as complete.)
cudaError_t cudaEventQuery(cudaEvent_t event) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!st.live_events.count(event)) return cudaErrorInvalidResourceHandle;
    if (unsafe_during_capture(st, "cudaEventQuery")) return cudaErrorStreamCaptureUnsupported;
    if (event->recorded) merge(st.host, event->clock);
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (!ms) return cudaErrorInvalidValue;
    if (!recorded(st, start) || !recorded(st, end)) return cudaErrorInvalidResourceHandle;
    *ms = (float)((end->seconds - start->seconds) * 1e3);
    return cudaSuccess;
}

// ---- graphs --------------------------------------------------------------------------------------
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int id = id_of(st, stream);
    if (id < 0) return cudaErrorInvalidResourceHandle;
    if (id == 0) return cudaErrorStreamCaptureUnsupported;  // the legacy stream cannot be captured
    if (st.streams[id].capture) return cudaErrorIllegalState;
    Capture* c = new Capture{id, std::this_thread::get_id(), mode != cudaStreamCaptureModeRelaxed, "", {}, {id}, {}};
    st.captures.insert(c);
    st.streams[id].capture = c;
    st.streams[id].captured_ops = 0;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int id = id_of(st, stream);
    if (id < 0) return cudaErrorInvalidResourceHandle;
    Capture* c = st.streams[id].capture;
    if (!c || c->origin != id) return cudaErrorIllegalState;
    std::string unjoined;
    for (int t : c->streams) {
        if (t == id) continue;
        auto it = c->rejoined_at.find(t);
        if (it == c->rejoined_at.end() || it->second != st.streams[t].captured_ops) unjoined += " " + name_of(t);
    }
    for (int t : c->streams) st.streams[t].capture = nullptr;
    st.captures.erase(c);
    cudaError_t e = cudaSuccess;
    if (!c->invalid.empty())
        e = cudaErrorStreamCaptureInvalidated;
    else if (!unjoined.empty())
        e = cudaErrorStreamCaptureUnjoined;
    *graph = e == cudaSuccess ? new CUgraph_st{std::move(c->ops), id} : nullptr;
    delete c;
    return e;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    const int id = id_of(st, stream);
    if (id < 0) return cudaErrorInvalidResourceHandle;
    const Capture* c = st.streams[id].capture;
    *status = !c ? cudaStreamCaptureStatusNone : c->invalid.empty() ? cudaStreamCaptureStatusActive
                                                                    : cudaStreamCaptureStatusInvalidated;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    if (!graph) return cudaErrorInvalidValue;
    *exec = new CUgraphExec_st{*graph};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    if (!exec) return cudaErrorInvalidValue;
    {
        State& st = state();
        std::lock_guard<std::mutex> lock(st.mutex);
        const int id = id_of(st, stream);
        if (id < 0) return cudaErrorInvalidResourceHandle;
        if (st.streams[id].capture) return cudaErrorStreamCaptureUnsupported;  // no graphs within graphs here
        if (id != exec->graph.origin) return cudaErrorInvalidValue;  // the emulator's simplification (emu.h)
    }
    for (const std::function<void()>& op : exec->graph.ops) op();
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}
