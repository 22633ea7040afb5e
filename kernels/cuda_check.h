// Host-side checks of CUDA runtime calls: a failure becomes an Error naming the call.
#pragma once
#include <string>

#include "kernels/common.h"
#include "kernels/cuda_compat.h"

#define DILOCO_CUDA_CHECK(call)                                                                  \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        DILOCO_CHECK(e_ == cudaSuccess, std::string("CUDA: ") + #call + ": " + cudaGetErrorString(e_)); \
    } while (0)
