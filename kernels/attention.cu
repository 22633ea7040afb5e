// CUDA twin of attention_cpu.cpp, variant 1: flash-style, fp32, written to be checkable.
//
// forward: a block of 32 threads per (32-query tile, head, batch); thread r owns query row q0+r.
//   The query tile and each 32-key tile of K and V are staged in shared memory; each thread keeps
//   its running max, running sum and output accumulator, rescaling when the max grows (online
//   softmax), and writes lse = max + log(sum) for the backward pass.
// backward: D_i = rowsum(dO_i * O_i) first; then one kernel whose thread owns key row j (dK, dV
//   summed over the queries i >= j, tiles of Q and dO in shared memory) and one whose thread owns
//   query row i (dQ summed over keys j <= i, tiles of K and V in shared memory). P is recomputed
//   from the saved lse; no atomics, so the result does not depend on scheduling.
// flops (causal, counted as computed): forward 4 B NH T(T+1)/2 hs; backward 2.5x that.
//
// Registers and shared memory: a thread's work per tile is split into two phases, so that what it
// keeps in registers is bounded by the tile (32 rows), not by the head size:
//   1. scores: for each column d, the 32 partial dot products of its own row with the tile's 32
//      rows advance together (32 independent accumulators, arrays indexed by a fully unrolled
//      loop, hence registers);
//   2. accumulation: for each column d, the sum over the tile's 32 rows is added to the thread's
//      own accumulator row (output, dQ, dK, dV), which lives in shared memory.
// Rows a thread owns (its query, key, value, dO and accumulator rows) are stored with an odd row
// stride: at a given d the 32 threads then hit 32 different banks, where a stride of hs (a
// multiple of 32) would put all 32 in one bank. Tile rows that every thread reads at the same
// index keep stride hs: one address per warp is a broadcast. Nothing is indexed by a run-time
// variable in a per-thread array, so nothing lands in local memory, at any head size.
#include "kernels/attention_cuda.h"
#include "kernels/cuda_common.h"

namespace diloco {

#define ATT_TILE 32

// An odd row stride >= hs for rows indexed by the thread: (r * stride + d) % 32 differs for the
// 32 threads r of a warp at every d.
__host__ __device__ __forceinline__ int owned_stride(int hs) { return hs | 1; }

// Stages rows r0 .. r0 + ATT_TILE - 1 of a row-major source (row stride `stride`, the hs columns
// starting at `src`) into `tile` (ATT_TILE rows of `tile_stride`), zeros past row T. All threads of
// the block help; consecutive threads take consecutive columns (coalesced reads).
__device__ __forceinline__ void stage_rows(float* tile, int tile_stride, const float* src, long stride, int r0, int T,
                                           int hs) {
    for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
        const int row = idx / hs, d = idx % hs;
        tile[row * tile_stride + d] = r0 + row < T ? src[(long)(r0 + row) * stride + d] : 0.0f;
    }
}

// Dynamic shared memory of each kernel: `owned` rows of odd stride and `tiles` rows of stride hs,
// ATT_TILE of each, plus `extra` floats.
static size_t attention_smem(int hs, int owned, int tiles, int extra) {
    return (size_t)(ATT_TILE * (owned * owned_stride(hs) + tiles * hs) + extra) * sizeof(float);
}
static size_t forward_smem(int hs) { return attention_smem(hs, 2, 2, 0); }
static size_t backward_kv_smem(int hs) { return attention_smem(hs, 4, 2, 2 * ATT_TILE); }
static size_t backward_q_smem(int hs) { return attention_smem(hs, 3, 2, 0); }

__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(float, smem);
    const int hs = C / NH, os = owned_stride(hs), h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * ATT_TILE;
    const int r = threadIdx.x, i = q0 + r;
    const bool active = i < T;
    const long C3 = 3L * C;
    const float* base = qkv + (long)b * T * C3 + (long)h * hs;
    float* Qown = smem;                  // the block's query rows, stride os
    float* Aown = Qown + ATT_TILE * os;  // their output accumulators, stride os
    float* Ks = Aown + ATT_TILE * os;    // key tile, ATT_TILE x hs
    float* Vs = Ks + ATT_TILE * hs;      // value tile, ATT_TILE x hs
    stage_rows(Qown, os, base, C3, q0, T, hs);
    const float* q = Qown + r * os;
    float* acc = Aown + r * os;
    for (int d = 0; d < hs; d++) acc[d] = 0.0f;
    const float scale = rsqrtf((float)hs);
    float run_max = -INFINITY, run_sum = 0.0f;
    const int kend = min(T, q0 + ATT_TILE);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile is no longer read (and, the first time, Qown is staged)
        stage_rows(Ks, hs, base + C, C3, k0, T, hs);
        stage_rows(Vs, hs, base + 2L * C, C3, k0, T, hs);
        __syncthreads();
        if (!active) continue;
        const int nk = min(ATT_TILE, i - k0 + 1);  // causal: keys k0 .. i
        if (nk <= 0) continue;
        float s[ATT_TILE];
#pragma unroll
        for (int c = 0; c < ATT_TILE; c++) s[c] = 0.0f;
        for (int d = 0; d < hs; d++) {
            const float qd = q[d];
#pragma unroll
            for (int c = 0; c < ATT_TILE; c++) s[c] += qd * Ks[c * hs + d];
        }
        float tile_max = -INFINITY;
#pragma unroll
        for (int c = 0; c < ATT_TILE; c++) {
            s[c] = c < nk ? s[c] * scale : -INFINITY;
            tile_max = fmaxf(tile_max, s[c]);
        }
        const float new_max = fmaxf(run_max, tile_max);
        const float correction = expf(run_max - new_max);  // 0 on the first tile
        run_sum *= correction;
#pragma unroll
        for (int c = 0; c < ATT_TILE; c++) {
            s[c] = c < nk ? expf(s[c] - new_max) : 0.0f;  // now p
            run_sum += s[c];
        }
        for (int d = 0; d < hs; d++) {
            float pv = 0.0f;
#pragma unroll
            for (int c = 0; c < ATT_TILE; c++) pv += s[c] * Vs[c * hs + d];
            acc[d] = acc[d] * correction + pv;
        }
        run_max = new_max;
    }
    if (!active) return;
    float* o = out + ((long)b * T + i) * C + (long)h * hs;
    const float inv = 1.0f / run_sum;
    for (int d = 0; d < hs; d++) o[d] = acc[d] * inv;
    lse[((long)b * NH + h) * T + i] = run_max + logf(run_sum);
}

// D (B,NH,T) = rowsum(dO * O) per head
__global__ void attention_backward_dot_kernel(float* D, const float* dout, const float* out, int B, int T, int C, int NH) {
    const long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long)B * NH * T) return;
    const int hs = C / NH, i = (int)(k % T), h = (int)(k / T % NH), b = (int)(k / ((long)T * NH));
    const long off = ((long)b * T + i) * C + (long)h * hs;
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += dout[off + d] * out[off + d];
    D[k] = s;
}

// For each of the tile's rows r: dot[r] = a . X[r] and dp[r] = g . Y[r] (phase 1 above), where a
// and g are the thread's own rows and X, Y tiles of stride hs.
__device__ __forceinline__ void tile_dots(float* dot, float* dp, const float* a, const float* g, const float* X,
                                          const float* Y, int hs) {
#pragma unroll
    for (int r = 0; r < ATT_TILE; r++) dot[r] = dp[r] = 0.0f;
    for (int d = 0; d < hs; d++) {
        const float ad = a[d], gd = g[d];
#pragma unroll
        for (int r = 0; r < ATT_TILE; r++) {
            dot[r] += ad * X[r * hs + d];
            dp[r] += gd * Y[r * hs + d];
        }
    }
}

// thread t owns key row j = k0 + t: dK_j and dV_j over the queries i >= j
__global__ void attention_backward_kv_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                             const float* D, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(float, smem);
    const int hs = C / NH, os = owned_stride(hs), h = blockIdx.y, b = blockIdx.z, k0 = blockIdx.x * ATT_TILE;
    const int t = threadIdx.x, j = k0 + t;
    const bool active = j < T;
    const long C3 = 3L * C;
    const float* base = qkv + (long)b * T * C3 + (long)h * hs;
    const float* row_lse = lse + ((long)b * NH + h) * T;
    const float* row_D = D + ((long)b * NH + h) * T;
    float* Kown = smem;                    // the block's key rows, stride os
    float* Vown = Kown + ATT_TILE * os;    // its value rows
    float* dKown = Vown + ATT_TILE * os;   // their gradients
    float* dVown = dKown + ATT_TILE * os;
    float* Qs = dVown + ATT_TILE * os;     // query tile, ATT_TILE x hs
    float* dOs = Qs + ATT_TILE * hs;       // dO tile, ATT_TILE x hs
    float* lses = dOs + ATT_TILE * hs;
    float* Ds = lses + ATT_TILE;
    stage_rows(Kown, os, base + C, C3, k0, T, hs);
    stage_rows(Vown, os, base + 2L * C, C3, k0, T, hs);
    float* dk = dKown + t * os;
    float* dv = dVown + t * os;
    for (int d = 0; d < hs; d++) dk[d] = dv[d] = 0.0f;
    const float scale = rsqrtf((float)hs);
    for (int q0 = k0; q0 < T; q0 += ATT_TILE) {  // query tiles at or after this key tile
        __syncthreads();
        stage_rows(Qs, hs, base, C3, q0, T, hs);
        stage_rows(dOs, hs, dout + (long)b * T * C + (long)h * hs, C, q0, T, hs);
        for (int row = t; row < ATT_TILE; row += blockDim.x) {
            lses[row] = q0 + row < T ? row_lse[q0 + row] : 0.0f;
            Ds[row] = q0 + row < T ? row_D[q0 + row] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        float p[ATT_TILE], ds[ATT_TILE];  // q_r . k_j, then P; dO_r . v_j, then dS
        tile_dots(p, ds, Kown + t * os, Vown + t * os, Qs, dOs, hs);
#pragma unroll
        for (int r = 0; r < ATT_TILE; r++) {
            const bool live = q0 + r >= j && q0 + r < T;  // causal: query at or after the key
            p[r] = live ? expf(p[r] * scale - lses[r]) : 0.0f;
            ds[r] = p[r] * (ds[r] - Ds[r]) * scale;
        }
        for (int d = 0; d < hs; d++) {
            float sv = 0.0f, sk = 0.0f;
#pragma unroll
            for (int r = 0; r < ATT_TILE; r++) {
                sv += p[r] * dOs[r * hs + d];
                sk += ds[r] * Qs[r * hs + d];
            }
            dv[d] += sv;
            dk[d] += sk;
        }
    }
    if (!active) return;
    float* dbase = dqkv + ((long)b * T + j) * C3 + (long)h * hs;
    for (int d = 0; d < hs; d++) {
        dbase[C + d] = dk[d];
        dbase[2L * C + d] = dv[d];
    }
}

// thread t owns query row i = q0 + t: dQ_i over the keys j <= i
__global__ void attention_backward_q_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                            const float* D, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(float, smem);
    const int hs = C / NH, os = owned_stride(hs), h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * ATT_TILE;
    const int t = threadIdx.x, i = q0 + t;
    const bool active = i < T;
    const long C3 = 3L * C;
    const float* base = qkv + (long)b * T * C3 + (long)h * hs;
    float* Qown = smem;                    // the block's query rows, stride os
    float* Gown = Qown + ATT_TILE * os;    // their dO rows
    float* dQown = Gown + ATT_TILE * os;   // their gradients
    float* Ks = dQown + ATT_TILE * os;     // key tile, ATT_TILE x hs
    float* Vs = Ks + ATT_TILE * hs;        // value tile, ATT_TILE x hs
    stage_rows(Qown, os, base, C3, q0, T, hs);
    stage_rows(Gown, os, dout + (long)b * T * C + (long)h * hs, C, q0, T, hs);
    float* dq = dQown + t * os;
    for (int d = 0; d < hs; d++) dq[d] = 0.0f;
    const float scale = rsqrtf((float)hs);
    const float l = active ? lse[((long)b * NH + h) * T + i] : 0.0f;
    const float Di = active ? D[((long)b * NH + h) * T + i] : 0.0f;
    const int kend = min(T, q0 + ATT_TILE);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        stage_rows(Ks, hs, base + C, C3, k0, T, hs);
        stage_rows(Vs, hs, base + 2L * C, C3, k0, T, hs);
        __syncthreads();
        if (!active) continue;
        float ds[ATT_TILE], dp[ATT_TILE];  // q_i . k_c, then dS; dO_i . v_c
        tile_dots(ds, dp, Qown + t * os, Gown + t * os, Ks, Vs, hs);
#pragma unroll
        for (int c = 0; c < ATT_TILE; c++) {
            const float p = k0 + c <= i ? expf(ds[c] * scale - l) : 0.0f;  // causal: keys j <= i
            ds[c] = p * (dp[c] - Di) * scale;
        }
        for (int d = 0; d < hs; d++) {
            float sq = 0.0f;
#pragma unroll
            for (int c = 0; c < ATT_TILE; c++) sq += ds[c] * Ks[c * hs + d];
            dq[d] += sq;
        }
    }
    if (!active) return;
    float* dbase = dqkv + ((long)b * T + i) * C3 + (long)h * hs;
    for (int d = 0; d < hs; d++) dbase[d] = dq[d];
}

cudaError_t attention_forward_cuda(float* out, float* lse, const float* qkv, int B, int T, int C, int NH,
                                   cudaStream_t stream) {
    const int hs = C / NH;
    if (hs > kAttnCudaMaxHead || C % NH != 0) return cudaErrorInvalidValue;
    if (B <= 0 || T <= 0) return cudaSuccess;
    const dim3 grid((T + ATT_TILE - 1) / ATT_TILE, NH, B);
    const size_t smem = forward_smem(hs);
    if (cudaError_t e = allow_dynamic_smem(attention_forward_kernel, smem); e != cudaSuccess) return e;
    DILOCO_LAUNCH(attention_forward_kernel, grid, ATT_TILE, smem, stream, out, lse, qkv, T, C, NH);
    return cudaGetLastError();
}

cudaError_t attention_backward_cuda(float* dqkv, const float* dout, const float* qkv, const float* out,
                                    const float* lse, int B, int T, int C, int NH, float* workspace,
                                    cudaStream_t stream) {
    const int hs = C / NH;
    if (hs > kAttnCudaMaxHead || C % NH != 0) return cudaErrorInvalidValue;
    if (B <= 0 || T <= 0) return cudaSuccess;
    const size_t smem_kv = backward_kv_smem(hs), smem_q = backward_q_smem(hs);
    cudaError_t e = allow_dynamic_smem(attention_backward_kv_kernel, smem_kv);
    if (e == cudaSuccess) e = allow_dynamic_smem(attention_backward_q_kernel, smem_q);
    if (e != cudaSuccess) return e;
    const long nrows = (long)B * NH * T;
    DILOCO_LAUNCH(attention_backward_dot_kernel, (unsigned)((nrows + 127) / 128), 128, 0, stream, workspace, dout,
                  out, B, T, C, NH);
    const dim3 grid((T + ATT_TILE - 1) / ATT_TILE, NH, B);
    DILOCO_LAUNCH(attention_backward_kv_kernel, grid, ATT_TILE, smem_kv, stream, dqkv, dout, qkv, lse, workspace, T,
                  C, NH);
    DILOCO_LAUNCH(attention_backward_q_kernel, grid, ATT_TILE, smem_q, stream, dqkv, dout, qkv, lse, workspace, T,
                  C, NH);
    return cudaGetLastError();
}

}  // namespace diloco
