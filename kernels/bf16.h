// bf16 on the host: the rounding every CPU twin of a bf16 kernel applies to its inputs, so that the
// twin computes in fp32 from exactly the values the kernel sees. Round to nearest even, as
// __float2bfloat16_rn; a NaN stays a NaN. bf16 keeps 8 significant bits: a rounded value is
// within 2^-8 (relative) of the original (half a spacing of 2^-7 relative to the binade's start).
#pragma once
#include <cstdint>
#include <cstring>

namespace diloco {

inline uint16_t bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float bf16_value(uint16_t bits) {
    const uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float round_bf16(float f) { return bf16_value(bf16_bits(f)); }

}  // namespace diloco
