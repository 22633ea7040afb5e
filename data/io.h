// File helpers every writer and reader in the project uses: CRC32, atomic replace, whole reads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace diloco {

// CRC-32 (IEEE 802.3, the zlib polynomial), continuing from `crc` (0 to start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

// Writes `path` atomically: the bytes go to `path.tmp.<pid>`, are flushed to disk, then renamed
// over `path`. A crash leaves either the old file or the new one, never a torn one.
void write_file_atomic(const std::string& path, const void* data, size_t n);
void write_file_atomic(const std::string& path, const std::string& text);

std::string read_text_file(const std::string& path);

}  // namespace diloco
