// CUDA emulation on the CPU: enough of CUDA C++ for the project's kernels to compile as host code
// and run with CUDA's semantics, so that tests check the kernels' own source without a GPU.
//
// Each block runs alone; each of its threads is a fiber (ucontext) with its own stack. The
// scheduler runs one fiber at a time, from one synchronisation point to the next, choosing the
// next fiber at random from a seeded generator: a missing barrier shows up as a result that
// changes with the seed. Checked, with a clear error (an exception from the launch):
//   - __syncthreads reached by only part of the block (others exited, or wait at another call);
//   - warp operations whose mask names a lane that has exited or does not exist;
//   - deadlock (every live thread waits and nothing can release it).
// Dynamic shared memory is per block and filled with 0xFF bytes (a NaN for every float) at the
// start of each block, so reading what no thread wrote shows. Static __shared__ arrays are not
// supported (they could not be poisoned per block); kernels use DILOCO_DYNAMIC_SHARED.
// Streams run synchronously, but the order CUDA promises between them is checked (runtime.cpp,
// see "streams and events" below).
//
// Never include this directly: kernels include kernels/cuda_compat.h.
#pragma once
#include <atomic>
#include <cmath>
#include <math.h>  // expf, fmaxf, ... at global scope, as CUDA device code has them
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <string>
#include <tuple>

#include "kernels/bf16.h"

// ---- language ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};

namespace diloco::emu {

// The running emulated thread's built-in variables (set by run_grid, thread_local in emu.cpp).
// Kernels read them through these functions, not as `extern thread_local` objects: GCC 12 with
// -fsanitize=null (UBSan) checks such an object's address for null with a branch on flags that
// a `lea` it folds the address into does not set, so it reports "member access within null
// pointer of type 'dim3'" whenever the flags are stale (docs/testing.md). A returned reference is
// checked with a `test` of the register instead.
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
extern thread_local char* t_dynamic_smem;

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask);
// Exchanges one 8-byte value among the lanes of `mask`; returns the value of lane `src`.
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane_of_caller, int* lane_out);
unsigned warp_ballot(unsigned mask, bool pred);
int lane_id();

// Runs `body` once per thread of every block of the grid. Throws diloco::Error on any of the
// faults listed above, and on a launch a GPU would refuse: more than 1024 threads, an empty grid,
// or more dynamic shared memory than `kernel`'s limit (48 KiB unless cudaFuncSetAttribute raised
// it, see below). `kernel` identifies the kernel function, `name` is how errors call it. The seed
// picks the thread schedule (see set_schedule_seed).
void run_grid(const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
              const std::function<void()>& body);

// Dynamic shared memory per block: a launch may ask for 48 KiB without asking first; above that
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) must raise the
// kernel's limit, which may go up to 227 KiB (sm_90's opt-in maximum; sm_80's is 163 KiB, and
// the emulator checks the larger).
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
constexpr size_t kMaxDynamicSmemOptIn = 227 * 1024;

// Makes the next launch report `error` afterwards, through cudaGetLastError and
// cudaDeviceSynchronize, as a kernel that faulted on a GPU would (tests of error reporting).
void inject_launch_error(int error);

// The schedule seed used by later launches; tests run kernels under two seeds and compare.
void set_schedule_seed(uint64_t seed);

// Tensor-core instructions and asynchronous copies (kernels/tensor_core.h wraps them; inline PTX
// under nvcc). Each checks what the hardware requires and fails the launch with a clear error:
//   mma_bf16_m16n8k16: D = A B + C, a 16x16 bf16 tile by a 16x8 one into fp32, a collective of the
//     whole warp; fragments in the PTX ISA's layouts (emu.cpp spells them out).
//   ldmatrix: `count` 8x8 matrices of 16-bit elements (1, 2 or 4), lane 8m + r giving the address of
//     row r of matrix m; a collective of the whole warp; rows 16-byte aligned in shared memory.
//   cp_async: a copy of 4, 8 or 16 bytes from global to shared memory, the bytes past src_bytes
//     zero-filled; it lands at cp_async_wait(n) once n or fewer later commit groups are pending.
void mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]);
void ldmatrix(int count, bool trans, const void* row_address, uint32_t out[4]);
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);

inline dim3 to_dim3(dim3 d) { return d; }
inline dim3 to_dim3(unsigned x) { return dim3(x); }
inline dim3 to_dim3(int x) { return dim3((unsigned)x); }
inline dim3 to_dim3(long x) { return dim3((unsigned)x); }
inline dim3 to_dim3(unsigned long x) { return dim3((unsigned)x); }

template <typename T>
uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace diloco::emu

#define threadIdx (::diloco::emu::thread_idx())
#define blockIdx (::diloco::emu::block_idx())
#define blockDim (::diloco::emu::block_dim())
#define gridDim (::diloco::emu::grid_dim())
constexpr int warpSize = 32;

#define __syncthreads() ::diloco::emu::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::diloco::emu::syncwarp(mask); }

// ---- warp operations ---------------------------------------------------------------------------
// width: lanes are split into segments of `width`; a source outside the caller's segment (or an
// out-of-range one) returns the caller's own value, as CUDA defines.
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    const int lane = ::diloco::emu::lane_id();
    const int s = (lane & ~(width - 1)) + (src & (width - 1));
    return ::diloco::emu::from_bits<T>(::diloco::emu::warp_exchange(mask, ::diloco::emu::to_bits(v), s, nullptr));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    const int lane = ::diloco::emu::lane_id();
    int s = lane ^ lane_mask;
    if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
    return ::diloco::emu::from_bits<T>(::diloco::emu::warp_exchange(mask, ::diloco::emu::to_bits(v), s, nullptr));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const int lane = ::diloco::emu::lane_id();
    int s = lane + (int)delta;
    if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
    return ::diloco::emu::from_bits<T>(::diloco::emu::warp_exchange(mask, ::diloco::emu::to_bits(v), s, nullptr));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const int lane = ::diloco::emu::lane_id();
    int s = lane - (int)delta;
    if (s < (lane & ~(width - 1))) s = lane;
    return ::diloco::emu::from_bits<T>(::diloco::emu::warp_exchange(mask, ::diloco::emu::to_bits(v), s, nullptr));
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::diloco::emu::warp_ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return ::diloco::emu::warp_ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) { return ::diloco::emu::warp_ballot(mask, pred != 0) == mask; }

// ---- atomics (blocks may one day run on several host threads: real atomics) ---------------------
template <typename T>
T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
inline int atomicMax(int* p, int v) {
    std::atomic_ref<int> a(*p);
    int old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
    std::atomic_ref<unsigned>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
inline int atomicCAS(int* p, int cmp, int v) {
    std::atomic_ref<int>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
template <typename T>
T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }

// ---- bf16 (cuda_bf16.h's names; kernels convert explicitly, no arithmetic operators) -----------
struct __nv_bfloat16 {
    unsigned short __x;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
// round to nearest even, as __float2bfloat16_rn (kernels/bf16.h, the host twins' rounding)
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{diloco::bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return diloco::bf16_value(h.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }

// ---- math intrinsics ----------------------------------------------------------------------------
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
using std::min;
using std::max;
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// ---- the runtime API subset the host wrappers use ----------------------------------------------
// (runtime.cpp; device memory is host memory)
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorMemoryAllocation = 2;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t cudaErrorInvalidDevice = 101;
constexpr cudaError_t cudaErrorInvalidResourceHandle = 400;
constexpr cudaError_t cudaErrorLaunchFailure = 719;
constexpr cudaError_t cudaErrorIllegalAddress = 700;
constexpr cudaError_t cudaErrorUnknown = 999;
constexpr cudaError_t cudaErrorIllegalState = 401;
constexpr cudaError_t cudaErrorStreamCaptureUnsupported = 900;
constexpr cudaError_t cudaErrorStreamCaptureInvalidated = 901;
constexpr cudaError_t cudaErrorStreamCaptureUnjoined = 904;
constexpr cudaError_t cudaErrorStreamCaptureIsolation = 905;
constexpr cudaError_t cudaErrorStreamCaptureImplicit = 906;
using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };

cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMallocHost(T** p, size_t bytes) { return cudaMallocHost(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t);

// An emulated node of kEmulatedDevices GPUs, so that several ranks on one machine each have "their"
// device (comm/nccl.cpp checks it); they all share the host's memory.
constexpr int kEmulatedDevices = 8;
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);  // cudaErrorInvalidDevice outside 0..kEmulatedDevices-1
cudaError_t cudaGetDevice(int* device);

// ---- streams and events --------------------------------------------------------------------------
// Work runs when it is issued, one operation after another, so results never depend on the order
// between streams. What the emulator checks is that the program asked for the order it relies on,
// which a GPU, running streams concurrently, needs. Each stream keeps a vector clock: how much of
// every stream's work is known to be finished before its next operation, learnt from
// cudaStreamWaitEvent, from the host's synchronisations (cudaStreamSynchronize,
// cudaEventSynchronize, cudaDeviceSynchronize, cudaFree, blocking cudaMemcpy) and from the legacy
// default stream's implicit sync with blocking streams. Kernels do not say which memory they touch,
// so the check is made only around collectives (emulated NCCL, kernels/emu/nccl_emu.h), the
// project's one use of other streams: a collective must be ordered after all work issued before it
// on other streams, and all later work on other streams after it; a violation throws an Error
// naming both operations. Besides (stricter than CUDA, which treats a never-recorded event as
// already complete) cudaStreamWaitEvent and cudaEventSynchronize refuse an event that was never
// recorded, as cudaEventElapsedTime does, since waiting on one orders nothing. Bad or destroyed
// handles give cudaErrorInvalidResourceHandle.
enum { cudaStreamDefault = 0, cudaStreamNonBlocking = 1 };
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);  // its time: the host clock
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);  // cudaSuccess once complete: never a wait
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// ---- graphs ----------------------------------------------------------------------------------------
// While a stream is captured, what is issued to it (kernels, asynchronous copies and sets, event
// records and waits, emulated collectives and products) is kept in issue order instead of run, and
// runs each time the instantiated graph is launched. A stream that waits on an event recorded in
// the capture joins it; cudaStreamEndCapture succeeds only when every stream that joined has
// rejoined the origin (the origin waited on an event recorded on it after its last operation),
// else cudaErrorStreamCaptureUnjoined. As on a GPU: the legacy default stream cannot be captured;
// waiting on an event recorded outside the capture is cudaErrorStreamCaptureIsolation; an
// operation on the legacy stream while a blocking stream is captured is
// cudaErrorStreamCaptureImplicit; and while the calling thread captures (global or thread-local
// mode), the calls that wait for the device or allocate (cudaMemcpy, cudaMemset, cudaMalloc,
// cudaFree, cudaMallocHost, cudaFreeHost, the synchronisations, cudaEventQuery) return
// cudaErrorStreamCaptureUnsupported. Each of these invalidates the capture, and
// cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated. Two simplifications: a
// graph launches only on the stream it was captured from (each operation replays on its own
// stream), and an event recorded in a graph is recorded at each launch as an external one would
// be (CUDA keeps it internal unless cudaEventRecordExternal), so time nothing with such events.
using cudaGraph_t = struct CUgraph_st*;
using cudaGraphExec_t = struct CUgraphExec_st*;
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal = 0, cudaStreamCaptureModeThreadLocal = 1, cudaStreamCaptureModeRelaxed = 2 };
enum cudaStreamCaptureStatus { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1, cudaStreamCaptureStatusInvalidated = 2 };
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

namespace diloco::emu {
// An operation to issue to `stream`: `run` runs it now and returns kRun, or keeps it in the
// stream's capture (to run at each launch of the graph) and returns kCaptured, or refuses it
// (an implicit synchronisation with a captured stream; the capture is invalidated) and returns
// kRefused. Every issuing call of the emulator goes through here.
enum Issue { kRun, kCaptured, kRefused };
Issue capture_or_run(cudaStream_t stream, const std::function<void()>& run);
// A kernel launch through capture_or_run: a refused launch throws an Error naming the kernel.
void launch(cudaStream_t stream, const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
            const std::function<void()>& body);
// An operation issued to `stream` (a kernel, a copy, a collective): checks its order against the
// collectives of other streams, as described above, then counts it. `what` names it in errors.
void stream_issue(cudaStream_t stream, const char* what, bool collective = false);
// How many calls so far made the host wait for the device (a blocking copy, a synchronize, a
// free), so that tests can count a training step's waits.
uint64_t host_wait_count();
// Whether [p, p + bytes) lies inside one live cudaMalloc allocation.
bool is_device_memory(const void* p, size_t bytes);
// The error a launch left pending (inject_launch_error), cleared as it is read.
int take_pending_error();
}  // namespace diloco::emu

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
// Keyed by the kernel function's address, as on a GPU; values above kMaxDynamicSmemOptIn (or
// negative) return cudaErrorInvalidValue and change nothing.
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value);
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- launch ------------------------------------------------------------------------------------
// after_launch (kernels/cuda_compat.h) is the DILOCO_CUDA_SYNC check, as in the native build.
// The arguments are evaluated at the launch, as on a GPU, and kept by value: a captured launch
// runs with them at every launch of its graph.
#define DILOCO_LAUNCH(kernel, grid, block, smem, stream, ...)                                              \
    do {                                                                                                   \
        const auto diloco_args_ = std::make_tuple(__VA_ARGS__);                                            \
        ::diloco::emu::launch((stream), reinterpret_cast<const void*>(&kernel), #kernel,                   \
                              ::diloco::emu::to_dim3(grid), ::diloco::emu::to_dim3(block), (smem),         \
                              [=] { std::apply(kernel, diloco_args_); });                                  \
        ::diloco::after_launch(#kernel);                                                                   \
    } while (0)
#define DILOCO_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::diloco::emu::t_dynamic_smem)
