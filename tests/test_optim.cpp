// The outer optimizer, the llm.c weight interchange, fragments and the outer-gradient exchange;
// gradient accumulation in the inner step.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include "kernels/common.h"
#include "model/llmc.h"
#include "comm/comm.h"
#include "optim/exchange.h"
#include "optim/inner.h"
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

// ---- gradient accumulation (--grad-accum K): K micro-batches of B against one batch of K*B ----
//
// Why the tolerance is what it is. Every activation and every activation gradient of a row depends
// on that row's sequence alone, and the loss gradient uses dloss = 1/(K*B*T) in both runs (the same
// float), so the two runs differ only in how each parameter gradient, a sum over the n = K*B*T
// rows (tokens) of per-row terms, is ordered: once over n rows, or K partial sums over B*T rows
// added into the buffer (plus the products' own blocking, which may depend on the row count).
// fp32 summation of n terms in any order errs by at most about n*u*sum|t_i| (u = 2^-24), and by
// sqrt(n)*u*sum|t_i| typically; for terms of mixed sign sum|t_i| is about sqrt(n)*|sum t_i|. Both
// orders err that way, so per tensor in norm the difference stays within 2*n*u of the gradient;
// we allow 4*n*u (4e-5 for n = 165). The loss is a mean of n per-token losses summed in double in
// both runs; the micro-batch means are rounded to float once each before their mean, so it agrees
// to a few u; we allow 16u. The wrong variants below miss by O(1), far outside either.
namespace {

const GPTConfig kAccumCfg{67, 16, 2, 2, 32};  // vocab 67, T 11 below: multiples of no tile

double accum_tolerance(int n_rows) { return 4.0 * n_rows * kU32; }

GPT accum_model(int rows, int T) {
    GPT m;
    gpt_build(m, kAccumCfg);
    gpt_init(m, 31);
    gpt_allocate(m, rows, T);
    return m;
}

void random_rows(std::vector<int>& tok, std::vector<int>& tgt, size_t n, uint64_t seed) {
    Rng rng(seed);
    tok.resize(n);
    tgt.resize(n);
    for (auto& t : tok) t = (int)rng.below(kAccumCfg.vocab);
    for (auto& t : tgt) t = (int)rng.below(kAccumCfg.vocab);
}

// One inner step from `m`'s gradients on a copy; returns the parameter change it made.
std::vector<float> one_step_update(const GPT& m, const InnerHyper& h, double* grad_norm) {
    GPT c = m;
    InnerOptimizer opt;
    inner_init(opt, c, h);
    *grad_norm = inner_update(opt, c, 1).grad_norm;
    for (size_t i = 0; i < c.num_params; i++) c.params[i] -= m.params[i];
    return c.params;
}

// The step from K micro-batches against the step from one batch of K*B: the same clipped norm,
// the same parameter change. AdamW's first step is g/(|g|+eps) elementwise, so the key bias, whose
// gradient is rounding noise (its exact value is 0; docs/testing.md), is left out of AdamW's check.
// The change is read back as p1 - p0, which adds up to u*|p| per element: SGD takes lr 1 so that
// this stays far below the tolerance (AdamW's first step moves each weight by about lr anyway).
void expect_same_step(const GPT& big, const GPT& acc, const std::string& opt, double tol) {
    InnerHyper h;
    // eps 1e-3 keeps AdamW's first step, lr g/(|g| + eps), a smooth function of g: its error stays
    // the gradient's, where with 1e-8 an element whose gradient is rounding noise can flip sign
    h.opt = opt, h.lr = opt == "sgd" ? 1.0f : 1e-2f, h.warmup = 0, h.total_steps = 10, h.eps = 1e-3f;
    double norm_big = 0, norm_acc = 0;
    const std::vector<float> up_big = one_step_update(big, h, &norm_big);
    h.grad_clip = (float)(0.5 * norm_big);  // exercise clipping: its factor follows the norm
    const std::vector<float> clipped_big = one_step_update(big, h, &norm_big);
    const std::vector<float> clipped_acc = one_step_update(acc, h, &norm_acc);
    EXPECT_NEAR(norm_acc, norm_big, tol * norm_big) << opt;
    std::vector<ParamTensor> checked;
    for (const auto& t : big.tensors)
        if (opt != "adamw" || t.name.find("attn.qkv.b") == std::string::npos) checked.push_back(t);
    EXPECT_TRUE(close_per_tensor(opt + " update, accumulated against one batch", checked, clipped_acc.data(),
                                 clipped_big.data(), tol));
    EXPECT_FALSE(close_per_tensor(opt + " update, clipped against unclipped", checked, clipped_big.data(),
                                  up_big.data(), tol))
        << "clipping should change the step by far more than the tolerance";
}

void check_accumulation(int K, int B, int T) {
    SCOPED_TRACE("K=" + std::to_string(K) + " B=" + std::to_string(B) + " T=" + std::to_string(T));
    std::vector<int> tok, tgt;
    random_rows(tok, tgt, (size_t)K * B * T, 32 + K);
    GPT big = accum_model(K * B, T), acc = accum_model(B, T);
    const float loss_big = compute_gradients(big, tok.data(), tgt.data(), K * B, T);
    const float loss_acc = compute_gradients(acc, tok.data(), tgt.data(), B, T, K);
    EXPECT_NEAR(loss_acc, loss_big, 16 * kU32 * loss_big);
    double norm = 0;
    for (float g : big.grads) norm += (double)g * g;
    ASSERT_GT(std::sqrt(norm), 1e-2) << "the gradients should be far from zero";
    const double tol = accum_tolerance(K * B * T);
    EXPECT_TRUE(close_per_tensor("gradients, accumulated against one batch", big.tensors, acc.grads.data(),
                                 big.grads.data(), tol));

    // the check can fail: without the 1/K weight, and with the gradients zeroed per micro-batch
    const size_t rows = (size_t)B * T;
    GPT wrong = accum_model(B, T);
    gpt_zero_grad(wrong);
    for (int k = 0; k < K; k++) {
        gpt_forward(wrong, tok.data() + k * rows, tgt.data() + k * rows, B, T);
        gpt_backward(wrong);  // weight 1: K times the mean gradient
    }
    EXPECT_FALSE(close_per_tensor("unweighted", big.tensors, wrong.grads.data(), big.grads.data(), tol));
    for (int k = 0; k < K; k++) {
        gpt_zero_grad(wrong);  // zeroed per micro-batch: the last micro-batch's share alone
        gpt_forward(wrong, tok.data() + k * rows, tgt.data() + k * rows, B, T);
        gpt_backward(wrong, K);
    }
    EXPECT_FALSE(close_per_tensor("zeroed per micro-batch", big.tensors, wrong.grads.data(), big.grads.data(), tol));

    expect_same_step(big, acc, "adamw", tol);
    expect_same_step(big, acc, "sgd", tol);
}

}  // namespace

TEST(GradAccum, MicroBatchesEqualOneBatchOfKTimesB) {
    check_accumulation(3, 5, 11);  // an awkward B: odd, not a divisor of any tile
    check_accumulation(4, 1, 11);  // micro-batches of one sequence
    check_accumulation(2, 3, 16);  // T = max_seq_len
}

// K = 1 is the step every run without --grad-accum takes: the same loss and gradients, bit for bit,
// as zeroing, one forward and one backward.
TEST(GradAccum, OneMicroBatchIsThePlainStepBitForBit) {
    const int B = 5, T = 11;
    std::vector<int> tok, tgt;
    random_rows(tok, tgt, (size_t)B * T, 40);
    GPT plain = accum_model(B, T), one = accum_model(B, T);
    gpt_zero_grad(plain);
    const float loss_plain = gpt_forward(plain, tok.data(), tgt.data(), B, T);
    gpt_backward(plain);
    const float loss_one = compute_gradients(one, tok.data(), tgt.data(), B, T, 1);
    EXPECT_EQ(std::memcmp(&loss_one, &loss_plain, sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(one.grads.data(), plain.grads.data(), 4 * one.num_params), 0);
    // two micro-batches of the same rows: the same mean exactly (halving is exact in binary), and
    // the same gradients to one rounding (wte's two contributions are added in another order)
    GPT two = accum_model(B, T);
    std::vector<int> tok2(tok), tgt2(tgt);
    tok2.insert(tok2.end(), tok.begin(), tok.end());
    tgt2.insert(tgt2.end(), tgt.begin(), tgt.end());
    const float loss_two = compute_gradients(two, tok2.data(), tgt2.data(), B, T, 2);
    EXPECT_EQ(loss_two, loss_plain) << "the same rows twice: the same mean";
    EXPECT_TRUE(close_per_tensor("the same rows twice", plain.tensors, two.grads.data(), plain.grads.data(), 4 * kU32));
}
