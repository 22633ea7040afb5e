// Compressed formats for exchanging outer gradients (Streaming DiLoCo). Defined in docs/formats.md.
//
// Payload of n values: fp32 and bf16 store the values (4 or 2 bytes each). The block formats
// (int8, e2m1, e3m0) cut the values into blocks of `block` values (--quant-block), store one fp32
// scale per block (all scales first), then the codes (int8: one byte each; e2m1 and e3m0: 4 bits
// each, two per byte, the lower-indexed value in the low nibble). A block holding a NaN or an
// infinity gets a NaN scale, so its values decode to NaN: bad values are never silently dropped.
// fp32 and bf16 ignore `block`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace diloco {

enum class QuantFormat { fp32, bf16, int8, e2m1, e3m0 };

// The default block: 4 + 32/128 = 4.25 bits per value for the 4-bit formats, the finest scale
// within 4.3 bits; larger blocks save little and trended worse (docs/results.md, Streaming DiLoCo).
constexpr int kQuantBlockDefault = 128;
// Blocks are even, so that two 4-bit codes of one byte never belong to two blocks (the CUDA
// encoder writes whole bytes per thread), and at most 65536 values.
constexpr int kQuantBlockMax = 65536;

QuantFormat parse_quant_format(const std::string& name);  // throws Error on an unknown name
const char* quant_format_name(QuantFormat f);
// Throws Error naming --quant-block unless 2 <= block <= kQuantBlockMax and block is even.
void check_quant_block(int block);
bool quant_has_blocks(QuantFormat f);

// Bytes of the payload for n values; and the bits per value for large n (4 + 32/block for 4 bits).
size_t quant_bytes(QuantFormat f, size_t n, int block);
double quant_bits_per_value(QuantFormat f, int block);

void quantize_cpu(uint8_t* payload, const float* x, size_t n, QuantFormat f, int block);
void dequantize_cpu(float* out, const uint8_t* payload, size_t n, QuantFormat f, int block);
// acc += decoded payload, in fp32: how a rank sums the replicas' compressed contributions
void dequantize_add_cpu(float* acc, const uint8_t* payload, size_t n, QuantFormat f, int block);

}  // namespace diloco
