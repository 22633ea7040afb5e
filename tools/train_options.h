// The options of `diloco train`, apart from main.cpp so that the config file's reader can be
// tested and fuzzed (tests/fuzz/) against the real option set.
#pragma once
#include <CLI/CLI.hpp>

#include "optim/train.h"

namespace diloco {

// Adds every `train` option to `app`, bound to `o`.
void add_train_options(CLI::App* app, TrainOptions& o);

// The same, bound to a static TrainOptions nobody reads: the `define` of tools/config_file.h.
void add_train_options_scratch(CLI::App* app);

}  // namespace diloco
