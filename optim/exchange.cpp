#include "optim/exchange.h"

#include <algorithm>

#include "kernels/common.h"

namespace diloco {

ExchangeKind parse_exchange(const std::string& name) {
    if (name == "allgather") return ExchangeKind::allgather;
    if (name == "reduce-scatter") return ExchangeKind::reduce_scatter;
    throw Error("--exchange must be allgather or reduce-scatter, got '" + name + "'");
}

const char* exchange_name(ExchangeKind k) { return k == ExchangeKind::allgather ? "allgather" : "reduce-scatter"; }

Slice exchange_chunk(size_t n, int M, int j, size_t align) {
    const Slice pieces = slice_of((n + align - 1) / align, M, j);
    const size_t begin = std::min(n, pieces.begin * align), end = std::min(n, (pieces.begin + pieces.count) * align);
    return {begin, end - begin};
}

OuterExchange::OuterExchange(Comm& comm, size_t n, QuantFormat format, int block, ExchangeKind kind)
    : comm_(comm), n_(n), format_(format), block_(block), kind_(kind), M_(comm.workers()), me_(comm.worker()) {
    if (quant_has_blocks(format)) check_quant_block(block);
    // a channel of its own: the reduce-scatter's phase 2 starts when a rank sees phase 1 complete,
    // at a step that differs between ranks, so its collectives must not share an order with
    // another fragment's (comm/comm.h)
    channel_ = comm.open_cross_channel();
    if (by_allreduce()) {
        values_.resize(n);
    } else if (!reduce_scatter()) {
        send_.resize(quant_bytes(format, n, block));
        recv_.resize(send_.size() * M_);
    } else {
        // chunks on block boundaries, so that a chunk's payload holds whole blocks: the codes and
        // scales are those of the whole fragment's payload, cut in pieces
        const size_t align = quant_has_blocks(format) ? (size_t)block : 1;
        size_t at = 0;
        for (int j = 0; j < M_; j++) {
            chunks_.push_back(exchange_chunk(n, M_, j, align));
            chunk_bytes_.push_back(quant_bytes(format, chunks_[j].count, block));
            chunk_at_.push_back(at);
            at += chunk_bytes_[j];
        }
        send_.resize(at);
        gathered_.resize(at);
        recv_.resize(chunk_bytes_[me_] * M_);
        encoded_sum_.resize(chunk_bytes_[me_]);
        values_.resize(chunks_[me_].count);
    }
}

const char* OuterExchange::method() const {
    return by_allreduce() ? "allreduce" : (reduce_scatter() ? "reduce-scatter" : "allgather");
}

void OuterExchange::start(const float* g) {
    DILOCO_CHECK(phase_ == Phase::idle, "an outer-gradient exchange was started before the previous one finished");
    if (by_allreduce()) {
        std::copy(g, g + n_, values_.begin());
        request_ = comm_.isum_across_workers(values_.data(), n_, channel_);
    } else if (!reduce_scatter()) {
        quantize_cpu(send_.data(), g, n_, format_, block_);
        request_ = comm_.iallgather_across_workers(send_.data(), send_.size(), recv_.data(), channel_);
    } else {
        for (int j = 0; j < M_; j++)
            quantize_cpu(send_.data() + chunk_at_[j], g + chunks_[j].begin, chunks_[j].count, format_, block_);
        request_ = comm_.ialltoallv_across_workers(send_.data(), chunk_bytes_, recv_.data(), channel_);
    }
    phase_ = Phase::first;
}

// Phase 1 has arrived: recv_ holds this rank's chunk of every worker's gradient, in worker order.
// The sum runs in a fixed order, so it does not depend on when phase 1 completed.
void OuterExchange::reduce_own_chunk() {
    const size_t k = chunks_[me_].count, b = chunk_bytes_[me_];
    std::fill(values_.begin(), values_.end(), 0.0f);
    for (int m = 0; m < M_; m++) dequantize_add_cpu(values_.data(), recv_.data() + m * b, k, format_, block_);
    quantize_cpu(encoded_sum_.data(), values_.data(), k, format_, block_);
    request_ = comm_.iallgatherv_across_workers(encoded_sum_.data(), chunk_bytes_, gathered_.data(), channel_);
    phase_ = Phase::second;
}

void OuterExchange::progress() {
    if (phase_ == Phase::idle) return;
    const bool arrived = comm_.test(request_);
    if (arrived && phase_ == Phase::first && reduce_scatter()) reduce_own_chunk();
}

void OuterExchange::decode_chunks(float* out, const uint8_t* payloads) const {
    for (int j = 0; j < M_; j++)
        dequantize_cpu(out + chunks_[j].begin, payloads + chunk_at_[j], chunks_[j].count, format_, block_);
}

void OuterExchange::finish(float* sum) {
    DILOCO_CHECK(phase_ != Phase::idle, "finishing an outer-gradient exchange that was not started");
    if (phase_ == Phase::first && reduce_scatter()) {
        comm_.wait(request_);
        reduce_own_chunk();
    }
    comm_.wait(request_);
    phase_ = Phase::idle;
    if (by_allreduce()) {
        std::copy(values_.begin(), values_.end(), sum);
    } else if (!reduce_scatter()) {
        std::fill(sum, sum + n_, 0.0f);
        for (int m = 0; m < M_; m++) dequantize_add_cpu(sum, recv_.data() + m * send_.size(), n_, format_, block_);
    } else {
        decode_chunks(sum, gathered_.data());
    }
}

void OuterExchange::decode_own(float* out, const float* sent) const {
    if (by_allreduce())
        std::copy(sent, sent + n_, out);
    else if (!reduce_scatter())
        dequantize_cpu(out, send_.data(), n_, format_, block_);
    else
        decode_chunks(out, send_.data());
}

}  // namespace diloco
