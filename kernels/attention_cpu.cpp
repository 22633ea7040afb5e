#include "attention.h"

#include <algorithm>
#include <cmath>

namespace diloco {

void attention_forward_cpu(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
    const int hs = C / NH;
    const long C3 = 3L * C;
    const float scale = 1.0f / std::sqrt((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float* base = qkv + (long)b * T * C3 + (long)h * hs;
            float acc[kAttnBlockQ][kAttnMaxHead];
            float run_max[kAttnBlockQ], run_sum[kAttnBlockQ], s[kAttnBlockK];
            for (int q0 = 0; q0 < T; q0 += kAttnBlockQ) {
                const int nq = std::min(kAttnBlockQ, T - q0);
                for (int r = 0; r < nq; r++) {
                    run_max[r] = -INFINITY;
                    run_sum[r] = 0.0f;
                    for (int d = 0; d < hs; d++) acc[r][d] = 0.0f;
                }
                const int kend = q0 + nq;  // causal: no key beyond the tile's last query
                for (int k0 = 0; k0 < kend; k0 += kAttnBlockK) {
                    const int nk = std::min(kAttnBlockK, kend - k0);
                    for (int r = 0; r < nq; r++) {
                        const int i = q0 + r;
                        if (k0 > i) continue;  // whole key tile is in this row's future
                        const float* q = base + (long)i * C3;
                        const int nvalid = std::min(nk, i - k0 + 1);
                        float tile_max = -INFINITY;
                        for (int c = 0; c < nvalid; c++) {
                            const float* k = base + (long)(k0 + c) * C3 + C;
                            float dot = 0.0f;
                            for (int d = 0; d < hs; d++) dot += q[d] * k[d];
                            s[c] = dot * scale;
                            tile_max = std::fmax(tile_max, s[c]);
                        }
                        const float new_max = std::fmax(run_max[r], tile_max);
                        const float correction = std::exp(run_max[r] - new_max);  // 0 on first tile
                        run_sum[r] *= correction;
                        for (int d = 0; d < hs; d++) acc[r][d] *= correction;
                        for (int c = 0; c < nvalid; c++) {
                            const float p = std::exp(s[c] - new_max);
                            const float* v = base + (long)(k0 + c) * C3 + 2L * C;
                            run_sum[r] += p;
                            for (int d = 0; d < hs; d++) acc[r][d] += p * v[d];
                        }
                        run_max[r] = new_max;
                    }
                }
                for (int r = 0; r < nq; r++) {
                    const int i = q0 + r;
                    float* o = out + ((long)b * T + i) * C + (long)h * hs;
                    const float inv = 1.0f / run_sum[r];
                    for (int d = 0; d < hs; d++) o[d] = acc[r][d] * inv;
                    lse[((long)b * NH + h) * T + i] = run_max[r] + std::log(run_sum[r]);
                }
            }
        }
}

void attention_backward_cpu(float* dqkv, const float* dout, const float* qkv, const float* out,
                            const float* lse, int B, int T, int C, int NH) {
    const int hs = C / NH;
    const long C3 = 3L * C;
    const float scale = 1.0f / std::sqrt((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float* base = qkv + (long)b * T * C3 + (long)h * hs;
            float* dbase = dqkv + (long)b * T * C3 + (long)h * hs;
            const float* row_lse = lse + ((long)b * NH + h) * T;
            for (int t = 0; t < T; t++)
                for (int part = 0; part < 3; part++)
                    std::fill_n(dbase + (long)t * C3 + (long)part * C, hs, 0.0f);
            for (int q0 = 0; q0 < T; q0 += kAttnBlockQ) {
                const int nq = std::min(kAttnBlockQ, T - q0);
                float D[kAttnBlockQ];  // D_i = rowsum(dO_i * O_i)
                for (int r = 0; r < nq; r++) {
                    const long off = ((long)b * T + q0 + r) * C + (long)h * hs;
                    float acc = 0.0f;
                    for (int d = 0; d < hs; d++) acc += dout[off + d] * out[off + d];
                    D[r] = acc;
                }
                const int kend = q0 + nq;
                for (int k0 = 0; k0 < kend; k0 += kAttnBlockK) {
                    const int nk = std::min(kAttnBlockK, kend - k0);
                    for (int r = 0; r < nq; r++) {
                        const int i = q0 + r;
                        const float* q = base + (long)i * C3;
                        float* dq = dbase + (long)i * C3;
                        const float* dO = dout + ((long)b * T + i) * C + (long)h * hs;
                        const int nvalid = std::min(nk, i - k0 + 1);
                        for (int c = 0; c < nvalid; c++) {
                            const int j = k0 + c;
                            const float* k = base + (long)j * C3 + C;
                            const float* v = base + (long)j * C3 + 2L * C;
                            float* dk = dbase + (long)j * C3 + C;
                            float* dv = dbase + (long)j * C3 + 2L * C;
                            float dot = 0.0f, dp = 0.0f;
                            for (int d = 0; d < hs; d++) {
                                dot += q[d] * k[d];
                                dp += dO[d] * v[d];
                            }
                            const float p = std::exp(dot * scale - row_lse[i]);  // P recomputed
                            const float ds = p * (dp - D[r]) * scale;
                            for (int d = 0; d < hs; d++) {
                                dv[d] += p * dO[d];
                                dq[d] += ds * k[d];
                                dk[d] += ds * q[d];
                            }
                        }
                    }
                }
            }
        }
}

}  // namespace diloco
