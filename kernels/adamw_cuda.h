// CUDA twin of adamw.h: fused AdamW over the flat buffer, one launch (device pointers).
#pragma once
#include <cstdint>

#include "kernels/adamw.h"
#include "kernels/cuda_compat.h"

namespace diloco {

// Segment tables live on the device: upload once with adamw_upload_segments.
struct AdamWSegmentsDevice {
    unsigned long long* offsets = nullptr;  // nsegments + 1 boundaries, ascending
    unsigned char* decay = nullptr;         // nsegments flags
    int nsegments = 0;
    size_t total = 0;  // offsets[nsegments]: the elements covered, from offsets[0]
};

// The segments must be sorted and contiguous (no gaps), as gpt_adamw_segments returns them.
cudaError_t adamw_upload_segments(AdamWSegmentsDevice& dev, const AdamWSegment* segments, int nsegments);
void adamw_free_segments(AdamWSegmentsDevice& dev);

// params_bf16 (optional, the same layout as params, as 16-bit patterns): also receives every updated
// weight rounded to bf16 (nearest even), in the same pass.
cudaError_t adamw_update_cuda(float* params, float* m, float* v, const float* grads,
                              const AdamWSegmentsDevice& segments, const AdamWHyper& h, long t,
                              float grad_scale, cudaStream_t stream, uint16_t* params_bf16 = nullptr);

// The same with the gradients scaled by clip_scale(sqrt(*norm_sq), max_norm) (kernels/gradnorm.h),
// taken on the device from norm_sq (one double of device memory: global_norm_squared_cuda's
// output), so that no host wait stands between the norm and the update; and with the step's
// learning rate and bias corrections read from `step` (device memory; h's lr is not used), so
// that the launch is the same at every step and can be captured in a CUDA Graph. A non-finite
// norm leaves params, m, v and the bf16 copy unchanged.
cudaError_t adamw_update_clipped_cuda(float* params, float* m, float* v, const float* grads,
                                      const AdamWSegmentsDevice& segments, const AdamWHyper& h,
                                      const AdamWStepScalars* step, const double* norm_sq, float max_norm,
                                      cudaStream_t stream, uint16_t* params_bf16 = nullptr);

}  // namespace diloco
