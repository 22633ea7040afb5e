// Checkpoints: the model config, parameters, AdamW moments and the position in training.
//
// File layout (little-endian), documented in docs/formats.md:
//   header (24 bytes): char magic[8] = "DILOCOCK", u32 version, u32 crc32 of the payload,
//                      u64 payload bytes
//   payload: i32 vocab, max_seq_len, n_layer, n_head, d_model; u64 num_params;
//            i64 step; u64 data_cursor; u64 rng_state[4];
//            f32 params[num_params], f32 adam_m[num_params], f32 adam_v[num_params]
//            versions 2 and 3: u64 count, then count x (u64 length, f32 values[length])
//            version 3 only:   the tokenizer: u32 name_length (1..64), char name[name_length],
//                              u64 model_length, u8 model[model_length]
// Version 1 has neither extras nor a tokenizer, 2 has extras, 3 has a tokenizer (and extras,
// possibly none); a writer takes the lowest version that holds what it writes, so runs without
// a subword tokenizer write the files they always did. All three are read.
// A distributed run also writes one file per rank (rank_checkpoint_path): that rank's replica, its
// AdamW moments and, for DiLoCo, its slice of the global model and outer momentum as the extras.
// Files are written atomically, so a killed run leaves no half-written checkpoint.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/gpt.h"

namespace diloco {

struct TrainState {
    int64_t step = 0;          // optimizer steps completed
    uint64_t data_cursor = 0;  // next training row (data/dataset.h)
    uint64_t rng[4] = {0, 0, 0, 0};
};

struct Checkpoint {
    GPTConfig config;
    TrainState state;
    std::vector<float> params, adam_m, adam_v;
    std::vector<std::vector<float>> extra;  // versions 2 and 3
    TokenizerBlob tokenizer;                // version 3; empty name otherwise
};

// `tokenizer` with an empty name writes none.
void save_checkpoint(const std::string& path, const GPTConfig& config, const TrainState& state,
                     const float* params, const float* adam_m, const float* adam_v, size_t n,
                     const std::vector<std::vector<float>>& extra = {}, const TokenizerBlob& tokenizer = {});

// Reads and validates everything (size, CRC, config, parameter count); throws Error otherwise.
Checkpoint load_checkpoint(const std::string& path);
// The same checks on a whole checkpoint file held in memory (`path` names it in errors); what
// load_checkpoint runs on the file's bytes, and the fuzz target (tests/fuzz/) on raw ones.
Checkpoint parse_checkpoint(const char* data, size_t bytes, const std::string& path);

// RUNDIR/ckpt/step_NNNNNNNN.ckpt
std::string checkpoint_path(const std::string& rundir, int64_t step);

// The checkpoint of the highest step in RUNDIR/ckpt, or "" if there is none. Temporary files of
// an interrupted write are never taken.
std::string latest_checkpoint(const std::string& rundir);

// RUNDIR/ckpt/step_NNNNNNNN.rank_RRRRR.ckpt, and the highest step that `rank` has one for (-1: none)
std::string rank_checkpoint_path(const std::string& rundir, int64_t step, int rank);
int64_t latest_rank_checkpoint_step(const std::string& rundir, int rank);

// Removes all but the `keep` newest numbered checkpoints of RUNDIR/ckpt: the global files
// (rank < 0) or rank `rank`'s own. keep <= 0 keeps everything.
void prune_checkpoints(const std::string& rundir, int keep, int rank);

}  // namespace diloco
