#include "quantize.h"

#include "kernels/common.h"
#include "kernels/quantize_codec.h"

namespace diloco {

using namespace codec;

QuantFormat parse_quant_format(const std::string& name) {
    if (name == "fp32") return QuantFormat::fp32;
    if (name == "bf16") return QuantFormat::bf16;
    if (name == "int8") return QuantFormat::int8;
    if (name == "e2m1") return QuantFormat::e2m1;
    if (name == "e3m0") return QuantFormat::e3m0;
    throw Error("unknown --quant format '" + name + "' (known: fp32, bf16, int8, e2m1, e3m0)");
}

const char* quant_format_name(QuantFormat f) {
    switch (f) {
        case QuantFormat::fp32: return "fp32";
        case QuantFormat::bf16: return "bf16";
        case QuantFormat::int8: return "int8";
        case QuantFormat::e2m1: return "e2m1";
        case QuantFormat::e3m0: return "e3m0";
    }
    return "?";
}

void check_quant_block(int block) {
    DILOCO_CHECK(block >= 2 && block <= kQuantBlockMax && block % 2 == 0,
                 "--quant-block must be an even number from 2 to " + std::to_string(kQuantBlockMax) + ", got " +
                     std::to_string(block));
}

bool quant_has_blocks(QuantFormat f) { return f == QuantFormat::int8 || f == QuantFormat::e2m1 || f == QuantFormat::e3m0; }

static size_t blocks_of(size_t n, int block) { return (n + block - 1) / block; }

size_t quant_bytes(QuantFormat f, size_t n, int block) {
    switch (f) {
        case QuantFormat::fp32: return 4 * n;
        case QuantFormat::bf16: return 2 * n;
        case QuantFormat::int8: return 4 * blocks_of(n, block) + n;
        case QuantFormat::e2m1:
        case QuantFormat::e3m0: return 4 * blocks_of(n, block) + (n + 1) / 2;
    }
    return 0;
}

double quant_bits_per_value(QuantFormat f, int block) {
    switch (f) {
        case QuantFormat::fp32: return 32.0;
        case QuantFormat::bf16: return 16.0;
        case QuantFormat::int8: return 8.0 + 32.0 / block;
        case QuantFormat::e2m1:
        case QuantFormat::e3m0: return 4.0 + 32.0 / block;
    }
    return 0.0;
}

static float top_of(QuantFormat f) { return f == QuantFormat::int8 ? 127.0f : (f == QuantFormat::e2m1 ? 6.0f : 1.0f); }

void quantize_cpu(uint8_t* payload, const float* x, size_t n, QuantFormat f, int block) {
    if (f == QuantFormat::fp32) {
        std::memcpy(payload, x, 4 * n);
        return;
    }
    if (f == QuantFormat::bf16) {
        for (size_t i = 0; i < n; i++) {
            const uint16_t b = bf16_encode(x[i]);
            std::memcpy(payload + 2 * i, &b, 2);
        }
        return;
    }
    check_quant_block(block);
    const size_t nb = blocks_of(n, block);
    uint8_t* codes = payload + 4 * nb;
    for (size_t b = 0; b < nb; b++) {
        const size_t i0 = b * block;
        const int count = (int)std::min<size_t>(block, n - i0);
        const float s = block_scale(x + i0, count, top_of(f));
        std::memcpy(payload + 4 * b, &s, 4);
        for (int k = 0; k < count; k++) {
            const size_t i = i0 + k;
            if (f == QuantFormat::int8) {
                codes[i] = (uint8_t)int8_encode(x[i], s);
            } else {
                const uint8_t c = f == QuantFormat::e2m1 ? e2m1_encode(x[i], s) : e3m0_encode(x[i], s);
                if (i % 2 == 0)
                    codes[i / 2] = c;
                else
                    codes[i / 2] |= (uint8_t)(c << 4);
            }
        }
    }
}

static float decode_one(const uint8_t* payload, size_t n, size_t i, QuantFormat f, int block) {
    switch (f) {
        case QuantFormat::fp32: {
            float v;
            std::memcpy(&v, payload + 4 * i, 4);
            return v;
        }
        case QuantFormat::bf16: {
            uint16_t b;
            std::memcpy(&b, payload + 2 * i, 2);
            return bf16_decode(b);
        }
        default: break;
    }
    const size_t nb = blocks_of(n, block);
    float s;
    std::memcpy(&s, payload + 4 * (i / block), 4);
    const uint8_t* codes = payload + 4 * nb;
    if (f == QuantFormat::int8) return int8_decode((int8_t)codes[i], s);
    const uint8_t c = (codes[i / 2] >> (4 * (i % 2))) & 0xF;
    return f == QuantFormat::e2m1 ? e2m1_decode(c, s) : e3m0_decode(c, s);
}

void dequantize_cpu(float* out, const uint8_t* payload, size_t n, QuantFormat f, int block) {
    if (quant_has_blocks(f)) check_quant_block(block);
    for (size_t i = 0; i < n; i++) out[i] = decode_one(payload, n, i, f, block);
}

void dequantize_add_cpu(float* acc, const uint8_t* payload, size_t n, QuantFormat f, int block) {
    if (quant_has_blocks(f)) check_quant_block(block);
    for (size_t i = 0; i < n; i++) acc[i] += decode_one(payload, n, i, f, block);
}

}  // namespace diloco
