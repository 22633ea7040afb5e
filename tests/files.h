// Test helpers for files: scratch directories under /tmp (removed when the test program ends),
// whole-file writes, and expected errors.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace diloco::test {

inline std::vector<std::string>& scratch_dirs() {
    static std::vector<std::string> dirs;
    return dirs;
}
struct RemoveScratch : ::testing::Environment {
    void TearDown() override {
        for (const auto& d : scratch_dirs()) std::filesystem::remove_all(d);
    }
};
[[maybe_unused]] inline auto* const remove_scratch = ::testing::AddGlobalTestEnvironment(new RemoveScratch);

inline std::string fresh_dir(const std::string& name) {
    const std::filesystem::path p =
        std::filesystem::temp_directory_path() / ("diloco_test_" + name + "_" + std::to_string(getpid()));
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
    scratch_dirs().push_back(p.string());
    return p.string();
}

// Expects `fn` to throw an Error whose message contains `needle`.
template <typename F>
void expect_error(F fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace diloco::test
