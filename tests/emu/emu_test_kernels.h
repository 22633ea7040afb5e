// Host wrappers of tests/emu/emu_test_kernels.cu (pointers are emulated device memory).
#pragma once
#include <cstddef>

namespace diloco::emutest {

void block_sum(float* out, const float* in, int n, int block, bool with_barriers);
void warp_sum(float* out, const float* in, int n);
void transpose(float* out, const float* in, int rows, int cols);
void divergent_barrier(float* out, int block);
void early_exit_barrier(float* out, int block, int n);
void uninitialised_shared(float* out, int block);
void partial_warp_shuffle(float* out);
void out_of_bounds(float* out, const float* in, int n);

// One block of kSmemThreads threads over `bytes` of dynamic shared memory; out[t] = bytes/4 - 1 - t.
// raised_kernel picks the kernel whose limit set_raised_kernel_limit sets (cudaFuncSetAttribute;
// returns its cudaError_t); the other kernel keeps the default limit.
constexpr int kSmemThreads = 128;
void fill_shared(float* out, size_t bytes, bool raised_kernel);
int set_raised_kernel_limit(int bytes);

}  // namespace diloco::emutest
