// Causal attention, variant 2: FlashAttention-2 on tensor cores. bf16 in and out, fp32 accumulation
// (mma.sync m16n8k16), the same algorithm as variant 1 (kernels/attention.cu) and its CPU twin.
//
// A block has 4 warps and owns 64 rows (queries in the forward and dQ kernels, keys in the dK/dV
// kernel); each warp owns 16 of them and keeps their operand fragments and accumulators in
// registers. The other side streams through shared memory in tiles of 64 rows, double-buffered: the
// next tile's cp.async copies are in flight while the tensor cores work on the current one.
// Shared rows are padded by 16 bytes, so that the 8 row addresses of an ldmatrix fall in 8
// different bank groups (a stride of HS elements would put them all in one).
//
// Every product is one of two shapes, from four helpers below:
//   scores:     S (16 x 64)  = A (16 x HS, fragments)  . tile^T   (tile: 64 rows of HS)
//   accumulate: acc (16 x HS) += P (16 x 64, fp32, rounded to bf16) . tile
// forward: S = Q K^T, O += P V.  dK/dV (keys own): S^T = K Q^T, dV += P^T dO, dP^T = V dO^T,
// dK += dS^T Q.  dQ (queries own): S = Q K^T, dP = dO V^T, dQ += dS K.
// P is recomputed from the saved log-sum-exp; dQ comes from its own kernel instead of atomics, so
// results do not depend on scheduling (at the price of computing S and P twice in the backward).
//
// Rounding: P and dS are rounded to bf16 before their products, as the outputs are: each adds
// at most 2^-8 relative per term (the twin test's tolerance is argued from exactly that).
#include "kernels/attention_cuda.h"
#include "kernels/cuda_common.h"
#include "kernels/tensor_core.h"

namespace diloco {

constexpr int kFaRows = 64;  // rows a block owns, and rows of a streamed tile
constexpr int kFaThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

template <int HS>
constexpr int kFaStride = HS + 8;  // shared row stride in bf16 elements (16 bytes of padding)

template <int HS>
constexpr size_t kFaTileBytes = (size_t)kFaRows * kFaStride<HS> * sizeof(uint16_t);

// Copies rows r0 .. r0 + 63 (HS columns each, row stride `stride` elements) into `tile` by cp.async;
// rows at or past T are zero-filled (the copy reads row 0, a valid address, and keeps 0 bytes).
template <int HS>
__device__ __forceinline__ void fa_stage(bf16* tile, const bf16* src, long stride, int r0, int T) {
    constexpr int chunks = HS / 8;  // 16-byte pieces per row
    for (int idx = threadIdx.x; idx < kFaRows * chunks; idx += blockDim.x) {
        const int row = idx / chunks, c = idx % chunks;
        const bool inside = r0 + row < T;
        cp_async_16(tile + row * kFaStride<HS> + c * 8, src + (inside ? (long)(r0 + row) * stride : 0) + c * 8,
                    inside ? 16 : 0);
    }
}

// The double buffer's turn at the top of each tile loop: when a next tile exists, its two streams
// (rows r0 .. r0 + 63 of each) are copied into the free buffers while tile t is awaited; then a
// barrier, after which tile t (and the first group's own rows) are in for every thread's copies.
template <int HS>
__device__ __forceinline__ void fa_next_tile(bool more, bf16* a, const bf16* src_a, long stride_a, bf16* b,
                                             const bf16* src_b, long stride_b, int r0, int T) {
    if (more) {
        fa_stage<HS>(a, src_a, stride_a, r0, T);
        fa_stage<HS>(b, src_b, stride_b, r0, T);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

// The 16 x HS rows at `rows` (a shared tile's, stride kFaStride) as mma A fragments, 16 columns each.
template <int HS>
__device__ __forceinline__ void fa_load_a(uint32_t a[HS / 16][4], const bf16* rows) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kc = 0; kc < HS / 16; kc++) ldmatrix_x4(a[kc], rows + (lane % 16) * kFaStride<HS> + kc * 16 + (lane / 16) * 8);
}

// s (16 x 64 as 8 C fragments of 8 columns) = a . tile^T: column n of s is row n of the tile.
template <int HS>
__device__ __forceinline__ void fa_scores(float s[8][4], const uint32_t a[HS / 16][4], const bf16* tile) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int n = 0; n < 8; n++) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kc = 0; kc < HS / 16; kc++) {
            uint32_t b[2];  // B (k = column of the tile, n = its row): the tile's rows as stored
            ldmatrix_x2(b, tile + (n * 8 + lane % 8) * kFaStride<HS> + kc * 16 + (lane / 8 % 2) * 8);
            mma_m16n8k16_bf16(s[n], a[kc], b, s[n]);
        }
    }
}

// acc (16 x HS as HS/8 C fragments) += p . tile, p (16 x 64, C fragments) rounded to bf16. A C
// fragment pair (columns 16kc .. 16kc + 15) is exactly an A fragment: no data moves between lanes.
template <int HS>
__device__ __forceinline__ void fa_accumulate(float acc[HS / 8][4], const float p[8][4], const bf16* tile) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int kc = 0; kc < 4; kc++) {
        const uint32_t a[4] = {pack_bf16x2(p[2 * kc][0], p[2 * kc][1]), pack_bf16x2(p[2 * kc][2], p[2 * kc][3]),
                               pack_bf16x2(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                               pack_bf16x2(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            uint32_t b[2];  // B (k = row of the tile, n = its column): transposed on the way in
            ldmatrix_x2_trans(b, tile + (kc * 16 + lane % 16) * kFaStride<HS> + n * 8);
            mma_m16n8k16_bf16(acc[n], a, b, acc[n]);
        }
    }
}

// The row and column of element i of C fragment n in a warp's 16 x 64 block, relative to its corner.
__device__ __forceinline__ int frag_row(int i) { return threadIdx.x % 32 / 4 + (i >= 2 ? 8 : 0); }
__device__ __forceinline__ int frag_col(int n, int i) { return n * 8 + 2 * (threadIdx.x % 4) + (i & 1); }

// Writes a warp's 16 x HS accumulator (times `scale`) as bf16 to rows row0 .. row0 + 15 (those < T)
// of a matrix with row stride `stride`.
template <int HS>
__device__ __forceinline__ void fa_store(bf16* dst, long stride, int row0, int T, const float acc[HS / 8][4],
                                         const float scale[2]) {
#pragma unroll
    for (int n = 0; n < HS / 8; n++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = row0 + frag_row(2 * half);
            if (row >= T) continue;
            store_bf16x2(dst + (long)row * stride + frag_col(n, 0),
                         pack_bf16x2(acc[n][2 * half] * scale[half], acc[n][2 * half + 1] * scale[half]));
        }
}

// The sum (or max) over the 4 lanes that share a fragment row.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// out (B,T,C) and lse (B,NH,T) from qkv (B,T,3C). Blocks in reverse order of their query tile: the
// longest (most keys) start first.
template <int HS>
__global__ void __launch_bounds__(kFaThreads) attention_forward_mma_kernel(bf16* out, float* lse, const bf16* qkv, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(bf16, smem);
    constexpr int S = kFaStride<HS>;
    const int h = blockIdx.y, b = blockIdx.z, q0 = (gridDim.x - 1 - blockIdx.x) * kFaRows;
    const int warp = threadIdx.x / 32;
    const long C3 = 3L * C;
    const bf16* base = qkv + (long)b * T * C3 + (long)h * HS;
    bf16* Qs = smem;               // the block's 64 query rows
    bf16* Ks = Qs + kFaRows * S;   // two key tiles
    bf16* Vs = Ks + 2 * kFaRows * S;  // two value tiles
    const int ntiles = (min(T, q0 + kFaRows) + kFaRows - 1) / kFaRows;  // causal: keys up to the last query
    fa_stage<HS>(Qs, base, C3, q0, T);
    fa_stage<HS>(Ks, base + C, C3, 0, T);
    fa_stage<HS>(Vs, base + 2L * C, C3, 0, T);
    cp_async_commit();

    uint32_t qf[HS / 16][4];
    float o[HS / 8][4] = {};
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};  // rows frag_row(0), frag_row(2)
    const float scale_log2 = rsqrtf((float)HS) * kLog2e;  // scores in log2 units, for exp2f
    const int qw = q0 + warp * 16;                         // the warp's first query
    for (int kt = 0; kt < ntiles; kt++) {
        const int next = (kt + 1) % 2;
        fa_next_tile<HS>(kt + 1 < ntiles, Ks + next * kFaRows * S, base + C, C3, Vs + next * kFaRows * S, base + 2L * C,
                         C3, (kt + 1) * kFaRows, T);
        if (kt == 0) fa_load_a<HS>(qf, Qs + warp * 16 * S);
        float s[8][4];
        fa_scores<HS>(s, qf, Ks + (kt % 2) * kFaRows * S);
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = kt * kFaRows + frag_col(n, i), q = qw + frag_row(i);
                s[n][i] = key <= q && key < T ? s[n][i] * scale_log2 : -INFINITY;
                tile_max[i / 2] = fmaxf(tile_max[i / 2], s[n][i]);
            }
        float correction[2], ref[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const float new_max = fmaxf(row_max[r], quad_max(tile_max[r]));
            ref[r] = new_max == -INFINITY ? 0.0f : new_max;  // a row with no visible key yet: exp2f(-inf) = 0
            correction[r] = exp2f(row_max[r] - ref[r]);
            row_max[r] = new_max;
            row_sum[r] *= correction[r];  // each lane keeps the sum of its own columns; added up at the end
        }
#pragma unroll
        for (int n = 0; n < HS / 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) o[n][i] *= correction[i / 2];
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                s[n][i] = exp2f(s[n][i] - ref[i / 2]);  // now P
                row_sum[i / 2] += s[n][i];
            }
        fa_accumulate<HS>(o, s, Vs + (kt % 2) * kFaRows * S);
        __syncthreads();  // every warp is done with this buffer before the next copies overwrite it
    }
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        row_sum[r] = quad_sum(row_sum[r]);
        inv[r] = 1.0f / row_sum[r];
        const int q = qw + frag_row(2 * r);
        if (threadIdx.x % 4 == 0 && q < T) lse[((long)b * NH + h) * T + q] = row_max[r] / kLog2e + logf(row_sum[r]);
    }
    fa_store<HS>(out + (long)b * T * C + (long)h * HS, C, qw, T, o, inv);
}

// D (B,NH,T) = rowsum(dO * O) per head, in fp32 from the bf16 rows: one thread per row.
__global__ void attention_backward_dot_mma_kernel(float* D, const bf16* dout, const bf16* out, int B, int T, int C, int NH) {
    const long k = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long)B * NH * T) return;
    const int hs = C / NH, i = (int)(k % T), h = (int)(k / T % NH), b = (int)(k / ((long)T * NH));
    const long off = ((long)b * T + i) * C + (long)h * hs;
    float s = 0.0f;
    for (int d = 0; d < hs; d++) s += __bfloat162float(dout[off + d]) * __bfloat162float(out[off + d]);
    D[k] = s;
}

// The block owns keys k0 .. k0 + 63 (warp w: 16 of them) and streams the query tiles at or after
// them: dK and dV of its keys, complete, written once.
template <int HS>
__global__ void __launch_bounds__(kFaThreads) attention_backward_kv_mma_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                                  const float* D, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(bf16, smem);
    constexpr int S = kFaStride<HS>;
    const int h = blockIdx.y, b = blockIdx.z, kt0 = gridDim.x - 1 - blockIdx.x, k0 = kt0 * kFaRows;
    const int warp = threadIdx.x / 32;
    const long C3 = 3L * C;
    const bf16* base = qkv + (long)b * T * C3 + (long)h * HS;
    const bf16* gbase = dout + (long)b * T * C + (long)h * HS;
    const float* lse_h = lse + ((long)b * NH + h) * T;
    const float* D_h = D + ((long)b * NH + h) * T;
    bf16* Kown = smem;
    bf16* Vown = Kown + kFaRows * S;
    bf16* Qs = Vown + kFaRows * S;     // two query tiles
    bf16* Gs = Qs + 2 * kFaRows * S;   // two dO tiles
    const int ntiles = (T + kFaRows - 1) / kFaRows;
    fa_stage<HS>(Kown, base + C, C3, k0, T);
    fa_stage<HS>(Vown, base + 2L * C, C3, k0, T);
    fa_stage<HS>(Qs, base, C3, k0, T);
    fa_stage<HS>(Gs, gbase, C, k0, T);
    cp_async_commit();

    uint32_t kf[HS / 16][4];
    float dk[HS / 8][4] = {}, dv[HS / 8][4] = {};
    const float scale = rsqrtf((float)HS), scale_log2 = scale * kLog2e;
    const int kw = k0 + warp * 16;  // the warp's first key
    for (int qt = kt0; qt < ntiles; qt++) {
        const int buf = (qt - kt0) % 2;
        fa_next_tile<HS>(qt + 1 < ntiles, Qs + (1 - buf) * kFaRows * S, base, C3, Gs + (1 - buf) * kFaRows * S, gbase, C,
                         (qt + 1) * kFaRows, T);
        if (qt == kt0) fa_load_a<HS>(kf, Kown + warp * 16 * S);
        const bf16* Qt = Qs + buf * kFaRows * S;
        const bf16* Gt = Gs + buf * kFaRows * S;
        float p[8][4], dp[8][4];  // P^T and dP^T: rows are the warp's keys, columns the tile's queries
        fa_scores<HS>(p, kf, Qt);
        {
            uint32_t vf[HS / 16][4];
            fa_load_a<HS>(vf, Vown + warp * 16 * S);
            fa_scores<HS>(dp, vf, Gt);
        }
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int q = qt * kFaRows + frag_col(n, i), key = kw + frag_row(i);
                const bool visible = key <= q && q < T;
                p[n][i] = visible ? exp2f(p[n][i] * scale_log2 - lse_h[q] * kLog2e) : 0.0f;
                dp[n][i] = visible ? p[n][i] * (dp[n][i] - D_h[q]) : 0.0f;  // now dS^T
            }
        fa_accumulate<HS>(dv, p, Gt);
        fa_accumulate<HS>(dk, dp, Qt);
        __syncthreads();
    }
    const float one[2] = {1.0f, 1.0f}, sc[2] = {scale, scale};
    bf16* dbase = dqkv + (long)b * T * C3 + (long)h * HS;
    fa_store<HS>(dbase + C, C3, kw, T, dk, sc);
    fa_store<HS>(dbase + 2L * C, C3, kw, T, dv, one);
}

// The block owns queries q0 .. q0 + 63 and streams the key tiles up to them: dQ, written once.
template <int HS>
__global__ void __launch_bounds__(kFaThreads) attention_backward_q_mma_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                                 const float* D, int T, int C, int NH) {
    DILOCO_DYNAMIC_SHARED(bf16, smem);
    constexpr int S = kFaStride<HS>;
    const int h = blockIdx.y, b = blockIdx.z, q0 = (gridDim.x - 1 - blockIdx.x) * kFaRows;
    const int warp = threadIdx.x / 32;
    const long C3 = 3L * C;
    const bf16* base = qkv + (long)b * T * C3 + (long)h * HS;
    bf16* Qown = smem;
    bf16* Gown = Qown + kFaRows * S;
    bf16* Ks = Gown + kFaRows * S;     // two key tiles
    bf16* Vs = Ks + 2 * kFaRows * S;   // two value tiles
    const int ntiles = (min(T, q0 + kFaRows) + kFaRows - 1) / kFaRows;
    fa_stage<HS>(Qown, base, C3, q0, T);
    fa_stage<HS>(Gown, dout + (long)b * T * C + (long)h * HS, C, q0, T);
    fa_stage<HS>(Ks, base + C, C3, 0, T);
    fa_stage<HS>(Vs, base + 2L * C, C3, 0, T);
    cp_async_commit();

    uint32_t qf[HS / 16][4];
    float dq[HS / 8][4] = {};
    const float scale = rsqrtf((float)HS), scale_log2 = scale * kLog2e;
    const int qw = q0 + warp * 16;
    float lse_log2[2], Dq[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int q = qw + frag_row(2 * r);
        lse_log2[r] = q < T ? lse[((long)b * NH + h) * T + q] * kLog2e : 0.0f;
        Dq[r] = q < T ? D[((long)b * NH + h) * T + q] : 0.0f;
    }
    for (int kt = 0; kt < ntiles; kt++) {
        const int next = (kt + 1) % 2;
        fa_next_tile<HS>(kt + 1 < ntiles, Ks + next * kFaRows * S, base + C, C3, Vs + next * kFaRows * S, base + 2L * C,
                         C3, (kt + 1) * kFaRows, T);
        if (kt == 0) fa_load_a<HS>(qf, Qown + warp * 16 * S);
        const bf16* Kt = Ks + (kt % 2) * kFaRows * S;
        float p[8][4], dp[8][4];
        fa_scores<HS>(p, qf, Kt);
        {
            uint32_t gf[HS / 16][4];
            fa_load_a<HS>(gf, Gown + warp * 16 * S);
            fa_scores<HS>(dp, gf, Vs + (kt % 2) * kFaRows * S);
        }
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int key = kt * kFaRows + frag_col(n, i), q = qw + frag_row(i);
                const bool visible = key <= q && q < T;
                const float pv = visible ? exp2f(p[n][i] * scale_log2 - lse_log2[i / 2]) : 0.0f;
                dp[n][i] = pv * (dp[n][i] - Dq[i / 2]);  // now dS
            }
        fa_accumulate<HS>(dq, dp, Kt);
        __syncthreads();
    }
    const float sc[2] = {scale, scale};
    fa_store<HS>(dqkv + (long)b * T * C3 + (long)h * HS, C3, qw, T, dq, sc);
}

template <int HS>
static cudaError_t forward_mma(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH, cudaStream_t stream) {
    const size_t smem = 5 * kFaTileBytes<HS>;
    if (cudaError_t e = allow_dynamic_smem(attention_forward_mma_kernel<HS>, smem); e != cudaSuccess) return e;
    const dim3 grid((T + kFaRows - 1) / kFaRows, NH, B);
    DILOCO_LAUNCH(attention_forward_mma_kernel<HS>, grid, kFaThreads, smem, stream, out, lse, qkv, T, C, NH);
    return cudaGetLastError();
}

template <int HS>
static cudaError_t backward_mma(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                                int B, int T, int C, int NH, float* D, cudaStream_t stream) {
    const size_t smem = 6 * kFaTileBytes<HS>;
    cudaError_t e = allow_dynamic_smem(attention_backward_kv_mma_kernel<HS>, smem);
    if (e == cudaSuccess) e = allow_dynamic_smem(attention_backward_q_mma_kernel<HS>, smem);
    if (e != cudaSuccess) return e;
    const long nrows = (long)B * NH * T;
    DILOCO_LAUNCH(attention_backward_dot_mma_kernel, (unsigned)((nrows + 127) / 128), 128, 0, stream, D, dout, out, B, T, C, NH);
    const dim3 grid((T + kFaRows - 1) / kFaRows, NH, B);
    DILOCO_LAUNCH(attention_backward_kv_mma_kernel<HS>, grid, kFaThreads, smem, stream, dqkv, dout, qkv, lse, D, T, C, NH);
    DILOCO_LAUNCH(attention_backward_q_mma_kernel<HS>, grid, kFaThreads, smem, stream, dqkv, dout, qkv, lse, D, T, C, NH);
    return cudaGetLastError();
}

static bool mma_shape_ok(int C, int NH) { return NH > 0 && C % NH == 0 && (C / NH == 64 || C / NH == 128) && C % 8 == 0; }

cudaError_t attention_forward_bf16_cuda(uint16_t* out, float* lse, const uint16_t* qkv, int B, int T, int C, int NH,
                                        cudaStream_t stream) {
    if (!mma_shape_ok(C, NH)) return cudaErrorInvalidValue;
    if (B <= 0 || T <= 0) return cudaSuccess;
    auto* o = reinterpret_cast<bf16*>(out);
    const auto* x = reinterpret_cast<const bf16*>(qkv);
    return C / NH == 64 ? forward_mma<64>(o, lse, x, B, T, C, NH, stream) : forward_mma<128>(o, lse, x, B, T, C, NH, stream);
}

cudaError_t attention_backward_bf16_cuda(uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv, const uint16_t* out,
                                         const float* lse, int B, int T, int C, int NH, float* workspace,
                                         cudaStream_t stream) {
    if (!mma_shape_ok(C, NH)) return cudaErrorInvalidValue;
    if (B <= 0 || T <= 0) return cudaSuccess;
    auto* g = reinterpret_cast<bf16*>(dqkv);
    const auto* go = reinterpret_cast<const bf16*>(dout);
    const auto* x = reinterpret_cast<const bf16*>(qkv);
    const auto* o = reinterpret_cast<const bf16*>(out);
    return C / NH == 64 ? backward_mma<64>(g, go, x, o, lse, B, T, C, NH, workspace, stream)
                        : backward_mma<128>(g, go, x, o, lse, B, T, C, NH, workspace, stream);
}

}  // namespace diloco
