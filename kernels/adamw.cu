// CUDA twin of adamw_cpu.cpp, in one launch over the flat buffer.
// Each thread takes four consecutive elements. When all four lie in one segment (nearly always:
// segments are whole tensors) it moves them with 16-byte vector loads and stores; otherwise it
// handles them one by one, each with its own segment's decay. The segment of an element is found
// by binary search over the boundaries, staged in shared memory.
// With a bf16 copy (mixed precision: the forward and backward read bf16 weights), the same pass
// writes each updated master weight rounded to bf16, so the copy costs 2 bytes an element and no
// second read of the master weights.
// bytes: 4 n (4 reads + 3 writes) = 28 n, + 2 n with the bf16 copy.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/adamw_cuda.h"
#include "kernels/cuda_common.h"
#include "kernels/gradnorm.h"
#include "kernels/tensor_core.h"

namespace diloco {

struct AdamWScalars {
    float lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale;
};

__device__ __forceinline__ int segment_of(const unsigned long long* bounds, int nseg, unsigned long long i) {
    int lo = 0, hi = nseg - 1;  // the last segment whose start is <= i
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (bounds[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ void adamw_one(float& p, float& m, float& v, float g, float wd, const AdamWScalars& s) {
    g *= s.grad_scale;
    m = s.beta1 * m + (1.0f - s.beta1) * g;
    v = s.beta2 * v + (1.0f - s.beta2) * g * g;
    const float mhat = m / s.bc1, vhat = v / s.bc2;
    p -= s.lr * (mhat / (sqrtf(vhat) + s.eps) + wd * p);
}

// norm_sq (device, or null for s.grad_scale as given): the gradients' squared norm, from which
// every thread takes the clipping scale itself. A non-finite norm leaves everything as it was: the
// host, which learns of it steps later, stops the run with the weights of before the step.
// step (device, or null for s's own): the step's learning rate and bias corrections.
__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads, bf16* params_bf16,
                             const unsigned long long* offsets, const unsigned char* decay, int nseg,
                             AdamWScalars s, const AdamWStepScalars* step, const double* norm_sq, float max_norm) {
    if (step) s.lr = step->lr, s.bc1 = step->bc1, s.bc2 = step->bc2;
    if (norm_sq) {
        if (!isfinite(*norm_sq)) return;
        s.grad_scale = clip_scale(sqrt(*norm_sq), max_norm);  // the CPU's own function (kernels/gradnorm.h)
    }
    DILOCO_DYNAMIC_SHARED(unsigned long long, bounds);  // nseg + 1 boundaries
    for (int k = threadIdx.x; k <= nseg; k += blockDim.x) bounds[k] = offsets[k];
    __syncthreads();
    const unsigned long long first = bounds[0], end = bounds[nseg];
    const unsigned long long i = first + 4ull * ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= end) return;
    const int seg = segment_of(bounds, nseg, i);
    const bool aligned = (i % 4 == 0) && i + 4 <= bounds[seg + 1];
    if (aligned) {
        const float wd = decay[seg] ? s.weight_decay : 0.0f;
        float4 p4 = *reinterpret_cast<float4*>(params + i);
        float4 m4 = *reinterpret_cast<float4*>(m + i);
        float4 v4 = *reinterpret_cast<float4*>(v + i);
        const float4 g4 = *reinterpret_cast<const float4*>(grads + i);
        adamw_one(p4.x, m4.x, v4.x, g4.x, wd, s);
        adamw_one(p4.y, m4.y, v4.y, g4.y, wd, s);
        adamw_one(p4.z, m4.z, v4.z, g4.z, wd, s);
        adamw_one(p4.w, m4.w, v4.w, g4.w, wd, s);
        *reinterpret_cast<float4*>(params + i) = p4;
        *reinterpret_cast<float4*>(m + i) = m4;
        *reinterpret_cast<float4*>(v + i) = v4;
        if (params_bf16) store_bf16x4(params_bf16 + i, pack_bf16x2(p4.x, p4.y), pack_bf16x2(p4.z, p4.w));
    } else {
        for (unsigned long long j = i; j < i + 4 && j < end; j++) {
            const int sj = segment_of(bounds, nseg, j);
            adamw_one(params[j], m[j], v[j], grads[j], decay[sj] ? s.weight_decay : 0.0f, s);
            if (params_bf16) params_bf16[j] = __float2bfloat16_rn(params[j]);
        }
    }
}

cudaError_t adamw_upload_segments(AdamWSegmentsDevice& dev, const AdamWSegment* segments, int nsegments) {
    std::vector<unsigned long long> bounds(nsegments + 1);
    std::vector<unsigned char> decay(nsegments);
    for (int k = 0; k < nsegments; k++) {
        bounds[k] = segments[k].offset;
        decay[k] = segments[k].decay;
        if (k > 0 && segments[k].offset != segments[k - 1].offset + segments[k - 1].count)
            return cudaErrorInvalidValue;  // gaps would be updated with the previous segment's rule
    }
    bounds[nsegments] = nsegments ? segments[nsegments - 1].offset + segments[nsegments - 1].count : 0;
    adamw_free_segments(dev);
    cudaError_t e = cudaMalloc(&dev.offsets, bounds.size() * sizeof(unsigned long long));
    if (e == cudaSuccess) e = cudaMalloc(&dev.decay, std::max(1, nsegments));
    if (e == cudaSuccess) e = cudaMemcpy(dev.offsets, bounds.data(), bounds.size() * sizeof(unsigned long long), cudaMemcpyHostToDevice);
    if (e == cudaSuccess && nsegments) e = cudaMemcpy(dev.decay, decay.data(), nsegments, cudaMemcpyHostToDevice);
    dev.nsegments = nsegments;
    dev.total = bounds[nsegments] - (nsegments ? bounds[0] : 0);
    return e;
}

void adamw_free_segments(AdamWSegmentsDevice& dev) {
    if (dev.offsets) cudaFree(dev.offsets);
    if (dev.decay) cudaFree(dev.decay);
    dev = AdamWSegmentsDevice{};
}

static cudaError_t adamw_update(float* params, float* m, float* v, const float* grads, const AdamWSegmentsDevice& segs,
                                const AdamWHyper& h, long t, const AdamWStepScalars* step, float grad_scale,
                                const double* norm_sq, float max_norm, cudaStream_t stream, uint16_t* params_bf16) {
    if (segs.nsegments == 0 || segs.total == 0) return cudaSuccess;
    const AdamWStepScalars k = adamw_step_scalars(h, t);  // unused when `step` is given
    AdamWScalars s{k.lr, h.beta1, h.beta2, h.eps, h.weight_decay, k.bc1, k.bc2, grad_scale};
    const int block = 256;
    const unsigned long long groups = (segs.total + 3) / 4 + 1;  // +1: a start that is not 4-aligned
    // 8 bytes a boundary: past 48 KiB only beyond 6143 segments (some 500 layers), but then it must ask
    const size_t smem = (segs.nsegments + 1) * sizeof(unsigned long long);
    if (cudaError_t e = allow_dynamic_smem(adamw_kernel, smem); e != cudaSuccess) return e;
    DILOCO_LAUNCH(adamw_kernel, (unsigned)((groups + block - 1) / block), block, smem, stream, params, m, v,
                  grads, reinterpret_cast<bf16*>(params_bf16), segs.offsets, segs.decay, segs.nsegments, s, step,
                  norm_sq, max_norm);
    return cudaGetLastError();
}

cudaError_t adamw_update_cuda(float* params, float* m, float* v, const float* grads,
                              const AdamWSegmentsDevice& segs, const AdamWHyper& h, long t,
                              float grad_scale, cudaStream_t stream, uint16_t* params_bf16) {
    return adamw_update(params, m, v, grads, segs, h, t, nullptr, grad_scale, nullptr, 0.0f, stream, params_bf16);
}

cudaError_t adamw_update_clipped_cuda(float* params, float* m, float* v, const float* grads,
                                      const AdamWSegmentsDevice& segs, const AdamWHyper& h, const AdamWStepScalars* step,
                                      const double* norm_sq, float max_norm, cudaStream_t stream, uint16_t* params_bf16) {
    return adamw_update(params, m, v, grads, segs, h, 1, step, 1.0f, norm_sq, max_norm, stream, params_bf16);
}

}  // namespace diloco
