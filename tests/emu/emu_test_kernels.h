// Host wrappers of tests/emu/emu_test_kernels.cu (pointers are emulated device memory).
#pragma once
#include <cstddef>
#include <cstdint>

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

// Tensor-core instructions (bf16 matrices as their 16-bit patterns, row-major; one warp each):
// d (16x8) = a (16x16) b (16x8) + c with fragments loaded by the PTX ISA's formulas;
void mma_direct(float* d, const uint16_t* a, const uint16_t* b, const float* c);
// d = a b with a loaded by ldmatrix_x4, b by ldmatrix_x2 from bt (8x16: b transposed), or, with
// b_by_trans, by ldmatrix_x2_trans from b itself (16x8);
void mma_ldmatrix(float* d, const uint16_t* a, const uint16_t* b_or_bt, bool b_by_trans);
// out[lane * 4 + m]: lane's register m of ldmatrix_x4 (or _trans) over the 16x16 tile a, lane 8m + j
// giving row j of the 8x8 block (rows 8 (m % 2), columns 8 (m / 2)).
void ldmatrix_x4_tile(uint32_t* out, const uint16_t* a, bool trans);
void ldmatrix_from_global(uint32_t* out, const uint16_t* a);  // broken: not shared memory
// n floats through shared memory by cp.async in two commit groups; mode 0 waits for both, 1 for
// the first only, 2 for none (tests/emu/emu_test_kernels.cu).
void cp_async_copy(float* out, const float* in, int n, int block, int mode, int src_bytes);
void cp_async_misaligned(float* out, const float* in);  // broken: a destination off alignment

}  // namespace diloco::emutest
