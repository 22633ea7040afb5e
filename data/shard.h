// Token shards in llm.c's format:
//   header: 256 int32 (1024 bytes): [0] magic 20240520, [1] version 1, [2] token count
//   body:   token count uint16 tokens
// Byte-level shards (vocab 256) and llm.c's GPT-2 shards (vocab 50257) share the format.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace diloco {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 1024;

// Validates a whole shard held in memory (`bytes` of `data`; `path` names it in errors): the
// magic, the version, the size against the token count, every token against `vocab`. Returns the
// token count; throws Error. Shard runs it on its map; the fuzz target (tests/fuzz/) on raw bytes.
size_t check_shard(const void* data, size_t bytes, int vocab, const std::string& path);

// A read-only memory map of one shard, validated at open: the magic, the version, the file's
// size against the token count, and every token against `vocab`. Throws Error naming the file.
class Shard {
public:
    Shard(const std::string& path, int vocab);
    ~Shard();
    Shard(Shard&& o) noexcept;
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    Shard& operator=(Shard&&) = delete;

    size_t size() const { return ntok_; }
    const uint16_t* tokens() const { return tok_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    void* map_ = nullptr;
    size_t map_bytes_ = 0;
    const uint16_t* tok_ = nullptr;
    size_t ntok_ = 0;
};

// Writes one shard atomically.
void write_shard(const std::string& path, const uint16_t* tokens, size_t n);

}  // namespace diloco
