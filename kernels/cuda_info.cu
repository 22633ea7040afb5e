#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda_info.h"

namespace diloco {

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
}

std::string cuda_summary() {
    int runtime = 0;
    cudaRuntimeGetVersion(&runtime);
    std::string s = "runtime " + std::to_string(runtime / 1000) + "." + std::to_string((runtime % 1000) / 10);
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) return s + "; no usable device (" + cudaGetErrorString(err) + ")";
    for (int d = 0; d < n; d++) {
        cudaDeviceProp p{};
        cudaGetDeviceProperties(&p, d);
        s += "; device " + std::to_string(d) + ": " + p.name + " (sm_" + std::to_string(p.major) +
             std::to_string(p.minor) + ", " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
    }
    return s;
}

}  // namespace diloco
