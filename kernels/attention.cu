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
#include "kernels/attention_cuda.h"
#include "kernels/cuda_common.h"

namespace diloco {

#define ATT_TILE 32

// Stages rows r0 .. r0 + ATT_TILE - 1 of a row-major source (row stride `stride`, the hs columns
// starting at `src`) into `tile` (ATT_TILE x hs), zeros past row T. All threads of the block help.
__device__ __forceinline__ void stage_rows(float* tile, const float* src, long stride, int r0, int T, int hs) {
    for (int idx = threadIdx.x; idx < ATT_TILE * hs; idx += blockDim.x) {
        const int row = idx / hs, d = idx % hs;
        tile[idx] = r0 + row < T ? src[(long)(r0 + row) * stride + d] : 0.0f;
    }
}

__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(float, smem);  // Q tile, K tile, V tile: 3 x ATT_TILE x hs
    const int hs = C / NH, h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * ATT_TILE;
    const int r = threadIdx.x, i = q0 + r;
    const bool active = i < T;
    const long C3 = 3L * C;
    const float* base = qkv + (long)b * T * C3 + (long)h * hs;
    float* Qs = smem;
    float* Ks = smem + ATT_TILE * hs;
    float* Vs = smem + 2 * ATT_TILE * hs;
    stage_rows(Qs, base, C3, q0, T, hs);
    const float scale = rsqrtf((float)hs);
    float acc[kAttnCudaMaxHead];
    for (int d = 0; d < hs; d++) acc[d] = 0.0f;
    float run_max = -INFINITY, run_sum = 0.0f;
    const int kend = min(T, q0 + ATT_TILE);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile is no longer read
        stage_rows(Ks, base + C, C3, k0, T, hs);
        stage_rows(Vs, base + 2L * C, C3, k0, T, hs);
        __syncthreads();
        if (!active) continue;
        const int nk = min(ATT_TILE, i - k0 + 1);  // causal: keys k0 .. i
        if (nk <= 0) continue;
        float s[ATT_TILE];
        float tile_max = -INFINITY;
        for (int c = 0; c < nk; c++) {
            float dot = 0.0f;
            for (int d = 0; d < hs; d++) dot += Qs[r * hs + d] * Ks[c * hs + d];
            s[c] = dot * scale;
            tile_max = fmaxf(tile_max, s[c]);
        }
        const float new_max = fmaxf(run_max, tile_max);
        const float correction = expf(run_max - new_max);  // 0 on the first tile
        run_sum *= correction;
        for (int d = 0; d < hs; d++) acc[d] *= correction;
        for (int c = 0; c < nk; c++) {
            const float p = expf(s[c] - new_max);
            run_sum += p;
            for (int d = 0; d < hs; d++) acc[d] += p * Vs[c * hs + d];
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

// thread c owns key row j = k0 + c: dK_j and dV_j over the queries i >= j
__global__ void attention_backward_kv_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                             const float* D, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(float, smem);  // Q tile, dO tile (ATT_TILE x hs each), lse, D (ATT_TILE each)
    const int hs = C / NH, h = blockIdx.y, b = blockIdx.z, k0 = blockIdx.x * ATT_TILE;
    const int j = k0 + threadIdx.x;
    const bool active = j < T;
    const long C3 = 3L * C;
    const float* base = qkv + (long)b * T * C3 + (long)h * hs;
    const float* row_lse = lse + ((long)b * NH + h) * T;
    const float* row_D = D + ((long)b * NH + h) * T;
    float* Qs = smem;
    float* dOs = smem + ATT_TILE * hs;
    float* lses = smem + 2 * ATT_TILE * hs;
    float* Ds = lses + ATT_TILE;
    const float scale = rsqrtf((float)hs);
    float kj[kAttnCudaMaxHead], vj[kAttnCudaMaxHead], dk[kAttnCudaMaxHead], dv[kAttnCudaMaxHead];
    for (int d = 0; d < hs; d++) {
        kj[d] = active ? base[(long)j * C3 + C + d] : 0.0f;
        vj[d] = active ? base[(long)j * C3 + 2L * C + d] : 0.0f;
        dk[d] = dv[d] = 0.0f;
    }
    for (int q0 = k0; q0 < T; q0 += ATT_TILE) {  // query tiles at or after this key tile
        __syncthreads();
        stage_rows(Qs, base, C3, q0, T, hs);
        stage_rows(dOs, dout + (long)b * T * C + (long)h * hs, C, q0, T, hs);
        for (int row = threadIdx.x; row < ATT_TILE; row += blockDim.x) {
            lses[row] = q0 + row < T ? row_lse[q0 + row] : 0.0f;
            Ds[row] = q0 + row < T ? row_D[q0 + row] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        for (int r = 0; r < ATT_TILE && q0 + r < T; r++) {
            if (q0 + r < j) continue;  // causal: query before key
            float dot = 0.0f, dp = 0.0f;
            for (int d = 0; d < hs; d++) {
                dot += Qs[r * hs + d] * kj[d];
                dp += dOs[r * hs + d] * vj[d];
            }
            const float p = expf(dot * scale - lses[r]);
            const float ds = p * (dp - Ds[r]) * scale;
            for (int d = 0; d < hs; d++) {
                dv[d] += p * dOs[r * hs + d];
                dk[d] += ds * Qs[r * hs + d];
            }
        }
    }
    if (!active) return;
    float* dbase = dqkv + ((long)b * T + j) * C3 + (long)h * hs;
    for (int d = 0; d < hs; d++) {
        dbase[C + d] = dk[d];
        dbase[2L * C + d] = dv[d];
    }
}

// thread r owns query row i = q0 + r: dQ_i over the keys j <= i
__global__ void attention_backward_q_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                            const float* D, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(float, smem);  // K tile, V tile: ATT_TILE x hs each
    const int hs = C / NH, h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * ATT_TILE;
    const int i = q0 + threadIdx.x;
    const bool active = i < T;
    const long C3 = 3L * C;
    const float* base = qkv + (long)b * T * C3 + (long)h * hs;
    float* Ks = smem;
    float* Vs = smem + ATT_TILE * hs;
    const float scale = rsqrtf((float)hs);
    float qi[kAttnCudaMaxHead], gi[kAttnCudaMaxHead], dq[kAttnCudaMaxHead];
    for (int d = 0; d < hs; d++) {
        qi[d] = active ? base[(long)i * C3 + d] : 0.0f;
        gi[d] = active ? dout[((long)b * T + i) * C + (long)h * hs + d] : 0.0f;
        dq[d] = 0.0f;
    }
    const float l = active ? lse[((long)b * NH + h) * T + i] : 0.0f;
    const float Di = active ? D[((long)b * NH + h) * T + i] : 0.0f;
    const int kend = min(T, q0 + ATT_TILE);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        stage_rows(Ks, base + C, C3, k0, T, hs);
        stage_rows(Vs, base + 2L * C, C3, k0, T, hs);
        __syncthreads();
        if (!active) continue;
        const int nk = min(ATT_TILE, i - k0 + 1);
        for (int c = 0; c < nk; c++) {
            float dot = 0.0f, dp = 0.0f;
            for (int d = 0; d < hs; d++) {
                dot += qi[d] * Ks[c * hs + d];
                dp += gi[d] * Vs[c * hs + d];
            }
            const float p = expf(dot * scale - l);
            const float ds = p * (dp - Di) * scale;
            for (int d = 0; d < hs; d++) dq[d] += ds * Ks[c * hs + d];
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
    const size_t smem = 3 * ATT_TILE * hs * sizeof(float);
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
    const long nrows = (long)B * NH * T;
    DILOCO_LAUNCH(attention_backward_dot_kernel, (unsigned)((nrows + 127) / 128), 128, 0, stream, workspace, dout,
                  out, B, T, C, NH);
    const dim3 grid((T + ATT_TILE - 1) / ATT_TILE, NH, B);
    const size_t smem_kv = (2 * ATT_TILE * hs + 2 * ATT_TILE) * sizeof(float), smem_q = 2 * ATT_TILE * hs * sizeof(float);
    cudaError_t e = allow_dynamic_smem(attention_backward_kv_kernel, smem_kv);
    if (e == cudaSuccess) e = allow_dynamic_smem(attention_backward_q_kernel, smem_q);
    if (e != cudaSuccess) return e;
    DILOCO_LAUNCH(attention_backward_kv_kernel, grid, ATT_TILE, smem_kv, stream, dqkv, dout, qkv, lse, workspace, T,
                  C, NH);
    DILOCO_LAUNCH(attention_backward_q_kernel, grid, ATT_TILE, smem_q, stream, dqkv, dout, qkv, lse, workspace, T,
                  C, NH);
    return cudaGetLastError();
}

}  // namespace diloco
