// Writes what diloco computes, as raw little-endian files plus a JSON manifest, for the
// framework oracle (tests/oracle/oracle.py) to recompute independently in float64.
//
//   oracle_dump model DIR   tiny GPT: llm.c weights, a batch, logits, loss, gradients (llm.c
//                           layout), then 10 AdamW steps with warmup, cosine, clipping: losses
//   oracle_dump ops DIR     attention, layernorm, GELU, cross-entropy: inputs, outputs, gradients
//   oracle_dump outer DIR   5 outer Nesterov steps on random pseudo-gradients
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/common.h"
#include "kernels/crossentropy.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/rng.h"
#include "model/gpt.h"
#include "model/llmc.h"
#include "optim/inner.h"
#include "optim/outer.h"

using namespace diloco;

namespace {

template <typename T>
void dump(const std::string& path, const std::vector<T>& v) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), (std::streamsize)(v.size() * sizeof(T)));
    DILOCO_CHECK(f, "cannot write " + path);
}

std::vector<float> randn(size_t n, Rng& rng, double scale = 1.0) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(rng.normal() * scale);
    return v;
}

std::vector<int> randint(size_t n, int hi, Rng& rng) {
    std::vector<int> v(n);
    for (auto& x : v) x = (int)rng.below(hi);
    return v;
}

void dump_model(const std::string& dir) {
    // vocab 67 pads to 128 in llm.c's layout; T < max_seq_len; neither is a multiple of a tile
    const GPTConfig cfg{67, 24, 2, 2, 32};
    const int B = 3, T = 19, steps = 10;
    GPT m;
    gpt_build(m, cfg);
    gpt_init(m, 42);
    gpt_allocate(m, B, T);
    Rng rng(43);
    write_llmc(dir + "/model.bin", m, m.params.data());

    auto tok = randint(B * T, cfg.vocab, rng), tgt = randint(B * T, cfg.vocab, rng);
    const float loss = compute_gradients(m, tok.data(), tgt.data(), B, T);
    // the logits were overwritten by backward; recompute them for the dump
    std::vector<float> grads = m.grads;
    gpt_forward(m, tok.data(), tgt.data(), B, T);
    std::vector<float> logits(gpt_logits(m), gpt_logits(m) + (size_t)B * T * cfg.vocab);
    dump(dir + "/tokens.bin", tok);
    dump(dir + "/targets.bin", tgt);
    dump(dir + "/logits.bin", logits);
    write_llmc(dir + "/grads.bin", m, grads.data());  // same layout and header as the weights

    InnerHyper h;
    h.lr = 3e-3f, h.warmup = 3, h.total_steps = steps, h.min_lr_frac = 0.1f, h.weight_decay = 0.1f;
    h.beta1 = 0.9f, h.beta2 = 0.95f, h.eps = 1e-8f, h.grad_clip = 1.0f;
    InnerOptimizer opt;
    inner_init(opt, m, h);
    std::vector<int> all_tok, all_tgt;
    std::vector<float> losses, norms;
    for (int step = 1; step <= steps; step++) {
        auto bt = randint(B * T, cfg.vocab, rng), bg = randint(B * T, cfg.vocab, rng);
        all_tok.insert(all_tok.end(), bt.begin(), bt.end());
        all_tgt.insert(all_tgt.end(), bg.begin(), bg.end());
        losses.push_back(compute_gradients(m, bt.data(), bg.data(), B, T));
        norms.push_back((float)inner_update(opt, m, step).grad_norm);
    }
    dump(dir + "/train_tokens.bin", all_tok);
    dump(dir + "/train_targets.bin", all_tgt);
    dump(dir + "/train_losses.bin", losses);
    dump(dir + "/train_norms.bin", norms);
    write_llmc(dir + "/model_after.bin", m, m.params.data());

    std::ofstream j(dir + "/manifest.json");
    j.precision(9);
    j << "{\"B\": " << B << ", \"T\": " << T << ", \"loss\": " << loss << ", \"steps\": " << steps
      << ", \"lr\": " << h.lr << ", \"warmup\": " << h.warmup << ", \"min_lr_frac\": " << h.min_lr_frac
      << ", \"weight_decay\": " << h.weight_decay << ", \"beta1\": " << h.beta1 << ", \"beta2\": "
      << h.beta2 << ", \"eps\": " << h.eps << ", \"grad_clip\": " << h.grad_clip << "}\n";
}

void dump_ops(const std::string& dir) {
    Rng rng(7);
    std::ofstream j(dir + "/manifest.json");
    j << "{\"attention\": [";
    const int att[][4] = {{1, 1, 8, 1}, {2, 17, 32, 2}, {1, 64, 128, 2}, {2, 45, 96, 3}};
    for (int i = 0; i < 4; i++) {
        const int B = att[i][0], T = att[i][1], C = att[i][2], NH = att[i][3];
        auto qkv = randn((size_t)B * T * 3 * C, rng), dout = randn((size_t)B * T * C, rng);
        std::vector<float> out((size_t)B * T * C), lse((size_t)B * NH * T), dqkv(qkv.size());
        attention_forward_cpu(out.data(), lse.data(), qkv.data(), B, T, C, NH);
        attention_backward_cpu(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
        const std::string p = dir + "/attention" + std::to_string(i);
        dump(p + "_qkv.bin", qkv), dump(p + "_dout.bin", dout), dump(p + "_out.bin", out), dump(p + "_dqkv.bin", dqkv);
        j << (i ? ", " : "") << "[" << B << ", " << T << ", " << C << ", " << NH << "]";
    }
    j << "], \"layernorm\": [";
    const int ln[][2] = {{1, 3}, {13, 64}, {40, 768}};
    for (int i = 0; i < 3; i++) {
        const int N = ln[i][0], C = ln[i][1];
        auto x = randn((size_t)N * C, rng, 2.0), w = randn(C, rng), b = randn(C, rng), dout = randn((size_t)N * C, rng);
        std::vector<float> out(x.size()), mean(N), rstd(N), dx(x.size(), 0.0f), dw(C, 0.0f), db(C, 0.0f);
        layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
        layernorm_backward_cpu(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
        const std::string p = dir + "/layernorm" + std::to_string(i);
        dump(p + "_x.bin", x), dump(p + "_w.bin", w), dump(p + "_b.bin", b), dump(p + "_dout.bin", dout);
        dump(p + "_out.bin", out), dump(p + "_dx.bin", dx), dump(p + "_dw.bin", dw), dump(p + "_db.bin", db);
        j << (i ? ", " : "") << "[" << N << ", " << C << "]";
    }
    j << "], \"gelu\": [";
    const long ge[] = {7, 1000, 40000};
    for (int i = 0; i < 3; i++) {
        const long n = ge[i];
        auto x = randn(n, rng, 3.0), dout = randn(n, rng);
        std::vector<float> out(n), dx(n);
        gelu_forward_cpu(out.data(), x.data(), n);
        gelu_backward_cpu(dx.data(), x.data(), dout.data(), n);
        const std::string p = dir + "/gelu" + std::to_string(i);
        dump(p + "_x.bin", x), dump(p + "_dout.bin", dout), dump(p + "_out.bin", out), dump(p + "_dx.bin", dx);
        j << (i ? ", " : "") << n;
    }
    j << "], \"crossentropy\": [";
    const int ce[][2] = {{1, 2}, {19, 67}, {64, 50257}};
    for (int i = 0; i < 3; i++) {
        const int N = ce[i][0], V = ce[i][1];
        auto logits = randn((size_t)N * V, rng, 2.0);
        auto tg = randint(N, V, rng);
        std::vector<float> losses(N), lse(N), d(logits.size());
        crossentropy_forward_cpu(losses.data(), lse.data(), logits.data(), tg.data(), N, V);
        crossentropy_backward_cpu(d.data(), logits.data(), lse.data(), tg.data(), 1.0f / N, N, V);
        const std::string p = dir + "/crossentropy" + std::to_string(i);
        dump(p + "_logits.bin", logits), dump(p + "_targets.bin", tg), dump(p + "_losses.bin", losses), dump(p + "_dlogits.bin", d);
        j << (i ? ", " : "") << "[" << N << ", " << V << "]";
    }
    j << "]}\n";
}

void dump_outer(const std::string& dir) {
    Rng rng(9);
    const size_t n = 1000;
    const int steps = 5;
    auto theta = randn(n, rng);
    dump(dir + "/theta0.bin", theta);
    std::vector<float> mom(n, 0.0f), deltas, thetas;
    const OuterHyper h{0.7f, 0.9f, true};
    for (int s = 0; s < steps; s++) {
        auto delta = randn(n, rng, 0.01);
        outer_step(theta.data(), delta.data(), mom.data(), n, h);
        deltas.insert(deltas.end(), delta.begin(), delta.end());
        thetas.insert(thetas.end(), theta.begin(), theta.end());
    }
    dump(dir + "/deltas.bin", deltas);
    dump(dir + "/thetas.bin", thetas);
    std::ofstream(dir + "/manifest.json") << "{\"n\": " << n << ", \"steps\": " << steps
                                          << ", \"lr\": 0.7, \"momentum\": 0.9}\n";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: oracle_dump model|ops|outer DIR\n");
        return 2;
    }
    try {
        const std::string what = argv[1], dir = argv[2];
        if (what == "model") dump_model(dir);
        else if (what == "ops") dump_ops(dir);
        else if (what == "outer") dump_outer(dir);
        else throw Error("unknown dump '" + what + "'");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
