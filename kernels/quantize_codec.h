// The per-value encoders and decoders of kernels/quantize.h, shared by the CPU codec and the CUDA
// kernels, so that both produce the same bits by construction (and the tests check that they do).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace diloco::codec {

DILOCO_HD uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}
DILOCO_HD float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// bf16: the top 16 bits of fp32, rounded to nearest even; NaN stays a (quiet) NaN
DILOCO_HD uint16_t bf16_encode(float x) {
    const uint32_t u = bits_of(x);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (uint16_t)((u >> 16) | 0x0040u);
    const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)((u + rounding) >> 16);
}
DILOCO_HD float bf16_decode(uint16_t b) { return float_of((uint32_t)b << 16); }

// int8: q = round(x / s), s = absmax / 127, q in [-127, 127]; ties away from zero (roundf)
DILOCO_HD int8_t int8_encode(float x, float s) {
    if (!(s > 0.0f)) return 0;
    float q = roundf(x / s);
    q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
    return (int8_t)q;
}
DILOCO_HD float int8_decode(int8_t q, float s) { return (float)q * s; }

// e2m1 (OCP FP4): sign bit 3, magnitude code 0..7 = {0, 0.5, 1, 1.5, 2, 3, 4, 6}; s = absmax / 6.
// Nearest value of |x| / s; a tie goes to the even code (the one with mantissa bit 0).
DILOCO_HD float e2m1_value(int code) {
    const float v[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return v[code & 7];
}
DILOCO_HD uint8_t e2m1_encode(float x, float s) {
    if (!(s > 0.0f)) return 0;
    const float y = fabsf(x) / s;
    // midpoints between neighbouring values; at a midpoint the even code wins
    const float mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    int code = 7;
    for (int k = 0; k < 7; k++)
        if (y < mid[k] || (y == mid[k] && (k & 1) == 0)) {
            code = k;
            break;
        }
    return (uint8_t)(code | (x < 0.0f && code ? 8 : 0));
}
DILOCO_HD float e2m1_decode(uint8_t c, float s) {
    const float v = e2m1_value(c & 7) * s;
    return (c & 8) ? -v : v;
}

// e3m0: sign bit 3, exponent code e in 0..7; e = 0 is zero, e >= 1 is 2^(e - 7), so magnitudes
// 2^-6 .. 2^0 (bias 7); s = absmax, so the largest value maps to 2^0 = 1. Nearest value of
// |x| / s in linear terms: 2^k wins over 2^(k-1) from their midpoint 0.75 * 2^k up; zero below
// 2^-7 (half the smallest magnitude). No mantissa, no subnormals, no infinities.
DILOCO_HD uint8_t e3m0_encode(float x, float s) {
    if (!(s > 0.0f)) return 0;
    const float y = fabsf(x) / s;
    if (y < 0.0078125f) return 0;  // 2^-7
    int e = 1;                      // 2^-6
    float v = 0.015625f;
    while (e < 7 && y >= 0.75f * (2.0f * v)) {
        e++;
        v *= 2.0f;
    }
    return (uint8_t)(e | (x < 0.0f ? 8 : 0));
}
DILOCO_HD float e3m0_decode(uint8_t c, float s) {
    const int e = c & 7;
    if (e == 0) return 0.0f * s;  // NaN when the block's scale is NaN
    const float v = ldexpf(1.0f, e - 7) * s;
    return (c & 8) ? -v : v;
}

// Scale of one block: absmax / top, or NaN if the block holds a NaN or an infinity.
DILOCO_HD float block_scale(const float* x, int count, float top) {
    float m = 0.0f;
    for (int i = 0; i < count; i++) {
        const float a = fabsf(x[i]);
        if (!(a <= 3.4028234663852886e38f)) return NAN;  // NaN or infinity
        m = a > m ? a : m;
    }
    return m / top;
}

}  // namespace diloco::codec
