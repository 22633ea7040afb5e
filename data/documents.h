// Document boundaries of a prepared split, kept by `diloco prepare` so that DiPaCo can route each
// document to a path (data/routing.h).
//
// DIR/train.docs and DIR/val.docs (docs/formats.md), little-endian:
//   header: 4 int32 (16 bytes): [0] magic 20241130, [1] version 1, [2] document count n, [3] 0
//   body:   n + 1 uint64: the first token of each document in the split (the concatenation of the
//           split's shards in name order), then the split's token count
// The documents tile the split: the first starts at 0, each starts where the one before ends, the
// last ends at the split's end, and none is empty. The names end in .docs, not .bin, so that no
// shard listing picks them up.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace diloco {

constexpr int32_t kDocsMagic = 20241130;
constexpr int32_t kDocsVersion = 1;

// [begin, end) token offsets into a split.
struct TokenRange {
    uint64_t begin = 0, end = 0;
};

// The path of a split's document index.
std::string documents_path(const std::string& dir, const std::string& split);

// Writes the index atomically; `starts` holds each document's first token, `total` the split's
// token count.
void write_documents(const std::string& path, const std::vector<uint64_t>& starts, uint64_t total);

// Reads and checks an index (the magic, the version, the size against the count before anything
// is allocated, the tiling above); `total` is the split's token count the shards hold. Throws Error
// naming the file. Returns the documents as ranges.
std::vector<TokenRange> read_documents(const std::string& path, uint64_t total);
// The same checks on bytes held in memory (`path` names them in errors).
std::vector<TokenRange> parse_documents(const void* data, size_t bytes, uint64_t total, const std::string& path);

// A document's starts in `text`: 0, and every position that follows an empty line and is not itself
// the start of one, so that the separating blank lines stay with the document before them.
std::vector<size_t> paragraph_starts(const std::string& text);

}  // namespace diloco
