// Shared by every layer of the project: the one error type and a check macro.
// Errors travel as exceptions up to main(), which prints one line and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace diloco {

struct Error : std::runtime_error {
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// An error every rank of a distributed run detects at the same point (a configuration that
// differs between ranks, say): rank 0 reports it and every rank exits, with no abort needed.
struct CollectiveError : Error {
    explicit CollectiveError(const std::string& what) : Error(what) {}
};

#define DILOCO_CHECK(cond, msg)                                  \
    do {                                                         \
        if (!(cond)) throw ::diloco::Error(std::string(msg));    \
    } while (0)

}  // namespace diloco
