// CUDA twin of embedding_cpu.cpp.
// forward: one thread per output element. bytes: 4 (3 B T C) plus the tokens.
// backward, in position order so that results do not depend on scheduling:
//   dwpe: one thread per (t, c) sums the B rows in order;
//   dwte: the host buckets positions by token (a stable counting sort); block k takes distinct
//         token k, its threads stride the C columns and sum the bucket's rows in order.
// T is the storage of the activations and the weights read (float, or bf16 under mixed precision);
// the weight gradients are fp32 always.
#include <algorithm>
#include <vector>

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

// bucket_start (nbuckets + 1), bucket_token (nbuckets), positions (B*T) sorted by token, stable
template <typename T_>
__global__ void embedding_backward_wte_kernel(float* dwte, const T_* dout, const int* bucket_start,
                                              const int* bucket_token, const int* positions, int C) {
    const int k = blockIdx.x;
    const int lo = bucket_start[k], hi = bucket_start[k + 1];
    float* row = dwte + (long)bucket_token[k] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = row[c];  // added to one at a time, in position order, as the CPU twin does
        for (int p = lo; p < hi; p++) s += load(dout + (long)positions[p] * C + c);
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
static cudaError_t embedding_backward(float* dwte, float* dwpe, const T_* dout, const int* tokens_host, int B, int T,
                                      int C, int* workspace, cudaStream_t stream) {
    const int N = B * T;
    if (N <= 0) return cudaSuccess;
    DILOCO_LAUNCH(embedding_backward_wpe_kernel<T_>, (unsigned)(((long)T * C + 255) / 256), 256, 0, stream, dwpe, dout, B, T, C);
    // stable counting sort of positions by token, on the host
    std::vector<int> order(N), host(embedding_backward_workspace(B, T));
    for (int i = 0; i < N; i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return tokens_host[a] < tokens_host[b]; });
    int* bucket_start = host.data();           // nbuckets + 1
    int* bucket_token = host.data() + N + 1;   // nbuckets
    int* positions = host.data() + 2 * N + 1;  // N
    int nb = 0;
    for (int i = 0; i < N; i++) {
        if (i == 0 || tokens_host[order[i]] != tokens_host[order[i - 1]]) {
            bucket_start[nb] = i;
            bucket_token[nb] = tokens_host[order[i]];
            nb++;
        }
        positions[i] = order[i];
    }
    bucket_start[nb] = N;
    cudaError_t e = cudaMemcpy(workspace, host.data(), host.size() * sizeof(int), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return e;
    DILOCO_LAUNCH(embedding_backward_wte_kernel<T_>, nb, 128, 0, stream, dwte, dout, workspace, workspace + N + 1,
                  workspace + 2 * N + 1, C);
    return cudaGetLastError();
}

cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int* tokens_host,
                                    int B, int T, int C, int* workspace, cudaStream_t stream) {
    return embedding_backward(dwte, dwpe, dout, tokens_host, B, T, C, workspace, stream);
}
cudaError_t embedding_backward_cuda(float* dwte, float* dwpe, const uint16_t* dout, const int* tokens_host, int B, int T,
                                    int C, int* workspace, cudaStream_t stream) {
    return embedding_backward(dwte, dwpe, as_bf16(dout), tokens_host, B, T, C, workspace, stream);
}

}  // namespace diloco
