// CUDA twin of embedding_cpu.cpp.
// forward: one thread per output element. bytes: 4 (3 B T C) plus the tokens.
// backward, in position order so that results do not depend on scheduling:
//   dwpe: one thread per (t, c) sums the B rows in order;
//   dwte: the positions are sorted by (token, position) on the device, a bitonic sort of 64-bit
//         keys, so the step needs no host copy of the tokens and no synchronisation; the block at
//         the first position of each token's run strides the C columns and sums the run's rows in
//         position order, the CPU twin's order.
// The sort runs one launch per bitonic stage, log2(n)(log2(n)+1)/2 of them (105 for GPT-2's
// 16K tokens per micro-batch, each a few microseconds): sorting tiles in shared memory first
// would save most of those launches for a fraction of a percent of a step, at twice the code.
// T is the storage of the activations and the weights read (float, or bf16 under mixed precision);
// the weight gradients are fp32 always.
#include "kernels/bf16_cuda.h"
#include "kernels/embedding_cuda.h"

namespace diloco {

template <typename T_>
__global__ void embedding_forward_kernel(T_* out, const int* tokens, const T_* wte, const T_* wpe, int B, int T, int C) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * T * C) return;
    const long bt = i / C;
    const int c = (int)(i % C), t = (int)(bt % T);
    store(out + i, load(wte + (long)tokens[bt] * C + c) + load(wpe + (long)t * C + c));
}

template <typename T_>
__global__ void embedding_backward_wpe_kernel(float* dwpe, const T_* dout, int B, int T, int C) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)T * C) return;
    const int t = (int)(i / C), c = (int)(i % C);
    float s = dwpe[i];  // added to one at a time, in the CPU twin's order
    for (int b = 0; b < B; b++) s += load(dout + ((long)b * T + t) * C + c);
    dwpe[i] = s;
}

// keys (n, a power of two >= N): token << 32 | position, and ~0 past N, so that every key is
// distinct (the sort needs no stability) and the padding sorts last
__global__ void embedding_sort_keys_kernel(uint64_t* keys, const int* tokens, int N, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    keys[i] = i < N ? (uint64_t)(uint32_t)tokens[i] << 32 | (uint32_t)i : ~0ull;
}

// one stage of the bitonic network: element i meets element i ^ j, in the direction block k gives
__global__ void embedding_bitonic_stage_kernel(uint64_t* keys, int j, int k, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int l = i ^ j;
    if (i >= n || l <= i) return;
    const uint64_t a = keys[i], b = keys[l];
    const bool ascending = (i & k) == 0;
    if (ascending ? a > b : a < b) {
        keys[i] = b;
        keys[l] = a;
    }
}

// block p sums the rows of token keys[p] >> 32 when p starts that token's run in the sorted keys
template <typename T_>
__global__ void embedding_backward_wte_kernel(float* dwte, const T_* dout, const uint64_t* keys, int N, int C) {
    const int p = blockIdx.x;
    const uint32_t token = (uint32_t)(keys[p] >> 32);
    if (p > 0 && (uint32_t)(keys[p - 1] >> 32) == token) return;
    int end = p + 1;
    while (end < N && (uint32_t)(keys[end] >> 32) == token) end++;
    float* row = dwte + (long)token * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = row[c];  // added to one at a time, in position order, as the CPU twin does
        for (int q = p; q < end; q++) s += load(dout + (long)(uint32_t)keys[q] * C + c);
        row[c] = s;
    }
}

template <typename T_>
static cudaError_t embedding_forward(T_* out, const int* tokens, const T_* wte, const T_* wpe, int B, int T, int C,
                                     cudaStream_t stream) {
    const long n = (long)B * T * C;
    if (n <= 0) return cudaSuccess;
    DILOCO_LAUNCH(embedding_forward_kernel<T_>, (unsigned)((n + 255) / 256), 256, 0, stream, out, tokens, wte, wpe, B, T, C);
    return cudaGetLastError();
}

cudaError_t embedding_forward_cuda(float* out, const int* tokens, const float* wte, const float* wpe,
                                   int B, int T, int C, cudaStream_t stream) {
    return embedding_forward(out, tokens, wte, wpe, B, T, C, stream);
}
cudaError_t embedding_forward_cuda(uint16_t* out, const int* tokens, const uint16_t* wte, const uint16_t* wpe, int B, int T,
                                   int C, cudaStream_t stream) {
    return embedding_forward(as_bf16(out), tokens, as_bf16(wte), as_bf16(wpe), B, T, C, stream);
}

template <typename T_>
static cudaError_t embedding_backward(float* dwte, float* dwpe, const T_* dout, const int* tokens, int B, int T,
                                      int C, int* workspace, cudaStream_t stream) {
    const int N = B * T;
    if (N <= 0) return cudaSuccess;
    DILOCO_LAUNCH(embedding_backward_wpe_kernel<T_>, (unsigned)(((long)T * C + 255) / 256), 256, 0, stream, dwpe, dout, B, T, C);
    const int n = embedding_sort_length(N);
    uint64_t* keys = reinterpret_cast<uint64_t*>(workspace);
    const unsigned blocks = (unsigned)((n + 255) / 256);
    DILOCO_LAUNCH(embedding_sort_keys_kernel, blocks, 256, 0, stream, keys, tokens, N, n);
    for (int k = 2; k <= n; k *= 2)
        for (int j = k / 2; j > 0; j /= 2) DILOCO_LAUNCH(embedding_bitonic_stage_kernel, blocks, 256, 0, stream, keys, j, k, n);
    DILOCO_LAUNCH(embedding_backward_wte_kernel<T_>, (unsigned)N, 128, 0, stream, dwte, dout, keys, N, C);
    return cudaGetLastError();
}

cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* tokens,
                                    int B, int T, int C, int* workspace, cudaStream_t stream) {
    return embedding_backward(dwte, dwpe, dout, tokens, B, T, C, workspace, stream);
}
cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const uint16_t* dout, const int* tokens, int B, int T,
                                    int C, int* workspace, cudaStream_t stream) {
    return embedding_backward(dwte, dwpe, as_bf16(dout), tokens, B, T, C, workspace, stream);
}

}  // namespace diloco
