// Plain float64 references for every CPU kernel, written independently of the kernels: no tiling,
// no online softmax, no shared helpers. Shapes follow the kernel headers.
#pragma once
#include <cmath>
#include <vector>

namespace diloco::ref {

using Vec = std::vector<double>;

inline void embedding_forward(Vec& out, const int* tok, const Vec& wte, const Vec& wpe, int B, int T, int C) {
    out.assign((size_t)B * T * C, 0.0);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++)
                out[((size_t)b * T + t) * C + c] = wte[(size_t)tok[b * T + t] * C + c] + wpe[(size_t)t * C + c];
}

// Mean and 1/sqrt(variance + 1e-5) of one row of C values, two-pass.
inline void row_stats(const double* x, int C, double& mean, double& rstd) {
    double m = 0, v = 0;
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
    for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
    mean = m;
    rstd = 1.0 / std::sqrt(v / C + 1e-5);
}

inline void layernorm_forward(Vec& out, Vec& mean, Vec& rstd, const Vec& x, const Vec& w, const Vec& b, int N, int C) {
    out.assign((size_t)N * C, 0.0);
    mean.assign(N, 0.0);
    rstd.assign(N, 0.0);
    for (int n = 0; n < N; n++) {
        double m, s;
        row_stats(&x[(size_t)n * C], C, m, s);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (x[(size_t)n * C + c] - m) * s * w[c] + b[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

// Gradients of sum(dout * layernorm(x)) by the textbook formula.
inline void layernorm_backward(Vec& dx, Vec& dw, Vec& db, const Vec& dout, const Vec& x, const Vec& w, int N, int C) {
    dx.assign((size_t)N * C, 0.0);
    dw.assign(C, 0.0);
    db.assign(C, 0.0);
    for (int n = 0; n < N; n++) {
        double m, s;
        row_stats(&x[(size_t)n * C], C, m, s);
        Vec xhat(C), g(C);
        double gsum = 0, gxsum = 0;
        for (int c = 0; c < C; c++) {
            xhat[c] = (x[(size_t)n * C + c] - m) * s;
            g[c] = dout[(size_t)n * C + c] * w[c];
            gsum += g[c];
            gxsum += g[c] * xhat[c];
            dw[c] += dout[(size_t)n * C + c] * xhat[c];
            db[c] += dout[(size_t)n * C + c];
        }
        for (int c = 0; c < C; c++) dx[(size_t)n * C + c] = s * (g[c] - gsum / C - xhat[c] * gxsum / C);
    }
}

// out (N,OC) = x (N,C) @ w^T (OC,C) + bias
inline void matmul_forward(Vec& out, const Vec& x, const Vec& w, const Vec* bias, int N, int C, int OC) {
    out.assign((size_t)N * OC, 0.0);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? (*bias)[o] : 0.0;
            for (int c = 0; c < C; c++) s += x[(size_t)n * C + c] * w[(size_t)o * C + c];
            out[(size_t)n * OC + o] = s;
        }
}

inline double gelu(double x) {
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
inline double gelu_grad(double x) {
    const double k = std::sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), th = std::tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

// Plain causal attention: full score matrix, masked, softmax, weighted sum.
inline void attention_forward(Vec& out, Vec& lse, const Vec& qkv, int B, int T, int C, int NH) {
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt((double)hs);
    out.assign((size_t)B * T * C, 0.0);
    lse.assign((size_t)B * NH * T, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                const double* q = &qkv[((size_t)b * T + i) * 3 * C + h * hs];
                Vec s(i + 1);
                double mx = -1e300;
                for (int j = 0; j <= i; j++) {
                    const double* k = &qkv[((size_t)b * T + j) * 3 * C + C + h * hs];
                    double d = 0;
                    for (int e = 0; e < hs; e++) d += q[e] * k[e];
                    s[j] = d * scale;
                    mx = std::max(mx, s[j]);
                }
                double z = 0;
                for (int j = 0; j <= i; j++) z += std::exp(s[j] - mx);
                for (int j = 0; j <= i; j++) {
                    const double p = std::exp(s[j] - mx) / z;
                    const double* v = &qkv[((size_t)b * T + j) * 3 * C + 2 * C + h * hs];
                    for (int e = 0; e < hs; e++) out[((size_t)b * T + i) * C + h * hs + e] += p * v[e];
                }
                lse[((size_t)b * NH + h) * T + i] = mx + std::log(z);
            }
}

// Gradient of sum(dout * attention(qkv)) with respect to qkv, through the explicit softmax Jacobian.
inline void attention_backward(Vec& dqkv, const Vec& dout, const Vec& qkv, int B, int T, int C, int NH) {
    const int hs = C / NH;
    const double scale = 1.0 / std::sqrt((double)hs);
    dqkv.assign((size_t)B * T * 3 * C, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                auto q = [&](int t, int e) { return qkv[((size_t)b * T + t) * 3 * C + h * hs + e]; };
                auto k = [&](int t, int e) { return qkv[((size_t)b * T + t) * 3 * C + C + h * hs + e]; };
                auto v = [&](int t, int e) { return qkv[((size_t)b * T + t) * 3 * C + 2 * C + h * hs + e]; };
                const double* go = &dout[((size_t)b * T + i) * C + h * hs];
                Vec s(i + 1), p(i + 1), dp(i + 1);
                double mx = -1e300, z = 0;
                for (int j = 0; j <= i; j++) {
                    double d = 0;
                    for (int e = 0; e < hs; e++) d += q(i, e) * k(j, e);
                    s[j] = d * scale;
                    mx = std::max(mx, s[j]);
                }
                for (int j = 0; j <= i; j++) z += std::exp(s[j] - mx);
                double pdp = 0;
                for (int j = 0; j <= i; j++) {
                    p[j] = std::exp(s[j] - mx) / z;
                    double d = 0;
                    for (int e = 0; e < hs; e++) d += go[e] * v(j, e);
                    dp[j] = d;
                    pdp += p[j] * dp[j];
                }
                for (int j = 0; j <= i; j++) {
                    const double ds = p[j] * (dp[j] - pdp) * scale;  // softmax Jacobian applied
                    for (int e = 0; e < hs; e++) {
                        dqkv[((size_t)b * T + i) * 3 * C + h * hs + e] += ds * k(j, e);
                        dqkv[((size_t)b * T + j) * 3 * C + C + h * hs + e] += ds * q(i, e);
                        dqkv[((size_t)b * T + j) * 3 * C + 2 * C + h * hs + e] += p[j] * go[e];
                    }
                }
            }
}

}  // namespace diloco::ref
