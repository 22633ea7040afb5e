// A prepared data directory and the sampler that turns its shards into batches.
//
// Layout of DIR:
//   meta.json                    {"tokenizer": "byte", "vocab": 256, ...}; optional
//   *train*.bin, *val*.bin       shards (data/shard.h), read in name order
//   tokenizer.model              the SentencePiece model, for "tokenizer": "sp" (meta.json's
//                                "tokenizer_model" names the file)
// Without meta.json the directory is taken to hold llm.c's GPT-2 shards (vocab 50257).
//
// Sampling: a split is cut into chunks of T+1 tokens starting every T tokens (inputs and their
// next-token targets); chunks never straddle two shards. The training stream is a sequence of
// rows; row i is chunk perm_e[i mod n] of epoch e = i / n, where perm_e is a Fisher-Yates shuffle
// seeded by (seed, e). Step s of a run with global batch G takes rows s*G .. s*G+G-1, and a rank r
// holding B of them takes rows s*G + r*B .. s*G + r*B + B-1. So the batch of a step does not depend
// on how many ranks share it, and the data cursor of a checkpoint is just the next row index.
// Validation rows are the chunks in order, unshuffled.
//
// DiLoCo replicas read disjoint parts of the training stream (set_partition):
//   iid:    replica m of M reads rows m, M+m, 2M+m, ... of the shared shuffled order above;
//   noniid: replica m reads the contiguous chunk range [m*n/M, (m+1)*n/M) in file order, shuffled
//           within the range each epoch. With several corpora prepared together, replicas then
//           see different kinds of text.
// Within a replica the rule above applies to its own rows: a worker of G ranks holding B rows each
// takes rows s*G*B .. s*G*B + G*B - 1 of its part at inner step s, rank g the g-th block of B.
//
// After an elastic restart on another layout (set_origin, docs/distributed.md), the rows already
// consumed are skipped: with O rows of the shared order consumed, replica m of M reads (iid) rows
// O + m, O + M + m, ... of the shared order (one stream, R = 1: row O + i), and (noniid) its
// contiguous range from row O/M of its own part on, the same share of an epoch as the whole run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/documents.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace diloco {

struct DatasetInfo {
    std::string tokenizer;   // "byte", "sp", or "gpt2" (llm.c shards, no meta.json)
    int vocab = 0;
    std::string model_file;  // "sp": the model's file name inside the directory
    int eos = -1;            // the end-of-text token, -1 if none
};

// Reads and checks meta.json; for "sp", the model file it names must be there.
DatasetInfo read_dataset_info(const std::string& dir);
// The checks on meta.json's text that need no directory (`meta` names the file in errors); the
// fuzz target's entry. read_dataset_info adds that the SentencePiece model named is there.
DatasetInfo parse_dataset_info(const std::string& text, const std::string& meta);

// The tokenizer a model trained on this data carries in its checkpoints: {"sp", model bytes}, or
// empty (bytes are implied by vocab 256, and llm.c's GPT-2 tokenizer is not ours to carry). When
// the build has SentencePiece, the model is loaded and its size checked against meta.json's vocab.
TokenizerBlob read_dataset_tokenizer(const std::string& dir, const DatasetInfo& info);

// Shard files of one split ("train" or "val") in name order; throws if there are none.
std::vector<std::string> list_shards(const std::string& dir, const std::string& split);

// The token count of a split: its shards' together (each checked as Shard checks it).
uint64_t split_token_count(const std::string& dir, const std::string& split, int vocab);

class TokenStream {
public:
    TokenStream(const std::string& dir, const std::string& split, int vocab, int T, bool shuffle,
                uint64_t seed);

    // Restricts this stream to part `index` of `parts` (see above). Call before reading.
    void set_partition(int parts, int index, bool contiguous);
    // Row 0 of this stream becomes what row `origin` (counted in rows of the shared order) was
    // before the partition; see above. 0, the default, changes nothing.
    void set_origin(uint64_t origin) { origin_ = origin; }

    // Restricts this stream to the tokens of `spans` (token ranges of the split, in order, within
    // its token count): they are put back to back, held in memory, and cut into chunks as one
    // shard would be; set_partition may then split them further. DiPaCo's paths train on their
    // documents this way. Throws Error when they hold too few tokens for one sequence. Call before
    // reading.
    void restrict_to(const std::vector<TokenRange>& spans);

    uint64_t num_chunks() const { return total_chunks_; }
    uint64_t part_chunks() const { return part_hi_ - part_lo_; }
    uint64_t num_tokens() const { return total_tokens_; }

    // tokens and targets (nrows, T) for rows first_row .. first_row + nrows - 1.
    void read_rows(uint64_t first_row, int nrows, int* tokens, int* targets);

private:
    uint64_t chunk_of_row(uint64_t row);
    std::vector<Shard> shards_;
    std::vector<uint64_t> chunk_start_;  // first global chunk index of each shard
    uint64_t total_chunks_ = 0, total_tokens_ = 0;
    int T_;
    bool shuffle_;
    uint64_t seed_;
    int parts_ = 1, part_ = 0;
    bool contiguous_ = false;
    uint64_t part_lo_ = 0, part_hi_ = 0;
    uint64_t origin_ = 0;
    int64_t perm_epoch_ = -1;
    std::vector<uint32_t> perm_;
    std::vector<uint16_t> own_;  // restrict_to: the spans' tokens, read instead of the shards
};

}  // namespace diloco
