// Every committed fuzz input, replayed as a plain unit test with any compiler: the corpora
// (tests/fuzz/corpus/<target>/, real files the project writes and what fuzzing grew from them)
// and every input that once crashed a target (tests/fuzz/regressions/<target>/, docs/testing.md).
// A target aborts on a reader's failure, which fails the test; the operator new below holds each
// allocation to the same memory budget that libFuzzer's -malloc_limit_mb holds the fuzzers to.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>
#include <sstream>

#include "tests/fuzz/targets.h"

namespace fs = std::filesystem;

static std::atomic<bool> budget_on{false};

void* operator new(size_t n) {
    if (budget_on && n > diloco::fuzz::kAllocationBudgetBytes) {
        std::fprintf(stderr, "allocation of %zu bytes exceeds the fuzz memory budget\n", n);
        std::abort();
    }
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

std::vector<fs::path> inputs_of(const std::string& kind, const std::string& target) {
    std::vector<fs::path> files;
    const fs::path dir = fs::path(DILOCO_SOURCE_DIR) / "tests/fuzz" / kind / target;
    if (fs::is_directory(dir))
        for (const auto& e : fs::directory_iterator(dir))
            if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    return files;
}

std::string read_all(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

class Replay : public ::testing::TestWithParam<diloco::fuzz::NamedTarget> {};

// The corpus must exist (tools/fuzz_seeds.sh makes it); regressions may be none.
TEST_P(Replay, CorpusAndRegressions) {
    const auto& target = GetParam();
    const auto corpus = inputs_of("corpus", target.name);
    ASSERT_FALSE(corpus.empty()) << "no seed corpus for " << target.name;
    size_t n = 0;
    for (const auto& kind : {"corpus", "regressions"})
        for (const auto& path : inputs_of(kind, target.name)) {
            SCOPED_TRACE(path.string());
            const std::string bytes = read_all(path);
            budget_on = true;
            target.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
            budget_on = false;
            n++;
        }
    std::printf("%s: %zu inputs replayed\n", target.name, n);
}

INSTANTIATE_TEST_SUITE_P(Fuzz, Replay, ::testing::ValuesIn(diloco::fuzz::all_targets()),
                         [](const auto& info) { return std::string(info.param.name); });

// The budget itself can fail: an allocation over it aborts.
TEST(ReplayBudget, AnOversizedAllocationAborts) {
    EXPECT_DEATH(
        {
            budget_on = true;
            std::vector<char> huge(diloco::fuzz::kAllocationBudgetBytes + 1);
        },
        "exceeds the fuzz memory budget");
}

}  // namespace
