// One libFuzzer executable per target (tests/fuzz/CMakeLists.txt sets DILOCO_FUZZ_TARGET).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tests/fuzz/targets.h"

static diloco::fuzz::Target chosen() {
    for (const auto& t : diloco::fuzz::all_targets())
        if (std::strcmp(t.name, DILOCO_FUZZ_TARGET) == 0) return t.run;
    std::fprintf(stderr, "no fuzz target named %s\n", DILOCO_FUZZ_TARGET);
    std::abort();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const diloco::fuzz::Target run = chosen();
    run(data, size);
    return 0;
}
