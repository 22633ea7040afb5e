// Compressed formats for exchanging outer gradients (Streaming DiLoCo). Defined in docs/formats.md.
//
// Payload of n values: fp32 and bf16 store the values (4 or 2 bytes each). The block formats
// (int8, e2m1, e3m0) cut the values into blocks of kQuantBlock, store one fp32 scale per block
// (all scales first), then the codes (int8: one byte each; e2m1 and e3m0: 4 bits each, two per
// byte, the lower-indexed value in the low nibble). A block holding a NaN or an infinity gets a NaN
// scale, so its values decode to NaN: bad values are never silently dropped.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace diloco {

enum class QuantFormat { fp32, bf16, int8, e2m1, e3m0 };
constexpr int kQuantBlock = 32;

QuantFormat parse_quant_format(const std::string& name);  // throws Error on an unknown name
const char* quant_format_name(QuantFormat f);

// Bytes of the payload for n values.
size_t quant_bytes(QuantFormat f, size_t n);

void quantize_cpu(uint8_t* payload, const float* x, size_t n, QuantFormat f);
void dequantize_cpu(float* out, const uint8_t* payload, size_t n, QuantFormat f);
// acc += decoded payload, in fp32: how a rank sums the replicas' compressed contributions
void dequantize_add_cpu(float* acc, const uint8_t* payload, size_t n, QuantFormat f);

}  // namespace diloco
