// Checkpoints: the model config, parameters, AdamW moments and the position in training.
//
// File layout (little-endian), documented in docs/formats.md:
//   header (24 bytes): char magic[8] = "DILOCOCK", u32 version, u32 crc32 of the payload,
//                      u64 payload bytes
//   payload: i32 vocab, max_seq_len, n_layer, n_head, d_model; u64 num_params;
//            i64 step; u64 data_cursor; u64 rng_state[4];
//            f32 params[num_params], f32 adam_m[num_params], f32 adam_v[num_params]
//            versions 2 and 3: u64 count, then count x (u64 length, f32 values[length])
//            version 3:        the tokenizer: u32 name_length (1..64), char name[name_length],
//                              u64 model_length, u8 model[model_length]
//            version 4:        the tokenizer as in 3, name_length 0 meaning none (nothing follows
//                              it); then the layout: i32 workers, i32 ranks_per_worker,
//                              u64 row_origin, i64 origin_step
// Version 1 has neither extras nor a tokenizer, 2 has extras, 3 has a tokenizer (and extras,
// possibly none), 4 the layout of the run that wrote it (elastic restart, optim/elastic.h); a
// writer takes the lowest version that holds what it writes, so one-process runs that never
// changed layout write the files they always did. All four are read.
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
    uint64_t data_cursor = 0;  // next training row (data/dataset.h), counted from row_origin
    uint64_t rng[4] = {0, 0, 0, 0};
    // The layout that wrote the file (0: not recorded, a file older than version 4, or one process
    // that never changed layout). row_origin: rows of the shared training order consumed before
    // the layout that data_cursor counts in began, at step origin_step (both 0 until a resize).
    int32_t workers = 0, ranks_per_worker = 0;
    uint64_t row_origin = 0;
    int64_t origin_step = 0;
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
// The steps, ascending, of RUNDIR/ckpt's global files (rank < 0) or of rank `rank`'s own.
std::vector<int64_t> checkpoint_steps_of(const std::string& rundir, int rank);

// Removes all but the `keep` newest numbered checkpoints of RUNDIR/ckpt: the global files
// (rank < 0) or rank `rank`'s own. keep <= 0 keeps everything.
void prune_checkpoints(const std::string& rundir, int keep, int rank);

}  // namespace diloco
