// The exchange of one fragment's outer gradients across the M workers (Streaming DiLoCo): each
// rank contributes its outer gradient for its slice of the fragment and gets back the fp32 sum over
// the workers of what they sent, as every worker decodes it. Non-blocking: start() at the sync
// step, progress() after every inner step while compute goes on, finish() when the sum is needed.
//
// How the values travel (docs/distributed.md, Streaming DiLoCo):
//   - fp32: an allreduce (2(M-1)/M of the fragment's bytes per rank), no encoding at all;
//   - compressed, allgather: every rank sends its encoded gradient to all others ((M-1) payloads)
//     and sums the M decoded payloads in fp32;
//   - compressed, reduce-scatter: the values are split into M chunks on block boundaries; worker j
//     owns chunk j. Phase 1, an all-to-all, gives each owner its chunk of every worker's encoded
//     gradient; the owner decodes and sums them in fp32 and encodes the sum in the same format.
//     Phase 2 all-gathers the encoded sums; every worker decodes them, so all get the same bits.
//     About 2(M-1)/M payloads per rank whatever M; the price is a second rounding, of the sum.
//   With one worker (M = 1) there is nothing to exchange: both compressed kinds decode the
//   rank's own payload, so reduce-scatter equals allgather there.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "kernels/quantize.h"

namespace diloco {

enum class ExchangeKind { allgather, reduce_scatter };

ExchangeKind parse_exchange(const std::string& name);  // throws Error naming --exchange
const char* exchange_name(ExchangeKind k);

// Chunk j of n values split M ways on multiples of `align` (the last chunk takes the remainder):
// the ceil(n / align) aligned pieces are shared as slice_of shares elements. Chunks may be empty.
Slice exchange_chunk(size_t n, int M, int j, size_t align);

class OuterExchange {
public:
    // n: the values this rank exchanges. `kind` applies to the compressed formats.
    OuterExchange(Comm& comm, size_t n, QuantFormat format, int block, ExchangeKind kind);
    OuterExchange(const OuterExchange&) = delete;
    OuterExchange& operator=(const OuterExchange&) = delete;

    // Starts the exchange of g (n values, read at once). The previous one must be finished.
    void start(const float* g);
    // Lets MPI progress; reduce-scatter: once phase 1 has arrived, the owner's sum and phase 2.
    void progress();
    // Waits for what is left of the exchange; sum (n values) = the fp32 sum over the workers.
    void finish(float* sum);
    bool in_flight() const { return phase_ != Phase::idle; }

    // What the other workers decode of `sent`, the gradient last passed to start() (eager).
    void decode_own(float* out, const float* sent) const;
    // The method in words: "allreduce", "allgather" or "reduce-scatter".
    const char* method() const;

private:
    enum class Phase { idle, first, second };
    bool by_allreduce() const { return format_ == QuantFormat::fp32; }
    bool reduce_scatter() const { return kind_ == ExchangeKind::reduce_scatter && M_ > 1 && !by_allreduce(); }
    void reduce_own_chunk();  // reduce-scatter: the owner's fp32 sum, encoded, and phase 2 started
    void decode_chunks(float* out, const uint8_t* payloads) const;

    Comm& comm_;
    size_t n_;
    QuantFormat format_;
    int block_;
    ExchangeKind kind_;
    int M_, me_;
    int channel_ = 0;  // Comm's cross channel of this exchange
    Phase phase_ = Phase::idle;
    Comm::Request request_;
    std::vector<float> values_;  // fp32: the allreduce buffer; reduce-scatter: the owner's chunk sum
    std::vector<uint8_t> send_, recv_;
    // reduce-scatter: chunk j's values and its payload's bytes and offset in send_ (and gathered_)
    std::vector<Slice> chunks_;
    std::vector<size_t> chunk_bytes_, chunk_at_;
    std::vector<uint8_t> encoded_sum_, gathered_;
};

}  // namespace diloco
