#include "optim/algorithm.h"

#include "kernels/common.h"
#include "optim/device.h"

namespace diloco {

float* ReplicaWeights::fetch() {
    if (device_) device_->params_to_host(model_.params.data());
    return model_.params.data();
}

void ReplicaWeights::store() {
    if (device_) device_->params_from_host(model_.params.data());
}

const AlgorithmEntry& find_algorithm(const std::string& name) {
    static const AlgorithmEntry* const all[] = {&data_parallel_algorithm, &diloco_algorithm, &streaming_algorithm};
    std::string names;
    for (const AlgorithmEntry* a : all) {
        if (name == a->name) return *a;
        names += std::string(names.empty() ? "" : ", ") + a->name;
    }
    throw Error("--algo must be one of " + names + "; got '" + name + "'");
}

}  // namespace diloco
