// What `diloco info` says about CUDA: the runtime version and the devices, or why there are none.
#pragma once
#include <string>

namespace diloco {

std::string cuda_summary();

// Number of usable CUDA devices; 0 when there is no driver or no device.
int cuda_device_count();

}  // namespace diloco
