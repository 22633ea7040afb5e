#include "optim/turns.h"

#include <utility>

#include "kernels/common.h"

namespace diloco {

ReplicaTurns::ReplicaTurns(int n, const GPT& model, const InnerOptimizer& inner, uint64_t cursor, Comm& comm) {
    DILOCO_CHECK(n >= 1, "replicas in turn: at least one");
    parked_.resize(n);
    for (int k = 0; k < n; k++) {
        Parked& p = parked_[k];
        p.model.config = model.config;
        p.model.tensors = model.tensors;
        p.model.num_params = model.num_params;
        p.model.wte = model.wte, p.model.wpe = model.wpe, p.model.lnfw = model.lnfw, p.model.lnfb = model.lnfb;
        p.model.blocks = model.blocks;
        if (k > 0) p.model.params = model.params, p.m = inner.m, p.v = inner.v, p.cursor = cursor;
        views_.push_back(std::make_unique<ReplicaWeights>(p.model, nullptr, comm));
    }
}

void ReplicaTurns::activate(int k, GPT& model, InnerOptimizer& inner, DeviceTrainer* dev, uint64_t& cursor) {
    DILOCO_CHECK(k >= 0 && k < count(), "replicas in turn: no replica " + std::to_string(k));
    if (k == active_) return;
    if (dev) {
        dev->params_to_host(model.params.data());
        dev->moments_to_host(inner.m.data(), inner.v.data());
    }
    for (int slot : {active_, k}) {  // the active one's buffers to its slot, then k's out of its own
        Parked& p = parked_[slot];
        std::swap(model.params, p.model.params);
        std::swap(inner.m, p.m);
        std::swap(inner.v, p.v);
        std::swap(cursor, p.cursor);
    }
    active_ = k;
    if (dev) {
        dev->params_from_host(model.params.data());
        dev->moments_from_host(inner.m.data(), inner.v.data());
    }
}

std::vector<ReplicaWeights*> ReplicaTurns::weights(ReplicaWeights& active_weights) {
    std::vector<ReplicaWeights*> out;
    for (int k = 0; k < count(); k++) out.push_back(k == active_ ? &active_weights : views_[k].get());
    return out;
}

std::vector<std::vector<float>> ReplicaTurns::save() const {
    DILOCO_CHECK(active_ == 0, "replicas in turn: a checkpoint is taken with replica 0 active");
    std::vector<std::vector<float>> out;
    for (int k = 1; k < count(); k++) {
        const Parked& p = parked_[k];
        out.push_back(p.model.params);
        out.push_back(p.m);
        out.push_back(p.v);
        std::vector<float> c(4);
        for (int i = 0; i < 4; i++) c[i] = (float)((p.cursor >> (16 * i)) & 0xFFFF);
        out.push_back(c);
    }
    return out;
}

void ReplicaTurns::load(std::vector<std::vector<float>>& arrays) {
    DILOCO_CHECK(active_ == 0, "replicas in turn: a checkpoint is loaded with replica 0 active");
    const size_t need = 4 * (size_t)(count() - 1);
    const std::string what = "it does not hold the state of the " + std::to_string(count()) +
                             " replicas this worker trains in turn (written with another number of workers?)";
    DILOCO_CHECK(arrays.size() >= need, what);
    const size_t first = arrays.size() - need;
    for (int k = 1; k < count(); k++) {
        Parked& p = parked_[k];
        std::vector<float>* a = &arrays[first + 4 * (k - 1)];
        const size_t n = p.model.num_params;
        DILOCO_CHECK(a[0].size() == n && a[1].size() == n && a[2].size() == n && a[3].size() == 4, what);
        uint64_t cursor = 0;
        for (int i = 0; i < 4; i++) {
            DILOCO_CHECK(a[3][i] >= 0 && a[3][i] < 65536 && a[3][i] == (float)(int)a[3][i], what);
            cursor |= (uint64_t)a[3][i] << (16 * i);
        }
        p.model.params = std::move(a[0]);
        p.m = std::move(a[1]);
        p.v = std::move(a[2]);
        p.cursor = cursor;
    }
    arrays.resize(first);
}

}  // namespace diloco
