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
const dim3& thread_idx() { return t_threadIdx; }
const dim3& block_idx() { return t_blockIdx; }
const dim3& block_dim() { return t_blockDim; }
const dim3& grid_dim() { return t_gridDim; }
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

// A cp.async copy issued but not yet landed: its source is read at issue; its destination is
// written when a cp_async_wait covers its group, or earlier, at random (seeded), whenever the
// issuing thread reaches a synchronisation point, as a GPU may land it any time after issue. A
// kernel that reads a destination before waiting reads, for some of its copies, the poison that
// was there; one that copies into a buffer other threads still read (a missing barrier before the
// next tile) shows as a result that changes with the schedule.
struct AsyncCopy {
    char* dst;
    int bytes;
    int group;  // the commit group: the number of commits before it
    unsigned char data[16];
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
    std::vector<AsyncCopy> copies;  // cp.async in flight, oldest first
    int commits = 0;
};

constexpr int kWarpBytes = 64;  // the most one lane contributes to a warp collective

struct Warp {
    unsigned char slot[32][kWarpBytes];
    unsigned char snapshot[2][32][kWarpBytes];
    unsigned mma_gen = ~0u;  // the collective whose product mma_d holds: computed once per warp
    float mma_d[16][8];
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

// Writes the copies of all committed groups but the `keep` most recent, as cp.async.wait_group
// does (copies not yet committed stay in flight).
void land_copies(Fiber& f, int keep) {
    size_t n = 0;
    for (; n < f.copies.size() && f.copies[n].group < f.commits - keep; n++)
        std::memcpy(f.copies[n].dst, f.copies[n].data, (size_t)f.copies[n].bytes);
    f.copies.erase(f.copies.begin(), f.copies.begin() + (long)n);
}

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
// At a synchronisation point: each copy in flight lands now with probability 1/2.
void land_some_copies(Scheduler& s, Fiber& f) {
    size_t kept = 0;
    for (auto& c : f.copies) {
        if (s.rng.below(2)) std::memcpy(c.dst, c.data, (size_t)c.bytes);
        else f.copies[kept++] = c;
    }
    f.copies.resize(kept);
}

void yield() {
    Scheduler& s = *t_sched;
    if (!s.current->copies.empty()) land_some_copies(s, *s.current);
    if (!_setjmp(s.current->jump)) to_scheduler(s);
    if (!s.error.empty()) fail(s.error);
}

void trampoline() {
    for (;;) {
        Scheduler& s = *t_sched;
        (*s.body)();
        Fiber& f = *s.current;
        // Copies never waited for are dropped: on a GPU they land after the thread has gone, where
        // no reader can be ordered after them, so a kernel that relies on them is already wrong.
        f.copies.clear();
        f.commits = 0;
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
    for (auto& w : s.warps) w.arrived = w.mask = w.gen = 0, w.mma_gen = ~0u;
    std::fill(s.smem.begin(), s.smem.end(), (char)0xFF);  // poison: NaN floats, -1 ints
    t_dynamic_smem = s.smem.data();
    for (size_t i = 0; i < n; i++) {
        s.fibers[i].state = State::Runnable;
        s.fibers[i].started = false;
        s.fibers[i].copies.clear();
        s.fibers[i].commits = 0;
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

// The one warp collective: every lane of `mask` deposits `bytes` (at most kWarpBytes); the last to
// arrive publishes them, and each lane returns a pointer to the 32 published slots (lane-major,
// kWarpBytes apart), valid until the warp's next-but-one collective.
static const unsigned char* warp_gather(unsigned mask, const void* mine, size_t bytes, int* lane_out,
                                        unsigned* gen_out = nullptr) {
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
    if (gen_out) *gen_out = my_gen;
    std::memcpy(w.slot[lane], mine, bytes);
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
    return &w.snapshot[my_gen & 1][0][0];
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src, int* lane_out) {
    const unsigned char* all = warp_gather(mask, &value, sizeof value, lane_out);
    if (src < 0 || src >= 32 || !(mask >> src & 1)) return value;  // CUDA: own value for outside lanes
    uint64_t out;
    std::memcpy(&out, all + src * kWarpBytes, sizeof out);
    return out;
}

void syncwarp(unsigned mask) { (void)warp_exchange(mask, 0, -1, nullptr); }

unsigned warp_ballot(unsigned mask, bool pred) {
    const unsigned char mine = pred ? 1 : 0;
    const unsigned char* all = warp_gather(mask, &mine, 1, nullptr);
    unsigned out = 0;
    for (int l = 0; l < 32; l++)
        if ((mask >> l & 1) && all[l * kWarpBytes]) out |= 1u << l;
    return out;
}

// ---- tensor-core instructions and cp.async ------------------------------------------------------

static bool in_shared(const void* p, size_t bytes) {
    const Scheduler& s = *t_sched;
    const char* c = static_cast<const char*>(p);
    return c >= s.smem.data() && c + bytes <= s.smem.data() + s.smem.size();
}

static std::string hex(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", p);
    return b;
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    Scheduler& s = *t_sched;
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of " + std::to_string(bytes) + " bytes (4, 8 or 16 allowed)");
    if (!in_shared(dst, (size_t)bytes) || reinterpret_cast<uintptr_t>(dst) % (uintptr_t)bytes)
        fail("cp.async destination " + hex(dst) + " is not " + std::to_string(bytes) +
             "-byte aligned dynamic shared memory (" + where(*s.current) + ")");
    if (reinterpret_cast<uintptr_t>(src) % (uintptr_t)bytes)
        fail("cp.async source " + hex(src) + " is not " + std::to_string(bytes) + "-byte aligned (" + where(*s.current) + ")");
    AsyncCopy c{static_cast<char*>(dst), bytes, s.current->commits, {}};
    const int n = std::clamp(src_bytes, 0, bytes);  // the rest is zero-filled, as PTX's src-size does
    std::memset(c.data, 0, sizeof c.data);
    if (n > 0) std::memcpy(c.data, src, (size_t)n);
    s.current->copies.push_back(c);
}

void cp_async_commit() { t_sched->current->commits++; }

void cp_async_wait(int pending_groups) { land_copies(*t_sched->current, std::max(pending_groups, 0)); }


void ldmatrix(int count, bool trans, const void* row_address, uint32_t out[4]) {
    Scheduler& s = *t_sched;
    int lane;
    const unsigned char* all = warp_gather(0xffffffffu, &row_address, sizeof row_address, &lane);
    const int g = lane / 4, t = lane % 4;
    for (int m = 0; m < count; m++) {
        uint16_t rows[8][8];  // matrix m: the 8 rows the lanes 8m .. 8m+7 point at
        for (int r = 0; r < 8; r++) {
            const void* p;
            std::memcpy(&p, all + (m * 8 + r) * kWarpBytes, sizeof p);
            if (!in_shared(p, 16) || reinterpret_cast<uintptr_t>(p) % 16)
                fail("ldmatrix row address " + hex(p) + " of lane " + std::to_string(m * 8 + r) +
                     " is not 16-byte aligned dynamic shared memory (" + where(*s.current) + ")");
            std::memcpy(rows[r], p, 16);
        }
        // PTX: lane l holds row l/4, columns 2(l%4) and 2(l%4)+1; transposed, the same of the transpose
        const uint16_t lo = trans ? rows[2 * t][g] : rows[g][2 * t];
        const uint16_t hi = trans ? rows[2 * t + 1][g] : rows[g][2 * t + 1];
        out[m] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}

void mma_bf16_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    struct Frag { uint32_t a[4], b[2]; float c[4]; } mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    std::memcpy(mine.c, c, sizeof mine.c);
    int lane;
    unsigned gen;
    const unsigned char* all = warp_gather(0xffffffffu, &mine, sizeof mine, &lane, &gen);
    Warp& w = t_sched->warps[t_sched->current->linear / 32];
    const int gid = lane / 4, tig = lane % 4;
    if (w.mma_gen != gen) {  // the first lane back computes the whole tile; the others read it
        // The tile, placed by the PTX ISA's fragment layouts (groupID = lane / 4, tig = lane % 4):
        // A 16x16: a_i at row gid + 8 [i in 2,3,6,7], column 2 tig + (i & 1) + 8 [i >= 4]; B 16x8: b_i at
        // row 2 tig + (i & 1) + 8 [i >= 2], column gid; C 16x8: c_i at row gid + 8 [i >= 2], column 2 tig + (i & 1).
        float A[16][16], B[16][8];
        for (int l = 0; l < 32; l++) {
            Frag f;
            std::memcpy(&f, all + l * kWarpBytes, sizeof f);
            const int g = l / 4, t = l % 4;
            for (int i = 0; i < 8; i++) {
                const uint16_t bits = (uint16_t)(f.a[i / 2] >> (16 * (i & 1)));
                A[g + ((i / 2) % 2) * 8][2 * t + (i & 1) + (i >= 4 ? 8 : 0)] = bf16_value(bits);
            }
            for (int i = 0; i < 4; i++)
                B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = bf16_value((uint16_t)(f.b[i / 2] >> (16 * (i & 1))));
            for (int i = 0; i < 4; i++) w.mma_d[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = f.c[i];
        }
        // Products of two bf16 values are exact in fp32; each sum runs in fp32 in k order (the
        // hardware's order and internal width are unspecified: tests allow any fp32 order).
        for (int row = 0; row < 16; row++)
            for (int col = 0; col < 8; col++) {
                float acc = w.mma_d[row][col];
                for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
                w.mma_d[row][col] = acc;
            }
        w.mma_gen = gen;
    }
    for (int i = 0; i < 4; i++) d[i] = w.mma_d[gid + (i >= 2 ? 8 : 0)][2 * tig + (i & 1)];
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
