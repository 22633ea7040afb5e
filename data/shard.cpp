#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "data/io.h"
#include "kernels/common.h"

namespace diloco {

size_t check_shard(const void* data, size_t bytes, int vocab, const std::string& path) {
    if (bytes < kShardHeaderBytes)
        throw Error("shard " + path + " is truncated: " + std::to_string(bytes) +
                    " bytes, shorter than its 1024-byte header");
    int32_t header[3];
    std::memcpy(header, data, sizeof header);
    auto fail = [&](const std::string& why) { throw Error("shard " + path + ": " + why); };
    if (header[0] != kShardMagic)
        fail("bad magic number " + std::to_string(header[0]) + " (expected " +
             std::to_string(kShardMagic) + "); not a token shard");
    if (header[1] != kShardVersion)
        fail("unsupported version " + std::to_string(header[1]) + " (only version 1, uint16 tokens)");
    if (header[2] <= 0) fail("is empty (token count " + std::to_string(header[2]) + ")");
    const size_t ntok = (size_t)header[2];
    const size_t want = kShardHeaderBytes + 2 * ntok;
    if (bytes < want)
        fail("is truncated: header says " + std::to_string(ntok) + " tokens (" +
             std::to_string(want) + " bytes) but the file has " + std::to_string(bytes) + " bytes");
    if (bytes > want)
        fail("has " + std::to_string(bytes - want) + " trailing bytes after its " +
             std::to_string(ntok) + " tokens");
    const char* body = static_cast<const char*>(data) + kShardHeaderBytes;
    for (size_t i = 0; i < ntok; i++) {
        uint16_t tok;
        std::memcpy(&tok, body + 2 * i, 2);
        if (tok >= vocab)
            fail("token " + std::to_string(tok) + " at position " + std::to_string(i) +
                 " is outside the vocabulary of " + std::to_string(vocab));
    }
    return ntok;
}

Shard::Shard(const std::string& path, int vocab) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    DILOCO_CHECK(fd >= 0, "cannot open shard " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        ::close(fd);
        throw Error("cannot stat shard " + path);
    }
    const size_t bytes = (size_t)st.st_size;
    if (bytes < kShardHeaderBytes) {
        ::close(fd);
        check_shard(nullptr, bytes, vocab, path);  // throws the truncation error
    }
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    DILOCO_CHECK(p != MAP_FAILED, "cannot map shard " + path + ": " + std::strerror(errno));
    try {
        ntok_ = check_shard(p, bytes, vocab, path);
    } catch (...) {
        ::munmap(p, bytes);
        throw;
    }
    map_ = p;
    map_bytes_ = bytes;
    tok_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(p) + kShardHeaderBytes);
}

Shard::Shard(Shard&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_bytes_(o.map_bytes_), tok_(o.tok_), ntok_(o.ntok_) {
    o.map_ = nullptr;
    o.tok_ = nullptr;
    o.ntok_ = 0;
}

Shard::~Shard() {
    if (map_) ::munmap(map_, map_bytes_);
}

void write_shard(const std::string& path, const uint16_t* tokens, size_t n) {
    DILOCO_CHECK(n > 0 && n < (size_t)INT32_MAX, "shard token count out of range");
    std::vector<char> buf(kShardHeaderBytes + 2 * n, 0);
    int32_t* header = reinterpret_cast<int32_t*>(buf.data());
    header[0] = kShardMagic;
    header[1] = kShardVersion;
    header[2] = (int32_t)n;
    std::memcpy(buf.data() + kShardHeaderBytes, tokens, 2 * n);
    write_file_atomic(path, buf.data(), buf.size());
}

}  // namespace diloco
