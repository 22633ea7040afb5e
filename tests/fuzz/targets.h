// The fuzz targets' bodies: each feeds raw bytes to one reader's in-memory entry point, the code
// the trainer runs on files, and aborts on anything but the reader's own clear refusal (Error).
// Built into the libFuzzer executables (fuzz_main.cpp, clang only) and into fuzz_replay
// (test_replay.cpp, any compiler), which runs the committed corpora and every saved crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace diloco::fuzz {

using Target = void (*)(const uint8_t* data, size_t size);

struct NamedTarget {
    const char* name;  // tests/fuzz/corpus/<name>/, tests/fuzz/regressions/<name>/, fuzz_<name>
    Target run;
    size_t max_len;    // libFuzzer's -max_len: room for the largest seed
};

// shard, checkpoint, llmc, meta, config
const std::vector<NamedTarget>& all_targets();

// The memory budget every target holds its reader to: no single allocation may exceed it, so a
// header asking for 2^40 tokens must be refused before anything is allocated for them. libFuzzer
// enforces it with -malloc_limit_mb (tools/fuzz.sh), fuzz_replay with its own operator new.
constexpr size_t kAllocationBudgetBytes = 64u << 20;

}  // namespace diloco::fuzz
