#include "optim/algorithm.h"

#include <chrono>

#include "kernels/common.h"
#include "optim/device.h"

namespace diloco {

namespace {
double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

float* ReplicaWeights::fetch() { return fetch(Slice{0, count()}); }

void ReplicaWeights::store() { store(Slice{0, count()}); }

float* ReplicaWeights::fetch(Slice r) {
    if (device_ && r.count > 0) {
        const double t0 = now_seconds();
        device_->params_to_host(host(), r.begin, r.count);
        staging_seconds += now_seconds() - t0;
    }
    return host();
}

void ReplicaWeights::store(Slice r) {
    if (device_ && r.count > 0) {
        const double t0 = now_seconds();
        device_->params_from_host(host(), r.begin, r.count);
        staging_seconds += now_seconds() - t0;
    }
}

void ReplicaWeights::share_slices_in_worker() {
    if (comm_.ranks_per_worker() == 1) return;
    if (!device_ || !device_->allgather_param_slices_in_worker()) {
        comm_.allgather_worker(host(), count());
        store();
    }
}

void refuse_worker_loss_survival(const TrainOptions& o, const char* why) {
    DILOCO_CHECK(o.on_worker_loss != "continue",
                 std::string("--on-worker-loss continue covers data-parallel and DiLoCo's blocking outer syncs, not ") + why +
                     ": leave it at abort (relaunch with --resume, tools/launch.sh)");
}

const AlgorithmEntry& find_algorithm(const std::string& name) {
    static const AlgorithmEntry* const all[] = {&data_parallel_algorithm, &diloco_algorithm, &streaming_algorithm,
                                                    &async_algorithm, &dipaco_algorithm};
    std::string names;
    for (const AlgorithmEntry* a : all) {
        if (name == a->name) return *a;
        names += std::string(names.empty() ? "" : ", ") + a->name;
    }
    throw Error("--algo must be one of " + names + "; got '" + name + "'");
}

}  // namespace diloco
