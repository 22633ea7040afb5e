#include "attention.h"

#include <algorithm>
#include <cmath>

// Compiled with -ffast-math (see CMakeLists.txt) so that exp and the tile products vectorize.
// Hence no infinities anywhere: a finite "minus infinity" starts the running max.

namespace diloco {

static const float kNegHuge = -1e30f;

namespace {
// exp(x) for the scores, 0 for masked entries (x near kNegHuge). Vectorized expf takes a slow
// scalar path for arguments far out of range, so those never reach it.
inline float fast_exp_masked(float x) {
    const float e = std::exp(std::max(x, -80.0f));
    return x > -1e29f ? e : 0.0f;
}

// One (batch, head) slice of qkv: row t of q, k, v starts at base + t*row_stride (+C, +2C).
struct HeadView {
    const float* base;
    long row_stride;
    long C;
    const float* q(int t) const { return base + t * row_stride; }
    const float* k(int t) const { return base + t * row_stride + C; }
    const float* v(int t) const { return base + t * row_stride + 2 * C; }
};

// S[r][c] = scale * q_{q0+r} . k_{k0+c} for c <= causal limit, kNegHuge beyond it.
// kt is the key tile transposed (hs x kAttnBlockK) so that the inner loop runs over keys.
void score_tile(float S[][kAttnBlockK], float kt[][kAttnBlockK], const HeadView& hv, int q0, int nq,
                int k0, int nk, int hs, float scale) {
    for (int c = 0; c < nk; c++) {
        const float* k = hv.k(k0 + c);
        for (int d = 0; d < hs; d++) kt[d][c] = k[d];
    }
    for (int r = 0; r < nq; r++) {
        float* s = S[r];
        for (int c = 0; c < kAttnBlockK; c++) s[c] = 0.0f;
        const float* q = hv.q(q0 + r);
        for (int d = 0; d < hs; d++) {
            const float qd = q[d];
            for (int c = 0; c < kAttnBlockK; c++) s[c] += qd * kt[d][c];
        }
        const int limit = q0 + r - k0;  // keys k0+c with c <= limit are in this row's past
        for (int c = 0; c < kAttnBlockK; c++) s[c] = (c <= limit && c < nk) ? s[c] * scale : kNegHuge;
    }
}
}  // namespace

void attention_forward_cpu(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
    const int hs = C / NH;
    const float scale = 1.0f / std::sqrt((float)hs);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const HeadView hv{qkv + (long)b * T * 3 * C + (long)h * hs, 3L * C, C};
            float acc[kAttnBlockQ][kAttnMaxHead];
            float kt[kAttnMaxHead][kAttnBlockK];
            float S[kAttnBlockQ][kAttnBlockK];
            float run_max[kAttnBlockQ], run_sum[kAttnBlockQ];
            for (int q0 = 0; q0 < T; q0 += kAttnBlockQ) {
                const int nq = std::min(kAttnBlockQ, T - q0);
                for (int r = 0; r < nq; r++) {
                    run_max[r] = kNegHuge;
                    run_sum[r] = 0.0f;
                    for (int d = 0; d < hs; d++) acc[r][d] = 0.0f;
                }
                const int kend = q0 + nq;  // causal: no key beyond the tile's last query
                for (int k0 = 0; k0 < kend; k0 += kAttnBlockK) {
                    const int nk = std::min(kAttnBlockK, kend - k0);
                    score_tile(S, kt, hv, q0, nq, k0, nk, hs, scale);
                    for (int r = 0; r < nq; r++) {
                        if (k0 > q0 + r) continue;  // the whole key tile is in this row's future
                        float tile_max = kNegHuge;
                        for (int c = 0; c < kAttnBlockK; c++) tile_max = std::max(tile_max, S[r][c]);
                        const float new_max = std::max(run_max[r], tile_max);
                        const float correction = std::exp(run_max[r] - new_max);  // 0 on the first tile
                        float tile_sum = 0.0f;
                        for (int c = 0; c < kAttnBlockK; c++) {
                            S[r][c] = fast_exp_masked(S[r][c] - new_max);
                            tile_sum += S[r][c];
                        }
                        run_sum[r] = run_sum[r] * correction + tile_sum;
                        run_max[r] = new_max;
                        float* a = acc[r];
                        for (int d = 0; d < hs; d++) a[d] *= correction;
                        for (int c = 0; c < nk; c++) {
                            const float p = S[r][c];
                            const float* v = hv.v(k0 + c);
                            for (int d = 0; d < hs; d++) a[d] += p * v[d];
                        }
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
            const HeadView hv{qkv + (long)b * T * C3 + (long)h * hs, C3, C};
            float* dbase = dqkv + (long)b * T * C3 + (long)h * hs;
            const float* row_lse = lse + ((long)b * NH + h) * T;
            float kt[kAttnMaxHead][kAttnBlockK], vt[kAttnMaxHead][kAttnBlockK];
            float S[kAttnBlockQ][kAttnBlockK], dP[kAttnBlockQ][kAttnBlockK];
            float D[kAttnBlockQ];  // D_i = rowsum(dO_i * O_i)
            for (int t = 0; t < T; t++)
                for (int part = 0; part < 3; part++) std::fill_n(dbase + t * C3 + part * C, hs, 0.0f);
            for (int q0 = 0; q0 < T; q0 += kAttnBlockQ) {
                const int nq = std::min(kAttnBlockQ, T - q0);
                for (int r = 0; r < nq; r++) {
                    const long off = ((long)b * T + q0 + r) * C + (long)h * hs;
                    float acc = 0.0f;
                    for (int d = 0; d < hs; d++) acc += dout[off + d] * out[off + d];
                    D[r] = acc;
                }
                const int kend = q0 + nq;
                for (int k0 = 0; k0 < kend; k0 += kAttnBlockK) {
                    const int nk = std::min(kAttnBlockK, kend - k0);
                    score_tile(S, kt, hv, q0, nq, k0, nk, hs, scale);
                    for (int c = 0; c < nk; c++) {
                        const float* v = hv.v(k0 + c);
                        for (int d = 0; d < hs; d++) vt[d][c] = v[d];
                    }
                    for (int r = 0; r < nq; r++) {
                        const float* dO = dout + ((long)b * T + q0 + r) * C + (long)h * hs;
                        const float l = row_lse[q0 + r];
                        for (int c = 0; c < kAttnBlockK; c++) {
                            S[r][c] = fast_exp_masked(S[r][c] - l);  // P recomputed
                            dP[r][c] = 0.0f;
                        }
                        for (int d = 0; d < hs; d++) {
                            const float g = dO[d];
                            for (int c = 0; c < kAttnBlockK; c++) dP[r][c] += g * vt[d][c];
                        }
                        for (int c = 0; c < kAttnBlockK; c++) dP[r][c] = S[r][c] * (dP[r][c] - D[r]) * scale;
                    }
                    // S holds P and dP holds dS (scaled). The three products accumulate in local
                    // rows first, so that each inner loop has one store stream and vectorizes.
                    float acc_k[kAttnMaxHead], acc_v[kAttnMaxHead];
                    for (int c = 0; c < nk; c++) {
                        for (int d = 0; d < hs; d++) acc_k[d] = acc_v[d] = 0.0f;
                        for (int r = 0; r < nq; r++) {
                            const float* dO = dout + ((long)b * T + q0 + r) * C + (long)h * hs;
                            const float* q = hv.q(q0 + r);
                            const float p = S[r][c], ds = dP[r][c];
                            for (int d = 0; d < hs; d++) {
                                acc_v[d] += p * dO[d];
                                acc_k[d] += ds * q[d];
                            }
                        }
                        float* dk = dbase + (k0 + c) * C3 + C;
                        float* dv = dbase + (k0 + c) * C3 + 2L * C;
                        for (int d = 0; d < hs; d++) {
                            dk[d] += acc_k[d];
                            dv[d] += acc_v[d];
                        }
                    }
                    for (int r = 0; r < nq; r++) {
                        float acc_q[kAttnMaxHead];
                        for (int d = 0; d < hs; d++) acc_q[d] = 0.0f;
                        for (int c = 0; c < nk; c++) {
                            const float ds = dP[r][c];
                            const float* k = hv.k(k0 + c);
                            for (int d = 0; d < hs; d++) acc_q[d] += ds * k[d];
                        }
                        float* dq = dbase + (q0 + r) * C3;
                        for (int d = 0; d < hs; d++) dq[d] += acc_q[d];
                    }
                }
            }
        }
}

}  // namespace diloco
