#include "optim/streaming.h"

#include <algorithm>
#include <cmath>

#include "kernels/common.h"

namespace diloco {

std::vector<Fragment> make_fragments(const GPT& m, int P, bool strided, long H) {
    const int L = m.config.n_layer;
    DILOCO_CHECK(P >= 1 && P <= L, "--fragments must be between 1 and n_layer (" + std::to_string(L) + "), got " +
                                       std::to_string(P));
    std::vector<Fragment> frags(P);
    auto fragment_of_block = [&](int l) { return strided ? l % P : (int)((long)l * P / L); };
    for (const auto& t : m.tensors) {
        const int home = t.block >= 0 ? fragment_of_block(t.block)
                                      : (t.name == "wte" || t.name == "wpe" ? fragment_of_block(0) : fragment_of_block(L - 1));
        auto& r = frags[home].ranges;
        if (!r.empty() && r.back().begin + r.back().count == t.offset)
            r.back().count += t.numel();  // merge neighbours
        else
            r.push_back({t.offset, t.numel()});
        frags[home].count += t.numel();
    }
    for (int p = 0; p < P; p++) frags[p].offset = std::lround((double)p * H / P);
    return frags;
}

Streaming::Streaming(const StreamingOptions& opt, const Comm& comm, const GPT& model)
    : opt_(opt), M_(comm.workers()), G_(comm.ranks_per_worker()) {
    DILOCO_CHECK(opt.tau >= 0 && opt.tau < opt.H, "--overlap must be in [0, H), got " + std::to_string(opt.tau));
    DILOCO_CHECK(opt.alpha >= 0 && opt.alpha <= 1, "--alpha must be in [0, 1]");
    frags_ = make_fragments(model, opt.fragments, opt.strided, opt.H);
    st_.resize(frags_.size());
    for (size_t p = 0; p < frags_.size(); p++) {
        State& s = st_[p];
        s.mine = slice_of(frags_[p].count, G_, comm.local());
        s.global.resize(s.mine.count);
        gather((int)p, model.params.data(), s.global.data(), s.mine.begin, s.mine.count);
        s.momentum.assign(s.mine.count, 0.0f);
        s.delta.resize(s.mine.count);
        s.packed.resize(G_ > 1 ? frags_[p].count : 0);
        s.send.resize(quant_bytes(opt.quant, s.mine.count));
        s.recv.resize(s.send.size() * M_);
    }
}

void Streaming::gather(int p, const float* params, float* out, size_t lo, size_t n) const {
    size_t k = 0;  // packed index of the current range's start
    for (const Slice& r : frags_[p].ranges) {
        const size_t a = std::max(lo, k), b = std::min(lo + n, k + r.count);
        for (size_t i = a; i < b; i++) out[i - lo] = params[r.begin + (i - k)];
        k += r.count;
    }
}

void Streaming::scatter(int p, float* params, const float* in, size_t lo, size_t n) const {
    size_t k = 0;
    for (const Slice& r : frags_[p].ranges) {
        const size_t a = std::max(lo, k), b = std::min(lo + n, k + r.count);
        for (size_t i = a; i < b; i++) params[r.begin + (i - k)] = in[i - lo];
        k += r.count;
    }
}

void Streaming::start(Comm& comm, int p, const float* params, long step) {
    State& s = st_[p];
    // this replica's outer gradient for its part of the fragment: old global minus new local
    gather(p, params, s.delta.data(), s.mine.begin, s.mine.count);
    for (size_t i = 0; i < s.mine.count; i++) s.delta[i] = s.global[i] - s.delta[i];
    quantize_cpu(s.send.data(), s.delta.data(), s.mine.count, opt_.quant);
    s.request = comm.iallgather_across_workers(s.send.data(), s.send.size(), s.recv.data());
    s.in_flight = true;
    s.started = step;
}

void Streaming::finish(Comm& comm, int p, float* params, bool mix) {
    State& s = st_[p];
    comm.wait(s.request);
    s.in_flight = false;
    // the average of the replicas' outer gradients, summed in fp32 after decoding
    std::fill(s.delta.begin(), s.delta.end(), 0.0f);
    for (int m = 0; m < M_; m++) dequantize_add_cpu(s.delta.data(), s.recv.data() + m * s.send.size(), s.mine.count, opt_.quant);
    const float inv = 1.0f / M_;
    for (float& d : s.delta) d *= inv;
    outer_step(s.global.data(), s.delta.data(), s.momentum.data(), s.mine.count, opt_.outer);
    // the replica's new fragment: theta~ itself, or mixed with the tau steps of local progress
    std::vector<float>& out = s.delta;  // reuse as the new values of this rank's part
    if (mix) {
        gather(p, params, out.data(), s.mine.begin, s.mine.count);
        for (size_t i = 0; i < s.mine.count; i++) out[i] = opt_.alpha * out[i] + (1.0f - opt_.alpha) * s.global[i];
    } else {
        std::copy(s.global.begin(), s.global.end(), out.begin());
    }
    if (G_ == 1) {
        scatter(p, params, out.data(), s.mine.begin, s.mine.count);
        return;
    }
    std::copy(out.begin(), out.end(), s.packed.begin() + s.mine.begin);
    comm.allgather_worker(s.packed.data(), s.packed.size());
    scatter(p, params, s.packed.data(), 0, s.packed.size());
}

void Streaming::after_step(Comm& comm, float* params, long step, bool last) {
    for (size_t p = 0; p < frags_.size(); p++) {
        State& s = st_[p];
        if (s.in_flight && (last || step - s.started >= opt_.tau)) finish(comm, (int)p, params, step > s.started);
        const bool due = step >= frags_[p].offset && (step - frags_[p].offset) % opt_.H == 0 && step > 0;
        if (due || last) {
            start(comm, (int)p, params, step);
            if (opt_.tau == 0 || last) finish(comm, (int)p, params, false);
        }
        if (s.in_flight) comm.test(s.request);  // progress while compute goes on
    }
}

}  // namespace diloco
