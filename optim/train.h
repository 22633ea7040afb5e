// `diloco train` and `eval`: the training loop that every algorithm shares
// (optim/algorithm.h), and its companions.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/gpt.h"
#include "optim/inner.h"
#include "optim/options.h"

namespace diloco {

// Resolves the model config from the options and the data's vocabulary; throws Error on any
// value that makes no sense.
GPTConfig resolve_config(const TrainOptions& opt, int vocab);

InnerHyper inner_hyper(const TrainOptions& opt);

// Runs training; returns the final validation loss.
double run_train(const TrainOptions& opt);

// Mean loss over the first `rows` sequences of the validation split, `chunk` rows per forward.
// Training evaluates --eval-batches global batches (R * --batch rows), whatever the rank count,
// so validation losses compare across algorithms and topologies.
double evaluate(GPT& m, const std::string& data_dir, int T, long rows, int chunk);

class TokenStream;
// Mean loss of `forward` (tokens, targets, rows, T) over the first `rows` rows of `val`, `chunk`
// rows per call.
double evaluate_stream(const std::function<float(const int*, const int*, int, int)>& forward, TokenStream& val, int T,
                       long rows, int chunk);

}  // namespace diloco
