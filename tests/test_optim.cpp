// The outer optimizer, the llm.c weight interchange, fragments and the outer-gradient exchange.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <algorithm>
#include <cmath>
#include <fstream>

#include "kernels/common.h"
#include "model/llmc.h"
#include "comm/comm.h"
#include "optim/exchange.h"
#include "optim/outer.h"
#include "optim/streaming.h"
#include "tests/compare.h"
#include "tests/reference.h"

using namespace diloco;
using namespace diloco::test;

TEST(OuterOptimizer, SgdWithLrOneAndNoMomentumIsFedAvg) {
    Rng rng(1);
    const size_t n = 257;
    auto global = randn(n, rng);
    std::vector<std::vector<float>> replicas(4);
    for (auto& r : replicas) r = randn(n, rng);
    std::vector<float> delta(n), mom(n, 0.0f), theta = global;
    ref::Vec mean(n, 0.0);
    for (size_t i = 0; i < n; i++) {
        for (auto& r : replicas) mean[i] += r[i] / 4.0;
        delta[i] = (float)(global[i] - mean[i]);  // old minus new
    }
    outer_step(theta.data(), delta.data(), mom.data(), n, OuterHyper{1.0f, 0.0f, false});
    // theta - (theta - mean): two roundings of O(1) values
    EXPECT_TRUE(close_rel("fedavg", theta, mean, 0.0, 4 * kU32 * 4));
}

TEST(OuterOptimizer, NesterovFollowsThePyTorchConvention) {
    Rng rng(2);
    const size_t n = 100;
    auto theta = randn(n, rng), mom = std::vector<float>(n, 0.0f);
    ref::Vec T(theta.begin(), theta.end()), M(n, 0.0);
    const OuterHyper h{0.7f, 0.9f, true};
    for (int step = 0; step < 4; step++) {
        auto delta = randn(n, rng, 0.1);
        outer_step(theta.data(), delta.data(), mom.data(), n, h);
        for (size_t i = 0; i < n; i++) {
            M[i] = 0.9 * M[i] + delta[i];
            T[i] -= 0.7 * (delta[i] + 0.9 * M[i]);
        }
    }
    EXPECT_TRUE(close_rel("nesterov theta", theta, T, 0.0, 4 * 8 * kU32 * 4));
    EXPECT_TRUE(close_rel("nesterov momentum", mom, M, 4 * 4 * kU32, 1e-7));
    // plain momentum SGD: theta -= lr * mom
    std::vector<float> t2 = {1.0f}, m2 = {0.5f}, d2 = {0.25f};
    outer_step(t2.data(), d2.data(), m2.data(), 1, OuterHyper{0.5f, 0.8f, false});
    EXPECT_FLOAT_EQ(m2[0], 0.8f * 0.5f + 0.25f);
    EXPECT_FLOAT_EQ(t2[0], 1.0f - 0.5f * (0.8f * 0.5f + 0.25f));
}

TEST(Llmc, WriteReadRoundTripsAndRejectsBadFiles) {
    const std::string dir = (std::filesystem::temp_directory_path() / ("diloco_llmc_" + std::to_string(getpid()))).string();
    std::filesystem::create_directories(dir);
    GPT m;
    gpt_build(m, GPTConfig{130, 20, 2, 2, 16});  // vocab 130 pads to 256
    Rng rng(3);
    for (auto& p : m.params) p = (float)rng.normal();
    write_llmc(dir + "/m.bin", m, m.params.data());
    EXPECT_EQ(std::filesystem::file_size(dir + "/m.bin"), 1024 + 4 * (m.num_params + (256 - 130) * 16));
    LlmcModel back = read_llmc(dir + "/m.bin");
    EXPECT_EQ(back.config, m.config);
    EXPECT_EQ(back.params, m.params);
    EXPECT_TRUE(back.padding_was_zero);
    // llm.c's layout is tensor-major: the file's qkvw of layer 1 follows layer 0's
    std::vector<float> llmc = to_llmc_layout(m, m.params.data());
    const size_t C = 16, qkvw0 = 256 * C + 20 * C + 2 * C * 2;  // after wte, wpe, ln1w, ln1b
    EXPECT_EQ(llmc[qkvw0], m.params[m.blocks[0].qkvw]);
    EXPECT_EQ(llmc[qkvw0 + 3 * C * C], m.params[m.blocks[1].qkvw]);

    std::string bytes;
    {
        std::ifstream f(dir + "/m.bin", std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(f), {});
    }
    std::ofstream(dir + "/cut.bin", std::ios::binary) << bytes.substr(0, bytes.size() - 4);
    EXPECT_THROW(read_llmc(dir + "/cut.bin"), Error);
    std::string bad = bytes;
    bad[0] = 7;
    std::ofstream(dir + "/magic.bin", std::ios::binary) << bad;
    EXPECT_THROW(read_llmc(dir + "/magic.bin"), Error);
    std::filesystem::remove_all(dir);
}

TEST(Streaming, FragmentsCoverEveryParameterExactlyOnce) {
    GPT m;
    gpt_build(m, GPTConfig{50, 16, 5, 2, 8});
    for (bool strided : {true, false})
        for (int P = 1; P <= 5; P++) {
            const auto frags = make_fragments(m, P, strided, 30);
            std::vector<int> seen(m.num_params, 0);
            size_t total = 0;
            for (const auto& f : frags) {
                size_t count = 0;
                for (const auto& r : f.ranges) {
                    for (size_t i = r.begin; i < r.begin + r.count; i++) seen[i]++;
                    count += r.count;
                }
                EXPECT_EQ(count, f.count);
                EXPECT_GT(f.count, 0u);
                total += f.count;
            }
            EXPECT_EQ(total, m.num_params);
            EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; })) << P << (strided ? " strided" : " sequential");
            for (int p = 0; p < P; p++) EXPECT_EQ(frags[p].offset, std::lround(30.0 * p / P));
        }
    // strided: block i goes to fragment i mod 2; sequential: to fragment floor(i * 2 / 5), so
    // blocks 0-2 to fragment 0 and blocks 3-4 to fragment 1
    const auto s2 = make_fragments(m, 2, true, 30), q2 = make_fragments(m, 2, false, 30);
    auto holds = [](const Fragment& f, size_t off) {
        for (const auto& r : f.ranges)
            if (off >= r.begin && off < r.begin + r.count) return true;
        return false;
    };
    EXPECT_TRUE(holds(s2[1], m.blocks[3].qkvw));
    EXPECT_TRUE(holds(s2[0], m.blocks[2].qkvw));
    EXPECT_TRUE(holds(q2[0], m.blocks[2].qkvw));
    EXPECT_TRUE(holds(q2[1], m.blocks[3].qkvw));
    EXPECT_TRUE(holds(s2[0], m.wte));             // embeddings with block 0's fragment
    EXPECT_TRUE(holds(s2[0], m.lnfw));            // final norm with block 4's (4 mod 2 = 0)
    EXPECT_TRUE(holds(q2[1], m.lnfw));
    EXPECT_THROW(make_fragments(m, 6, true, 30), Error);  // more fragments than blocks
}

TEST(Exchange, ChunksTileTheValuesOnBlockBoundaries) {
    for (size_t n : {size_t(0), size_t(5), size_t(1000), size_t(1001), size_t(4096)})
        for (int M : {1, 2, 3, 4, 8})
            for (size_t align : {size_t(1), size_t(2), size_t(128)}) {
                size_t next = 0, most = 0, least = n;
                for (int j = 0; j < M; j++) {
                    const Slice c = exchange_chunk(n, M, j, align);
                    EXPECT_EQ(c.begin, next) << n << " " << M << " " << align;  // in order, no gap
                    EXPECT_TRUE(c.begin % align == 0 || c.count == 0);
                    next = c.begin + c.count;
                    most = std::max(most, c.count), least = std::min(least, c.count);
                }
                EXPECT_EQ(next, n);
                // block counts differ by at most one, and the last chunk may end on a partial block
                EXPECT_LT(most - least, 2 * align) << n << " " << M << " " << align;
            }
    EXPECT_EQ(exchange_chunk(100, 4, 3, 128).count, 0u);  // fewer blocks than workers: empty chunks
    EXPECT_THROW(parse_exchange("ring"), Error);
    EXPECT_EQ(parse_exchange("reduce-scatter"), ExchangeKind::reduce_scatter);
}

TEST(Exchange, OneWorkerGetsItsOwnDecodedGradient) {
    // With M = 1 nothing travels: every kind returns the rank's own payload, decoded.
    Comm comm(1);
    Rng rng(7);
    const auto g = randn(1001, rng);
    std::vector<uint8_t> p(quant_bytes(QuantFormat::e3m0, g.size(), 64));
    quantize_cpu(p.data(), g.data(), g.size(), QuantFormat::e3m0, 64);
    std::vector<float> want(g.size());
    dequantize_cpu(want.data(), p.data(), g.size(), QuantFormat::e3m0, 64);
    for (QuantFormat f : {QuantFormat::fp32, QuantFormat::e3m0})
        for (ExchangeKind k : {ExchangeKind::allgather, ExchangeKind::reduce_scatter}) {
            OuterExchange ex(comm, g.size(), f, 64, k);
            std::vector<float> sum(g.size(), -1.0f), own(g.size(), -1.0f);
            ex.start(g.data());
            EXPECT_TRUE(ex.in_flight());
            EXPECT_THROW(ex.start(g.data()), Error);  // one exchange at a time
            ex.progress();
            ex.finish(sum.data());
            ex.decode_own(own.data(), g.data());
            EXPECT_FALSE(ex.in_flight());
            EXPECT_EQ(sum, f == QuantFormat::fp32 ? g : want) << ex.method();
            EXPECT_EQ(own, sum) << ex.method();
        }
}
