// What `diloco train` checks and resolves from its options before a run starts (optim/train.cpp).
#pragma once
#include <string>

#include "model/gpt.h"
#include "optim/options.h"

namespace diloco {

// Throws Error naming the first option whose value makes no sense, the chosen algorithm's own
// refusals included.
void check_options(const TrainOptions& o);
// Every option that shapes the run, as text: ranks compare a hash of it at start.
std::string describe_options(const TrainOptions& o);
// Whether this run trains on the registered accelerator backend; throws if it was asked for and
// is not there.
bool use_device(const TrainOptions& o);
// --precision resolved: bf16 only on a device, and only for head sizes the bf16 path runs; auto
// takes it where it can.
Precision storage_precision(const TrainOptions& o, const GPTConfig& c, bool on_device);

}  // namespace diloco
