// The fiber scheduler behind kernels/emu/emu.h.
#include "kernels/emu/emu.h"

#undef _FORTIFY_SOURCE  // its longjmp check refuses jumps between stacks, which fibers are
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "kernels/common.h"
#include "kernels/rng.h"

namespace diloco::emu {

thread_local dim3 t_threadIdx, t_blockIdx, t_blockDim, t_gridDim;
thread_local char* t_dynamic_smem = nullptr;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;

enum class State { Runnable, AtBarrier, AtWarp, Done };

// A thread slot: a stack with a fiber living on it. The fiber runs the kernel body once per block
// and then parks at the top of its loop, so later blocks start it again with a plain jump.
struct Slot {
    void* stack = nullptr;
    ucontext_t ctx;  // used only to start the fiber on its stack the first time
    jmp_buf park;
    bool parked = false;
};

struct Fiber {
    jmp_buf jump;  // switches use _setjmp/_longjmp: no signal mask saved, no system call
    bool started = false;
    Slot* slot = nullptr;
    dim3 tid;
    int linear = 0;
    State state = State::Runnable;
    const char* barrier_file = nullptr;
    int barrier_line = 0;
};

struct Warp {
    uint64_t slot[32];
    uint64_t snapshot[2][32];
    unsigned arrived = 0;
    unsigned mask = 0;
    unsigned gen = 0;
};

struct Scheduler {
    ucontext_t main_ctx;
    jmp_buf main_jump;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<char> smem;
    const std::function<void()>* body = nullptr;
    Fiber* current = nullptr;
    int live = 0, nthreads = 0;
    std::string error;       // set by a fiber; the launch throws it
    Rng rng{1};
    std::vector<int> runnable;
};

thread_local Scheduler* t_sched = nullptr;
uint64_t g_seed = 1;

// cudaFuncSetAttribute's dynamic shared memory limits, per kernel function
std::mutex g_attr_mutex;
std::map<const void*, size_t> g_smem_limit;

// an error the next launch leaves behind (inject_launch_error), then the one pending
std::atomic<int> g_injected{0}, g_pending{0};

size_t smem_limit(const void* kernel) {
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    auto it = g_smem_limit.find(kernel);
    return it == g_smem_limit.end() ? kDefaultDynamicSmem : it->second;
}

// The launch checks a GPU makes before running anything.
void check_launch(const void* kernel, const char* name, dim3 grid, size_t nthreads, size_t dynamic_smem) {
    const std::string k = std::string("launch of ") + name;
    DILOCO_CHECK(nthreads > 0 && nthreads <= kMaxThreads,
                 k + " with " + std::to_string(nthreads) + " threads per block (1..1024 allowed)");
    DILOCO_CHECK(grid.x > 0 && grid.y > 0 && grid.z > 0, k + " with an empty grid");
    const size_t limit = smem_limit(kernel);
    DILOCO_CHECK(dynamic_smem <= limit,
                 k + " asks for " + std::to_string(dynamic_smem) + " bytes of dynamic shared memory, over its limit of " +
                     std::to_string(limit) + " bytes" +
                     (limit == kDefaultDynamicSmem
                          ? " (the default; cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, "
                            "bytes) raises it, to " + std::to_string(kMaxDynamicSmemOptIn) + " at most)"
                          : " (set by cudaFuncSetAttribute; " + std::to_string(kMaxDynamicSmemOptIn) + " at most)"));
}

// Control passes between the scheduler and the fibers only through these two.
[[noreturn]] void to_scheduler(Scheduler& s) { _longjmp(s.main_jump, 1); }

void trampoline();

void run_fiber(Scheduler& s, Fiber& f) {
    if (_setjmp(s.main_jump)) return;  // the fiber yielded, waits, or ended
    if (f.started) _longjmp(f.jump, 1);
    f.started = true;
    if (f.slot->parked) {
        f.slot->parked = false;
        _longjmp(f.slot->park, 1);
    }
    getcontext(&f.slot->ctx);  // a fresh fiber on this slot's stack
    f.slot->ctx.uc_stack.ss_sp = f.slot->stack;
    f.slot->ctx.uc_stack.ss_size = kStackBytes;
    f.slot->ctx.uc_link = nullptr;
    makecontext(&f.slot->ctx, trampoline, 0);
    setcontext(&f.slot->ctx);
}

void fail(const std::string& msg) {
    Scheduler& s = *t_sched;
    if (s.error.empty()) s.error = msg;
    // back to the scheduler for good: this fiber is abandoned, its stack reused by the next launch
    s.current->state = State::Done;
    to_scheduler(s);
    std::abort();  // never resumed
}

// Gives control back to the scheduler; the fiber resumes here when it is picked again.
void yield() {
    Scheduler& s = *t_sched;
    if (!_setjmp(s.current->jump)) to_scheduler(s);
    if (!s.error.empty()) fail(s.error);
}

void trampoline() {
    for (;;) {
        Scheduler& s = *t_sched;
        (*s.body)();
        Fiber& f = *s.current;
        f.state = State::Done;
        s.live--;
        if (!_setjmp(f.slot->park)) {
            f.slot->parked = true;
            to_scheduler(s);
        }
        // resumed here for the next block
    }
}

std::string where(const Fiber& f) {
    return "thread (" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) + "," +
           std::to_string(f.tid.z) + ") of block (" + std::to_string(t_blockIdx.x) + "," +
           std::to_string(t_blockIdx.y) + "," + std::to_string(t_blockIdx.z) + ")";
}

void run_block(Scheduler& s) {
    const size_t n = s.fibers.size();
    for (auto& w : s.warps) w = Warp{};
    std::fill(s.smem.begin(), s.smem.end(), (char)0xFF);  // poison: NaN floats, -1 ints
    t_dynamic_smem = s.smem.data();
    for (size_t i = 0; i < n; i++) {
        s.fibers[i].state = State::Runnable;
        s.fibers[i].started = false;
    }
    s.live = (int)n;
    // the runnable fibers, kept incrementally: a fiber leaves when it waits at a barrier or ends
    std::vector<int>& runnable = s.runnable;
    runnable.resize(n);
    for (size_t i = 0; i < n; i++) runnable[i] = (int)i;
    while (s.live > 0 && s.error.empty()) {
        if (runnable.empty()) {
            // nobody can run: either every live thread waits at one barrier, or this is a fault
            for (auto& f : s.fibers)
                if (f.state == State::AtWarp)
                    throw Error("deadlock in a warp operation: " + where(f) + " waits for lanes that never "
                                "arrive (they wait at a barrier, or at another warp operation)");
            const Fiber* first = nullptr;
            for (auto& f : s.fibers)
                if (f.state == State::AtBarrier) {
                    if (!first) first = &f;
                    if (f.barrier_line != first->barrier_line || f.barrier_file != first->barrier_file)
                        throw Error("divergent __syncthreads: " + where(*first) + " waits at line " +
                                    std::to_string(first->barrier_line) + ", " + where(f) + " at line " +
                                    std::to_string(f.barrier_line));
                }
            if (s.live != (int)n)
                throw Error("divergent __syncthreads: " + std::to_string(n - s.live) + " of " +
                            std::to_string(n) + " threads exited while the others wait at line " +
                            std::to_string(first->barrier_line) + " (" + where(*first) + ")");
            for (size_t i = 0; i < n; i++) {
                s.fibers[i].state = State::Runnable;
                runnable.push_back((int)i);
            }
            continue;
        }
        const size_t k = s.rng.below(runnable.size());
        Fiber& f = s.fibers[runnable[k]];
        s.current = &f;
        t_threadIdx = f.tid;
        const int id = runnable[k];
        run_fiber(s, f);
        // the fiber may have woken others (appended); find it again before removing it
        if (f.state != State::Runnable) {
            size_t at = k < runnable.size() && runnable[k] == id ? k : std::find(runnable.begin(), runnable.end(), id) - runnable.begin();
            runnable[at] = runnable.back();
            runnable.pop_back();
        }
    }
    if (!s.error.empty()) throw Error(s.error);
}

// After a fault, fibers stopped mid-body cannot be resumed: their slots start fresh next time.
void unpark_abandoned(Scheduler& s) {
    for (auto& f : s.fibers)
        if (f.state != State::Done || !f.slot->parked) f.slot->parked = false;
}

}  // namespace

void set_schedule_seed(uint64_t seed) { g_seed = seed; }

int lane_id() { return t_sched->current->linear % 32; }

void syncthreads(const char* file, int line) {
    Scheduler& s = *t_sched;
    s.current->state = State::AtBarrier;
    s.current->barrier_file = file;
    s.current->barrier_line = line;
    yield();
}

static Warp& my_warp(int* lane) {
    Scheduler& s = *t_sched;
    *lane = s.current->linear % 32;
    return s.warps[s.current->linear / 32];
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src, int* lane_out) {
    Scheduler& s = *t_sched;
    int lane;
    Warp& w = my_warp(&lane);
    if (lane_out) *lane_out = lane;
    if (!(mask >> lane & 1)) fail("warp operation called by lane " + std::to_string(lane) + " outside its own mask, " + where(*s.current));
    const int warp_base = s.current->linear / 32 * 32;
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1) {
            const int t = warp_base + l;
            if (t >= s.nthreads || s.fibers[t].state == State::Done)
                fail("warp operation with mask 0x" + [&] { char b[16]; std::snprintf(b, sizeof b, "%08x", mask); return std::string(b); }() +
                     " names lane " + std::to_string(l) + (t >= s.nthreads ? ", which does not exist" : ", which has exited") +
                     " (" + where(*s.current) + ")");
        }
    if (w.arrived == 0) w.mask = mask;
    else if (w.mask != mask) fail("lanes of one warp use different masks in the same warp operation (" + where(*s.current) + ")");
    const unsigned my_gen = w.gen;
    w.slot[lane] = value;
    w.arrived |= 1u << lane;
    if ((w.arrived & mask) == mask) {  // the last to arrive publishes the values, wakes the others
        std::memcpy(w.snapshot[my_gen & 1], w.slot, sizeof w.slot);
        w.arrived = 0;
        w.gen++;
        for (int l = 0; l < 32; l++)
            if ((mask >> l & 1) && l != lane) {
                Fiber& other = s.fibers[warp_base + l];
                other.state = State::Runnable;
                s.runnable.push_back(warp_base + l);
            }
    } else {
        s.current->state = State::AtWarp;
        yield();
    }
    if (src < 0 || src >= 32 || !(mask >> src & 1)) return value;  // CUDA: own value for outside lanes
    return w.snapshot[my_gen & 1][src];
}

void syncwarp(unsigned mask) { (void)warp_exchange(mask, 0, -1, nullptr); }

unsigned warp_ballot(unsigned mask, bool pred) {
    Scheduler& s = *t_sched;
    int lane;
    Warp& w = my_warp(&lane);
    const unsigned gen = w.gen;
    (void)warp_exchange(mask, pred ? 1 : 0, -1, nullptr);
    unsigned out = 0;
    for (int l = 0; l < 32; l++)
        if ((mask >> l & 1) && w.snapshot[gen & 1][l]) out |= 1u << l;
    (void)s;
    return out;
}

void inject_launch_error(int error) { g_injected = error; }

void run_grid(const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
              const std::function<void()>& body) {
    const size_t nthreads = (size_t)block.x * block.y * block.z;
    check_launch(kernel, name, grid, nthreads, dynamic_smem);
    static thread_local Scheduler sched;
    static thread_local std::vector<Slot> slots(kMaxThreads);
    Scheduler& s = sched;
    t_sched = &s;
    for (size_t i = 0; i < nthreads; i++)
        if (!slots[i].stack) {
            void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            DILOCO_CHECK(p != MAP_FAILED, "cannot map a fiber stack");
            slots[i].stack = p;
        }
    s.fibers.assign(nthreads, Fiber{});
    s.warps.assign((nthreads + 31) / 32, Warp{});
    s.smem.assign(dynamic_smem, 0);
    s.nthreads = (int)nthreads;
    s.body = &body;
    s.error.clear();
    s.rng.reseed(g_seed);
    for (unsigned z = 0, i = 0; z < block.z; z++)
        for (unsigned y = 0; y < block.y; y++)
            for (unsigned x = 0; x < block.x; x++, i++) {
                s.fibers[i].tid = dim3(x, y, z);
                s.fibers[i].linear = (int)i;
                s.fibers[i].slot = &slots[i];
            }
    t_blockDim = block;
    t_gridDim = grid;
    // blocks in a seeded random order too: nothing may depend on the order of blocks
    const size_t nblocks = (size_t)grid.x * grid.y * grid.z;
    std::vector<size_t> order(nblocks);
    for (size_t i = 0; i < nblocks; i++) order[i] = i;
    for (size_t i = nblocks; i > 1; i--) std::swap(order[i - 1], order[s.rng.below(i)]);
    for (size_t b : order) {
        t_blockIdx = dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / ((size_t)grid.x * grid.y)));
        try {
            run_block(s);
        } catch (...) {
            unpark_abandoned(s);
            t_sched = nullptr;
            throw;
        }
    }
    t_sched = nullptr;
    if (const int e = g_injected.exchange(0)) g_pending = e;
}

int take_pending_error() { return g_pending.exchange(0); }

}  // namespace diloco::emu

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
    using namespace diloco::emu;
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || (size_t)value > kMaxDynamicSmemOptIn)
        return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    g_smem_limit[kernel] = (size_t)value;
    return cudaSuccess;
}
