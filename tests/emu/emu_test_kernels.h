// Host wrappers of tests/emu/emu_test_kernels.cu (pointers are emulated device memory).
#pragma once

namespace diloco::emutest {

void block_sum(float* out, const float* in, int n, int block, bool with_barriers);
void warp_sum(float* out, const float* in, int n);
void transpose(float* out, const float* in, int rows, int cols);
void divergent_barrier(float* out, int block);
void early_exit_barrier(float* out, int block, int n);
void uninitialised_shared(float* out, int block);
void partial_warp_shuffle(float* out);
void out_of_bounds(float* out, const float* in, int n);

}  // namespace diloco::emutest
